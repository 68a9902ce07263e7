//! The shared suite over Magento's media tables on a real MariaDB, plus
//! compatibility with the SQL Magento itself issues, and what only this store
//! has: collation clashes, max_allowed_packet, column lengths, passwords.
//!
//! One server per test binary (scripts/mariadb-start.sh, on a free loopback
//! port, started by the first test that needs it and stopped by PID through
//! scripts/mariadb-stop.sh when the process exits); one database per test.

mod common;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::suite::StoreCtx;
use common::{BIN, MountSpec, errno_of, pattern};
use mediafs::store::sql::{MysqlUrl, SqlConfig, SqlStore, Tables};
use mysql_async::prelude::Queryable;

const USER: &str = "mediafs";
const PASSWORD: &str = "mediafs-test-pw";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Server {
    port: u16,
    datadir: PathBuf,
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let datadir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mariadb");
        let port = start_server(&datadir);
        // SAFETY: registers a plain extern "C" fn, run once at process exit.
        unsafe { libc::atexit(stop_server) };
        Server { port, datadir }
    })
}

/// Start a MariaDB in `datadir` on a free loopback port; returns the port.
fn start_server(datadir: &std::path::Path) -> u16 {
    // Outside the ephemeral range, where a port that looks free can be taken
    // by an outgoing connection before the server binds it.
    let out = Command::new(format!("{ROOT}/scripts/lib/free-port.sh"))
        .output()
        .expect("run scripts/lib/free-port.sh");
    let port: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a port from free-port.sh");
    let st = Command::new(format!("{ROOT}/scripts/mariadb-start.sh"))
        .arg(port.to_string())
        .arg(datadir)
        .env("MEDIAFS_TEST_USER", USER)
        .env("MEDIAFS_TEST_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/mariadb-start.sh");
    assert!(st.success(), "scripts/mariadb-start.sh failed");
    port
}

extern "C" fn stop_server() {
    if let Some(s) = SERVER.get() {
        let _ = Command::new(format!("{ROOT}/scripts/mariadb-stop.sh"))
            .arg(&s.datadir)
            .stdout(Stdio::null())
            .status();
        // Its redo log alone is 256 MiB: leave no data directory behind.
        let _ = fs::remove_dir_all(&s.datadir);
    }
}

fn schema(prefix: &str, magento1: bool) -> Vec<String> {
    let text = fs::read_to_string(format!("{ROOT}/scripts/magento-media-schema.sql")).unwrap();
    let t = Tables::new(prefix, magento1).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("`media_storage_file_storage`", &t.files)
        .replace("`media_storage_directory_storage`", &t.dirs);
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn db_url(db: &str) -> MysqlUrl {
    MysqlUrl {
        user: USER.into(),
        host: "127.0.0.1".into(),
        port: server().port,
        database: db.into(),
        socket: None,
    }
}

/// A connection to the test database `db`, as Magento would have.
async fn connect(db: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .ip_or_hostname("127.0.0.1")
        .tcp_port(server().port)
        .db_name(Some(db))
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await.unwrap()
}

fn new_db(name: &str, prefix: &str, magento1: bool) -> (String, tokio::runtime::Runtime) {
    let db = format!("t_{name}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = connect("mysql").await;
        c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
            .await
            .unwrap();
        c.query_drop(format!("CREATE DATABASE `{db}`"))
            .await
            .unwrap();
        c.query_drop(format!("USE `{db}`")).await.unwrap();
        for stmt in schema(prefix, magento1) {
            c.query_drop(stmt).await.unwrap();
        }
        c.disconnect().await.unwrap();
    });
    (db, rt)
}

fn mysql(name: &str) -> StoreCtx {
    let (db, rt) = new_db(name, "", false);
    let url = db_url(&db);
    let store = rt
        .block_on(SqlStore::open(SqlConfig {
            url: url.clone(),
            password: Some(PASSWORD.into()),
            tables: Tables::new("", false).unwrap(),
        }))
        .unwrap();
    StoreCtx {
        url: url.display(),
        args: vec![],
        env: vec![("MEDIAFS_MYSQL_PASSWORD".into(), PASSWORD.into())],
        store: Arc::new(store),
        rt,
        // The tables have no place for mode, owner or mtime.
        keeps_attrs: false,
        max_object: Some(16 * 1024 * 1024),
        _guard: Box::new(()),
    }
}

store_suite!(mysql);

fn db_of(ctx: &StoreCtx) -> String {
    ctx.url.rsplit('/').next().unwrap().to_string()
}

/// Run statements as Magento would, on the test's database.
fn sql<T: Send + 'static>(ctx: &StoreCtx, f: impl AsyncFnOnce(&mut mysql_async::Conn) -> T) -> T {
    let db = db_of(ctx);
    ctx.rt.block_on(async {
        let mut c = connect(&db).await;
        let v = f(&mut c).await;
        c.disconnect().await.unwrap();
        v
    })
}

