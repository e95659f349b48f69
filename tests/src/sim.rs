//! Simulated member devices: many lightweight Tern devices in one process, for tests and
//! benchmarks that need hundreds of group members without hundreds of `tern up` processes.
//!
//! A [`SimDevice`] is a real device in every way a relay or another node can observe: it has
//! its own user identity key, device keys (a libp2p Ed25519 key and an Olm account), a device
//! certificate and a signed device list; it holds its own Noise-authenticated connection to a
//! real `tern-relay` (so it owns its mailbox), publishes its device list and a prekey bundle
//! with one-time keys, turns on live delivery and hands out a signed contact link. What
//! arrives in its mailbox it decrypts for real — pairwise Olm messages with
//! [`PeerSessions`], group messages with the [`InboundSenderKey`] a sender distributed to it
//! over Olm — checks that the envelope names the device the ciphertext came from, records
//! every text with the instant it was decrypted, and acknowledges the mail.
//!
//! What it leaves out is everything a member does not need to *receive*: no store (state is
//! in memory), no receipts, no direct connections, no sending. Membership operations
//! ([`Body::GroupOp`]) are decrypted (so the Olm session stays in step) and otherwise ignored.
//!
//! Many sims share one tokio runtime; each costs one libp2p swarm task, one processing task
//! and its keys. [`SimFleet`] starts many at once and offers a [`Tally`] to wait until a given
//! number of them have decrypted a text.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};
use tern_relay::rpc::Requests as _;

use anyhow::{Context, anyhow};
use tern_crypto::{
    DeviceId, DeviceKeys, DeviceList, IdentityKey, Kind, SignedDeviceCertificate, UserId,
    group::{GroupMessage, InboundSenderKey, MemoryReplayLedger, SenderKeyDistribution},
    prekey::PrekeyBundle,
    session::{PeerSessions, SessionError},
};
use tern_node::{
    envelope::{Body, Conversation, Envelope},
    link::ContactLink,
};
use tern_relay::{
    Multiaddr, PeerId,
    client::{Client, Config, Event, Keypair},
    libp2p::futures::future::join_all,
    wire::mailbox,
};
use tokio::{sync::Notify, task::JoinHandle};

/// One-time keys each sim publishes (a member needs one per device that starts a session
/// with it; the fallback key covers any beyond that).
pub const DEFAULT_ONE_TIME_KEYS: usize = 10;
/// How often a sim fetches its mailbox besides live delivery (mail pushed while its event
/// queue was full stays in the mailbox; this is the node's own poll interval).
pub const MAILBOX_POLL: Duration = Duration::from_secs(15);
/// Most group messages a sim keeps while waiting for their sender key.
const MAX_STASH: usize = 1024;
/// How many sims connect at once while a fleet starts.
const START_BATCH: usize = 32;

/// A text a sim decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The group (hex id) for a group message, `None` for a direct message.
    pub group: Option<String>,
    /// The sending device.
    pub sender_device: PeerId,
    /// The text.
    pub text: String,
    /// When it was decrypted here.
    pub at: Instant,
    /// When the relay stored the ciphertext (the relay's clock, ms since the Unix epoch).
    pub deposited_ms: u64,
}

/// Counts decrypted texts across many sims, so a test can wait until `n` of them have one.
#[derive(Debug, Default)]
pub struct Tally {
    /// Text → the instant each sim decrypted it (one entry per sim).
    seen: Mutex<HashMap<String, Vec<Instant>>>,
    changed: Notify,
}

impl Tally {
    /// Records that one more sim (or any receiver) got `text` at `at`.
    pub fn record(&self, text: &str, at: Instant) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.entry(text.to_owned()).or_default().push(at);
        }
        self.changed.notify_waiters();
    }

    /// How many sims have decrypted `text` so far.
    pub fn count(&self, text: &str) -> usize {
        self.seen
            .lock()
            .map(|s| s.get(text).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Waits until at least `n` sims have decrypted `text` (at most `timeout`) and returns
    /// the instants they did, in arrival order.
    pub async fn wait(
        &self,
        text: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Instant>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let seen = self.seen.lock().map_err(|_| anyhow!("tally poisoned"))?;
                if let Some(at) = seen.get(text)
                    && at.len() >= n
                {
                    return Ok(at.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.count(text);
                anyhow::bail!(
                    "timed out after {timeout:?}: {got} of {n} sims decrypted the awaited text"
                );
            }
        }
    }

    /// Forgets a text (so a long series does not keep every instant).
    pub fn forget(&self, text: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(text);
        }
    }
}

/// Devices whose pairwise messages sims accept: device → its Olm Curve25519 key, learned
/// from verified contact links (as a node learns them when it adds a contact).
#[derive(Debug, Default)]
pub struct Trusted {
    devices: RwLock<HashMap<PeerId, [u8; 32]>>,
}

