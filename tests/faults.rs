//! Faults against a real mount over the local store: the process killed in the
//! middle of uploads, two hosts writing one path, a damaged cache entry.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{MountSpec, assert_same, pattern};

fn store_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    (dir, root)
}

/// No leftover of ours is visible as a key.
fn visible_files(root: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with(".mediafs-tmp."))
        .collect();
    out.sort();
    out
}

#[test]
fn kill_9_during_uploads_loses_no_acknowledged_file() {
    let (_d, root) = store_dir();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    let m = MountSpec::new(root.to_str().unwrap())
        .cache_dir(&cache_dir)
        .mount();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mnt = m.mnt.clone();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (acked, stop, mnt) = (acked.clone(), stop.clone(), mnt.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{n}");
                    let seed = w * 1_000_000 + n;
                    // close() returning Ok is the acknowledgement (std's
                    // fs::write would ignore close()'s result).
                    let data = pattern(200_000 + (n as usize % 7) * 50_000, seed);
                    if common::write_and_close(&mnt.join(&name), &data).is_ok() {
                        acked.lock().unwrap().push((name, seed));
                    }
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) of the mount process this test started.
    unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    drop(m); // reaps the child, detaches the dead mount
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "some files were written before the kill: {}",
        acked.len()
    );
    for (name, seed) in &acked {
        let n: u64 = name.rsplit('-').next().unwrap().parse().unwrap();
        let want = pattern(200_000 + (n as usize % 7) * 50_000, *seed);
        let got = fs::read(root.join(name))
            .unwrap_or_else(|e| panic!("{name}: acknowledged but not in the store: {e}"));
        assert_same(&got, &want, name);
    }
    // Files never acknowledged are either absent or complete, never partial.
    for name in visible_files(&root) {
        let (w, n) = name[1..].split_once('-').unwrap();
        let (w, n): (u64, u64) = (w.parse().unwrap(), n.parse().unwrap());
        let want = pattern(200_000 + (n as usize % 7) * 50_000, w * 1_000_000 + n);
        assert_same(&fs::read(root.join(&name)).unwrap(), &want, &name);
    }
    // A restart on the same cache directory works and serves the files.
    let m = MountSpec::new(root.to_str().unwrap())
        .cache_dir(&cache_dir)
        .mount();
    let (name, seed) = &acked[0];
    let n: u64 = name.rsplit('-').next().unwrap().parse().unwrap();
    assert_same(
        &fs::read(m.path(name)).unwrap(),
        &pattern(200_000 + (n as usize % 7) * 50_000, *seed),
        "after restart",
    );
    assert!(m.unmount().contains("mediafs: unmounted"));
}

#[test]
fn two_mounts_writing_one_path_end_with_one_whole_version() {
    let (_d, root) = store_dir();
    let a = MountSpec::new(root.to_str().unwrap()).ttl(0).mount();
    let b = MountSpec::new(root.to_str().unwrap()).ttl(0).mount();
    // Readers on hosts that are not writing (on a writing host, a reader sees
    // that host's bytes as they are written, as on a local disk).
    let c = MountSpec::new(root.to_str().unwrap()).ttl(0).mount();
    let d = MountSpec::new(root.to_str().unwrap()).ttl(0).mount();
    let va = pattern(3 << 20, 1);
    let vb = pattern(3 << 20, 2);
    fs::write(root.join("same.jpg"), &va).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (m, v) in [(&a, &va), (&b, &vb)] {
            s.spawn(move || {
                for _ in 0..5 {
                    fs::write(m.path("same.jpg"), v).unwrap();
                }
            });
        }
        // A reader on each other mount sees one complete version at every read.
        for m in [&c, &d] {
            let (stop, va, vb) = (&stop, &va, &vb);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(got) = fs::read(m.path("same.jpg")) {
                        assert!(
                            got == *va || got == *vb,
                            "a reader saw a mix ({} bytes)",
                            got.len()
                        );
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(100));
        while fs::read(root.join("same.jpg"))
            .map(|g| g.len())
            .unwrap_or(0)
            == 0
        {}
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
    });
    let end = fs::read(root.join("same.jpg")).unwrap();
    assert!(end == va || end == vb, "the store holds one whole version");
}

#[test]
fn damaged_cache_entry_is_not_served() {
    let (_d, root) = store_dir();
    let data = pattern(500_000, 5);
    fs::write(root.join("a.png"), &data).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    let m = MountSpec::new(root.to_str().unwrap())
        .cache_dir(&cache_dir)
        .mount();
    assert_same(&fs::read(m.path("a.png")).unwrap(), &data, "first read");
    m.unmount();
    // Cut the cached copy short, as a crash of the disk might.
    let entry = walk(&cache_dir.join("data")).pop().expect("an entry");
    fs::OpenOptions::new()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let m = MountSpec::new(root.to_str().unwrap())
        .cache_dir(&cache_dir)
        .mount();
    assert_same(&fs::read(m.path("a.png")).unwrap(), &data, "after damage");
    assert!(m.log().contains("wrong size"), "the damage was noticed");
}

/// A cache entry of the right size with one byte changed (what a crash or a
/// bad disk block leaves behind) is caught by its checksum at the next run,
/// for an entry checksummed at insert (small) and one checksummed in the
/// background (over 1 MiB).
#[test]
fn cache_entry_with_a_changed_byte_is_not_served() {
    let (_d, root) = store_dir();
    let small = pattern(500_000, 6);
    let large = pattern(3_000_000, 7);
    fs::write(root.join("small.png"), &small).unwrap();
    fs::write(root.join("large.mp4"), &large).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    let spec = || {
        MountSpec::new(root.to_str().unwrap())
            .cache_dir(&cache_dir)
            .mount()
    };
    let m = spec();
    assert_same(&fs::read(m.path("small.png")).unwrap(), &small, "small");
    assert_same(&fs::read(m.path("large.mp4")).unwrap(), &large, "large");
    m.unmount();
    let entries = walk(&cache_dir.join("data"));
    assert_eq!(entries.len(), 2, "{entries:?}");
    for entry in &entries {
        let mut bytes = fs::read(entry).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(entry, &bytes).unwrap();
    }
    let m = spec();
    assert_same(
        &fs::read(m.path("small.png")).unwrap(),
        &small,
        "small after",
    );
    assert_same(
        &fs::read(m.path("large.mp4")).unwrap(),
        &large,
        "large after",
    );
    let log = m.log();
    assert_eq!(
        log.matches("does not match its checksum").count(),
        2,
        "both damaged entries were noticed: {log}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
