//! The filesystem core: POSIX-ish operations over a `Store`, with the inode
//! table, metadata and listing caches, open handles and write-through. It
//! knows nothing of FUSE: the adapter in `fuse.rs` turns kernel requests into
//! calls here, and unit tests call it directly.
//!
//! Split by job: `namespace` (lookup, readdir, mkdir, unlink, rename),
//! `files` (open, read, write, flush, truncate, attributes).

pub mod error;
mod files;
pub mod inode;
mod namespace;
mod part_upload;
mod passthrough;
pub mod staging;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

pub use error::{FsError, FsResult};
pub use files::{OpenReply, ReadSource};
pub use inode::{Kind, ROOT_INO};
pub use namespace::{DirEntry, DirSnapshot};
pub use passthrough::{Backing, BackingGuard, PassthroughOpen};

use crate::cache::{DiskCache, private_dir};
use crate::store::{MAX_KEY_BYTES, MAX_NAME_BYTES, Node, Store, StoreError, StoreResult, join_key};
use inode::{Inode, InodeTable};

/// How the mount presents files the store keeps no attributes for, and how
/// long it trusts what it has seen.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Metadata TTL: lookups, attributes and listings are trusted this long; a
    /// change on another host shows after at most this. Zero: ask every time.
    pub ttl: Duration,
    pub read_only: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    /// Offer FUSE passthrough for fully cached files (if the kernel agrees).
    pub passthrough: bool,
    /// Where listings carry no per-file attributes (S3, Swift), ask the
    /// store for each file's own before showing it (the s3fs way: exact
    /// modes and mtimes, a request per file). Otherwise a listed file shows
    /// the listing's size and time and the mount's defaults until a GET or
    /// HEAD of it happens anyway.
    pub stat_listed_files: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            ttl: Duration::from_secs(5),
            read_only: false,
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            file_mode: 0o644,
            dir_mode: 0o755,
            passthrough: true,
            stat_listed_files: false,
        }
    }
}

/// Attributes of one inode, as the kernel wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits only (no file type).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// Filesystem-wide figures for statfs.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
}

pub(crate) struct Handle {
    pub ino: u64,
    pub write: bool,
    pub append: bool,
    pub source: ReadSource,
    pub staged: Option<Arc<staging::Staged>>,
    /// Served by FUSE passthrough (the kernel reads the cache file itself).
    pub passthrough: std::sync::atomic::AtomicBool,
}

impl Handle {
    fn new(
        ino: u64,
        source: ReadSource,
        staged: Option<Arc<staging::Staged>>,
        write: bool,
        append: bool,
        passthrough: bool,
    ) -> Self {
        Handle {
            ino,
            write,
            append,
            source,
            staged,
            passthrough: std::sync::atomic::AtomicBool::new(passthrough),
        }
    }
}

pub struct Core {
    /// Ourselves, for background work started from a request.
    me: std::sync::Weak<Core>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cache: Arc<DiskCache>,
    pub(crate) cfg: CoreConfig,
    pub(crate) inodes: Mutex<InodeTable>,
    pub(crate) handles: Mutex<HashMap<u64, Arc<Handle>>>,
    pub(crate) dir_handles: Mutex<HashMap<u64, Arc<DirSnapshot>>>,
    next_fh: AtomicU64,
    /// Paths known not to exist (negative entries), trusted for the TTL.
    pub(crate) missing: moka::sync::Cache<String, ()>,
    /// Directory listings, trusted for the TTL.
    pub(crate) listings: moka::sync::Cache<String, Arc<namespace::Listing>>,
    pub(crate) staging_dir: PathBuf,
    /// Serialises the creation of staging files, so two opens for writing of
    /// one file share one.
    pub(crate) stage_lock: tokio::sync::Mutex<()>,
    uploads: AtomicUsize,
    uploads_done: Notify,
    /// FUSE passthrough is on (config allows it and the kernel agreed).
    pub(crate) passthrough: std::sync::atomic::AtomicBool,
    /// Backing files registered with the kernel and not yet closed.
    backing_files: Arc<passthrough::BackingCount>,
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// While the store is unreachable: when to ask it again. Until then what
    /// we last knew is served (see `outage`).
    store_retry_at: Mutex<Option<Instant>>,
}

/// After the store failed to answer, how long stale metadata is served
/// without asking again (each ask could take --store-timeout).
const OUTAGE_RETRY: Duration = Duration::from_secs(5);

