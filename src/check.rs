//! `mediafs check STORE`: can we reach the store, and may we list, read,
//! write and delete? Says so in plain words, one line per check, using a
//! temporary object with a unique name that is deleted afterwards.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use crate::cli::CheckArgs;
use crate::store::{Attrs, GetResult, Store, StoreError, StoreUrl, open_store};

/// Outcome of the checks, for the exit code.
struct Report {
    failed: usize,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("ok      {what}: {detail}");
    }

    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAILED  {what}: {detail}");
    }
}

pub fn run(args: CheckArgs) -> Result<(), String> {
    let url = StoreUrl::parse(&args.store)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let failed = rt.block_on(check(&url, &args))?;
    if failed == 0 {
        println!("the store is usable");
        Ok(())
    } else {
        Err(format!("{failed} check(s) failed for store {}", args.store))
    }
}

async fn within<T>(
    secs: u64,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no answer within {secs} s"
            )))
        })
}

/// A key no other host or run will pick.
pub fn probe_key() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(".mediafs-check.{host}.{}.{nanos:x}", std::process::id())
}

async fn check(url: &StoreUrl, args: &CheckArgs) -> Result<usize, String> {
    let mut r = Report { failed: 0 };
    let t = args.timeout;
    let store = match within(t, async {
        open_store(url, &args.store_opts.options())
            .await
            .map_err(StoreError::Unavailable)
    })
    .await
    {
        Ok(s) => {
            r.ok("reach", format!("opened {}", s.describe()));
            s
        }
        Err(e) => {
            r.fail("reach", format!("cannot open the store ({e})"));
            return Ok(r.failed);
        }
    };
    let first_file =
        match within(t, store.list("", true, None)).await {
            Ok(page) => {
                r.ok(
                "list",
                format!(
                    "credentials accepted; the top level has {} file(s) and {} directory(ies){}",
                    page.files.len(),
                    page.dirs.len(),
                    if page.next.is_some() { " on its first page" } else { "" }
                ),
            );
                page.files.into_iter().next()
            }
            Err(e) => {
                r.fail("list", format!("listing the top level failed ({e})"));
                None
            }
        };
    if args.read_only {
        match first_file {
            Some(meta) => match read_all(&*store, &meta.key, Some(0..SAMPLE), t).await {
                Ok(bytes) if bytes.len() as u64 == meta.size.min(SAMPLE) => r.ok(
                    "read",
                    format!("read the first {} bytes of {}", bytes.len(), meta.key),
                ),
                Ok(bytes) => r.fail(
                    "read",
                    format!(
                        "{} gave {} bytes, expected {}",
                        meta.key,
                        bytes.len(),
                        meta.size.min(SAMPLE)
                    ),
                ),
                Err(e) => r.fail("read", format!("reading {} failed ({e})", meta.key)),
            },
            None => r.ok("read", "no file at the top level to read; skipped"),
        }
        println!("(read-only check: nothing was written)");
        return Ok(r.failed);
    }
    probe(&*store, &mut r, t).await;
    Ok(r.failed)
}

/// Write, stat, read back and delete a temporary object.
async fn probe(store: &dyn Store, r: &mut Report, t: u64) {
    let key = probe_key();
    let body = format!("mediafs check {key}\n").into_bytes();
    let tmp = match tempfile_with(&body) {
        Ok(f) => f,
        Err(e) => {
            r.fail(
                "write",
                format!("cannot create a local temporary file ({e})"),
            );
            return;
        }
    };
    match within(t, store.put(&key, tmp.path(), &Attrs::default())).await {
        Ok(_) => r.ok("write", format!("created the temporary object {key}")),
        Err(e) => {
            r.fail("write", format!("creating {key} failed ({e})"));
            return;
        }
    }
    match within(t, store.head(&key)).await {
        Ok(Some(m)) if m.size == body.len() as u64 => r.ok(
            "stat",
            format!("it has {} bytes, version {}", m.size, m.version),
        ),
        Ok(Some(m)) => r.fail(
            "stat",
            format!("it has {} bytes, expected {}", m.size, body.len()),
        ),
        Ok(None) => r.fail("stat", "the object we just wrote is not there"),
        Err(e) => r.fail("stat", format!("asking for it failed ({e})")),
    }
    match read_all(store, &key, None, t).await {
        Ok(got) if got == body => r.ok("read", "the same bytes came back"),
        Ok(_) => r.fail("read", "other bytes came back than were written"),
        Err(e) => r.fail("read", format!("reading it back failed ({e})")),
    }
    match within(t, store.delete(&key)).await {
        Ok(()) => match within(t, store.head(&key)).await {
            Ok(None) => r.ok("delete", "removed it again"),
            Ok(Some(_)) => r.fail("delete", format!("{key} is still there after delete")),
            Err(e) => r.fail("delete", format!("checking the delete failed ({e})")),
        },
        Err(e) => r.fail(
            "delete",
            format!("deleting failed ({e}); remove {key} from the store by hand"),
        ),
    }
}

fn tempfile_with(body: &[u8]) -> std::io::Result<TempFile> {
    let path = std::env::temp_dir().join(format!("mediafs-check-{}", std::process::id()));
    std::fs::write(&path, body)?;
    Ok(TempFile(path))
}

struct TempFile(std::path::PathBuf);
impl TempFile {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How much of an existing file a read-only check reads.
const SAMPLE: u64 = 64 * 1024;

/// The object at `key` (or the `range` of it), into memory: small reads only.
async fn read_all(
    store: &dyn Store,
    key: &str,
    range: Option<std::ops::Range<u64>>,
    t: u64,
) -> Result<Vec<u8>, StoreError> {
    within(t, async {
        match store.get(key, range, None).await? {
            GetResult::Body { mut body, .. } => {
                let mut out = Vec::new();
                while let Some(chunk) = body.next().await {
                    out.extend_from_slice(&chunk?);
                }
                Ok(out)
            }
            GetResult::NotModified => Err(StoreError::Other("unexpected not-modified".into())),
        }
    })
    .await
}
