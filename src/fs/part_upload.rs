//! Uploads in parts that start while a large file is still being written.
//!
//! Write-through means close() waits for the store. For a large file written
//! front to back that wait would be the whole upload; instead, once a file
//! passes the store's threshold, every part the writer has moved past is sent
//! (as a part of one multipart upload) while the writer goes on, and close()
//! only sends the tail and completes the upload.
//!
//! A part is only ever sent once the writer is past it, so for a sequential
//! writer no sent byte changes. Anything else (a write or truncate below what
//! was sent, a rename, a chmod, a failed part) "spoils" the parts: close()
//! aborts them and falls back to one whole-file `put`, so the result is the
//! same as without this module, only slower. Nothing is visible in the store
//! before the upload completes, so readers never see a partial object.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinHandle;

use crate::store::{Attrs, ObjectMeta, PartPlan, Store, StoreError, StoreResult};

/// One multipart upload in the store, begun on the first part.
struct Session {
    key: String,
    attrs: Attrs,
    id: OnceCell<StoreResult<String>>,
    /// Parts in flight: the store's `parallel`.
    slots: Semaphore,
}

impl Session {
    async fn id(&self, store: &Arc<dyn Store>) -> StoreResult<String> {
        self.id
            .get_or_init(|| store.begin_upload(&self.key, &self.attrs))
            .await
            .clone()
    }
}

type PartTask = JoinHandle<StoreResult<(u32, String)>>;

/// The parts of one staging file (inside `Staged`, under its mutex).
#[derive(Default)]
pub struct PartState {
    session: Option<Arc<Session>>,
    plan: Option<PartPlan>,
    /// Bytes `0..sent` belong to parts already sent or being sent.
    sent: u64,
    tasks: Vec<PartTask>,
    spoiled: bool,
}

/// What close() should do.
pub enum Finish {
    /// No parts were sent: upload the whole file.
    Whole,
    /// The parts are unusable (and being aborted): upload the whole file.
    Spoiled(&'static str),
    /// The parts, in order, make the first `sent` bytes.
    Parts(Parts),
}

pub struct Parts {
    session: Arc<Session>,
    plan: PartPlan,
    sent: u64,
    tasks: Vec<PartTask>,
}

impl PartState {
    /// A write of `offset..end` has reached the staging file.
    pub fn wrote(&mut self, offset: u64) {
        if offset < self.sent {
            self.spoiled = true;
        }
    }

    /// The file was cut to `size`.
    pub fn truncated(&mut self, size: u64) {
        if size < self.sent {
            self.spoiled = true;
        }
    }

    pub fn spoil(&mut self) {
        self.spoiled = true;
    }

    /// The file (at `src`, now `size` bytes) may have parts ready to send:
    /// spawn one task per whole part the writer is past.
    #[allow(clippy::too_many_arguments)]
    pub fn send_ready(
        &mut self,
        store: &Arc<dyn Store>,
        plan: PartPlan,
        key: &str,
        attrs: &Attrs,
        src: &Path,
        size: u64,
    ) {
        if self.spoiled || (self.session.is_none() && size <= plan.threshold) {
            return;
        }
        let session = self
            .session
            .get_or_insert_with(|| {
                Arc::new(Session {
                    key: key.to_string(),
                    attrs: attrs.clone(),
                    id: OnceCell::new(),
                    slots: Semaphore::new(plan.parallel.max(1)),
                })
            })
            .clone();
        self.plan = Some(plan);
        // Keep one part's worth back: a writer rarely rewrites far behind
        // itself, but often just behind (a header patched after a chunk).
        while self.sent + 2 * plan.part_size <= size {
            let number = (self.sent / plan.part_size) as u32 + 1;
            if number >= plan.max_parts {
                // The last part must be free for the tail.
                self.spoiled = true;
                return;
            }
            let range = self.sent..self.sent + plan.part_size;
            self.sent = range.end;
            self.tasks.push(spawn_part(
                store,
                &session,
                number,
                src.to_path_buf(),
                range,
            ));
        }
    }

