//! What the engine holds, in parts with one purpose each, and how an engine is made.
//!
//! The [`Engine`] owns the store, the network handle and the clock it reads, and a few
//! groups of state: who this device is ([`Me`]), its relays ([`Relays`]), the people it
//! knows ([`People`]) and their device lists ([`Lists`]), what waits to go ([`Outbox`]) and
//! the receiver's side of order ([`Inbox`]), the conversations' clocks ([`Counters`]),
//! groups ([`Groups`]) and the history handed to a linked device ([`Handover`]). The parts
//! that are a feature of their own (hold-back, grants, push, media) keep their state in
//! their own module.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use libp2p::{Multiaddr, PeerId, identity::Keypair};
use tern_crypto::{DeviceId, UserId, group::GroupId};
use tern_store::{ConversationId, MessageId, Store};
use tokio::sync::{broadcast, mpsc};

use super::{
    Clock, ContactState, Internal, contacts, courier, grants, group, hold, media, push, relay_peer,
};
use crate::{
    error::NodeError,
    home::{self, Home, Keys},
    net,
    types::{Event, RecoveryInfo},
};

/// The engine: one value, owned by one task (see the module documentation of
/// [`super`]).
pub(crate) struct Engine {
    /// Who this device is.
    pub me: Me,
    /// Home relays and the connections to them.
    pub relays: Relays,
    /// Contacts, group members who are not contacts, and which device is whose.
    pub people: People,
    /// Keeping device lists current, and what is owed because one was not.
    pub lists: Lists,
    /// What waits to go, beside the rows in the store.
    pub outbox: Outbox,
    /// The receiver's side of order: waits, losses, quarantine.
    pub inbox: Inbox,
    /// Per conversation, its Lamport clock and this device's sequence number.
    pub counters: Counters,
    /// Groups and what is pending for them.
    pub groups: Groups,
    /// History owed to a linked device, or being received as one.
    pub handover: Handover,
    /// Received messages held back for a missing per-sender predecessor.
    pub hold: hold::HoldBack,
    /// Deposit grants issued and held.
    pub grants: grants::Grants,
    /// The push endpoint and its registration at the home relays.
    pub push: push::Push,
    /// This user's relay record in the DHT, and contacts looked up there.
    pub dht: super::dht::Dht,
    /// File transfers: their tasks, retries, and the files served to peers.
    pub media: media::Media,
    /// Everything this device keeps; only the engine task touches it.
    pub store: Store,
    /// The handle to the network task.
    pub net: net::Client,
    /// Where the engine reads the time.
    pub clock: Clock,
    /// What carries outbox rows to their devices (the network, or a test's courier).
    pub courier: courier::Shared,
    /// What handles are told.
    pub events: broadcast::Sender<Event>,
    /// Events held while a store batch is open: told once it commits (`batch`).
    pub held: std::sync::Mutex<Option<Vec<Event>>>,
    /// Where tasks the engine spawned report back.
    pub internal: mpsc::Sender<Internal>,
    /// Commands whose network part runs in a task and that are not answered yet (see
    /// [`Engine::off_task`]).
    pub answering: usize,
}

/// Who this device is.
pub(crate) struct Me {
    /// The home directory.
    pub home: Home,
    /// The device's keys, certificate and device list.
    pub keys: Keys,
    /// The settings kept in the home (names, relays, push).
    pub config: home::Config,
    /// The libp2p identity (made from the device's network secret).
    pub keypair: Keypair,
    /// This user's id.
    pub user: UserId,
    /// This user's id as hex (as conversations and store rows name it).
    pub user_hex: String,
    /// This device's id.
    pub device: DeviceId,
    /// This device's id as a peer id string.
    pub device_hex: String,
    /// When this device was made, ms.
    pub device_created_ms: i64,
    /// The signed fallback key this run publishes at every home relay (made by the first
    /// bundle of the run): one key for all relays, so none serves a discarded one.
    pub fallback: Option<tern_crypto::prekey::SignedPrekey>,
    /// This device was revoked by another device of the user: it sends nothing any more.
    pub revoked: bool,
    /// Devices linked by this run, with the provisioning key their record was sealed to: only
    /// the same code may have the record sent again.
    pub linked: HashMap<DeviceId, [u8; 32]>,
    /// Where each of those links stands (the new device's confirmation), and the
    /// confirmation mailbox of the latest record sent it.
    pub link_states: HashMap<DeviceId, (crate::types::LinkState, libp2p::PeerId)>,
}

