//! Unit tests of the core against the in-memory store: no kernel, no mount.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::cache::DiskCache;
use crate::store::memory::MemoryStore;

struct Fixture {
    core: Arc<Core>,
    store: Arc<MemoryStore>,
    _dir: tempfile::TempDir,
}

fn fixture(ttl: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cache = DiskCache::open(&dir.path().join("cache"), "mem", 64 << 20).unwrap();
    let cfg = CoreConfig {
        ttl,
        ..CoreConfig::default()
    };
    let core = Core::new(store.clone(), cache, cfg).unwrap();
    Fixture {
        core,
        store,
        _dir: dir,
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

impl Fixture {
    async fn write_file(&self, parent: u64, name: &str, data: &[u8]) -> FsResult<u64> {
        let (attr, open) = self
            .core
            .create(parent, os(name), 0o644, libc::O_WRONLY, 0, 0)
            .await?;
        self.core.write(open.fh, 0, data).await?;
        self.core.flush(open.fh).await?;
        self.core.release(open.fh).await?;
        Ok(attr.ino)
    }

    async fn read_all(&self, ino: u64) -> FsResult<Vec<u8>> {
        let open = self.core.open(ino, libc::O_RDONLY).await?;
        let mut out = Vec::new();
        loop {
            let chunk = self.core.read(open.fh, out.len() as u64, 1 << 16).await?;
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        self.core.release(open.fh).await?;
        Ok(out)
    }

    async fn names(&self, dir: u64) -> Vec<String> {
        let fh = self.core.opendir(dir).await.unwrap();
        let names = self
            .core
            .readdir(fh)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        self.core.releasedir(fh);
        names
    }
}

#[tokio::test]
async fn write_through_on_close() {
    let f = fixture(Duration::from_secs(60));
    f.write_file(ROOT_INO, "a.jpg", b"pixels").await.unwrap();
    assert_eq!(f.store.contents("a.jpg").unwrap(), b"pixels");
    let attr = f.core.lookup(ROOT_INO, os("a.jpg")).await.unwrap();
    assert_eq!(attr.size, 6);
    assert_eq!(attr.perm, 0o644);
}

#[tokio::test]
async fn nothing_in_store_before_close() {
    let f = fixture(Duration::from_secs(60));
    let (attr, open) = f
        .core
        .create(ROOT_INO, os("tmp"), 0o600, libc::O_WRONLY, 0, 0)
        .await
        .unwrap();
    f.core.write(open.fh, 0, b"half").await.unwrap();
    assert!(
        f.store.contents("tmp").is_none(),
        "no half-written object in the store"
    );
    // Visible locally with its size, and listed.
    assert_eq!(f.core.getattr(attr.ino).await.unwrap().size, 4);
    assert!(f.names(ROOT_INO).await.contains(&"tmp".to_string()));
    f.core.flush(open.fh).await.unwrap();
    f.core.release(open.fh).await.unwrap();
    assert_eq!(f.store.contents("tmp").unwrap(), b"half");
}

#[tokio::test]
async fn read_through_cache_fetches_once() {
    let f = fixture(Duration::from_secs(60));
    f.store.insert("pic.png", &vec![9u8; 100_000]);
    let ino = f.core.lookup(ROOT_INO, os("pic.png")).await.unwrap().ino;
    assert_eq!(f.read_all(ino).await.unwrap(), vec![9u8; 100_000]);
    assert_eq!(f.read_all(ino).await.unwrap().len(), 100_000);
    assert_eq!(
        f.store.gets.load(Ordering::Relaxed),
        1,
        "second read from the cache"
    );
}

#[tokio::test]
async fn concurrent_opens_share_one_download() {
    let f = fixture(Duration::from_secs(60));
    f.store.insert("big", &vec![1u8; 1 << 20]);
    let ino = f.core.lookup(ROOT_INO, os("big")).await.unwrap().ino;
    let opens = futures::future::join_all((0..8).map(|_| f.core.open(ino, libc::O_RDONLY))).await;
    for o in opens {
        let fh = o.unwrap().fh;
        assert_eq!(
            f.core.read(fh, (1 << 20) - 10, 100).await.unwrap(),
            vec![1u8; 10]
        );
        f.core.release(fh).await.unwrap();
    }
    assert_eq!(f.store.gets.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn changed_object_is_read_fresh_after_ttl() {
    let f = fixture(Duration::from_millis(200));
    f.store.insert("x", b"old");
    let ino = f.core.lookup(ROOT_INO, os("x")).await.unwrap().ino;
    assert_eq!(f.read_all(ino).await.unwrap(), b"old");
    f.store.insert("x", b"newer");
    // Within the TTL the old version may be served; never a mix.
    let early = f.read_all(ino).await.unwrap();
    assert!(early == b"old" || early == b"newer");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.read_all(ino).await.unwrap(), b"newer");
}

#[tokio::test]
async fn ttl_zero_revalidates_every_open() {
    let f = fixture(Duration::ZERO);
    f.store.insert("x", b"one");
    let ino = f.core.lookup(ROOT_INO, os("x")).await.unwrap().ino;
    assert_eq!(f.read_all(ino).await.unwrap(), b"one");
    f.store.insert("x", b"two");
    assert_eq!(f.read_all(ino).await.unwrap(), b"two");
}

#[tokio::test]
async fn failed_upload_is_eio_and_keeps_old_version_and_local_bytes() {
    let f = fixture(Duration::from_secs(60));
    let ino = f.write_file(ROOT_INO, "doc", b"v1").await.unwrap();
    f.store.fail_puts.store(true, Ordering::Relaxed);
    let open = f
        .core
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    f.core.write(open.fh, 0, b"v2 unsaved").await.unwrap();
    let err = f.core.flush(open.fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(f.core.release(open.fh).await.is_err());
    assert_eq!(f.store.contents("doc").unwrap(), b"v1");
    let staged: Vec<_> = staging::leftovers(&f.core.staging_dir);
    assert_eq!(staged.len(), 1);
    assert_eq!(std::fs::read(&staged[0].0).unwrap(), b"v2 unsaved");
    assert_eq!(staged[0].1, "doc");
}

#[tokio::test]
async fn exclusive_create_of_existing_is_eexist() {
    let f = fixture(Duration::from_secs(60));
    f.store.insert("a", b"1");
    let err = f
        .core
        .create(
            ROOT_INO,
            os("a"),
            0o644,
            libc::O_WRONLY | libc::O_EXCL,
            0,
            0,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err, FsError::Exists);
}

#[tokio::test]
async fn random_write_and_append_keep_the_rest() {
    let f = fixture(Duration::from_secs(60));
    f.store.insert("f", b"0123456789");
    let ino = f.core.lookup(ROOT_INO, os("f")).await.unwrap().ino;
    let open = f.core.open(ino, libc::O_RDWR).await.unwrap();
    f.core.write(open.fh, 3, b"xy").await.unwrap();
    f.core.flush(open.fh).await.unwrap();
    f.core.release(open.fh).await.unwrap();
    assert_eq!(f.store.contents("f").unwrap(), b"012xy56789");
    let open = f
        .core
        .open(ino, libc::O_WRONLY | libc::O_APPEND)
        .await
        .unwrap();
    f.core.write(open.fh, 0, b"!").await.unwrap();
    f.core.release(open.fh).await.unwrap();
    assert_eq!(f.store.contents("f").unwrap(), b"012xy56789!");
}

#[tokio::test]
async fn truncate_without_handle() {
    let f = fixture(Duration::from_secs(60));
    f.store.insert("t", b"abcdef");
    let ino = f.core.lookup(ROOT_INO, os("t")).await.unwrap().ino;
    let attr = f
        .core
        .setattr(ino, None, Some(2), None, None, None, None)
        .await
        .unwrap();
    assert_eq!(attr.size, 2);
    assert_eq!(f.store.contents("t").unwrap(), b"ab");
    f.core
        .setattr(ino, None, Some(0), None, None, None, None)
        .await
        .unwrap();
    assert_eq!(f.store.contents("t").unwrap(), b"");
}

#[tokio::test]
async fn directories_and_rename() {
    let f = fixture(Duration::from_secs(60));
    let d = f.core.mkdir(ROOT_INO, os("d"), 0o755, 0, 0).await.unwrap();
    f.write_file(d.ino, "a", b"A").await.unwrap();
    assert_eq!(
        f.core.rmdir(ROOT_INO, os("d")).await.unwrap_err(),
        FsError::NotEmpty
    );
    // temp-file-then-rename over an existing file
    f.write_file(d.ino, ".tmp123", b"B").await.unwrap();
    f.core
        .rename(d.ino, os(".tmp123"), d.ino, os("a"), false)
        .await
        .unwrap();
    assert_eq!(f.store.contents("d/a").unwrap(), b"B");
    assert!(f.store.contents("d/.tmp123").is_none());
    // directory rename moves everything below it
    f.core
        .rename(ROOT_INO, os("d"), ROOT_INO, os("e"), false)
        .await
        .unwrap();
    assert_eq!(f.store.contents("e/a").unwrap(), b"B");
    assert!(f.store.contents("d/a").is_none());
    let e = f.core.lookup(ROOT_INO, os("e")).await.unwrap();
    assert_eq!(e.ino, d.ino, "the inode keeps its number");
    assert_eq!(f.names(e.ino).await, vec![".", "..", "a"]);
    assert_eq!(
        f.core.lookup(ROOT_INO, os("d")).await.unwrap_err(),
        FsError::NotFound
    );
    f.core.unlink(e.ino, os("a")).await.unwrap();
    f.core.rmdir(ROOT_INO, os("e")).await.unwrap();
    assert_eq!(f.names(ROOT_INO).await, vec![".", ".."]);
}

#[tokio::test]
async fn rename_noreplace_and_kinds() {
    let f = fixture(Duration::from_secs(60));
    f.store.insert("a", b"1");
    f.store.insert("b", b"2");
    f.core.mkdir(ROOT_INO, os("d"), 0o755, 0, 0).await.unwrap();
    assert_eq!(
        f.core
            .rename(ROOT_INO, os("a"), ROOT_INO, os("b"), true)
            .await
            .unwrap_err(),
        FsError::Exists
    );
    assert_eq!(
        f.core
            .rename(ROOT_INO, os("a"), ROOT_INO, os("d"), false)
            .await
            .unwrap_err(),
        FsError::IsDir
    );
    assert_eq!(
        f.core
            .rename(ROOT_INO, os("d"), ROOT_INO, os("a"), false)
            .await
            .unwrap_err(),
        FsError::NotDir
    );
}

#[tokio::test]
async fn names_are_checked() {
    let f = fixture(Duration::from_secs(60));
    let long = "n".repeat(256);
    assert_eq!(
        f.core.lookup(ROOT_INO, os(&long)).await.unwrap_err(),
        FsError::NameTooLong
    );
    let err = f
        .core
        .create(ROOT_INO, os(&long), 0o644, libc::O_WRONLY, 0, 0)
        .await
        .err()
        .unwrap();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
}

#[tokio::test]
async fn negative_entries_are_invalidated_by_our_writes() {
    let f = fixture(Duration::from_secs(60));
    assert_eq!(
        f.core.lookup(ROOT_INO, os("later")).await.unwrap_err(),
        FsError::NotFound
    );
    f.write_file(ROOT_INO, "later", b"x").await.unwrap();
    assert_eq!(f.core.lookup(ROOT_INO, os("later")).await.unwrap().size, 1);
}

#[tokio::test]
async fn read_only_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    store.insert("a", b"1");
    let cache = DiskCache::open(dir.path(), "mem", 1 << 20).unwrap();
    let cfg = CoreConfig {
        read_only: true,
        ..CoreConfig::default()
    };
    let core = Core::new(store, cache, cfg).unwrap();
    let ino = core.lookup(ROOT_INO, os("a")).await.unwrap().ino;
    assert_eq!(
        core.open(ino, libc::O_WRONLY).await.err().unwrap(),
        FsError::ReadOnly
    );
    assert_eq!(
        core.unlink(ROOT_INO, os("a")).await.unwrap_err(),
        FsError::ReadOnly
    );
    assert_eq!(
        core.mkdir(ROOT_INO, os("d"), 0o755, 0, 0)
            .await
            .unwrap_err(),
        FsError::ReadOnly
    );
}

#[tokio::test]
async fn chmod_is_kept() {
    let f = fixture(Duration::from_secs(60));
    let ino = f.write_file(ROOT_INO, "m", b"x").await.unwrap();
    let a = f
        .core
        .setattr(ino, None, None, Some(0o100600), Some(33), None, None)
        .await
        .unwrap();
    assert_eq!((a.perm, a.uid), (0o600, 33));
    let meta = futures::executor::block_on(crate::store::Store::head(&*f.store, "m"))
        .unwrap()
        .unwrap();
    assert_eq!(meta.attrs.mode, Some(0o600));
    assert_eq!(meta.attrs.uid, Some(33));
}

#[tokio::test]
async fn unlink_while_open_keeps_reading_and_does_not_resurrect() {
    let f = fixture(Duration::from_secs(60));
    let (attr, open) = f
        .core
        .create(ROOT_INO, os("gone"), 0o644, libc::O_RDWR, 0, 0)
        .await
        .unwrap();
    f.core.write(open.fh, 0, b"data").await.unwrap();
    f.core.unlink(ROOT_INO, os("gone")).await.unwrap();
    assert_eq!(f.core.read(open.fh, 0, 10).await.unwrap(), b"data");
    f.core.flush(open.fh).await.unwrap();
    f.core.release(open.fh).await.unwrap();
    assert!(f.store.contents("gone").is_none());
    let _ = attr;
}
