//! The wire format shared by every Tern relay protocol.
//!
//! Every frame is one byte of format version ([`VERSION`]) followed by one CBOR value. A
//! frame travels alone on a libp2p request/response stream, so its length is the stream's
//! length; readers stop after a per-protocol cap (see [`codec`]). Decoding never panics:
//! every failure is a [`DecodeError`].

/// Gives a protocol's request or response type its `encode`, `decode` and `from_frame`,
/// bounded by the protocol's cap, so every protocol frames its messages the same way.
macro_rules! framed {
    ($ty:ident, $what:expr, $max:expr) => {
        impl $ty {
            /// Encodes the message as a frame.
            pub fn encode(&self) -> Result<Vec<u8>, $crate::wire::EncodeError> {
                $crate::wire::encode($what, self, $max)
            }

            /// Decodes a frame.
            pub fn decode(bytes: &[u8]) -> Result<Self, $crate::wire::DecodeError> {
                $crate::wire::decode($what, bytes, $max)
            }

            /// Decodes a message from a codec frame.
            pub fn from_frame(
                frame: &$crate::wire::Frame,
            ) -> Result<Self, $crate::wire::DecodeError> {
                frame.decode($what, $max)
            }
        }
    };
}

pub mod codec;
pub mod deposit;
pub mod directory;
pub mod mailbox;
mod peer_serde;
pub mod presence;
#[cfg(test)]
mod proptests;
pub mod stream;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use codec::{Frame, FrameCodec};

/// The frame format version this build writes and the only one it reads.
///
/// Version 1 is the first version. A future version bumps this byte and the protocol id
/// (`/tern/mailbox/2` ...), and a relay keeps serving the old id while clients move.
pub const VERSION: u8 = 1;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame had no bytes at all, not even a version.
    #[error("empty {what} frame")]
    Empty {
        /// Which kind of frame was expected.
        what: &'static str,
    },
    /// The frame's version byte is not one this build understands.
    #[error("{what} frame has unsupported version {found} (this build speaks {VERSION})")]
    UnsupportedVersion {
        /// Which kind of frame was expected.
        what: &'static str,
        /// The version byte found.
        found: u8,
    },
    /// The frame is longer than the cap for its kind.
    #[error("{what} frame of at least {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which kind of frame was expected.
        what: &'static str,
        /// How many bytes were seen (at least; readers stop past the cap).
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The CBOR body is not a valid frame of this kind, or bytes follow it.
    #[error("malformed {what} frame: {reason}")]
    Malformed {
        /// Which kind of frame was expected.
        what: &'static str,
        /// What the CBOR decoder or validator said.
        reason: String,
    },
}

/// Why a frame could not be encoded (in practice: a value that exceeds a wire limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The CBOR serialiser refused the value.
    #[error("cannot encode {what} frame: {reason}")]
    Cbor {
        /// Which kind of frame.
        what: &'static str,
        /// What the serialiser said.
        reason: String,
    },
    /// The encoded frame is longer than the cap its reader will apply.
    #[error("{what} frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which kind of frame.
        what: &'static str,
        /// Encoded length.
        len: usize,
        /// The cap.
        max: usize,
    },
}

