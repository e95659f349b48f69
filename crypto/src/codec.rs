//! The envelope every record of this crate is written in.
//!
//! ```text
//! +---------+------+----------------------+
//! | version | kind | CBOR body            |
//! |  1 byte |1 byte| up to the kind's cap |
//! +---------+------+----------------------+
//! ```
//!
//! The version comes first so a future format can change everything after it. The kind stops a
//! record of one type from being accepted where another is expected (a device certificate is
//! never parsed as a prekey). Every kind has a size cap checked before any parsing, so a decoder
//! never allocates more than the cap no matter what the input claims.

use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::consts::FORMAT_VERSION;

/// Bytes taken by the version and kind in front of every record.
pub const HEADER_LEN: usize = 2;

/// What a record is. Numbers are fixed forever; a retired kind's number is never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// A device certificate signed by a user's identity key.
    DeviceCertificate = 1,
    /// A user's device list signed by the identity key.
    DeviceList = 2,
    /// A device's published prekeys: one-time keys and a fallback key.
    PrekeyBundle = 3,
    /// One prekey as handed to a claimer, with the device certificate it belongs to.
    ClaimedPrekey = 4,
    /// A pairwise (Olm) message.
    PairwiseMessage = 5,
    /// A group (Megolm) message.
    GroupMessage = 6,
    /// A sender-key distribution, sent to each member device over a pairwise session.
    SenderKeyDistribution = 7,
    /// The pickled sessions with one remote device. Contains secrets.
    PeerSessions = 8,
    /// A pickled outbound sender key. Contains secrets.
    OutboundSenderKey = 9,
    /// A pickled inbound sender key. Contains secrets.
    InboundSenderKey = 10,
    /// A user's identity secret key with its user id. Contains secrets.
    IdentitySecret = 11,
    /// A device's secret keys (network key and Olm account). Contains secrets.
    DeviceSecret = 12,
    /// A record sealed under a storage key.
    Sealed = 13,
    /// What a device sends a newly linked device of the same user (identity secret,
    /// contacts, groups), sealed to that device's one-time provisioning key.
    Provisioning = 14,
    /// A user's relay record for the DHT: relay addresses and device list, signed by the
    /// identity key.
    RelayRecord = 15,
}

impl Kind {
    /// Largest encoded record of this kind, header included.
    pub const fn max_len(self) -> usize {
        match self {
            Kind::DeviceCertificate => 1024,
            Kind::DeviceList => 320 * 1024,
            Kind::PrekeyBundle => 16 * 1024,
            Kind::ClaimedPrekey => 2 * 1024,
            Kind::PairwiseMessage => crate::consts::MAX_PAIRWISE_PLAINTEXT + 4 * 1024,
            Kind::GroupMessage => crate::consts::MAX_GROUP_PLAINTEXT + 4 * 1024,
            Kind::SenderKeyDistribution => 2 * 1024,
            Kind::PeerSessions => 256 * 1024,
            Kind::OutboundSenderKey => 4 * 1024,
            Kind::InboundSenderKey => 4 * 1024,
            Kind::IdentitySecret => 1024,
            Kind::DeviceSecret => 64 * 1024,
            Kind::Sealed => 512 * 1024,
            Kind::Provisioning => 64 * 1024,
            Kind::RelayRecord => crate::consts::MAX_RELAY_RECORD_BYTES,
        }
    }

    fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::DeviceCertificate,
            2 => Kind::DeviceList,
            3 => Kind::PrekeyBundle,
            4 => Kind::ClaimedPrekey,
            5 => Kind::PairwiseMessage,
            6 => Kind::GroupMessage,
            7 => Kind::SenderKeyDistribution,
            8 => Kind::PeerSessions,
            9 => Kind::OutboundSenderKey,
            10 => Kind::InboundSenderKey,
            11 => Kind::IdentitySecret,
            12 => Kind::DeviceSecret,
            13 => Kind::Sealed,
            14 => Kind::Provisioning,
            15 => Kind::RelayRecord,
            _ => return None,
        })
    }
}

/// Why bytes could not be decoded into a record.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than any valid record of the expected kind.
    #[error("{kind:?} record is {len} bytes, over the {max}-byte limit")]
    TooLong {
        /// The kind that was expected.
        kind: Kind,
        /// Length of the input.
        len: usize,
        /// The cap for that kind.
        max: usize,
    },
    /// The input is shorter than a record header.
    #[error("record is truncated ({len} bytes)")]
    Truncated {
        /// Length of the input.
        len: usize,
    },
    /// The record was written by a format version this build does not know.
    #[error(
        "record format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnknownVersion(u8),
    /// The record is of another kind than the one expected.
    #[error("expected a {expected:?} record, found kind {found}")]
    WrongKind {
        /// The kind that was expected.
        expected: Kind,
        /// The kind byte found.
        found: u8,
    },
    /// The body is not valid for the kind (bad CBOR, missing fields, wrong lengths).
    #[error("malformed {kind:?} record: {reason}")]
    Malformed {
        /// The kind that was expected.
        kind: Kind,
        /// What was wrong, without any record contents.
        reason: String,
    },
}

