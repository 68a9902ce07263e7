//! What a `mysql://` STORE names, which tables it means, the password, and the
//! length limits of Magento's name columns.

use std::path::{Path, PathBuf};

use crate::store::{StoreError, StoreResult};

/// `mysql://USER@HOST[:PORT]/DATABASE` or, over a unix socket,
/// `mysql://USER@localhost/DATABASE?socket=/run/mysqld/mysqld.sock`.
/// `mariadb://` is accepted as a synonym. There is no place for a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub socket: Option<PathBuf>,
}

pub const DEFAULT_PORT: u16 = 3306;

impl MysqlUrl {
    /// Parse what follows `mysql://`; `whole` is the argument, for messages.
    pub fn parse(rest: &str, whole: &str) -> Result<Self, String> {
        // Messages quote the argument; a password typed into it anyway must
        // not reach the terminal or the logs along with them.
        let whole = &redact_password(whole);
        let bad = |why: &str| {
            format!(
                "store {whole:?}: {why}; expected mysql://USER@HOST[:PORT]/DATABASE \
                 or mysql://USER@localhost/DATABASE?socket=/path/to/mysqld.sock"
            )
        };
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let (userinfo, hostdb) = main.rsplit_once('@').ok_or_else(|| bad("no user name"))?;
        if userinfo.contains(':') {
            return Err(format!(
                "store {whole:?}: a password does not belong on the command line; \
                 put it in MEDIAFS_MYSQL_PASSWORD (or MYSQL_PWD), or in a file named by --password-file"
            ));
        }
        let user = percent_decode(userinfo).ok_or_else(|| bad("bad %-escape in the user"))?;
        if user.is_empty() {
            return Err(bad("empty user name"));
        }
        let (hostport, database) = hostdb.split_once('/').ok_or_else(|| bad("no database"))?;
        let database = percent_decode(database).ok_or_else(|| bad("bad %-escape"))?;
        if database.is_empty() || database.contains('/') {
            return Err(bad("the database must be one name"));
        }
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
        let mut socket = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("socket", v)) => {
                    let v = percent_decode(v).ok_or_else(|| bad("bad %-escape"))?;
                    if !v.starts_with('/') {
                        return Err(bad("socket= needs an absolute path"));
                    }
                    socket = Some(PathBuf::from(v));
                }
                _ => return Err(bad(&format!("unknown option {pair:?} (only socket=PATH)"))),
            }
        }
        Ok(MysqlUrl {
            user,
            host,
            port: port.unwrap_or(DEFAULT_PORT),
            database,
            socket,
        })
    }

    /// The URL again (never with a password: it has none).
    pub fn display(&self) -> String {
        match &self.socket {
            Some(s) => format!(
                "mysql://{}@{}/{}?socket={}",
                self.user,
                self.host,
                self.database,
                s.display()
            ),
            None => format!(
                "mysql://{}@{}:{}/{}",
                self.user, self.host, self.port, self.database
            ),
        }
    }
}

/// `whole` with anything between the user name's `:` and the last `@`
/// replaced by `***` (the `@` found before any `?`-query would still leave a
/// password in `user:pa?ss@host`, so the last `@` of the whole text counts).
fn redact_password(whole: &str) -> String {
    let Some((scheme, rest)) = whole.split_once("://") else {
        return whole.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, tail)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{tail}")
        }
        _ => whole.to_string(),
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    Some((host.to_string(), port))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The two tables, and mediafs's side table beside them (see `side.rs`),
/// already quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub files: String,
    pub dirs: String,
    pub meta: String,
}

impl Tables {
    /// Magento 2's `media_storage_*` names, or Magento 1's `core_*_storage`,
    /// after an optional prefix (letters, digits and `_` only). The side
    /// table is `mediafs_file_meta` (Magento 1: `mediafs_core_file_meta`)
    /// after the same prefix.
    pub fn new(prefix: &str, magento1: bool) -> Result<Self, String> {
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "--table-prefix {prefix:?}: only letters, digits and _ are allowed"
            ));
        }
        let (files, dirs, meta) = if magento1 {
            (
                "core_file_storage",
                "core_directory_storage",
                "mediafs_core_file_meta",
            )
        } else {
            (
                "media_storage_file_storage",
                "media_storage_directory_storage",
                "mediafs_file_meta",
            )
        };
        Ok(Tables {
            files: format!("`{prefix}{files}`"),
            dirs: format!("`{prefix}{dirs}`"),
            meta: format!("`{prefix}{meta}`"),
        })
    }
}

