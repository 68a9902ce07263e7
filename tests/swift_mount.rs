//! The shared suite over a swift:// mount (Swift's native API, tempauth) of
//! the real Swift server the S3 tests use, plus what only Swift shows: static
//! large objects, token renewal, credentials, and the same data through the
//! S3 API of the same cluster.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use common::suite::StoreCtx;
use common::swift::{KEY, SECRET, swift};
use common::{MountSpec, assert_same, pattern};
use mediafs::store::Store;
use mediafs::store::swift::{Auth, SwiftConfig, SwiftStore};

fn auth_url() -> String {
    format!("{}/auth/v1.0", swift().endpoint)
}

fn auth() -> Auth {
    Auth::V1 {
        url: auth_url(),
        user: KEY.into(),
        key: SECRET.into(),
    }
}

/// A container name from a test name; made through the S3 API (a bucket is a
/// container).
fn container_for(name: &str) -> String {
    let mut c: String = format!("sw-{name}")
        .replace('_', "-")
        .chars()
        .take(63)
        .collect();
    while c.ends_with('-') {
        c.pop();
    }
    c
}

fn env() -> Vec<(String, String)> {
    vec![
        ("ST_AUTH".into(), auth_url()),
        ("ST_USER".into(), KEY.into()),
        ("ST_KEY".into(), SECRET.into()),
    ]
}

fn open(rt: &tokio::runtime::Runtime, cfg: SwiftConfig) -> SwiftStore {
    rt.block_on(SwiftStore::open(cfg))
        .expect("open the test container")
}

fn sw(name: &str) -> StoreCtx {
    let container = container_for(name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(swift().create_bucket(&container));
    let prefix = "media";
    let store = open(&rt, SwiftConfig::new(&container, prefix, auth()));
    StoreCtx {
        url: format!("swift://{container}/{prefix}"),
        args: vec![],
        env: env(),
        store: Arc::new(store),
        rt,
        keeps_attrs: true,
        max_object: None,
        _guard: Box::new(()),
    }
}

store_suite!(sw);

#[test]
fn large_object_round_trips_as_segments() {
    let ctx = sw("slo");
    let m = ctx.mount();
    // Over the 64 MiB threshold, not a multiple of the 16 MiB segment.
    let data = pattern((80 << 20) + 12345, 5);
    common::write_and_close(&m.path("video.mp4"), &data).unwrap();
    assert_same(&ctx.get("video.mp4").unwrap(), &data, "store copy");
    // Stored as a manifest with segments in CONTAINER_segments (not a valid
    // S3 bucket name: look through the Swift API).
    let segments = || {
        let store = open(
            &ctx.rt,
            SwiftConfig::new(&format!("{}_segments", container_for("slo")), "", auth()),
        );
        ctx.rt.block_on(async {
            let mut n = 0;
            let mut token = None;
            loop {
                let page = store.list("", false, token).await.unwrap();
                n += page.files.len();
                token = page.next;
                if token.is_none() {
                    return n;
                }
            }
        })
    };
    assert!(segments() >= 6, "{} segments", segments());
    let m2 = ctx.mount();
    assert_same(&fs::read(m2.path("video.mp4")).unwrap(), &data, "read back");
    // Deleting it takes its segments along.
    fs::remove_file(m2.path("video.mp4")).unwrap();
    assert_eq!(segments(), 0, "segments left behind");
}

#[test]
fn an_expired_token_is_renewed_transparently() {
    let ctx = sw("token");
    ctx.put("a.jpg", b"before");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = open(
        &rt,
        SwiftConfig::new(&container_for("token"), "media", auth()),
    );
    rt.block_on(async {
        store.spoil_token().await;
        let meta = store.head("a.jpg").await.unwrap().unwrap();
        assert_eq!(meta.size, 6);
    });
}

#[test]
fn wrong_key_or_container_fails_the_mount_clearly() {
    let container = container_for("badkey");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(swift().create_bucket(&container));
    let err = match MountSpec::new(format!("swift://{container}"))
        .env("ST_AUTH", &auth_url())
        .env("ST_USER", KEY)
        .env("ST_KEY", "not-the-key")
        .try_mount()
    {
        Ok(_) => panic!("a wrong key must fail the mount"),
        Err(e) => e,
    };
    assert!(err.contains("wrong user or key"), "{err}");
    assert!(
        !err.contains("not-the-key"),
        "the key is in the message: {err}"
    );
    let mut spec = MountSpec::new("swift://no-such-container");
    for (k, v) in env() {
        spec = spec.env(&k, &v);
    }
    let err = spec
        .try_mount()
        .err()
        .expect("a missing container must fail");
    assert!(err.contains("no such container"), "{err}");
    // No credentials at all: says what to set.
    let err = MountSpec::new(format!("swift://{container}"))
        .env("ST_AUTH", &auth_url())
        .try_mount()
        .err()
        .expect("no credentials must fail");
    assert!(
        err.contains("OS_USERNAME") || err.contains("ST_USER"),
        "{err}"
    );
}

#[test]
fn s3_and_swift_see_the_same_files_and_modes() {
    let ctx = sw("interop");
    let container = container_for("interop");
    // Written through S3 with an s3fs mode: read through swift://.
    let s3 = swift().s3_client();
    ctx.rt.block_on(async {
        s3.put_object()
            .bucket(&container)
            .key("media/from-s3.jpg")
            .metadata("mode", "33216") // 0100700
            .body(ByteStream::from_static(b"via s3"))
            .send()
            .await
            .unwrap();
    });
    let m = ctx.mount();
    let p = m.path("from-s3.jpg");
    assert_eq!(fs::read(&p).unwrap(), b"via s3");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
    // Written and chmod'ed through swift://: read through S3 with the mode.
    common::write_and_close(&m.path("from-swift.jpg"), b"via swift").unwrap();
    fs::set_permissions(
        m.path("from-swift.jpg"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let (body, md): (Vec<u8>, HashMap<String, String>) = ctx.rt.block_on(async {
        let o = s3
            .get_object()
            .bucket(&container)
            .key("media/from-swift.jpg")
            .send()
            .await
            .unwrap();
        let md = o.metadata().cloned().unwrap_or_default();
        (o.body.collect().await.unwrap().into_bytes().to_vec(), md)
    });
    assert_eq!(body, b"via swift");
    let mode: u32 = md.get("mode").expect("mode metadata").parse().unwrap();
    assert_eq!(mode & 0o777, 0o640);
}
