//! The store: where the media really lives. One small async trait, one file per
//! backend. The filesystem core only ever talks to `dyn Store`, so a new backend
//! never touches the core.
//!
//! Keys are relative paths with `/` separators, no leading or trailing slash
//! ("" is the root). Directories are not objects: a backend reports them as
//! `DirMeta` (a real directory, a marker object, a table row, or just a common
//! prefix of other keys).

pub mod instrumented;
pub mod local;
pub mod memory;
mod object_meta;
pub mod s3;
pub mod sql;
pub mod swift;
pub mod timeout;
pub mod url;

use std::ops::Range;
use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use url::{StoreOptions, StoreUrl, open_store};

/// Metadata a store may keep beside an object. `None` = the store does not know;
/// the core then uses the mount's defaults (--uid/--gid/--file-mode/--dir-mode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
}

impl Attrs {
    /// Fields set in `other` override ours.
    pub fn merged(&self, other: &Attrs) -> Attrs {
        Attrs {
            mode: other.mode.or(self.mode),
            uid: other.uid.or(self.uid),
            gid: other.gid.or(self.gid),
            mtime: other.mtime.or(self.mtime),
        }
    }
}

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Opaque version (ETag or equivalent). Equal versions mean equal bytes: the
    /// disk cache is keyed by it.
    pub version: String,
    pub modified: SystemTime,
    pub attrs: Attrs,
}

/// One directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirMeta {
    pub key: String,
    pub modified: Option<SystemTime>,
    pub attrs: Attrs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File(ObjectMeta),
    Dir(DirMeta),
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    pub files: Vec<ObjectMeta>,
    /// Sub-directories directly below the prefix (only with a delimiter).
    pub dirs: Vec<DirMeta>,
    /// Pass back to get the next page; `None` on the last page.
    pub next: Option<String>,
}

pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

pub enum GetResult {
    /// The caller's `if_none_match` version is still current.
    NotModified,
    Body {
        meta: ObjectMeta,
        body: ByteStream,
    },
}

