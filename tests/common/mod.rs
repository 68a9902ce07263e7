//! Test harness shared by every integration test: start the real `mediafs`
//! binary on a temporary mountpoint, wait for its ready line, stop it by PID.

#![allow(dead_code)]

pub mod load;
pub mod proxy;
pub mod suite;
pub mod swift;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mediafs");

/// A running mount. Dropping it unmounts (SIGTERM to our own child, then a
/// lazy unmount if it did not go).
pub struct Mounted {
    pub mnt: PathBuf,
    pub cache: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    _dirs: Vec<tempfile::TempDir>,
}

pub struct MountSpec {
    pub store: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Reuse this cache directory (e.g. across a restart).
    pub cache: Option<PathBuf>,
}

impl MountSpec {
    pub fn new(store: impl Into<String>) -> Self {
        MountSpec {
            store: store.into(),
            args: Vec::new(),
            env: Vec::new(),
            cache: None,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Set the metadata TTL, replacing one set before (clap refuses a flag
    /// given twice).
    pub fn ttl(mut self, secs: u64) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == "--metadata-ttl") {
            self.args.drain(i..i + 2);
        }
        self.arg("--metadata-ttl").arg(secs.to_string())
    }

    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache = Some(dir.to_path_buf());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Start the mount and wait until it says it is ready.
    pub fn mount(self) -> Mounted {
        self.try_mount()
            .unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    /// Start the mount; Err(stderr) if it exits instead of becoming ready.
    pub fn try_mount(self) -> Result<Mounted, String> {
        let mnt_dir = tempfile::tempdir().unwrap();
        let mut dirs = vec![];
        let cache = match self.cache {
            Some(c) => c,
            None => {
                let d = tempfile::tempdir().unwrap();
                let p = d.path().join("cache");
                dirs.push(d);
                p
            }
        };
        let mnt = mnt_dir.path().to_path_buf();
        dirs.push(mnt_dir);
        let mut cmd = Command::new(BIN);
        cmd.arg("mount")
            .arg(&self.store)
            .arg(&mnt)
            .arg("--cache-dir")
            .arg(&cache)
            .args(&self.args)
            .env("RUST_LOG", "mediafs=debug,fuser=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mediafs");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("mediafs: ready:")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("exited with {status}: {}", log.lock().unwrap()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("not ready in 60 s: {}", log.lock().unwrap()));
            }
        }
        Ok(Mounted {
            mnt,
            cache,
            child: Some(child),
            log,
            _dirs: dirs,
        })
    }
}

impl Mounted {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM our child and wait for a clean exit; returns its log.
    pub fn unmount(mut self) -> String {
        self.stop();
        self.log()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) of the child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new(BIN)
                .arg("unmount")
                .arg("--lazy")
                .arg(&self.mnt)
                .status();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Compare bytes without printing megabytes on failure.
#[track_caller]
pub fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let first = actual.iter().zip(expected).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes read, {} expected; first difference at {:?}",
            actual.len(),
            expected.len(),
            first
        );
    }
}

/// Write a whole file and close it, reporting close()'s own result (std's
/// `fs::write` ignores it, and close() is where mediafs reports the upload).
pub fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    // SAFETY: we own fd and close it once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Make `dir` refuse writes even to root: a read-only bind mount over itself.
pub struct ReadOnly(PathBuf);
impl ReadOnly {
    pub fn new(dir: &Path) -> ReadOnly {
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(dir)
            .arg(dir)
            .status()
            .unwrap()
            .success()
            && Command::new("mount")
                .args(["-o", "remount,ro,bind"])
                .arg(dir)
                .status()
                .unwrap()
                .success();
        assert!(ok, "read-only bind mount (tests run as root)");
        ReadOnly(dir.to_path_buf())
    }
}
impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The address a mount started with `--metrics-addr 127.0.0.1:0` serves
/// metrics on, from its log.
pub fn metrics_addr(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("serving metrics"))
        .and_then(|l| l.split("address=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"))
}

/// One scrape of `GET /metrics`.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample `name` (with its labels, exactly as exposed).
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
