//! The event loop that owns the swarm: it answers requests, hands durable work to the
//! storage writer and completes requests as the writer replies.
//!
//! This module holds the loop's state (`EventLoop`), the types its parts share
//! (`Completion`, `Proto`, the live-stream notes) and `run`, which waits on the swarm, the
//! writer's completions, the stream tasks and the timers. The rest is split by purpose;
//! each part is an `impl EventLoop` block, and the calls go one way (top to bottom, no part
//! calls one above it):
//!
//! - `swarm`: connection and swarm events, sweeps and expiry;
//! - `dispatch`: request/response events, routed to the handler of their protocol;
//! - `completion`: the writer's replies, answered;
//! - `live`: live streams and delivery;
//! - `requests`: mailbox requests other than deposits;
//! - `deposit`: deposits, from requests and from deposit streams;
//! - `queries`: presence and directory requests;
//! - `admission` and `answer`: whether a request is served, and sending answers, used by all
//!   of the above and using nothing but this module's state.

mod admission;
mod answer;
mod completion;
mod deposit;
mod dht;
mod dispatch;
mod live;
mod queries;
mod requests;
mod swarm;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use libp2p::{PeerId, Swarm, request_response::ResponseChannel};
use tokio::sync::{mpsc, oneshot};

use crate::{
    server::{
        Announcement, Behaviour, SHUTDOWN_GRACE,
        claims::ClaimLimits,
        config::Config,
        deposits::{self, Answer},
        iplimit::IpKey,
        metrics::Metrics,
        now_ms,
        presence::Presence,
        push,
        ratelimit::Limiter,
        storage,
    },
    wire::{Frame, Rejection, directory as dw, mailbox},
};

/// Most completions (or live notes, or stream deposits) taken in one turn of the loop.
const TURN_BATCH: usize = 64;

/// How often heartbeat TTLs are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often idle rate-limit buckets are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Longest wait a request refused by its address's allowance is told (its share of the
/// wait grows with the connections from that address).
const MAX_IP_RETRY_AFTER: Duration = Duration::from_secs(10);

type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// Which request/response behaviour a channel belongs to.
#[derive(Debug, Clone, Copy)]
enum Proto {
    Mailbox,
    Presence,
    Directory,
}

/// A storage reply, with what is needed to answer the request it belongs to.
enum Completion {
    Deposit {
        channel: Answer,
        size: usize,
        /// Recipients refused before storage (a wrong grant).
        refused: Vec<mailbox::Refusal>,
        /// The depositing peer.
        sender: PeerId,
        /// The one mailbox of an introduction (a deposit to one mailbox, without a grant).
        intro_to: Option<PeerId>,
        /// When an introduction's recipient was listening: the deposit's time and message,
        /// delivered once stored.
        intro_live: Option<Box<(u64, Vec<u8>)>>,
        result: Result<storage::Deposited, storage::OpError>,
    },
    Fetch {
        channel: ResponseChannel<Frame>,
        result: Result<storage::Page, storage::OpError>,
    },
    /// Acknowledgements applied: answered when they came as a request, not when they came
    /// on a live stream.
    Ack {
        channel: Option<ResponseChannel<Frame>>,
        result: Result<u32, storage::OpError>,
    },
    SetPush {
        channel: ResponseChannel<Frame>,
        peer: PeerId,
        url: Option<String>,
        result: Result<(), storage::OpError>,
    },
    SetGrants {
        channel: ResponseChannel<Frame>,
        peer: PeerId,
        hashes: Vec<[u8; 32]>,
        now_ms: u64,
        result: Result<(), storage::OpError>,
    },
    Usage {
        channel: ResponseChannel<Frame>,
        result: Result<mailbox::Usage, storage::OpError>,
    },
    SetAllow {
        channel: ResponseChannel<Frame>,
        peer: PeerId,
        viewers: Vec<PeerId>,
        result: Result<(), storage::OpError>,
    },
    Expired(Result<u64, storage::OpError>),
    /// Registrations of devices not seen for `storage.device_idle_secs` were deleted.
    DevicesExpired(Result<Vec<PeerId>, storage::OpError>),
    Directory {
        channel: ResponseChannel<Frame>,
        response: dw::Response,
    },
    /// A refused deposit whose answer was held back (see `refuse_stranger`).
    Refuse {
        channel: Answer,
        rejection: Rejection,
    },
}

