//! `mediafs mount`: open the store and cache, mount, say when ready, and
//! unmount cleanly on SIGINT/SIGTERM once in-flight uploads are done.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::cache::DiskCache;
use crate::cli::MountArgs;
use crate::fs::{Core, CoreConfig};
use crate::fuse::MediaFs;
use crate::metrics::Metrics;
use crate::store::instrumented::Instrumented;
use crate::store::timeout::TimeoutStore;
use crate::store::{Store, StoreUrl, open_store};

/// Set in the child of `--daemon`: the fd to write one byte to once ready.
const READY_FD_ENV: &str = "MEDIAFS_DAEMON_READY_FD";

pub fn run(args: MountArgs) -> Result<(), String> {
    let url = StoreUrl::parse(&args.store)?;
    check_mountpoint(&args.mountpoint)?;
    if args.daemon && std::env::var_os(READY_FD_ENV).is_none() {
        return daemonize();
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("mediafs-io")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;

    let metrics = args.metrics_addr.map(|_| Arc::new(Metrics::new()));
    let opts = args.store_opts.options();
    let store = rt.block_on(open_store(&url, &opts))?;
    // Metrics outside the timeouts, so a timed-out request counts as an error.
    let store: Arc<dyn Store> = Arc::new(Instrumented::new(
        Arc::new(TimeoutStore::new(
            store,
            Duration::from_secs(args.store_timeout),
        )),
        metrics.clone(),
    ));
    let cache = DiskCache::open(&args.cache_dir, &url.identity_with(&opts), args.cache_size)
        .map_err(|e| format!("cache directory {}: {e}", args.cache_dir.display()))?;
    let defaults = CoreConfig::default();
    let cfg = CoreConfig {
        ttl: Duration::from_secs(args.metadata_ttl),
        read_only: args.read_only,
        uid: args.uid.unwrap_or(defaults.uid),
        gid: args.gid.unwrap_or(defaults.gid),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        passthrough: !args.no_passthrough,
        stat_listed_files: args.stat_listed_files,
    };
    let core = Core::new(store.clone(), cache, cfg).map_err(|e| e.to_string())?;
    if let (Some(addr), Some(m)) = (args.metrics_addr, &metrics) {
        m.watch_core(core.clone());
        let bound = rt.block_on(crate::metrics::serve::start(addr, m.clone()))?;
        tracing::info!(address = %bound, "serving metrics at /metrics");
    }

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("mediafs:{}", url.identity_with(&opts))),
        MountOption::Subtype("mediafs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        if args.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(2);

    let fs = MediaFs::new(core.clone(), rt.handle().clone()).with_metrics(metrics);
    // Catch SIGTERM/SIGINT before mounting: a stop that arrives right after
    // READY=1 must still unmount cleanly, not kill us with the mount in place.
    let (mut term, mut int) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        Ok::<_, String>((term, int))
    })?;
    let kernel = fs.kernel_notifier();
    let mut session = Session::new(fs, &args.mountpoint, &config)
        .map_err(|e| format!("mounting at {}: {e}", args.mountpoint.display()))?;
    kernel.set(session.notifier());
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let fuse_thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = done_tx.send(());
            r
        })
        .map_err(|e| e.to_string())?;

    // The mount answers once a stat through it succeeds.
    let root = std::fs::metadata(&args.mountpoint).map_err(|e| {
        format!(
            "the mount at {} does not answer: {e}",
            args.mountpoint.display()
        )
    })?;
    if args.read_ahead > 0 {
        set_read_ahead(std::os::unix::fs::MetadataExt::dev(&root), args.read_ahead);
    }
    eprintln!(
        "mediafs: ready: {} mounted at {}",
        store.describe(),
        args.mountpoint.display()
    );
    tracing::info!(store = %store.describe(), mountpoint = %args.mountpoint.display(), "mounted");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving {}", args.mountpoint.display())),
    ]);
    signal_ready();

    let stop = rt.block_on(async {
        let ended = tokio::task::spawn_blocking(move || done_rx.recv());
        tokio::select! {
            _ = term.recv() => Ok::<_, String>(true),
            _ = int.recv() => Ok(true),
            _ = ended => Ok(false),
        }
    })?;
    notify_systemd(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("waiting for uploads in flight, then unmounting"),
    ]);
    if stop {
        tracing::info!(
            in_flight = core.uploads_in_flight(),
            "stopping: waiting for uploads in flight"
        );
        rt.block_on(core.wait_uploads());
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, "unmount failed (files open?); detaching lazily");
            lazy_unmount(&args.mountpoint)?;
        }
    }
    match fuse_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "session ended with an error"),
        Err(_) => return Err("the FUSE session thread panicked".into()),
    }
    rt.block_on(core.wait_uploads());
    if let Err(e) = core.cache().mark_clean() {
        tracing::warn!(error = %e, "could not record a clean stop in the cache directory");
    }
    eprintln!("mediafs: unmounted {}", args.mountpoint.display());
    Ok(())
}

