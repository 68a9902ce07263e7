//! The web-server load check every store must pass: many readers opening,
//! reading and closing hot cached files (as nginx workers do), while a
//! writer replaces some of them the way applications do (write a temporary
//! name, rename it over the old one) and a second host reads them too.
//!
//! It asserts what a web farm needs: not one error, every read one whole
//! version of its file (never a mix), on the writer's host never a version
//! older than the last finished replacement, and no growth of the mount's
//! file descriptors, passthrough backing files or memory as the run goes on.
//!
//! `MEDIAFS_LOAD_OPENS` sets the number of opens on the readers' host
//! (default 200,000; raise it for a longer run by hand).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::suite::StoreCtx;
use super::{Mounted, eventually, metrics_addr, pattern, sample, scrape};

const FILES: usize = 60;
/// Files the writer replaces, over and over.
const REPLACED: usize = 8;
const READERS: usize = 16;
const SECOND_HOST_READERS: usize = 4;
/// Each version starts with its number, so a reader knows which it got.
const HEADER: usize = 8;

fn opens_wanted() -> u64 {
    std::env::var("MEDIAFS_LOAD_OPENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn name(file: usize) -> String {
    format!("img{file:04}.jpg")
}

/// Version `v` of `file`: its number, then bytes of a size between 8 and
/// ~100 KB that differ between versions.
fn version_bytes(file: usize, v: u64) -> Vec<u8> {
    let seed = (file as u64) << 32 | v;
    let len = 8_000 + (seed.wrapping_mul(2654435761) % 92_000) as usize;
    let mut out = v.to_be_bytes().to_vec();
    out.extend(pattern(len, seed));
    out
}

/// Every version written so far, and per file the newest one whose rename
/// has returned.
type VersionMap = HashMap<(usize, u64), Arc<Vec<u8>>>;

#[derive(Default)]
struct Versions {
    bytes: RwLock<VersionMap>,
    committed: Vec<AtomicU64>,
}

impl Versions {
    fn new() -> Self {
        Versions {
            bytes: RwLock::default(),
            committed: (0..FILES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, file: usize, v: u64) -> Arc<Vec<u8>> {
        let b = Arc::new(version_bytes(file, v));
        self.bytes.write().unwrap().insert((file, v), b.clone());
        b
    }

    /// `Err` describes how `got` is not one whole version of `file`.
    fn check(&self, file: usize, got: &[u8]) -> Result<u64, String> {
        if got.len() < HEADER {
            return Err(format!("{} bytes, shorter than any version", got.len()));
        }
        let v = u64::from_be_bytes(got[..HEADER].try_into().unwrap());
        let bytes = self.bytes.read().unwrap();
        let Some(want) = bytes.get(&(file, v)) else {
            return Err(format!("version {v} was never written"));
        };
        if got != want.as_slice() {
            let first = got.iter().zip(want.iter()).position(|(a, b)| a != b);
            return Err(format!(
                "version {v}: {} bytes read, {} written, first difference at {first:?}",
                got.len(),
                want.len()
            ));
        }
        Ok(v)
    }
}

/// What went wrong, kept short: counts by kind and the first few details.
#[derive(Default)]
struct Problems {
    by_kind: HashMap<String, u64>,
    first: Vec<String>,
}

impl Problems {
    fn add(&mut self, kind: impl Into<String>, detail: String) {
        *self.by_kind.entry(kind.into()).or_default() += 1;
        if self.first.len() < 10 {
            self.first.push(detail);
        }
    }
}

/// One process's figures at one moment of the run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    opens: u64,
    fds: usize,
    rss_kib: u64,
    backing: f64,
}

fn read_whole(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut f = fs::File::open(path)?;
    let mut chunk = [0u8; 128 * 1024];
    loop {
        let n = f.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn fds_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib_of(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A small xorshift, so each reader walks its own order without a crate.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

pub fn web_load_zero_errors(ctx: &StoreCtx) {
    let versions = Versions::new();
    for f in 0..FILES {
        ctx.put(&name(f), &versions.add(f, 0));
    }
    let spec = || ctx.spec().arg("--metrics-addr").arg("127.0.0.1:0");
    let a = spec().mount();
    let b = spec().mount();
    let addr = metrics_addr(&a.log());
    // Cache every file on both hosts first: the load is on hot files.
    let mut buf = Vec::new();
    for m in [&a, &b] {
        for f in 0..FILES {
            read_whole(&m.path(&name(f)), &mut buf).unwrap();
            versions.check(f, &buf).unwrap();
        }
    }

    let wanted = opens_wanted();
    let opens = AtomicU64::new(0);
    let second_host_opens = AtomicU64::new(0);
    let replaced = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let problems = Mutex::new(Problems::default());
    let samples = Mutex::new(Vec::<Sample>::new());
    let started = Instant::now();

    std::thread::scope(|s| {
        for r in 0..READERS {
            let (a, versions, opens, problems) = (&a, &versions, &opens, &problems);
            s.spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15 ^ (r as u64 + 1);
                let mut buf = Vec::with_capacity(128 * 1024);
                while opens.fetch_add(1, Ordering::Relaxed) < wanted {
                    let f = (next(&mut x) % FILES as u64) as usize;
                    // The newest replacement finished before this open began.
                    let floor = versions.committed[f].load(Ordering::Acquire);
                    match read_whole(&a.path(&name(f)), &mut buf) {
                        Err(e) => problems.lock().unwrap().add(
                            format!("errno {}", e.raw_os_error().unwrap_or(0)),
                            format!("{}: {e}", name(f)),
                        ),
                        Ok(()) => match versions.check(f, &buf) {
                            Err(why) => problems
                                .lock()
                                .unwrap()
                                .add("mixed or wrong bytes", format!("{}: {why}", name(f))),
                            Ok(v) if v < floor => problems.lock().unwrap().add(
                                "older than the last finished replacement",
                                format!("{}: read version {v}, {floor} was in place", name(f)),
                            ),
                            Ok(_) => {}
                        },
                    }
                }
            });
        }
        for r in 0..SECOND_HOST_READERS {
            let (b, versions, done, problems, n) =
                (&b, &versions, &done, &problems, &second_host_opens);
            s.spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1d ^ (r as u64 + 1);
                let mut buf = Vec::with_capacity(128 * 1024);
                while !done.load(Ordering::Acquire) {
                    let f = (next(&mut x) % FILES as u64) as usize;
                    n.fetch_add(1, Ordering::Relaxed);
                    match read_whole(&b.path(&name(f)), &mut buf) {
                        Err(e) => problems.lock().unwrap().add(
                            format!("second host: errno {}", e.raw_os_error().unwrap_or(0)),
                            format!("second host {}: {e}", name(f)),
                        ),
                        Ok(()) => {
                            if let Err(why) = versions.check(f, &buf) {
                                problems.lock().unwrap().add(
                                    "second host: mixed or wrong bytes",
                                    format!("second host {}: {why}", name(f)),
                                );
                            }
                        }
                    }
                }
            });
        }
        // The writer: replace the first REPLACED files in turn, each time as
        // a new temporary file renamed over the old name.
        let (a, versions, done, problems, replaced) = (&a, &versions, &done, &problems, &replaced);
        s.spawn(move || {
            let mut v = 0;
            while !done.load(Ordering::Acquire) {
                v += 1;
                let f = (v as usize) % REPLACED;
                let bytes = versions.add(f, v);
                let tmp = a.path(&format!(".{}.tmp{v}", name(f)));
                let result = super::write_and_close(&tmp, &bytes)
                    .and_then(|()| fs::rename(&tmp, a.path(&name(f))));
                match result {
                    Ok(()) => {
                        versions.committed[f].fetch_max(v, Ordering::AcqRel);
                        replaced.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => problems.lock().unwrap().add(
                        format!("writer: errno {}", e.raw_os_error().unwrap_or(0)),
                        format!("replacing {}: {e}", name(f)),
                    ),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // The monitor: the readers' host's descriptors, memory and backing
        // files, as the opens go by.
        let (opens, samples, addr) = (&opens, &samples, &addr);
        let pid = a.pid();
        s.spawn(move || {
            loop {
                let n = opens.load(Ordering::Relaxed).min(wanted);
                let backing = sample(&scrape(addr), "mediafs_passthrough_backing_files");
                samples.lock().unwrap().push(Sample {
                    opens: n,
                    fds: fds_of(pid),
                    rss_kib: rss_kib_of(pid),
                    backing,
                });
                if n >= wanted {
                    done.store(true, Ordering::Release);
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    });

    let took = started.elapsed();
    let problems = problems.into_inner().unwrap();
    let samples = samples.into_inner().unwrap();
    eprintln!(
        "web load: {wanted} opens on the readers' host and {} on the second host in {:.1} s \
         ({:.0} opens/s), {} replacements, {} samples; problems: {:?}",
        second_host_opens.load(Ordering::Relaxed),
        took.as_secs_f64(),
        wanted as f64 / took.as_secs_f64(),
        replaced.load(Ordering::Relaxed),
        samples.len(),
        problems.by_kind
    );
    assert!(
        problems.by_kind.is_empty(),
        "errors or wrong bytes under load: {:?}; first: {:#?}\nwarnings of the readers' host: {:#?}\nof the second host: {:#?}",
        problems.by_kind,
        problems.first,
        warnings(&a),
        warnings(&b)
    );
    assert!(
        replaced.load(Ordering::Relaxed) >= 10,
        "the writer replaced files during the run"
    );
    check_no_growth(&samples, wanted);
    // Quiet again: every backing file is closed once its readers are.
    assert!(
        eventually(Duration::from_secs(5), || sample(
            &scrape(&addr),
            "mediafs_passthrough_backing_files"
        ) == 0.0),
        "backing files left registered after the readers closed"
    );
    for (host, m) in [("readers' host", &a), ("second host", &b)] {
        assert_no_failures_logged(host, m);
    }
}

/// The last quarter of the run holds no more descriptors, memory or
/// backing files than the first quarter, give or take a small bound.
fn check_no_growth(samples: &[Sample], wanted: u64) {
    let quarter = |lo: u64, hi: u64| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.opens >= lo && s.opens <= hi)
            .copied()
            .collect()
    };
    let first = quarter(0, wanted / 4);
    let last = quarter(wanted * 3 / 4, wanted);
    assert!(
        !first.is_empty() && !last.is_empty(),
        "samples in the first and last quarter: {samples:?}"
    );
    let max = |v: &[Sample], f: fn(&Sample) -> u64| v.iter().map(f).max().unwrap();
    let (fds0, fds1) = (max(&first, |s| s.fds as u64), max(&last, |s| s.fds as u64));
    assert!(
        fds1 <= fds0 + 16,
        "open descriptors grew from {fds0} to {fds1}"
    );
    let (rss0, rss1) = (max(&first, |s| s.rss_kib), max(&last, |s| s.rss_kib));
    assert!(
        rss1 <= rss0 + rss0 / 4 + 16 * 1024,
        "memory grew from {rss0} KiB to {rss1} KiB"
    );
    let backing = samples.iter().map(|s| s.backing).fold(0.0, f64::max);
    assert!(
        backing <= FILES as f64,
        "at most one backing file per file; saw {backing}"
    );
}

fn warnings(m: &Mounted) -> Vec<String> {
    m.log()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(10)
        .map(String::from)
        .collect()
}

fn assert_no_failures_logged(host: &str, m: &Mounted) {
    let log = m.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("operation failed"))
        .take(5)
        .collect();
    assert!(
        warnings.is_empty(),
        "{host}: failures answered to the kernel: {warnings:#?}"
    );
}
