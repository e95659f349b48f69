//! The engine: one task that owns the store and the keys, takes commands from [`crate::Node`]
//! handles, handles network events, and drives the outbox.
//!
//! Store calls are synchronous (SQLCipher); they run inline on this task, which is not the
//! swarm's task, so the network keeps moving while a transaction commits.

mod batch;
mod clock;
mod command;
mod contacts;
pub(crate) mod courier;
mod devices;
pub(crate) mod dht;
mod fanout;
pub(crate) mod grants;
pub(crate) mod group;
mod history;
pub(crate) mod hold;
mod home_relays;
mod lanes;
mod link_record;
mod listsync;
pub(crate) mod media;
mod presence;
pub(crate) mod push;
mod receive;
mod recover;
pub(crate) mod relay_set;
mod resync;
mod revoke;
mod send;
mod sessions;
mod state;
mod tails;
#[cfg(test)]
mod tests;
mod views;

pub(crate) use clock::Clock;
pub(crate) use command::{Command, GroupCommand};
pub(crate) use state::{Engine, Setup};
pub(crate) use views::message_info;

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use tern_crypto::{DeviceId, SignedDeviceList, UserId};
use tern_store::{Contact, MessageId, Status};
use tokio::sync::mpsc;

use crate::{
    consts::{HEARTBEAT_INTERVAL, MAILBOX_POLL, OUTBOX_TICK},
    error::NodeError,
    net::{self, NetError},
    types::*,
};

/// Results of work the engine spawned.
#[derive(Debug)]
pub(crate) enum Internal {
    /// A prekey claim started by `sessions::claim_prekey` answered.
    PrekeyClaimed {
        /// The device's user.
        user: UserId,
        /// The device.
        device: tern_crypto::DeviceId,
        /// The claimed prekey bundle, or why none could be had.
        result: Result<Vec<u8>, NodeError>,
    },
    /// A lane task finished.
    LaneDone(lanes::LaneDone),
    /// Registering deposit grants at this home relay failed (tried again later).
    GrantsFailed(PeerId),
    /// Setting the allow-list at this home relay failed (tried again later).
    AllowListFailed(PeerId),
    /// How full this device's mailbox at a home relay is.
    Usage(PeerId, tern_relay::wire::mailbox::Usage),
    /// A mailbox drain of this relay finished.
    FetchDone { relay: PeerId },
    /// A page of mail fetched from a relay.
    Fetched {
        relay: PeerId,
        envelopes: Vec<tern_relay::wire::mailbox::Envelope>,
    },
    /// Current presence fetched by a subscription at a relay.
    Presence {
        relay: PeerId,
        entries: Vec<tern_relay::wire::presence::Entry>,
    },
    /// The peers the network task has connections to now (asked every heartbeat, so a
    /// `PeerUp` or `PeerDown` lost to a full event queue is not kept for good).
    PeersUp(std::collections::HashSet<PeerId>),
    /// Device lists fetched from relays: (user, signed list).
    DeviceLists(Vec<(UserId, Vec<u8>)>),
    /// Device lists of group members not known before, and whether some fetch failed.
    PeerLists {
        lists: Vec<(UserId, Vec<u8>)>,
        failed: bool,
    },
    /// A group fan-out finished: per recipient device, whether its copy went.
    FannedOut {
        id: MessageId,
        attempts: u32,
        relay: Option<PeerId>,
        results: Vec<(String, Result<(), NetError>)>,
    },
    /// A home relay holds fewer one-time keys than `ONE_TIME_KEYS_LOW`: top up.
    PrekeysLow,
    /// A home relay's setup finished (device list, prekeys, live delivery).
    RelaySetUp {
        /// The relay.
        relay: PeerId,
        /// Every step succeeded.
        ok: bool,
        /// How many one-time keys it holds, if the prekeys were published.
        held: Option<u32>,
        /// A step was refused as rate-limited: try again on the next tick.
        soon: bool,
    },
    /// How many one-time keys a home relay holds, after a refresh bundle was published.
    PrekeysHeld {
        /// The relay.
        relay: PeerId,
        /// One-time keys it holds.
        held: u32,
    },
    /// Push endpoint registrations answered.
    Push(push::Done),
    /// A DHT publication or lookup ended.
    Dht(dht::Report),
    /// A device this one linked confirmed the record whose confirmation mailbox is
    /// `record` (or the wait for it ended without it).
    LinkAnswered {
        device: DeviceId,
        record: PeerId,
        confirmed: bool,
    },
    /// The network part of a command ended: the rest of the command, to run on the engine
    /// (see [`Engine::off_task`]).
    Answer(command::Finish),
}

/// What the engine knows about a contact.
#[derive(Debug, Clone)]
pub(crate) struct ContactState {
    pub contact: Contact,
    pub list: Option<SignedDeviceList>,
    pub relays: Vec<Multiaddr>,
}

