//! Store faults against a real mount and a real store: an S3 mount of the
//! test Swift server through a TCP proxy (tests/common/proxy.rs) that the
//! test turns into a black hole, a stopped server, a flaky server (500/503,
//! resets) or one that cuts response bodies short.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::proxy::{Mode, Proxy};
use common::swift::{KEY, SECRET, swift};
use common::{MountSpec, Mounted, assert_same, errno_of, pattern, write_and_close};

/// --store-timeout for these mounts; the bound on a failing call allows for
/// retries and a loaded machine.
const TIMEOUT: u64 = 3;
const BOUND: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A bucket of its own, a proxy in front of the server and a mount through it.
fn setup(bucket: &str) -> (Proxy, Mounted) {
    let server = swift();
    rt().block_on(server.create_bucket(bucket));
    let proxy = Proxy::start(&server.endpoint);
    let m = MountSpec::new(format!("s3://{bucket}"))
        .arg("--endpoint")
        .arg(proxy.endpoint())
        .arg("--region")
        .arg("us-east-1")
        .arg("--path-style")
        .arg("--store-timeout")
        .arg(TIMEOUT.to_string())
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .mount();
    (proxy, m)
}

/// Put an object straight into the server (not through the proxy).
fn put(bucket: &str, key: &str, body: &[u8]) {
    rt().block_on(
        swift()
            .s3_client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send(),
    )
    .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
}

/// The object's bytes as the server has them (not through the proxy).
fn get(bucket: &str, key: &str) -> Vec<u8> {
    rt().block_on(async {
        let out = swift()
            .s3_client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("get {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
            });
        out.body.collect().await.unwrap().into_bytes().to_vec()
    })
}

/// Run `f`, which must fail with EIO, within BOUND; returns the elapsed time.
#[track_caller]
fn fails_with_eio<T>(what: &str, f: impl FnOnce() -> std::io::Result<T>) -> Duration {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    // Not expect_err: it would print megabytes of file contents.
    let Err(e) = r else {
        panic!("{what} must fail while the store is down, but succeeded");
    };
    assert_eq!(errno_of(&e), libc::EIO, "{what}: {e}");
    assert!(
        took < BOUND,
        "{what} took {took:?} (store timeout {TIMEOUT} s)"
    );
    eprintln!("{what}: EIO after {:.1} s", took.as_secs_f64());
    took
}

/// The staging file a failed upload names in the log.
fn staging_file(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("upload failed"))
        .unwrap_or_else(|| panic!("no failed-upload line in the log:\n{log}"));
    let rest = line
        .split("staging_file=")
        .nth(1)
        .unwrap_or_else(|| panic!("no staging_file in {line}"));
    rest.split_whitespace().next().unwrap().to_string()
}