const DIRS: &str = "media_storage_directory_storage";
const FILES: &str = "media_storage_file_storage";

/// Magento's Directory\Database::createRecursive, statement by statement.
async fn magento_mkdir_p(c: &mut mysql_async::Conn, path: &str) -> Option<u32> {
    let mut parent: Option<u32> = None;
    let mut done = String::new();
    for name in path.split('/') {
        let found: Option<u32> = c
            .exec_first(
                format!("SELECT directory_id FROM {DIRS} WHERE name = ? AND path = ?"),
                (name, &done),
            )
            .await
            .unwrap();
        let id = match found {
            Some(id) => id,
            None => {
                c.exec_drop(
                    format!(
                        "INSERT INTO {DIRS} (name, path, upload_time, parent_id) VALUES (?, ?, ?, ?)"
                    ),
                    (name, &done, "2024-01-02 03:04:05", parent),
                )
                .await
                .unwrap();
                c.last_insert_id().unwrap() as u32
            }
        };
        parent = Some(id);
        done = if done.is_empty() {
            name.to_string()
        } else {
            format!("{done}/{name}")
        };
    }
    parent
}

/// Magento's File\Storage\Database::saveFile: insertOnDuplicate.
async fn magento_save(c: &mut mysql_async::Conn, dir: &str, name: &str, data: &[u8], time: &str) {
    let dir_id = magento_mkdir_p(c, dir).await;
    c.exec_drop(
        format!(
            "INSERT INTO {FILES} (content, upload_time, filename, directory_id, directory) \
             VALUES (?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE content = VALUES(content), upload_time = VALUES(upload_time)"
        ),
        (data, time, name, dir_id, dir),
    )
    .await
    .unwrap();
}

/// Magento's loadByFilename: the content of `dir/name`, if any.
async fn magento_load(c: &mut mysql_async::Conn, dir: &str, name: &str) -> Option<Vec<u8>> {
    c.exec_first(
        format!("SELECT content FROM {FILES} WHERE filename = ? AND directory = ?"),
        (name, dir),
    )
    .await
    .unwrap()
}

#[test]
fn magento_rows_read_through_the_mount() {
    let ctx = mysql("magento_rows");
    sql(&ctx, async |c| {
        magento_save(
            c,
            "catalog/product/a/b",
            "ab.jpg",
            b"jpeg bytes",
            "2024-05-06 07:08:09",
        )
        .await;
        magento_save(c, "wysiwyg", "banner.png", b"png", "2024-05-06 07:08:09").await;
        magento_mkdir_p(c, "catalog/category").await;
    });
    let m = ctx.mount();
    assert_eq!(
        fs::read(m.path("catalog/product/a/b/ab.jpg")).unwrap(),
        b"jpeg bytes"
    );
    let meta = fs::metadata(m.path("catalog/product/a/b/ab.jpg")).unwrap();
    assert_eq!(meta.len(), 10);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.mtime(),
        1_714_979_289,
        "upload_time is the mtime (UTC)"
    );
    let mut names: Vec<String> = fs::read_dir(m.path("catalog"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["category", "product"]);
    assert!(fs::metadata(m.path("catalog/category")).unwrap().is_dir());

    // Magento rewrites the file within the same second, same length: the
    // version (MD5) still changes, so the mount never serves the old bytes.
    sql(&ctx, async |c| {
        magento_save(
            c,
            "catalog/product/a/b",
            "ab.jpg",
            b"JPEG BYTES",
            "2024-05-06 07:08:09",
        )
        .await;
    });
    ctx.wait();
    assert_eq!(
        fs::read(m.path("catalog/product/a/b/ab.jpg")).unwrap(),
        b"JPEG BYTES"
    );

    // Magento's rename (an UPDATE of filename and directory) and its folder
    // delete (directory LIKE 'dir/%' OR directory = 'dir', then the rows).
    sql(&ctx, async |c| {
        let id = magento_mkdir_p(c, "wysiwyg/old").await;
        c.exec_drop(
            format!("UPDATE {FILES} SET filename = ?, directory = ?, directory_id = ? WHERE filename = ? AND directory = ?"),
            ("moved.png", "wysiwyg/old", id, "banner.png", "wysiwyg"),
        )
        .await
        .unwrap();
        c.exec_drop(
            format!("DELETE FROM {FILES} WHERE directory LIKE ? OR directory = ?"),
            ("catalog/product/%", "catalog/product"),
        )
        .await
        .unwrap();
        c.exec_drop(
            format!("DELETE FROM {DIRS} WHERE name = ? AND path = ?"),
            ("product", "catalog"),
        )
        .await
        .unwrap();
    });
    ctx.wait();
    assert_eq!(fs::read(m.path("wysiwyg/old/moved.png")).unwrap(), b"png");
    assert!(!m.path("wysiwyg/banner.png").exists());
    assert!(!m.path("catalog/product").exists());
    assert!(m.path("catalog/category").exists());
}

