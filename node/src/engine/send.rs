//! Sending: conversation clocks, encryption once per device with `sessions`, outbox rows
//! written with the ratchet state, texts waiting for a session, receipts and control
//! messages.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_bytes::ByteArray;
use tern_crypto::{DeviceId, UserId, session::PeerSessions};
use tern_store::{
    ConversationId, ConversationKind, CryptoUpdate, Delivery, Message, MessageId, Page,
    consts::MAX_CLIENT_ID_BYTES,
};

use super::{Engine, command::Reply, message_info};
use crate::{
    consts::{
        MAX_RECEIPT_IDS, MAX_TEXT_BYTES, OUTBOX_BATCH, RETRY_BASE, RETRY_MAX, SEQ_SCAN_LIMIT,
    },
    envelope::{Body, Conversation, Envelope, ReceiptKind},
    error::NodeError,
    types::*,
};

/// A device's ratchet state after encrypting: device, session id, pickle.
pub(crate) type Pickled = (String, String, zeroize::Zeroizing<Vec<u8>>);

pub(crate) fn crypto_updates(pickles: &[Pickled]) -> Vec<CryptoUpdate<'_>> {
    pickles
        .iter()
        .map(|(d, sid, p)| CryptoUpdate::Session {
            peer_device: d,
            session_id: sid,
            pickle: p,
        })
        .collect()
}

/// How a pass over one contact's texts waiting for a session ended.
enum WaitingPage {
    /// The last of them was encrypted: none waits.
    Last,
    /// A full page was encrypted: more may wait, for the next pass.
    More,
    /// One could not be encrypted (or read, or stored): tried again on the next pass.
    Stopped,
}

/// Encrypts `env` once for each session: an outbox row per device (for the user `user_of`
/// names) and the device's ratchet state after it. Each user's copy carries this device's
/// deposit grant for that user ([`Envelope::grant`]); `env` is left as it was.
pub(crate) fn encrypt_each(
    sessions: &mut [(DeviceId, PeerSessions)],
    env: &mut Envelope,
    grants: &super::grants::Grants,
    user_of: impl Fn(&DeviceId) -> UserId,
    deliveries: &mut Vec<Delivery>,
    pickles: &mut Vec<Pickled>,
) -> Result<(), NodeError> {
    let mut plain: Option<(UserId, zeroize::Zeroizing<Vec<u8>>)> = None;
    for (device, s) in sessions.iter_mut() {
        let user = user_of(device);
        let p = match plain.take() {
            Some((u, p)) if u == user => p,
            _ => {
                env.grant = Some(ByteArray::new(*grants.issued(&user).to_bytes()));
                let p = env.encode();
                env.grant = None;
                zeroize::Zeroizing::new(p?)
            }
        };
        let ct = s.encrypt(&p)?;
        plain = Some((user, p));
        let id = device.to_peer_id_string();
        deliveries.push(Delivery {
            recipient_user: user.to_string(),
            recipient_device: id.clone(),
            payload: ct,
        });
        pickles.push((id, s.current_session_id().unwrap_or_default(), s.pickle()?));
    }
    Ok(())
}

/// The store's name for a receipt kind.
pub(crate) fn store_receipt_kind(kind: ReceiptKind) -> tern_store::ReceiptKind {
    match kind {
        ReceiptKind::Delivered => tern_store::ReceiptKind::Delivered,
        ReceiptKind::Read => tern_store::ReceiptKind::Read,
    }
}

/// Backoff before the next attempt after `attempts` failures.
pub(crate) fn backoff(attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(16)).unwrap_or(u32::MAX);
    RETRY_BASE.saturating_mul(factor).min(RETRY_MAX)
}

pub(crate) fn random_id() -> Result<[u8; 16], NodeError> {
    Ok(tern_crypto::random::array::<16>()?)
}

impl Engine {
    pub(crate) fn conv_state(&mut self, conv: &str) -> Result<(u64, u64), NodeError> {
        if let (Some(l), Some(s)) = (self.counters.lamport.get(conv), self.counters.seq.get(conv)) {
            return Ok((*l, *s));
        }
        let id = ConversationId(conv.to_owned());
        let page = self
            .store
            .history(&id, Page::Latest, Some(SEQ_SCAN_LIMIT))?;
        let lamport = page.iter().map(|m| m.lamport).max().unwrap_or(0);
        // From the index, not the page: the newest messages may all be the contact's.
        let seq = self.store.max_sequence(&id, &self.me.device_hex)?;
        let lamport = *self.counters.lamport.entry(id.clone()).or_insert(lamport);
        let seq = *self.counters.seq.entry(id).or_insert(seq);
        Ok((lamport, seq))
    }

