//! Loading the configuration (a TOML file) and checking what its types do not.

use libp2p::Multiaddr;

use super::{Config, ConfigError};
use tern_crypto::consts::MAX_RELAY_RECORD_BYTES;

use crate::server::storage::{MAX_BATCH, MAX_QUEUE_DEPTH};
use crate::wire::mailbox;

impl Config {
    /// Reads a TOML file; fields it omits keep their defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The listen addresses, parsed.
    pub fn listen_addrs(&self) -> Result<Vec<Multiaddr>, ConfigError> {
        parse_addrs("listen", &self.listen)
    }

    /// The public addresses, parsed.
    pub fn public_addrs(&self) -> Result<Vec<Multiaddr>, ConfigError> {
        parse_addrs("public_addresses", &self.public_addresses)
    }

    /// The DHT bootstrap relays, parsed: each with its peer id (the address's `/p2p/` part).
    pub fn dht_bootstrap(&self) -> Result<Vec<(libp2p::PeerId, Multiaddr)>, ConfigError> {
        parse_addrs("dht.bootstrap", &self.dht.bootstrap)?
            .into_iter()
            .zip(&self.dht.bootstrap)
            .map(|(addr, text)| match addr.iter().last() {
                Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok((peer, addr)),
                _ => Err(ConfigError::Multiaddr {
                    field: "dht.bootstrap",
                    addr: text.clone(),
                    message: "must end in /p2p/<peer id>".into(),
                }),
            })
            .collect()
    }

