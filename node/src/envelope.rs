//! The plaintext envelope inside every pairwise (Olm) and group (Megolm) ciphertext.
//!
//! ```text
//! version u8 (= 1) | CBOR map {id, conversation, sender_user, sender_device,
//!                              lamport, seq, sent_at_ms, body}
//! ```
//!
//! The relay never sees any of this: it is what the Olm session or the sender key encrypts.
//! A mailbox payload is a tern-crypto record whose kind byte says which: an Olm message
//! (pairwise) or a group message (Megolm, encrypted once for every member device). The receiver checks
//! that `sender_user`/`sender_device` are the user and device the ciphertext came from (the
//! device authenticated by the session, the user by the device list), so a contact cannot
//! pass a message off as someone else's. Unknown versions, trailing bytes and oversize
//! envelopes are typed errors; a body of a kind this build does not know (one entry naming it,
//! from a newer version) decodes as [`Body::Unsupported`], which is stored and shown, never
//! dropped.

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};

use crate::consts::{MAX_ENVELOPE_BYTES, MAX_RECEIPT_IDS};

/// The envelope format version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// Which conversation a message belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Conversation {
    /// A one-to-one conversation; `to` is the user the sender addressed (the receiver checks
    /// it is itself).
    Direct {
        /// The addressed user id.
        to: ByteArray<16>,
    },
    /// A group conversation.
    Group {
        /// The group id.
        id: ByteArray<16>,
    },
}

