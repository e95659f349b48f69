//! The engine: one task that owns the store and the keys, takes commands from [`crate::Node`]
//! handles, handles network events, and drives the outbox.
//!
//! Store calls are synchronous (SQLCipher); they run inline on this task, which is not the
//! swarm's task, so the network keeps moving while a transaction commits.

mod clock;
mod contacts;
pub(crate) mod courier;
mod devices;
mod fanout;
pub(crate) mod grants;
pub(crate) mod group;
mod history;
pub(crate) mod hold;
mod lanes;
mod listsync;
pub(crate) mod media;
pub(crate) mod push;
mod receive;
mod recover;
mod revoke;
mod send;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use clock::Clock;
pub(crate) use state::{Engine, Setup};

use std::collections::HashSet;
use tern_relay::rpc::Requests as _;

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use tern_crypto::{DeviceId, SignedDeviceList};
use tern_relay::wire::presence;
use tern_store::{Contact, MessageId, Status};
use tokio::sync::{mpsc, oneshot};

use crate::{
    consts::{HEARTBEAT_INTERVAL, MAILBOX_POLL, OUTBOX_TICK},
    error::NodeError,
    net::{self, NetError, rpc},
    types::*,
};

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// A command from a [`crate::Node`] handle.
#[derive(Debug)]
pub(crate) enum Command {
    Id(Reply<IdInfo>),
    Link(Reply<LinkInfo>),
    AddContact {
        link: String,
        name: Option<String>,
        accept_new_key: bool,
        reply: Reply<AddedContact>,
    },
    AcceptIdentity {
        contact: String,
        reply: Reply<AddedContact>,
    },
    Contacts(Reply<Vec<ContactInfo>>),
    Send {
        contact: String,
        text: String,
        reply: Reply<MessageInfo>,
    },
    History {
        contact: String,
        limit: Option<u32>,
        before: Option<String>,
        mark_read: bool,
        reply: Reply<Vec<MessageInfo>>,
    },
    Conversations(Reply<Vec<ConversationInfo>>),
    Presence {
        contact: Option<String>,
        reply: Reply<Vec<PresenceInfo>>,
    },
    SetStatus {
        away: bool,
        reply: Reply<()>,
    },
    Status(Reply<StatusInfo>),
    Search {
        query: String,
        reply: Reply<Vec<SearchHitInfo>>,
    },
    Safety {
        contact: String,
        reply: Reply<SafetyInfo>,
    },
    Verify {
        contact: String,
        scanned: Option<String>,
        reply: Reply<ContactInfo>,
    },
    Group(GroupCommand),
    DeviceAdd {
        code: String,
        reply: Reply<DeviceInfo>,
    },
    Devices(Reply<Vec<DeviceInfo>>),
    /// Send a file to a contact or a group.
    FileSend {
        contact: Option<String>,
        group: Option<String>,
        path: String,
        caption: String,
        original: bool,
        reply: Reply<TransferInfo>,
    },
    /// Save a message's file (downloading it first if needed).
    FileGet {
        message: String,
        to: Option<String>,
        reply: Reply<TransferInfo>,
    },
    /// The transfers not finished, and those finished lately.
    Transfers(Reply<Vec<TransferInfo>>),
    /// Where a message's file is on this device, to decrypt on read.
    FileOpen {
        message: String,
        reply: Reply<crate::media::LocalFile>,
    },
    DeviceRevoke {
        device: String,
        reply: Reply<DeviceInfo>,
    },
    /// What an identity backup holds (sealed by the caller).
    BackupBundle(Reply<crate::device_link::Bundle>),
    /// Set, clear or show the push endpoint.
    Push(push::PushCommand),
}

/// A group command.
#[derive(Debug)]
pub(crate) enum GroupCommand {
    Create {
        title: String,
        members: Vec<String>,
        reply: Reply<GroupInfo>,
    },
    Add {
        group: String,
        members: Vec<String>,
        /// Added as admins.
        admin: bool,
        reply: Reply<GroupInfo>,
    },
    Remove {
        group: String,
        members: Vec<String>,
        reply: Reply<GroupInfo>,
    },
    Leave {
        group: String,
        reply: Reply<GroupInfo>,
    },
    Info {
        group: String,
        reply: Reply<GroupInfo>,
    },
    List(Reply<Vec<GroupInfo>>),
    Send {
        group: String,
        text: String,
        reply: Reply<MessageInfo>,
    },
    History {
        group: String,
        limit: Option<u32>,
        before: Option<String>,
        mark_read: bool,
        reply: Reply<Vec<MessageInfo>>,
    },
}

