//! Short contact links: small enough for a QR code a phone scans at a glance.
//!
//! ```text
//! TERN:<BASE32( version u8 (= 2) | user_id [16] | identity_key [32] | relay_key [32]
//!               | relay_transport [1..=96] | signature [64] )>
//! ```
//!
//! Base32 is RFC 4648's alphabet without padding, upper case: with the `TERN:` prefix the whole
//! link is in a QR code's alphanumeric set (5.5 bits a character instead of 8). The relay is
//! the one address a contact's node asks for the user's signed device list: its transport part
//! as `Multiaddr::to_vec()` (`/ip4/../tcp/..`, `/dns/../tcp/..`) and the relay's Ed25519 key in
//! place of the 38-byte `/p2p/` peer id. The identity key signs everything before the signature
//! (tern-crypto's `contact link` domain), so the signature is also the link's checksum: any
//! changed byte is refused before the network is touched. The user id is in the link because
//! it is random, not derived from the key, and relays file device lists under it.
//!
//! Adding the link fetches the device list from the relay and accepts it only if the
//! identity key in the link signed it for that user ([`ShortLink::accept_list`]).

use data_encoding::BASE32_NOPAD;
use libp2p::{Multiaddr, PeerId, identity, multiaddr::Protocol};
use tern_crypto::{IdentityKey, IdentityPublicKey, SignedDeviceList, UserId};

use super::{LINK_PREFIX, LinkError};
use crate::consts::{MAX_SHORT_LINK_CHARS, MAX_SHORT_LINK_RELAY_BYTES};

/// The short link format version (the long form is version 1).
pub const SHORT_LINK_VERSION: u8 = 2;
/// The prefix a short link is printed with (upper case keeps a QR code in alphanumeric mode);
/// parsing takes either case.
pub const SHORT_LINK_PREFIX: &str = "TERN:";

const USER_ID_BYTES: usize = 16;
const KEY_BYTES: usize = 32;
const SIGNATURE_BYTES: usize = 64;
/// Bytes before the relay transport address.
const HEAD_BYTES: usize = 1 + USER_ID_BYTES + KEY_BYTES + KEY_BYTES;

/// A short contact link whose signature verified. It names the user and a relay; the devices
/// come from the relay, checked with [`ShortLink::accept_list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortLink {
    /// The user.
    pub user_id: UserId,
    /// Their identity key (to pin, and to check the device list with).
    pub identity_key: IdentityPublicKey,
    /// The relay holding their device list, ending in `/p2p/<relay peer id>`.
    pub relay: Multiaddr,
}

impl ShortLink {
    /// Makes a short link for `user_id` signed by `identity` (the node passes its own user id;
    /// tests pass another to forge a link), naming `relay` (an address ending in `/p2p/` with
    /// an Ed25519 peer id, as every Tern relay has).
    pub fn create(
        identity: &IdentityKey,
        user_id: UserId,
        relay: &Multiaddr,
    ) -> Result<String, LinkError> {
        let (transport, relay_key) = split_relay(relay)?;
        let mut bytes = Vec::with_capacity(HEAD_BYTES + transport.len() + SIGNATURE_BYTES);
        bytes.push(SHORT_LINK_VERSION);
        bytes.extend_from_slice(user_id.as_bytes());
        bytes.extend_from_slice(identity.public().as_bytes());
        bytes.extend_from_slice(&relay_key);
        bytes.extend_from_slice(&transport);
        let signature = identity.sign_contact_link(&bytes);
        bytes.extend_from_slice(&signature);
        let link = format!("{SHORT_LINK_PREFIX}{}", BASE32_NOPAD.encode(&bytes));
        if link.len() > MAX_SHORT_LINK_CHARS {
            return Err(LinkError::TooLong);
        }
        Ok(link)
    }