    /// The file will not be stored (deleted, or a write failed): drop the parts.
    pub fn abandon(&mut self, store: &Arc<dyn Store>) {
        let state = std::mem::take(self);
        if let Some(session) = state.session {
            abort(store, session, state.tasks);
        }
    }

    /// For close(): take the parts (the state starts over for later writes).
    /// `key` and `attrs` are what the file must be stored as now.
    pub fn finish(&mut self, store: &Arc<dyn Store>, key: &str, attrs: &Attrs) -> Finish {
        let state = std::mem::take(self);
        let Some(session) = state.session else {
            return Finish::Whole;
        };
        let why = if state.spoiled {
            Some("the file changed behind parts already sent")
        } else if session.key != key {
            Some("renamed while written")
        } else if (attrs.mode, attrs.uid, attrs.gid)
            != (session.attrs.mode, session.attrs.uid, session.attrs.gid)
            || attrs.mtime.is_some()
        {
            Some("attributes changed while written")
        } else {
            None
        };
        match (why, state.plan) {
            (None, Some(plan)) => Finish::Parts(Parts {
                session,
                plan,
                sent: state.sent,
                tasks: state.tasks,
            }),
            (why, _) => {
                abort(store, session, state.tasks);
                Finish::Spoiled(why.unwrap_or("no part size"))
            }
        }
    }
}

fn spawn_part(
    store: &Arc<dyn Store>,
    session: &Arc<Session>,
    number: u32,
    src: PathBuf,
    range: std::ops::Range<u64>,
) -> PartTask {
    let store = store.clone();
    let session = session.clone();
    tokio::spawn(async move {
        let _slot = session.slots.acquire().await.expect("never closed");
        let id = session.id(&store).await?;
        let tag = store
            .upload_part(&session.key, &id, number, &src, range)
            .await?;
        Ok((number, tag))
    })
}

/// Drop the upload once its parts in flight are done (in the background:
/// the application is not kept waiting for a cleanup).
fn abort(store: &Arc<dyn Store>, session: Arc<Session>, tasks: Vec<PartTask>) {
    let store = store.clone();
    tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
        if let Some(Ok(id)) = session.id.get() {
            let _ = store.abort_upload(&session.key, id).await;
        }
    });
}

impl Parts {
    /// Send the tail `sent..size` of `src`, wait for every part, and complete
    /// the upload. On failure the parts are aborted: nothing appears.
    pub async fn complete(
        self,
        store: &Arc<dyn Store>,
        src: PathBuf,
        size: u64,
    ) -> StoreResult<ObjectMeta> {
        let Parts {
            session,
            plan,
            sent,
            mut tasks,
        } = self;
        if size > sent {
            // Whatever is left: up to two parts' worth (the one held back and
            // the one in progress); one part unless it would be too large.
            let mut at = sent;
            while at < size {
                let end = if size - at > plan.part_size * 2 - 1 {
                    at + plan.part_size
                } else {
                    size
                };
                let number = (at / plan.part_size) as u32 + 1;
                tasks.push(spawn_part(store, &session, number, src.clone(), at..end));
                at = end;
            }
        }
        let mut parts = Vec::with_capacity(tasks.len());
        let mut failure = None;
        for t in tasks {
            match t.await {
                Ok(Ok(p)) => parts.push(p),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => failure = failure.or(Some(StoreError::Other(format!("part task: {e}")))),
            }
        }
        let id = session.id(store).await;
        let result = match (failure, id) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(id)) => {
                parts.sort_by_key(|p| p.0);
                store.complete_upload(&session.key, &id, &parts, size).await
            }
        };
        if result.is_err()
            && let Some(Ok(id)) = session.id.get()
        {
            let _ = store.abort_upload(&session.key, id).await;
        }
        result
    }
}
