//! The relay's configuration: a TOML file, overridden by command-line flags.
//!
//! Every limit is a field here with its default in [`Default`]; `relay/relay.toml` lists
//! them all. Durations are whole seconds or milliseconds, as the field name says.

use std::{net::SocketAddr, path::PathBuf};

use libp2p::Multiaddr;
use serde::Deserialize;

use crate::{blob, wire::mailbox};

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("cannot parse config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// An address is not a valid multiaddr.
    #[error("invalid multiaddr {addr:?} in {field}: {message}")]
    Multiaddr {
        /// Which field.
        field: &'static str,
        /// The text.
        addr: String,
        /// What the parser said.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid value for {field}: {message}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// The whole relay configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the relay keeps its identity key and database. Default `./tern-relay-data`.
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on. Default TCP and QUIC on port 4001, all IPv4 interfaces.
    pub listen: Vec<String>,
    /// Addresses under which others reach this relay (e.g. behind port forwarding). They are
    /// announced to peers and in circuit reservations. Empty (default): the listen
    /// addresses are announced.
    pub public_addresses: Vec<String>,
    /// Where to serve `/metrics` and `/health` over HTTP; none by default.
    pub metrics: Option<SocketAddr>,
    /// Threads of the async runtime (the binary reads this). 1 (default): one thread runs
    /// the network; the storage writer always has its own.
    pub worker_threads: usize,
    /// Mailbox limits.
    pub mailbox: MailboxConfig,
    /// Rate limits per peer.
    pub rate: RateConfig,
    /// Presence timings.
    pub presence: PresenceConfig,
    /// Push wake-ups.
    pub push: PushConfig,
    /// Circuit relay v2 limits.
    pub circuit: CircuitConfig,
    /// Connection limits.
    pub connections: ConnectionConfig,
    /// Storage tuning.
    pub storage: StorageConfig,
    /// Blob (`/tern/blob/1`) limits.
    pub blobs: BlobConfig,
    /// Limits on handing out one-time prekeys.
    pub prekeys: PrekeyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("tern-relay-data"),
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".into(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            ],
            public_addresses: Vec::new(),
            metrics: None,
            worker_threads: 1,
            mailbox: MailboxConfig::default(),
            rate: RateConfig::default(),
            presence: PresenceConfig::default(),
            push: PushConfig::default(),
            circuit: CircuitConfig::default(),
            connections: ConnectionConfig::default(),
            storage: StorageConfig::default(),
            blobs: BlobConfig::default(),
            prekeys: PrekeyConfig::default(),
        }
    }
}

/// Limits on one-time prekeys handed out by `ClaimPrekey`. Anyone connected may claim, so
/// without them one identity could empty a device's one-time keys; over a limit the claimer
/// gets the device's fallback key instead (`fallback: true`), never an error, so a session
/// can still be made. Each limit is a token bucket: up to the number at once, refilling
/// that many per `claim_window_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrekeyConfig {
    /// One-time keys one claimer (PeerId) gets of one device per window. Default 3: a
    /// session and two retries.
    pub one_time_per_claimer: u32,
    /// One-time keys one device hands out per window, to all claimers together (this is
    /// what bounds claimers with many PeerIds). Default 100.
    pub one_time_per_device: u32,
    /// The window, seconds. Default 3600.
    pub claim_window_secs: u64,
}

impl Default for PrekeyConfig {
    fn default() -> Self {
        Self {
            one_time_per_claimer: 3,
            one_time_per_device: 100,
            claim_window_secs: 3600,
        }
    }
}

