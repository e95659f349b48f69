//! Ordered delivery: one lane per recipient device and relay.
//!
//! Everything encrypted for one remote device over its pairwise session — texts, sync copies,
//! receipts, membership operations, sender keys, resend requests — sits in that device's
//! outbox rows in the order it was encrypted, which is its ratchet order, and goes into the
//! device's mailbox at **every** relay its user has (redundant mailboxes: one relay down or
//! wiped loses nothing). So each device has one lane per relay
//! (`tern_store::Store::lane_at`: the rows that relay has not taken), and a device whose user
//! has no relay known one lane with none (`Store::lane`, direct only). A lane is sent by at
//! most one task at a time, row after row, each only once the one before it was
//! acknowledged (by the relay after its commit, or by the peer after storing it). When a row
//! fails (network, rate limit, quota), the task stops there: that row is rescheduled at that
//! relay and nothing behind it moves there until it goes. So a later ciphertext never
//! overtakes an earlier one for the same device at the same relay, whatever the path or
//! retry: by construction, not by timing; and a relay that is down or slow holds back its
//! own lane only. A row leaves the outbox once every relay of the user's current set took it,
//! or the device itself did (a direct delivery, tried by the lane at the first relay only).
//! Lanes run in parallel (up to [`MAX_LANES_IN_FLIGHT`]).

use std::time::Duration;

use libp2p::PeerId;
use tern_crypto::{DeviceId, UserId};
use tern_relay::wire::ErrorCode;

use super::{
    Engine, Internal,
    courier::{Route, Taken},
    device_peer,
};
use crate::{
    consts::{LANE_BATCH, LANE_RUN_MAX, LANE_WINDOW, MAX_LANES_IN_FLIGHT, OUTBOX_BATCH, RETRY_MAX},
    net::{NetError, rpc},
    types::Event,
};

/// A lane: a recipient device (peer id string) and the relay its rows go to (`None`: its
/// user has no relay known).
pub(crate) type LaneKey = (String, Option<PeerId>);

/// What a lane task reports.
#[derive(Debug)]
pub(crate) struct LaneDone {
    /// The lane.
    lane: LaneKey,
    /// Who took each row it delivered, in the order they were handed to it.
    taken: Vec<Taken>,
    /// Why it stopped at the next row, if that failed.
    error: Option<NetError>,
}

