//! Parsing the STORE argument and opening the backend it names.

use std::path::PathBuf;
use std::sync::Arc;

use super::Store;
use super::local::LocalStore;
use super::s3::{S3Config, S3Store};
use super::sql::{MysqlUrl, SqlConfig, SqlStore, Tables};
use super::swift::{Auth, SwiftConfig, SwiftStore};

/// What the user asked to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A plain directory: `/srv/media` or `file:///srv/media`.
    Local(PathBuf),
    /// An S3 bucket, optionally below a key prefix: `s3://BUCKET[/PREFIX]`.
    /// `prefix` has no leading or trailing `/` ("" = the whole bucket).
    S3 { bucket: String, prefix: String },
    /// An OpenStack Swift container through the native API, optionally below
    /// a key prefix: `swift://CONTAINER[/PREFIX]`.
    Swift { container: String, prefix: String },
    /// Magento's media tables: `mysql://USER@HOST[:PORT]/DATABASE`, or
    /// `mysql://USER@localhost/DATABASE?socket=/run/mysqld/mysqld.sock`.
    Mysql(MysqlUrl),
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
        if let Some(rest) = s.strip_prefix("s3://") {
            return parse_s3(s, rest);
        }
        if let Some(rest) = s.strip_prefix("swift://") {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if container.is_empty() || container.len() > 256 {
                return Err(format!(
                    "store {s:?}: swift://CONTAINER[/PREFIX] needs a container name (at most 256 bytes)"
                ));
            }
            return Ok(StoreUrl::Swift {
                container: container.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        for scheme in ["mysql://", "mariadb://"] {
            if let Some(rest) = s.strip_prefix(scheme) {
                return Ok(StoreUrl::Mysql(MysqlUrl::parse(rest, s)?));
            }
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "store {s:?}: unknown scheme {scheme:?}; this build knows plain directories, file://, s3://, swift://, mysql:// and mariadb://"
            ));
        }
        if s.is_empty() {
            return Err("store: empty path".into());
        }
        Ok(StoreUrl::Local(PathBuf::from(s)))
    }

    /// A stable identity for the cache: two mounts of the same store share
    /// cache entries, different stores never do.
    /// For S3 the endpoint comes from AWS_ENDPOINT_URL; prefer
    /// [`StoreUrl::identity_with`] where the options are known.
    pub fn identity(&self) -> String {
        self.identity_with(&StoreOptions::default())
    }

    /// The identity, with the endpoint of `opts` for S3: the same bucket name
    /// on two servers is two stores.
    pub fn identity_with(&self, opts: &StoreOptions) -> String {
        match self {
            StoreUrl::Local(p) => {
                let p = p.canonicalize().unwrap_or_else(|_| p.clone());
                format!("file://{}", p.display())
            }
            StoreUrl::S3 { bucket, prefix } => {
                let cfg = S3Config::from_options(bucket, prefix, opts);
                let mut id = format!("s3://{bucket}");
                if !prefix.is_empty() {
                    id = format!("{id}/{prefix}");
                }
                match cfg.endpoint {
                    Some(e) => format!("{id}@{}", e.trim_end_matches('/')),
                    None => format!("{id}@aws:{}", cfg.region),
                }
            }
            StoreUrl::Swift { container, prefix } => {
                let auth = opts
                    .auth_url
                    .clone()
                    .or_else(|| std::env::var("ST_AUTH").ok())
                    .or_else(|| std::env::var("OS_AUTH_URL").ok())
                    .unwrap_or_default();
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("/{prefix}")
                };
                format!("swift://{container}{prefix}@{}", auth.trim_end_matches('/'))
            }
            StoreUrl::Mysql(u) => u.display(),
        }
    }
}

/// `s3://BUCKET[/PREFIX]`, with the bucket naming rules checked here so a
/// typo fails with a clear message, not a signature error from the server.
fn parse_s3(url: &str, rest: &str) -> Result<StoreUrl, String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!(
            "store {url:?}: no bucket name; expected s3://BUCKET[/PREFIX]"
        ));
    }
    let bad = |why: &str| {
        Err(format!(
            "store {url:?}: {bucket:?} is not a valid S3 bucket name: {why}"
        ))
    };
    if !(3..=63).contains(&bucket.len()) {
        return bad("it must be 3 to 63 characters long");
    }
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return bad(&format!(
            "{c:?} is not allowed (lower-case letters, digits, '.', '-', '_' only)"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(bucket.chars().next()) || !edge_ok(bucket.chars().last()) {
        return bad("it must begin and end with a letter or a digit");
    }
    if bucket.contains("..") {
        return bad("it must not contain two dots in a row");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("it must not look like an IP address");
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() && !prefix.split('/').all(super::valid_name) {
        return Err(format!(
            "store {url:?}: prefix {prefix:?} has an empty, '.' or '..' component"
        ));
    }
    Ok(StoreUrl::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
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
    /// Swift: the auth URL (else ST_AUTH, else OS_AUTH_URL).
    pub auth_url: Option<String>,
    /// MySQL: prefix of the media table names (Magento's db table prefix).
    pub table_prefix: Option<String>,
    /// MySQL: Magento 1 table names (core_file_storage, core_directory_storage).
    pub magento1: bool,
    /// MySQL: read the password from this file (else MEDIAFS_MYSQL_PASSWORD,
    /// else MYSQL_PWD).
    pub password_file: Option<PathBuf>,
}

/// Open the store and check that it answers, so a bad store fails the mount
/// with a clear message instead of leaving a half-working directory.
pub async fn open_store(url: &StoreUrl, opts: &StoreOptions) -> Result<Arc<dyn Store>, String> {
    match url {
        StoreUrl::Local(path) => Ok(Arc::new(LocalStore::open(path)?)),
        StoreUrl::S3 { bucket, prefix } => Ok(Arc::new(
            S3Store::open(S3Config::from_options(bucket, prefix, opts)).await?,
        )),
        StoreUrl::Swift { container, prefix } => {
            let auth = Auth::from_env(opts.auth_url.as_deref(), opts.password_file.as_deref())?;
            Ok(Arc::new(
                SwiftStore::open(SwiftConfig::new(container, prefix, auth)).await?,
            ))
        }
        StoreUrl::Mysql(u) => {
            let cfg = SqlConfig {
                url: u.clone(),
                password: super::sql::config::load_password(opts.password_file.as_deref())?,
                tables: Tables::new(opts.table_prefix.as_deref().unwrap_or(""), opts.magento1)?,
            };
            Ok(Arc::new(SqlStore::open(cfg).await?))
        }
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

    #[test]
    fn parses_s3() {
        assert_eq!(
            StoreUrl::parse("s3://media").unwrap(),
            StoreUrl::S3 {
                bucket: "media".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://my-bucket.eu/shop/media/").unwrap(),
            StoreUrl::S3 {
                bucket: "my-bucket.eu".into(),
                prefix: "shop/media".into()
            }
        );
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Media",
            "s3://-media",
            "s3://me..dia",
            "s3://192.168.1.1",
            "s3://media/a//b",
            "s3://media/a/../b",
        ] {
            let e = StoreUrl::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(
            StoreUrl::parse("s3://Media")
                .unwrap_err()
                .contains("not a valid S3 bucket name")
        );
    }

    #[test]
    fn s3_identity_names_the_endpoint() {
        let url = StoreUrl::parse("s3://media/p").unwrap();
        let opts = StoreOptions {
            endpoint: Some("http://127.0.0.1:9000/".into()),
            ..StoreOptions::default()
        };
        assert_eq!(
            url.identity_with(&opts),
            "s3://media/p@http://127.0.0.1:9000"
        );
    }
}
