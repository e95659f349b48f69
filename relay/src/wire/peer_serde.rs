//! Serde helpers: a `PeerId` travels as its multihash bytes (a CBOR byte string).

use libp2p::PeerId;
use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// `#[serde(with = "peer_serde::one")]` for a single `PeerId`.
pub(crate) mod one {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&p.to_bytes())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        PeerId::from_bytes(&bytes).map_err(|e| D::Error::custom(format!("bad peer id: {e}")))
    }
}

/// `#[serde(with = "peer_serde::many")]` for a `Vec<PeerId>`.
pub(crate) mod many {
    use super::*;
    use serde::ser::SerializeSeq;

    pub(crate) fn serialize<S: Serializer>(ps: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(ps.len()))?;
        for p in ps {
            seq.serialize_element(&serde_bytes::Bytes::new(&p.to_bytes()))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        let raw = Vec::<serde_bytes::ByteBuf>::deserialize(d)?;
        raw.iter()
            .map(|b| {
                PeerId::from_bytes(b).map_err(|e| D::Error::custom(format!("bad peer id: {e}")))
            })
            .collect()
    }
}
