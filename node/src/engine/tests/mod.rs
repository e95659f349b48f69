//! Unit tests of the engine's decisions by time: one engine over a real store in a
//! temporary home, a manual [`Clock`], no network (the network handle's task is never
//! started, so any request fails at once) and outbox rows carried by a [`MemoryCourier`].

mod hold;
mod outbox;
mod rotation;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::{PeerId, identity::Keypair};
use tern_store::{Body, ConversationId, ConversationKind, Delivery, Message, MessageId, Status};
use tokio::sync::{broadcast, mpsc};

use super::{
    Clock, Engine, Internal, Setup,
    courier::{Courier, Route},
};
use crate::{Home, net, net::NetError, types::Event};

/// The manual clock's start, ms since the epoch.
const T0_MS: i64 = 1_700_000_000_000;
/// How long a test waits for a spawned task to report.
const REPORT_WAIT: Duration = Duration::from_secs(10);

/// Carries outbox rows in memory: records each (peer, payload) in order and answers from a
/// script (`Ok` once the script is empty).
#[derive(Default)]
struct MemoryCourier {
    carried: Mutex<Vec<(PeerId, Vec<u8>)>>,
    answers: Mutex<VecDeque<Result<(), NetError>>>,
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
            .map(|(_, p)| p.clone())
            .collect()
    }
}

impl Courier for MemoryCourier {
    fn deliver(&self, route: Route, payload: Vec<u8>) -> BoxFuture<'static, Result<(), NetError>> {
        self.carried.lock().unwrap().push((route.peer, payload));
        let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
        Box::pin(async move { answer })
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
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        home.init("alice", "laptop").unwrap();
        let (store, keys) = home.open().unwrap();
        let keypair = Keypair::ed25519_from_bytes(*keys.device.network_secret()).unwrap();
        let (net, _net_events, event_loop) =
            net::new(keypair.clone(), net::Config { listen: vec![] }).unwrap();
        // No network: the loop is never run, so a request fails as `Closed` at once.
        drop(event_loop);
        let clock = Clock::manual(T0_MS);
        let courier = Arc::new(MemoryCourier::default());
        let (events, events_rx) = broadcast::channel(64);
        let (internal_tx, internal) = mpsc::channel(64);
        let engine = Engine::new(
            Setup {
                config: home.config().unwrap(),
                home,
                store,
                keys,
                keypair,
                net,
                home_relays: Vec::new(),
                direct: false,
                clock: clock.clone(),
                courier: Some(courier.clone()),
            },
            events,
            internal_tx,
        )
        .unwrap();
        Harness {
            engine,
            clock,
            courier,
            internal,
            events: events_rx,
            _dir: dir,
        }
    }

    /// Waits (bounded) for the next report of a spawned task and lets the engine take it.
    async fn settle(&mut self) {
        let report = tokio::time::timeout(REPORT_WAIT, self.internal.recv())
            .await
            .expect("a spawned task reports in time")
            .expect("the report channel is open");
        self.engine.on_internal_batch(vec![report]);
    }

    /// The messages shown (`message` events) since the last call: (seq, gap before).
    fn shown(&mut self) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            if let Event::Message { message } = ev {
                out.push((message.seq, message.gap_before));
            }
        }
        out
    }
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
