//! Running mediafs in production: systemd notification and unit, the mount
//! helper, `check`, `import`, `cache` and metrics, through the real binary.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{BIN, is_mounted};

/// The filesystem type of `p` as statfs(2) reports it.
fn fs_type(p: &Path) -> i64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: zeroed statfs is a valid out-buffer; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    st.f_type as i64
}

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    (dir, root)
}

#[test]
fn ready_is_sent_only_once_the_mount_answers() {
    let (_d, store) = store_dir();
    fs::write(store.join("hello.txt"), b"hi").unwrap();
    let work = tempfile::tempdir().unwrap();
    let sock_path = work.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let before = fs_type(&mnt);
    assert_ne!(before, FUSE_SUPER_MAGIC);
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&store)
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    let ready = loop {
        assert!(Instant::now() < deadline, "no READY=1 within 60 s");
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                if msg.lines().any(|l| l == "READY=1") {
                    // At the very moment READY arrives, the mountpoint must
                    // already be the FUSE mount, and answer.
                    assert_eq!(fs_type(&mnt), FUSE_SUPER_MAGIC, "READY before the mount");
                    assert_eq!(fs::read(mnt.join("hello.txt")).unwrap(), b"hi");
                    break msg;
                }
            }
            Err(_) => {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "mediafs exited before READY"
                );
                // Until READY, nothing may claim the mount is up.
            }
        }
    };
    assert!(ready.contains("STATUS=serving"), "{ready}");
    // SAFETY: kill(2) of the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "STOPPING=1");
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&mnt), "unmounted cleanly");
}

#[test]
fn systemd_unit_verifies() {
    // The unit as shipped, with ExecStart pointing at this build instead of
    // /usr/local/bin/mediafs (verify checks that the binary exists).
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/mediafs@.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mediafs@.service");
    fs::write(&path, unit.replace("/usr/local/bin/mediafs", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/install-deps installs systemd)");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("mediafs@"),
        "warnings about the unit: {stderr}"
    );
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn check_good_store() {
    let (_d, store) = store_with_jpeg();
    let (code, out, _) = run(Command::new(BIN).arg("check").arg(&store));
    assert_eq!(code, 0, "{out}");
    for step in ["reach", "list", "write", "stat", "read", "delete"] {
        assert!(out.contains(&format!("ok      {step}:")), "{step}: {out}");
    }
    assert!(out.contains("the store is usable"), "{out}");
    assert_eq!(entries(&store), ["a.jpg"], "the temporary object is gone");
}

#[test]
fn check_missing_store() {
    let (code, out, err) = run(Command::new(BIN).args(["check", "/definitely/not/a/store"]));
    assert_eq!(code, 1);
    assert!(out.contains("FAILED  reach:"), "{out}");
    assert!(out.contains("/definitely/not/a/store"), "{out}");
    assert!(err.contains("check(s) failed"), "{err}");
}

#[test]
fn check_read_only_store() {
    let (_d, store) = store_with_jpeg();
    let _ro = common::ReadOnly::new(&store);
    let (code, out, _) = run(Command::new(BIN).arg("check").arg(&store));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok      list:"), "{out}");
    assert!(out.contains("FAILED  write:"), "{out}");
    assert!(out.contains("permission denied"), "{out}");
    // What a read-only mount needs still works.
    let (code, out, _) = run(Command::new(BIN).args(["check", "--read-only"]).arg(&store));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok      read: read the first 4 bytes of a.jpg"),
        "{out}"
    );
}

