//! Contact links: what one user gives another to start talking.
//!
//! Two forms are accepted. The **short** form ([`ShortLink`], `TERN:` + base32, ~250
//! characters) fits a small QR code: it carries the identity key and one relay, and the node
//! fetches the device list from that relay when the link is added. The **long** form
//! ([`ContactLink`], below) carries the whole signed device list and needs no relay to add.
//! [`Link::parse`] takes either.
//!
//! The long form:
//!
//! ```text
//! tern:<base58( version u8 (= 1) | CBOR {body: bytes, signature: bytes[64]} )>
//! body = CBOR {user_id, identity_key, name, relays: [multiaddr], device_list, signer}
//! ```
//!
//! The link carries the user's signed device list, so the receiver gets the devices (and
//! their Olm keys) without asking any relay, and pins the identity key from it. The whole
//! body is signed by the network key of `signer`, a device active in that list: the identity
//! key vouches for the device, the device vouches for the name and relay addresses. (The
//! identity key itself does not sign the body because tern-crypto exposes identity signatures
//! only for its own record kinds.) Any change to the link breaks the signature.

use libp2p::{Multiaddr, identity::Keypair, multiaddr::Protocol};
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::{DeviceId, IdentityPublicKey, SignedDeviceList, UserId};

use crate::consts::{MAX_LINK_CHARS, MAX_LINK_RELAYS, MAX_NAME_BYTES};

mod short;
pub use short::{SHORT_LINK_PREFIX, SHORT_LINK_VERSION, ShortLink};

/// The scheme prefix of a link.
pub const LINK_PREFIX: &str = "tern:";
/// The link format version.
pub const LINK_VERSION: u8 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"tern/contact-link/v1\0";

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Not a `tern:` link, or not base58.
    #[error("not a Tern contact link (expected `tern:` followed by base58)")]
    NotALink,
    /// Too long.
    #[error("contact link is longer than {MAX_LINK_CHARS} characters")]
    TooLong,
    /// Unknown version.
    #[error(
        "contact link version {0} is not supported: the link is damaged, or made by a newer Tern"
    )]
    UnsupportedVersion(u8),
    /// Does not decode.
    #[error("malformed contact link: {0}")]
    Malformed(String),
    /// The signature or the device list does not verify, or they disagree.
    #[error("contact link does not verify: {0}")]
    BadSignature(String),
    /// The relay a short link names could not be reached, or did not answer in time.
    #[error("could not fetch the device list from the link's relay {relay}: {reason}")]
    RelayUnreachable {
        /// The relay address.
        relay: String,
        /// What failed.
        reason: String,
    },
    /// The relay a short link names holds no device list for the user.
    #[error(
        "the link's relay {relay} holds no device list for that user (ask them for a fresh link)"
    )]
    NoDeviceList {
        /// The relay address.
        relay: String,
    },
    /// The device list at the relay is not signed by the identity key in the link.
    #[error(
        "the device list at the link's relay is signed by another identity key than the link's: \
         refused"
    )]
    ListFromAnotherKey,
    /// The device list at the relay belongs to another user than the link names.
    #[error("the device list at the link's relay belongs to another user: refused")]
    ListOfAnotherUser,
}

/// A parsed contact link of either form.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// The long form, carrying the device list.
    Full(Box<ContactLink>),
    /// The short form: the device list is to be fetched from its relay.
    Short(ShortLink),
}

impl Link {
    /// Parses and verifies a link of either form (the signature of each is checked here; a
    /// short link's device list is checked when it is fetched).
    ///
    /// White space anywhere in `text` is dropped first: a link has none, and one copied
    /// from wrapped text or a message often gains line breaks or spaces.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        if text.len() > 2 * MAX_LINK_CHARS {
            return Err(LinkError::TooLong);
        }
        let text: String = text.split_whitespace().collect();
        if text.len() > MAX_LINK_CHARS {
            return Err(LinkError::TooLong);
        }
        let payload = short::strip_prefix(&text)
            .filter(|p| !p.is_empty())
            .ok_or(LinkError::NotALink)?;
        if short::fits_short(payload) {
            return ShortLink::decode(payload).map(Link::Short);
        }
        ContactLink::parse(&text).map(|l| Link::Full(Box::new(l)))
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: ByteBuf,
    signature: ByteArray<64>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    user_id: ByteArray<16>,
    identity_key: ByteArray<32>,
    name: String,
    relays: Vec<String>,
    device_list: ByteBuf,
    signer: ByteArray<32>,
}

