//! `mount.mediafs`: the helper mount(8) runs for `mount -t mediafs` and for
//! fstab lines of type `mediafs`. It is this same binary under that name
//! (`scripts/install` makes the symlink).
//!
//! mount(8) calls `mount.mediafs STORE MOUNTPOINT [-sfnv] [-o OPTIONS]` and
//! expects it to return once the file system is mounted. We turn the `-o`
//! options into `mediafs mount` flags, add `--daemon`, and run that: it
//! returns when the mount answers and keeps serving in the background.

use std::ffi::OsString;
use std::process::Command;

/// What the helper was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Run `mediafs` with these arguments.
    Mount(Vec<String>),
    /// `-f`: pretend (mount(8) --fake); do nothing.
    Fake,
}

/// Exit codes mount(8) understands (see mount(8), "RETURN CODES").
pub const EX_USAGE: u8 = 1;
pub const EX_FAIL: u8 = 32;

/// Whether we were started as the mount helper.
pub fn invoked_as_helper(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name().map(|n| n.to_owned()))
        .is_some_and(|n| n == "mount.mediafs")
}

/// Options mount(8) passes that mean nothing to us (or that it handled).
fn ignored(opt: &str) -> bool {
    const PLAIN: &[&str] = &[
        "rw",
        "defaults",
        "_netdev",
        "auto",
        "noauto",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "nofail",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "diratime",
        "async",
        "sync",
        "silent",
        "loud",
    ];
    PLAIN.contains(&opt)
        || opt.starts_with("x-")
        || opt.starts_with("comment=")
        || opt.starts_with("user=")
}

/// Map one `-o` option to flags; `Ok(false)` if it is not one of ours.
fn map_option(opt: &str, out: &mut Vec<String>) -> Result<bool, String> {
    let (name, value) = match opt.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (opt, None),
    };
    let flag = |out: &mut Vec<String>, f: &str| -> Result<bool, String> {
        let v = value.ok_or_else(|| format!("option {name} needs a value ({name}=...)"))?;
        out.push(f.to_string());
        out.push(v.to_string());
        Ok(true)
    };
    let switch = |out: &mut Vec<String>, f: &str| -> Result<bool, String> {
        if value.is_some() {
            return Err(format!("option {name} takes no value"));
        }
        out.push(f.to_string());
        Ok(true)
    };
    match name {
        "cache_dir" => flag(out, "--cache-dir"),
        "cache_size" => flag(out, "--cache-size"),
        "read_ahead" => flag(out, "--read-ahead"),
        "metadata_ttl" => flag(out, "--metadata-ttl"),
        "uid" => flag(out, "--uid"),
        "gid" => flag(out, "--gid"),
        "file_mode" => flag(out, "--file-mode"),
        "dir_mode" => flag(out, "--dir-mode"),
        "log_level" => flag(out, "--log-level"),
        "log_file" => flag(out, "--log-file"),
        "metrics_addr" => flag(out, "--metrics-addr"),
        "endpoint" => flag(out, "--endpoint"),
        "region" => flag(out, "--region"),
        "profile" => flag(out, "--profile"),
        "ro" => switch(out, "--read-only"),
        "allow_other" => switch(out, "--allow-other"),
        "path_style" => switch(out, "--path-style"),
        _ => Ok(false),
    }
}

/// Turn the helper's command line (without argv[0]) into a plan.
pub fn plan(args: &[String]) -> Result<Plan, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut sloppy, mut fake) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(it.next().ok_or("-o needs a list of options")?.clone()),
            "-t" => {
                it.next(); // the type: mediafs, or fuse.mediafs
            }
            "-s" => sloppy = true,
            "-f" => fake = true,
            "-n" | "-v" => {}
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown argument {s}"));
            }
            _ => positional.push(a.clone()),
        }
    }
    let [store, mountpoint] = positional.as_slice() else {
        return Err("usage: mount.mediafs STORE MOUNTPOINT [-o OPTIONS]".into());
    };
    let mut flags = Vec::new();
    for opt in options.iter().flat_map(|o| o.split(',')) {
        if opt.is_empty() || ignored(opt) {
            continue;
        }
        if !map_option(opt, &mut flags)? && !sloppy {
            return Err(format!("unknown mount option {opt:?}"));
        }
    }
    if fake {
        return Ok(Plan::Fake);
    }
    let mut out = vec!["mount".to_string(), store.clone(), mountpoint.clone()];
    out.extend(flags);
    out.push("--daemon".into());
    Ok(Plan::Mount(out))
}

/// Run as `mount.mediafs`; returns the process exit code.
pub fn main(args: Vec<String>) -> u8 {
    match plan(&args) {
        Ok(Plan::Fake) => 0,
        Ok(Plan::Mount(argv)) => {
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("mount.mediafs: cannot find the mediafs binary: {e}");
                    return EX_FAIL;
                }
            };
            use std::os::unix::process::CommandExt;
            match Command::new(exe).arg0("mediafs").args(&argv).status() {
                Ok(s) if s.success() => 0,
                Ok(_) => EX_FAIL,
                Err(e) => {
                    eprintln!("mount.mediafs: starting mediafs: {e}");
                    EX_FAIL
                }
            }
        }
        Err(e) => {
            eprintln!("mount.mediafs: {e}");
            EX_USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Plan, String> {
        plan(&s.split(' ').map(String::from).collect::<Vec<_>>())
    }

    fn mount(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn maps_options_as_mount_passes_them() {
        assert_eq!(
            p(
                "/srv/media /media -o rw,_netdev,noauto,defaults,cache_dir=/var/cache/m,cache_size=20G,metadata_ttl=3,allow_other,uid=33,gid=33"
            ),
            Ok(Plan::Mount(mount(
                "mount /srv/media /media --cache-dir /var/cache/m --cache-size 20G --metadata-ttl 3 --allow-other --uid 33 --gid 33 --daemon"
            )))
        );
        assert_eq!(
            p("file:///s /m -n -o ro,x-systemd.automount,nofail -v"),
            Ok(Plan::Mount(mount(
                "mount file:///s /m --read-only --daemon"
            )))
        );
        assert_eq!(
            p("/s /m -oro"),
            Ok(Plan::Mount(mount("mount /s /m --read-only --daemon")))
        );
        assert_eq!(
            p("/s /m -o log_file=/var/log/m.log,metrics_addr=127.0.0.1:9380"),
            Ok(Plan::Mount(mount(
                "mount /s /m --log-file /var/log/m.log --metrics-addr 127.0.0.1:9380 --daemon"
            )))
        );
        assert_eq!(p("/s /m"), Ok(Plan::Mount(mount("mount /s /m --daemon"))));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(p("/s /m -o bogus").unwrap_err().contains("bogus"));
        assert!(
            p("/s /m -o cache_dir")
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(p("/s /m -o ro=1").unwrap_err().contains("no value"));
        assert!(p("/s").is_err());
        assert!(p("/s /m -x").is_err());
        // -s (sloppy): unknown options are ignored.
        assert_eq!(
            p("/s /m -s -o bogus,ro"),
            Ok(Plan::Mount(mount("mount /s /m --read-only --daemon")))
        );
        assert_eq!(p("/s /m -f -o ro"), Ok(Plan::Fake));
    }

    #[test]
    fn recognises_its_name() {
        assert!(invoked_as_helper(Some(&"/sbin/mount.mediafs".into())));
        assert!(invoked_as_helper(Some(&"mount.mediafs".into())));
        assert!(!invoked_as_helper(Some(&"/usr/local/bin/mediafs".into())));
        assert!(!invoked_as_helper(None));
    }
}
