//! Security properties checked against real mounts: what the cache directory
//! gives away, who may use the mount, where secrets may show, and that no
//! store key reaches outside the mount or the cache. Also bad input that the
//! shared suite does not cover (rename to a too-long name, deep paths, odd
//! names, more bad command lines).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, MountSpec, errno_of, pattern};

/// An empty local-directory store; the TempDir keeps it alive.
fn local_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    (dir, root)
}

/// Every path below `root` (not `root` itself).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The cache directory is private and names nothing after a key: the root
/// and every directory 0700, every file 0600, and no path below it contains
/// any part of a file name or key that went through the mount.
#[track_caller]
fn assert_cache_private(cache: &Path, names: &[&str]) -> usize {
    assert_eq!(
        fs::metadata(cache).unwrap().mode() & 0o777,
        0o700,
        "cache root"
    );
    let all = walk(cache);
    let mut files = 0;
    for p in &all {
        // release() runs after close() returns, so a staged file may have
        // moved into the cache between the walk and this stat.
        let md = match fs::symlink_metadata(p) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", p.display()),
        };
        let rel = p.strip_prefix(cache).unwrap().to_string_lossy().to_string();
        if md.is_dir() {
            assert_eq!(md.mode() & 0o777, 0o700, "directory {rel}");
        } else {
            assert!(md.is_file(), "{rel} is a plain file");
            assert_eq!(md.mode() & 0o777, 0o600, "file {rel}");
            files += 1;
        }
        for n in names {
            assert!(!rel.contains(n), "{rel} names {n:?}");
        }
    }
    files
}

#[test]
fn cache_and_staging_files_are_private_and_named_by_hash() {
    let (_d, root) = local_store();
    fs::create_dir(root.join("catalog")).unwrap();
    fs::write(root.join("catalog/secretname.jpg"), pattern(70_000, 1)).unwrap();
    let m = MountSpec::new(root.to_str().unwrap()).mount();
    // A read fills the cache.
    assert_eq!(
        fs::read(m.path("catalog/secretname.jpg")).unwrap(),
        pattern(70_000, 1)
    );
    // A write in progress: open, data written, not closed.
    let mut f = fs::File::create(m.path("catalog/inflightname.txt")).unwrap();
    f.write_all(&pattern(200_000, 2)).unwrap();
    let names = ["secretname", "inflightname", "catalog", ".jpg", ".txt"];
    let files = assert_cache_private(&m.cache, &names);
    // The cached object and the staged write are both there (so the check
    // above looked at real files, not an empty directory).
    assert!(
        files >= 2,
        "{files} files in the cache: {:?}",
        walk(&m.cache)
    );
    let staged = walk(&m.cache.join("staging"))
        .into_iter()
        .filter(|p| p.is_file())
        .count();
    assert!(staged >= 1, "the open write is staged");
    drop(f);
    assert_eq!(
        fs::read(root.join("catalog/inflightname.txt")).unwrap(),
        pattern(200_000, 2)
    );
    assert_cache_private(&m.cache, &names);
}

/// Run `args` as nobody (uid/gid 65534, no groups); (success, stderr).
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn other_users_are_shut_out_without_allow_other() {
    let (_d, root) = local_store();
    fs::write(root.join("open.jpg"), b"open").unwrap();
    fs::set_permissions(root.join("open.jpg"), fs::Permissions::from_mode(0o644)).unwrap();
    let m = MountSpec::new(root.to_str().unwrap()).mount();
    let mnt = m.mnt.to_str().unwrap();
    // The mountpoint's parent is /tmp: nobody can reach it, so only the
    // mount itself can refuse. As a control, nobody can read the same file
    // in a plain world-readable directory.
    let ctl = tempfile::tempdir().unwrap();
    fs::set_permissions(ctl.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ctl.path().join("f"), b"f").unwrap();
    let (ok, err) = as_nobody(&["cat", ctl.path().join("f").to_str().unwrap()]);
    assert!(ok, "control: nobody reads a 0644 file: {err}");
    assert_eq!(fs::read(m.path("open.jpg")).unwrap(), b"open", "root can");
    for args in [
        vec!["stat", mnt],
        vec!["ls", mnt],
        vec!["cat", &format!("{mnt}/open.jpg")],
    ] {
        let (ok, err) = as_nobody(&args);
        assert!(!ok, "{args:?} as nobody succeeded");
        assert!(err.contains("Permission denied"), "{args:?}: {err}");
    }
}

