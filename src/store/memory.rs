//! An in-memory store for unit tests of the core. Not a backend users mount:
//! it forgets everything when the process ends.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{
    Attrs, DirMeta, GetResult, ListPage, Node, ObjectMeta, PartPlan, Store, StoreError, StoreResult,
};

#[derive(Default)]
pub struct MemoryStore {
    files: Mutex<BTreeMap<String, (Bytes, ObjectMeta)>>,
    dirs: Mutex<BTreeSet<String>>,
    next_version: AtomicU64,
    /// Counts GETs, so tests can prove a read was served from the cache.
    pub gets: AtomicUsize,
    /// When set, every put fails (a store that is down for writes).
    pub fail_puts: std::sync::atomic::AtomicBool,
    /// When set, bodies lose their last chunk (a connection cut short).
    pub truncate_bodies: std::sync::atomic::AtomicBool,
    /// Cut only the next this many bodies (a passing fault).
    pub truncate_next: AtomicUsize,
    /// Listings without attributes, like S3's; each head (also inside a stat)
    /// then takes a moment, and `stats` / `max_stats_at_once` count them.
    pub bare_listings: std::sync::atomic::AtomicBool,
    pub stats: AtomicUsize,
    pub max_stats_at_once: AtomicUsize,
    stats_now: AtomicUsize,
    /// When set, every read request fails as if the store were unreachable.
    pub down: std::sync::atomic::AtomicBool,
    /// Every metadata request (head, stat, list), to prove one was not needed.
    pub meta_requests: AtomicUsize,
    /// What `lookup_fetch_bytes` answers.
    pub lookup_fetch: AtomicU64,
    /// Offer uploads in parts with this plan.
    pub plan: Mutex<Option<PartPlan>>,
    /// Uploads in parts not completed or aborted: id -> (key, attrs, parts).
    uploads: Mutex<BTreeMap<String, PendingUpload>>,
    /// Whole-file puts and parts received, so tests see which path was taken.
    pub puts: AtomicUsize,
    pub parts_received: AtomicUsize,
}

