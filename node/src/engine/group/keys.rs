//! Sender keys a member device lost. A relay that loses its mail (a wiped disk) can lose the
//! pairwise message that carried a sender key, while the group messages under that key,
//! sent later, arrive: they wait in the stash, unreadable. The device that holds them asks
//! the sending device for the key ([`Body::KeyRequest`]); that device sends it again as it
//! first sent it to the asking device, with the group message it went with, and only if it
//! did send it to that device (so a request never gives a device a key, or an index of a
//! key, it was not given before).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::engine::{Engine, send};
use crate::{
    consts::MAX_GROUP_STASH,
    envelope::{Body, MAX_SESSION_ID},
    error::NodeError,
};
use libp2p::PeerId;
use serde_bytes::ByteBuf;
use tern_crypto::{
    DeviceId, UserId,
    group::{GroupId, GroupMessage},
};

/// A stashed group message waits this long for its key before the key is asked for: the
/// key is usually on its way behind it (another lane, another relay).
pub(crate) const KEY_REQUEST_AFTER_MS: i64 = 30_000;
/// How often the stash is looked through for keys to ask for.
const KEY_SCAN_INTERVAL: Duration = Duration::from_secs(30);
/// The wait before a key asked for is asked for again, doubled each time up to
/// [`KEY_REQUEST_MAX_WAIT`]: the sending device may be offline for days, and each request
/// waits in its mailbox.
const KEY_REQUEST_FIRST_WAIT: Duration = Duration::from_secs(60);
/// The longest wait between two requests for the same key.
const KEY_REQUEST_MAX_WAIT: Duration = Duration::from_secs(6 * 3600);
/// A device is sent the same key again at most once in this time, however often it asks.
const KEY_ANSWER_INTERVAL: Duration = Duration::from_secs(60);
/// At most this many (device, key) answers are remembered for [`KEY_ANSWER_INTERVAL`];
/// a request beyond them waits for the next one.
const MAX_KEY_ANSWERS: usize = 1024;
/// How long a sent key is kept for a device that may ask for it: as long as the key may be
/// used (its rotation age) and a message under it then waits for it in a stash, and a day.
pub(crate) const SENT_KEY_KEEP_MS: i64 = (tern_crypto::consts::DEFAULT_ROTATION_SECS as i64) * 1000
    + super::inbound::STASH_MAX_AGE_MS
    + 24 * 3600 * 1000;

/// One key this device asks for.
#[derive(Debug)]
pub(crate) struct KeyAsk {
    /// When it may be asked for again.
    next: Instant,
    /// The wait after that.
    wait: Duration,
}

/// Lost sender keys: those this device asks for and the answers it gave.
#[derive(Debug, Default)]
pub(crate) struct KeyRequests {
    /// Keys asked for, by (sending device, session id); only those the stash still needs.
    asks: HashMap<(String, String), KeyAsk>,
    /// When each (asking device, session id) was last sent its key.
    answered: HashMap<(DeviceId, String), Instant>,
    /// When the stash is next looked through.
    scan_at: Option<Instant>,
}