/// The password: the file named by --password-file, else MEDIAFS_MYSQL_PASSWORD,
/// else MYSQL_PWD, else none. Never logged.
pub fn load_password(file: Option<&Path>) -> Result<Option<String>, String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("--password-file {}: {e}", f.display()))?;
        // The first line, without its line end (spaces are kept).
        let first = text.lines().next().unwrap_or("");
        return Ok(Some(first.trim_end_matches('\r').to_string()));
    }
    for var in ["MEDIAFS_MYSQL_PASSWORD", "MYSQL_PWD"] {
        if let Ok(v) = std::env::var(var) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Magento's columns: `filename` and `name` are varchar(100), `directory` and
/// `path` varchar(255), counted in characters.
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_DIR_CHARS: usize = 255;

/// Whether the tables can hold a file or directory at `key`: every component
/// fits a name column and the parent directory fits a path column. utf8mb3
/// columns cannot hold characters outside the Basic Multilingual Plane.
pub fn check_key(key: &str) -> StoreResult<()> {
    if key.chars().any(|c| c as u32 > 0xFFFF) {
        return Err(StoreError::InvalidKey(format!(
            "{key}: Magento's utf8 (utf8mb3) columns cannot hold characters outside the Basic Multilingual Plane"
        )));
    }
    let (dir, _) = split_key(key);
    if key.split('/').any(|c| c.chars().count() > MAX_NAME_CHARS) {
        return Err(StoreError::NameTooLong(format!(
            "{key}: a name in the media tables holds at most {MAX_NAME_CHARS} characters"
        )));
    }
    if dir.chars().count() > MAX_DIR_CHARS {
        return Err(StoreError::NameTooLong(format!(
            "{key}: a directory path in the media tables holds at most {MAX_DIR_CHARS} characters"
        )));
    }
    Ok(())
}

/// `a/b/c.jpg` -> (`a/b`, `c.jpg`); `c.jpg` -> (``, `c.jpg`).
pub fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<MysqlUrl, String> {
        MysqlUrl::parse(s.strip_prefix("mysql://").unwrap(), s)
    }

    #[test]
    fn urls() {
        let u = p("mysql://magento@db.example:3307/shop").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port),
            ("magento", "db.example", 3307)
        );
        assert_eq!(u.database, "shop");
        assert_eq!(u.socket, None);
        assert_eq!(u.display(), "mysql://magento@db.example:3307/shop");
        let u = p("mysql://m%40x@127.0.0.1/shop").unwrap();
        assert_eq!((u.user.as_str(), u.port), ("m@x", 3306));
        let u = p("mysql://m@localhost/shop?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(u.socket, Some(PathBuf::from("/run/mysqld/mysqld.sock")));
        let u = p("mysql://m@[::1]:3310/shop").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3310));
        let err = p("mysql://m:secret@h/db").unwrap_err();
        assert!(err.contains("password") && !err.contains("secret"), "{err}");
        let err = p("mysql://m:se?cret@h/db").unwrap_err();
        assert!(!err.contains("cret"), "{err}");
        let err = p("mysql://m:s@cr@t/db").unwrap_err();
        assert!(!err.contains("s@cr"), "{err}");
        assert!(p("mysql://h/db").is_err());
        assert!(p("mysql://m@h").is_err());
        assert!(p("mysql://m@h:0/db").is_err());
        assert!(p("mysql://m@h/db?sockett=/x").is_err());
        assert!(p("mysql://m@h/db?socket=rel").is_err());
    }

    #[test]
    fn password_file_first_line() {
        let dir = std::env::temp_dir().join(format!("mediafs-pw-{}", std::process::id()));
        std::fs::write(&dir, "s3cret \r\nsecond line\n").unwrap();
        let pw = load_password(Some(&dir)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(pw.as_deref(), Some("s3cret "));
        assert!(load_password(Some(Path::new("/no/such/file"))).is_err());
    }

    #[test]
    fn tables() {
        let t = Tables::new("", false).unwrap();
        assert_eq!(t.files, "`media_storage_file_storage`");
        let t = Tables::new("mg_", true).unwrap();
        assert_eq!(t.dirs, "`mg_core_directory_storage`");
        assert!(Tables::new("x`; DROP", false).is_err());
    }

    #[test]
    fn limits() {
        assert!(check_key(&"n".repeat(100)).is_ok());
        assert!(matches!(
            check_key(&"n".repeat(101)),
            Err(StoreError::NameTooLong(_))
        ));
        assert!(check_key(&format!("{}/x", "é".repeat(100))).is_ok());
        let deep = vec!["d".repeat(50); 6].join("/");
        assert!(matches!(
            check_key(&format!("{deep}/f")),
            Err(StoreError::NameTooLong(_))
        ));
        assert!(matches!(
            check_key("smile-😀.png"),
            Err(StoreError::InvalidKey(_))
        ));
        assert_eq!(split_key("a/b/c"), ("a/b", "c"));
        assert_eq!(split_key("c"), ("", "c"));
    }
}
