//! `/tern/mailbox/1`: deposit ciphertext for devices, fetch, acknowledge, live delivery
//! and push-endpoint registration.
//!
//! Client → relay: [`Request::Deposit`], [`Request::Fetch`], [`Request::Ack`],
//! [`Request::Listen`], [`Request::RegisterPush`], [`Request::SetGrants`], [`Request::Usage`]. Relay → client: [`Request::Deliver`]
//! (answered with [`Response::Ok`]). The relay answers anything it cannot serve with
//! [`Response::Error`].

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};

use super::{ErrorCode, Rejection, peer_serde};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/mailbox/1");

/// Largest ciphertext the wire format carries (a relay may configure less).
pub const MAX_CIPHERTEXT_BYTES: usize = 128 * 1024;
/// Most recipient devices in one deposit (500 group members with a few devices each).
pub const MAX_RECIPIENTS: usize = 2048;
/// Most message ids in one `Ack`.
pub const MAX_ACK_IDS: usize = 1024;
/// Most messages one `Fetch` may ask for.
pub const MAX_FETCH_MESSAGES: u32 = 256;
/// Longest push endpoint URL.
pub const MAX_PUSH_URL_BYTES: usize = 2048;
/// Most grant token hashes one mailbox registers (contacts, members of shared groups and
/// the owner's own user: one each).
pub const MAX_GRANTS: usize = 8192;
/// Most per-share rows a [`Usage`] answer lists (the largest first).
pub const MAX_USAGE_SHARES: usize = 256;
/// Longest request frame: a maximal ciphertext plus a maximal recipient list (≤ 42 bytes
/// per peer id) with a 32-byte token each, with room for CBOR overhead; or a full
/// [`Request::SetGrants`].
pub const MAX_REQUEST_BYTES: usize = MAX_CIPHERTEXT_BYTES + MAX_RECIPIENTS * (48 + 36) + 4096;
/// Longest response frame (a `Messages` page; the relay keeps pages under
/// [`MAX_PAGE_BYTES`]).
pub const MAX_RESPONSE_BYTES: usize = MAX_PAGE_BYTES + MAX_CIPHERTEXT_BYTES + 64 * 1024;
/// The relay stops adding messages to a page once it holds this many ciphertext bytes.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// A request on `/tern/mailbox/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Store `ciphertext` once and reference it from each recipient's mailbox.
    Deposit {
        /// Recipient devices (PeerIds); duplicates are ignored.
        #[serde(with = "peer_serde::many")]
        recipients: Vec<PeerId>,
        /// Requested lifetime in seconds; the relay caps it at its configured TTL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u32>,
        /// The opaque end-to-end encrypted payload.
        ciphertext: ByteBuf,
        /// A deposit token per recipient, in the order of `recipients` (empty: none for any):
        /// what the recipient granted the sender, made for this relay (see
        /// `tern_crypto::grant`). A recipient whose owner registered grants takes a deposit
        /// without one only into its small introductions share.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tokens: Vec<Option<ByteArray<32>>>,
        /// On a deposit stream only: the number (from 0, in the stream's order) of an
        /// earlier deposit of the same stream that this one must not overtake. If that one
        /// was refused for any recipient, this one is refused `OutOfOrder` and not stored.
        /// A sender that keeps several deposits for one device in flight names the one
        /// before each (unanswered when it sent this one), so a refusal in the middle of its
        /// window leaves nothing after it stored. Ignored on requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        follows: Option<u64>,
    },
    /// Read the caller's own mailbox: messages with id greater than `after`, oldest first.
    Fetch {
        /// Cursor: the last id already seen (0 to start).
        after: u64,
        /// Most messages to return (capped at [`MAX_FETCH_MESSAGES`]).
        limit: u32,
    },
    /// Delete messages from the caller's own mailbox after it has stored them.
    Ack {
        /// Message ids from `Messages` or `Deliver`.
        ids: Vec<u64>,
    },
    /// Ask the relay to push new mail on this connection as it lands (or stop).
    Listen {
        /// `true` to receive `Deliver` requests, `false` to stop.
        enabled: bool,
    },
    /// Register (or with `None` remove) the URL the relay POSTs wake-ups to while the
    /// caller is offline.
    RegisterPush {
        /// An `http(s)://` URL under one of the relay's allowed prefixes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// Replace the set of grants the caller's mailbox accepts deposits under: the hashes of
    /// the tokens its senders show here (at most [`MAX_GRANTS`]). From the first of these on,
    /// the mailbox is closed to deposits without a token except for its introductions share,
    /// and a token whose hash is not in the set is refused with `NoGrant`.
    SetGrants {
        /// Token hashes (`tern_crypto::grant::token_hash`).
        hashes: Vec<ByteArray<32>>,
    },
    /// How full the caller's mailbox is, and by whom.
    Usage,
    /// Relay → client: new mail for the client's mailbox. Still needs an `Ack`.
    Deliver {
        /// The new messages.
        messages: Vec<Envelope>,
    },
}