/// Run `f` with a mount point that is unmounted (lazily) whatever happens.
struct Mnt(tempfile::TempDir);
impl Mnt {
    fn new() -> Mnt {
        Mnt(tempfile::tempdir().unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}
impl Drop for Mnt {
    fn drop(&mut self) {
        if is_mounted(self.path()) {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// umount(8), then wait until the daemon has let go.
fn umount(p: &Path) {
    assert!(Command::new("umount").arg(p).status().unwrap().success());
    assert!(common::eventually(Duration::from_secs(10), || {
        !is_mounted(p)
    }));
}

fn store_with_jpeg() -> (tempfile::TempDir, PathBuf) {
    let (d, store) = store_dir();
    fs::write(store.join("a.jpg"), b"jpeg").unwrap();
    (d, store)
}

#[test]
fn mount_helper_called_the_way_mount8_calls_it() {
    let (_d, store) = store_with_jpeg();
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("mount.mediafs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let mnt = Mnt::new();
    let cache = tempfile::tempdir().unwrap();
    let (code, _, err) = run(Command::new(&helper)
        .arg(&store)
        .arg(mnt.path())
        .arg("-o")
        .arg(format!(
            "rw,_netdev,noauto,cache_dir={},metadata_ttl=1,ro,allow_other,uid=33,gid=44",
            cache.path().display()
        )));
    // mount(8) expects the helper to return once mounted.
    assert_eq!(code, 0, "{err}");
    assert!(is_mounted(mnt.path()));
    let f = mnt.path().join("a.jpg");
    assert_eq!(fs::read(&f).unwrap(), b"jpeg");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(mnt.path().to_str().unwrap()))
        .unwrap();
    assert!(line.contains(" ro,"), "{line}");
    assert!(line.contains("allow_other"), "{line}");
    // ro became --read-only.
    assert_eq!(
        fs::write(mnt.path().join("b"), b"b")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    // Plain umount(8) ends it, and the daemon goes with it.
    umount(mnt.path());
    // Bad options: a usage error, nothing mounted.
    let (code, _, err) = run(Command::new(&helper)
        .arg(&store)
        .arg(mnt.path())
        .args(["-o", "cache_sise=1G"]));
    assert_eq!(code, 1);
    assert!(err.contains("cache_sise"), "{err}");
    assert!(!is_mounted(mnt.path()));
}

/// `mount -t mediafs` and an fstab line, through mount(8) itself. mount(8)
/// only looks for helpers in /sbin, so the test links this build there for
/// its duration (only if no mount.mediafs is installed).
#[test]
fn mount_t_mediafs_and_fstab() {
    let sbin = Path::new("/sbin/mount.mediafs");
    match fs::read_link(sbin) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::os::unix::fs::symlink(BIN, sbin).unwrap()
        }
        Ok(t) if t == Path::new(BIN) => {}
        _ => {
            eprintln!("skipped: {} is installed; not replacing it", sbin.display());
            return;
        }
    }
    struct Unlink<'a>(&'a Path);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            if fs::read_link(self.0).is_ok_and(|t| t == Path::new(BIN)) {
                let _ = fs::remove_file(self.0);
            }
        }
    }
    let _unlink = Unlink(sbin);
    let (_d, store) = store_with_jpeg();
    let cache = tempfile::tempdir().unwrap();
    let mnt = Mnt::new();
    let (code, out, err) = run(Command::new("mount")
        .args(["-t", "mediafs"])
        .arg(&store)
        .arg(mnt.path())
        .arg("-o")
        .arg(format!(
            "cache_dir={},metadata_ttl=1",
            cache.path().display()
        )));
    assert_eq!(code, 0, "{out}{err}");
    assert!(is_mounted(mnt.path()));
    fs::write(mnt.path().join("new.jpg"), b"written").unwrap();
    assert_eq!(fs::read(store.join("new.jpg")).unwrap(), b"written");
    umount(mnt.path());

    // An fstab line with _netdev, mounted by its mount point.
    let fstab = cache.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} mediafs _netdev,noauto,cache_dir={},metadata_ttl=1 0 0\n",
            store.display(),
            mnt.path().display(),
            cache.path().join("c2").display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(Command::new("mount").arg("-T").arg(&fstab).arg(mnt.path()));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fs::read(mnt.path().join("new.jpg")).unwrap(), b"written");
    umount(mnt.path());
}

