//! A user's device list: every device the user has linked, active or revoked, signed by the
//! identity key, with a version that only grows.
//!
//! Rules a successor list must satisfy ([`DeviceList::check_successor`]):
//! - a strictly higher version (an older or equal one is stale and refused, so a relay or an
//!   attacker cannot roll a list back to re-activate a device);
//! - the same user and identity key;
//! - every device of the previous list is still listed (a device is retired by revoking it,
//!   never by dropping it, so a revocation cannot be undone by omission);
//! - a revoked device stays revoked.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::consts::MAX_DEVICE_LIST_ENTRIES;
use crate::device::{
    CertificateError, DeviceCertificate, DeviceId, SignedDeviceCertificate, SignedWire,
    decode_body, sign_record,
};
use crate::identity::{IdentityKey, IdentityPublicKey, UserId};
use crate::sig::{BadSignature, Purpose};
use crate::time::UnixSecs;

/// Whether a listed device may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// The device is in use: messages to the user are encrypted to it.
    Active,
    /// The device was revoked at this time: nothing is encrypted to it any more and messages
    /// from it are refused.
    Revoked {
        /// When the device was revoked, seconds since the Unix epoch.
        at: UnixSecs,
    },
}

/// One device in a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The device's certificate, signed by the same identity key as the list.
    pub certificate: SignedDeviceCertificate,
    /// Whether it is active or revoked.
    pub state: DeviceState,
}

impl DeviceEntry {
    /// The device's id.
    pub fn device_id(&self) -> DeviceId {
        self.certificate.certificate().device_id
    }

    /// Whether the device is active.
    pub fn is_active(&self) -> bool {
        self.state == DeviceState::Active
    }
}

/// A user's device list (verified: see [`SignedDeviceList`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    /// The user.
    pub user_id: UserId,
    /// The identity key that signs the list and every certificate in it.
    pub identity_key: IdentityPublicKey,
    /// Grows with every change; a list is only replaced by a higher version.
    pub version: u64,
    /// When this version was made.
    pub issued_at: UnixSecs,
    /// The devices, active and revoked.
    pub devices: Vec<DeviceEntry>,
}

