//! Pairwise sessions with one remote device, managed the way Signal's Sesame does.
//!
//! [`PeerSessions`] holds, for one remote device, the *current* Olm session (the one new
//! messages are encrypted with) and up to [`MAX_ARCHIVED_SESSIONS`] archived ones.
//!
//! - A message is tried on the current session, then on each archived one; the session that
//!   decrypts it becomes current. When both devices start a session at the same moment (a
//!   session race), each ends up holding both sessions, every message decrypts on one of them,
//!   and both settle on whichever session last carried a message.
//! - A prekey message that no held session can decrypt starts a new inbound session, which
//!   becomes current; the previous current one is archived, never dropped outright.
//! - A copy of a message already decrypted is reported as [`SessionError::Duplicate`]; a message
//!   no session can decrypt as [`SessionError::CannotDecrypt`], after which the caller should
//!   start a fresh session and tell the user (nothing is lost silently).
//! - A failed decryption changes nothing: vodozemac commits ratchet state only after a message
//!   authenticates, and this type only changes which session is current after a success.
//!
//! All sessions use vodozemac's Olm version 2 configuration (full-length MACs); see
//! `docs/decisions.md`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{OlmMessage, Session, SessionConfig, SessionPickle};
use zeroize::Zeroizing;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::consts::{MAX_ARCHIVED_SESSIONS, MAX_PAIRWISE_PLAINTEXT, PAIRWISE_DUPLICATE_WINDOW};
use crate::device::{DeviceId, DeviceKeys};
use crate::prekey::VerifiedPrekey;

/// The Olm configuration of every Tern session: version 2, full-length MACs.
pub const OLM_CONFIG: SessionConfig = SessionConfig::version_2();

/// Why a pairwise operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The bytes are not a pairwise message, or the pickle is not a sessions record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// There is no session with the device yet; claim a prekey and call [`PeerSessions::start`].
    #[error("no session with device {0:?}; a prekey must be claimed first")]
    NoSession(DeviceId),
    /// The plaintext is larger than [`MAX_PAIRWISE_PLAINTEXT`].
    #[error("plaintext is {0} bytes, over the {MAX_PAIRWISE_PLAINTEXT}-byte limit")]
    PlaintextTooLong(usize),
    /// The prekey belongs to another device than this session set.
    #[error("prekey is for device {found:?}, not {expected:?}")]
    WrongDevice {
        /// The device of this session set.
        expected: DeviceId,
        /// The device the prekey is for.
        found: DeviceId,
    },
    /// This exact message was already decrypted. Acknowledge it and drop it.
    #[error("duplicate message from device {0:?}")]
    Duplicate(DeviceId),
    /// A held session knows this message's chain but its key was used or discarded: a copy
    /// older than the duplicate window, or a message delayed past the skipped-key limit.
    #[error("message key from device {0:?} was already used or discarded")]
    MessageKeyGone(DeviceId),
    /// No held session decrypts the message and it cannot start a new one.
    #[error("no session with device {device:?} decrypts this message (tried {tried})")]
    CannotDecrypt {
        /// The remote device.
        device: DeviceId,
        /// How many sessions were tried.
        tried: usize,
    },
    /// A prekey message did not yield a new inbound session (unknown one-time key, wrong
    /// identity key, wrong configuration).
    #[error("could not start an inbound session with device {device:?}: {reason}")]
    SessionCreation {
        /// The remote device.
        device: DeviceId,
        /// vodozemac's reason.
        reason: String,
    },
    /// vodozemac refused to encrypt.
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// The plaintext of a decrypted pairwise message. Wiped on drop.
#[derive(Debug)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Whether the message started a new inbound session (the remote device began afresh).
    pub new_session: bool,
}