#[test]
fn allow_other_enforces_modes() {
    let (_d, root) = local_store();
    let m = MountSpec::new(root.to_str().unwrap())
        .arg("--allow-other")
        .mount();
    let mnt = m.mnt.to_str().unwrap().to_string();
    fs::write(m.path("private"), b"root only").unwrap();
    fs::set_permissions(m.path("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.path("public"), b"for all").unwrap();
    fs::set_permissions(m.path("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    fs::set_permissions(m.path("dir"), fs::Permissions::from_mode(0o755)).unwrap();
    let md = fs::metadata(m.path("private")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o600));

    let (ok, err) = as_nobody(&["ls", &mnt]);
    assert!(ok, "nobody lists the mount: {err}");
    let (ok, err) = as_nobody(&["cat", &format!("{mnt}/public")]);
    assert!(ok, "nobody reads a 0644 file: {err}");
    let (ok, err) = as_nobody(&["cat", &format!("{mnt}/private")]);
    assert!(!ok && err.contains("Permission denied"), "0600: {err}");
    for target in [format!("{mnt}/dir/new"), format!("{mnt}/new")] {
        let (ok, err) = as_nobody(&["touch", &target]);
        assert!(
            !ok && err.contains("Permission denied"),
            "create {target}: {err}"
        );
    }
    let (ok, err) = as_nobody(&["rm", "-f", &format!("{mnt}/public")]);
    assert!(!ok && err.contains("Permission denied"), "unlink: {err}");
    let (ok, err) = as_nobody(&["sh", "-c", "echo x >> \"$0\"", &format!("{mnt}/public")]);
    assert!(!ok && err.contains("Permission denied"), "append: {err}");
    // Nothing reached the store.
    assert!(!root.join("dir/new").exists() && !root.join("new").exists());
    assert_eq!(fs::read(root.join("public")).unwrap(), b"for all");
}

/// The command line and the output a failed run gives, with `secret` absent.
#[track_caller]
fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(!text.contains(secret), "{what} shows the secret: {text}");
}

const SECRET_MARK: &str = "Zq7-very-distinctive-secret-9xK";

#[test]
fn mysql_url_with_a_password_is_refused_without_echoing_it() {
    let mnt = tempfile::tempdir().unwrap();
    let url = format!("mysql://user:{SECRET_MARK}@127.0.0.1:1/media");
    let out = Command::new(BIN)
        .args(["mount", &url])
        .arg(mnt.path())
        .args(["--log-level", "trace"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("password"), "says why: {text}");
    assert_no_secret("mysql URL error", &text, SECRET_MARK);
}

/// Bad command lines not covered by local_mount.rs: each fails with exit
/// code 1 or 2 and a message naming the problem.
#[test]
fn more_bad_arguments_give_clear_errors() {
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    let (_d, root) = local_store();
    let store = root.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_lowercase(),
        )
    };
    let cases: &[(&[&str], &[&str])] = &[
        (&["mount", "s3://", m], &["bucket"]),
        (&["mount", "swift://", m], &["container"]),
        (&["mount", "mysql://", m], &["mysql"]),
        (&["mount", "mysql://host:notaport/db", m], &["port"]),
        (&["mount", "gopher://x/y", m], &["unknown scheme"]),
        (&["mount", store, m, "--cache-size=-5"], &["size"]),
        (&["mount", store, m, "--cache-size", "10Q"], &["size"]),
        (
            &["mount", store, m, "--metadata-ttl", "soon"],
            &["metadata-ttl"],
        ),
        (&["mount", store, m, "--file-mode", "999"], &["mode"]),
        (&["mount", store], &["mountpoint"]),
        (
            &["mount", store, &format!("{store}/absent")],
            &["mountpoint"],
        ),
        (&["frobnicate"], &["frobnicate"]),
    ];
    for (args, words) in cases {
        let (code, err) = run(args);
        assert!(
            matches!(code, Some(1) | Some(2)),
            "{args:?}: exit {code:?}: {err}"
        );
        for w in *words {
            assert!(err.contains(w), "{args:?}: no {w:?} in: {err}");
        }
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!common::is_mounted(mnt.path()));
}

#[test]
fn rename_to_a_too_long_name_and_odd_names() {
    let (_d, root) = local_store();
    let m = MountSpec::new(root.to_str().unwrap()).mount();
    fs::write(m.path("src"), b"s").unwrap();
    fs::create_dir(m.path("srcdir")).unwrap();
    let long = "r".repeat(256);
    let err = fs::rename(m.path("src"), m.path(&long)).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
    let err = fs::rename(m.path("srcdir"), m.path(&long)).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
    assert_eq!(fs::read(root.join("src")).unwrap(), b"s", "source kept");
    let ok = "r".repeat(255);
    fs::rename(m.path("src"), m.path(&ok)).unwrap();
    assert_eq!(fs::read(root.join(&ok)).unwrap(), b"s");
    // Names the shared suite does not try; each keeps its bytes as the key.
    for odd in [
        "-leading-dash",
        "--",
        " leading and trailing space ",
        "tab\there",
        "\u{1F4F7} emoji.jpg",
        "back\\slash",
        "quote\"'",
        "...",
        ".hidden",
        "\u{7f}del",
    ] {
        fs::write(m.path(odd), odd.as_bytes()).unwrap();
        assert_eq!(fs::read(root.join(odd)).unwrap(), odd.as_bytes(), "{odd:?}");
        assert_eq!(fs::read(m.path(odd)).unwrap(), odd.as_bytes(), "{odd:?}");
        let listed = fs::read_dir(&m.mnt)
            .unwrap()
            .any(|e| e.unwrap().file_name() == *odd);
        assert!(listed, "{odd:?} listed");
    }
}

#[test]
fn deep_paths_round_trip() {
    let (_d, root) = local_store();
    let m = MountSpec::new(root.to_str().unwrap()).mount();
    let rel: PathBuf = (0..40).map(|i| format!("level{i:02}")).collect();
    fs::create_dir_all(m.path(rel.to_str().unwrap())).unwrap();
    let file = rel.join("deep.bin");
    fs::write(m.mnt.join(&file), pattern(4096, 3)).unwrap();
    assert_eq!(fs::read(root.join(&file)).unwrap(), pattern(4096, 3));
    assert_eq!(fs::read(m.mnt.join(&file)).unwrap(), pattern(4096, 3));
    // A store-side file that deep is seen too.
    fs::write(root.join(rel.join("from-store")), b"deep").unwrap();
    assert!(common::eventually(
        std::time::Duration::from_secs(10),
        || fs::read(m.mnt.join(rel.join("from-store"))).ok().as_deref() == Some(b"deep")
    ));
}

/// A write at ~3 GiB into an empty file, through the local store: the tail
/// and the hole read back right. Slow and disk-heavy where the store or the
/// staging file is not sparse, so only with MEDIAFS_SLOW_TESTS=1.
#[test]
fn sparse_multi_gib_file() {
    if std::env::var("MEDIAFS_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set MEDIAFS_SLOW_TESTS=1");
        return;
    }
    use std::os::unix::fs::FileExt;
    let (_d, root) = local_store();
    let m = MountSpec::new(root.to_str().unwrap()).mount();
    let off: u64 = 3 << 30;
    let tail = pattern(64 * 1024, 5);
    let f = fs::File::create(m.path("sparse")).unwrap();
    f.write_all_at(&tail, off).unwrap();
    drop(f);
    let len = off + tail.len() as u64;
    assert_eq!(fs::metadata(root.join("sparse")).unwrap().len(), len);
    assert_eq!(fs::metadata(m.path("sparse")).unwrap().len(), len);
    let f = fs::File::open(m.path("sparse")).unwrap();
    let mut buf = vec![0u8; tail.len()];
    f.read_exact_at(&mut buf, off).unwrap();
    common::assert_same(&buf, &tail, "tail");
    for at in [0, 1 << 30, off - 4096] {
        let mut z = vec![1u8; 4096];
        f.read_exact_at(&mut z, at).unwrap();
        assert!(z.iter().all(|b| *b == 0), "zeros at {at}");
    }
}