    /// Decodes and verifies the payload (the text after the prefix, either case; at most
    /// as long as a short link, see [`fits_short`]).
    pub(super) fn decode(payload: &str) -> Result<Self, LinkError> {
        if let Some(c) = payload
            .chars()
            .find(|c| !(c.is_ascii_alphabetic() || ('2'..='7').contains(c)))
        {
            return Err(LinkError::Malformed(format!(
                "`{c}` cannot be in a short link (only letters and the digits 2 to 7): \
                 copy the whole link again"
            )));
        }
        let bytes = BASE32_NOPAD
            .decode(payload.to_ascii_uppercase().as_bytes())
            .map_err(|_| LinkError::Malformed(INCOMPLETE.into()))?;
        // Cut short (a link copied in part) before anything else: its first byte says
        // nothing then.
        if bytes.len() <= HEAD_BYTES + SIGNATURE_BYTES {
            return Err(LinkError::Malformed(INCOMPLETE.into()));
        }
        let version = bytes[0];
        if version != SHORT_LINK_VERSION {
            return Err(LinkError::UnsupportedVersion(version));
        }
        let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_BYTES);
        let signature: [u8; SIGNATURE_BYTES] = signature
            .try_into()
            .map_err(|_| LinkError::Malformed("signature length".into()))?;
        let user_id = UserId::from_bytes(array(&signed[1..1 + USER_ID_BYTES])?);
        let identity_key = IdentityPublicKey::from_bytes(array(
            &signed[1 + USER_ID_BYTES..1 + USER_ID_BYTES + KEY_BYTES],
        )?);
        // The signature first: a mistyped or tampered link fails here, whatever byte changed.
        identity_key
            .verify_contact_link(signed, &signature)
            .map_err(|_| {
                LinkError::BadSignature("the identity key in the link did not sign it".into())
            })?;
        let relay_key: [u8; KEY_BYTES] = array(&signed[HEAD_BYTES - KEY_BYTES..HEAD_BYTES])?;
        let transport = &signed[HEAD_BYTES..];
        let relay = join_relay(transport, relay_key)?;
        Ok(ShortLink {
            user_id,
            identity_key,
            relay,
        })
    }

    /// The relay's peer id.
    pub fn relay_peer(&self) -> Option<PeerId> {
        match self.relay.iter().last() {
            Some(Protocol::P2p(p)) => Some(p),
            _ => None,
        }
    }

    /// Checks a device list fetched from the link's relay: it must be signed by the identity
    /// key in the link (identity key → list signature → the certificates in it) and be this
    /// user's.
    pub fn accept_list(&self, bytes: &[u8]) -> Result<SignedDeviceList, LinkError> {
        let list = SignedDeviceList::from_bytes(bytes).map_err(|e| {
            LinkError::Malformed(format!("the relay's device list does not decode: {e}"))
        })?;
        if list.check_identity(&self.identity_key).is_err() {
            return Err(LinkError::ListFromAnotherKey);
        }
        if list.list().user_id != self.user_id {
            return Err(LinkError::ListOfAnotherUser);
        }
        Ok(list)
    }
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], LinkError> {
    bytes
        .try_into()
        .map_err(|_| LinkError::Malformed("field length".into()))
}

/// Splits `/…transport…/p2p/<ed25519 peer id>` into the transport bytes and the relay key.
fn split_relay(relay: &Multiaddr) -> Result<(Vec<u8>, [u8; KEY_BYTES]), LinkError> {
    let mut transport = relay.clone();
    let Some(Protocol::P2p(peer)) = transport.pop() else {
        return Err(LinkError::Malformed(format!(
            "relay address {relay} lacks /p2p/<peer id>"
        )));
    };
    if transport.iter().next().is_none() || transport.iter().any(|p| matches!(p, Protocol::P2p(_)))
    {
        return Err(LinkError::Malformed(format!(
            "relay address {relay} is not a plain transport address"
        )));
    }
    let key = identity::PublicKey::try_decode_protobuf(peer.as_ref().digest())
        .ok()
        .and_then(|k| k.try_into_ed25519().ok())
        .ok_or_else(|| {
            LinkError::Malformed(format!("relay {peer} does not have an Ed25519 peer id"))
        })?;
    let transport = transport.to_vec();
    if transport.len() > MAX_SHORT_LINK_RELAY_BYTES {
        return Err(LinkError::Malformed(format!(
            "relay address {relay} is over {MAX_SHORT_LINK_RELAY_BYTES} bytes"
        )));
    }
    Ok((transport, key.to_bytes()))
}

/// Rebuilds the relay address from its transport bytes and key.
fn join_relay(transport: &[u8], key: [u8; KEY_BYTES]) -> Result<Multiaddr, LinkError> {
    if transport.len() > MAX_SHORT_LINK_RELAY_BYTES {
        return Err(LinkError::Malformed("relay address too long".into()));
    }
    let addr = Multiaddr::try_from(transport.to_vec())
        .map_err(|e| LinkError::Malformed(format!("relay address: {e}")))?;
    if addr.iter().next().is_none() || addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        return Err(LinkError::Malformed(
            "relay address is not a plain transport address".into(),
        ));
    }
    let key = identity::ed25519::PublicKey::try_from_bytes(&key)
        .map_err(|_| LinkError::Malformed("relay key is not an Ed25519 key".into()))?;
    let peer = PeerId::from_public_key(&identity::PublicKey::from(key));
    Ok(addr.with(Protocol::P2p(peer)))
}

/// Whether `payload` (the text after the prefix) is no longer than a short link: then it
/// is read as one (a long link, base58 of about 1 KiB, never is this short), so that a
/// damaged short link is told apart as such.
pub(super) fn fits_short(payload: &str) -> bool {
    payload.len() + SHORT_LINK_PREFIX.len() <= MAX_SHORT_LINK_CHARS
}