/// Down (black hole or refused): cached files read, the rest fail with EIO in
/// bounded time, a failed write keeps the old version in the store and the
/// new bytes on disk; back up, everything works without a remount.
fn outage(bucket: &str, mode: Mode) {
    let (proxy, m) = setup(bucket);
    let cached = pattern(300_000, 1);
    let uncached = pattern(200_000, 2);
    put(bucket, "cached.bin", &cached);
    put(bucket, "uncached.bin", &uncached);
    put(bucket, "edited.bin", b"old version");
    assert_same(
        &fs::read(m.path("cached.bin")).unwrap(),
        &cached,
        "warm read",
    );
    // Know the names (a lookup is not what this test is about).
    let _ = fs::metadata(m.path("uncached.bin")).unwrap();
    let _ = fs::metadata(m.path("edited.bin")).unwrap();

    proxy.set_mode(mode);
    let t = Instant::now();
    assert_same(
        &fs::read(m.path("cached.bin")).unwrap(),
        &cached,
        "cached read while down",
    );
    eprintln!("cached read while down: {:.1} s", t.elapsed().as_secs_f64());
    fails_with_eio("uncached read", || fs::read(m.path("uncached.bin")));
    let new = pattern(100_000, 3);
    fails_with_eio("write+close", || {
        write_and_close(&m.path("edited.bin"), &new)
    });
    assert_eq!(
        get(bucket, "edited.bin"),
        b"old version",
        "store keeps the old version"
    );
    let staged = staging_file(&m.log());
    assert_same(
        &fs::read(&staged).unwrap(),
        &new,
        "the staging file the log names",
    );

    proxy.set_mode(Mode::Pass);
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let back = loop {
        match fs::read(m.path("uncached.bin")) {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("after the outage: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("store back, still {e}"),
        }
    };
    eprintln!(
        "first read after the outage: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_same(&back, &uncached, "read after the outage");
    write_and_close(&m.path("edited.bin"), &new).expect("write after the outage");
    assert_same(&get(bucket, "edited.bin"), &new, "store after the outage");
    assert_same(
        &fs::read(m.path("cached.bin")).unwrap(),
        &cached,
        "cached after",
    );
}

#[test]
fn black_hole() {
    outage("faults-black-hole", Mode::BlackHole);
}

#[test]
fn refused() {
    outage("faults-refused", Mode::Refuse);
}

/// 500/503 on the next requests: retried, so reads and writes succeed.
#[test]
fn server_errors_are_retried() {
    let bucket = "faults-5xx";
    let (proxy, m) = setup(bucket);
    let a = pattern(150_000, 4);
    let b = pattern(150_000, 5);
    put(bucket, "a.bin", &a);
    put(bucket, "b.bin", &b);
    let _ = fs::metadata(m.path("a.bin")).unwrap();
    let _ = fs::metadata(m.path("b.bin")).unwrap();
    for (status, name, data) in [(503, "a.bin", &a), (500, "b.bin", &b)] {
        proxy.fail_next(2, status);
        let before = proxy.requests();
        assert_same(
            &fs::read(m.path(name)).unwrap(),
            data,
            "read through errors",
        );
        let seen = proxy.requests() - before;
        assert_eq!(proxy.pending_faults().0, 0, "{status}: the faults were hit");
        assert!(seen >= 3, "{status}: {seen} requests, so no retry");
        let new = pattern(120_000, status as u64);
        proxy.fail_next(2, status);
        let before = proxy.requests();
        write_and_close(&m.path(&format!("w{status}.bin")), &new).expect("write through errors");
        assert!(
            proxy.requests() - before >= 3,
            "{status}: write not retried"
        );
        assert_same(&get(bucket, &format!("w{status}.bin")), &new, "written");
    }
}

/// Connection resets: retried, bytes identical.
#[test]
fn resets_are_retried() {
    let bucket = "faults-reset";
    let (proxy, m) = setup(bucket);
    let data = pattern(500_000, 6);
    put(bucket, "r.bin", &data);
    let _ = fs::metadata(m.path("r.bin")).unwrap();
    proxy.reset_next(2);
    let before = proxy.requests();
    assert_same(
        &fs::read(m.path("r.bin")).unwrap(),
        &data,
        "read through resets",
    );
    assert_eq!(proxy.pending_faults().2, 0, "the resets were hit");
    let seen = proxy.requests() - before;
    assert!(seen >= 3, "{seen} requests, so no retry");
}

/// Bodies cut short on a large uncached file: the read still equals the
/// store's bytes, and what the cache keeps is never a short copy.
#[test]
fn truncated_bodies_are_never_served_or_cached() {
    let bucket = "faults-truncate";
    let (proxy, m) = setup(bucket);
    let data = pattern(20 << 20, 7);
    put(bucket, "big.bin", &data);
    let _ = fs::metadata(m.path("big.bin")).unwrap();
    proxy.truncate_next(3, 100_000);
    let t = Instant::now();
    let got = fs::read(m.path("big.bin")).unwrap_or_else(|e| {
        let log = m.log();
        let tail: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
        panic!("read through cut bodies: {e}\n{}", tail.join("\n"))
    });
    assert_same(&got, &data, "read through cut bodies");
    eprintln!(
        "20 MiB through 3 cut bodies: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(proxy.pending_faults().1, 0, "the cuts were hit");
    proxy.set_mode(Mode::BlackHole);
    match fs::read(m.path("big.bin")) {
        Ok(b) => assert_same(&b, &data, "served from the cache"),
        Err(e) => assert_eq!(errno_of(&e), libc::EIO, "{e}"),
    }
    proxy.set_mode(Mode::Pass);
}
