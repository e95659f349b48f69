//! Device keys and device certificates.
//!
//! A device has two key sets: a libp2p Ed25519 key whose public half is its [`DeviceId`] (and so
//! its PeerId on the network), and a vodozemac Olm account (a Curve25519 key for sessions and an
//! Ed25519 key that signs prekeys). A [`DeviceCertificate`], signed by the user's identity key,
//! binds all three public keys, a name and a creation time to the user.

use std::fmt;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vodozemac::olm::{Account, AccountPickle};
use zeroize::Zeroizing;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::consts::MAX_DEVICE_NAME_LEN;
use crate::identity::{IdentityKey, IdentityPublicKey, UserId};
use crate::random::{self, RandomError};
use crate::sig::{BadSignature, Purpose};
use crate::time::UnixSecs;

/// A device's id: the public half of its libp2p Ed25519 key.
///
/// The libp2p PeerId of the device is derived from it ([`DeviceId::to_peer_id_bytes`]), so the
/// Noise handshake that authenticates a connection also authenticates the device id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 32]);

crate::text_id::text_id!(
    DeviceId,
    32,
    "a device id (a base58 PeerId)",
    DeviceId::from_peer_id_string
);

/// The protobuf prefix libp2p puts before an Ed25519 public key (`KeyType::Ed25519`, field 2,
/// 32 bytes), preceded by the identity-multihash code and length.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

impl DeviceId {
    /// Builds a device id from the libp2p Ed25519 public key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        DeviceId(bytes)
    }

    /// The libp2p Ed25519 public key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The bytes of the libp2p PeerId for this device (an identity multihash of the
    /// protobuf-encoded public key).
    pub fn to_peer_id_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&PEER_ID_PREFIX);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// Recovers a device id from PeerId bytes; `None` if they are not an Ed25519 PeerId.
    pub fn from_peer_id_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return None;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        Some(DeviceId(key))
    }

    /// The PeerId in its usual base58 text form.
    pub fn to_peer_id_string(&self) -> String {
        bs58::encode(self.to_peer_id_bytes()).into_string()
    }

    /// Parses the base58 PeerId text form.
    pub fn from_peer_id_string(s: &str) -> Option<Self> {
        let bytes = bs58::decode(s).into_vec().ok()?;
        Self::from_peer_id_bytes(&bytes)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_peer_id_string())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceId(")?;
        crate::hex::write(f, &self.0[..5])?;
        f.write_str(")")
    }
}

/// What a user's identity key vouches for about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// The user the device belongs to.
    pub user_id: UserId,
    /// The identity key that signed this certificate.
    pub identity_key: IdentityPublicKey,
    /// The device's network identity (its PeerId key).
    pub device_id: DeviceId,
    /// The device's Olm Curve25519 identity key, used to set up pairwise sessions.
    #[serde(with = "serde_bytes")]
    pub curve25519: [u8; 32],
    /// The device's Olm Ed25519 key, which signs its prekeys.
    #[serde(with = "serde_bytes")]
    pub ed25519: [u8; 32],
    /// A human name for the device ("laptop"), at most [`MAX_DEVICE_NAME_LEN`] bytes.
    pub name: String,
    /// When the device was created, seconds since the Unix epoch.
    pub created_at: UnixSecs,
}

