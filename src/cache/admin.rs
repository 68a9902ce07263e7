//! `mediafs cache stats|clear`: look at or empty a cache directory from
//! outside. A running mount holds a shared flock on `CACHE_DIR/lock`;
//! `clear` takes it exclusively and so refuses while a mount uses the cache.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::dir_usage;

pub const LOCK_FILE: &str = "lock";

/// Open (creating) the lock file and flock it; `None` if someone else holds
/// a conflicting lock.
pub fn lock(root: &Path, exclusive: bool) -> std::io::Result<Option<File>> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(LOCK_FILE))?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        Ok(Some(f))
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// Whether a running mount uses the cache at `root`.
pub fn in_use(root: &Path) -> std::io::Result<bool> {
    if !root.join(LOCK_FILE).exists() {
        return Ok(false);
    }
    Ok(lock(root, true)?.is_none())
}

/// Staging files waiting for upload: (file, bytes, key).
pub fn staging_files(root: &Path) -> Vec<(PathBuf, u64, String)> {
    let mut out: Vec<_> = crate::fs::staging::leftovers(&root.join("staging"))
        .into_iter()
        .map(|(p, key)| {
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len, key)
        })
        .collect();
    out.sort();
    out
}

fn count_files(dir: &Path) -> u64 {
    fs::read_dir(dir).map(|rd| rd.count() as u64).unwrap_or(0)
}

/// The report of `mediafs cache stats`.
pub fn stats(root: &Path) -> Result<String, String> {
    if !root.is_dir() {
        return Err(format!("{}: not a cache directory", root.display()));
    }
    let err = |e: std::io::Error| format!("{}: {e}", root.display());
    let (entries, bytes) = dir_usage(root).map_err(err)?;
    let mut out = format!("cache directory: {}\n", root.display());
    let used = if in_use(root).map_err(err)? {
        "yes"
    } else {
        "no"
    };
    out += &format!("in use by a mount: {used}\n");
    out += &format!("entries: {entries}\n");
    out += &format!("bytes: {bytes} ({})\n", indicatif::HumanBytes(bytes));
    out += &format!(
        "downloads in progress: {}\n",
        count_files(&root.join("tmp"))
    );
    let staged = staging_files(root);
    out += &format!("staging files waiting for upload: {}\n", staged.len());
    for (path, len, key) in staged {
        out += &format!("  {} ({len} bytes) for key {key:?}\n", path.display());
    }
    Ok(out)
}

/// Delete every cache entry; never staging files. Refused while mounted.
pub fn clear(root: &Path) -> Result<String, String> {
    if !root.is_dir() {
        return Err(format!("{}: not a cache directory", root.display()));
    }
    let err = |e: std::io::Error| format!("{}: {e}", root.display());
    let Some(_lock) = lock(root, true).map_err(err)? else {
        return Err(format!(
            "{} is in use by a running mount; unmount it first",
            root.display()
        ));
    };
    let (entries, bytes) = dir_usage(root).map_err(err)?;
    let data = root.join("data");
    if data.exists() {
        fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    }
    let mut out = format!(
        "cleared {}: {entries} entries, {bytes} bytes\n",
        root.display()
    );
    let staged = staging_files(root).len();
    if staged > 0 {
        out += &format!(
            "kept {staged} staging file(s) waiting for upload (see `mediafs cache stats`)\n"
        );
    }
    Ok(out)
}
