//! mediafs's own side table beside Magento's: the size and MD5 of each file
//! row, so that a directory listing needs neither `LENGTH(content)` nor
//! `MD5(content)`, which make the server read every blob listed.
//!
//! `mediafs_file_meta` (after the table prefix; `mediafs_core_file_meta` for
//! Magento 1's tables) is created at mount if missing. Each entry says what
//! `LENGTH`/`MD5` gave for the row `file_id` while its `upload_time` was
//! `upload_time`, first at `first_hashed` and last at `last_hashed` (the
//! server's clock). It is a cache: emptying it costs one re-read of each blob.
//!
//! A listing uses an entry only if it is *settled*: same `upload_time` as the
//! row, and confirmed at least `SETTLE_SECS` after the row's `upload_time` or
//! after it was first found. The names without a settled entry are hashed
//! again (one query per `BATCH`, by name, so a row replaced meanwhile is seen
//! as the new one), and their entries written once the listing is answered:
//! a row's blob is read again only when its `upload_time` changes, or while
//! it is new. Why that is enough, and what is left, is in SEMANTICS.md
//! ("Magento's media tables").
//!
//! A single file's metadata (`head`, `stat`, a write's result, and what `get`
//! serves) is always computed from the blob itself; all but `get` (a
//! read-only snapshot) correct the entry if it is missing or differs. mediafs's own writes record the entry in
//! their transaction, its deletes remove it; entries of rows deleted by
//! others are swept at mount.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};

use super::SqlStore;
use super::config::{Tables, split_key};
use super::error::{
    ER_BAD_FIELD, ER_COLUMNACCESS_DENIED, ER_DBACCESS_DENIED, ER_LOCK_DEADLOCK,
    ER_LOCK_WAIT_TIMEOUT, ER_NO_SUCH_TABLE, ER_READ_ONLY, ER_READ_ONLY_TX, ER_TABLEACCESS_DENIED,
    Fail, Res,
};
use super::query::{MetaRow, eq_id, marks};
use crate::store::StoreError;

/// How long after a row's `upload_time`, or after its entry was first made,
/// an entry must have been confirmed before listings trust it: longer than
/// any writer's delay between stamping `upload_time` and committing (InnoDB's
/// default lock wait is 50 s) plus the skew of its clock.
pub const SETTLE_SECS: i64 = 60;

/// Rows hashed or entries written per statement.
const BATCH: usize = 1000;

/// "The entry is settled", over the side table as `m`; binds `SETTLE_SECS` twice.
const SETTLED: &str = "(m.last_hashed >= m.upload_time + ? OR m.last_hashed >= m.first_hashed + ?)";

pub fn create_statement(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n  \
         `file_id` int unsigned NOT NULL COMMENT 'file_id of the file row',\n  \
         `upload_time` bigint NOT NULL COMMENT 'UNIX_TIMESTAMP(upload_time) of the row hashed',\n  \
         `size` bigint unsigned NOT NULL COMMENT 'LENGTH(content)',\n  \
         `md5` char(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL COMMENT 'MD5(content)',\n  \
         `first_hashed` bigint NOT NULL COMMENT 'UNIX_TIMESTAMP() when these values were first found',\n  \
         `last_hashed` bigint NOT NULL COMMENT 'UNIX_TIMESTAMP() when they were last confirmed',\n  \
         PRIMARY KEY (`file_id`)\n\
         ) ENGINE=InnoDB COMMENT='mediafs: size and MD5 of file rows for listings; a cache, safe to empty'"
    )
}

/// What the side table says of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub upload_time: i64,
    pub size: u64,
    pub md5: String,
    pub first_hashed: i64,
    pub last_hashed: i64,
}

impl Entry {
    fn matches(&self, row: &MetaRow) -> bool {
        self.upload_time == row.0 && self.size == row.1 && self.md5 == row.2
    }
}

