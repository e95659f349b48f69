//! The node's error type, with a stable code per kind for the API and the CLI's exit codes.
//!
//! A failure of the store, of cryptography or of the network keeps the error it came from
//! as its [`source`](std::error::Error::source) ([`StoreError`], [`CryptoError`],
//! [`NetworkError`]), so callers match on kinds, never on message text. Sources are shared
//! (`Arc`) because one error may answer several waiters.

use std::{borrow::Cow, sync::Arc};

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
    #[error("message text is empty (or only white space)")]
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
    Store(#[source] StoreError),
    /// Crypto failed, or something received or stored does not check out.
    #[error("crypto: {0}")]
    Crypto(#[source] CryptoError),
    /// The network could not do it (relay unreachable, ...).
    #[error("network: {0}")]
    Network(#[source] NetworkError),
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

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A write failed.
    #[error(transparent)]
    Write(Arc<tern_store::WriteError>),
    /// A read failed.
    #[error(transparent)]
    Read(Arc<tern_store::ReadError>),
    /// A search failed.
    #[error(transparent)]
    Search(Arc<tern_store::SearchError>),
    /// The home directory (keys, config) failed.
    #[error(transparent)]
    Home(Arc<crate::home::HomeError>),
    /// The group replay ledger, kept in the store, failed.
    #[error(transparent)]
    Ledger(Arc<tern_crypto::group::GroupError>),
    /// A record the node keeps could not be encoded or decoded.
    #[error("{what}: {reason}")]
    Record {
        /// Which record.
        what: &'static str,
        /// What the codec said.
        reason: String,
    },
    /// Something the store should hold is not there.
    #[error("{0}")]
    Missing(&'static str),
}

/// Why a cryptographic step failed, or what does not check out.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A pairwise (Olm) session step.
    #[error(transparent)]
    Session(Arc<tern_crypto::session::SessionError>),
    /// A prekey bundle.
    #[error(transparent)]
    Prekey(Arc<tern_crypto::prekey::PrekeyError>),
    /// A device list.
    #[error(transparent)]
    DeviceList(Arc<tern_crypto::DeviceListError>),
    /// A device certificate.
    #[error(transparent)]
    Certificate(Arc<tern_crypto::device::CertificateError>),
    /// A group session.
    #[error(transparent)]
    Group(Arc<tern_crypto::group::GroupError>),
    /// A provisioning (device link) record.
    #[error(transparent)]
    Provision(Arc<tern_crypto::provision::ProvisionError>),
    /// An envelope.
    #[error(transparent)]
    Envelope(Arc<crate::envelope::EnvelopeError>),
    /// A backup.
    #[error(transparent)]
    Backup(Arc<crate::backup::BackupError>),
    /// A key or record could not be encoded.
    #[error(transparent)]
    Encode(Arc<tern_crypto::codec::EncodeError>),
    /// The system's random source failed.
    #[error(transparent)]
    Random(Arc<tern_crypto::RandomError>),
    /// A libp2p key could not be made from its bytes.
    #[error("{what}: {source}")]
    NetworkKey {
        /// Which key.
        what: &'static str,
        /// What libp2p said.
        source: Arc<libp2p::identity::DecodingError>,
    },
    /// A message, record or key that does not check out.
    #[error("{0}")]
    Invalid(Cow<'static, str>),
}

/// Why the network could not do it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// A request to a relay or peer failed or was refused.
    #[error(transparent)]
    Request(Arc<crate::net::NetError>),
    /// The swarm could not start.
    #[error(transparent)]
    Start(Arc<crate::net::StartError>),
    /// No relay or peer could be reached for it; says what was tried.
    #[error("{0}")]
    Unreachable(Cow<'static, str>),
}

impl NodeError {
    /// Something received, stored or asked for that does not check out.
    pub(crate) fn invalid(why: impl Into<Cow<'static, str>>) -> Self {
        NodeError::Crypto(CryptoError::Invalid(why.into()))
    }

    /// No relay or peer could be reached.
    pub(crate) fn unreachable(why: impl Into<Cow<'static, str>>) -> Self {
        NodeError::Network(NetworkError::Unreachable(why.into()))
    }

    /// A record the node keeps could not be encoded or decoded.
    pub(crate) fn record(what: &'static str, reason: impl std::fmt::Display) -> Self {
        NodeError::Store(StoreError::Record {
            what,
            reason: reason.to_string(),
        })
    }
}

/// `From` for each source error: `$t` becomes `NodeError::$outer($inner::$variant(Arc))`.
macro_rules! from_source {
    ($($t:ty => $outer:ident($inner:ident::$variant:ident)),* $(,)?) => {
        $(impl From<$t> for NodeError {
            fn from(e: $t) -> Self {
                NodeError::$outer($inner::$variant(Arc::new(e)))
            }
        })*
    };
}
from_source!(
    tern_store::WriteError => Store(StoreError::Write),
    crate::home::HomeError => Store(StoreError::Home),
    tern_crypto::session::SessionError => Crypto(CryptoError::Session),
    tern_crypto::prekey::PrekeyError => Crypto(CryptoError::Prekey),
    tern_crypto::DeviceListError => Crypto(CryptoError::DeviceList),
    tern_crypto::device::CertificateError => Crypto(CryptoError::Certificate),
    tern_crypto::provision::ProvisionError => Crypto(CryptoError::Provision),
    tern_crypto::codec::EncodeError => Crypto(CryptoError::Encode),
    tern_crypto::RandomError => Crypto(CryptoError::Random),
    crate::envelope::EnvelopeError => Crypto(CryptoError::Envelope),
    crate::net::NetError => Network(NetworkError::Request),
    crate::net::StartError => Network(NetworkError::Start),
);

impl From<tern_store::SearchError> for NodeError {
    fn from(e: tern_store::SearchError) -> Self {
        match e {
            // The query is the user's: theirs to fix, not a storage fault.
            tern_store::SearchError::EmptyQuery | tern_store::SearchError::QueryTooLong { .. } => {
                NodeError::BadRequest(e.to_string())
            }
            e => NodeError::Store(StoreError::Search(Arc::new(e))),
        }
    }
}

impl From<tern_store::ReadError> for NodeError {
    fn from(e: tern_store::ReadError) -> Self {
        match e {
            // A history page anchored on a message the conversation does not hold.
            tern_store::ReadError::UnknownAnchor { message, .. } => {
                NodeError::UnknownMessage(message)
            }
            other => NodeError::Store(StoreError::Read(Arc::new(other))),
        }
    }
}

impl From<tern_crypto::group::GroupError> for NodeError {
    fn from(e: tern_crypto::group::GroupError) -> Self {
        let e = Arc::new(e);
        match *e {
            // The replay ledger is the store: its failure is a storage fault (the message is
            // kept to retry), not a message that does not decrypt.
            tern_crypto::group::GroupError::Ledger(_) => NodeError::Store(StoreError::Ledger(e)),
            _ => NodeError::Crypto(CryptoError::Group(e)),
        }
    }
}

impl From<libp2p::identity::DecodingError> for NodeError {
    fn from(e: libp2p::identity::DecodingError) -> Self {
        NodeError::Crypto(CryptoError::NetworkKey {
            what: "device network key",
            source: Arc::new(e),
        })
    }
}

impl From<crate::backup::BackupError> for NodeError {
    fn from(e: crate::backup::BackupError) -> Self {
        match e {
            crate::backup::BackupError::Weak(w) => NodeError::WeakPassphrase(w.to_string()),
            crate::backup::BackupError::Io { .. } => NodeError::Io(e.to_string()),
            crate::backup::BackupError::BadInput(m) => NodeError::BadRequest(m),
            _ => NodeError::Crypto(CryptoError::Backup(Arc::new(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn failures_keep_their_source_and_kind() {
        let e = NodeError::from(tern_crypto::prekey::PrekeyError::WrongSlot);
        assert!(matches!(e, NodeError::Crypto(CryptoError::Prekey(_))));
        let source = e.source().expect("a source");
        assert!(source.downcast_ref::<CryptoError>().is_some());
        assert_eq!(e.code(), 1008);

        let e = NodeError::from(crate::net::NetError::Closed);
        assert!(matches!(e, NodeError::Network(NetworkError::Request(_))));
        assert_eq!(e.to_string(), "network: network stopped");
        assert_eq!(e.code(), 1009);

        let e = NodeError::from(tern_crypto::group::GroupError::Ledger("disk".into()));
        assert!(matches!(e, NodeError::Store(StoreError::Ledger(_))));
        assert_eq!(e.code(), 1007);
    }
}
