//! `mediafs import SRC_DIR STORE`: copy an existing media directory into a
//! store (the migration from NFS or rsync), with bounded parallel uploads, a
//! progress bar, resume, `--dry-run` and a summary.
//!
//! Resume rule: a file is skipped when the store already has an object at its
//! key with the same size and the same content version, which means:
//! - if the object's version is an MD5 (32 hex digits, as S3 ETags of simple
//!   uploads are), the MD5 of the source file equals it;
//! - otherwise (a local store, whose version is inode/size/mtime, or a
//!   multipart ETag), the modification time the store keeps for the object
//!   equals the source file's to the second. Import stores the source's
//!   mtime with each object, so a file imported once is skipped next time.
//!
//! A store that keeps neither gets the file again; that is safe, because
//! `Store::put` is atomic: an object is either the old one or the whole new one.

use std::io::{IsTerminal, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ImportArgs;
use crate::store::{Attrs, Node, ObjectMeta, Store, StoreError, StoreUrl, open_store, valid_name};

/// One regular file of the source tree.
#[derive(Debug, Clone)]
pub struct SrcFile {
    pub key: String,
    pub path: PathBuf,
    pub size: u64,
    pub attrs: Attrs,
}

/// What a walk of the source found.
#[derive(Debug, Default)]
pub struct Tree {
    pub files: Vec<SrcFile>,
    /// Directories with no file below them (created explicitly).
    pub empty_dirs: Vec<(String, Attrs)>,
    /// Symbolic links and special files: not imported.
    pub ignored: Vec<(PathBuf, &'static str)>,
    /// Names that cannot be keys, and unreadable directories.
    pub bad: Vec<(PathBuf, String)>,
}

fn attrs_of(m: &std::fs::Metadata) -> Attrs {
    Attrs {
        mode: Some(m.mode() & 0o7777),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        mtime: m.modified().ok(),
    }
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Walk `root` (never following symbolic links), sorted by key.
pub fn walk(root: &Path) -> std::io::Result<Tree> {
    let mut tree = Tree::default();
    let mut dirs = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, key)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if key.is_empty() => return Err(e),
            Err(e) => {
                tree.bad.push((dir, format!("cannot read directory: {e}")));
                continue;
            }
        };
        for entry in rd {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tree.bad.push((path, "the name is not UTF-8".into()));
                continue;
            };
            if !valid_name(&name) {
                tree.bad
                    .push((path, "the name cannot be a store key".into()));
                continue;
            }
            let child = crate::store::join_key(&key, &name);
            let meta = entry.metadata()?;
            let ft = meta.file_type();
            if ft.is_dir() {
                dirs.push((child.clone(), attrs_of(&meta)));
                stack.push((path, child));
            } else if ft.is_file() {
                tree.files.push(SrcFile {
                    key: child,
                    path,
                    size: meta.len(),
                    attrs: attrs_of(&meta),
                });
            } else {
                tree.ignored.push((path, kind_of(&ft)));
            }
        }
    }
    tree.files.sort_by(|a, b| a.key.cmp(&b.key));
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    // A directory with a file or a directory below it comes with that one.
    let mut below = std::collections::HashSet::new();
    for key in tree
        .files
        .iter()
        .map(|f| &f.key)
        .chain(dirs.iter().map(|d| &d.0))
    {
        let mut k = key.as_str();
        while let Some((parent, _)) = k.rsplit_once('/') {
            if !below.insert(parent.to_string()) {
                break;
            }
            k = parent;
        }
    }
    tree.empty_dirs = dirs
        .into_iter()
        .filter(|(d, _)| !below.contains(d))
        .collect();
    Ok(tree)
}

