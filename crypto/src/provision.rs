//! Provisioning: what a device sends a newly linked device of the same user.
//!
//! The new device makes a one-time X25519 key and shows its public half (in the link code it
//! displays); the existing device seals the provisioning record to it: an ephemeral X25519
//! key agreement, HKDF-SHA256 over the shared secret (salted with both public keys), and
//! XChaCha20-Poly1305 with a random nonce. Only the holder of the one-time key opens it; the
//! relay that carries it sees ciphertext. Like Signal's linked devices, the record carries the
//! identity secret, so every device of a user can sign for it.
//!
//! ```text
//! record = version | kind (Provisioning) | CBOR {ephemeral: bytes32, nonce: bytes24, ciphertext}
//! ```

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::random;

const INFO: &[u8] = b"tern/provision/v1";

/// Why a provisioning record could not be made or opened.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionError {
    /// Not a provisioning record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Too large.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Not for this key, or altered.
    #[error("the provisioning record does not open with this device's key")]
    Open,
    /// A public key that makes no shared secret (small order).
    #[error("bad provisioning key")]
    BadKey,
    /// No randomness.
    #[error("the operating system's random number generator failed")]
    Random,
}

#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(with = "serde_bytes")]
    ephemeral: [u8; 32],
    #[serde(with = "serde_bytes")]
    nonce: [u8; 24],
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

/// A new device's one-time provisioning key.
pub struct ProvisionKey {
    secret: StaticSecret,
}

impl fmt::Debug for ProvisionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProvisionKey(..)")
    }
}

fn aead_key(
    shared: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, ProvisionError> {
    if !shared.was_contributory() {
        return Err(ProvisionError::BadKey);
    }
    let salt = [ephemeral.as_slice(), recipient.as_slice()].concat();
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(INFO, &mut key[..])
        .map_err(|_| ProvisionError::BadKey)?;
    Ok(key)
}

impl ProvisionKey {
    /// A fresh key.
    pub fn generate() -> Result<Self, ProvisionError> {
        let bytes = Zeroizing::new(random::array::<32>().map_err(|_| ProvisionError::Random)?);
        Ok(ProvisionKey {
            secret: StaticSecret::from(*bytes),
        })
    }

    /// The public half, for the link code.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// Opens a record sealed to this key. The plaintext is wiped on drop.
    pub fn open(&self, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProvisionError> {
        let r: Record = codec::decode(Kind::Provisioning, bytes)?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(r.ephemeral));
        let key = aead_key(&shared, &r.ephemeral, &self.public())?;
        let cipher = XChaCha20Poly1305::new((&*key).into());
        cipher
            .decrypt(
                &XNonce::from(r.nonce),
                Payload {
                    msg: &r.ciphertext,
                    aad: INFO,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| ProvisionError::Open)
    }
}

/// Seals `plaintext` to a new device's provisioning key.
pub fn seal_to(recipient: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, ProvisionError> {
    let eph_bytes = Zeroizing::new(random::array::<32>().map_err(|_| ProvisionError::Random)?);
    let eph = StaticSecret::from(*eph_bytes);
    let ephemeral = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(*recipient));
    let key = aead_key(&shared, &ephemeral, recipient)?;
    let nonce: [u8; 24] = random::array().map_err(|_| ProvisionError::Random)?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: INFO,
            },
        )
        .map_err(|_| ProvisionError::Open)?;
    Ok(codec::encode(
        Kind::Provisioning,
        &Record {
            ephemeral,
            nonce,
            ciphertext,
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_new_device_opens_it_and_tampering_fails() {
        let key = ProvisionKey::generate().unwrap();
        let other = ProvisionKey::generate().unwrap();
        let sealed = seal_to(&key.public(), b"identity and contacts").unwrap();
        assert_eq!(&key.open(&sealed).unwrap()[..], b"identity and contacts");
        assert_eq!(other.open(&sealed), Err(ProvisionError::Open));
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(key.open(&bad), Err(ProvisionError::Open));
        // A small-order public key makes no shared secret.
        assert_eq!(seal_to(&[0u8; 32], b"x"), Err(ProvisionError::BadKey));
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.public())));
    }
}