/// A verified contact link.
#[derive(Debug, Clone)]
pub struct ContactLink {
    /// The user.
    pub user_id: UserId,
    /// Their identity key (to pin).
    pub identity_key: IdentityPublicKey,
    /// The name they suggest.
    pub name: String,
    /// Their home relays (each ends in `/p2p/<peer id>`).
    pub relays: Vec<Multiaddr>,
    /// Their signed device list, verified under `identity_key`.
    pub device_list: SignedDeviceList,
}

impl ContactLink {
    /// Makes and signs a link.
    pub fn create(
        signer: &Keypair,
        name: &str,
        relays: &[Multiaddr],
        device_list: &SignedDeviceList,
    ) -> Result<String, LinkError> {
        let list = device_list.list();
        let signer_id = DeviceId::from_peer_id_bytes(&signer.public().to_peer_id().to_bytes())
            .ok_or_else(|| LinkError::Malformed("signer is not an Ed25519 key".into()))?;
        let body = Body {
            user_id: ByteArray::new(*list.user_id.as_bytes()),
            identity_key: ByteArray::new(*list.identity_key.as_bytes()),
            name: name.to_owned(),
            relays: relays.iter().map(ToString::to_string).collect(),
            device_list: ByteBuf::from(device_list.as_bytes().to_vec()),
            signer: ByteArray::new(*signer_id.as_bytes()),
        };
        let mut body_bytes = Vec::new();
        ciborium::into_writer(&body, &mut body_bytes)
            .map_err(|e| LinkError::Malformed(e.to_string()))?;
        let sig = signer
            .sign(&[SIGNATURE_DOMAIN, &body_bytes].concat())
            .map_err(|e| LinkError::Malformed(e.to_string()))?;
        let signature: [u8; 64] = sig
            .try_into()
            .map_err(|_| LinkError::Malformed("signature length".into()))?;
        let mut out = vec![LINK_VERSION];
        ciborium::into_writer(
            &Wire {
                body: ByteBuf::from(body_bytes),
                signature: ByteArray::new(signature),
            },
            &mut out,
        )
        .map_err(|e| LinkError::Malformed(e.to_string()))?;
        let link = format!("{LINK_PREFIX}{}", bs58::encode(out).into_string());
        if link.len() > MAX_LINK_CHARS {
            return Err(LinkError::TooLong);
        }
        Ok(link)
    }

    /// Parses and verifies a link.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let text = text.trim();
        if text.len() > MAX_LINK_CHARS {
            return Err(LinkError::TooLong);
        }
        let b58 = text.strip_prefix(LINK_PREFIX).ok_or(LinkError::NotALink)?;
        let raw = bs58::decode(b58)
            .into_vec()
            .map_err(|_| LinkError::NotALink)?;
        let (&version, mut rest) = raw
            .split_first()
            .ok_or_else(|| LinkError::Malformed("empty".into()))?;
        if version != LINK_VERSION {
            return Err(LinkError::UnsupportedVersion(version));
        }
        let wire: Wire =
            ciborium::from_reader(&mut rest).map_err(|e| LinkError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(LinkError::Malformed("trailing bytes".into()));
        }
        let mut body_slice = wire.body.as_slice();
        let body: Body = ciborium::from_reader(&mut body_slice)
            .map_err(|e| LinkError::Malformed(e.to_string()))?;
        if !body_slice.is_empty() {
            return Err(LinkError::Malformed("trailing bytes in body".into()));
        }
        if body.name.len() > MAX_NAME_BYTES || body.relays.len() > MAX_LINK_RELAYS {
            return Err(LinkError::Malformed("name or relay list too long".into()));
        }
        let identity_key = IdentityPublicKey::from_bytes(body.identity_key.into_array());
        let user_id = UserId::from_bytes(body.user_id.into_array());
        let device_list = SignedDeviceList::from_bytes(&body.device_list)
            .map_err(|e| LinkError::BadSignature(e.to_string()))?;
        device_list
            .check_identity(&identity_key)
            .map_err(|e| LinkError::BadSignature(e.to_string()))?;
        if device_list.list().user_id != user_id {
            return Err(LinkError::BadSignature(
                "device list belongs to another user".into(),
            ));
        }
        let signer = DeviceId::from_bytes(body.signer.into_array());
        if device_list.list().active_certificate(&signer).is_none() {
            return Err(LinkError::BadSignature(
                "signer is not an active device of this user".into(),
            ));
        }
        let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(signer.as_bytes())
            .map_err(|e| LinkError::BadSignature(e.to_string()))?;
        if !key.verify(
            &[SIGNATURE_DOMAIN, wire.body.as_slice()].concat(),
            wire.signature.as_slice(),
        ) {
            return Err(LinkError::BadSignature("signature does not verify".into()));
        }
        let mut relays = Vec::with_capacity(body.relays.len());
        for r in &body.relays {
            let addr: Multiaddr = r
                .parse()
                .map_err(|_| LinkError::Malformed(format!("relay address {r:?}")))?;
            if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                return Err(LinkError::Malformed(format!(
                    "relay address {r:?} lacks /p2p/<peer id>"
                )));
            }
            relays.push(addr);
        }
        Ok(ContactLink {
            user_id,
            identity_key,
            name: body.name,
            relays,
            device_list,
        })
    }
}

