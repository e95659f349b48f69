//! Linking a second device to a user.
//!
//! 1. The new device (`tern device link --relay ADDR`) makes its device keys and a one-time
//!    provisioning key, connects to the relay with its device network key, and shows a
//!    **link code**: its device id, its Olm keys, the provisioning key's public half, the
//!    relay and a name; a checksum catches typing mistakes.
//! 2. An existing device (`tern device add CODE`) certifies the new device under the identity
//!    key, publishes the user's next device list (this device's contacts learn it from the
//!    relay), and deposits the **provisioning record** in the new device's mailbox at that
//!    relay, sealed to the provisioning key (`tern_crypto::provision`): the identity secret,
//!    the name and home relays, the certificate and device list, the contacts, and the
//!    groups' membership operations.
//! 3. Both screens show the record's **link words** ([`LinkWords`]): five words derived from
//!    the record's key agreement (its [`LinkCheck`]), the new device's keys and the sender's
//!    identity key. The new device applies nothing until the user confirms there that they
//!    are the words the sending device shows; a record with other words (someone else who
//!    saw the code and used it first) is discarded.
//! 4. The new device then writes its home, deposits its **confirmation** for the sending
//!    device ([`confirm`]), and stops; `tern up` then runs it as a full device of the user.
//!    The sending device waits for that confirmation and reports it (`device_link` event,
//!    `link` in `device.list`).
//!
//! ```text
//! code   = "tern-device:" base58( CBOR Request | checksum: first 4 bytes of SHA-256 )
//! record = tern_crypto::provision record over CBOR Bundle
//! words  = 5 × 9 bits of SHA-256("tern/device-link-words/v1" 0x00 | link check
//!          | provisioning key | new device id | sender's identity key), MSB first,
//!          each an index into the 512 words of the PGP word list (alphabetical order)
//! ```

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};
use sha2::{Digest, Sha256};
use tern_crypto::{DeviceId, provision::LinkCheck};

use crate::consts::{MAX_LINK_CHARS, MAX_LINK_RELAYS, MAX_NAME_BYTES};

pub mod confirm;
mod join;

pub use join::{LinkAnswer, LinkOffer, link_new_device};

/// What a link code starts with.
pub const CODE_PREFIX: &str = "tern-device:";

/// The format version of link codes and provisioning bundles.
pub const LINK_VERSION: u8 = 1;

/// Why a link code or a provisioning bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceLinkError {
    /// Not a link code.
    #[error("not a device link code (it starts with {CODE_PREFIX})")]
    NotACode,
    /// The checksum does not match: a typing or copying mistake.
    #[error("the device link code is damaged (checksum mismatch); copy it again")]
    Checksum,
    /// Not a valid code or bundle.
    #[error("malformed device link data: {0}")]
    Malformed(String),
    /// A version this build does not read.
    #[error("device link version {0} is not supported")]
    UnsupportedVersion(u8),
}

/// What the new device shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Format version.
    pub v: u8,
    /// The new device's id (its network public key).
    pub device: ByteArray<32>,
    /// Its Olm Curve25519 key.
    pub curve25519: ByteArray<32>,
    /// Its Olm Ed25519 key.
    pub ed25519: ByteArray<32>,
    /// The public half of its one-time provisioning key.
    pub provision: ByteArray<32>,
    /// Where it waits for the provisioning record.
    pub relays: Vec<String>,
    /// The device's name.
    pub name: String,
}

