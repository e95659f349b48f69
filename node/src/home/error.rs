//! Why a home could not be created or opened.

use std::path::PathBuf;

use crate::consts::MAX_NAME_BYTES;

/// Why a home could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// `init` found an existing identity.
    #[error("{path} already holds a Tern identity; refusing to overwrite it")]
    AlreadyInitialised {
        /// The home.
        path: PathBuf,
    },
    /// No identity yet.
    #[error("no Tern identity in {path}; create one with `tern init`")]
    NotInitialised {
        /// The home.
        path: PathBuf,
    },
    /// A name is too long or empty.
    #[error("name must be 1 to {MAX_NAME_BYTES} bytes")]
    BadName,
    /// A file could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is malformed or readable by others.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The store key file could not be used.
    #[error(transparent)]
    StoreKey(#[from] tern_store::KeyError),
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] tern_store::OpenError),
    /// The store could not be read.
    #[error(transparent)]
    Read(#[from] tern_store::ReadError),
    /// The store could not be written.
    #[error(transparent)]
    Write(#[from] tern_store::WriteError),
    /// The store lacks a record it must have.
    #[error("the store is missing its {0}")]
    Missing(&'static str),
    /// Key material did not decode or verify.
    #[error("key material is unusable: {0}")]
    Crypto(String),
    /// The store is unlocked by a passphrase and none was given.
    #[error(
        "this home's store is locked with a passphrase: give it (--passphrase-file, or at the prompt)"
    )]
    PassphraseNeeded,
    /// No passphrase file opens the store with the passphrase given.
    #[error("{}", if *interrupted {
        "wrong passphrase (a passphrase change was interrupted: if you had just chosen a new passphrase, give that one)"
    } else {
        "wrong passphrase for this home's store"
    })]
    WrongPassphrase {
        /// A change to a passphrase was interrupted after its new file was written.
        interrupted: bool,
    },
    /// A new passphrase does not meet the strength rule.
    #[error("{0}")]
    WeakPassphrase(String),
    /// Changing the store's key failed; it is still under the old one.
    #[error("changing the store's key failed (the old key still opens it): {0}")]
    Rekey(String),
    /// Another process holds the home (a node runs for it, or a command that must have it
    /// alone, such as changing the store's key).
    #[error(
        "a Tern node is already running for {path} (`tern status`, `tern down`); one node per home"
    )]
    InUse {
        /// The home.
        path: PathBuf,
    },
    /// The configuration file is malformed.
    #[error("config file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}
