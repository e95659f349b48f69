//! The loop that owns the swarm: its state, `run`, the commands from the [`Client`](super::Client), and
//! the relays' redials and circuit reservations.
//!
//! Swarm events are handled in `events`, which uses this module's state and helpers; this
//! module calls into `events` only for `on_swarm`.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::transport::ListenerId,
    multiaddr::Protocol,
    request_response::{OutboundRequestId, ResponseChannel},
    swarm::dial_opts::DialOpts,
};
use tern_relay::{client::Proto, wire::Frame};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Command, Event, NetError, PeerConnections, Reply, swarm::Behaviour};
use crate::consts::{DIRECT_RETRY, MAX_PEER_ADDRS, REDIAL_BASE, REDIAL_MAX};

pub(super) struct RelayState {
    pub(super) addr: Multiaddr,
    pub(super) home: bool,
    pub(super) connected: bool,
    /// When to dial again, while disconnected.
    pub(super) redial_at: Option<Instant>,
    pub(super) backoff: Duration,
    /// The circuit listener of a home relay, while one was asked for.
    pub(super) listener: Option<ListenerId>,
}

/// A connected peer's own addresses, to reach it directly rather than through a circuit.
#[derive(Debug, Default)]
pub(super) struct DirectTry {
    /// Its listen addresses not through a relay, at most [`MAX_PEER_ADDRS`].
    pub(super) addrs: Vec<Multiaddr>,
    /// When they were last dialed.
    pub(super) last: Option<Instant>,
}

/// The loop that owns the swarm. Run it with [`EventLoop::run`].
pub struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) cmds: mpsc::Receiver<Command>,
    pub(super) events: mpsc::Sender<Event>,
    /// Outbound requests waiting for an answer.
    /// Replies owed to callers, by behaviour and request id: each request/response
    /// behaviour numbers its requests itself, so ids repeat across protocols.
    pub(super) pending: HashMap<(Channel, OutboundRequestId), Reply>,
    /// Inbound direct messages waiting for the engine's answer.
    pub(super) inbound: HashMap<u64, ResponseChannel<Frame>>,
    pub(super) next_inbound: u64,
    pub(super) relays: HashMap<PeerId, RelayState>,
    /// Acknowledgement queues of the live streams, by relay.
    pub(super) live: HashMap<PeerId, tern_relay::live::AckQueue>,
    /// Non-relay peers: (direct connections, relayed connections).
    pub(super) direct_conns: HashMap<PeerId, (u32, u32)>,
    /// Whether peers are dialled at their own addresses.
    pub(super) direct: bool,
    /// Connected non-relay peers' own listen addresses (from identify) and when they were
    /// last dialed; dropped with the peer's last connection.
    pub(super) direct_tries: HashMap<PeerId, DirectTry>,
    /// Relayed connections to non-relay peers, closed once a direct one is up: a circuit is
    /// limited in bytes and time, so a stream on it (a file from a peer) would be cut, and
    /// it costs the relay bandwidth.
    pub(super) relayed_conns: HashMap<PeerId, Vec<libp2p::swarm::ConnectionId>>,
    /// DHT lookups and publications in flight.
    pub(super) dht: super::dht::Queries,
    /// Dials of [`Command::Probe`] waiting for their outcome (at most [`MAX_PROBES`]).
    pub(super) probes: HashMap<libp2p::swarm::ConnectionId, ProbeReply>,
}

/// Where a probe's outcome goes.
pub(super) type ProbeReply = oneshot::Sender<Result<(), super::DialProblem>>;

/// Probes in flight at most; more are refused at once.
const MAX_PROBES: usize = 16;

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

pub(super) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Which request/response behaviour a request went out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Channel {
    Mailbox,
    Presence,
    Directory,
    Direct,
}