/// Results of work the engine spawned.
#[derive(Debug)]
pub(crate) enum Internal {
    /// A lane task finished.
    LaneDone(lanes::LaneDone),
    /// Registering deposit grants at this home relay failed (tried again later).
    GrantsFailed(PeerId),
    /// How full this device's mailbox at a home relay is.
    Usage(PeerId, tern_relay::wire::mailbox::Usage),
    /// A mailbox drain of this relay finished.
    FetchDone { relay: PeerId },
    /// A page of mail fetched from a relay.
    Fetched {
        relay: PeerId,
        envelopes: Vec<tern_relay::wire::mailbox::Envelope>,
    },
    /// Current presence fetched by a subscription.
    Presence(Vec<presence::Entry>),
    /// Device lists fetched from relays: (user, signed list).
    DeviceLists(Vec<(String, Vec<u8>)>),
    /// Device lists of group members not known before, and whether some fetch failed.
    PeerLists {
        lists: Vec<(String, Vec<u8>)>,
        failed: bool,
    },
    /// A group fan-out finished: per recipient device, whether its copy went.
    FannedOut {
        id: MessageId,
        attempts: u32,
        results: Vec<(String, Result<(), NetError>)>,
    },
    /// A home relay holds fewer one-time keys than `ONE_TIME_KEYS_LOW`: top up.
    PrekeysLow,
    /// Push endpoint registrations answered.
    Push(push::Done),
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

pub(crate) fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Sent => "sent",
        Status::Delivered => "delivered",
        Status::Read => "read",
        Status::Failed => "failed",
        Status::Received => "received",
    }
}

pub(crate) fn message_info(m: &tern_store::Message) -> MessageInfo {
    MessageInfo {
        id: m.id.to_string(),
        conversation: m.conversation.0.clone(),
        sender: m.sender_user.clone(),
        sender_device: m.sender_device.clone(),
        own: m.own,
        text: match &m.body {
            tern_store::Body::Media { data, .. } => crate::media::StoredMedia::decode(data)
                .map(|s| s.caption)
                .unwrap_or_default(),
            other => other.text().unwrap_or_default().to_owned(),
        },
        sent_at: m.sent_at_ms,
        received_at: m.received_at_ms,
        status: status_name(m.status).to_owned(),
        lamport: m.lamport,
        seq: m.seq,
        gap_before: false,
        sender_name: None,
        sender_device_name: None,
        media: match &m.body {
            tern_store::Body::Media { data, .. } => crate::media::StoredMedia::decode(data)
                .ok()
                .map(|s| Box::new(crate::media::media_info(&s.media))),
            _ => None,
        },
        kind: match &m.body {
            tern_store::Body::Structured { data, .. }
                if data.starts_with(receive::UNSUPPORTED_MARK) =>
            {
                "unsupported"
            }
            tern_store::Body::Structured { .. } => "membership",
            tern_store::Body::Text(_) => "text",
            tern_store::Body::Media { .. } => "file",
        }
        .to_owned(),
    }
}

