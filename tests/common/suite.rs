//! The operation checks every store must pass through a real mount. Each
//! store's test file builds a `StoreCtx` (an empty store of that kind, plus a
//! direct client to look at it from outside) and expands `store_suite!`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mediafs::store::{GetResult, Store};

use super::{MountSpec, Mounted, assert_same, errno_of, eventually, pattern};

/// An empty store of one kind, and a way to look at it without the mount.
pub struct StoreCtx {
    pub url: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub store: Arc<dyn Store>,
    pub rt: tokio::runtime::Runtime,
    /// The store persists mode/uid/gid/mtime.
    pub keeps_attrs: bool,
    /// The largest object the test store takes (the test MariaDB's
    /// max_allowed_packet is 16 MiB); `None`: no limit worth noting.
    pub max_object: Option<usize>,
    /// Keeps whatever owns the store's data alive (temp dirs, servers).
    pub _guard: Box<dyn std::any::Any>,
}

pub const TTL: u64 = 1;

impl StoreCtx {
    pub fn spec(&self) -> MountSpec {
        let mut s = MountSpec::new(&self.url);
        s.args = self.args.clone();
        s.env = self.env.clone();
        s.ttl(TTL)
    }

    pub fn mount(&self) -> Mounted {
        self.spec().mount()
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        fs::write(tmp.path(), data).unwrap();
        self.rt
            .block_on(self.store.put(key, tmp.path(), &Default::default()))
            .unwrap();
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            match self.store.get(key, None, None).await {
                Ok(GetResult::Body { mut body, .. }) => {
                    let mut out = Vec::new();
                    while let Some(chunk) = body.next().await {
                        out.extend_from_slice(&chunk.unwrap());
                    }
                    Some(out)
                }
                Ok(GetResult::NotModified) => unreachable!(),
                Err(mediafs::store::StoreError::NotFound) => None,
                Err(e) => panic!("store get {key}: {e}"),
            }
        })
    }

    pub fn head(&self, key: &str) -> Option<mediafs::store::ObjectMeta> {
        self.rt.block_on(self.store.head(key)).unwrap()
    }

    pub fn wait(&self) {
        std::thread::sleep(Duration::from_millis(TTL * 1000 + 300));
    }
}

fn read(p: &std::path::Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn copy_in_is_in_store_at_close(ctx: &StoreCtx) {
    let m = ctx.mount();
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    let src = tempfile::NamedTempFile::new().unwrap();
    fs::write(src.path(), &data).unwrap();
    fs::copy(src.path(), m.path("photo.jpg")).unwrap();
    // close() has returned: the store holds every byte, now.
    assert_same(&ctx.get("photo.jpg").unwrap(), &data, "store copy at close");
    assert_same(&read(&m.path("photo.jpg")), &data, "read back");
    assert_eq!(
        fs::metadata(m.path("photo.jpg")).unwrap().len(),
        data.len() as u64
    );
}

pub fn large_file_cold_random_then_sequential(ctx: &StoreCtx) {
    use std::os::unix::fs::FileExt;
    // Several 8 MiB download parts, and not a multiple of anything.
    let len = (40 * 1024 * 1024 + 4321).min(ctx.max_object.unwrap_or(usize::MAX) - 65536);
    let data = pattern(len, 3);
    ctx.put("video.mp4", &data);
    let m = ctx.mount();
    let f = File::open(m.path("video.mp4")).unwrap();
    // Cold random reads, the far end first: served before the whole file is here.
    let offsets = [len - 5000, 17 * 1024 * 1024 + 3, 4096, 0, 33 * 1024 * 1024];
    for &at in offsets.iter().filter(|&&at| at < len) {
        let mut buf = vec![0; 4096.min(len - at)];
        f.read_exact_at(&mut buf, at as u64).unwrap();
        assert_same(&buf, &data[at..at + buf.len()], &format!("at {at}"));
    }
    assert_same(&read(&m.path("video.mp4")), &data, "video");
    // Read again by another opener: from the cache, still identical.
    assert_same(&read(&m.path("video.mp4")), &data, "video");
}

pub fn zero_byte_file(ctx: &StoreCtx) {
    let m = ctx.mount();
    File::create(m.path("empty")).unwrap();
    assert_eq!(ctx.get("empty").as_deref(), Some(&b""[..]));
    assert_eq!(read(&m.path("empty")), b"");
}

pub fn store_side_write_appears_within_ttl(ctx: &StoreCtx) {
    let m = ctx.mount();
    assert!(!m.path("later.png").exists());
    ctx.put("later.png", b"from another host");
    assert!(
        eventually(Duration::from_secs(TTL + 3), || m
            .path("later.png")
            .exists()),
        "an object written behind the mount's back shows within the TTL"
    );
    assert_eq!(read(&m.path("later.png")), b"from another host");
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.iter().any(|n| n == "later.png"));
}

