//! The network: one event loop owns the libp2p swarm; a cloneable [`Client`] sends it
//! commands (each with a oneshot for the answer) and the loop sends [`Event`]s back.
//! This is the shape of rust-libp2p's file-sharing example.
//!
//! The swarm runs TCP and QUIC with Noise and Yamux; identify and ping and the relay's
//! mailbox, presence and directory protocols (composed from `tern_relay::client::Behaviour`);
//! the circuit relay v2 client (a reservation at each home relay, so contacts can reach this
//! device through it) and DCUtR (to upgrade a relayed connection to a direct one); and
//! `/tern/direct/1` for device-to-device messages.

pub mod direct;
mod pipeline;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, dcutr, identify,
    identity::Keypair,
    multiaddr::Protocol,
    noise, relay,
    request_response::{self, Message, OutboundRequestId, ProtocolSupport, ResponseChannel},
    swarm::{NetworkBehaviour, SwarmEvent, dial_opts::DialOpts},
    tcp,
};
use tern_relay::{
    client::{self as relay_client, Proto},
    wire::{ErrorCode, Frame, FrameCodec, Rejection, mailbox, presence},
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::consts::{
    IDLE_CONNECTION_TIMEOUT, NETWORK_COMMAND_QUEUE, NETWORK_EVENT_QUEUE, REDIAL_BASE, REDIAL_MAX,
    RELAY_REQUEST_TIMEOUT,
};

/// Why a network request failed: the relay client's error type, with the relay's codes.
pub use tern_relay::rpc::RequestError as NetError;

/// Something the network tells the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection to a relay came up (first connection).
    RelayUp(PeerId),
    /// The last connection to a relay closed.
    RelayDown(PeerId),
    /// Mail pushed by a relay (still to be acknowledged there).
    Mail {
        /// The relay.
        relay: PeerId,
        /// The messages.
        envelopes: Vec<mailbox::Envelope>,
    },
    /// A mail push had to be dropped (queue full): fetch the mailbox.
    MailDropped(PeerId),
    /// Presence changes pushed by a relay.
    Presence(Vec<presence::Entry>),
    /// A device sent a message directly; answer with [`Client::respond_direct`].
    Direct {
        /// The sending device.
        peer: PeerId,
        /// The id to answer under.
        id: u64,
        /// The ciphertext.
        ciphertext: Vec<u8>,
    },
    /// A connection to a (non-relay) peer came up.
    PeerUp {
        /// The peer.
        peer: PeerId,
        /// Whether the connection goes through a relay circuit.
        relayed: bool,
    },
    /// The circuit reservation at a home relay was accepted.
    Reservation(PeerId),
    /// A DCUtR hole punch finished.
    HolePunch {
        /// The peer.
        peer: PeerId,
        /// Whether a direct connection resulted.
        ok: bool,
    },
    /// The swarm listens on an address.
    Listening(Multiaddr),
}

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
    }
}
use behaviour::{Behaviour, BehaviourEvent};

type Reply = oneshot::Sender<Result<Frame, NetError>>;

enum Command {
    Request {
        peer: PeerId,
        proto: Proto,
        frame: Vec<u8>,
        reply: Reply,
    },
    Direct {
        peer: PeerId,
        frame: Vec<u8>,
        reply: Reply,
    },
    RespondDirect {
        id: u64,
        frame: Vec<u8>,
    },
    AddRelay {
        addr: Multiaddr,
        home: bool,
    },
    /// Stop keeping a connection to a non-home relay (one named by a contact link that was
    /// refused).
    ForgetRelay {
        peer: PeerId,
    },
    DialVia {
        peer: PeerId,
        relay: Multiaddr,
    },
    Connected {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    /// Open the live stream to a relay (after `Listen`), unless one is open.
    OpenLive {
        relay: PeerId,
    },
    /// Acknowledge on the relay's live stream; answers whether it could.
    LiveAck {
        relay: PeerId,
        ids: Vec<u64>,
        reply: oneshot::Sender<bool>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerConnections>>,
    },
}

/// Open connections to one (non-relay) peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConnections {
    /// The peer.
    pub peer: PeerId,
    /// Direct connections (TCP or QUIC, possibly after a hole punch).
    pub direct: u32,
    /// Connections through a relay circuit.
    pub relayed: u32,
}