#[test]
fn mount_writes_are_rows_magento_reads() {
    let ctx = mysql("mount_writes");
    let m = ctx.mount();
    fs::create_dir_all(m.path("wysiwyg/banners")).unwrap();
    fs::write(m.path("wysiwyg/banners/sale.png"), b"sale").unwrap();
    fs::create_dir_all(m.path("catalog/product/c/d")).unwrap();
    fs::write(m.path("catalog/product/c/d/cd.jpg"), b"cd").unwrap();
    fs::write(m.path("root.txt"), b"at the root").unwrap();
    fs::create_dir(m.path("empty")).unwrap();
    // Larger than one 4 MiB chunk, read back in several.
    let big = pattern(10 * 1024 * 1024 + 5, 3);
    fs::write(m.path("catalog/big.bin"), &big).unwrap();

    let (sale, cd, root, big_row, dirs, file_dirs) = sql(&ctx, async |c| {
        let sale = magento_load(c, "wysiwyg/banners", "sale.png").await;
        let cd = magento_load(c, "catalog/product/c/d", "cd.jpg").await;
        let root = magento_load(c, "", "root.txt").await;
        let big = magento_load(c, "catalog", "big.bin").await;
        let dirs: Vec<(u32, String, String, Option<u32>)> = c
            .query(format!(
                "SELECT directory_id, name, path, parent_id FROM {DIRS} ORDER BY directory_id"
            ))
            .await
            .unwrap();
        let file_dirs: Vec<(String, String, Option<u32>)> = c
            .query(format!(
                "SELECT filename, directory, directory_id FROM {FILES} ORDER BY filename"
            ))
            .await
            .unwrap();
        (sale, cd, root, big, dirs, file_dirs)
    });
    assert_eq!(sale.as_deref(), Some(&b"sale"[..]));
    assert_eq!(cd.as_deref(), Some(&b"cd"[..]));
    assert_eq!(root.as_deref(), Some(&b"at the root"[..]));
    assert!(
        big_row.as_deref() == Some(&big[..]),
        "the 10 MiB blob is whole"
    );
    assert_eq!(fs::read(m.path("catalog/big.bin")).unwrap(), big);

    // A directory row for every path component, linked as Magento links them.
    let id_of = |path: &str, name: &str| {
        dirs.iter()
            .find(|d| d.1 == name && d.2 == path)
            .unwrap_or_else(|| panic!("no row for {path}/{name}: {dirs:?}"))
            .0
    };
    for (path, name, parent) in [
        ("", "wysiwyg", None),
        ("wysiwyg", "banners", Some(("", "wysiwyg"))),
        ("", "catalog", None),
        ("catalog", "product", Some(("", "catalog"))),
        ("catalog/product", "c", Some(("catalog", "product"))),
        ("catalog/product/c", "d", Some(("catalog/product", "c"))),
        ("", "empty", None),
    ] {
        let row = dirs.iter().find(|d| d.1 == name && d.2 == path).unwrap();
        assert_eq!(row.3, parent.map(|(p, n)| id_of(p, n)), "{path}/{name}");
    }
    assert_eq!(dirs.len(), 7, "{dirs:?}");
    for (name, dir, dir_id) in &file_dirs {
        match dir.rsplit_once('/') {
            Some((p, n)) => assert_eq!(*dir_id, Some(id_of(p, n)), "{name}"),
            None if dir.is_empty() => assert_eq!(*dir_id, None, "{name}"),
            None => assert_eq!(*dir_id, Some(id_of("", dir)), "{name}"),
        }
    }

    // A directory renamed through the mount: every row below follows, in one
    // transaction.
    fs::rename(m.path("catalog/product"), m.path("catalog/goods")).unwrap();
    let (old, new) = sql(&ctx, async |c| {
        (
            magento_load(c, "catalog/product/c/d", "cd.jpg").await,
            magento_load(c, "catalog/goods/c/d", "cd.jpg").await,
        )
    });
    assert_eq!((old, new.as_deref()), (None, Some(&b"cd"[..])));
}