type PendingUpload = (String, Attrs, BTreeMap<u32, Bytes>);

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Write an object directly, as another host would.
    pub fn insert(&self, key: &str, data: &[u8]) -> ObjectMeta {
        let meta = ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            version: format!("v{}", self.next_version.fetch_add(1, Ordering::Relaxed)),
            modified: SystemTime::now(),
            attrs: Attrs::default(),
        };
        self.files.lock().unwrap().insert(
            key.to_string(),
            (Bytes::copy_from_slice(data), meta.clone()),
        );
        meta
    }

    fn insert_with(&self, key: &str, data: &[u8], attrs: &Attrs) -> ObjectMeta {
        let mut meta = self.insert(key, data);
        meta.attrs = attrs.clone();
        self.files.lock().unwrap().get_mut(key).unwrap().1 = meta.clone();
        meta
    }

    fn check_up(&self) -> StoreResult<()> {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "memory store set to be down".into(),
            ));
        }
        Ok(())
    }

    /// Uploads in parts begun and neither completed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }

    pub fn contents(&self, key: &str) -> Option<Vec<u8>> {
        self.files.lock().unwrap().get(key).map(|(b, _)| b.to_vec())
    }

    fn under(prefix: &str, key: &str) -> bool {
        key.starts_with(prefix)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.meta_requests.fetch_add(1, Ordering::Relaxed);
        self.check_up()?;
        if self.bare_listings.load(Ordering::Relaxed) {
            self.stats.fetch_add(1, Ordering::Relaxed);
            let now = self.stats_now.fetch_add(1, Ordering::AcqRel) + 1;
            self.max_stats_at_once.fetch_max(now, Ordering::AcqRel);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            self.stats_now.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(self.files.lock().unwrap().get(key).map(|(_, m)| m.clone()))
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        if let Some(m) = self.head(key).await? {
            return Ok(Some(Node::File(m)));
        }
        let prefix = format!("{key}/");
        let is_dir = key.is_empty()
            || self.dirs.lock().unwrap().contains(key)
            || self
                .files
                .lock()
                .unwrap()
                .keys()
                .any(|k| Self::under(&prefix, k))
            || self
                .dirs
                .lock()
                .unwrap()
                .iter()
                .any(|k| Self::under(&prefix, k));
        Ok(is_dir.then(|| {
            Node::Dir(DirMeta {
                key: key.to_string(),
                modified: None,
                attrs: Attrs::default(),
            })
        }))
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_none_match: Option<&str>,
    ) -> StoreResult<GetResult> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.check_up()?;
        let (data, meta) = self
            .files
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if if_none_match == Some(meta.version.as_str()) {
            return Ok(GetResult::NotModified);
        }
        let data = match range {
            Some(r) => data.slice(r.start.min(meta.size) as usize..r.end.min(meta.size) as usize),
            None => data,
        };
        // Several chunks, so readers see a download in progress.
        let mut chunks: Vec<StoreResult<Bytes>> = data
            .chunks(4096)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let cut_once = self
            .truncate_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if self.truncate_bodies.load(Ordering::Relaxed) || cut_once {
            chunks.pop();
        }
        Ok(GetResult::Body {
            meta,
            body: futures::stream::iter(chunks).boxed(),
        })
    }

    async fn put(&self, key: &str, src: &Path, attrs: &Attrs) -> StoreResult<ObjectMeta> {
        if self.fail_puts.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("memory store set to fail".into()));
        }
        self.puts.fetch_add(1, Ordering::Relaxed);
        let data = std::fs::read(src).map_err(|e| StoreError::from_io(e, key))?;
        Ok(self.insert_with(key, &data, attrs))
    }

    fn part_plan(&self) -> Option<PartPlan> {
        *self.plan.lock().unwrap()
    }

    fn lookup_fetch_bytes(&self) -> u64 {
        self.lookup_fetch.load(Ordering::Relaxed)
    }

    fn listing_has_attrs(&self) -> bool {
        !self.bare_listings.load(Ordering::Relaxed)
    }

    async fn begin_upload(&self, key: &str, attrs: &Attrs) -> StoreResult<String> {
        let id = format!("u{}", self.next_version.fetch_add(1, Ordering::Relaxed));
        self.uploads.lock().unwrap().insert(
            id.clone(),
            (key.to_string(), attrs.clone(), BTreeMap::new()),
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        src: &Path,
        range: Range<u64>,
    ) -> StoreResult<String> {
        use std::os::unix::fs::FileExt;
        if self.fail_puts.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("memory store set to fail".into()));
        }
        let mut buf = vec![0; (range.end - range.start) as usize];
        std::fs::File::open(src)
            .and_then(|f| f.read_exact_at(&mut buf, range.start))
            .map_err(|e| StoreError::from_io(e, key))?;
        self.parts_received.fetch_add(1, Ordering::Relaxed);
        let mut uploads = self.uploads.lock().unwrap();
        let (_, _, parts) = uploads.get_mut(upload).ok_or(StoreError::NotFound)?;
        parts.insert(number, Bytes::from(buf));
        Ok(format!("p{number}"))
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[(u32, String)],
        size: u64,
    ) -> StoreResult<ObjectMeta> {
        let (k, attrs, mut stored) = self
            .uploads
            .lock()
            .unwrap()
            .remove(upload)
            .ok_or(StoreError::NotFound)?;
        assert_eq!(k, key);
        let mut data = Vec::new();
        for (n, tag) in parts {
            assert_eq!(tag, &format!("p{n}"));
            data.extend_from_slice(&stored.remove(n).ok_or(StoreError::NotFound)?);
        }
        if data.len() as u64 != size {
            return Err(StoreError::Other(format!(
                "{} bytes in parts, not {size}",
                data.len()
            )));
        }
        Ok(self.insert_with(key, &data, &attrs))
    }

    async fn abort_upload(&self, _key: &str, upload: &str) -> StoreResult<()> {
        self.uploads.lock().unwrap().remove(upload);
        Ok(())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.files.lock().unwrap().remove(key);
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage> {
        self.meta_requests.fetch_add(1, Ordering::Relaxed);
        self.check_up()?;
        let _ = token; // one page holds everything
        let mut page = ListPage::default();
        let mut subdirs = BTreeSet::new();
        for (k, (_, m)) in self.files.lock().unwrap().iter() {
            let Some(rest) = k.strip_prefix(prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((d, _)) if delimiter => {
                    subdirs.insert(d.to_string());
                }
                _ => page.files.push(m.clone()),
            }
        }
        if delimiter {
            for k in self.dirs.lock().unwrap().iter() {
                if let Some(rest) = k.strip_prefix(prefix) {
                    subdirs.insert(rest.split('/').next().unwrap().to_string());
                }
            }
        }
        page.dirs = subdirs
            .into_iter()
            .map(|d| DirMeta {
                key: format!("{prefix}{d}"),
                modified: None,
                attrs: Attrs::default(),
            })
            .collect();
        Ok(page)
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        let (data, meta) = self
            .files
            .lock()
            .unwrap()
            .get(from)
            .cloned()
            .ok_or(StoreError::NotFound)?;
        let mut new = self.insert(to, &data);
        new.attrs = meta.attrs;
        self.files.lock().unwrap().get_mut(to).unwrap().1 = new.clone();
        Ok(new)
    }

    async fn create_dir(&self, key: &str, _attrs: &Attrs) -> StoreResult<()> {
        self.dirs.lock().unwrap().insert(key.to_string());
        Ok(())
    }

    async fn remove_dir(&self, key: &str) -> StoreResult<()> {
        self.dirs.lock().unwrap().remove(key);
        Ok(())
    }

    async fn set_attrs(&self, key: &str, attrs: &Attrs) -> StoreResult<Option<ObjectMeta>> {
        let mut files = self.files.lock().unwrap();
        Ok(files.get_mut(key).map(|(_, m)| {
            m.attrs = m.attrs.merged(attrs);
            m.clone()
        }))
    }
}