/// Mailbox limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxConfig {
    /// Largest ciphertext accepted, bytes. Default 64 KiB (at most 128 KiB, the wire cap).
    pub max_ciphertext_bytes: usize,
    /// Most recipients in one deposit. Default 2048 (the wire cap).
    pub max_recipients: usize,
    /// Most messages waiting in one mailbox. Default 10,000.
    pub max_messages: u64,
    /// Most ciphertext bytes waiting in one mailbox. Default 64 MiB.
    pub max_bytes: u64,
    /// How long an unacknowledged message is kept, seconds. Default 14 days.
    pub ttl_secs: u64,
    /// How often expired messages are deleted, seconds. Default 60.
    pub expiry_sweep_secs: u64,
    /// Most of a mailbox one share may hold (one grant — every device of the granted user
    /// together — or one sender to a mailbox without grants), percent. Default 25.
    pub share_percent: u8,
    /// Most messages in a mailbox's introductions share (deposits without a grant into a
    /// mailbox with grants), all senders together. Default 1,000.
    pub intro_max_messages: u64,
    /// Most bytes in the introductions share. Default 8 MiB.
    pub intro_max_bytes: u64,
    /// Most messages one device may have in a mailbox's introductions share. Default 200
    /// (a first burst to a new contact fits; many fresh identities share the 1,000).
    pub intro_per_sender: u64,
    /// How long an introduction is kept, seconds (at most `ttl_secs`). Default 3 days.
    pub intro_ttl_secs: u64,
    /// Introductions taken per second into one mailbox, all senders together; beyond it
    /// (after a burst of `intro_burst`) they are refused as `IntroFull`. Default 5.
    pub intro_per_sec: f64,
    /// Introductions one mailbox takes at once before `intro_per_sec` applies. Default 100.
    pub intro_burst: f64,
    /// A mailbox's grants are deleted (the mailbox opens to sender shares again) when its
    /// owner has not registered them for this long, seconds. Default 30 days.
    pub grant_idle_secs: u64,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            max_ciphertext_bytes: 64 * 1024,
            max_recipients: mailbox::MAX_RECIPIENTS,
            max_messages: 10_000,
            max_bytes: 64 * 1024 * 1024,
            ttl_secs: 14 * 24 * 3600,
            expiry_sweep_secs: 60,
            share_percent: 25,
            intro_max_messages: 1_000,
            intro_max_bytes: 8 * 1024 * 1024,
            intro_per_sender: 200,
            intro_ttl_secs: 3 * 24 * 3600,
            intro_per_sec: 5.0,
            intro_burst: 100.0,
            grant_idle_secs: 30 * 24 * 3600,
        }
    }
}

/// Token-bucket rate limits, per authenticated peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained requests per second per peer, all protocols together. Default 200.
    pub requests_per_sec: f64,
    /// Burst of requests per peer. Default 400.
    pub requests_burst: f64,
    /// Sustained deposits per second per sender (each recipient counts). Default 100.
    pub deposits_per_sec: f64,
    /// Burst of deposits per sender. Default 1000 (one 500-member group message with two
    /// devices per member).
    pub deposits_burst: f64,
    /// Sustained requests per second from one IP address (an IPv6 /64), all its peers and
    /// protocols together: PeerIds cost nothing to make, so one host with many of them
    /// shares this one allowance. Default 2000 (ten times the per-peer rate).
    pub ip_requests_per_sec: f64,
    /// Burst of requests per IP address (IPv6 /64). Default 4000.
    pub ip_requests_burst: f64,
    /// Refusals of deposits without a valid grant (`IntroFull`, `NoGrant`) tolerated per
    /// second per peer; beyond `refusals_burst` of them the peer is disconnected and banned
    /// for `ban_secs`. Default 2.
    pub refusals_per_sec: f64,
    /// Such refusals a peer may collect at once. Default 200.
    pub refusals_burst: f64,
    /// How long a banned peer's connections are refused, seconds. Default 300.
    pub ban_secs: u64,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            requests_per_sec: 200.0,
            requests_burst: 400.0,
            deposits_per_sec: 100.0,
            deposits_burst: 1000.0,
            ip_requests_per_sec: 2000.0,
            ip_requests_burst: 4000.0,
            refusals_per_sec: 2.0,
            refusals_burst: 200.0,
            ban_secs: 300,
        }
    }
}

/// Presence timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A device silent for this long is offline, seconds. Default 30.
    pub heartbeat_ttl_secs: u64,
    /// Changes are sent to subscribers at most this often, milliseconds. Default 2000.
    pub coalesce_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat_ttl_secs: 30,
            coalesce_ms: 2000,
        }
    }
}

