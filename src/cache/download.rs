//! Downloads into the cache, shared by every reader of the same object version.
//!
//! A download fills a file under `tmp/` in parts of PART_SIZE, fetched with
//! several ranged GETs at once: the parts readers are waiting for first, then
//! the rest in order (sequential prefetch). Readers are served as soon as their
//! parts are on disk, and memory stays at a few stream chunks whatever the
//! object size. Every part must come from the expected version. When the last
//! part has arrived the file is renamed into `data/`; a short or failed
//! download is never entered in the cache.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::DiskCache;
use crate::store::{GetResult, ObjectMeta, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The store now holds another version than the one asked for.
    #[error("object changed in the store while it was being read")]
    Changed,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store's answer was not what it should be (short body, …).
    #[error("{0}")]
    Io(String),
    /// The local cache disk failed us (full, read-only, …): the store is fine,
    /// so readers can still be served straight from it.
    #[error("local cache disk: {0}")]
    Local(String),
}

/// Objects are fetched in parts of this size, several at once.
pub const PART_SIZE: u64 = 8 << 20;
/// Parts in flight per object.
const PARALLEL_PARTS: usize = 8;
/// Times one part's body may break off and be asked for again.
const BODY_RETRIES: u32 = 3;

struct Progress {
    /// The store has answered once with the version we expected.
    started: bool,
    done: Vec<bool>,
    in_flight: Vec<bool>,
    /// Parts readers are waiting for, most recent first.
    wanted: Vec<usize>,
    /// Next part in order (sequential prefetch).
    next: usize,
    remaining: usize,
    failed: Option<DownloadError>,
}

impl Progress {
    /// The part to fetch next: one a reader waits for, else the next in order.
    fn pick(&mut self) -> Option<usize> {
        while let Some(p) = self.wanted.pop() {
            if !self.done[p] && !self.in_flight[p] {
                return Some(p);
            }
        }
        while self.next < self.done.len() {
            let p = self.next;
            self.next += 1;
            if !self.done[p] && !self.in_flight[p] {
                return Some(p);
            }
        }
        None
    }
}

pub struct Download {
    pub meta: ObjectMeta,
    /// The object's metadata as the store's first answer gave it, with the
    /// object's own attributes (a listing, which `meta` may come from,
    /// carries none on S3 and Swift).
    answer: std::sync::OnceLock<ObjectMeta>,
    file: File,
    writer: File,
    tmp: PathBuf,
    committed: AtomicBool,
    progress: Mutex<Progress>,
    /// Wakes readers when a part lands or the download fails.
    changed: Notify,
    /// Wakes the driver when a reader wants a part.
    wake_driver: Notify,
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn part_count(size: u64) -> usize {
    size.div_ceil(PART_SIZE).max(1) as usize
}

impl Download {
    /// Wait until `check` says yes (Ok(true)) or fails, re-checking whenever
    /// the download makes progress.
    async fn wait_until(
        &self,
        mut check: impl FnMut(&mut Progress) -> bool,
    ) -> Result<(), DownloadError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut p = self.progress.lock().unwrap();
                if let Some(e) = &p.failed {
                    return Err(e.clone());
                }
                if check(&mut p) {
                    return Ok(());
                }
            }
            self.wake_driver.notify_one();
            notified.await;
        }
    }

    /// Wait until the store has answered with the object's headers.
    pub async fn started(&self) -> Result<(), DownloadError> {
        self.wait_until(|p| p.started || p.remaining == 0).await
    }

    /// The metadata of the store's first answer, once there is one.
    pub fn answer(&self) -> Option<&ObjectMeta> {
        self.answer.get()
    }

    /// Wait until the bytes `[start, end)` are on disk, fetching their parts
    /// before any other.
    pub async fn ready_range(&self, start: u64, end: u64) -> Result<(), DownloadError> {
        let end = end.min(self.meta.size);
        if start >= end {
            return self.started().await;
        }
        let first = (start / PART_SIZE) as usize;
        let last = ((end - 1) / PART_SIZE) as usize;
        let mut asked = false;
        self.wait_until(|p| {
            if (first..=last).all(|i| p.done[i]) {
                return true;
            }
            if !asked {
                // Popped from the end: push the later parts first.
                p.wanted
                    .extend((first..=last).rev().filter(|&i| !p.done[i]));
                asked = true;
            }
            false
        })
        .await
    }

    pub async fn complete(&self) -> Result<(), DownloadError> {
        self.wait_until(|p| p.remaining == 0).await
    }

    /// The downloaded bytes; read only what `ready_range` has confirmed.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// A second descriptor of the downloaded bytes (valid after the rename).
    pub fn file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    fn failed(&self) -> bool {
        self.progress.lock().unwrap().failed.is_some()
    }

    fn fail(&self, e: DownloadError) {
        let mut p = self.progress.lock().unwrap();
        if p.failed.is_none() {
            p.failed = Some(e);
        }
        drop(p);
        self.changed.notify_waiters();
    }
}