impl Channel {
    pub(super) fn of(proto: Proto) -> Self {
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
    /// Runs until every [`Client`](super::Client) is dropped.
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

    pub(super) fn emit(&self, ev: Event) -> bool {
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
                // A peer connected so far as another peer (on the connection `relay add`
                // checked it on) is a relay from now on: its connections are the relays'.
                if !self.relays.contains_key(&peer) && self.direct_conns.remove(&peer).is_some() {
                    self.direct_tries.remove(&peer);
                    self.relayed_conns.remove(&peer);
                    self.emit(Event::PeerDown { peer });
                }
                self.swarm.add_peer_address(peer, addr.clone());
                // Every relay is a server of the DHT, and so a way into it.
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                let entry = self.relays.entry(peer).or_insert(RelayState {
                    addr: addr.clone(),
                    home,
                    connected: false,
                    redial_at: Some(Instant::now()),
                    backoff: REDIAL_BASE,
                    listener: None,
                });
                // The same relay at a new address (it moved): dialled there from now on, at
                // once if it is not connected.
                if entry.addr != addr {
                    entry.addr = addr.clone();
                    if !entry.connected {
                        entry.redial_at = Some(Instant::now());
                        entry.backoff = REDIAL_BASE;
                    }
                }
                let promoted = home && !entry.home;
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
                    } else if promoted {
                        // Connected as a plain relay (a contact's, or one being drained), a
                        // home relay from now on: it carries circuits to this node too.
                        self.reserve(peer);
                    }
                } else {
                    self.redial_due();
                }
            }
            Command::Dht(cmd) => self.on_dht_command(cmd),
            Command::Probe { addr, reply } => self.probe(addr, reply),
            Command::ForgetRelay { peer } => {
                if self.relays.get(&peer).is_some_and(|r| !r.home)
                    && let Some(state) = self.relays.remove(&peer)
                    && state.connected
                {
                    self.emit(Event::RelayDown(peer));
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::StopHome { peer } => {
                if let Some(state) = self.relays.get_mut(&peer) {
                    state.home = false;
                    if let Some(id) = state.listener.take() {
                        self.swarm.remove_listener(id);
                    }
                }
            }
            Command::DialVia { peer, relay } => {
                if self.swarm.is_connected(&peer) {
                    // Through a circuit only: its own addresses may work by now.
                    self.try_direct(peer);
                    return;
                }
                let addr = relay.with(Protocol::P2pCircuit).with(Protocol::P2p(peer));
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
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
            Command::DirectUp { peer, reply } => {
                let direct = self.direct_conns.get(&peer).is_some_and(|(d, _)| *d > 0);
                let _ = reply.send(direct);
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

    /// Dials `addr` on a connection of its own ([`Command::Probe`]); the outcome goes to
    /// `reply` when the connection comes up or the dial fails (`on_swarm`).
    fn probe(&mut self, addr: Multiaddr, reply: ProbeReply) {
        use super::DialProblem;
        let Some(peer) = peer_of(&addr) else {
            let _ = reply.send(Err(DialProblem::Unreachable(
                "the address names no peer id".into(),
            )));
            return;
        };
        if self.probes.len() >= MAX_PROBES {
            let _ = reply.send(Err(DialProblem::Unreachable(
                "too many addresses are being tried; try again shortly".into(),
            )));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![addr])
            .override_dial_concurrency_factor(std::num::NonZeroU8::MIN)
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.probes.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(DialProblem::of(&e)));
            }
        }
    }

    /// Dials `peer`'s own addresses if it is reached only through relay circuits and they
    /// were not dialed in the last [`DIRECT_RETRY`] (DCUtR's hole punch is the other way,
    /// tried by the side that accepted the circuit).
    pub(super) fn try_direct(&mut self, peer: PeerId) {
        let only_relayed = self
            .direct_conns
            .get(&peer)
            .is_some_and(|(d, r)| *d == 0 && *r > 0);
        let now = Instant::now();
        let Some(t) = self.direct_tries.get_mut(&peer) else {
            return;
        };
        if !only_relayed
            || t.addrs.is_empty()
            || t.last.is_some_and(|l| now.duration_since(l) < DIRECT_RETRY)
        {
            return;
        }
        t.last = Some(now);
        let opts = DialOpts::peer_id(peer)
            .addresses(t.addrs.clone())
            .condition(libp2p::swarm::dial_opts::PeerCondition::NotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "direct dial not started: {e}");
        }
    }

    /// Keeps what `peer` said of its own listen addresses, to dial it directly.
    pub(super) fn learn_addrs(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let mut addrs: Vec<Multiaddr> = addrs.into_iter().filter(|a| !is_relayed(a)).collect();
        addrs.truncate(MAX_PEER_ADDRS);
        for a in &addrs {
            self.swarm.add_peer_address(peer, a.clone());
        }
        self.direct_tries.entry(peer).or_default().addrs = addrs;
    }

    pub(super) fn reserve(&mut self, relay: PeerId) {
        let Some(state) = self.relays.get(&relay) else {
            return;
        };
        let addr = state.addr.clone().with(Protocol::P2pCircuit);
        let old = match self.swarm.listen_on(addr) {
            Ok(id) => self
                .relays
                .get_mut(&relay)
                .and_then(|s| s.listener.replace(id)),
            Err(e) => {
                tracing::warn!(%relay, "cannot request a circuit reservation: {e}");
                None
            }
        };
        // One listener per relay: one left from before (its connection went down and came
        // back) is closed rather than kept beside the new one.
        if let Some(id) = old {
            self.swarm.remove_listener(id);
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
}
