//! Parsing the STORE argument and opening the backend it names.

use std::path::PathBuf;
use std::sync::Arc;

use super::Store;
use super::local::LocalStore;

/// What the user asked to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A plain directory: `/srv/media` or `file:///srv/media`.
    Local(PathBuf),
}

impl StoreUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "store {s:?}: a file:// URL needs an absolute path, e.g. file:///srv/media"
                ));
            }
            return Ok(StoreUrl::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "store {s:?}: unknown scheme {scheme:?}; this build knows plain directories and file://"
            ));
        }
        if s.is_empty() {
            return Err("store: empty path".into());
        }
        Ok(StoreUrl::Local(PathBuf::from(s)))
    }

    /// A stable identity for the cache: two mounts of the same store share
    /// cache entries, different stores never do.
    pub fn identity(&self) -> String {
        match self {
            StoreUrl::Local(p) => {
                let p = p.canonicalize().unwrap_or_else(|_| p.clone());
                format!("file://{}", p.display())
            }
        }
    }
}

/// Backend options from the command line or environment (never secrets: those
/// come from the environment or files, read by the backend itself).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// S3: endpoint URL (else AWS_ENDPOINT_URL, else AWS).
    pub endpoint: Option<String>,
    /// S3: region (else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1).
    pub region: Option<String>,
    /// S3: path-style addressing (http://host/bucket/key).
    pub path_style: bool,
    /// S3: profile in the shared credentials file (else AWS_PROFILE, else default).
    pub profile: Option<String>,
}

/// Open the store and check that it answers, so a bad store fails the mount
/// with a clear message instead of leaving a half-working directory.
pub async fn open_store(url: &StoreUrl, opts: &StoreOptions) -> Result<Arc<dyn Store>, String> {
    let _ = opts;
    match url {
        StoreUrl::Local(path) => Ok(Arc::new(LocalStore::open(path)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            StoreUrl::parse("/srv/m").unwrap(),
            StoreUrl::Local("/srv/m".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/m").unwrap(),
            StoreUrl::Local("/srv/m".into())
        );
        assert!(StoreUrl::parse("file://rel").is_err());
        assert!(
            StoreUrl::parse("ftp://x")
                .unwrap_err()
                .contains("unknown scheme")
        );
    }
}
