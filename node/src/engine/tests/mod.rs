//! Unit tests of the engine's decisions by time: one engine over a real store in a
//! temporary home, a manual [`Clock`], no network (the network handle's task is never
//! started, so any request fails at once) and outbox rows carried by a [`MemoryCourier`].

mod batch;
mod claims;
mod client_ids;
mod commands;
mod direct;
mod drain;
mod group_loss;
mod hold;
mod lists;
mod names;
mod outbox;
mod owed;
mod quarantine;
mod reads;
mod recover;
mod redundant;
mod rotation;
mod uploads;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::{PeerId, identity::Keypair};
use tern_crypto::prekey::PrekeyBundle;
use tern_store::{Body, ConversationId, ConversationKind, Delivery, Message, MessageId, Status};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Clock, Engine, Internal, Setup,
    courier::{Courier, Route, Taken},
};
use crate::{Home, net, net::NetError, types::Event};
use tern_relay::wire::mailbox::Refusal;

/// The manual clock's start, ms since the epoch.
const T0_MS: i64 = 1_700_000_000_000;
/// How long a test waits for a spawned task to report.
const REPORT_WAIT: Duration = Duration::from_secs(10);

/// One row carried: to which device, at which relay (`None`: directly), what.
type Carried = (PeerId, Option<PeerId>, Vec<u8>);

/// Carries outbox rows in memory: records each (peer, relay, payload) in order and answers
/// from a script (`Ok` once the script is empty), but fails at once at a relay that is down.
/// While a gate is set ([`MemoryCourier::hold`]), a lane's rows are recorded as they come
/// (those handed to it meanwhile too) and all answered `Ok` once the gate opens, as rows in
/// flight on a slow link are.
#[derive(Default)]
struct MemoryCourier {
    carried: Arc<Mutex<Vec<Carried>>>,
    answers: Mutex<VecDeque<Result<(), NetError>>>,
    down: Mutex<std::collections::HashSet<PeerId>>,
    gate: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

impl MemoryCourier {
    /// The next delivery gets `answer`.
    fn answer(&self, answer: Result<(), NetError>) {
        self.answers.lock().unwrap().push_back(answer);
    }

    /// The payloads carried so far, in order.
    fn carried(&self) -> Vec<Vec<u8>> {
        self.carried
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, p)| p.clone())
            .collect()
    }

    /// The payloads carried to `peer` so far, in order.
    fn carried_to(&self, peer: PeerId) -> Vec<Vec<u8>> {
        self.carried
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| *p == peer)
            .map(|(_, _, p)| p.clone())
            .collect()
    }

    /// Lanes started from now on hold their answers until the returned gate is opened
    /// (`send(true)`).
    fn hold(&self) -> tokio::sync::watch::Sender<bool> {
        let (open, gate) = tokio::sync::watch::channel(false);
        *self.gate.lock().unwrap() = Some(gate);
        open
    }

    /// The payloads carried to `relay` so far, in order.
    fn carried_at(&self, relay: PeerId) -> Vec<Vec<u8>> {
        self.carried
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r, _)| *r == Some(relay))
            .map(|(_, _, p)| p.clone())
            .collect()
    }

    /// Deliveries to `relay` fail (`true`) or are answered again (`false`).
    fn set_down(&self, relay: PeerId, down: bool) {
        let mut set = self.down.lock().unwrap();
        if down {
            set.insert(relay);
        } else {
            set.remove(&relay);
        }
    }

    /// The answer to a delivery at `relay`.
    fn answer_at(&self, relay: Option<PeerId>) -> Result<(), NetError> {
        if relay.is_some_and(|r| self.down.lock().unwrap().contains(&r)) {
            return Err(NetError::Transport("the relay is down".into()));
        }
        self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
    }
}

