//! `/tern/live/1`: one long-lived substream per connection, on which the relay pushes new mail
//! to a listening client and the client acknowledges it.
//!
//! Pushing over `/tern/mailbox/1` costs a substream per message and recipient: open it,
//! negotiate the protocol, send, wait for the answer, close; and the acknowledgement costs
//! another. For a group message to 499 listening devices that was 350–410 µs of relay CPU per
//! recipient (`tern-bench group`), and it set the floor of a group message's latency. On the
//! live stream a push is one length-prefixed frame and so is an acknowledgement: 80–85 µs.
//!
//! The client opens the stream (a relay never dials); either side may close it at any time,
//! and everything falls back to `/tern/mailbox/1`: the relay pushes with `Deliver` requests to
//! a listening client without a live stream (or whose stream is backed up), and a client acks
//! with `Ack` requests without one. Frames are `u32` big-endian length, then a frame of the
//! mailbox protocol (version byte, CBOR): relay → client `Request::Deliver`, client → relay
//! `Request::Ack`. Acknowledgements on the stream get no answer; one that is lost leaves the
//! message in the mailbox, to be fetched (and dropped as a duplicate) again.

use std::{
    collections::VecDeque,
    task::{Context, Poll},
};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, transport::PortUse, upgrade::ReadyUpgrade},
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
        handler::{ConnectionEvent, FullyNegotiatedInbound, FullyNegotiatedOutbound},
    },
};
use tokio::sync::mpsc;

use crate::wire::mailbox::{self, Envelope};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/live/1");

/// Longest frame a client reads (a `Deliver`); a longer length prefix closes the stream.
pub const MAX_FRAME_BYTES: usize = mailbox::MAX_REQUEST_BYTES;

/// Longest frame a relay reads (an `Ack` of at most [`mailbox::MAX_ACK_IDS`] ids is under
/// 10 KiB), so a client cannot make the relay buffer more than this per stream.
pub const MAX_ACK_FRAME_BYTES: usize = 16 * 1024;

/// Frames a client end buffers for writing (acknowledgements); beyond it, callers fall back.
pub const CLIENT_QUEUE: usize = 64;

pub use crate::wire::stream::{read_frame, write_frame};

/// A client's hold on its live stream: where its acknowledgements go.
#[derive(Debug, Clone)]
pub struct AckQueue(mpsc::Sender<Vec<u64>>);

impl AckQueue {
    /// Whether the stream is still open.
    pub fn is_open(&self) -> bool {
        !self.0.is_closed()
    }

    /// Queues an acknowledgement; gives the ids back when the stream is closed or backed up
    /// (then acknowledge with an `Ack` request).
    pub fn try_ack(&self, ids: Vec<u64>) -> Result<(), Vec<u64>> {
        self.0.try_send(ids).map_err(|e| e.into_inner())
    }
}

/// Runs the client's end of a live stream in a task of its own and returns its
/// acknowledgement queue (of [`CLIENT_QUEUE`] frames). `Deliver` frames from the relay become
/// `wrap(envelopes)` on `deliveries`, waiting for room.
pub fn spawn_client_end<E: Send + 'static>(
    stream: Stream,
    deliveries: mpsc::Sender<E>,
    wrap: impl Fn(Vec<Envelope>) -> E + Send + Sync + 'static,
) -> AckQueue {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    tokio::spawn(client_end(stream, deliveries, wrap, rx));
    AckQueue(tx)
}

/// The client's end: `Deliver` frames from the relay become `wrap(envelopes)` on `deliveries`
/// (waiting for room, so a slow reader slows the relay's writes, not the other way round), and
/// each id list from `acks` goes to the relay as an `Ack` frame. Returns when either side
/// closes or breaks the stream, or a frame does not decode.
async fn client_end<E>(
    stream: Stream,
    deliveries: mpsc::Sender<E>,
    wrap: impl Fn(Vec<Envelope>) -> E,
    acks: mpsc::Receiver<Vec<u64>>,
) {
    let take = |req| match req {
        mailbox::Request::Deliver { messages } => Some(wrap(messages)),
        _ => None,
    };
    let encode = |ids| match (mailbox::Request::Ack { ids }).encode() {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(error = %e, "cannot encode a live ack");
            None
        }
    };
    run_end(stream, MAX_FRAME_BYTES, take, deliveries, acks, encode).await;
}

/// The relay's end: each frame from `frames` (an encoded `Deliver`) is written to the client,
/// and each `Ack` frame the client sends becomes `wrap(ids)` on `acks` (waiting for room).
/// Returns when either side closes or breaks the stream, or a frame does not decode.
pub async fn server_end<E>(
    stream: Stream,
    frames: mpsc::Receiver<Vec<u8>>,
    acks: mpsc::Sender<E>,
    wrap: impl Fn(Vec<u64>) -> E,
) {
    let take = |req| match req {
        mailbox::Request::Ack { ids } if ids.len() <= mailbox::MAX_ACK_IDS => Some(wrap(ids)),
        _ => None,
    };
    run_end(stream, MAX_ACK_FRAME_BYTES, take, acks, frames, Some).await;
}

