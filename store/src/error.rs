//! Error types: one enum per operation, each carrying what was being done.
//!
//! Underneath every storage failure is a [`Fault`]: the SQLite error classified into what a
//! caller can act on (disk full, busy, corrupt, read-only, something else).

use std::fmt;
use std::path::PathBuf;

/// What kind of storage failure happened, in the terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// The disk is full, or the database reached its configured size limit.
    Full,
    /// Another connection holds the lock and the busy timeout ran out.
    Busy,
    /// The file is damaged (or, for an encrypted page, was written with another key).
    Corrupt,
    /// The file or its directory cannot be written.
    ReadOnly,
    /// An I/O error from the operating system.
    Io,
    /// A constraint or another SQLite error: a bug or a broken invariant.
    Other,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Full => "the disk is full or the database reached its size limit",
            FaultKind::Busy => "the database is locked by another connection",
            FaultKind::Corrupt => "the database file is damaged",
            FaultKind::ReadOnly => "the database file is read-only",
            FaultKind::Io => "an I/O error",
            FaultKind::Other => "an SQLite error",
        })
    }
}

/// A storage failure from SQLite, classified.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Fault {
    kind: FaultKind,
    #[source]
    source: rusqlite::Error,
}

impl Fault {
    /// What kind of failure this is.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }
}

impl From<rusqlite::Error> for Fault {
    fn from(source: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let kind = match source.sqlite_error_code() {
            Some(C::DiskFull) => FaultKind::Full,
            Some(C::DatabaseBusy | C::DatabaseLocked) => FaultKind::Busy,
            Some(C::DatabaseCorrupt | C::NotADatabase) => FaultKind::Corrupt,
            Some(C::ReadOnly | C::CannotOpen) => FaultKind::ReadOnly,
            Some(C::SystemIoFailure) => FaultKind::Io,
            _ => FaultKind::Other,
        };
        Fault { kind, source }
    }
}

/// Deriving, generating, reading or writing a storage key failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random(#[source] getrandom::Error),
    /// Argon2id rejected its parameters or failed.
    #[error("deriving the storage key from the passphrase failed: {reason}")]
    Kdf {
        /// Argon2's description.
        reason: String,
    },
    /// A keyfile could not be read or written.
    #[error("keyfile {path}: I/O error")]
    Io {
        /// The keyfile.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A keyfile is not in the expected format.
    #[error("keyfile {path} is not a Tern storage keyfile ({reason})")]
    Malformed {
        /// The keyfile.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A keyfile can be read by users other than its owner.
    #[error("keyfile {path} has mode {mode:o}; it must be readable by its owner only (0600)")]
    Permissions {
        /// The keyfile.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Opening (and migrating) a store failed. Nothing in the file has been changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file could not be read or created.
    #[error("cannot open {path}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The storage key does not decrypt the file (or its first page is damaged).
    #[error(
        "cannot decrypt {path}: wrong storage key or passphrase, or the file's first page is damaged"
    )]
    WrongKey {
        /// The database file.
        path: PathBuf,
    },
    /// The file is a plain, unencrypted SQLite database.
    #[error("{path} is an unencrypted SQLite database, not a Tern store")]
    NotEncrypted {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a database of any kind Tern knows.
    #[error("{path} is not a Tern store ({reason})")]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// Why it was judged foreign.
        reason: String,
    },
    /// The file was written by a newer Tern whose schema this code does not know.
    #[error(
        "{path} has schema version {found}, but this Tern knows versions up to {supported}; upgrade Tern"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this code knows.
        supported: u32,
    },
    /// Deriving the storage key failed.
    #[error("preparing the storage key for {path}")]
    Key {
        /// The database file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: KeyError,
    },
    /// A migration step failed; the file stays at the version before it.
    #[error("migrating {path} from schema version {from} to {to}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// Version before the failed step.
        from: u32,
        /// Version the failed step was to reach.
        to: u32,
        /// What failed.
        #[source]
        source: Fault,
    },
    /// Another storage failure while opening.
    #[error("opening {path}: {source}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Fault,
    },
}

/// A write (or a read inside a write transaction) failed. The transaction was rolled back:
/// nothing of it is stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// SQLite failed.
    #[error("{op}: {source}")]
    Storage {
        /// The operation.
        op: &'static str,
        /// What failed.
        #[source]
        source: Fault,
    },
    /// The message's conversation does not exist.
    #[error("{op}: unknown conversation {conversation}")]
    UnknownConversation {
        /// The operation.
        op: &'static str,
        /// The conversation asked for.
        conversation: String,
    },
    /// No message has this id.
    #[error("{op}: unknown message {message}")]
    UnknownMessage {
        /// The operation.
        op: &'static str,
        /// The message asked for.
        message: String,
    },
    /// A value does not fit the store's limits.
    #[error("{op}: {field} is out of range ({reason})")]
    OutOfRange {
        /// The operation.
        op: &'static str,
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A signed device list older than (or as old as) the stored one was offered.
    #[error("{op}: device list version {offered} is not newer than the stored version {stored}")]
    StaleDeviceList {
        /// The operation.
        op: &'static str,
        /// Offered version.
        offered: u64,
        /// Stored version.
        stored: u64,
    },
}

impl WriteError {
    /// The storage fault underneath, if this error is one.
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            WriteError::Storage { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// A read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// SQLite failed.
    #[error("{op}: {source}")]
    Storage {
        /// The operation.
        op: &'static str,
        /// What failed.
        #[source]
        source: Fault,
    },
    /// The anchor message of a page does not exist in that conversation.
    #[error("{op}: message {message} is not in conversation {conversation}")]
    UnknownAnchor {
        /// The operation.
        op: &'static str,
        /// The anchor.
        message: String,
        /// The conversation.
        conversation: String,
    },
    /// A stored row does not decode: the file holds something this code never wrote.
    #[error("{op}: stored {what} is invalid ({reason})")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl ReadError {
    /// The storage fault underneath, if this error is one.
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            ReadError::Storage { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// A search failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The query has no terms.
    #[error("the search query is empty")]
    EmptyQuery,
    /// The query is longer than [`crate::consts::MAX_SEARCH_QUERY_BYTES`] or has more than
    /// [`crate::consts::MAX_SEARCH_TERMS`] terms.
    #[error("the search query is too long ({reason})")]
    QueryTooLong {
        /// Which limit it broke.
        reason: &'static str,
    },
    /// Reading the index or the messages failed.
    #[error("searching messages")]
    Read(#[from] ReadError),
}

/// Adds the operation name to a SQLite error.
pub(crate) trait Context<T> {
    fn write_ctx(self, op: &'static str) -> Result<T, WriteError>;
    fn read_ctx(self, op: &'static str) -> Result<T, ReadError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn write_ctx(self, op: &'static str) -> Result<T, WriteError> {
        self.map_err(|e| WriteError::Storage {
            op,
            source: e.into(),
        })
    }
    fn read_ctx(self, op: &'static str) -> Result<T, ReadError> {
        self.map_err(|e| ReadError::Storage {
            op,
            source: e.into(),
        })
    }
}

impl From<ReadError> for WriteError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Storage { op, source } => WriteError::Storage { op, source },
            ReadError::UnknownAnchor { op, message, .. } => {
                WriteError::UnknownMessage { op, message }
            }
            ReadError::Invalid { op, what, .. } => WriteError::OutOfRange {
                op,
                field: what,
                reason: "stored value does not decode",
            },
        }
    }
}