    /// Checks ranges that the types do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        self.listen_addrs()?;
        self.public_addrs()?;
        self.dht_bootstrap()?;
        if self.worker_threads == 0 || self.worker_threads > 256 {
            return invalid("worker_threads", "must be 1..=256");
        }
        if self.listen.is_empty() {
            return invalid("listen", "at least one address is needed");
        }
        if self.mailbox.max_ciphertext_bytes == 0
            || self.mailbox.max_ciphertext_bytes > mailbox::MAX_CIPHERTEXT_BYTES
        {
            return invalid("mailbox.max_ciphertext_bytes", "must be 1..=131072");
        }
        if self.mailbox.max_recipients == 0 || self.mailbox.max_recipients > mailbox::MAX_RECIPIENTS
        {
            return invalid("mailbox.max_recipients", "must be 1..=2048");
        }
        if self.mailbox.ttl_secs == 0 || self.mailbox.expiry_sweep_secs == 0 {
            return invalid(
                "mailbox.ttl_secs",
                "ttl and sweep interval must be positive",
            );
        }
        if self.storage.device_idle_secs == 0 {
            return invalid("storage.device_idle_secs", "must be positive");
        }
        if !(1..=100).contains(&self.mailbox.share_percent) {
            return invalid("mailbox.share_percent", "must be 1..=100");
        }
        if self.mailbox.intro_ttl_secs == 0 || self.mailbox.grant_idle_secs == 0 {
            return invalid(
                "mailbox.intro_ttl_secs",
                "intro_ttl_secs and grant_idle_secs must be positive",
            );
        }
        for (field, v) in [
            ("mailbox.intro_per_sec", self.mailbox.intro_per_sec),
            ("mailbox.intro_burst", self.mailbox.intro_burst),
            ("rate.requests_per_sec", self.rate.requests_per_sec),
            ("rate.requests_burst", self.rate.requests_burst),
            ("rate.deposits_per_sec", self.rate.deposits_per_sec),
            ("rate.deposits_burst", self.rate.deposits_burst),
            ("rate.refusals_per_sec", self.rate.refusals_per_sec),
            ("rate.refusals_burst", self.rate.refusals_burst),
            ("rate.ip_requests_per_sec", self.rate.ip_requests_per_sec),
            ("rate.ip_requests_burst", self.rate.ip_requests_burst),
            (
                "connections.ip_connections_per_sec",
                self.connections.ip_connections_per_sec,
            ),
            (
                "connections.ip_connections_burst",
                self.connections.ip_connections_burst,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return invalid(field, "must be a positive number");
            }
        }
        if self.presence.heartbeat_ttl_secs == 0 || self.presence.coalesce_ms == 0 {
            return invalid(
                "presence",
                "heartbeat_ttl_secs and coalesce_ms must be positive",
            );
        }
        for p in &self.push.allowed_prefixes {
            if !crate::server::push::valid_prefix(p) {
                return invalid(
                    "push.allowed_prefixes",
                    "every prefix must be a plain http:// or https:// URL with a canonical \
                     host (lower-case name or dotted IPv4), no user info, dot segments or \
                     encoded dots",
                );
            }
        }
        if self.push.max_in_flight == 0 || self.push.timeout_secs == 0 {
            return invalid("push", "max_in_flight and timeout_secs must be positive");
        }
        if !(1..=MAX_BATCH).contains(&self.storage.max_batch)
            || !(1..=MAX_QUEUE_DEPTH).contains(&self.storage.queue_depth)
        {
            return invalid(
                "storage",
                "max_batch must be 1..=65536 and queue_depth 1..=1048576",
            );
        }
        let b = &self.blobs;
        if b.ttl_secs == 0 || b.abandon_secs == 0 || b.gc_secs == 0 || b.idle_secs == 0 {
            return invalid(
                "blobs",
                "ttl_secs, abandon_secs, gc_secs and idle_secs must be positive",
            );
        }
        if b.max_streams == 0 {
            return invalid("blobs.max_streams", "must be positive");
        }
        if !(b.ops_per_sec.is_finite() && b.ops_per_sec > 0.0 && b.ops_burst >= 1.0) {
            return invalid(
                "blobs.ops_per_sec",
                "rate must be positive and burst at least 1",
            );
        }
        let c = &self.connections;
        if c.max_established == 0 || c.max_per_peer == 0 || c.max_per_ip == 0 {
            return invalid(
                "connections",
                "max_established, max_per_peer and max_per_ip must be positive",
            );
        }
        if self.prekeys.claim_window_secs == 0 {
            return invalid("prekeys.claim_window_secs", "must be positive");
        }
        if self.connections.read_budget_bytes < 1024 * 1024
            || self.connections.read_budget_bytes > u32::MAX as usize
        {
            return invalid("connections.read_budget_bytes", "must be 1 MiB ..= 4 GiB");
        }
        let c = &self.connections;
        if c.deposit_window == 0 || c.deposit_window > 65_536 {
            return invalid("connections.deposit_window", "must be 1 ..= 65536");
        }
        if c.deposit_stream_bytes < crate::wire::deposit::MAX_DEPOSIT_FRAME_BYTES
            || c.deposit_stream_bytes > c.read_budget_bytes
        {
            return invalid(
                "connections.deposit_stream_bytes",
                "must hold one largest deposit and be at most read_budget_bytes",
            );
        }
        if self.connections.max_concurrent_streams == 0 {
            return invalid("connections.max_concurrent_streams", "must be positive");
        }
        let d = &self.dht;
        if d.max_records == 0 || d.record_ttl_secs == 0 {
            return invalid("dht", "max_records and record_ttl_secs must be positive");
        }
        if d.max_record_bytes == 0 || d.max_record_bytes > MAX_RELAY_RECORD_BYTES {
            return invalid("dht.max_record_bytes", "must be 1..=32768");
        }
        if !(d.puts_per_sec.is_finite() && d.puts_per_sec > 0.0 && d.puts_burst >= 1.0) {
            return invalid(
                "dht.puts_per_sec",
                "rate must be positive and burst at least 1",
            );
        }
        Ok(())
    }
}

