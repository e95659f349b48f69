//! The new device's answer, back to the device that linked it.
//!
//! Link words stop a record from someone who saw the code being applied; but the sending
//! device would not know whether its record was the one confirmed. So once the new device
//! applied a record it deposits a **confirmation** for its sender, at the relay the record
//! went through, into a mailbox that only the two ends of that record can name:
//!
//! ```text
//! seed    = SHA-256("tern/device-link-confirm/v1" 0x00 "mailbox" | link check | new device id)
//! mailbox = the PeerId of the Ed25519 key with secret `seed`
//! tag     = SHA-256("tern/device-link-confirm/v1" 0x00 "tag" | link check | new device id)
//! message = "tern-link-confirmed/v1" | tag
//! ```
//!
//! The link check is the record's key agreement ([`LinkCheck`]): known to the sending
//! device and to whoever opened the record with the one-time key, nobody else. The relay
//! sees a deposit into a fresh mailbox and 32 bytes it cannot make itself; another record's
//! sender (someone who used the code first) has another check, so its confirmation lands
//! elsewhere. The sending device waits on that mailbox with a connection of its own (as
//! that key), so the confirmation never mixes with its own mail.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId, identity::Keypair};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tern_crypto::{DeviceId, provision::LinkCheck};
use tern_relay::{
    client::{Client, Config, Event},
    rpc::Requests as _,
};
use zeroize::Zeroizing;

use crate::error::NodeError;

/// The domain of every hash here.
const DOMAIN: &[u8] = b"tern/device-link-confirm/v1\0";

/// What a confirmation deposit starts with.
const PREFIX: &[u8] = b"tern-link-confirmed/v1";

/// How long a sending device waits for the new device's confirmation: as long as a new
/// device waits for a record by default, and then some for its user to answer.
pub const WAIT: Duration = Duration::from_secs(15 * 60);

/// Mailbox messages read per fetch while waiting.
const PAGE: u32 = 16;

/// One record's confirmation: where it goes and what it says.
pub struct Confirmation {
    mailbox: Keypair,
    tag: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmation")
            .field("mailbox", &self.mailbox())
            .finish_non_exhaustive()
    }
}

impl Confirmation {
    /// The confirmation of the record whose key agreement gave `check`, for `device`.
    pub fn derive(check: &LinkCheck, device: &DeviceId) -> Result<Self, NodeError> {
        let hash = |label: &[u8]| -> Zeroizing<[u8; 32]> {
            let mut h = Sha256::new();
            h.update(DOMAIN);
            h.update(label);
            h.update(check.as_bytes());
            h.update(device.as_bytes());
            Zeroizing::new(h.finalize().into())
        };
        let seed = hash(b"mailbox");
        let mailbox = Keypair::ed25519_from_bytes(*seed).map_err(|e| {
            NodeError::Crypto(crate::error::CryptoError::NetworkKey {
                what: "link confirmation key",
                source: std::sync::Arc::new(e),
            })
        })?;
        Ok(Confirmation {
            mailbox,
            tag: hash(b"tag"),
        })
    }

    /// The mailbox the confirmation goes to.
    pub fn mailbox(&self) -> PeerId {
        self.mailbox.public().to_peer_id()
    }

    /// The confirmation's bytes, as deposited.
    pub fn message(&self) -> Vec<u8> {
        [PREFIX, self.tag.as_slice()].concat()
    }

    /// Whether `bytes` are this confirmation (compared in constant time).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() == PREFIX.len() + 32
            && bytes.starts_with(PREFIX)
            && bool::from(bytes[PREFIX.len()..].ct_eq(self.tag.as_slice()))
    }

    /// Waits up to `wait` at `relay` for the confirmation, as the mailbox's owner on a
    /// connection of its own; takes it out of the mailbox when it comes. `Ok(false)` when
    /// the time ran out, `Err` when the relay cannot be reached.
    pub async fn wait(&self, relay: Multiaddr, wait: Duration) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let (client, mut events) = Client::connect(self.mailbox.clone(), relay, Config::default())
            .await
            .map_err(|e| e.to_string())?;
        client.listen(true).await.map_err(|e| e.to_string())?;
        // What waited before the listen, then what the relay pushes.
        let (mut batch, _) = client.fetch(0, PAGE).await.map_err(|e| e.to_string())?;
        loop {
            for env in batch.drain(..) {
                // Anything else here is not from the new device: it is taken out too.
                let _ = client.ack(vec![env.id]).await;
                if self.matches(&env.ciphertext) {
                    return Ok(true);
                }
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Delivered(envs))) => batch = envs,
                Ok(Some(_)) => {}
                Ok(None) => return Err("the relay closed the connection".into()),
                Err(_) => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_crypto::{DeviceKeys, provision::ProvisionKey};

    /// A record's check, as both of its ends hold it.
    fn check() -> LinkCheck {
        let key = ProvisionKey::generate().unwrap();
        let (sealed, check) = tern_crypto::provision::seal_to_checked(&key.public(), b"x").unwrap();
        let (_, opened) = key.open_checked(&sealed).unwrap();
        assert_eq!(opened.as_bytes(), check.as_bytes());
        opened
    }

    #[test]
    fn only_the_same_record_and_device_give_the_same_confirmation() {
        let device = DeviceKeys::generate().unwrap().device_id();
        let other_device = DeviceKeys::generate().unwrap().device_id();
        let c = check();
        let (a, b) = (
            Confirmation::derive(&c, &device).unwrap(),
            Confirmation::derive(&c, &device).unwrap(),
        );
        assert_eq!(a.mailbox(), b.mailbox());
        assert!(b.matches(&a.message()));
        for other in [
            Confirmation::derive(&check(), &device).unwrap(),
            Confirmation::derive(&c, &other_device).unwrap(),
        ] {
            assert_ne!(other.mailbox(), a.mailbox());
            assert!(!a.matches(&other.message()));
        }
        // Truncated, extended or prefix-only bytes are not a confirmation.
        let m = a.message();
        assert!(!a.matches(&m[..m.len() - 1]));
        assert!(!a.matches(&[m.as_slice(), &[0]].concat()));
        assert!(!a.matches(PREFIX));
    }
}
