//! The local disk cache: whole objects fetched once from the store and served
//! from local disk after that.
//!
//! Layout under the cache directory (mode 0700):
//! - `data/ab/abcdef…`: complete objects, named by a hash of (store, key,
//!   version, size), never by the key itself. A file appears here only once it
//!   is complete (renamed into place), so a crash never leaves a partial entry.
//! - `tmp/`: downloads in progress; emptied at start-up.
//! - `staging/`: written files not yet acknowledged by the store (see
//!   `fs::staging`); kept across restarts because they may be the only copy.
//!
//! The index is a moka cache weighed by size (LRU); evicting an entry deletes
//! its file. At start-up the index is rebuilt from `data/`, oldest access first.

pub mod admin;
mod checksum;
mod download;
mod run_state;

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use moka::notification::RemovalCause;
use sha2::{Digest, Sha256};

pub use download::{Download, DownloadError};

use crate::store::ObjectMeta;
use run_state::RunGuard;

/// Weights are in KiB so that a u32 weight covers objects up to 4 TiB.
const WEIGHT_UNIT: u64 = 1024;

/// Entries up to this size are checksummed and checked inline, wherever
/// that happens; larger ones off the FUSE thread.
const INLINE_CHECK_BYTES: u64 = 1 << 20;

/// What the index knows of one entry file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Written in this run, or checked against its checksum since.
    verified: bool,
}

pub struct DiskCache {
    root: PathBuf,
    data: PathBuf,
    tmp: PathBuf,
    store_id: String,
    capacity: u64,
    index: moka::sync::Cache<String, Entry>,
    downloads: Mutex<HashMap<String, Weak<Download>>>,
    tmp_counter: AtomicU64,
    stats: Arc<CacheStats>,
    /// Holds the exclusive flock on `lock`: no second mount, no `cache clear`.
    run: RunGuard,
}

#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bytes_fetched: AtomicU64,
    /// Entries dropped to stay under the size bound.
    pub evictions: AtomicU64,
}

/// Create `dir` (and parents) with mode 0700, and tighten it if it existed.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

