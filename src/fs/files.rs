//! File contents: open, create, read, write, flush (write-through), release,
//! truncate and attributes.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::inode::Kind;
use super::part_upload::Finish;
use super::passthrough::PassthroughOpen;
use super::staging::Staged;
use super::{Attr, Core, FsError, FsResult, Handle};
use crate::cache::{Download, DownloadError};
use crate::store::{Attrs, GetResult, ObjectMeta, StoreError};
use futures::StreamExt;

/// Where a read handle gets its bytes.
pub enum ReadSource {
    /// Write-only, or reads go to the inode's staging file.
    None,
    /// A complete cache entry.
    Cached(File),
    /// A download still running (or finished) into the cache.
    Download(Arc<Download>),
    /// A zero-byte object: nothing to fetch.
    Empty,
    /// The cache disk is unusable: each read is a ranged GET of this version.
    Direct(ObjectMeta),
}

pub struct OpenReply {
    pub ino: u64,
    pub fh: u64,
    /// The kernel may keep its page cache and attributes: the version is the
    /// one it last opened. When false, the adapter also drops the kernel's
    /// attributes: they may describe an older version (another host changed
    /// the file since the kernel's last lookup), and the kernel clamps reads
    /// and reports fstat sizes by them.
    pub keep_cache: bool,
    /// Reads bypass the kernel's page cache (FOPEN_DIRECT_IO).
    pub direct_io: bool,
    /// Let the kernel read a local file directly (FUSE passthrough).
    pub passthrough: Option<PassthroughOpen>,
}

/// How many times an open retries when the object changes under it.
const OPEN_RETRIES: usize = 3;

impl Core {
    /// The store version of a file, revalidated if older than the TTL.
    async fn current_object(&self, ino: u64) -> FsResult<Option<ObjectMeta>> {
        let (path, stale, since) = {
            let t = self.inodes.lock().unwrap();
            let i = t.get(ino).ok_or(FsError::NotFound)?;
            if i.has_local_state() || self.fresh(i.validated) {
                return Ok(i.object.clone());
            }
            (i.path.clone(), i.object.clone(), t.epoch())
        };
        // The store is down: the version we knew is the best answer there is
        // (its bytes may well be in the disk cache).
        if self.store_down() && stale.is_some() {
            return Ok(stale);
        }
        let result = self.store.head(&path).await;
        self.note_store(&result);
        let result = match result {
            Err(StoreError::Unavailable(_)) if stale.is_some() => return Ok(stale),
            r => r,
        };
        match result? {
            Some(meta) => {
                if stale.as_ref().is_some_and(|s| s.version != meta.version) {
                    tracing::debug!(key = %path, "changed in the store; will read the new version");
                }
                let mut t = self.inodes.lock().unwrap();
                if t.answer_outdated(&path, since) {
                    // We changed it meanwhile: ours is newer.
                    return Ok(t.get(ino).and_then(|i| i.object.clone()));
                }
                t.upsert(
                    &path,
                    &crate::store::Node::File(meta.clone()),
                    Instant::now(),
                );
                Ok(Some(meta))
            }
            None => {
                self.missing.invalidate(&path);
                Err(FsError::NotFound)
            }
        }
    }

    /// Take the attributes an answer of the store carried for a version we
    /// know only from a listing. Nothing is learnt of another version, and
    /// attributes already known are kept: they are as new as the answer or
    /// newer (a chmod here keeps an S3 object's ETag, and the download's GET
    /// may have been sent before it).
    fn learn(&self, answer: &ObjectMeta) {
        let mut t = self.inodes.lock().unwrap();
        let known = t.by_path(&answer.key).is_some_and(|i| {
            !i.attrs_known && i.object.as_ref().map(|o| &o.version) == Some(&answer.version)
        });
        if known {
            t.upsert(
                &answer.key,
                &crate::store::Node::File(answer.clone()),
                Instant::now(),
            );
        }
    }

