//! The receiver's side of ordered delivery: a pairwise message that arrives ahead of its
//! chain waits for the earlier ones, and a message that arrived too late to be read is asked
//! for again.
//!
//! Lanes ([`super::lanes`]) put every device's ciphertexts on the wire in ratchet order, and a
//! relay keeps a mailbox in deposit order, so in the common case messages arrive in order.
//! They can still arrive out of order across paths: a live push that overtakes a mailbox
//! drain, a message sent directly while older ones wait at a relay, copies at two relays. So
//! before decrypting, the receiver asks the session how far ahead of its chain the message is
//! (`PeerSessions::skip_ahead`); past [`MAX_SAFE_SKIP`] it is not decrypted yet but left in the
//! mailbox (drained again on the next tick) or refused on the direct path (the sender then
//! deposits it), for at most [`REORDER_WAIT`]. vodozemac keeps 40 skipped keys per chain, so
//! waiting is what keeps the earlier messages readable.
//!
//! When a message is undecryptable anyway (it came after its key was gone, or its predecessor
//! never came within the wait), the durable ledger of messages read (`pairwise_seen`) tells
//! it from a redelivered copy: a copy is acknowledged silently; a loss is reported as an
//! `undecryptable` event with its reason, and the sender's device is sent a `Resend` request
//! naming the last text it holds in order. The sender re-encrypts its own texts after that
//! one in fresh ratchet steps ([`Engine::resend_to`]) and the receiver drops the ids it
//! already has: at-least-once, with no visible duplicates.

use serde_bytes::ByteArray;
use tern_crypto::{DeviceId, UserId, group::GroupId, session::PeerSessions};
use tern_store::{ConversationId, CryptoUpdate};

use super::{
    Engine,
    state::{LostFrom, ResendFollow},
};
use crate::{
    consts::{
        MAX_REORDER_WAITING, MAX_RESEND, MAX_SAFE_SKIP, PAIRWISE_SEEN_KEEP, REORDER_WAIT,
        RESEND_INTERVAL,
    },
    envelope::Body,
    error::NodeError,
};

/// Gaps given up on are remembered for at most this many (device, conversation) pairs.
const MAX_RESEND_FLOORS: usize = 4096;

impl Engine {
    /// Whether a pairwise message should wait for earlier messages of its chain before it is
    /// decrypted (see the module documentation). A message stops waiting after
    /// [`REORDER_WAIT`], or at once when too many are waiting.
    pub(crate) fn must_wait(
        &mut self,
        sessions: &PeerSessions,
        ciphertext: &[u8],
        digest: [u8; 16],
    ) -> bool {
        let skip = match sessions.skip_ahead(ciphertext) {
            Ok(s) => s,
            // Not a pairwise message: decryption reports it.
            Err(_) => return false,
        };
        if skip <= MAX_SAFE_SKIP {
            if self.inbox.reorder.remove(&digest).is_some() {
                self.inbox.recovery.waited += 1;
            }
            return false;
        }
        let now = self.clock.now();
        let first = match self.inbox.reorder.get(&digest) {
            Some(t) => *t,
            None if self.inbox.reorder.len() >= MAX_REORDER_WAITING => {
                tracing::warn!(
                    skip,
                    "too many messages waiting for earlier ones; reading this one now"
                );
                return false;
            }
            None => {
                self.inbox.reorder.insert(digest, now);
                now
            }
        };
        if now.duration_since(first) < REORDER_WAIT {
            tracing::debug!(
                skip,
                "a message ahead of its chain waits for the earlier ones"
            );
            return true;
        }
        tracing::info!(
            skip,
            "earlier messages did not come in time; reading this one (they will be asked for again)"
        );
        self.inbox.reorder.remove(&digest);
        false
    }

    /// Forgets waiting messages that were not seen again long after their wait (their mail
    /// went elsewhere) and resend requests past their interval.
    pub(crate) fn prune_reorder(&mut self) {
        let now = self.clock.now();
        self.inbox
            .reorder
            .retain(|_, first| now.duration_since(*first) < REORDER_WAIT * 6);
        self.inbox
            .resend_asked
            .retain(|_, at| now.duration_since(*at) < RESEND_INTERVAL);
    }

    /// Forgets digests of messages read longer ago than [`PAIRWISE_SEEN_KEEP`]: no relay
    /// still holds a copy of them.
    pub(crate) fn prune_seen_ledger(&mut self) {
        let keep = i64::try_from(PAIRWISE_SEEN_KEEP.as_millis()).unwrap_or(i64::MAX);
        let before = self.clock.now_ms().saturating_sub(keep);
        match self.store.transaction(|tx| tx.prune_pairwise_seen(before)) {
            Ok(n) if n > 0 => tracing::debug!(n, "forgot old digests of messages read"),
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning the ledger of messages read failed: {e}"),
        }
    }

