//! Texts lost at the end of a burst. A relay that loses what it holds for a device (a wiped
//! disk) loses it silently when nothing follows: the receiver notices a gap only when a later
//! text of the same device arrives. So a sender whose direct texts stay `sent` (a relay took
//! them, no receipt came) past the last receipted one for over a minute tells the contact's
//! devices how far it has sent ([`Body::SentUpTo`]) once the contact is online (it would read
//! them now), at most once per [`TAIL_REPEAT`] for the same end. A device that holds less
//! than that in order, [`TAIL_WAIT`] later (what is on its way behind the notice has come by
//! then), asks for the rest with a resend request, as for any gap; what it does hold of the
//! unreceipted texts it receipts again, since a receipt can be lost on the way too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tern_crypto::{DeviceId, UserId};

use super::{Engine, state::LostFrom};
use crate::{consts::REORDER_WAIT, envelope::Body};

/// Texts sent longer ago than this with no receipt make the sender say how far it has sent.
const TAIL_AFTER_MS: i64 = 60_000;
/// How often the sender looks for unreceipted texts.
const TAIL_SCAN: Duration = Duration::from_secs(30);
/// The same end is told to the same contact again only after this long.
const TAIL_REPEAT: Duration = Duration::from_secs(30 * 60);
/// How long a receiver waits after the notice before it counts what it lacks as lost.
const TAIL_WAIT: Duration = REORDER_WAIT;
/// Notices a receiver keeps waiting on at once (one per contact device; more are dropped
/// until some are settled).
const MAX_TAILS_HEARD: usize = 1024;

/// At most this many texts are receipted again for one notice (one receipt holds at most
/// [`crate::consts::MAX_RECEIPT_IDS`]).
const MAX_RECEIPTED_AGAIN: u32 = 500;

/// Both sides of telling how far a device has sent.
#[derive(Debug, Default)]
pub(crate) struct Tails {
    /// Sender: per contact, the end last told and when.
    told: HashMap<UserId, (u64, Instant)>,
    /// Receiver: per contact device, the end it told and when to look.
    heard: HashMap<(UserId, DeviceId), (u64, Instant)>,
    /// When the sender next looks.
    scan_at: Option<Instant>,
}

impl Engine {
    /// Tells contacts who are online how far this device has sent, where its texts to them
    /// stay unreceipted past the last receipted one for over [`TAIL_AFTER_MS`]. Runs on the
    /// heartbeat, looking at most every [`TAIL_SCAN`], at the contacts who are up only.
    pub(crate) fn tell_tails(&mut self) {
        let now = self.clock.now();
        if self.inbox.tails.scan_at.is_some_and(|at| now < at) {
            return;
        }
        self.inbox.tails.scan_at = Some(now + TAIL_SCAN);
        let before = self.clock.now_ms().saturating_sub(TAIL_AFTER_MS);
        // Contacts who are up, first: one who never comes back costs nothing.
        let up: Vec<UserId> = self
            .people
            .contacts
            .keys()
            .filter(|u| **u != self.me.user && self.contact_up(u))
            .copied()
            .collect();
        for user in up {
            let tail = self
                .store
                .unreceipted_tail(&user.into(), &self.me.device_hex, before);
            let (from_seq, seq) = match tail {
                Ok(Some(t)) => t,
                Ok(None) => {
                    // Receipted since: forgotten, so a later loss is told at once.
                    self.inbox.tails.told.remove(&user);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("looking for unreceipted texts failed: {e}");
                    return;
                }
            };
            if self
                .inbox
                .tails
                .told
                .get(&user)
                .is_some_and(|(s, at)| *s >= seq && now.duration_since(*at) < TAIL_REPEAT)
            {
                continue;
            }
            self.inbox.tails.told.insert(user, (seq, now));
            tracing::info!(contact = %user, seq, "texts not receipted; telling the contact how far this device has sent");
            let body = Body::SentUpTo { from_seq, seq };
            if let Err(e) = self.send_control_to(&user, None, body, |_| Ok(())) {
                tracing::warn!(contact = %user, "telling how far this device has sent failed: {e}");
            }
        }
        // Contacts removed meanwhile.
        let contacts = &self.people.contacts;
        self.inbox
            .tails
            .told
            .retain(|u, _| contacts.contains_key(u));
    }

    /// Whether a device of contact `user` is online or away (a relay says so, or this node
    /// is connected to it).
    fn contact_up(&self, user: &UserId) -> bool {
        matches!(self.presence_of(user).state.as_str(), "online" | "away")
    }

    /// `device` of contact `user` has sent texts up to `seq` in the direct conversation, and
    /// has no receipt from `from_seq` on: what this device holds of those is receipted again
    /// (on the next outbox tick, with the receipts due), and if it holds less in order than
    /// `seq` it looks again after [`TAIL_WAIT`] ([`Engine::check_tails`]).
    pub(crate) fn on_sent_up_to(
        &mut self,
        user: &UserId,
        device: DeviceId,
        (from_seq, seq): (u64, u64),
    ) {
        if *user == self.me.user || !self.people.contacts.contains_key(user) {
            return;
        }
        let conv = (*user).into();
        let device_key = device.to_peer_id_string();
        let from = LostFrom {
            user: *user,
            device,
            group: None,
        };
        let held = match self.held_in_order(&from) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("finding what was lost failed: {e}");
                return;
            }
        };
        // The oldest first: what is left stays unreceipted above the last receipted text,
        // and is told of (and receipted) again later.
        match self
            .store
            .ids_in_sequence(&conv, &device_key, (from_seq, seq), MAX_RECEIPTED_AGAIN)
        {
            Ok(ids) if !ids.is_empty() => {
                self.outbox
                    .delivered_due
                    .entry(*user)
                    .or_default()
                    .extend(ids);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("finding what to receipt again failed: {e}"),
        }
        if held >= seq {
            return;
        }
        let heard = &mut self.inbox.tails.heard;
        if heard.len() >= MAX_TAILS_HEARD && !heard.contains_key(&(*user, device)) {
            tracing::warn!(contact = %user, "too many gaps waited on; this one is looked at when told again");
            return;
        }
        let due = self.clock.now() + TAIL_WAIT;
        let entry = heard.entry((*user, device)).or_insert((seq, due));
        entry.0 = entry.0.max(seq);
    }

    /// Counts as lost what a contact's device said it sent and this device still does not
    /// hold in order, [`TAIL_WAIT`] after it said so: asked for again with the other losses
    /// (on the outbox tick, before the hold-back's releases and the requests they make).
    pub(crate) fn check_tails(&mut self) {
        let now = self.clock.now();
        let due: Vec<((UserId, DeviceId), u64)> = self
            .inbox
            .tails
            .heard
            .iter()
            .filter(|(_, (_, at))| now >= *at)
            .map(|(k, (seq, _))| (*k, *seq))
            .collect();
        for ((user, device), seq) in due {
            self.inbox.tails.heard.remove(&(user, device));
            let from = LostFrom {
                user,
                device,
                group: None,
            };
            match self.held_in_order(&from) {
                Ok(h) if h < seq => {
                    tracing::info!(contact = %user, held = h, seq, "texts at the end of a burst were lost");
                    self.note_lost(from, Some(seq));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("finding what was lost failed: {e}"),
            }
        }
    }
}
