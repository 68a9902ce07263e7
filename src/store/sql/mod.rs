//! Magento's database media storage: files as rows of
//! `media_storage_file_storage` (blob in `content`), directories as rows of
//! `media_storage_directory_storage`, in MySQL or MariaDB, read and written the
//! way Magento itself does so that both can share the tables.
//!
//! - Reads run in a read-only transaction with a consistent snapshot and fetch
//!   the blob in `SUBSTRING` chunks of 4 MiB: a reader never mixes two versions
//!   and never holds a large blob whole in memory.
//! - Every change runs in one transaction (a rename of a directory tree
//!   included), so no other host sees half of it. Deadlocks are retried.
//! - The version of a file is its `upload_time`, length and MD5 (see
//!   SEMANTICS.md). Listings take length and MD5 from mediafs's side table
//!   (`side.rs`) instead of reading every blob; a single file's are always
//!   computed from its blob.
//!
//! Driver: `mysql_async` (see ARCHITECTURE.md for why).

pub mod config;
mod error;
mod query;
mod side;

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{
    IsolationLevel, OptsBuilder, Pool, PoolConstraints, PoolOpts, Transaction, TxOpts, Value,
};

use config::{MAX_DIR_CHARS, check_key, split_key};
pub use config::{MysqlUrl, Tables};
use error::{Res, db_error, too_large};
use query::{DirRow, MetaRow, clash_check, eq_id, marks, object_meta};
use side::Side;

use super::{
    Attrs, DirMeta, GetResult, ListPage, Node, ObjectMeta, Store, StoreError, StoreResult, join_key,
};

/// Bytes fetched per `SUBSTRING` of a blob.
const CHUNK: u64 = 4 << 20;
/// Entries per listing page.
const PAGE: usize = 1000;
/// Room for the statement around a blob within max_allowed_packet.
const PACKET_OVERHEAD: u64 = 4096;
/// How long getting a connection may take (the driver has no such limit).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqlStore {
    pool: Pool,
    t: Tables,
    describe: String,
    side: Arc<Side>,
}

/// Everything needed to connect.
pub struct SqlConfig {
    pub url: MysqlUrl,
    pub password: Option<String>,
    pub tables: Tables,
}