/// Why a device certificate was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateError {
    /// The bytes are not a certificate record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The signature does not verify under the identity key the certificate names.
    #[error(transparent)]
    BadSignature(#[from] BadSignature),
    /// The certificate is validly signed, but by another identity key than the one expected.
    #[error("device certificate is signed by identity key {found:?}, expected {expected:?}")]
    WrongIdentity {
        /// The key that was expected (from a contact or a device list).
        expected: IdentityPublicKey,
        /// The key that signed.
        found: IdentityPublicKey,
    },
    /// The device name is too long.
    #[error("device name is {0} bytes, over the {MAX_DEVICE_NAME_LEN}-byte limit")]
    NameTooLong(usize),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// The wire form shared by every signed record: the CBOR body and a signature over it.
#[derive(Serialize, Deserialize)]
pub(crate) struct SignedWire {
    #[serde(with = "serde_bytes")]
    pub(crate) body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub(crate) signature: [u8; 64],
}

/// Decodes a CBOR body nested in a signed record, refusing trailing bytes.
pub(crate) fn decode_body<T: serde::de::DeserializeOwned>(
    kind: Kind,
    body: &[u8],
) -> Result<T, DecodeError> {
    let mut reader = body;
    let value = ciborium::from_reader(&mut reader).map_err(|e| codec::malformed(kind, e))?;
    if !reader.is_empty() {
        return Err(codec::malformed(kind, "trailing bytes in signed body"));
    }
    Ok(value)
}

pub(crate) fn encode_body<T: Serialize>(kind: Kind, body: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    ciborium::into_writer(body, &mut out).map_err(|e| EncodeError::Serializer {
        kind,
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// Encodes `body`, signs it with `identity` for `purpose` and wraps both as a record of
/// `kind`: the signed records' shared envelope (device lists, relay records).
pub(crate) fn sign_record<T: Serialize>(
    identity: &IdentityKey,
    kind: Kind,
    purpose: Purpose,
    body: &T,
) -> Result<Vec<u8>, EncodeError> {
    let body = encode_body(kind, body)?;
    let signature = identity.sign(purpose, &body);
    codec::encode(kind, &SignedWire { body, signature })
}

/// A device certificate together with the identity signature over it.
///
/// A value of this type always carries a signature that verifies under the identity key named
/// inside the certificate: [`SignedDeviceCertificate::from_bytes`] checks it. Whether that
/// identity key is the one the caller trusts is a separate question:
/// [`SignedDeviceCertificate::check_identity`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDeviceCertificate {
    certificate: DeviceCertificate,
    body: Vec<u8>,
    signature: [u8; 64],
}

impl SignedDeviceCertificate {
    /// Signs `certificate` with `identity`.
    pub fn sign(
        identity: &IdentityKey,
        certificate: DeviceCertificate,
    ) -> Result<Self, CertificateError> {
        if certificate.name.len() > MAX_DEVICE_NAME_LEN {
            return Err(CertificateError::NameTooLong(certificate.name.len()));
        }
        let body = encode_body(Kind::DeviceCertificate, &certificate)?;
        let signature = identity.sign(Purpose::DeviceCertificate, &body);
        Ok(SignedDeviceCertificate {
            certificate,
            body,
            signature,
        })
    }

    /// The certificate.
    pub const fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }

    /// Refuses the certificate unless it was signed by `expected`.
    pub fn check_identity(&self, expected: &IdentityPublicKey) -> Result<(), CertificateError> {
        if &self.certificate.identity_key != expected {
            return Err(CertificateError::WrongIdentity {
                expected: *expected,
                found: self.certificate.identity_key,
            });
        }
        Ok(())
    }

    /// Encodes the signed certificate.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(Kind::DeviceCertificate, &self.wire())
    }

    pub(crate) fn wire(&self) -> SignedWire {
        SignedWire {
            body: self.body.clone(),
            signature: self.signature,
        }
    }

    pub(crate) fn from_wire(wire: SignedWire) -> Result<Self, CertificateError> {
        if wire.body.len() > Kind::DeviceCertificate.max_len() {
            return Err(codec::malformed(Kind::DeviceCertificate, "oversized body").into());
        }
        let certificate: DeviceCertificate = decode_body(Kind::DeviceCertificate, &wire.body)?;
        if certificate.name.len() > MAX_DEVICE_NAME_LEN {
            return Err(CertificateError::NameTooLong(certificate.name.len()));
        }
        certificate
            .identity_key
            .verify(Purpose::DeviceCertificate, &wire.body, &wire.signature)?;
        Ok(SignedDeviceCertificate {
            certificate,
            body: wire.body,
            signature: wire.signature,
        })
    }

    /// Decodes a certificate and verifies its signature under the identity key it names.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertificateError> {
        let wire: SignedWire = codec::decode(Kind::DeviceCertificate, bytes)?;
        Self::from_wire(wire)
    }
}

/// A device's secret keys: the libp2p network key and the Olm account.
pub struct DeviceKeys {
    network: Box<SigningKey>,
    account: Account,
}

#[derive(Serialize, Deserialize)]
struct DeviceSecretRecord {
    network: crate::sealed::Secret32,
    account: AccountPickle,
}

impl DeviceKeys {
    /// Creates fresh device keys.
    pub fn generate() -> Result<Self, RandomError> {
        let secret = Zeroizing::new(random::array::<32>()?);
        Ok(DeviceKeys {
            network: Box::new(SigningKey::from_bytes(&secret)),
            account: Account::new(),
        })
    }

