//! `/tern/presence/1`: heartbeats, away status, who may see it, queries and coalesced
//! updates to subscribers.
//!
//! Client → relay: [`Request::Heartbeat`], [`Request::SetAllowList`], [`Request::Query`],
//! [`Request::Subscribe`]. Relay → client: [`Request::Update`] (answered with
//! [`Response::Ok`]). A peer that has not allowed the asker looks exactly like a peer the
//! relay has never seen: [`State::Unknown`].

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::{Rejection, peer_serde};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/presence/1");

/// Most peers in an allow-list, a query or a subscription.
pub const MAX_PEERS: usize = 4096;
/// Longest request frame.
pub const MAX_REQUEST_BYTES: usize = MAX_PEERS * 48 + 1024;
/// Longest response frame (an entry is a CBOR map: peer id, state and timestamp with
/// their field names, under 96 bytes).
pub const MAX_RESPONSE_BYTES: usize = MAX_PEERS * 96 + 1024;

/// What a device says about itself in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Active.
    Online,
    /// Connected but idle.
    Away,
}

/// What the relay reports about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Connected and heartbeating, active.
    Online,
    /// Connected and heartbeating, idle.
    Away,
    /// Not connected, or silent for longer than the heartbeat TTL.
    Offline,
    /// Never seen, or not visible to the asker.
    Unknown,
}

/// One device's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The device.
    #[serde(with = "peer_serde::one")]
    pub peer: PeerId,
    /// Its state.
    pub state: State,
    /// For `Offline`: when it was last online (ms since the Unix epoch), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
}

/// A request on `/tern/presence/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// "I am here": refreshes the heartbeat TTL and sets the status.
    Heartbeat {
        /// Online or away.
        status: Status,
    },
    /// Replace the list of peers allowed to see the caller's presence.
    SetAllowList {
        /// The allowed peers (at most [`MAX_PEERS`]).
        #[serde(with = "peer_serde::many")]
        peers: Vec<PeerId>,
    },
    /// Ask for the presence of some peers once.
    Query {
        /// The peers (at most [`MAX_PEERS`]).
        #[serde(with = "peer_serde::many")]
        peers: Vec<PeerId>,
    },
    /// Replace the caller's subscription: changes of these peers are pushed with `Update`
    /// while the caller stays connected. Answered with the current state.
    Subscribe {
        /// The peers (at most [`MAX_PEERS`]).
        #[serde(with = "peer_serde::many")]
        peers: Vec<PeerId>,
    },
    /// Relay → client: coalesced changes for a subscriber.
    Update {
        /// Changed devices, latest state only.
        entries: Vec<Entry>,
    },
}

/// A response on `/tern/presence/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Presence of the asked peers, in the order asked.
    Presence {
        /// One entry per asked peer.
        entries: Vec<Entry>,
    },
    /// Done.
    Ok,
    /// The request failed.
    Error(Rejection),
}

framed!(Request, "presence request", MAX_REQUEST_BYTES);
framed!(Response, "presence response", MAX_RESPONSE_BYTES);

/// The codec caps for this protocol.
pub fn codec() -> super::FrameCodec {
    super::FrameCodec::new(MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_max_fits() {
        let peers: Vec<PeerId> = (0..MAX_PEERS).map(|_| PeerId::random()).collect();
        let r = Request::Subscribe {
            peers: peers.clone(),
        };
        assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        let resp = Response::Presence {
            entries: peers
                .iter()
                .map(|p| Entry {
                    peer: *p,
                    state: State::Offline,
                    last_seen_ms: Some(u64::MAX),
                })
                .collect(),
        };
        assert_eq!(Response::decode(&resp.encode().unwrap()).unwrap(), resp);
        let hb = Request::Heartbeat {
            status: Status::Away,
        };
        assert_eq!(Request::decode(&hb.encode().unwrap()).unwrap(), hb);
    }
}