#[test]
fn case_clash_is_eexist_and_changes_no_row() {
    let ctx = mysql("case_clash");
    let m = ctx.mount();
    fs::create_dir(m.path("Media")).unwrap();
    let err = fs::create_dir(m.path("media")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EEXIST);
    fs::write(m.path("a.jpg"), b"lower").unwrap();
    let mut f = fs::File::create(m.path("A.jpg")).unwrap();
    f.write_all(b"UPPER").unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(errno_of(&err), libc::EEXIST, "the clash is reported");
    drop(f);
    assert_eq!(
        ctx.get("a.jpg").unwrap(),
        b"lower",
        "the other row is untouched"
    );
    assert!(ctx.get("A.jpg").is_none());
    fs::write(m.path("other"), b"o").unwrap();
    let err = fs::rename(m.path("other"), m.path("A.JPG")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EEXIST);
    assert_eq!(ctx.get("other").unwrap(), b"o");
    // A case-only rename of one file is no clash.
    fs::rename(m.path("a.jpg"), m.path("A.jpg")).unwrap();
    assert_eq!(ctx.get("A.jpg").unwrap(), b"lower");
    let log = m.unmount();
    assert!(log.contains("name clash"), "{log}");
}

#[test]
fn blob_over_max_allowed_packet_is_a_clear_error() {
    let ctx = mysql("max_packet");
    let m = ctx.mount();
    let mut f = fs::File::create(m.path("huge.bin")).unwrap();
    f.write_all(&pattern(20 * 1024 * 1024, 9)).unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(errno_of(&err), libc::EIO);
    drop(f);
    // Never the whole file. (A prefix may be there: a process forked by
    // another test thread inherits our descriptor, and its close is a flush
    // that uploads what was written so far, as close-to-open requires.)
    let got = ctx.get("huge.bin").map(|v| v.len());
    let log = m.unmount();
    assert_ne!(got, Some(20 * 1024 * 1024), "{log}");
    assert!(log.contains("max_allowed_packet"), "{log}");
}

#[test]
fn names_longer_than_the_columns_are_enametoolong() {
    let ctx = mysql("long_names");
    let m = ctx.mount();
    let long = "x".repeat(101);
    let err = fs::write(m.path(&long), b"x").unwrap_err();
    assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
    let err = fs::create_dir(m.path(&long)).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
    let fits = "é".repeat(100); // 100 characters, 200 bytes
    fs::write(m.path(&fits), b"ok").unwrap();
    assert_eq!(ctx.get(&fits).unwrap(), b"ok");
    // Directory paths hold 255 characters: a file 3 levels of 99 down is refused.
    let d = "d".repeat(99);
    fs::create_dir_all(m.path(&format!("{d}/{d}"))).unwrap();
    let err = fs::create_dir(m.path(&format!("{d}/{d}/{d}"))).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENAMETOOLONG);
}

#[test]
fn wrong_password_fails_the_mount_clearly() {
    let ctx = mysql("wrong_password");
    let mnt = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["mount", &ctx.url])
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .env("MEDIAFS_MYSQL_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Access denied"), "{err}");
    assert!(err.contains(&ctx.url), "names the store: {err}");
    assert!(
        !err.contains("not-the-password"),
        "never shows a password: {err}"
    );
    assert!(!common::is_mounted(mnt.path()));
    // No server there: a quick failure that names the store.
    let start = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["mount", "mysql://mediafs@127.0.0.1:1/x"])
        .arg(mnt.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("mysql://mediafs@127.0.0.1:1/x"), "{err}");
    assert!(start.elapsed().as_secs() < 15, "fails fast");
    // A password in the URL is refused before anything is tried.
    let out = Command::new(BIN)
        .args(["mount", "mysql://mediafs:secret@127.0.0.1/x"])
        .arg(mnt.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("MEDIAFS_MYSQL_PASSWORD"), "{err}");
}

#[test]
fn unix_socket_and_password_file() {
    let ctx = mysql("socket");
    let sock = server().datadir.join("mysqld.sock");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let url = format!(
        "mysql://{USER}@localhost/{}?socket={}",
        db_of(&ctx),
        sock.display()
    );
    let m = MountSpec::new(url)
        .arg("--password-file")
        .arg(pw.to_str().unwrap())
        .mount();
    fs::write(m.path("via-socket.txt"), b"sock").unwrap();
    assert_eq!(ctx.get("via-socket.txt").unwrap(), b"sock");
}