/// Home relays and the connections to them.
pub(crate) struct Relays {
    /// Home relays, each ending in `/p2p/<peer id>`.
    pub home_relays: Vec<Multiaddr>,
    /// Removed home relays whose mailboxes are still drained, and until when (ms since the
    /// epoch); kept in `config.json` (`draining_relays`).
    pub draining: Vec<(Multiaddr, i64)>,
    /// Relays connected and ready now.
    pub relay_up: HashSet<PeerId>,
    /// Why the last dial of each relay not connected failed (cleared when it connects).
    pub dial_problems: HashMap<PeerId, crate::net::DialProblem>,
    /// Home relays whose connection routine did not complete (retried every heartbeat).
    pub setup_pending: HashSet<PeerId>,
    /// Home relays whose setup a task is running now, and whether each is to be announced as
    /// connected when it reports (it came up meanwhile).
    pub setting_up: HashMap<PeerId, bool>,
    /// Home relays' setup is to be retried on the next tick rather than the next heartbeat
    /// (this device's list changed, so a relay that refused its prekeys now takes them).
    pub setup_soon: bool,
    /// Home relays that failed to take the allow-list, and when to give it again.
    pub allow_list_retry: HashMap<PeerId, Instant>,
    /// Relays whose mailbox a task is draining now (one drain per relay at a time, so mail
    /// is taken in the relay's order).
    pub fetching: HashSet<PeerId>,
    /// Relays to drain again because mail was left there (waiting for its predecessors, or
    /// not stored); done on the next outbox tick, not at once: such mail comes back on
    /// every drain until what it waits for arrives.
    pub refetch: HashSet<PeerId>,
    /// Relays whose drain was asked for while one ran (after a relay's setup, a contact
    /// added, a push dropped): it starts as soon as that one ends.
    pub drain_again: HashSet<PeerId>,
    /// Addresses the swarm listens on.
    pub listen: Vec<Multiaddr>,
    /// Whether direct connections to contacts are made and used.
    pub direct: bool,
    /// Shown as away rather than online.
    pub away: bool,
    /// Presence of contacts' devices, as each relay last told (device → relay → entry): a
    /// device is as present as its best relay says, and what a relay said goes with it when
    /// it goes down.
    pub presence: HashMap<PeerId, HashMap<PeerId, tern_relay::wire::presence::Entry>>,
    /// Peers (not relays) this node has a connection to now, direct or through a circuit:
    /// a contact's device among them is shown online whatever a relay that lost sight of it
    /// says. As many as the connections; checked against the network task every heartbeat.
    pub peers_up: HashSet<PeerId>,
    /// Online contact devices dialled again since presence or a connection last told of
    /// them: (dials, the heartbeat of the next one).
    pub redials: HashMap<PeerId, (u32, u64)>,
    /// Heartbeats so far (device lists are refreshed every sixth).
    pub heartbeats: u64,
    /// One-time keys may be running low: check at the next tick.
    pub topup_due: bool,
}

/// Contacts, group members who are not contacts, and which device is whose.
pub(crate) struct People {
    /// Contacts by user id.
    pub contacts: HashMap<UserId, ContactState>,
    /// Members of shared groups who are not contacts, by user id.
    pub peers: HashMap<UserId, ContactState>,
    /// The user each known device (by peer id) belongs to.
    pub device_owner: HashMap<PeerId, UserId>,
    /// Revoked devices of known users, and whose (their messages are refused).
    pub revoked_devices: HashMap<DeviceId, UserId>,
    /// Contacts with an offered, not yet accepted identity key: user → link ("" when the
    /// change was seen in a relay's device list rather than a link).
    pub pending_identity: HashMap<UserId, String>,
    /// Some group member's device list is still to be fetched.
    pub peers_due: bool,
    /// Member lookups are running in a task.
    pub peers_fetching: bool,
    /// Failed member lookups in a row, and when to try again.
    pub peers_retry: (u32, Instant),
    /// Devices whose prekey is being claimed in a task (at most
    /// [`crate::consts::MAX_CLAIMS_IN_FLIGHT`]); each answers as `Internal::PrekeyClaimed`.
    pub claiming: HashSet<DeviceId>,
    /// When the relay set last taken from each user's device-list messages was sent (the
    /// sender's clock, ms): an older message arriving later, through a slower relay, does
    /// not bring back the set it replaced.
    pub relays_sent_at: HashMap<UserId, i64>,
}