impl Core {
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<DiskCache>,
        cfg: CoreConfig,
    ) -> FsResult<Arc<Core>> {
        let staging_dir = cache.root().join("staging");
        private_dir(&staging_dir)
            .map_err(|e| FsError::local_io("creating staging directory", e))?;
        for (path, key) in staging::leftovers(&staging_dir) {
            tracing::warn!(
                file = %path.display(),
                key = %key,
                "found data written before a crash or a failed upload; it was not uploaded and is kept for recovery"
            );
        }
        // moka rejects a zero TTL; with TTL 0 nothing is ever inserted anyway.
        let ttl = cfg.ttl.max(Duration::from_millis(1));
        Ok(Arc::new_cyclic(|me| Core {
            me: me.clone(),
            store,
            cache,
            missing: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(100_000)
                .build(),
            listings: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(1_000)
                .build(),
            cfg,
            inodes: Mutex::new(InodeTable::new()),
            handles: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            staging_dir,
            stage_lock: tokio::sync::Mutex::new(()),
            uploads: AtomicUsize::new(0),
            uploads_done: Notify::new(),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            backing_files: Default::default(),
            runtime: Default::default(),
            store_retry_at: Mutex::new(None),
        }))
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn cache(&self) -> &Arc<DiskCache> {
        &self.cache
    }

    /// Whether the store failed to answer a moment ago: then callers with a
    /// stale answer serve it instead of waiting for the store again.
    pub(crate) fn store_down(&self) -> bool {
        self.store_retry_at
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t)
    }

    /// Note the result of a metadata request: an unreachable store starts (or
    /// extends) an outage, any answer ends it.
    pub(crate) fn note_store<T>(&self, result: &StoreResult<T>) {
        let mut retry = self.store_retry_at.lock().unwrap();
        match result {
            Err(StoreError::Unavailable(e)) => {
                if retry.is_none() {
                    tracing::warn!(error = %e, "store unreachable; serving cached files with what was last known");
                }
                *retry = Some(Instant::now() + OUTAGE_RETRY);
            }
            _ => {
                if retry.take().is_some() {
                    tracing::info!("store reachable again");
                }
            }
        }
    }

    fn caching(&self) -> bool {
        !self.cfg.ttl.is_zero()
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.cfg.ttl
    }

    /// Revalidate a hot file in the background once most of its TTL has
    /// passed, so the opens that keep coming find it fresh instead of each
    /// waiting for the store in turn (a web server's workers would). The
    /// promise is unchanged: what is served was confirmed by the store
    /// within the TTL.
    pub(crate) fn refresh_ahead(&self, ino: u64) {
        let (path, since) = {
            let mut t = self.inodes.lock().unwrap();
            let epoch = t.epoch();
            let Some(i) = t.get_mut(ino) else { return };
            if i.refreshing
                || i.has_local_state()
                || i.validated.elapsed() < self.cfg.ttl * 3 / 4
                || self.store_down()
            {
                return;
            }
            i.refreshing = true;
            (i.path.clone(), epoch)
        };
        // Only now, on the rare open that starts a refresh: the usual open
        // of a hot file stops at the check above.
        let me = self.me.upgrade();
        let rt = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.get().cloned());
        let (Some(me), Some(rt)) = (me, rt) else {
            if let Some(i) = self.inodes.lock().unwrap().get_mut(ino) {
                i.refreshing = false;
            }
            return;
        };
        rt.spawn(async move {
            let result = me.store.head(&path).await;
            me.note_store(&result);
            // Gone or failing: left to the next open past the TTL.
            if let Ok(Some(meta)) = result {
                me.inodes
                    .lock()
                    .unwrap()
                    .upsert_since(&path, &Node::File(meta), since);
            }
            if let Some(i) = me.inodes.lock().unwrap().get_mut(ino) {
                i.refreshing = false;
            }
        });
    }

    /// The runtime background work runs on (requests answered on FUSE
    /// threads have none of their own).
    pub fn set_runtime(&self, rt: tokio::runtime::Handle) {
        let _ = self.runtime.set(rt);
    }

    pub(crate) fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a listing's answer is enough to show a file: listings carry
    /// the attributes (local, database), or they carry size and time and the
    /// mount does not ask for each file's own (see `stat_listed_files`).
    pub fn listings_suffice(&self) -> bool {
        self.store.listing_has_attrs() || !self.cfg.stat_listed_files
    }

    /// The inode's attributes may be shown without asking the store.
    pub(crate) fn attrs_usable(&self, inode: &Inode) -> bool {
        inode.attrs_known || !self.cfg.stat_listed_files
    }

    pub(crate) fn attr_of(&self, inode: &Inode) -> Attr {
        let default_mode = match inode.kind {
            Kind::File => self.cfg.file_mode,
            Kind::Dir => self.cfg.dir_mode,
        };
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            size: inode.size(),
            mtime: inode.attrs.mtime.unwrap_or(inode.modified),
            perm: (inode.attrs.mode.unwrap_or(default_mode) & 0o7777) as u16,
            uid: inode.attrs.uid.unwrap_or(self.cfg.uid),
            gid: inode.attrs.gid.unwrap_or(self.cfg.gid),
        }
    }

    /// Path and kind of an inode.
    pub(crate) fn path_of(&self, ino: u64) -> FsResult<(String, Kind)> {
        let t = self.inodes.lock().unwrap();
        let i = t.get(ino).ok_or(FsError::NotFound)?;
        Ok((i.path.clone(), i.kind))
    }

    /// The path of `ino` as the mount shows it, for log lines.
    pub fn describe_ino(&self, ino: u64) -> String {
        match self.inodes.lock().unwrap().get(ino) {
            Some(i) => format!("/{}", i.path),
            None => format!("(inode {ino}, forgotten)"),
        }
    }

    /// The path of `name` in directory `parent`, for log lines.
    pub fn describe_entry(&self, parent: u64, name: &OsStr) -> String {
        let name = name.to_string_lossy();
        match self.inodes.lock().unwrap().get(parent) {
            Some(dir) => format!("/{}", join_key(&dir.path, &name)),
            None => format!("(inode {parent}, forgotten)/{name}"),
        }
    }

    /// The path of the file open as `fh`, for log lines.
    pub fn describe_handle(&self, fh: u64) -> String {
        match self.handle(fh) {
            Ok(h) => self.describe_ino(h.ino),
            Err(_) => format!("(file handle {fh}, released)"),
        }
    }

    /// The key of `name` inside directory `parent`, checked.
    pub(crate) fn child_path(&self, parent: u64, name: &OsStr) -> FsResult<(String, String)> {
        let name = check_name(name)?;
        let (dir, kind) = self.path_of(parent)?;
        if kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let path = join_key(&dir, name);
        if path.len() > MAX_KEY_BYTES {
            return Err(FsError::NameTooLong);
        }
        self.store.check_key(&path)?;
        Ok((dir, path))
    }

    pub(crate) fn check_writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Forget what we knew about `path` and its directory listing after we
    /// changed it ourselves.
    pub(crate) fn invalidate(&self, path: &str) {
        self.missing.invalidate(path);
        self.listings.invalidate(inode::parent_of(path));
    }

    pub fn getattr_cached(&self, ino: u64) -> Option<Attr> {
        let t = self.inodes.lock().unwrap();
        let i = t.get(ino)?;
        (ino == ROOT_INO
            || i.has_local_state()
            || (self.fresh(i.validated) && self.attrs_usable(i)))
        .then(|| self.attr_of(i))
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(a) = self.getattr_cached(ino) {
            return Ok(a);
        }
        let (path, _) = self.path_of(ino)?;
        let stale = || {
            let t = self.inodes.lock().unwrap();
            t.get(ino).map(|i| self.attr_of(i))
        };
        if self.store_down()
            && let Some(a) = stale()
        {
            return Ok(a);
        }
        let since = self.inodes.lock().unwrap().epoch();
        let result = match self.listed_stat(&path) {
            Some(stat) => stat.await,
            None => self.store.stat(&path).await,
        };
        self.note_store(&result);
        let node = match result {
            Err(StoreError::Unavailable(_)) if stale().is_some() => return Ok(stale().unwrap()),
            r => r?,
        };
        let mut t = self.inodes.lock().unwrap();
        let outdated = t.answer_outdated(&path, since);
        let inode = t.get(ino).ok_or(FsError::NotFound)?;
        match node {
            // Changed here while the store was asked: ours is newer.
            _ if outdated => Ok(self.attr_of(inode)),
            Some(node) if inode::kind_of(&node) == inode.kind && inode.path == path => {
                t.upsert(&path, &node, Instant::now());
                Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?))
            }
            // Gone from the store (or replaced by another kind): an open file
            // keeps its last attributes, like an unlinked file on a local disk.
            _ if inode.open > 0 => Ok(self.attr_of(inode)),
            _ => Err(FsError::NotFound),
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.lock().unwrap().forget(ino, n);
    }

    pub async fn statfs(&self) -> StatFs {
        const BSIZE: u64 = 4096;
        match self.store.capacity().await {
            Some(c) => StatFs {
                blocks: c.total_bytes / BSIZE,
                bfree: c.free_bytes / BSIZE,
                files: c.total_files,
                ffree: c.free_files,
                bsize: BSIZE as u32,
            },
            // Object stores have no fixed size: report a large, honest "plenty".
            None => StatFs {
                blocks: (1u64 << 50) / BSIZE,
                bfree: (1u64 << 50) / BSIZE,
                files: 1 << 32,
                ffree: 1 << 32,
                bsize: BSIZE as u32,
            },
        }
    }

    pub(crate) fn upload_started(&self) {
        self.uploads.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn upload_finished(&self) {
        if self.uploads.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.uploads_done.notify_waiters();
        }
    }

    /// Wait until no upload is running (for a clean shutdown).
    pub async fn wait_uploads(&self) {
        loop {
            let notified = self.uploads_done.notified();
            if self.uploads.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn uploads_in_flight(&self) -> usize {
        self.uploads.load(Ordering::Acquire)
    }
}

/// A name from the kernel, as a key component.
pub(crate) fn check_name(name: &OsStr) -> FsResult<&str> {
    if name.len() > MAX_NAME_BYTES {
        return Err(FsError::NameTooLong);
    }
    let name = name
        .to_str()
        .ok_or(FsError::Invalid("file names must be UTF-8"))?;
    if !crate::store::valid_name(name) {
        return Err(FsError::Invalid("not a valid file name"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests;
