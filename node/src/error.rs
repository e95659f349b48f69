//! The node's error type, with a stable code per kind for the API and the CLI's exit codes.

use crate::link::LinkError;

/// Why a node operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No contact matches.
    #[error("unknown contact {0:?} (see `tern contact list`)")]
    UnknownContact(String),
    /// Several contacts have that name.
    #[error("{0:?} names more than one contact; use the user id")]
    AmbiguousContact(String),
    /// The text is empty.
    #[error("message text is empty")]
    EmptyText,
    /// The text is over the limit.
    #[error("message text is {len} bytes, over the {max}-byte limit")]
    TextTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The contact's identity key changed and was not accepted.
    #[error(
        "WARNING: the identity key of {0} has changed. This can mean a reinstall or an attack. \
         Sending is blocked: compare safety numbers, then accept with `tern contact accept`"
    )]
    IdentityChanged(String),
    /// A contact link was refused.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A link names this user.
    #[error("that contact link is your own")]
    OwnLink,
    /// Something is wrong with the request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A message id is unknown.
    #[error("no such message {0}")]
    UnknownMessage(String),
    /// The store failed.
    #[error("storage: {0}")]
    Store(String),
    /// Crypto failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// The network could not do it (relay unreachable, ...).
    #[error("network: {0}")]
    Network(String),
    /// The scanned safety number does not match.
    #[error("the scanned safety number does not match: do not trust this contact")]
    SafetyMismatch,
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// No group matches.
    #[error("unknown group {0:?} (see `tern group list`)")]
    UnknownGroup(String),
    /// Several groups have that title.
    #[error("{0:?} names more than one group; use the group id")]
    AmbiguousGroup(String),
    /// The change would take the group over its size limit.
    #[error("a group has at most {max} members; {group} has {members} and this adds {adding}")]
    GroupFull {
        /// The group's title.
        group: String,
        /// Members now.
        members: usize,
        /// Members the change adds.
        adding: usize,
        /// The limit.
        max: usize,
    },
    /// Only admins may change membership.
    #[error("only an admin of {0} can do that")]
    NotAdmin(String),
    /// This user is not (or no longer) a member.
    #[error("you are not a member of {0}")]
    NotMember(String),
    /// Another device of this user revoked this one.
    #[error(
        "this device was revoked by another device of yours: it can no longer send. \
         To use it again, link it anew (`tern device link` on an empty home)"
    )]
    Revoked,
    /// A new passphrase does not meet the strength rule.
    #[error("{0}")]
    WeakPassphrase(String),
    /// A file (a backup) could not be written.
    #[error("{0}")]
    Io(String),
    /// A file could not be sent or fetched: `code` says why (`too_large`, `not_a_file`,
    /// `not_found`, `expired`, `hash`, `exists`, `over_quota`, ...).
    #[error("{message}")]
    Media {
        /// Why, as a short code.
        code: &'static str,
        /// What to tell the user.
        message: String,
    },
    /// A new device's link was not confirmed: the words typed are not the record's, two
    /// records showed the same words, or no answer came. Nothing was applied.
    #[error("{0}")]
    LinkNotConfirmed(String),
    /// A home relay refused the push endpoint (`not_allowed`: outside its allow-list;
    /// `too_large`); the message names each relay and its code.
    #[error("{0}")]
    PushRefused(String),
}

impl NodeError {
    /// A stable numeric code (JSON-RPC error `code`; see `docs/api.md`).
    pub fn code(&self) -> i64 {
        match self {
            NodeError::UnknownContact(_) => 1001,
            NodeError::AmbiguousContact(_) => 1002,
            NodeError::EmptyText | NodeError::TextTooLong { .. } => 1003,
            NodeError::IdentityChanged(_) => 1004,
            // The link was fine; the relay it names could not be asked.
            NodeError::Link(LinkError::RelayUnreachable { .. }) => 1009,
            NodeError::Link(_) | NodeError::OwnLink => 1005,
            NodeError::BadRequest(_) => -32602,
            NodeError::UnknownMessage(_) => 1006,
            NodeError::Store(_) => 1007,
            NodeError::Crypto(_) => 1008,
            NodeError::Network(_) => 1009,
            NodeError::SafetyMismatch => 1010,
            NodeError::Stopped => 1011,
            NodeError::UnknownGroup(_) => 1012,
            NodeError::AmbiguousGroup(_) => 1013,
            NodeError::GroupFull { .. } => 1014,
            NodeError::NotAdmin(_) => 1015,
            NodeError::NotMember(_) => 1016,
            NodeError::Revoked => 1019,
            NodeError::WeakPassphrase(_) => 1017,
            NodeError::Io(_) => 1018,
            NodeError::Media { .. } => 1020,
            NodeError::LinkNotConfirmed(_) => 1021,
            NodeError::PushRefused(_) => 1022,
        }
    }
}

macro_rules! from_display {
    ($variant:ident, $($t:ty),*) => {
        $(impl From<$t> for NodeError {
            fn from(e: $t) -> Self {
                NodeError::$variant(e.to_string())
            }
        })*
    };
}
from_display!(
    Store,
    tern_store::WriteError,
    tern_store::SearchError,
    crate::home::HomeError
);

impl From<tern_store::ReadError> for NodeError {
    fn from(e: tern_store::ReadError) -> Self {
        match e {
            // A history page anchored on a message the conversation does not hold.
            tern_store::ReadError::UnknownAnchor { message, .. } => {
                NodeError::UnknownMessage(message)
            }
            other => NodeError::Store(other.to_string()),
        }
    }
}
from_display!(
    Crypto,
    tern_crypto::session::SessionError,
    tern_crypto::prekey::PrekeyError,
    tern_crypto::DeviceListError,
    crate::envelope::EnvelopeError
);

impl From<tern_crypto::group::GroupError> for NodeError {
    fn from(e: tern_crypto::group::GroupError) -> Self {
        match e {
            // The replay ledger is the store: its failure is a storage fault (the message is
            // kept to retry), not a message that does not decrypt.
            tern_crypto::group::GroupError::Ledger(_) => NodeError::Store(e.to_string()),
            other => NodeError::Crypto(other.to_string()),
        }
    }
}
from_display!(Network, crate::net::NetError);

impl From<crate::backup::BackupError> for NodeError {
    fn from(e: crate::backup::BackupError) -> Self {
        match e {
            crate::backup::BackupError::Weak(w) => NodeError::WeakPassphrase(w.to_string()),
            crate::backup::BackupError::Io { .. } => NodeError::Io(e.to_string()),
            crate::backup::BackupError::BadInput(m) => NodeError::BadRequest(m),
            other => NodeError::Crypto(other.to_string()),
        }
    }
}