/// Capacity figures for statfs, where the store has any.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    #[error("permission denied by the store: {0}")]
    PermissionDenied(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("object too large: {0}")]
    TooLarge(String),
    #[error("store is out of space: {0}")]
    NoSpace(String),
    #[error("operation not supported by this store: {0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn from_io(err: std::io::Error, what: &str) -> Self {
        use std::io::ErrorKind as K;
        match err.kind() {
            K::NotFound => StoreError::NotFound,
            K::AlreadyExists => StoreError::AlreadyExists,
            K::DirectoryNotEmpty => StoreError::NotEmpty,
            K::PermissionDenied | K::ReadOnlyFilesystem => {
                StoreError::PermissionDenied(format!("{what}: {err}"))
            }
            K::StorageFull | K::QuotaExceeded => StoreError::NoSpace(format!("{what}: {err}")),
            K::InvalidFilename => StoreError::NameTooLong(what.to_string()),
            _ => StoreError::Other(format!("{what}: {err}")),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short human description (for logs and the ready line). Never contains secrets.
    fn describe(&self) -> String;

    /// Whether the store can hold a file or directory at `key`, for limits of
    /// its own beyond the mount's (255-byte names, 1,024-byte keys): e.g.
    /// `NameTooLong` where its name columns are shorter. Checked before a
    /// create, mkdir or rename, so the caller gets the errno at once.
    fn check_key(&self, key: &str) -> StoreResult<()> {
        let _ = key;
        Ok(())
    }

    /// Metadata of the file at `key`, `None` if there is no file there.
    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>>;

    /// The file or directory at `key`. The default asks for a file, then for
    /// anything below `key/`; backends with a cheaper way override it.
    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        if key.is_empty() {
            return Ok(Some(Node::Dir(DirMeta {
                key: String::new(),
                modified: None,
                attrs: Attrs::default(),
            })));
        }
        if let Some(meta) = self.head(key).await? {
            return Ok(Some(Node::File(meta)));
        }
        let page = self.list(&format!("{key}/"), true, None).await?;
        if page.files.is_empty() && page.dirs.is_empty() {
            return Ok(None);
        }
        Ok(Some(Node::Dir(DirMeta {
            key: key.to_string(),
            modified: None,
            attrs: Attrs::default(),
        })))
    }

    /// `stat` of a key whose file the store has just said is missing (a
    /// lookup's GET answered 404): only a directory can be there. Backends
    /// that can skip asking for the file again override it; a miss is then
    /// one request fewer, which is most of a new file's creation cost.
    async fn stat_without_file(&self, key: &str) -> StoreResult<Option<Node>> {
        self.stat(key).await
    }

    /// Read `key`, the whole object or `range`. With `if_none_match` equal to the
    /// current version the store answers `NotModified` without a body.
    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_none_match: Option<&str>,
    ) -> StoreResult<GetResult>;

    /// Create or replace `key` with the bytes of the local file `src`, atomically:
    /// readers see the old or the new object, never a part. Parents are implied.
    async fn put(&self, key: &str, src: &Path, attrs: &Attrs) -> StoreResult<ObjectMeta>;

    /// Remove the file at `key`. Removing a missing key is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// List keys starting with `prefix` (empty or ending in `/`). With
    /// `delimiter`, one level only: sub-directories come back in `dirs`.
    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage>;

    /// Server-side copy of a file.
    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta>;

    /// Make an (empty) directory exist at `key`.
    async fn create_dir(&self, key: &str, attrs: &Attrs) -> StoreResult<()>;

    /// Remove the directory at `key`; the core has checked that it is empty.
    async fn remove_dir(&self, key: &str) -> StoreResult<()>;

    /// Persist attributes of a file or directory. Returns the file's new metadata
    /// (its version may change), `None` for a directory.
    async fn set_attrs(&self, key: &str, attrs: &Attrs) -> StoreResult<Option<ObjectMeta>>;

    /// Move a file. The default copies, then deletes the source.
    async fn rename(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        let meta = self.copy(from, to).await?;
        self.delete(from).await?;
        Ok(meta)
    }

    /// Move a directory and everything below it. `to` does not exist or is an
    /// empty directory. The default copies every key, then deletes the sources:
    /// other hosts may see both trees for a moment, never neither.
    async fn rename_dir(&self, from: &str, to: &str) -> StoreResult<()> {
        let mut files = Vec::new();
        let mut token = None;
        loop {
            let page = self.list(&format!("{from}/"), false, token).await?;
            files.extend(page.files);
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        let mut subdirs = Vec::new();
        collect_dirs(self, from, &mut subdirs).await?;
        self.create_dir(to, &Attrs::default()).await?;
        for dir in &subdirs {
            self.create_dir(&rebase(dir, from, to), &Attrs::default())
                .await?;
        }
        for f in &files {
            self.copy(&f.key, &rebase(&f.key, from, to)).await?;
        }
        for f in &files {
            self.delete(&f.key).await?;
        }
        for dir in subdirs.iter().rev() {
            self.remove_dir(dir).await?;
        }
        self.remove_dir(from).await
    }

    /// Capacity for statfs, if the store can tell.
    async fn capacity(&self) -> Option<Capacity> {
        None
    }

    /// Whether `list` returns each file's attributes (mode, owner, mtime).
    /// When it does not (S3 listings carry no user metadata), the core asks
    /// `head` before showing a file's attributes.
    fn listing_has_attrs(&self) -> bool {
        true
    }

    /// Objects up to this size are worth fetching whole instead of a bare
    /// `stat` when a name is looked up (0: never). Over a network a GET costs
    /// about what a HEAD does, and the open that usually follows a lookup then
    /// needs no request at all: one round trip per small file, not two.
    fn lookup_fetch_bytes(&self) -> u64 {
        0
    }

    /// How this store takes a file in parts while it is still being written
    /// (S3 multipart uploads); `None`: only whole-file `put`.
    fn part_plan(&self) -> Option<PartPlan> {
        None
    }

    /// Start an upload in parts of the file at `key`; returns its id. Nothing
    /// is visible at `key` until `complete_upload`.
    async fn begin_upload(&self, key: &str, attrs: &Attrs) -> StoreResult<String> {
        let _ = (key, attrs);
        Err(StoreError::Unsupported("uploads in parts"))
    }

    /// Send bytes `range` of `src` as part `number` (1-based) of `upload`;
    /// returns the part's tag for `complete_upload`. Sending a number again
    /// replaces that part.
    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        src: &Path,
        range: Range<u64>,
    ) -> StoreResult<String> {
        let _ = (key, upload, number, src, range);
        Err(StoreError::Unsupported("uploads in parts"))
    }

    /// Make the object of `size` bytes from `parts` (number, tag), in order.
    async fn complete_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[(u32, String)],
        size: u64,
    ) -> StoreResult<ObjectMeta> {
        let _ = (key, upload, parts, size);
        Err(StoreError::Unsupported("uploads in parts"))
    }

    /// Drop an upload that will not be completed, and its parts.
    async fn abort_upload(&self, key: &str, upload: &str) -> StoreResult<()> {
        let _ = (key, upload);
        Err(StoreError::Unsupported("uploads in parts"))
    }
}

/// Sizes for uploads in parts: see `Store::part_plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    /// Files up to this size are sent whole with `put`.
    pub threshold: u64,
    /// Every part but the last has exactly this size.
    pub part_size: u64,
    /// The store's limit on parts per object.
    pub max_parts: u32,
    /// Parts worth sending at once.
    pub parallel: usize,
}

/// All directories below `dir`, parents before children.
async fn collect_dirs<S: Store + ?Sized>(
    store: &S,
    dir: &str,
    out: &mut Vec<String>,
) -> StoreResult<()> {
    let mut stack = vec![dir.to_string()];
    while let Some(d) = stack.pop() {
        let mut token = None;
        loop {
            let page = store.list(&format!("{d}/"), true, token).await?;
            for sub in page.dirs {
                out.push(sub.key.clone());
                stack.push(sub.key);
            }
            token = page.next;
            if token.is_none() {
                break;
            }
        }
    }
    out.sort();
    Ok(())
}

/// `key` moved from below `from` to below `to`.
pub fn rebase(key: &str, from: &str, to: &str) -> String {
    debug_assert!(key == from || key.starts_with(&format!("{from}/")));
    format!("{to}{}", &key[from.len()..])
}

/// Join a directory key and a name.
pub fn join_key(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of a key.
pub fn key_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Whether `name` can be one component of a key and a file name on every host.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= MAX_NAME_BYTES
}

/// Longest file name the mount accepts (the Linux NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;

/// Longest key accepted (S3's limit; smaller backends check their own).
pub const MAX_KEY_BYTES: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("a.jpg"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(256)));
        assert!(valid_name(&"x".repeat(255)));
        assert_eq!(join_key("", "a"), "a");
        assert_eq!(join_key("a/b", "c"), "a/b/c");
        assert_eq!(key_name("a/b/c"), "c");
        assert_eq!(rebase("a/b/c", "a/b", "x"), "x/c");
    }
}
