//! The FUSE adapter: kernel request -> core call -> reply. Nothing else lives
//! here. Work that may touch the store runs on the tokio runtime, so one slow
//! request never holds up the others; answers we already have are given inline.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle as Runtime;

use crate::fs::{Attr, Backing, BackingGuard, Core, FsError, Kind, OpenReply};
use crate::metrics::Metrics;
use crate::store::MAX_NAME_BYTES;

pub struct MediaFs {
    core: Arc<Core>,
    rt: Runtime,
    ttl: Duration,
    metrics: Option<Arc<Metrics>>,
    kernel: KernelNotifier,
}

/// Tells the kernel to drop what it cached. Set once the session exists
/// (the session is built from the filesystem, so it cannot be passed in).
#[derive(Clone, Default)]
pub struct KernelNotifier(Arc<std::sync::OnceLock<Notifier>>);

impl KernelNotifier {
    pub fn set(&self, n: Notifier) {
        let _ = self.0.set(n);
    }

    /// Drop the kernel's attributes of `ino` (not its pages): its next stat
    /// or read past the size it knew asks us again.
    fn forget_attrs(&self, ino: u64) {
        if let Some(n) = self.0.get()
            && let Err(e) = n.inval_inode(INodeNo(ino), -1, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(ino, error = %e, "invalidating kernel attributes");
        }
    }
}

impl MediaFs {
    pub fn new(core: Arc<Core>, rt: Runtime) -> Self {
        let ttl = core.config().ttl;
        core.set_runtime(rt.clone());
        MediaFs {
            core,
            rt,
            ttl,
            metrics: None,
            kernel: KernelNotifier::default(),
        }
    }

    /// Where the session's notifier will be put, once there is a session.
    pub fn kernel_notifier(&self) -> KernelNotifier {
        self.kernel.clone()
    }

    /// Count every request by operation (and failures) in `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// A request of kind `op` arrived.
    fn op(&self, op: &'static str) {
        if let Some(m) = &self.metrics {
            m.fuse_op(op);
        }
    }

    fn fail(&self, op: &'static str, target: Target, reply: impl ErrorReply, e: FsError) {
        fail(&self.core, self.metrics.as_deref(), op, &target, reply, e);
    }

    /// Run `f` on the runtime and hand its result to `reply`.
    fn spawn<T, F, R>(
        &self,
        op: &'static str,
        target: Target,
        fut: F,
        reply: R,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) where
        T: Send + 'static,
        F: Future<Output = Result<T, FsError>> + Send + 'static,
        R: ErrorReply + Send + 'static,
    {
        let metrics = self.metrics.clone();
        let core = self.core.clone();
        self.rt.spawn(async move {
            match fut.await {
                Ok(v) => ok(reply, v),
                Err(e) => fail(&core, metrics.as_deref(), op, &target, reply, e),
            }
        });
    }
}

/// What a request was about, named in the log line of its failure.
enum Target {
    /// An inode (getattr, open, setattr, opendir).
    Node(u64),
    /// A name in a directory (lookup, create, unlink, rename's source, …).
    Entry(u64, Arc<OsStr>),
    /// An open file (read, write, flush, release, fsync).
    Handle(u64),
}

impl Target {
    fn describe(&self, core: &Core) -> String {
        match self {
            Target::Node(ino) => core.describe_ino(*ino),
            Target::Entry(parent, name) => core.describe_entry(*parent, name),
            Target::Handle(fh) => core.describe_handle(*fh),
        }
    }
}

/// Answer `op` with the errno of `e`, counted by operation and errno. An
/// errno that is not the plain answer to the request (a store or disk
/// failure, a timeout, a refusal the application could not expect) is
/// logged at warn with the path and its cause; plain answers such as
/// ENOENT for a missing name only at debug.
fn fail(
    core: &Core,
    metrics: Option<&Metrics>,
    op: &'static str,
    target: &Target,
    reply: impl ErrorReply,
    e: FsError,
) {
    let plain = e.is_plain_answer();
    if let Some(m) = metrics {
        m.fuse_error(op, e.errno_name(), plain);
    }
    if plain {
        tracing::debug!(op, path = %target.describe(core), errno = e.errno_name(), error = %e, "operation failed");
    } else {
        tracing::warn!(op, path = %target.describe(core), errno = e.errno_name(), error = %e, "operation failed");
    }
    reply.error_errno(e.errno());
}

