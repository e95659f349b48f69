//! Entry points for the fuzz targets under `crypto/fuzz/`, shared with the test that replays the
//! committed corpus on every `cargo test`. Each runs one decoder over arbitrary bytes; the only
//! requirement is that it returns (an error is fine) without panicking or allocating without
//! bound.

use std::io::Cursor;

use crate::device::{DeviceKeys, SignedDeviceCertificate};
use crate::device_list::SignedDeviceList;
use crate::group::{GroupMessage, InboundSenderKey, OutboundSenderKey, SenderKeyDistribution};
use crate::identity::{IdentityKey, IdentityPublicKey, UserId};
use crate::media::{self, MediaKey};
use crate::prekey::{ClaimedPrekey, PrekeyBundle};
use crate::relay_record::SignedRelayRecord;
use crate::safety::SafetyNumber;
use crate::sealed::{self, Secret32};
use crate::session::{self, PeerSessions};

/// A fixed key for the fuzz targets that need one (sealed records, media).
pub const FUZZ_KEY: [u8; 32] = [7; 32];

/// A fuzz target: its name (the fuzz binary and corpus directory) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("device_certificate", device_certificate),
    ("device_list", device_list),
    ("prekey_bundle", prekey_bundle),
    ("claimed_prekey", claimed_prekey),
    ("pairwise_message", pairwise_message),
    ("group_message", group_message),
    ("sender_key_distribution", sender_key_distribution),
    ("pickles", pickles),
    ("sealed", sealed_record),
    ("media", media_stream),
    ("safety_qr", safety_qr),
    ("provisioning", provisioning),
    ("backup", backup_file),
    ("relay_record", relay_record),
];

/// Runs the target called `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

fn provisioning(data: &[u8]) {
    if let Ok(key) = crate::provision::ProvisionKey::generate() {
        let _ = key.open(data);
    }
}

fn device_certificate(data: &[u8]) {
    let _ = SignedDeviceCertificate::from_bytes(data);
}

fn relay_record(data: &[u8]) {
    let _ = SignedRelayRecord::from_bytes(data);
}

fn device_list(data: &[u8]) {
    let _ = SignedDeviceList::from_bytes(data);
}

fn prekey_bundle(data: &[u8]) {
    let _ = PrekeyBundle::from_bytes(data);
}

fn claimed_prekey(data: &[u8]) {
    let _ = ClaimedPrekey::from_bytes(data);
}

fn pairwise_message(data: &[u8]) {
    let _ = session::decode_message(data);
}

fn group_message(data: &[u8]) {
    let _ = GroupMessage::from_bytes(data);
}

fn sender_key_distribution(data: &[u8]) {
    let _ = SenderKeyDistribution::from_bytes(data);
}

fn pickles(data: &[u8]) {
    let _ = PeerSessions::from_pickle(data);
    let _ = OutboundSenderKey::from_pickle(data);
    let _ = InboundSenderKey::from_pickle(data);
    let _ = DeviceKeys::from_secret_bytes(data);
    let _ = IdentityKey::from_secret_bytes(data);
}

/// The backup file's header checks (everything before the Argon2id derivation, which a fuzzer
/// must not run at the costs a file may name).
fn backup_file(data: &[u8]) {
    let _ = crate::passphrase::check_backup_header(data);
}

fn sealed_record(data: &[u8]) {
    let _ = sealed::open(&Secret32::new(FUZZ_KEY), b"fuzz", data);
}

fn media_stream(data: &[u8]) {
    let _ = media::decrypt_stream(
        &MediaKey::from_bytes(FUZZ_KEY),
        Cursor::new(data),
        std::io::sink(),
    );
}

fn safety_qr(data: &[u8]) {
    let user = UserId::from_bytes([1; 16]);
    let key = IdentityPublicKey::from_bytes([2; 32]);
    let _ = SafetyNumber::compute(&user, &key, &user, &key).matches_scanned(data);
}
