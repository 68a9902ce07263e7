//! The embedded default store: a plain directory. Each key is the file at that
//! relative path, so an existing media directory can be mounted as it is.
//!
//! Writes go to a hidden temporary file beside the target and are renamed over
//! it, so a reader (or another host on a shared disk) sees the old file or the
//! new one, never a part. Symbolic links in the directory are not followed:
//! they are left out of listings, so no key can reach outside the root.

use std::fs::{self, File, Metadata};
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::{
    Attrs, Capacity, DirMeta, GetResult, ListPage, Node, ObjectMeta, Store, StoreError,
    StoreResult, join_key, valid_name,
};

/// Names the store uses for its own temporary files; never shown as keys.
const TMP_PREFIX: &str = ".mediafs-tmp.";
/// Entries per listing page: a page costs a pass over the directory's names
/// and a stat of its own entries, so large pages keep huge directories linear.
const PAGE_SIZE: usize = 10_000;
const READ_CHUNK: usize = 256 * 1024;

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Open the directory `root`, which must exist.
    pub fn open(root: &Path) -> Result<Self, String> {
        let meta =
            fs::metadata(root).map_err(|e| format!("store directory {}: {e}", root.display()))?;
        if !meta.is_dir() {
            return Err(format!(
                "store directory {} is not a directory",
                root.display()
            ));
        }
        let root = root
            .canonicalize()
            .map_err(|e| format!("store directory {}: {e}", root.display()))?;
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`, refusing anything that could leave the root.
    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        if key.is_empty() {
            return Ok(self.root.clone());
        }
        let mut path = self.root.clone();
        for part in key.split('/') {
            if !valid_name(part) || part.starts_with(TMP_PREFIX) {
                return Err(StoreError::InvalidKey(key.to_string()));
            }
            path.push(part);
        }
        Ok(path)
    }

    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> StoreResult<T> + Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Other(format!("local store task failed: {e}")))?
    }
}

fn version_of(m: &Metadata) -> String {
    // Inode, size and mtime to the nanosecond: a rename over the file or an edit
    // in place by another program changes at least one of them.
    format!(
        "{:x}-{:x}-{:x}.{:x}",
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    )
}

fn attrs_of(m: &Metadata) -> Attrs {
    Attrs {
        mode: Some(m.mode() & 0o7777),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        mtime: m.modified().ok(),
    }
}

fn object_meta(key: &str, m: &Metadata) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: m.len(),
        version: version_of(m),
        modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        attrs: attrs_of(m),
    }
}

fn dir_meta(key: &str, m: &Metadata) -> DirMeta {
    DirMeta {
        key: key.to_string(),
        modified: m.modified().ok(),
        attrs: attrs_of(m),
    }
}

fn node_of(key: &str, m: &Metadata) -> Option<Node> {
    if m.is_file() {
        Some(Node::File(object_meta(key, m)))
    } else if m.is_dir() {
        Some(Node::Dir(dir_meta(key, m)))
    } else {
        None // symlinks, sockets, devices: not media
    }
}

fn lstat(path: &Path, key: &str) -> StoreResult<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(StoreError::from_io(e, key)),
    }
}

fn apply_attrs(path: &Path, attrs: &Attrs, key: &str) -> StoreResult<()> {
    if let Some(mode) = attrs.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| StoreError::from_io(e, key))?;
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::lchown(path, attrs.uid, attrs.gid)
            .map_err(|e| StoreError::from_io(e, key))?;
    }
    if let Some(mtime) = attrs.mtime {
        let f = File::options()
            .write(false)
            .read(true)
            .open(path)
            .map_err(|e| StoreError::from_io(e, key))?;
        f.set_modified(mtime)
            .map_err(|e| StoreError::from_io(e, key))?;
    }
    Ok(())
}

fn unique_tmp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{TMP_PREFIX}{}.{nanos:x}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn ensure_parent(path: &Path, key: &str) -> StoreResult<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| StoreError::from_io(e, key))?;
    }
    Ok(())
}

/// A temporary file of a put that never finished (its process died) is
/// removed once it is clearly abandoned; a live put renames its file within
/// seconds, on any host sharing this directory.
fn remove_if_abandoned(path: &Path) {
    const ABANDONED: std::time::Duration = std::time::Duration::from_secs(3600);
    let old = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default() > ABANDONED)
        .unwrap_or(false);
    if old && fs::remove_file(path).is_ok() {
        tracing::info!(file = %path.display(), "removed an abandoned temporary file");
    }
}

/// One level of `dir`, sorted by name, skipping what cannot be a key.
/// The names in `dir` that can be shown, sorted, without their metadata.
fn level_names(dir: &Path, prefix: &str) -> StoreResult<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::from_io(e, prefix)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::from_io(e, prefix))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(dir = %dir.display(), name = ?entry.file_name(), "skipping a name that is not UTF-8");
            continue;
        };
        if name.starts_with(TMP_PREFIX) {
            remove_if_abandoned(&entry.path());
            continue;
        }
        if valid_name(&name) {
            out.push(name);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Files and directories among `names` of `dir`, with their metadata.
fn stat_names<'a>(
    dir: &Path,
    names: impl IntoIterator<Item = &'a String>,
) -> Vec<(&'a String, Metadata)> {
    names
        .into_iter()
        // A file removed between readdir and stat is simply not listed.
        .filter_map(|name| Some((name, dir.join(name).symlink_metadata().ok()?)))
        .filter(|(_, meta)| meta.is_file() || meta.is_dir())
        .collect()
}

fn read_level(dir: &Path, prefix: &str) -> StoreResult<Vec<(String, Metadata)>> {
    let names = level_names(dir, prefix)?;
    Ok(stat_names(dir, &names)
        .into_iter()
        .map(|(n, m)| (n.clone(), m))
        .collect())
}

fn walk_files(dir: &Path, key: &str, out: &mut Vec<ObjectMeta>) -> StoreResult<()> {
    for (name, meta) in read_level(dir, key)? {
        let child = join_key(key, &name);
        if meta.is_dir() {
            walk_files(&dir.join(&name), &child, out)?;
        } else {
            out.push(object_meta(&child, &meta));
        }
    }
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        match self.stat(key).await? {
            Some(Node::File(m)) => Ok(Some(m)),
            _ => Ok(None),
        }
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(move || Ok(lstat(&path, &key)?.and_then(|m| node_of(&key, &m))))
            .await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_none_match: Option<&str>,
    ) -> StoreResult<GetResult> {
        let path = self.path(key)?;
        let owned_key = key.to_string();
        let start = range.as_ref().map(|r| r.start);
        let (file, meta) = self
            .blocking(move || {
                let mut f = File::open(&path).map_err(|e| StoreError::from_io(e, &owned_key))?;
                let m = f
                    .metadata()
                    .map_err(|e| StoreError::from_io(e, &owned_key))?;
                if !m.is_file() {
                    return Err(StoreError::NotFound);
                }
                if let Some(start) = start {
                    f.seek(SeekFrom::Start(start))
                        .map_err(|e| StoreError::from_io(e, &owned_key))?;
                }
                Ok((f, object_meta(&owned_key, &m)))
            })
            .await?;
        if if_none_match == Some(meta.version.as_str()) {
            return Ok(GetResult::NotModified);
        }
        let len = match &range {
            Some(r) => r.end.min(meta.size).saturating_sub(r.start),
            None => meta.size,
        };
        let reader = tokio::fs::File::from_std(file).take(len);
        let owned_key = key.to_string();
        let body = ReaderStream::with_capacity(reader, READ_CHUNK)
            .map(move |r| r.map_err(|e| StoreError::from_io(e, &owned_key)))
            .boxed();
        Ok(GetResult::Body { meta, body })
    }

    async fn put(&self, key: &str, src: &Path, attrs: &Attrs) -> StoreResult<ObjectMeta> {
        let path = self.path(key)?;
        if key.is_empty() {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        let src = src.to_path_buf();
        let attrs = attrs.clone();
        let key = key.to_string();
        self.blocking(move || {
            ensure_parent(&path, &key)?;
            let tmp = path.with_file_name(unique_tmp_name());
            let result = (|| {
                fs::copy(&src, &tmp).map_err(|e| StoreError::from_io(e, &key))?;
                let mode = attrs.mode.unwrap_or(0o644);
                apply_attrs(
                    &tmp,
                    &Attrs {
                        mode: Some(mode),
                        ..attrs.clone()
                    },
                    &key,
                )?;
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| StoreError::from_io(e, &key))?;
                fs::rename(&tmp, &path).map_err(|e| StoreError::from_io(e, &key))
            })();
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            let m = fs::symlink_metadata(&path).map_err(|e| StoreError::from_io(e, &key))?;
            Ok(object_meta(&key, &m))
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io(e, &key)),
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage> {
        let dir_key = prefix.strip_suffix('/').unwrap_or(prefix).to_string();
        let dir = self.path(&dir_key)?;
        self.blocking(move || {
            let mut page = ListPage::default();
            if !delimiter {
                walk_files(&dir, &dir_key, &mut page.files)?;
                return Ok(page);
            }
            // Names only for the whole directory, metadata for this page's
            // names only: each page costs one readdir pass, not a stat of
            // every entry.
            let names = level_names(&dir, &dir_key)?;
            let start = match &token {
                Some(t) => names.partition_point(|n| n.as_str() <= t.as_str()),
                None => 0,
            };
            let end = (start + PAGE_SIZE).min(names.len());
            for (name, meta) in stat_names(&dir, &names[start..end]) {
                let key = join_key(&dir_key, name);
                if meta.is_dir() {
                    page.dirs.push(dir_meta(&key, &meta));
                } else {
                    page.files.push(object_meta(&key, &meta));
                }
            }
            if end < names.len() {
                page.next = Some(names[end - 1].clone());
            }
            Ok(page)
        })
        .await
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        let src = self.path(from)?;
        let meta = self.head(from).await?.ok_or(StoreError::NotFound)?;
        self.put(to, &src, &meta.attrs).await
    }

    async fn create_dir(&self, key: &str, attrs: &Attrs) -> StoreResult<()> {
        let path = self.path(key)?;
        let key = key.to_string();
        let attrs = attrs.clone();
        self.blocking(move || {
            ensure_parent(&path, &key)?;
            fs::create_dir(&path).map_err(|e| StoreError::from_io(e, &key))?;
            apply_attrs(
                &path,
                &Attrs {
                    mtime: None,
                    ..attrs
                },
                &key,
            )
        })
        .await
    }

    async fn remove_dir(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(move || fs::remove_dir(&path).map_err(|e| StoreError::from_io(e, &key)))
            .await
    }

    async fn set_attrs(&self, key: &str, attrs: &Attrs) -> StoreResult<Option<ObjectMeta>> {
        let path = self.path(key)?;
        let key = key.to_string();
        let attrs = attrs.clone();
        self.blocking(move || {
            apply_attrs(&path, &attrs, &key)?;
            let m = fs::symlink_metadata(&path).map_err(|e| StoreError::from_io(e, &key))?;
            Ok(m.is_file().then(|| object_meta(&key, &m)))
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        let src = self.path(from)?;
        let dst = self.path(to)?;
        let to = to.to_string();
        self.blocking(move || {
            ensure_parent(&dst, &to)?;
            fs::rename(&src, &dst).map_err(|e| StoreError::from_io(e, &to))?;
            let m = fs::symlink_metadata(&dst).map_err(|e| StoreError::from_io(e, &to))?;
            Ok(object_meta(&to, &m))
        })
        .await
    }

    async fn rename_dir(&self, from: &str, to: &str) -> StoreResult<()> {
        // One rename(2): atomic for every reader of this directory.
        let src = self.path(from)?;
        let dst = self.path(to)?;
        let to = to.to_string();
        self.blocking(move || {
            ensure_parent(&dst, &to)?;
            fs::rename(&src, &dst).map_err(|e| StoreError::from_io(e, &to))
        })
        .await
    }

    async fn capacity(&self) -> Option<Capacity> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).ok()?;
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
            if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
                return None;
            }
            let frsize = st.f_frsize;
            Some(Capacity {
                total_bytes: st.f_blocks * frsize,
                free_bytes: st.f_bavail * frsize,
                total_files: st.f_files,
                free_files: st.f_favail,
            })
        })
        .await
        .ok()
        .flatten()
    }
}
