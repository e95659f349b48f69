//! Prekeys: what a device publishes so others can start a session with it while it is offline.
//!
//! A device publishes a [`PrekeyBundle`]: its certificate, signed one-time keys and one signed
//! fallback key. Each key is signed by the device's Olm Ed25519 key (named in the certificate),
//! so the chain of trust a claimer checks is
//! identity key → device certificate (in the user's device list) → key signature.
//! The only way to get a [`VerifiedPrekey`], which session creation requires, is through that
//! check ([`ClaimedPrekey::verify`]).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{self, DecodeError, EncodeError, Kind};
use crate::consts::MAX_ONE_TIME_KEYS_PER_BUNDLE;
use crate::device::{CertificateError, DeviceId, DeviceKeys, SignedDeviceCertificate, SignedWire};
use crate::device_list::DeviceList;
use crate::identity::UserId;
use crate::sig::{self, BadSignature, Purpose};

/// A Curve25519 prekey with the device's signature over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekey {
    /// The public Curve25519 key.
    #[serde(with = "serde_bytes")]
    pub key: [u8; 32],
    /// Whether this is the fallback key (reused until replaced) rather than a one-time key.
    pub fallback: bool,
    /// Signature by the device's Olm Ed25519 key over device id, key and the fallback flag.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

fn signed_message(device: &DeviceId, key: &[u8; 32], fallback: bool) -> [u8; 65] {
    let mut msg = [0u8; 65];
    msg[..32].copy_from_slice(device.as_bytes());
    msg[32..64].copy_from_slice(key);
    msg[64] = u8::from(fallback);
    msg
}

impl SignedPrekey {
    fn sign(device: &DeviceKeys, key: [u8; 32], fallback: bool) -> Self {
        let msg = sig::framed(
            Purpose::Prekey,
            &signed_message(&device.device_id(), &key, fallback),
        );
        let signature = device.account().sign(&msg).to_bytes();
        SignedPrekey {
            key,
            fallback,
            signature,
        }
    }

    fn verify(&self, certificate: &SignedDeviceCertificate) -> Result<(), BadSignature> {
        let cert = certificate.certificate();
        sig::verify(
            &cert.ed25519,
            Purpose::Prekey,
            &signed_message(&cert.device_id, &self.key, self.fallback),
            &self.signature,
        )
    }
}

/// Why prekeys were refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrekeyError {
    /// Not a prekey record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The certificate is invalid.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// A key's signature does not verify under the device's key.
    #[error(transparent)]
    BadSignature(#[from] BadSignature),
    /// Too many one-time keys in one bundle.
    #[error("bundle has {0} one-time keys, over the {MAX_ONE_TIME_KEYS_PER_BUNDLE} limit")]
    TooManyKeys(usize),
    /// A key is flagged wrongly (a one-time key marked fallback or the reverse).
    #[error("prekey is in the wrong slot (one-time vs fallback)")]
    WrongSlot,
    /// The device is not active in the user's device list.
    #[error("device {0:?} is not an active device of this user")]
    NotListed(DeviceId),
    /// The certificate differs from the one in the device list.
    #[error("certificate of device {0:?} differs from the one in the device list")]
    CertificateMismatch(DeviceId),
}

#[derive(Serialize, Deserialize)]
struct BundleWire {
    certificate: SignedWire,
    one_time_keys: Vec<SignedPrekey>,
    fallback: SignedPrekey,
}

/// What a device publishes at its relay: certificate, one-time keys and a fallback key.
///
/// A decoded bundle has had every key signature checked against its certificate (and the
/// certificate against the identity key it names); [`PrekeyBundle::check_listed`] then ties the
/// certificate to the user's device list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// The device's certificate.
    pub certificate: SignedDeviceCertificate,
    /// Signed one-time keys, each to be handed out once.
    pub one_time_keys: Vec<SignedPrekey>,
    /// The signed fallback key, handed out when one-time keys run out.
    pub fallback: SignedPrekey,
}

impl PrekeyBundle {
    /// Generates `count` new one-time keys and a new fallback key in the device's account,
    /// signs them and marks them published. Persist the device keys after calling this, before
    /// publishing, so the private halves are never lost.
    pub fn generate(
        device: &mut DeviceKeys,
        certificate: SignedDeviceCertificate,
        count: usize,
    ) -> Result<Self, PrekeyError> {
        Self::generate_keeping(device, certificate, count, None)
    }