    /// While the store is down: the previous version of a file whose
    /// current version (learnt just before the outage) has no bytes here,
    /// if the previous one's are in the disk cache. A whole older version
    /// beats an error for a web page, as stale metadata does in an outage.
    fn previous_while_down(
        &self,
        ino: u64,
        current: &ObjectMeta,
    ) -> Option<(ObjectMeta, ReadSource)> {
        if !self.store_down() || self.cache.contains(current) {
            return None;
        }
        let previous = self.inodes.lock().unwrap().get(ino)?.previous.clone()?;
        let file = self.cache.open_entry(&previous)?;
        tracing::warn!(
            key = %current.key,
            "store unreachable and the current version not cached; serving the previous version"
        );
        Some((previous, ReadSource::Cached(file)))
    }

    /// Forget a version that turned out to be outdated, so the next look asks
    /// the store again.
    fn mark_stale(&self, ino: u64) {
        if let Some(i) = self.inodes.lock().unwrap().get_mut(ino) {
            i.validated = Instant::now() - self.cfg.ttl - std::time::Duration::from_secs(1);
        }
    }

    fn register(&self, ino: u64, handle: Handle) -> u64 {
        let fh = self.new_fh();
        if let Some(i) = self.inodes.lock().unwrap().get_mut(ino) {
            i.open += 1;
        }
        self.handles.lock().unwrap().insert(fh, Arc::new(handle));
        fh
    }