#[test]
fn table_prefix_and_magento1_names() {
    let (db, _rt) = new_db("magento1", "mg_", true);
    let m = MountSpec::new(db_url(&db).display())
        .arg("--table-prefix")
        .arg("mg_")
        .arg("--magento1")
        .env("MEDIAFS_MYSQL_PASSWORD", PASSWORD)
        .mount();
    fs::create_dir(m.path("media")).unwrap();
    fs::write(m.path("media/m1.gif"), b"gif").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (row, entry): (Option<(String, Vec<u8>)>, Option<u64>) = rt.block_on(async {
        let mut c = connect(&db).await;
        let row = c
            .query_first(
                "SELECT directory, content FROM mg_core_file_storage WHERE filename = 'm1.gif'",
            )
            .await
            .unwrap();
        // The side table goes by the same prefix, and by Magento 1's name.
        let entry = c
            .query_first(
                "SELECT m.size FROM mg_mediafs_core_file_meta m \
                 JOIN mg_core_file_storage f USING (file_id) WHERE f.filename = 'm1.gif'",
            )
            .await
            .unwrap();
        (row, entry)
    });
    assert_eq!(row, Some(("media".to_string(), b"gif".to_vec())));
    assert_eq!(entry, Some(3));
    // Without the options, the mount says which tables it could not find.
    let out = Command::new(BIN)
        .args(["mount", &db_url(&db).display()])
        .arg(tempfile::tempdir().unwrap().path())
        .env("MEDIAFS_MYSQL_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--table-prefix"), "{err}");
}

#[test]
fn binary_collation_lets_case_variants_live_side_by_side() {
    let ctx = mysql("binary_collation");
    // The statements SEMANTICS.md gives.
    sql(&ctx, async |c| {
        for stmt in [
            "ALTER TABLE media_storage_directory_storage \
             MODIFY name varchar(100) CHARACTER SET utf8mb3 COLLATE utf8mb3_bin NOT NULL, \
             MODIFY path varchar(255) CHARACTER SET utf8mb3 COLLATE utf8mb3_bin DEFAULT NULL",
            "ALTER TABLE media_storage_file_storage \
             MODIFY filename varchar(100) CHARACTER SET utf8mb3 COLLATE utf8mb3_bin NOT NULL, \
             MODIFY directory varchar(255) CHARACTER SET utf8mb3 COLLATE utf8mb3_bin DEFAULT NULL",
        ] {
            c.query_drop(stmt).await.unwrap();
        }
    });
    let m = ctx.mount();
    fs::write(m.path("a.jpg"), b"lower").unwrap();
    fs::write(m.path("A.jpg"), b"UPPER").unwrap();
    fs::create_dir(m.path("Media")).unwrap();
    fs::create_dir(m.path("media")).unwrap();
    assert_eq!(ctx.get("a.jpg").unwrap(), b"lower");
    assert_eq!(ctx.get("A.jpg").unwrap(), b"UPPER");
    let mut names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["A.jpg", "Media", "a.jpg", "media"]);
}

