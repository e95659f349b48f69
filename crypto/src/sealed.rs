//! Sealing records under a 32-byte storage key, and the secret byte types used for it.
//!
//! A sealed record is XChaCha20-Poly1305 with a random 24-byte nonce; the caller's associated
//! data (for example a table and row name) binds the record to where it is stored, so a sealed
//! key copied into another row does not open.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::random::{self, RandomError};

/// 32 secret bytes, boxed so moves leave no copies, wiped on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret32(Box<[u8; 32]>);

impl Serialize for Secret32 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0[..]).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Secret32 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: [u8; 32] = serde_bytes::deserialize(deserializer)?;
        Ok(Secret32::new(bytes))
    }
}

impl Secret32 {
    /// Wraps secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        let mut bytes = bytes;
        let out = Secret32(Box::new(bytes));
        bytes.zeroize();
        out
    }

    /// 32 fresh random bytes.
    pub fn random() -> Result<Self, RandomError> {
        let mut out = Secret32(Box::new([0u8; 32]));
        random::fill(&mut out.0[..])?;
        Ok(out)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(..)")
    }
}

/// A key that seals records at rest.
pub type StorageKey = Secret32;

/// Why a sealed record could not be opened or made.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// The bytes are not a sealed record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed (the plaintext is too large).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Wrong key, wrong associated data, or the record was altered.
    #[error("sealed record does not open under this key and context")]
    Open,
    /// No randomness for the nonce.
    #[error("the operating system's random number generator failed")]
    Random,
}

#[derive(Serialize, Deserialize)]
struct SealedRecord {
    #[serde(with = "serde_bytes")]
    nonce: [u8; 24],
    #[serde(with = "serde_bytes")]
    ciphertext: Vec<u8>,
}

/// Seals `plaintext` under `key`, bound to `context`.
pub fn seal(key: &StorageKey, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce: [u8; 24] = random::array().map_err(|_| SealError::Random)?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: context,
            },
        )
        .map_err(|_| SealError::Open)?;
    Ok(codec::encode(
        Kind::Sealed,
        &SealedRecord { nonce, ciphertext },
    )?)
}

/// Opens a record made by [`seal`] with the same key and context. The plaintext is wiped on drop.
pub fn open(
    key: &StorageKey,
    context: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let record: SealedRecord = codec::decode(Kind::Sealed, sealed)?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt(
            &XNonce::from(record.nonce),
            Payload {
                msg: &record.ciphertext,
                aad: context,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_failures() {
        let key = StorageKey::random().unwrap();
        let sealed = seal(&key, b"identity", b"secret stuff").unwrap();
        assert_eq!(
            &**open(&key, b"identity", &sealed).unwrap(),
            b"secret stuff"
        );
        assert_eq!(open(&key, b"device", &sealed), Err(SealError::Open));
        let other = StorageKey::random().unwrap();
        assert_eq!(open(&other, b"identity", &sealed), Err(SealError::Open));
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open(&key, b"identity", &bad), Err(SealError::Open));
        assert_eq!(format!("{key:?}"), "Secret32(..)");
    }
}