    pub(crate) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<OpenReply> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        let append = flags & libc::O_APPEND != 0;
        if self.path_of(ino)?.1 == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if write {
            self.check_writable()?;
            self.claim_plain_io(ino).await?;
            let staged = match self.stage(ino, truncate).await {
                Ok(s) => s,
                Err(e) => {
                    self.release_io(ino, false);
                    return Err(e);
                }
            };
            staged.writers.fetch_add(1, Ordering::AcqRel);
            let fh = self.register(
                ino,
                Handle::new(ino, ReadSource::None, Some(staged), true, append, false),
            );
            return Ok(OpenReply {
                ino,
                fh,
                keep_cache: false,
                direct_io: false,
                passthrough: None,
            });
        }
        // Being written on this host: read the local bytes, from a handle of
        // its own (the inode may retire its staging file at any time).
        let staged = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .and_then(|i| i.staged.clone());
        if let Some(staged) = staged {
            self.claim_plain_io(ino).await?;
            let fh = self.register(
                ino,
                Handle::new(ino, ReadSource::None, Some(staged), false, false, false),
            );
            return Ok(OpenReply {
                ino,
                fh,
                keep_cache: false,
                direct_io: false,
                passthrough: None,
            });
        }
        let mut attempt = 0;
        let (meta, source) = loop {
            attempt += 1;
            let meta = self.current_object(ino).await?.ok_or(FsError::NotFound)?;
            if let Some(older) = self.previous_while_down(ino, &meta) {
                break older;
            }
            match self.source_for(&meta).await {
                Ok(source) => break (meta, source),
                Err(FsError::Stale) if attempt < OPEN_RETRIES => {
                    self.mark_stale(ino);
                }
                Err(e) => match self.previous_while_down(ino, &meta) {
                    Some(older) => break older,
                    None => return Err(e),
                },
            }
        };
        let cached = match &source {
            ReadSource::Cached(f) => Some(f),
            _ => None,
        };
        let passthrough = self.claim_read_io(ino, &meta.version, cached).await?;
        Ok(self.finish_read_open(ino, &meta, source, passthrough))
    }

    /// An open for reading answered from what we know, with no store request
    /// and no waiting; `None` when the full `open` is needed.
    pub fn open_known(&self, ino: u64, flags: i32) -> Option<FsResult<OpenReply>> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return None;
        }
        let meta = {
            let t = self.inodes.lock().unwrap();
            let i = t.get(ino)?;
            if i.kind != Kind::File || i.has_local_state() || !self.fresh(i.validated) {
                return None;
            }
            i.object.clone()?
        };
        let source = if meta.size == 0 {
            ReadSource::Empty
        } else {
            ReadSource::Cached(self.cache.probe_entry(&meta)?)
        };
        self.refresh_ahead(ino);
        let cached = match &source {
            ReadSource::Cached(f) => Some(f),
            _ => None,
        };
        let passthrough = match self.claim_read_io_now(ino, &meta.version, cached) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(self.finish_read_open(ino, &meta, source, passthrough)))
    }

    fn finish_read_open(
        &self,
        ino: u64,
        meta: &ObjectMeta,
        source: ReadSource,
        passthrough: Option<PassthroughOpen>,
    ) -> OpenReply {
        // The kernel keeps one page cache per inode, shared by all its
        // opens: pages one reader brought in serve the others. A version
        // other than the one the kernel last opened is therefore read past
        // the page cache (direct I/O) while other opens of the inode may be
        // reading an older one, and always when passthrough is on (hot
        // files are served by passthrough then; these are first reads).
        let (keep_cache, direct_io) = {
            let mut t = self.inodes.lock().unwrap();
            match t.get_mut(ino) {
                _ if passthrough.is_some() => (false, false),
                Some(i) => {
                    let same = i.kernel_version.as_deref() == Some(meta.version.as_str());
                    let direct = self.passthrough_enabled() || (!same && i.open > 0);
                    if !direct {
                        i.kernel_version = Some(meta.version.clone());
                    }
                    (same && !direct, direct)
                }
                None => (false, true),
            }
        };
        let fh = self.register(
            ino,
            Handle::new(ino, source, None, false, false, passthrough.is_some()),
        );
        OpenReply {
            ino,
            fh,
            keep_cache,
            direct_io,
            passthrough,
        }
    }

    /// A close of a handle that wrote nothing needs no store work; `true` if
    /// `fh` is such a handle (then flush is a no-op).
    pub fn flush_is_noop(&self, fh: u64) -> bool {
        self.handle(fh).map(|h| !h.write).unwrap_or(true)
    }

    /// Release a read-only handle at once; `false` if `fh` needs the full
    /// (async) release.
    pub fn release_reader(&self, fh: u64) -> bool {
        let mut handles = self.handles.lock().unwrap();
        match handles.get(&fh) {
            Some(h) if !h.write => {}
            _ => return false,
        }
        let h = handles.remove(&fh).expect("just seen");
        drop(handles);
        self.forget_handle(&h);
        true
    }

    fn forget_handle(&self, h: &Handle) {
        self.release_io(h.ino, h.passthrough.load(Ordering::Acquire));
        let mut t = self.inodes.lock().unwrap();
        if let Some(i) = t.get_mut(h.ino) {
            i.open = i.open.saturating_sub(1);
        }
        t.maybe_drop(h.ino);
    }

    /// Bytes of `meta`: from the cache, or a (shared) download into it, or,
    /// when the cache disk fails, straight from the store.
    async fn source_for(&self, meta: &ObjectMeta) -> FsResult<ReadSource> {
        if meta.size == 0 {
            return Ok(ReadSource::Empty);
        }
        if let Some(f) = self.cache.open_entry(meta) {
            return Ok(ReadSource::Cached(f));
        }
        let dl = match self.cache.fetch(&self.store, meta) {
            Ok(dl) => dl,
            Err(DownloadError::Local(e)) => {
                tracing::warn!(key = %meta.key, error = %e, "cache disk unusable; reading from the store directly");
                return Ok(ReadSource::Direct(meta.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let started = dl.started().await;
        if let Err(DownloadError::Store(e)) = &started {
            self.note_store::<()>(&Err(e.clone()));
        }
        match started {
            Ok(()) => {
                // The GET brought the object's own attributes (modes,
                // owner, mtime), which a listing lacks on S3 and Swift.
                if let Some(answer) = dl.answer()
                    && !self.store.listing_has_attrs()
                {
                    self.learn(answer);
                }
                Ok(ReadSource::Download(dl))
            }
            Err(DownloadError::Local(_)) => Ok(ReadSource::Direct(meta.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// One read straight from the store (a ranged GET of exactly this version).
    async fn read_direct(&self, meta: &ObjectMeta, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let end = (offset + size as u64).min(meta.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        match self.store.get(&meta.key, Some(offset..end), None).await? {
            GetResult::Body {
                meta: got,
                mut body,
            } => {
                if got.version != meta.version {
                    return Err(FsError::Stale);
                }
                let mut out = Vec::with_capacity((end - offset) as usize);
                while let Some(chunk) = body.next().await {
                    out.extend_from_slice(&chunk?);
                }
                if out.len() as u64 != end - offset {
                    return Err(FsError::Io(format!(
                        "short read from the store for {}",
                        meta.key
                    )));
                }
                Ok(out)
            }
            GetResult::NotModified => Err(FsError::Io("store answered 304 to a plain GET".into())),
        }
    }

    /// The inode's staging file, made (and filled with the current bytes unless
    /// truncating) if there is none yet.
    async fn stage(&self, ino: u64, truncate: bool) -> FsResult<Arc<Staged>> {
        let _one_at_a_time = self.stage_lock.lock().await;
        let (path, existing, local_only) = {
            let t = self.inodes.lock().unwrap();
            let i = t.get(ino).ok_or(FsError::NotFound)?;
            (i.path.clone(), i.staged.clone(), i.local_only)
        };
        if let Some(staged) = existing {
            if truncate {
                let _excl = staged.lock.write().await;
                staged.truncate(0)?;
                self.data_changed(ino);
            }
            return Ok(staged);
        }
        let staged = Arc::new(Staged::create(&self.staging_dir, &path)?);
        if truncate {
            staged.set_dirty(true);
            self.data_changed(ino);
        } else if local_only {
            staged.set_dirty(true);
        } else if let Err(e) = self.fill_staged(ino, &staged).await {
            staged.discard();
            return Err(e);
        }
        let mut t = self.inodes.lock().unwrap();
        let i = t.get_mut(ino).ok_or(FsError::NotFound)?;
        i.staged = Some(staged.clone());
        Ok(staged)
    }

    /// The file's bytes changed on this host (a truncation): its mtime is
    /// now, as after a write, not the one it was opened with.
    fn data_changed(&self, ino: u64) {
        if let Some(i) = self.inodes.lock().unwrap().get_mut(ino) {
            i.modified = SystemTime::now();
            i.attrs.mtime = None;
        }
    }

    /// Copy the file's current bytes into a new staging file.
    async fn fill_staged(&self, ino: u64, staged: &Staged) -> FsResult<()> {
        let Some(meta) = self.current_object(ino).await? else {
            return Ok(());
        };
        if meta.size == 0 {
            return Ok(());
        }
        let src = match self.cache.open_entry(&meta) {
            Some(f) => f,
            None => {
                let dl = self.cache.fetch(&self.store, &meta)?;
                dl.complete().await?;
                dl.file()
                    .map_err(|e| FsError::local_io("opening download", e))?
            }
        };
        staged.fill_from(src)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Attr, OpenReply)> {
        self.check_writable()?;
        let (_, path) = self.child_path(parent, name)?;
        match self.resolve(&path).await {
            Ok(ino) => {
                if flags & libc::O_EXCL != 0 {
                    return Err(FsError::Exists);
                }
                let reply = self.open(ino, flags).await?;
                let mut t = self.inodes.lock().unwrap();
                let i = t.get_mut(ino).ok_or(FsError::NotFound)?;
                i.lookups += 1;
                return Ok((self.attr_of(i), reply));
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let attrs = Attrs {
            mode: Some(mode & 0o7777),
            uid: Some(uid),
            gid: Some(gid),
            mtime: None,
        };
        let staged = Arc::new(Staged::create(&self.staging_dir, &path)?);
        staged.set_dirty(true);
        staged.writers.fetch_add(1, Ordering::AcqRel);
        let ino = {
            let mut t = self.inodes.lock().unwrap();
            let ino = t.insert_local(&path, Kind::File, attrs);
            let i = t.get_mut(ino).expect("just inserted");
            i.staged = Some(staged.clone());
            i.lookups += 1;
            i.io_plain += 1; // a new inode: no passthrough opens to wait for
            ino
        };
        // Lookups find the new inode (it has local state); readdir adds it
        // to any listing. The parent's listing stays good.
        self.missing.invalidate(&path);
        let append = flags & libc::O_APPEND != 0;
        let fh = self.register(
            ino,
            Handle::new(ino, ReadSource::None, Some(staged), true, append, false),
        );
        let attr = self.getattr_cached(ino).ok_or(FsError::NotFound)?;
        Ok((
            attr,
            OpenReply {
                ino,
                fh,
                keep_cache: false,
                direct_io: false,
                passthrough: None,
            },
        ))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.handle(fh)?;
        // The newest local bytes first: a writer on this host is seen at once.
        let current = self
            .inodes
            .lock()
            .unwrap()
            .get(h.ino)
            .and_then(|i| i.staged.clone());
        if let Some(staged) = current.or_else(|| h.staged.clone()) {
            let _shared = staged.lock.read().await;
            let len = (size as u64).min(staged.size().saturating_sub(offset)) as usize;
            return read_file_at(staged.as_file(), offset, len);
        }
        match &h.source {
            ReadSource::None | ReadSource::Empty => Ok(Vec::new()),
            ReadSource::Cached(f) => read_file_at(f, offset, size as usize),
            ReadSource::Direct(meta) => self.read_direct(meta, offset, size).await,
            ReadSource::Download(dl) => {
                match dl.ready_range(offset, offset + size as u64).await {
                    Ok(()) => {}
                    Err(DownloadError::Local(_)) => {
                        return self.read_direct(&dl.meta, offset, size).await;
                    }
                    Err(e) => return Err(e.into()),
                }
                let len = (size as u64).min(dl.meta.size.saturating_sub(offset)) as usize;
                read_file_at(dl.as_file(), offset, len)
            }
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let staged = h
            .staged
            .as_ref()
            .filter(|_| h.write)
            .ok_or(FsError::BadHandle)?;
        let _shared = staged.lock.read().await;
        let offset = if h.append { staged.size() } else { offset };
        let mut result = staged.write_at(data, offset);
        if let Err(FsError::NoSpace(_)) = result {
            // Cached copies are worth less than the application's data.
            self.cache.free_bytes(data.len() as u64 + (16 << 20));
            result = staged.write_at(data, offset);
        }
        if let Err(e) = result {
            staged.mark_broken();
            return Err(e);
        }
        let mut t = self.inodes.lock().unwrap();
        if let Some(i) = t.get_mut(h.ino) {
            i.modified = SystemTime::now();
            i.attrs.mtime = None;
            if let Some(plan) = self.store.part_plan() {
                staged.parts.lock().unwrap().send_ready(
                    &self.store,
                    plan,
                    &i.path,
                    &i.attrs,
                    &staged.path,
                    staged.size(),
                );
            }
        }
        Ok(data.len() as u32)
    }

    /// close() and fsync(): return once the store holds every byte written.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        match (&h.staged, h.write) {
            (Some(staged), true) => self.upload(h.ino, staged).await,
            _ => Ok(()),
        }
    }

    /// Write-through: send the staging file to the store, whole.
    async fn upload(&self, ino: u64, staged: &Arc<Staged>) -> FsResult<()> {
        let _excl = staged.lock.write().await;
        if !staged.is_dirty() {
            return Ok(());
        }
        let (path, attrs, unlinked, modified) = {
            let t = self.inodes.lock().unwrap();
            let i = t.get(ino).ok_or(FsError::NotFound)?;
            (i.path.clone(), i.attrs.clone(), i.unlinked, i.modified)
        };
        if unlinked {
            // Written to a file that was deleted meanwhile: nothing to keep.
            staged.parts.lock().unwrap().abandon(&self.store);
            staged.set_dirty(false);
            return Ok(());
        }
        if staged.is_broken() {
            staged.parts.lock().unwrap().abandon(&self.store);
            tracing::error!(
                key = %path,
                staging_file = %staged.path.display(),
                "not uploading: a write to this file failed on the local disk; the store keeps its previous version"
            );
            return Err(FsError::NoSpace(format!(
                "an earlier write to {path} failed; not uploaded"
            )));
        }
        let finish = staged
            .parts
            .lock()
            .unwrap()
            .finish(&self.store, &path, &attrs);
        let attrs = Attrs {
            mtime: attrs.mtime.or(Some(modified)),
            ..attrs
        };
        self.upload_started();
        tracing::debug!(key = %path, size = staged.size(), "uploading");
        let result = match finish {
            Finish::Parts(parts) => {
                match parts
                    .complete(&self.store, staged.path.clone(), staged.size())
                    .await
                {
                    // A store that is down would fail the whole upload too.
                    Err(e @ StoreError::Unavailable(_)) => Err(e),
                    Err(e) => {
                        tracing::warn!(key = %path, error = %e, "upload in parts failed; sending the whole file");
                        self.store.put(&path, &staged.path, &attrs).await
                    }
                    Ok(meta) => {
                        tracing::debug!(key = %path, size = meta.size, "uploaded in parts sent while the file was written");
                        Ok(meta)
                    }
                }
            }
            Finish::Spoiled(why) => {
                tracing::debug!(key = %path, why, "parts sent early are dropped; sending the whole file");
                self.store.put(&path, &staged.path, &attrs).await
            }
            Finish::Whole => self.store.put(&path, &staged.path, &attrs).await,
        };
        self.upload_finished();
        match result {
            Ok(meta) => {
                tracing::debug!(key = %path, version = %meta.version, "uploaded");
                staged.set_dirty(false);
                let mut t = self.inodes.lock().unwrap();
                t.note_change(&path);
                if let Some(i) = t.get_mut(ino) {
                    i.local_only = false;
                    i.kernel_version = Some(meta.version.clone());
                    i.attrs = i.attrs.merged(&meta.attrs);
                    i.object = Some(meta.clone());
                    i.validated = Instant::now();
                }
                drop(t);
                self.listed_change(&path, Some(crate::store::Node::File(meta)));
                Ok(())
            }
            Err(e) => {
                staged.note_upload_failed();
                tracing::error!(
                    key = %path,
                    request = "put",
                    staging_file = %staged.path.display(),
                    error = %e,
                    "upload failed; the store keeps its previous version and the written bytes stay in the staging file"
                );
                Err(match e {
                    // The store refused the name itself (a clash under its
                    // collation, a column too short): say so, not EIO.
                    StoreError::AlreadyExists => FsError::Exists,
                    StoreError::NameTooLong(_) => FsError::NameTooLong,
                    e => FsError::Io(format!("upload of {path} failed: {e}")),
                })
            }
        }
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.handles.lock().unwrap().remove(&fh) else {
            return Err(FsError::BadHandle);
        };
        let mut result = Ok(());
        if let (Some(staged), true) = (&h.staged, h.write)
            && staged.writers.fetch_sub(1, Ordering::AcqRel) == 1
        {
            if staged.is_dirty() && !staged.upload_failed() {
                // close() normally flushed already; this is the last chance
                // for bytes no close() sent (written through a mapping).
                result = self.upload(h.ino, staged).await;
            }
            self.retire_staged(h.ino, staged).await;
        }
        self.forget_handle(&h);
        result
    }

    /// The last writer has gone: the staged bytes become the cache entry of
    /// the version we uploaded, or stay on disk if the store never got them.
    async fn retire_staged(&self, ino: u64, staged: &Arc<Staged>) {
        let _excl = staged.lock.write().await;
        if staged.writers.load(Ordering::Acquire) > 0 {
            return; // someone opened it for writing again meanwhile
        }
        let object = {
            let mut t = self.inodes.lock().unwrap();
            let Some(i) = t.get_mut(ino) else { return };
            if i.staged.as_ref().is_some_and(|s| Arc::ptr_eq(s, staged)) {
                i.staged = None;
            }
            i.object.clone()
        };
        if staged.is_broken() {
            // The application was told its write failed; the partial bytes are
            // not worth the disk space they hold on a full disk.
            staged.discard();
            return;
        }
        if staged.is_dirty() {
            tracing::warn!(
                staging_file = %staged.path.display(),
                "unsaved data kept on local disk"
            );
            return;
        }
        match object {
            Some(meta) if meta.size == staged.size() => {
                match self.cache.insert_file(&staged.path, &meta) {
                    Ok(true) => staged.forget_key(),
                    _ => staged.discard(),
                }
            }
            _ => staged.discard(),
        }
    }

    /// truncate(2), chmod, chown, utimens.
    #[allow(clippy::too_many_arguments)]
    pub async fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        size: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> FsResult<Attr> {
        if size.is_some() || mode.is_some() || uid.is_some() || gid.is_some() || mtime.is_some() {
            self.check_writable()?;
        }
        if let Some(size) = size {
            self.truncate(ino, fh, size).await?;
        }
        let change = Attrs {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            mtime,
        };
        if change != Attrs::default() {
            self.change_attrs(ino, &change).await?;
        }
        let t = self.inodes.lock().unwrap();
        Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?))
    }

    async fn truncate(&self, ino: u64, fh: Option<u64>, size: u64) -> FsResult<()> {
        if self.path_of(ino)?.1 == Kind::Dir {
            return Err(FsError::IsDir);
        }
        // ftruncate: the change goes to the store with the handle's close.
        if let Some(staged) = fh
            .and_then(|fh| self.handle(fh).ok())
            .filter(|h| h.write)
            .and_then(|h| h.staged.clone())
        {
            let _excl = staged.lock.write().await;
            staged.truncate(size)?;
            self.data_changed(ino);
            return Ok(());
        }
        // truncate(2) while another handle writes: durable when it returns.
        let open_staged = self
            .inodes
            .lock()
            .unwrap()
            .get(ino)
            .and_then(|i| i.staged.clone());
        if let Some(staged) = open_staged {
            {
                let _excl = staged.lock.write().await;
                staged.truncate(size)?;
            }
            self.data_changed(ino);
            return self.upload(ino, &staged).await;
        }
        // truncate(2) on a file nobody has open: a whole open-write-close.
        let reply = self
            .open(
                ino,
                if size == 0 {
                    libc::O_WRONLY | libc::O_TRUNC
                } else {
                    libc::O_WRONLY
                },
            )
            .await?;
        let h = self.handle(reply.fh)?;
        let result = match &h.staged {
            Some(staged) => {
                {
                    let _excl = staged.lock.write().await;
                    staged.truncate(size)?;
                }
                self.data_changed(ino);
                self.flush(reply.fh).await
            }
            None => Err(FsError::BadHandle),
        };
        let released = self.release(reply.fh).await;
        result.and(released)
    }

    async fn change_attrs(&self, ino: u64, change: &Attrs) -> FsResult<()> {
        let (path, kind, local, object) = {
            let t = self.inodes.lock().unwrap();
            let i = t.get(ino).ok_or(FsError::NotFound)?;
            // Bytes still to be uploaded carry the attributes with them; a
            // clean file needs them written to the store now.
            let pending_upload = i.local_only || i.staged.as_ref().is_some_and(|s| s.is_dirty());
            (i.path.clone(), i.kind, pending_upload, i.object.clone())
        };
        if !(local || kind == Kind::Dir && path.is_empty()) {
            let new = self.store.set_attrs(&path, change).await?;
            if let (Some(old), Some(new)) = (&object, &new) {
                self.cache.rekey(old, new);
            }
            let mut t = self.inodes.lock().unwrap();
            if let Some(path) = t.get(ino).map(|i| i.path.clone()) {
                t.note_change(&path);
            }
            if let (Some(i), Some(new)) = (t.get_mut(ino), new) {
                if i.kernel_version.as_ref() == object.as_ref().map(|o| &o.version) {
                    i.kernel_version = Some(new.version.clone());
                }
                i.object = Some(new);
            }
        }
        let mut t = self.inodes.lock().unwrap();
        if let Some(i) = t.get_mut(ino) {
            i.attrs = i.attrs.merged(change);
        }
        drop(t);
        self.listings.invalidate(super::inode::parent_of(&path));
        Ok(())
    }
}

/// Read up to `len` bytes at `offset`; short only at end of file.
pub(crate) fn read_file_at(f: &File, offset: u64, len: usize) -> FsResult<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FsError::local_io("reading local file", e)),
        }
    }
    buf.truncate(done);
    Ok(buf)
}
