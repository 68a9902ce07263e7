//! The shared suite over the local directory store, plus what only a local
//! store lets us check from outside (the cache bound, restarts, a failing store).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::suite::StoreCtx;
use common::{BIN, MountSpec, ReadOnly, errno_of, pattern};
use mediafs::store::local::LocalStore;

fn local(_name: &str) -> StoreCtx {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    StoreCtx {
        url: root.to_str().unwrap().to_string(),
        args: vec![],
        env: vec![],
        store: Arc::new(LocalStore::open(&root).unwrap()),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        keeps_attrs: true,
        max_object: None,
        _guard: Box::new(dir),
    }
}

store_suite!(local);

fn root_of(ctx: &StoreCtx) -> std::path::PathBuf {
    std::path::PathBuf::from(&ctx.url)
}

#[test]
fn existing_directory_mounts_as_it_is() {
    let ctx = local("existing");
    let root = root_of(&ctx);
    fs::create_dir_all(root.join("catalog/product/a/b")).unwrap();
    fs::write(root.join("catalog/product/a/b/ab.jpg"), b"jpeg").unwrap();
    fs::set_permissions(
        root.join("catalog/product/a/b/ab.jpg"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let m = MountSpec::new(format!("file://{}", ctx.url)).mount();
    let p = m.path("catalog/product/a/b/ab.jpg");
    assert_eq!(fs::read(&p).unwrap(), b"jpeg");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    // Our own temporary files never show, in the mount or as keys.
    fs::write(m.path("new.jpg"), b"n").unwrap();
    let names: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".mediafs")),
        "{names:?}"
    );
}

#[test]
fn cache_stays_under_its_size() {
    let ctx = local("bound");
    let root = root_of(&ctx);
    for i in 0..12 {
        fs::write(root.join(format!("f{i}")), pattern(300 * 1024, i)).unwrap();
    }
    let m = ctx.spec().arg("--cache-size").arg("1M").mount();
    for i in 0..12 {
        assert_eq!(
            fs::read(m.path(&format!("f{i}"))).unwrap(),
            pattern(300 * 1024, i)
        );
    }
    let (files, bytes) = mediafs::cache::dir_usage(&m.cache).unwrap();
    assert!(
        bytes <= 1 << 20,
        "cache holds {bytes} bytes in {files} files, over 1 MiB"
    );
    assert!(files >= 1, "something was cached");
    // Every file still reads right (evicted ones come from the store again).
    for i in 0..12 {
        assert_eq!(
            fs::read(m.path(&format!("f{i}"))).unwrap(),
            pattern(300 * 1024, i)
        );
    }
}

#[test]
fn cached_file_is_served_after_restart_without_the_store() {
    let ctx = local("restart");
    let root = root_of(&ctx);
    let f = root.join("cached.jpg");
    fs::write(&f, b"ORIGINAL").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("c");
    let m = ctx.spec().cache_dir(&cache_dir).mount();
    assert_eq!(fs::read(m.path("cached.jpg")).unwrap(), b"ORIGINAL");
    m.unmount();
    // Change the bytes in place but keep inode, size and mtime: the store's
    // version stays the same, so only a read that went to the store could
    // see the new bytes.
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.write_all_at(b"SNEAKY!!", 0).unwrap();
        file.set_modified(mtime).unwrap();
    }
    let m = ctx.spec().cache_dir(&cache_dir).mount();
    assert_eq!(
        fs::read(m.path("cached.jpg")).unwrap(),
        b"ORIGINAL",
        "served from the disk cache"
    );
    let (files, _) = mediafs::cache::dir_usage(&cache_dir).unwrap();
    assert_eq!(files, 1);
    let mode = fs::metadata(&cache_dir).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "cache directory is private");
}

#[test]
fn failed_upload_is_eio_and_loses_nothing() {
    let ctx = local("failing");
    let root = root_of(&ctx);
    fs::write(root.join("keep.txt"), b"old content").unwrap();
    let m = ctx.mount();
    assert_eq!(fs::read(m.path("keep.txt")).unwrap(), b"old content");
    let ro = ReadOnly::new(&root);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("keep.txt"))
        .unwrap();
    use std::io::Write;
    f.write_all(b"new content that cannot be uploaded").unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(errno_of(&err), libc::EIO, "fsync reports the failed upload");
    // close() reports it too (flush); std ignores close errors, so use libc.
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: we own fd.
    assert_eq!(unsafe { libc::close(fd) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EIO)
    );
    drop(ro);
    assert_eq!(
        fs::read(root.join("keep.txt")).unwrap(),
        b"old content",
        "the store keeps the old version"
    );
    // The written bytes are on local disk, and the log says where.
    let staging = m.cache.join("staging");
    let saved: Vec<_> = fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(
        fs::read(&saved[0]).unwrap(),
        b"new content that cannot be uploaded"
    );
    assert_eq!(
        fs::read_to_string(saved[0].with_extension("key")).unwrap(),
        "keep.txt"
    );
    assert_eq!(fs::metadata(&saved[0]).unwrap().mode() & 0o777, 0o600);
    let log = m.unmount();
    assert!(
        log.contains(saved[0].to_str().unwrap()),
        "log names the staging file: {log}"
    );
}

