//! Prometheus metrics: FUSE operations by kind, store requests by kind with
//! latency histograms and errors, and, read at each scrape, the disk cache's
//! counters and the uploads in flight. No HTTP here: `serve` is the only
//! part that talks to the network.
//!
//! prometheus-client (the Prometheus project's own Rust client) gives typed
//! counters, histograms and label families and the text exposition format,
//! with no global registry and no HTTP stack of its own.

pub mod serve;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::fs::Core;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    fuse_ops: Family<Labels1, Counter>,
    fuse_errors: Family<Labels2, Counter>,
    fuse_failures: Family<Labels2, Counter>,
    store_requests: Family<Labels2, Counter>,
    store_latency: Family<Labels1, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mediafs");
        let fuse_ops = Family::<Labels1, Counter>::default();
        let fuse_errors = Family::<Labels2, Counter>::default();
        let fuse_failures = Family::<Labels2, Counter>::default();
        let store_requests = Family::<Labels2, Counter>::default();
        let store_latency: Family<Labels1, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "fuse_operations",
            "FUSE requests received, by operation",
            fuse_ops.clone(),
        );
        registry.register(
            "fuse_errors",
            "FUSE requests answered with an error, by operation and errno",
            fuse_errors.clone(),
        );
        registry.register(
            "fuse_failures",
            "FUSE requests answered with an error that is not the plain answer to the request \
             (store or disk failures, timeouts; each one is logged at warn), by operation and errno",
            fuse_failures.clone(),
        );
        registry.register(
            "store_requests",
            "Store requests, by operation and outcome (ok, or error: the store failed)",
            store_requests.clone(),
        );
        registry.register(
            "store_request_duration_seconds",
            "Store request latency until the answer (for get: until the body starts)",
            store_latency.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            fuse_ops,
            fuse_errors,
            fuse_failures,
            store_requests,
            store_latency,
        }
    }

    /// Also report the cache's figures and the uploads in flight of `core`.
    pub fn watch_core(&self, core: Arc<Core>) {
        self.registry
            .lock()
            .unwrap()
            .register_collector(Box::new(CoreCollector(core)));
    }

    pub fn fuse_op(&self, op: &'static str) {
        self.fuse_ops.get_or_create(&[("op", op)]).inc();
    }

    /// A request of kind `op` failed with `errno`; `plain`: it was the
    /// plain answer to the request (e.g. ENOENT for a missing name).
    pub fn fuse_error(&self, op: &'static str, errno: &'static str, plain: bool) {
        let labels = [("op", op), ("errno", errno)];
        self.fuse_errors.get_or_create(&labels).inc();
        if !plain {
            self.fuse_failures.get_or_create(&labels).inc();
        }
    }

    pub fn store_request(&self, op: &'static str, took: Duration, failed: bool) {
        let outcome = if failed { "error" } else { "ok" };
        self.store_requests
            .get_or_create(&[("op", op), ("outcome", outcome)])
            .inc();
        self.store_latency
            .get_or_create(&[("op", op)])
            .observe(took.as_secs_f64());
    }

    /// The text exposition (OpenMetrics) of everything.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

struct CoreCollector(Arc<Core>);

impl std::fmt::Debug for CoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreCollector")
    }
}

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let cache = self.0.cache();
        let s = cache.stats();
        let counters = [
            (
                "cache_hits",
                "Opens served from the disk cache",
                s.hits.load(Relaxed),
            ),
            (
                "cache_misses",
                "Opens that had to download",
                s.misses.load(Relaxed),
            ),
            (
                "cache_fetched_bytes",
                "Bytes downloaded from the store into the cache",
                s.bytes_fetched.load(Relaxed),
            ),
            (
                "cache_evictions",
                "Cache entries evicted to stay under the size bound",
                s.evictions.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let gauges = [
            (
                "cache_used_bytes",
                "Bytes held by the disk cache",
                cache.used_bytes() as i64,
            ),
            (
                "cache_capacity_bytes",
                "The disk cache's size bound",
                cache.capacity() as i64,
            ),
            (
                "uploads_in_flight",
                "Uploads to the store running now",
                self.0.uploads_in_flight() as i64,
            ),
            (
                "passthrough_backing_files",
                "Cache files registered with the kernel for FUSE passthrough reads now",
                self.0.backing_files().get(),
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
