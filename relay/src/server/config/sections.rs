//! The sections of the relay's configuration, one struct per `[table]` of the TOML file,
//! each with its defaults.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{blob, wire::mailbox};

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