    /// Moves the conversation's Lamport clock past a received value.
    pub(crate) fn observe_lamport(&mut self, conv: &str, lamport: u64) -> Result<(), NodeError> {
        let (current, _) = self.conv_state(conv)?;
        self.counters
            .lamport
            .insert(conv.into(), current.max(lamport));
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn send_text(
        &mut self,
        contact: &str,
        text: String,
    ) -> Result<MessageInfo, NodeError> {
        self.send_text_once(contact, text, None)
    }

    /// Sends a text to a contact; under a client's key (`client`), a text already sent under
    /// it is answered as it stands now and not sent again ([`Engine::sent_under`]).
    pub(crate) fn send_text_once(
        &mut self,
        contact: &str,
        text: String,
        client: Option<&str>,
    ) -> Result<MessageInfo, NodeError> {
        check_text(&text)?;
        if let Some(key) = client {
            // Looked up before the name is: a contact renamed since the first try is theirs.
            let conv = self.resolve(contact).ok().map(|u| u.to_string());
            if let Some(sent) = self.sent_under(key, conv.as_deref(), &text)? {
                return Ok(sent);
            }
        }
        self.send_body(contact, None, tern_store::Body::Text(text), client)
    }

    /// Forgets the keys clients sent texts under more than
    /// [`CLIENT_ID_KEEP_MS`](tern_store::consts::CLIENT_ID_KEEP_MS) ago (at start and hourly).
    pub(crate) fn forget_old_client_ids(&mut self) {
        let before = self
            .clock
            .now_ms()
            .saturating_sub(tern_store::consts::CLIENT_ID_KEEP_MS);
        match self
            .store
            .transaction(|tx| tx.forget_client_ids_before(before))
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "forgot old client ids"),
            Err(e) => tracing::warn!("cannot forget old client ids: {e}"),
        }
    }

    /// The text already sent under the client's key `key`, if any, as it stands now. A key
    /// that names a text to another conversation (`conversation`, when the name still
    /// resolves), or another text, is refused: the client reused a key by mistake, and
    /// neither sending nor answering the old text would be what it meant. A text edited since
    /// it was sent is still the one sent under the key.
    pub(crate) fn sent_under(
        &self,
        key: &str,
        conversation: Option<&str>,
        text: &str,
    ) -> Result<Option<MessageInfo>, NodeError> {
        check_client_id(key)?;
        let Some(id) = self.store.client_id_message(key)? else {
            return Ok(None);
        };
        // Its message gone (nothing deletes own messages today), the key is free again.
        let Some(m) = self.store.message(id)? else {
            return Ok(None);
        };
        let same_text =
            m.edited_at_ms.is_some() || matches!(&m.body, tern_store::Body::Text(t) if t == text);
        let same_conversation = conversation.is_none_or(|c| m.conversation.0 == c);
        if !same_conversation || !m.own || !same_text {
            return Err(NodeError::BadRequest(format!(
                "client_id {key:?} was used for another message"
            )));
        }
        Ok(Some(message_info(&m)))
    }

    /// Texts queued together (a burst of `send` commands), in their order: each is
    /// encrypted and stored as on its own, but all of them in one store batch, so they reach
    /// the disk with one sync instead of one each. Their answers, events and deposits wait
    /// for that commit; if it fails, nothing of the batch was stored or sent and each text
    /// is answered with the error. None or one text is sent as on its own.
    pub(crate) fn send_texts(&mut self, sends: Vec<TextToSend>) {
        let send = |engine: &mut Self, t: TextToSend| {
            let out = engine.send_text_once(&t.contact, t.text, t.client.as_deref());
            (t.reply, out)
        };
        if sends.len() < 2 || !self.open_batch() {
            for t in sends {
                let (reply, out) = send(self, t);
                let _ = reply.send(out);
            }
            return;
        }
        let results: Vec<_> = sends.into_iter().map(|t| send(self, t)).collect();
        match self.close_batch() {
            Ok(()) => {
                for (reply, result) in results {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(texts = results.len(), "storing texts to send failed: {e}");
                for (reply, result) in results {
                    let _ = reply.send(result.and(Err(e.clone())));
                }
            }
        }
    }

    /// Sends a text or a file (its caption checked by the caller) to a contact, under `id`
    /// when one was chosen before (a file's upload is keyed by its message's id).
    pub(crate) fn send_body(
        &mut self,
        contact: &str,
        id: Option<MessageId>,
        body: tern_store::Body,
        client: Option<&str>,
    ) -> Result<MessageInfo, NodeError> {
        self.check_not_revoked()?;
        let user = self.resolve(contact)?;
        let conv = user.to_string();
        if self.people.pending_identity.contains_key(&user) {
            return Err(NodeError::IdentityChanged(
                self.people.contacts[&user].contact.display_name.clone(),
            ));
        }
        // Messages waiting for a session go first, so this one waits behind them.
        let waiting = self.awaiting()?.contains(&user);
        // Devices that cannot be had now (a device linked but never started has no prekey)
        // are owed the message, and get it once they can be (`resync_due`).
        let mut owed: Vec<(String, String)> = Vec::new();
        let mut sessions = if waiting {
            None
        } else {
            match self.sessions_reachable(&user) {
                Ok((s, missing)) => {
                    owed.extend(
                        missing
                            .into_iter()
                            .map(|(d, _)| (conv.clone(), d.to_peer_id_string())),
                    );
                    Some(s)
                }
                Err(NodeError::Network(why)) => {
                    tracing::info!(contact = %user, "no session yet and no prekey to be had ({why}); the message waits");
                    None
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(s) = sessions.as_mut() {
            owed.extend(self.add_sync_sessions(s));
        }
        let (lamport, seq) = self.conv_state(&conv)?;
        let (lamport, seq) = (lamport + 1, seq + 1);
        let id = match id {
            Some(id) => id,
            None => MessageId(random_id()?),
        };
        let now = self.clock.now_ms();
        let message = self.own_text(id, &conv, (lamport, seq), now, body);
        let (deliveries, pickles) = match sessions.as_mut() {
            Some(s) => self.encrypt_text(&user, &message, s)?,
            None => (Vec::new(), Vec::new()),
        };
        let updates = crypto_updates(&pickles);
        let title = self.people.contacts[&user].contact.display_name.clone();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.ensure_conversation(
                &message.conversation,
                ConversationKind::Direct,
                Some(&title),
                now,
            )?;
            tx.record_outgoing(&message, &updates, &deliveries, now)?;
            if let Some(client) = client {
                tx.remember_client_id(client, message.id, now)?;
            }
            for (u, d) in &owed {
                tx.owe_resync(u, std::slice::from_ref(d), &[message.id], now)?;
            }
            Ok(())
        })?;
        if !owed.is_empty() {
            self.lists.resync_due = true;
        }
        self.counters.lamport.insert(conv.as_str().into(), lamport);
        self.counters.seq.insert(conv.as_str().into(), seq);
        if sessions.is_none() {
            // Read before the text was stored (`awaiting` above), so the set is there.
            if let Some(awaiting) = self.outbox.awaiting.as_mut() {
                awaiting.insert(user);
            }
            self.outbox
                .encrypt_retry
                .entry(user)
                .or_insert((0, self.clock.now() + backoff(0)));
        }
        let info = message_info(&message);
        self.emit(Event::Message {
            message: info.clone(),
        });
        self.kick_lanes_for(&deliveries);
        Ok(info)
    }

    /// The contacts with own texts stored waiting for a session
    /// ([`super::state::Outbox::awaiting`]), read from the store on the first call after
    /// start. A send looks here, not at the store: asking the store on every send cost a look
    /// at every own message not yet handed on, so a burst paid for each text again with each
    /// one after it.
    fn awaiting(&mut self) -> Result<&mut BTreeSet<UserId>, NodeError> {
        if self.outbox.awaiting.is_none() {
            let read = self.store.awaiting_conversations(&self.me.device_hex)?;
            self.outbox.awaiting =
                Some(read.iter().filter_map(|c| UserId::from_hex(&c.0)).collect());
        }
        Ok(self.outbox.awaiting.get_or_insert_with(BTreeSet::new))
    }

    /// The text envelope of a stored own message, encrypted once per device: the outbox
    /// rows and each device's ratchet state (device, session id, pickle) after it.
    pub(crate) fn encrypt_text(
        &self,
        to: &tern_crypto::UserId,
        message: &Message,
        sessions: &mut [(DeviceId, PeerSessions)],
    ) -> Result<(Vec<Delivery>, Vec<Pickled>), NodeError> {
        let env = Envelope {
            id: ByteArray::new(message.id.0),
            conversation: Conversation::Direct {
                to: ByteArray::new(*to.as_bytes()),
            },
            sender_user: ByteArray::new(*self.me.user.as_bytes()),
            sender_device: ByteArray::new(*self.me.keys.device.device_id().as_bytes()),
            lists: Some(self.list_versions(Some(to))),
            grant: None,
            heads: Vec::new(),
            lamport: message.lamport,
            seq: message.seq,
            sent_at_ms: message.sent_at_ms,
            body: crate::media::wire_body(&message.body)?,
        };
        let mut env = env;
        let mut deliveries = Vec::new();
        let mut pickles = Vec::new();
        let own_list = self.me.keys.device_list.list();
        // A sync copy for one of this user's other devices, else the contact's.
        encrypt_each(
            sessions,
            &mut env,
            &self.grants,
            |device| {
                if own_list.entry(device).is_some() {
                    self.me.user
                } else {
                    *to
                }
            },
            &mut deliveries,
            &mut pickles,
        )?;
        Ok((deliveries, pickles))
    }

    /// Encrypts own messages stored before a session could be set up (the contact's relay
    /// was unreachable), oldest first, once a prekey can be claimed: per contact, retried
    /// with the outbox backoff (`force`: now, backoff or not). Each message gets its ratchet
    /// state and outbox rows in one transaction ([`tern_store::Tx::add_deliveries`], which
    /// refuses a message that already has them, so nothing is encrypted twice).
    pub(crate) fn encrypt_waiting(&mut self, force: bool) {
        let users: Vec<UserId> = match self.awaiting() {
            Ok(users) => users.iter().copied().collect(),
            Err(e) => {
                tracing::error!("reading conversations awaiting encryption failed: {e}");
                return;
            }
        };
        if users.is_empty() {
            self.outbox.encrypt_retry.clear();
        }
        for to in users {
            let now = self.clock.now();
            let (attempts, due) = self
                .outbox
                .encrypt_retry
                .get(&to)
                .copied()
                .unwrap_or((0, now));
            if (!force && due > now) || self.people.pending_identity.contains_key(&to) {
                continue;
            }
            let (mut sessions, missing) = match self.sessions_reachable(&to) {
                Ok(s) => s,
                Err(e) => {
                    let attempts = attempts.saturating_add(1);
                    let wait = backoff(attempts);
                    tracing::debug!(contact = %to, "still no session ({e}); retrying in {wait:?}");
                    self.outbox
                        .encrypt_retry
                        .insert(to, (attempts, self.clock.now() + wait));
                    continue;
                }
            };
            self.outbox.encrypt_retry.remove(&to);
            let user = to.to_string();
            let mut owed: Vec<(String, String)> = missing
                .into_iter()
                .map(|(d, _)| (user.clone(), d.to_peer_id_string()))
                .collect();
            owed.extend(self.add_sync_sessions(&mut sessions));
            if !owed.is_empty() {
                self.lists.resync_due = true;
            }
            match self.encrypt_waiting_to(&to, &mut sessions, &owed) {
                WaitingPage::Last => {
                    if let Some(awaiting) = self.outbox.awaiting.as_mut() {
                        awaiting.remove(&to);
                    }
                }
                // Due again at once (a text sent meanwhile does not push it back).
                WaitingPage::More => {
                    let now = self.clock.now();
                    self.outbox.encrypt_retry.insert(to, (0, now));
                }
                WaitingPage::Stopped => {}
            }
        }
    }

    /// Encrypts the oldest page of texts to `to` stored waiting, in order, with `sessions`
    /// (`owed`: devices each is owed to, to be sent once they can be), in one store batch
    /// (one sync for the page). A page per contact per pass keeps a long queue from stalling
    /// the engine; the next pass (the next outbox tick) takes the next page.
    fn encrypt_waiting_to(
        &mut self,
        to: &UserId,
        sessions: &mut [(DeviceId, PeerSessions)],
        owed: &[(String, String)],
    ) -> WaitingPage {
        if sessions.is_empty() {
            // Nothing to encrypt with: the page would come back as it was.
            return WaitingPage::Stopped;
        }
        let conv = tern_store::ConversationId(to.to_string());
        let waiting = match self
            .store
            .awaiting_encryption(&self.me.device_hex, &conv, OUTBOX_BATCH)
        {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(contact = %to, "reading messages awaiting encryption failed: {e}");
                return WaitingPage::Stopped;
            }
        };
        if waiting.is_empty() {
            return WaitingPage::Last;
        }
        let batched = self.open_batch();
        let mut all = true;
        for m in &waiting {
            let now = self.clock.now_ms();
            let encrypted = self
                .encrypt_text(to, m, sessions)
                .and_then(|(deliveries, pickles)| {
                    let updates = crypto_updates(&pickles);
                    let added = self.store.transaction(|tx| {
                        let added = tx.add_deliveries(m.id, &updates, &deliveries, now)?;
                        if added {
                            for (u, d) in owed {
                                tx.owe_resync(u, std::slice::from_ref(d), &[m.id], now)?;
                            }
                        }
                        Ok::<_, tern_store::WriteError>(added)
                    })?;
                    Ok((added, deliveries))
                });
            match encrypted {
                Ok((true, deliveries)) => self.kick_lanes_for(&deliveries),
                // Someone else encrypted it: the sessions in memory ran ahead of the store
                // and are dropped; the rest waits for the next pass.
                Ok((false, _)) => {
                    all = false;
                    break;
                }
                Err(e) => {
                    tracing::error!(contact = %to, "encrypting a waiting message failed: {e}");
                    all = false;
                    break;
                }
            }
        }
        if batched && let Err(e) = self.close_batch() {
            tracing::error!(contact = %to, "storing encrypted waiting messages failed: {e}");
            return WaitingPage::Stopped;
        }
        match (all, waiting.len() < OUTBOX_BATCH as usize) {
            (true, true) => WaitingPage::Last,
            (true, false) => WaitingPage::More,
            (false, _) => WaitingPage::Stopped,
        }
    }

    /// Starts what is due in the outbox (`all`: everything, backoff or not): the lanes of
    /// pairwise rows ([`super::lanes`]) and group fan-outs (rows of one message that share a
    /// payload, sent as one deposit per relay; [`super::fanout`]).
    pub(crate) fn dispatch_due(&mut self, all: bool) {
        if self.me.revoked {
            return;
        }
        self.dispatch_lanes(all);
        self.dispatch_fanouts(all);
    }

    /// Sends a receipt to every device of `user` we hold a session with. The receipts are
    /// owed in the store (`receipts_due`, written with the message or the read mark) until
    /// their ciphertexts are queued in the devices' lanes, in the transaction that saves the
    /// ratchet state that made them; the lanes deliver them in order with everything else.
    pub(crate) fn send_receipt(&mut self, user: &UserId, kind: ReceiptKind, ids: Vec<MessageId>) {
        for chunk in ids.chunks(MAX_RECEIPT_IDS) {
            if let Err(e) = self.send_receipt_chunk(user, kind, chunk) {
                tracing::warn!(contact = %user, "sending a receipt failed: {e}");
            }
        }
    }

    fn send_receipt_chunk(
        &mut self,
        user: &UserId,
        kind: ReceiptKind,
        ids: &[MessageId],
    ) -> Result<(), NodeError> {
        let body = Body::Receipt {
            kind,
            ids: ids.iter().map(|i| ByteArray::new(i.0)).collect(),
        };
        let store_kind = store_receipt_kind(kind);
        self.send_control_to(user, None, body, |tx| {
            tx.receipts_delivered(store_kind, ids)
        })
    }

    /// Encrypts a control envelope (a receipt, a resend request) in the direct conversation
    /// with `user` for every device of theirs we hold a session with (or only `only`), and
    /// queues the copies at the end of those devices' lanes, with the ratchet states and
    /// `also`, in one transaction. With no session to any device nothing is written (what is
    /// owed stays owed).
    pub(crate) fn send_control_to(
        &mut self,
        user: &UserId,
        only: Option<DeviceId>,
        body: Body,
        also: impl FnOnce(&mut tern_store::Tx<'_>) -> Result<(), tern_store::WriteError>,
    ) -> Result<(), NodeError> {
        let Some(state) = self.known(user).cloned() else {
            return Ok(());
        };
        let own_device = self.me.keys.device.device_id();
        let mut sessions = Vec::new();
        // One device named: whatever its state (a revoked device is told it was revoked).
        let targets = match only {
            Some(o) => state
                .list
                .as_ref()
                .and_then(|l| l.list().entry(&o))
                .map(|e| vec![(o, e.certificate.certificate().curve25519)])
                .unwrap_or_default(),
            None => state.devices(),
        };
        for (device, curve) in targets {
            if device == own_device {
                continue;
            }
            let s = self.load_sessions(&device, curve)?;
            if s.has_session() {
                sessions.push((device, s));
            }
        }
        self.send_control_with(user, sessions, body, also)
    }

    /// Encrypts a control envelope in the direct conversation with `user` once per session
    /// in `sessions` and queues the copies, with the ratchet states and `also`, in one
    /// transaction (see [`Engine::send_control_to`]).
    pub(crate) fn send_control_with(
        &mut self,
        user: &UserId,
        mut sessions: Vec<(DeviceId, PeerSessions)>,
        body: Body,
        also: impl FnOnce(&mut tern_store::Tx<'_>) -> Result<(), tern_store::WriteError>,
    ) -> Result<(), NodeError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let to = *user;
        let (lamport, _) = self.conv_state(&user.to_string())?;
        let env = Envelope {
            id: ByteArray::new(random_id()?),
            conversation: Conversation::Direct {
                to: ByteArray::new(*to.as_bytes()),
            },
            sender_user: ByteArray::new(*self.me.user.as_bytes()),
            sender_device: ByteArray::new(*self.me.keys.device.device_id().as_bytes()),
            lists: Some(self.list_versions(Some(user))),
            grant: None,
            heads: Vec::new(),
            lamport,
            seq: 0,
            sent_at_ms: self.clock.now_ms(),
            body,
        };
        let mut env = env;
        let mut deliveries = Vec::new();
        let mut pickles = Vec::new();
        encrypt_each(
            &mut sessions,
            &mut env,
            &self.grants,
            |_| *user,
            &mut deliveries,
            &mut pickles,
        )?;
        let updates = crypto_updates(&pickles);
        let now = self.clock.now_ms();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.apply_crypto(&updates, now)?;
            tx.queue_control(&deliveries, now)?;
            also(tx)?;
            Ok(())
        })?;
        self.kick_lanes_for(&deliveries);
        Ok(())
    }

    /// Sends the receipts owed in the store: after a restart, and any that could not be
    /// queued before (no session with the contact yet).
    pub(crate) fn send_owed_receipts(&mut self) {
        let due = match self.store.due_receipts(OUTBOX_BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("reading owed receipts failed: {e}");
                return;
            }
        };
        let mut groups: Vec<(String, tern_store::ReceiptKind, Vec<MessageId>)> = Vec::new();
        for r in due {
            match groups
                .iter_mut()
                .find(|(u, k, _)| *u == r.recipient_user && *k == r.kind)
            {
                Some((_, _, ids)) => ids.push(r.message_id),
                None => groups.push((r.recipient_user, r.kind, vec![r.message_id])),
            }
        }
        for (user, kind, ids) in groups {
            let Some(user) = UserId::from_hex(&user) else {
                continue;
            };
            let kind = match kind {
                tern_store::ReceiptKind::Delivered => ReceiptKind::Delivered,
                tern_store::ReceiptKind::Read => ReceiptKind::Read,
            };
            self.send_receipt(&user, kind, ids);
        }
    }
}

/// A client's key for a text (`client_id`): 1 to [`MAX_CLIENT_ID_BYTES`] bytes of visible
/// ASCII (a UUID, a counter, ...).
pub(crate) fn check_client_id(key: &str) -> Result<(), NodeError> {
    if key.is_empty()
        || key.len() > MAX_CLIENT_ID_BYTES
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(NodeError::BadRequest(format!(
            "client_id must be 1 to {MAX_CLIENT_ID_BYTES} visible ASCII characters (no spaces)"
        )));
    }
    Ok(())
}

/// A text queued to send to a contact, with its client's key and where its answer goes.
pub(crate) struct TextToSend {
    pub(crate) contact: String,
    pub(crate) text: String,
    pub(crate) client: Option<String>,
    pub(crate) reply: Reply<MessageInfo>,
}

/// A text a user may send: not blank, at most [`MAX_TEXT_BYTES`].
pub(crate) fn check_text(text: &str) -> Result<(), NodeError> {
    if text.trim().is_empty() {
        return Err(NodeError::EmptyText);
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(NodeError::TextTooLong {
            len: text.len(),
            max: MAX_TEXT_BYTES,
        });
    }
    Ok(())
}