impl DiskCache {
    /// Allocate the whole download's blocks up front. Writing into allocated
    /// blocks skips ext4's per-page delayed-allocation bookkeeping (about a
    /// tenth of the CPU a cold read costs), and a full disk shows now, after
    /// making room once, instead of halfway through the object.
    fn reserve(&self, file: &File, size: u64) -> std::io::Result<()> {
        let allocate = || {
            // SAFETY: a plain syscall on an fd we own.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if size == 0 {
            return Ok(());
        }
        match allocate() {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                self.free_bytes(size);
                allocate()
            }
            // A file system without fallocate: write as we go.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    /// Start (or join) the download of `meta`. Concurrent callers for the same
    /// version share one download.
    pub fn fetch(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        meta: &ObjectMeta,
    ) -> Result<Arc<Download>, DownloadError> {
        let name = self.entry_name(meta);
        let mut downloads = self.downloads.lock().unwrap();
        if let Some(existing) = downloads.get(&name).and_then(|w| w.upgrade())
            && !existing.failed()
        {
            return Ok(existing);
        }
        let tmp = self.tmp_path();
        let writer = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| DownloadError::Local(format!("{}: {e}", tmp.display())))?;
        if let Err(e) = self.reserve(&writer, meta.size) {
            let _ = std::fs::remove_file(&tmp);
            return Err(DownloadError::Local(format!("{}: {e}", tmp.display())));
        }
        let reader = File::open(&tmp).map_err(|e| DownloadError::Local(e.to_string()))?;
        let parts = part_count(meta.size);
        let download = Arc::new(Download {
            meta: meta.clone(),
            answer: Default::default(),
            file: reader,
            writer,
            tmp,
            committed: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                started: false,
                done: vec![false; parts],
                in_flight: vec![false; parts],
                wanted: Vec::new(),
                next: 0,
                remaining: parts,
                failed: None,
            }),
            changed: Notify::new(),
            wake_driver: Notify::new(),
        });
        downloads.insert(name.clone(), Arc::downgrade(&download));
        drop(downloads);

        let cache = Arc::clone(self);
        let store = Arc::clone(store);
        let dl = Arc::clone(&download);
        tokio::spawn(async move {
            let result = drive(&cache, &store, &dl).await;
            cache.downloads.lock().unwrap().remove(&name);
            if let Err(e) = result {
                tracing::warn!(key = %dl.meta.key, request = "get", error = %e, "download failed");
                dl.fail(e);
            }
        });
        Ok(download)
    }
}

/// Keep up to PARALLEL_PARTS part requests running, readers' parts first,
/// until every part is on disk; then enter the file in the cache.
async fn drive(
    cache: &Arc<DiskCache>,
    store: &Arc<dyn Store>,
    dl: &Arc<Download>,
) -> Result<(), DownloadError> {
    let mut running = JoinSet::new();
    loop {
        {
            let mut p = dl.progress.lock().unwrap();
            while running.len() < PARALLEL_PARTS {
                let Some(part) = p.pick() else { break };
                p.in_flight[part] = true;
                let (cache, store, dl) = (cache.clone(), store.clone(), dl.clone());
                running.spawn(async move {
                    let r = fetch_part(&cache, &*store, &dl, part).await;
                    (part, r)
                });
            }
            if p.remaining == 0 {
                break;
            }
        }
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { continue };
                let (part, result) = joined.map_err(|e| DownloadError::Io(format!("part task: {e}")))?;
                result?;
                let mut p = dl.progress.lock().unwrap();
                p.in_flight[part] = false;
                p.done[part] = true;
                p.remaining -= 1;
                let all_done = p.remaining == 0;
                drop(p);
                if !all_done {
                    dl.changed.notify_waiters();
                }
            }
            _ = dl.wake_driver.notified() => {}
        }
    }
    match cache.insert_file(&dl.tmp, &dl.meta) {
        Ok(true) => dl.committed.store(true, Ordering::Release),
        Ok(false) => {} // larger than the cache: served from tmp, then dropped
        Err(e) => {
            tracing::warn!(key = %dl.meta.key, error = %e, "could not keep the download in the cache")
        }
    }
    // The last part is announced only now, after the rename: a reader that
    // finishes never races the commit.
    dl.changed.notify_waiters();
    Ok(())
}

