//! Sender keys for groups, on vodozemac Megolm.
//!
//! Each sending device in a group holds an [`OutboundSenderKey`]: one Megolm session that
//! encrypts each group message once for every member. Its key travels to every member device as
//! a [`SenderKeyDistribution`] inside a pairwise (Olm) message, which authenticates the sending
//! device; the receiver turns it into an [`InboundSenderKey`] bound to that device.
//!
//! Binding: the outer [`GroupMessage`] names the sending device and the session; the encrypted
//! inner payload names the group and the sending device again. A message is accepted only if
//! the inbound key was distributed by that device for that group, and the inner names agree, so
//! a member cannot replay one group's traffic into another group or pass off another member's
//! key as its own. Megolm signs every message with the session's Ed25519 key.
//!
//! Replays: every accepted (session, message index) is recorded in a [`ReplayLedger`] (the
//! store keeps it durably); a second arrival is [`GroupError::Replay`].
//!
//! Forward secrecy: an inbound key discards ratchet state more than [`MEGOLM_RETAIN_WINDOW`]
//! messages behind the newest one it has decrypted. A new member receives the key at the
//! current index, so it cannot read what was sent before it joined.
//!
//! Rotation: a new outbound key on every membership change (the caller makes it), and when
//! [`OutboundSenderKey::rotation_due`] says so (message count or age, [`RotationPolicy`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey,
};
use zeroize::Zeroizing;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::consts::{
    DEFAULT_ROTATION_MESSAGES, DEFAULT_ROTATION_SECS, MAX_GROUP_PLAINTEXT, MEGOLM_DISCARD_STEP,
    MEGOLM_RETAIN_WINDOW,
};
use crate::device::DeviceId;
use crate::identity::UserId;
use crate::random::{self, RandomError};
use crate::time::UnixSecs;

/// The Megolm configuration of every Tern group session: version 2, full-length MACs.
pub const MEGOLM_CONFIG: SessionConfig = SessionConfig::version_2();

/// A group's id: 16 random bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId([u8; 16]);

crate::text_id::text_id!(GroupId, 16, "a group id (32 hex digits)", GroupId::from_hex);

impl GroupId {
    /// A fresh random group id.
    pub fn random() -> Result<Self, RandomError> {
        Ok(GroupId(random::array()?))
    }

    /// Builds a group id from bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        GroupId(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        crate::hex::decode_array(s).map(GroupId)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::hex::write(f, &self.0)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({self})")
    }
}

/// Why a group operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GroupError {
    /// Not a group record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The plaintext is too large.
    #[error("plaintext is {0} bytes, over the {MAX_GROUP_PLAINTEXT}-byte limit")]
    PlaintextTooLong(usize),
    /// The session key in a distribution is invalid.
    #[error("invalid sender key: {0}")]
    InvalidKey(String),
    /// The key, message or payload names another group or sending device than it is bound to.
    #[error("group message or key is bound to another group or sending device")]
    BindingMismatch,
    /// This (session, index) was already accepted.
    #[error("replayed group message (session {session_id}, index {index})")]
    Replay {
        /// The Megolm session id.
        session_id: String,
        /// The message index.
        index: u32,
    },
    /// The message is older than the retained ratchet state (or predates the key we were given).
    #[error("group message index {index} is before the first decryptable index {first_known}")]
    TooOld {
        /// The message index.
        index: u32,
        /// The first index this key can decrypt.
        first_known: u32,
    },
    /// Signature, MAC or padding did not verify.
    #[error("group message did not decrypt: {0}")]
    Decryption(String),
    /// The replay ledger failed.
    #[error("replay ledger: {0}")]
    Ledger(Box<dyn std::error::Error + Send + Sync>),
}

/// Why an outbound key should be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationReason {
    /// It has encrypted the policy's maximum number of messages.
    Messages,
    /// It is older than the policy's maximum age.
    Age,
}

/// When an outbound sender key is rotated, besides every membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate after this many messages.
    pub max_messages: u32,
    /// Rotate after this many seconds.
    pub max_age_secs: u64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            max_messages: DEFAULT_ROTATION_MESSAGES,
            max_age_secs: DEFAULT_ROTATION_SECS,
        }
    }
}

/// Records which (session, message index) pairs were accepted, so replays are refused.
///
/// The store implements this inside the transaction that records the message, so the ledger
/// and the history never disagree.
pub trait ReplayLedger {
    /// The ledger's error type.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Whether `(session_id, index)` was already accepted.
    fn is_replay(&self, session_id: &str, index: u32) -> Result<bool, Self::Error>;
    /// Records `(session_id, index)` as accepted.
    fn record(&mut self, session_id: &str, index: u32) -> Result<(), Self::Error>;
    /// Entries below `index` for the session can be forgotten: the key can no longer decrypt
    /// them anyway. The default keeps everything.
    fn forget_below(&mut self, session_id: &str, index: u32) -> Result<(), Self::Error> {
        let _ = (session_id, index);
        Ok(())
    }
}