/// A server of its own, stopped by PID when dropped.
struct OwnServer(PathBuf);
impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/scripts/mariadb-stop.sh"))
            .arg(&self.0)
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn database_down_cached_files_still_read_the_rest_fails_fast() {
    let datadir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mariadb-down");
    let port = start_server(&datadir);
    let server = OwnServer(datadir);
    let url = format!("mysql://{USER}@127.0.0.1:{port}/magento");
    let spec = || {
        MountSpec::new(url.clone())
            .env("MEDIAFS_MYSQL_PASSWORD", PASSWORD)
            .ttl(60)
    };
    let m = spec().mount();
    let other_host = spec().mount();
    fs::write(m.path("cached.jpg"), b"in the cache").unwrap();
    drop(server); // the database goes away
    let start = std::time::Instant::now();
    // Within the TTL a cached file is served without the database.
    assert_eq!(fs::read(m.path("cached.jpg")).unwrap(), b"in the cache");
    // What needs the database fails with EIO, quickly.
    let err = fs::read(other_host.path("cached.jpg")).unwrap_err();
    assert_eq!(errno_of(&err), libc::EIO, "{err}");
    let err = fs::write(m.path("new.jpg"), b"x").unwrap_err();
    assert_eq!(errno_of(&err), libc::EIO, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "fails fast: {:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------
// mediafs's side table of sizes and MD5s (issue 13): listings read it instead
// of every blob.

const META: &str = "mediafs_file_meta";

/// Statements as the server's root (over the socket: root authenticates by
/// unix user), for what the test user may not do itself: users and grants.
fn root_sql(stmts: &str) {
    let sock = server().datadir.join("mysqld.sock");
    let out = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", sock.display()))
        .args(["-uroot", "-e", stmts])
        .output()
        .expect("run the mariadb client");
    assert!(
        out.status.success(),
        "{stmts}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows written straight into `dir` the way Magento's saveFile writes them,
/// many per statement; returns their file_ids by name.
async fn magento_bulk(
    c: &mut mysql_async::Conn,
    dir: &str,
    files: &[(String, Vec<u8>)],
    time: &str,
) -> std::collections::BTreeMap<String, u32> {
    let dir_id = magento_mkdir_p(c, dir).await;
    for chunk in files.chunks(50) {
        let marks = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut params: Vec<mysql_async::Value> = Vec::new();
        for (name, data) in chunk {
            params.extend([
                data.clone().into(),
                time.into(),
                name.clone().into(),
                dir_id.into(),
                dir.into(),
            ]);
        }
        c.exec_drop(
            format!(
                "INSERT INTO {FILES} (content, upload_time, filename, directory_id, directory) \
                 VALUES {marks}"
            ),
            params,
        )
        .await
        .unwrap();
    }
    let rows: Vec<(String, u32)> = c
        .exec(
            format!("SELECT filename, file_id FROM {FILES} WHERE directory = ?"),
            (dir,),
        )
        .await
        .unwrap();
    rows.into_iter().collect()
}

/// `ls -l`: every entry's size, from readdir and an lstat of each name.
fn ls_l(dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// The side table: file_id -> (upload_time, size, md5, first_hashed, last_hashed).
type Entries = std::collections::BTreeMap<u32, (i64, u64, String, i64, i64)>;

async fn side_entries(c: &mut mysql_async::Conn) -> Entries {
    let rows: Vec<(u32, i64, u64, String, i64, i64)> = c
        .query(format!(
            "SELECT file_id, upload_time, size, md5, first_hashed, last_hashed FROM {META}"
        ))
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, t, s, m, f, l)| (id, (t, s, m, f, l)))
        .collect()
}

/// The side table once `ok` holds of it (entries are written in the
/// background); panics after 10 s.
fn entries_when(ctx: &StoreCtx, ok: impl Fn(&Entries) -> bool) -> Entries {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = sql(ctx, async |c| side_entries(c).await);
        if ok(&e) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "side table never as expected: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bulk_files(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("img-{i:04}.jpg"), pattern(100 + i * 7, i as u64)))
        .collect()
}

#[test]
fn listing_takes_sizes_from_the_side_table_not_the_blobs() {
    let ctx = mysql("side_listing");
    // More than one page of the store's listing (1,000 rows).
    let files = bulk_files(1_100);
    let ids = sql(&ctx, async |c| {
        magento_bulk(c, "catalog/bulk", &files, "2024-01-02 03:04:05").await
    });
    let expected: std::collections::BTreeMap<String, u64> = files
        .iter()
        .map(|(n, d)| (n.clone(), d.len() as u64))
        .collect();
    let m = ctx.mount();
    // The first listing hashes each row once and records it (in the
    // background, once the listing is answered).
    assert_eq!(ls_l(&m.path("catalog/bulk")), expected);
    let first = entries_when(&ctx, |e| e.len() == 1_100);
    let md5s: std::collections::BTreeMap<u32, String> = sql(&ctx, async |c| {
        let rows: Vec<(u32, String)> = c
            .query(format!("SELECT file_id, MD5(content) FROM {FILES}"))
            .await
            .unwrap();
        rows.into_iter().collect()
    });
    for (name, data) in &files {
        let e = &first[&ids[name]];
        assert_eq!((e.0, e.1), (1_704_164_645, data.len() as u64), "{name}");
        assert_eq!(e.2, md5s[&ids[name]], "{name}");
    }

    // One entry made wrong on purpose: the listing shows what the side table
    // says, so it read the table, not the blob.
    let victim = ids["img-0007.jpg"];
    let real = files[7].1.len() as u64;
    sql(&ctx, async |c| {
        c.exec_drop(
            format!("UPDATE {META} SET size = size + 1000 WHERE file_id = ?"),
            (victim,),
        )
        .await
        .unwrap();
    });
    ctx.wait(); // past the TTL, and at least a second after the first hashes
    let mut lied = expected.clone();
    lied.insert("img-0007.jpg".into(), real + 1000);
    assert_eq!(ls_l(&m.path("catalog/bulk")), lied);
    // A fresh mount (empty cache) lists from the table too.
    let other = ctx.mount();
    assert_eq!(ls_l(&other.path("catalog/bulk")), lied);
    drop(other);
    // No row was hashed again: every entry is as the first listing left it.
    let second = sql(&ctx, async |c| side_entries(c).await);
    for (id, e) in &second {
        let mut want = first[id].clone();
        if *id == victim {
            want.1 += 1000;
        }
        assert_eq!(*e, want, "file_id {id}");
    }

    // Opening the file after the TTL computes its metadata from the blob:
    // the right bytes, the right size, and the entry corrected.
    ctx.wait();
    assert_eq!(
        fs::read(m.path("catalog/bulk/img-0007.jpg")).unwrap(),
        files[7].1
    );
    assert_eq!(
        fs::metadata(m.path("catalog/bulk/img-0007.jpg"))
            .unwrap()
            .len(),
        real
    );
    entries_when(&ctx, |e| e[&victim].1 == real);
    ctx.wait();
    assert_eq!(ls_l(&m.path("catalog/bulk")), expected);

    // A few rows rewritten by Magento among many known ones: the listing
    // reads just those blobs, by name, and records them.
    let mut expected = expected;
    sql(&ctx, async |c| {
        for name in ["img-0010.jpg", "img-0500.jpg", "img-1099.jpg"] {
            c.exec_drop(
                format!("UPDATE {FILES} SET content = ?, upload_time = NOW() WHERE file_id = ?"),
                (name.as_bytes().to_vec(), ids[name]),
            )
            .await
            .unwrap();
            expected.insert(name.to_string(), name.len() as u64);
        }
    });
    ctx.wait();
    assert_eq!(ls_l(&m.path("catalog/bulk")), expected);
    entries_when(&ctx, |e| e[&ids["img-0500.jpg"]].1 == 12);

    // Files written, copied and deleted through the mount keep their
    // entries right, and a deleted file's entry goes with it.
    fs::write(m.path("catalog/bulk/new.jpg"), b"new bytes").unwrap();
    fs::copy(
        m.path("catalog/bulk/img-0001.jpg"),
        m.path("catalog/bulk/copy.jpg"),
    )
    .unwrap();
    fs::remove_file(m.path("catalog/bulk/img-0002.jpg")).unwrap();
    let (entries, now_ids) = sql(&ctx, async |c| {
        let rows: Vec<(String, u32, u64)> = c
            .query(format!(
                "SELECT filename, file_id, LENGTH(content) FROM {FILES}"
            ))
            .await
            .unwrap();
        (side_entries(c).await, rows)
    });
    assert!(
        !entries.contains_key(&ids["img-0002.jpg"]),
        "deleted with its row"
    );
    for (name, id, len) in &now_ids {
        if name == "new.jpg" || name == "copy.jpg" {
            assert_eq!(entries[id].1, *len, "{name}");
        }
    }

    // Magento deletes a row itself: the next mount drops its entry.
    let gone = ids["img-0003.jpg"];
    sql(&ctx, async |c| {
        c.exec_drop(format!("DELETE FROM {FILES} WHERE file_id = ?"), (gone,))
            .await
            .unwrap();
    });
    let _again = ctx.mount();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            !sql(&ctx, async |c| side_entries(c).await).contains_key(&gone)
        }),
        "the orphaned entry is swept"
    );
}

