//! The relay's configuration: a TOML file, overridden by command-line flags.
//!
//! Every limit is a field here with its default in [`Default`]; `relay/relay.toml` lists
//! them all. Durations are whole seconds or milliseconds, as the field name says.

mod dht;
mod load;
mod sections;

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

pub use dht::DhtConfig;
pub use sections::{
    BlobConfig, CircuitConfig, ConnectionConfig, MailboxConfig, PrekeyConfig, PresenceConfig,
    PushConfig, RateConfig, StorageConfig,
};

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
    /// The Kademlia DHT of relay records.
    pub dht: DhtConfig,
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
            dht: DhtConfig::default(),
        }
    }
}
