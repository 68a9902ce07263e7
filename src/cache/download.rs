//! Downloads into the cache, shared by every reader of the same object version.
//!
//! A download streams the object into a file under `tmp/` and publishes how many
//! bytes are on disk, so readers can be served while it is still running, with
//! memory bounded by one chunk whatever the object size. When the last byte has
//! arrived and the length matches, the file is renamed into `data/`; a short or
//! failed download is never entered in the cache.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use tokio::sync::watch;

use super::DiskCache;
use crate::store::{GetResult, ObjectMeta, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The store now holds another version than the one asked for.
    #[error("object changed in the store while it was being read")]
    Changed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local cache I/O: {0}")]
    Io(String),
}

#[derive(Debug, Clone)]
enum State {
    Starting,
    Progress(u64),
    Done,
    Failed(DownloadError),
}

pub struct Download {
    pub meta: ObjectMeta,
    file: File,
    tmp: PathBuf,
    committed: AtomicBool,
    state: watch::Receiver<State>,
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Download {
    /// Wait until the store has answered with the object's headers.
    pub async fn started(&self) -> Result<(), DownloadError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, State::Starting))
            .await
            .map_err(|_| DownloadError::Io("download task ended".into()))?;
        match &*state {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Wait until bytes up to `end` (or the whole object) are on disk.
    pub async fn ready_until(&self, end: u64) -> Result<(), DownloadError> {
        let end = end.min(self.meta.size);
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| match s {
                State::Starting => false,
                State::Progress(n) => *n >= end,
                State::Done | State::Failed(_) => true,
            })
            .await
            .map_err(|_| DownloadError::Io("download task ended".into()))?;
        match &*state {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    pub async fn complete(&self) -> Result<(), DownloadError> {
        self.ready_until(self.meta.size).await
    }

    /// The downloaded bytes; read only what `ready_until` has confirmed.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// A second descriptor of the downloaded bytes (valid after the rename).
    pub fn file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    fn failed(&self) -> bool {
        matches!(&*self.state.borrow(), State::Failed(_))
    }
}

impl DiskCache {
    /// Start (or join) the download of `meta`. Concurrent callers for the same
    /// version share one GET.
    pub fn fetch(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        meta: &ObjectMeta,
    ) -> Result<Arc<Download>, DownloadError> {
        let name = self.entry_name(meta);
        let mut downloads = self.downloads.lock().unwrap();
        if let Some(existing) = downloads.get(&name).and_then(|w| w.upgrade())
            && !existing.failed()
        {
            return Ok(existing);
        }
        let tmp = self.tmp_path();
        let writer = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| DownloadError::Io(format!("{}: {e}", tmp.display())))?;
        let reader = File::open(&tmp).map_err(|e| DownloadError::Io(e.to_string()))?;
        let (tx, rx) = watch::channel(State::Starting);
        let download = Arc::new(Download {
            meta: meta.clone(),
            file: reader,
            tmp,
            committed: AtomicBool::new(false),
            state: rx,
        });
        downloads.insert(name.clone(), Arc::downgrade(&download));
        drop(downloads);

        let cache = Arc::clone(self);
        let store = Arc::clone(store);
        let dl = Arc::clone(&download);
        tokio::spawn(async move {
            let result = cache.run_download(&*store, &dl, writer, &tx).await;
            cache.downloads.lock().unwrap().remove(&name);
            match result {
                Ok(()) => {
                    let _ = tx.send(State::Done);
                }
                Err(e) => {
                    tracing::warn!(key = %dl.meta.key, error = %e, "download failed");
                    let _ = tx.send(State::Failed(e));
                }
            }
        });
        Ok(download)
    }

    async fn run_download(
        &self,
        store: &dyn Store,
        dl: &Download,
        mut writer: File,
        tx: &watch::Sender<State>,
    ) -> Result<(), DownloadError> {
        let expected = &dl.meta;
        let mut body = match store.get(&expected.key, None, None).await? {
            GetResult::Body { meta, body } => {
                if meta.version != expected.version || meta.size != expected.size {
                    return Err(DownloadError::Changed);
                }
                body
            }
            GetResult::NotModified => {
                return Err(DownloadError::Io(
                    "store answered 304 to a plain GET".into(),
                ));
            }
        };
        tx.send_replace(State::Progress(0));
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            writer
                .write_all(&chunk)
                .map_err(|e| DownloadError::Io(e.to_string()))?;
            written += chunk.len() as u64;
            self.stats
                .bytes_fetched
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            // The last bytes are announced as Done, after the rename into
            // the cache: a reader that finishes never races the commit.
            if written < expected.size {
                tx.send_replace(State::Progress(written));
            }
        }
        if written != expected.size {
            return Err(DownloadError::Io(format!(
                "short body: got {written} of {} bytes",
                expected.size
            )));
        }
        drop(writer);
        match self.insert_file(&dl.tmp, expected) {
            Ok(true) => dl.committed.store(true, Ordering::Release),
            Ok(false) => {} // larger than the cache: served from tmp, then dropped
            Err(e) => {
                tracing::warn!(key = %expected.key, error = %e, "could not keep the download in the cache")
            }
        }
        Ok(())
    }
}
