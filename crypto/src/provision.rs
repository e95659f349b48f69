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
//!
//! The same key agreement also gives both ends a **link check** ([`LinkCheck`]): 32 bytes
//! from the same HKDF under its own info string (`tern/provision/check/v1`), which only the
//! sealer (who holds the ephemeral secret) and the holder of the one-time key can compute.
//! The node turns it into the words both screens show before the new device applies the
//! record; knowing the public keys (the relay, or whoever saw the link code) is not enough.

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
/// The HKDF info of the link check: the same key agreement, another output.
const CHECK_INFO: &[u8] = b"tern/provision/check/v1";

/// What both ends of one provisioning record share besides its key: 32 bytes from the key
/// agreement under their own HKDF info string, for the confirmation words both screens show.
/// Known only to the sealer and the holder of the one-time key; wiped on drop.
pub struct LinkCheck {
    bytes: Zeroizing<[u8; 32]>,
    ephemeral: [u8; 32],
}

impl LinkCheck {
    /// The shared check bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The record's ephemeral public key (public: it travels in the record).
    pub fn ephemeral(&self) -> &[u8; 32] {
        &self.ephemeral
    }
}

impl fmt::Debug for LinkCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkCheck(..)")
    }
}

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

/// The AEAD key and the link check of one record.
fn derive(
    shared: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<(Zeroizing<[u8; 32]>, LinkCheck), ProvisionError> {
    if !shared.was_contributory() {
        return Err(ProvisionError::BadKey);
    }
    let salt = [ephemeral.as_slice(), recipient.as_slice()].concat();
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(INFO, &mut key[..])
        .map_err(|_| ProvisionError::BadKey)?;
    let mut check = Zeroizing::new([0u8; 32]);
    hk.expand(CHECK_INFO, &mut check[..])
        .map_err(|_| ProvisionError::BadKey)?;
    Ok((
        key,
        LinkCheck {
            bytes: check,
            ephemeral: *ephemeral,
        },
    ))
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
        self.open_checked(bytes).map(|(plain, _)| plain)
    }

    /// Opens a record sealed to this key, with the link check its sealer got from
    /// [`seal_to_checked`]. The plaintext is wiped on drop.
    pub fn open_checked(
        &self,
        bytes: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, LinkCheck), ProvisionError> {
        let r: Record = codec::decode(Kind::Provisioning, bytes)?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(r.ephemeral));
        let (key, check) = derive(&shared, &r.ephemeral, &self.public())?;
        let cipher = XChaCha20Poly1305::new((&*key).into());
        let plain = cipher
            .decrypt(
                &XNonce::from(r.nonce),
                Payload {
                    msg: &r.ciphertext,
                    aad: INFO,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| ProvisionError::Open)?;
        Ok((plain, check))
    }
}

/// Seals `plaintext` to a new device's provisioning key.
pub fn seal_to(recipient: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, ProvisionError> {
    seal_to_checked(recipient, plaintext).map(|(sealed, _)| sealed)
}

/// Seals `plaintext` to a new device's provisioning key, and gives the link check the new
/// device gets when it opens the record ([`ProvisionKey::open_checked`]).
pub fn seal_to_checked(
    recipient: &[u8; 32],
    plaintext: &[u8],
) -> Result<(Vec<u8>, LinkCheck), ProvisionError> {
    let eph_bytes = Zeroizing::new(random::array::<32>().map_err(|_| ProvisionError::Random)?);
    let eph = StaticSecret::from(*eph_bytes);
    let ephemeral = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(*recipient));
    let (key, check) = derive(&shared, &ephemeral, recipient)?;
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
    let sealed = codec::encode(
        Kind::Provisioning,
        &Record {
            ephemeral,
            nonce,
            ciphertext,
        },
    )?;
    Ok((sealed, check))
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

    #[test]
    fn both_ends_get_the_same_link_check_and_it_is_not_the_aead_key() {
        let key = ProvisionKey::generate().unwrap();
        let (sealed, sent) = seal_to_checked(&key.public(), b"record").unwrap();
        let (plain, got) = key.open_checked(&sealed).unwrap();
        assert_eq!(&plain[..], b"record");
        assert_eq!(sent.as_bytes(), got.as_bytes());
        assert_eq!(sent.ephemeral(), got.ephemeral());
        // Another record to the same key (a fresh ephemeral key) has another check.
        let (_, again) = seal_to_checked(&key.public(), b"record").unwrap();
        assert_ne!(again.as_bytes(), sent.as_bytes());
        // Domain separation: the check is not the AEAD key of the same agreement.
        let r: Record = codec::decode(Kind::Provisioning, &sealed).unwrap();
        let shared = key.secret.diffie_hellman(&PublicKey::from(r.ephemeral));
        let (aead, _) = derive(&shared, &r.ephemeral, &key.public()).unwrap();
        assert_ne!(&*aead, sent.as_bytes());
        assert_eq!(format!("{sent:?}"), "LinkCheck(..)");
    }
}
