//! A `Store` wrapper that bounds how long any request may take, so a store
//! that stops answering (a black-holed network, a hung server) turns into an
//! EIO for the application within a known time, never a hang.
//!
//! Metadata requests get the whole bound. A GET gets it until the first
//! response, then the same bound for each next chunk (a stall, not a slow
//! large download, is the failure). A PUT gets the bound plus time for its
//! size at a floor rate, so large uploads on a slow link are not cut off.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::{
    Attrs, Capacity, GetResult, ListPage, Node, ObjectMeta, PartPlan, Store, StoreError,
    StoreResult,
};

/// Slowest upload rate we wait for before calling a PUT stuck.
const MIN_UPLOAD_RATE: u64 = 1 << 20; // bytes per second

pub struct TimeoutStore {
    inner: Arc<dyn Store>,
    limit: Duration,
}

impl TimeoutStore {
    pub fn new(inner: Arc<dyn Store>, limit: Duration) -> Self {
        TimeoutStore { inner, limit }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: no answer from the store within {} s",
                limit.as_secs_f64()
            ))),
        }
    }
}

#[async_trait]
impl Store for TimeoutStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.bounded("HEAD", self.limit, self.inner.head(key)).await
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        self.bounded("stat", self.limit, self.inner.stat(key)).await
    }

    async fn stat_without_file(&self, key: &str) -> StoreResult<Option<Node>> {
        self.bounded("stat", self.limit, self.inner.stat_without_file(key))
            .await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_none_match: Option<&str>,
    ) -> StoreResult<GetResult> {
        let result = self
            .bounded("GET", self.limit, self.inner.get(key, range, if_none_match))
            .await?;
        let GetResult::Body { meta, body } = result else {
            return Ok(result);
        };
        let limit = self.limit;
        // Each chunk must arrive within the limit; a stall ends the body with
        // an error (and the download is not cached).
        let body = futures::stream::unfold(Some(body), move |state| async move {
            let mut body = state?;
            match tokio::time::timeout(limit, body.next()).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(StoreError::Unavailable(format!(
                        "GET stalled: no data for {} s",
                        limit.as_secs_f64()
                    ))),
                    None,
                )),
            }
        })
        .boxed();
        Ok(GetResult::Body { meta, body })
    }

    async fn put(&self, key: &str, src: &Path, attrs: &Attrs) -> StoreResult<ObjectMeta> {
        let size = std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
        let limit = self.limit + Duration::from_secs(size / MIN_UPLOAD_RATE);
        self.bounded("PUT", limit, self.inner.put(key, src, attrs))
            .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.bounded("DELETE", self.limit, self.inner.delete(key))
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage> {
        self.bounded(
            "LIST",
            self.limit,
            self.inner.list(prefix, delimiter, token),
        )
        .await
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        self.bounded("COPY", self.limit, self.inner.copy(from, to))
            .await
    }

    async fn create_dir(&self, key: &str, attrs: &Attrs) -> StoreResult<()> {
        self.bounded("mkdir", self.limit, self.inner.create_dir(key, attrs))
            .await
    }

    async fn remove_dir(&self, key: &str) -> StoreResult<()> {
        self.bounded("rmdir", self.limit, self.inner.remove_dir(key))
            .await
    }

    async fn set_attrs(&self, key: &str, attrs: &Attrs) -> StoreResult<Option<ObjectMeta>> {
        self.bounded(
            "set attributes",
            self.limit,
            self.inner.set_attrs(key, attrs),
        )
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        self.bounded("rename", self.limit, self.inner.rename(from, to))
            .await
    }

    /// Not bounded as a whole: a large tree takes as long as it takes, and
    /// each request inside the backend's own loop is its own.
    async fn rename_dir(&self, from: &str, to: &str) -> StoreResult<()> {
        self.inner.rename_dir(from, to).await
    }

    fn listing_has_attrs(&self) -> bool {
        self.inner.listing_has_attrs()
    }

    fn check_key(&self, key: &str) -> StoreResult<()> {
        self.inner.check_key(key)
    }

    fn part_plan(&self) -> Option<PartPlan> {
        self.inner.part_plan()
    }

    fn lookup_fetch_bytes(&self) -> u64 {
        self.inner.lookup_fetch_bytes()
    }

    async fn begin_upload(&self, key: &str, attrs: &Attrs) -> StoreResult<String> {
        self.bounded(
            "begin upload",
            self.limit,
            self.inner.begin_upload(key, attrs),
        )
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        src: &Path,
        range: Range<u64>,
    ) -> StoreResult<String> {
        let limit = self.limit + Duration::from_secs((range.end - range.start) / MIN_UPLOAD_RATE);
        self.bounded(
            "upload part",
            limit,
            self.inner.upload_part(key, upload, number, src, range),
        )
        .await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[(u32, String)],
        size: u64,
    ) -> StoreResult<ObjectMeta> {
        // The server may assemble the parts before it answers.
        let limit = self.limit + Duration::from_secs(size / MIN_UPLOAD_RATE / 8);
        self.bounded(
            "complete upload",
            limit,
            self.inner.complete_upload(key, upload, parts, size),
        )
        .await
    }

    async fn abort_upload(&self, key: &str, upload: &str) -> StoreResult<()> {
        self.bounded(
            "abort upload",
            self.limit,
            self.inner.abort_upload(key, upload),
        )
        .await
    }

    async fn capacity(&self) -> Option<Capacity> {
        tokio::time::timeout(self.limit, self.inner.capacity())
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that never answers.
    struct BlackHole;

    #[async_trait]
    impl Store for BlackHole {
        fn describe(&self) -> String {
            "black hole".into()
        }
        async fn head(&self, _: &str) -> StoreResult<Option<ObjectMeta>> {
            std::future::pending().await
        }
        async fn get(
            &self,
            _: &str,
            _: Option<Range<u64>>,
            _: Option<&str>,
        ) -> StoreResult<GetResult> {
            std::future::pending().await
        }
        async fn put(&self, _: &str, _: &Path, _: &Attrs) -> StoreResult<ObjectMeta> {
            std::future::pending().await
        }
        async fn delete(&self, _: &str) -> StoreResult<()> {
            std::future::pending().await
        }
        async fn list(&self, _: &str, _: bool, _: Option<String>) -> StoreResult<ListPage> {
            std::future::pending().await
        }
        async fn copy(&self, _: &str, _: &str) -> StoreResult<ObjectMeta> {
            std::future::pending().await
        }
        async fn create_dir(&self, _: &str, _: &Attrs) -> StoreResult<()> {
            std::future::pending().await
        }
        async fn remove_dir(&self, _: &str) -> StoreResult<()> {
            std::future::pending().await
        }
        async fn set_attrs(&self, _: &str, _: &Attrs) -> StoreResult<Option<ObjectMeta>> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn every_request_ends_within_the_bound() {
        let s = TimeoutStore::new(Arc::new(BlackHole), Duration::from_millis(50));
        let t = std::time::Instant::now();
        assert!(matches!(s.head("a").await, Err(StoreError::Unavailable(_))));
        assert!(matches!(
            s.list("", true, None).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(s.get("a", None, None).await.is_err());
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(s.put("a", f.path(), &Attrs::default()).await.is_err());
        assert!(s.stat("a").await.is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