/// A lane whose task runs.
#[derive(Debug)]
pub(crate) struct Running {
    /// The rows handed to the task, in order, with their failed attempts before.
    handed: Vec<(i64, u32)>,
    /// Where rows queued behind them go to join the run.
    more: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl Engine {
    /// Starts the lanes whose first row is due (`all`: every lane, backoff or not).
    pub(crate) fn dispatch_lanes(&mut self, all: bool) {
        if self.outbox.lanes_busy.len() >= MAX_LANES_IN_FLIGHT {
            return;
        }
        // The devices with rows, a page per call, round them in turn (so lanes that wait
        // for a relay that is down never keep the others from being looked at); each of a
        // device's lanes checks its own head's due time at its relay.
        let devices = match self
            .store
            .lane_devices(&self.outbox.lane_cursor, OUTBOX_BATCH)
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("reading the outbox failed: {e}");
                return;
            }
        };
        let last_page = devices.len() < OUTBOX_BATCH as usize;
        let due_at = (!all).then(|| self.clock.now_ms());
        for device in devices {
            for relay in self.lane_relays(&device, None) {
                if self.outbox.lanes_busy.len() >= MAX_LANES_IN_FLIGHT {
                    return;
                }
                self.start_lane(&device, relay, due_at);
            }
            self.outbox.lane_cursor = device;
        }
        if last_page {
            self.outbox.lane_cursor.clear();
        }
    }

    /// Starts the lanes of the devices rows were just queued for, if they are idle. A lane
    /// whose first row waits for its backoff stays waiting (the new rows are behind it).
    pub(crate) fn kick_lanes_for(&mut self, deliveries: &[tern_store::Delivery]) {
        if self.store.in_batch() {
            // Not durable yet: they start when the batch commits (`close_batch`).
            self.outbox.kicked.extend(
                deliveries
                    .iter()
                    .map(|d| (d.recipient_device.clone(), d.recipient_user.clone())),
            );
            return;
        }
        self.kick_lanes(
            deliveries
                .iter()
                .map(|d| (d.recipient_device.as_str(), d.recipient_user.as_str())),
        );
    }

    /// Starts the lanes of these (device, user) pairs if they are idle, and hands the rows
    /// just queued to those that run (see [`Self::kick_lanes_for`]).
    pub(crate) fn kick_lanes<'a>(&mut self, devices: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let now = self.clock.now_ms();
        for (device, user) in devices {
            for relay in self.lane_relays(device, Some(user)) {
                if !self.extend_lane(device, relay) {
                    self.start_lane(device, relay, Some(now));
                }
            }
        }
    }

    /// If `device`'s lane at `relay` runs, hands its task the rows queued behind those it
    /// has, so they go on its deposit stream's window now rather than after its run (a
    /// round trip later on a slow link), up to [`LANE_RUN_MAX`] rows a run. Returns whether
    /// the lane runs.
    fn extend_lane(&mut self, device: &str, relay: Option<PeerId>) -> bool {
        let lane: LaneKey = (device.to_owned(), relay);
        let Some(run) = self.outbox.lanes_busy.get_mut(&lane) else {
            return false;
        };
        let Some(&(last, _)) = run.handed.last() else {
            return true;
        };
        let room = LANE_RUN_MAX
            .saturating_sub(run.handed.len())
            .min(run.more.capacity());
        if room == 0 {
            return true;
        }
        let relay = relay.map(|r| r.to_string());
        let rows = match self.store.lane_after(
            device,
            relay.as_deref(),
            last,
            u32::try_from(room).unwrap_or(u32::MAX),
        ) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("reading a lane failed: {e}");
                return true;
            }
        };
        for r in rows {
            // A task that stopped taking them leaves them for the lane's next run.
            if run.more.try_send(r.delivery.payload).is_err() {
                break;
            }
            run.handed.push((r.row, r.attempts));
        }
        true
    }

    /// Starts every idle lane of `device` (a grant from it came: refused deposits go now).
    pub(crate) fn start_lanes(&mut self, device: &str) {
        for relay in self.lane_relays(device, None) {
            self.start_lane(device, relay, None);
        }
    }

    /// The relays `device`'s rows go to: its user's (`user`, else as known from the device
    /// or its first row), or one lane with none when no relay is known.
    pub(crate) fn lane_relays(&self, device: &str, user: Option<&str>) -> Vec<Option<PeerId>> {
        let owner = user.and_then(UserId::from_hex).or_else(|| {
            let peer = DeviceId::from_peer_id_string(device).and_then(|d| device_peer(&d));
            peer.and_then(|p| self.people.device_owner.get(&p).copied())
                .or_else(|| {
                    let head = self.store.lane(device, 1).ok()?;
                    head.first()
                        .and_then(|r| UserId::from_hex(&r.delivery.recipient_user))
                })
        });
        let relays = owner
            .and_then(|u| self.known(&u).map(|c| c.relay_peers()))
            .unwrap_or_default();
        if relays.is_empty() {
            vec![None]
        } else {
            relays.into_iter().map(Some).collect()
        }
    }

    /// `user`'s relay set changed: the rows of its devices that every relay of the new set
    /// took leave (a relay taken out of the set is not waited for), and the lanes at relays
    /// new to the set start.
    pub(crate) fn settle_relay_set(&mut self, user: &UserId) {
        for device in self.settle_rows_of(&[*user]) {
            self.start_lanes(&device);
        }
    }

    /// At start: the rows of every known user's devices that each relay of the user's set
    /// took leave, whatever set they were sent under. A set that changed without this (as a
    /// relay record taken from the DHT did in earlier builds) left rows waiting for a relay
    /// no longer in it, for good.
    pub(crate) fn settle_all_relay_sets(&mut self) {
        let users: Vec<UserId> = self
            .people
            .contacts
            .keys()
            .chain(self.people.peers.keys())
            .copied()
            .chain([self.me.user])
            .collect();
        self.settle_rows_of(&users);
    }

    /// Settles the rows of `users`' devices against each user's relay set, in one
    /// transaction; answers the devices looked at.
    fn settle_rows_of(&mut self, users: &[UserId]) -> Vec<String> {
        let work: Vec<(Vec<String>, Vec<String>)> = users
            .iter()
            .filter_map(|u| {
                let state = self.known(u)?;
                let set = state
                    .relay_peers()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let devices = state
                    .devices()
                    .into_iter()
                    .map(|(d, _)| d.to_peer_id_string())
                    .collect();
                Some((set, devices))
            })
            .collect();
        let out = self
            .store
            .transaction(|tx| -> Result<_, tern_store::WriteError> {
                let mut done = Vec::new();
                for (set, devices) in &work {
                    for device in devices {
                        done.extend(tx.settle_device_rows(device, set)?);
                    }
                }
                Ok(done)
            });
        match out {
            Ok(done) => self.emit_sent(done),
            Err(e) => tracing::error!("settling rows after a relay set changed failed: {e}"),
        }
        work.into_iter().flat_map(|(_, devices)| devices).collect()
    }

    /// Tells subscribers that these messages are `sent` now (each recipient device's copy
    /// held by a relay or the device).
    fn emit_sent(&self, done: Vec<tern_store::MessageId>) {
        for id in done {
            if let Ok(Some(m)) = self.store.message(id)
                && m.status == tern_store::Status::Sent
            {
                self.emit(Event::Receipt {
                    conversation: m.conversation,
                    ids: vec![id.to_string()],
                    status: crate::types::MessageStatus::Sent,
                });
            }
        }
    }

    /// Starts a task sending the first rows of `device`'s lane at `relay`, unless one runs,
    /// a store batch is open, or (with `due_at`) the first row is not due by then.
    pub(crate) fn start_lane(&mut self, device: &str, relay: Option<PeerId>, due_at: Option<i64>) {
        let lane: LaneKey = (device.to_owned(), relay);
        // Inside a store batch the rows are not durable yet: nothing goes on the wire until
        // it commits (the batch's owner dispatches then).
        if self.outbox.lanes_busy.contains_key(&lane)
            || self.outbox.lanes_busy.len() >= MAX_LANES_IN_FLIGHT
            || self.store.in_batch()
        {
            return;
        }
        let read = |limit| match relay {
            Some(r) => self.store.lane_at(device, &r.to_string(), limit),
            None => self.store.lane(device, limit),
        };
        // The head alone first: a lane waiting for its backoff (a relay down) is looked at
        // on every tick, and its rows' payloads need not be read for that.
        if let Some(t) = due_at {
            match read(1) {
                Ok(head) if head.first().is_some_and(|h| h.next_attempt_ms <= t) => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::error!("reading a lane failed: {e}");
                    return;
                }
            }
        }
        let rows = match read(LANE_BATCH) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reading a lane failed: {e}");
                return;
            }
        };
        let Some(head) = rows.first() else {
            return;
        };
        let Some(peer) = DeviceId::from_peer_id_string(device).and_then(|d| device_peer(&d)) else {
            // Nothing can ever deliver it, and it would hold its lane's place for good.
            tracing::error!(
                device,
                "dropping outbox rows for something that is not a device id"
            );
            let ids: Vec<i64> = rows.iter().map(|r| r.row).collect();
            if let Err(e) = self.store.transaction(|tx| tx.ack_rows(&ids)) {
                tracing::error!("dropping them failed: {e}");
            }
            return;
        };
        // Only the lane at the first relay (or the one with none) tries a direct connection.
        let first = self
            .lane_relays(device, Some(&head.delivery.recipient_user))
            .first()
            .copied()
            .flatten();
        let route = Route {
            peer,
            relay,
            direct: self.relays.direct && relay == first,
            grant: self.grants.held(device),
            pace: relay.and_then(|r| self.pace_at(r)),
        };
        let (more, more_rx) = tokio::sync::mpsc::channel(LANE_BATCH as usize);
        let handed = rows.iter().map(|r| (r.row, r.attempts)).collect();
        self.outbox
            .lanes_busy
            .insert(lane.clone(), Running { handed, more });
        let courier = self.courier.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let payloads = rows.into_iter().map(|r| r.delivery.payload).collect();
            let (taken, error) = courier.deliver_lane(route, payloads, more_rx).await;
            let _ = tx
                .send(Internal::LaneDone(LaneDone { lane, taken, error }))
                .await;
        });
    }

    /// Lane tasks finished (those whose results were ready together): the rows a relay took
    /// are recorded at it and those every relay of the device's set (or the device itself)
    /// took go (messages each of whose rows a relay or the device took become `sent`); each
    /// row a lane stopped at waits at that relay for its backoff or the relay's
    /// `retry_after`; all in one transaction.
    /// Then the lanes that were not stopped go on at once.
    pub(crate) fn on_lanes_done(&mut self, results: Vec<LaneDone>) {
        let now = self.clock.now_ms();
        let mut by_device = Vec::new();
        let mut taken_at = Vec::new();
        let mut retries = Vec::new();
        let mut go_on = Vec::new();
        for LaneDone { lane, taken, error } in results {
            let handed = self
                .outbox
                .lanes_busy
                .remove(&lane)
                .map(|run| run.handed)
                .unwrap_or_default();
            // The first row not taken is the one that failed.
            let failed = error.and_then(|e| {
                handed
                    .get(taken.len())
                    .map(|&(row, attempts)| (row, attempts, e))
            });
            let rows = handed.iter().zip(taken).map(|(&(row, _), t)| (row, t));
            let (device, relay) = &lane;
            let mut at_relay = Vec::new();
            for (row, taken) in rows {
                match (taken, relay) {
                    (Taken::Relay, Some(_)) => at_relay.push(row),
                    _ => by_device.push(row),
                }
            }
            if let Some(r) = relay
                && !at_relay.is_empty()
            {
                let set: Vec<String> = self
                    .lane_relays(device, None)
                    .into_iter()
                    .flatten()
                    .map(|p| p.to_string())
                    .collect();
                taken_at.push((at_relay, r.to_string(), set));
            }
            match &failed {
                Some((_, _, e)) => {
                    let code = e.code().map_or("network", ErrorCode::label);
                    self.outbox.held.insert(lane.clone(), code);
                }
                None => {
                    self.outbox.held.remove(&lane);
                }
            }
            match failed {
                Some((row, attempts, e)) => {
                    let relay = relay.map(|r| r.to_string());
                    if e.code() == Some(ErrorCode::NoGrant) {
                        // Revoked or stale: the row goes again at once, as an introduction.
                        self.drop_grant(device);
                        retries.push((row, relay, now));
                        continue;
                    }
                    if e.code().is_none() {
                        // This relay of the contact did not answer: they may have moved
                        // (a lookup runs at most once per 30 s per contact).
                        self.delivery_unanswered(device);
                    }
                    let wait = &e
                        .retry_after()
                        .unwrap_or_else(|| super::send::backoff(attempts))
                        .min(RETRY_MAX);
                    if let (Some(r), Some(ErrorCode::RateLimited), Some(every)) =
                        (lane.1, e.code(), e.retry_after())
                    {
                        self.paced_by(r, every);
                    }
                    tracing::debug!(%device, ?relay, "delivery failed ({e}); the lane waits {wait:?}");
                    let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
                    retries.push((row, relay, next));
                }
                None => go_on.push(lane),
            }
        }
        let out = self
            .store
            .transaction(|tx| -> Result<_, tern_store::WriteError> {
                let mut done = tx.ack_rows(&by_device)?;
                for (rows, relay, set) in &taken_at {
                    done.extend(tx.take_rows_at(rows, relay, set)?);
                }
                for (row, relay, next) in &retries {
                    match relay {
                        Some(relay) => tx.reschedule_row_at(*row, relay, *next)?,
                        None => tx.reschedule_row(*row, *next)?,
                    }
                }
                Ok(done)
            });
        match out {
            Ok(done) => self.emit_sent(done),
            // The rows stay and go again: the receiver drops what it already has.
            Err(e) => tracing::error!("recording deliveries failed (they go again): {e}"),
        }
        for (device, relay) in go_on {
            self.start_lane(&device, relay, None);
        }
        // Keep the pipe full.
        self.dispatch_lanes(false);
    }
}