/// Raise the kernel's read-ahead for the mount. The FUSE init reply can only
/// lower it below the 128 KiB the kernel starts a FUSE mount with; the bdi's
/// sysfs knob is the one way up. Measured on a cold 1 GiB read: 8,192 read
/// requests at 128 KiB, 1,024 at 1 MiB, and 0.8 -> 1.1 GB/s.
fn set_read_ahead(dev: u64, bytes: u64) {
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let kib = (bytes / 1024).max(4);
    match std::fs::write(&knob, format!("{kib}\n")) {
        Ok(()) => tracing::debug!(knob, kib, "read-ahead set"),
        // Not root, or no sysfs: the mount works, sequential reads are slower.
        Err(e) => {
            tracing::info!(knob, error = %e, "could not raise the read-ahead; keeping the kernel's")
        }
    }
}

fn check_mountpoint(p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mountpoint {} is not a directory", p.display())),
        Err(e) => Err(format!("mountpoint {}: {e}", p.display())),
    }
}

/// Re-run ourselves in a new session and return once the child is mounted.
/// (A fork() after threads exist is unsafe; a fresh exec is not.)
fn daemonize() -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these two open descriptors; we own them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_raw = fds[1];
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, write_raw.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::setsid();
            let flags = libc::fcntl(write_raw, libc::F_GETFD);
            libc::fcntl(write_raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the daemon: {e}"))?;
    drop(write_end);
    let mut buf = [0u8; 1];
    let mut reader = std::fs::File::from(read_end);
    match reader.read(&mut buf) {
        Ok(1) => Ok(()),
        _ => {
            let status = child.wait().map_err(|e| e.to_string())?;
            Err(format!("the background mount failed ({status})"))
        }
    }
}

/// Tell systemd (Type=notify) about a state change; a no-op without
/// NOTIFY_SOCKET. Sent only after a stat through the mount succeeded, so units
/// ordered After= this one find /media answering.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)");
    }
}

fn signal_ready() {
    if let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        // SAFETY: the parent passed us this fd for exactly this purpose.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = f.write_all(b"1");
        // A daemon lets go of the terminal (or the pipe of whoever started
        // it): from here on, logs go to --log-file only.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto stderr of a descriptor we own.
            unsafe { libc::dup2(null.as_raw_fd(), libc::STDERR_FILENO) };
        }
    }
}

pub fn lazy_unmount(mountpoint: &Path) -> Result<(), String> {
    unmount(mountpoint, true)
}

/// umount(2), falling back to fusermount for unprivileged users.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), String> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| "mountpoint contains a NUL byte".to_string())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EPERM) {
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        let status = cmd
            .arg(mountpoint)
            .status()
            .map_err(|e| format!("fusermount3: {e}"))?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("fusermount3 -u {} failed", mountpoint.display()))
        };
    }
    if err.raw_os_error() == Some(libc::EBUSY) {
        return Err(format!(
            "{} is busy (files open); close them or use `mediafs unmount --lazy`",
            mountpoint.display()
        ));
    }
    Err(format!("unmounting {}: {err}", mountpoint.display()))
}