/// A handle to the network event loop.
#[derive(Clone)]
pub struct Client {
    cmd: mpsc::Sender<Command>,
    local: PeerId,
    streams: libp2p_stream::Control,
    /// Deposit streams to relays.
    pipes: std::sync::Arc<pipeline::Pipes>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Network settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
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
        })
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    for addr in config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr,
                message: e.to_string(),
            })?;
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(NETWORK_COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(NETWORK_EVENT_QUEUE);
    // `/tern/blob/1` streams (uploads, downloads, serving own files to peers) go through the
    // relay client's stream behaviour, composed in `relay_proto`.
    let streams = swarm.behaviour().relay_proto.blob.new_control();
    Ok((
        Client {
            cmd: cmd_tx,
            local,
            streams,
            pipes: Default::default(),
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
            dialed_direct: HashSet::new(),
            relayed_conns: HashMap::new(),
        },
    ))
}

impl Client {
    /// This device's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// A handle that opens and accepts `/tern/blob/1` streams, for tasks off the event loop.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    async fn send(&self, cmd: Command) -> Result<(), NetError> {
        self.cmd.send(cmd).await.map_err(|_| NetError::Closed)
    }

    /// Sends a raw frame on a relay protocol to `peer` and returns the answer frame.
    pub async fn request(
        &self,
        peer: PeerId,
        proto: Proto,
        frame: Vec<u8>,
    ) -> Result<Frame, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            proto,
            frame,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Closed)?
    }

    /// Sends a direct message to a device over an existing connection (or one libp2p can
    /// open from known addresses).
    pub async fn direct(&self, peer: PeerId, ciphertext: Vec<u8>) -> Result<(), NetError> {
        let frame = direct::Request::Message {
            ciphertext: serde_bytes::ByteBuf::from(ciphertext),
        }
        .encode()?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Direct { peer, frame, reply }).await?;
        let frame = rx.await.map_err(|_| NetError::Closed)??;
        match direct::Response::from_frame(&frame)? {
            direct::Response::Stored => Ok(()),
            direct::Response::Error(r) => Err(NetError::Rejected(r)),
        }
    }

    /// Answers a direct message: stored (`None`) or refused.
    pub async fn respond_direct(&self, id: u64, refused: Option<ErrorCode>) {
        let resp = match refused {
            None => direct::Response::Stored,
            Some(code) => direct::Response::Error(Rejection::new(code)),
        };
        if let Ok(frame) = resp.encode() {
            let _ = self.send(Command::RespondDirect { id, frame }).await;
        }
    }

    /// Adds a relay (address ending in `/p2p/<id>`) and keeps a connection to it; a home
    /// relay also gets a circuit reservation.
    pub async fn add_relay(&self, addr: Multiaddr, home: bool) -> Result<(), NetError> {
        self.send(Command::AddRelay { addr, home }).await
    }

    /// Stops keeping a connection to a relay added with `home: false` (a home relay stays).
    pub async fn forget_relay(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::ForgetRelay { peer }).await
    }

    /// Dials a device through a relay circuit (DCUtR may then upgrade it).
    pub async fn dial_via(&self, peer: PeerId, relay: Multiaddr) -> Result<(), NetError> {
        self.send(Command::DialVia { peer, relay }).await
    }

    /// The open connections to non-relay peers.
    pub async fn peers(&self) -> Vec<PeerConnections> {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Peers { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Opens the live stream (`/tern/live/1`) to a relay we listen at, unless one is open;
    /// until it is, pushes come as `Deliver` requests.
    pub async fn open_live(&self, relay: PeerId) -> Result<(), NetError> {
        self.send(Command::OpenLive { relay }).await
    }

    /// Queues an acknowledgement on the relay's live stream; `false` when there is no open
    /// stream with room.
    pub async fn live_ack(&self, relay: PeerId, ids: Vec<u64>) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .send(Command::LiveAck { relay, ids, reply })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Whether the event loop has stopped (the node is shutting down).
    pub fn is_closed(&self) -> bool {
        self.cmd.is_closed()
    }

    /// Whether a connection to `peer` is open.
    pub async fn is_connected(&self, peer: PeerId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Connected { peer, reply }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

struct RelayState {
    addr: Multiaddr,
    home: bool,
    connected: bool,
    /// When to dial again, while disconnected.
    redial_at: Option<Instant>,
    backoff: Duration,
}

/// The loop that owns the swarm. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// Outbound requests waiting for an answer.
    /// Replies owed to callers, by behaviour and request id: each request/response
    /// behaviour numbers its requests itself, so ids repeat across protocols.
    pending: HashMap<(Channel, OutboundRequestId), Reply>,
    /// Inbound direct messages waiting for the engine's answer.
    inbound: HashMap<u64, ResponseChannel<Frame>>,
    next_inbound: u64,
    relays: HashMap<PeerId, RelayState>,
    /// Acknowledgement queues of the live streams, by relay.
    live: HashMap<PeerId, tern_relay::live::AckQueue>,
    /// Non-relay peers: (direct connections, relayed connections).
    direct_conns: HashMap<PeerId, (u32, u32)>,
    /// Peers we already tried to dial directly after learning their addresses.
    dialed_direct: HashSet<PeerId>,
    /// Relayed connections to non-relay peers, closed once a direct one is up: a circuit is
    /// limited in bytes and time, so a stream on it (a file from a peer) would be cut, and
    /// it costs the relay bandwidth.
    relayed_conns: HashMap<PeerId, Vec<libp2p::swarm::ConnectionId>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Which request/response behaviour a request went out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Channel {
    Mailbox,
    Presence,
    Directory,
    Direct,
}

impl Channel {
    fn of(proto: Proto) -> Self {
        match proto {
            Proto::Mailbox => Channel::Mailbox,
            Proto::Presence => Channel::Presence,
            Proto::Directory => Channel::Directory,
        }
    }
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

impl EventLoop {
    /// Runs until every [`Client`] is dropped.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(REDIAL_BASE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                _ = tick.tick() => self.redial_due(),
            }
        }
    }

    fn emit(&self, ev: Event) -> bool {
        match self.events.try_send(ev) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!("network event queue full; dropping an event");
                false
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Request {
                peer,
                proto,
                frame,
                reply,
            } => {
                let b = &mut self.swarm.behaviour_mut().relay_proto;
                let id = match proto {
                    Proto::Mailbox => b.mailbox.send_request(&peer, Frame::Data(frame)),
                    Proto::Presence => b.presence.send_request(&peer, Frame::Data(frame)),
                    Proto::Directory => b.directory.send_request(&peer, Frame::Data(frame)),
                };
                self.pending.insert((Channel::of(proto), id), reply);
            }
            Command::Direct { peer, frame, reply } => {
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(NetError::Transport("not connected".into())));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .direct
                    .send_request(&peer, Frame::Data(frame));
                self.pending.insert((Channel::Direct, id), reply);
            }
            Command::RespondDirect { id, frame } => {
                if let Some(ch) = self.inbound.remove(&id) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .direct
                        .send_response(ch, Frame::Data(frame));
                }
            }
            Command::AddRelay { addr, home } => {
                let Some(peer) = peer_of(&addr) else { return };
                self.swarm.add_peer_address(peer, addr.clone());
                let entry = self.relays.entry(peer).or_insert(RelayState {
                    addr: addr.clone(),
                    home,
                    connected: false,
                    redial_at: Some(Instant::now()),
                    backoff: REDIAL_BASE,
                });
                entry.home |= home;
                if self.swarm.is_connected(&peer) {
                    if !entry.connected {
                        entry.connected = true;
                        entry.redial_at = None;
                        let home = entry.home;
                        self.emit(Event::RelayUp(peer));
                        if home {
                            self.reserve(peer);
                        }
                    }
                } else {
                    self.redial_due();
                }
            }
            Command::ForgetRelay { peer } => {
                if self.relays.get(&peer).is_some_and(|r| !r.home)
                    && let Some(state) = self.relays.remove(&peer)
                    && state.connected
                {
                    self.emit(Event::RelayDown(peer));
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::DialVia { peer, relay } => {
                if self.swarm.is_connected(&peer) {
                    return;
                }
                let addr = relay.with(Protocol::P2pCircuit).with(Protocol::P2p(peer));
                if let Err(e) = self.swarm.dial(addr) {
                    tracing::debug!(%peer, "relayed dial failed: {e}");
                }
            }
            Command::OpenLive { relay } => {
                let open = self
                    .live
                    .get(&relay)
                    .is_some_and(tern_relay::live::AckQueue::is_open);
                if !open && self.relays.contains_key(&relay) {
                    self.swarm.behaviour_mut().relay_proto.live.open(relay);
                }
            }
            Command::LiveAck { relay, ids, reply } => {
                let queued = self
                    .live
                    .get(&relay)
                    .is_some_and(|acks| acks.try_ack(ids).is_ok());
                // The stream died with one of several connections to the relay (mail came as
                // requests meanwhile): open another on one that is left.
                if !queued
                    && self.live.get(&relay).is_some_and(|acks| !acks.is_open())
                    && self.swarm.is_connected(&relay)
                {
                    self.live.remove(&relay);
                    self.swarm.behaviour_mut().relay_proto.live.open(relay);
                }
                let _ = reply.send(queued);
            }
            Command::Connected { peer, reply } => {
                let _ = reply.send(self.swarm.is_connected(&peer));
            }
            Command::Peers { reply } => {
                let _ = reply.send(
                    self.direct_conns
                        .iter()
                        .map(|(peer, (direct, relayed))| PeerConnections {
                            peer: *peer,
                            direct: *direct,
                            relayed: *relayed,
                        })
                        .collect(),
                );
            }
        }
    }

    fn reserve(&mut self, relay: PeerId) {
        let Some(state) = self.relays.get(&relay) else {
            return;
        };
        let addr = state.addr.clone().with(Protocol::P2pCircuit);
        if let Err(e) = self.swarm.listen_on(addr) {
            tracing::warn!(%relay, "cannot request a circuit reservation: {e}");
        }
    }

    fn redial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(PeerId, Multiaddr)> = self
            .relays
            .iter_mut()
            .filter(|(_, s)| !s.connected && s.redial_at.is_some_and(|t| t <= now))
            .map(|(p, s)| {
                s.redial_at = Some(now + s.backoff);
                s.backoff = (s.backoff * 2).min(REDIAL_MAX);
                (*p, s.addr.clone())
            })
            .collect();
        for (peer, addr) in due {
            let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "relay dial not started: {e}");
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::RelayProto(ev)) => self.on_relay_proto(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Direct(ev)) => self.on_direct(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Circuit(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                self.emit(Event::Reservation(relay_peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => {
                self.emit(Event::HolePunch {
                    peer: remote_peer_id,
                    ok: result.is_ok(),
                });
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some(state) = self.relays.get_mut(&peer_id) {
                    if !state.connected {
                        state.connected = true;
                        state.redial_at = None;
                        state.backoff = REDIAL_BASE;
                        let home = state.home;
                        self.emit(Event::RelayUp(peer_id));
                        if home {
                            self.reserve(peer_id);
                        }
                    }
                    return;
                }
                let relayed = is_relayed(endpoint.get_remote_address());
                let e = self.direct_conns.entry(peer_id).or_insert((0, 0));
                if relayed {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
                let has_direct = e.0 > 0;
                if relayed {
                    self.relayed_conns
                        .entry(peer_id)
                        .or_default()
                        .push(connection_id);
                }
                if has_direct {
                    // A direct connection is up: the circuits to this peer are not needed.
                    for id in self.relayed_conns.remove(&peer_id).unwrap_or_default() {
                        self.swarm.close_connection(id);
                    }
                }
                if num_established.get() == 1 || !relayed {
                    self.emit(Event::PeerUp {
                        peer: peer_id,
                        relayed,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some(ids) = self.relayed_conns.get_mut(&peer_id) {
                    ids.retain(|c| *c != connection_id);
                }
                if let Some(state) = self.relays.get_mut(&peer_id) {
                    if num_established == 0 && state.connected {
                        state.connected = false;
                        state.redial_at = Some(Instant::now() + REDIAL_BASE);
                        state.backoff = REDIAL_BASE;
                        self.emit(Event::RelayDown(peer_id));
                    }
                    return;
                }
                if let Some(e) = self.direct_conns.get_mut(&peer_id) {
                    if is_relayed(endpoint.get_remote_address()) {
                        e.1 = e.1.saturating_sub(1);
                    } else {
                        e.0 = e.0.saturating_sub(1);
                    }
                }
                if num_established == 0 {
                    self.direct_conns.remove(&peer_id);
                    self.dialed_direct.remove(&peer_id);
                    self.relayed_conns.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, "dial failed: {error}");
            }
            _ => {}
        }
    }

    /// The live stream to a relay opened: its pushes become [`Event::Mail`] like `Deliver`
    /// requests, and acknowledgements go back on it.
    fn on_live(&mut self, ev: tern_relay::live::Event) {
        match ev {
            tern_relay::live::Event::Outbound { peer, stream }
                if self.relays.contains_key(&peer) =>
            {
                let acks = tern_relay::live::spawn_client_end(
                    stream,
                    self.events.clone(),
                    move |envelopes| Event::Mail {
                        relay: peer,
                        envelopes,
                    },
                );
                self.live.insert(peer, acks);
            }
            tern_relay::live::Event::OpenFailed { peer, error } => {
                tracing::debug!(%peer, %error, "live stream not opened; pushes come as requests");
            }
            _ => {}
        }
    }

    fn on_relay_proto(&mut self, ev: relay_client::BehaviourEvent) {
        match ev {
            relay_client::BehaviourEvent::Mailbox(ev) => self.on_rr(Proto::Mailbox, ev),
            relay_client::BehaviourEvent::Presence(ev) => self.on_rr(Proto::Presence, ev),
            relay_client::BehaviourEvent::Directory(ev) => self.on_rr(Proto::Directory, ev),
            relay_client::BehaviourEvent::Live(ev) => self.on_live(ev),
            relay_client::BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            }) => self.on_identify(peer_id, info),
            _ => {}
        }
    }

    /// A contact's device told us its listen addresses: remember them and, if we only
    /// reach it through a relay circuit, try a direct connection (DCUtR handles the NAT case).
    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if self.relays.contains_key(&peer) {
            return;
        }
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(|a| !is_relayed(a))
            .collect();
        for a in &addrs {
            self.swarm.add_peer_address(peer, a.clone());
        }
        let only_relayed = self
            .direct_conns
            .get(&peer)
            .is_some_and(|(d, r)| *d == 0 && *r > 0);
        if only_relayed && !addrs.is_empty() && self.dialed_direct.insert(peer) {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(libp2p::swarm::dial_opts::PeerCondition::NotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "direct dial not started: {e}");
            }
        }
    }

    fn complete(
        &mut self,
        channel: Channel,
        id: OutboundRequestId,
        result: Result<Frame, NetError>,
    ) {
        if let Some(tx) = self.pending.remove(&(channel, id)) {
            let _ = tx.send(result);
        }
    }

    fn on_rr(&mut self, proto: Proto, ev: request_response::Event<Frame, Frame>) {
        match ev {
            request_response::Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.complete(Channel::of(proto), request_id, Ok(response)),
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.complete(
                Channel::of(proto),
                request_id,
                Err(NetError::Transport(error.to_string())),
            ),
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                // Only relays we chose may push to us.
                if !self.relays.contains_key(&peer) {
                    return;
                }
                let b = &mut self.swarm.behaviour_mut().relay_proto;
                match proto {
                    Proto::Mailbox => {
                        let (event, answer) = match mailbox::Request::from_frame(&request) {
                            Ok(mailbox::Request::Deliver { messages }) => (
                                Some(Event::Mail {
                                    relay: peer,
                                    envelopes: messages,
                                }),
                                mailbox::Response::Ok,
                            ),
                            _ => (
                                None,
                                mailbox::Response::Error(Rejection::new(ErrorCode::BadRequest)),
                            ),
                        };
                        if let Ok(bytes) = answer.encode() {
                            let _ = b.mailbox.send_response(channel, Frame::Data(bytes));
                        }
                        if let Some(ev) = event
                            && !self.emit(ev)
                        {
                            // The mail stays in the mailbox; have the engine fetch it.
                            let _ = self.events.try_send(Event::MailDropped(peer));
                        }
                    }
                    Proto::Presence => {
                        let (event, answer) = match presence::Request::from_frame(&request) {
                            Ok(presence::Request::Update { entries }) => {
                                (Some(Event::Presence(entries)), presence::Response::Ok)
                            }
                            _ => (
                                None,
                                presence::Response::Error(Rejection::new(ErrorCode::BadRequest)),
                            ),
                        };
                        if let Ok(bytes) = answer.encode() {
                            let _ = b.presence.send_response(channel, Frame::Data(bytes));
                        }
                        if let Some(ev) = event {
                            self.emit(ev);
                        }
                    }
                    Proto::Directory => {}
                }
            }
            _ => {}
        }
    }

    fn on_direct(&mut self, ev: request_response::Event<Frame, Frame>) {
        match ev {
            request_response::Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.complete(Channel::Direct, request_id, Ok(response)),
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.complete(
                Channel::Direct,
                request_id,
                Err(NetError::Transport(error.to_string())),
            ),
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let refuse = |code| direct::Response::Error(Rejection::new(code)).encode();
                let ciphertext = match direct::Request::from_frame(&request) {
                    Ok(direct::Request::Message { ciphertext }) => ciphertext.into_vec(),
                    Err(_) => {
                        if let Ok(bytes) = refuse(ErrorCode::Malformed) {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .direct
                                .send_response(channel, Frame::Data(bytes));
                        }
                        return;
                    }
                };
                let id = self.next_inbound;
                self.next_inbound += 1;
                if self.emit(Event::Direct {
                    peer,
                    id,
                    ciphertext,
                }) {
                    self.inbound.insert(id, channel);
                } else if let Ok(bytes) = refuse(ErrorCode::Unavailable) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .direct
                        .send_response(channel, Frame::Data(bytes));
                }
            }
            _ => {}
        }
    }
}