impl DiskCache {
    /// Open (or create) the cache at `root` for the store named `store_id`,
    /// bounded to `capacity` bytes, and rebuild the index from disk.
    pub fn open(root: &Path, store_id: &str, capacity: u64) -> std::io::Result<Arc<Self>> {
        private_dir(root)?;
        let (run, unsafe_since) = RunGuard::acquire(root)?;
        let data = root.join("data");
        let tmp = root.join("tmp");
        private_dir(&data)?;
        // All 256 fan-out directories now, so an insert is one rename.
        for i in 0..=255u8 {
            private_dir(&data.join(format!("{i:02x}")))?;
        }
        // Leftover partial downloads are worthless: start clean.
        let _ = fs::remove_dir_all(&tmp);
        private_dir(&tmp)?;
        let data_for_listener = data.clone();
        let stats = Arc::new(CacheStats::default());
        let stats_for_listener = stats.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(capacity / WEIGHT_UNIT)
            // Plain LRU: TinyLFU would refuse a new entry we just downloaded.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_name: &String, e: &Entry| {
                (e.size.div_ceil(WEIGHT_UNIT)).clamp(1, u32::MAX as u64) as u32
            })
            .eviction_listener(move |name: Arc<String>, _size, cause| {
                // Replaced: the same name now points at a new file; keep it.
                if cause == RemovalCause::Size {
                    stats_for_listener.evictions.fetch_add(1, Ordering::Relaxed);
                }
                if cause != RemovalCause::Replaced {
                    let _ = fs::remove_file(entry_path(&data_for_listener, &name));
                }
            })
            .build();
        let cache = Arc::new(DiskCache {
            root: root.to_path_buf(),
            data,
            tmp,
            store_id: store_id.to_string(),
            capacity,
            index,
            downloads: Mutex::new(HashMap::new()),
            tmp_counter: AtomicU64::new(0),
            stats,
            run,
        });
        cache.scan(unsafe_since)?;
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Bytes the index holds now.
    pub fn used_bytes(&self) -> u64 {
        self.index.run_pending_tasks();
        self.index.iter().map(|(_, e)| e.size).sum()
    }

    /// The cache is consistent on disk; see `run_state`.
    pub fn mark_clean(&self) -> std::io::Result<()> {
        self.run.mark_clean()
    }

    /// Rebuild the index from the files on disk, least recently used first so
    /// that LRU order survives a restart as well as atimes allow. Files written
    /// since `distrust_since` (an unclean run before a reboot) are dropped.
    fn scan(&self, distrust_since: Option<std::time::SystemTime>) -> std::io::Result<()> {
        let mut found = Vec::new();
        let mut dropped = 0;
        for shard in fs::read_dir(&self.data)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let meta = entry.metadata()?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let suspect =
                    distrust_since.is_some_and(|t| meta.modified().map(|m| m >= t).unwrap_or(true));
                if meta.is_file() && is_entry_name(&name) && !suspect {
                    found.push((meta.atime(), name, meta.len()));
                } else {
                    dropped += u64::from(suspect);
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "the machine stopped without a clean unmount: dropped cache entries written during that run"
            );
        }
        found.sort();
        for (_, name, size) in found {
            // From an earlier run: checked against its checksum at first use.
            let verified = false;
            self.index.insert(name, Entry { size, verified });
        }
        self.index.run_pending_tasks();
        Ok(())
    }

    /// The entry name of one version of one object.
    pub fn entry_name(&self, meta: &ObjectMeta) -> String {
        let mut h = Sha256::new();
        for part in [
            self.store_id.as_bytes(),
            meta.key.as_bytes(),
            meta.version.as_bytes(),
            &meta.size.to_le_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        hex::encode(h.finalize())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        entry_path(&self.data, name)
    }

    /// The cached bytes of exactly this version, if present and intact.
    /// Counts a hit or a miss. An entry from an earlier run is read whole
    /// once to check it against its checksum.
    pub fn open_entry(&self, meta: &ObjectMeta) -> Option<File> {
        let found = self.entry(meta, u64::MAX);
        if found.is_none() {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Like `open_entry`, but a miss is not counted, and an entry still to be
    /// checked is only checked here if it is small: for fast paths (on the
    /// FUSE thread) that fall back to `open_entry` when this finds nothing.
    pub fn probe_entry(&self, meta: &ObjectMeta) -> Option<File> {
        self.entry(meta, INLINE_CHECK_BYTES)
    }

    fn entry(&self, meta: &ObjectMeta, check_up_to: u64) -> Option<File> {
        let name = self.entry_name(meta);
        let entry = self.index.get(&name)?;
        if !entry.verified && entry.size > check_up_to {
            return None;
        }
        match File::open(self.path_of(&name)) {
            Ok(f) if f.metadata().map(|m| m.len()).ok() == Some(meta.size) => {
                if !entry.verified {
                    if !checksum::verify(&f) {
                        tracing::warn!(key = %meta.key, entry = %name, "cache entry does not match its checksum; dropping it");
                        self.index.invalidate(&name);
                        return None;
                    }
                    let verified = true;
                    self.index.insert(name, Entry { verified, ..entry });
                }
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(f)
            }
            Ok(_) => {
                tracing::warn!(key = %meta.key, entry = %name, "cache entry has the wrong size; dropping it");
                self.index.invalidate(&name);
                None
            }
            Err(_) => {
                // Removed behind our back (e.g. by `cache clear`): a miss.
                self.index.invalidate(&name);
                None
            }
        }
    }

    pub fn contains(&self, meta: &ObjectMeta) -> bool {
        self.index.contains_key(&self.entry_name(meta))
    }

    /// A fresh path in `tmp/` for a download or a copy in progress.
    pub fn tmp_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}", std::process::id()))
    }

    /// Move the complete file `from` (in the same file system) into the cache as
    /// the bytes of `meta`. Objects larger than the whole cache are not kept.
    pub fn insert_file(&self, from: &Path, meta: &ObjectMeta) -> std::io::Result<bool> {
        if meta.size > self.capacity {
            return Ok(false);
        }
        let name = self.entry_name(meta);
        let path = self.path_of(&name);
        // The checksum goes with the file as an extended attribute. A small
        // file's is taken now; a large one's after the rename, off the
        // reader's path (it is trusted in this run; should we die before it
        // is recorded, the next run drops the entry rather than trust it).
        let later = match File::open(from) {
            Ok(f) if meta.size <= INLINE_CHECK_BYTES => {
                let _ = checksum::record(&f);
                false
            }
            Ok(f) => !matches!(checksum::load(&f), Ok(Some(_))),
            Err(_) => false,
        };
        if let Err(e) = fs::rename(from, &path) {
            // Its fan-out directory went missing behind our back: make it.
            let Some(parent) = path
                .parent()
                .filter(|_| e.kind() == std::io::ErrorKind::NotFound)
            else {
                return Err(e);
            };
            private_dir(parent)?;
            fs::rename(from, &path)?;
        }
        let (size, verified) = (meta.size, true);
        self.index.insert(name, Entry { size, verified });
        // Evict now, not at some later maintenance tick: the bound is a promise.
        self.index.run_pending_tasks();
        if later {
            std::thread::spawn(move || {
                if let Ok(f) = File::open(&path) {
                    let _ = checksum::record(&f);
                }
            });
        }
        Ok(true)
    }

    /// Keep `bytes`, the whole object `meta`, fetched some other way than a
    /// download (e.g. with a lookup). Best effort: a failure only costs a GET.
    pub fn insert_bytes(&self, meta: &ObjectMeta, bytes: &[u8]) {
        if bytes.len() as u64 != meta.size || self.contains(meta) {
            return;
        }
        let tmp = self.tmp_path();
        // 0600 like every cache file: another user must not read them.
        let written = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, bytes));
        let kept = written.and_then(|()| self.insert_file(&tmp, meta));
        match kept {
            Ok(true) => {
                self.stats
                    .bytes_fetched
                    .fetch_add(meta.size, Ordering::Relaxed);
            }
            _ => {
                let _ = fs::remove_file(&tmp);
            }
        }
    }

    /// The same bytes are now known under a new version (e.g. after chmod on a
    /// store whose version changes with metadata): move the entry, don't refetch.
    pub fn rekey(&self, old: &ObjectMeta, new: &ObjectMeta) {
        if old.size != new.size {
            return;
        }
        let old_name = self.entry_name(old);
        if old_name == self.entry_name(new) || self.index.get(&old_name).is_none() {
            return;
        }
        let tmp = self.tmp_path();
        if fs::rename(self.path_of(&old_name), &tmp).is_ok() {
            self.index.invalidate(&old_name);
            if self.insert_file(&tmp, new).is_err() {
                let _ = fs::remove_file(&tmp);
            }
        }
    }

    /// The cache disk is full: drop entries (in no particular order; moka does
    /// not expose its LRU order) until about `bytes` are freed.
    pub fn free_bytes(&self, bytes: u64) {
        let mut freed = 0;
        for (name, entry) in self.index.iter() {
            if freed >= bytes {
                break;
            }
            self.index.invalidate(name.as_str());
            freed += entry.size;
        }
        self.index.run_pending_tasks();
        tracing::warn!(freed, "cache disk full: evicted entries early");
    }

    pub fn remove(&self, meta: &ObjectMeta) {
        self.index.invalidate(&self.entry_name(meta));
    }

    /// Drop every entry (files are deleted by the eviction listener).
    pub fn clear(&self) {
        self.index.invalidate_all();
        self.index.run_pending_tasks();
    }
}