#[test]
fn read_only_mount_refuses_writes() {
    let ctx = local("ro");
    fs::write(root_of(&ctx).join("a"), b"a").unwrap();
    let m = ctx.spec().arg("--read-only").mount();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"a");
    assert_eq!(
        errno_of(&fs::write(m.path("b"), b"b").unwrap_err()),
        libc::EROFS
    );
    assert_eq!(
        errno_of(&fs::remove_file(m.path("a")).unwrap_err()),
        libc::EROFS
    );
}

#[test]
fn sigterm_unmounts_cleanly() {
    let ctx = local("sigterm");
    let m = ctx.mount();
    let mnt = m.mnt.clone();
    fs::write(m.path("x"), b"x").unwrap();
    let log = m.unmount();
    assert!(log.contains("mediafs: unmounted"), "{log}");
    assert!(!common::is_mounted(&mnt));
}

#[test]
fn unmount_command_and_daemon_mode() {
    let ctx = local("daemon");
    let mnt = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["mount", &ctx.url])
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("--daemon")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The parent returned only once the mount was ready.
    assert!(common::is_mounted(mnt.path()));
    fs::write(mnt.path().join("d"), b"daemon").unwrap();
    assert_eq!(fs::read(root_of(&ctx).join("d")).unwrap(), b"daemon");
    let st = Command::new(BIN)
        .arg("unmount")
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(common::eventually(Duration::from_secs(5), || {
        !common::is_mounted(mnt.path())
    }));
}

#[test]
fn bad_arguments_give_clear_errors() {
    let mnt = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let m = mnt.path().to_str().unwrap();
    let (code, err) = run(&["mount", "/definitely/not/here", m]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/definitely/not/here"), "{err}");
    let (code, err) = run(&["mount", "ftp://x", m]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown scheme"), "{err}");
    let (code, err) = run(&["mount", "/tmp", "/no/such/mountpoint"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("mountpoint"), "{err}");
    let (code, err) = run(&["mount", "/tmp", m, "--cache-size", "lots"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a size"), "{err}");
    let (code, _) = run(&["mount", "/tmp", m, "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(
        !common::is_mounted(mnt.path()),
        "a failed mount leaves nothing mounted"
    );
}

#[test]
fn cache_stats_and_clear() {
    let ctx = local("cachecmd");
    fs::write(root_of(&ctx).join("a"), pattern(5000, 1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let m = ctx.spec().cache_dir(&cache).mount();
    fs::read(m.path("a")).unwrap();
    m.unmount();
    let out = Command::new(BIN)
        .args(["cache", "stats", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("entries: 1") && text.contains("bytes: 5000"),
        "{text}"
    );
    let st = Command::new(BIN)
        .args(["cache", "clear", "--cache-dir"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(mediafs::cache::dir_usage(&cache).unwrap(), (0, 0));
}

/// A small tmpfs as the cache disk, mounted for one test.
struct TinyDisk(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);
impl TinyDisk {
    fn new(size: &str) -> TinyDisk {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        fs::create_dir(&p).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&p)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmpfs mount (tests run as root)");
        TinyDisk(p, dir)
    }
}
impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_cache_disk_reads_still_work_and_writes_fail_cleanly() {
    let ctx = local("fulldisk");
    let root = root_of(&ctx);
    for i in 0..3 {
        fs::write(root.join(format!("big{i}")), pattern(1536 * 1024, i)).unwrap();
    }
    let disk = TinyDisk::new("2m");
    // The cache bound is larger than the disk: the disk fills first.
    let m = ctx
        .spec()
        .cache_dir(&disk.0.join("cache"))
        .arg("--cache-size")
        .arg("1G")
        .mount();
    for round in 0..2 {
        for i in 0..3 {
            let got = fs::read(m.path(&format!("big{i}"))).unwrap();
            common::assert_same(
                &got,
                &pattern(1536 * 1024, i),
                &format!("round {round} big{i}"),
            );
        }
    }
    // A write that cannot be staged fails with ENOSPC and changes nothing.
    fs::write(root.join("keep"), b"old").unwrap();
    let err = common::write_and_close(&m.path("keep"), &pattern(3 << 20, 9)).unwrap_err();
    assert!(
        [libc::ENOSPC, libc::EIO].contains(&errno_of(&err)),
        "clean failure, got {err}"
    );
    assert_eq!(fs::read(root.join("keep")).unwrap(), b"old");
    // Small writes still work once there is room.
    fs::write(m.path("small"), b"fits").unwrap();
    assert_eq!(fs::read(root.join("small")).unwrap(), b"fits");
}

/// The kernel starts a FUSE mount with 128 KiB of read-ahead; mediafs raises
/// it (sequential reads then arrive in 1 MiB requests), or leaves it alone.
#[test]
fn read_ahead_is_raised_unless_told_not_to() {
    let ctx = local("read_ahead");
    let knob = |m: &common::Mounted| {
        let dev = fs::metadata(&m.mnt).unwrap().dev();
        let path = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let m = MountSpec::new(ctx.url.clone()).mount();
    assert_eq!(knob(&m), 1024);
    drop(m);
    let m = MountSpec::new(ctx.url.clone())
        .arg("--read-ahead")
        .arg("4M")
        .mount();
    assert_eq!(knob(&m), 4096);
    drop(m);
    let m = MountSpec::new(ctx.url.clone())
        .arg("--read-ahead")
        .arg("0")
        .mount();
    assert_eq!(knob(&m), 128, "the kernel's own value");
}