impl Request {
    /// A `Deliver` of one message: mailbox entry `id`, deposited by `sender` at
    /// `deposited_ms`.
    pub fn deliver_one(
        id: u64,
        sender: PeerId,
        deposited_ms: u64,
        ciphertext: &[u8],
        intro: bool,
    ) -> Self {
        Request::Deliver {
            messages: vec![Envelope {
                id,
                sender,
                deposited_ms,
                ciphertext: ByteBuf::from(ciphertext.to_vec()),
                intro,
            }],
        }
    }
}

/// A message as a recipient sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Mailbox-local id: increases with every deposit, never reused; the fetch cursor.
    pub id: u64,
    /// The depositing device, as authenticated by the Noise handshake.
    #[serde(with = "peer_serde::one")]
    pub sender: PeerId,
    /// When the relay stored it (milliseconds since the Unix epoch).
    pub deposited_ms: u64,
    /// The ciphertext as deposited.
    pub ciphertext: ByteBuf,
    /// Deposited without a grant, into the introductions share: the owner's node may want to
    /// grant the sender (if it knows them) or keep it apart (if it does not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intro: bool,
}

/// A recipient a deposit did not reach, and why (`QuotaCount`, `QuotaBytes`, `ShareFull`,
/// `IntroFull`, `NoGrant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The recipient.
    #[serde(with = "peer_serde::one")]
    pub peer: PeerId,
    /// Why.
    pub code: ErrorCode,
}

/// Messages and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// Messages.
    pub messages: u64,
    /// Ciphertext bytes.
    pub bytes: u64,
}

/// Who fills a mailbox: the answer to [`Request::Usage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Everything in it.
    pub total: Fill,
    /// The mailbox's limits.
    pub quota: Fill,
    /// Most any one share may hold.
    pub share_quota: Fill,
    /// What arrived without a grant (introductions).
    pub intro: Fill,
    /// Most the introductions share may hold.
    pub intro_quota: Fill,
    /// Per grant (by token hash; deposits under the same grant from any of the sender's
    /// devices), largest first, at most [`MAX_USAGE_SHARES`].
    pub grants: Vec<(ByteArray<32>, Fill)>,
    /// Per depositing device without a grant, largest first, at most
    /// [`MAX_USAGE_SHARES`].
    #[serde(with = "peer_fills")]
    pub senders: Vec<(PeerId, Fill)>,
    /// Grants registered.
    pub registered: u32,
}

mod peer_fills {
    use libp2p::PeerId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::ByteBuf;

    use super::Fill;

