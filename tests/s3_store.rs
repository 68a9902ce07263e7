//! The S3 backend through the `Store` trait, against a real S3 server:
//! OpenStack Swift with s3api on 127.0.0.1, started by scripts/swift-start.sh
//! for this test binary (or the server at MEDIAFS_TEST_S3_ENDPOINT, with
//! MEDIAFS_TEST_S3_KEY / MEDIAFS_TEST_S3_SECRET, default test:tester /
//! testing). MEDIAFS_SKIP_SWIFT=1 skips these tests, loudly.
//!
//! Each test works in its own bucket, so they run in parallel.

mod common;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use mediafs::store::s3::{CredentialSource, S3Config, S3Store};
use mediafs::store::{
    Attrs, GetResult, ListPage, Node, Store, StoreError, StoreOptions, StoreUrl, open_store,
};
use sha2::{Digest, Sha256};

use common::swift::{KEY, SECRET};

struct Server {
    endpoint: String,
    key: String,
    secret: String,
}

fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if std::env::var("MEDIAFS_SKIP_SWIFT").as_deref() == Ok("1") {
                eprintln!(
                    "\n!!!!!!!! MEDIAFS_SKIP_SWIFT=1: S3 STORE TESTS SKIPPED, NOTHING WAS TESTED !!!!!!!!\n"
                );
                return None;
            }
            // The shared test server (or MEDIAFS_TEST_S3_ENDPOINT).
            Some(Server {
                endpoint: common::swift::swift().endpoint.clone(),
                key: std::env::var("MEDIAFS_TEST_S3_KEY").unwrap_or(KEY.into()),
                secret: std::env::var("MEDIAFS_TEST_S3_SECRET").unwrap_or(SECRET.into()),
            })
        })
        .as_ref()
}