pub fn changed_in_store_is_read_fresh_after_ttl(ctx: &StoreCtx) {
    ctx.put("doc.txt", b"version one");
    let m = ctx.mount();
    assert_eq!(read(&m.path("doc.txt")), b"version one");
    ctx.put("doc.txt", b"version two, longer");
    ctx.wait();
    assert_eq!(read(&m.path("doc.txt")), b"version two, longer");
}

pub fn random_write_append_truncate(ctx: &StoreCtx) {
    let m = ctx.mount();
    let p = m.path("f.bin");
    fs::write(&p, b"0123456789").unwrap();
    {
        let mut f = OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(4)).unwrap();
        f.write_all(b"ab").unwrap();
    }
    assert_eq!(ctx.get("f.bin").unwrap(), b"0123ab6789");
    {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"XY").unwrap();
    }
    assert_eq!(ctx.get("f.bin").unwrap(), b"0123ab6789XY");
    {
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(3).unwrap(); // ftruncate
    }
    assert_eq!(ctx.get("f.bin").unwrap(), b"012");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: valid path; truncate(2) without an open handle.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 1) }, 0);
    assert_eq!(ctx.get("f.bin").unwrap(), b"0");
    assert_eq!(fs::metadata(&p).unwrap().len(), 1);
    // Read and write through one O_RDWR handle, sparse extension included.
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(5)).unwrap();
    f.write_all(b"Z").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"0\0\0\0\0Z");
    drop(f);
    assert_eq!(ctx.get("f.bin").unwrap(), b"0\0\0\0\0Z");
    // O_TRUNC on open empties it.
    fs::write(&p, b"").unwrap();
    assert_eq!(ctx.get("f.bin").unwrap(), b"");
}

pub fn exclusive_create(ctx: &StoreCtx) {
    let m = ctx.mount();
    fs::write(m.path("x"), b"1").unwrap();
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("x"))
        .unwrap_err();
    assert_eq!(errno_of(&err), libc::EEXIST);
    ctx.put("remote", b"r");
    ctx.wait();
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("remote"))
        .unwrap_err();
    assert_eq!(errno_of(&err), libc::EEXIST);
}

