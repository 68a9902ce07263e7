//! The statements over Magento's two tables. Every lookup goes through an
//! index: directories by (`name`, `parent_id`) (or `name` then `path`), files
//! by (`filename`, `directory_id`) or by `directory_id`; no statement scans a
//! whole table.
//!
//! Under Magento's case-insensitive collation `name = ?` also finds 'A' for
//! 'a' (and 'é' for 'e', 'a ' for 'a'). Matches are therefore compared byte
//! for byte here: only an exact match is "the" row; an inexact one is a clash.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mysql_async::Value;
use mysql_async::prelude::Queryable;

use super::config::{Tables, split_key};
use super::error::Res;
use crate::store::{Attrs, DirMeta, ObjectMeta, StoreError};

/// What identifies the bytes of a file: see `SEMANTICS.md` ("Magento's media
/// tables"). The timestamp and the length are cheap to compare by eye; the
/// MD5 catches a rewrite within the same second at the same length.
pub const META_COLS: &str = "UNIX_TIMESTAMP(upload_time), LENGTH(content), MD5(content)";

pub type MetaRow = (i64, u64, String);

pub fn version_of(row: &MetaRow) -> String {
    format!("{:x}-{:x}-{}", row.0, row.1, row.2)
}

pub fn time_of(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)
}

pub fn object_meta(key: &str, row: &MetaRow) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: row.1,
        version: version_of(row),
        modified: time_of(row.0),
        attrs: Attrs::default(),
    }
}

#[derive(Debug, Clone)]
pub struct DirRow {
    pub id: u32,
    pub name: String,
    pub path: String,
    pub time: i64,
}

impl DirRow {
    pub fn key(&self) -> String {
        crate::store::join_key(&self.path, &self.name)
    }

    pub fn meta(&self) -> DirMeta {
        DirMeta {
            key: self.key(),
            modified: Some(time_of(self.time)),
            attrs: Attrs::default(),
        }
    }
}

const DIR_COLS: &str = "directory_id, name, IFNULL(path, ''), UNIX_TIMESTAMP(upload_time)";

fn dir_row(r: (u32, String, String, Option<i64>)) -> DirRow {
    DirRow {
        id: r.0,
        name: r.1,
        path: r.2,
        time: r.3.unwrap_or(0),
    }
}

/// `FOR UPDATE` inside a writing transaction: the rows (and, through the
/// index, the gap where a missing one would go) stay ours until commit.
fn lock(on: bool) -> &'static str {
    if on { " FOR UPDATE" } else { "" }
}

/// `col = ?` or `col IS NULL` (the media root has no directory row).
pub fn eq_id(col: &str, id: Option<u32>, params: &mut Vec<Value>) -> String {
    match id {
        Some(id) => {
            params.push(id.into());
            format!("{col} = ?")
        }
        None => format!("{col} IS NULL"),
    }
}