fn entry_path(data: &Path, name: &str) -> PathBuf {
    data.join(&name[..2]).join(name)
}

fn is_entry_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Figures about a cache directory that is not in use, for `mediafs cache stats`.
pub fn dir_usage(root: &Path) -> std::io::Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let data = root.join("data");
    if !data.exists() {
        return Ok((0, 0));
    }
    for shard in fs::read_dir(data)? {
        let shard = shard?;
        if shard.file_type()?.is_dir() {
            for entry in fs::read_dir(shard.path())? {
                let m = entry?.metadata()?;
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn meta(key: &str, version: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            version: version.into(),
            modified: SystemTime::now(),
            attrs: Default::default(),
        }
    }

    fn put(cache: &DiskCache, m: &ObjectMeta) {
        let tmp = cache.tmp_path();
        fs::write(&tmp, vec![7u8; m.size as usize]).unwrap();
        cache.insert_file(&tmp, m).unwrap();
    }

    #[test]
    fn bounded_lru_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "s", 100 * 1024).unwrap();
        for i in 0..10 {
            put(&cache, &meta(&format!("k{i}"), "v", 30 * 1024));
        }
        assert!(cache.used_bytes() <= 100 * 1024, "{}", cache.used_bytes());
        assert!(cache.stats().evictions.load(Ordering::Relaxed) >= 7);
        let (_, on_disk) = dir_usage(dir.path()).unwrap();
        assert!(on_disk <= 100 * 1024, "files left on disk: {on_disk}");
        let last = meta("k9", "v", 30 * 1024);
        assert!(cache.open_entry(&last).is_some());
        drop(cache);
        let cache = DiskCache::open(dir.path(), "s", 100 * 1024).unwrap();
        assert!(cache.open_entry(&last).is_some());
        // Another version of the same key is a different entry.
        assert!(cache.open_entry(&meta("k9", "v2", 30 * 1024)).is_none());
    }

    #[test]
    fn wrong_size_entry_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "s", 1 << 20).unwrap();
        let m = meta("a", "v", 10);
        put(&cache, &m);
        fs::write(cache.path_of(&cache.entry_name(&m)), b"short").unwrap();
        assert!(cache.open_entry(&m).is_none());
        assert!(cache.open_entry(&m).is_none());
    }

    /// Flip one byte of an entry file, keeping its length.
    fn damage(cache: &DiskCache, m: &ObjectMeta, at: u64) {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(cache.path_of(&cache.entry_name(m)))
            .unwrap();
        f.write_all_at(&[0x55], at).unwrap();
    }

    #[test]
    fn entry_of_an_earlier_run_is_checked_against_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let small = meta("small", "v", 10_000);
        let large = meta("large", "v", 3 << 20);
        {
            let cache = DiskCache::open(dir.path(), "s", 64 << 20).unwrap();
            put(&cache, &small);
            put(&cache, &large);
            // The large entry's checksum is recorded off the caller's path.
            let path = cache.path_of(&cache.entry_name(&large));
            let t = std::time::Instant::now();
            while !matches!(checksum::load(&File::open(&path).unwrap()), Ok(Some(_))) {
                assert!(t.elapsed() < std::time::Duration::from_secs(10));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // Intact: served, the large one only off the fast path.
        let cache = DiskCache::open(dir.path(), "s", 64 << 20).unwrap();
        assert!(cache.probe_entry(&small).is_some());
        assert!(cache.probe_entry(&large).is_none(), "not checked inline");
        assert!(cache.open_entry(&large).is_some());
        assert!(cache.probe_entry(&large).is_some(), "checked once per run");
        drop(cache);
        // Right length, wrong bytes: dropped, never served.
        let cache = DiskCache::open(dir.path(), "s", 64 << 20).unwrap();
        damage(&cache, &small, 5);
        damage(&cache, &large, 2 << 20);
        assert!(cache.open_entry(&small).is_none());
        assert!(cache.open_entry(&large).is_none());
        assert!(!cache.contains(&small) && !cache.contains(&large));
    }

    #[test]
    fn cache_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        DiskCache::open(&root, "s", 1 << 20).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