/// Both ends: reads frames of at most `max_in` bytes and passes what `take` makes of each to
/// `incoming` (waiting for room), until `take` refuses one (`None`); writes `encode(item)` for
/// each item of `out`. Returns when either direction ends. When `out` closes (its owner
/// dropped it) the stream is closed too.
async fn run_end<T, E>(
    stream: Stream,
    max_in: usize,
    take: impl Fn(mailbox::Request) -> Option<E>,
    incoming: mpsc::Sender<E>,
    mut out: mpsc::Receiver<T>,
    encode: impl Fn(T) -> Option<Vec<u8>>,
) {
    let (mut r, mut w) = stream.split();
    let reading = async {
        loop {
            let frame = match read_frame(&mut r, max_in).await {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "live stream read failed");
                    return;
                }
            };
            let Some(item) = mailbox::Request::decode(&frame).ok().and_then(&take) else {
                tracing::debug!("live stream: unexpected or undecodable frame; closing");
                return;
            };
            if incoming.send(item).await.is_err() {
                return;
            }
        }
    };
    let writing = async {
        while let Some(item) = out.recv().await {
            let Some(frame) = encode(item) else { continue };
            if let Err(e) = write_frame(&mut w, &frame).await {
                tracing::debug!(error = %e, "live stream write failed");
                return;
            }
        }
        let _ = w.close().await;
    };
    tokio::select! {
        () = reading => {}
        () = writing => {}
    }
}

/// What the behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// A peer opened a live stream to us (relays accept these; clients drop them).
    Inbound {
        /// Who opened it.
        peer: PeerId,
        /// The stream, ready for frames.
        stream: Stream,
    },
    /// The live stream we asked for with [`Behaviour::open`] is open.
    Outbound {
        /// The relay.
        peer: PeerId,
        /// The stream, ready for frames.
        stream: Stream,
    },
    /// The stream we asked for could not be opened (the relay may predate it).
    OpenFailed {
        /// The relay.
        peer: PeerId,
        /// Why, for logs.
        error: String,
    },
}

/// Hands out live streams: on a relay, the ones clients open; on a client, the one it opens.
#[derive(Debug)]
pub struct Behaviour {
    accept_inbound: bool,
    events: VecDeque<ToSwarm<Event, Command>>,
}

impl Behaviour {
    /// A relay's: accepts live streams from clients.
    pub fn server() -> Self {
        Self {
            accept_inbound: true,
            events: VecDeque::new(),
        }
    }

    /// A client's: opens live streams, accepts none.
    pub fn client() -> Self {
        Self {
            accept_inbound: false,
            events: VecDeque::new(),
        }
    }

    /// Opens a live stream to `peer` on one of its connections; the answer is an
    /// [`Event::Outbound`] or an [`Event::OpenFailed`].
    pub fn open(&mut self, peer: PeerId) {
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::Any,
            event: Command::Open,
        });
    }
}

/// A behaviour's instruction to a connection.
#[derive(Debug)]
pub enum Command {
    /// Open an outbound live stream.
    Open,
}

/// A connection's report to the behaviour.
#[derive(Debug)]
pub enum HandlerEvent {
    /// An inbound stream (only when accepting).
    Inbound(Stream),
    /// The outbound stream asked for.
    Outbound(Stream),
    /// The outbound stream could not be opened.
    OpenFailed(String),
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.accept_inbound))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.accept_inbound))
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let ev = match event {
            HandlerEvent::Inbound(stream) => Event::Inbound { peer, stream },
            HandlerEvent::Outbound(stream) => Event::Outbound { peer, stream },
            HandlerEvent::OpenFailed(error) => Event::OpenFailed { peer, error },
        };
        self.events.push_back(ToSwarm::GenerateEvent(ev));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(ev) => Poll::Ready(ev),
            None => Poll::Pending,
        }
    }
}

/// One connection's side: opens the outbound stream on request and passes streams up. The
/// streams live on in the tasks that use them; the connection is kept by its other protocols.
#[derive(Debug)]
pub struct Handler {
    accept_inbound: bool,
    to_open: usize,
    events: VecDeque<HandlerEvent>,
}

impl Handler {
    fn new(accept_inbound: bool) -> Self {
        Self {
            accept_inbound,
            to_open: 0,
            events: VecDeque::new(),
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Command;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        if let Some(ev) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(ev));
        }
        if self.to_open > 0 {
            self.to_open -= 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, Command::Open: Command) {
        self.to_open += 1;
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            // A client never takes a stream it did not ask for: the catch-all below drops
            // it, which closes it.
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) if self.accept_inbound => self.events.push_back(HandlerEvent::Inbound(stream)),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => self.events.push_back(HandlerEvent::Outbound(stream)),
            ConnectionEvent::DialUpgradeError(e) => self
                .events
                .push_back(HandlerEvent::OpenFailed(e.error.to_string())),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = futures::io::Cursor::new(Vec::new());
        write_frame(&mut buf, b"hello").await.unwrap();
        write_frame(&mut buf, b"").await.unwrap();
        let mut r = futures::io::Cursor::new(buf.into_inner());
        assert_eq!(read_frame(&mut r, 16).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).await.unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 16).await.unwrap().is_none(), "clean end");

        let mut big = futures::io::Cursor::new(Vec::new());
        write_frame(&mut big, &[7u8; 17]).await.unwrap();
        let mut r = futures::io::Cursor::new(big.into_inner());
        let err = read_frame(&mut r, 16).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // A frame cut short is an error, not a clean end.
        let mut cut = futures::io::Cursor::new(vec![0, 0, 0, 9, 1, 2]);
        assert!(read_frame(&mut cut, 16).await.is_err());
    }
}
