//! Ids that people read as text and machines as bytes.
//!
//! [`UserId`](crate::UserId), [`DeviceId`](crate::DeviceId) and
//! [`GroupId`](crate::group::GroupId) serialize as their `Display` text (hex for users and
//! groups, the base58 PeerId for devices) when the format is human-readable (JSON: the
//! local API, files in a node's home), and as a CBOR byte string otherwise (every wire and
//! stored record, unchanged). Text parses back through `FromStr`, of either case for hex.

use std::{fmt, marker::PhantomData, str::FromStr};

use serde::de::{self, Unexpected, Visitor};

/// Why a string is not an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not {expected}")]
pub struct ParseIdError {
    /// What an id of the kind looks like, such as "a user id (32 hex digits)".
    pub expected: &'static str,
}

/// Reads an id from its text, for human-readable deserializers.
pub(crate) struct TextVisitor<T>(PhantomData<T>);

impl<T> TextVisitor<T> {
    pub(crate) const fn new() -> Self {
        TextVisitor(PhantomData)
    }
}

impl<T: FromStr<Err = ParseIdError>> Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id as a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|e: ParseIdError| E::invalid_value(Unexpected::Str(v), &e.expected))
    }
}

/// Gives an id type of `$len` bytes (with `from_bytes`, `as_bytes` and `Display`) its
/// `FromStr` (through `$parse`, `None` for text that is not one) and its serde form: text
/// for human-readable formats, a byte string otherwise.
macro_rules! text_id {
    ($ty:ident, $len:literal, $expected:literal, $parse:expr) => {
        impl ::std::str::FromStr for $ty {
            type Err = $crate::text_id::ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let parse: fn(&str) -> Option<$ty> = $parse;
                parse(s).ok_or($crate::text_id::ParseIdError {
                    expected: $expected,
                })
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    ::serde_bytes::serialize(self.as_bytes(), s)
                }
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    d.deserialize_str($crate::text_id::TextVisitor::<$ty>::new())
                } else {
                    ::serde_bytes::deserialize::<[u8; $len], D>(d).map($ty::from_bytes)
                }
            }
        }
    };
}
pub(crate) use text_id;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::{DeviceId, UserId, group::GroupId};

    fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn json_sees_the_text_form() {
        let user = UserId::from_bytes([0xab; 16]);
        let group = GroupId::from_bytes([0x01; 16]);
        let device = DeviceId::from_bytes([7; 32]);
        let hex_user = "ab".repeat(16);
        assert_eq!(
            serde_json::to_string(&user).unwrap(),
            format!("\"{hex_user}\"")
        );
        assert_eq!(
            serde_json::to_string(&group).unwrap(),
            format!("\"{}\"", "01".repeat(16))
        );
        assert_eq!(
            serde_json::to_string(&device).unwrap(),
            format!("\"{}\"", device.to_peer_id_string())
        );
        assert_eq!(
            serde_json::from_str::<UserId>(&format!("\"{hex_user}\"")).unwrap(),
            user
        );
        assert_eq!(
            serde_json::from_str::<UserId>(&format!("\"{}\"", hex_user.to_uppercase())).unwrap(),
            user
        );
        assert_eq!(
            serde_json::from_str::<GroupId>(&serde_json::to_string(&group).unwrap()).unwrap(),
            group
        );
        assert_eq!(
            serde_json::from_str::<DeviceId>(&serde_json::to_string(&device).unwrap()).unwrap(),
            device
        );
        // As map keys too (a file keyed by user id keeps reading).
        let map: BTreeMap<UserId, u8> =
            serde_json::from_str(&format!("{{\"{hex_user}\": 1}}")).unwrap();
        assert_eq!(map.get(&user), Some(&1));
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            format!("{{\"{hex_user}\":1}}")
        );
    }

    #[test]
    fn json_refuses_what_is_not_an_id_and_says_why() {
        let e = serde_json::from_str::<UserId>("\"abc\"").unwrap_err();
        assert!(e.to_string().contains("a user id (32 hex digits)"), "{e}");
        let e = serde_json::from_str::<DeviceId>(&format!("\"{}\"", "ab".repeat(32))).unwrap_err();
        assert!(e.to_string().contains("a device id"), "{e}");
        assert!(serde_json::from_str::<GroupId>("\"\"").is_err());
        assert!(serde_json::from_str::<GroupId>("[1,2,3]").is_err());
        assert!(serde_json::from_str::<UserId>("7").is_err());
        assert_eq!(
            "zz".parse::<UserId>().unwrap_err().to_string(),
            "not a user id (32 hex digits)"
        );
    }

    #[test]
    fn cbor_stays_a_byte_string() {
        let user = UserId::from_bytes([0xab; 16]);
        let mut want = vec![0x50];
        want.extend([0xab; 16]);
        assert_eq!(cbor(&user), want);
        let group = GroupId::from_bytes([0x01; 16]);
        let mut want = vec![0x50];
        want.extend([0x01; 16]);
        assert_eq!(cbor(&group), want);
        let device = DeviceId::from_bytes([7; 32]);
        let mut want = vec![0x58, 0x20];
        want.extend([7; 32]);
        assert_eq!(cbor(&device), want);
        let back: DeviceId = ciborium::from_reader(cbor(&device).as_slice()).unwrap();
        assert_eq!(back, device);
        let back: UserId = ciborium::from_reader(cbor(&user).as_slice()).unwrap();
        assert_eq!(back, user);
        // A byte string of the wrong length is refused.
        assert!(ciborium::from_reader::<UserId, _>([0x41, 0x00].as_slice()).is_err());
    }
}