impl Courier for MemoryCourier {
    fn deliver_lane(
        &self,
        route: Route,
        payloads: Vec<Vec<u8>>,
        mut more: mpsc::Receiver<Vec<u8>>,
    ) -> BoxFuture<'static, (Vec<Taken>, Option<NetError>)> {
        let (peer, relay) = (route.peer, route.relay);
        if let Some(mut gate) = self.gate.lock().unwrap().clone() {
            let carried = self.carried.clone();
            let by = if relay.is_some() {
                Taken::Relay
            } else {
                Taken::Device
            };
            let mut n = payloads.len();
            carried
                .lock()
                .unwrap()
                .extend(payloads.into_iter().map(|p| (peer, relay, p)));
            return Box::pin(async move {
                loop {
                    tokio::select! {
                        _ = gate.wait_for(|open| *open) => break,
                        Some(p) = more.recv() => {
                            carried.lock().unwrap().push((peer, relay, p));
                            n += 1;
                        }
                    }
                }
                (vec![by; n], None)
            });
        }
        // One after another, as a lane without a deposit stream sends them.
        let mut taken = Vec::with_capacity(payloads.len());
        for payload in payloads {
            self.carried.lock().unwrap().push((peer, relay, payload));
            match self.answer_at(relay) {
                Ok(()) if relay.is_some() => taken.push(Taken::Relay),
                Ok(()) => taken.push(Taken::Device),
                Err(e) => return Box::pin(async move { (taken, Some(e)) }),
            }
        }
        Box::pin(async move { (taken, None) })
    }

    fn deposit_many(
        &self,
        relay: PeerId,
        recipients: Vec<(PeerId, Option<[u8; 32]>)>,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<Refusal>, NetError>> {
        self.carried.lock().unwrap().extend(
            recipients
                .into_iter()
                .map(|(peer, _)| (peer, Some(relay), payload.clone())),
        );
        let answer = self.answer_at(Some(relay));
        Box::pin(async move { answer.map(|()| Vec::new()) })
    }
}

/// An engine under test and what it reports.
struct Harness {
    engine: Engine,
    clock: Clock,
    courier: Arc<MemoryCourier>,
    internal: mpsc::Receiver<Internal>,
    events: broadcast::Receiver<Event>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A fresh identity in a temporary home; the clock at [`T0_MS`].
    fn new() -> Harness {
        Harness::named("alice")
    }

    /// Like [`Harness::new`], for a user called `name`.
    fn named(name: &str) -> Harness {
        Harness::with_relays(name, 1)
    }

    /// Like [`Harness::named`], with `relays` home relays (named in contact links only:
    /// nothing is ever dialled).
    fn with_relays(name: &str, relays: usize) -> Harness {
        Harness::build(name, relays, false).0
    }

    /// Like [`Harness::named`], with the network's commands held for the test to answer
    /// (a request waits until the test answers it).
    fn holding(name: &str) -> (Harness, net::Held) {
        let (h, held) = Harness::build(name, 1, true);
        (h, held.expect("the commands are held"))
    }