/// Every reply type can carry an errno.
trait ErrorReply {
    fn error_errno(self, errno: i32);
}

macro_rules! error_reply {
    ($($t:ty),*) => {$(
        impl ErrorReply for $t {
            fn error_errno(self, errno: i32) {
                self.error(Errno::from_i32(errno));
            }
        }
    )*};
}
error_reply!(
    ReplyEntry,
    ReplyAttr,
    ReplyEmpty,
    ReplyOpen,
    ReplyData,
    ReplyWrite,
    ReplyCreate,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyStatfs
);

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn name(n: &OsStr) -> Arc<OsStr> {
    n.into()
}

impl Filesystem for MediaFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open(): no download of a file about to be emptied.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Lookups of different names in one directory run at once (the
        // kernel otherwise serialises them per directory): sixteen readers
        // of sixteen thumbnails wait for sixteen GETs in parallel.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Names come with their attributes (from the listing), so `ls -l`
        // and scandir+stat cost no LOOKUP per entry. AUTO: the kernel asks
        // for attributes on the first page and when lookups follow, not
        // for a plain `ls`. Not where each file's attributes need a request
        // of their own (--stat-listed-files).
        if self.core.listings_suffice() {
            let _ = config.add_capabilities(
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            );
        }
        // Cache files live on a plain local filesystem: stacking depth 1.
        if self.core.config().passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.core.enable_passthrough();
        }
        // Opens of a new version bypass the page cache (see OpenReply);
        // mmap of them must still work.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        self.op("lookup");
        if n.len() > MAX_NAME_BYTES {
            return self.fail(
                "lookup",
                Target::Entry(parent.0, name(n)),
                reply,
                FsError::NameTooLong,
            );
        }
        if let Some(result) = self.core.lookup_known(parent.0, n) {
            return match result {
                Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(0)),
                Err(e) => self.fail("lookup", Target::Entry(parent.0, name(n)), reply, e),
            };
        }
        let core = self.core.clone();
        let n = name(n);
        let ttl = self.ttl;
        self.spawn(
            "lookup",
            Target::Entry(parent.0, n.clone()),
            async move { core.lookup(parent.0, &n).await },
            reply,
            move |r, a| r.entry(&ttl, &file_attr(&a), Generation(0)),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.op("forget");
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.op("getattr");
        if let Some(a) = self.core.getattr_cached(ino.0) {
            return reply.attr(&self.ttl, &file_attr(&a));
        }
        let core = self.core.clone();
        let ttl = self.ttl;
        self.spawn(
            "getattr",
            Target::Node(ino.0),
            async move { core.getattr(ino.0).await },
            reply,
            move |r, a| r.attr(&ttl, &file_attr(&a)),
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.op("setattr");
        let core = self.core.clone();
        let ttl = self.ttl;
        let mtime = mtime.map(time);
        self.spawn(
            "setattr",
            Target::Node(ino.0),
            async move {
                core.setattr(ino.0, fh.map(|f| f.0), size, mode, uid, gid, mtime)
                    .await
            },
            reply,
            move |r, a| r.attr(&ttl, &file_attr(&a)),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.op("mknod");
        if mode & libc::S_IFMT != libc::S_IFREG {
            return self.fail(
                "mknod",
                Target::Entry(parent.0, name(n)),
                reply,
                FsError::NotSupported("only regular files can be created"),
            );
        }
        let core = self.core.clone();
        let n = name(n);
        let (uid, gid) = (req.uid(), req.gid());
        let ttl = self.ttl;
        self.spawn(
            "mknod",
            Target::Entry(parent.0, n.clone()),
            async move {
                let (attr, open) = core
                    .create(
                        parent.0,
                        &n,
                        mode & !umask,
                        libc::O_WRONLY | libc::O_EXCL,
                        uid,
                        gid,
                    )
                    .await?;
                core.flush(open.fh).await?;
                core.release(open.fh).await?;
                Ok(attr)
            },
            reply,
            move |r, a| r.entry(&ttl, &file_attr(&a), Generation(0)),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.op("mkdir");
        let core = self.core.clone();
        let n = name(n);
        let (uid, gid) = (req.uid(), req.gid());
        let ttl = self.ttl;
        self.spawn(
            "mkdir",
            Target::Entry(parent.0, n.clone()),
            async move { core.mkdir(parent.0, &n, mode & !umask, uid, gid).await },
            reply,
            move |r, a| r.entry(&ttl, &file_attr(&a), Generation(0)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.op("unlink");
        let core = self.core.clone();
        let n = name(n);
        self.spawn(
            "unlink",
            Target::Entry(parent.0, n.clone()),
            async move { core.unlink(parent.0, &n).await },
            reply,
            |r, ()| r.ok(),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.op("rmdir");
        let core = self.core.clone();
        let n = name(n);
        self.spawn(
            "rmdir",
            Target::Entry(parent.0, n.clone()),
            async move { core.rmdir(parent.0, &n).await },
            reply,
            |r, ()| r.ok(),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.op("rename");
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return self.fail(
                "rename",
                Target::Entry(parent.0, name(n)),
                reply,
                FsError::Invalid("RENAME_EXCHANGE and RENAME_WHITEOUT are not supported"),
            );
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let core = self.core.clone();
        let (n, newname) = (name(n), name(newname));
        self.spawn(
            "rename",
            Target::Entry(parent.0, n.clone()),
            async move {
                core.rename(parent.0, &n, newparent.0, &newname, no_replace)
                    .await
            },
            reply,
            |r, ()| r.ok(),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.op("open");
        // A cached file with fresh metadata opens without leaving this thread.
        if let Some(result) = self.core.open_known(ino.0, flags.0) {
            return match result {
                Ok(o) => reply_open(&self.core, &self.kernel, reply, o),
                Err(e) => self.fail("open", Target::Node(ino.0), reply, e),
            };
        }
        let core = self.core.clone();
        let core2 = self.core.clone();
        let kernel = self.kernel.clone();
        self.spawn(
            "open",
            Target::Node(ino.0),
            async move { core.open(ino.0, flags.0).await },
            reply,
            move |r, o| reply_open(&core2, &kernel, r, o),
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.op("read");
        let core = self.core.clone();
        self.spawn(
            "read",
            Target::Handle(fh.0),
            async move { core.read(fh.0, offset, size).await },
            reply,
            |r, data| r.data(&data),
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.op("write");
        let core = self.core.clone();
        let data = data.to_vec();
        self.spawn(
            "write",
            Target::Handle(fh.0),
            async move { core.write(fh.0, offset, &data).await },
            reply,
            |r, n| r.written(n),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.op("flush");
        if self.core.flush_is_noop(fh.0) {
            return reply.ok();
        }
        let core = self.core.clone();
        self.spawn(
            "flush",
            Target::Handle(fh.0),
            async move { core.flush(fh.0).await },
            reply,
            |r, ()| r.ok(),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.op("release");
        if self.core.release_reader(fh.0) {
            return reply.ok();
        }
        let core = self.core.clone();
        self.spawn(
            "release",
            Target::Handle(fh.0),
            async move { core.release(fh.0).await },
            reply,
            |r, ()| r.ok(),
        );
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        self.op("fsync");
        let core = self.core.clone();
        self.spawn(
            "fsync",
            Target::Handle(fh.0),
            async move { core.flush(fh.0).await },
            reply,
            |r, ()| r.ok(),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.op("opendir");
        let core = self.core.clone();
        self.spawn(
            "opendir",
            Target::Node(ino.0),
            async move { core.opendir(ino.0).await },
            reply,
            |r, fh| r.opened(FileHandle(fh), FopenFlags::empty()),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.op("readdir");
        let entries = match self.core.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return self.fail("readdir", Target::Node(ino.0), reply, e),
        };
        for (i, e) in entries.entries.iter().enumerate().skip(offset as usize) {
            let kind = match e.kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(INodeNo(e.ino), (i + 1) as u64, kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.op("readdirplus");
        let entries = match self.core.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return self.fail("readdirplus", Target::Node(ino.0), reply, e),
        };
        for (i, e) in entries.entries.iter().enumerate().skip(offset as usize) {
            // The kernel takes no reference on "." and "..", nor uses their
            // attributes.
            let dots = e.name == "." || e.name == "..";
            let attr = if dots {
                self.core.getattr_cached(e.ino).unwrap_or(Attr {
                    ino: e.ino,
                    kind: Kind::Dir,
                    size: 0,
                    mtime: SystemTime::UNIX_EPOCH,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                })
            } else {
                match self.core.lookup_listed(&entries, e) {
                    Ok(a) => a,
                    // Removed here since opendir: not shown.
                    Err(_) => continue,
                }
            };
            let full = reply.add(
                INodeNo(attr.ino),
                (i + 1) as u64,
                &e.name,
                &self.ttl,
                &file_attr(&attr),
                Generation(0),
            );
            if full {
                if !dots {
                    self.core.forget(attr.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.op("releasedir");
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        self.op("fsyncdir");
        // Directory changes are in the store before their calls return.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.op("statfs");
        let core = self.core.clone();
        self.spawn(
            "statfs",
            Target::Node(ino.0),
            async move { Ok(core.statfs().await) },
            reply,
            |r, s| {
                r.statfs(
                    s.blocks,
                    s.bfree,
                    s.bfree,
                    s.files,
                    s.ffree,
                    s.bsize,
                    MAX_NAME_BYTES as u32,
                    s.bsize,
                )
            },
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.op("access");
        // Permissions are checked by the kernel (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.op("create");
        let core = self.core.clone();
        let n = name(n);
        let (uid, gid) = (req.uid(), req.gid());
        let ttl = self.ttl;
        self.spawn(
            "create",
            Target::Entry(parent.0, n.clone()),
            async move {
                core.create(parent.0, &n, mode & !umask, flags, uid, gid)
                    .await
            },
            reply,
            move |r, (a, o)| {
                r.created(
                    &ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(o.fh),
                    FopenFlags::empty(),
                )
            },
        );
    }
}

/// A backing file registered with the kernel, closed (by fuser's drop of
/// the id) when the last passthrough open of its inode is released.
struct Registered {
    id: BackingId,
    _count: BackingGuard,
}

/// Answer an open, registering a backing file for a passthrough open.
fn reply_open(core: &Core, kernel: &KernelNotifier, r: ReplyOpen, o: OpenReply) {
    let mut flags = if o.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        // Before the reply, so the opener's first fstat or read already
        // asks for the size of the version it opened.
        kernel.forget_attrs(o.ino);
        FopenFlags::empty()
    };
    if o.direct_io {
        flags |= FopenFlags::FOPEN_DIRECT_IO;
    }
    let Some(pt) = o.passthrough else {
        return r.opened(FileHandle(o.fh), flags);
    };
    // One backing file per inode, shared by all its passthrough opens: the
    // first open registers it, the others (even ones racing it) reuse it.
    let backing = pt.backing.get_or_register(|| {
        let id = r.open_backing(&pt.file)?;
        let count = core.backing_files().opened();
        Ok::<Backing, std::io::Error>(Arc::new(Registered { id, _count: count }))
    });
    match backing.map(|b| b.downcast::<Registered>()) {
        Ok(Ok(b)) => {
            // The kernel refuses page-cache flags on a passthrough open (its
            // pages are the backing file's).
            r.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &b.id);
        }
        Ok(Err(_)) => unreachable!("backing slots hold only what reply_open puts there"),
        Err(e) => {
            core.passthrough_refused(o.fh, &e);
            r.opened(FileHandle(o.fh), flags)
        }
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let (kind, nlink) = match a.kind {
        Kind::File => (FileType::RegularFile, 1),
        Kind::Dir => (FileType::Directory, 2),
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm: a.perm,
        nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}