    /// The device's id (the public half of its network key).
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.network.verifying_key().to_bytes())
    }

    /// The secret half of the network key, for building the libp2p keypair
    /// (`Keypair::ed25519_from_bytes`). Wiped on drop.
    pub fn network_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.network.to_bytes())
    }

    /// The Olm Curve25519 identity key.
    pub fn curve25519(&self) -> [u8; 32] {
        self.account.curve25519_key().to_bytes()
    }

    /// The Olm Ed25519 key that signs prekeys.
    pub fn ed25519(&self) -> [u8; 32] {
        *self.account.ed25519_key().as_bytes()
    }

    /// Builds and signs this device's certificate under `identity`.
    pub fn certify(
        &self,
        identity: &IdentityKey,
        name: &str,
        now: UnixSecs,
    ) -> Result<SignedDeviceCertificate, CertificateError> {
        SignedDeviceCertificate::sign(
            identity,
            DeviceCertificate {
                user_id: identity.user_id(),
                identity_key: identity.public(),
                device_id: self.device_id(),
                curve25519: self.curve25519(),
                ed25519: self.ed25519(),
                name: name.to_owned(),
                created_at: now,
            },
        )
    }

    pub(crate) fn account(&self) -> &Account {
        &self.account
    }

    pub(crate) fn account_mut(&mut self) -> &mut Account {
        &mut self.account
    }

    /// Serializes the secrets (for the sealed store). The buffer is wiped on drop.
    pub fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        let record = DeviceSecretRecord {
            network: crate::sealed::Secret32::new(self.network.to_bytes()),
            account: self.account.pickle(),
        };
        codec::encode_secret(Kind::DeviceSecret, &record)
    }

    /// Restores device keys from [`DeviceKeys::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let record: DeviceSecretRecord = codec::decode(Kind::DeviceSecret, bytes)?;
        let network = Box::new(SigningKey::from_bytes(record.network.expose()));
        let account = Account::from_pickle(record.account);
        Ok(DeviceKeys { network, account })
    }
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKeys({:?}, ..)", self.device_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_round_trip_and_tamper() {
        let id = IdentityKey::generate().unwrap();
        let dev = DeviceKeys::generate().unwrap();
        let cert = dev.certify(&id, "laptop", 1_700_000_000).unwrap();
        let bytes = cert.to_bytes().unwrap();
        let back = SignedDeviceCertificate::from_bytes(&bytes).unwrap();
        assert_eq!(back, cert);
        back.check_identity(&id.public()).unwrap();

        let other = IdentityKey::generate().unwrap();
        assert!(matches!(
            back.check_identity(&other.public()),
            Err(CertificateError::WrongIdentity { .. })
        ));

        // Flip every byte of the record in turn: none may decode as a valid certificate.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if let Ok(c) = SignedDeviceCertificate::from_bytes(&bad) {
                panic!("byte {i} flipped still verified: {c:?}");
            }
        }
    }

    #[test]
    fn name_limit() {
        let id = IdentityKey::generate().unwrap();
        let dev = DeviceKeys::generate().unwrap();
        let long = "x".repeat(MAX_DEVICE_NAME_LEN + 1);
        assert!(matches!(
            dev.certify(&id, &long, 0),
            Err(CertificateError::NameTooLong(_))
        ));
    }

    #[test]
    fn device_secret_round_trip() {
        let dev = DeviceKeys::generate().unwrap();
        let bytes = dev.to_secret_bytes().unwrap();
        let back = DeviceKeys::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.device_id(), dev.device_id());
        assert_eq!(back.curve25519(), dev.curve25519());
        assert_eq!(back.ed25519(), dev.ed25519());
        assert!(format!("{dev:?}").ends_with(", ..)"));
    }

    #[test]
    fn peer_id_matches_libp2p() {
        let dev = DeviceKeys::generate().unwrap();
        let mut secret = *dev.network_secret();
        let kp = libp2p_identity::Keypair::ed25519_from_bytes(&mut secret).unwrap();
        let peer = kp.public().to_peer_id();
        assert_eq!(peer.to_bytes(), dev.device_id().to_peer_id_bytes().to_vec());
        assert_eq!(peer.to_string(), dev.device_id().to_peer_id_string());
        assert_eq!(
            DeviceId::from_peer_id_string(&peer.to_string()),
            Some(dev.device_id())
        );
    }
}
