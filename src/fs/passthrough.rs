//! FUSE passthrough bookkeeping: which opens of an inode let the kernel read
//! the cache file directly, and which go through us.
//!
//! The kernel keeps one I/O mode per inode: while any open of it is in
//! passthrough mode, every other open must be a passthrough open of the same
//! backing file, and a passthrough open is refused while the inode has normal
//! opens. So we count both kinds per inode, counting an open before we reply
//! and un-counting it only when its RELEASE reaches us (after the kernel has
//! dropped it): our view is never less busy than the kernel's, and we never
//! hand it a combination it would refuse.
//!
//! A normal open (a writer, a reader of a file not fully cached, a reader of
//! a newer version) that finds passthrough readers waits for them to close,
//! up to PASSTHROUGH_WAIT, then fails with EBUSY. Readers of media files hold
//! them briefly; SEMANTICS.md says so.

use std::any::Any;
use std::fs::File;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Core, FsError, FsResult};

/// The kernel's handle on a backing file (a fuser BackingId), kept opaque so
/// the core needs no FUSE types. Dropped when the last passthrough open goes.
pub type Backing = Arc<dyn Any + Send + Sync>;

const PASSTHROUGH_WAIT: Duration = Duration::from_secs(5);

/// The one backing file shared by every passthrough open of an inode, from
/// its first such open until its last release.
///
/// The kernel keeps one backing file per inode and fails (EIO to the
/// application) an open that names a different one while the inode has
/// passthrough opens. Opens are claimed under the inode lock but register
/// their backing file after it, so two opens arriving together would each
/// register their own; the slot makes the first register and the others
/// wait for and reuse its backing file.
#[derive(Default)]
pub struct BackingSlot(Mutex<Option<Backing>>);

impl BackingSlot {
    /// The slot's backing file, registering one with `register` if it has
    /// none yet (a failed registration leaves it empty for the next open).
    pub fn get_or_register<E>(
        &self,
        register: impl FnOnce() -> Result<Backing, E>,
    ) -> Result<Backing, E> {
        let mut slot = self.0.lock().unwrap();
        if let Some(b) = &*slot {
            return Ok(b.clone());
        }
        let b = register()?;
        *slot = Some(b.clone());
        Ok(b)
    }
}

/// An open the kernel may serve straight from a local file.
pub struct PassthroughOpen {
    /// The complete local bytes, to register as a backing file.
    pub file: File,
    /// Where the inode's backing file is (or is to be) registered.
    pub backing: Arc<BackingSlot>,
}

/// Counts the backing files registered with the kernel and not yet closed.
#[derive(Default)]
pub struct BackingCount(AtomicI64);

impl BackingCount {
    pub fn opened(self: &Arc<Self>) -> BackingGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        BackingGuard(self.clone())
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Held with a registered backing file; un-counts it when dropped.
pub struct BackingGuard(Arc<BackingCount>);

impl Drop for BackingGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Core {
    /// The kernel agreed to passthrough at init.
    pub fn enable_passthrough(&self) {
        self.passthrough
            .store(self.cfg.passthrough, Ordering::Release);
    }

    pub(crate) fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Acquire)
    }

    /// Count a normal open of `ino`, first waiting (bounded) for passthrough
    /// opens to close.
    pub(crate) async fn claim_plain_io(&self, ino: u64) -> FsResult<()> {
        let deadline = Instant::now() + PASSTHROUGH_WAIT;
        loop {
            {
                let mut t = self.inodes.lock().unwrap();
                let i = t.get_mut(ino).ok_or(FsError::NotFound)?;
                if i.io_passthrough == 0 {
                    i.io_plain += 1;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(FsError::Busy(
                    "the file is held open by readers served by FUSE passthrough",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A read of `version`: passthrough if allowed now, else a normal open
    /// (which may wait). `cached` is the complete cache file, if there is one.
    pub(crate) async fn claim_read_io(
        &self,
        ino: u64,
        version: &str,
        cached: Option<&File>,
    ) -> FsResult<Option<PassthroughOpen>> {
        match self.claim_read_io_now(ino, version, cached)? {
            Some(claimed) => Ok(claimed),
            None => self.claim_plain_io(ino).await.map(|()| None),
        }
    }

    /// As `claim_read_io`, without waiting: `None` if the open would have to
    /// wait for passthrough readers of another version.
    pub(crate) fn claim_read_io_now(
        &self,
        ino: u64,
        version: &str,
        cached: Option<&File>,
    ) -> FsResult<Option<Option<PassthroughOpen>>> {
        let mut t = self.inodes.lock().unwrap();
        let i = t.get_mut(ino).ok_or(FsError::NotFound)?;
        if self.passthrough_enabled() {
            let same = i.io_passthrough > 0 && i.pt_version.as_deref() == Some(version);
            let fresh = i.io_passthrough == 0 && i.io_plain == 0;
            if let (true, Some(f)) = (same || fresh, cached)
                && let Ok(file) = f.try_clone()
            {
                i.io_passthrough += 1;
                i.pt_version = Some(version.to_string());
                tracing::debug!(
                    ino,
                    readers = i.io_passthrough,
                    reuse = i.backing.is_some(),
                    "passthrough open"
                );
                let backing = i.backing.get_or_insert_with(Default::default).clone();
                return Ok(Some(Some(PassthroughOpen { file, backing })));
            }
        }
        if i.io_passthrough == 0 {
            i.io_plain += 1;
            return Ok(Some(None));
        }
        Ok(None)
    }

    /// Un-count an open at release.
    pub(crate) fn release_io(&self, ino: u64, passthrough: bool) {
        let mut t = self.inodes.lock().unwrap();
        let Some(i) = t.get_mut(ino) else { return };
        tracing::debug!(ino, passthrough, "release io");
        if passthrough {
            i.io_passthrough = i.io_passthrough.saturating_sub(1);
            if i.io_passthrough == 0 {
                i.pt_version = None;
                i.backing = None;
            }
        } else {
            i.io_plain = i.io_plain.saturating_sub(1);
        }
    }

    /// Backing files registered with the kernel now (for metrics and
    /// tests: it must fall back to zero when no passthrough open is left).
    pub fn backing_files(&self) -> &Arc<BackingCount> {
        &self.backing_files
    }

    /// The kernel would not take a backing file: serve this open normally and
    /// stop offering passthrough.
    pub fn passthrough_refused(&self, fh: u64, why: &std::io::Error) {
        if self.passthrough.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %why, "FUSE passthrough unavailable; serving cached reads through mediafs");
        }
        let Ok(h) = self.handle(fh) else { return };
        if h.passthrough.swap(false, Ordering::AcqRel) {
            let mut t = self.inodes.lock().unwrap();
            if let Some(i) = t.get_mut(h.ino) {
                i.io_passthrough = i.io_passthrough.saturating_sub(1);
                if i.io_passthrough == 0 {
                    i.pt_version = None;
                    i.backing = None;
                }
                i.io_plain += 1;
            }
        }
    }
}
