//! Checksums of cache entries, kept in an extended attribute of the entry
//! file itself (no sidecar file to lose or to get out of step).
//!
//! Entries are written without fsync (see `run_state`); the size check and the
//! run record catch a torn file after a crash, and the checksum catches what
//! they cannot: a file of the right length whose bytes are wrong (bit rot, a
//! disk that lied, someone editing the cache). An entry is verified the first
//! time it is used in a run; entries written in the current run are trusted.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const XATTR: &std::ffi::CStr = c"user.mediafs.crc32";

/// CRC-32 of `bytes`.
#[cfg(test)]
pub fn of_bytes(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// CRC-32 of the whole file (positional reads: the file offset is left
/// alone for whoever reads the file next).
pub fn of_file(file: &File) -> std::io::Result<u32> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) => return Ok(hasher.finalize()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Take the file's checksum and record it on the file.
pub fn record(file: &File) -> std::io::Result<()> {
    store(file, of_file(file)?)
}

/// Record `crc` on the file.
pub fn store(file: &File, crc: u32) -> std::io::Result<()> {
    let value = format!("{crc:08x}");
    // SAFETY: a plain syscall on an fd we own, with a valid name and buffer.
    let r = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            XATTR.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The checksum recorded on the file: `Ok(None)` if it has none, an error
/// if the file system keeps no extended attributes.
pub fn load(file: &File) -> std::io::Result<Option<u32>> {
    let mut buf = [0u8; 16];
    // SAFETY: a plain syscall on an fd we own, into a buffer of the given size.
    let n = unsafe {
        libc::fgetxattr(
            file.as_raw_fd(),
            XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    let text = std::str::from_utf8(&buf[..n as usize]).unwrap_or("");
    Ok(u32::from_str_radix(text, 16).ok())
}

/// Whether the file's bytes still match the checksum recorded on it. A file
/// without one (written by a run that died before recording it) cannot be
/// trusted either; on a file system without extended attributes there is
/// nothing to check against, and the size check is all there is.
pub fn verify(file: &File) -> bool {
    match load(file) {
        Ok(Some(expected)) => of_file(file).is_ok_and(|crc| crc == expected),
        Ok(None) => false,
        Err(e) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(error = %e, "the cache file system keeps no extended attributes: cache entries are checked by size only")
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn a_changed_byte_fails_and_a_missing_checksum_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::options().read(true).write(true).open(&path).unwrap();
        assert!(!verify(&f), "no checksum recorded yet");
        store(&f, of_bytes(&data)).unwrap();
        assert_eq!(of_file(&f).unwrap(), of_bytes(&data));
        let f = File::options().read(true).write(true).open(&path).unwrap();
        assert!(verify(&f));
        // Same length, one byte different.
        let mut w = File::options().write(true).open(&path).unwrap();
        w.seek(SeekFrom::Start(1_234_567)).unwrap();
        w.write_all(&[data[1_234_567] ^ 1]).unwrap();
        let f = File::open(&path).unwrap();
        assert!(!verify(&f));
    }
}
