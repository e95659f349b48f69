//! A client for one relay: connects, then offers typed calls for every protocol (the
//! [`crate::rpc::Requests`] it implements, plus live delivery and blobs) and a stream of
//! [`Event`]s (live mail, presence updates).
//!
//! The shape follows rust-libp2p's file-sharing example: [`Client`] is a cheap cloneable
//! handle that sends commands to a task owning the swarm, each command carrying a oneshot
//! for its answer. Dropping every handle ends the task and closes the connection. A node
//! that runs its own swarm can instead compose [`Behaviour`] (or the codecs in
//! [`crate::wire`]) into it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identify,
    multiaddr::Protocol,
    noise, ping,
    request_response::{self, Message, OutboundRequestId, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::blob::{self, BlobError};
use crate::wire::{
    Frame, FrameCodec, Rejection, directory,
    mailbox::{self, Envelope},
    presence,
};

/// Capacity of the command queue from handles to the client task.
const COMMAND_QUEUE: usize = 256;
/// Capacity of the event queue to the application; when full, events are dropped (mail
/// stays in the mailbox and can be fetched).
const EVENT_QUEUE: usize = 1024;
/// Most requests of one protocol a client may have in flight at once
/// ([`Config::max_requests_in_flight`]); more wait for one to finish (libp2p's
/// request/response handler would fail a request beyond its stream limit instead).
pub const MAX_REQUESTS_IN_FLIGHT: usize = 100;
/// Streams of one request/response protocol the connection handler runs at once: the
/// requests in flight plus room for requests the relay sends (pushed mail, presence).
const MAX_STREAMS: usize = MAX_REQUESTS_IN_FLIGHT + 28;

/// Client settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long to wait for the connection. Default 10 s.
    pub connect_timeout: Duration,
    /// How long to wait for each answer. Default 30 s.
    pub request_timeout: Duration,
    /// Close the connection after this long without any stream. Default 300 s.
    pub idle_timeout: Duration,
    /// Requests of one protocol in flight at once; further calls wait for an answer.
    /// Default 64, a relay's default `connections.max_concurrent_streams` (a relay drops
    /// streams beyond its limit); at most [`MAX_REQUESTS_IN_FLIGHT`].
    pub max_requests_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_requests_in_flight: 64,
        }
    }
}

/// Something the relay sent on its own initiative.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// New mail (after [`Client::listen`]); still to be acknowledged.
    Delivered(Vec<Envelope>),
    /// Changes of subscribed peers (after [`Requests::subscribe`]).
    Presence(Vec<presence::Entry>),
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address has no `/p2p/<peer id>` suffix.
    #[error("relay address {0} does not end in /p2p/<peer id>")]
    NoPeerId(Multiaddr),
    /// The transport could not be built.
    #[error("cannot build transport: {0}")]
    Transport(String),
    /// Dialling failed.
    #[error("cannot connect to {addr}: {message}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// What libp2p said.
        message: String,
    },
    /// No connection within the timeout.
    #[error("timed out connecting to {0}")]
    Timeout(Multiaddr),
}

pub use crate::rpc::{Proto, RequestError, Requests, Transport};
pub use behaviour::{Behaviour, BehaviourEvent};
pub use libp2p::identity::Keypair;

/// The composed behaviour; a module of its own because the derive generates an event enum
/// without docs.
#[allow(missing_docs)]
mod behaviour {
    use super::*;

    /// The libp2p behaviour a client runs: identify, ping and the relay protocols.
    #[derive(NetworkBehaviour)]
    #[behaviour(prelude = "libp2p::swarm::derive_prelude")]
    pub struct Behaviour {
        /// Identify, so the relay learns our listen addresses and agent.
        pub identify: identify::Behaviour,
        /// Ping, for liveness.
        pub ping: ping::Behaviour,
        /// `/tern/mailbox/1`.
        pub mailbox: request_response::Behaviour<FrameCodec>,
        /// `/tern/presence/1`.
        pub presence: request_response::Behaviour<FrameCodec>,
        /// `/tern/directory/1` (outbound only).
        pub directory: request_response::Behaviour<FrameCodec>,
        /// `/tern/live/1` (opened by us after `Listen`).
        pub live: crate::live::Behaviour,
        /// `/tern/blob/1`: a stream per blob transfer, opened through a
        /// [`libp2p_stream::Control`].
        pub blob: libp2p_stream::Behaviour,
    }

