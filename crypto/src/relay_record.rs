//! A user's relay record: where the user's devices can be reached (relay addresses) and the
//! signed device list, signed by the identity key and published in Tern's Kademlia DHT, so
//! a contact whose relays all changed while the other was offline is still found.
//!
//! ```text
//! key    = SHA-256("tern/dht-relay-record/v1\0" | user id (16) | identity key (32))
//! value  = version 1 | kind 15 | CBOR {body, signature}
//! body   = CBOR {user_id, identity_key, version, issued_at, relays: [text], device_list}
//! signed = Ed25519 over "tern/relay-record/v1\0" | body, by the identity key
//! ```
//!
//! The key covers the identity key as well as the user id, so anyone holding a record can
//! check it belongs under its key (a relay does, before storing it): a record for the same
//! user id made with another identity key lands under another key and cannot displace the
//! real one. The device list inside is verified like any other and must be signed by the
//! same identity key, for the same user. A record replaces another only with a strictly
//! higher version ([`SignedRelayRecord::check_replaces`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::consts::{MAX_RELAY_ADDRESS_LEN, MAX_RELAY_RECORD_RELAYS};
use crate::device::{SignedWire, decode_body, sign_record};
use crate::device_list::{DeviceListError, SignedDeviceList};
use crate::identity::{IdentityKey, IdentityPublicKey, UserId};
use crate::sig::{BadSignature, Purpose};
use crate::time::UnixSecs;

/// The domain string the DHT key is hashed under.
const KEY_DOMAIN: &[u8] = b"tern/dht-relay-record/v1\0";

/// The DHT key of the relay record of `user` with identity key `identity`.
pub fn dht_key(user: &UserId, identity: &IdentityPublicKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(KEY_DOMAIN);
    h.update(user.as_bytes());
    h.update(identity.as_bytes());
    h.finalize().into()
}

/// A relay record (verified when it is a [`SignedRelayRecord`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRecord {
    /// The user.
    pub user_id: UserId,
    /// The identity key that signs the record and the device list in it.
    pub identity_key: IdentityPublicKey,
    /// Grows with every record the user publishes; a record is only replaced by a higher one.
    pub version: u64,
    /// When this version was made.
    pub issued_at: UnixSecs,
    /// The user's relays: multiaddrs as text, each ending in `/p2p/<peer id>` (checked by
    /// the node that uses them; this crate does not parse network addresses).
    pub relays: Vec<String>,
    /// The user's device list, signed by the same identity key.
    pub device_list: SignedDeviceList,
}

/// Why a relay record was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayRecordError {
    /// The bytes are not a relay record (or over [`Kind::RelayRecord`]'s size cap).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed (for example the record would be over the size cap).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The record's signature does not verify under the identity key it names.
    #[error(transparent)]
    BadSignature(#[from] BadSignature),
    /// The device list in the record is invalid.
    #[error("device list in relay record: {0}")]
    DeviceList(#[from] DeviceListError),
    /// The device list is for another user or identity key than the record.
    #[error("the device list in the relay record is another user's")]
    ForeignDeviceList,
    /// Too many relay addresses, or one too long.
    #[error(
        "relay record lists {count} relays or one over {MAX_RELAY_ADDRESS_LEN} bytes \
         (at most {MAX_RELAY_RECORD_RELAYS})"
    )]
    Relays {
        /// How many were listed.
        count: usize,
    },
    /// The record is stored under another DHT key than its user and identity key give.
    #[error("relay record stored under a key that is not its own")]
    WrongKey,
    /// The record is for another user or identity key than the one expected.
    #[error("relay record is for another user or identity key")]
    WrongIdentity,
    /// The record is not newer than the one already held.
    #[error("stale relay record: version {offered} is not newer than {current}")]
    Stale {
        /// Version already held.
        current: u64,
        /// Version offered.
        offered: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct RecordBody {
    user_id: UserId,
    identity_key: IdentityPublicKey,
    version: u64,
    issued_at: UnixSecs,
    relays: Vec<String>,
    #[serde(with = "serde_bytes")]
    device_list: Vec<u8>,
}

impl RelayRecord {
    /// Checks what the signature does not: bounds, and that the device list is this user's.
    fn validate(&self) -> Result<(), RelayRecordError> {
        if self.relays.len() > MAX_RELAY_RECORD_RELAYS
            || self.relays.iter().any(|r| r.len() > MAX_RELAY_ADDRESS_LEN)
        {
            return Err(RelayRecordError::Relays {
                count: self.relays.len(),
            });
        }
        let list = self.device_list.list();
        if list.user_id != self.user_id || list.identity_key != self.identity_key {
            return Err(RelayRecordError::ForeignDeviceList);
        }
        Ok(())
    }

    /// The record's DHT key.
    pub fn dht_key(&self) -> [u8; 32] {
        dht_key(&self.user_id, &self.identity_key)
    }

    /// Signs the record with `identity`, which must be the record's identity key.
    pub fn sign(&self, identity: &IdentityKey) -> Result<SignedRelayRecord, RelayRecordError> {
        if identity.public() != self.identity_key || identity.user_id() != self.user_id {
            return Err(RelayRecordError::WrongIdentity);
        }
        self.validate()?;
        let body = RecordBody {
            user_id: self.user_id,
            identity_key: self.identity_key,
            version: self.version,
            issued_at: self.issued_at,
            relays: self.relays.clone(),
            device_list: self.device_list.as_bytes().to_vec(),
        };
        let bytes = sign_record(identity, Kind::RelayRecord, Purpose::RelayRecord, &body)?;
        Ok(SignedRelayRecord {
            record: self.clone(),
            bytes,
        })
    }
}

/// A relay record with its signature, as put into and got from the DHT.
///
/// A value of this type has always been verified: the signature verifies under the identity
/// key the record names, the device list verifies and is the same user's, and the bounds
/// hold. Whether it is stored under its own key is [`SignedRelayRecord::check_key`]; whether
/// it is the user the caller means, [`SignedRelayRecord::check_identity`]; whether it may
/// replace one already held, [`SignedRelayRecord::check_replaces`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRelayRecord {
    record: RelayRecord,
    bytes: Vec<u8>,
}