/// Why a record could not be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded record would exceed its kind's cap (for example a plaintext over the limit).
    #[error("{kind:?} record would be {len} bytes, over the {max}-byte limit")]
    TooLong {
        /// The kind being encoded.
        kind: Kind,
        /// The length it would have had.
        len: usize,
        /// The cap for that kind.
        max: usize,
    },
    /// The serializer failed (cannot happen for the types of this crate, but is not hidden).
    #[error("could not encode {kind:?} record: {reason}")]
    Serializer {
        /// The kind being encoded.
        kind: Kind,
        /// The serializer's message.
        reason: String,
    },
}

/// Encodes `body` as a record of `kind`.
pub fn encode<T: Serialize>(kind: Kind, body: &T) -> Result<Vec<u8>, EncodeError> {
    // Most records are a few hundred bytes: one allocation instead of several regrowths.
    let mut out = Vec::with_capacity(512);
    encode_into(kind, body, &mut out)?;
    Ok(out)
}

/// Encodes a record that contains secrets into a buffer that is wiped when dropped.
///
/// The buffer is sized for the kind's cap up front, so growing it never leaves a stale copy
/// behind in a reallocation.
pub fn encode_secret<T: Serialize>(
    kind: Kind,
    body: &T,
) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
    let mut out = Zeroizing::new(Vec::with_capacity(kind.max_len()));
    encode_into(kind, body, &mut out)?;
    Ok(out)
}

fn encode_into<T: Serialize>(kind: Kind, body: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    ciborium::into_writer(body, &mut *out).map_err(|e| EncodeError::Serializer {
        kind,
        reason: e.to_string(),
    })?;
    if out.len() > kind.max_len() {
        return Err(EncodeError::TooLong {
            kind,
            len: out.len(),
            max: kind.max_len(),
        });
    }
    Ok(())
}

/// Checks the header of `bytes` against `kind` and returns the body.
pub fn check_header(kind: Kind, bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() > kind.max_len() {
        return Err(DecodeError::TooLong {
            kind,
            len: bytes.len(),
            max: kind.max_len(),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(bytes[0]));
    }
    if Kind::from_u8(bytes[1]) != Some(kind) {
        return Err(DecodeError::WrongKind {
            expected: kind,
            found: bytes[1],
        });
    }
    Ok(&bytes[HEADER_LEN..])
}

/// Decodes a record of `kind` from `bytes`, refusing anything over the kind's cap.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, DecodeError> {
    let body = check_header(kind, bytes)?;
    let mut reader = body;
    let value = ciborium::from_reader(&mut reader).map_err(|e| malformed(kind, e))?;
    if !reader.is_empty() {
        return Err(DecodeError::Malformed {
            kind,
            reason: format!("{} trailing bytes", reader.len()),
        });
    }
    Ok(value)
}

/// Decodes like [`decode`], then refuses any encoding but the one this build writes.
///
/// CBOR and the protobuf-style Olm and Megolm encodings admit several byte strings for one
/// value (a text key sent as a byte string, a field under another tag). For messages that are
/// deduplicated by their bytes, every accepted message must have exactly one encoding, so an
/// altered copy is refused instead of decrypting as a second "different" message.
pub fn decode_canonical<T: Serialize + DeserializeOwned>(
    kind: Kind,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    let value: T = decode(kind, bytes)?;
    let again = encode(kind, &value).map_err(|e| malformed(kind, e))?;
    if again != bytes {
        return Err(malformed(kind, "non-canonical encoding"));
    }
    Ok(value)
}

/// Builds a [`DecodeError::Malformed`] from anything displayable.
pub(crate) fn malformed(kind: Kind, reason: impl std::fmt::Display) -> DecodeError {
    DecodeError::Malformed {
        kind,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trip_and_header_checks() {
        let s = Sample {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode(Kind::DeviceCertificate, &s).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(
            decode::<Sample>(Kind::DeviceCertificate, &bytes).unwrap(),
            s
        );

        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            decode::<Sample>(Kind::DeviceCertificate, &v2),
            Err(DecodeError::UnknownVersion(2))
        );
        assert!(matches!(
            decode::<Sample>(Kind::DeviceList, &bytes),
            Err(DecodeError::WrongKind { .. })
        ));
        assert!(matches!(
            decode::<Sample>(Kind::DeviceCertificate, &bytes[..1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Sample>(Kind::DeviceCertificate, &trailing),
            Err(DecodeError::Malformed { .. })
        ));
        let huge = vec![FORMAT_VERSION; Kind::DeviceCertificate.max_len() + 1];
        assert!(matches!(
            decode::<Sample>(Kind::DeviceCertificate, &huge),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn encode_refuses_over_cap() {
        let s = Sample {
            a: 1,
            b: "y".repeat(Kind::DeviceCertificate.max_len()),
        };
        assert!(matches!(
            encode(Kind::DeviceCertificate, &s),
            Err(EncodeError::TooLong { .. })
        ));
    }
}
