//! The shared suite over an S3 mount of a real server (OpenStack Swift with
//! s3api, started on 127.0.0.1 by scripts/swift-start.sh), plus what only an
//! object store shows: other S3 clients' objects, s3fs-style metadata,
//! multipart uploads, credentials.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

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
        profile: None,
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
    let m = ctx.mount();
    assert_eq!(fs::read(m.path("sdk.jpg")).unwrap(), b"uploaded by an SDK");
    let meta = fs::metadata(m.path("s3fs.jpg")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "x-amz-meta-mode honoured");
    assert_eq!((meta.uid(), meta.gid()), (33, 34));
    assert_eq!(meta.mtime(), 1_600_000_000);
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
    let m = ctx.mount();
    let data = pattern(200 << 20, 77);
    let src = tempfile::NamedTempFile::new().unwrap();
    fs::write(src.path(), &data).unwrap();
    fs::copy(src.path(), m.path("video.mp4")).unwrap();
    drop(src);
    assert_same(&ctx.get("video.mp4").unwrap(), &data, "store copy");
    // A second mount (cold cache) reads it back byte-identical.
    let m2 = ctx.mount();
    assert_same(&fs::read(m2.path("video.mp4")).unwrap(), &data, "read back");
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
