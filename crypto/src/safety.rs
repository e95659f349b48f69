//! Safety numbers: a fingerprint of two users' identity keys that both see identically.
//!
//! Each side's half is SHA-512 iterated [`SAFETY_NUMBER_ITERATIONS`] times over
//! `version || identity key || user id` (then `hash || identity key` per round), truncated to 30
//! bytes and shown as six 5-digit groups (each 5 bytes, big endian, mod 100000). The two halves
//! are put in a fixed order (the smaller digit string first), so both users see the same 60
//! digits. The QR payload carries the scanner's own half first; [`SafetyNumber::matches_scanned`]
//! checks a scanned payload against the local view.

use sha2::{Digest, Sha512};
use thiserror::Error;

use crate::consts::SAFETY_NUMBER_ITERATIONS;
use crate::identity::{IdentityPublicKey, UserId};

/// Version of the safety number computation and QR payload.
pub const SAFETY_NUMBER_VERSION: u8 = 1;
const HALF_LEN: usize = 30;
/// Length of the QR payload: version, then two 30-byte halves.
pub const SAFETY_QR_LEN: usize = 1 + 2 * HALF_LEN;

/// A scanned QR payload could not be compared.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SafetyError {
    /// The payload has the wrong length.
    #[error("safety number code has {0} bytes, expected {SAFETY_QR_LEN}")]
    WrongLength(usize),
    /// The payload was made by another version.
    #[error("safety number code version {0} is not supported")]
    UnknownVersion(u8),
}

/// The safety number between the local user and a contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetyNumber {
    local: [u8; HALF_LEN],
    remote: [u8; HALF_LEN],
}

fn half(user: &UserId, key: &IdentityPublicKey) -> [u8; HALF_LEN] {
    let mut hasher = Sha512::new();
    hasher.update([0, SAFETY_NUMBER_VERSION]);
    hasher.update(key.as_bytes());
    hasher.update(user.as_bytes());
    let mut hash = hasher.finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut hasher = Sha512::new();
        hasher.update(hash);
        hasher.update(key.as_bytes());
        hash = hasher.finalize();
    }
    let mut out = [0u8; HALF_LEN];
    out.copy_from_slice(&hash[..HALF_LEN]);
    out
}

fn digits(half: &[u8; HALF_LEN]) -> String {
    let mut s = String::with_capacity(30);
    for chunk in half.chunks_exact(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        s.push_str(&format!("{:05}", v % 100_000));
    }
    s
}

impl SafetyNumber {
    /// Computes the safety number between the local user and a contact.
    pub fn compute(
        local_user: &UserId,
        local_key: &IdentityPublicKey,
        remote_user: &UserId,
        remote_key: &IdentityPublicKey,
    ) -> Self {
        SafetyNumber {
            local: half(local_user, local_key),
            remote: half(remote_user, remote_key),
        }
    }

    /// The 60 digits, the same on both sides.
    pub fn digits(&self) -> String {
        let (a, b) = (digits(&self.local), digits(&self.remote));
        if a <= b { a + &b } else { b + &a }
    }

    /// The digits in twelve groups of five, for display.
    pub fn display(&self) -> String {
        let d = self.digits();
        d.as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The bytes to encode in a QR code for the other side to scan.
    pub fn qr_payload(&self) -> [u8; SAFETY_QR_LEN] {
        let mut out = [0u8; SAFETY_QR_LEN];
        out[0] = SAFETY_NUMBER_VERSION;
        out[1..1 + HALF_LEN].copy_from_slice(&self.local);
        out[1 + HALF_LEN..].copy_from_slice(&self.remote);
        out
    }

    /// Whether a payload scanned from the contact's screen matches: their "local" half must be
    /// our "remote" half and the reverse. Compared in constant time.
    pub fn matches_scanned(&self, payload: &[u8]) -> Result<bool, SafetyError> {
        use subtle::ConstantTimeEq;
        if payload.len() != SAFETY_QR_LEN {
            return Err(SafetyError::WrongLength(payload.len()));
        }
        if payload[0] != SAFETY_NUMBER_VERSION {
            return Err(SafetyError::UnknownVersion(payload[0]));
        }
        let theirs_local = &payload[1..1 + HALF_LEN];
        let theirs_remote = &payload[1 + HALF_LEN..];
        let ok = theirs_local.ct_eq(&self.remote[..]) & theirs_remote.ct_eq(&self.local[..]);
        Ok(bool::from(ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKey;

    #[test]
    fn both_sides_agree_and_qr_cross_checks() {
        let a = IdentityKey::generate().unwrap();
        let b = IdentityKey::generate().unwrap();
        let at_a = SafetyNumber::compute(&a.user_id(), &a.public(), &b.user_id(), &b.public());
        let at_b = SafetyNumber::compute(&b.user_id(), &b.public(), &a.user_id(), &a.public());
        assert_eq!(at_a.digits(), at_b.digits());
        assert_eq!(at_a.digits().len(), 60);
        assert!(at_a.digits().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(at_a.display().split(' ').count(), 12);
        assert!(at_a.matches_scanned(&at_b.qr_payload()).unwrap());
        assert!(at_b.matches_scanned(&at_a.qr_payload()).unwrap());
        // Scanning one's own code is not a match.
        assert!(!at_a.matches_scanned(&at_a.qr_payload()).unwrap());
    }

    #[test]
    fn changed_key_changes_number() {
        let a = IdentityKey::generate().unwrap();
        let b = IdentityKey::generate().unwrap();
        let b2 = IdentityKey::generate().unwrap();
        let n1 = SafetyNumber::compute(&a.user_id(), &a.public(), &b.user_id(), &b.public());
        // Same user id, new identity key (a reinstall): the number must change.
        let n2 = SafetyNumber::compute(&a.user_id(), &a.public(), &b.user_id(), &b2.public());
        assert_ne!(n1.digits(), n2.digits());
        let at_b2 = SafetyNumber::compute(&b.user_id(), &b2.public(), &a.user_id(), &a.public());
        assert!(!n1.matches_scanned(&at_b2.qr_payload()).unwrap());
    }

    #[test]
    fn bad_payloads() {
        let a = IdentityKey::generate().unwrap();
        let n = SafetyNumber::compute(&a.user_id(), &a.public(), &a.user_id(), &a.public());
        assert_eq!(n.matches_scanned(&[1, 2]), Err(SafetyError::WrongLength(2)));
        let mut p = n.qr_payload();
        p[0] = 9;
        assert_eq!(n.matches_scanned(&p), Err(SafetyError::UnknownVersion(9)));
    }
}