/// Encodes `msg` as a version-prefixed CBOR frame no longer than `max` bytes.
pub fn encode<T: Serialize>(
    what: &'static str,
    msg: &T,
    max: usize,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.push(VERSION);
    ciborium::into_writer(msg, &mut out).map_err(|e| EncodeError::Cbor {
        what,
        reason: e.to_string(),
    })?;
    if out.len() > max {
        return Err(EncodeError::TooLarge {
            what,
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Decodes a version-prefixed CBOR frame of at most `max` bytes.
///
/// Trailing bytes after the CBOR value are an error, so one frame has one meaning.
pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    let (&version, mut body) = bytes.split_first().ok_or(DecodeError::Empty { what })?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what,
            found: version,
        });
    }
    let value: T = ciborium::from_reader(&mut body).map_err(|e| DecodeError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if !body.is_empty() {
        return Err(DecodeError::Malformed {
            what,
            reason: format!("{} trailing bytes", body.len()),
        });
    }
    Ok(value)
}

/// Error codes carried in `Error` responses of every protocol. Numbers are fixed forever
/// and never reused; a code this build does not know decodes as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1: the frame could not be decoded (malformed CBOR, wrong shape, trailing bytes).
    Malformed,
    /// 2: the frame's version byte is not supported by the relay.
    UnsupportedVersion,
    /// 3: the frame or the ciphertext in it is larger than the relay accepts.
    TooLarge,
    /// 4: a list in the request is empty or longer than allowed.
    BadRequest,
    /// 5: a recipient mailbox holds its maximum number of messages.
    QuotaCount,
    /// 6: a recipient mailbox holds its maximum number of bytes.
    QuotaBytes,
    /// 7: the sender exceeded its rate limit; `retry_after_ms` says when to try again.
    RateLimited,
    /// 8: the relay's storage is full; nothing already acknowledged is lost.
    StorageFull,
    /// 9: the relay is busy or shutting down; retry later.
    Unavailable,
    /// 10: the request is not allowed for this peer (e.g. a push URL outside the allow-list).
    NotAllowed,
    /// 11: a signature or certificate did not verify.
    BadSignature,
    /// 12: a device list or bundle is older than (or as old as) the stored one.
    Stale,
    /// 13: nothing is stored under that key.
    NotFound,
    /// 14: an internal error (storage failure); the request had no effect.
    Internal,
    /// 15: the blob's time to live has passed (it is deleted at the next collection, after
    /// which the answer is `NotFound`).
    Expired,
    /// 16: a blob chunk came out of order (the relay takes chunks in order from its mark),
    /// or a range asked for lies outside the blob.
    BadIndex,
    /// 17: a blob chunk does not match its hash in the manifest; nothing of it was stored.
    HashMismatch,
    /// 18: the blob's upload has not finished, so it cannot be downloaded yet.
    Incomplete,
    /// 19: the deposit grant shown for a mailbox is not (or no longer) one its owner
    /// registered: the sender was never granted, or its grant was revoked.
    NoGrant,
    /// 20: a deposit without a grant, and the mailbox's introductions share (or this
    /// sender's part of it) is full; retry later, or once the owner has granted the sender.
    IntroFull,
    /// 21: the sender's (or its grant's) share of the mailbox is full; retry later.
    ShareFull,
    /// 22: a deposit on a deposit stream named (`follows`) an earlier deposit of the
    /// stream that was refused, so it was not stored either: it would have overtaken that
    /// one. Send it again after the one it follows.
    OutOfOrder,
    /// A code this build does not know.
    Other(u16),
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        match v {
            1 => Self::Malformed,
            2 => Self::UnsupportedVersion,
            3 => Self::TooLarge,
            4 => Self::BadRequest,
            5 => Self::QuotaCount,
            6 => Self::QuotaBytes,
            7 => Self::RateLimited,
            8 => Self::StorageFull,
            9 => Self::Unavailable,
            10 => Self::NotAllowed,
            11 => Self::BadSignature,
            12 => Self::Stale,
            13 => Self::NotFound,
            14 => Self::Internal,
            15 => Self::Expired,
            16 => Self::BadIndex,
            17 => Self::HashMismatch,
            18 => Self::Incomplete,
            19 => Self::NoGrant,
            20 => Self::IntroFull,
            21 => Self::ShareFull,
            22 => Self::OutOfOrder,
            other => Self::Other(other),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        match c {
            ErrorCode::Malformed => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::TooLarge => 3,
            ErrorCode::BadRequest => 4,
            ErrorCode::QuotaCount => 5,
            ErrorCode::QuotaBytes => 6,
            ErrorCode::RateLimited => 7,
            ErrorCode::StorageFull => 8,
            ErrorCode::Unavailable => 9,
            ErrorCode::NotAllowed => 10,
            ErrorCode::BadSignature => 11,
            ErrorCode::Stale => 12,
            ErrorCode::NotFound => 13,
            ErrorCode::Internal => 14,
            ErrorCode::Expired => 15,
            ErrorCode::BadIndex => 16,
            ErrorCode::HashMismatch => 17,
            ErrorCode::Incomplete => 18,
            ErrorCode::NoGrant => 19,
            ErrorCode::IntroFull => 20,
            ErrorCode::ShareFull => 21,
            ErrorCode::OutOfOrder => 22,
            ErrorCode::Other(v) => v,
        }
    }
}

impl ErrorCode {
    /// A short stable label, used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedVersion => "unsupported_version",
            Self::TooLarge => "too_large",
            Self::BadRequest => "bad_request",
            Self::QuotaCount => "quota_count",
            Self::QuotaBytes => "quota_bytes",
            Self::RateLimited => "rate_limited",
            Self::StorageFull => "storage_full",
            Self::Unavailable => "unavailable",
            Self::NotAllowed => "not_allowed",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::NotFound => "not_found",
            Self::Internal => "internal",
            Self::Expired => "expired",
            Self::BadIndex => "bad_index",
            Self::HashMismatch => "hash_mismatch",
            Self::Incomplete => "incomplete",
            Self::NoGrant => "no_grant",
            Self::IntroFull => "intro_full",
            Self::ShareFull => "share_full",
            Self::OutOfOrder => "out_of_order",
            Self::Other(_) => "other",
        }
    }

    /// Every known code, for metrics that list rejects by reason.
    pub const ALL: [ErrorCode; 22] = [
        Self::Malformed,
        Self::UnsupportedVersion,
        Self::TooLarge,
        Self::BadRequest,
        Self::QuotaCount,
        Self::QuotaBytes,
        Self::RateLimited,
        Self::StorageFull,
        Self::Unavailable,
        Self::NotAllowed,
        Self::BadSignature,
        Self::Stale,
        Self::NotFound,
        Self::Internal,
        Self::Expired,
        Self::BadIndex,
        Self::HashMismatch,
        Self::Incomplete,
        Self::NoGrant,
        Self::IntroFull,
        Self::ShareFull,
        Self::OutOfOrder,
    ];

    /// The code for a frame that failed to decode.
    pub fn for_decode_error(e: &DecodeError) -> Self {
        match e {
            DecodeError::UnsupportedVersion { .. } => Self::UnsupportedVersion,
            DecodeError::TooLarge { .. } => Self::TooLarge,
            DecodeError::Empty { .. } | DecodeError::Malformed { .. } => Self::Malformed,
        }
    }
}

/// An `Error` response body, shared by every protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// What went wrong.
    pub code: ErrorCode,
    /// For [`ErrorCode::RateLimited`] and [`ErrorCode::Unavailable`]: when to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    /// A rejection without a retry hint.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            retry_after_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let bytes = encode("t", &vec![1u32, 2, 3], 100).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<Vec<u32>>("t", &bytes, 100).unwrap(), vec![1, 2, 3]);
        assert!(matches!(
            decode::<Vec<u32>>("t", &[], 100),
            Err(DecodeError::Empty { .. })
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            decode::<Vec<u32>>("t", &v2, 100),
            Err(DecodeError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            decode::<Vec<u32>>("t", &bytes, 3),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Vec<u32>>("t", &trailing, 100),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            encode("t", &vec![0u8; 50], 10),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn error_codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from(u16::from(c)), c);
        }
        assert_eq!(ErrorCode::from(999), ErrorCode::Other(999));
    }
}