    /// Shows the held messages whose hold ran out. A direct text shown with a gap before it
    /// means what is missing was lost on the way (a relay that lost it, say): it is asked
    /// for again, with whatever else was noted lost.
    pub(crate) fn release_held(&mut self) {
        for message in self.hold.expired(self.clock.now()) {
            if message.gap_before
                && !message.own
                && let Some(user) = UserId::from_hex(&message.sender)
                && let Some(device) = DeviceId::from_peer_id_string(&message.sender_device)
            {
                // The direct conversation with a contact, or a group this device is in.
                let group = if message.conversation.0 == message.sender {
                    self.people.contacts.contains_key(&user).then_some(None)
                } else {
                    GroupId::from_hex(&message.conversation.0)
                        .filter(|g| self.groups.by_id.contains_key(g))
                        .map(Some)
                };
                if let Some(group) = group {
                    let up_to = message.seq.saturating_sub(1);
                    self.note_lost(
                        LostFrom {
                            user,
                            device,
                            group,
                        },
                        Some(up_to),
                    );
                }
            }
            self.emit(crate::types::Event::Message { message });
        }
        self.follow_resends();
        self.ask_resend();
    }

    /// The last sequence number `from`'s device has sent that this device holds in order:
    /// from 1 in a direct conversation, from the first one held in a group (a member who
    /// joined late holds none before it); past a gap given up on (`resend_floor`), from the
    /// first one held above it, so a hole that can never be filled does not make every
    /// later request start below it.
    pub(super) fn held_in_order(&self, from: &LostFrom) -> Result<u64, tern_store::ReadError> {
        let device = from.device.to_peer_id_string();
        let floor = self.inbox.resend_floor.get(from).copied().unwrap_or(0);
        match from.group {
            None if floor == 0 => self.store.contiguous_sequence(&from.user.into(), &device),
            None => self
                .store
                .contiguous_from_first(&from.user.into(), &device, floor),
            Some(g) => self.store.contiguous_from_first(&g.into(), &device, floor),
        }
    }