/// An in-memory ledger, for tests and benchmarks. Per session it holds at most the indices an
/// inbound key can still decrypt, because [`InboundSenderKey::decrypt`] calls
/// [`ReplayLedger::forget_below`] as it discards old ratchet state.
#[derive(Debug, Default)]
pub struct MemoryReplayLedger {
    seen: HashMap<String, BTreeSet<u32>>,
}

impl ReplayLedger for MemoryReplayLedger {
    type Error = std::convert::Infallible;

    fn is_replay(&self, session_id: &str, index: u32) -> Result<bool, Self::Error> {
        Ok(self
            .seen
            .get(session_id)
            .is_some_and(|set| set.contains(&index)))
    }

    fn record(&mut self, session_id: &str, index: u32) -> Result<(), Self::Error> {
        match self.seen.get_mut(session_id) {
            Some(set) => {
                set.insert(index);
            }
            None => {
                self.seen
                    .insert(session_id.to_owned(), BTreeSet::from([index]));
            }
        }
        Ok(())
    }

    fn forget_below(&mut self, session_id: &str, index: u32) -> Result<(), Self::Error> {
        if let Some(set) = self.seen.get_mut(session_id) {
            while set.first().is_some_and(|first| *first < index) {
                set.pop_first();
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct MessageWire {
    sender_device: DeviceId,
    session_id: String,
    #[serde(with = "serde_bytes")]
    megolm: Vec<u8>,
}

/// The encrypted inner payload: `group id (16) || sending device (32) || body`. A fixed layout
/// rather than CBOR: it is never seen outside this module, and its version is the outer
/// record's.
const INNER_HEADER: usize = 16 + 32;

fn inner_payload(group_id: &GroupId, sender: &DeviceId, body: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut inner = Zeroizing::new(Vec::with_capacity(INNER_HEADER + body.len()));
    inner.extend_from_slice(group_id.as_bytes());
    inner.extend_from_slice(sender.as_bytes());
    inner.extend_from_slice(body);
    inner
}

/// A group message as it travels: sending device, session id, Megolm ciphertext. The group id
/// is only inside the ciphertext.
#[derive(Debug)]
pub struct GroupMessage {
    /// The device that sent it.
    pub sender_device: DeviceId,
    /// The Megolm session it was encrypted with; look up the inbound key by
    /// (sender device, session id).
    pub session_id: String,
    megolm: MegolmMessage,
}

impl GroupMessage {
    /// Decodes a group message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GroupError> {
        let wire: MessageWire = codec::decode_canonical(Kind::GroupMessage, bytes)?;
        let megolm = MegolmMessage::from_bytes(&wire.megolm)
            .map_err(|e| codec::malformed(Kind::GroupMessage, e))?;
        if megolm.to_bytes() != wire.megolm {
            return Err(
                codec::malformed(Kind::GroupMessage, "non-canonical Megolm encoding").into(),
            );
        }
        Ok(GroupMessage {
            sender_device: wire.sender_device,
            session_id: wire.session_id,
            megolm,
        })
    }

    /// The Megolm message index.
    pub fn index(&self) -> u32 {
        self.megolm.message_index()
    }
}

/// This device's sending key for one group.
pub struct OutboundSenderKey {
    group_id: GroupId,
    sender_device: DeviceId,
    session: GroupSession,
    /// vodozemac computes the id (base64 of a public key) on every call; it never changes.
    session_id: String,
    created_at: UnixSecs,
}

#[derive(Serialize, Deserialize)]
struct OutboundRecord {
    group_id: GroupId,
    sender_device: DeviceId,
    session: GroupSessionPickle,
    created_at: UnixSecs,
}

impl OutboundSenderKey {
    /// A fresh key for `group_id`, sent from `sender_device`.
    pub fn new(group_id: GroupId, sender_device: DeviceId, now: UnixSecs) -> Self {
        let session = GroupSession::new(MEGOLM_CONFIG);
        OutboundSenderKey {
            group_id,
            sender_device,
            session_id: session.session_id(),
            session,
            created_at: now,
        }
    }

    /// The group.
    pub const fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The Megolm session id.
    pub fn session_id(&self) -> String {
        self.session_id.clone()
    }

    /// How many messages this key has encrypted.
    pub const fn message_index(&self) -> u32 {
        self.session.message_index()
    }

    /// Whether the policy asks for a new key now.
    pub fn rotation_due(&self, policy: &RotationPolicy, now: UnixSecs) -> Option<RotationReason> {
        if self.message_index() >= policy.max_messages {
            Some(RotationReason::Messages)
        } else if now.saturating_sub(self.created_at) >= policy.max_age_secs {
            Some(RotationReason::Age)
        } else {
            None
        }
    }

    /// The distribution for member devices, at the current index: a receiver can decrypt this
    /// and later messages, never earlier ones.
    pub fn distribution(&self, sender_user: UserId) -> SenderKeyDistribution {
        SenderKeyDistribution {
            group_id: self.group_id,
            sender_user,
            sender_device: self.sender_device,
            session_id: self.session_id(),
            session_key: Zeroizing::new(self.session.session_key().to_bytes()),
        }
    }

    /// Encrypts one group message for every member.
    pub fn encrypt(&mut self, body: &[u8]) -> Result<Vec<u8>, GroupError> {
        if body.len() > MAX_GROUP_PLAINTEXT {
            return Err(GroupError::PlaintextTooLong(body.len()));
        }
        let inner = inner_payload(&self.group_id, &self.sender_device, body);
        let megolm = self.session.encrypt(&*inner);
        Ok(codec::encode(
            Kind::GroupMessage,
            &MessageWire {
                sender_device: self.sender_device,
                session_id: self.session_id.clone(),
                megolm: megolm.to_bytes(),
            },
        )?)
    }

    /// Serializes the key for storage. Contains secrets; wiped on drop.
    pub fn pickle(&self) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        Ok(codec::encode_secret(
            Kind::OutboundSenderKey,
            &OutboundRecord {
                group_id: self.group_id,
                sender_device: self.sender_device,
                session: self.session.pickle(),
                created_at: self.created_at,
            },
        )?)
    }

    /// Restores a key from [`OutboundSenderKey::pickle`].
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, GroupError> {
        let r: OutboundRecord = codec::decode(Kind::OutboundSenderKey, bytes)?;
        let session = GroupSession::from_pickle(r.session);
        Ok(OutboundSenderKey {
            group_id: r.group_id,
            sender_device: r.sender_device,
            session_id: session.session_id(),
            session,
            created_at: r.created_at,
        })
    }
}

impl fmt::Debug for OutboundSenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSenderKey")
            .field("group_id", &self.group_id)
            .field("session_id", &self.session_id())
            .field("index", &self.message_index())
            .finish_non_exhaustive()
    }
}

