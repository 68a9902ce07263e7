//! Staging files: the local copy of a file being written, until the store has
//! acknowledged all of it.
//!
//! Staging files live in `CACHE_DIR/staging/`, mode 0600, named by a hash; a
//! `.key` file beside each names the store key, so that after a crash or a
//! failed upload an operator (or a later version of mediafs) knows what the
//! bytes are. They are removed only once the store holds the bytes.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use super::error::{FsError, FsResult};
use super::part_upload::PartState;

pub struct Staged {
    pub path: PathBuf,
    file: File,
    size: AtomicU64,
    dirty: AtomicBool,
    /// A write failed (e.g. disk full): the file is not what the application
    /// meant, so it must never be uploaded.
    broken: AtomicBool,
    /// The last upload failed and close()/fsync() said so (EIO); nothing was
    /// written since. The release that follows must not try again: a success
    /// then would put in the store a version the application was told failed.
    upload_failed: AtomicBool,
    /// Writers share it; an upload or a truncate takes it alone, so no upload
    /// ever sends a file that is changing under it.
    pub lock: RwLock<()>,
    /// Write handles open on it.
    pub writers: AtomicU32,
    /// Parts of it already on their way to the store (large files).
    pub parts: Mutex<PartState>,
}

/// Staging files left by an earlier run: (data file, key it was meant for).
pub fn leftovers(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_none())
        .map(|e| {
            let key = fs::read_to_string(e.path().with_extension("key")).unwrap_or_default();
            (e.path(), key)
        })
        .collect()
}

impl Staged {
    pub fn create(dir: &Path, key: &str) -> FsResult<Staged> {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
        static N: AtomicU64 = AtomicU64::new(0);
        h.update(N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let path = dir.join(hex::encode(&h.finalize()[..16]));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| FsError::local_io("creating staging file", e))?;
        // The sidecar holds the file's name: as private as the data (0600).
        // Best effort, as before: it only helps recover after a crash.
        let _ = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path.with_extension("key"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, key.as_bytes()));
        Ok(Staged {
            path,
            file,
            size: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            upload_failed: AtomicBool::new(false),
            lock: RwLock::new(()),
            writers: AtomicU32::new(0),
            parts: Mutex::new(PartState::default()),
        })
    }

    /// Fill with the current content of the file (before a partial write).
    pub fn fill_from(&self, mut src: File) -> FsResult<()> {
        let mut dst = &self.file;
        let n = std::io::copy(&mut src, &mut dst)
            .map_err(|e| FsError::local_io("copying into staging file", e))?;
        self.size.store(n, Ordering::Release);
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    pub fn set_dirty(&self, dirty: bool) {
        if dirty {
            // New bytes: the next close() or release tries again.
            self.upload_failed.store(false, Ordering::Release);
        }
        self.dirty.store(dirty, Ordering::Release);
    }

    pub fn note_upload_failed(&self) {
        self.upload_failed.store(true, Ordering::Release);
    }

    pub fn upload_failed(&self) -> bool {
        self.upload_failed.load(Ordering::Acquire)
    }

    /// Write at `offset` (callers hold `lock` shared).
    pub fn write_at(&self, data: &[u8], offset: u64) -> FsResult<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(|e| FsError::local_io("writing staging file", e))?;
        self.size
            .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
        self.set_dirty(true);
        // After the bytes are in: a part sent from now on includes them.
        self.parts.lock().unwrap().wrote(offset);
        Ok(())
    }

    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// Truncate (callers hold `lock` exclusively).
    pub fn truncate(&self, size: u64) -> FsResult<()> {
        self.file
            .set_len(size)
            .map_err(|e| FsError::local_io("truncating staging file", e))?;
        self.size.store(size, Ordering::Release);
        self.set_dirty(true);
        self.parts.lock().unwrap().truncated(size);
        if size == 0 {
            // Whatever a failed write left behind is gone.
            self.broken.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// A write failed for good: never upload this file.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
        self.parts.lock().unwrap().spoil();
        // Its bytes will never be used: give the disk space back now (the
        // disk is probably full), not at release.
        let _ = self.file.set_len(0);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// The bytes are in the store: forget the staging file (its data may
    /// already have been moved into the cache).
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(self.path.with_extension("key"));
    }

    /// The key sidecar only (after the data file moved into the cache).
    pub fn forget_key(&self) {
        let _ = fs::remove_file(self.path.with_extension("key"));
    }
}
