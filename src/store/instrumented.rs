//! A `Store` wrapper that times every request, counts it for the metrics and
//! logs each failure as one line naming the request, the key and the error.
//! Backends need no changes: the mount wraps whatever `open_store` returned.

use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    Attrs, Capacity, GetResult, ListPage, Node, ObjectMeta, PartPlan, Store, StoreError,
    StoreResult,
};
use crate::metrics::Metrics;

pub struct Instrumented {
    inner: Arc<dyn Store>,
    metrics: Option<Arc<Metrics>>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Store>, metrics: Option<Arc<Metrics>>) -> Self {
        Instrumented { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let start = Instant::now();
        let result = fut.await;
        let failed = matches!(&result, Err(e) if is_failure(e));
        if let Some(m) = &self.metrics {
            m.store_request(op, start.elapsed(), failed);
        }
        if let (true, Err(e)) = (failed, &result) {
            tracing::warn!(request = op, key = %key, error = %e, "store request failed");
        }
        result
    }
}

/// Answers about the key (missing, exists, not empty, a bad name) are normal
/// outcomes the core handles; everything else is the store failing us.
fn is_failure(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::NotFound
            | StoreError::AlreadyExists
            | StoreError::NotEmpty
            | StoreError::NameTooLong(_)
            | StoreError::InvalidKey(_)
    )
}

#[async_trait]
impl Store for Instrumented {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.timed("head", key, self.inner.head(key)).await
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        self.timed("stat", key, self.inner.stat(key)).await
    }

    async fn stat_without_file(&self, key: &str) -> StoreResult<Option<Node>> {
        self.timed("stat_dir", key, self.inner.stat_without_file(key))
            .await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_none_match: Option<&str>,
    ) -> StoreResult<GetResult> {
        self.timed("get", key, self.inner.get(key, range, if_none_match))
            .await
    }

    async fn put(&self, key: &str, src: &Path, attrs: &Attrs) -> StoreResult<ObjectMeta> {
        self.timed("put", key, self.inner.put(key, src, attrs))
            .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.timed("delete", key, self.inner.delete(key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage> {
        self.timed("list", prefix, self.inner.list(prefix, delimiter, token))
            .await
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        self.timed("copy", from, self.inner.copy(from, to)).await
    }

    async fn create_dir(&self, key: &str, attrs: &Attrs) -> StoreResult<()> {
        self.timed("create_dir", key, self.inner.create_dir(key, attrs))
            .await
    }

    async fn remove_dir(&self, key: &str) -> StoreResult<()> {
        self.timed("remove_dir", key, self.inner.remove_dir(key))
            .await
    }

    async fn set_attrs(&self, key: &str, attrs: &Attrs) -> StoreResult<Option<ObjectMeta>> {
        self.timed("set_attrs", key, self.inner.set_attrs(key, attrs))
            .await
    }

    async fn rename(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        self.timed("rename", from, self.inner.rename(from, to))
            .await
    }

    async fn rename_dir(&self, from: &str, to: &str) -> StoreResult<()> {
        self.timed("rename_dir", from, self.inner.rename_dir(from, to))
            .await
    }

    async fn capacity(&self) -> Option<Capacity> {
        self.inner.capacity().await
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
        self.timed("begin_upload", key, self.inner.begin_upload(key, attrs))
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
        self.timed(
            "upload_part",
            key,
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
        self.timed(
            "complete_upload",
            key,
            self.inner.complete_upload(key, upload, parts, size),
        )
        .await
    }

    async fn abort_upload(&self, key: &str, upload: &str) -> StoreResult<()> {
        self.timed("abort_upload", key, self.inner.abort_upload(key, upload))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn counts_and_times_requests() {
        let metrics = Arc::new(Metrics::new());
        let s = Instrumented::new(Arc::new(MemoryStore::new()), Some(metrics.clone()));
        assert!(s.head("nope").await.unwrap().is_none());
        let text = metrics.encode();
        assert!(
            text.contains(r#"mediafs_store_requests_total{op="head",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mediafs_store_request_duration_seconds_count{op="head"} 1"#),
            "{text}"
        );
    }
}
