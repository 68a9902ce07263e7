//! Command-line interface (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mediafs",
    version,
    about = "Mount a shared media store (local directory, S3) as a normal directory",
    long_about = "mediafs mounts a shared media store as a directory. Reads are served \
through a local disk cache; writes reach the store before close() returns."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", env = "MEDIAFS_LOG_LEVEL")]
    pub log_level: String,

    /// Append logs to this file instead of stderr (useful with --daemon).
    #[arg(long, global = true, env = "MEDIAFS_LOG_FILE")]
    pub log_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount STORE at MOUNTPOINT.
    Mount(Box<MountArgs>),
    /// Unmount a mediafs mount.
    Unmount {
        mountpoint: PathBuf,
        /// Detach now even if files are open (umount -l).
        #[arg(long)]
        lazy: bool,
    },
    /// Check that a store is reachable and lets us list, read, write and
    /// delete (with a temporary object); non-zero exit if not.
    Check(CheckArgs),
    /// Copy an existing media directory into a store (resumable).
    Import(ImportArgs),
    /// Inspect or empty a cache directory (not in use by a mount).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Files and bytes held.
    Stats {
        #[arg(long)]
        cache_dir: PathBuf,
    },
    /// Delete every cached file (never touches unsaved staging files).
    Clear {
        #[arg(long)]
        cache_dir: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// The store: a directory (/srv/media or file:///srv/media), or Magento's
    /// media tables: mysql://USER@HOST[:PORT]/DATABASE or
    /// mysql://USER@localhost/DATABASE?socket=/run/mysqld/mysqld.sock
    /// (password from MEDIAFS_MYSQL_PASSWORD, MYSQL_PWD or --password-file).
    pub store: String,
    /// Where to mount it (an existing directory).
    pub mountpoint: PathBuf,

    /// Local cache directory (created with mode 0700).
    #[arg(long, default_value = "/var/cache/mediafs")]
    pub cache_dir: PathBuf,
    /// Cache bound, e.g. 512M, 20G.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Seconds a lookup, attribute or listing is trusted; 0 = ask the store on
    /// every open.
    #[arg(long, default_value_t = 5)]
    pub metadata_ttl: u64,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Let other users use the mount (permissions are still enforced).
    #[arg(long)]
    pub allow_other: bool,
    /// Owner for files whose store keeps none (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group for files whose store keeps none (default: the mounting group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Mode (octal) for files whose store keeps none.
    #[arg(long, default_value = "644", value_parser = parse_mode)]
    pub file_mode: u32,
    /// Mode (octal) for directories whose store keeps none.
    #[arg(long, default_value = "755", value_parser = parse_mode)]
    pub dir_mode: u32,
    /// Go to the background once the mount is ready.
    #[arg(long)]
    pub daemon: bool,
    /// Seconds a store request may go unanswered before it fails with EIO
    /// (uploads get extra time for their size).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub store_timeout: u64,
    /// Never let the kernel read cache files directly (FUSE passthrough).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Ask the store for each listed file's own metadata (one HEAD per file)
    /// before showing its attributes, where listings carry none (S3, Swift):
    /// modes, owners and mtimes set by s3fs-fuse or by a chmod on another
    /// host then show exactly, at one request per file for `ls -l`. Without
    /// it, listed files show the listing's size and Last-Modified and the
    /// mount's --uid/--gid/--file-mode until a GET or HEAD of the file (an
    /// open) brings its own.
    #[arg(long)]
    pub stat_listed_files: bool,
    /// Kernel read-ahead of the mount, e.g. 1M. The kernel gives FUSE 128K,
    /// which cuts a sequential read into 8 times as many requests; 0 keeps
    /// the kernel's value. Needs root (it is set in /sys/class/bdi).
    #[arg(long, default_value = "1M", value_parser = parse_size_or_zero)]
    pub read_ahead: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9380).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub store_opts: StoreArgs,
}

/// How to reach the store (shared by mount, check and import). Secrets never
/// come from flags: backends read them from the environment or their files.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// S3 endpoint URL (else AWS_ENDPOINT_URL).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// S3 region (else AWS_REGION).
    #[arg(long)]
    pub region: Option<String>,
    /// S3 path-style addressing (http://host/bucket/key).
    #[arg(long)]
    pub path_style: bool,
    /// Profile in the AWS shared credentials file.
    #[arg(long)]
    pub profile: Option<String>,

    /// Swift: the auth URL, v1 (…/auth/v1.0) or Keystone v3 (…/v3); else
    /// ST_AUTH or OS_AUTH_URL. The key or password comes from ST_KEY /
    /// OS_PASSWORD or --password-file.
    #[arg(long)]
    pub auth_url: Option<String>,
    /// MySQL: Magento's table prefix (the db table_prefix of app/etc/env.php).
    #[arg(long)]
    pub table_prefix: Option<String>,
    /// MySQL: Magento 1 table names (core_file_storage, core_directory_storage).
    #[arg(long)]
    pub magento1: bool,
    /// MySQL and Swift: read the password (Swift: key) from this file's first
    /// line; else MEDIAFS_MYSQL_PASSWORD / MYSQL_PWD, or ST_KEY / OS_PASSWORD.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

impl StoreArgs {
    pub fn options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            profile: self.profile.clone(),
            auth_url: self.auth_url.clone(),
            table_prefix: self.table_prefix.clone(),
            magento1: self.magento1,
            password_file: self.password_file.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The directory to copy (e.g. the old NFS media directory).
    pub src: PathBuf,
    /// The store, as for `mediafs mount`.
    pub store: String,
    /// Uploads running at once.
    #[arg(long, short = 'j', default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Say what would be uploaded, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store_opts: StoreArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The store, as for `mediafs mount`.
    pub store: String,
    /// Only check what a read-only mount needs (list and read); write nothing.
    #[arg(long)]
    pub read_only: bool,
    /// Give up on a store request after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub store_opts: StoreArgs,
}

/// As `parse_size`, and "0" (meaning: leave it as it is).
fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s)
}

/// "512M", "20G", "1T", "4096" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use e.g. 512M or 20G"))?;
    let mult: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M, G or T")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 644"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert!(parse_mode("9").is_err());
        assert!(parse_mode("77777").is_err());
    }
}