/// Builds a mailbox/presence/directory request frame and decodes the typed answer.
/// One relay over this node's network task: the relay's typed requests
/// ([`tern_relay::rpc::Requests`]) on it.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    net: &'a Client,
    relay: PeerId,
}

impl Client {
    /// The relay `relay`, for its typed requests.
    pub fn at(&self, relay: PeerId) -> At<'_> {
        At { net: self, relay }
    }
}

impl tern_relay::rpc::Transport for At<'_> {
    fn send(
        &self,
        proto: Proto,
        frame: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Frame, NetError>> + Send {
        self.net.request(self.relay, proto, frame)
    }
}

/// What the node adds to the relay's requests: one-recipient deposits that fail when
/// refused, a stale device list that is not an error, live delivery and acknowledgements on
/// the live stream.
pub mod rpc {
    use tern_relay::rpc::Requests as _;

    use super::*;

    /// Deposits a ciphertext for one device, showing `token` (made from the grant the device
    /// issued, for this relay; `None`: an introduction); returns once durable at the relay.
    pub async fn deposit(
        net: &Client,
        relay: PeerId,
        recipient: PeerId,
        token: Option<[u8; 32]>,
        ciphertext: Vec<u8>,
    ) -> Result<(), NetError> {
        let refused = deposit_many(net, relay, vec![(recipient, token)], ciphertext).await?;
        match refused.first() {
            None => Ok(()),
            Some(r) => Err(NetError::Rejected(Rejection::new(r.code))),
        }
    }