impl Engine {
    /// Asks for the sender keys that stashed group messages have waited for longer than
    /// [`KEY_REQUEST_AFTER_MS`], each of the device that sent the message, again after a
    /// growing wait while the key does not come. Runs on the heartbeat, looking through the
    /// stash at most every [`KEY_SCAN_INTERVAL`].
    pub(crate) fn ask_group_keys(&mut self) {
        let now = self.clock.now();
        if self.groups.keys.scan_at.is_some_and(|at| now < at) {
            return;
        }
        self.groups.keys.scan_at = Some(now + KEY_SCAN_INTERVAL);
        self.prune_sent_keys();
        let wanted = match self.keys_wanted() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("looking for lost sender keys failed: {e}");
                return;
            }
        };
        let asks = &mut self.groups.keys.asks;
        asks.retain(|k, _| wanted.contains_key(k));
        let now_ms = self.clock.now_ms();
        for ((device, session), oldest) in wanted {
            if now_ms - oldest < KEY_REQUEST_AFTER_MS {
                continue;
            }
            let ask = self
                .groups
                .keys
                .asks
                .entry((device.clone(), session.clone()))
                .or_insert(KeyAsk {
                    next: now,
                    wait: KEY_REQUEST_FIRST_WAIT,
                });
            if now < ask.next {
                continue;
            }
            ask.next = now + ask.wait;
            ask.wait = (ask.wait * 2).min(KEY_REQUEST_MAX_WAIT);
            let (Some(target), Some(owner)) = (
                DeviceId::from_peer_id_string(&device),
                device
                    .parse::<PeerId>()
                    .ok()
                    .and_then(|p| self.people.device_owner.get(&p).copied()),
            ) else {
                continue;
            };
            tracing::info!(contact = %owner, %device, "asking for a sender key that did not arrive");
            self.inbox.recovery.group_keys_asked += 1;
            let body = Body::KeyRequest { session };
            if let Err(e) = self.send_control_to(&owner, Some(target), body, |_| Ok(())) {
                tracing::warn!(contact = %owner, "sending a sender key request failed: {e}");
            }
        }
    }

    /// The keys the stash waits for: (sending device, session id) with when the oldest
    /// message waiting for it was stashed.
    fn keys_wanted(&self) -> Result<HashMap<(String, String), i64>, NodeError> {
        let mut wanted: HashMap<(String, String), i64> = HashMap::new();
        if self.store.group_stash_len()? == 0 {
            return Ok(wanted);
        }
        // Whether a session is held, per session: many messages wait for one key.
        let mut held: HashMap<String, bool> = HashMap::new();
        for s in self.store.stashed_group_messages(None, MAX_GROUP_STASH)? {
            let Ok(msg) = GroupMessage::from_bytes(&s.payload) else {
                continue;
            };
            let has = match held.get(&msg.session_id) {
                Some(h) => *h,
                None => {
                    let h = self.store.holds_inbound_group_session(&msg.session_id)?;
                    held.insert(msg.session_id.clone(), h);
                    h
                }
            };
            if has {
                // It waits for something else (its group, a member added).
                continue;
            }
            let oldest = wanted
                .entry((s.sender_device, msg.session_id))
                .or_insert(s.received_at_ms);
            *oldest = (*oldest).min(s.received_at_ms);
        }
        Ok(wanted)
    }

    /// Answers `user`'s `device` asking for the sender key `session`: if this device sent
    /// it that key and still keeps it, it is sent again as it was first sent to that device
    /// (at the same index, with the same group message), over their pairwise session, queued
    /// in the device's lane. At most once per [`KEY_ANSWER_INTERVAL`] per device and key.
    pub(crate) fn answer_key_request(
        &mut self,
        user: &UserId,
        device: DeviceId,
        session: &str,
    ) -> Result<(), NodeError> {
        if session.len() > MAX_SESSION_ID {
            tracing::warn!(contact = %user, "a sender key request naming no key; ignored");
            return Ok(());
        }
        if self.revoked_owner(&device).is_some() {
            return Ok(());
        }
        let now = self.clock.now();
        let answered = &mut self.groups.keys.answered;
        answered.retain(|_, at| now.duration_since(*at) < KEY_ANSWER_INTERVAL);
        let asked = (device, session.to_owned());
        if answered.contains_key(&asked) || answered.len() >= MAX_KEY_ANSWERS {
            tracing::debug!(contact = %user, "sender key sent again lately; this request waits");
            return Ok(());
        }
        let device_key = device.to_peer_id_string();
        let Some(sent) = self.store.sent_key_for(session, &device_key)? else {
            tracing::info!(contact = %user, "asked for a sender key this device did not send that device, or no longer keeps");
            return Ok(());
        };
        let Some(gid) = GroupId::from_hex(&sent.group_id) else {
            return Ok(());
        };
        if !self.state(&gid)?.is_member(user.as_bytes()) {
            tracing::info!(group = %gid, contact = %user, "a sender key asked for by a former member; not sent");
            return Ok(());
        }
        let Some(message) = self.store.message(sent.message_id)? else {
            return Ok(());
        };
        let Some(curve) = self.known(user).and_then(|c| c.curve_of(&device)) else {
            return Ok(());
        };
        let mut sessions = vec![(device, self.load_sessions(&device, curve)?)];
        if !sessions[0].1.has_session() {
            return Ok(());
        }
        let body = Body::SenderKey {
            distribution: ByteBuf::from(sent.distribution.to_vec()),
            message: Some(ByteBuf::from(sent.ciphertext.clone())),
        };
        let (deliveries, pickles) = self.encrypt_own_group(user, &message, body, &mut sessions)?;
        let updates = send::crypto_updates(&pickles);
        let now_ms = self.clock.now_ms();
        let queued = self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.apply_crypto(&updates, now_ms)?;
            tx.add_outbox_rows_new(message.id, &deliveries, now_ms)?;
            Ok(())
        });
        if let Err(e) = queued {
            // Still queued for that device from before: it is on its way already.
            tracing::debug!(contact = %user, "sender key not sent again: {e}");
            return Ok(());
        }
        self.groups.keys.answered.insert(asked, now);
        self.inbox.recovery.group_keys_resent += 1;
        tracing::info!(group = %gid, contact = %user, "sent a sender key again on request");
        self.kick_lanes_for(&deliveries);
        Ok(())
    }

    /// Forgets the sent sender keys older than [`SENT_KEY_KEEP_MS`].
    pub(crate) fn prune_sent_keys(&mut self) {
        let before = self.clock.now_ms().saturating_sub(SENT_KEY_KEEP_MS);
        if let Err(e) = self.store.transaction(|tx| tx.prune_sent_keys(before)) {
            tracing::warn!("forgetting old sent sender keys failed: {e}");
        }
    }
}
