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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Core, FsError, FsResult};

/// The kernel's handle on a backing file (a fuser BackingId), kept opaque so
/// the core needs no FUSE types. Dropped when the last passthrough open goes.
pub type Backing = Arc<dyn Any + Send + Sync>;

const PASSTHROUGH_WAIT: Duration = Duration::from_secs(5);

/// An open the kernel may serve straight from a local file.
pub struct PassthroughOpen {
    /// The complete local bytes, to register as a backing file.
    pub file: File,
    /// The inode's backing file if one is registered already (must be reused).
    pub existing: Option<Backing>,
}

impl Core {
    /// The kernel agreed to passthrough at init.
    pub fn enable_passthrough(&self) {
        self.passthrough
            .store(self.cfg.passthrough, Ordering::Release);
    }

    fn passthrough_enabled(&self) -> bool {
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
                return Ok(Some(Some(PassthroughOpen {
                    file,
                    existing: i.backing.clone(),
                })));
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

    /// The adapter registered the backing file of a passthrough open.
    pub fn set_backing(&self, fh: u64, backing: Backing) {
        let Ok(h) = self.handle(fh) else { return };
        let mut t = self.inodes.lock().unwrap();
        if let Some(i) = t.get_mut(h.ino)
            && i.backing.is_none()
        {
            i.backing = Some(backing);
        }
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
                }
                i.io_plain += 1;
            }
        }
    }
}
