//! The `[dht]` section: relays as servers of Tern's Kademlia DHT, which carries users' signed
//! relay records (`tern_crypto::relay_record`), so a contact whose relays all changed is
//! still found.

use serde::Deserialize;

/// Kademlia DHT settings. Every inbound record is verified before it is stored; these bound
/// what a relay keeps and how fast one peer may put.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhtConfig {
    /// Whether this relay serves the DHT (`/tern/kad/1`). Default true.
    pub enabled: bool,
    /// Other relays to join the DHT through: multiaddrs ending in `/p2p/<peer id>`. Default
    /// none (the relay is found by others that list it).
    pub bootstrap: Vec<String>,
    /// Most records kept. Default 65536 (at most `max_record_bytes` each).
    pub max_records: usize,
    /// Largest record value accepted, bytes. Default and most 32768
    /// (`tern_crypto::consts::MAX_RELAY_RECORD_BYTES`).
    pub max_record_bytes: usize,
    /// How long a record is kept after its last put, seconds. Default 172800 (two days);
    /// nodes publish again well before.
    pub record_ttl_secs: u64,
    /// Puts one peer may make per second, and at once. Defaults 0.2 and 20.
    pub puts_per_sec: f64,
    /// See `puts_per_sec`.
    pub puts_burst: f64,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bootstrap: Vec::new(),
            max_records: 65_536,
            max_record_bytes: tern_crypto::consts::MAX_RELAY_RECORD_BYTES,
            record_ttl_secs: 2 * 24 * 3600,
            puts_per_sec: 0.2,
            puts_burst: 20.0,
        }
    }
}