    fn build(name: &str, relays: usize, hold: bool) -> (Harness, Option<net::Held>) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        home.init(name, "laptop").unwrap();
        let (store, keys) = home.open().unwrap();
        let keypair = Keypair::ed25519_from_bytes(*keys.device.network_secret()).unwrap();
        let (net, _net_events, event_loop) = net::new(
            keypair.clone(),
            net::Config {
                listen: vec![],
                direct: false,
            },
        )
        .unwrap();
        // No network: the loop is never run, so a request fails as `Closed` at once, or
        // waits for the test's answer.
        let held = hold.then(|| event_loop.held());
        let clock = Clock::manual(T0_MS);
        let courier = Arc::new(MemoryCourier::default());
        let (events, events_rx) = broadcast::channel(4096);
        let (internal_tx, internal) = mpsc::channel(64);
        let engine = Engine::new(
            Setup {
                config: home.config().unwrap(),
                home,
                store,
                keys,
                keypair,
                net,
                home_relays: (0..relays)
                    .map(|_| {
                        format!("/ip4/127.0.0.1/tcp/9/p2p/{}", other_device())
                            .parse()
                            .unwrap()
                    })
                    .collect(),
                direct: false,
                clock: clock.clone(),
                courier: Some(courier.clone()),
            },
            events,
            internal_tx,
        )
        .unwrap();
        let harness = Harness {
            engine,
            clock,
            courier,
            internal,
            events: events_rx,
            _dir: dir,
        };
        (harness, held)
    }

    /// Waits (bounded) for the next report of a spawned task and lets the engine take it.
    async fn settle(&mut self) {
        let report = tokio::time::timeout(REPORT_WAIT, self.internal.recv())
            .await
            .expect("a spawned task reports in time")
            .expect("the report channel is open");
        self.engine.on_internal_batch(vec![report]);
    }

    /// Settles reports, whatever task sent them, until `done` holds (each wait bounded).
    async fn settle_until(&mut self, done: impl Fn(&Harness) -> bool) {
        while !done(self) {
            self.settle().await;
        }
    }

    /// Settles lane reports until the courier has carried `n` rows in all.
    async fn carry(&mut self, n: usize) -> Vec<Vec<u8>> {
        while self.courier.carried().len() < n {
            self.settle().await;
        }
        self.courier.carried()
    }

    /// The events since the last call.
    fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            out.push(ev);
        }
        out
    }

    /// The messages shown (`message` events) since the last call: (seq, gap before).
    fn shown(&mut self) -> Vec<(u64, bool)> {
        self.events()
            .into_iter()
            .filter_map(|ev| match ev {
                Event::Message { message } => Some((message.seq, message.gap_before)),
                _ => None,
            })
            .collect()
    }

    /// This device's peer id.
    fn peer(&self) -> PeerId {
        self.engine.net.local_peer_id()
    }

    /// Adds `other` as a contact from its full contact link.
    async fn add(&mut self, other: &Harness) {
        let link = other.engine.contact_link().unwrap().link;
        let (reply, answer) = oneshot::channel();
        self.engine.add_contact(link, None, false, reply);
        self.answer(answer).await.unwrap();
    }

    /// Settles reports (each wait bounded) until the command whose reply is `answer` is
    /// answered, and returns the answer.
    async fn answer<T>(
        &mut self,
        mut answer: oneshot::Receiver<Result<T, crate::error::NodeError>>,
    ) -> Result<T, crate::error::NodeError> {
        loop {
            match answer.try_recv() {
                Ok(out) => return out,
                Err(oneshot::error::TryRecvError::Empty) => self.settle().await,
                Err(oneshot::error::TryRecvError::Closed) => panic!("the command was dropped"),
            }
        }
    }

    /// One of `other`'s one-time keys, as a claim at its relay would hand it out.
    fn claimed_prekey(other: &mut Harness) -> Vec<u8> {
        let certificate = other.engine.me.keys.certificate.clone();
        let bundle =
            PrekeyBundle::generate_keeping(&mut other.engine.me.keys.device, certificate, 1, None)
                .unwrap();
        other.engine.save_device().unwrap();
        bundle.claim(bundle.one_time_keys[0]).to_bytes().unwrap()
    }

    /// Starts a session to `other`'s device with one of its one-time keys, as the answer to
    /// a claim at its relay does.
    fn start_session(&mut self, other: &mut Harness) {
        let claimed = Harness::claimed_prekey(other);
        let (user, device) = (
            other.engine.me.user,
            other.engine.me.keys.device.device_id(),
        );
        self.engine.on_prekey_claimed(user, device, Ok(claimed));
    }

    /// Like [`Harness::start_session`], without the pass over texts waiting for a session
    /// that a claim's answer starts: as a session found after a restart.
    fn session_only(&mut self, other: &mut Harness) {
        let claimed = Harness::claimed_prekey(other);
        let device = other.engine.me.keys.device.device_id();
        self.engine
            .start_session(&other.engine.me.user, device, &claimed)
            .unwrap();
    }

    /// Creates a group of this user and `members` (by the engine's command); returns its id.
    async fn create_group(&mut self, members: &[&Harness]) -> String {
        let (reply, answer) = oneshot::channel();
        self.engine.on_group_command(super::GroupCommand::Create {
            title: "T".into(),
            members: members
                .iter()
                .map(|m| m.engine.me.user_hex.clone())
                .collect(),
            reply,
        });
        self.answer(answer).await.unwrap().id.to_string()
    }

    /// The texts of conversation `conv` (a contact's user id or a group id), oldest first
    /// (not its other messages).
    fn texts(&self, conv: &str) -> Vec<String> {
        self.engine
            .store
            .history(
                &ConversationId(conv.to_owned()),
                tern_store::Page::Latest,
                None,
            )
            .unwrap()
            .into_iter()
            .filter_map(|m| match m.body {
                Body::Text(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// The texts to `contact` stored waiting for a session, oldest first.
    fn waiting_texts(&self, contact: &Harness) -> Vec<String> {
        let conv = tern_store::ConversationId(contact.engine.me.user_hex.clone());
        self.engine
            .store
            .awaiting_encryption(&self.engine.me.device_hex, &conv, 500)
            .unwrap()
            .into_iter()
            .map(|m| match m.body {
                tern_store::Body::Text(t) => t,
                other => panic!("not a text: {other:?}"),
            })
            .collect()
    }
}

/// Alice and Bob, each the other's contact, with a session from Alice to Bob (Bob's comes
/// from Alice's first message).
async fn alice_and_bob() -> (Harness, Harness) {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    alice.add(&bob).await;
    bob.add(&alice).await;
    alice.start_session(&mut bob);
    (alice, bob)
}

/// Adds a device to `user`'s own list as linking one does (certified, stored, taken in),
/// without the provisioning record; returns its id.
fn link_device(user: &mut Harness) -> String {
    let new = tern_crypto::DeviceKeys::generate().unwrap();
    let now = user.clock.now_secs();
    let me = &user.engine.me;
    let certificate = new.certify(&me.keys.identity, "phone", now).unwrap();
    let next = me
        .keys
        .device_list
        .list()
        .with_device(certificate, now)
        .unwrap();
    let signed = next.sign(&me.keys.identity).unwrap();
    user.engine
        .store
        .transaction(|tx| tx.save_own_device_list(next.version, signed.as_bytes()))
        .unwrap();
    user.engine.me.keys.device_list = signed;
    user.engine.refresh_me();
    new.device_id().to_peer_id_string()
}

/// Another device's id (a peer id nobody else uses).
fn other_device() -> String {
    Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

/// A message id from a number.
fn id(n: u8) -> MessageId {
    MessageId([n; 16])
}

/// A text `n` this device sent to `user`'s `device` (the payload is `[n]`), recorded with
/// its one outbox row as the send path does, queued at the clock's time.
fn queue_text(h: &mut Harness, user: &str, device: &str, n: u8) -> MessageId {
    let now = h.clock.now_ms();
    let message = h.engine.own_text(
        id(n),
        user,
        (u64::from(n), u64::from(n)),
        now,
        Body::Text(format!("t{n}")),
    );
    let delivery = Delivery {
        recipient_user: user.to_owned(),
        recipient_device: device.to_owned(),
        payload: vec![n],
    };
    h.engine
        .store
        .transaction(|tx| -> Result<_, tern_store::WriteError> {
            tx.ensure_conversation(
                &ConversationId(user.to_owned()),
                ConversationKind::Direct,
                None,
                now,
            )?;
            tx.record_outgoing(&message, &[], &[delivery], now)
        })
        .unwrap();
    id(n)
}

/// A group text 10 this device sent in a conversation named by `user`, with one shared
/// ciphertext (`megolm`) for each of `shared` (user, device), recorded as the group send
/// path does, at the clock's time.
fn queue_group_text(h: &mut Harness, user: &str, shared: &[(String, String)]) -> MessageId {
    let now = h.clock.now_ms();
    let message = h
        .engine
        .own_text(id(10), user, (10, 10), now, Body::Text("g".into()));
    h.engine
        .store
        .transaction(|tx| -> Result<_, tern_store::WriteError> {
            tx.ensure_conversation(
                &ConversationId(user.to_owned()),
                ConversationKind::Group,
                None,
                now,
            )?;
            tx.record_outgoing_fanout(&message, &[], &[], b"megolm", shared, now)
        })
        .unwrap();
    id(10)
}

/// A text `seq` received from `sender`'s one device, as stored at the clock's time.
fn received(h: &Harness, sender: &str, seq: u64) -> Message {
    let now = h.clock.now_ms();
    Message {
        id: MessageId([u8::try_from(seq).unwrap(); 16]),
        conversation: ConversationId(sender.to_owned()),
        sender_user: sender.to_owned(),
        sender_device: format!("{sender}-device"),
        lamport: seq,
        seq,
        sent_at_ms: now,
        received_at_ms: now,
        own: false,
        status: Status::Received,
        body: Body::Text(format!("m{seq}")),
        edited_at_ms: None,
    }
}
