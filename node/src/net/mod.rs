//! The network: one event loop owns the libp2p swarm; a cloneable [`Client`] sends it
//! commands (each with a oneshot for the answer) and the loop sends [`Event`]s back.
//! This is the shape of rust-libp2p's file-sharing example.
//!
//! The swarm runs TCP and QUIC with Noise and Yamux; identify and ping and the relay's
//! mailbox, presence and directory protocols (composed from `tern_relay::client::Behaviour`);
//! the circuit relay v2 client (a reservation at each home relay, so contacts can reach this
//! device through it) and DCUtR (to upgrade a relayed connection to a direct one); and
//! `/tern/direct/1` for device-to-device messages; and a Kademlia client of Tern's DHT of
//! relay records (`dht`).
//!
//! The parts, whose calls go one way: `swarm` builds the swarm and both ends; `rpc` is what
//! the node adds to the relay's typed requests, made on a `client`; `client` is the handle
//! ([`Client`], [`At`]) that sends commands; `event_loop` runs the loop and serves the
//! commands, and hands what the swarm reports to `events` (one `impl` on the same state, in
//! two files); below them all, `pipeline` (deposit streams), `direct` (`/tern/direct/1`),
//! `dht` (lookups and publications, handle and loop sides) and
//! the commands and events defined here. `client` and the loop share only the command and
//! event queues.

mod client;
mod dht;
pub mod direct;
mod event_loop;
mod events;
mod pipeline;
pub mod rpc;
mod swarm;

use libp2p::{Multiaddr, PeerId};
use tern_relay::{
    client::Proto,
    wire::{Frame, mailbox, presence},
};
use tokio::sync::oneshot;

pub use client::{At, Client};
pub use event_loop::EventLoop;
pub use swarm::{Config, StartError, new};

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
    /// The swarm no longer listens on an address (its listener closed: for a circuit
    /// address, the relay connection went down or the relay is no longer a home relay).
    ListenGone(Multiaddr),
}

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
    /// A home relay is no longer one: its circuit reservation is given up (its listener
    /// closed, not renewed); the connection is kept, as for any relay added with
    /// `home: false`.
    StopHome {
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
    /// Tern's DHT (`dht`).
    Dht(dht::DhtCommand),
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

/// The commands a network handle sends, held for a unit test to answer as a relay would, one
/// at a time and when the test chooses (the event loop is never run).
#[cfg(test)]
pub(crate) struct Held {
    cmds: tokio::sync::mpsc::Receiver<Command>,
}

/// A relay request held by [`Held`], waiting for its answer.
#[cfg(test)]
pub(crate) struct HeldRequest {
    /// The relay asked.
    pub relay: PeerId,
    /// The protocol.
    pub proto: Proto,
    /// The request frame.
    pub frame: Vec<u8>,
    reply: Reply,
}

#[cfg(test)]
impl EventLoop {
    /// This loop's commands, for a test to answer (the swarm is dropped).
    pub(crate) fn held(self) -> Held {
        Held { cmds: self.cmds }
    }
}

#[cfg(test)]
impl Held {
    /// The next relay request sent (other commands are passed over); `None` if every handle
    /// is gone.
    pub(crate) async fn request(&mut self) -> Option<HeldRequest> {
        while let Some(cmd) = self.cmds.recv().await {
            if let Command::Request {
                peer,
                proto,
                frame,
                reply,
            } = cmd
            {
                return Some(HeldRequest {
                    relay: peer,
                    proto,
                    frame,
                    reply,
                });
            }
        }
        None
    }
}

#[cfg(test)]
impl HeldRequest {
    /// Answers the request with a frame (or a failure).
    pub(crate) fn answer(self, answer: Result<Vec<u8>, NetError>) {
        let _ = self.reply.send(answer.map(Frame::Data));
    }
}
