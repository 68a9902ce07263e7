//! Who uses a cache directory, and whether its last user stopped cleanly.
//!
//! Cache files are not fsync'ed (that would halve cold-read speed). A process
//! crash loses nothing (the page cache keeps the bytes), but a machine crash can
//! leave recent files with missing blocks. So each run records the boot it ran
//! in and when it started; if the last run did not stop cleanly and the machine
//! has rebooted since, entries written during that run are dropped at start-up.
//!
//! An flock on `lock` keeps two mounts from sharing one cache directory.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct RunGuard {
    _lock: File,
    state: PathBuf,
    boot: String,
    started: u64,
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RunGuard {
    /// Take the directory for this process. Returns the guard, and the start
    /// of an unclean run before a reboot if there was one: files written since
    /// then may be damaged.
    pub fn acquire(root: &Path) -> io::Result<(RunGuard, Option<SystemTime>)> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(root.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = fs::read_to_string(root.join("lock")).unwrap_or_default();
            return Err(io::Error::other(format!(
                "cache directory {} is in use by another mediafs process{}; give each mount its own --cache-dir",
                root.display(),
                if holder.trim().is_empty() {
                    String::new()
                } else {
                    format!(" (pid {})", holder.trim())
                }
            )));
        }
        lock.set_len(0)?;
        io::Write::write_all(&mut &lock, std::process::id().to_string().as_bytes())?;
        let state = root.join("state");
        let boot = boot_id();
        let unsafe_since = fs::read_to_string(&state).ok().and_then(|text| {
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k).map(str::to_string))
            };
            let clean = field("clean=").as_deref() == Some("1");
            let same_boot = field("boot=").as_deref() == Some(boot.as_str());
            let start: u64 = field("start=")?.parse().ok()?;
            (!clean && !same_boot).then(|| UNIX_EPOCH + Duration::from_secs(start))
        });
        let guard = RunGuard {
            _lock: lock,
            state,
            boot,
            started: now_secs(),
        };
        guard.write(false)?;
        Ok((guard, unsafe_since))
    }

    fn write(&self, clean: bool) -> io::Result<()> {
        let tmp = self.state.with_extension("tmp");
        // Like every file in the cache: 0600, whatever the umask. Remove a
        // leftover first, since the mode applies only when a file is created.
        let _ = fs::remove_file(&tmp);
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        io::Write::write_all(
            &mut f,
            format!(
                "boot={}\nstart={}\nclean={}\n",
                self.boot,
                self.started,
                u8::from(clean)
            )
            .as_bytes(),
        )?;
        drop(f);
        fs::rename(&tmp, &self.state)
    }

    /// Everything in the cache is complete and on disk: the next start need
    /// not distrust anything. Called at an orderly shutdown.
    pub fn mark_clean(&self) -> io::Result<()> {
        // SAFETY: sync(2) takes no arguments; flushes every dirty cache file.
        unsafe { libc::sync() };
        self.write(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_at_a_time_and_unclean_reboot_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (g, since) = RunGuard::acquire(dir.path()).unwrap();
        assert!(since.is_none());
        let err = RunGuard::acquire(dir.path()).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(g);
        // An unclean stop in another boot: distrust files since its start.
        fs::write(
            dir.path().join("state"),
            "boot=another\nstart=1000\nclean=0\n",
        )
        .unwrap();
        let (g, since) = RunGuard::acquire(dir.path()).unwrap();
        assert_eq!(since, Some(UNIX_EPOCH + Duration::from_secs(1000)));
        g.mark_clean().unwrap();
        drop(g);
        let (_g, since) = RunGuard::acquire(dir.path()).unwrap();
        assert!(since.is_none(), "a clean stop is trusted");
    }
}