impl Server {
    fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        let opts = StoreOptions {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            path_style: true,
            profile: None,
            ..Default::default()
        };
        let mut cfg = S3Config::from_options(bucket, prefix, &opts);
        cfg.credentials = CredentialSource::Static {
            access_key_id: self.key.clone(),
            secret_access_key: self.secret.clone(),
            session_token: None,
        };
        cfg
    }

    /// Another S3 client on the same server (to write what other tools write
    /// and to look at what we wrote).
    fn raw(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .credentials_provider(Credentials::new(
                &self.key,
                &self.secret,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    async fn bucket(&self, bucket: &str) {
        common::swift::create_bucket(&self.raw(), bucket).await
    }

    /// A fresh bucket and a store over it (below `prefix`).
    async fn store(&self, bucket: &str, prefix: &str) -> S3Store {
        self.bucket(bucket).await;
        S3Store::open(self.config(bucket, prefix))
            .await
            .expect("open store")
    }

    async fn raw_put(&self, bucket: &str, key: &str, body: &[u8], md: &[(&str, &str)]) {
        let md: HashMap<String, String> = md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.raw()
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_metadata(Some(md))
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "raw put {key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }
}

macro_rules! need_server {
    () => {
        match server() {
            Some(s) => s,
            None => return,
        }
    };
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

async fn read_all(store: &dyn Store, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    match store.get(key, range, None).await.unwrap() {
        GetResult::Body { mut body, .. } => {
            let mut out = Vec::new();
            while let Some(chunk) = body.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            out
        }
        GetResult::NotModified => panic!("unexpected 304"),
    }
}

async fn list_all(store: &dyn Store, prefix: &str, delimiter: bool) -> (ListPage, usize) {
    let mut all = ListPage::default();
    let mut pages = 0;
    let mut token = None;
    loop {
        let page = store.list(prefix, delimiter, token).await.unwrap();
        pages += 1;
        all.files.extend(page.files);
        all.dirs.extend(page.dirs);
        token = page.next;
        if token.is_none() {
            return (all, pages);
        }
    }
}

fn names(page: &ListPage) -> (Vec<String>, Vec<String>) {
    let mut f: Vec<String> = page.files.iter().map(|m| m.key.clone()).collect();
    let mut d: Vec<String> = page.dirs.iter().map(|m| m.key.clone()).collect();
    f.sort();
    d.sort();
    (f, d)
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[tokio::test]
async fn put_get_range_and_conditional_get() {
    let s = need_server!();
    let store = s.store("basic", "media").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let src = temp_file(&data);
    let attrs = Attrs {
        mode: Some(0o640),
        uid: Some(1000),
        gid: Some(1001),
        mtime: Some(at(1_600_000_000)),
    };
    let meta = store
        .put("photos/cat.jpg", src.path(), &attrs)
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);

    // HEAD: metadata round trip, same version as the put reported.
    let head = store.head("photos/cat.jpg").await.unwrap().unwrap();
    assert_eq!(head.version, meta.version);
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(head.attrs, attrs);

    // What another client sees: s3fs-fuse's header names and formats, a
    // Content-Type from the name, the key below the prefix.
    let raw = s
        .raw()
        .head_object()
        .bucket("basic")
        .key("media/photos/cat.jpg")
        .send()
        .await
        .unwrap();
    let md = raw.metadata().unwrap();
    assert_eq!(md["mode"], "33184"); // 0o100640
    assert_eq!(md["uid"], "1000");
    assert_eq!(md["gid"], "1001");
    assert_eq!(md["mtime"], "1600000000");
    assert_eq!(raw.content_type(), Some("image/jpeg"));

    assert_eq!(read_all(&store, "photos/cat.jpg", None).await, data);
    assert_eq!(
        read_all(&store, "photos/cat.jpg", Some(10..20)).await,
        &data[10..20]
    );
    assert_eq!(
        read_all(&store, "photos/cat.jpg", Some(99_990..200_000)).await,
        &data[99_990..]
    );
    assert!(
        read_all(&store, "photos/cat.jpg", Some(200_000..200_010))
            .await
            .is_empty()
    );
    match store
        .get("photos/cat.jpg", Some(0..10), None)
        .await
        .unwrap()
    {
        GetResult::Body { meta, .. } => {
            assert_eq!(meta.size, data.len() as u64, "size of a ranged GET");
            assert_eq!(meta.attrs, attrs);
        }
        GetResult::NotModified => panic!(),
    }

    // Conditional GET: 304 for the current version, a body for an old one.
    assert!(matches!(
        store
            .get("photos/cat.jpg", None, Some(&meta.version))
            .await
            .unwrap(),
        GetResult::NotModified
    ));
    assert!(matches!(
        store
            .get("photos/cat.jpg", None, Some("\"0123456789abcdef\""))
            .await
            .unwrap(),
        GetResult::Body { .. }
    ));

    // Overwrite: a new version; the old one is no longer "not modified".
    let src2 = temp_file(b"new bytes");
    let meta2 = store
        .put("photos/cat.jpg", src2.path(), &Attrs::default())
        .await
        .unwrap();
    assert_ne!(meta2.version, meta.version);
    assert_eq!(meta2.attrs.mode, Some(0o644));
    assert!(matches!(
        store
            .get("photos/cat.jpg", None, Some(&meta.version))
            .await
            .unwrap(),
        GetResult::Body { .. }
    ));
    assert_eq!(read_all(&store, "photos/cat.jpg", None).await, b"new bytes");

    // Keys S3 cannot take or that cannot be file names are refused up front.
    let long = vec!["d".repeat(250); 5].join("/");
    assert!(matches!(
        store.put(&long, src.path(), &Attrs::default()).await,
        Err(StoreError::NameTooLong(_))
    ));
    assert!(matches!(
        store.put("a//b", src.path(), &Attrs::default()).await,
        Err(StoreError::InvalidKey(_))
    ));

    // Missing keys, delete.
    assert!(store.head("photos/nope.jpg").await.unwrap().is_none());
    assert!(matches!(
        store.get("photos/nope.jpg", None, None).await,
        Err(StoreError::NotFound)
    ));
    store.delete("photos/cat.jpg").await.unwrap();
    store.delete("photos/cat.jpg").await.unwrap();
    assert!(store.head("photos/cat.jpg").await.unwrap().is_none());
    assert!(store.stat("photos").await.unwrap().is_none());
    // The prefix keeps us inside media/.
    s.raw_put("basic", "outside.txt", b"x", &[]).await;
    assert!(store.head("outside.txt").await.unwrap().is_none());
    assert!(store.describe().contains("basic/media"));
    assert!(!store.describe().contains(&s.secret));
}

#[tokio::test]
async fn s3fs_style_headers_from_another_client() {
    let s = need_server!();
    let store = s.store("s3fs", "").await;
    s.raw_put(
        "s3fs",
        "run.sh",
        b"#!/bin/sh\n",
        &[
            ("mode", "33261"),
            ("uid", "33"),
            ("gid", "44"),
            ("mtime", "1500000000"),
        ],
    )
    .await;
    s.raw_put("s3fs", "plain.txt", b"plain", &[]).await;
    s.raw_put("s3fs", "dir/", b"", &[("mode", "16832"), ("uid", "7")])
        .await;
    let head = store.head("run.sh").await.unwrap().unwrap();
    assert_eq!(
        head.attrs,
        Attrs {
            mode: Some(0o755),
            uid: Some(33),
            gid: Some(44),
            mtime: Some(at(1_500_000_000)),
        }
    );
    let plain = store.head("plain.txt").await.unwrap().unwrap();
    assert_eq!(plain.attrs, Attrs::default());
    match store.stat("dir").await.unwrap() {
        Some(Node::Dir(d)) => {
            assert_eq!(d.attrs.mode, Some(0o700));
            assert_eq!(d.attrs.uid, Some(7));
        }
        other => panic!("dir: {other:?}"),
    }
    let (page, _) = list_all(&store, "", true).await;
    assert_eq!(
        names(&page),
        (
            vec!["plain.txt".into(), "run.sh".into()],
            vec!["dir".into()]
        )
    );
}

#[tokio::test]
async fn listing_pages_past_1000_keys() {
    let s = need_server!();
    let store = s.store("many", "").await;
    const N: usize = 1100;
    let raw = s.raw();
    futures::stream::iter(0..N)
        .map(|i| {
            let raw = raw.clone();
            async move {
                raw.put_object()
                    .bucket("many")
                    .key(format!("big/f{i:05}.jpg"))
                    .body(ByteStream::from_static(b"x"))
                    .send()
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let src = temp_file(b"deep");
    store
        .put("big/sub/deep.txt", src.path(), &Attrs::default())
        .await
        .unwrap();
    store
        .create_dir("big/zempty", &Attrs::default())
        .await
        .unwrap();

    let (page, pages) = list_all(&store, "big/", true).await;
    assert!(pages >= 2, "{pages} pages");
    let (files, dirs) = names(&page);
    assert_eq!(files.len(), N);
    assert_eq!(files[0], "big/f00000.jpg");
    assert_eq!(files[N - 1], format!("big/f{:05}.jpg", N - 1));
    assert_eq!(dirs, vec!["big/sub".to_string(), "big/zempty".to_string()]);
    assert!(
        page.files
            .iter()
            .all(|f| f.size == 1 && !f.version.is_empty())
    );

    // Without a delimiter: every file below, markers left out.
    let (page, pages) = list_all(&store, "big/", false).await;
    assert!(pages >= 2);
    assert_eq!(page.files.len(), N + 1);
    assert!(page.dirs.is_empty());
    assert!(page.files.iter().any(|f| f.key == "big/sub/deep.txt"));
}

#[tokio::test]
async fn directory_markers_and_attributes() {
    let s = need_server!();
    let store = s.store("dirs", "p").await;
    let dattrs = Attrs {
        mode: Some(0o750),
        uid: Some(10),
        gid: Some(20),
        mtime: None,
    };
    store.create_dir("empty", &dattrs).await.unwrap();
    let raw = s
        .raw()
        .head_object()
        .bucket("dirs")
        .key("p/empty/")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.metadata().unwrap()["mode"], (0o040750).to_string());
    assert_eq!(raw.content_length(), Some(0));
    match store.stat("empty").await.unwrap() {
        Some(Node::Dir(d)) => {
            assert_eq!(d.key, "empty");
            assert_eq!(d.attrs.mode, Some(0o750));
            assert_eq!(d.attrs.uid, Some(10));
        }
        other => panic!("{other:?}"),
    }
    // Listing the empty directory: its own marker is hidden.
    let (page, _) = list_all(&store, "empty/", true).await;
    assert!(page.files.is_empty() && page.dirs.is_empty(), "{page:?}");

    // A directory with a marker and contents is listed once.
    store.create_dir("both", &Attrs::default()).await.unwrap();
    let src = temp_file(b"f");
    store
        .put("both/f.txt", src.path(), &Attrs::default())
        .await
        .unwrap();
    store
        .put("implied/g.txt", src.path(), &Attrs::default())
        .await
        .unwrap();
    store
        .put("top.txt", src.path(), &Attrs::default())
        .await
        .unwrap();
    let (page, _) = list_all(&store, "", true).await;
    assert_eq!(
        names(&page),
        (
            vec!["top.txt".into()],
            vec!["both".into(), "empty".into(), "implied".into()]
        )
    );
    let (page, _) = list_all(&store, "both/", true).await;
    assert_eq!(names(&page), (vec!["both/f.txt".into()], vec![]));
    assert!(matches!(
        store.stat("implied").await.unwrap(),
        Some(Node::Dir(_))
    ));
    assert!(matches!(
        store.stat("top.txt").await.unwrap(),
        Some(Node::File(_))
    ));
    assert!(store.stat("nothing").await.unwrap().is_none());

    // set_attrs on an implied directory writes a marker.
    assert!(
        store
            .set_attrs(
                "implied",
                &Attrs {
                    mode: Some(0o700),
                    ..Attrs::default()
                }
            )
            .await
            .unwrap()
            .is_none()
    );
    match store.stat("implied").await.unwrap() {
        Some(Node::Dir(d)) => assert_eq!(d.attrs.mode, Some(0o700)),
        other => panic!("{other:?}"),
    }
    // ... and on a marked one keeps what it does not change.
    store
        .set_attrs(
            "empty",
            &Attrs {
                uid: Some(99),
                ..Attrs::default()
            },
        )
        .await
        .unwrap();
    match store.stat("empty").await.unwrap() {
        Some(Node::Dir(d)) => {
            assert_eq!(
                (d.attrs.mode, d.attrs.uid, d.attrs.gid),
                (Some(0o750), Some(99), Some(20))
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.set_attrs("nothing", &Attrs::default()).await,
        Err(StoreError::NotFound)
    ));

    // set_attrs on a file: a server-side copy onto itself, bytes unchanged.
    let before = store.head("top.txt").await.unwrap().unwrap();
    let after = store
        .set_attrs(
            "top.txt",
            &Attrs {
                mode: Some(0o600),
                mtime: Some(at(1_234_567_890)),
                ..Attrs::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let head = store.head("top.txt").await.unwrap().unwrap();
    assert_eq!(head.version, after.version);
    assert_eq!(head.attrs.mode, Some(0o600));
    assert_eq!(head.attrs.mtime, Some(at(1_234_567_890)));
    assert_eq!(head.attrs.uid, before.attrs.uid);
    assert_eq!(read_all(&store, "top.txt", None).await, b"f");
    let ct = s
        .raw()
        .head_object()
        .bucket("dirs")
        .key("p/top.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(ct.content_type(), Some("text/plain"));

    // remove_dir removes the marker: the empty directory is gone.
    store.remove_dir("empty").await.unwrap();
    assert!(store.stat("empty").await.unwrap().is_none());
}

#[tokio::test]
async fn odd_keys_are_skipped() {
    let s = need_server!();
    let store = s.store("odd", "").await;
    let long = format!("odd/{}", "x".repeat(256));
    let mut odd = vec!["odd/a//b", "odd/./c", "odd/../d", "odd//e", long.as_str()];
    for k in [
        "odd/ok.txt",
        "odd/both",
        "odd/both/inner.txt",
        "odd/sub/x.txt",
    ] {
        s.raw_put("odd", k, b"1", &[]).await;
    }
    // Some servers refuse some of these names; test the ones this one takes.
    let raw = s.raw();
    let mut stored = Vec::new();
    for k in odd.drain(..) {
        let r = raw
            .put_object()
            .bucket("odd")
            .key(k)
            .body(ByteStream::from_static(b"1"))
            .send()
            .await;
        match r {
            Ok(_) => stored.push(k),
            Err(e) => eprintln!(
                "server refused key {k:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        }
    }
    eprintln!("odd keys stored: {stored:?}");
    assert!(stored.contains(&"odd/a//b"));

    let (page, _) = list_all(&store, "odd/", true).await;
    assert_eq!(
        names(&page),
        (
            vec!["odd/ok.txt".into()],
            vec!["odd/a".into(), "odd/both".into(), "odd/sub".into()]
        )
    );
    let (page, _) = list_all(&store, "odd/a/", true).await;
    assert!(page.files.is_empty() && page.dirs.is_empty(), "{page:?}");
    let (page, _) = list_all(&store, "odd/", false).await;
    assert_eq!(
        names(&page).0,
        vec![
            "odd/both".to_string(),
            "odd/both/inner.txt".into(),
            "odd/ok.txt".into(),
            "odd/sub/x.txt".into()
        ]
    );
    // A key that is both a file and a prefix is a directory.
    assert!(matches!(
        store.stat("odd/both").await.unwrap(),
        Some(Node::Dir(_))
    ));
    let (page, _) = list_all(&store, "", true).await;
    assert_eq!(names(&page), (vec![], vec!["odd".into()]));
}

#[tokio::test]
async fn copy_rename_and_rename_dir() {
    let s = need_server!();
    let store = s.store("moves", "").await;
    let attrs = Attrs {
        mode: Some(0o600),
        uid: Some(5),
        gid: Some(6),
        mtime: Some(at(1_000_000_000)),
    };
    let src = temp_file(b"payload");
    store.put("a/one.png", src.path(), &attrs).await.unwrap();
    let c = store.copy("a/one.png", "a/two.png").await.unwrap();
    assert_eq!(c.size, 7);
    assert_eq!(c.attrs, attrs);
    let h = store.head("a/two.png").await.unwrap().unwrap();
    assert_eq!(h.version, c.version);
    assert_eq!(h.attrs, attrs);
    assert!(matches!(
        store.copy("a/missing", "a/x").await,
        Err(StoreError::NotFound)
    ));

    let r = store.rename("a/two.png", "a/three.png").await.unwrap();
    assert!(store.head("a/two.png").await.unwrap().is_none());
    assert_eq!(read_all(&store, "a/three.png", None).await, b"payload");
    assert_eq!(r.attrs, attrs);

    // A tree with a marked sub-directory, an empty one and a key with a
    // character that needs encoding in the copy source.
    store
        .create_dir(
            "a/empty",
            &Attrs {
                mode: Some(0o711),
                ..Attrs::default()
            },
        )
        .await
        .unwrap();
    store
        .put("a/deep/er/file with space+plus%.txt", src.path(), &attrs)
        .await
        .unwrap();
    store.create_dir("a/deep", &Attrs::default()).await.unwrap();
    store.rename_dir("a", "b").await.unwrap();

    let (page, _) = list_all(&store, "", true).await;
    assert_eq!(names(&page), (vec![], vec!["b".into()]));
    let (page, _) = list_all(&store, "b/", false).await;
    assert_eq!(
        names(&page).0,
        vec![
            "b/deep/er/file with space+plus%.txt".to_string(),
            "b/one.png".into(),
            "b/three.png".into()
        ]
    );
    match store.stat("b/empty").await.unwrap() {
        Some(Node::Dir(d)) => assert_eq!(d.attrs.mode, Some(0o711)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.head("b/one.png").await.unwrap().unwrap().attrs, attrs);
    assert!(store.stat("a").await.unwrap().is_none());
    let raw = s
        .raw()
        .list_objects_v2()
        .bucket("moves")
        .prefix("a")
        .send()
        .await
        .unwrap();
    assert!(
        raw.contents().is_empty(),
        "left behind: {:?}",
        raw.contents()
    );
}

/// A 200 MiB file with holes and data, hashed without holding it in memory.
fn big_file(size: u64) -> (tempfile::NamedTempFile, Vec<u8>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(size).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let mut i = 0u64;
    while offset < size {
        // Every third MiB has data; the rest stays a hole.
        if i.is_multiple_of(3) {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u64 ^ i).wrapping_mul(2654435761) as u8;
            }
            let n = block.len().min((size - offset) as usize);
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.write_all(&block[..n]).unwrap();
        }
        offset += 1 << 20;
        i += 1;
    }
    f.flush().unwrap();
    let mut h = Sha256::new();
    let mut r = std::fs::File::open(f.path()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    (f, h.finalize().to_vec())
}

/// The hash and size of an object, and the time spent hashing (slow in a
/// debug build, so reported apart from the download).
async fn hash_of(store: &dyn Store, key: &str) -> (Vec<u8>, u64, Duration) {
    let GetResult::Body { mut body, .. } = store.get(key, None, None).await.unwrap() else {
        panic!("304")
    };
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut hashing = Duration::ZERO;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        let t = Instant::now();
        h.update(&chunk);
        hashing += t.elapsed();
    }
    (h.finalize().to_vec(), n, hashing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_200_mib_round_trip() {
    let s = need_server!();
    const SIZE: u64 = 200 << 20;
    let store = s.store("large", "").await;
    let (file, want) = big_file(SIZE);

    let t = Instant::now();
    let meta = store
        .put("video/big.mp4", file.path(), &Attrs::default())
        .await
        .unwrap();
    let put = t.elapsed();
    assert_eq!(meta.size, SIZE);
    let head = store.head("video/big.mp4").await.unwrap().unwrap();
    assert_eq!(head.size, SIZE);
    assert_eq!(head.version, meta.version);
    assert!(
        head.version.contains('-'),
        "not a multipart ETag: {}",
        head.version
    );
    let raw = s
        .raw()
        .head_object()
        .bucket("large")
        .key("video/big.mp4")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.content_type(), Some("video/mp4"));
    assert_eq!(raw.metadata().unwrap()["mode"], "33188");

    let t = Instant::now();
    let (got, n, hashing) = hash_of(&store, "video/big.mp4").await;
    let get = t.elapsed() - hashing;
    assert_eq!(n, SIZE);
    assert!(got == want, "200 MiB object read back differs");
    eprintln!(
        "200 MiB: put {:.2} s ({:.0} MiB/s), get {:.2} s ({:.0} MiB/s; hashing {:.2} s more)",
        put.as_secs_f64(),
        200.0 / put.as_secs_f64(),
        get.as_secs_f64(),
        200.0 / get.as_secs_f64(),
        hashing.as_secs_f64()
    );

    // A ranged read across a part boundary.
    let part = read_all(&store, "video/big.mp4", Some((8 << 20) - 5..(8 << 20) + 5)).await;
    let mut f = std::fs::File::open(file.path()).unwrap();
    f.seek(SeekFrom::Start((8 << 20) - 5)).unwrap();
    let mut expect = vec![0u8; 10];
    f.read_exact(&mut expect).unwrap();
    assert_eq!(part, expect);

    // Copies above the single-copy limit go in parts (limit lowered here).
    let mut cfg = s.config("large", "");
    cfg.copy_part_threshold = 64 << 20;
    let small_limit = S3Store::open(cfg).await.unwrap();
    let t = Instant::now();
    let c = small_limit
        .copy("video/big.mp4", "video/copy.mp4")
        .await
        .unwrap();
    eprintln!("200 MiB multipart copy: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(c.size, SIZE);
    assert!(
        hash_of(&store, "video/copy.mp4").await.0 == want,
        "copy differs"
    );

    // No upload left open.
    let uploads = s
        .raw()
        .list_multipart_uploads()
        .bucket("large")
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty());
}

#[tokio::test]
async fn failed_upload_leaves_nothing() {
    let s = need_server!();
    let mut cfg = s.config("failing", "");
    cfg.multipart_threshold = 5 << 20;
    s.bucket("failing").await;
    let store = S3Store::open(cfg).await.unwrap();
    let missing = Path::new("/nonexistent/mediafs-test-file");
    assert!(
        store
            .put("x.bin", missing, &Attrs::default())
            .await
            .is_err()
    );
    assert!(store.head("x.bin").await.unwrap().is_none());
}

#[tokio::test]
async fn bad_secret_is_a_clear_error() {
    let s = need_server!();
    s.bucket("auth").await;
    let mut cfg = s.config("auth", "");
    cfg.credentials = CredentialSource::Static {
        access_key_id: s.key.clone(),
        secret_access_key: "definitely-wrong-secret".into(),
        session_token: None,
    };
    let err = S3Store::open(cfg).await.err().expect("must fail");
    eprintln!("bad secret: {err}");
    assert!(err.contains(&s.key), "{err}");
    assert!(err.to_lowercase().contains("secret"), "{err}");
    assert!(!err.contains("definitely-wrong-secret"), "{err}");

    let mut cfg = s.config("auth", "");
    cfg.credentials = CredentialSource::Static {
        access_key_id: "nobody:none".into(),
        secret_access_key: "x".into(),
        session_token: None,
    };
    let err = S3Store::open(cfg).await.err().expect("must fail");
    eprintln!("unknown key: {err}");
    assert!(err.contains("nobody:none"), "{err}");

    let err = S3Store::open(s.config("no-such-bucket-here", ""))
        .await
        .err()
        .expect("must fail");
    eprintln!("missing bucket: {err}");
    assert!(err.contains("no such bucket"), "{err}");
}

#[tokio::test]
async fn unreachable_endpoint_fails_fast() {
    let out = Command::new(common::swift::repo().join("scripts/lib/free-port.sh"))
        .output()
        .unwrap();
    let port = String::from_utf8(out.stdout).unwrap();
    let cfg = fake_config(&format!("http://127.0.0.1:{}", port.trim()));
    let t = Instant::now();
    let err = S3Store::open(cfg).await.err().expect("must fail");
    eprintln!("unreachable ({:.2} s): {err}", t.elapsed().as_secs_f64());
    assert!(err.contains("cannot reach"), "{err}");
    assert!(err.contains(port.trim()), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15));
}

/// The mount command with a bad secret in the environment: fails before
/// mounting, says which key and why, never prints the secret.
#[tokio::test]
async fn mount_with_bad_secret_fails_clearly() {
    let s = need_server!();
    s.bucket("mountauth").await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mediafs"))
        .arg("mount")
        .arg("s3://mountauth")
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--endpoint")
        .arg(&s.endpoint)
        .env("AWS_ACCESS_KEY_ID", &s.key)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-xyz")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("mount: {stderr}");
    assert!(!out.status.success());
    assert!(stderr.contains(&s.key), "{stderr}");
    assert!(stderr.contains("secret"), "{stderr}");
    assert!(!stderr.contains("wrong-secret-xyz"), "{stderr}");
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());
}

/// `open_store` with credentials from the environment or a shared
/// credentials file and profile, in a child process (the environment is
/// process-wide).
#[tokio::test]
async fn credentials_from_environment_and_profile() {
    let s = need_server!();
    s.bucket("envcreds").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [media]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s.key, s.secret
        ),
    )
    .unwrap();
    let child = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--ignored", "--exact", "child_open_store", "--nocapture"])
            .env("MEDIAFS_CHILD_ENDPOINT", &s.endpoint)
            .env("HOME", dir.path())
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_CONFIG_FILE")
            .stdin(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child failed with {envs:?}:\n{text}"
        );
    };
    child(&[
        ("AWS_ACCESS_KEY_ID", s.key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s.secret.as_str()),
    ]);
    let file = file.to_str().unwrap();
    child(&[
        ("AWS_SHARED_CREDENTIALS_FILE", file),
        ("AWS_PROFILE", "media"),
    ]);
    child(&[
        ("AWS_SHARED_CREDENTIALS_FILE", file),
        ("MEDIAFS_CHILD_PROFILE", "media"),
    ]);
}

#[tokio::test]
#[ignore = "run by credentials_from_environment_and_profile"]
async fn child_open_store() {
    let Ok(endpoint) = std::env::var("MEDIAFS_CHILD_ENDPOINT") else {
        return;
    };
    let opts = StoreOptions {
        endpoint: Some(endpoint),
        region: None,
        path_style: false, // implied by the loopback address
        profile: std::env::var("MEDIAFS_CHILD_PROFILE").ok(),
        ..Default::default()
    };
    let url = StoreUrl::parse("s3://envcreds/sub").unwrap();
    let store = open_store(&url, &opts).await.unwrap();
    let src = temp_file(b"hello");
    store
        .put("k.txt", src.path(), &Attrs::default())
        .await
        .unwrap();
    assert_eq!(read_all(store.as_ref(), "k.txt", None).await, b"hello");
}

/// A fake S3 endpoint on 127.0.0.1 that answers requests in turn with the
/// given statuses (then 200 for ever; `None` = never answer), one request
/// per connection. Returns its endpoint and the request counter.
fn scripted_server(
    script: Vec<Option<u16>>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::BufRead;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let mut head = false;
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head |= line.starts_with("HEAD ");
            }
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = match script.get(n) {
                Some(None) => {
                    // Hold the connection open without a word.
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(30));
                        drop(conn);
                    });
                    continue;
                }
                Some(Some(s)) => *s,
                None => 200,
            };
            let body = match (status, head) {
                (_, true) => String::new(),
                (200, _) => "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                    <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                    <Name>b</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1</MaxKeys>\
                    <IsTruncated>false</IsTruncated></ListBucketResult>"
                    .to_string(),
                _ => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                    <Message>busy</Message></Error>"
                    .to_string(),
            };
            let len = if head && status == 200 { 5 } else { body.len() };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {len}\r\n\
                 ETag: \"e\"\r\nLast-Modified: Wed, 01 Jan 2025 00:00:00 GMT\r\n\
                 Connection: close\r\n\r\n{body}"
            );
        }
    });
    (endpoint, count)
}