    impl std::fmt::Debug for Behaviour {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client::Behaviour(..)")
        }
    }

    impl Behaviour {
        /// The behaviour for a device with this public key.
        pub fn new(key: &Keypair, request_timeout: Duration) -> Self {
            let rr = |p: StreamProtocol, c: FrameCodec| {
                request_response::Behaviour::with_codec(
                    c,
                    [(p, ProtocolSupport::Full)],
                    rr_config(request_timeout),
                )
            };
            Self {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/tern/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                mailbox: rr(mailbox::PROTOCOL, mailbox::codec()),
                presence: rr(presence::PROTOCOL, presence::codec()),
                directory: request_response::Behaviour::with_codec(
                    directory::codec(),
                    [(directory::PROTOCOL, ProtocolSupport::Outbound)],
                    rr_config(request_timeout),
                ),
                live: crate::live::Behaviour::client(),
                blob: libp2p_stream::Behaviour::new(),
            }
        }
    }

    /// Every request/response protocol's settings: the timeout, and room for
    /// [`MAX_STREAMS`] streams at once.
    fn rr_config(request_timeout: Duration) -> request_response::Config {
        request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(MAX_STREAMS)
    }
}

enum Command {
    Request {
        proto: Proto,
        frame: Vec<u8>,
        reply: oneshot::Sender<Result<Frame, RequestError>>,
        /// The request's place among those in flight, held until it is answered.
        permit: OwnedSemaphorePermit,
    },
    /// Open the live stream (after `Listen`).
    OpenLive,
}

/// A caller waiting for an answer, and the place its request holds.
type Waiter = (
    oneshot::Sender<Result<Frame, RequestError>>,
    OwnedSemaphorePermit,
);

/// Callers waiting for an answer, by protocol and request id.
type Pending = HashMap<(Proto, OutboundRequestId), Waiter>;

/// Places for requests in flight, one set per protocol (each has its own stream limit).
#[derive(Debug)]
struct InFlight([Arc<Semaphore>; 3]);

impl InFlight {
    /// `n` places per protocol (1 to [`MAX_REQUESTS_IN_FLIGHT`]).
    fn new(n: usize) -> Self {
        let n = n.clamp(1, MAX_REQUESTS_IN_FLIGHT);
        Self(std::array::from_fn(|_| Arc::new(Semaphore::new(n))))
    }

    /// Waits for a place for a request of `proto`.
    async fn acquire(&self, proto: Proto) -> Result<OwnedSemaphorePermit, RequestError> {
        let i = match proto {
            Proto::Mailbox => 0,
            Proto::Presence => 1,
            Proto::Directory => 2,
        };
        self.0[i]
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RequestError::Closed)
    }
}

/// The live stream's acknowledgement queue, once one was opened.
type LiveSlot = Arc<std::sync::Mutex<Option<crate::live::AckQueue>>>;

/// A handle to a connected relay client.
#[derive(Clone)]
pub struct Client {
    cmd: mpsc::Sender<Command>,
    /// Bounds the requests in flight so none fails for want of a stream.
    in_flight: Arc<InFlight>,
    local: PeerId,
    relay: PeerId,
    live: LiveSlot,
    /// Opens `/tern/blob/1` and `/tern/deposit/1` streams on the swarm the client task drives.
    blob: libp2p_stream::Control,
    /// How long an answer may take (for the deposit stream too).
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local", &self.local)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Request { proto, .. } => f
                .debug_struct("Request")
                .field("proto", proto)
                .finish_non_exhaustive(),
            Command::OpenLive => f.write_str("OpenLive"),
        }
    }
}

