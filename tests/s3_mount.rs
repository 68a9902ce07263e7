//! The shared suite over an S3 mount of a real server (OpenStack Swift with
//! s3api, started on 127.0.0.1 by scripts/swift-start.sh), plus what only an
//! object store shows: other S3 clients' objects, s3fs-style metadata,
//! multipart uploads, credentials.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use common::suite::StoreCtx;
use common::swift::{KEY, SECRET, swift};
use common::{MountSpec, assert_same, pattern};
use mediafs::store::StoreOptions;
use mediafs::store::s3::{CredentialSource, S3Config, S3Store};

/// A bucket name from a test name (S3 names: lowercase, digits, dashes).
fn bucket_for(name: &str) -> String {
    let mut b: String = format!("mnt-{name}")
        .replace('_', "-")
        .chars()
        .take(63)
        .collect();
    while b.ends_with('-') {
        b.pop();
    }
    b
}

fn s3(name: &str) -> StoreCtx {
    let server = swift();
    let bucket = bucket_for(name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(server.create_bucket(&bucket));
    // Mount below a prefix, so keys outside it must stay invisible.
    let prefix = "media";
    let opts = StoreOptions {
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        path_style: true,
        ..Default::default()
    };
    let mut cfg = S3Config::from_options(&bucket, prefix, &opts);
    cfg.credentials = CredentialSource::Static {
        access_key_id: KEY.into(),
        secret_access_key: SECRET.into(),
        session_token: None,
    };
    let store = rt
        .block_on(S3Store::open(cfg))
        .expect("open the test bucket");
    let (args, env) = server.s3_mount_args();
    StoreCtx {
        url: format!("s3://{bucket}/{prefix}"),
        args,
        env,
        store: Arc::new(store),
        rt,
        keeps_attrs: true,
        max_object: None,
        _guard: Box::new(()),
    }
}

store_suite!(s3);

fn raw_put(bucket: &str, key: &str, body: &[u8], metadata: &[(&str, &str)]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let md: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    rt.block_on(
        swift()
            .s3_client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_metadata(Some(md))
            .body(ByteStream::from(body.to_vec()))
            .send(),
    )
    .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
}

#[test]
fn objects_of_other_clients_and_s3fs_modes() {
    let ctx = s3("other_clients");
    let bucket = bucket_for("other_clients");
    raw_put(&bucket, "media/sdk.jpg", b"uploaded by an SDK", &[]);
    // As s3fs-fuse writes it: mode with the file type bits, uid, gid, mtime.
    raw_put(
        &bucket,
        "media/s3fs.jpg",
        b"uploaded by s3fs",
        &[
            ("mode", "33184"),
            ("uid", "33"),
            ("gid", "34"),
            ("mtime", "1600000000"),
        ],
    );
    raw_put(&bucket, "outside-the-prefix.jpg", b"not ours", &[]);
    // Keys that cannot be file names are skipped, never a crash.
    raw_put(&bucket, "media/odd//double-slash", b"x", &[]);
    raw_put(&bucket, "media/dir/../escape", b"x", &[]);
    // With --stat-listed-files, the objects' own modes, owners and mtimes
    // show right after a listing (`ls -l` right after `ls`), as on s3fs.
    let exact = ctx.spec().arg("--stat-listed-files").mount();
    assert!(fs::read_dir(&exact.mnt).unwrap().count() >= 2);
    let meta = fs::metadata(exact.path("s3fs.jpg")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "x-amz-meta-mode honoured");
    assert_eq!((meta.uid(), meta.gid()), (33, 34));
    assert_eq!(meta.mtime(), 1_600_000_000);
    drop(exact);
    // By default a listing is enough: the listing's size and Last-Modified
    // and the mount's modes, until a GET or HEAD of the object (an open)
    // brings its own headers, which then stay through later listings.
    let m = ctx.spec().ttl(1).mount();
    let listed = fs::read_dir(&m.mnt).unwrap().count();
    assert!(listed >= 2);
    let meta = fs::metadata(m.path("s3fs.jpg")).unwrap();
    assert_eq!(meta.len(), 16, "size from the listing");
    assert_eq!(meta.mode() & 0o7777, 0o644, "the mount's --file-mode");
    let uploaded = meta.mtime();
    assert!(
        (uploaded
            - SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64)
            .abs()
            < 600,
        "Last-Modified from the listing"
    );
    assert_eq!(fs::read(m.path("sdk.jpg")).unwrap(), b"uploaded by an SDK");
    assert_eq!(fs::read(m.path("s3fs.jpg")).unwrap(), b"uploaded by s3fs");
    for round in 0..2 {
        let meta = fs::metadata(m.path("s3fs.jpg")).unwrap();
        assert_eq!(
            meta.mode() & 0o7777,
            0o640,
            "headers after the GET ({round})"
        );
        assert_eq!((meta.uid(), meta.gid()), (33, 34));
        assert_eq!(meta.mtime(), 1_600_000_000);
        // A new listing of the same version keeps them.
        std::thread::sleep(std::time::Duration::from_millis(1300));
        assert!(fs::read_dir(&m.mnt).unwrap().count() >= 2);
    }
    let mut names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.contains(&"sdk.jpg".to_string()) && names.contains(&"s3fs.jpg".to_string()));
    assert!(!names.iter().any(|n| n.contains("outside")), "{names:?}");
    for n in &names {
        assert!(n != ".." && n != "." && !n.is_empty());
    }
    // Our writes carry the same headers, so s3fs sees our modes.
    fs::write(m.path("ours.jpg"), b"ours").unwrap();
    fs::set_permissions(
        m.path("ours.jpg"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let head = ctx.head("ours.jpg").unwrap();
    assert_eq!(head.attrs.mode, Some(0o600));
}

#[test]
fn large_file_uses_multipart_and_round_trips() {
    let ctx = s3("multipart");
    let m = ctx.spec().arg("--log-level").arg("debug").mount();
    let data = pattern(200 << 20, 77);
    common::write_and_close(&m.path("video.mp4"), &data).unwrap();
    assert_same(&ctx.get("video.mp4").unwrap(), &data, "store copy");
    // Written front to back: the parts went while it was written.
    let log = m.log();
    assert!(log.contains("uploaded in parts sent while"), "{log}");
    // A rewrite behind the parts already sent falls back to a whole upload.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("video.mp4"))
        .unwrap();
    let mut changed = data.clone();
    std::io::Write::write_all(&mut f, &changed[..40 << 20]).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"patched", 3).unwrap();
    changed[3..10].copy_from_slice(b"patched");
    drop(f);
    assert_same(
        &ctx.get("video.mp4").unwrap(),
        &changed,
        "store copy after a patch",
    );
    // A second mount (cold cache) reads it back byte-identical.
    let m2 = ctx.mount();
    assert_same(
        &fs::read(m2.path("video.mp4")).unwrap(),
        &changed,
        "read back",
    );
}

#[test]
fn bad_secret_fails_the_mount_clearly() {
    let server = swift();
    let bucket = bucket_for("bad_secret");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(server.create_bucket(&bucket));
    let (args, _) = server.s3_mount_args();
    let mut spec = MountSpec::new(format!("s3://{bucket}"))
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    spec.args = args;
    let err = match spec.try_mount() {
        Ok(_) => panic!("a wrong secret must fail the mount"),
        Err(e) => e,
    };
    let lower = err.to_lowercase();
    assert!(
        lower.contains("credential")
            || lower.contains("secret")
            || lower.contains("signature")
            || lower.contains("access denied"),
        "clear message: {err}"
    );
    assert!(
        !err.contains("not-the-secret"),
        "the secret is never printed: {err}"
    );
}

#[test]
fn unreachable_endpoint_fails_the_mount_fast() {
    let t = std::time::Instant::now();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = match MountSpec::new("s3://nowhere")
        .arg("--endpoint")
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--path-style")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .try_mount()
    {
        Ok(_) => panic!("nothing listens there"),
        Err(e) => e,
    };
    assert!(
        err.contains(&port.to_string()) || err.to_lowercase().contains("connect"),
        "{err}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
}

/// The thumbnail case and `ls -l`, counted in store requests: a small file
/// read by path costs one GET (no HEAD), and `ls -l` one HEAD per file.
#[test]
fn small_files_by_path_cost_one_request_each() {
    let ctx = s3("requests");
    for i in 0..20u64 {
        ctx.put(
            &format!("thumbs/t{i}.jpg"),
            &pattern(16 * 1024 + i as usize, i),
        );
    }
    // A TTL longer than the test: on a loaded CI machine the default 5 s can
    // run out between two loops, and a revalidation is a (conditional) GET.
    let m = ctx
        .spec()
        .ttl(3600)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .mount();
    let addr = common::metrics_addr(&m.log());
    let count = |op: &str| {
        let text = common::scrape(&addr);
        common::sample(
            &text,
            &format!(r#"mediafs_store_requests_total{{op="{op}",outcome="ok"}}"#),
        )
    };
    let (gets, stats, heads) = (count("get"), count("stat"), count("head"));
    for i in 0..20u64 {
        assert_same(
            &fs::read(m.path(&format!("thumbs/t{i}.jpg"))).unwrap(),
            &pattern(16 * 1024 + i as usize, i),
            "thumbnail",
        );
    }
    // One GET per file, plus at most one for looking up the directory.
    let got = count("get") - gets;
    assert!((20.0..=21.0).contains(&got), "{got} GETs for 20 files");
    assert!(count("head") - heads + count("stat") - stats <= 1.0);
    // Read again: from the disk cache, no request at all.
    let before = (count("get"), count("head"), count("stat"));
    for i in 0..20u64 {
        fs::read(m.path(&format!("thumbs/t{i}.jpg"))).unwrap();
    }
    assert_eq!((count("get"), count("head"), count("stat")), before);
    // A new file in a directory not listed: the lookup's GET (404), one
    // listing request to rule out a directory of that name, then the PUT.
    let before = [
        count("get"),
        count("stat_dir"),
        count("stat") + count("head"),
    ];
    let puts = count("put");
    for i in 0..10u64 {
        common::write_and_close(&m.path(&format!("thumbs/new{i}.jpg")), b"new").unwrap();
    }
    let after = [
        count("get"),
        count("stat_dir"),
        count("stat") + count("head"),
    ];
    let [gets, dir_checks, heads] = [0, 1, 2].map(|i| after[i] - before[i]);
    // One more GET and directory check when `thumbs` itself had to be looked
    // up again (its TTL ran out on a slow machine).
    assert!(
        (10.0..=11.0).contains(&gets) && dir_checks == gets && heads == 0.0,
        "{gets} GETs, {dir_checks} directory checks and {heads} HEADs for 10 new files"
    );
    assert_eq!(count("put") - puts, 10.0);
    // ls -l of a fresh directory: the listing alone, no request per file.
    for i in 0..40u64 {
        ctx.put(&format!("listed/f{i}.jpg"), b"x");
    }
    for i in 0..10u64 {
        ctx.put(&format!("listed/big{i}.jpg"), &pattern(100 * 1024, i));
    }
    let before = [count("get"), count("stat") + count("head")];
    let sizes: Vec<u64> = fs::read_dir(m.path("listed"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(sizes.iter().filter(|&&len| len == 1).count(), 40);
    assert_eq!(sizes.iter().filter(|&&len| len == 100 * 1024).count(), 10);
    let after = [count("get"), count("stat") + count("head")];
    let [gets, heads] = [0, 1].map(|i| after[i] - before[i]);
    // One or two GETs: the lookup of `listed` itself (404: a directory),
    // again if its TTL ran out meanwhile.
    assert!(
        gets <= 2.0 && heads == 0.0,
        "{gets} GETs and {heads} HEADs for ls -l of 40 small and 10 larger files"
    );
    // Then reading each listed file (a gallery page) costs its own GET.
    for i in 0..40u64 {
        assert_eq!(fs::read(m.path(&format!("listed/f{i}.jpg"))).unwrap(), b"x");
    }
    assert_eq!(count("get") - after[0], 40.0, "one GET per file read");
    assert_eq!(count("stat") + count("head"), after[1], "and nothing else");
    // Names listed (plain `ls`), then one file opened: that file's request
    // only, not a stat of every file in the directory.
    for i in 0..100u64 {
        ctx.put(&format!("flat/f{i:03}.jpg"), b"y");
    }
    let names = fs::read_dir(m.path("flat")).unwrap().count();
    assert_eq!(names, 100);
    let before = count("get") + count("head") + count("stat");
    assert_eq!(fs::read(m.path("flat/f050.jpg")).unwrap(), b"y");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let spent = count("get") + count("head") + count("stat") - before;
    assert!(spent <= 2.0, "{spent} requests to open one listed file");
}

/// `mediafs check` on the real server: a good bucket passes every check; a
/// wrong secret and a closed port fail with a plain reason and exit code 1,
/// and the secret is never printed.
#[test]
fn check_good_bucket_bad_secret_and_unreachable_endpoint() {
    let server = swift();
    let bucket = bucket_for("check_cmd");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(server.create_bucket(&bucket));
    let (args, env) = server.s3_mount_args();
    let check = |secret: &str, extra: &[String]| {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.arg("check").arg(format!("s3://{bucket}"));
        cmd.args(extra).args(["--timeout", "20"]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.env("AWS_SECRET_ACCESS_KEY", secret);
        let t = std::time::Instant::now();
        let out = cmd.output().expect("run mediafs check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text, t.elapsed())
    };

    let (code, text, _) = check(SECRET, &args);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("the store is usable"), "{text}");
    assert!(!text.contains("FAILED"), "{text}");

    let (code, text, _) = check("not-the-check-secret", &args);
    assert_ne!(code, Some(0), "a wrong secret must fail: {text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("credential")
            || lower.contains("secret")
            || lower.contains("signature")
            || lower.contains("access denied"),
        "clear message: {text}"
    );
    assert!(!text.contains("not-the-check-secret"), "{text}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = [
        "--endpoint".to_string(),
        format!("http://127.0.0.1:{port}"),
        "--path-style".into(),
    ];
    let (code, text, took) = check(SECRET, &closed);
    assert_ne!(code, Some(0), "nothing listens there: {text}");
    assert!(
        text.contains(&port.to_string()) || text.to_lowercase().contains("connect"),
        "{text}"
    );
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
}