// ---- S3 (the test Swift server): secrets in output, keys that try to escape.

fn raw_put(bucket: &str, key: &str, body: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = common::swift::swift();
        s.create_bucket(bucket).await;
        s.s3_client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
    });
}

/// An S3 mount of `bucket` with `secret`, logging everything (RUST_LOG=trace
/// reaches the SDK's own logs too).
fn s3_spec(bucket: &str, secret: &str) -> MountSpec {
    let (args, env) = common::swift::swift().s3_mount_args();
    let mut spec = MountSpec::new(format!("s3://{bucket}/media"));
    spec.args = args;
    for (k, v) in env {
        let v = if k == "AWS_SECRET_ACCESS_KEY" {
            secret.to_string()
        } else {
            v
        };
        spec = spec.env(&k, &v);
    }
    spec.env("RUST_LOG", "trace").ttl(1)
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn s3_secret_never_shows_in_output_or_cmdline() {
    raw_put("sec-creds", "media/there.jpg", b"there");
    // Wrong secret: the mount fails at start (or each access fails); either
    // way the secret is not in what it prints.
    match s3_spec("sec-creds", SECRET_MARK).try_mount() {
        Err(log) => {
            assert!(log.len() > 100, "a real trace log: {log}");
            assert_no_secret("failed mount", &log, SECRET_MARK);
        }
        Ok(m) => {
            assert_no_secret("cmdline", &cmdline(m.pid()), SECRET_MARK);
            let _ = fs::read(m.path("there.jpg")).unwrap_err();
            assert_no_secret("log", &m.unmount(), SECRET_MARK);
        }
    }
    // The right secret ("testing", fixed by the test server), a missing
    // bucket: same.
    let secret = common::swift::SECRET;
    match s3_spec("sec-no-such-bucket", secret).try_mount() {
        Err(log) => assert_no_secret("missing bucket", &log, secret),
        Ok(m) => assert_no_secret("missing bucket", &m.unmount(), secret),
    }
    // A working mount that sees a missing file and a good one.
    let m = s3_spec("sec-creds", secret).mount();
    assert_no_secret("cmdline", &cmdline(m.pid()), secret);
    assert_eq!(fs::read(m.path("there.jpg")).unwrap(), b"there");
    assert!(fs::metadata(m.path("absent.jpg")).is_err());
    fs::write(m.path("new.jpg"), b"new").unwrap();
    let log = m.unmount();
    assert!(
        log.contains("there.jpg"),
        "trace log has the requests: {log}"
    );
    assert_no_secret("trace log", &log, secret);
    // Check/import share the store options: a wrong secret there too.
    let (args, _) = common::swift::swift().s3_mount_args();
    let out = Command::new(BIN)
        .args(["check", "s3://sec-creds/media"])
        .args(&args)
        .env("AWS_ACCESS_KEY_ID", common::swift::KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_MARK)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_no_secret("check", &text, SECRET_MARK);
}

#[test]
fn store_keys_cannot_reach_outside_the_mount_or_cache() {
    let bucket = "sec-escape";
    let mark = format!("mediafs-escape-{}", std::process::id());
    let evil = [
        "media/../escape".to_string(),
        "media/a/../../x".to_string(),
        "media//abs".to_string(),
        "media/a//b".to_string(),
        "media/./dot".to_string(),
        "media/..".to_string(),
        "media/.".to_string(),
        "media/a/..".to_string(),
        "media/b/.".to_string(),
        format!("media/../../../../../../tmp/{mark}"),
        format!("media/c/../../../../../../../tmp/{mark}-2"),
        format!("media//tmp/{mark}-3"),
    ];
    for k in &evil {
        raw_put(bucket, k, b"evil");
    }
    raw_put(bucket, "media/fine/ok.jpg", b"ok");
    // Our own cache directory, to look at after the mount is gone.
    let cache_home = tempfile::tempdir().unwrap();
    let cache = cache_home.path().join("cache");
    let m = s3_spec(bucket, common::swift::SECRET)
        .cache_dir(&cache)
        .mount();
    // Walk and read everything the mount shows; write next to it too.
    let all = walk(&m.mnt);
    for p in &all {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(name != ".." && name != "." && !name.is_empty(), "{p:?}");
        if p.is_file() {
            let _ = fs::read(p);
        }
    }
    assert_eq!(fs::read(m.path("fine/ok.jpg")).unwrap(), b"ok");
    for rel in ["a/x", "a/b", "c/y", "fine/new"] {
        let p = m.path(rel);
        if let Some(d) = p.parent() {
            let _ = fs::create_dir_all(d);
        }
        fs::write(&p, b"ours").unwrap();
    }
    // Stat the names the keys spell, through the mount.
    for rel in ["escape", "x", "abs", "dot", "b"] {
        let _ = fs::metadata(m.path(rel));
    }
    let cache_parent = cache_home.path().to_path_buf();
    let mnt_parent = m.mnt.parent().unwrap().to_path_buf();
    let log = m.unmount();
    for dir in [
        Path::new("/tmp"),
        Path::new("/"),
        &cache_parent,
        &mnt_parent,
    ] {
        for n in [
            "escape",
            "x",
            "abs",
            "dot",
            &mark,
            &format!("{mark}-2"),
            &format!("{mark}-3"),
        ] {
            assert!(
                !dir.join(n).exists(),
                "{} was created; log: {log}",
                dir.join(n).display()
            );
        }
    }
    // Only the cache directory itself is in its parent.
    let beside: Vec<_> = fs::read_dir(&cache_parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("cache")]);
    assert_cache_private(&cache, &["escape", "abs", "dot", &mark, "ok.jpg"]);
    assert!(!log.contains("panicked"), "{log}");
}