/// Files of a directory as listed: name and metadata, in name order, and
/// how many rows the query gave and the last one's name (a file deleted
/// while its blob was being hashed is left out of `files`, but still counts
/// for paging).
#[derive(Debug, Default)]
pub struct Listed {
    pub files: Vec<(String, MetaRow)>,
    pub seen: usize,
    pub last: Option<String>,
}

/// A row's metadata as just computed from its blob, at `at` (server time).
#[derive(Debug, Clone)]
pub struct Hashed {
    pub id: u32,
    pub meta: MetaRow,
    pub at: i64,
}

/// Whether the side table is in use.
#[derive(Debug, Default)]
pub struct Side {
    on: AtomicBool,
}

impl Side {
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Make the table exist (if we may) and check that it has our columns.
    /// `false`, after one warning naming the table and the privilege, if
    /// it cannot be used: listings then hash every blob, as before.
    pub async fn setup<Q: Queryable>(
        &self,
        t: &Tables,
        q: &mut Q,
        database: &str,
        user: &str,
    ) -> bool {
        let probe = format!(
            "SELECT file_id, upload_time, size, md5, first_hashed, last_hashed FROM {} LIMIT 0",
            t.meta
        );
        let first = q.query_drop(&probe).await;
        let err = match first {
            Ok(()) => {
                self.on.store(true, Ordering::Relaxed);
                return true;
            }
            // A table of that name with other columns: not ours to change.
            Err(mysql_async::Error::Server(e)) if e.code == ER_BAD_FIELD => {
                tracing::warn!(
                    table = %t.meta,
                    error = %e.message,
                    "the side table exists with other columns than mediafs needs; not using \
                     it, so directory listings read and hash every file's content (LENGTH \
                     and MD5). It only holds a cache: drop it and mediafs makes it again at \
                     the next mount"
                );
                return false;
            }
            // Missing, or not visible to us (MySQL says "denied" for a table
            // we have no privilege on, whether it exists or not): make it.
            Err(_) => match q.query_drop(create_statement(&t.meta)).await {
                Ok(()) => match q.query_drop(&probe).await {
                    Ok(()) => {
                        tracing::info!(table = %t.meta, "side table of file sizes and MD5s ready");
                        self.on.store(true, Ordering::Relaxed);
                        return true;
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            },
        };
        let denied = matches!(&err, mysql_async::Error::Server(e)
            if matches!(e.code, ER_TABLEACCESS_DENIED | ER_DBACCESS_DENIED | ER_COLUMNACCESS_DENIED));
        let table = t.meta.trim_matches('`');
        if denied {
            tracing::warn!(
                table = %table,
                error = %err,
                "cannot create or read mediafs's side table `{database}`.`{table}`: the \
                 database user needs the CREATE privilege for it once, and SELECT, INSERT, \
                 UPDATE, DELETE on it (GRANT CREATE, SELECT, INSERT, UPDATE, DELETE ON \
                 `{database}`.`{table}` TO '{user}'@…). Without it every directory listing reads and \
                 hashes the content of every file listed (LENGTH and MD5), which is slow for \
                 large directories. Magento's tables are not affected"
            );
        } else {
            tracing::warn!(
                table = %table,
                error = %err,
                "cannot use mediafs's side table `{database}`.`{table}`; every directory \
                 listing reads and hashes the content of every file listed (LENGTH and MD5)"
            );
        }
        false
    }

    /// A write to the side table failed. A retryable error (deadlock, lock
    /// wait) is handed back, for a writing transaction to run again; anything
    /// else is logged, and one that says we may not write (privilege, a
    /// read-only server) turns the side table off: entries we cannot correct
    /// must not be trusted.
    fn write_failed(&self, t: &Tables, e: mysql_async::Error) -> Res<()> {
        let code = match &e {
            mysql_async::Error::Server(s) => Some(s.code),
            _ => None,
        };
        if matches!(code, Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT)) {
            return Err(Fail::Db(e));
        }
        let off = matches!(
            code,
            Some(
                ER_TABLEACCESS_DENIED
                    | ER_DBACCESS_DENIED
                    | ER_COLUMNACCESS_DENIED
                    | ER_READ_ONLY
                    | ER_READ_ONLY_TX
            )
        );
        if !off {
            tracing::debug!(table = %t.meta, error = %e, "side table not updated");
        } else if self.on.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                table = %t.meta,
                error = %e,
                "cannot write mediafs's side table (it needs SELECT, INSERT, UPDATE, \
                 DELETE); no longer using it: every directory listing now reads and \
                 hashes every file's content (LENGTH and MD5)"
            );
        }
        Ok(())
    }

    /// Record what was just computed for these rows. Errors other than a
    /// retryable one are logged, never returned: the entries are a cache.
    pub async fn record<Q: Queryable>(&self, t: &Tables, q: &mut Q, rows: &[Hashed]) -> Res<()> {
        if !self.on() {
            return Ok(());
        }
        let mut rows: Vec<&Hashed> = rows.iter().collect();
        // One order for every writer: concurrent upserts take row locks alike.
        rows.sort_by_key(|r| r.id);
        for chunk in rows.chunks(BATCH) {
            // Assignments see the columns as already assigned, so
            // `last_hashed` goes last and `first_hashed` first (kept if the
            // values are unchanged). An observation older than the entry's
            // (a write that waited) changes nothing.
            let sql = format!(
                "INSERT INTO {} (file_id, upload_time, size, md5, first_hashed, last_hashed) \
                 VALUES {} ON DUPLICATE KEY UPDATE \
                 first_hashed = IF(VALUES(last_hashed) < last_hashed OR \
                 (upload_time = VALUES(upload_time) AND size = VALUES(size) AND md5 = VALUES(md5)), \
                 first_hashed, VALUES(first_hashed)), \
                 upload_time = IF(VALUES(last_hashed) < last_hashed, upload_time, VALUES(upload_time)), \
                 size = IF(VALUES(last_hashed) < last_hashed, size, VALUES(size)), \
                 md5 = IF(VALUES(last_hashed) < last_hashed, md5, VALUES(md5)), \
                 last_hashed = GREATEST(last_hashed, VALUES(last_hashed))",
                t.meta,
                vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
            for r in chunk {
                params.extend([
                    r.id.into(),
                    r.meta.0.into(),
                    r.meta.1.into(),
                    r.meta.2.clone().into(),
                    r.at.into(),
                    r.at.into(),
                ]);
            }
            if let Err(e) = q.exec_drop(sql, params).await {
                return self.write_failed(t, e);
            }
        }
        Ok(())
    }

    /// Drop the entries of rows that are gone (ours: deleted or replaced).
    pub async fn forget<Q: Queryable>(&self, t: &Tables, q: &mut Q, id: u32) -> Res<()> {
        if !self.on() {
            return Ok(());
        }
        let sql = format!("DELETE FROM {} WHERE file_id = ?", t.meta);
        match q.exec_drop(sql, (id,)).await {
            Ok(()) => Ok(()),
            Err(e) => self.write_failed(t, e),
        }
    }

    /// Entries of rows that no longer exist (deleted by Magento, or with
    /// their directory): the side table's ids, then the files table's ids
    /// from a covering scan of one of its secondary indexes (each holds the
    /// primary key), which reads no blob and locks nothing; what is left over
    /// is deleted by id.
    pub async fn sweep<Q: Queryable>(&self, t: &Tables, q: &mut Q) -> Res<u64> {
        if !self.on() {
            return Ok(0);
        }
        let ids: Vec<u32> = q
            .query(format!("SELECT file_id FROM {} ORDER BY file_id", t.meta))
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut live = vec![false; ids.len()];
        let mut rows = q
            .query_iter(format!("SELECT file_id FROM {}", t.files))
            .await?;
        rows.for_each(|row| {
            let id = mysql_async::from_row_opt::<u32>(row).ok();
            if let Some(i) = id.and_then(|id| ids.binary_search(&id).ok()) {
                live[i] = true;
            }
        })
        .await?;
        drop(rows);
        let gone: Vec<u32> = ids
            .iter()
            .zip(&live)
            .filter(|(_, live)| !**live)
            .map(|(id, _)| *id)
            .collect();
        for chunk in gone.chunks(BATCH) {
            let sql = format!(
                "DELETE FROM {} WHERE file_id IN ({})",
                t.meta,
                marks(chunk.len())
            );
            if let Err(e) = q.exec_drop(sql, chunk.to_vec()).await {
                self.write_failed(t, e)?;
                return Ok(0);
            }
        }
        Ok(gone.len() as u64)
    }
}