pub fn directories(ctx: &StoreCtx) {
    let m = ctx.mount();
    fs::create_dir(m.path("d")).unwrap();
    assert!(fs::metadata(m.path("d")).unwrap().is_dir());
    assert_eq!(
        errno_of(&fs::create_dir(m.path("d")).unwrap_err()),
        libc::EEXIST
    );
    fs::create_dir_all(m.path("d/e/f")).unwrap();
    fs::write(m.path("d/e/f/g.txt"), b"g").unwrap();
    assert_eq!(ctx.get("d/e/f/g.txt").unwrap(), b"g");
    assert_eq!(
        errno_of(&fs::remove_dir(m.path("d/e")).unwrap_err()),
        libc::ENOTEMPTY
    );
    let mut names: Vec<String> = fs::read_dir(m.path("d/e/f"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["g.txt"]);
    fs::remove_file(m.path("d/e/f/g.txt")).unwrap();
    assert!(ctx.get("d/e/f/g.txt").is_none());
    fs::remove_dir(m.path("d/e/f")).unwrap();
    assert!(!m.path("d/e/f").exists());
    // An empty directory exists in the store: a second mount sees it.
    fs::create_dir(m.path("empty")).unwrap();
    let m2 = ctx.mount();
    assert!(fs::metadata(m2.path("empty")).unwrap().is_dir());
    assert!(fs::metadata(m2.path("d/e")).unwrap().is_dir());
    assert_eq!(
        errno_of(&fs::remove_dir(m.path("nope")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(&fs::remove_file(m.path("d")).unwrap_err()),
        libc::EISDIR
    );
}

pub fn large_directory(ctx: &StoreCtx) {
    let n = 1_500;
    for i in 0..n {
        ctx.put(&format!("big/f{i:05}"), b"x");
    }
    let m = ctx.mount();
    let mut names: Vec<String> = fs::read_dir(m.path("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), n);
    assert_eq!(names[0], "f00000");
    assert_eq!(names[n - 1], format!("f{:05}", n - 1));
    assert_eq!(read(&m.path("big/f01499")), b"x");
}

pub fn renames(ctx: &StoreCtx) {
    let m = ctx.mount();
    fs::write(m.path("a.txt"), b"A").unwrap();
    fs::rename(m.path("a.txt"), m.path("b.txt")).unwrap();
    assert!(ctx.get("a.txt").is_none());
    assert_eq!(ctx.get("b.txt").unwrap(), b"A");
    assert!(!m.path("a.txt").exists());
    assert_eq!(read(&m.path("b.txt")), b"A");
    // The legacy-app pattern: write a temp file, rename it over the real one.
    fs::write(m.path(".b.txt.tmp"), b"B2").unwrap();
    fs::rename(m.path(".b.txt.tmp"), m.path("b.txt")).unwrap();
    assert_eq!(ctx.get("b.txt").unwrap(), b"B2");
    assert_eq!(read(&m.path("b.txt")), b"B2");
    assert!(ctx.get(".b.txt.tmp").is_none());
    // Directories with content, into another directory.
    fs::create_dir_all(m.path("src/sub")).unwrap();
    fs::write(m.path("src/one"), b"1").unwrap();
    fs::write(m.path("src/sub/two"), b"2").unwrap();
    fs::create_dir(m.path("dst")).unwrap();
    fs::rename(m.path("src"), m.path("dst/moved")).unwrap();
    assert_eq!(read(&m.path("dst/moved/sub/two")), b"2");
    assert_eq!(ctx.get("dst/moved/one").unwrap(), b"1");
    assert_eq!(ctx.get("dst/moved/sub/two").unwrap(), b"2");
    assert!(ctx.get("src/one").is_none());
    assert!(!m.path("src").exists());
    // Over a non-empty directory: refused.
    fs::create_dir(m.path("full")).unwrap();
    fs::write(m.path("full/x"), b"x").unwrap();
    let err = fs::rename(m.path("dst/moved"), m.path("full")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOTEMPTY);
    // Seen by another mount.
    let m2 = ctx.mount();
    assert_eq!(read(&m2.path("dst/moved/sub/two")), b"2");
}

pub fn attributes(ctx: &StoreCtx) {
    let m = ctx.mount();
    let p = m.path("perm.txt");
    fs::write(&p, b"p").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&p, Some(33), Some(33)).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(when)
        .unwrap();
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (33, 33));
    assert_eq!(meta.mtime(), 1_500_000_000);
    if ctx.keeps_attrs {
        let m2 = ctx.mount();
        let meta = fs::metadata(m2.path("perm.txt")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (33, 33));
        assert_eq!(meta.mtime(), 1_500_000_000);
    }
    // The content survived the metadata changes.
    assert_eq!(ctx.get("perm.txt").unwrap(), b"p");
    // A file created with a mode keeps it.
    let q = m.path("private");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&q)
        .unwrap();
    assert_eq!(fs::metadata(&q).unwrap().mode() & 0o777, 0o600);
}

pub fn unsupported_and_bad_names(ctx: &StoreCtx) {
    let m = ctx.mount();
    fs::write(m.path("t"), b"t").unwrap();
    let err = fs::hard_link(m.path("t"), m.path("t2")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EPERM);
    let err = std::os::unix::fs::symlink("t", m.path("link")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EPERM);
    // The longest name the store holds: 255 bytes (NAME_MAX), or its own
    // lower limit (Magento's tables: 100 characters). One more is refused.
    let max = (1..=255)
        .rev()
        .find(|n| ctx.store.check_key(&"n".repeat(*n)).is_ok())
        .unwrap();
    let long = "n".repeat(max + 1);
    let err = fs::write(m.path(&long), b"x").unwrap_err();
    assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
    let err = fs::create_dir(m.path(&long)).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
    let ok = "n".repeat(max);
    fs::write(m.path(&ok), b"x").unwrap();
    assert_eq!(ctx.get(&ok).unwrap(), b"x");
    for odd in [
        "with space.jpg",
        "ünïcödé-фото.png",
        "new\nline",
        "#hash%20&amp",
    ] {
        fs::write(m.path(odd), odd.as_bytes()).unwrap();
        assert_eq!(ctx.get(odd).unwrap(), odd.as_bytes(), "{odd:?}");
        assert_eq!(read(&m.path(odd)), odd.as_bytes());
    }
    let st = nix_statvfs(&m.mnt);
    assert!(st > 0, "statfs reports blocks");
}

fn nix_statvfs(p: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_namemax, 255);
    st.f_blocks
}

pub fn second_mount_sees_writes(ctx: &StoreCtx) {
    let m1 = ctx.mount();
    let m2 = ctx.mount();
    assert!(!m2.path("shared.jpg").exists());
    fs::write(m1.path("shared.jpg"), b"one").unwrap();
    assert!(eventually(Duration::from_secs(TTL + 3), || m2
        .path("shared.jpg")
        .exists()));
    assert_eq!(read(&m2.path("shared.jpg")), b"one");
    fs::write(m1.path("shared.jpg"), b"two!").unwrap();
    ctx.wait();
    assert_eq!(read(&m2.path("shared.jpg")), b"two!");
    fs::remove_file(m1.path("shared.jpg")).unwrap();
    assert!(eventually(Duration::from_secs(TTL + 3), || !m2
        .path("shared.jpg")
        .exists()));
}

/// Another host watching a file while this one renames it sees the old name
/// or the new one; a moment with neither (its cached answers for both names
/// running out one after the other) never lasts longer than the TTL.
pub fn rename_seen_from_another_mount(ctx: &StoreCtx) {
    use std::time::Instant;
    let m1 = ctx.mount();
    let m2 = ctx.mount();
    fs::write(m1.path("old.jpg"), b"photo").unwrap();
    assert!(eventually(Duration::from_secs(TTL + 3), || m2
        .path("old.jpg")
        .exists()));
    let (old, new) = (m2.path("old.jpg"), m2.path("new.jpg"));
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(TTL + 30);
        let (mut neither_since, mut longest) = (None::<Instant>, Duration::ZERO);
        while Instant::now() < deadline {
            let (o, n) = (old.exists(), new.exists());
            if !o && !n {
                neither_since.get_or_insert_with(Instant::now);
            } else if let Some(since) = neither_since.take() {
                longest = longest.max(since.elapsed());
            }
            if n && !o {
                return Some(longest);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });
    std::thread::sleep(Duration::from_millis(200));
    fs::rename(m1.path("old.jpg"), m1.path("new.jpg")).unwrap();
    let longest = watcher
        .join()
        .unwrap()
        .expect("the other mount saw the new name");
    // TTL plus room for the store's answers on a loaded machine.
    assert!(
        longest <= Duration::from_secs(TTL + 2),
        "neither name for {longest:?}"
    );
    assert_eq!(read(&m2.path("new.jpg")), b"photo");
}

pub fn concurrent_readers_and_writers(ctx: &StoreCtx) {
    let m = ctx.mount();
    let data = pattern(256 * 1024, 7);
    ctx.put("shared.bin", &data);
    std::thread::scope(|s| {
        for i in 0..8 {
            let (m, data) = (&m, &data);
            s.spawn(move || {
                assert_same(&read(&m.path("shared.bin")), data, "shared reader");
                let own = pattern(10_000 + i, i as u64);
                fs::write(m.path(&format!("w{i}")), &own).unwrap();
                assert_same(&read(&m.path(&format!("w{i}"))), &own, "own write");
            });
        }
    });
    for i in 0..8 {
        assert_same(
            &ctx.get(&format!("w{i}")).unwrap(),
            &pattern(10_000 + i, i as u64),
            "stored",
        );
    }
}

/// Cached files are served by FUSE passthrough; a writer on the same host
/// waits for such readers to close (the kernel allows no mix of modes).
pub fn passthrough_readers_and_a_writer(ctx: &StoreCtx) {
    let data = pattern(1 << 20, 11);
    ctx.put("pt.bin", &data);
    let m = ctx.mount();
    assert_same(&read(&m.path("pt.bin")), &data, "first read (download)");
    // Once the first reader's release is in, opens of the cached file are
    // passthrough opens.
    assert!(
        eventually(Duration::from_secs(3), || {
            assert_same(&read(&m.path("pt.bin")), &data, "cached read");
            m.log().contains("passthrough open")
        }),
        "cached reads use passthrough"
    );
    let reader = File::open(m.path("pt.bin")).unwrap();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let writer = s.spawn(|| fs::write(m.path("pt.bin"), b"rewritten"));
        std::thread::sleep(Duration::from_millis(300));
        drop(reader);
        writer.join().unwrap().unwrap();
    });
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the writer waited for the reader"
    );
    assert_eq!(ctx.get("pt.bin").unwrap(), b"rewritten");
    assert_eq!(read(&m.path("pt.bin")), b"rewritten");
}

/// Web-server load on hot files with a writer and a second host (see `load`).
pub fn web_load_zero_errors(ctx: &StoreCtx) {
    super::load::web_load_zero_errors(ctx);
}

/// One #[test] per check, for a store given by `$make(name) -> StoreCtx`.
#[macro_export]
macro_rules! store_suite {
    ($make:path) => {
        $crate::store_suite!(@tests $make;
            copy_in_is_in_store_at_close, large_file_cold_random_then_sequential, zero_byte_file, store_side_write_appears_within_ttl,
            changed_in_store_is_read_fresh_after_ttl, random_write_append_truncate,
            exclusive_create, directories, large_directory, renames, attributes,
            unsupported_and_bad_names, second_mount_sees_writes, rename_seen_from_another_mount,
            concurrent_readers_and_writers,
            passthrough_readers_and_a_writer, web_load_zero_errors);
    };
    (@tests $make:path; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let ctx = $make(stringify!($name));
                common::suite::$name(&ctx);
            }
        )*
    };
}