    pub fn serialize<S: Serializer>(v: &[(PeerId, Fill)], s: S) -> Result<S::Ok, S::Error> {
        let raw: Vec<(ByteBuf, Fill)> = v
            .iter()
            .map(|(p, f)| (ByteBuf::from(p.to_bytes()), *f))
            .collect();
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(PeerId, Fill)>, D::Error> {
        let raw: Vec<(ByteBuf, Fill)> = Vec::deserialize(d)?;
        raw.into_iter()
            .map(|(b, f)| {
                PeerId::from_bytes(&b)
                    .map(|p| (p, f))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// A response on `/tern/mailbox/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The deposit is durable (committed with `synchronous=FULL`).
    Deposited {
        /// Relay-wide id of the stored ciphertext (for logs; recipients see their own ids).
        message: u64,
        /// How many mailboxes reference it.
        recipients: u32,
        /// Recipients that did not get it, and why (the deposit fails with the last of
        /// these codes only when this would be every recipient).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<Refusal>,
    },
    /// How full the caller's mailbox is.
    Usage(Usage),
    /// A page of the caller's mailbox.
    Messages {
        /// Oldest first.
        messages: Vec<Envelope>,
        /// More messages follow the last one.
        more: bool,
    },
    /// How many of the acknowledged ids were removed (ids not in the caller's mailbox
    /// count as nothing, and say nothing).
    Acked {
        /// Number removed.
        removed: u32,
    },
    /// The request succeeded and has nothing to return.
    Ok,
    /// The request failed.
    Error(Rejection),
}

framed!(Request, "mailbox request", MAX_REQUEST_BYTES);
framed!(Response, "mailbox response", MAX_RESPONSE_BYTES);

/// The codec caps for this protocol.
pub fn codec() -> super::FrameCodec {
    super::FrameCodec::new(MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DecodeError;

    #[test]
    fn round_trips() {
        let p = PeerId::random();
        let reqs = [
            Request::Deposit {
                recipients: vec![p, PeerId::random()],
                ttl_secs: Some(60),
                ciphertext: ByteBuf::from(vec![7; 100]),
                tokens: vec![Some(ByteArray::new([3; 32])), None],
                follows: Some(4),
            },
            Request::SetGrants {
                hashes: vec![ByteArray::new([4; 32])],
            },
            Request::Usage,
            Request::Fetch {
                after: 5,
                limit: 10,
            },
            Request::Ack { ids: vec![1, 2] },
            Request::Listen { enabled: true },
            Request::RegisterPush {
                url: Some("http://127.0.0.1/x".into()),
            },
            Request::Deliver {
                messages: vec![Envelope {
                    id: 1,
                    sender: p,
                    deposited_ms: 9,
                    ciphertext: ByteBuf::from(vec![1]),
                    intro: true,
                }],
            },
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        }
        let resp = Response::Error(Rejection {
            code: super::super::ErrorCode::RateLimited,
            retry_after_ms: Some(10),
        });
        assert_eq!(Response::decode(&resp.encode().unwrap()).unwrap(), resp);
        let resps = [
            Response::Deposited {
                message: 3,
                recipients: 1,
                refused: vec![Refusal {
                    peer: p,
                    code: ErrorCode::NoGrant,
                }],
            },
            Response::Usage(Usage {
                total: Fill {
                    messages: 2,
                    bytes: 9,
                },
                grants: vec![(ByteArray::new([1; 32]), Fill::default())],
                senders: vec![(p, Fill::default())],
                registered: 4,
                ..Usage::default()
            }),
        ];
        for r in resps {
            assert_eq!(Response::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn max_grants_fit() {
        let r = Request::SetGrants {
            hashes: vec![ByteArray::new([0xff; 32]); MAX_GRANTS],
        };
        assert!(r.encode().is_ok());
    }

    #[test]
    fn max_deposit_fits() {
        let r = Request::Deposit {
            recipients: (0..MAX_RECIPIENTS).map(|_| PeerId::random()).collect(),
            ttl_secs: Some(u32::MAX),
            ciphertext: ByteBuf::from(vec![0xff; MAX_CIPHERTEXT_BYTES]),
            tokens: vec![Some(ByteArray::new([0xff; 32])); MAX_RECIPIENTS],
            follows: Some(u64::MAX),
        };
        assert!(r.encode().is_ok());
    }

    #[test]
    fn bad_peer_id_is_typed_error() {
        // A Deposit whose recipient is not a valid multihash.
        #[derive(Serialize)]
        enum Fake {
            Deposit {
                recipients: Vec<ByteBuf>,
                ciphertext: ByteBuf,
            },
        }
        let bytes = super::super::encode(
            "t",
            &Fake::Deposit {
                recipients: vec![ByteBuf::from(vec![1, 2, 3])],
                ciphertext: ByteBuf::new(),
            },
            1 << 20,
        )
        .unwrap();
        assert!(matches!(
            Request::decode(&bytes),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
