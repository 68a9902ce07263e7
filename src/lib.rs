//! mediafs: a FUSE filesystem that mounts a shared media store.
pub mod cache;
pub mod cli;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod store;
