//! The event loop that owns the swarm: it answers requests, hands durable work to the
//! storage writer and completes requests as the writer replies.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{StreamExt, stream::FuturesUnordered};
use libp2p::{
    PeerId, Swarm, identify,
    multiaddr::Protocol,
    relay,
    request_response::{self, Message, ResponseChannel},
    swarm::SwarmEvent,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Announcement, Behaviour, BehaviourEvent, SHUTDOWN_GRACE,
    claims::ClaimLimits,
    config::Config,
    deposits::{self, Answer},
    iplimit::IpKey,
    metrics::Metrics,
    presence::Presence,
    push,
    quota::Share,
    ratelimit::Limiter,
    storage,
};
use crate::wire::{
    ErrorCode, Frame, Rejection, directory as dw,
    mailbox::{self, Envelope},
    presence as pw,
};

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
    /// A deposit was applied (not yet committed) and some recipient was listening.
    Early {
        sender: PeerId,
        now_ms: u64,
        ciphertext: Vec<u8>,
        stored: Vec<storage::Stored>,
    },
    /// Nothing to do (an early notice that never came because the deposit failed).
    Nothing,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    grants: super::grants::Grants,
    /// Refusals counted per peer, and bans.
    penalties: super::penalty::Penalties,
    requests: Limiter<PeerId>,
    deposits: Limiter<PeerId>,
    /// Peers told `RateLimited`: until when, and how many requests they sent in that time.
    /// One that keeps sending (more than a connection's streams could have had in flight
    /// when it was told) is disconnected: its requests cost the relay even when refused.
    rate_limited: HashMap<PeerId, (Instant, u32)>,
    /// Introductions just refused as `IntroFull`, refused again from memory.
    intro_full: super::introfull::Memory,
    /// Introductions taken per mailbox owner (`mailbox.intro_per_sec`).
    intro_rate: Limiter<PeerId>,
    /// Refusals held so far, which spreads their holds (see `hold`).
    holds: u64,
    /// The address (key) of each connected peer's latest inbound connection.
    peer_ips: HashMap<PeerId, IpKey>,
    /// One-time prekeys handed out, per claimer and device and per device.
    claims: ClaimLimits,
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
            grants: super::grants::Grants::load(loaded.grants),
            penalties: super::penalty::Penalties::new(
                cfg.rate.refusals_per_sec,
                cfg.rate.refusals_burst,
                Duration::from_secs(cfg.rate.ban_secs),
            ),
            requests: Limiter::new(cfg.rate.requests_per_sec, cfg.rate.requests_burst),
            deposits: Limiter::new(cfg.rate.deposits_per_sec, cfg.rate.deposits_burst),
            rate_limited: HashMap::new(),
            intro_full: super::introfull::Memory::default(),
            intro_rate: Limiter::new(cfg.mailbox.intro_per_sec, cfg.mailbox.intro_burst),
            holds: 0,
            peer_ips: HashMap::new(),
            claims: ClaimLimits::new(&cfg.prekeys),
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
                Some(done) = self.pending.next(), if !self.pending.is_empty() => self.on_completion(done),
                Some(note) = self.live_notes_rx.recv() => self.on_live_note(note),
                Some(note) = self.deposit_notes.recv() => self.on_stream_deposit(note),
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

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                if self.cfg.public_addresses.is_empty() {
                    // With no configured public address, announce what we listen on, so
                    // circuit reservations carry a usable address.
                    self.swarm.add_external_address(address.clone());
                }
                let full = address.with(Protocol::P2p(*self.swarm.local_peer_id()));
                tracing::info!(addr = %full, "listening");
                (self.announce)(Announcement::Listening(full));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if self.penalties.is_banned(&peer_id, Instant::now()) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
                self.note_ip(peer_id, &endpoint);
                *self.connections.entry(peer_id).or_default() += 1;
                self.metrics.connections.fetch_add(1, Relaxed);
                self.metrics.connections_total.fetch_add(1, Relaxed);
                self.presence.connected(peer_id, Instant::now(), now_ms());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                self.metrics.connections.fetch_sub(1, Relaxed);
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.peer_ips.remove(&peer_id);
                    self.rate_limited.remove(&peer_id);
                    self.listening.remove(&peer_id);
                    // Dropping the queue ends the stream's task.
                    self.live.remove(&peer_id);
                } else if let Some(n) = self.connections.get_mut(&peer_id) {
                    *n = n.saturating_sub(1);
                }
                if let Some(ms) = self.presence.disconnected(peer_id, now_ms()) {
                    self.persist_last_seen(peer_id, ms);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(ev)) => {
                self.on_rr_event(Proto::Mailbox, ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Presence(ev)) => {
                self.on_rr_event(Proto::Presence, ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Directory(ev)) => {
                self.on_rr_event(Proto::Directory, ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Live(ev)) => self.on_live_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => match ev {
                relay::Event::ReservationReqAccepted { .. } => {
                    self.metrics.reservations.fetch_add(1, Relaxed);
                }
                relay::Event::CircuitReqAccepted { .. } => {
                    self.metrics.circuits.fetch_add(1, Relaxed);
                }
                other => tracing::debug!(event = ?other, "relay event"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(%peer_id, agent = %info.agent_version, "identified");
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_rr_event(&mut self, proto: Proto, ev: request_response::Event<Frame, Frame>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_request(proto, peer, request, channel),
            request_response::Event::Message {
                message: Message::Response { .. },
                ..
            } => {}
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "relay-initiated request failed");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn respond_bytes(&mut self, proto: Proto, channel: ResponseChannel<Frame>, bytes: Vec<u8>) {
        let b = self.swarm.behaviour_mut();
        let r = match proto {
            Proto::Mailbox => b.mailbox.send_response(channel, Frame::Data(bytes)),
            Proto::Presence => b.presence.send_response(channel, Frame::Data(bytes)),
            Proto::Directory => b.directory.send_response(channel, Frame::Data(bytes)),
        };
        if r.is_err() {
            tracing::debug!("peer went away before its response");
        }
    }

    fn respond_mailbox(&mut self, channel: ResponseChannel<Frame>, resp: mailbox::Response) {
        match resp.encode() {
            Ok(bytes) => self.respond_bytes(Proto::Mailbox, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode mailbox response"),
        }
    }

    fn respond_presence(&mut self, channel: ResponseChannel<Frame>, resp: pw::Response) {
        match resp.encode() {
            Ok(bytes) => self.respond_bytes(Proto::Presence, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode presence response"),
        }
    }

    fn respond_directory(&mut self, channel: ResponseChannel<Frame>, resp: dw::Response) {
        if let dw::Response::Error(r) = &resp {
            self.metrics.reject(r.code);
        }
        match resp.encode() {
            Ok(bytes) => self.respond_bytes(Proto::Directory, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode directory response"),
        }
    }

    fn respond_bytes_directory_error(
        &mut self,
        channel: ResponseChannel<Frame>,
        rejection: Rejection,
    ) {
        match dw::Response::Error(rejection).encode() {
            Ok(bytes) => self.respond_bytes(Proto::Directory, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode directory response"),
        }
    }

    /// Queues the storage operation `op` makes with its reply sender; answers `channel` with
    /// `Unavailable` if the writer's queue is full, else with the completion `done` makes
    /// once the operation has committed.
    fn submit<T: Send + 'static>(
        &mut self,
        proto: Proto,
        channel: ResponseChannel<Frame>,
        op: impl FnOnce(oneshot::Sender<Result<T, storage::OpError>>) -> storage::Op,
        done: impl FnOnce(ResponseChannel<Frame>, Result<T, storage::OpError>) -> Completion
        + Send
        + 'static,
    ) {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.storage.submit(op(reply)) {
            return self.reject(proto, channel, busy(e));
        }
        self.pending.push(Box::pin(
            async move { done(channel, await_reply(rx).await) },
        ));
    }

    /// Refuses a deposit of `peer`. A refusal that counts against it (`IntroFull`,
    /// `NoGrant`: see `penalty.rs`) is answered only after about a second (`penalty::hold`): each request
    /// costs the relay work even when refused, and so a peer that keeps depositing where it
    /// may not can have each of its streams refused at most once a second (until it is
    /// banned), rather than as fast as the relay can answer. An honest node backs off for
    /// longer than that after such a refusal anyway, and its other requests are not held.
    fn refuse_stranger(&mut self, peer: PeerId, channel: Answer, rejection: Rejection) {
        let delay = self.penalize(peer, rejection.code);
        if delay.is_zero() {
            return self.refuse(channel, rejection);
        }
        self.pending.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Completion::Refuse { channel, rejection }
        }));
    }

    /// Counts a refusal against `peer` (see `penalty.rs`); past its allowance the peer is
    /// disconnected and banned. Returns how long to hold back its answer.
    fn penalize(&mut self, peer: PeerId, code: ErrorCode) -> Duration {
        let now = Instant::now();
        if super::penalty::Penalties::counts(code) && self.penalties.refused(peer, now) {
            self.metrics.peers_banned.fetch_add(1, Relaxed);
            // Its new connections are refused at the end of their handshake from now on.
            let until = now + Duration::from_secs(self.cfg.rate.ban_secs);
            self.swarm
                .behaviour_mut()
                .limits
                .gate()
                .ban(peer, until, now);
            tracing::info!(%peer, "banned for repeated deposits without a grant");
            let _ = self.swarm.disconnect_peer_id(peer);
            return Duration::ZERO;
        }
        if !super::penalty::Penalties::counts(code) {
            return Duration::ZERO;
        }
        self.holds += 1;
        super::penalty::hold(self.holds)
    }

    fn reject(&mut self, proto: Proto, channel: ResponseChannel<Frame>, rejection: Rejection) {
        self.metrics.reject(rejection.code);
        match proto {
            Proto::Mailbox => self.respond_mailbox(channel, mailbox::Response::Error(rejection)),
            Proto::Presence => self.respond_presence(channel, pw::Response::Error(rejection)),
            Proto::Directory => {
                // Counted above; respond_directory would count it again.
                self.respond_bytes_directory_error(channel, rejection)
            }
        }
    }

    fn on_request(
        &mut self,
        proto: Proto,
        peer: PeerId,
        frame: Frame,
        channel: ResponseChannel<Frame>,
    ) {
        match self.admit(peer) {
            Ok(()) => {}
            Err(Some(rejection)) => return self.reject(proto, channel, rejection),
            Err(None) => return,
        }
        match proto {
            Proto::Mailbox => match mailbox::Request::from_frame(&frame) {
                Ok(req) => self.on_mailbox(peer, req, channel),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad mailbox frame");
                    self.reject(
                        proto,
                        channel,
                        Rejection::new(ErrorCode::for_decode_error(&e)),
                    );
                }
            },
            Proto::Directory => match dw::Request::from_frame(&frame) {
                Ok(req) => {
                    let one_time = self.one_time_allowed(peer, &req);
                    let storage = self.storage.clone();
                    self.pending.push(Box::pin(async move {
                        let response = directory_request(storage, peer, req, one_time).await;
                        Completion::Directory { channel, response }
                    }));
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad directory frame");
                    self.reject(
                        proto,
                        channel,
                        Rejection::new(ErrorCode::for_decode_error(&e)),
                    );
                }
            },
            Proto::Presence => match pw::Request::from_frame(&frame) {
                Ok(req) => self.on_presence(peer, req, channel),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad presence frame");
                    self.reject(
                        proto,
                        channel,
                        Rejection::new(ErrorCode::for_decode_error(&e)),
                    );
                }
            },
        }
    }

    /// Whether a request (or a deposit on a stream) of `peer` is served: not while shutting
    /// down, nor over its or its address's rate (`None`: dropped unanswered, see
    /// `disregards_limit`). A request served is a sign of life for presence.
    fn admit(&mut self, peer: PeerId) -> Result<(), Option<Rejection>> {
        if self.shutting_down {
            return Err(Some(Rejection {
                code: ErrorCode::Unavailable,
                retry_after_ms: Some(SHUTDOWN_GRACE.as_millis() as u64),
            }));
        }
        if let Err(wait) = self.admit_request(peer) {
            if self.disregards_limit(peer, wait) {
                return Err(None);
            }
            return Err(Some(Rejection {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(wait.as_millis() as u64 + 1),
            }));
        }
        self.presence.touch(peer, Instant::now(), now_ms());
        Ok(())
    }

    /// A deposit from a deposit stream: admitted and served like a `Deposit` request.
    fn on_stream_deposit(&mut self, note: deposits::Note) {
        self.metrics.stream_deposits.fetch_add(1, Relaxed);
        let deposits::Note { peer, frame, reply } = note;
        let answer = Answer::Stream(reply);
        match self.admit(peer) {
            Ok(()) => {}
            Err(Some(rejection)) => return self.refuse(answer, rejection),
            Err(None) => return,
        }
        match mailbox::Request::decode(&frame) {
            Ok(req) => self.on_deposit(peer, req, answer),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad deposit frame");
                self.refuse(answer, Rejection::new(ErrorCode::for_decode_error(&e)));
            }
        }
    }

    /// Answers a deposit, on whatever it came.
    fn answer(&mut self, answer: Answer, resp: mailbox::Response) {
        match answer {
            Answer::Request(channel) => self.respond_mailbox(channel, resp),
            Answer::Stream(reply) => reply.send(resp),
        }
    }

    /// Refuses a deposit (counted in the metrics), on whatever it came.
    fn refuse(&mut self, answer: Answer, rejection: Rejection) {
        match answer {
            Answer::Request(channel) => self.reject(Proto::Mailbox, channel, rejection),
            Answer::Stream(reply) => {
                self.metrics.reject(rejection.code);
                reply.send(mailbox::Response::Error(rejection));
            }
        }
    }

    /// Serves a deposit (a `Deposit` request or a deposit from a stream; anything else is
    /// refused as `BadRequest`).
    fn on_deposit(&mut self, peer: PeerId, req: mailbox::Request, channel: Answer) {
        let m = &self.cfg.mailbox;
        match req {
            mailbox::Request::Deposit {
                recipients,
                ttl_secs,
                ciphertext,
                tokens,
            } => {
                if ciphertext.len() > m.max_ciphertext_bytes {
                    return self.refuse(channel, Rejection::new(ErrorCode::TooLarge));
                }
                if recipients.is_empty()
                    || recipients.len() > m.max_recipients
                    || (!tokens.is_empty() && tokens.len() != recipients.len())
                {
                    return self.refuse(channel, Rejection::new(ErrorCode::BadRequest));
                }
                let mut seen = HashSet::with_capacity(recipients.len());
                let (recipients, tokens): (Vec<PeerId>, Vec<_>) = recipients
                    .into_iter()
                    .zip(tokens.into_iter().map(Some).chain(std::iter::repeat(None)))
                    .filter(|(r, _)| seen.insert(*r))
                    .map(|(r, t)| (r, t.flatten()))
                    .unzip();
                if let Err(wait) =
                    self.deposits
                        .take(&peer, deposit_cost(recipients.len()), Instant::now())
                {
                    return self.refuse(
                        channel,
                        Rejection {
                            code: ErrorCode::RateLimited,
                            retry_after_ms: Some(wait.as_millis() as u64 + 1),
                        },
                    );
                }
                let presence = &self.presence;
                let admitted = match self
                    .grants
                    .admit(recipients, &tokens, |owner| presence.allows(owner, &peer))
                {
                    Ok(a) => a,
                    Err(code) => {
                        return self.refuse(channel, Rejection::new(code));
                    }
                };
                for r in &admitted.refused {
                    self.metrics.reject(r.code);
                }
                if admitted.to.is_empty() {
                    return self.refuse_stranger(peer, channel, Rejection::new(ErrorCode::NoGrant));
                }
                let refused_early = admitted.refused;
                let recipients = admitted.to;
                let intro_to = match recipients.as_slice() {
                    [(r, Share::Intro)] if refused_early.is_empty() => Some(*r),
                    _ => None,
                };
                if let Some(r) = intro_to {
                    let now = Instant::now();
                    // Refused from memory, or because strangers are introducing themselves
                    // to this mailbox faster than it takes introductions: either costs no
                    // trip to storage. Remembered, so the sender's next tries are cheap too.
                    let full = self.intro_full.full(&r, &peer, now);
                    if full || self.intro_rate.take(&r, 1.0, now).is_err() {
                        if !full {
                            self.intro_full.note(r, peer, now);
                        }
                        return self.refuse_stranger(
                            peer,
                            channel,
                            Rejection::new(ErrorCode::IntroFull),
                        );
                    }
                }
                let ttl = ttl_secs
                    .map_or(m.ttl_secs, |t| u64::from(t).min(m.ttl_secs))
                    .max(1);
                let intro_ttl = ttl.min(m.intro_ttl_secs).max(1);
                let now = now_ms();
                let ciphertext = ciphertext.into_vec();
                let size = ciphertext.len();
                let live_copy = recipients
                    .iter()
                    .any(|(r, _)| self.listening.contains(r))
                    .then(|| ciphertext.clone());
                // Listening recipients get the message as soon as it is applied, before the
                // commit: the sender is still only acknowledged after the commit.
                let (early, early_rx) = match live_copy {
                    Some(ct) => {
                        let (tx, rx) = oneshot::channel();
                        (Some(tx), Some((rx, ct)))
                    }
                    None => (None, None),
                };
                let (reply, rx) = oneshot::channel();
                let op = storage::Op::Deposit {
                    sender: peer,
                    recipients,
                    ciphertext,
                    now_ms: now,
                    expires_ms: now.saturating_add(ttl.saturating_mul(1000)),
                    intro_expires_ms: now.saturating_add(intro_ttl.saturating_mul(1000)),
                    early,
                    reply,
                };
                if let Err(e) = self.storage.submit(op) {
                    return self.refuse(channel, busy(e));
                }
                if let Some((early_rx, ciphertext)) = early_rx {
                    self.pending.push(Box::pin(async move {
                        match early_rx.await {
                            Ok(stored) => Completion::Early {
                                sender: peer,
                                now_ms: now,
                                ciphertext,
                                stored,
                            },
                            Err(_) => Completion::Nothing,
                        }
                    }));
                }
                self.pending.push(Box::pin(async move {
                    Completion::Deposit {
                        channel,
                        sender: peer,
                        intro_to,
                        size,
                        refused: refused_early,
                        result: await_reply(rx).await,
                    }
                }));
            }
            _ => self.refuse(channel, Rejection::new(ErrorCode::BadRequest)),
        }
    }

    fn on_mailbox(&mut self, peer: PeerId, req: mailbox::Request, channel: ResponseChannel<Frame>) {
        match req {
            req @ mailbox::Request::Deposit { .. } => {
                self.on_deposit(peer, req, Answer::Request(channel))
            }
            mailbox::Request::Fetch { after, limit } => {
                let now = now_ms();
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::Fetch {
                        owner: peer,
                        after,
                        limit: limit.clamp(1, mailbox::MAX_FETCH_MESSAGES),
                        max_bytes: mailbox::MAX_PAGE_BYTES,
                        now_ms: now,
                        reply,
                    },
                    |channel, result| Completion::Fetch { channel, result },
                );
            }
            mailbox::Request::Ack { ids } => {
                if ids.len() > mailbox::MAX_ACK_IDS {
                    return self.reject(
                        Proto::Mailbox,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                self.submit_ack(peer, ids, Some(channel));
            }
            mailbox::Request::Listen { enabled } => {
                if enabled && self.connections.contains_key(&peer) {
                    self.listening.insert(peer);
                } else {
                    self.listening.remove(&peer);
                }
                self.respond_mailbox(channel, mailbox::Response::Ok);
            }
            mailbox::Request::RegisterPush { url } => {
                if let Some(u) = &url
                    && let Err(e) = push::check_url(u, &self.cfg.push.allowed_prefixes)
                {
                    tracing::debug!(%peer, error = %e, "push endpoint refused");
                    let code = match e {
                        push::UrlError::TooLong => ErrorCode::TooLarge,
                        _ => ErrorCode::NotAllowed,
                    };
                    return self.reject(Proto::Mailbox, channel, Rejection::new(code));
                }
                let stored = url.clone();
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::SetPush {
                        owner: peer,
                        url: stored,
                        reply,
                    },
                    move |channel, result| Completion::SetPush {
                        channel,
                        peer,
                        url,
                        result,
                    },
                );
            }
            mailbox::Request::SetGrants { hashes } => {
                if let Err(code) = super::grants::check_set(&hashes) {
                    return self.reject(Proto::Mailbox, channel, Rejection::new(code));
                }
                let hashes: Vec<[u8; 32]> = hashes.into_iter().map(|h| h.into_array()).collect();
                // Which deposits are introductions may change.
                self.intro_full.forget_owner(&peer);
                let now = now_ms();
                let stored = hashes.clone();
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::SetGrants {
                        owner: peer,
                        hashes: stored,
                        now_ms: now,
                        reply,
                    },
                    move |channel, result| Completion::SetGrants {
                        channel,
                        peer,
                        hashes,
                        now_ms: now,
                        result,
                    },
                );
            }
            mailbox::Request::Usage => {
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::Usage { owner: peer, reply },
                    |channel, result| Completion::Usage { channel, result },
                );
            }
            // Only the relay sends deliveries.
            mailbox::Request::Deliver { .. } => {
                self.reject(
                    Proto::Mailbox,
                    channel,
                    Rejection::new(ErrorCode::BadRequest),
                );
            }
        }
    }

    fn on_presence(&mut self, peer: PeerId, req: pw::Request, channel: ResponseChannel<Frame>) {
        match req {
            pw::Request::Heartbeat { status } => {
                self.presence
                    .heartbeat(peer, status, Instant::now(), now_ms());
                self.respond_presence(channel, pw::Response::Ok);
            }
            pw::Request::SetAllowList { peers } => {
                if peers.len() > pw::MAX_PEERS {
                    return self.reject(
                        Proto::Presence,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                let viewers = peers.clone();
                self.submit(
                    Proto::Presence,
                    channel,
                    |reply| storage::Op::SetAllowList {
                        owner: peer,
                        viewers,
                        reply,
                    },
                    move |channel, result| Completion::SetAllow {
                        channel,
                        peer,
                        viewers: peers,
                        result,
                    },
                );
            }
            pw::Request::Query { peers } => {
                if peers.len() > pw::MAX_PEERS {
                    return self.reject(
                        Proto::Presence,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                let entries = self.presence.query(&peer, &peers);
                self.respond_presence(channel, pw::Response::Presence { entries });
            }
            pw::Request::Subscribe { peers } => {
                if peers.len() > pw::MAX_PEERS {
                    return self.reject(
                        Proto::Presence,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                let entries = self.presence.subscribe(peer, &peers);
                self.respond_presence(channel, pw::Response::Presence { entries });
            }
            // Only the relay sends updates.
            pw::Request::Update { .. } => {
                self.reject(
                    Proto::Presence,
                    channel,
                    Rejection::new(ErrorCode::BadRequest),
                );
            }
        }
    }

    fn on_completion(&mut self, done: Completion) {
        match done {
            Completion::Early {
                sender,
                now_ms,
                ciphertext,
                stored,
            } => {
                for st in stored {
                    if self.listening.contains(&st.peer) {
                        self.deliver(st.peer, st.id, sender, now_ms, &ciphertext, st.intro);
                    }
                }
            }
            Completion::Nothing => {}
            Completion::Refuse { channel, rejection } => self.refuse(channel, rejection),
            Completion::Deposit {
                channel,
                sender,
                intro_to,
                size,
                refused,
                result,
            } => match result {
                Ok(d) => {
                    self.metrics.deposits.fetch_add(1, Relaxed);
                    self.metrics
                        .deposit_recipients
                        .fetch_add(d.stored.len() as u64, Relaxed);
                    self.metrics.deposit_bytes.fetch_add(size as u64, Relaxed);
                    self.answer(
                        channel,
                        mailbox::Response::Deposited {
                            message: d.message,
                            recipients: d.stored.len() as u32,
                            refused: refused.into_iter().chain(d.refused).collect(),
                        },
                    );
                    // Listening recipients were served by the early notice. Mail from
                    // strangers (introductions) wakes nobody: it waits for the next time
                    // the device is online anyway.
                    for st in d.stored {
                        if !st.intro
                            && !self.listening.contains(&st.peer)
                            && self.push_registered.contains(&st.peer)
                        {
                            self.push.send(push::Command::Mail {
                                peer: st.peer,
                                unread: st.depth,
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "deposit failed");
                    let rejection = busy(e);
                    if rejection.code == ErrorCode::IntroFull
                        && let Some(owner) = intro_to
                    {
                        self.intro_full.note(owner, sender, Instant::now());
                    }
                    self.refuse_stranger(sender, channel, rejection);
                }
            },
            Completion::Fetch { channel, result } => match result {
                Ok(page) => self.respond_mailbox(
                    channel,
                    mailbox::Response::Messages {
                        messages: page.messages,
                        more: page.more,
                    },
                ),
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::Ack { channel, result } => match (result, channel) {
                (Ok(removed), channel) => {
                    self.metrics.acked.fetch_add(u64::from(removed), Relaxed);
                    if let Some(channel) = channel {
                        self.respond_mailbox(channel, mailbox::Response::Acked { removed });
                    }
                }
                (Err(e), Some(channel)) => self.reject(Proto::Mailbox, channel, busy(e)),
                (Err(e), None) => tracing::debug!(error = %e, "live acknowledgement failed"),
            },
            Completion::SetPush {
                channel,
                peer,
                url,
                result,
            } => match result {
                Ok(()) => {
                    if url.is_some() {
                        self.push_registered.insert(peer);
                    } else {
                        self.push_registered.remove(&peer);
                    }
                    self.push.send(push::Command::Register { peer, url });
                    self.respond_mailbox(channel, mailbox::Response::Ok);
                }
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::SetAllow {
                channel,
                peer,
                viewers,
                result,
            } => match result {
                Ok(()) => {
                    self.presence.set_allow(peer, &viewers);
                    self.respond_presence(channel, pw::Response::Ok);
                }
                Err(e) => self.reject(Proto::Presence, channel, busy(e)),
            },
            Completion::Directory { channel, response } => {
                self.respond_directory(channel, response)
            }
            Completion::SetGrants {
                channel,
                peer,
                hashes,
                now_ms,
                result,
            } => match result {
                Ok(()) => {
                    self.grants.set(peer, hashes, now_ms);
                    self.respond_mailbox(channel, mailbox::Response::Ok);
                }
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::Usage { channel, result } => match result {
                Ok(u) => self.respond_mailbox(channel, mailbox::Response::Usage(u)),
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::DevicesExpired(result) => match result {
                Ok(gone) => {
                    if !gone.is_empty() {
                        tracing::info!(
                            devices = gone.len(),
                            "registrations of quiet devices expired"
                        );
                    }
                    for peer in gone {
                        self.presence.set_allow(peer, &[]);
                        if self.push_registered.remove(&peer) {
                            self.push.send(push::Command::Register { peer, url: None });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expiring quiet devices failed"),
            },
            Completion::Expired(result) => match result {
                Ok(n) => {
                    self.metrics.expired.fetch_add(n, Relaxed);
                    if n > 0 {
                        tracing::debug!(expired = n, "expired mailbox entries");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            },
        }
    }

    /// A client opened a live stream: later pushes to it go there.
    fn on_live_event(&mut self, ev: crate::live::Event) {
        let crate::live::Event::Inbound { peer, stream } = ev else {
            return;
        };
        if !self.connections.contains_key(&peer) || self.shutting_down {
            return;
        }
        self.live_generation += 1;
        let generation = self.live_generation;
        let (frames, frames_rx) = mpsc::channel(LIVE_QUEUE);
        // A stream this replaces ends when its queue is dropped here.
        self.live.insert(peer, LiveEnd { generation, frames });
        let notes = self.live_notes.clone();
        tokio::spawn(async move {
            crate::live::server_end(stream, frames_rx, notes.clone(), |ids| LiveNote::Acks {
                peer,
                ids,
            })
            .await;
            let _ = notes.send(LiveNote::Closed { peer, generation }).await;
        });
    }

    fn on_live_note(&mut self, note: LiveNote) {
        match note {
            LiveNote::Closed { peer, generation } => {
                if self
                    .live
                    .get(&peer)
                    .is_some_and(|l| l.generation == generation)
                {
                    self.live.remove(&peer);
                }
            }
            LiveNote::Acks { peer, ids } => {
                self.metrics.live_stream_acks.fetch_add(1, Relaxed);
                // Counted like an `Ack` request; over the limit, the acknowledgement is
                // dropped and the messages stay in the mailbox until fetched again.
                if self.admit_request(peer).is_err() {
                    self.metrics.reject(ErrorCode::RateLimited);
                    return;
                }
                self.submit_ack(peer, ids, None);
            }
        }
    }

    /// Whether a prekey claim may take a one-time key (`[prekeys]` limits); over them the
    /// claimer gets the fallback key. Other requests: true (unused).
    fn one_time_allowed(&mut self, claimer: PeerId, req: &dw::Request) -> bool {
        let dw::Request::ClaimPrekey { device, .. } = req else {
            return true;
        };
        let allowed = self.claims.allow_one_time(claimer, *device, Instant::now());
        if !allowed {
            self.metrics.claims_limited.fetch_add(1, Relaxed);
        }
        allowed
    }

    /// Remembers the IP address (IPv6 /64) an inbound connection came from, for the per-IP
    /// request limit; the relay's own outbound connections and circuits have none.
    fn note_ip(&mut self, peer: PeerId, endpoint: &libp2p::core::ConnectedPoint) {
        if let libp2p::core::ConnectedPoint::Listener { send_back_addr, .. } = endpoint
            && let Some(key) = IpKey::of_addr(send_back_addr)
        {
            self.peer_ips.insert(peer, key);
        }
    }

    /// Takes one request token from `peer` and one from its IP address (IPv6 /64), or says
    /// how long until both would be there.
    fn admit_request(&mut self, peer: PeerId) -> Result<(), Duration> {
        let now = Instant::now();
        self.requests.take(&peer, 1.0, now)?;
        if let Some(ip) = self.peer_ips.get(&peer).copied() {
            let limits = &mut self.swarm.behaviour_mut().limits;
            if let Err(wait) = limits.gate().take_request(&ip, now) {
                self.metrics.rate_limited_by_ip.fetch_add(1, Relaxed);
                // The address's allowance is shared by its connections: each is asked to
                // wait for its share, so that all of them together come back at its rate
                // rather than at once.
                let share = limits.connections_from(ip).max(1);
                return Err(wait.saturating_mul(share).min(MAX_IP_RETRY_AFTER));
            }
        }
        Ok(())
    }

    /// Notes that `peer` is told to wait `wait`; true when it has kept sending while told to
    /// wait and was disconnected for it (its request is then dropped unanswered).
    fn disregards_limit(&mut self, peer: PeerId, wait: Duration) -> bool {
        let now = Instant::now();
        // What its connections could have had in flight when it was told: three request
        // protocols, each with its streams, and a deposit stream's window.
        let c = &self.cfg.connections;
        let tolerated = (c.max_concurrent_streams as u32)
            .saturating_mul(3)
            .saturating_add(c.deposit_window as u32)
            .saturating_mul(c.max_per_peer);
        match self.rate_limited.get_mut(&peer) {
            Some((until, sent)) if *until > now => {
                *sent += 1;
                if *sent <= tolerated {
                    return false;
                }
                self.rate_limited.remove(&peer);
                self.metrics.peers_cut_off.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "disconnected for ignoring its retry time");
                let _ = self.swarm.disconnect_peer_id(peer);
                true
            }
            _ => {
                self.rate_limited.insert(peer, (now + wait, 1));
                false
            }
        }
    }

    /// Deletes `peer`'s acknowledged mailbox entries; a request (`channel`) is answered when
    /// that is done, an acknowledgement from a live stream is not (if it is lost, the message
    /// stays in the mailbox and comes again).
    fn submit_ack(&mut self, peer: PeerId, ids: Vec<u64>, channel: Option<ResponseChannel<Frame>>) {
        // Room is made in `peer`'s mailbox.
        self.intro_full.forget_owner(&peer);
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.storage.submit(storage::Op::Ack {
            owner: peer,
            ids,
            reply,
        }) {
            match channel {
                Some(channel) => self.reject(Proto::Mailbox, channel, busy(e)),
                None => tracing::debug!(error = %e, "storage busy; live acknowledgement dropped"),
            }
            return;
        }
        self.pending.push(Box::pin(async move {
            Completion::Ack {
                channel,
                result: await_reply(rx).await,
            }
        }));
    }

    fn deliver(
        &mut self,
        recipient: PeerId,
        id: u64,
        sender: PeerId,
        deposited_ms: u64,
        ciphertext: &[u8],
        intro: bool,
    ) {
        let req = mailbox::Request::Deliver {
            messages: vec![Envelope {
                id,
                sender,
                deposited_ms,
                ciphertext: serde_bytes::ByteBuf::from(ciphertext.to_vec()),
                intro,
            }],
        };
        match req.encode() {
            Ok(bytes) => {
                let bytes = match self.live.get(&recipient) {
                    Some(live) => match live.frames.try_send(bytes) {
                        Ok(()) => {
                            self.metrics.live_deliveries.fetch_add(1, Relaxed);
                            self.metrics.live_stream_pushes.fetch_add(1, Relaxed);
                            return;
                        }
                        // Backed up: this one goes as a request, the stream stays.
                        Err(mpsc::error::TrySendError::Full(bytes)) => bytes,
                        Err(mpsc::error::TrySendError::Closed(bytes)) => {
                            self.live.remove(&recipient);
                            bytes
                        }
                    },
                    None => bytes,
                };
                self.swarm
                    .behaviour_mut()
                    .mailbox
                    .send_request(&recipient, Frame::Data(bytes));
                self.metrics.live_deliveries.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode delivery"),
        }
    }

    fn on_sweep(&mut self) {
        for (peer, ms) in self.presence.sweep(Instant::now()) {
            self.persist_last_seen(peer, ms);
        }
    }

    fn persist_last_seen(&mut self, peer: PeerId, ms: u64) {
        if self
            .storage
            .submit(storage::Op::SetLastSeen { peer, ms })
            .is_err()
        {
            tracing::debug!("storage busy; last-seen time kept in memory only");
        }
    }

    fn flush_presence(&mut self) {
        for (subscriber, entries) in self.presence.flush() {
            for chunk in entries.chunks(pw::MAX_PEERS) {
                let req = pw::Request::Update {
                    entries: chunk.to_vec(),
                };
                match req.encode() {
                    Ok(bytes) => {
                        self.swarm
                            .behaviour_mut()
                            .presence
                            .send_request(&subscriber, Frame::Data(bytes));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode presence update"),
                }
            }
        }
    }

    fn start_expiry(&mut self) {
        // Expired mail makes room in any mailbox.
        self.intro_full.clear();
        let idle_ms = self.cfg.mailbox.grant_idle_secs.saturating_mul(1000);
        self.grants.expire(now_ms().saturating_sub(idle_ms));
        let (reply, rx) = oneshot::channel();
        let device_idle_ms = self.cfg.storage.device_idle_secs.saturating_mul(1000);
        if self
            .storage
            .submit(storage::Op::ExpireDevices {
                before_ms: now_ms().saturating_sub(device_idle_ms),
                reply,
            })
            .is_ok()
        {
            self.pending.push(Box::pin(async move {
                Completion::DevicesExpired(await_reply(rx).await)
            }));
        }
        let (reply, rx) = oneshot::channel();
        if self
            .storage
            .submit(storage::Op::Expire {
                now_ms: now_ms(),
                reply,
            })
            .is_ok()
        {
            self.pending.push(Box::pin(async move {
                Completion::Expired(await_reply(rx).await)
            }));
        }
    }
}

fn dir_error(code: ErrorCode) -> dw::Response {
    dw::Response::Error(Rejection::new(code))
}

/// Runs `f` on the blocking pool (signature checks), mapping a lost task to `Internal`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ErrorCode> + Send + 'static,
) -> Result<T, ErrorCode> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(ErrorCode::Internal))
}

/// Serves one directory request: checks signatures off the event loop, then asks the
/// writer, which re-checks against stored state inside its transaction.
/// `one_time`: whether a claim may take a one-time key (else it gets the fallback key).
async fn directory_request(
    storage: storage::StorageHandle,
    peer: PeerId,
    req: dw::Request,
    one_time: bool,
) -> dw::Response {
    use super::directory::{build_claim, verify_bundle, verify_list};
    match req {
        dw::Request::PublishDeviceList { list } => {
            let v = match blocking(move || verify_list(list.into_vec(), peer)).await {
                Ok(v) => v,
                Err(code) => return dir_error(code),
            };
            match ask(&storage, |reply| storage::Op::PublishList {
                user: v.user,
                body: v.body,
                check: v.check,
                reply,
            })
            .await
            {
                Ok(()) => dw::Response::Ok,
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::FetchDeviceList { user } => {
            if user.len() != dw::USER_ID_BYTES {
                return dir_error(ErrorCode::BadRequest);
            }
            match ask(&storage, |reply| storage::Op::FetchList {
                user: user.into_vec(),
                reply,
            })
            .await
            {
                Ok(Some(list)) => dw::Response::DeviceList {
                    list: serde_bytes::ByteBuf::from(list),
                },
                Ok(None) => dir_error(ErrorCode::NotFound),
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::PublishPrekeys { bundle } => {
            let v = match blocking(move || verify_bundle(&bundle, peer)).await {
                Ok(v) => v,
                Err(code) => return dir_error(code),
            };
            match ask(&storage, |reply| storage::Op::PublishPrekeys {
                device: v.device,
                user: v.user,
                bundle: v.bundle,
                one_time: v.one_time,
                check: v.check,
                reply,
            })
            .await
            {
                Ok(n) => dw::Response::Published { one_time_keys: n },
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::ClaimPrekey { user, device } => {
            if user.len() != dw::USER_ID_BYTES {
                return dir_error(ErrorCode::BadRequest);
            }
            match ask(&storage, |reply| storage::Op::Claim {
                device: device.to_bytes(),
                user: user.into_vec(),
                one_time,
                reply,
            })
            .await
            {
                Ok(Some((bundle, key))) => {
                    match blocking(move || build_claim(&bundle, key.as_deref())).await {
                        Ok((claim, fallback)) => dw::Response::Prekey {
                            claim: serde_bytes::ByteBuf::from(claim),
                            fallback,
                        },
                        Err(code) => dir_error(code),
                    }
                }
                Ok(None) => dir_error(ErrorCode::NotFound),
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::PrekeyCount => {
            match ask(&storage, |reply| storage::Op::PrekeyCount {
                device: peer.to_bytes(),
                reply,
            })
            .await
            {
                Ok(n) => dw::Response::Published { one_time_keys: n },
                Err(e) => dir_error(e.code()),
            }
        }
    }
}

/// Queues the storage operation `op` makes with its reply sender and waits for the answer.
async fn ask<T: Send + 'static>(
    storage: &storage::StorageHandle,
    op: impl FnOnce(oneshot::Sender<Result<T, storage::OpError>>) -> storage::Op,
) -> Result<T, storage::OpError> {
    let (reply, rx) = oneshot::channel();
    storage.submit_wait(op(reply)).await?;
    await_reply(rx).await
}

/// A storage failure as a rejection; transient ones carry a retry hint.
fn busy(e: storage::OpError) -> Rejection {
    let code = e.code();
    Rejection {
        code,
        retry_after_ms: matches!(code, ErrorCode::Unavailable).then_some(100),
    }
}

/// Deposit tokens a deposit for `recipients` mailboxes costs: one for the stored message and
/// a fiftieth for each further mailbox that refers to it. A group message to 500 members
/// costs about 11, not 500: the relay stores it once, and every mailbox it lands in still has
/// its own quota.
pub(crate) fn deposit_cost(recipients: usize) -> f64 {
    1.0 + recipients.saturating_sub(1) as f64 / FANOUT_REFERENCES_PER_TOKEN
}

/// Further mailboxes of one deposit that cost one deposit token.
const FANOUT_REFERENCES_PER_TOKEN: f64 = 50.0;