#[derive(Serialize, Deserialize)]
struct MessageWire {
    message_type: u8,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

/// Encodes an Olm message as a Tern pairwise record.
fn encode_message(message: &OlmMessage) -> Result<Vec<u8>, EncodeError> {
    let (message_type, body) = message.to_parts();
    codec::encode(
        Kind::PairwiseMessage,
        &MessageWire {
            message_type: message_type as u8,
            body,
        },
    )
}

pub(crate) fn decode_message(bytes: &[u8]) -> Result<OlmMessage, DecodeError> {
    let wire: MessageWire = codec::decode_canonical(Kind::PairwiseMessage, bytes)?;
    let message = OlmMessage::from_parts(usize::from(wire.message_type), &wire.body)
        .map_err(|e| codec::malformed(Kind::PairwiseMessage, e))?;
    if message.to_parts().1 != wire.body {
        return Err(codec::malformed(
            Kind::PairwiseMessage,
            "non-canonical Olm encoding",
        ));
    }
    // X25519 ignores the top bit of a public key, and a prekey message's keys are outside
    // its MAC: a copy with that bit flipped would name another session yet open like the
    // original. Keys as every implementation writes them have it clear; refuse the others.
    if let OlmMessage::PreKey(p) = &message {
        let keys = p.session_keys();
        if [keys.identity_key, keys.base_key, keys.one_time_key]
            .iter()
            .any(|k| k.as_bytes()[31] & 0x80 != 0)
        {
            return Err(codec::malformed(
                Kind::PairwiseMessage,
                "non-canonical Curve25519 key in a prekey message",
            ));
        }
    }
    Ok(message)
}

/// The pairwise sessions with one remote device.
pub struct PeerSessions {
    remote_device: DeviceId,
    remote_curve: Curve25519PublicKey,
    current: Option<Held>,
    /// Most recently demoted first.
    archived: VecDeque<Held>,
    /// Digests of recently decrypted messages, newest last.
    recent: VecDeque<[u8; 16]>,
}

/// vodozemac keeps this many receiving chains per session (its `MAX_RECEIVING_CHAINS`).
const RECEIVING_CHAINS: usize = 5;

/// A session and the ratchet keys of its receiving chains, in the order vodozemac created them,
/// each with the chain index it expects next.
///
/// The mirror tells, before decrypting, whether a message continues a known chain (vodozemac
/// then changes nothing unless it succeeds) or opens a new one (the one path where vodozemac
/// may change state on failure, so a snapshot is taken first). Keeping it exact makes the
/// common case free of snapshot costs. The next index tells how far ahead a message is
/// ([`PeerSessions::skip_ahead`]): vodozemac keeps only [`OLM_SKIPPED_KEYS`] keys of
/// the messages a jump passes over.
struct Held {
    session: Session,
    chains: VecDeque<Chain>,
}

/// A receiving chain of a held session.
#[derive(Clone, Copy)]
struct Chain {
    ratchet_key: [u8; 32],
    /// The lowest chain index not decrypted yet past the highest one decrypted (`None` for
    /// sessions stored before indexes were kept: unknown until the next message).
    next: Option<u64>,
}

/// How many skipped message keys vodozemac keeps per receiving chain (its
/// `MAX_MESSAGE_KEYS`): a message that jumps further ahead than this loses the keys of the
/// earliest messages it passes over.
pub const OLM_SKIPPED_KEYS: u64 = 40;

fn ratchet_and_index(message: &OlmMessage) -> ([u8; 32], u64) {
    match message {
        OlmMessage::Normal(m) => (m.ratchet_key().to_bytes(), m.chain_index()),
        OlmMessage::PreKey(p) => (
            p.message().ratchet_key().to_bytes(),
            p.message().chain_index(),
        ),
    }
}

impl Held {
    fn new(session: Session, first: Option<([u8; 32], u64)>) -> Self {
        Held {
            session,
            chains: first
                .map(|(ratchet_key, index)| Chain {
                    ratchet_key,
                    next: Some(index + 1),
                })
                .into_iter()
                .collect(),
        }
    }

    fn session_id(&self) -> String {
        self.session.session_id()
    }

