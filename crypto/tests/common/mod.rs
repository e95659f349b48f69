//! Shared setup for the crypto integration tests: users with devices, device lists and prekeys.
#![allow(dead_code, missing_debug_implementations)]

use tern_crypto::device_list::DeviceList;
use tern_crypto::prekey::{PrekeyBundle, VerifiedPrekey};
use tern_crypto::session::PeerSessions;
use tern_crypto::{DeviceId, DeviceKeys, IdentityKey};

/// One device with its user's identity, device list and a published bundle.
pub struct Device {
    pub identity: IdentityKey,
    pub keys: DeviceKeys,
    pub list: DeviceList,
    pub bundle: PrekeyBundle,
    pub next_otk: usize,
}

impl Device {
    pub fn new(name: &str) -> Self {
        let identity = IdentityKey::generate().unwrap();
        let mut keys = DeviceKeys::generate().unwrap();
        let cert = keys.certify(&identity, name, 1_700_000_000).unwrap();
        let list = DeviceList::first(&identity, cert.clone(), 1_700_000_000);
        let bundle = PrekeyBundle::generate(&mut keys, cert, 50).unwrap();
        Device {
            identity,
            keys,
            list,
            bundle,
            next_otk: 0,
        }
    }

    pub fn id(&self) -> DeviceId {
        self.keys.device_id()
    }

    /// Claims the next one-time key (or the fallback once they run out) and verifies it the
    /// way a real claimer does: against the device list whose identity key it trusts.
    pub fn claim(&mut self) -> VerifiedPrekey {
        let key = match self.bundle.one_time_keys.get(self.next_otk) {
            Some(k) => *k,
            None => self.bundle.fallback,
        };
        self.next_otk += 1;
        let claim = self.bundle.claim(key);
        let bytes = claim.to_bytes().unwrap();
        tern_crypto::prekey::ClaimedPrekey::from_bytes(&bytes)
            .unwrap()
            .verify(&self.list)
            .unwrap()
    }

    pub fn sessions_with(&self, other: &Device) -> PeerSessions {
        PeerSessions::new(other.id(), other.keys.curve25519())
    }
}