impl Trusted {
    /// Verifies a contact link and trusts every active device of its device list.
    pub fn add_link(&self, link: &str) -> anyhow::Result<()> {
        let parsed = ContactLink::parse(link).context("a sim cannot use this contact link")?;
        let mut devices = self
            .devices
            .write()
            .map_err(|_| anyhow!("trust map poisoned"))?;
        for entry in parsed.device_list.list().active() {
            let peer = PeerId::from_bytes(&entry.device_id().to_peer_id_bytes())?;
            devices.insert(peer, entry.certificate.certificate().curve25519);
        }
        Ok(())
    }

    fn curve(&self, peer: &PeerId) -> Option<[u8; 32]> {
        self.devices.read().ok()?.get(peer).copied()
    }
}

/// What a sim has counted besides texts, for diagnosing a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Mailbox messages handled (decrypted or definitively refused) and acknowledged.
    pub acked: u64,
    /// Pairwise messages decrypted.
    pub pairwise: u64,
    /// Group messages decrypted.
    pub group: u64,
    /// Sender keys accepted.
    pub sender_keys: u64,
    /// Ciphertexts that failed to decrypt or check (acknowledged and dropped).
    pub failures: u64,
    /// Mail left in the mailbox because its sender was not trusted yet.
    pub kept: u64,
}

/// The state a sim's processing task owns.
struct Inner {
    user: UserId,
    device: DeviceKeys,
    sessions: HashMap<PeerId, PeerSessions>,
    /// Inbound sender keys by Megolm session id.
    sender_keys: HashMap<String, InboundSenderKey>,
    ledger: MemoryReplayLedger,
    /// Group messages that arrived before their sender key: (sender, deposited, ciphertext).
    stash: Vec<(PeerId, u64, Vec<u8>)>,
    /// When the relay stored the mail being processed.
    deposited_ms: u64,
    /// Envelope ids already recorded (a redelivered message is not counted twice).
    seen_ids: HashSet<[u8; 16]>,
    trusted: Arc<Trusted>,
    tally: Arc<Tally>,
    received: Arc<Mutex<Vec<Received>>>,
    stats: Arc<Mutex<SimStats>>,
}

/// One simulated member device, connected to a relay.
pub struct SimDevice {
    /// The sim's user id.
    pub user: UserId,
    /// Its device (its mailbox owner at the relay).
    pub device: PeerId,
    link: String,
    client: Client,
    received: Arc<Mutex<Vec<Received>>>,
    stats: Arc<Mutex<SimStats>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("user", &self.user)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SimDevice {
    /// Creates a fresh identity and device named `name`, connects to the relay at `relay`,
    /// publishes the device list and `one_time_keys` one-time keys, turns on live delivery
    /// and starts processing mail. Decrypted texts go to `tally` as well as to
    /// [`SimDevice::received`]; pairwise mail is accepted from the devices in `trusted`.
    pub async fn start(
        relay: &Multiaddr,
        name: &str,
        one_time_keys: usize,
        trusted: Arc<Trusted>,
        tally: Arc<Tally>,
    ) -> anyhow::Result<SimDevice> {
        let identity = IdentityKey::generate()?;
        let mut device = DeviceKeys::generate()?;
        let now = now_secs();
        let certificate: SignedDeviceCertificate = device.certify(&identity, name, now)?;
        let list = DeviceList::first(&identity, certificate.clone(), now).sign(&identity)?;
        let keypair = Keypair::ed25519_from_bytes(*device.network_secret())?;
        let link = ContactLink::create(&keypair, name, std::slice::from_ref(relay), &list)?;
        let (client, events) = Client::connect(keypair, relay.clone(), Config::default())
            .await
            .with_context(|| format!("sim {name} connecting to {relay}"))?;
        client
            .publish_device_list(list.as_bytes().to_vec())
            .await
            .context("sim publishing its device list")?;
        let bundle = PrekeyBundle::generate(&mut device, certificate, one_time_keys)?;
        client
            .publish_prekeys(bundle.to_bytes()?)
            .await
            .context("sim publishing prekeys")?;
        client
            .listen(true)
            .await
            .context("sim turning on live delivery")?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Mutex::new(SimStats::default()));
        let user = identity.user_id();
        let inner = Inner {
            user,
            device,
            sessions: HashMap::new(),
            sender_keys: HashMap::new(),
            ledger: MemoryReplayLedger::default(),
            stash: Vec::new(),
            deposited_ms: 0,
            seen_ids: HashSet::new(),
            trusted,
            tally,
            received: received.clone(),
            stats: stats.clone(),
        };
        let task = tokio::spawn(run(inner, client.clone(), events));
        Ok(SimDevice {
            user,
            device: client.local_peer_id(),
            link,
            client,
            received,
            stats,
            task,
        })
    }