/// Which receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// The messages were stored by a device of the recipient.
    Delivered,
    /// The recipient read the messages.
    Read,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A text message, or a file or image with its caption.
    Text {
        /// The text (a file's caption; may then be empty).
        text: String,
        /// The file this message carries (see [`crate::media`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media: Option<Box<crate::media::MediaRef>>,
    },
    /// A delivery or read receipt for earlier messages of the same conversation.
    Receipt {
        /// Delivered or read.
        kind: ReceiptKind,
        /// The messages it covers (at most [`MAX_RECEIPT_IDS`]).
        ids: Vec<ByteArray<16>>,
    },
    /// A signed group membership operation (pairwise only; see [`crate::group`]).
    GroupOp {
        /// The signed operation as [`crate::group::SignedOp::to_bytes`] writes it.
        op: ByteBuf,
    },
    /// Several signed membership operations of one group, in chain order (pairwise only):
    /// a group's creation with its first members, or the chain a new member needs.
    GroupOps {
        /// The signed operations.
        ops: Vec<ByteBuf>,
    },
    /// The sender's current sender key for a group, with the group message it opens
    /// (pairwise only). A member device that lacks the key gets this instead of the bare
    /// group message, so the key can never arrive after the message it is needed for.
    SenderKey {
        /// A `tern_crypto::group::SenderKeyDistribution` record.
        distribution: ByteBuf,
        /// The group message (a `tern_crypto::group::GroupMessage` record), if one goes
        /// with it.
        message: Option<ByteBuf>,
    },
    /// A request to send again what this device lost (pairwise, direct conversation, to the
    /// one device it was lost from): one of that device's ciphertexts came after its key was
    /// gone, or a text shows a gap before it. The sender re-encrypts its own texts in the
    /// direct conversation (or in `group`) with a sequence number in
    /// `after_seq + 1 ..= up_to_seq` that are not queued for the asking device any more, in
    /// fresh ratchet steps; a group's go only to a device that was given the sender key they
    /// went under, as copies over the pairwise session. The asking device drops the ids it
    /// already has.
    Resend {
        /// The asking device holds every text `1..=after_seq` of the sender's device (in a
        /// group: every one from the first it holds).
        after_seq: u64,
        /// Only texts up to this sequence number (a gap below a text that did arrive);
        /// absent: everything after `after_seq` (a key was gone, which text is not known).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        up_to_seq: Option<u64>,
        /// The group whose texts were lost; absent: the direct conversation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<ByteArray<16>>,
    },
    /// How far the sender's device has sent in the direct conversation (pairwise, direct
    /// conversation, to each device of the contact): sent when its texts stay unreceipted
    /// past the last receipted one while the contact is online, so a receiver whose relay
    /// lost the end of a burst notices the gap without waiting for the next text. A receiver
    /// that holds less in order than `seq` asks for the rest ([`Body::Resend`]); what it
    /// holds from `from_seq` on it receipts again (a receipt can be lost too).
    SentUpTo {
        /// The first text of the sender's device not receipted.
        from_seq: u64,
        /// The highest sequence number of the sender's device in the conversation.
        seq: u64,
    },
    /// A request for a sender key this device lacks (pairwise, direct conversation, to the
    /// one device that sent the key): group messages under it arrived, the key did not (a
    /// relay lost it, say). The sender sends it again, as it first sent it to this device,
    /// with the group message it went with, if it did send it to this device and still
    /// keeps it; anything else is ignored.
    KeyRequest {
        /// The Megolm session id of the key (at most [`MAX_SESSION_ID`] bytes).
        session: String,
    },
    /// The sender user's current signed device list (pairwise, direct conversation only),
    /// sent to every contact and group member when the list changes, and as the answer to a
    /// message that was encrypted for an older version of it. `stale` names the messages of
    /// the receiver that arrived encrypted for an older version: the receiver encrypts them
    /// again for the devices it now learns of.
    DeviceList {
        /// A `tern_crypto::SignedDeviceList`.
        list: ByteBuf,
        /// The addressed user's own messages that were encrypted for an older list (at most
        /// [`MAX_RECEIPT_IDS`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stale: Vec<ByteArray<16>>,
        /// The devices of the list those messages missed (at most
        /// `tern_crypto::consts::MAX_DEVICE_LIST_ENTRIES`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        missed: Vec<ByteArray<32>>,
        /// The sender user's home relays (multiaddrs ending in `/p2p/<peer id>`, at most
        /// `MAX_LINK_RELAYS`), where its devices keep their mailboxes: the receiver deposits
        /// at every one. Empty: unchanged (a sender from before this field).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        relays: Vec<String>,
    },
    /// A chunk of this user's history, from one of the user's devices to a device it linked
    /// (pairwise, direct conversation addressed to this user only), in the order the sender
    /// stored it. The receiver stores each message it does not hold yet.
    History {
        /// The messages (at most [`MAX_HISTORY_CHUNK_MESSAGES`]).
        messages: Vec<crate::device_link::BundleMessage>,
        /// Messages sent so far, this chunk included.
        sent: u64,
        /// Messages in the whole history being moved.
        total: u64,
    },
    /// Nothing but the envelope's [`Envelope::grant`] (pairwise, direct conversation): the
    /// answer to mail that reached the sender's mailbox without a grant. Not stored.
    Grant {},
    /// A kind of content this build does not know, from a newer version (decoding only;
    /// never sent): kept and shown as an unsupported message, never dropped.
    #[serde(skip)]
    Unsupported {
        /// The kind's name as the sender wrote it (at most [`MAX_KIND_NAME`] characters,
        /// printable ASCII).
        kind: String,
    },
}

/// The body kinds this build reads: anything else is [`Body::Unsupported`].
const KNOWN_KINDS: [&str; 11] = [
    "Text",
    "Receipt",
    "GroupOp",
    "GroupOps",
    "SenderKey",
    "Resend",
    "KeyRequest",
    "SentUpTo",
    "DeviceList",
    "History",
    "Grant",
];

/// Longest Megolm session id a [`Body::KeyRequest`] may name (vodozemac's are 43 bytes of
/// base64).
pub const MAX_SESSION_ID: usize = 64;

/// Longest unknown kind name kept.
pub const MAX_KIND_NAME: usize = 64;

/// An envelope whose body is read as any CBOR value, to tell an unknown kind from garbage.
#[derive(Deserialize)]
struct Loose {
    id: ByteArray<16>,
    conversation: Conversation,
    sender_user: ByteArray<16>,
    sender_device: ByteArray<32>,
    lamport: u64,
    seq: u64,
    sent_at_ms: i64,
    body: ciborium::Value,
    #[serde(default)]
    lists: Option<ListVersions>,
    #[serde(default)]
    grant: Option<ByteArray<32>>,
    #[serde(default)]
    heads: Vec<ByteArray<32>>,
}

