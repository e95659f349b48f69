//! Domain-separated Ed25519 signatures.
//!
//! Every signature in Tern covers `"tern/" + purpose + "/v1" || 0x00 || message`, so a signature
//! made for one purpose (a device certificate) can never be replayed as another (a prekey).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

/// A signature did not verify.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("bad signature on {0}")]
pub struct BadSignature(pub &'static str);

/// What a signature is for. Each purpose has its own domain string.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Purpose {
    DeviceCertificate,
    DeviceList,
    Prekey,
    GroupOperation,
    ContactLink,
    RelayRecord,
}

impl Purpose {
    const fn domain(self) -> &'static [u8] {
        match self {
            Purpose::DeviceCertificate => b"tern/device-certificate/v1\0",
            Purpose::DeviceList => b"tern/device-list/v1\0",
            Purpose::Prekey => b"tern/prekey/v1\0",
            Purpose::GroupOperation => b"tern/group-operation/v1\0",
            Purpose::ContactLink => b"tern/contact-link/v1\0",
            Purpose::RelayRecord => b"tern/relay-record/v1\0",
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Purpose::DeviceCertificate => "device certificate",
            Purpose::DeviceList => "device list",
            Purpose::Prekey => "prekey",
            Purpose::GroupOperation => "group operation",
            Purpose::ContactLink => "contact link",
            Purpose::RelayRecord => "relay record",
        }
    }
}

pub(crate) fn framed(purpose: Purpose, message: &[u8]) -> Vec<u8> {
    let domain = purpose.domain();
    let mut framed = Vec::with_capacity(domain.len() + message.len());
    framed.extend_from_slice(domain);
    framed.extend_from_slice(message);
    framed
}

pub(crate) fn sign(key: &SigningKey, purpose: Purpose, message: &[u8]) -> [u8; 64] {
    key.sign(&framed(purpose, message)).to_bytes()
}

/// Verifies with `verify_strict`, which also refuses small-order keys and malleable signatures.
pub(crate) fn verify(
    key: &[u8; 32],
    purpose: Purpose,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), BadSignature> {
    let bad = BadSignature(purpose.name());
    let key = VerifyingKey::from_bytes(key).map_err(|_| bad)?;
    let signature = Signature::from_bytes(signature);
    key.verify_strict(&framed(purpose, message), &signature)
        .map_err(|_| bad)
}