impl Tables {
    /// Directory rows whose name and parent path match `key` under the
    /// table's collation (the exact one, if any, and clashing ones).
    pub async fn dirs_like<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
        for_update: bool,
    ) -> Res<Vec<DirRow>> {
        let (path, name) = split_key(key);
        let sql = format!(
            "SELECT {DIR_COLS} FROM {} WHERE name = ? AND IFNULL(path, '') = ?{}",
            self.dirs,
            lock(for_update)
        );
        let rows: Vec<(u32, String, String, Option<i64>)> = q.exec(sql, (name, path)).await?;
        Ok(rows.into_iter().map(dir_row).collect())
    }

    /// The directory row at exactly `key`.
    pub async fn dir<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
        for_update: bool,
    ) -> Res<Option<DirRow>> {
        let rows = self.dirs_like(q, key, for_update).await?;
        Ok(rows.into_iter().find(|d| d.key() == key))
    }

    /// `Some(None)` for the root, `Some(Some(id))` for an existing directory,
    /// `None` if there is no directory at `key`.
    pub async fn dir_id<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
        for_update: bool,
    ) -> Res<Option<Option<u32>>> {
        if key.is_empty() {
            return Ok(Some(None));
        }
        Ok(self.dir(q, key, for_update).await?.map(|d| Some(d.id)))
    }

    /// Make every directory of `key` exist, as Magento's createRecursive does
    /// (`name`, `path` = the parent's path, `parent_id`), and return the id of
    /// the last (None for the root).
    pub async fn ensure_dirs<Q: Queryable>(&self, q: &mut Q, key: &str) -> Res<Option<u32>> {
        let mut parent: Option<u32> = None;
        if key.is_empty() {
            return Ok(None);
        }
        let mut end = 0;
        loop {
            end = match key[end..].find('/') {
                Some(i) => end + i,
                None => key.len(),
            };
            let sub = &key[..end];
            parent = Some(self.ensure_dir(q, sub, parent).await?);
            if end == key.len() {
                return Ok(parent);
            }
            end += 1;
        }
    }

    async fn ensure_dir<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
        parent: Option<u32>,
    ) -> Res<u32> {
        let rows = self.dirs_like(q, key, true).await?;
        if let Some(d) = rows.iter().find(|d| d.key() == key) {
            return Ok(d.id);
        }
        clash_check(key, rows.iter().map(|d| d.key()))?;
        self.insert_dir(q, key, parent).await
    }

    pub async fn insert_dir<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
        parent: Option<u32>,
    ) -> Res<u32> {
        let (path, name) = split_key(key);
        let sql = format!(
            "INSERT INTO {} (name, path, upload_time, parent_id) VALUES (?, ?, NOW(), ?)",
            self.dirs
        );
        q.exec_drop(sql, (name, path, parent)).await?;
        let id: Option<u32> = q.query_first("SELECT LAST_INSERT_ID()").await?;
        Ok(id.ok_or_else(|| StoreError::Other("INSERT gave no directory_id".into()))?)
    }

    /// Files named like `name` in directory `dir` under the collation, as
    /// (file_id, filename).
    pub async fn files_like<Q: Queryable>(
        &self,
        q: &mut Q,
        dir: Option<u32>,
        name: &str,
        for_update: bool,
    ) -> Res<Vec<(u32, String)>> {
        let mut params: Vec<Value> = vec![name.into()];
        let cond = eq_id("directory_id", dir, &mut params);
        let sql = format!(
            "SELECT file_id, filename FROM {} WHERE filename = ? AND {cond}{}",
            self.files,
            lock(for_update)
        );
        Ok(q.exec(sql, params).await?)
    }

    /// The file at exactly `key` with its metadata: (file_id, meta).
    pub async fn file<Q: Queryable>(&self, q: &mut Q, key: &str) -> Res<Option<(u32, MetaRow)>> {
        let (dir, name) = split_key(key);
        let Some(dir_id) = self.dir_id(q, dir, false).await? else {
            return Ok(None);
        };
        let mut params: Vec<Value> = vec![name.into()];
        let cond = eq_id("directory_id", dir_id, &mut params);
        let sql = format!(
            "SELECT file_id, filename, {META_COLS} FROM {} WHERE filename = ? AND {cond}",
            self.files
        );
        let rows: Vec<(u32, String, i64, u64, String)> = q.exec(sql, params).await?;
        Ok(rows
            .into_iter()
            .find(|r| r.1 == name)
            .map(|r| (r.0, (r.2, r.3, r.4))))
    }

    pub async fn file_meta<Q: Queryable>(&self, q: &mut Q, id: u32) -> Res<MetaRow> {
        let sql = format!("SELECT {META_COLS} FROM {} WHERE file_id = ?", self.files);
        q.exec_first(sql, (id,))
            .await?
            .ok_or_else(|| StoreError::NotFound.into())
    }

    /// Where a file is about to be written, renamed or copied to: its
    /// directory rows exist (made if needed), and the row already there, if
    /// any, is locked and returned. A row that only matches under the
    /// collation is a clash: `AlreadyExists`, and nothing is changed.
    /// `moving` is the row being renamed there: it neither clashes nor is replaced.
    pub async fn target<Q: Queryable>(
        &self,
        q: &mut Q,
        key: &str,
        moving: Option<u32>,
    ) -> Res<Target> {
        let (dir, name) = split_key(key);
        let dir_id = self.ensure_dirs(q, dir).await?;
        let mut rows = self.files_like(q, dir_id, name, true).await?;
        rows.retain(|r| Some(r.0) != moving);
        if self.dir(q, key, false).await?.is_some() {
            return Err(StoreError::Other(format!("{key} is a directory")).into());
        }
        let existing = rows.iter().find(|r| r.1 == name).map(|r| r.0);
        if existing.is_none() {
            clash_check(key, rows.iter().map(|r| crate::store::join_key(dir, &r.1)))?;
        }
        Ok(Target {
            dir_id,
            dir: dir.to_string(),
            name: name.to_string(),
            existing,
        })
    }

    /// Every directory below `root` (not `root` itself; None = the media
    /// root), by walking `parent_id` one level at a time.
    pub async fn subdirs<Q: Queryable>(&self, q: &mut Q, root: Option<u32>) -> Res<Vec<DirRow>> {
        let mut params = Vec::new();
        let cond = eq_id("parent_id", root, &mut params);
        let sql = format!("SELECT {DIR_COLS} FROM {} WHERE {cond}", self.dirs);
        let rows: Vec<(u32, String, String, Option<i64>)> = q.exec(sql, params).await?;
        let mut level: Vec<DirRow> = rows.into_iter().map(dir_row).collect();
        let mut out = Vec::new();
        while !level.is_empty() {
            let mut next = Vec::new();
            let ids: Vec<u32> = level.iter().map(|d| d.id).collect();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT {DIR_COLS} FROM {} WHERE parent_id IN ({})",
                    self.dirs,
                    marks(chunk.len())
                );
                let rows: Vec<(u32, String, String, Option<i64>)> =
                    q.exec(sql, chunk.to_vec()).await?;
                next.extend(rows.into_iter().map(dir_row));
            }
            out.append(&mut level);
            level = next;
        }
        Ok(out)
    }
}

/// `n` placeholders for an `IN (...)` list.
pub fn marks(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// Where a file goes: see `Tables::target`.
pub struct Target {
    pub dir_id: Option<u32>,
    pub dir: String,
    pub name: String,
    pub existing: Option<u32>,
}

/// `others` are keys that matched `key` under the collation without being it.
pub fn clash_check(key: &str, mut others: impl Iterator<Item = String>) -> Res<()> {
    match others.next() {
        None => Ok(()),
        Some(other) => {
            tracing::warn!(
                key = %key,
                existing = %other,
                "name clash: the media tables' collation treats these names as one \
                 (Magento's default is case-insensitive); refused with EEXIST, no row \
                 changed. SEMANTICS.md says how to switch to a binary collation"
            );
            Err(StoreError::AlreadyExists.into())
        }
    }
}
