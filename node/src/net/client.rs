//! The handle to the event loop: each call is a `Command` with a oneshot for the answer,
//! and [`At`] carries the relay's typed requests (`tern_relay::rpc`) to one relay.
//!
//! Depends only on the parent module's types (commands, events) and `pipeline`; it never
//! touches the swarm.

use libp2p::{Multiaddr, PeerId};
use tern_relay::{
    client::Proto,
    wire::{ErrorCode, Frame, Rejection},
};
use tokio::sync::{mpsc, oneshot};

use super::{Command, NetError, PeerConnections, direct, pipeline};

/// A handle to the network event loop.
#[derive(Clone)]
pub struct Client {
    pub(super) cmd: mpsc::Sender<Command>,
    pub(super) local: PeerId,
    pub(super) streams: libp2p_stream::Control,
    /// The `/tern/blob/1` streams peers open here, until taken.
    pub(super) file_streams:
        std::sync::Arc<std::sync::Mutex<Option<tern_relay::inbound::Incoming>>>,
    /// Deposit streams to relays.
    pub(super) pipes: std::sync::Arc<pipeline::Pipes>,
    /// Places for requests in flight, per protocol, for all relays together (each relay
    /// drops streams beyond its limit per connection and protocol).
    pub(super) in_flight: std::sync::Arc<tern_relay::rpc::InFlight>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// This device's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// A handle that opens `/tern/blob/1` streams, for tasks off the event loop.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// The `/tern/blob/1` streams peers open at this device, to fetch its files: given to the
    /// first caller only (`None` after that).
    pub fn take_file_streams(&self) -> Option<tern_relay::inbound::Incoming> {
        self.file_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    pub(super) async fn send(&self, cmd: Command) -> Result<(), NetError> {
        self.cmd.send(cmd).await.map_err(|_| NetError::Closed)
    }

    /// Sends a raw frame on a relay protocol to `peer` and returns the answer frame. With
    /// [`tern_relay::rpc::DEFAULT_REQUESTS_IN_FLIGHT`] requests of `proto` unanswered (at
    /// all relays together), it waits for one to end first.
    pub async fn request(
        &self,
        peer: PeerId,
        proto: Proto,
        frame: Vec<u8>,
    ) -> Result<Frame, NetError> {
        let _place = self
            .in_flight
            .acquire(proto)
            .await
            .map_err(|_| NetError::Closed)?;
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

    /// Like [`Client::add_relay`], without waiting: queued at once, ahead of whatever is sent
    /// after it, unless the command queue is full (then sent from a task) or the network
    /// has stopped.
    pub fn add_relay_soon(&self, addr: Multiaddr, home: bool) {
        self.send_soon(Command::AddRelay { addr, home });
    }

    /// Dials `addr` (ending in `/p2p/<peer id>`) on a connection of its own, even while
    /// connected to that peer at another address: whether the peer answers there.
    pub async fn probe(&self, addr: Multiaddr) -> Result<(), super::DialProblem> {
        let (reply, rx) = oneshot::channel();
        let closed = || super::DialProblem::Unreachable("the network task stopped".into());
        self.send(Command::Probe { addr, reply })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Stops keeping a connection to a relay added with `home: false` (a home relay stays).
    pub async fn forget_relay(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::ForgetRelay { peer }).await
    }

    /// Like [`Client::forget_relay`], without waiting (queued as [`Client::add_relay_soon`]
    /// queues).
    pub fn forget_relay_soon(&self, peer: PeerId) {
        self.send_soon(Command::ForgetRelay { peer });
    }

    /// A home relay is no longer one: its circuit reservation is given up and the
    /// connection is kept as for a relay added with `home: false` (queued as
    /// [`Client::add_relay_soon`] queues). Nothing happens for a relay not added.
    pub fn stop_home_soon(&self, peer: PeerId) {
        self.send_soon(Command::StopHome { peer });
    }

    /// Queues a command at once, or from a task when the queue is full.
    fn send_soon(&self, cmd: Command) {
        use tokio::sync::mpsc::error::TrySendError;
        if let Err(TrySendError::Full(cmd)) = self.cmd.try_send(cmd) {
            let tx = self.cmd.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// Dials a device through a relay circuit (DCUtR may then upgrade it), if the network
    /// task's queue has room (`false` if not: the dial is a hint, tried again later).
    pub fn dial_via(&self, peer: PeerId, relay: Multiaddr) -> bool {
        self.cmd.try_send(Command::DialVia { peer, relay }).is_ok()
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

    /// Whether a direct connection to `peer` is open (not one through a relay circuit:
    /// what goes over that passes the relay anyway, a request at a time and within the
    /// circuit's limits, where a deposit stream keeps a window in flight).
    pub async fn is_direct(&self, peer: PeerId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::DirectUp { peer, reply }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
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