impl SqlStore {
    /// Connect and check that both tables answer, so a bad URL, password or
    /// table name fails the mount with a clear message.
    pub async fn open(cfg: SqlConfig) -> Result<Self, String> {
        let url = &cfg.url;
        let mut opts = OptsBuilder::default()
            .user(Some(&url.user))
            .pass(cfg.password.as_deref())
            .db_name(Some(&url.database))
            .ip_or_hostname(&url.host)
            .tcp_port(url.port)
            .prefer_socket(false)
            .setup(vec![
                // UNIX_TIMESTAMP and NOW() in UTC whatever the server's zone.
                "SET time_zone = '+00:00'",
                // A value too long for its column is an error, never cut short.
                "SET SESSION sql_mode = TRIM(BOTH ',' FROM CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES'))",
                // A row locked by another host holds us 10 s at most (then
                // the transaction is retried, then EIO), not InnoDB's 50 s.
                "SET SESSION innodb_lock_wait_timeout = 10",
            ])
            // Notice a dead server or network under an idle pooled connection.
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(PoolConstraints::new(0, 16).expect("0 <= 16"))
                    // Transactions are always ended by us (or rolled back by the
                    // pool); keep the per-connection statement cache.
                    .with_reset_connection(false),
            );
        if let Some(sock) = &url.socket {
            opts = opts.socket(Some(sock.to_string_lossy()));
        }
        let pool = Pool::new(opts);
        let describe = format!(
            "MySQL media tables {} in {}",
            cfg.tables.files,
            url.display()
        );
        let store = SqlStore {
            pool,
            t: cfg.tables,
            describe,
            side: Arc::new(Side::default()),
        };
        let check = async {
            let mut conn = store.pool.get_conn().await?;
            for table in [&store.t.dirs, &store.t.files] {
                conn.query_drop(format!("SELECT 1 FROM {table} LIMIT 0"))
                    .await?;
            }
            let packet: Option<u64> = conn.query_first("SELECT @@max_allowed_packet").await?;
            (store.side)
                .setup(&store.t, &mut conn, &url.database, &url.user)
                .await;
            Ok::<_, mysql_async::Error>(packet.unwrap_or(0))
        };
        let packet = match tokio::time::timeout(CONNECT_TIMEOUT, check).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(format!("{}: {}", url.display(), db_error(e, "connecting")));
            }
            Err(_) => {
                return Err(format!(
                    "{}: no answer within {} s",
                    url.display(),
                    CONNECT_TIMEOUT.as_secs()
                ));
            }
        };
        tracing::info!(store = %store.describe, max_allowed_packet = packet, "connected");
        store.sweep_side_table();
        Ok(store)
    }

    pub fn tables(&self) -> &Tables {
        &self.t
    }

    /// In the background: drop the side table's entries of rows that are
    /// gone (Magento deletes rows, and a directory's delete cascades to its
    /// files, without knowing of the side table).
    fn sweep_side_table(&self) {
        if !self.side.on() {
            return;
        }
        let (pool, t, side) = (self.pool.clone(), self.t.clone(), self.side.clone());
        tokio::spawn(async move {
            let swept = async {
                let mut c = pool.get_conn().await?;
                side.sweep(&t, &mut c).await
            };
            match swept.await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(table = %t.meta, entries = n, "dropped entries of deleted rows")
                }
                Err(e) => {
                    tracing::debug!(table = %t.meta, error = %e.into_store("side table sweep"), "side table not swept")
                }
            }
        });
    }

    async fn conn(&self, what: &str) -> StoreResult<mysql_async::Conn> {
        bounded(what, self.pool.get_conn()).await
    }

    async fn begin(&self, what: &str, opts: TxOpts) -> StoreResult<Transaction<'static>> {
        bounded(what, self.pool.start_transaction(opts)).await
    }

    /// Run `f` in a read-write transaction and commit; a deadlock or lock
    /// timeout runs it again (up to 3 times). `f` gets the transaction and
    /// hands it back with its result; on an error it is dropped, which rolls
    /// it back.
    async fn write_tx<T, F, Fut>(&self, what: &str, mut f: F) -> StoreResult<T>
    where
        F: FnMut(Transaction<'static>) -> Fut + Send,
        Fut: Future<Output = Res<(Transaction<'static>, T)>> + Send,
        T: Send,
    {
        let mut attempt = 0;
        loop {
            let mut opts = TxOpts::new();
            opts.with_isolation_level(IsolationLevel::RepeatableRead);
            let tx = self.begin(what, opts).await?;
            match f(tx).await {
                Ok((tx, v)) => {
                    tx.commit().await.map_err(|e| db_error(e, what))?;
                    return Ok(v);
                }
                Err(e) if e.retryable() && attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(key = %what, attempt, "transaction conflict; running it again");
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => return Err(e.into_store(what)),
            }
        }
    }

    async fn read<T, F, Fut>(&self, what: &str, f: F) -> StoreResult<T>
    where
        F: FnOnce(mysql_async::Conn) -> Fut + Send,
        Fut: Future<Output = Res<T>> + Send,
    {
        let conn = self.conn(what).await?;
        f(conn).await.map_err(|e| e.into_store(what))
    }

    async fn list_level(&self, dir: &str, token: Option<String>) -> StoreResult<ListPage> {
        let t = &self.t;
        self.read(dir, |mut c| async move {
            let mut page = ListPage::default();
            let Some(dir_id) = t.dir_id(&mut c, dir, false).await? else {
                return Ok(page);
            };
            let (files_after, dirs_after) = match token.as_deref() {
                None => (Some(None), None),
                Some(tok) => match tok.split_once('/') {
                    Some(("f", name)) => (Some(Some(name.to_string())), None),
                    Some(("d", name)) => (None, Some(name.to_string())),
                    _ => return Err(StoreError::Other(format!("bad page token {tok:?}")).into()),
                },
            };
            let mut hashed = Vec::new();
            if let Some(after) = files_after {
                let listed = self
                    .files_with_meta(&mut c, dir_id, after.as_deref(), Some(PAGE), &mut hashed)
                    .await?;
                for (name, row) in listed.files {
                    page.files.push(object_meta(&join_key(dir, &name), &row));
                }
                // A full page says "ask again" (the next may be empty).
                if listed.seen == PAGE
                    && let Some(last) = listed.last
                {
                    page.next = Some(format!("f/{last}"));
                    self.record_later(c, hashed);
                    return Ok(page);
                }
            }
            let mut params = Vec::new();
            let cond = eq_id("parent_id", dir_id, &mut params);
            let sql = format!(
                "SELECT directory_id, name, UNIX_TIMESTAMP(upload_time) FROM {} WHERE {cond}",
                t.dirs
            );
            let sql = page_of(sql, "name", dirs_after, &mut params);
            let rows: Vec<(u32, String, Option<i64>)> = c.exec(sql, params).await?;
            let full = rows.len() > PAGE;
            for (id, name, time) in rows.into_iter().take(PAGE) {
                let row = DirRow {
                    id,
                    path: dir.to_string(),
                    name,
                    time: time.unwrap_or(0),
                };
                page.dirs.push(row.meta());
            }
            if full {
                let last = &page.dirs[PAGE - 1].key;
                page.next = Some(format!("d/{}", split_key(last).1));
            }
            self.record_later(c, hashed);
            Ok(page)
        })
        .await
    }

    /// Every file below `dir`, walking directory rows by `parent_id`.
    async fn list_tree(&self, dir: &str) -> StoreResult<ListPage> {
        let t = &self.t;
        self.read(dir, |mut c| async move {
            let mut page = ListPage::default();
            let Some(dir_id) = t.dir_id(&mut c, dir, false).await? else {
                return Ok(page);
            };
            let mut dirs: Vec<(Option<u32>, String)> = vec![(dir_id, dir.to_string())];
            for d in t.subdirs(&mut c, dir_id).await? {
                dirs.push((Some(d.id), rebase_row(&d, dir)));
            }
            let mut hashed = Vec::new();
            for (id, key) in dirs {
                for (name, row) in self
                    .files_with_meta(&mut c, id, None, None, &mut hashed)
                    .await?
                    .files
                {
                    page.files.push(object_meta(&join_key(&key, &name), &row));
                }
            }
            self.record_later(c, hashed);
            page.files.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(page)
        })
        .await
    }
}

/// The key of a directory row below `dir`, by the path asked for (the row's
/// own `path` may differ in case under a case-insensitive collation).
fn rebase_row(d: &DirRow, dir: &str) -> String {
    let key = d.key();
    let n = dir.chars().count();
    let rest: String = key.chars().skip(n).collect();
    format!("{dir}{rest}")
}

/// Keyset paging: `sql` narrowed to names after `after`, in name order, one
/// page and one more row (which tells whether another page follows).
fn page_of(mut sql: String, col: &str, after: Option<String>, params: &mut Vec<Value>) -> String {
    if let Some(name) = after {
        sql.push_str(&format!(" AND {col} > ?"));
        params.push(name.into());
    }
    sql.push_str(&format!(" ORDER BY {col} LIMIT {}", PAGE + 1));
    sql
}

/// A connection (or a transaction on one) within CONNECT_TIMEOUT: the driver
/// has no connect timeout of its own, and an unreachable server must fail
/// fast (EIO), never hang a request.
async fn bounded<T>(
    what: &str,
    fut: impl Future<Output = Result<T, mysql_async::Error>>,
) -> StoreResult<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| db_error(e, what)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what}: no connection to the database within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