#[test]
fn magento_rewrites_in_place_show_after_the_ttl() {
    let ctx = mysql("side_rewrite");
    let ids = sql(&ctx, async |c| {
        let old = vec![("old.jpg".to_string(), b"old version".to_vec())];
        let mut ids = magento_bulk(c, "wysiwyg", &old, "2024-01-02 03:04:05").await;
        let archive = vec![
            ("a.jpg".to_string(), b"a".to_vec()),
            ("kept.jpg".to_string(), b"kept time".to_vec()),
            ("z.jpg".to_string(), b"z".to_vec()),
        ];
        ids.extend(magento_bulk(c, "archive", &archive, "2024-01-02 03:04:05").await);
        // Written just now, as Magento stamps its saves.
        c.exec_drop(
            format!(
                "INSERT INTO {FILES} (content, upload_time, filename, directory_id, directory) \
                 SELECT ?, NOW(), ?, directory_id, 'wysiwyg' FROM {DIRS} WHERE name = 'wysiwyg'"
            ),
            (b"fresh".to_vec(), "fresh.jpg"),
        )
        .await
        .unwrap();
        ids.insert("fresh.jpg".into(), c.last_insert_id().unwrap() as u32);
        ids
    });
    let m = ctx.mount();
    let sizes = |dir: &str, want: &[(&str, u64)]| {
        let got = ls_l(&m.path(dir));
        for (name, size) in want {
            assert_eq!(got[*name], *size, "{name}: {got:?}");
        }
    };
    sizes("wysiwyg", &[("old.jpg", 11), ("fresh.jpg", 5)]);
    sizes("archive", &[("kept.jpg", 9)]);
    for name in ["wysiwyg/old.jpg", "wysiwyg/fresh.jpg", "archive/kept.jpg"] {
        fs::read(m.path(name)).unwrap(); // into the cache
    }

    sql(&ctx, async |c| {
        // Magento's saveFile again: new content, a new upload_time.
        c.exec_drop(
            format!(
                "UPDATE {FILES} SET content = ?, upload_time = NOW() + INTERVAL 1 SECOND \
                 WHERE file_id = ?"
            ),
            (b"the new old version".to_vec(), ids["old.jpg"]),
        )
        .await
        .unwrap();
        // A second save within the same second as the first: upload_time
        // unchanged. The entry is younger than SETTLE_SECS, so listings check it.
        c.exec_drop(
            format!("UPDATE {FILES} SET content = ?, upload_time = upload_time WHERE file_id = ?"),
            (b"fresh, again".to_vec(), ids["fresh.jpg"]),
        )
        .await
        .unwrap();
    });
    ctx.wait();
    sizes("wysiwyg", &[("old.jpg", 19), ("fresh.jpg", 12)]);
    assert_eq!(
        fs::read(m.path("wysiwyg/old.jpg")).unwrap(),
        b"the new old version"
    );
    assert_eq!(
        fs::read(m.path("wysiwyg/fresh.jpg")).unwrap(),
        b"fresh, again"
    );

    // The residual case: content changed under an old, settled entry with
    // the upload_time kept, in a directory whose other rows are all known.
    // Listings show the entry until a stat or open of that file after the
    // TTL reads the blob, which corrects the entry.
    sql(&ctx, async |c| {
        c.exec_drop(
            format!("UPDATE {FILES} SET content = ? WHERE file_id = ?"),
            (b"kept time, new bytes".to_vec(), ids["kept.jpg"]),
        )
        .await
        .unwrap();
    });
    ctx.wait();
    sizes("archive", &[("kept.jpg", 9)]);
    ctx.wait();
    assert_eq!(
        fs::read(m.path("archive/kept.jpg")).unwrap(),
        b"kept time, new bytes"
    );
    ctx.wait();
    sizes("archive", &[("kept.jpg", 20)]);
    let other = ctx.mount();
    assert_eq!(ls_l(&other.path("archive"))["kept.jpg"], 20);
}