    /// Like [`PrekeyBundle::generate`], but with `fallback` (this device's current signed
    /// fallback key, from an earlier bundle) instead of a new one when given. A device with
    /// several relays publishes one fallback key to all of them: the account keeps only the
    /// current and the previous fallback key, so a new one per relay would leave a relay
    /// serving a key the device has already discarded.
    pub fn generate_keeping(
        device: &mut DeviceKeys,
        certificate: SignedDeviceCertificate,
        count: usize,
        fallback: Option<SignedPrekey>,
    ) -> Result<Self, PrekeyError> {
        if count > MAX_ONE_TIME_KEYS_PER_BUNDLE {
            return Err(PrekeyError::TooManyKeys(count));
        }
        if fallback.is_some_and(|f| !f.fallback) {
            return Err(PrekeyError::WrongSlot);
        }
        let account = device.account_mut();
        let created = account.generate_one_time_keys(count).created;
        let fallback_key = match fallback {
            Some(f) => f.key,
            None => {
                account.generate_fallback_key();
                account
                    .fallback_key()
                    .values()
                    .next()
                    .map(|k| k.to_bytes())
                    .ok_or(PrekeyError::WrongSlot)?
            }
        };
        account.mark_keys_as_published();
        let one_time_keys = created
            .iter()
            .map(|k| SignedPrekey::sign(device, k.to_bytes(), false))
            .collect();
        let fallback = match fallback {
            Some(f) => f,
            None => SignedPrekey::sign(device, fallback_key, true),
        };
        Ok(PrekeyBundle {
            certificate,
            one_time_keys,
            fallback,
        })
    }

    /// Encodes the bundle.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PrekeyError> {
        Ok(codec::encode(
            Kind::PrekeyBundle,
            &BundleWire {
                certificate: self.certificate.wire(),
                one_time_keys: self.one_time_keys.clone(),
                fallback: self.fallback,
            },
        )?)
    }

    /// Decodes a bundle and checks every signature in it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PrekeyError> {
        let wire: BundleWire = codec::decode(Kind::PrekeyBundle, bytes)?;
        if wire.one_time_keys.len() > MAX_ONE_TIME_KEYS_PER_BUNDLE {
            return Err(PrekeyError::TooManyKeys(wire.one_time_keys.len()));
        }
        let certificate = SignedDeviceCertificate::from_wire(wire.certificate)?;
        if !wire.fallback.fallback || wire.one_time_keys.iter().any(|k| k.fallback) {
            return Err(PrekeyError::WrongSlot);
        }
        wire.fallback.verify(&certificate)?;
        for key in &wire.one_time_keys {
            key.verify(&certificate)?;
        }
        Ok(PrekeyBundle {
            certificate,
            one_time_keys: wire.one_time_keys,
            fallback: wire.fallback,
        })
    }

    /// Checks that the bundle's certificate is the one for an active device in `list`.
    pub fn check_listed(&self, list: &DeviceList) -> Result<(), PrekeyError> {
        check_listed(&self.certificate, list)
    }

    /// The claim a relay hands out for one of this bundle's keys.
    pub fn claim(&self, prekey: SignedPrekey) -> ClaimedPrekey {
        ClaimedPrekey {
            certificate: self.certificate.clone(),
            prekey,
        }
    }
}

fn check_listed(
    certificate: &SignedDeviceCertificate,
    list: &DeviceList,
) -> Result<(), PrekeyError> {
    let device = certificate.certificate().device_id;
    let listed = list
        .active_certificate(&device)
        .ok_or(PrekeyError::NotListed(device))?;
    if listed != certificate.certificate() {
        return Err(PrekeyError::CertificateMismatch(device));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct ClaimWire {
    certificate: SignedWire,
    prekey: SignedPrekey,
}

/// One prekey as a relay hands it to a claimer, with the certificate of its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedPrekey {
    /// The device's certificate.
    pub certificate: SignedDeviceCertificate,
    /// The claimed key.
    pub prekey: SignedPrekey,
}

impl ClaimedPrekey {
    /// Encodes the claim.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PrekeyError> {
        Ok(codec::encode(
            Kind::ClaimedPrekey,
            &ClaimWire {
                certificate: self.certificate.wire(),
                prekey: self.prekey,
            },
        )?)
    }

    /// Decodes a claim (the certificate's own signature is checked; call
    /// [`ClaimedPrekey::verify`] before use).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PrekeyError> {
        let wire: ClaimWire = codec::decode(Kind::ClaimedPrekey, bytes)?;
        Ok(ClaimedPrekey {
            certificate: SignedDeviceCertificate::from_wire(wire.certificate)?,
            prekey: wire.prekey,
        })
    }

    /// Checks the full chain: the device is active in `list` (whose identity key the caller
    /// trusts) with this very certificate, and the key is signed by that device.
    pub fn verify(&self, list: &DeviceList) -> Result<VerifiedPrekey, PrekeyError> {
        self.certificate.check_identity(&list.identity_key)?;
        check_listed(&self.certificate, list)?;
        self.prekey.verify(&self.certificate)?;
        let cert = self.certificate.certificate();
        Ok(VerifiedPrekey {
            user_id: cert.user_id,
            device_id: cert.device_id,
            curve25519: cert.curve25519,
            one_time_key: self.prekey.key,
            fallback: self.prekey.fallback,
        })
    }
}

/// A prekey whose chain of trust has been checked; the input to starting a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedPrekey {
    pub(crate) user_id: UserId,
    pub(crate) device_id: DeviceId,
    pub(crate) curve25519: [u8; 32],
    pub(crate) one_time_key: [u8; 32],
    pub(crate) fallback: bool,
}

impl VerifiedPrekey {
    /// The device the key belongs to.
    pub const fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The user the device belongs to.
    pub const fn user_id(&self) -> UserId {
        self.user_id
    }

