//! Tern's Kademlia DHT (`/tern/kad/1`, libp2p's `kad`): relays are its servers, nodes its
//! clients. It carries one kind of record, a user's signed relay record
//! (`tern_crypto::relay_record`), under a key derived from the user id and identity key.
//! Relays verify every record before they store it and nodes before they use it; this
//! module holds what both sides share so they speak the same DHT.

use std::time::Duration;

use libp2p::{StreamProtocol, kad};

/// The protocol id; a DHT of its own, apart from IPFS's `/ipfs/kad/1.0.0`.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/kad/1");

/// Largest Kademlia message read or written: one relay record at its cap
/// (`tern_crypto::consts::MAX_RELAY_RECORD_BYTES`, 32 KiB) with the closer peers and their
/// addresses a `GetRecord` answer carries beside it.
pub const MAX_PACKET_BYTES: usize = 64 * 1024;

/// How long one lookup or publication may take before it ends with what it has.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Kademlia settings every Tern peer shares: the protocol, the packet cap, and
/// `FilterBoth`, so no inbound record or provider is stored before the application has
/// checked it (relays check and store relay records; provider records are never stored).
pub fn config() -> kad::Config {
    let mut c = kad::Config::new(PROTOCOL);
    c.set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_max_packet_size(MAX_PACKET_BYTES)
        .set_query_timeout(QUERY_TIMEOUT);
    c
}

/// The DHT key of a relay record, from `tern_crypto::relay_record::dht_key`.
pub fn record_key(key: &[u8; 32]) -> kad::RecordKey {
    kad::RecordKey::new(key)
}