impl SignedRelayRecord {
    /// Decodes and verifies a record. The size cap is checked before anything is parsed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RelayRecordError> {
        let wire: SignedWire = codec::decode(Kind::RelayRecord, bytes)?;
        let body: RecordBody = decode_body(Kind::RelayRecord, &wire.body)?;
        body.identity_key
            .verify(Purpose::RelayRecord, &wire.body, &wire.signature)?;
        let record = RelayRecord {
            user_id: body.user_id,
            identity_key: body.identity_key,
            version: body.version,
            issued_at: body.issued_at,
            relays: body.relays,
            device_list: SignedDeviceList::from_bytes(&body.device_list)?,
        };
        record.validate()?;
        Ok(SignedRelayRecord {
            record,
            bytes: bytes.to_vec(),
        })
    }

    /// The verified record.
    pub const fn record(&self) -> &RelayRecord {
        &self.record
    }

    /// The encoded, signed record.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Refuses the record unless `key` is its DHT key.
    pub fn check_key(&self, key: &[u8]) -> Result<(), RelayRecordError> {
        if key != self.record.dht_key() {
            return Err(RelayRecordError::WrongKey);
        }
        Ok(())
    }

    /// Refuses the record unless it is `user`'s with identity key `identity`.
    pub fn check_identity(
        &self,
        user: &UserId,
        identity: &IdentityPublicKey,
    ) -> Result<(), RelayRecordError> {
        if &self.record.user_id != user || &self.record.identity_key != identity {
            return Err(RelayRecordError::WrongIdentity);
        }
        Ok(())
    }

    /// Refuses the record unless it may replace `current`: the same user and identity key,
    /// and a strictly higher version (a lower or equal one is stale).
    pub fn check_replaces(&self, current: &SignedRelayRecord) -> Result<(), RelayRecordError> {
        let (old, new) = (&current.record, &self.record);
        if old.user_id != new.user_id || old.identity_key != new.identity_key {
            return Err(RelayRecordError::WrongIdentity);
        }
        if new.version <= old.version {
            return Err(RelayRecordError::Stale {
                current: old.version,
                offered: new.version,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::MAX_RELAY_RECORD_BYTES;
    use crate::device::DeviceKeys;
    use crate::device::encode_body;
    use crate::device_list::DeviceList;

    const RELAY: &str =
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWRelayRelayRelayRelayRelayRelayRelayRelay1";

    fn record(id: &IdentityKey, version: u64) -> RelayRecord {
        let dev = DeviceKeys::generate().unwrap();
        let cert = dev.certify(id, "laptop", 10).unwrap();
        RelayRecord {
            user_id: id.user_id(),
            identity_key: id.public(),
            version,
            issued_at: 10,
            relays: vec![RELAY.into()],
            device_list: DeviceList::first(id, cert, 10).sign(id).unwrap(),
        }
    }

    #[test]
    fn sign_decode_round_trip_under_its_key() {
        let id = IdentityKey::generate().unwrap();
        let signed = record(&id, 1).sign(&id).unwrap();
        let back = SignedRelayRecord::from_bytes(signed.as_bytes()).unwrap();
        assert_eq!(back.record(), signed.record());
        back.check_key(&dht_key(&id.user_id(), &id.public()))
            .unwrap();
        back.check_identity(&id.user_id(), &id.public()).unwrap();
    }

    #[test]
    fn stale_and_equal_versions_refused() {
        let id = IdentityKey::generate().unwrap();
        let v1 = record(&id, 1).sign(&id).unwrap();
        let v2 = record(&id, 2).sign(&id).unwrap();
        v2.check_replaces(&v1).unwrap();
        assert_eq!(
            v1.check_replaces(&v2),
            Err(RelayRecordError::Stale {
                current: 2,
                offered: 1
            })
        );
        assert!(matches!(
            v2.check_replaces(&v2),
            Err(RelayRecordError::Stale { .. })
        ));
    }

    #[test]
    fn wrong_key_refused() {
        let id = IdentityKey::generate().unwrap();
        let other = IdentityKey::generate().unwrap();
        let mine = record(&id, 1).sign(&id).unwrap();
        // Under another user's key, or claimed for another identity key.
        assert_eq!(
            mine.check_key(&dht_key(&other.user_id(), &other.public())),
            Err(RelayRecordError::WrongKey)
        );
        assert_eq!(
            mine.check_key(&dht_key(&id.user_id(), &other.public())),
            Err(RelayRecordError::WrongKey)
        );
        assert_eq!(
            mine.check_identity(&id.user_id(), &other.public()),
            Err(RelayRecordError::WrongIdentity)
        );
        // A squatter's record for the same user id, at a higher version, replaces nothing.
        let mut squat = record(&other, 99);
        squat.user_id = id.user_id();
        assert_eq!(
            squat.sign(&other).unwrap_err(),
            RelayRecordError::WrongIdentity
        );
        // Signed by one key but naming another: the signature does not verify.
        let wire: SignedWire = codec::decode(Kind::RelayRecord, mine.as_bytes()).unwrap();
        let mut body: RecordBody = decode_body(Kind::RelayRecord, &wire.body).unwrap();
        body.identity_key = other.public();
        let body = encode_body(Kind::RelayRecord, &body).unwrap();
        let forged = codec::encode(
            Kind::RelayRecord,
            &SignedWire {
                body,
                signature: wire.signature,
            },
        )
        .unwrap();
        assert!(matches!(
            SignedRelayRecord::from_bytes(&forged),
            Err(RelayRecordError::BadSignature(_))
        ));
    }

    #[test]
    fn foreign_device_list_refused() {
        let id = IdentityKey::generate().unwrap();
        let other = IdentityKey::generate().unwrap();
        let mut r = record(&id, 1);
        r.device_list = record(&other, 1).device_list;
        assert_eq!(
            r.sign(&id).unwrap_err(),
            RelayRecordError::ForeignDeviceList
        );
    }

    #[test]
    fn size_and_relay_bounds() {
        let id = IdentityKey::generate().unwrap();
        let mut r = record(&id, 1);
        r.relays = vec![RELAY.into(); MAX_RELAY_RECORD_RELAYS + 1];
        assert!(matches!(r.sign(&id), Err(RelayRecordError::Relays { .. })));
        r.relays = vec!["x".repeat(MAX_RELAY_ADDRESS_LEN + 1)];
        assert!(matches!(r.sign(&id), Err(RelayRecordError::Relays { .. })));
        // Over the size cap: refused before parsing.
        let big = vec![0u8; MAX_RELAY_RECORD_BYTES + 1];
        assert!(matches!(
            SignedRelayRecord::from_bytes(&big),
            Err(RelayRecordError::Decode(DecodeError::TooLong { .. }))
        ));
        // A record at the bounds still fits under the cap.
        r.relays = vec!["x".repeat(MAX_RELAY_ADDRESS_LEN); MAX_RELAY_RECORD_RELAYS];
        let signed = r.sign(&id).unwrap();
        assert!(signed.as_bytes().len() <= MAX_RELAY_RECORD_BYTES);
    }

    #[test]
    fn tampered_record_refused() {
        let id = IdentityKey::generate().unwrap();
        let signed = record(&id, 1).sign(&id).unwrap();
        let mut bytes = signed.as_bytes().to_vec();
        let last = bytes.len() - 70;
        bytes[last] ^= 1;
        assert!(SignedRelayRecord::from_bytes(&bytes).is_err());
    }
}