/// Frames queued for one client's live stream; when full, pushes fall back to `Deliver`
/// requests.
const LIVE_QUEUE: usize = 64;
/// Acknowledgement frames from all live streams waiting for the event loop.
const LIVE_ACK_QUEUE: usize = 1024;

/// One client's live stream, as the event loop sees it.
struct LiveEnd {
    /// Tells this stream from a later one of the same peer.
    generation: u64,
    frames: mpsc::Sender<Vec<u8>>,
}

/// What the live-stream tasks tell the event loop.
enum LiveNote {
    Acks { peer: PeerId, ids: Vec<u64> },
    Closed { peer: PeerId, generation: u64 },
}

async fn await_reply<T: Send + 'static>(
    rx: oneshot::Receiver<Result<T, storage::OpError>>,
) -> Result<T, storage::OpError> {
    rx.await.unwrap_or(Err(storage::OpError::Closed))
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    cfg: Config,
    metrics: Arc<Metrics>,
    storage: storage::StorageHandle,
    push: push::Handle,
    /// Devices with a registered push endpoint (mirrors the push task, to skip the queue
    /// for everyone else).
    push_registered: HashSet<PeerId>,
    presence: Presence,
    /// Registered deposit grants of closed mailboxes.
    grants: crate::server::grants::Grants,
    /// Refusals counted per peer, and bans.
    penalties: crate::server::penalty::Penalties,
    requests: Limiter<PeerId>,
    deposits: Limiter<PeerId>,
    /// Peers told `RateLimited`: until when, and how many requests they sent in that time.
    /// One that keeps sending (more than a connection's streams could have had in flight
    /// when it was told) is disconnected: its requests cost the relay even when refused.
    rate_limited: HashMap<PeerId, (Instant, u32)>,
    /// Introductions just refused as `IntroFull`, refused again from memory.
    intro_full: crate::server::introfull::Memory,
    /// Introductions taken per mailbox owner (`mailbox.intro_per_sec`).
    intro_rate: Limiter<PeerId>,
    /// Refusals held so far, which spreads their holds (see `hold`).
    holds: u64,
    /// The address (key) of each connected peer's latest inbound connection.
    peer_ips: HashMap<PeerId, IpKey>,
    /// One-time prekeys handed out, per claimer and device and per device.
    claims: ClaimLimits,
    /// Checks and put rates of inbound DHT records.
    dht_puts: crate::server::dht::Puts,
    /// Open connections per peer.
    connections: HashMap<PeerId, usize>,
    /// Peers that asked for live delivery, while connected.
    listening: HashSet<PeerId>,
    /// Open live streams (`/tern/live/1`), by peer.
    live: HashMap<PeerId, LiveEnd>,
    live_generation: u64,
    live_notes: mpsc::Sender<LiveNote>,
    live_notes_rx: mpsc::Receiver<LiveNote>,
    /// Deposits read from deposit streams (`/tern/deposit/1`), in each stream's order.
    deposit_notes: mpsc::Receiver<deposits::Note>,
    pending: FuturesUnordered<Pending>,
    announce: Box<dyn FnMut(Announcement) + Send>,
    shutting_down: bool,
}