impl Loose {
    /// The envelope with an unsupported body, when the body is one entry naming a kind
    /// this build does not know.
    fn unsupported(self) -> Option<Envelope> {
        let ciborium::Value::Map(entries) = &self.body else {
            return None;
        };
        let [(ciborium::Value::Text(kind), _)] = entries.as_slice() else {
            return None;
        };
        if KNOWN_KINDS.contains(&kind.as_str()) {
            return None;
        }
        let kind: String = kind
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(MAX_KIND_NAME)
            .collect();
        Some(Envelope {
            id: self.id,
            conversation: self.conversation,
            sender_user: self.sender_user,
            sender_device: self.sender_device,
            lamport: self.lamport,
            seq: self.seq,
            sent_at_ms: self.sent_at_ms,
            body: Body::Unsupported { kind },
            lists: self.lists,
            grant: self.grant,
            heads: self.heads,
        })
    }
}

/// Most messages one `History` chunk may carry.
pub const MAX_HISTORY_CHUNK_MESSAGES: usize = 1_000;

/// The device-list versions a message was encrypted with, so a receiver can tell that the
/// sender encrypted for an older list of its user (and answer with the current one) or holds
/// an older list of the sender's (and fetch it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListVersions {
    /// The addressed user's device list the message was encrypted for (absent in a group
    /// message, which is encrypted once for every member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ListMark>,
    /// The sender user's own device list (what a sync copy was encrypted for).
    pub from: ListMark,
}

/// A version of a device list, and how many entries it had. Lists only grow at the end, so
/// the entries of a newer list past this many are the devices added since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMark {
    /// The list's version.
    pub version: u64,
    /// Its entries, active and revoked.
    pub entries: u32,
}

/// A plaintext envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Random 128-bit message id chosen by the sender.
    pub id: ByteArray<16>,
    /// The conversation.
    pub conversation: Conversation,
    /// The sending user id.
    pub sender_user: ByteArray<16>,
    /// The sending device id (its network public key).
    pub sender_device: ByteArray<32>,
    /// The conversation's Lamport clock at sending.
    pub lamport: u64,
    /// The sending device's sequence number in this conversation.
    pub seq: u64,
    /// The sender's clock at sending, ms since the Unix epoch.
    pub sent_at_ms: i64,
    /// The content.
    pub body: Body,
    /// The device-list versions it was encrypted with (absent from older senders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<ListVersions>,
    /// The sending device's deposit grant for the receiving user (pairwise envelopes only;
    /// see `tern_crypto::grant`): what the receiver shows to deposit into the sender's
    /// mailboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<ByteArray<32>>,
    /// Group texts: the heads of the group's membership graph at the sender when it was
    /// sent (see [`crate::group`]), so that a message sent before its sender's removal and
    /// arriving after it is still shown. At most `MAX_OP_PARENTS`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<ByteArray<32>>,
}

/// Why an envelope could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// No bytes.
    #[error("empty envelope")]
    Empty,
    /// Over [`MAX_ENVELOPE_BYTES`].
    #[error("envelope of {0} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    /// A version this build does not read.
    #[error("envelope version {0} is not supported (this build reads {ENVELOPE_VERSION})")]
    UnsupportedVersion(u8),
    /// Not a valid envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

impl EnvelopeError {
    /// What went wrong, without the decoder's message (which could quote plaintext): the
    /// form to log.
    pub fn kind(&self) -> &'static str {
        match self {
            EnvelopeError::Empty => "empty",
            EnvelopeError::TooLarge(_) => "too large",
            EnvelopeError::UnsupportedVersion(_) => "unknown version",
            EnvelopeError::Malformed(_) => "malformed",
        }
    }
}