impl Client {
    /// Connects to the relay at `addr` (which must end in `/p2p/<peer id>`) as `key`.
    pub async fn connect(
        key: Keypair,
        addr: Multiaddr,
        config: Config,
    ) -> Result<(Self, mpsc::Receiver<Event>), ConnectError> {
        let Some(Protocol::P2p(relay)) = addr.iter().last() else {
            return Err(ConnectError::NoPeerId(addr));
        };
        let local = key.public().to_peer_id();
        let timeout = config.request_timeout;
        let mut swarm: Swarm<Behaviour> = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                crate::yamux_config,
            )
            .map_err(|e| ConnectError::Transport(e.to_string()))?
            .with_quic()
            .with_behaviour(|key| Behaviour::new(key, timeout))
            .map_err(|e| ConnectError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
            .build();
        swarm.dial(addr.clone()).map_err(|e| ConnectError::Dial {
            addr: addr.clone(),
            message: e.to_string(),
        })?;
        let established = tokio::time::timeout(config.connect_timeout, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == relay => {
                        return Ok(());
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(ConnectError::Dial {
                            addr: addr.clone(),
                            message: error.to_string(),
                        });
                    }
                    _ => {}
                }
            }
        })
        .await;
        match established {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ConnectError::Timeout(addr)),
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let live = LiveSlot::default();
        let blob = swarm.behaviour().blob.new_control();
        tokio::spawn(run(swarm, relay, cmd_rx, ev_tx, live.clone()));
        Ok((
            Self {
                cmd: cmd_tx,
                in_flight: Arc::new(InFlight::new(config.max_requests_in_flight)),
                local,
                relay,
                live,
                blob,
                request_timeout: timeout,
            },
            ev_rx,
        ))
    }

    /// This device's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// The relay's peer id.
    pub fn relay_peer_id(&self) -> PeerId {
        self.relay
    }

    /// Sends raw frame bytes and returns the raw answer (for tests and tools). With
    /// [`Config::max_requests_in_flight`] requests of `proto` unanswered, it waits for one
    /// to end.
    pub async fn raw(&self, proto: Proto, frame: Vec<u8>) -> Result<Frame, RequestError> {
        let permit = self.in_flight.acquire(proto).await?;
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request {
                proto,
                frame,
                reply,
                permit,
            })
            .await
            .map_err(|_| RequestError::Closed)?;
        rx.await.map_err(|_| RequestError::Closed)?
    }

    /// Acknowledges pushed messages on the live stream when one is open (no answer comes:
    /// a lost acknowledgement leaves the message in the mailbox), else like [`Requests::ack`].
    pub async fn ack_pushed(&self, ids: Vec<u64>) -> Result<(), RequestError> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let ids = match live {
            Some(acks) => match acks.try_ack(ids) {
                Ok(()) => return Ok(()),
                Err(ids) => ids,
            },
            None => ids,
        };
        self.ack(ids).await.map(drop)
    }

    /// Opens a deposit stream (`/tern/deposit/1`) with at most `window` deposits in flight
    /// (see [`crate::pipeline`]); a relay without it answers `Transport` (use
    /// [`Requests::deposit_with`] then).
    pub async fn open_pipeline(
        &self,
        window: usize,
    ) -> Result<crate::pipeline::Pipeline, RequestError> {
        let stream = self
            .blob
            .clone()
            .open_stream(self.relay, crate::wire::deposit::PROTOCOL)
            .await
            .map_err(|e| RequestError::Transport(e.to_string()))?;
        Ok(crate::pipeline::Pipeline::spawn(
            stream,
            window,
            self.request_timeout,
        ))
    }

    /// Whether a live stream to the relay is open now.
    pub fn live_stream_open(&self) -> bool {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(crate::live::AckQueue::is_open)
    }

    /// Starts (or stops) live delivery of new mail as [`Event::Delivered`]. Starting also
    /// opens the live stream (`/tern/live/1`) if none is open; until it is (or with a relay
    /// without it), mail comes as `Deliver` requests.
    pub async fn listen(&self, enabled: bool) -> Result<(), RequestError> {
        self.set_listen(enabled).await?;
        if enabled && !self.live_stream_open() {
            self.cmd
                .send(Command::OpenLive)
                .await
                .map_err(|_| RequestError::Closed)?;
        }
        Ok(())
    }

    /// Opens a `/tern/blob/1` stream to the relay.
    pub async fn open_blob_stream(&self) -> Result<libp2p::Stream, BlobError> {
        self.blob
            .clone()
            .open_stream(self.relay, blob::PROTOCOL)
            .await
            .map_err(|e| match e {
                libp2p_stream::OpenStreamError::Io(e) => BlobError::Io(e),
                other => BlobError::Protocol(other.to_string()),
            })
    }

    /// Uploads (or resumes uploading) the ciphertext file `file` as a blob on a stream of
    /// its own; see [`blob::upload`].
    pub async fn upload_blob(
        &self,
        manifest: &blob::Manifest,
        read_cap_hash: [u8; 32],
        ttl_secs: Option<u32>,
        file: &std::path::Path,
        window: u32,
        progress: impl FnMut(u64),
    ) -> Result<blob::Uploaded, BlobError> {
        let stream = self.open_blob_stream().await?;
        blob::upload(
            stream,
            manifest,
            read_cap_hash,
            ttl_secs,
            file,
            window,
            progress,
        )
        .await
    }

    /// Downloads chunks `[from, to)` of a blob into `out`; see [`blob::download`].
    pub async fn download_blob(
        &self,
        id: &blob::BlobId,
        read_cap: &[u8; 32],
        from: u32,
        to: Option<u32>,
        out: &mut tokio::fs::File,
        progress: impl FnMut(u64),
    ) -> Result<blob::BlobInfo, BlobError> {
        let stream = self.open_blob_stream().await?;
        blob::download(stream, id, read_cap, from, to, out, progress).await
    }

    /// Deletes a blob this device uploaded.
    pub async fn delete_blob(&self, id: &blob::BlobId) -> Result<(), BlobError> {
        let stream = self.open_blob_stream().await?;
        blob::delete(stream, id).await
    }
}

