//! Object metadata shared by the object-store backends (S3, Swift): the
//! s3fs-fuse layout of mode/uid/gid/mtime in user metadata (S3's
//! `x-amz-meta-*` is Swift's `X-Object-Meta-*`, so both APIs of one cluster
//! agree), content types, versions and which keys can be file names.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Attrs, DirMeta, MAX_KEY_BYTES, StoreError, StoreResult, valid_name};

pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFDIR: u32 = 0o040000;
/// Content type of directory marker objects (`dir/`), as s3fs-fuse writes them.
pub(crate) const DIR_CONTENT_TYPE: &str = "application/x-directory";

pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `x-amz-meta-mtime`: decimal seconds, possibly with a fraction (newer s3fs).
pub(crate) fn parse_mtime(v: &str) -> Option<SystemTime> {
    let (secs, frac) = v.trim().split_once('.').unwrap_or((v.trim(), ""));
    let secs: u64 = secs.parse().ok()?;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - digits.len() as u32)
    };
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Attributes from user metadata as s3fs-fuse writes it.
pub(crate) fn attrs_from(md: Option<&HashMap<String, String>>) -> Attrs {
    let Some(md) = md else {
        return Attrs::default();
    };
    let num = |name: &str| md.get(name).and_then(|v| v.trim().parse::<u32>().ok());
    Attrs {
        mode: num("mode").map(|m| m & 0o7777),
        uid: num("uid"),
        gid: num("gid"),
        mtime: md.get("mtime").and_then(|v| parse_mtime(v)),
    }
}

/// Write `attrs` into user metadata as s3fs-fuse does; `type_bits` is S_IFREG
/// or S_IFDIR, `default_mode` the permission bits when `attrs` has none.
pub(crate) fn put_attrs(
    md: &mut HashMap<String, String>,
    attrs: &Attrs,
    type_bits: u32,
    default_mode: u32,
) {
    let mode = type_bits | (attrs.mode.unwrap_or(default_mode) & 0o7777);
    md.insert("mode".into(), mode.to_string());
    if let Some(uid) = attrs.uid {
        md.insert("uid".into(), uid.to_string());
    }
    if let Some(gid) = attrs.gid {
        md.insert("gid".into(), gid.to_string());
    }
    let mtime = attrs.mtime.unwrap_or_else(SystemTime::now);
    md.insert("mtime".into(), unix_seconds(mtime).to_string());
}

pub(crate) fn content_type_of(key: &str) -> String {
    mime_guess::from_path(key)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

/// The version of an object: its ETag (or, for a server without one, what we
/// know of it).
pub(crate) fn version_of(etag: Option<&str>, size: u64, modified: Option<SystemTime>) -> String {
    match etag {
        Some(e) if !e.is_empty() => e.to_string(),
        _ => format!(
            "{size:x}-{:x}",
            modified
                .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ),
    }
}

pub(crate) fn implied_dir(key: &str) -> DirMeta {
    DirMeta {
        key: key.to_string(),
        modified: None,
        attrs: Attrs::default(),
    }
}

/// Whether every component of a relative key can be a file name.
pub(crate) fn valid_path(rel: &str) -> bool {
    rel.split('/').all(valid_name)
}

/// The full object key (`root` is `PREFIX/` or "") of a file or directory
/// about to be written, checked: every component a valid name, the whole
/// within the object stores' 1,024-byte key length.
pub(crate) fn writable_key(root: &str, key: &str) -> StoreResult<String> {
    if key.is_empty() || !valid_path(key) {
        return Err(StoreError::InvalidKey(key.to_string()));
    }
    let full = format!("{root}{key}");
    if full.len() > MAX_KEY_BYTES {
        return Err(StoreError::NameTooLong(key.to_string()));
    }
    Ok(full)
}