fn fake_config(endpoint: &str) -> S3Config {
    let opts = StoreOptions {
        endpoint: Some(endpoint.to_string()),
        ..StoreOptions::default()
    };
    let mut cfg = S3Config::from_options("b", "", &opts);
    cfg.credentials = CredentialSource::Static {
        access_key_id: "k".into(),
        secret_access_key: "s".into(),
        session_token: None,
    };
    cfg
}

/// 503 (and a throttling answer) are retried with backoff, up to the limit.
#[tokio::test]
async fn server_errors_are_retried() {
    use std::sync::atomic::Ordering;
    let (endpoint, count) = scripted_server(vec![
        Some(503),
        None,
        Some(503),
        Some(503),
        Some(503),
        Some(200),
        Some(503),
        Some(503),
        Some(503),
    ]);
    let mut cfg = fake_config(&endpoint);
    cfg.request_timeout = Duration::from_millis(500);
    let err = S3Store::open(cfg.clone()).await.err();
    // Attempt 1: 503, attempt 2: no answer -> the probe gives up (2 attempts).
    let err = err.expect("two failed attempts fail the open");
    assert!(err.contains("did not answer in time"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // Next open: 503, 503 -> fails; and the one after: 503, then 200.
    assert!(S3Store::open(cfg.clone()).await.is_err());
    let t = Instant::now();
    let store = S3Store::open(cfg).await.expect("503 then 200 opens");
    assert_eq!(count.load(Ordering::SeqCst), 6);
    eprintln!("503 then 200: {:.2} s", t.elapsed().as_secs_f64());
    let meta = store.head("x").await.unwrap().unwrap();
    assert_eq!(meta.size, 5);
    assert_eq!(meta.version, "\"e\"");
    assert_eq!(count.load(Ordering::SeqCst), 10, "three 503s, then 200");
}