/// `LENGTH` and `MD5` of the files `names` in the directory `dir_id`, read
/// from their blobs now, by name: a name whose row was replaced since it was
/// listed (a rename over it) gets its new row's; a name gone is left out.
async fn hash_names<Q: Queryable>(
    t: &Tables,
    q: &mut Q,
    dir_id: Option<u32>,
    names: &[&str],
    hashed: &mut Vec<Hashed>,
) -> Res<HashMap<String, MetaRow>> {
    let mut out = HashMap::with_capacity(names.len());
    for chunk in names.chunks(BATCH) {
        let wanted: HashSet<&str> = chunk.iter().copied().collect();
        let mut params: Vec<Value> = Vec::with_capacity(chunk.len() + 1);
        let cond = eq_id("directory_id", dir_id, &mut params);
        params.extend(chunk.iter().map(|n| Value::from(*n)));
        // UNIX_TIMESTAMP() is the statement's start, before its snapshot:
        // the content read is at least as new as `at`.
        let sql = format!(
            "SELECT file_id, filename, UNIX_TIMESTAMP(upload_time), LENGTH(content), \
             MD5(content), UNIX_TIMESTAMP() FROM {} WHERE {cond} AND filename IN ({})",
            t.files,
            marks(chunk.len())
        );
        let rows: Vec<(u32, String, i64, u64, String, i64)> = q.exec(sql, params).await?;
        for (id, name, time, len, md5, at) in rows {
            let meta = (time, len, md5);
            hashed.push(Hashed {
                id,
                meta: meta.clone(),
                at,
            });
            // Under the collation `IN` also matches other spellings.
            if wanted.contains(name.as_str()) {
                out.insert(name, meta);
            }
        }
    }
    Ok(out)
}