    /// Deposits one ciphertext for many devices in one deposit (the relay stores it once),
    /// each with its token; returns the recipients refused, with why. It goes on the relay's
    /// deposit stream when one is open, else as a request (see `pipeline`).
    pub async fn deposit_many(
        net: &Client,
        relay: PeerId,
        recipients: Vec<(PeerId, Option<[u8; 32]>)>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<mailbox::Refusal>, NetError> {
        let (peers, tokens) = recipients.into_iter().unzip();
        let (_, refused) = match net.pipes.get(relay, &net.streams) {
            Some(pipe) => pipe.deposit_with(peers, tokens, None, ciphertext).await?,
            None => {
                net.at(relay)
                    .deposit_with(peers, tokens, None, ciphertext)
                    .await?
            }
        };
        Ok(refused)
    }

    /// Acknowledges mail on the relay's live stream when one is open (no answer comes; a
    /// lost acknowledgement leaves the mail to be fetched again), else as an `Ack` request.
    pub async fn ack_mail(net: &Client, relay: PeerId, ids: Vec<u64>) -> Result<(), NetError> {
        if net.live_ack(relay, ids.clone()).await {
            return Ok(());
        }
        net.at(relay).ack(ids).await.map(drop)
    }

    /// Turns live delivery on, and opens the live stream for it.
    pub async fn listen(net: &Client, relay: PeerId) -> Result<(), NetError> {
        net.at(relay).set_listen(true).await?;
        net.open_live(relay).await
    }

    /// Publishes the signed device list (a stale list is not an error: it is already there).
    pub async fn publish_device_list(
        net: &Client,
        relay: PeerId,
        list: Vec<u8>,
    ) -> Result<(), NetError> {
        match net.at(relay).publish_device_list(list).await {
            Err(NetError::Rejected(r)) if r.code == ErrorCode::Stale => Ok(()),
            other => other,
        }
    }
}