fn root() -> DirMeta {
    DirMeta {
        key: String::new(),
        modified: None,
        attrs: Attrs::default(),
    }
}

#[async_trait]
impl Store for SqlStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn check_key(&self, key: &str) -> StoreResult<()> {
        check_key(key)
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        if key.is_empty() || check_key(key).is_err() {
            return Ok(None);
        }
        self.read(key, |mut c| async move {
            Ok(match self.file_checked(&mut c, key).await? {
                Some((_, row, pending)) => {
                    self.record_later(c, pending.into_iter().collect());
                    Some(object_meta(key, &row))
                }
                None => None,
            })
        })
        .await
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        if key.is_empty() {
            return Ok(Some(Node::Dir(root())));
        }
        if check_key(key).is_err() {
            return Ok(None);
        }
        let t = &self.t;
        self.read(key, |mut c| async move {
            if let Some((_, row, pending)) = self.file_checked(&mut c, key).await? {
                self.record_later(c, pending.into_iter().collect());
                return Ok(Some(Node::File(object_meta(key, &row))));
            }
            Ok(t.dir(&mut c, key, false)
                .await?
                .map(|d| Node::Dir(d.meta())))
        })
        .await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_none_match: Option<&str>,
    ) -> StoreResult<GetResult> {
        check_key(key).map_err(|_| StoreError::NotFound)?;
        let mut opts = TxOpts::new();
        opts.with_isolation_level(IsolationLevel::RepeatableRead)
            .with_consistent_snapshot(true)
            .with_readonly(true);
        let mut tx = self.begin(key, opts).await?;
        let (id, row) = self
            .t
            .file(&mut tx, key)
            .await
            .map_err(|e| e.into_store(key))?
            .ok_or(StoreError::NotFound)?;
        let meta = object_meta(key, &row);
        if if_none_match == Some(meta.version.as_str()) {
            tx.commit().await.map_err(|e| db_error(e, key))?;
            return Ok(GetResult::NotModified);
        }
        let (start, end) = match range {
            Some(r) => (r.start.min(meta.size), r.end.min(meta.size)),
            None => (0, meta.size),
        };
        let sql = format!(
            "SELECT SUBSTRING(content, ?, ?) FROM {} WHERE file_id = ?",
            self.t.files
        );
        let owned_key = key.to_string();
        // One chunk per poll, all inside the snapshot: a rewrite of the row
        // by anyone meanwhile is invisible here. Dropping the stream early
        // drops the transaction, which the pool rolls back.
        let body = futures::stream::unfold(Some((tx, start)), move |state| {
            let (sql, key) = (sql.clone(), owned_key.clone());
            async move {
                let (mut tx, pos) = state?;
                if pos >= end {
                    return match tx.commit().await {
                        Ok(()) => None,
                        Err(e) => Some((Err(db_error(e, &key)), None)),
                    };
                }
                let len = CHUNK.min(end - pos);
                let chunk: Result<Option<Vec<u8>>, _> =
                    tx.exec_first(sql, (pos + 1, len, id)).await;
                match chunk {
                    Ok(Some(bytes)) if bytes.len() as u64 == len => {
                        Some((Ok(Bytes::from(bytes)), Some((tx, pos + len))))
                    }
                    Ok(_) => Some((
                        Err(StoreError::Other(format!(
                            "{key}: the blob ended early at byte {pos}"
                        ))),
                        None,
                    )),
                    Err(e) => Some((Err(db_error(e, &key)), None)),
                }
            }
        })
        .boxed();
        Ok(GetResult::Body { meta, body })
    }

    async fn put(&self, key: &str, src: &Path, _attrs: &Attrs) -> StoreResult<ObjectMeta> {
        check_key(key)?;
        if key.is_empty() {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        let size = tokio::fs::metadata(src)
            .await
            .map_err(|e| StoreError::from_io(e, &src.display().to_string()))?
            .len();
        let t = &self.t;
        let files = &self.t.files;
        self.write_tx(key, |mut tx| async move {
            let limit: u64 = tx
                .query_first("SELECT @@SESSION.max_allowed_packet")
                .await?
                .unwrap_or(u64::MAX);
            if size + PACKET_OVERHEAD > limit {
                let e = too_large(key, size, limit);
                tracing::error!(key = %key, size, max_allowed_packet = limit, "{e}");
                return Err(e.into());
            }
            let target = t.target(&mut tx, key, None).await?;
            // Read only now: one copy of the file in memory, per attempt.
            let data = tokio::fs::read(src)
                .await
                .map_err(|e| StoreError::from_io(e, &src.display().to_string()))?;
            match target.existing {
                Some(id) => {
                    let sql = format!(
                        "UPDATE {files} SET content = ?, upload_time = NOW() WHERE file_id = ?"
                    );
                    tx.exec_drop(sql, (data, id)).await?;
                }
                None => {
                    // Magento's own statement (insertOnDuplicate).
                    let sql = format!(
                        "INSERT INTO {files} (content, upload_time, filename, directory_id, directory) \
                         VALUES (?, NOW(), ?, ?, ?) \
                         ON DUPLICATE KEY UPDATE content = VALUES(content), upload_time = VALUES(upload_time)"
                    );
                    tx.exec_drop(sql, (data, &target.name, target.dir_id, &target.dir))
                        .await?;
                }
            }
            let row = self.written(&mut tx, key).await?;
            Ok((tx, object_meta(key, &row)))
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        if key.is_empty() || check_key(key).is_err() {
            return Ok(());
        }
        let t = &self.t;
        self.write_tx(key, |mut tx| async move {
            let (dir, name) = split_key(key);
            let Some(dir_id) = t.dir_id(&mut tx, dir, false).await? else {
                return Ok((tx, ()));
            };
            let rows = t.files_like(&mut tx, dir_id, name, true).await?;
            if let Some((id, _)) = rows.iter().find(|r| r.1 == name) {
                let sql = format!("DELETE FROM {} WHERE file_id = ?", t.files);
                tx.exec_drop(sql, (*id,)).await?;
                self.side.forget(t, &mut tx, *id).await?;
            }
            Ok((tx, ()))
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage> {
        let dir = prefix.strip_suffix('/').unwrap_or(prefix);
        if !dir.is_empty() && check_key(dir).is_err() {
            return Ok(ListPage::default());
        }
        if delimiter {
            self.list_level(dir, token).await
        } else {
            self.list_tree(dir).await
        }
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        check_key(to)?;
        let t = &self.t;
        self.write_tx(to, |mut tx| async move {
            let (src, _) = t.file(&mut tx, from).await?.ok_or(StoreError::NotFound)?;
            let target = t.target(&mut tx, to, None).await?;
            if target.existing == Some(src) {
                let row = t.file_meta(&mut tx, src).await?;
                return Ok((tx, object_meta(to, &row)));
            }
            if let Some(old) = target.existing {
                let sql = format!("DELETE FROM {} WHERE file_id = ?", t.files);
                tx.exec_drop(sql, (old,)).await?;
                self.side.forget(t, &mut tx, old).await?;
            }
            let sql = format!(
                "INSERT INTO {f} (content, upload_time, filename, directory_id, directory) \
                 SELECT content, NOW(), ?, ?, ? FROM {f} WHERE file_id = ?",
                f = t.files
            );
            tx.exec_drop(sql, (&target.name, target.dir_id, &target.dir, src))
                .await?;
            let row = self.written(&mut tx, to).await?;
            Ok((tx, object_meta(to, &row)))
        })
        .await
    }

    async fn create_dir(&self, key: &str, _attrs: &Attrs) -> StoreResult<()> {
        check_key(key)?;
        if key.chars().count() > MAX_DIR_CHARS {
            return Err(StoreError::NameTooLong(format!(
                "{key}: a directory path in the media tables holds at most {MAX_DIR_CHARS} characters"
            )));
        }
        let t = &self.t;
        self.write_tx(key, |mut tx| async move {
            let (parent, name) = split_key(key);
            let parent_id = t.ensure_dirs(&mut tx, parent).await?;
            let rows = t.dirs_like(&mut tx, key, true).await?;
            if rows.iter().any(|d| d.key() == key) {
                return Err(StoreError::AlreadyExists.into());
            }
            if !t
                .files_like(&mut tx, parent_id, name, true)
                .await?
                .is_empty()
            {
                return Err(StoreError::AlreadyExists.into());
            }
            // A row that matches only under the collation: a clash (EEXIST).
            clash_check(key, rows.iter().map(|d| d.key()))?;
            t.insert_dir(&mut tx, key, parent_id).await?;
            Ok((tx, ()))
        })
        .await
    }

    async fn remove_dir(&self, key: &str) -> StoreResult<()> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        let t = &self.t;
        self.write_tx(key, |mut tx| async move {
            let dir = t
                .dir(&mut tx, key, true)
                .await?
                .ok_or(StoreError::NotFound)?;
            if has_children(t, &mut tx, dir.id).await? {
                return Err(StoreError::NotEmpty.into());
            }
            let sql = format!("DELETE FROM {} WHERE directory_id = ?", t.dirs);
            tx.exec_drop(sql, (dir.id,)).await?;
            Ok((tx, ()))
        })
        .await
    }

    async fn set_attrs(&self, key: &str, _attrs: &Attrs) -> StoreResult<Option<ObjectMeta>> {
        // The tables have no place for mode, owner or mtime: accepted, not kept.
        self.head(key).await
    }

    async fn rename(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        check_key(to)?;
        let t = &self.t;
        self.write_tx(to, |mut tx| async move {
            let (dir, name) = split_key(from);
            let dir_id = t
                .dir_id(&mut tx, dir, false)
                .await?
                .ok_or(StoreError::NotFound)?;
            let src = t
                .files_like(&mut tx, dir_id, name, true)
                .await?
                .into_iter()
                .find(|r| r.1 == name)
                .ok_or(StoreError::NotFound)?
                .0;
            let target = t.target(&mut tx, to, Some(src)).await?;
            if let Some(old) = target.existing {
                let sql = format!("DELETE FROM {} WHERE file_id = ?", t.files);
                tx.exec_drop(sql, (old,)).await?;
                self.side.forget(t, &mut tx, old).await?;
            }
            // Magento's rename: a new filename and directory, same row.
            let sql = format!(
                "UPDATE {} SET filename = ?, directory_id = ?, directory = ? WHERE file_id = ?",
                t.files
            );
            tx.exec_drop(sql, (&target.name, target.dir_id, &target.dir, src))
                .await?;
            let row: MetaRow = t.file_meta(&mut tx, src).await?;
            Ok((tx, object_meta(to, &row)))
        })
        .await
    }

    async fn rename_dir(&self, from: &str, to: &str) -> StoreResult<()> {
        check_key(to)?;
        let t = &self.t;
        self.write_tx(to, |mut tx| async move {
            let src = t
                .dir(&mut tx, from, true)
                .await?
                .ok_or(StoreError::NotFound)?;
            let (parent, name) = split_key(to);
            let parent_id = t.ensure_dirs(&mut tx, parent).await?;
            for other in t.dirs_like(&mut tx, to, true).await? {
                if other.id == src.id {
                    continue;
                }
                if other.key() != to {
                    clash_check(to, std::iter::once(other.key()))?;
                }
                if has_children(t, &mut tx, other.id).await? {
                    return Err(StoreError::NotEmpty.into());
                }
                let sql = format!("DELETE FROM {} WHERE directory_id = ?", t.dirs);
                tx.exec_drop(sql, (other.id,)).await?;
            }
            let subdirs = t.subdirs(&mut tx, Some(src.id)).await?;
            let sql = format!(
                "UPDATE {} SET name = ?, path = ?, parent_id = ? WHERE directory_id = ?",
                t.dirs
            );
            tx.exec_drop(sql, (name, parent, parent_id, src.id)).await?;
            // Below it, only the leading `from` of each path changes.
            let skip = from.chars().count() as u64 + 1;
            let below: Vec<u32> = subdirs.iter().map(|d| d.id).collect();
            let mut all = below.clone();
            all.push(src.id);
            // Directory rows below keep their parent_id; their `path` and the
            // `directory` of every file in the tree get the new prefix.
            for (table, col, ids) in [(&t.dirs, "path", &below), (&t.files, "directory", &all)] {
                for chunk in ids.chunks(500) {
                    let sql = format!(
                        "UPDATE {table} SET {col} = CONCAT(?, SUBSTRING({col}, ?)) \
                         WHERE directory_id IN ({})",
                        marks(chunk.len())
                    );
                    tx.exec_drop(sql, params_with(to, skip, chunk)).await?;
                }
            }
            Ok((tx, ()))
        })
        .await
    }
}

fn params_with(prefix: &str, skip: u64, ids: &[u32]) -> Vec<Value> {
    let mut p: Vec<Value> = vec![prefix.into(), skip.into()];
    p.extend(ids.iter().map(|id| Value::from(*id)));
    p
}

async fn has_children(t: &Tables, tx: &mut Transaction<'static>, id: u32) -> Res<bool> {
    let sql = format!(
        "SELECT 1 FROM {} WHERE directory_id = ? LIMIT 1 FOR UPDATE",
        t.files
    );
    let file: Option<u8> = tx.exec_first(sql, (id,)).await?;
    let sql = format!(
        "SELECT 1 FROM {} WHERE parent_id = ? LIMIT 1 FOR UPDATE",
        t.dirs
    );
    let dir: Option<u8> = tx.exec_first(sql, (id,)).await?;
    Ok(file.is_some() || dir.is_some())
}