/// One ranged GET, written at its offset.
async fn fetch_part(
    cache: &DiskCache,
    store: &dyn Store,
    dl: &Download,
    part: usize,
) -> Result<(), DownloadError> {
    let expected = &dl.meta;
    let start = part as u64 * PART_SIZE;
    let end = (start + PART_SIZE).min(expected.size);
    let whole = start == 0 && end == expected.size;
    let mut offset = start;
    let mut cuts = 0;
    // A body that breaks off after the store answered (reset, cut short) is
    // asked for again from where it stopped: the SDK retries only requests
    // that fail before their body, and one cut must not fail the read.
    loop {
        let range = (!whole || offset > start).then_some(offset..end);
        let mut body = match store.get(&expected.key, range, None).await? {
            GetResult::Body { meta, body } => {
                if meta.version != expected.version || meta.size != expected.size {
                    return Err(DownloadError::Changed);
                }
                let _ = dl.answer.set(meta);
                body
            }
            GetResult::NotModified => {
                return Err(DownloadError::Io(
                    "store answered 304 to a plain GET".into(),
                ));
            }
        };
        let first_answer = !std::mem::replace(&mut dl.progress.lock().unwrap().started, true);
        if first_answer {
            dl.changed.notify_waiters();
        }
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broken = Some(DownloadError::from(e));
                    break;
                }
            };
            if offset + chunk.len() as u64 > end {
                return Err(DownloadError::Io(
                    "store sent more bytes than asked for".into(),
                ));
            }
            if let Err(e) = dl.writer.write_all_at(&chunk, offset) {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    // Make room for later downloads; this one is served direct.
                    cache.free_bytes(expected.size);
                }
                return Err(DownloadError::Local(e.to_string()));
            }
            offset += chunk.len() as u64;
            cache
                .stats
                .bytes_fetched
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if broken.is_none() && offset != end {
            broken = Some(DownloadError::Io(format!(
                "short body: got {} of {} bytes at offset {start}",
                offset - start,
                end - start
            )));
        }
        let Some(e) = broken else { break };
        if cuts >= BODY_RETRIES {
            return Err(e);
        }
        cuts += 1;
        tracing::debug!(key = %expected.key, offset, error = %e, "body cut short; asking for the rest");
        tokio::time::sleep(std::time::Duration::from_millis(100 << cuts)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::atomic::Ordering;

    fn setup() -> (tempfile::TempDir, Arc<DiskCache>, Arc<MemoryStore>) {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "mem", 1 << 30).unwrap();
        (dir, cache, Arc::new(MemoryStore::new()))
    }

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn read(dl: &Download, start: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        dl.as_file().read_exact_at(&mut buf, start).unwrap();
        buf
    }

    #[tokio::test]
    async fn large_object_in_parallel_parts_random_read_first() {
        let (_d, cache, mem) = setup();
        let data = bytes(20 << 20);
        let meta = mem.insert("big", &data);
        let store: Arc<dyn Store> = mem.clone();
        let dl = cache.fetch(&store, &meta).unwrap();
        let at = (19 << 20) + 123;
        dl.ready_range(at, at + 4096).await.unwrap();
        assert_eq!(read(&dl, at, 4096), &data[at as usize..at as usize + 4096]);
        dl.complete().await.unwrap();
        assert_eq!(read(&dl, 0, data.len()), data);
        assert_eq!(mem.gets.load(Ordering::Relaxed), 3, "three 8 MiB parts");
        assert!(
            cache.open_entry(&meta).is_some(),
            "complete download is cached"
        );
        // A second fetch of a cached version is never needed; a concurrent one
        // shares the first.
        let again = cache.fetch(&store, &meta).unwrap();
        again.complete().await.unwrap();
    }

    #[tokio::test]
    async fn changed_version_fails_and_is_not_cached() {
        let (_d, cache, mem) = setup();
        let old = mem.insert("x", b"old bytes");
        mem.insert("x", b"new bytes");
        let store: Arc<dyn Store> = mem.clone();
        let dl = cache.fetch(&store, &old).unwrap();
        assert_eq!(dl.started().await.unwrap_err(), DownloadError::Changed);
        assert!(cache.open_entry(&old).is_none());
    }

    #[tokio::test]
    async fn truncated_body_is_an_error_and_never_cached() {
        let (_d, cache, mem) = setup();
        let meta = mem.insert("t", &bytes(100_000));
        mem.truncate_bodies.store(true, Ordering::Relaxed);
        let store: Arc<dyn Store> = mem.clone();
        let dl = cache.fetch(&store, &meta).unwrap();
        let err = dl.complete().await.unwrap_err();
        assert!(
            matches!(err, DownloadError::Io(ref m) if m.contains("short body")),
            "{err:?}"
        );
        assert!(cache.open_entry(&meta).is_none());
        // A later fetch starts afresh and succeeds once the store behaves.
        mem.truncate_bodies.store(false, Ordering::Relaxed);
        let dl = cache.fetch(&store, &meta).unwrap();
        dl.complete().await.unwrap();
        assert!(cache.open_entry(&meta).is_some());
    }

    #[tokio::test]
    async fn body_cut_once_is_fetched_again_and_cached_whole() {
        let (_d, cache, mem) = setup();
        let data = bytes(100_000);
        let meta = mem.insert("c", &data);
        mem.truncate_next.store(2, Ordering::Relaxed);
        let store: Arc<dyn Store> = mem.clone();
        let dl = cache.fetch(&store, &meta).unwrap();
        dl.complete().await.unwrap();
        assert_eq!(mem.truncate_next.load(Ordering::Relaxed), 0);
        assert_eq!(read(&dl, 0, data.len()), data);
        assert!(cache.open_entry(&meta).is_some());
    }
}
