//! `/tern/directory/1`: signed device lists and prekey bundles.
//!
//! The relay stores a user's signed device list (only a successor with a higher version
//! replaces it) and each device's prekey bundle (certificate, signed one-time keys,
//! signed fallback key). A claim hands out one one-time key exactly once, or the fallback
//! key when none is left. Every signature is checked (with `tern-crypto`) before anything
//! is stored; claimers check the chain again themselves. The record bytes inside these
//! frames are `tern-crypto` records, versioned by that crate.

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{Rejection, peer_serde};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/directory/1");

/// Largest signed device list or prekey bundle carried (256 devices with certificates,
/// or 50 one-time keys, fit well under it).
pub const MAX_RECORD_BYTES: usize = 192 * 1024;
/// Length of a user id.
pub const USER_ID_BYTES: usize = 16;
/// Longest request frame.
pub const MAX_REQUEST_BYTES: usize = MAX_RECORD_BYTES + 1024;
/// Longest response frame.
pub const MAX_RESPONSE_BYTES: usize = MAX_RECORD_BYTES + 1024;

/// A request on `/tern/directory/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Store a signed device list. The caller must be an active device in it; it must be
    /// the first list for that user or a valid successor of the stored one.
    PublishDeviceList {
        /// `tern_crypto::SignedDeviceList` bytes.
        list: ByteBuf,
    },
    /// Fetch a user's signed device list.
    FetchDeviceList {
        /// The 16-byte user id.
        user: ByteBuf,
    },
    /// Store the caller's prekey bundle: replaces its certificate and fallback key and
    /// adds its one-time keys.
    PublishPrekeys {
        /// `tern_crypto::prekey::PrekeyBundle` bytes; its certificate must be the caller's.
        bundle: ByteBuf,
    },
    /// Claim one prekey of a device: a one-time key (removed as it is handed out) or the
    /// fallback key.
    ClaimPrekey {
        /// The device's user.
        user: ByteBuf,
        /// The device.
        #[serde(with = "peer_serde::one")]
        device: PeerId,
    },
    /// How many one-time keys the relay holds for the caller's own device; answered
    /// `Published`. Cheap, so a device can ask often and top up before it runs out.
    PrekeyCount,
}

/// A response on `/tern/directory/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Done.
    Ok,
    /// The stored signed device list.
    DeviceList {
        /// `tern_crypto::SignedDeviceList` bytes.
        list: ByteBuf,
    },
    /// A claimed prekey.
    Prekey {
        /// `tern_crypto::prekey::ClaimedPrekey` bytes.
        claim: ByteBuf,
        /// Whether it is the fallback key (no one-time key was left, or the relay's claim
        /// limits held the one-time keys back from this claimer).
        fallback: bool,
    },
    /// Prekeys stored (or counted, for `PrekeyCount`).
    Published {
        /// One-time keys the relay now holds for the device.
        one_time_keys: u32,
    },
    /// The request failed.
    Error(Rejection),
}

framed!(Request, "directory request", MAX_REQUEST_BYTES);
framed!(Response, "directory response", MAX_RESPONSE_BYTES);

/// The codec caps for this protocol.
pub fn codec() -> super::FrameCodec {
    super::FrameCodec::new(MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for r in [
            Request::PublishDeviceList {
                list: ByteBuf::from(vec![1; 10]),
            },
            Request::FetchDeviceList {
                user: ByteBuf::from(vec![2; USER_ID_BYTES]),
            },
            Request::ClaimPrekey {
                user: ByteBuf::from(vec![2; USER_ID_BYTES]),
                device: PeerId::random(),
            },
            Request::PrekeyCount,
        ] {
            assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        }
        let big = Request::PublishPrekeys {
            bundle: ByteBuf::from(vec![0; MAX_RECORD_BYTES]),
        };
        assert!(big.encode().is_ok());
    }
}
