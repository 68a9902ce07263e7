//! mediafs: a FUSE filesystem that mounts a shared media store.
pub mod store;