/// Keeping device lists current, and what is owed because one was not.
pub(crate) struct Lists {
    /// Device lists are to be fetched again.
    pub lists_due: bool,
    /// When device lists were last fetched.
    pub lists_fetched: Option<Instant>,
    /// When each user's device list was last fetched because a message showed a newer one.
    pub list_wanted: HashMap<UserId, Instant>,
    /// Devices (user, device) that encrypted something other than a text for an older list of
    /// this user: told of the current list on the next tick. (Texts are owed in the store.)
    pub list_answers: HashSet<(UserId, DeviceId)>,
    /// Answers naming texts may be owed in the store (`list_answers_due`).
    pub answers_due: bool,
    /// The own list version each remote device was last told of (so it is told once).
    pub list_answered: HashMap<DeviceId, u64>,
    /// Texts may be owed to devices linked since they were sent (`resync_due` in the store).
    pub resync_due: bool,
    /// Failed rounds of sending owed texts in a row.
    pub resync_attempts: u32,
    /// When to send owed texts again after a failed round.
    pub resync_retry: Option<Instant>,
    /// This user's other devices are to be told of the own list, sessions set up as needed.
    pub announce_own_due: bool,
}

/// What waits to go, beside the rows in the store.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Lanes (device, relay) a task is sending now, with the rows it was handed.
    pub lanes_busy: HashMap<super::lanes::LaneKey, super::lanes::Running>,
    /// The device the last look at the lanes stopped after (`""`: start from the first).
    pub lane_cursor: String,
    /// Group fan-out rows being deposited: (message, device, relay).
    pub fan_in_flight: HashSet<(MessageId, String, Option<PeerId>)>,
    /// Delivered receipts owed per contact since the last outbox tick (sent on it).
    pub delivered_due: HashMap<UserId, Vec<MessageId>>,
    /// Contacts whose direct conversations hold own texts waiting for a session (stored
    /// before a prekey could be claimed). `None` until read from the store, once after
    /// start; from then on a contact is added whenever a text to them is stored to wait (the
    /// only way one comes to wait) and removed once the store holds none for them, so it never
    /// misses one. At most one entry per contact.
    pub awaiting: Option<std::collections::BTreeSet<UserId>>,
    /// Per contact with messages waiting for a session: failed attempts, next attempt.
    pub encrypt_retry: HashMap<UserId, (u32, Instant)>,
    /// Devices (with their users) rows were queued for while a store batch was open: their
    /// lanes start once it commits.
    pub kicked: std::collections::BTreeSet<(String, String)>,
    /// Lanes a relay stopped, with its refusal code (`network` when it did not answer),
    /// until the lane goes on there: what `status` shows as why rows wait. At most one
    /// entry per lane.
    pub held: HashMap<super::lanes::LaneKey, &'static str>,
    /// Relays that refused this device's deposits for their rate lately: one deposit per
    /// how long, and until when lanes there are paced. At most one entry per relay.
    pub paced: HashMap<PeerId, (std::time::Duration, Instant)>,
    /// At such a relay, when the next group fan-out may deposit. At most one entry per
    /// relay.
    pub fan_next: HashMap<PeerId, Instant>,
}

/// A resend asked of a device, as the receiver follows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResendFollow {
    /// The last sequence number lost (the text above the gap is `up_to + 1`).
    pub up_to: u64,
    /// The sequence number held in order when it was asked.
    pub asked_at: u64,
    /// The one held in order at the last look, and when that was.
    pub seen: u64,
    pub checked: Instant,
}

/// Where texts were lost from: a device of a user, in the direct conversation with them or
/// in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LostFrom {
    pub user: UserId,
    pub device: DeviceId,
    pub group: Option<GroupId>,
}