impl ContactState {
    fn relay_peers(&self) -> Vec<PeerId> {
        self.relays.iter().filter_map(relay_peer).collect()
    }
    /// The Curve25519 key of one of this user's active devices.
    fn curve_of(&self, device: &DeviceId) -> Option<[u8; 32]> {
        self.devices()
            .into_iter()
            .find(|(d, _)| d == device)
            .map(|(_, c)| c)
    }
    fn devices(&self) -> Vec<(DeviceId, [u8; 32])> {
        self.list
            .as_ref()
            .map(|l| {
                l.list()
                    .active()
                    .map(|e| (e.device_id(), e.certificate.certificate().curve25519))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub(crate) fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

pub(crate) fn device_peer(d: &DeviceId) -> Option<PeerId> {
    PeerId::from_bytes(&d.to_peer_id_bytes()).ok()
}

pub(crate) fn peer_device(p: &PeerId) -> Option<DeviceId> {
    DeviceId::from_peer_id_bytes(&p.to_bytes())
}

pub(crate) fn parse_message_id(s: &str) -> Option<MessageId> {
    tern_crypto::hex::decode_array(s).map(MessageId)
}

impl Engine {
    /// After a restart, holds again the received messages whose hold was still running.
    pub(crate) fn restore_hold(&mut self) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        let since =
            now.saturating_sub(i64::try_from(crate::consts::HOLD_BACK.as_millis()).unwrap_or(0));
        let page = self.store.conversations(None, crate::consts::HISTORY_MAX)?;
        for c in page
            .conversations
            .iter()
            .filter(|c| c.last_activity_ms >= since)
        {
            let recent = self.store.history(
                &c.id,
                tern_store::Page::Latest,
                Some(crate::consts::HISTORY_DEFAULT),
            )?;
            self.hold
                .restore(&self.store, recent, now, self.clock.now())?;
        }
        Ok(())
    }

    /// A text (or file) this device sends now, as stored before it is encrypted (`pending`).
    pub(crate) fn own_text(
        &self,
        id: MessageId,
        conversation: &str,
        (lamport, seq): (u64, u64),
        now: i64,
        body: tern_store::Body,
    ) -> tern_store::Message {
        tern_store::Message {
            id,
            conversation: tern_store::ConversationId(conversation.to_owned()),
            sender_user: self.me.user_hex.clone(),
            sender_device: self.me.device_hex.clone(),
            lamport,
            seq,
            sent_at_ms: now,
            received_at_ms: now,
            own: true,
            status: Status::Pending,
            body,
            edited_at_ms: None,
        }
    }

    /// Tells the handles `ev`, or holds it until the open store batch commits.
    pub(crate) fn emit(&self, ev: Event) {
        let ev = self.named_event(ev);
        if let Some(held) = self.held_events().as_mut() {
            held.push(ev);
            return;
        }
        let _ = self.events.send(ev);
    }

    /// Runs the engine until every handle is dropped.
    pub(crate) async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut net_events: mpsc::Receiver<net::Event>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        for addr in self.relays.home_relays.clone() {
            let _ = self.net.add_relay(addr, true).await;
        }
        // Removed relays still drained, and contacts' relays: connected, not set up.
        let contact_relays: Vec<Multiaddr> = self
            .relays
            .draining
            .iter()
            .map(|(a, _)| a.clone())
            .chain(self.people.contacts.values().flat_map(|c| c.relays.clone()))
            .collect();
        for addr in contact_relays {
            let _ = self.net.add_relay(addr, false).await;
        }
        let mut outbox = tokio::time::interval(OUTBOX_TICK);
        outbox.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(MAILBOX_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(mut media_events) = self.media.take_events() else {
            tracing::error!("the engine ran twice");
            return;
        };
        self.media_start();
        self.forget_old_client_ids();
        self.settle_all_relay_sets();
        loop {
            tokio::select! {
                Some(ev) = media_events.recv() => self.on_media(ev),
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => {
                        // A text to send takes the texts waiting behind it (up to the first
                        // other command): the burst is stored in one batch.
                        let mut ready = vec![cmd];
                        while ready.len() < crate::consts::MAX_SEND_BATCH
                            && matches!(ready.last(), Some(Command::Send { .. }))
                        {
                            match cmds.try_recv() {
                                Ok(c) => ready.push(c),
                                Err(_) => break,
                            }
                        }
                        self.on_commands(ready);
                    }
                    None => break,
                },
                Some(ev) = net_events.recv() => self.on_net(ev),
                Some(msg) = internal.recv() => {
                    // Take what else is ready: successful deliveries are acknowledged in
                    // one transaction.
                    let mut batch = vec![msg];
                    while batch.len() < crate::consts::OUTBOX_BATCH as usize {
                        match internal.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    self.on_internal_batch(batch);
                }
                _ = outbox.tick() => {
                    self.refresh_device_lists();
                    self.fetch_missing_peers();
                    self.deliver_owed();
                    self.flush_notifications();
                    self.encrypt_waiting(false);
                    self.flush_delivered();
                    self.flush_list_answers();
                    self.resync_owed();
                    self.export_history();
                    if std::mem::take(&mut self.relays.setup_soon) {
                        self.retry_setup();
                    }
                    self.announce_own();
                    self.push_grants(None);
                    self.retry_allow_lists();
                    self.replay_quarantine();
                    self.dispatch_due(false);
                    self.refetch_due();
                    self.prune_reorder();
                    self.check_tails();
                    self.release_held();
                    self.media_retry_due(false);
                    self.publish_relay_record();
                    if self.relays.topup_due {
                        self.relays.topup_due = false;
                        for relay in self.home_relay_peers() {
                            if self.relays.relay_up.contains(&relay) {
                                self.publish_prekeys(relay, true);
                            }
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    self.relays.heartbeats += 1;
                    if self.relays.heartbeats.is_multiple_of(6) {
                        self.lists.lists_due = true;
                        self.ask_usage();
                    }
                    if self.relays.heartbeats.is_multiple_of(crate::consts::UPLOAD_SWEEP_HEARTBEATS) {
                        self.sweep_uploads();
                        self.forget_old_client_ids();
                    }
                    if self.relays.heartbeats.is_multiple_of(crate::consts::PREKEY_CHECK_HEARTBEATS) {
                        self.check_prekeys();
                    }
                    self.heartbeat();
                    self.ask_peers_up();
                    self.redial_online();
                    self.end_drains();
                    self.groups.owed_due = true;
                    self.deliver_owed();
                    self.send_owed_receipts();
                    self.ask_group_keys();
                    self.tell_tails();
                    self.prune_seen_ledger();
                    // Between messages rather than inside one's commit.
                    if let Err(e) = self.store.checkpoint() {
                        tracing::warn!("checkpointing the store failed: {e}");
                    }
                    self.retry_setup();
                    self.push_sync();
                    self.refresh_contacts();
                }
                _ = poll.tick() => self.fetch_home_mailboxes(),
            }
        }
        tracing::info!("engine stopped");
    }

    pub(super) fn on_net(&mut self, ev: net::Event) {
        match ev {
            net::Event::RelayUp(relay) => {
                self.relays.relay_up.insert(relay);
                self.relays.dial_problems.remove(&relay);
                // The deposit stream opens now, so the first rows after this need not go
                // as requests, one round trip each, while it opens.
                crate::net::rpc::open_deposit_stream(&self.net, relay);
                // Transfers paused by a network failure go on at once.
                self.media_retry_due(true);
                // Group members homed there can be looked up now, and be sent what they
                // are owed.
                self.people.peers_due = true;
                self.groups.owed_due = true;
                self.people.peers_retry = (0, self.clock.now());
                // For a home relay the event says "ready": published and listening, once
                // its setup reports.
                if self.home_relay_peers().contains(&relay) {
                    self.lists.lists_due = true;
                    self.set_up_home_relay(relay, true);
                    // Neither the mail waiting there nor the outbox waits for the setup:
                    // on a slow link that would cost its round trips first. The drain
                    // after the setup takes what came before live delivery was on.
                    self.fetch_mailbox(relay);
                    self.encrypt_waiting(true);
                    self.dispatch_due(true);
                } else {
                    self.relay_ready(relay);
                    // A removed home relay still drained: what waits there is taken.
                    if self.is_draining(relay) {
                        self.fetch_mailbox(relay);
                    }
                }
            }
            net::Event::RelayDialFailed { relay, problem } => {
                if !self.relays.relay_up.contains(&relay) {
                    self.relays.dial_problems.insert(relay, problem);
                }
            }
            net::Event::RelayDown(relay) => {
                self.relays.relay_up.remove(&relay);
                self.forget_presence_at(relay);
                self.emit(Event::Connection {
                    relay: relay.to_string(),
                    connected: false,
                });
            }
            net::Event::Mail { relay, envelopes } => {
                self.on_mail(relay, envelopes);
            }
            net::Event::MailDropped(relay) => self.fetch_mailbox(relay),
            net::Event::Presence { relay, entries } => self.on_presence(relay, entries),
            net::Event::Direct {
                peer,
                id,
                ciphertext,
            } => self.on_direct(peer, id, ciphertext),
            net::Event::PeerUp { peer, relayed } => {
                // Should this connection go, the device is dialled again soon.
                self.relays.redials.remove(&peer);
                self.peers_up(|up| {
                    up.insert(peer);
                });
                if let Some(user) = self.people.device_owner.get(&peer).copied() {
                    if let Some(device_id) = peer_device(&peer) {
                        self.emit(Event::Peer {
                            user_id: user,
                            device_id,
                            relayed,
                        });
                    }
                    // A contact's device is reachable: deliver what waits for it now.
                    self.dispatch_due(true);
                }
            }
            net::Event::PeerDown { peer } => self.peers_up(|up| {
                up.remove(&peer);
            }),
            net::Event::Listening(addr) => {
                tracing::info!(%addr, "listening");
                if !self.relays.listen.contains(&addr) {
                    self.relays.listen.push(addr);
                }
            }
            net::Event::ListenGone(addr) => {
                tracing::info!(%addr, "no longer listening");
                self.relays.listen.retain(|a| *a != addr);
            }
            net::Event::Reservation(relay) => {
                tracing::info!(%relay, "circuit reservation accepted");
            }
            net::Event::HolePunch { peer, ok } => {
                tracing::info!(%peer, ok, "hole punch finished");
            }
        }
    }

    /// A relay is connected and, for a home relay, set up: it is announced, presence is
    /// subscribed, and anything waiting in the outbox goes now, backoff or not (messages
    /// waiting for a session try again).
    fn relay_ready(&mut self, relay: PeerId) {
        self.emit(Event::Connection {
            relay: relay.to_string(),
            connected: true,
        });
        self.subscribe_presence(relay);
        self.encrypt_waiting(true);
        self.dispatch_due(true);
        self.send_owed_receipts();
    }

    fn on_internal_batch(&mut self, batch: Vec<Internal>) {
        // Lane results that are ready together are settled in one transaction.
        let mut lanes = Vec::new();
        for msg in batch {
            match msg {
                Internal::LaneDone(done) => lanes.push(done),
                other => self.on_internal(other),
            }
        }
        if !lanes.is_empty() {
            self.on_lanes_done(lanes);
        }
    }

    pub(super) fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::LaneDone(done) => self.on_lanes_done(vec![done]),
            Internal::GrantsFailed(relay) => self.on_grants_failed(relay),
            Internal::AllowListFailed(relay) => self.on_allow_list_failed(relay),
            Internal::Usage(relay, usage) => self.on_usage(relay, usage),
            Internal::Fetched { relay, envelopes } => self.on_mail(relay, envelopes),
            Internal::FetchDone { relay } => {
                self.relays.fetching.remove(&relay);
                // A drain asked for while this one ran (the one after a relay's setup, say)
                // starts now. Mail left waiting is drained again on the tick (`refetch`).
                if self.relays.drain_again.remove(&relay) && self.relays.relay_up.contains(&relay) {
                    self.fetch_mailbox(relay);
                }
            }
            Internal::Presence { relay, entries } => self.on_presence(relay, entries),
            Internal::PeersUp(peers) => self.peers_up(|up| *up = peers),
            Internal::PrekeysLow => self.relays.topup_due = true,
            Internal::PrekeyClaimed {
                user,
                device,
                result,
            } => self.on_prekey_claimed(user, device, result),
            Internal::PrekeysHeld { relay, held } => self.on_prekeys_held(relay, held),
            // Taken by `on_internal_batch`, which can wait for what it starts.
            Internal::RelaySetUp {
                relay,
                ok,
                held,
                soon,
            } => self.on_relay_set_up(relay, ok, held, soon),
            Internal::FannedOut {
                id,
                attempts,
                relay,
                results,
            } => self.on_fanned_out(id, attempts, relay, results),
            Internal::DeviceLists(lists) => self.on_device_lists(lists),
            Internal::PeerLists { lists, failed } => self.on_peer_lists(lists, failed),
            Internal::Push(done) => self.on_push_done(done),
            Internal::Dht(report) => self.on_dht_report(report),
            Internal::LinkAnswered {
                device,
                record,
                confirmed,
            } => self.on_link_answered(device, record, confirmed),
            Internal::Answer(finish) => finish.run(self),
        }
    }

    /// Persists the device keys (the Olm account changes as one-time keys are made or used).
    pub(crate) fn save_device(&mut self) -> Result<(), NodeError> {
        let record = self.me.keys.own_device_record(self.me.device_created_ms)?;
        self.store
            .transaction(|tx| tx.save_own_device(&record))
            .map_err(NodeError::from)
    }

    /// Reloads the device keys from the store (after a failed transaction, so memory never
    /// runs ahead of the disk).
    pub(crate) fn reload_device(&mut self) {
        match self.me.home.open() {
            Ok((_, keys)) => self.me.keys.device = keys.device,
            Err(e) => tracing::error!("cannot reload device keys: {e}"),
        }
    }
}