impl EventLoop {
    // Built once, by `run`, from everything it set up.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        cfg: Config,
        metrics: Arc<Metrics>,
        storage: storage::StorageHandle,
        push: push::Handle,
        loaded: storage::Loaded,
        announce: Box<dyn FnMut(Announcement) + Send>,
        deposit_notes: mpsc::Receiver<deposits::Note>,
    ) -> Self {
        let mut presence = Presence::new(Duration::from_secs(cfg.presence.heartbeat_ttl_secs));
        let (live_notes, live_notes_rx) = mpsc::channel(LIVE_ACK_QUEUE);
        presence.load(loaded.last_seen, loaded.allow);
        Self {
            grants: crate::server::grants::Grants::load(loaded.grants),
            penalties: crate::server::penalty::Penalties::new(
                cfg.rate.refusals_per_sec,
                cfg.rate.refusals_burst,
                Duration::from_secs(cfg.rate.ban_secs),
            ),
            requests: Limiter::new(cfg.rate.requests_per_sec, cfg.rate.requests_burst),
            deposits: Limiter::new(cfg.rate.deposits_per_sec, cfg.rate.deposits_burst),
            rate_limited: HashMap::new(),
            intro_full: crate::server::introfull::Memory::default(),
            intro_rate: Limiter::new(cfg.mailbox.intro_per_sec, cfg.mailbox.intro_burst),
            holds: 0,
            peer_ips: HashMap::new(),
            claims: ClaimLimits::new(&cfg.prekeys),
            dht_puts: crate::server::dht::Puts::new(&cfg.dht),
            push_registered: loaded.push.iter().map(|(p, _)| *p).collect(),
            swarm,
            cfg,
            metrics,
            storage,
            push,
            presence,
            connections: HashMap::new(),
            listening: HashSet::new(),
            live: HashMap::new(),
            live_generation: 0,
            live_notes,
            live_notes_rx,
            deposit_notes,
            pending: FuturesUnordered::new(),
            announce,
            shutting_down: false,
        }
    }

    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        let mut coalesce =
            tokio::time::interval(Duration::from_millis(self.cfg.presence.coalesce_ms));
        let mut expire =
            tokio::time::interval(Duration::from_secs(self.cfg.mailbox.expiry_sweep_secs));
        for t in [&mut sweep, &mut prune, &mut coalesce, &mut expire] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut shutdown = std::pin::pin!(shutdown);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if self.shutting_down && self.pending.is_empty() {
                break;
            }
            let grace = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                // Each of these takes what else is ready of its kind in the same turn (up
                // to `TURN_BATCH`): one poll of the swarm and the timers per batch rather than
                // per completion or note, which is most of the loop's cost under load.
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    self.on_completion(done);
                    for _ in 1..TURN_BATCH {
                        let ready = std::future::poll_fn(|cx| {
                            std::task::Poll::Ready(self.pending.poll_next_unpin(cx))
                        })
                        .await;
                        match ready {
                            std::task::Poll::Ready(Some(done)) => self.on_completion(done),
                            _ => break,
                        }
                    }
                }
                Some(note) = self.live_notes_rx.recv() => {
                    self.on_live_note(note);
                    for _ in 1..TURN_BATCH {
                        match self.live_notes_rx.try_recv() {
                            Ok(note) => self.on_live_note(note),
                            Err(_) => break,
                        }
                    }
                }
                Some(note) = self.deposit_notes.recv() => {
                    self.on_stream_deposit(note);
                    for _ in 1..TURN_BATCH {
                        match self.deposit_notes.try_recv() {
                            Ok(note) => self.on_stream_deposit(note),
                            Err(_) => break,
                        }
                    }
                }
                _ = sweep.tick() => self.on_sweep(),
                _ = prune.tick() => {
                    let now = Instant::now();
                    self.requests.prune(now);
                    self.deposits.prune(now);
                    self.penalties.prune(now);
                    self.swarm.behaviour_mut().limits.gate().prune(now);
                    self.rate_limited.retain(|_, (until, _)| *until > now);
                    self.intro_full.prune(now);
                    self.intro_rate.prune(now);
                    self.claims.prune(now);
                    self.dht_puts.prune(now);
                }
                _ = coalesce.tick() => self.flush_presence(),
                _ = expire.tick() => self.start_expiry(),
                _ = &mut shutdown, if !self.shutting_down => {
                    tracing::info!(in_flight = self.pending.len(), "shutting down");
                    self.shutting_down = true;
                    deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                    // Whoever is online now was last seen now.
                    let now = now_ms();
                    for peer in self.presence.online_peers() {
                        self.persist_last_seen(peer, now);
                    }
                }
                _ = grace => {
                    tracing::warn!(in_flight = self.pending.len(), "shutdown grace period over");
                    break;
                }
            }
        }
    }
}