/// Whether an object version is a plain MD5 (a simple upload's S3 ETag).
fn md5_version(version: &str) -> Option<String> {
    let v = version.trim_matches('"');
    (v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
}

fn md5_of(path: &Path) -> std::io::Result<String> {
    use md5::{Digest, Md5};
    let mut f = std::fs::File::open(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn whole_seconds(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The resume rule (see the module comment).
pub fn same_version(src: &SrcFile, obj: &ObjectMeta) -> std::io::Result<bool> {
    if obj.size != src.size {
        return Ok(false);
    }
    if let Some(md5) = md5_version(&obj.version) {
        return Ok(md5_of(&src.path)? == md5);
    }
    Ok(match (obj.attrs.mtime, src.attrs.mtime) {
        (Some(a), Some(b)) => whole_seconds(a).is_some() && whole_seconds(a) == whole_seconds(b),
        _ => false,
    })
}

enum Outcome {
    Uploaded,
    Skipped,
    Failed(String),
}

#[derive(Default)]
struct Counts {
    uploaded: AtomicU64,
    uploaded_bytes: AtomicU64,
    skipped: AtomicU64,
    skipped_bytes: AtomicU64,
}

async fn import_one(store: &dyn Store, f: &SrcFile, dry_run: bool) -> Outcome {
    let fail = |request: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(key = %f.key, file = %f.path.display(), request, error = %e, "import failed");
        Outcome::Failed(format!("{request}: {e}"))
    };
    let existing = match store.head(&f.key).await {
        Ok(m) => m,
        Err(e) => return fail("head", &e),
    };
    if let Some(obj) = existing {
        let (src, obj) = (f.clone(), obj.clone());
        match tokio::task::spawn_blocking(move || same_version(&src, &obj)).await {
            Ok(Ok(true)) => return Outcome::Skipped,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return fail("read source", &e),
            Err(e) => return fail("read source", &e),
        }
    }
    if dry_run {
        return Outcome::Uploaded;
    }
    // The source may be gone or no longer a plain file (a FIFO would block).
    match std::fs::symlink_metadata(&f.path) {
        Ok(m) if m.is_file() => {}
        Ok(m) => return fail("read source", &format!("now a {}", kind_of(&m.file_type()))),
        Err(e) => return fail("read source", &e),
    }
    match store.put(&f.key, &f.path, &f.attrs).await {
        Ok(_) => Outcome::Uploaded,
        Err(e) => fail("put", &e),
    }
}

async fn create_dir(store: &dyn Store, key: &str, attrs: &Attrs) -> Result<bool, StoreError> {
    if let Some(Node::Dir(_)) = store.stat(key).await? {
        return Ok(false);
    }
    match store.create_dir(key, attrs).await {
        Ok(()) => Ok(true),
        Err(StoreError::AlreadyExists) => Ok(false),
        Err(e) => Err(e),
    }
}

const BAR: &str = "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}";

/// Bytes done of all bytes, with rate and ETA; hidden when stderr is not a
/// terminal (CI, journald, a pipe).
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(BAR).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

pub fn run(args: ImportArgs) -> Result<(), String> {
    let url = StoreUrl::parse(&args.store)?;
    let started = Instant::now();
    let tree = walk(&args.src).map_err(|e| format!("source {}: {e}", args.src.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let store = rt.block_on(open_store(&url, &args.store_opts.options()))?;
    let verb = if args.dry_run {
        "would upload"
    } else {
        "uploaded"
    };
    println!(
        "{} {} -> {}{}",
        if args.dry_run {
            "dry run:"
        } else {
            "importing"
        },
        args.src.display(),
        store.describe(),
        if args.dry_run {
            " (nothing is changed)"
        } else {
            ""
        }
    );
    for (path, kind) in &tree.ignored {
        println!("note: {} is a {kind}; not imported", path.display());
    }
    let total: u64 = tree.files.iter().map(|f| f.size).sum();
    let pb = progress_bar(total);
    let counts = Arc::new(Counts::default());
    let mut failures: Vec<(String, String)> = tree
        .bad
        .iter()
        .map(|(p, e)| (p.display().to_string(), e.clone()))
        .collect();
    let results: Vec<(String, Outcome)> = rt.block_on(
        futures::stream::iter(tree.files.iter())
            .map(|f| {
                let (store, pb, counts) = (store.clone(), pb.clone(), counts.clone());
                async move {
                    let out = import_one(&*store, f, args.dry_run).await;
                    let (n, b) = match out {
                        Outcome::Uploaded => (&counts.uploaded, &counts.uploaded_bytes),
                        _ => (&counts.skipped, &counts.skipped_bytes),
                    };
                    if !matches!(out, Outcome::Failed(_)) {
                        n.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(f.size, Ordering::Relaxed);
                    }
                    pb.inc(f.size);
                    pb.set_message(format!(
                        "{} {verb}, {} skipped",
                        counts.uploaded.load(Ordering::Relaxed),
                        counts.skipped.load(Ordering::Relaxed)
                    ));
                    (f.key.clone(), out)
                }
            })
            .buffer_unordered(args.jobs as usize)
            .collect(),
    );
    for (key, out) in results {
        if let Outcome::Failed(e) = out {
            failures.push((key, e));
        }
    }
    let mut dirs_created = 0;
    for (key, attrs) in &tree.empty_dirs {
        if args.dry_run {
            let exists = rt.block_on(store.stat(key));
            if !matches!(exists, Ok(Some(Node::Dir(_)))) {
                dirs_created += 1;
            }
            continue;
        }
        match rt.block_on(create_dir(&*store, key, attrs)) {
            Ok(true) => dirs_created += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(key = %key, request = "create_dir", error = %e, "import failed");
                failures.push((key.clone(), format!("create_dir: {e}")));
            }
        }
    }
    pb.finish_and_clear();
    failures.sort();
    for (what, e) in &failures {
        println!("FAILED {what}: {e}");
    }
    println!(
        "files: {} found ({}), {verb} {} ({}), skipped {} already in the store ({}), failed {}",
        tree.files.len(),
        human(total),
        counts.uploaded.load(Ordering::Relaxed),
        human(counts.uploaded_bytes.load(Ordering::Relaxed)),
        counts.skipped.load(Ordering::Relaxed),
        human(counts.skipped_bytes.load(Ordering::Relaxed)),
        failures.len()
    );
    println!(
        "directories: {} empty {} {}; not imported: {} symbolic links or special files",
        dirs_created,
        if dirs_created == 1 {
            "directory"
        } else {
            "directories"
        },
        if args.dry_run {
            "would be created"
        } else {
            "created"
        },
        tree.ignored.len()
    );
    println!("time: {:.1} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} file(s) or directories failed to import (listed above); run the same command again to retry them",
            failures.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(size: u64, version: &str, mtime: Option<SystemTime>) -> ObjectMeta {
        ObjectMeta {
            key: "k".into(),
            size,
            version: version.into(),
            modified: SystemTime::now(),
            attrs: Attrs {
                mtime,
                ..Default::default()
            },
        }
    }

    #[test]
    fn bar_template_is_valid() {
        assert!(ProgressStyle::with_template(BAR).is_ok());
    }

    #[test]
    fn resume_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let src = SrcFile {
            key: "k".into(),
            path: p,
            size: 5,
            attrs: Attrs {
                mtime: Some(t),
                ..Default::default()
            },
        };
        // Local-store style version: size and mtime (to the second) decide.
        assert!(
            same_version(&src, &obj(5, "1-5-x", Some(t + Duration::from_millis(300)))).unwrap()
        );
        assert!(!same_version(&src, &obj(5, "1-5-x", Some(t + Duration::from_secs(1)))).unwrap());
        assert!(!same_version(&src, &obj(6, "1-6-x", Some(t))).unwrap());
        assert!(!same_version(&src, &obj(5, "1-5-x", None)).unwrap());
        // An MD5 ETag decides by content, whatever the mtime.
        let md5 = "\"5d41402abc4b2a76b9719d911017c592\"";
        assert!(same_version(&src, &obj(5, md5, None)).unwrap());
        let other = "\"00000000000000000000000000000000\"";
        assert!(!same_version(&src, &obj(5, other, Some(t))).unwrap());
    }

    #[test]
    fn walk_finds_files_empty_dirs_and_ignores_links() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(r.join("empty/inner")).unwrap();
        std::fs::write(r.join("a/b/x.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink("a/b/x.jpg", r.join("link.jpg")).unwrap();
        let t = walk(r).unwrap();
        let keys: Vec<_> = t.files.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["a/b/x.jpg"]);
        let dirs: Vec<_> = t.empty_dirs.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(dirs, ["empty/inner"]);
        assert_eq!(t.ignored.len(), 1);
        assert_eq!(t.ignored[0].1, "symbolic link");
    }
}