/// The receiver's side of order: waits, losses, quarantine.
#[derive(Default)]
pub(crate) struct Inbox {
    /// Pairwise messages waiting for earlier messages of their chain: digest → first seen.
    pub reorder: HashMap<[u8; 16], Instant>,
    /// When a resend was last asked of each remote device, per conversation (`None`: the
    /// direct one).
    pub resend_asked: HashMap<(DeviceId, Option<GroupId>), Instant>,
    /// Where texts were lost from, and up to which sequence number (`None`: not known):
    /// asked to send again once the batch is done ([`Engine::ask_resend`]).
    pub lost: HashMap<LostFrom, Option<u64>>,
    /// Resends asked for up to a known sequence number, followed until the gap is filled
    /// ([`Engine::follow_resends`]): one answer brings at most `MAX_RESEND` texts.
    pub resends: HashMap<LostFrom, ResendFollow>,
    /// Per device and conversation, the end of the highest gap a resend brought nothing for:
    /// later gaps are counted from above it (until restart; at most 4,096).
    pub resend_floor: HashMap<LostFrom, u64>,
    /// Telling contacts how far this device has sent, and waiting on what they told.
    pub tails: super::tails::Tails,
    /// Losses and their repair since start (shown by `status`).
    pub recovery: RecoveryInfo,
    /// Sessions started by others since one-time keys were last checked.
    pub inbound_sessions: u32,
    /// Quarantined mail may have a known sender now (read on the next tick).
    pub quarantine_due: bool,
}

/// Per conversation (by id), its Lamport clock and this device's last sequence number, as
/// loaded from the store on first use.
#[derive(Default)]
pub(crate) struct Counters {
    /// Lamport clocks.
    pub lamport: HashMap<ConversationId, u64>,
    /// This device's sequence numbers.
    pub seq: HashMap<ConversationId, u64>,
}

/// Groups and what is pending for them.
#[derive(Default)]
pub(crate) struct Groups {
    /// Groups by id.
    pub by_id: HashMap<GroupId, group::GroupCtx>,
    /// Batched group notifications by group.
    pub notify: HashMap<GroupId, group::Notify>,
    /// Group messages may be owed to members who were unreachable when they were sent.
    pub owed_due: bool,
    /// A pass over the owed group messages that stopped at its budget and goes on at the
    /// next outbox tick.
    pub owed_sweep: Option<OwedSweep>,
    /// Lost sender keys asked for, and answered.
    pub keys: group::KeyRequests,
}

/// How far a pass over the owed group messages has come.
#[derive(Default)]
pub(crate) struct OwedSweep {
    /// The last row looked at.
    pub after: Option<tern_store::OwedPosition>,
    /// Members found unreachable in this pass: their later rows wait for the next pass, so
    /// each member still gets what it is owed in order.
    pub unreachable: std::collections::HashSet<String>,
}

/// History owed to a device this one linked, or being received as a new device.
#[derive(Default)]
pub(crate) struct Handover {
    /// History may be owed to a device this one linked (`history_owed` in the store).
    pub history_due: bool,
    /// Failed rounds of sending history in a row.
    pub history_attempts: u32,
    /// When to send history again after a failed round.
    pub history_retry: Option<Instant>,
    /// Moved history received as a new device: (messages so far, messages in all).
    pub history_in: (u64, u64),
}

/// What an engine is made of: the opened home, the network and where it reads the time.
pub(crate) struct Setup {
    /// The home directory the store and keys were opened from.
    pub home: Home,
    /// The opened store.
    pub store: Store,
    /// The settings kept in the home.
    pub config: home::Config,
    /// The device's keys, certificate and device list.
    pub keys: Keys,
    /// The libp2p identity of this device (made from its network secret).
    pub keypair: Keypair,
    /// The handle to the network task.
    pub net: net::Client,
    /// Home relays, each ending in `/p2p/<peer id>`.
    pub home_relays: Vec<Multiaddr>,
    /// Whether direct connections to contacts are made and used.
    pub direct: bool,
    /// Where the engine reads the time.
    pub clock: Clock,
    /// What carries outbox rows (`None`: the network handle).
    pub courier: Option<courier::Shared>,
}