/// What makes the side table unusable while mounted: gone, or no longer
/// readable.
fn side_unusable(e: &Fail) -> bool {
    matches!(e, Fail::Db(mysql_async::Error::Server(s))
        if matches!(s.code, ER_NO_SUCH_TABLE | ER_BAD_FIELD | ER_TABLEACCESS_DENIED
            | ER_COLUMNACCESS_DENIED | ER_DBACCESS_DENIED))
}

impl SqlStore {
    /// The side table failed a read with `e`. If it is unusable, it is
    /// turned off (with a warning) and `true` says: ask again without it.
    fn side_failed(&self, e: &Fail) -> bool {
        if !side_unusable(e) {
            return false;
        }
        if self.side.on.swap(false, Ordering::Relaxed) {
            let Fail::Db(err) = e else { unreachable!() };
            tracing::warn!(
                table = %self.t.meta,
                error = %err,
                "mediafs's side table is gone or no longer readable; every directory \
                 listing now reads and hashes every file's content (LENGTH and MD5). \
                 The next mount makes the table again if it may"
            );
        }
        true
    }

    /// The files of directory `dir_id` with their metadata, in name order:
    /// all of them, or up to `limit` after the name `after`. With the side
    /// table, blobs are read only for rows whose entry is missing or not
    /// settled; what they gave is added to `hashed`, for `record_later`.
    pub(super) async fn files_with_meta<Q: Queryable>(
        &self,
        q: &mut Q,
        dir_id: Option<u32>,
        after: Option<&str>,
        limit: Option<usize>,
        hashed: &mut Vec<Hashed>,
    ) -> Res<Listed> {
        let mut params = Vec::new();
        let mut cond = eq_id("f.directory_id", dir_id, &mut params);
        if let Some(name) = after {
            cond.push_str(" AND f.filename > ?");
            params.push(name.into());
        }
        cond.push_str(" ORDER BY f.filename");
        if let Some(n) = limit {
            cond.push_str(&format!(" LIMIT {n}"));
        }
        if self.side.on() {
            match self
                .files_from_side(q, dir_id, &cond, params.clone(), hashed)
                .await
            {
                Err(e) if self.side_failed(&e) => {}
                r => return r,
            }
        }
        self.files_hashed(q, &cond, params, hashed).await
    }

