//! Deposit grants: who may leave mail in a device's mailbox.
//!
//! A device issues each user it talks to (a contact, a member of a shared group, its own user)
//! a **grant**: 32 bytes derived from the device's network secret, the user id and a
//! revocation epoch, handed to that user's devices inside the end-to-end channel. To deposit
//! at one of the device's relays a sender shows a **token** made from the grant and that
//! relay's peer id; the device registers only the tokens' **hashes** at each relay. So:
//!
//! - a relay learns neither the grant nor the user it was issued to, and a token it sees at
//!   deposit time is worthless at the device's other relays;
//! - revoking a user (removal, a revoked device) bumps that user's epoch: the new grant's
//!   token hash replaces the old at every relay, and the old token is refused;
//! - nothing needs storing on the issuing side but the epochs: grants are recomputed.
//!
//! ```text
//! grant  = HKDF-SHA256(ikm = network secret, salt = "tern/deposit-grant/v1",
//!                      info = user id (16) | epoch (u32 BE))          [32 bytes]
//! token  = SHA-256("tern/deposit-token/v1\0" | grant | relay peer id bytes)
//! hash   = SHA-256("tern/deposit-token-hash/v1\0" | token)
//! ```

use std::fmt;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{DeviceKeys, UserId};

const GRANT_SALT: &[u8] = b"tern/deposit-grant/v1";
const TOKEN_DOMAIN: &[u8] = b"tern/deposit-token/v1\0";
const HASH_DOMAIN: &[u8] = b"tern/deposit-token-hash/v1\0";

/// The key a device derives its grants from (wiped on drop; `Debug` shows no bytes).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct GrantKey(Box<[u8; 32]>);

impl fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrantKey(..)")
    }
}

impl GrantKey {
    /// The grant key of a device: its network secret through HKDF, so it needs no storage
    /// of its own and is separated from every other use of that secret by the salt.
    pub fn of(device: &DeviceKeys) -> Self {
        Self::from_secret(&device.network_secret())
    }

    fn from_secret(secret: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(GRANT_SALT), secret);
        let mut okm = Box::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit.
        let _ = hk.expand(b"key", okm.as_mut());
        GrantKey(okm)
    }

    /// The grant for `user` at revocation epoch `epoch`.
    pub fn issue(&self, user: &UserId, epoch: u32) -> Grant {
        let hk = Hkdf::<Sha256>::from_prk(self.0.as_ref());
        let mut info = [0u8; 20];
        info[..16].copy_from_slice(user.as_bytes());
        info[16..].copy_from_slice(&epoch.to_be_bytes());
        let mut okm = [0u8; 32];
        match hk {
            Ok(hk) => {
                let _ = hk.expand(&info, &mut okm);
            }
            // A 32-byte PRK is always long enough; keep a total function anyway.
            Err(_) => okm.copy_from_slice(&Sha256::digest([self.0.as_ref(), &info[..]].concat())),
        }
        let g = Grant(okm);
        okm.zeroize();
        g
    }
}

/// A grant: what a sender holds to deposit into one device's mailboxes.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Grant([u8; 32]);

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Grant(..)")
    }
}

impl Grant {
    /// A grant as received.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Grant(bytes)
    }

    /// Its bytes, to send inside the end-to-end channel or store sealed.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    /// The token to show the relay whose peer id bytes are `relay`.
    pub fn token(&self, relay: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(TOKEN_DOMAIN);
        h.update(self.0);
        h.update(relay);
        h.finalize().into()
    }

    /// The hash of the token for `relay`, which the issuing device registers there.
    pub fn token_hash(&self, relay: &[u8]) -> [u8; 32] {
        token_hash(&self.token(relay))
    }
}

/// The hash a relay compares with the registered ones (it stores hashes only).
pub fn token_hash(token: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(token);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(b: u8) -> UserId {
        UserId::from_bytes([b; 16])
    }

    #[test]
    fn grants_differ_by_user_epoch_and_device() {
        let k = GrantKey::from_secret(&[1; 32]);
        let k2 = GrantKey::from_secret(&[2; 32]);
        let g = k.issue(&user(1), 0);
        assert_eq!(g, k.issue(&user(1), 0), "deterministic");
        assert_ne!(g, k.issue(&user(2), 0));
        assert_ne!(g, k.issue(&user(1), 1));
        assert_ne!(g, k2.issue(&user(1), 0));
    }

    #[test]
    fn tokens_are_per_relay_and_hashes_match() {
        let g = GrantKey::from_secret(&[1; 32]).issue(&user(1), 0);
        let (a, b) = (g.token(b"relay-a"), g.token(b"relay-b"));
        assert_ne!(a, b);
        assert_eq!(token_hash(&a), g.token_hash(b"relay-a"));
        assert_ne!(token_hash(&a), a, "the relay never stores the token itself");
        assert_ne!(g.token_hash(b"relay-a"), g.token_hash(b"relay-b"));
    }

    #[test]
    fn debug_shows_no_bytes() {
        let k = GrantKey::from_secret(&[7; 32]);
        assert_eq!(format!("{k:?}"), "GrantKey(..)");
        assert_eq!(format!("{:?}", k.issue(&user(1), 0)), "Grant(..)");
    }
}