impl Request {
    /// The device id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_bytes(self.device.into_array())
    }

    /// The relays, parsed.
    pub fn relay_addrs(&self) -> Vec<Multiaddr> {
        self.relays.iter().filter_map(|r| r.parse().ok()).collect()
    }

    /// The code text.
    pub fn encode(&self) -> Result<String, DeviceLinkError> {
        let mut body = Vec::new();
        ciborium::into_writer(self, &mut body)
            .map_err(|e| DeviceLinkError::Malformed(e.to_string()))?;
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum[..4]);
        Ok(format!("{CODE_PREFIX}{}", bs58::encode(body).into_string()))
    }

    /// Parses and checks a code.
    pub fn parse(text: &str) -> Result<Self, DeviceLinkError> {
        let text = text.trim();
        if text.len() > MAX_LINK_CHARS {
            return Err(DeviceLinkError::Malformed("too long".into()));
        }
        let rest = text
            .strip_prefix(CODE_PREFIX)
            .ok_or(DeviceLinkError::NotACode)?;
        let bytes = bs58::decode(rest)
            .into_vec()
            .map_err(|e| DeviceLinkError::Malformed(e.to_string()))?;
        if bytes.len() < 5 {
            return Err(DeviceLinkError::Malformed("too short".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if Sha256::digest(body)[..4] != *sum {
            return Err(DeviceLinkError::Checksum);
        }
        let r: Request =
            ciborium::from_reader(body).map_err(|e| DeviceLinkError::Malformed(e.to_string()))?;
        if r.v != LINK_VERSION {
            return Err(DeviceLinkError::UnsupportedVersion(r.v));
        }
        if r.relays.is_empty() || r.relays.len() > MAX_LINK_RELAYS {
            return Err(DeviceLinkError::Malformed("1 to 8 relays".into()));
        }
        if r.relay_addrs().len() != r.relays.len() {
            return Err(DeviceLinkError::Malformed(
                "a relay address does not parse".into(),
            ));
        }
        if r.name.len() > MAX_NAME_BYTES {
            return Err(DeviceLinkError::Malformed("device name too long".into()));
        }
        Ok(r)
    }
}

/// The words both screens show: the 512 words of the PGP word list (Juola and Zimmermann),
/// in alphabetical order, one a line. Each word carries 9 bits.
const WORD_LIST: &str = include_str!("device_link/pgp_words.txt");

/// How many words a record's link words are: 45 bits.
pub const LINK_WORD_COUNT: usize = 5;

/// The domain of the link words' hash.
const WORDS_DOMAIN: &[u8] = b"tern/device-link-words/v1\0";

fn word_list() -> impl Iterator<Item = &'static str> {
    WORD_LIST.lines().map(str::trim).filter(|w| !w.is_empty())
}

/// The words both screens show for one provisioning record; the user compares them before
/// the new device applies the record. Not secret once shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkWords(Vec<&'static str>);

impl LinkWords {
    /// The words of the record whose key agreement gave `check`, sealed to the one-time key
    /// `provision` (public half) of the new device `device`, by a device of the user whose
    /// identity key is `identity_key`. The sealer and the new device compute the same; no
    /// one else can (the check comes from the key agreement).
    pub fn derive(
        check: &LinkCheck,
        provision: &[u8; 32],
        device: &DeviceId,
        identity_key: &[u8; 32],
    ) -> Self {
        let mut h = Sha256::new();
        h.update(WORDS_DOMAIN);
        h.update(check.as_bytes());
        h.update(provision);
        h.update(device.as_bytes());
        h.update(identity_key);
        let digest = h.finalize();
        let mut bits = [0u8; 8];
        bits.copy_from_slice(&digest[..8]);
        let bits = u64::from_be_bytes(bits);
        let list: Vec<&'static str> = word_list().collect();
        let words = (0..LINK_WORD_COUNT)
            .map(|i| {
                // 9 bits a word, from the most significant end.
                let index = (bits >> (64 - 9 * (i + 1))) & 0x1ff;
                list[index as usize]
            })
            .collect();
        LinkWords(words)
    }

    /// The words, in order.
    pub fn words(&self) -> &[&'static str] {
        &self.0
    }

    /// Whether `typed` (words separated by spaces, hyphens or commas, any case) are these.
    pub fn matches(&self, typed: &str) -> bool {
        let given: Vec<&str> = typed
            .split(|c: char| c.is_whitespace() || c == '-' || c == ',')
            .filter(|w| !w.is_empty())
            .collect();
        given.len() == self.0.len()
            && given
                .iter()
                .zip(&self.0)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

impl std::fmt::Display for LinkWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lower: Vec<String> = self.0.iter().map(|w| w.to_ascii_lowercase()).collect();
        f.write_str(&lower.join(" "))
    }
}

/// What a bundle buffer starts with: more than any record a node sends (60 KiB) needs.
const BUNDLE_CAPACITY: usize = 64 * 1024;

/// A buffer that never leaves a copy behind: when it must grow it moves into a new one and
/// wipes the old (a `Vec` growing by itself would give back memory holding the identity
/// secret, written first, without wiping it).
struct WipingWriter(zeroize::Zeroizing<Vec<u8>>);

impl std::io::Write for WipingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let need = self.0.len() + buf.len();
        if need > self.0.capacity() {
            let mut bigger = Vec::with_capacity(need.max(2 * self.0.capacity()));
            bigger.extend_from_slice(&self.0);
            // The old buffer is wiped as it is dropped here.
            self.0 = zeroize::Zeroizing::new(bigger);
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A contact as the provisioning bundle carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleContact {
    /// User id (hex).
    pub user_id: String,
    /// Name shown.
    pub name: String,
    /// Verified safety number.
    pub verified: bool,
    /// Identity key.
    pub identity_key: ByteBuf,
    /// Signed device list, if known.
    pub device_list: Option<ByteBuf>,
    /// Relays.
    pub relays: Vec<String>,
}

/// A message of recent history as the provisioning bundle carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMessage {
    /// Message id.
    pub id: ByteArray<16>,
    /// Conversation id.
    pub conversation: String,
    /// Whether the conversation is a group.
    pub group: bool,
    /// The conversation's title.
    pub title: Option<String>,
    /// Sender user id.
    pub sender_user: String,
    /// Sender device id.
    pub sender_device: String,
    /// Lamport clock.
    pub lamport: u64,
    /// Per-sender sequence number.
    pub seq: u64,
    /// Sender's clock, ms.
    pub sent_at_ms: i64,
    /// Sent by this user.
    pub own: bool,
    /// Status: pending, sent, delivered, read, failed or received.
    pub status: String,
    /// The text.
    pub text: Option<String>,
    /// For a membership change, the signed operation; for a file, its stored reference.
    pub data: Option<ByteBuf>,
    /// Whether `data` is a file's reference (else a membership change).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub media: bool,
}

/// What the existing device sends (sealed) to the new one. Contains the identity secret.
#[derive(Serialize, Deserialize)]
pub struct Bundle {
    /// Format version.
    pub v: u8,
    /// The identity secret record (`IdentityKey::to_secret_bytes`).
    pub identity: ByteBuf,
    /// The user's display name.
    pub name: String,
    /// Home relays.
    pub relays: Vec<String>,
    /// The new device's certificate.
    pub certificate: ByteBuf,
    /// The user's signed device list that holds the new device.
    pub device_list: ByteBuf,
    /// Contacts.
    pub contacts: Vec<BundleContact>,
    /// Groups' signed membership operations: (group id, operation).
    pub group_ops: Vec<(String, ByteBuf)>,
    /// Recent history (the newest messages of the most recently active conversations).
    pub history: Vec<BundleMessage>,
}

impl Drop for Bundle {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self.identity.as_mut_slice());
    }
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("name", &self.name)
            .field("contacts", &self.contacts.len())
            .field("group_ops", &self.group_ops.len())
            .field("history", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// The public half of the identity key the bundle carries (the sender's user's), for
    /// the link words.
    pub fn identity_public(&self) -> Result<[u8; 32], DeviceLinkError> {
        tern_crypto::IdentityKey::from_secret_bytes(&self.identity)
            .map(|k| *k.public().as_bytes())
            .map_err(|e| DeviceLinkError::Malformed(e.to_string()))
    }

    /// Encodes the bundle (wiped on drop).
    pub fn encode(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, DeviceLinkError> {
        let mut out = WipingWriter(zeroize::Zeroizing::new(Vec::with_capacity(BUNDLE_CAPACITY)));
        ciborium::into_writer(self, &mut out)
            .map_err(|e| DeviceLinkError::Malformed(e.to_string()))?;
        Ok(out.0)
    }

    /// Decodes a bundle.
    pub fn decode(bytes: &[u8]) -> Result<Self, DeviceLinkError> {
        let b: Bundle =
            ciborium::from_reader(bytes).map_err(|e| DeviceLinkError::Malformed(e.to_string()))?;
        if b.v != LINK_VERSION {
            return Err(DeviceLinkError::UnsupportedVersion(b.v));
        }
        Ok(b)
    }
}

/// A message of moved history, its conversation made if needed. It arrives read.
pub(crate) fn moved_message(
    m: &BundleMessage,
    now_ms: i64,
    tx: &mut tern_store::Tx<'_>,
) -> Result<tern_store::Message, crate::home::HomeError> {
    let conv = tern_store::ConversationId(m.conversation.clone());
    let kind = if m.group {
        tern_store::ConversationKind::Group
    } else {
        tern_store::ConversationKind::Direct
    };
    tx.ensure_conversation(&conv, kind, m.title.as_deref(), now_ms)?;
    let body = match &m.data {
        Some(d) if m.media => tern_store::Body::Media {
            data: d.to_vec(),
            text: m.text.clone().unwrap_or_default(),
        },
        Some(d) => tern_store::Body::Structured {
            data: d.to_vec(),
            text: m.text.clone(),
        },
        None => tern_store::Body::Text(m.text.clone().unwrap_or_default()),
    };
    Ok(tern_store::Message {
        id: tern_store::MessageId(m.id.into_array()),
        conversation: conv,
        sender_user: m.sender_user.clone(),
        sender_device: m.sender_device.clone(),
        lamport: m.lamport,
        seq: m.seq,
        sent_at_ms: m.sent_at_ms,
        received_at_ms: now_ms,
        own: m.own,
        status: match m.status.as_str() {
            // Never encrypted here: shown as not sent rather than waiting forever.
            "pending" | "failed" => tern_store::Status::Failed,
            "sent" => tern_store::Status::Sent,
            "delivered" => tern_store::Status::Delivered,
            _ => tern_store::Status::Read,
        },
        body,
        edited_at_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wiping_writer_grows_and_keeps_every_byte() {
        use std::io::Write;
        let mut w = WipingWriter(zeroize::Zeroizing::new(Vec::with_capacity(4)));
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        for chunk in data.chunks(37) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.0.as_slice(), data.as_slice());
    }

    #[test]
    fn the_word_list_has_512_distinct_words() {
        let words: Vec<&str> = word_list().collect();
        assert_eq!(words.len(), 512);
        let distinct: std::collections::HashSet<String> =
            words.iter().map(|w| w.to_ascii_lowercase()).collect();
        assert_eq!(distinct.len(), 512);
        assert!(
            words
                .iter()
                .all(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        );
        assert_eq!(words.first(), Some(&"aardvark"));
        assert_eq!(words.last(), Some(&"Zulu"));
    }

    #[test]
    fn both_ends_derive_the_same_words_and_every_input_changes_them() {
        use tern_crypto::provision::{ProvisionKey, seal_to_checked};
        let key = ProvisionKey::generate().unwrap();
        let device = DeviceId::from_bytes([9; 32]);
        let identity = [5u8; 32];
        let (sealed, sent) = seal_to_checked(&key.public(), b"bundle").unwrap();
        let (_, got) = key.open_checked(&sealed).unwrap();
        let sender = LinkWords::derive(&sent, &key.public(), &device, &identity);
        let receiver = LinkWords::derive(&got, &key.public(), &device, &identity);
        assert_eq!(sender, receiver);
        assert_eq!(sender.words().len(), LINK_WORD_COUNT);
        assert!(receiver.matches(&sender.to_string()));
        assert!(receiver.matches(&sender.to_string().to_uppercase().replace(' ', "-")));
        // Another record to the same code (another sender's ephemeral key): other words.
        let (_, other) = seal_to_checked(&key.public(), b"bundle").unwrap();
        assert_ne!(
            LinkWords::derive(&other, &key.public(), &device, &identity),
            sender
        );
        // Another identity key, device or provisioning key: other words.
        assert_ne!(
            LinkWords::derive(&sent, &key.public(), &device, &[6u8; 32]),
            sender
        );
        assert_ne!(
            LinkWords::derive(
                &sent,
                &key.public(),
                &DeviceId::from_bytes([8; 32]),
                &identity
            ),
            sender
        );
        assert_ne!(
            LinkWords::derive(&sent, &[1u8; 32], &device, &identity),
            sender
        );
        assert!(!receiver.matches("aardvark absurd accrue acme adrift"));
        assert!(!receiver.matches(""));
    }

    #[test]
    fn the_words_hash_is_domain_separated() {
        // The words are the domain-separated SHA-256 of the inputs, 9 bits a word: the same
        // inputs without the domain (or under another one) give other words.
        use tern_crypto::provision::{ProvisionKey, seal_to_checked};
        let key = ProvisionKey::generate().unwrap();
        let device = DeviceId::from_bytes([9; 32]);
        let (_, check) = seal_to_checked(&key.public(), b"bundle").unwrap();
        let words = LinkWords::derive(&check, &key.public(), &device, &[5; 32]);
        let index = |domain: &[u8]| {
            let mut h = Sha256::new();
            h.update(domain);
            h.update(check.as_bytes());
            h.update(key.public());
            h.update(device.as_bytes());
            h.update([5u8; 32]);
            let d = h.finalize();
            (u16::from(d[0]) << 1) | u16::from(d[1] >> 7)
        };
        let list: Vec<&str> = word_list().collect();
        assert_eq!(words.words()[0], list[usize::from(index(WORDS_DOMAIN))]);
        // Without the domain string the same inputs give other words (all five compared:
        // the keys are random, and five equal words by chance is a 2^-45 event).
        let mut h = Sha256::new();
        h.update(check.as_bytes());
        h.update(key.public());
        h.update(device.as_bytes());
        h.update([5u8; 32]);
        let d = h.finalize();
        let bits = u64::from_be_bytes(d[..8].try_into().unwrap());
        let plain: Vec<&str> = (0..LINK_WORD_COUNT)
            .map(|i| list[((bits >> (64 - 9 * (i + 1))) & 0x1ff) as usize])
            .collect();
        assert_ne!(words.words(), plain.as_slice());
    }

    fn sample() -> Request {
        Request {
            v: LINK_VERSION,
            device: ByteArray::new([1; 32]),
            curve25519: ByteArray::new([2; 32]),
            ed25519: ByteArray::new([3; 32]),
            provision: ByteArray::new([4; 32]),
            relays: vec![
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLU1A7KakL9eRpfFpnSE4bZJ1LscLoTXP3tP3FazR4xtd"
                    .into(),
            ],
            name: "laptop".into(),
        }
    }

    #[test]
    fn codes_round_trip_and_damage_is_caught() {
        let r = sample();
        let code = r.encode().unwrap();
        assert!(code.starts_with(CODE_PREFIX));
        assert_eq!(Request::parse(&code).unwrap(), r);
        assert_eq!(Request::parse("tern:abc"), Err(DeviceLinkError::NotACode));
        // Change one character in the middle.
        let mut chars: Vec<char> = code.chars().collect();
        let i = CODE_PREFIX.len() + 20;
        chars[i] = if chars[i] == '2' { '3' } else { '2' };
        let damaged: String = chars.into_iter().collect();
        assert!(Request::parse(&damaged).is_err());
        let mut bad = sample();
        bad.relays = vec!["not an address".into()];
        assert!(matches!(
            Request::parse(&bad.encode().unwrap()),
            Err(DeviceLinkError::Malformed(_))
        ));
    }
}