/// When a group fan-out may deposit at a relay that paces this device.
pub(crate) enum Turn {
    /// At once: the relay does not pace this device.
    Now,
    /// After this wait, its turn.
    After(Duration),
    /// Not before the next look: too many wait for their turn there already.
    Later,
}

impl Engine {
    /// `relay` refused a deposit of this device for its rate, the next token `every` away:
    /// its lanes and fan-outs there are paced for [`PACE_HOLD`] from now, one deposit per
    /// the longest such wait told meanwhile.
    pub(crate) fn paced_by(&mut self, relay: PeerId, every: Duration) {
        let now = self.clock.now();
        // The time to the next token is shorter than the time between tokens when the
        // bucket was part full: the longest one told while pacing is the better guess.
        let every = match self.outbox.paced.get(&relay) {
            Some((before, until)) if now < *until => every.max(*before),
            _ => every,
        };
        self.outbox
            .paced
            .insert(relay, (every.min(PACE_MAX), now + PACE_HOLD));
    }

    /// A group fan-out's turn at `relay`: while the relay paces this device, one fan-out
    /// deposit per pace (as a lane's rows), each given the next free turn; a turn more than
    /// [`PACE_MAX`] away is not given (the fan-out waits for a later tick).
    pub(crate) fn fan_turn(&mut self, relay: PeerId) -> Turn {
        let Some(pace) = self.pace_at(relay) else {
            self.outbox.fan_next.remove(&relay);
            return Turn::Now;
        };
        let now = self.clock.now();
        let turn = self
            .outbox
            .fan_next
            .get(&relay)
            .copied()
            .map_or(now, |next| next.max(now));
        let wait = turn.duration_since(now);
        if wait > PACE_MAX {
            return Turn::Later;
        }
        self.outbox.fan_next.insert(relay, turn + pace);
        Turn::After(wait)
    }