/// What the conversation list shows of a message: its text, or for a file its name (and
/// caption).
pub(crate) fn preview(m: &MessageInfo) -> String {
    match &m.media {
        Some(f) if m.text.is_empty() => format!("\u{1f4ce} {}", f.name),
        Some(f) => format!("\u{1f4ce} {}: {}", f.name, m.text),
        None => m.text.clone(),
    }
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

    pub(crate) fn emit(&self, ev: Event) {
        let _ = self.events.send(self.named_event(ev));
    }

    fn home_relay_peers(&self) -> Vec<PeerId> {
        self.relays
            .home_relays
            .iter()
            .filter_map(relay_peer)
            .collect()
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
        let contact_relays: Vec<Multiaddr> = self
            .people
            .contacts
            .values()
            .flat_map(|c| c.relays.clone())
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
        loop {
            tokio::select! {
                Some(ev) = media_events.recv() => self.on_media(ev).await,
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                Some(ev) = net_events.recv() => self.on_net(ev).await,
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
                    self.fetch_missing_peers().await;
                    self.deliver_owed().await;
                    self.flush_notifications();
                    self.encrypt_waiting(false).await;
                    self.flush_delivered();
                    self.flush_list_answers();
                    self.resync_owed().await;
                    self.export_history().await;
                    if std::mem::take(&mut self.relays.setup_soon) {
                        self.retry_setup().await;
                    }
                    self.announce_own().await;
                    self.push_grants(None);
                    self.replay_quarantine();
                    self.dispatch_due(false);
                    self.refetch_due();
                    self.prune_reorder();
                    self.release_held();
                    self.media_retry_due(false);
                    if self.relays.topup_due {
                        self.relays.topup_due = false;
                        for relay in self.home_relay_peers() {
                            if self.relays.relay_up.contains(&relay)
                                && let Err(e) = self.top_up_prekeys(relay, true).await
                            {
                                tracing::warn!(%relay, "topping up prekeys failed: {e}");
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
                    if self.relays.heartbeats.is_multiple_of(crate::consts::PREKEY_CHECK_HEARTBEATS) {
                        self.check_prekeys();
                    }
                    self.heartbeat();
                    self.groups.owed_due = true;
                    self.deliver_owed().await;
                    self.send_owed_receipts();
                    self.prune_seen_ledger();
                    // Between messages rather than inside one's commit.
                    if let Err(e) = self.store.checkpoint() {
                        tracing::warn!("checkpointing the store failed: {e}");
                    }
                    self.retry_setup().await;
                    self.push_sync();
                }
                _ = poll.tick() => self.fetch_home_mailboxes(),
            }
        }
        tracing::info!("engine stopped");
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Id(r) => {
                let _ = r.send(Ok(self.id_info()));
            }
            Command::Link(r) => {
                let _ = r.send(self.contact_link());
            }
            Command::AddContact {
                link,
                name,
                accept_new_key,
                reply,
            } => {
                let out = self.add_contact(&link, name, accept_new_key).await;
                let _ = reply.send(out);
            }
            Command::AcceptIdentity { contact, reply } => {
                let out = self.accept_identity(&contact).await;
                let _ = reply.send(out);
            }
            Command::Contacts(r) => {
                let _ = r.send(Ok(self.contact_list()));
            }
            Command::Send {
                contact,
                text,
                reply,
            } => {
                let out = self.send_text(&contact, text).await;
                let _ = reply.send(out);
            }
            Command::History {
                contact,
                limit,
                before,
                mark_read,
                reply,
            } => {
                let out = self.history(&contact, limit, before.as_deref(), mark_read);
                let _ = reply.send(out);
            }
            Command::Conversations(r) => {
                let _ = r.send(self.conversations());
            }
            Command::Presence { contact, reply } => {
                let out = self.query_presence(contact.as_deref()).await;
                let _ = reply.send(out);
            }
            Command::SetStatus { away, reply } => {
                self.relays.away = away;
                self.heartbeat();
                let _ = reply.send(Ok(()));
            }
            Command::Status(r) => {
                let peers = self.net.peers().await;
                let _ = r.send(self.status_info(peers));
                // The mailbox figures shown are the last asked for; the next status has
                // fresh ones.
                self.ask_usage();
            }
            Command::Search { query, reply } => {
                let _ = reply.send(self.search(&query));
            }
            Command::Safety { contact, reply } => {
                let _ = reply.send(self.safety(&contact));
            }
            Command::Verify {
                contact,
                scanned,
                reply,
            } => {
                let _ = reply.send(self.verify(&contact, scanned.as_deref()));
            }
            Command::Group(cmd) => self.on_group_command(cmd).await,
            Command::DeviceAdd { code, reply } => {
                let _ = reply.send(self.device_add(&code).await);
            }
            Command::Devices(reply) => {
                let _ = reply.send(Ok(self.devices()));
            }
            Command::FileSend {
                contact,
                group,
                path,
                caption,
                original,
                reply,
            } => {
                let _ = reply.send(self.file_send(
                    contact.as_deref(),
                    group.as_deref(),
                    &path,
                    caption,
                    original,
                ));
            }
            Command::FileGet { message, to, reply } => self.file_get(&message, to, reply),
            Command::Transfers(reply) => {
                let _ = reply.send(self.transfers());
            }
            Command::FileOpen { message, reply } => {
                let _ = reply.send(self.file_open(&message));
            }
            Command::DeviceRevoke { device, reply } => {
                let _ = reply.send(self.device_revoke(&device).await);
            }
            Command::BackupBundle(reply) => {
                let _ = reply.send(self.backup_bundle());
            }
            Command::Push(cmd) => self.on_push_command(cmd),
        }
    }

    async fn on_net(&mut self, ev: net::Event) {
        match ev {
            net::Event::RelayUp(relay) => {
                self.relays.relay_up.insert(relay);
                // Transfers paused by a network failure go on at once.
                self.media_retry_due(true);
                // Group members homed there can be looked up now, and be sent what they
                // are owed.
                self.people.peers_due = true;
                self.groups.owed_due = true;
                self.people.peers_retry = (0, self.clock.now());
                // For a home relay the event says "ready": published and listening.
                if self.home_relay_peers().contains(&relay) {
                    self.lists.lists_due = true;
                    self.on_home_relay_up(relay).await;
                }
                self.emit(Event::Connection {
                    relay: relay.to_string(),
                    connected: true,
                });
                self.subscribe_presence(relay);
                // Anything waiting in the outbox goes now, backoff or not, and messages
                // waiting for a session try again.
                self.encrypt_waiting(true).await;
                self.dispatch_due(true);
                self.send_owed_receipts();
            }
            net::Event::RelayDown(relay) => {
                self.relays.relay_up.remove(&relay);
                self.emit(Event::Connection {
                    relay: relay.to_string(),
                    connected: false,
                });
            }
            net::Event::Mail { relay, envelopes } => {
                self.on_mail(relay, envelopes);
            }
            net::Event::MailDropped(relay) => self.fetch_mailbox(relay),
            net::Event::Presence(entries) => self.on_presence(entries),
            net::Event::Direct {
                peer,
                id,
                ciphertext,
            } => self.on_direct(peer, id, ciphertext),
            net::Event::PeerUp { peer, relayed } => {
                if let Some(user) = self.people.device_owner.get(&peer) {
                    self.emit(Event::Peer {
                        user_id: user.clone(),
                        device_id: peer.to_string(),
                        relayed,
                    });
                    // A contact's device is reachable: deliver what waits for it now.
                    self.dispatch_due(true);
                }
            }
            net::Event::Listening(addr) => {
                tracing::info!(%addr, "listening");
                self.relays.listen.push(addr);
            }
            net::Event::Reservation(relay) => {
                tracing::info!(%relay, "circuit reservation accepted");
            }
            net::Event::HolePunch { peer, ok } => {
                tracing::info!(%peer, ok, "hole punch finished");
            }
        }
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

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::LaneDone(done) => self.on_lanes_done(vec![done]),
            Internal::GrantsFailed(relay) => self.on_grants_failed(relay),
            Internal::Usage(relay, usage) => self.on_usage(relay, usage),
            Internal::Fetched { relay, envelopes } => self.on_mail(relay, envelopes),
            Internal::FetchDone { relay } => {
                self.relays.fetching.remove(&relay);
            }
            Internal::Presence(entries) => self.on_presence(entries),
            Internal::PrekeysLow => self.relays.topup_due = true,
            Internal::FannedOut {
                id,
                attempts,
                results,
            } => self.on_fanned_out(id, attempts, results),
            Internal::DeviceLists(lists) => self.on_device_lists(lists),
            Internal::PeerLists { lists, failed } => self.on_peer_lists(lists, failed),
            Internal::Push(done) => self.on_push_done(done),
        }
    }

    /// Publishes the device list and prekeys, turns live delivery on, tells the relay who
    /// may see our presence, and drains the mailbox.
    /// A step that fails (the connection dropped in between) is retried on a later tick
    /// while the relay is connected, so live delivery is never left off.
    async fn on_home_relay_up(&mut self, relay: PeerId) {
        let mut ok = true;
        if let Err(e) = rpc::publish_device_list(
            &self.net,
            relay,
            self.me.keys.device_list.as_bytes().to_vec(),
        )
        .await
        {
            tracing::warn!(%relay, "publishing the device list failed: {e}");
            ok = false;
        }
        if let Err(e) = self.top_up_prekeys(relay, true).await {
            tracing::warn!(%relay, "publishing prekeys failed: {e}");
            ok = false;
        }
        if let Err(e) = rpc::listen(&self.net, relay).await {
            tracing::warn!(%relay, "turning on live delivery failed: {e}");
            ok = false;
        }
        if ok {
            self.relays.setup_pending.remove(&relay);
        } else {
            self.relays.setup_pending.insert(relay);
        }
        self.push_allow_list();
        self.push_grants(Some(relay));
        self.push_relay_up(relay);
        self.ask_usage();
        self.heartbeat();
        self.fetch_mailbox(relay);
    }

    /// Runs the connection routine again for home relays where it did not complete.
    async fn retry_setup(&mut self) {
        for relay in self.relays.setup_pending.clone() {
            if self.relays.relay_up.contains(&relay) {
                self.on_home_relay_up(relay).await;
            }
        }
    }

    /// Asks each connected home relay, off the engine, how many one-time keys it still
    /// holds; if one is low, the next outbox tick tops up. Others may have claimed keys
    /// without any session reaching this device, so only asking tells.
    fn check_prekeys(&self) {
        let relays: Vec<PeerId> = self
            .home_relay_peers()
            .into_iter()
            .filter(|r| self.relays.relay_up.contains(r))
            .collect();
        if relays.is_empty() {
            return;
        }
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            for relay in relays {
                match net.at(relay).prekey_count().await {
                    Ok(n) if n < crate::consts::ONE_TIME_KEYS_LOW => {
                        tracing::debug!(%relay, held = n, "one-time keys low");
                        let _ = tx.send(Internal::PrekeysLow).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%relay, "counting one-time keys failed: {e}"),
                }
            }
        });
    }

    /// Publishes prekeys: a bundle with no new one-time keys to learn how many the relay
    /// holds (and refresh the fallback key), and a full batch when it runs low.
    pub(crate) async fn top_up_prekeys(
        &mut self,
        relay: PeerId,
        refresh: bool,
    ) -> Result<(), NodeError> {
        use tern_crypto::prekey::PrekeyBundle;
        let mut count = if refresh { 0 } else { u32::MAX };
        if refresh {
            let bundle = PrekeyBundle::generate_keeping(
                &mut self.me.keys.device,
                self.me.keys.certificate.clone(),
                0,
                self.me.fallback,
            )?;
            self.save_device()?;
            self.me.fallback = Some(bundle.fallback);
            count = self
                .net
                .at(relay)
                .publish_prekeys(bundle.to_bytes()?)
                .await?;
        }
        if count < crate::consts::ONE_TIME_KEYS_LOW || !refresh {
            let bundle = PrekeyBundle::generate_keeping(
                &mut self.me.keys.device,
                self.me.keys.certificate.clone(),
                crate::consts::ONE_TIME_KEYS_BATCH,
                self.me.fallback,
            )?;
            self.save_device()?;
            self.me.fallback = Some(bundle.fallback);
            let held = self
                .net
                .at(relay)
                .publish_prekeys(bundle.to_bytes()?)
                .await?;
            tracing::debug!(held, "published one-time keys");
        }
        Ok(())
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

    /// Drains the mailbox at every home relay that is up (mail kept there may be readable
    /// now: a device became known, a contact was added).
    pub(crate) fn fetch_home_mailboxes(&mut self) {
        for relay in self.home_relay_peers() {
            if self.relays.relay_up.contains(&relay) {
                self.fetch_mailbox(relay);
            }
        }
    }

    /// Drains the mailbox at `relay` from its start, page by page, in the relay's order. One
    /// drain per relay runs at a time; one asked for meanwhile runs on the next tick after it.
    pub(crate) fn fetch_mailbox(&mut self, relay: PeerId) {
        if !self.relays.fetching.insert(relay) {
            self.relays.refetch.insert(relay);
            return;
        }
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                match net.at(relay).fetch(after, crate::consts::FETCH_PAGE).await {
                    Ok((envelopes, more)) => {
                        if let Some(last) = envelopes.last() {
                            after = last.id;
                        }
                        let empty = envelopes.is_empty();
                        if !empty
                            && tx
                                .send(Internal::Fetched { relay, envelopes })
                                .await
                                .is_err()
                        {
                            return;
                        }
                        if !more || empty {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%relay, "mailbox fetch failed: {e}");
                        break;
                    }
                }
            }
            let _ = tx.send(Internal::FetchDone { relay }).await;
        });
    }

    /// Starts the drains asked for while others ran or for mail left waiting.
    fn refetch_due(&mut self) {
        let due: Vec<PeerId> = self
            .relays
            .refetch
            .iter()
            .filter(|r| !self.relays.fetching.contains(*r) && self.relays.relay_up.contains(*r))
            .copied()
            .collect();
        for relay in due {
            self.relays.refetch.remove(&relay);
            self.fetch_mailbox(relay);
        }
    }

    fn heartbeat(&self) {
        let status = if self.relays.away {
            presence::Status::Away
        } else {
            presence::Status::Online
        };
        for relay in self.home_relay_peers() {
            if !self.relays.relay_up.contains(&relay) {
                continue;
            }
            let net = self.net.clone();
            tokio::spawn(async move {
                if let Err(e) = net.at(relay).heartbeat(status).await {
                    tracing::debug!(%relay, "heartbeat failed: {e}");
                }
            });
        }
    }

    fn id_info(&self) -> IdInfo {
        let key = self.me.keys.identity.public();
        let hex = tern_crypto::hex::encode(key.as_bytes());
        let fingerprint = hex
            .as_bytes()
            .chunks(8)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        IdInfo {
            user_id: self.me.user_hex.clone(),
            device_id: self.me.device_hex.clone(),
            name: self.me.config.name.clone(),
            fingerprint,
        }
    }

    fn status_info(&self, peers: Vec<net::PeerConnections>) -> Result<StatusInfo, NodeError> {
        let outbox = self.store.outbox_depth()?;
        let home = self.home_relay_peers();
        let mut relays: Vec<RelayInfo> = self
            .relays
            .home_relays
            .iter()
            .map(|a| RelayInfo {
                addr: a.to_string(),
                connected: relay_peer(a).is_some_and(|p| self.relays.relay_up.contains(&p)),
                home: true,
                mailbox: relay_peer(a).and_then(|p| self.mailbox_info(p)),
            })
            .collect();
        let mut seen: HashSet<PeerId> = home.into_iter().collect();
        for c in self.people.contacts.values() {
            for a in &c.relays {
                if let Some(p) = relay_peer(a)
                    && seen.insert(p)
                {
                    relays.push(RelayInfo {
                        addr: a.to_string(),
                        connected: self.relays.relay_up.contains(&p),
                        home: false,
                        mailbox: None,
                    });
                }
            }
        }
        Ok(StatusInfo {
            user_id: self.me.user_hex.clone(),
            device_id: self.me.device_hex.clone(),
            status: if self.relays.away { "away" } else { "online" }.into(),
            relays,
            listen: self.relays.listen.iter().map(ToString::to_string).collect(),
            outbox,
            recovery: RecoveryInfo {
                group_waiting: self.store.group_stash_len()?,
                ..self.inbox.recovery
            },
            history: self.history_info()?,
            unread: self.store.unread_total()?,
            push: self.push_info(),
            peers: peers
                .into_iter()
                .map(|p| PeerInfo {
                    user_id: self
                        .people
                        .device_owner
                        .get(&p.peer)
                        .cloned()
                        .unwrap_or_default(),
                    device_id: p.peer.to_string(),
                    direct: p.direct,
                    relayed: p.relayed,
                })
                .collect(),
        })
    }

    fn search(&self, query: &str) -> Result<Vec<SearchHitInfo>, NodeError> {
        let results = self.store.search(query, None, None)?;
        Ok(results
            .hits
            .into_iter()
            .map(|h| SearchHitInfo {
                conversation: h.conversation.0,
                id: h.message_id.to_string(),
                snippet: h
                    .snippet
                    .iter()
                    .map(|p| {
                        if p.highlighted {
                            format!("[{}]", p.text)
                        } else {
                            p.text.clone()
                        }
                    })
                    .collect(),
            })
            .collect())
    }

    fn conversations(&self) -> Result<Vec<ConversationInfo>, NodeError> {
        let page = self.store.conversations(None, crate::consts::HISTORY_MAX)?;
        let now = self.clock.now_ms();
        let hold_ms = i64::try_from(crate::consts::HOLD_BACK.as_millis()).unwrap_or(0);
        page.conversations
            .into_iter()
            .map(|c| {
                // The preview never shows a message held back for a missing predecessor:
                // for a conversation active within the hold, it is the newest shown one.
                let last_text = if now.saturating_sub(c.last_activity_ms) < hold_ms {
                    let recent = self
                        .store
                        .history(&c.id, tern_store::Page::Latest, Some(20))?;
                    hold::visible(&self.store, &self.hold, &recent, now)?
                        .pop()
                        .map(|m| preview(&m))
                } else {
                    match &c.last_message {
                        Some(p) => self
                            .store
                            .message(p.id)?
                            .map(|m| preview(&message_info(&m))),
                        None => None,
                    }
                };
                Ok(ConversationInfo {
                    name: self.conversation_name(&c.id.0, c.title.as_deref()),
                    id: c.id.0,
                    title: c.title,
                    last_text,
                    last_activity: c.last_activity_ms,
                    unread: c.unread_count,
                })
            })
            .collect()
    }
}