/// Why a device list was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The bytes are not a device list record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The list's signature does not verify under the identity key it names.
    #[error(transparent)]
    BadSignature(#[from] BadSignature),
    /// A certificate in the list is invalid.
    #[error("device certificate in list: {0}")]
    Certificate(#[from] CertificateError),
    /// A certificate is for another user or identity key than the list.
    #[error("device {0:?} in the list belongs to another user or identity key")]
    ForeignDevice(DeviceId),
    /// A device appears twice.
    #[error("device {0:?} is listed twice")]
    DuplicateDevice(DeviceId),
    /// Too many entries.
    #[error("device list has {0} entries, over the {MAX_DEVICE_LIST_ENTRIES} limit")]
    TooManyDevices(usize),
    /// The list is not newer than the one already held.
    #[error("stale device list: version {offered} is not newer than {current}")]
    Stale {
        /// Version already held.
        current: u64,
        /// Version offered.
        offered: u64,
    },
    /// The list is signed by another identity key or names another user than the one held.
    #[error("device list is for another user or identity key")]
    IdentityChanged,
    /// A device of the previous list is missing from the new one.
    #[error("device {0:?} was dropped from the list instead of being revoked")]
    DeviceDropped(DeviceId),
    /// A revoked device is shown as active again.
    #[error("revoked device {0:?} cannot become active again")]
    Unrevoked(DeviceId),
    /// The list is signed by an identity key other than the one expected.
    #[error("device list is signed by {found:?}, expected {expected:?}")]
    WrongIdentity {
        /// Expected key.
        expected: IdentityPublicKey,
        /// Key that signed.
        found: IdentityPublicKey,
    },
}

#[derive(Serialize, Deserialize)]
struct EntryWire {
    certificate: SignedWire,
    state: DeviceState,
}

#[derive(Serialize, Deserialize)]
struct ListBody {
    user_id: UserId,
    identity_key: IdentityPublicKey,
    version: u64,
    issued_at: UnixSecs,
    devices: Vec<EntryWire>,
}

impl DeviceList {
    /// A first list (version 1) with one active device.
    pub fn first(
        identity: &IdentityKey,
        certificate: SignedDeviceCertificate,
        now: UnixSecs,
    ) -> Self {
        DeviceList {
            user_id: identity.user_id(),
            identity_key: identity.public(),
            version: 1,
            issued_at: now,
            devices: vec![DeviceEntry {
                certificate,
                state: DeviceState::Active,
            }],
        }
    }

    /// The entry for a device, if listed.
    pub fn entry(&self, device: &DeviceId) -> Option<&DeviceEntry> {
        self.devices.iter().find(|e| &e.device_id() == device)
    }

    /// The certificate of an active device, if it is listed and active.
    pub fn active_certificate(&self, device: &DeviceId) -> Option<&DeviceCertificate> {
        self.entry(device)
            .filter(|e| e.is_active())
            .map(|e| e.certificate.certificate())
    }

    /// The active devices.
    pub fn active(&self) -> impl Iterator<Item = &DeviceEntry> {
        self.devices.iter().filter(|e| e.is_active())
    }

    /// A successor list with `certificate` added as active, version + 1.
    pub fn with_device(
        &self,
        certificate: SignedDeviceCertificate,
        now: UnixSecs,
    ) -> Result<Self, DeviceListError> {
        let mut next = self.successor(now);
        next.devices.push(DeviceEntry {
            certificate,
            state: DeviceState::Active,
        });
        next.validate()?;
        Ok(next)
    }

    /// A successor list with `device` revoked, version + 1. Revoking an unknown device is an
    /// error; revoking a revoked one keeps its first revocation time.
    pub fn with_revoked(&self, device: &DeviceId, now: UnixSecs) -> Result<Self, DeviceListError> {
        let mut next = self.successor(now);
        let entry = next
            .devices
            .iter_mut()
            .find(|e| &e.device_id() == device)
            .ok_or(DeviceListError::DeviceDropped(*device))?;
        if entry.is_active() {
            entry.state = DeviceState::Revoked { at: now };
        }
        Ok(next)
    }

    fn successor(&self, now: UnixSecs) -> Self {
        let mut next = self.clone();
        next.version = self.version.saturating_add(1);
        next.issued_at = now;
        next
    }

    /// Checks the list's own consistency: entry count, certificates from the same user and
    /// identity, no device twice.
    fn validate(&self) -> Result<(), DeviceListError> {
        if self.devices.len() > MAX_DEVICE_LIST_ENTRIES {
            return Err(DeviceListError::TooManyDevices(self.devices.len()));
        }
        let mut seen = HashSet::with_capacity(self.devices.len());
        for entry in &self.devices {
            let cert = entry.certificate.certificate();
            if cert.user_id != self.user_id || cert.identity_key != self.identity_key {
                return Err(DeviceListError::ForeignDevice(cert.device_id));
            }
            if !seen.insert(cert.device_id) {
                return Err(DeviceListError::DuplicateDevice(cert.device_id));
            }
        }
        Ok(())
    }

    /// Checks that `next` may replace `self` (see the module documentation for the rules).
    pub fn check_successor(&self, next: &DeviceList) -> Result<(), DeviceListError> {
        if next.user_id != self.user_id || next.identity_key != self.identity_key {
            return Err(DeviceListError::IdentityChanged);
        }
        if next.version <= self.version {
            return Err(DeviceListError::Stale {
                current: self.version,
                offered: next.version,
            });
        }
        for old in &self.devices {
            let id = old.device_id();
            let new = next.entry(&id).ok_or(DeviceListError::DeviceDropped(id))?;
            if !old.is_active() && new.is_active() {
                return Err(DeviceListError::Unrevoked(id));
            }
        }
        Ok(())
    }

    /// Signs the list with `identity`, which must be the list's identity key.
    pub fn sign(&self, identity: &IdentityKey) -> Result<SignedDeviceList, DeviceListError> {
        if identity.public() != self.identity_key || identity.user_id() != self.user_id {
            return Err(DeviceListError::WrongIdentity {
                expected: self.identity_key,
                found: identity.public(),
            });
        }
        self.validate()?;
        let body = ListBody {
            user_id: self.user_id,
            identity_key: self.identity_key,
            version: self.version,
            issued_at: self.issued_at,
            devices: self
                .devices
                .iter()
                .map(|e| EntryWire {
                    certificate: e.certificate.wire(),
                    state: e.state,
                })
                .collect(),
        };
        let bytes = sign_record(identity, Kind::DeviceList, Purpose::DeviceList, &body)?;
        Ok(SignedDeviceList {
            list: self.clone(),
            bytes,
        })
    }
}

/// A device list with its signature, as published and fetched.
///
/// A value of this type has always been verified: the list signature and every certificate
/// verify under the identity key the list names, and the list is internally consistent.
/// Whether that identity key is the one the caller trusts is checked with
/// [`SignedDeviceList::check_identity`]; whether it may replace a list already held, with
/// [`DeviceList::check_successor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDeviceList {
    list: DeviceList,
    bytes: Vec<u8>,
}