    /// The sim's signed contact link.
    pub fn link(&self) -> &str {
        &self.link
    }

    /// Every text decrypted so far, in the order decrypted.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// The sim's relay client (to inspect its mailbox directly).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// The processing loop: live deliveries, and a periodic fetch for anything not pushed.
async fn run(mut inner: Inner, client: Client, mut events: tokio::sync::mpsc::Receiver<Event>) {
    let mut poll = tokio::time::interval(MAILBOX_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Delivered(envelopes)) => inner.handle(&client, envelopes),
                Some(_) => {}
                None => return,
            },
            _ = poll.tick() => {
                // A failed fetch is tried again at the next tick.
                let mut after = 0;
                while let Ok((envelopes, more)) =
                    client.fetch(after, mailbox::MAX_FETCH_MESSAGES).await
                {
                    let Some(last) = envelopes.last().map(|e| e.id) else { break };
                    after = last;
                    inner.handle(&client, envelopes);
                    if !more {
                        break;
                    }
                }
            }
        }
    }
}

/// What to do with a mailbox message after processing it.
enum Outcome {
    Ack,
    Keep,
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut SimStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    fn handle(&mut self, client: &Client, envelopes: Vec<mailbox::Envelope>) {
        let mut acks = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            self.deposited_ms = env.deposited_ms;
            match self.process(env.sender, &env.ciphertext) {
                Outcome::Ack => acks.push(env.id),
                Outcome::Keep => self.count(|s| s.kept += 1),
            }
        }
        if acks.is_empty() {
            return;
        }
        self.count(|s| s.acked += acks.len() as u64);
        let client = client.clone();
        tokio::spawn(async move {
            for chunk in acks.chunks(mailbox::MAX_ACK_IDS) {
                // A failed ack only means the mail comes again (and is recognised).
                let _ = client.ack_pushed(chunk.to_vec()).await;
            }
        });
    }

    fn process(&mut self, sender: PeerId, ciphertext: &[u8]) -> Outcome {
        match ciphertext.get(1).copied() {
            Some(k) if k == Kind::PairwiseMessage as u8 => self.pairwise(sender, ciphertext),
            Some(k) if k == Kind::GroupMessage as u8 => {
                if !self.group(sender, ciphertext) {
                    if self.stash.len() >= MAX_STASH {
                        self.stash.remove(0);
                    }
                    self.stash
                        .push((sender, self.deposited_ms, ciphertext.to_vec()));
                }
                Outcome::Ack
            }
            _ => {
                self.count(|s| s.failures += 1);
                Outcome::Ack
            }
        }
    }

    fn pairwise(&mut self, sender: PeerId, ciphertext: &[u8]) -> Outcome {
        let Some(device) = DeviceId::from_peer_id_bytes(&sender.to_bytes()) else {
            self.count(|s| s.failures += 1);
            return Outcome::Ack;
        };
        let Some(curve) = self.trusted.curve(&sender) else {
            return Outcome::Keep;
        };
        let sessions = self
            .sessions
            .entry(sender)
            .or_insert_with(|| PeerSessions::new(device, curve));
        let plaintext = match sessions.decrypt(&mut self.device, ciphertext) {
            Ok(d) => d.plaintext,
            Err(SessionError::Duplicate(_) | SessionError::MessageKeyGone(_)) => {
                return Outcome::Ack;
            }
            Err(_) => {
                self.count(|s| s.failures += 1);
                return Outcome::Ack;
            }
        };
        self.count(|s| s.pairwise += 1);
        let env = match Envelope::decode(&plaintext) {
            Ok(env) if env.sender_device.as_slice() == device.as_bytes() => env,
            _ => {
                self.count(|s| s.failures += 1);
                return Outcome::Ack;
            }
        };
        match env.body {
            Body::Text { text, .. } => {
                if matches!(&env.conversation, Conversation::Direct { to } if to.as_slice() == self.user.as_bytes())
                {
                    self.record(env.id.into_array(), None, sender, text);
                } else {
                    self.count(|s| s.failures += 1);
                }
            }
            Body::SenderKey {
                distribution,
                message,
            } => {
                let key = SenderKeyDistribution::from_bytes(&distribution).and_then(|d| {
                    if d.sender_user.as_bytes()[..] != env.sender_user[..] {
                        return Err(tern_crypto::group::GroupError::BindingMismatch);
                    }
                    InboundSenderKey::from_distribution(&d, &device)
                });
                match key {
                    Ok(key) => {
                        self.count(|s| s.sender_keys += 1);
                        self.sender_keys.insert(key.session_id(), key);
                        if let Some(m) = message
                            && !self.group(sender, &m)
                        {
                            self.count(|s| s.failures += 1);
                        }
                        self.retry_stash();
                    }
                    Err(_) => {
                        self.count(|s| s.failures += 1);
                    }
                }
            }
            // Membership operations and receipts: nothing a receiving member must act on.
            _ => {}
        }
        Outcome::Ack
    }

    /// Decrypts a group message; `false` if its sender key is not here (yet).
    fn group(&mut self, sender: PeerId, ciphertext: &[u8]) -> bool {
        let msg = match GroupMessage::from_bytes(ciphertext) {
            Ok(m) => m,
            Err(_) => {
                self.count(|s| s.failures += 1);
                return true;
            }
        };
        let Some(key) = self.sender_keys.get_mut(&msg.session_id) else {
            return false;
        };
        // The device the relay authenticated must be the one the message names.
        if PeerId::from_bytes(&msg.sender_device.to_peer_id_bytes()).ok() != Some(sender) {
            self.count(|s| s.failures += 1);
            return true;
        }
        let group_id = key.group_id();
        let decrypted = match key.decrypt(&msg, &mut self.ledger) {
            Ok(d) => d,
            Err(tern_crypto::group::GroupError::Replay { .. }) => return true,
            Err(_) => {
                self.count(|s| s.failures += 1);
                return true;
            }
        };
        self.count(|s| s.group += 1);
        match Envelope::decode(&decrypted.body) {
            Ok(Envelope {
                id,
                conversation: Conversation::Group { id: gid },
                sender_device,
                body: Body::Text { text, .. },
                ..
            }) if gid.as_slice() == group_id.as_bytes()
                && sender_device.as_slice() == decrypted.sender_device.as_bytes() =>
            {
                self.record(id.into_array(), Some(group_id.to_string()), sender, text);
            }
            _ => self.count(|s| s.failures += 1),
        }
        true
    }

    fn retry_stash(&mut self) {
        if self.stash.is_empty() {
            return;
        }
        let stash = std::mem::take(&mut self.stash);
        let current = self.deposited_ms;
        for (sender, deposited, ciphertext) in stash {
            self.deposited_ms = deposited;
            if !self.group(sender, &ciphertext) {
                self.stash.push((sender, deposited, ciphertext));
            }
        }
        self.deposited_ms = current;
    }

    fn record(&mut self, id: [u8; 16], group: Option<String>, sender: PeerId, text: String) {
        if !self.seen_ids.insert(id) {
            return;
        }
        let at = Instant::now();
        // Into this sim's own list first: whoever the tally wakes must find it there.
        if let Ok(mut r) = self.received.lock() {
            r.push(Received {
                group,
                sender_device: sender,
                text: text.clone(),
                at,
                deposited_ms: self.deposited_ms,
            });
        }
        self.tally.record(&text, at);
    }
}