    fn chain(&self, ratchet_key: &[u8; 32]) -> Option<&Chain> {
        self.chains.iter().find(|c| &c.ratchet_key == ratchet_key)
    }

    /// Decrypts, leaving the session exactly as it was if decryption fails.
    fn decrypt(
        &mut self,
        message: &OlmMessage,
    ) -> Result<Vec<u8>, vodozemac::olm::DecryptionError> {
        let (ratchet_key, index) = ratchet_and_index(message);
        if let Some(pos) = self
            .chains
            .iter()
            .position(|c| c.ratchet_key == ratchet_key)
        {
            let plaintext = self.session.decrypt(message)?;
            let chain = &mut self.chains[pos];
            chain.next = Some(chain.next.map_or(index + 1, |n| n.max(index + 1)));
            return Ok(plaintext);
        }
        let snapshot = self.session.pickle();
        let result = self.session.decrypt(message);
        if result.is_ok() {
            self.chains.push_back(Chain {
                ratchet_key,
                next: Some(index + 1),
            });
            if self.chains.len() > RECEIVING_CHAINS {
                self.chains.pop_front();
            }
        } else {
            self.session = Session::from_pickle(snapshot);
        }
        result
    }
}

#[derive(Serialize, Deserialize)]
struct HeldRecord {
    session: SessionPickle,
    chains: Vec<serde_bytes::ByteArray<32>>,
    /// The next index of each chain, parallel to `chains` (absent in older records).
    #[serde(default)]
    next: Vec<Option<u64>>,
}

impl HeldRecord {
    fn from_held(held: &Held) -> Self {
        HeldRecord {
            session: held.session.pickle(),
            chains: held
                .chains
                .iter()
                .map(|c| serde_bytes::ByteArray::new(c.ratchet_key))
                .collect(),
            next: held.chains.iter().map(|c| c.next).collect(),
        }
    }