/// A sender key as distributed to one member device over a pairwise session. Contains a secret.
pub struct SenderKeyDistribution {
    /// The group.
    pub group_id: GroupId,
    /// The sending user.
    pub sender_user: UserId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// The Megolm session id.
    pub session_id: String,
    session_key: Zeroizing<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct DistributionWire {
    group_id: GroupId,
    sender_user: UserId,
    sender_device: DeviceId,
    session_id: String,
    #[serde(with = "serde_bytes")]
    session_key: Vec<u8>,
}

impl Drop for DistributionWire {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.session_key);
    }
}

impl SenderKeyDistribution {
    /// Encodes the distribution (to be encrypted pairwise). Wiped on drop.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        Ok(codec::encode_secret(
            Kind::SenderKeyDistribution,
            &DistributionWire {
                group_id: self.group_id,
                sender_user: self.sender_user,
                sender_device: self.sender_device,
                session_id: self.session_id.clone(),
                session_key: self.session_key.to_vec(),
            },
        )?)
    }

    /// Decodes a distribution.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut wire: DistributionWire = codec::decode(Kind::SenderKeyDistribution, bytes)?;
        Ok(SenderKeyDistribution {
            group_id: wire.group_id,
            sender_user: wire.sender_user,
            sender_device: wire.sender_device,
            session_id: std::mem::take(&mut wire.session_id),
            session_key: Zeroizing::new(std::mem::take(&mut wire.session_key)),
        })
    }
}

impl fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("group_id", &self.group_id)
            .field("sender_device", &self.sender_device)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// What a group message decrypted to.
#[derive(Debug)]
pub struct GroupDecrypted {
    /// The group.
    pub group_id: GroupId,
    /// The sending user.
    pub sender_user: UserId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// The Megolm message index.
    pub index: u32,
    /// The plaintext, wiped on drop.
    pub body: Zeroizing<Vec<u8>>,
}