    /// How far apart a lane at `relay` sends its rows, while `relay` lately refused this
    /// device's deposits for their rate: its rate shared by the lanes depositing there now.
    fn pace_at(&mut self, relay: PeerId) -> Option<Duration> {
        let now = self.clock.now();
        let (every, until) = *self.outbox.paced.get(&relay)?;
        if now >= until {
            self.outbox.paced.remove(&relay);
            return None;
        }
        let lanes = self
            .outbox
            .lanes_busy
            .keys()
            .filter(|(_, r)| *r == Some(relay))
            .count();
        Some(
            every
                .saturating_mul(u32::try_from(lanes + 1).unwrap_or(u32::MAX))
                .min(PACE_MAX),
        )
    }
}

/// A relay that refused deposits for their rate paces this device's lanes there for this
/// long after its last such refusal.
const PACE_HOLD: Duration = Duration::from_secs(10);
/// The longest pause between two rows of a paced lane.
const PACE_MAX: Duration = Duration::from_secs(5);

/// Delivers a lane's ciphertexts in order (see [`super::courier::Courier::deliver_lane`]):
/// one after another while the device is connected directly or no deposit stream to the
/// lane's relay is open (the first deposit there starts opening one, and each row looks
/// again, so a run that began with requests goes on the stream once it is open); else up
/// to [`LANE_WINDOW`] at once on the stream ([`Window::run`]). Rows handed over through `more`
/// while the run lasts join it, behind the others. Rows the stream could not take (it
/// closed before they were queued, or the relay refused its protocol) go one after another
/// as requests.
pub(crate) async fn deliver_lane(
    net: &crate::net::Client,
    route: Route,
    mut payloads: Vec<Vec<u8>>,
    mut more: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> (Vec<Taken>, Option<NetError>) {
    let mut taken = Vec::with_capacity(payloads.len());
    // Not while the device is connected directly, nor again once the stream failed here.
    let mut streams = route.relay.is_some() && !(route.direct && net.is_direct(route.peer).await);
    loop {
        while let Ok(p) = more.try_recv() {
            payloads.push(p);
        }
        if taken.len() == payloads.len() {
            return (taken, None);
        }
        let pipe = match route.relay {
            Some(relay) if streams => rpc::deposit_stream(net, relay).map(|p| (relay, p)),
            _ => None,
        };
        if let Some((relay, pipe)) = pipe {
            let lane = Window {
                route: &route,
                relay,
                pipe: &pipe,
            };
            match lane.run(&mut payloads, &mut more, &mut taken).await {
                Ok(open) => streams = open,
                Err(e) => return (taken, Some(e)),
            }
            continue;
        }
        let payload = std::mem::take(&mut payloads[taken.len()]);
        match deliver(net, route.clone(), payload).await {
            Ok(t) => taken.push(t),
            Err(e) => return (taken, Some(e)),
        }
        if let Some(pace) = route.pace {
            tokio::time::sleep(pace).await;
        }
    }
}

/// A lane's rows on its relay's deposit stream.
struct Window<'a> {
    route: &'a Route,
    relay: PeerId,
    pipe: &'a tern_relay::pipeline::Pipeline,
}

