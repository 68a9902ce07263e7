//! Unit tests of the core against the in-memory store: no kernel, no mount.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::cache::DiskCache;
use crate::store::memory::MemoryStore;

struct Fixture {
    core: Arc<Core>,
    store: Arc<MemoryStore>,
    _dir: tempfile::TempDir,
}

fn fixture(ttl: Duration) -> Fixture {
    fixture_with(CoreConfig {
        ttl,
        ..CoreConfig::default()
    })
}

fn fixture_with(cfg: CoreConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cache = DiskCache::open(&dir.path().join("cache"), "mem", 64 << 20).unwrap();
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
            .entries
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

/// close() returns before the kernel's RELEASE arrives: a reader that opened
/// while the staging file still existed must keep reading it after the
/// writer's release retired it into the cache.
#[tokio::test]
async fn reader_opened_before_writer_release_sees_the_bytes() {
    let f = fixture(Duration::from_secs(60));
    let (attr, w) = f
        .core
        .create(ROOT_INO, os("w.bin"), 0o644, libc::O_WRONLY, 0, 0)
        .await
        .unwrap();
    f.core.write(w.fh, 0, b"written bytes").await.unwrap();
    f.core.flush(w.fh).await.unwrap();
    let r = f.core.open(attr.ino, libc::O_RDONLY).await.unwrap();
    f.core.release(w.fh).await.unwrap();
    assert_eq!(
        f.core.read(r.fh, 0, 1 << 16).await.unwrap(),
        b"written bytes"
    );
    f.core.release(r.fh).await.unwrap();
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
    // The release does not try again (release_after_failed_close_...).
    f.core.release(open.fh).await.unwrap();
    assert_eq!(f.store.contents("doc").unwrap(), b"v1");
    let staged: Vec<_> = staging::leftovers(&f.core.staging_dir);
    assert_eq!(staged.len(), 1);
    assert_eq!(std::fs::read(&staged[0].0).unwrap(), b"v2 unsaved");
    assert_eq!(staged[0].1, "doc");
}

/// close() said EIO: the release right after must not upload the file after
/// all when the store is back, or the store would hold a version the
/// application was told had failed.
#[tokio::test]
async fn release_after_failed_close_does_not_upload_again() {
    let f = fixture(Duration::from_secs(60));
    let ino = f.write_file(ROOT_INO, "doc", b"v1").await.unwrap();
    let open = f
        .core
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    f.core.write(open.fh, 0, b"v2 failed").await.unwrap();
    f.store.fail_puts.store(true, Ordering::Relaxed);
    assert_eq!(f.core.flush(open.fh).await.unwrap_err().errno(), libc::EIO);
    f.store.fail_puts.store(false, Ordering::Relaxed);
    f.core.release(open.fh).await.unwrap();
    assert_eq!(f.store.contents("doc").unwrap(), b"v1");
    let staged: Vec<_> = staging::leftovers(&f.core.staging_dir);
    assert_eq!(staged.len(), 1, "the bytes stay on local disk");
    assert_eq!(std::fs::read(&staged[0].0).unwrap(), b"v2 failed");

    // A close() after new writes tries again, and succeeds.
    let open = f.core.open(ino, libc::O_WRONLY).await.unwrap();
    f.core.write(open.fh, 0, b"v3").await.unwrap();
    f.core.flush(open.fh).await.unwrap();
    f.core.release(open.fh).await.unwrap();
    assert_eq!(&f.store.contents("doc").unwrap()[..2], b"v3");
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

/// A store offering uploads in parts of 1 KiB above 4 KiB.
fn parts_fixture() -> Fixture {
    let f = fixture(Duration::from_secs(60));
    *f.store.plan.lock().unwrap() = Some(crate::store::PartPlan {
        threshold: 4096,
        part_size: 1024,
        max_parts: 10_000,
        parallel: 2,
    });
    f
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Write `content` front to back in `chunk`-byte writes; return (ino, fh)
/// still open.
async fn write_sequentially(f: &Fixture, name: &str, content: &[u8], chunk: usize) -> (u64, u64) {
    let (attr, open) = f
        .core
        .create(ROOT_INO, os(name), 0o640, libc::O_WRONLY, 0, 0)
        .await
        .unwrap();
    for (i, c) in content.chunks(chunk).enumerate() {
        f.core.write(open.fh, (i * chunk) as u64, c).await.unwrap();
    }
    (attr.ino, open.fh)
}

#[tokio::test]
async fn large_sequential_write_sends_parts_before_close() {
    let f = parts_fixture();
    let content = data(20_000 + 123);
    let (ino, fh) = write_sequentially(&f, "big.mp4", &content, 500).await;
    // Parts go while the file is open; nothing is visible yet.
    eventually_async(|| f.store.parts_received.load(Ordering::Relaxed) >= 17).await;
    assert_eq!(f.store.contents("big.mp4"), None);
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!(f.store.contents("big.mp4").as_deref(), Some(&content[..]));
    assert_eq!(f.store.puts.load(Ordering::Relaxed), 0, "no whole-file put");
    assert_eq!(f.store.pending_uploads(), 0);
    assert_eq!(f.read_all(ino).await.unwrap(), content);
    let meta = f.store.head("big.mp4").await.unwrap().unwrap();
    assert_eq!(meta.attrs.mode.map(|m| m & 0o777), Some(0o640));
}

#[tokio::test]
async fn rewriting_behind_sent_parts_falls_back_to_a_whole_put() {
    let f = parts_fixture();
    let mut content = data(12_000);
    let (_, fh) = write_sequentially(&f, "v.mp4", &content, 1000).await;
    // A header patched at the front after the parts went (like a muxer does).
    f.core.write(fh, 10, b"moov").await.unwrap();
    content[10..14].copy_from_slice(b"moov");
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!(f.store.contents("v.mp4").as_deref(), Some(&content[..]));
    assert_eq!(f.store.puts.load(Ordering::Relaxed), 1);
    eventually_async(|| f.store.pending_uploads() == 0).await;
}

#[tokio::test]
async fn truncate_rename_and_chmod_while_written_are_kept() {
    let f = parts_fixture();
    // Truncated below what was sent.
    let content = data(12_000);
    let (ino, fh) = write_sequentially(&f, "t", &content, 1000).await;
    f.core
        .setattr(ino, Some(fh), Some(2000), None, None, None, None)
        .await
        .unwrap();
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!(f.store.contents("t").as_deref(), Some(&content[..2000]));
    // Renamed while written: stored under the new name only.
    let (_, fh) = write_sequentially(&f, "r.tmp", &content, 1000).await;
    f.core
        .rename(ROOT_INO, os("r.tmp"), ROOT_INO, os("r.jpg"), false)
        .await
        .unwrap();
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!(f.store.contents("r.jpg").as_deref(), Some(&content[..]));
    assert_eq!(f.store.contents("r.tmp"), None);
    // chmod while written: stored with the new mode.
    let (ino, fh) = write_sequentially(&f, "m", &content, 1000).await;
    f.core
        .setattr(ino, Some(fh), None, Some(0o600), None, None, None)
        .await
        .unwrap();
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    let meta = f.store.head("m").await.unwrap().unwrap();
    assert_eq!(meta.attrs.mode.map(|m| m & 0o777), Some(0o600));
    assert_eq!(f.store.contents("m").as_deref(), Some(&content[..]));
    eventually_async(|| f.store.pending_uploads() == 0).await;
}

#[tokio::test]
async fn failed_parts_leave_the_old_version() {
    let f = parts_fixture();
    let old = data(100);
    f.store.insert("keep.bin", &old);
    let ino = f.core.lookup(ROOT_INO, os("keep.bin")).await.unwrap().ino;
    let open = f
        .core
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    f.store.fail_puts.store(true, Ordering::Relaxed);
    let content = data(12_000);
    for (i, c) in content.chunks(1000).enumerate() {
        f.core.write(open.fh, (i * 1000) as u64, c).await.unwrap();
    }
    assert!(matches!(f.core.flush(open.fh).await, Err(FsError::Io(_))));
    assert_eq!(f.store.contents("keep.bin").as_deref(), Some(&old[..]));
    // The store is back: the next close stores the whole file.
    f.store.fail_puts.store(false, Ordering::Relaxed);
    f.core.flush(open.fh).await.unwrap();
    f.core.release(open.fh).await.unwrap();
    assert_eq!(f.store.contents("keep.bin").as_deref(), Some(&content[..]));
}

async fn eventually_async(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

#[tokio::test]
async fn small_files_cost_one_get_with_their_lookup() {
    let f = fixture(Duration::from_secs(60));
    f.store.lookup_fetch.store(1000, Ordering::Relaxed);
    f.store.insert("thumbs/a.jpg", &data(900));
    f.store.insert("thumbs/b.jpg", &data(1000));
    f.store.insert("thumbs/big.jpg", &data(5000));
    let dir = f.core.lookup(ROOT_INO, os("thumbs")).await.unwrap().ino;
    let gets = f.store.gets.load(Ordering::Relaxed);
    for (name, len) in [("a.jpg", 900), ("b.jpg", 1000), ("big.jpg", 5000)] {
        let attr = f.core.lookup(dir, os(name)).await.unwrap();
        assert_eq!(attr.size, len);
        assert_eq!(f.read_all(attr.ino).await.unwrap(), data(len as usize));
    }
    // One GET each for the small files; the large one needed its own.
    assert_eq!(f.store.gets.load(Ordering::Relaxed) - gets, 4);
    // With a listing at hand (ls -l), lookups do not fetch.
    f.store.insert("thumbs/c.jpg", &data(10));
    let fh = f.core.opendir(dir).await.unwrap();
    f.core.releasedir(fh);
    let before = f.store.gets.load(Ordering::Relaxed);
    f.core.lookup(dir, os("c.jpg")).await.unwrap();
    assert_eq!(f.store.gets.load(Ordering::Relaxed), before);
}

/// S3 and Swift listings carry size and time but no modes: by default `ls
/// -l` is answered from the listing alone, and modes learnt from the object
/// itself (a chmod here, a GET) are not lost to the next listing.
#[tokio::test]
async fn ls_l_over_bare_listings_asks_nothing_per_file() {
    let f = fixture(Duration::from_millis(200));
    f.store.bare_listings.store(true, Ordering::Relaxed);
    for i in 0..200 {
        f.store.insert(&format!("d/f{i:03}"), b"xy");
    }
    let dir = f.core.lookup(ROOT_INO, os("d")).await.unwrap().ino;
    let (stats, gets) = (
        f.store.stats.load(Ordering::Relaxed),
        f.store.gets.load(Ordering::Relaxed),
    );
    for n in f.names(dir).await.iter().filter(|n| !n.starts_with('.')) {
        let a = f.core.lookup(dir, os(n)).await.unwrap();
        assert_eq!((a.size, a.perm), (2, 0o644));
        f.core.getattr(a.ino).await.unwrap();
    }
    assert_eq!(
        f.store.stats.load(Ordering::Relaxed),
        stats,
        "no stat per file"
    );
    assert_eq!(
        f.store.gets.load(Ordering::Relaxed),
        gets,
        "no GET per file"
    );
    // A chmod here: the mode stays through later listings of that version.
    let a = f.core.lookup(dir, os("f007")).await.unwrap();
    f.core
        .setattr(a.ino, None, None, Some(0o600), None, None, None)
        .await
        .unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        f.names(dir).await;
        let again = f.core.lookup(dir, os("f007")).await.unwrap();
        assert_eq!(again.perm, 0o600, "the mode set here does not flip back");
    }
}

/// A hot file is revalidated in the background before its TTL runs out:
/// the opens that keep coming never wait for the store, and a change in the
/// store is still seen within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_files_are_revalidated_ahead_of_their_ttl() {
    let f = fixture(Duration::from_secs(1));
    f.store.insert("hot.jpg", b"v1");
    let ino = f.core.lookup(ROOT_INO, os("hot.jpg")).await.unwrap().ino;
    assert_eq!(f.read_all(ino).await.unwrap(), b"v1");
    // The download is put into the cache just after its reader's release.
    let meta = f
        .core
        .inodes
        .lock()
        .unwrap()
        .get(ino)
        .unwrap()
        .object
        .clone()
        .unwrap();
    for _ in 0..100 {
        if f.core.cache.contains(&meta) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_known = |f: &Fixture| {
        let o = f.core.open_known(ino, libc::O_RDONLY)?.ok()?;
        f.core.release_reader(o.fh);
        Some(())
    };
    // Opens every 100 ms for 3 s (three TTLs): all answered from what is
    // known, the store asked in the background about once per TTL (from
    // 750 ms on: a quarter of the TTL is left for the answer).
    let asked = f.store.meta_requests.load(Ordering::Relaxed);
    for _ in 0..30 {
        assert!(open_known(&f).is_some(), "a hot file stays fresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refreshes = f.store.meta_requests.load(Ordering::Relaxed) - asked;
    assert!(
        (2..=6).contains(&refreshes),
        "{refreshes} background checks"
    );
    // A change in the store shows within the TTL.
    f.store.insert("hot.jpg", b"v2");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(f.read_all(ino).await.unwrap(), b"v2");
}

/// The store goes down after this host learnt of a new version but before
/// it fetched it: the previous version, still cached, is served (whole),
/// not an error; once the store is back the new one is.
#[tokio::test]
async fn store_down_before_a_new_version_is_fetched_serves_the_previous() {
    let f = fixture(Duration::from_millis(50));
    f.store.insert("a.jpg", b"old bytes");
    let a = f.core.lookup(ROOT_INO, os("a.jpg")).await.unwrap().ino;
    assert_eq!(f.read_all(a).await.unwrap(), b"old bytes");
    f.store.insert("a.jpg", b"new bytes, longer");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A revalidation learns the new version; its bytes are not fetched.
    assert_eq!(f.core.getattr(a).await.unwrap().size, 17);
    f.store.down.store(true, Ordering::Relaxed);
    assert_eq!(f.read_all(a).await.unwrap(), b"old bytes");
    assert_eq!(f.read_all(a).await.unwrap(), b"old bytes");
    f.store.down.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(f.read_all(a).await.unwrap(), b"new bytes, longer");
}

/// READDIRPLUS hands the kernel an inode for every entry, even one whose
/// idle inode was pruned (huge directories) between opendir and readdir.
#[tokio::test]
async fn readdirplus_entries_survive_pruning() {
    let f = fixture(Duration::from_secs(60));
    for i in 0..5 {
        f.store.insert(&format!("d/f{i}"), b"abc");
    }
    let dir = f.core.lookup(ROOT_INO, os("d")).await.unwrap().ino;
    let fh = f.core.opendir(dir).await.unwrap();
    let snapshot = f.core.readdir(fh).unwrap();
    f.core.inodes.lock().unwrap().prune();
    for e in snapshot.entries.iter().filter(|e| !e.name.starts_with('.')) {
        let attr = f.core.lookup_listed(&snapshot, e).unwrap();
        assert_eq!(attr.size, 3);
        // The kernel now holds this inode: it answers getattr.
        assert_eq!(f.core.getattr(attr.ino).await.unwrap().size, 3);
    }
    f.core.releasedir(fh);
}

#[tokio::test]
async fn ls_l_over_bare_listings_stats_in_parallel_once_each() {
    let f = fixture_with(CoreConfig {
        ttl: Duration::from_secs(60),
        stat_listed_files: true,
        ..CoreConfig::default()
    });
    f.store.bare_listings.store(true, Ordering::Relaxed);
    for i in 0..200 {
        f.store.insert(&format!("d/f{i:03}"), b"x");
    }
    let dir = f.core.lookup(ROOT_INO, os("d")).await.unwrap().ino;
    let before = f.store.stats.load(Ordering::Relaxed);
    let names: Vec<String> = f
        .names(dir)
        .await
        .into_iter()
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(names.len(), 200);
    // `ls -l`: a lookup of every entry, one after another.
    for n in &names {
        let a = f.core.lookup(dir, os(n)).await.unwrap();
        assert_eq!(a.size, 1);
    }
    assert_eq!(
        f.store.stats.load(Ordering::Relaxed) - before,
        200,
        "one stat per file"
    );
    assert!(
        f.store.max_stats_at_once.load(Ordering::Relaxed) > 8,
        "stats in parallel"
    );
}

#[tokio::test]
async fn store_down_serves_cached_files_past_the_ttl() {
    let f = fixture(Duration::from_millis(50));
    f.store.insert("a.jpg", b"cached bytes");
    f.store.insert("b.jpg", b"never read");
    let a = f.core.lookup(ROOT_INO, os("a.jpg")).await.unwrap().ino;
    assert_eq!(f.read_all(a).await.unwrap(), b"cached bytes");
    f.core.lookup(ROOT_INO, os("b.jpg")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.store.down.store(true, Ordering::Relaxed);
    // Past the TTL, with the store down: the cached file, as last known.
    let again = f.core.lookup(ROOT_INO, os("a.jpg")).await.unwrap();
    assert_eq!(again.ino, a);
    f.core.getattr(a).await.unwrap();
    assert_eq!(f.read_all(a).await.unwrap(), b"cached bytes");
    // A file whose bytes are not here fails, and a name never seen too.
    let b = f.core.lookup(ROOT_INO, os("b.jpg")).await.unwrap().ino;
    assert!(matches!(f.read_all(b).await, Err(FsError::Io(_))));
    assert!(matches!(
        f.core.lookup(ROOT_INO, os("new.jpg")).await,
        Err(FsError::Io(_))
    ));
    // Back: everything works, and changes made meanwhile are seen.
    f.store.down.store(false, Ordering::Relaxed);
    f.store.insert("a.jpg", b"changed meanwhile");
    tokio::time::sleep(OUTAGE_RETRY + Duration::from_millis(100)).await;
    assert_eq!(f.read_all(a).await.unwrap(), b"changed meanwhile");
    assert_eq!(f.read_all(b).await.unwrap(), b"never read");
}

#[tokio::test]
async fn our_own_changes_keep_listings_so_creates_ask_nothing() {
    let f = fixture(Duration::from_secs(60));
    let d = f
        .core
        .mkdir(ROOT_INO, os("new"), 0o755, 0, 0)
        .await
        .unwrap()
        .ino;
    let before = f.store.meta_requests.load(Ordering::Relaxed);
    for i in 0..10 {
        let name = format!("f{i}");
        assert!(matches!(
            f.core.lookup(d, os(&name)).await,
            Err(FsError::NotFound)
        ));
        f.write_file(d, &name, b"data").await.unwrap();
    }
    f.core.unlink(d, os("f3")).await.unwrap();
    assert_eq!(
        f.store.meta_requests.load(Ordering::Relaxed),
        before,
        "no lookup went to the store"
    );
    let mut names = f.names(d).await;
    names.retain(|n| n != "." && n != "..");
    names.sort();
    assert_eq!(
        names,
        ["f0", "f1", "f2", "f4", "f5", "f6", "f7", "f8", "f9"]
    );
    assert!(f.store.contents("new/f3").is_none());
}

#[tokio::test]
async fn truncation_sets_mtime_to_now() {
    // A file with an explicit old mtime (as `touch -d` or a store's own
    // metadata gives): truncating it changes its bytes, so its mtime must
    // move to now, here and in what is uploaded, as a write's does.
    let f = fixture(Duration::from_secs(60));
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let recent = |t: SystemTime| t > SystemTime::now() - Duration::from_secs(60);
    let ino = f.write_file(ROOT_INO, "a", b"data").await.unwrap();
    let set_old = |ino| f.core.setattr(ino, None, None, None, None, None, Some(old));
    set_old(ino).await.unwrap();
    assert_eq!(f.core.getattr(ino).await.unwrap().mtime, old);
    // open(O_TRUNC), closed without a write.
    let open = f
        .core
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    f.core.flush(open.fh).await.unwrap();
    f.core.release(open.fh).await.unwrap();
    let attr = f.core.getattr(ino).await.unwrap();
    assert_eq!(attr.size, 0);
    assert!(recent(attr.mtime), "O_TRUNC: {:?}", attr.mtime);
    // truncate(2) of a file nobody has open, to a non-zero size.
    let ino = f.write_file(ROOT_INO, "b", b"longer data").await.unwrap();
    set_old(ino).await.unwrap();
    let attr = f
        .core
        .setattr(ino, None, Some(4), None, None, None, None)
        .await
        .unwrap();
    assert_eq!(attr.size, 4);
    assert!(recent(attr.mtime), "truncate: {:?}", attr.mtime);
    // ftruncate on a write handle.
    set_old(ino).await.unwrap();
    let open = f.core.open(ino, libc::O_WRONLY).await.unwrap();
    f.core
        .setattr(ino, Some(open.fh), Some(2), None, None, None, None)
        .await
        .unwrap();
    f.core.flush(open.fh).await.unwrap();
    f.core.release(open.fh).await.unwrap();
    let attr = f.core.getattr(ino).await.unwrap();
    assert_eq!(attr.size, 2);
    assert!(recent(attr.mtime), "ftruncate: {:?}", attr.mtime);
}

#[tokio::test]
async fn entries_made_or_removed_here_move_the_directory_mtime() {
    let f = fixture(Duration::from_secs(60));
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let recent = |t: SystemTime| t > SystemTime::now() - Duration::from_secs(60);
    let d = f
        .core
        .mkdir(ROOT_INO, os("d"), 0o755, 0, 0)
        .await
        .unwrap()
        .ino;
    let set_old = || f.core.setattr(d, None, None, None, None, None, Some(old));
    let mtime = || async { f.core.getattr(d).await.unwrap().mtime };
    set_old().await.unwrap();
    assert_eq!(mtime().await, old);
    f.write_file(d, "file", b"x").await.unwrap();
    assert!(recent(mtime().await), "create");
    set_old().await.unwrap();
    f.core.mkdir(d, os("sub"), 0o755, 0, 0).await.unwrap();
    assert!(recent(mtime().await), "mkdir");
    set_old().await.unwrap();
    f.core.rmdir(d, os("sub")).await.unwrap();
    assert!(recent(mtime().await), "rmdir");
    set_old().await.unwrap();
    f.core.unlink(d, os("file")).await.unwrap();
    assert!(recent(mtime().await), "unlink");
}