impl Engine {
    /// An engine over an opened home, with everything it keeps in memory loaded from the
    /// store: contacts, groups, held messages, grants. `events` carries what handles are
    /// told; `internal` is where spawned tasks report back (its receiver goes to
    /// [`Engine::run`]).
    pub(crate) fn new(
        setup: Setup,
        events: broadcast::Sender<Event>,
        internal: mpsc::Sender<Internal>,
    ) -> Result<Engine, NodeError> {
        let Setup {
            home,
            store,
            config,
            keys,
            keypair,
            net,
            home_relays,
            direct,
            clock,
            courier,
        } = setup;
        let courier = courier.unwrap_or_else(|| std::sync::Arc::new(net.clone()));
        // A device whose own stored list revokes it stays revoked across restarts.
        let revoked = !keys
            .device_list
            .list()
            .active()
            .any(|e| e.device_id() == keys.device.device_id());
        let contacts = contacts::load_contacts(&store)?;
        let device_created_ms = store.own_device()?.map_or(0, |d| d.created_at_ms);
        let user = keys.identity.user_id();
        let grants = grants::Grants::load(&keys.device, &store)?;
        let now = clock.now();
        let mut draining: Vec<(Multiaddr, i64)> = config
            .draining_relays
            .iter()
            .filter_map(|d| match d.addr.parse::<Multiaddr>() {
                // A relay named a home relay again (`tern up --relay`) is one.
                Ok(a) if home_relays.iter().any(|h| relay_peer(h) == relay_peer(&a)) => None,
                Ok(a) if relay_peer(&a).is_some() => Some((a, d.until_ms)),
                _ => {
                    tracing::warn!(addr = %d.addr, "a draining relay in config.json is not a relay address; left out");
                    None
                }
            })
            .collect();
        // A hand-edited file may list more than are drained at once: the latest-ending stay.
        if draining.len() > crate::consts::MAX_DRAINING_RELAYS {
            draining.sort_by_key(|(_, until)| std::cmp::Reverse(*until));
            draining.truncate(crate::consts::MAX_DRAINING_RELAYS);
        }
        let mut engine = Engine {
            grants,
            push: push::Push::load(&config),
            dht: super::dht::Dht::default(),
            media: media::Media::new(home.dir()),
            me: Me {
                user,
                user_hex: user.to_string(),
                device: keys.device.device_id(),
                device_hex: keys.device.device_id().to_peer_id_string(),
                home,
                keys,
                config,
                keypair,
                device_created_ms,
                fallback: None,
                revoked,
                linked: HashMap::new(),
                link_states: HashMap::new(),
            },
            relays: Relays {
                home_relays,
                draining,
                relay_up: HashSet::new(),
                dial_problems: HashMap::new(),
                setup_pending: HashSet::new(),
                setting_up: HashMap::new(),
                setup_soon: false,
                allow_list_retry: HashMap::new(),
                fetching: HashSet::new(),
                refetch: HashSet::new(),
                drain_again: HashSet::new(),
                listen: Vec::new(),
                direct,
                away: false,
                presence: HashMap::new(),
                redials: HashMap::new(),
                peers_up: HashSet::new(),
                heartbeats: 0,
                topup_due: false,
            },
            people: People {
                contacts,
                peers: HashMap::new(),
                device_owner: HashMap::new(),
                revoked_devices: HashMap::new(),
                pending_identity: HashMap::new(),
                peers_due: false,
                peers_fetching: false,
                peers_retry: (0, now),
                claiming: HashSet::new(),
                relays_sent_at: HashMap::new(),
            },
            lists: Lists {
                lists_due: true,
                lists_fetched: None,
                list_wanted: HashMap::new(),
                list_answers: HashSet::new(),
                // Answers owed from before a restart are looked at once.
                answers_due: true,
                list_answered: HashMap::new(),
                // Owed texts from before a restart are looked at once.
                resync_due: true,
                resync_attempts: 0,
                resync_retry: None,
                announce_own_due: false,
            },
            // Messages stored before a restart without a session are read on the first look
            // (`awaiting: None`).
            outbox: Outbox::default(),
            inbox: Inbox {
                // Quarantined mail from before a restart is looked at (and expired) once.
                quarantine_due: true,
                ..Inbox::default()
            },
            counters: Counters::default(),
            groups: Groups {
                owed_due: true,
                ..Groups::default()
            },
            handover: Handover {
                // History owed from before a restart is looked at once.
                history_due: true,
                ..Handover::default()
            },
            hold: hold::HoldBack::default(),
            store,
            net,
            clock,
            courier,
            events,
            held: std::sync::Mutex::new(None),
            internal,
            answering: 0,
        };
        engine.load_pending_identity();
        engine.refresh_me();
        engine.load_groups()?;
        engine.restore_hold()?;
        engine.rebuild_device_owner();
        Ok(engine)
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("user", &self.me.user_hex)
            .finish_non_exhaustive()
    }
}