/// Every regular file below `dir`, as (relative path, bytes), sorted.
fn tree_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn import(src: &Path, store: &Path, extra: &[&str]) -> (i32, String, String) {
    run(Command::new(BIN)
        .arg("import")
        .arg(src)
        .arg(store)
        .args(extra)
        .stdin(Stdio::null()))
}

fn media_tree(root: &Path) {
    for (i, dir) in ["catalog/product/a/b", "catalog/product/c/d", "wysiwyg"]
        .iter()
        .enumerate()
    {
        fs::create_dir_all(root.join(dir)).unwrap();
        for j in 0..10u64 {
            let len = 1000 * (j as usize + 1) + i;
            fs::write(
                root.join(dir).join(format!("img {j}.jpg")),
                common::pattern(len, j * 7 + i as u64),
            )
            .unwrap();
        }
    }
    fs::create_dir_all(root.join("tmp/empty")).unwrap();
    fs::write(root.join("zero.txt"), b"").unwrap();
}

#[test]
fn import_counts_resumes_and_copies_byte_for_byte() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path();
    media_tree(src);
    std::os::unix::fs::symlink("zero.txt", src.join("link.txt")).unwrap();
    let fifo = std::ffi::CString::new(src.join("pipe").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let (_d, store) = store_dir();

    let (code, out, err) = import(src, &store, &["--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("would upload 31"), "{out}");
    assert!(entries(&store).is_empty(), "dry run changed nothing");

    let (code, out, err) = import(src, &store, &["--jobs", "4"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("files: 31 found"), "{out}");
    assert!(out.contains("uploaded 31"), "{out}");
    assert!(out.contains("failed 0"), "{out}");
    assert!(out.contains("1 empty directory created"), "{out}");
    assert!(
        out.contains("link.txt is a symbolic link; not imported"),
        "{out}"
    );
    assert!(out.contains("pipe is a FIFO; not imported"), "{out}");
    assert!(out.contains("time: "), "{out}");
    assert!(
        !err.contains('\r'),
        "no progress bar when not a terminal: {err}"
    );
    assert_eq!(tree_of(src), tree_of(&store), "byte-identical");
    assert!(store.join("tmp/empty").is_dir());
    assert!(!store.join("link.txt").exists() && !store.join("pipe").exists());

    // Again: everything is already there.
    let (code, out, _) = import(src, &store, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("uploaded 0"), "{out}");
    assert!(out.contains("skipped 31"), "{out}");
    // A changed source file (same size, new mtime) is uploaded again.
    let changed = src.join("wysiwyg/img 3.jpg");
    let len = fs::metadata(&changed).unwrap().len() as usize;
    fs::write(&changed, common::pattern(len, 999)).unwrap();
    let f = fs::File::options().write(true).open(&changed).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let (code, out, _) = import(src, &store, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("uploaded 1 "), "{out}");
    assert!(out.contains("skipped 30"), "{out}");
    assert_eq!(tree_of(src), tree_of(&store));
}

#[test]
fn import_failures_are_listed_and_retried() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path();
    media_tree(src);
    let (_d, store) = store_dir();
    // The store refuses writes below catalog/product/c, even to root.
    let locked = store.join("catalog/product/c");
    fs::create_dir_all(&locked).unwrap();
    let ro = common::ReadOnly::new(&locked);
    let (code, out, err) = import(src, &store, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("uploaded 21"), "{out}");
    assert!(out.contains("failed 10"), "{out}");
    assert!(
        out.contains("FAILED catalog/product/c/d/img 0.jpg: put: permission denied"),
        "{out}"
    );
    assert!(err.contains("failed to import"), "{err}");
    // Nothing half-uploaded: no object and no temporary file below it.
    assert!(tree_of(&locked).is_empty());
    drop(ro);
    let (code, out, err) = import(src, &store, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("uploaded 10 "), "{out}");
    assert!(out.contains("skipped 21"), "{out}");
    assert_eq!(tree_of(src), tree_of(&store));
}

#[test]
fn metrics_move_as_files_are_read() {
    let (_d, store) = store_dir();
    for i in 0..3u64 {
        fs::write(
            store.join(format!("f{i}.jpg")),
            common::pattern(300 * 1024, i),
        )
        .unwrap();
    }
    // Port 0: the kernel picks a free port and the log says which.
    let m = common::MountSpec::new(store.to_str().unwrap())
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .arg("--cache-size")
        .arg("512K")
        .mount();
    let log = m.log();
    let addr = common::metrics_addr(&log);
    let before = common::scrape(&addr);
    assert_eq!(common::sample(&before, "mediafs_cache_misses_total"), 0.0);
    assert_eq!(common::sample(&before, "mediafs_uploads_in_flight"), 0.0);
    for i in 0..3u64 {
        assert_eq!(
            fs::read(m.path(&format!("f{i}.jpg"))).unwrap(),
            common::pattern(300 * 1024, i)
        );
    }
    fs::write(m.path("new.jpg"), b"new").unwrap();
    let after = common::scrape(&addr);
    assert_eq!(
        common::sample(&after, "mediafs_cache_misses_total"),
        3.0,
        "{after}"
    );
    assert_eq!(
        common::sample(&after, "mediafs_cache_fetched_bytes_total"),
        3.0 * 300.0 * 1024.0
    );
    assert!(
        common::sample(&after, "mediafs_cache_evictions_total") >= 1.0,
        "{after}"
    );
    assert!(common::sample(&after, "mediafs_cache_used_bytes") <= 512.0 * 1024.0);
    assert!(common::sample(&after, r#"mediafs_fuse_operations_total{op="read"}"#) >= 3.0);
    assert!(common::sample(&after, r#"mediafs_fuse_operations_total{op="open"}"#) >= 3.0);
    assert_eq!(
        common::sample(
            &after,
            r#"mediafs_store_requests_total{op="get",outcome="ok"}"#
        ),
        3.0,
        "{after}"
    );
    assert_eq!(
        common::sample(
            &after,
            r#"mediafs_store_requests_total{op="put",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        common::sample(
            &after,
            r#"mediafs_store_request_duration_seconds_count{op="get"}"#
        ),
        3.0
    );
    // Read again: a hit now (the last file is still cached).
    drop(fs::read(m.path("f2.jpg")).unwrap());
    let again = common::scrape(&addr);
    assert_eq!(
        common::sample(&again, "mediafs_cache_hits_total"),
        1.0,
        "{again}"
    );
    drop(m);
}

/// Every error an application sees that is not the plain answer to its
/// request is logged at warn with the operation and path, and counted by
/// errno; plain answers (ENOENT for a missing name) are counted only.
#[test]
fn failures_are_logged_with_their_path_and_counted_by_errno() {
    let (_d, store) = store_dir();
    fs::write(store.join("kept.jpg"), b"old").unwrap();
    let m = common::MountSpec::new(store.to_str().unwrap())
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .mount();
    let addr = common::metrics_addr(&m.log());
    assert!(fs::metadata(m.path("missing.jpg")).is_err());
    let ro = common::ReadOnly::new(&store);
    let err = common::write_and_close(&m.path("kept.jpg"), b"new bytes").unwrap_err();
    assert_eq!(common::errno_of(&err), libc::EIO);
    drop(ro);
    let text = common::scrape(&addr);
    let sample = |name: &str| common::sample(&text, name);
    assert!(
        sample(r#"mediafs_fuse_errors_total{op="lookup",errno="ENOENT"}"#) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(r#"mediafs_fuse_failures_total{op="lookup",errno="ENOENT"}"#),
        0.0
    );
    // At least the close's flush; another is possible and right: a process
    // the test harness forks for a parallel test holds a copy of the
    // descriptor until its exec closes it, and that close flushes too.
    let flush_eio = sample(r#"mediafs_fuse_failures_total{op="flush",errno="EIO"}"#);
    assert!(flush_eio >= 1.0, "{text}");
    assert_eq!(
        flush_eio,
        sample(r#"mediafs_fuse_errors_total{op="flush",errno="EIO"}"#),
        "every failed flush counted as a failure: {text}"
    );
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("operation failed"))
        .unwrap_or_else(|| panic!("no warning for the failed close: {log}"));
    assert!(
        line.contains("op=\"flush\"") && line.contains("path=/kept.jpg") && line.contains("EIO"),
        "{line}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("missing.jpg")),
        "a missing name is a plain answer, not a warning: {log}"
    );
}

#[test]
fn cache_stats_lists_staging_and_clear_refuses_while_mounted() {
    let (_d, store) = store_with_jpeg();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let m = common::MountSpec::new(store.to_str().unwrap())
        .cache_dir(&cache)
        .mount();
    assert_eq!(fs::read(m.path("a.jpg")).unwrap(), b"jpeg");
    let cache_cmd = |action: &str| {
        run(Command::new(BIN)
            .args(["cache", action, "--cache-dir"])
            .arg(&cache))
    };
    let (code, out, _) = cache_cmd("stats");
    assert_eq!(code, 0);
    assert!(out.contains("in use by a mount: yes"), "{out}");
    assert!(out.contains("entries: 1"), "{out}");
    let (code, _, err) = cache_cmd("clear");
    assert_eq!(code, 1);
    assert!(err.contains("in use by a running mount"), "{err}");
    // Still served: nothing was removed.
    assert_eq!(fs::read(m.path("a.jpg")).unwrap(), b"jpeg");
    m.unmount();
    // A staging file left behind (as after a failed upload) is listed with its key.
    fs::write(cache.join("staging/0123abcd"), b"unsaved").unwrap();
    fs::write(cache.join("staging/0123abcd.key"), "photos/x.jpg").unwrap();
    let (code, out, _) = cache_cmd("stats");
    assert_eq!(code, 0);
    assert!(out.contains("in use by a mount: no"), "{out}");
    assert!(out.contains("staging files waiting for upload: 1"), "{out}");
    assert!(out.contains("(7 bytes) for key \"photos/x.jpg\""), "{out}");
    let (code, out, err) = cache_cmd("clear");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 entries"), "{out}");
    assert!(out.contains("kept 1 staging file"), "{out}");
    assert!(cache.join("staging/0123abcd").exists());
}

/// The unit's capability bounding set and NoNewPrivileges still let mediafs
/// mount FUSE, write through to a store owned by someone else, and unmount
/// (systemd itself cannot run here; setpriv applies the same two limits).
#[test]
fn unit_hardening_allows_a_fuse_mount() {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/mediafs@.service"
    ))
    .unwrap();
    assert!(unit.lines().any(|l| l == "NoNewPrivileges=yes"));
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit limits capabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.to_ascii_lowercase().trim_start_matches("cap_")))
        .collect();
    let (_d, store) = store_with_jpeg();
    // The store belongs to another user, as a shared media directory may.
    std::os::unix::fs::chown(&store, Some(33), Some(33)).unwrap();
    let mnt = Mnt::new();
    let cache = tempfile::tempdir().unwrap();
    let (code, out, err) = run(Command::new("setpriv")
        .arg("--no-new-privs")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg(BIN)
        .arg("mount")
        .arg(&store)
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("--daemon"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fs::read(mnt.path().join("a.jpg")).unwrap(), b"jpeg");
    fs::write(mnt.path().join("b.jpg"), b"bee").unwrap();
    assert_eq!(fs::read(store.join("b.jpg")).unwrap(), b"bee");
    umount(mnt.path());
}
