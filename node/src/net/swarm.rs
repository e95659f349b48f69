//! Building the network: the composed behaviour, the transports, the listeners, and the
//! [`Client`](super::Client) and [`EventLoop`](super::EventLoop) that share the command and event queues.
//!
//! Uses only the types of the parent module and of `client` and `event_loop`.

use std::collections::HashMap;

use libp2p::{
    Multiaddr, SwarmBuilder, dcutr,
    identity::Keypair,
    noise, relay,
    request_response::{self, ProtocolSupport},
    swarm::NetworkBehaviour,
    tcp,
};
use tern_relay::{client as relay_client, wire::FrameCodec};
use tokio::sync::mpsc;

use super::{Client, Event, EventLoop, direct};
use crate::consts::{
    IDLE_CONNECTION_TIMEOUT, NETWORK_COMMAND_QUEUE, NETWORK_EVENT_QUEUE, RELAY_REQUEST_TIMEOUT,
};

#[allow(missing_docs)]
mod behaviour {
    use super::*;

    /// The node's composed behaviour.
    #[derive(NetworkBehaviour)]
    #[behaviour(prelude = "libp2p::swarm::derive_prelude")]
    pub struct Behaviour {
        /// Identify, ping and the relay protocols.
        pub relay_proto: relay_client::Behaviour,
        /// Circuit relay v2 client: reservations and relayed dials.
        pub circuit: relay::client::Behaviour,
        /// Hole punching over relayed connections.
        pub dcutr: dcutr::Behaviour,
        /// `/tern/direct/1`.
        pub direct: request_response::Behaviour<FrameCodec>,
        /// Tern's DHT, as a client.
        pub kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
        /// `/tern/blob/1` streams peers open here, to fetch this device's own files.
        pub files: tern_relay::inbound::Behaviour,
    }
}
pub(super) use behaviour::{Behaviour, BehaviourEvent};

/// Network settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Whether contacts' devices are dialled at their own addresses (`tern up
    /// --no-direct` turns it off).
    pub direct: bool,
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The transport could not be built.
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What libp2p said.
        message: String,
    },
}

/// Builds the swarm and returns the handle, the event stream and the loop to spawn.
pub fn new(
    key: Keypair,
    config: Config,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), StartError> {
    let local = key.public().to_peer_id();
    let (files, [file_streams]) = tern_relay::inbound::Behaviour::new([tern_relay::blob::PROTOCOL]);
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            tern_relay::yamux_config,
        )
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_quic()
        .with_relay_client(noise::Config::new, tern_relay::yamux_config)
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_behaviour(|key, circuit| Behaviour {
            relay_proto: relay_client::Behaviour::new(key, RELAY_REQUEST_TIMEOUT),
            circuit,
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            direct: request_response::Behaviour::with_codec(
                direct::codec(),
                [(direct::PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(crate::consts::DIRECT_TIMEOUT),
            ),
            kad: super::dht::behaviour(key.public().to_peer_id()),
            files,
        })
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_swarm_config(|c| tern_relay::swarm_config(c, IDLE_CONNECTION_TIMEOUT))
        .build();
    for addr in config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr,
                // libp2p's transport error says nothing of the OS error it holds.
                message: match &e {
                    libp2p::TransportError::Other(io) => super::os_text(io),
                    other => other.to_string(),
                },
            })?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(NETWORK_COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(NETWORK_EVENT_QUEUE);
    // `/tern/blob/1` streams this device opens (uploads, downloads) go through the relay
    // client's stream behaviour, composed in `relay_proto`; those peers open here, through
    // `files`.
    let streams = swarm.behaviour().relay_proto.blob.new_control();
    Ok((
        Client {
            cmd: cmd_tx,
            local,
            streams,
            file_streams: std::sync::Arc::new(std::sync::Mutex::new(Some(file_streams))),
            pipes: Default::default(),
            in_flight: std::sync::Arc::new(tern_relay::rpc::InFlight::new(
                tern_relay::rpc::DEFAULT_REQUESTS_IN_FLIGHT,
            )),
        },
        ev_rx,
        EventLoop {
            swarm,
            cmds: cmd_rx,
            events: ev_tx,
            pending: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 0,
            relays: HashMap::new(),
            live: HashMap::new(),
            direct_conns: HashMap::new(),
            direct: config.direct,
            direct_tries: HashMap::new(),
            relayed_conns: HashMap::new(),
            dht: HashMap::new(),
            probes: HashMap::new(),
        },
    ))
}
