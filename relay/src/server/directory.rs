//! Directory checks: every signature is verified with `tern-crypto` before anything is
//! stored. These run on the blocking pool, never on the event loop.

use libp2p::PeerId;
use tern_crypto::{
    DeviceId, SignedDeviceList,
    device_list::DeviceListError,
    prekey::{PrekeyBundle, PrekeyError, SignedPrekey},
};

use super::storage::ListCheck;
use crate::wire::{self, ErrorCode};

/// Cap of one stored one-time-key record (a signed key is about 110 bytes of CBOR).
const MAX_ONE_TIME_RECORD_BYTES: usize = 512;
/// What a stored one-time-key record is called in errors.
const ONE_TIME_RECORD: &str = "one-time key record";

fn list_error(e: &DeviceListError) -> ErrorCode {
    match e {
        DeviceListError::Decode(_) => ErrorCode::Malformed,
        DeviceListError::BadSignature(_) => ErrorCode::BadSignature,
        DeviceListError::Stale { .. } => ErrorCode::Stale,
        DeviceListError::IdentityChanged => ErrorCode::NotAllowed,
        _ => ErrorCode::BadRequest,
    }
}

fn prekey_error(e: &PrekeyError) -> ErrorCode {
    match e {
        PrekeyError::Decode(_) => ErrorCode::Malformed,
        PrekeyError::BadSignature(_) | PrekeyError::Certificate(_) => ErrorCode::BadSignature,
        PrekeyError::NotListed(_) | PrekeyError::CertificateMismatch(_) => ErrorCode::NotAllowed,
        _ => ErrorCode::BadRequest,
    }
}

fn device_of(peer: &PeerId) -> Option<DeviceId> {
    DeviceId::from_peer_id_bytes(&peer.to_bytes())
}

fn decode_stored_list(bytes: &[u8]) -> Result<SignedDeviceList, ErrorCode> {
    SignedDeviceList::from_bytes(bytes).map_err(|e| {
        tracing::error!(error = %e, "stored device list does not verify");
        ErrorCode::Internal
    })
}

/// A verified device list ready to store.
#[derive(Debug)]
pub struct VerifiedList {
    /// The user id.
    pub user: Vec<u8>,
    /// The signed bytes as published.
    pub body: Vec<u8>,
    /// The successor check against whatever is stored.
    pub check: ListCheck,
}

/// Verifies a published device list: signatures, and the publisher being an active device
/// in it. The returned check refuses anything but a valid successor of the stored list.
pub fn verify_list(bytes: Vec<u8>, publisher: PeerId) -> Result<VerifiedList, ErrorCode> {
    let signed = SignedDeviceList::from_bytes(&bytes).map_err(|e| list_error(&e))?;
    let device = device_of(&publisher).ok_or(ErrorCode::NotAllowed)?;
    if signed.list().active_certificate(&device).is_none() {
        return Err(ErrorCode::NotAllowed);
    }
    let user = signed.list().user_id.as_bytes().to_vec();
    let next = signed.list().clone();
    let check = ListCheck(Box::new(move |stored: Option<&[u8]>| match stored {
        None => Ok(()),
        Some(b) => decode_stored_list(b)?
            .list()
            .check_successor(&next)
            .map_err(|e| list_error(&e)),
    }));
    Ok(VerifiedList {
        user,
        body: bytes,
        check,
    })
}

/// A verified prekey bundle ready to store.
#[derive(Debug)]
pub struct VerifiedBundle {
    /// The device (peer id bytes).
    pub device: Vec<u8>,
    /// Its user.
    pub user: Vec<u8>,
    /// The bundle without its one-time keys.
    pub bundle: Vec<u8>,
    /// The one-time keys as stored records.
    pub one_time: Vec<Vec<u8>>,
    /// Checks the device is listed in the stored device list.
    pub check: ListCheck,
}

/// Verifies a published prekey bundle: every key signature, the certificate, and that the
/// certificate is the publisher's own. The returned check ties it to the stored list.
pub fn verify_bundle(bytes: &[u8], publisher: PeerId) -> Result<VerifiedBundle, ErrorCode> {
    let bundle = PrekeyBundle::from_bytes(bytes).map_err(|e| prekey_error(&e))?;
    let cert = bundle.certificate.certificate();
    if Some(cert.device_id) != device_of(&publisher) {
        return Err(ErrorCode::NotAllowed);
    }
    let user = cert.user_id.as_bytes().to_vec();
    let one_time = bundle
        .one_time_keys
        .iter()
        .map(|k| wire::encode(ONE_TIME_RECORD, k, MAX_ONE_TIME_RECORD_BYTES))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ErrorCode::Internal)?;
    let stripped = PrekeyBundle {
        one_time_keys: Vec::new(),
        ..bundle.clone()
    }
    .to_bytes()
    .map_err(|_| ErrorCode::Internal)?;
    let check = ListCheck(Box::new(move |stored: Option<&[u8]>| {
        let list = decode_stored_list(stored.ok_or(ErrorCode::NotFound)?)?;
        bundle
            .check_listed(list.list())
            .map_err(|e| prekey_error(&e))
    }));
    Ok(VerifiedBundle {
        device: publisher.to_bytes(),
        user,
        bundle: stripped,
        one_time,
        check,
    })
}

/// Builds the claim for a stored bundle and one-time key (or its fallback key).
pub fn build_claim(bundle: &[u8], one_time: Option<&[u8]>) -> Result<(Vec<u8>, bool), ErrorCode> {
    let bundle = PrekeyBundle::from_bytes(bundle).map_err(|e| {
        tracing::error!(error = %e, "stored prekey bundle does not verify");
        ErrorCode::Internal
    })?;
    let prekey: SignedPrekey = match one_time {
        Some(record) => {
            wire::decode(ONE_TIME_RECORD, record, MAX_ONE_TIME_RECORD_BYTES).map_err(|e| {
                tracing::error!(error = %e, "stored one-time key is corrupt");
                ErrorCode::Internal
            })?
        }
        None => bundle.fallback,
    };
    let claim = bundle
        .claim(prekey)
        .to_bytes()
        .map_err(|_| ErrorCode::Internal)?;
    Ok((claim, one_time.is_none()))
}