fn parse_addrs(field: &'static str, addrs: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e: libp2p::multiaddr::Error| ConfigError::Multiaddr {
                    field,
                    addr: a.clone(),
                    message: e.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../../../relay.toml");
        let parsed = Config::from_toml(text).unwrap();
        parsed.validate().unwrap();
        let d = Config::default();
        assert_eq!(parsed.listen, d.listen);
        assert_eq!(parsed.mailbox.max_messages, d.mailbox.max_messages);
        assert_eq!(parsed.mailbox.ttl_secs, d.mailbox.ttl_secs);
        assert_eq!(
            parsed.presence.heartbeat_ttl_secs,
            d.presence.heartbeat_ttl_secs
        );
        assert_eq!(parsed.push.debounce_secs, d.push.debounce_secs);
        assert_eq!(parsed.circuit.max_circuits, d.circuit.max_circuits);
        assert_eq!(parsed.storage.max_batch, d.storage.max_batch);
        assert_eq!(parsed.rate.deposits_burst, d.rate.deposits_burst);
        assert_eq!(parsed.connections.max_per_peer, d.connections.max_per_peer);
        assert_eq!(parsed.connections.max_per_ip, d.connections.max_per_ip);
        assert_eq!(
            parsed.connections.deposit_window,
            d.connections.deposit_window
        );
        assert_eq!(
            parsed.connections.deposit_stream_bytes,
            d.connections.deposit_stream_bytes
        );
        assert_eq!(
            parsed.connections.ip_connections_per_sec,
            d.connections.ip_connections_per_sec
        );
        assert_eq!(
            parsed.connections.ip_connections_burst,
            d.connections.ip_connections_burst
        );
        assert_eq!(parsed.rate.ip_requests_per_sec, d.rate.ip_requests_per_sec);
        assert_eq!(parsed.rate.ip_requests_burst, d.rate.ip_requests_burst);
        assert_eq!(parsed.blobs.max_blob_bytes, d.blobs.max_blob_bytes);
        assert_eq!(parsed.blobs.quota_bytes, d.blobs.quota_bytes);
        assert_eq!(parsed.blobs.ttl_secs, d.blobs.ttl_secs);
        assert_eq!(parsed.blobs.ops_burst, d.blobs.ops_burst);
        assert_eq!(
            parsed.prekeys.one_time_per_claimer,
            d.prekeys.one_time_per_claimer
        );
        assert_eq!(
            parsed.prekeys.one_time_per_device,
            d.prekeys.one_time_per_device
        );
        assert_eq!(
            parsed.prekeys.claim_window_secs,
            d.prekeys.claim_window_secs
        );
        assert_eq!(parsed.dht.enabled, d.dht.enabled);
        assert_eq!(parsed.dht.max_records, d.dht.max_records);
        assert_eq!(parsed.dht.max_record_bytes, d.dht.max_record_bytes);
        assert_eq!(parsed.dht.record_ttl_secs, d.dht.record_ttl_secs);
        assert_eq!(parsed.dht.puts_burst, d.dht.puts_burst);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(Config::from_toml("nonsense = 1").is_err());
        let mut c = Config::default();
        c.push.allowed_prefixes = vec!["file:///etc/".into()];
        assert!(c.validate().is_err());
        let c = Config {
            listen: vec!["not an addr".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err());
        // A deposit stream must be able to hold one largest deposit, within the budget.
        for (window, bytes) in [
            (0, 4 << 20),
            (256, crate::wire::deposit::MAX_DEPOSIT_FRAME_BYTES - 1),
            (256, (64 << 20) + 1),
        ] {
            let mut c = Config::default();
            c.connections.deposit_window = window;
            c.connections.deposit_stream_bytes = bytes;
            assert!(c.validate().is_err(), "{window} {bytes}");
        }
        // DHT bootstrap addresses name their relay; records stay under the crypto cap.
        let mut c = Config::default();
        c.dht.bootstrap = vec!["/ip4/127.0.0.1/tcp/4001".into()];
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.dht.max_record_bytes = MAX_RELAY_RECORD_BYTES + 1;
        assert!(c.validate().is_err());
    }
}