/// Push wake-ups.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// URL prefixes a push endpoint must start with; empty (default) disables push.
    /// Example: `["https://push.example.org/"]`. Prefixes should end with `/` so a prefix
    /// cannot be extended to another host.
    pub allowed_prefixes: Vec<String>,
    /// At most one wake-up per device per this many seconds. Default 10.
    pub debounce_secs: u64,
    /// Timeout of one POST, seconds. Default 10.
    pub timeout_secs: u64,
    /// Most POSTs in flight at once. Default 16.
    pub max_in_flight: usize,
    /// Longest back-off after repeated failures, seconds. Default 600.
    pub max_backoff_secs: u64,
    /// A PEM file of extra root certificates trusted for `https://` endpoints (a private
    /// push gateway's CA), on top of the system's roots. None by default.
    pub extra_root_certs: Option<PathBuf>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allowed_prefixes: Vec::new(),
            debounce_secs: 10,
            timeout_secs: 10,
            max_in_flight: 16,
            max_backoff_secs: 600,
            extra_root_certs: None,
        }
    }
}

/// Circuit relay v2 limits (see libp2p's `relay::Config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Most reservations at once. Default 512.
    pub max_reservations: usize,
    /// Most reservations per peer. Default 4.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts, seconds. Default 3600.
    pub reservation_duration_secs: u64,
    /// Most relayed circuits at once. Default 64.
    pub max_circuits: usize,
    /// Most circuits per peer. Default 8.
    pub max_circuits_per_peer: usize,
    /// Longest life of a circuit, seconds. Default 120 (long enough to hole-punch).
    pub max_circuit_duration_secs: u64,
    /// Most bytes relayed per circuit in each direction. Default 1 MiB.
    pub max_circuit_bytes: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            max_reservations: 512,
            max_reservations_per_peer: 4,
            reservation_duration_secs: 3600,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration_secs: 120,
            max_circuit_bytes: 1 << 20,
        }
    }
}

/// Connection limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Most established connections. Default 10,000.
    pub max_established: u32,
    /// Most connections per peer. Default 4.
    pub max_per_peer: u32,
    /// Most established inbound connections from one IPv4 address or one IPv6 /64 prefix
    /// (a host or a home network is usually given a whole /64), whatever PeerIds they
    /// present. Default 256: room for a household or office behind one NAT address. Relay
    /// operators behind a reverse proxy that hides client addresses should raise it (every
    /// connection then comes from the proxy). Loopback is not exempt.
    pub max_per_ip: u32,
    /// Most connections being set up at once. Default 256.
    pub max_pending_incoming: u32,
    /// New inbound connections per second from one IPv4 address or IPv6 /64, sustained;
    /// more are refused before their handshake (no key exchange is spent on them). Default 20.
    pub ip_connections_per_sec: f64,
    /// Burst of new inbound connections from one IP address (IPv6 /64). Default 256 (as many
    /// as `max_per_ip`: a household behind one NAT address can all reconnect at once).
    pub ip_connections_burst: f64,
    /// A connection with no open stream closes after this many seconds. Default 300; a
    /// client's heartbeats keep it open.
    pub idle_timeout_secs: u64,
    /// Most concurrent request streams per connection and protocol. Default 64.
    pub max_concurrent_streams: usize,
    /// Bytes of requests being read, all connections together: a request holds its share
    /// (16 KiB at a time) until it is complete, so slow or unfinished requests make reads
    /// wait instead of growing memory. Default 64 MiB (at least 1 MiB).
    pub read_budget_bytes: usize,
    /// A request not answered within this many seconds fails. Default 30.
    pub request_timeout_secs: u64,
    /// Deposits the relay reads ahead of its answers on one deposit stream
    /// (`/tern/deposit/1`); beyond it, the stream waits. Default 256.
    pub deposit_window: usize,
    /// Bytes of unanswered deposits one deposit stream may hold (they also take their share
    /// of `read_budget_bytes` until answered); beyond it, the stream waits. Default 4 MiB (at
    /// least one largest deposit, at most `read_budget_bytes`).
    pub deposit_stream_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_established: 10_000,
            max_per_peer: 4,
            max_per_ip: 256,
            max_pending_incoming: 256,
            ip_connections_per_sec: 20.0,
            ip_connections_burst: 256.0,
            idle_timeout_secs: 300,
            max_concurrent_streams: 64,
            read_budget_bytes: 64 * 1024 * 1024,
            request_timeout_secs: 30,
            deposit_window: crate::wire::deposit::DEFAULT_WINDOW,
            deposit_stream_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Storage tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Most operations committed in one transaction (group commit). Default 1024.
    pub max_batch: usize,
    /// Most operations waiting for the writer; beyond it requests get `Unavailable`.
    /// Default 16,384.
    pub queue_depth: usize,
    /// Largest database size in bytes; deposits beyond it fail with `StorageFull`.
    /// Default 8 GiB (0: no limit but the disk).
    pub max_database_bytes: u64,
    /// Free disk space kept: below it, deposits, publishing and registering fail with
    /// `StorageFull` while fetches and acks go on. Default 256 MiB (0: none).
    pub reserve_bytes: u64,
    /// A device that has not refreshed what it keeps here (prekeys, allow-list, push
    /// endpoint, grants; a node does at every connect) for this long loses it, and a device
    /// list not published for this long goes, seconds. Default 60 days.
    pub device_idle_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue_depth: 16_384,
            max_database_bytes: 8 * 1024 * 1024 * 1024,
            reserve_bytes: 256 * 1024 * 1024,
            device_idle_secs: 60 * 24 * 3600,
        }
    }
}