    fn into_held(self) -> Result<Held, DecodeError> {
        if self.chains.len() > RECEIVING_CHAINS || self.next.len() > self.chains.len() {
            return Err(codec::malformed(
                Kind::PeerSessions,
                "too many receiving chains",
            ));
        }
        let next = self.next;
        Ok(Held {
            session: Session::from_pickle(self.session),
            chains: self
                .chains
                .into_iter()
                .enumerate()
                .map(|(i, c)| Chain {
                    ratchet_key: c.into_array(),
                    next: next.get(i).copied().flatten(),
                })
                .collect(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct PeerSessionsRecord {
    remote_device: DeviceId,
    #[serde(with = "serde_bytes")]
    remote_curve: [u8; 32],
    current: Option<HeldRecord>,
    archived: Vec<HeldRecord>,
    recent: Vec<serde_bytes::ByteArray<16>>,
}

impl PeerSessions {
    /// An empty session set for a remote device whose certificate names `remote_curve25519`.
    pub fn new(remote_device: DeviceId, remote_curve25519: [u8; 32]) -> Self {
        PeerSessions {
            remote_device,
            remote_curve: Curve25519PublicKey::from_bytes(remote_curve25519),
            current: None,
            archived: VecDeque::new(),
            recent: VecDeque::new(),
        }
    }

    /// The remote device.
    pub const fn remote_device(&self) -> DeviceId {
        self.remote_device
    }

    /// Whether a session exists to encrypt with.
    pub const fn has_session(&self) -> bool {
        self.current.is_some()
    }

    /// Number of archived sessions held.
    pub fn archived_count(&self) -> usize {
        self.archived.len()
    }

    /// The id of the current session, if any (equal on both ends of a session).
    pub fn current_session_id(&self) -> Option<String> {
        self.current.as_ref().map(Held::session_id)
    }

    /// Starts an outbound session from a verified prekey; it becomes current and any previous
    /// current session is archived.
    pub fn start(
        &mut self,
        local: &DeviceKeys,
        prekey: &VerifiedPrekey,
    ) -> Result<(), SessionError> {
        if prekey.device_id != self.remote_device {
            return Err(SessionError::WrongDevice {
                expected: self.remote_device,
                found: prekey.device_id,
            });
        }
        let session = local
            .account()
            .create_outbound_session(
                OLM_CONFIG,
                Curve25519PublicKey::from_bytes(prekey.curve25519),
                Curve25519PublicKey::from_bytes(prekey.one_time_key),
            )
            .map_err(|e| SessionError::SessionCreation {
                device: self.remote_device,
                reason: e.to_string(),
            })?;
        self.install(Held::new(session, None));
        Ok(())
    }

    fn install(&mut self, held: Held) {
        if let Some(old) = self.current.replace(held) {
            self.archived.push_front(old);
            self.archived.truncate(MAX_ARCHIVED_SESSIONS);
        }
    }

    /// Encrypts `plaintext` with the current session.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        if plaintext.len() > MAX_PAIRWISE_PLAINTEXT {
            return Err(SessionError::PlaintextTooLong(plaintext.len()));
        }
        let session = self
            .current
            .as_mut()
            .ok_or(SessionError::NoSession(self.remote_device))?;
        let message = session
            .session
            .encrypt(plaintext)
            .map_err(|e| SessionError::Encrypt(e.to_string()))?;
        Ok(encode_message(&message)?)
    }

    /// Decrypts a pairwise message from the remote device (see the module documentation for
    /// the order sessions are tried in). `local` is needed when the message starts a new
    /// session: it consumes the one-time key it was made with, so persist `local` together
    /// with these sessions.
    pub fn decrypt(
        &mut self,
        local: &mut DeviceKeys,
        bytes: &[u8],
    ) -> Result<Decrypted, SessionError> {
        let message = decode_message(bytes)?;
        let digest = digest(bytes);
        if self.recent.contains(&digest) {
            return Err(SessionError::Duplicate(self.remote_device));
        }

        // A prekey message names its session (a hash of the keys that made it). Only that
        // session may decrypt it: otherwise an altered copy whose outer keys were changed would
        // still decrypt through an existing session.
        let prekey_session = match &message {
            OlmMessage::PreKey(p) => Some(p.session_id()),
            OlmMessage::Normal(_) => None,
        };
        let fits = |s: &Held| {
            prekey_session
                .as_ref()
                .is_none_or(|id| &s.session_id() == id)
        };

        let mut key_gone = false;
        let mut tried = 0;
        if let Some(session) = self.current.as_mut().filter(|s| fits(s)) {
            tried += 1;
            match session.decrypt(&message) {
                Ok(plaintext) => return Ok(self.accepted(digest, plaintext, false)),
                Err(vodozemac::olm::DecryptionError::MissingMessageKey(_)) => key_gone = true,
                Err(_) => {}
            }
        }
        for i in 0..self.archived.len() {
            if !fits(&self.archived[i]) {
                continue;
            }
            tried += 1;
            match self.archived[i].decrypt(&message) {
                Ok(plaintext) => {
                    // The remote device is using this session: make it current again.
                    if let Some(session) = self.archived.remove(i) {
                        self.install(session);
                    }
                    return Ok(self.accepted(digest, plaintext, false));
                }
                Err(vodozemac::olm::DecryptionError::MissingMessageKey(_)) => key_gone = true,
                Err(_) => {}
            }
        }

        if let OlmMessage::PreKey(prekey_message) = &message {
            let session_id = prekey_message.session_id();
            let known = self
                .current
                .iter()
                .chain(self.archived.iter())
                .any(|s| s.session_id() == session_id);
            if !known {
                let created = local
                    .account_mut()
                    .create_inbound_session(OLM_CONFIG, self.remote_curve, prekey_message)
                    .map_err(|e| SessionError::SessionCreation {
                        device: self.remote_device,
                        reason: e.to_string(),
                    })?;
                let first = ratchet_and_index(&message);
                self.install(Held::new(created.session, Some(first)));
                return Ok(self.accepted(digest, created.plaintext, true));
            }
        }

        if key_gone {
            Err(SessionError::MessageKeyGone(self.remote_device))
        } else {
            Err(SessionError::CannotDecrypt {
                device: self.remote_device,
                tried,
            })
        }
    }

    /// How many messages of its chain a pairwise message would pass over if it were decrypted
    /// now: 0 for the next message in order (or one delayed, or a chain whose position is not
    /// known), `n` when `n` earlier messages of the chain have not arrived yet. A message on a
    /// chain no held session knows counts from the chain's start. Changes nothing.
    ///
    /// vodozemac keeps the keys of at most [`OLM_SKIPPED_KEYS`] passed-over messages
    /// per chain, so a receiver that lets a message jump far ahead loses the earlier ones for
    /// good: it should wait for them first.
    pub fn skip_ahead(&self, bytes: &[u8]) -> Result<u64, SessionError> {
        let message = decode_message(bytes)?;
        let (ratchet_key, index) = ratchet_and_index(&message);
        let known = self
            .current
            .iter()
            .chain(self.archived.iter())
            .find_map(|s| s.chain(&ratchet_key));
        Ok(match known {
            Some(Chain { next: Some(n), .. }) => index.saturating_sub(*n),
            Some(Chain { next: None, .. }) => 0,
            None => index,
        })
    }

    fn accepted(&mut self, digest: [u8; 16], plaintext: Vec<u8>, new_session: bool) -> Decrypted {
        self.recent.push_back(digest);
        if self.recent.len() > PAIRWISE_DUPLICATE_WINDOW {
            self.recent.pop_front();
        }
        Decrypted {
            plaintext: Zeroizing::new(plaintext),
            new_session,
        }
    }

    /// Serializes the sessions for storage. Contains secrets; the buffer is wiped on drop.
    pub fn pickle(&self) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let record = PeerSessionsRecord {
            remote_device: self.remote_device,
            remote_curve: self.remote_curve.to_bytes(),
            current: self.current.as_ref().map(HeldRecord::from_held),
            archived: self.archived.iter().map(HeldRecord::from_held).collect(),
            recent: self
                .recent
                .iter()
                .map(|d| serde_bytes::ByteArray::new(*d))
                .collect(),
        };
        Ok(codec::encode_secret(Kind::PeerSessions, &record)?)
    }

    /// Restores sessions from [`PeerSessions::pickle`].
    pub fn from_pickle(bytes: &[u8]) -> Result<Self, SessionError> {
        let record: PeerSessionsRecord = codec::decode(Kind::PeerSessions, bytes)?;
        if record.archived.len() > MAX_ARCHIVED_SESSIONS
            || record.recent.len() > PAIRWISE_DUPLICATE_WINDOW
        {
            return Err(codec::malformed(Kind::PeerSessions, "over the session limits").into());
        }
        Ok(PeerSessions {
            remote_device: record.remote_device,
            remote_curve: Curve25519PublicKey::from_bytes(record.remote_curve),
            current: record.current.map(HeldRecord::into_held).transpose()?,
            archived: record
                .archived
                .into_iter()
                .map(HeldRecord::into_held)
                .collect::<Result<_, _>>()?,
            recent: record.recent.into_iter().map(|d| d.into_array()).collect(),
        })
    }
}

impl std::fmt::Debug for PeerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSessions")
            .field("remote_device", &self.remote_device)
            .field("current", &self.current_session_id())
            .field("archived", &self.archived.len())
            .finish_non_exhaustive()
    }
}

/// The digest a pairwise message is known by (the first 16 bytes of its SHA-256): what
/// [`PeerSessions`] and a receiver's durable ledger of accepted messages compare to tell a
/// copy of a message already read from one whose key is gone.
pub fn message_digest(bytes: &[u8]) -> [u8; 16] {
    digest(bytes)
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}