/// What a short link cut short is told.
const INCOMPLETE: &str = "the link is incomplete: copy the whole link again";

/// The text after the scheme (`tern:`, in either case), if `text` starts with it.
pub(super) fn strip_prefix(text: &str) -> Option<&str> {
    let head = text.get(..LINK_PREFIX.len())?;
    head.eq_ignore_ascii_case(LINK_PREFIX)
        .then(|| &text[LINK_PREFIX.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{Link, tests::long_link};

    fn relay(transport: &str) -> Multiaddr {
        let peer = identity::Keypair::generate_ed25519().public().to_peer_id();
        format!("{transport}/p2p/{peer}").parse().unwrap()
    }

    const RELAYS: [&str; 3] = [
        "/ip4/127.0.0.1/tcp/40123",
        "/ip6/2001:db8:85a3::8a2e:370:7334/tcp/40123",
        "/dns4/relay.example.org/tcp/4001",
    ];

    /// A phone reads a QR code up to version 10 (57×57 modules) off a screen at a glance.
    const MAX_QR_VERSION: i16 = 10;
    /// What a short link with an IPv4, IPv6 or DNS relay of ordinary length stays under.
    const TYPICAL_MAX_CHARS: usize = 280;

    fn qr_version(text: &str) -> i16 {
        match qrcode::QrCode::new(text.as_bytes()).unwrap().version() {
            qrcode::Version::Normal(v) | qrcode::Version::Micro(v) => v,
        }
    }

    /// The figures quoted in docs/decisions.md (`cargo test -p tern-node short_link_sizes --
    /// --nocapture` prints them).
    #[test]
    fn short_link_sizes() {
        let id = IdentityKey::generate().unwrap();
        for t in RELAYS {
            let r = relay(t);
            let link = ShortLink::create(&id, id.user_id(), &r).unwrap();
            let version = qr_version(&link);
            println!("{t}: {} characters, QR version {version}", link.len());
            assert!(
                link.len() <= TYPICAL_MAX_CHARS,
                "{t}: {} characters",
                link.len()
            );
            assert!(version <= MAX_QR_VERSION, "{t}: QR version {version}");
            // The same bytes in base58 (byte mode) for the comparison in the decision record.
            let bytes = BASE32_NOPAD
                .decode(&link.as_bytes()[SHORT_LINK_PREFIX.len()..])
                .unwrap();
            let b58 = format!("tern:{}", bs58::encode(&bytes).into_string());
            println!(
                "{t}: as base58 {} characters, QR version {}",
                b58.len(),
                qr_version(&b58)
            );
        }
        let long = long_link();
        println!(
            "long link: {} characters, QR version {}",
            long.len(),
            qr_version(&long)
        );
    }

    #[test]
    fn round_trip_for_each_kind_of_relay() {
        let id = IdentityKey::generate().unwrap();
        for t in RELAYS {
            let r = relay(t);
            let link = ShortLink::create(&id, id.user_id(), &r).unwrap();
            assert!(link.starts_with(SHORT_LINK_PREFIX));
            let expected = ShortLink {
                user_id: id.user_id(),
                identity_key: id.public(),
                relay: r.clone(),
            };
            assert_eq!(Link::parse(&link), Ok(Link::Short(expected.clone())));
            // Scanners and people may lower-case it.
            assert_eq!(
                Link::parse(&link.to_lowercase()),
                Ok(Link::Short(expected.clone()))
            );
            assert_eq!(
                expected.relay_peer(),
                r.iter().last().and_then(|p| match p {
                    Protocol::P2p(p) => Some(p),
                    _ => None,
                })
            );
        }
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let id = IdentityKey::generate().unwrap();
        let link = ShortLink::create(&id, id.user_id(), &relay(RELAYS[0])).unwrap();
        let raw = BASE32_NOPAD
            .decode(&link.as_bytes()[SHORT_LINK_PREFIX.len()..])
            .unwrap();
        for i in 0..raw.len() {
            for bit in [0x01, 0x80] {
                let mut bad = raw.clone();
                bad[i] ^= bit;
                let text = format!("{SHORT_LINK_PREFIX}{}", BASE32_NOPAD.encode(&bad));
                assert!(Link::parse(&text).is_err(), "byte {i} ^ {bit:#x} accepted");
            }
        }
        // A mistyped character (one of the alphabet for another) is refused too.
        let mut chars: Vec<char> = link.chars().collect();
        for i in SHORT_LINK_PREFIX.len()..chars.len() {
            let was = chars[i];
            chars[i] = if was == 'A' { 'B' } else { 'A' };
            let text: String = chars.iter().collect();
            assert!(
                Link::parse(&text).is_err(),
                "character {i} changed, accepted"
            );
            chars[i] = was;
        }
        // Dropped or added bytes.
        let cut = format!(
            "{SHORT_LINK_PREFIX}{}",
            BASE32_NOPAD.encode(&raw[..raw.len() - 1])
        );
        assert!(Link::parse(&cut).is_err());
        let mut longer = raw.clone();
        longer.push(0);
        let longer = format!("{SHORT_LINK_PREFIX}{}", BASE32_NOPAD.encode(&longer));
        assert!(Link::parse(&longer).is_err());
    }

    #[test]
    fn wrong_version_and_garbage_are_typed_errors() {
        let id = IdentityKey::generate().unwrap();
        let link = ShortLink::create(&id, id.user_id(), &relay(RELAYS[0])).unwrap();
        let mut raw = BASE32_NOPAD
            .decode(&link.as_bytes()[SHORT_LINK_PREFIX.len()..])
            .unwrap();
        raw[0] = 3;
        assert_eq!(
            Link::parse(&format!("TERN:{}", BASE32_NOPAD.encode(&raw))),
            Err(LinkError::UnsupportedVersion(3))
        );
        assert_eq!(
            Link::parse("TERN:AI"),
            Err(LinkError::Malformed(INCOMPLETE.into()))
        );
        // Cut short to its first characters: incomplete, not "version 0".
        assert_eq!(
            Link::parse("TERN:AAAA"),
            Err(LinkError::Malformed(INCOMPLETE.into()))
        );
        assert_eq!(
            Link::parse(&link[..link.len() / 2]),
            Err(LinkError::Malformed(INCOMPLETE.into()))
        );
        // A character no short link has (a typo, `1` for `I`): said as such.
        let typo = format!("{}1{}", &link[..20], &link[21..]);
        match Link::parse(&typo) {
            Err(LinkError::Malformed(m)) => assert!(m.starts_with("`1` cannot be"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Line breaks and spaces inside, as wrapped text has them, are dropped.
        let wrapped = format!("{}\n  {} \r\n{}", &link[..30], &link[30..60], &link[60..]);
        assert!(matches!(Link::parse(&wrapped), Ok(Link::Short(_))));
        assert_eq!(Link::parse("TERN:"), Err(LinkError::NotALink));
        let signed_by_other = {
            let other = IdentityKey::generate().unwrap();
            let mut raw = BASE32_NOPAD
                .decode(&link.as_bytes()[SHORT_LINK_PREFIX.len()..])
                .unwrap();
            let end = raw.len() - SIGNATURE_BYTES;
            let sig = other.sign_contact_link(&raw[..end]);
            raw[end..].copy_from_slice(&sig);
            format!("TERN:{}", BASE32_NOPAD.encode(&raw))
        };
        assert!(matches!(
            Link::parse(&signed_by_other),
            Err(LinkError::BadSignature(_))
        ));
        assert!(matches!(
            ShortLink::create(&id, id.user_id(), &"/ip4/1.2.3.4/tcp/1".parse().unwrap()),
            Err(LinkError::Malformed(_))
        ));
    }

    #[test]
    fn the_fetched_list_must_be_signed_by_the_link_key_for_that_user() {
        use tern_crypto::{DeviceKeys, DeviceList};
        let list_of = |id: &IdentityKey| {
            let dev = DeviceKeys::generate().unwrap();
            let cert = dev.certify(id, "laptop", 1).unwrap();
            DeviceList::first(id, cert, 1).sign(id).unwrap()
        };
        let alice = IdentityKey::generate().unwrap();
        let mallory = IdentityKey::generate().unwrap();
        let r = relay(RELAYS[0]);
        let Ok(Link::Short(link)) =
            Link::parse(&ShortLink::create(&alice, alice.user_id(), &r).unwrap())
        else {
            panic!("short link did not parse");
        };
        let good = list_of(&alice);
        assert_eq!(
            link.accept_list(good.as_bytes()).unwrap().as_bytes(),
            good.as_bytes()
        );
        assert_eq!(
            link.accept_list(list_of(&mallory).as_bytes()),
            Err(LinkError::ListFromAnotherKey)
        );
        // Alice's key, another user id: the relay answered for someone else.
        let Ok(Link::Short(other_user)) =
            Link::parse(&ShortLink::create(&alice, mallory.user_id(), &r).unwrap())
        else {
            panic!("short link did not parse");
        };
        assert_eq!(
            other_user.accept_list(good.as_bytes()),
            Err(LinkError::ListOfAnotherUser)
        );
        assert!(matches!(
            link.accept_list(b"junk"),
            Err(LinkError::Malformed(_))
        ));
    }
}