/// Blob (`/tern/blob/1`) limits. Blobs live as files under `<data_dir>/blobs/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// Largest blob accepted, bytes; a `Create` over it is refused before any byte moves.
    /// Default [`blob::DEFAULT_MAX_BLOB_BYTES`] (101 MiB: 100 MiB of media and its cipher's
    /// overhead).
    pub max_blob_bytes: u64,
    /// Most blob bytes one user (by the user id its device registered under) may have
    /// stored, counting unfinished uploads at their full size. Default 1 GiB.
    pub quota_bytes: u64,
    /// Disk space kept free: a `Create` or chunk that would leave less free space on the
    /// data directory's file system than this is refused with `StorageFull`. Default 1 GiB.
    pub reserve_bytes: u64,
    /// Longest life of a blob, seconds (a client may ask for less). Default 7 days.
    pub ttl_secs: u64,
    /// An unfinished upload without progress for this many seconds is deleted. Default 24 h.
    pub abandon_secs: u64,
    /// How often expired and abandoned blobs are deleted, seconds. Default 60.
    pub gc_secs: u64,
    /// Most blob streams served at once; beyond it a stream is refused with `Unavailable`.
    /// Default 64.
    pub max_streams: usize,
    /// A blob stream on which nothing arrives for this many seconds is closed. Default 60.
    pub idle_secs: u64,
    /// Blob operations (create, get, delete) per second per peer. Default 2.
    pub ops_per_sec: f64,
    /// Burst of blob operations per peer. Default 30.
    pub ops_burst: f64,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            max_blob_bytes: blob::DEFAULT_MAX_BLOB_BYTES,
            quota_bytes: 1 << 30,
            reserve_bytes: 1 << 30,
            ttl_secs: 7 * 24 * 3600,
            abandon_secs: 24 * 3600,
            gc_secs: 60,
            max_streams: 64,
            idle_secs: 60,
            ops_per_sec: 2.0,
            ops_burst: 30.0,
        }
    }
}

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
            if !super::push::valid_prefix(p) {
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
        if self.storage.max_batch == 0 || self.storage.queue_depth == 0 {
            return invalid("storage", "max_batch and queue_depth must be positive");
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
        let text = include_str!("../../relay.toml");
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
    }
}