    /// Whether the fallback key was used (one-time keys had run out).
    pub const fn is_fallback(&self) -> bool {
        self.fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKey;

    fn setup() -> (IdentityKey, DeviceKeys, DeviceList, PrekeyBundle) {
        let id = IdentityKey::generate().unwrap();
        let mut dev = DeviceKeys::generate().unwrap();
        let cert = dev.certify(&id, "laptop", 1).unwrap();
        let list = DeviceList::first(&id, cert.clone(), 1);
        let bundle = PrekeyBundle::generate(&mut dev, cert, 5).unwrap();
        (id, dev, list, bundle)
    }

    /// With several relays, each gets a bundle: a fallback key kept across them stays usable
    /// however many bundles follow, while a new one per bundle leaves the first relay serving
    /// a key the account has discarded (the account keeps the current and the previous one).
    #[test]
    fn a_kept_fallback_key_stays_usable_across_bundles() {
        use crate::session::PeerSessions;
        let (_, mut bob, list, first) = setup();
        let cert = first.certificate.clone();
        for _ in 0..3 {
            let next =
                PrekeyBundle::generate_keeping(&mut bob, cert.clone(), 2, Some(first.fallback))
                    .unwrap();
            assert_eq!(next.fallback, first.fallback);
        }
        let session_from = |bundle: &PrekeyBundle, bob: &mut DeviceKeys| {
            let alice = DeviceKeys::generate().unwrap();
            let claim = bundle.claim(bundle.fallback).verify(&list).unwrap();
            let mut out = PeerSessions::new(bob.device_id(), bob.curve25519());
            out.start(&alice, &claim).unwrap();
            let ct = out.encrypt(b"hello").unwrap();
            let mut inbound = PeerSessions::new(alice.device_id(), alice.curve25519());
            inbound.decrypt(bob, &ct).map(|d| d.plaintext.to_vec())
        };
        assert_eq!(session_from(&first, &mut bob).unwrap(), b"hello".to_vec());
        // Control: new fallback keys in between discard the one the first relay serves.
        for _ in 0..2 {
            PrekeyBundle::generate(&mut bob, cert.clone(), 0).unwrap();
        }
        assert!(session_from(&first, &mut bob).is_err());
        // A claimed one-time key is never a fallback key, so it cannot be kept.
        assert!(
            PrekeyBundle::generate_keeping(&mut bob, cert, 0, Some(first.one_time_keys[0]))
                .is_err()
        );
    }

    #[test]
    fn bundle_round_trip_and_claim_verifies() {
        let (_, dev, list, bundle) = setup();
        let bytes = bundle.to_bytes().unwrap();
        let back = PrekeyBundle::from_bytes(&bytes).unwrap();
        assert_eq!(back, bundle);
        back.check_listed(&list).unwrap();
        assert_eq!(back.one_time_keys.len(), 5);
        let claim = back.claim(back.one_time_keys[0]);
        let claim = ClaimedPrekey::from_bytes(&claim.to_bytes().unwrap()).unwrap();
        let v = claim.verify(&list).unwrap();
        assert_eq!(v.device_id(), dev.device_id());
        assert!(!v.is_fallback());
        assert!(
            back.claim(back.fallback)
                .verify(&list)
                .unwrap()
                .is_fallback()
        );
    }

    #[test]
    fn forged_key_refused() {
        let (_, _, list, bundle) = setup();
        let mut forged = bundle.one_time_keys[0];
        forged.key[0] ^= 1;
        assert!(matches!(
            bundle.claim(forged).verify(&list),
            Err(PrekeyError::BadSignature(_))
        ));
        // A one-time key's signature does not carry over to the fallback slot.
        let mut slot = bundle.one_time_keys[1];
        slot.fallback = true;
        assert!(bundle.claim(slot).verify(&list).is_err());
    }

    #[test]
    fn unlisted_or_revoked_device_refused() {
        let (id, dev, list, bundle) = setup();
        let (_, _, other_list, _) = setup();
        assert!(bundle.claim(bundle.fallback).verify(&other_list).is_err());
        let revoked = list.with_revoked(&dev.device_id(), 5).unwrap();
        assert_eq!(
            bundle.claim(bundle.fallback).verify(&revoked),
            Err(PrekeyError::NotListed(dev.device_id()))
        );
        // A key signed by a device key that is not in the user's list is refused even if the
        // attacker holds a validly signed certificate of their own.
        let mut mallory = DeviceKeys::generate().unwrap();
        let mcert = mallory.certify(&id, "stolen-id?", 1).unwrap();
        let mbundle = PrekeyBundle::generate(&mut mallory, mcert, 1).unwrap();
        assert!(matches!(
            mbundle.claim(mbundle.fallback).verify(&list),
            Err(PrekeyError::NotListed(_))
        ));
    }

    #[test]
    fn bundle_bit_flips_refused() {
        let (_, _, _, bundle) = setup();
        let bytes = bundle.to_bytes().unwrap();
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(PrekeyBundle::from_bytes(&bad).is_err(), "byte {i}");
        }
    }
}