    /// Looks again at the resends asked for (each at most once per [`RESEND_INTERVAL`]): a
    /// gap that is filled is done; one still filling (texts still arriving) is waited for;
    /// one that stopped filling part way (the sender sends at most [`MAX_RESEND`] texts per
    /// request) is asked for again from where it stopped; one that did not move at all is
    /// given up (the sender no longer holds those texts, or they were not texts).
    pub(crate) fn follow_resends(&mut self) {
        let now = self.clock.now();
        let due: Vec<(LostFrom, ResendFollow)> = self
            .inbox
            .resends
            .iter()
            .filter(|(_, f)| now.duration_since(f.checked) >= RESEND_INTERVAL)
            .map(|(k, f)| (*k, *f))
            .collect();
        for (from, f) in due {
            let held = match self.held_in_order(&from) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("following a resend failed: {e}");
                    continue;
                }
            };
            let user = from.user;
            if held >= f.up_to {
                self.inbox.resends.remove(&from);
            } else if held != f.seen {
                self.inbox.resends.insert(
                    from,
                    ResendFollow {
                        seen: held,
                        checked: now,
                        ..f
                    },
                );
            } else if held > f.asked_at {
                self.inbox.resends.remove(&from);
                tracing::info!(contact = %user, held, up_to = f.up_to, "a resend stopped part way; asking for the rest");
                self.note_lost(from, Some(f.up_to));
            } else {
                self.inbox.resends.remove(&from);
                tracing::info!(contact = %user, held, up_to = f.up_to, "a resend brought nothing; giving up on those texts");
                let floors = &mut self.inbox.resend_floor;
                if floors.len() < MAX_RESEND_FLOORS || floors.contains_key(&from) {
                    let floor = floors.entry(from).or_insert(0);
                    *floor = (*floor).max(f.up_to);
                }
            }
        }
    }

    /// Notes that texts from `from` were lost: up to `up_to` (a gap below a text that
    /// arrived), or `None` when which one is not known (a key was gone).
    pub(crate) fn note_lost(&mut self, from: LostFrom, up_to: Option<u64>) {
        let entry = self.inbox.lost.entry(from).or_insert(up_to);
        *entry = match (*entry, up_to) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }

    /// Sends a resend request to each device texts were lost from (at most one per device
    /// per [`RESEND_INTERVAL`]; what is noted meanwhile waits for the next one, unless the
    /// gap filled by itself). The request names the last text of that device this one
    /// holds in order, so what follows comes again.
    pub(crate) fn ask_resend(&mut self) {
        if self.inbox.lost.is_empty() {
            return;
        }
        let lost: Vec<(LostFrom, Option<u64>)> = self.inbox.lost.drain().collect();
        for (from, up_to) in lost {
            let now = self.clock.now();
            let (user, target) = (from.user, from.device);
            if self
                .inbox
                .resend_asked
                .get(&(target, from.group))
                .is_some_and(|at| now.duration_since(*at) < RESEND_INTERVAL)
            {
                self.note_lost(from, up_to);
                continue;
            }
            let after_seq = match self.held_in_order(&from) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("finding what was lost failed: {e}");
                    self.note_lost(from, up_to);
                    continue;
                }
            };
            if up_to.is_some_and(|u| after_seq >= u) {
                continue; // the gap filled meanwhile
            }
            self.inbox.resend_asked.insert((target, from.group), now);
            if let Some(up_to) = up_to {
                self.inbox.resends.insert(
                    from,
                    ResendFollow {
                        up_to,
                        asked_at: after_seq,
                        seen: after_seq,
                        checked: now,
                    },
                );
            }
            self.inbox.recovery.resends_asked += 1;
            tracing::info!(contact = %user, group = ?from.group, after_seq, ?up_to, "asking the sender to send its texts again");
            let body = Body::Resend {
                after_seq,
                up_to_seq: up_to,
                group: from.group.map(|g| ByteArray::new(*g.as_bytes())),
            };
            if let Err(e) = self.send_control_to(&user, Some(target), body, |_| Ok(())) {
                tracing::warn!(contact = %user, "sending a resend request failed: {e}");
                self.note_lost(from, up_to);
            }
        }
    }

    /// Answers a resend request from `device` of `user`: this device's own texts in the
    /// direct conversation with that contact, or in `group` (of which `user` is a member),
    /// with a sequence number in `range` (after the first, up to the second) that are not
    /// queued for that device (at most [`MAX_RESEND`]; a group's only those that went under
    /// a sender key that device was given) are encrypted again for it, in fresh ratchet
    /// steps, and queued at the end of its lane, with the ratchet state, in one transaction.
    pub(crate) fn resend_to(
        &mut self,
        user: &UserId,
        device: DeviceId,
        range: (u64, u64),
        group: Option<GroupId>,
    ) -> Result<(), NodeError> {
        match group {
            None if *user == self.me.user || !self.people.contacts.contains_key(user) => {
                return Ok(());
            }
            Some(g) if !self.state(&g).is_ok_and(|s| s.is_member(user.as_bytes())) => {
                tracing::info!(group = %g, contact = %user, "a resend asked in a group they are not in; ignored");
                return Ok(());
            }
            _ => {}
        }
        let Some(curve) = self.known(user).and_then(|c| c.curve_of(&device)) else {
            return Ok(());
        };
        let device_key = device.to_peer_id_string();
        let conv = match group {
            None => ConversationId::from(*user),
            Some(g) => g.into(),
        };
        let texts = self.store.resend_candidates(
            &conv,
            &self.me.device_hex,
            range,
            &device_key,
            (MAX_RESEND, group.is_some()),
        )?;
        if texts.is_empty() {
            return Ok(());
        }
        let to = *user;
        let mut sessions = vec![(device, self.load_sessions(&device, curve)?)];
        if !sessions[0].1.has_session() {
            return Ok(());
        }
        let mut queued = Vec::with_capacity(texts.len());
        let mut last_pickle = None;
        for m in &texts {
            let (deliveries, mut pickles) = match group {
                None => self.encrypt_text(&to, m, &mut sessions)?,
                Some(_) => self.encrypt_group_copy(&to, m, &mut sessions)?,
            };
            last_pickle = pickles.pop();
            queued.push((m.id, deliveries));
        }
        let Some((peer_device, sid, pickle)) = last_pickle else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.apply_crypto(
                &[CryptoUpdate::Session {
                    peer_device: &peer_device,
                    session_id: &sid,
                    pickle: &pickle,
                }],
                now,
            )?;
            for (id, deliveries) in &queued {
                tx.add_outbox_rows(*id, deliveries, now)?;
            }
            Ok(())
        })?;
        tracing::info!(contact = %user, ?group, count = texts.len(), ?range, "sending texts again on request");
        self.inbox.recovery.texts_resent += texts.len() as u64;
        // Every text went to the same device: one kick starts its lane.
        let first = queued
            .first()
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default();
        self.kick_lanes_for(first);
        Ok(())
    }
}
