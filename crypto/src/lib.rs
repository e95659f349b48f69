//! # tern-crypto
//!
//! The cryptographic floor of Tern: user identity keys, device keys and certificates, signed
//! device lists, prekey bundles, pairwise Olm sessions managed Sesame-style per remote device,
//! Megolm sender keys for groups, the chunked media cipher, safety numbers and sealed records.
//!
//! Everything here is synchronous and does no I/O: callers pass in bytes, `now` and (where a
//! trait asks for it) storage. Every record that leaves this crate is encoded by [`codec`]:
//! a format version, a record kind, then CBOR, with a size cap per kind. Secrets are zeroized on
//! drop and their `Debug` output never shows key bytes.
//!
//! Choices and their reasons are written down in `docs/decisions.md`; formats in `docs/crypto.md`.
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod codec;
pub mod consts;
pub mod device;
pub mod device_list;
#[doc(hidden)]
pub mod fuzzing;
pub mod grant;
pub mod group;
pub mod hex;
pub mod identity;
pub mod media;
pub mod passphrase;
pub mod prekey;
pub mod provision;
pub mod random;
pub mod relay_record;
pub mod safety;
pub mod sealed;
pub mod session;
mod sig;
pub mod text_id;
pub mod time;

pub use codec::{DecodeError, Kind};
pub use device::{DeviceCertificate, DeviceId, DeviceKeys, SignedDeviceCertificate};
pub use device_list::{DeviceEntry, DeviceList, DeviceListError, DeviceState, SignedDeviceList};
pub use identity::{IdentityKey, IdentityPublicKey, UserId};
pub use random::RandomError;
pub use sig::BadSignature;