impl Envelope {
    /// Encodes the envelope.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        self.check()?;
        let mut out = vec![ENVELOPE_VERSION];
        ciborium::into_writer(self, &mut out)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if out.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Decodes an envelope, checking version, size and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let (&version, mut body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let whole = body;
        let env: Envelope = match ciborium::from_reader(&mut body) {
            Ok(env) => env,
            Err(e) => {
                // A newer sender's kind of content: kept as unsupported, not dropped.
                body = whole;
                ciborium::from_reader::<Loose, _>(&mut body)
                    .ok()
                    .and_then(Loose::unsupported)
                    .ok_or_else(|| EnvelopeError::Malformed(e.to_string()))?
            }
        };
        if !body.is_empty() {
            return Err(EnvelopeError::Malformed(format!(
                "{} trailing bytes",
                body.len()
            )));
        }
        env.check()?;
        Ok(env)
    }

    fn check(&self) -> Result<(), EnvelopeError> {
        if self.heads.len() > crate::consts::MAX_OP_PARENTS {
            return Err(EnvelopeError::Malformed(format!(
                "{} membership heads (at most {})",
                self.heads.len(),
                crate::consts::MAX_OP_PARENTS
            )));
        }
        if let Body::Text { media: Some(m), .. } = &self.body {
            m.check()
                .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        }
        if let Body::Receipt { ids, .. } = &self.body
            && (ids.is_empty() || ids.len() > MAX_RECEIPT_IDS)
        {
            return Err(EnvelopeError::Malformed(format!(
                "receipt with {} ids (1 to {MAX_RECEIPT_IDS} allowed)",
                ids.len()
            )));
        }
        if let Body::History { messages, .. } = &self.body
            && messages.len() > MAX_HISTORY_CHUNK_MESSAGES
        {
            return Err(EnvelopeError::Malformed(format!(
                "history chunk of {} messages (at most {MAX_HISTORY_CHUNK_MESSAGES})",
                messages.len()
            )));
        }
        if let Body::DeviceList { relays, .. } = &self.body
            && (relays.len() > crate::consts::MAX_LINK_RELAYS
                || relays
                    .iter()
                    .any(|r| r.len() > crate::consts::MAX_RELAY_ADDR_BYTES))
        {
            return Err(EnvelopeError::Malformed(format!(
                "device list naming {} relays (at most {}, each at most {} bytes)",
                relays.len(),
                crate::consts::MAX_LINK_RELAYS,
                crate::consts::MAX_RELAY_ADDR_BYTES
            )));
        }
        if let Body::DeviceList { stale, missed, .. } = &self.body
            && (stale.len() > MAX_RECEIPT_IDS
                || missed.len() > tern_crypto::consts::MAX_DEVICE_LIST_ENTRIES)
        {
            return Err(EnvelopeError::Malformed(format!(
                "device-list answer naming {} messages and {} devices (at most {MAX_RECEIPT_IDS} and {})",
                stale.len(),
                missed.len(),
                tern_crypto::consts::MAX_DEVICE_LIST_ENTRIES
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: ByteArray::new([1; 16]),
            conversation: Conversation::Direct {
                to: ByteArray::new([2; 16]),
            },
            sender_user: ByteArray::new([3; 16]),
            sender_device: ByteArray::new([4; 32]),
            lamport: 7,
            seq: 3,
            sent_at_ms: 1_700_000_000_000,
            body: Body::Text {
                text: "hello".into(),
                media: None,
            },
            lists: None,
            grant: None,
            heads: Vec::new(),
        }
    }

    /// The sample envelope re-encoded with its body replaced by `body` (any CBOR value).
    fn with_body(body: ciborium::Value) -> Vec<u8> {
        let bytes = sample().encode().unwrap();
        let mut v: ciborium::Value = ciborium::from_reader(&bytes[1..]).unwrap();
        let ciborium::Value::Map(entries) = &mut v else {
            panic!("not a map")
        };
        for (k, val) in entries.iter_mut() {
            if k.as_text() == Some("body") {
                *val = body.clone();
            }
        }
        let mut out = vec![ENVELOPE_VERSION];
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    }

    #[test]
    fn a_kind_of_content_from_a_newer_version_is_kept_as_unsupported() {
        use ciborium::Value;
        let poll = Value::Map(vec![(
            Value::Text("Poll".into()),
            Value::Map(vec![(
                Value::Text("question".into()),
                Value::Text("?".into()),
            )]),
        )]);
        let env = Envelope::decode(&with_body(poll)).unwrap();
        assert_eq!(
            env.body,
            Body::Unsupported {
                kind: "Poll".into()
            }
        );
        assert_eq!(env.id, sample().id);
        assert_eq!(env.seq, sample().seq);
        // The kind's name is kept printable and short.
        let odd = Value::Map(vec![(
            Value::Text(format!("X\n{}", "y".repeat(200))),
            Value::Null,
        )]);
        let Body::Unsupported { kind } = Envelope::decode(&with_body(odd)).unwrap().body else {
            panic!("not unsupported")
        };
        assert_eq!(kind.len(), MAX_KIND_NAME);
        assert!(kind.chars().all(|c| c.is_ascii_graphic()));
        // A known kind with bad contents, or a body that is no kind at all, is still malformed.
        for bad in [
            Value::Map(vec![(Value::Text("Text".into()), Value::Integer(5.into()))]),
            Value::Integer(5.into()),
            Value::Map(vec![
                (Value::Text("A".into()), Value::Null),
                (Value::Text("B".into()), Value::Null),
            ]),
        ] {
            assert!(matches!(
                Envelope::decode(&with_body(bad)),
                Err(EnvelopeError::Malformed(_))
            ));
        }
        // It is never sent.
        let mut e = sample();
        e.body = Body::Unsupported {
            kind: "Poll".into(),
        };
        assert!(e.encode().is_err());
    }

    #[test]
    fn list_versions_and_device_list_answers_round_trip() {
        let mut e = sample();
        e.lists = Some(ListVersions {
            to: Some(ListMark {
                version: 3,
                entries: 2,
            }),
            from: ListMark {
                version: 5,
                entries: 1,
            },
        });
        let bytes = e.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        // A sender that writes no versions is read as such (older builds).
        assert_eq!(
            Envelope::decode(&sample().encode().unwrap()).unwrap().lists,
            None
        );
        e.body = Body::DeviceList {
            list: ByteBuf::from(vec![1, 2, 3]),
            stale: vec![ByteArray::new([9; 16]); 2],
            missed: vec![ByteArray::new([8; 32])],
            relays: Vec::new(),
        };
        assert_eq!(Envelope::decode(&e.encode().unwrap()).unwrap(), e);
        e.body = Body::DeviceList {
            list: ByteBuf::from(vec![1]),
            stale: Vec::new(),
            missed: Vec::new(),
            relays: vec!["/ip4/127.0.0.1/tcp/1".into(); 2],
        };
        assert_eq!(Envelope::decode(&e.encode().unwrap()).unwrap(), e);
        e.body = Body::DeviceList {
            list: ByteBuf::from(vec![1]),
            stale: Vec::new(),
            missed: Vec::new(),
            relays: vec!["/ip4/127.0.0.1/tcp/1".into(); crate::consts::MAX_LINK_RELAYS + 1],
        };
        assert!(matches!(e.encode(), Err(EnvelopeError::Malformed(_))));
        e.body = Body::DeviceList {
            list: ByteBuf::from(vec![1]),
            stale: vec![ByteArray::new([9; 16]); MAX_RECEIPT_IDS + 1],
            missed: Vec::new(),
            relays: Vec::new(),
        };
        assert!(matches!(e.encode(), Err(EnvelopeError::Malformed(_))));
    }

    #[test]
    fn round_trip_and_errors() {
        let e = sample();
        let bytes = e.encode().unwrap();
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        assert_eq!(Envelope::decode(&[]), Err(EnvelopeError::Empty));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            Envelope::decode(&v2),
            Err(EnvelopeError::UnsupportedVersion(2))
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            Envelope::decode(&trailing),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::decode(&bytes[..bytes.len() - 3]),
            Err(EnvelopeError::Malformed(_))
        ));
        let big = vec![ENVELOPE_VERSION; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::decode(&big),
            Err(EnvelopeError::TooLarge(_))
        ));
        let mut empty_receipt = sample();
        empty_receipt.body = Body::Receipt {
            kind: ReceiptKind::Read,
            ids: vec![],
        };
        assert!(empty_receipt.encode().is_err());
    }
}