#[test]
fn without_the_create_privilege_listings_hash_and_the_log_says_why() {
    let ctx = mysql("side_denied");
    let db = db_of(&ctx);
    // Made by the test's own store (whose user may): not there to begin with.
    sql(&ctx, async |c| {
        c.query_drop(format!("DROP TABLE {META}")).await.unwrap()
    });
    let user = "restricted";
    root_sql(&format!(
        "DROP USER IF EXISTS '{user}'@'127.0.0.1'; \
         CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON `{db}`.{FILES} TO '{user}'@'127.0.0.1'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON `{db}`.{DIRS} TO '{user}'@'127.0.0.1';"
    ));
    let ids = sql(&ctx, async |c| {
        magento_bulk(c, "media", &bulk_files(20), "2024-01-02 03:04:05").await
    });
    let url = format!("mysql://{user}@127.0.0.1:{}/{db}", server().port);
    let spec = || {
        MountSpec::new(url.clone())
            .env("MEDIAFS_MYSQL_PASSWORD", PASSWORD)
            .ttl(common::suite::TTL)
    };
    let m = spec().mount();
    let want: std::collections::BTreeMap<String, u64> = bulk_files(20)
        .into_iter()
        .map(|(n, d)| (n, d.len() as u64))
        .collect();
    assert_eq!(ls_l(&m.path("media")), want);
    fs::write(m.path("media/written.jpg"), b"through the mount").unwrap();
    // As before the side table: a rewrite with the same upload_time shows
    // in the next listing.
    sql(&ctx, async |c| {
        c.exec_drop(
            format!("UPDATE {FILES} SET content = ? WHERE file_id = ?"),
            (b"x".to_vec(), ids["img-0005.jpg"]),
        )
        .await
        .unwrap();
    });
    ctx.wait();
    let listed = ls_l(&m.path("media"));
    assert_eq!(listed["img-0005.jpg"], 1);
    assert_eq!(listed["written.jpg"], 17);
    let log = m.unmount();
    let warning = log
        .lines()
        .find(|l| l.contains("side table") && l.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(warning.contains(META), "{warning}");
    assert!(warning.contains("CREATE"), "{warning}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("side table") && l.contains("WARN"))
            .count(),
        1,
        "one warning: {log}"
    );
    let exists: Option<String> = sql(&ctx, async |c| {
        c.query_first(format!("SHOW TABLES LIKE '{META}'"))
            .await
            .unwrap()
    });
    assert_eq!(exists, None, "nothing was created");

    // The grant the warning names (CREATE on just that table, before it
    // exists): the next mount makes the table and uses it, without a warning.
    root_sql(&format!(
        "GRANT CREATE, SELECT, INSERT, UPDATE, DELETE ON `{db}`.{META} TO '{user}'@'127.0.0.1';"
    ));
    let m = spec().mount();
    let listed = ls_l(&m.path("media"));
    assert_eq!(listed["img-0005.jpg"], 1);
    assert_eq!(listed.len(), 21);
    entries_when(&ctx, |e| e.len() == 21);
    let log = m.unmount();
    assert!(
        !log.lines()
            .any(|l| l.contains("side table") && l.contains("WARN")),
        "{log}"
    );
}