impl Window<'_> {
    /// Sends `payloads` from the first not `taken` on, up to [`LANE_WINDOW`] at once, each
    /// naming the one before it, so the relay refuses (`OutOfOrder`) whatever follows one it
    /// refused instead of letting it overtake; rows handed over through `more` join while
    /// the window has room. Of a window, the rows answered in order up to the first failure
    /// are taken; the rest go again after that one (a copy the relay stored anyway, when the
    /// stream broke, reaches the device twice and is dropped there). Returns once nothing is
    /// in flight: whether the stream can still carry rows, or the error a row failed with.
    async fn run(
        &self,
        payloads: &mut Vec<Vec<u8>>,
        more: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
        taken: &mut Vec<Taken>,
    ) -> Result<bool, NetError> {
        let token = super::grants::token(self.route.grant.as_ref(), self.relay);
        // Paced: one at a time, `pace` apart.
        let window = if self.route.pace.is_some() {
            1
        } else {
            LANE_WINDOW
        };
        let mut in_flight = std::collections::VecDeque::with_capacity(window);
        let (mut next, mut before, mut open) = (taken.len(), None, true);
        loop {
            while let Ok(p) = more.try_recv() {
                payloads.push(p);
            }
            while open && in_flight.len() < window {
                let Some(payload) = payloads.get(next) else {
                    break;
                };
                let req = tern_relay::rpc::deposit_request(
                    vec![self.route.peer],
                    vec![token],
                    None,
                    payload.clone(),
                );
                match self.pipe.submit_following(req, before).await {
                    Ok(ticket) => {
                        before = Some(ticket.seq());
                        in_flight.push_back(Box::pin(ticket.answer()));
                        next += 1;
                    }
                    // Not queued: it and the rest go as requests once those queued are in.
                    Err(_) => open = false,
                }
            }
            let room = open && in_flight.len() < window;
            let Some(front) = in_flight.front_mut() else {
                return Ok(open);
            };
            // While the window has room, a row handed over meanwhile goes at once.
            let answer = tokio::select! {
                answer = front => answer,
                Some(p) = more.recv(), if room => {
                    payloads.push(p);
                    continue;
                }
            };
            in_flight.pop_front();
            match answer {
                Ok((_, refused)) => {
                    rpc::one_recipient(&refused)?;
                    taken.push(Taken::Relay);
                    if let Some(pace) = self.route.pace {
                        tokio::time::sleep(pace).await;
                    }
                }
                // The relay does not take deposit streams: none of the window was taken.
                Err(NetError::Unsupported) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Delivers one ciphertext: directly when the route allows it and a connection to the
/// device is open, else into its mailbox at the route's relay, showing the token of the grant
/// the device issued (if one is held).
pub(crate) async fn deliver(
    net: &crate::net::Client,
    route: Route,
    payload: Vec<u8>,
) -> Result<Taken, NetError> {
    let peer = route.peer;
    if route.direct && net.is_direct(peer).await {
        match net.direct(peer, payload.clone()).await {
            Ok(()) => return Ok(Taken::Device),
            Err(e) => tracing::debug!(%peer, "direct delivery failed, using the mailbox: {e}"),
        }
    }
    let Some(relay) = route.relay else {
        return Err(NetError::Transport("the contact has no relay".into()));
    };
    let token = super::grants::token(route.grant.as_ref(), relay);
    rpc::deposit(net, relay, peer, token, payload).await?;
    Ok(Taken::Relay)
}
