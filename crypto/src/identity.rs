//! A user's long-term identity: a random user id and an Ed25519 identity key.
//!
//! The user id names the person; the identity key vouches for their devices. The id is random
//! rather than derived from the key so that a key change (a lost backup, a reinstall) keeps the
//! name and is shown to contacts as exactly that: a loud "this contact's key changed" warning.

use std::fmt;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::random::{self, RandomError};
use crate::sig::{self, BadSignature, Purpose};

/// A user's id: 16 random bytes, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId([u8; 16]);

crate::text_id::text_id!(UserId, 16, "a user id (32 hex digits)", UserId::from_hex);

impl UserId {
    /// A fresh random user id.
    pub fn random() -> Result<Self, RandomError> {
        Ok(UserId(random::array()?))
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds an id from its bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        UserId(bytes)
    }

    /// Parses the 32-hex-digit form.
    pub fn from_hex(s: &str) -> Option<Self> {
        crate::hex::decode_array(s).map(UserId)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::hex::write(f, &self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

/// A user's public identity key (Ed25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityPublicKey(#[serde(with = "serde_bytes")] [u8; 32]);

impl IdentityPublicKey {
    /// The key's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a key from its bytes. Validity is checked when a signature is verified.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        IdentityPublicKey(bytes)
    }

    /// The first 5 bytes in hex, for logs.
    pub fn fmt_short(&self) -> String {
        crate::hex::encode(&self.0[..5])
    }

    /// Verifies a signature made with [`IdentityKey::sign_group_operation`].
    pub fn verify_group_operation(
        &self,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), BadSignature> {
        self.verify(Purpose::GroupOperation, message, signature)
    }

    /// Verifies a signature made with [`IdentityKey::sign_contact_link`].
    pub fn verify_contact_link(
        &self,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), BadSignature> {
        self.verify(Purpose::ContactLink, message, signature)
    }

    pub(crate) fn verify(
        &self,
        purpose: Purpose,
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), BadSignature> {
        sig::verify(&self.0, purpose, message, signature)
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({})", self.fmt_short())
    }
}

/// A user's identity: user id and secret identity key.
///
/// The key is boxed so moves leave no copies, and ed25519-dalek wipes it on drop.
pub struct IdentityKey {
    user_id: UserId,
    signing: Box<SigningKey>,
}

#[derive(Serialize, Deserialize)]
struct IdentitySecretRecord {
    user_id: UserId,
    secret: crate::sealed::Secret32,
}

impl IdentityKey {
    /// Creates a new identity with a random user id and key.
    pub fn generate() -> Result<Self, RandomError> {
        let secret = Zeroizing::new(random::array::<32>()?);
        Ok(IdentityKey {
            user_id: UserId::random()?,
            signing: Box::new(SigningKey::from_bytes(&secret)),
        })
    }

    /// The user id this key belongs to.
    pub const fn user_id(&self) -> UserId {
        self.user_id
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.signing.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, purpose: Purpose, message: &[u8]) -> [u8; 64] {
        sig::sign(&self.signing, purpose, message)
    }

    /// Signs a group membership operation (its own signature domain, so such a signature
    /// can never pass for a device certificate, a device list or a prekey).
    pub fn sign_group_operation(&self, message: &[u8]) -> [u8; 64] {
        self.sign(Purpose::GroupOperation, message)
    }

    /// Signs the body of a contact link (its own signature domain: such a signature can never
    /// pass for a device list, a certificate, a prekey or a group operation, nor they for it).
    pub fn sign_contact_link(&self, message: &[u8]) -> [u8; 64] {
        self.sign(Purpose::ContactLink, message)
    }

    /// Serializes the secret (for a sealed store or a backup). The buffer is wiped on drop.
    pub fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        let record = IdentitySecretRecord {
            user_id: self.user_id,
            secret: crate::sealed::Secret32::new(self.signing.to_bytes()),
        };
        codec::encode_secret(Kind::IdentitySecret, &record)
    }

    /// Restores an identity from [`IdentityKey::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let record: IdentitySecretRecord = codec::decode(Kind::IdentitySecret, bytes)?;
        Ok(IdentityKey {
            user_id: record.user_id,
            signing: Box::new(SigningKey::from_bytes(record.secret.expose())),
        })
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({}, ..)", self.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trip_and_redacted_debug() {
        let id = IdentityKey::generate().unwrap();
        let bytes = id.to_secret_bytes().unwrap();
        let back = IdentityKey::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.user_id(), id.user_id());
        let dbg = format!("{id:?}");
        assert!(dbg.ends_with(", ..)"), "{dbg}");
        let secret_hex = crate::hex::encode(&id.signing.to_bytes());
        assert!(!dbg.contains(&secret_hex[..8]));
    }

    #[test]
    fn user_id_hex_round_trip() {
        let u = UserId::random().unwrap();
        assert_eq!(UserId::from_hex(&u.to_string()), Some(u));
        assert_eq!(UserId::from_hex("zz"), None);
        assert_eq!(UserId::from_hex(&"g".repeat(32)), None);
    }

    #[test]
    fn signatures_are_domain_separated() {
        let id = IdentityKey::generate().unwrap();
        let sig = id.sign(Purpose::DeviceList, b"hello");
        assert!(
            id.public()
                .verify(Purpose::DeviceList, b"hello", &sig)
                .is_ok()
        );
        assert!(
            id.public()
                .verify(Purpose::DeviceCertificate, b"hello", &sig)
                .is_err()
        );
        assert!(
            id.public()
                .verify(Purpose::DeviceList, b"hellp", &sig)
                .is_err()
        );
    }

    #[test]
    fn contact_link_signatures_have_their_own_domain() {
        let id = IdentityKey::generate().unwrap();
        let sig = id.sign_contact_link(b"body");
        assert!(id.public().verify_contact_link(b"body", &sig).is_ok());
        assert!(id.public().verify_contact_link(b"bodz", &sig).is_err());
        // Neither way across domains: a device-list or group signature is no link signature.
        let list_sig = id.sign(Purpose::DeviceList, b"body");
        assert!(id.public().verify_contact_link(b"body", &list_sig).is_err());
        assert!(id.public().verify_group_operation(b"body", &sig).is_err());
        let other = IdentityKey::generate().unwrap();
        assert!(other.public().verify_contact_link(b"body", &sig).is_err());
    }
}