    /// The listing as it was before the side table: every row's blob read
    /// and hashed by the server, in one statement.
    async fn files_hashed<Q: Queryable>(
        &self,
        q: &mut Q,
        cond: &str,
        params: Vec<Value>,
        hashed: &mut Vec<Hashed>,
    ) -> Res<Listed> {
        let sql = format!(
            "SELECT f.file_id, f.filename, UNIX_TIMESTAMP(f.upload_time), LENGTH(f.content), \
             MD5(f.content), UNIX_TIMESTAMP() FROM {} f WHERE {cond}",
            self.t.files
        );
        let rows: Vec<(u32, String, i64, u64, String, i64)> = q.exec(sql, params).await?;
        let mut out = Listed {
            files: Vec::with_capacity(rows.len()),
            seen: rows.len(),
            last: rows.last().map(|r| r.1.clone()),
        };
        let side = self.side.on();
        for (id, name, time, len, md5, at) in rows {
            let meta = (time, len, md5);
            if side {
                let meta = meta.clone();
                hashed.push(Hashed { id, meta, at });
            }
            out.files.push((name, meta));
        }
        Ok(out)
    }

    async fn files_from_side<Q: Queryable>(
        &self,
        q: &mut Q,
        dir_id: Option<u32>,
        cond: &str,
        mut params: Vec<Value>,
        hashed: &mut Vec<Hashed>,
    ) -> Res<Listed> {
        let t = &self.t;
        let plain = params.clone();
        let sql = format!(
            "SELECT f.filename, UNIX_TIMESTAMP(f.upload_time), m.size, m.md5 \
             FROM {} f LEFT JOIN {} m ON m.file_id = f.file_id \
             AND m.upload_time = UNIX_TIMESTAMP(f.upload_time) AND {SETTLED} WHERE {cond}",
            t.files, t.meta
        );
        params.splice(0..0, [SETTLE_SECS.into(), SETTLE_SECS.into()]);
        let rows: Vec<(String, i64, Option<u64>, Option<String>)> = q.exec(sql, params).await?;
        let stale: Vec<&str> = rows
            .iter()
            .filter(|r| r.2.is_none() || r.3.is_none())
            .map(|r| r.0.as_str())
            .collect();
        // Mostly unknown (a directory listed for the first time): one
        // statement that hashes the page costs less than looking each up.
        if stale.len() * 2 > rows.len() {
            return self.files_hashed(q, cond, plain, hashed).await;
        }
        let mut fresh = if stale.is_empty() {
            HashMap::new()
        } else {
            hash_names(t, q, dir_id, &stale, hashed).await?
        };
        let mut out = Listed {
            files: Vec::with_capacity(rows.len()),
            seen: rows.len(),
            last: rows.last().map(|r| r.0.clone()),
        };
        for (name, time, size, md5) in rows {
            match (size, md5) {
                (Some(size), Some(md5)) => out.files.push((name, (time, size, md5))),
                _ => {
                    // None: deleted since the first query, no longer listed.
                    if let Some(meta) = fresh.remove(&name) {
                        out.files.push((name, meta));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The file at exactly `key` and its metadata computed from the blob:
    /// what a single file's `head` or `stat` answers, and a write's result.
    /// If its entry is missing or differs, also what to record (now, in a
    /// writing transaction; else with `record_later`). An entry that is right
    /// but not settled yet is left alone: the listings that need it settled
    /// hash the row again anyway.
    pub(super) async fn file_checked<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
    ) -> Res<Option<(u32, MetaRow, Option<Hashed>)>> {
        if self.side.on() {
            match self.file_from_side(q, key).await {
                Err(e) if self.side_failed(&e) => {}
                r => return r,
            }
        }
        Ok(self
            .t
            .file(q, key)
            .await?
            .map(|(id, meta)| (id, meta, None)))
    }

    async fn file_from_side<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
    ) -> Res<Option<(u32, MetaRow, Option<Hashed>)>> {
        let t = &self.t;
        let (dir, name) = split_key(key);
        let Some(dir_id) = t.dir_id(q, dir, false).await? else {
            return Ok(None);
        };
        let mut params: Vec<Value> = vec![name.into()];
        let cond = eq_id("f.directory_id", dir_id, &mut params);
        let sql = format!(
            "SELECT f.file_id, f.filename, UNIX_TIMESTAMP(f.upload_time), LENGTH(f.content), \
             MD5(f.content), UNIX_TIMESTAMP(), m.upload_time, m.size, m.md5, m.first_hashed, \
             m.last_hashed FROM {} f LEFT JOIN {} m ON m.file_id = f.file_id \
             WHERE f.filename = ? AND {cond}",
            t.files, t.meta
        );
        type Row = (
            u32,
            String,
            i64,
            u64,
            String,
            i64,
            Option<i64>,
            Option<u64>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        let rows: Vec<Row> = q.exec(sql, params).await?;
        let Some(r) = rows.into_iter().find(|r| r.1 == name) else {
            return Ok(None);
        };
        let meta: MetaRow = (r.2, r.3, r.4);
        let entry = match (r.6, r.7, r.8, r.9, r.10) {
            (Some(upload_time), Some(size), Some(md5), Some(first_hashed), Some(last_hashed)) => {
                Some(Entry {
                    upload_time,
                    size,
                    md5,
                    first_hashed,
                    last_hashed,
                })
            }
            _ => None,
        };
        if entry.as_ref().is_some_and(|e| e.matches(&meta)) {
            return Ok(Some((r.0, meta, None)));
        }
        if entry
            .as_ref()
            .is_some_and(|e| e.upload_time == meta.0 && !e.matches(&meta))
        {
            tracing::debug!(
                key = %key,
                "content changed in place without a new upload_time; side table corrected"
            );
        }
        let hashed = Hashed {
            id: r.0,
            meta: meta.clone(),
            at: r.5,
        };
        Ok(Some((r.0, meta, Some(hashed))))
    }

    /// After a write in the transaction `tx`: the file's metadata, computed
    /// from the blob, and its entry recorded in the same transaction.
    pub(super) async fn written<Q: Queryable>(&self, tx: &mut Q, key: &str) -> Res<MetaRow> {
        let (_, meta, pending) = self
            .file_checked(tx, key)
            .await?
            .ok_or(StoreError::NotFound)?;
        if let Some(h) = pending {
            self.side.record(&self.t, tx, &[h]).await?;
        }
        Ok(meta)
    }

    /// Record `rows` in the side table on `c` in the background, then give
    /// `c` back to the pool: a read never waits for the side table's locks,
    /// and an answer is never held back (to be older than it looks) by them.
    pub(super) fn record_later(&self, c: Conn, rows: Vec<Hashed>) {
        if rows.is_empty() || !self.side.on() {
            return;
        }
        let (side, t) = (self.side.clone(), self.t.clone());
        tokio::spawn(async move {
            let mut c = c;
            if let Err(e) = side.record(&t, &mut c, &rows).await {
                tracing::debug!(
                    table = %t.meta,
                    error = %e.into_store("side table"),
                    "side table not updated"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_statement_names_the_table() {
        let t = Tables::new("pre_", false).unwrap();
        let s = create_statement(&t.meta);
        assert!(s.starts_with("CREATE TABLE IF NOT EXISTS `pre_mediafs_file_meta`"));
        assert_eq!(
            Tables::new("", true).unwrap().meta,
            "`mediafs_core_file_meta`"
        );
    }
}