impl Transport for Client {
    fn send(
        &self,
        proto: Proto,
        frame: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Frame, RequestError>> + Send {
        self.raw(proto, frame)
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    relay: PeerId,
    mut cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    live: LiveSlot,
) {
    // Each request/response behaviour numbers its requests itself, so ids repeat across
    // protocols: replies are owed by (protocol, id).
    let mut pending: Pending = HashMap::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => {
                let (proto, frame, waiter) = match cmd {
                    Some(Command::Request { proto, frame, reply, permit }) => {
                        (proto, frame, (reply, permit))
                    }
                    Some(Command::OpenLive) => {
                        swarm.behaviour_mut().live.open(relay);
                        continue;
                    }
                    None => break,
                };
                let b = swarm.behaviour_mut();
                let id = match proto {
                    Proto::Mailbox => b.mailbox.send_request(&relay, Frame::Data(frame)),
                    Proto::Presence => b.presence.send_request(&relay, Frame::Data(frame)),
                    Proto::Directory => b.directory.send_request(&relay, Frame::Data(frame)),
                };
                pending.insert((proto, id), waiter);
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Mailbox(ev)) => {
                    on_rr(&mut swarm, Proto::Mailbox, relay, ev, &mut pending, &events);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Presence(ev)) => {
                    on_rr(&mut swarm, Proto::Presence, relay, ev, &mut pending, &events);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Directory(ev)) => {
                    on_rr(&mut swarm, Proto::Directory, relay, ev, &mut pending, &events);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Live(ev)) => match ev {
                    crate::live::Event::Outbound { peer, stream } if peer == relay => {
                        let acks = crate::live::spawn_client_end(stream, events.clone(), Event::Delivered);
                        *live.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(acks);
                    }
                    crate::live::Event::OpenFailed { error, .. } => {
                        tracing::debug!(%error, "live stream not opened; pushes come as requests");
                    }
                    _ => {}
                },
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == relay => {
                    tracing::debug!("relay connection closed");
                }
                _ => {}
            }
        }
    }
}

fn on_rr(
    swarm: &mut Swarm<Behaviour>,
    proto: Proto,
    relay: PeerId,
    ev: request_response::Event<Frame, Frame>,
    pending: &mut Pending,
    events: &mpsc::Sender<Event>,
) {
    match ev {
        request_response::Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some((tx, _permit)) = pending.remove(&(proto, request_id)) {
                let _ = tx.send(Ok(response));
            }
        }
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some((tx, _permit)) = pending.remove(&(proto, request_id)) {
                let _ = tx.send(Err(RequestError::Transport(error.to_string())));
            }
        }
        request_response::Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            // Only the relay may push to us.
            if peer != relay {
                return;
            }
            let (event, answer) = match proto {
                Proto::Mailbox => match mailbox::Request::from_frame(&request) {
                    Ok(mailbox::Request::Deliver { messages }) => (
                        Some(Event::Delivered(messages)),
                        mailbox::Response::Ok.encode(),
                    ),
                    _ => (
                        None,
                        mailbox::Response::Error(Rejection::new(
                            crate::wire::ErrorCode::BadRequest,
                        ))
                        .encode(),
                    ),
                },
                // Outbound-only protocol: never asked.
                Proto::Directory => (
                    None,
                    directory::Response::Error(Rejection::new(crate::wire::ErrorCode::BadRequest))
                        .encode(),
                ),
                Proto::Presence => match presence::Request::from_frame(&request) {
                    Ok(presence::Request::Update { entries }) => (
                        Some(Event::Presence(entries)),
                        presence::Response::Ok.encode(),
                    ),
                    _ => (
                        None,
                        presence::Response::Error(Rejection::new(
                            crate::wire::ErrorCode::BadRequest,
                        ))
                        .encode(),
                    ),
                },
            };
            if let Some(ev) = event
                && events.try_send(ev).is_err()
            {
                tracing::warn!("client event queue full; dropping a relay event");
            }
            if let Ok(bytes) = answer {
                let b = swarm.behaviour_mut();
                let _ = match proto {
                    Proto::Mailbox => b.mailbox.send_response(channel, Frame::Data(bytes)),
                    Proto::Presence => b.presence.send_response(channel, Frame::Data(bytes)),
                    Proto::Directory => b.directory.send_response(channel, Frame::Data(bytes)),
                };
            }
        }
        request_response::Event::InboundFailure { .. }
        | request_response::Event::ResponseSent { .. } => {}
    }
}