/// A member device's copy of another device's sender key for one group.
pub struct InboundSenderKey {
    group_id: GroupId,
    sender_user: UserId,
    sender_device: DeviceId,
    session: InboundGroupSession,
    /// Cached: vodozemac computes it on every call.
    session_id: String,
    highest_index: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct InboundRecord {
    group_id: GroupId,
    sender_user: UserId,
    sender_device: DeviceId,
    session: InboundGroupSessionPickle,
    highest_index: Option<u32>,
}

impl InboundSenderKey {
    /// Accepts a distribution that arrived over a pairwise session with `authenticated_sender`.
    /// The distribution must name that device as sender.
    pub fn from_distribution(
        distribution: &SenderKeyDistribution,
        authenticated_sender: &DeviceId,
    ) -> Result<Self, GroupError> {
        if &distribution.sender_device != authenticated_sender {
            return Err(GroupError::BindingMismatch);
        }
        let key = SessionKey::from_bytes(&distribution.session_key)
            .map_err(|e| GroupError::InvalidKey(e.to_string()))?;
        let session = InboundGroupSession::new(&key, MEGOLM_CONFIG);
        let session_id = session.session_id();
        if session_id != distribution.session_id {
            return Err(GroupError::BindingMismatch);
        }
        Ok(InboundSenderKey {
            group_id: distribution.group_id,
            sender_user: distribution.sender_user,
            sender_device: distribution.sender_device,
            session,
            session_id,
            highest_index: None,
        })
    }

    /// The group.
    pub const fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The sending device.
    pub const fn sender_device(&self) -> DeviceId {
        self.sender_device
    }

    /// The Megolm session id.
    pub fn session_id(&self) -> String {
        self.session_id.clone()
    }

    /// The first message index this key can still decrypt.
    pub fn first_known_index(&self) -> u32 {
        self.session.first_known_index()
    }

    /// Decrypts a group message, refusing replays, wrong bindings and tampering. Nothing is
    /// recorded unless the message is accepted.
    pub fn decrypt<L: ReplayLedger>(
        &mut self,
        message: &GroupMessage,
        ledger: &mut L,
    ) -> Result<GroupDecrypted, GroupError> {
        let session_id = self.session_id.as_str();
        if message.sender_device != self.sender_device || message.session_id != session_id {
            return Err(GroupError::BindingMismatch);
        }
        let index = message.index();
        if ledger
            .is_replay(session_id, index)
            .map_err(|e| GroupError::Ledger(Box::new(e)))?
        {
            return Err(GroupError::Replay {
                session_id: session_id.to_owned(),
                index,
            });
        }
        let decrypted = self.session.decrypt(&message.megolm).map_err(|e| match e {
            vodozemac::megolm::DecryptionError::UnknownMessageIndex(first_known, index) => {
                GroupError::TooOld { index, first_known }
            }
            other => GroupError::Decryption(other.to_string()),
        })?;
        let plaintext = Zeroizing::new(decrypted.plaintext);
        if plaintext.len() < INNER_HEADER
            || plaintext[..16] != self.group_id.as_bytes()[..]
            || plaintext[16..INNER_HEADER] != self.sender_device.as_bytes()[..]
        {
            return Err(GroupError::BindingMismatch);
        }
        let body = Zeroizing::new(plaintext[INNER_HEADER..].to_vec());
        ledger
            .record(session_id, index)
            .map_err(|e| GroupError::Ledger(Box::new(e)))?;
        let highest = self.highest_index.map_or(index, |h| h.max(index));
        self.highest_index = Some(highest);
        let keep_from = highest.saturating_sub(MEGOLM_RETAIN_WINDOW);
        // Discard in steps rather than on every message: the same forward secrecy within a
        // step of messages, at a fraction of the ratchet work.
        if keep_from >= self.session.first_known_index() + MEGOLM_DISCARD_STEP {
            self.session.advance_to(keep_from);
            ledger
                .forget_below(session_id, keep_from)
                .map_err(|e| GroupError::Ledger(Box::new(e)))?;
        }
        Ok(GroupDecrypted {
            group_id: self.group_id,
            sender_user: self.sender_user,
            sender_device: self.sender_device,
            index,
            body,
        })
    }

    /// Serializes the key for storage. Contains secrets; wiped on drop.
    pub fn pickle(&self) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        Ok(codec::encode_secret(
            Kind::InboundSenderKey,
            &InboundRecord {
                group_id: self.group_id,
                sender_user: self.sender_user,
                sender_device: self.sender_device,
                session: self.session.pickle(),
                highest_index: self.highest_index,
            },
        )?)
    }

    /// Restores a key from [`InboundSenderKey::pickle`].
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, GroupError> {
        let r: InboundRecord = codec::decode(Kind::InboundSenderKey, bytes)?;
        let session = InboundGroupSession::from_pickle(r.session);
        Ok(InboundSenderKey {
            group_id: r.group_id,
            sender_user: r.sender_user,
            sender_device: r.sender_device,
            session_id: session.session_id(),
            session,
            highest_index: r.highest_index,
        })
    }
}

impl fmt::Debug for InboundSenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundSenderKey")
            .field("group_id", &self.group_id)
            .field("sender_device", &self.sender_device)
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}
