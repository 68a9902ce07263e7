//! Every way a filesystem operation can fail, and the one place that maps each
//! to an errno.

use crate::cache::DownloadError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid name or argument: {0}")]
    Invalid(&'static str),
    #[error("read-only mount")]
    ReadOnly,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("the file changed in the store while it was being read")]
    Stale,
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("I/O error: {0}")]
    Io(String),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotSupported(_) => libc::ENOTSUP,
            FsError::BadHandle => libc::EBADF,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::PermissionDenied(_) => libc::EACCES,
            FsError::Stale => libc::ESTALE,
            FsError::Busy(_) => libc::EBUSY,
            FsError::Io(_) => libc::EIO,
        }
    }

    /// The errno's name, for logs and metric labels.
    pub fn errno_name(&self) -> &'static str {
        match self {
            FsError::NotFound => "ENOENT",
            FsError::Exists => "EEXIST",
            FsError::NotEmpty => "ENOTEMPTY",
            FsError::NotDir => "ENOTDIR",
            FsError::IsDir => "EISDIR",
            FsError::NameTooLong => "ENAMETOOLONG",
            FsError::Invalid(_) => "EINVAL",
            FsError::ReadOnly => "EROFS",
            FsError::NotSupported(_) => "ENOTSUP",
            FsError::BadHandle => "EBADF",
            FsError::NoSpace(_) => "ENOSPC",
            FsError::PermissionDenied(_) => "EACCES",
            FsError::Stale => "ESTALE",
            FsError::Busy(_) => "EBUSY",
            FsError::Io(_) => "EIO",
        }
    }

    /// The error is the plain answer to the request, given by the names,
    /// kinds and arguments involved (a missing name, a full directory, a
    /// name too long, an operation the filesystem never does), not a
    /// failure of the store, the disk or mediafs. Everything else is logged
    /// at warn, so an operator sees every failure an application sees.
    pub fn is_plain_answer(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::Exists
                | FsError::NotEmpty
                | FsError::NotDir
                | FsError::IsDir
                | FsError::NameTooLong
                | FsError::Invalid(_)
                | FsError::ReadOnly
                | FsError::NotSupported(_)
        )
    }

    pub fn local_io(what: &str, err: std::io::Error) -> Self {
        if err.raw_os_error() == Some(libc::ENOSPC) || err.raw_os_error() == Some(libc::EDQUOT) {
            FsError::NoSpace(format!("{what}: {err}"))
        } else {
            FsError::Io(format!("{what}: {err}"))
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => FsError::NotFound,
            StoreError::AlreadyExists => FsError::Exists,
            StoreError::NotEmpty => FsError::NotEmpty,
            StoreError::NameTooLong(_) => FsError::NameTooLong,
            StoreError::InvalidKey(_) => FsError::Invalid("name the store cannot hold"),
            // The store refusing us is an I/O failure for the application: its
            // own permissions are enforced by the kernel against our modes.
            other => FsError::Io(other.to_string()),
        }
    }
}

impl From<DownloadError> for FsError {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::Store(s) => s.into(),
            DownloadError::Changed => FsError::Stale,
            other => FsError::Io(other.to_string()),
        }
    }
}
