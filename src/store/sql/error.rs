//! MySQL errors as `StoreError`s, each with a message that says what to do.

use mysql_async::Error as DbError;

use crate::store::StoreError;

/// Server error numbers we act on.
pub const ER_DUP_ENTRY: u16 = 1062;
pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
pub const ER_LOCK_DEADLOCK: u16 = 1213;
pub const ER_DBACCESS_DENIED: u16 = 1044;
const ER_ACCESS_DENIED: u16 = 1045;
const ER_BAD_DB: u16 = 1049;
pub const ER_BAD_FIELD: u16 = 1054;
pub const ER_TABLEACCESS_DENIED: u16 = 1142;
pub const ER_COLUMNACCESS_DENIED: u16 = 1143;
pub const ER_NO_SUCH_TABLE: u16 = 1146;
pub const ER_READ_ONLY: u16 = 1290;
pub const ER_READ_ONLY_TX: u16 = 1792;
const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
const ER_WARN_ALLOWED_PACKET_OVERFLOWED: u16 = 1301;
const ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: u16 = 1366;
const ER_DATA_TOO_LONG: u16 = 1406;

/// Something went wrong inside an operation: a decision of ours, or the database.
#[derive(Debug)]
pub enum Fail {
    Store(StoreError),
    Db(DbError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        Fail::Db(e)
    }
}

pub type Res<T> = Result<T, Fail>;

impl Fail {
    /// A deadlock or lock wait timeout: the transaction may simply be run again.
    pub fn retryable(&self) -> bool {
        matches!(self, Fail::Db(DbError::Server(e))
            if e.code == ER_LOCK_DEADLOCK || e.code == ER_LOCK_WAIT_TIMEOUT)
    }

    pub fn into_store(self, what: &str) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Db(e) => db_error(e, what),
        }
    }
}

pub fn too_large(what: &str, size: u64, limit: u64) -> StoreError {
    StoreError::TooLarge(format!(
        "{what} is {size} bytes, more than the MySQL server's max_allowed_packet \
         ({limit} bytes) lets one statement carry; raise max_allowed_packet on the \
         server (e.g. max_allowed_packet=256M in the [mysqld] section) to store it"
    ))
}

/// `what` names the key or the operation.
pub fn db_error(e: DbError, what: &str) -> StoreError {
    match e {
        DbError::Server(s) => match s.code {
            ER_DUP_ENTRY => {
                tracing::warn!(
                    key = %what,
                    error = %s.message,
                    "the name clashes with an existing row under the table's collation \
                     (Magento's is case-insensitive: 'A.jpg' and 'a.jpg' are one name); \
                     refused with EEXIST, no row was changed"
                );
                StoreError::AlreadyExists
            }
            ER_DATA_TOO_LONG => StoreError::NameTooLong(format!("{what}: {}", s.message)),
            ER_NET_PACKET_TOO_LARGE | ER_WARN_ALLOWED_PACKET_OVERFLOWED => {
                StoreError::TooLarge(format!(
                    "{what}: {} (raise max_allowed_packet on the MySQL server)",
                    s.message
                ))
            }
            ER_TRUNCATED_WRONG_VALUE_FOR_FIELD => {
                StoreError::InvalidKey(format!("{what}: {}", s.message))
            }
            ER_ACCESS_DENIED | ER_DBACCESS_DENIED | ER_TABLEACCESS_DENIED | ER_BAD_DB => {
                StoreError::PermissionDenied(format!("{what}: {}", s.message))
            }
            ER_NO_SUCH_TABLE => StoreError::Other(format!(
                "{what}: {} (are --table-prefix and --magento1 right?)",
                s.message
            )),
            ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT => {
                StoreError::Unavailable(format!("{what}: {}", s.message))
            }
            _ => StoreError::Other(format!("{what}: MySQL error {}: {}", s.code, s.message)),
        },
        DbError::Io(e) => StoreError::Unavailable(format!("{what}: {e}")),
        DbError::Driver(e) => StoreError::Unavailable(format!("{what}: {e}")),
        other => StoreError::Other(format!("{what}: {other}")),
    }
}