impl SignedDeviceList {
    /// Decodes and verifies a signed list.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeviceListError> {
        let wire: SignedWire = codec::decode(Kind::DeviceList, bytes)?;
        let body: ListBody = decode_body(Kind::DeviceList, &wire.body)?;
        if body.devices.len() > MAX_DEVICE_LIST_ENTRIES {
            return Err(DeviceListError::TooManyDevices(body.devices.len()));
        }
        body.identity_key
            .verify(Purpose::DeviceList, &wire.body, &wire.signature)?;
        let mut devices = Vec::with_capacity(body.devices.len());
        for entry in body.devices {
            devices.push(DeviceEntry {
                certificate: SignedDeviceCertificate::from_wire(entry.certificate)?,
                state: entry.state,
            });
        }
        let list = DeviceList {
            user_id: body.user_id,
            identity_key: body.identity_key,
            version: body.version,
            issued_at: body.issued_at,
            devices,
        };
        list.validate()?;
        Ok(SignedDeviceList {
            list,
            bytes: bytes.to_vec(),
        })
    }

    /// The verified list.
    pub const fn list(&self) -> &DeviceList {
        &self.list
    }

    /// The encoded, signed list (what is published).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Refuses the list unless it is signed by `expected`.
    pub fn check_identity(&self, expected: &IdentityPublicKey) -> Result<(), DeviceListError> {
        if &self.list.identity_key != expected {
            return Err(DeviceListError::WrongIdentity {
                expected: *expected,
                found: self.list.identity_key,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceKeys;

    fn setup() -> (IdentityKey, DeviceKeys, DeviceList) {
        let id = IdentityKey::generate().unwrap();
        let dev = DeviceKeys::generate().unwrap();
        let cert = dev.certify(&id, "laptop", 10).unwrap();
        let list = DeviceList::first(&id, cert, 10);
        (id, dev, list)
    }

    #[test]
    fn sign_decode_round_trip() {
        let (id, _, list) = setup();
        let signed = list.sign(&id).unwrap();
        let back = SignedDeviceList::from_bytes(signed.as_bytes()).unwrap();
        assert_eq!(back.list(), &list);
        back.check_identity(&id.public()).unwrap();
    }

    #[test]
    fn stale_and_equal_versions_refused() {
        let (id, _, list) = setup();
        let phone = DeviceKeys::generate().unwrap();
        let v2 = list
            .with_device(phone.certify(&id, "phone", 20).unwrap(), 20)
            .unwrap();
        list.check_successor(&v2).unwrap();
        assert!(matches!(
            v2.check_successor(&list),
            Err(DeviceListError::Stale {
                current: 2,
                offered: 1
            })
        ));
        assert!(matches!(
            v2.check_successor(&v2),
            Err(DeviceListError::Stale { .. })
        ));
    }

    #[test]
    fn revoked_devices_stay_revoked_and_listed() {
        let (id, dev, list) = setup();
        let phone = DeviceKeys::generate().unwrap();
        let v2 = list
            .with_device(phone.certify(&id, "phone", 20).unwrap(), 20)
            .unwrap();
        let v3 = v2.with_revoked(&phone.device_id(), 30).unwrap();
        v2.check_successor(&v3).unwrap();
        assert!(v3.active_certificate(&phone.device_id()).is_none());
        assert!(v3.active_certificate(&dev.device_id()).is_some());

        // Re-activating the revoked device in a newer list is refused.
        let mut v4 = v3.clone();
        v4.version = 4;
        for e in &mut v4.devices {
            e.state = DeviceState::Active;
        }
        assert_eq!(
            v3.check_successor(&v4),
            Err(DeviceListError::Unrevoked(phone.device_id()))
        );

        // Dropping it instead of keeping it revoked is refused.
        let mut v4 = v3.clone();
        v4.version = 4;
        v4.devices.retain(|e| e.device_id() != phone.device_id());
        assert_eq!(
            v3.check_successor(&v4),
            Err(DeviceListError::DeviceDropped(phone.device_id()))
        );
    }

    #[test]
    fn foreign_certificate_and_wrong_signer_refused() {
        let (id, _, list) = setup();
        let mallory = IdentityKey::generate().unwrap();
        let dev = DeviceKeys::generate().unwrap();
        let foreign = dev.certify(&mallory, "evil", 1).unwrap();
        assert!(matches!(
            list.with_device(foreign, 2),
            Err(DeviceListError::ForeignDevice(_))
        ));
        assert!(matches!(
            list.sign(&mallory),
            Err(DeviceListError::WrongIdentity { .. })
        ));
        let signed = list.sign(&id).unwrap();
        assert!(matches!(
            signed.check_identity(&mallory.public()),
            Err(DeviceListError::WrongIdentity { .. })
        ));
    }

    #[test]
    fn tampered_list_refused() {
        let (id, _, list) = setup();
        let bytes = list.sign(&id).unwrap().as_bytes().to_vec();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x80;
            assert!(
                SignedDeviceList::from_bytes(&bad).is_err(),
                "flipping byte {i} was not detected"
            );
        }
    }

    #[test]
    fn identity_change_refused_as_successor() {
        let (_, _, list) = setup();
        let (_, _, other) = setup();
        let mut other = other;
        other.version = 9;
        assert_eq!(
            list.check_successor(&other),
            Err(DeviceListError::IdentityChanged)
        );
    }
}
