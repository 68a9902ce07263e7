//! mediafs: a FUSE filesystem that mounts a shared media store.
pub mod cache;
pub mod check;
pub mod cli;
pub mod fs;
pub mod fuse;
pub mod helper;
pub mod import;
pub mod metrics;
pub mod mount;
pub mod store;