impl PartialEq for ContactLink {
    fn eq(&self, other: &Self) -> bool {
        self.user_id == other.user_id
            && self.identity_key == other.identity_key
            && self.name == other.name
            && self.relays == other.relays
            && self.device_list.as_bytes() == other.device_list.as_bytes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tern_crypto::{DeviceKeys, DeviceList, IdentityKey};

    /// A long link with one relay, for size comparisons.
    pub(crate) fn long_link() -> String {
        make().0
    }

    #[test]
    fn old_long_links_still_parse_as_either() {
        let (link, id) = make();
        let Ok(Link::Full(parsed)) = Link::parse(&link) else {
            panic!("long link not taken by Link::parse");
        };
        assert_eq!(parsed.identity_key, id.public());
        assert_eq!(Some(*parsed), ContactLink::parse(&link).ok());
    }

    fn make() -> (String, IdentityKey) {
        let id = IdentityKey::generate().unwrap();
        let dev = DeviceKeys::generate().unwrap();
        let cert = dev.certify(&id, "laptop", 1).unwrap();
        let list = DeviceList::first(&id, cert, 1).sign(&id).unwrap();
        let kp = Keypair::ed25519_from_bytes(*dev.network_secret()).unwrap();
        let relay: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", libp2p::PeerId::random())
            .parse()
            .unwrap();
        (
            ContactLink::create(&kp, "Alice", &[relay], &list).unwrap(),
            id,
        )
    }

    #[test]
    fn round_trip() {
        let (link, id) = make();
        let parsed = ContactLink::parse(&link).unwrap();
        assert_eq!(parsed.user_id, id.user_id());
        assert_eq!(parsed.identity_key, id.public());
        assert_eq!(parsed.name, "Alice");
        assert_eq!(parsed.relays.len(), 1);
    }

    #[test]
    fn tampered_and_malformed_links_are_refused() {
        let (link, _) = make();
        let raw = bs58::decode(&link[LINK_PREFIX.len()..]).into_vec().unwrap();
        // Flip one byte at a time across the link: every change must be refused.
        for i in (1..raw.len()).step_by(7) {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let text = format!("{LINK_PREFIX}{}", bs58::encode(&bad).into_string());
            assert!(ContactLink::parse(&text).is_err(), "byte {i} flip accepted");
        }
        assert_eq!(ContactLink::parse("hello"), Err(LinkError::NotALink));
        assert_eq!(ContactLink::parse("tern:0OIl"), Err(LinkError::NotALink));
        let mut v2 = raw.clone();
        v2[0] = 9;
        assert_eq!(
            ContactLink::parse(&format!("{LINK_PREFIX}{}", bs58::encode(&v2).into_string())),
            Err(LinkError::UnsupportedVersion(9))
        );
        assert_eq!(
            ContactLink::parse(&"x".repeat(MAX_LINK_CHARS + 1)),
            Err(LinkError::TooLong)
        );
    }
}
