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
//! the commands and events defined here; `hedge` asks several relays for one answer without
//! waiting on a slow one. `client` and the loop share only the command and
//! event queues.

mod client;
mod dht;
pub mod direct;
mod event_loop;
mod events;
pub(crate) mod hedge;
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

/// Why a dial to a relay failed, as far as the user can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialProblem {
    /// Something answered at the relay's address, proving another identity than the one
    /// the address names: a relay that lost its data directory (its key with it) starts
    /// with a new one, and so does anyone else who now listens there.
    OtherIdentity(PeerId),
    /// Nothing answered in a way that let a connection come up; the cause, in short.
    Unreachable(String),
}

impl DialProblem {
    /// Classifies a failed dial.
    pub(crate) fn of(error: &libp2p::swarm::DialError) -> Self {
        use libp2p::{TransportError, swarm::DialError};
        match error {
            DialError::WrongPeerId { obtained, .. } => DialProblem::OtherIdentity(*obtained),
            DialError::Transport(errors) => {
                let cause = errors.iter().find_map(|(_, e)| match e {
                    TransportError::Other(e) => Some(short_io(e)),
                    TransportError::MultiaddrNotSupported(_) => None,
                });
                DialProblem::Unreachable(cause.unwrap_or_else(|| "no usable address".into()))
            }
            DialError::NoAddresses => DialProblem::Unreachable("no address known".into()),
            other => DialProblem::Unreachable(other.to_string()),
        }
    }
}

/// An I/O error of a dial in a few words for the user: the innermost error's text (the
/// transports wrap the operating system's error in layers of their own), without its error
/// number, as in "connection refused". A connection the peer cut while it was being set up
/// says what usually does that: a relay at its connection limit.
fn short_io(e: &std::io::Error) -> String {
    let (cause, mut cut) = innermost(e);
    let text = short_text(cause);
    // Some layers hide the I/O error's kind (a wrapper whose `source` is the wrapped
    // error's own); its words are the same.
    cut |= matches!(
        text.as_str(),
        "connection reset by peer" | "broken pipe" | "unexpected end of file"
    );
    if cut {
        format!(
            "{text}: it closed the connection as it opened (a relay at its limit of \
             connections, in all or from this address, does that; tried again)"
        )
    } else {
        text
    }
}

/// What the operating system said of an I/O error, in a few words (as [`short_io`], with
/// nothing added): a listen address that cannot be used says why.
pub(crate) fn os_text(e: &std::io::Error) -> String {
    short_text(innermost(e).0)
}

/// The innermost error under `e`, and whether any layer said the peer cut the connection.
fn innermost(e: &std::io::Error) -> (&(dyn std::error::Error + 'static), bool) {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    let mut cut = false;
    loop {
        // An I/O error's own `source` skips the error it wraps: that one is looked at too.
        let mut wrapped = None;
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
            cut |= matches!(io.kind(), ConnectionReset | BrokenPipe | UnexpectedEof);
            wrapped = io
                .get_ref()
                .map(|e| e as &(dyn std::error::Error + 'static));
        }
        match wrapped.or_else(|| cause.source()) {
            Some(inner) => cause = inner,
            None => break,
        }
    }
    (cause, cut)
}

/// `cause`'s text, without an error number, starting in lower case.
fn short_text(cause: &dyn std::error::Error) -> String {
    let text = cause.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text,
    };
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// Something the network tells the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection to a relay came up (first connection).
    RelayUp(PeerId),
    /// The last connection to a relay closed.
    RelayDown(PeerId),
    /// A dial to a relay failed (it is dialled again later); why, for the user.
    RelayDialFailed {
        /// The relay dialled.
        relay: PeerId,
        /// What went wrong.
        problem: DialProblem,
    },
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
    Presence {
        /// The relay.
        relay: PeerId,
        /// The changes.
        entries: Vec<presence::Entry>,
    },
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
    /// The last connection to a (non-relay) peer closed.
    PeerDown {
        /// The peer.
        peer: PeerId,
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
    /// Dial `addr` (ending in `/p2p/<peer id>`) on a connection of its own, even while
    /// connected to that peer elsewhere; answer whether a connection came up there.
    Probe {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), DialProblem>>,
    },
    /// Whether a direct (not relayed) connection to the peer is open.
    DirectUp {
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

    /// The next dial through a relay circuit asked for so far, (device, relay address);
    /// other commands are passed over (a request's sender sees it fail).
    pub(crate) fn dial(&mut self) -> Option<(PeerId, Multiaddr)> {
        while let Ok(cmd) = self.cmds.try_recv() {
            if let Command::DialVia { peer, relay } = cmd {
                return Some((peer, relay));
            }
        }
        None
    }

    /// The next relay request of `proto` sent; others are passed over (their senders see
    /// the request fail).
    pub(crate) async fn request_for(
        &mut self,
        proto: tern_relay::client::Proto,
    ) -> Option<HeldRequest> {
        while let Some(request) = self.request().await {
            if request.proto == proto {
                return Some(request);
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

#[cfg(test)]
mod tests {
    use super::{os_text, short_io};

    /// The operating system's error comes out in a few words, however deeply the transports
    /// wrapped it; other errors keep their text. (Error 111 is Linux's "connection refused".)
    #[test]
    #[cfg(target_os = "linux")]
    fn dial_errors_come_out_in_a_few_words() {
        let os = std::io::Error::from_raw_os_error(111);
        let wrapped = std::io::Error::other(Box::new(std::io::Error::other(os)));
        assert_eq!(
            short_io(&std::io::Error::from_raw_os_error(111)),
            "connection refused"
        );
        assert_eq!(short_io(&wrapped), "connection refused");
        assert_eq!(
            short_io(&std::io::Error::other("Handshake failed")),
            "handshake failed"
        );
    }

    /// A connection the peer cut as it opened (reset, a broken pipe, an early end), however
    /// wrapped, is said to be what a relay at its connection limit does; a refused one is not.
    /// (Error 104 is Linux's "connection reset by peer".)
    #[test]
    #[cfg(target_os = "linux")]
    fn a_connection_cut_as_it_opened_points_at_the_relays_limit() {
        let reset = std::io::Error::from_raw_os_error(104);
        let wrapped = std::io::Error::other(std::io::Error::other(reset));
        for e in [
            wrapped,
            std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof"),
        ] {
            let said = short_io(&e);
            assert!(said.contains("limit of connections"), "{said}");
        }
        let reset = short_io(&std::io::Error::from_raw_os_error(104));
        assert!(reset.starts_with("connection reset by peer: "), "{reset}");
        let refused = short_io(&std::io::Error::from_raw_os_error(111));
        assert!(!refused.contains("limit"), "{refused}");
    }

    /// A listen address that cannot be used says what the operating system said, though
    /// libp2p's transport error says nothing itself. (Error 98 is Linux's "address in use".)
    #[test]
    #[cfg(target_os = "linux")]
    fn a_listen_failure_says_what_the_os_said() {
        let e: libp2p::TransportError<std::io::Error> =
            libp2p::TransportError::Other(std::io::Error::from_raw_os_error(98));
        assert_eq!(e.to_string(), "", "libp2p says nothing itself");
        let libp2p::TransportError::Other(io) = &e else {
            unreachable!()
        };
        assert_eq!(os_text(io), "address already in use");
    }
}
