//! A client for one relay: connects, then offers typed calls for every protocol (the
//! [`crate::rpc::Requests`] it implements, plus live delivery and blobs) and a stream of
//! [`Event`]s (live mail, presence updates).
//!
//! The shape follows rust-libp2p's file-sharing example: [`Client`] is a cheap cloneable
//! handle that sends commands to a task owning the swarm, each command carrying a oneshot
//! for its answer. Dropping every handle ends the task and closes the connection. A node
//! that runs its own swarm can instead compose [`Behaviour`] (or the codecs in
//! [`crate::wire`]) into it.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, multiaddr::Protocol, noise, swarm::SwarmEvent, tcp,
};
use tokio::sync::{mpsc, oneshot};

use crate::blob::{self, BlobError};
use crate::wire::{Frame, mailbox::Envelope, presence};

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
            max_requests_in_flight: crate::rpc::DEFAULT_REQUESTS_IN_FLIGHT,
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

#[allow(missing_docs)]
mod behaviour;
mod task;

pub use crate::rpc::{Proto, RequestError, Requests, Transport};
pub use behaviour::{Behaviour, BehaviourEvent};
pub use libp2p::identity::Keypair;
use task::{Command, run};

use crate::rpc::InFlight;

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
            .with_swarm_config(|c| crate::swarm_config(c, config.idle_timeout))
            .build();
        // Known for later dials too: a request after the connection closed (its pings went
        // unanswered, say) dials the relay again.
        swarm.add_peer_address(relay, addr.clone());
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
                in_flight: Arc::new(InFlight::new(
                    config.max_requests_in_flight.min(MAX_REQUESTS_IN_FLIGHT),
                )),
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
    /// (see [`crate::pipeline`]). The stream is not confirmed first: a relay without it
    /// refuses its first deposits as [`RequestError::Unsupported`] (use
    /// [`Requests::deposit_with`] then, as [`crate::pipeline::deposit`] does).
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
    /// its own (a fresh one when the relay did not take it: [`blob::try_again`]); see
    /// [`blob::upload`].
    pub async fn upload_blob(
        &self,
        manifest: &blob::Manifest,
        read_cap_hash: [u8; 32],
        ttl_secs: Option<u32>,
        file: &std::path::Path,
        window: u32,
        mut progress: impl FnMut(u64),
    ) -> Result<blob::Uploaded, BlobError> {
        let mut tries = 0;
        loop {
            let stream = self.open_blob_stream().await?;
            match blob::upload(
                stream,
                manifest,
                read_cap_hash,
                ttl_secs,
                file,
                window,
                &mut progress,
            )
            .await
            {
                Err(e) if blob::try_again(&e, &mut tries).await => {}
                done => return done,
            }
        }
    }

    /// Downloads chunks `[from, to)` of a blob into `out` (on a fresh stream when the relay
    /// did not take the first: [`blob::try_again`]); see [`blob::download`].
    pub async fn download_blob(
        &self,
        id: &blob::BlobId,
        read_cap: &[u8; 32],
        from: u32,
        to: Option<u32>,
        out: &mut tokio::fs::File,
        mut progress: impl FnMut(u64),
    ) -> Result<blob::BlobInfo, BlobError> {
        let mut tries = 0;
        loop {
            let stream = self.open_blob_stream().await?;
            match blob::download(stream, id, read_cap, from, to, out, &mut progress).await {
                Err(e) if blob::try_again(&e, &mut tries).await => {}
                done => return done,
            }
        }
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