/// Many sims on one relay, sharing one trust map and one [`Tally`].
#[derive(Debug)]
pub struct SimFleet {
    /// The sims, in start order.
    pub sims: Vec<SimDevice>,
    /// Every text any sim decrypted.
    pub tally: Arc<Tally>,
    trusted: Arc<Trusted>,
}

impl SimFleet {
    /// Starts `n` sims named `{prefix}{i}` on the relay at `relay` (a few dozen connect at
    /// a time), each with [`DEFAULT_ONE_TIME_KEYS`] one-time keys.
    pub async fn start(relay: &str, n: usize, prefix: &str) -> anyhow::Result<SimFleet> {
        let relay: Multiaddr = relay.parse().context("relay address")?;
        let trusted = Arc::new(Trusted::default());
        let tally = Arc::new(Tally::default());
        let mut sims = Vec::with_capacity(n);
        for start in (0..n).step_by(START_BATCH) {
            let batch = (start..n.min(start + START_BATCH)).map(|i| {
                let name = format!("{prefix}{i}");
                let (relay, trusted, tally) = (relay.clone(), trusted.clone(), tally.clone());
                async move {
                    SimDevice::start(&relay, &name, DEFAULT_ONE_TIME_KEYS, trusted, tally).await
                }
            });
            for sim in join_all(batch).await {
                sims.push(sim?);
            }
        }
        Ok(SimFleet {
            sims,
            tally,
            trusted,
        })
    }

    /// Lets every sim accept pairwise mail from the devices of this contact link.
    pub fn trust(&self, link: &str) -> anyhow::Result<()> {
        self.trusted.add_link(link)
    }

    /// Every sim's contact link.
    pub fn links(&self) -> Vec<String> {
        self.sims.iter().map(|s| s.link().to_owned()).collect()
    }

    /// The sum of every sim's counters.
    pub fn stats(&self) -> SimStats {
        self.sims
            .iter()
            .map(SimDevice::stats)
            .fold(SimStats::default(), |mut a, s| {
                a.acked += s.acked;
                a.pairwise += s.pairwise;
                a.group += s.group;
                a.sender_keys += s.sender_keys;
                a.failures += s.failures;
                a.kept += s.kept;
                a
            })
    }
}
