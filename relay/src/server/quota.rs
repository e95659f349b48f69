//! Mailbox quotas and the shares inside them.
//!
//! A mailbox holds at most [`Quota::max_messages`] / [`Quota::max_bytes`]. Inside that, every
//! entry belongs to one **share**, and no share may take more than its part:
//!
//! - a **grant** share: deposits that showed a token whose hash the owner registered
//!   (every device of the granted user together);
//! - a **sender** share: deposits into a mailbox whose owner never registered grants (an
//!   older client), per depositing device;
//! - the **introductions** share: deposits without a token into a mailbox that has grants.
//!   It is small, capped as a whole and per depositing device, and its entries expire sooner,
//!   so strangers can neither fill the mailbox nor grow their room by minting identities.
//!
//! The writer checks these against the committed usage plus what its open batch added, so
//! the limits hold across a batch (see `storage::writer`).

use std::collections::HashMap;

use crate::wire::ErrorCode;
use libp2p::PeerId;

/// How a deposit reaches one recipient's mailbox, decided by the event loop from the
/// recipient's registered grants and the token shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    /// Under the grant with this token hash.
    Grant([u8; 32]),
    /// The owner registered no grants: the sender's own share.
    Sender,
    /// No token, into a mailbox with grants: the introductions share.
    Intro,
}

/// What a usage counter counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tag {
    /// The whole mailbox.
    Total,
    /// One share: `g` + token hash, or `s` + sender peer id bytes (as stored).
    Share(Vec<u8>),
    /// The introductions share as a whole.
    Intro,
}

/// A usage counter's key: the mailbox owner's peer id bytes and what is counted.
pub type Key = (Vec<u8>, Tag);

/// The stored share column of an entry.
pub fn share_column(share: &Share, sender: &PeerId) -> Vec<u8> {
    match share {
        Share::Grant(h) => [b"g".as_slice(), h].concat(),
        Share::Sender | Share::Intro => [b"s".as_slice(), &sender.to_bytes()].concat(),
    }
}

/// The counters one entry counts in: the mailbox, its share, and (for an introduction)
/// the introductions share. Entries stored before shares existed count in the total only.
pub fn keys(owner: &[u8], share: Option<&[u8]>, intro: bool) -> Vec<Key> {
    let mut k = vec![(owner.to_vec(), Tag::Total)];
    if let Some(s) = share {
        k.push((owner.to_vec(), Tag::Share(s.to_vec())));
    }
    if intro {
        k.push((owner.to_vec(), Tag::Intro));
    }
    k
}

/// Per-mailbox limits, checked by the writer so they hold across a batch.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Most messages per mailbox.
    pub max_messages: u64,
    /// Most bytes per mailbox.
    pub max_bytes: u64,
    /// Most messages one share (a grant, or a sender without one) may hold.
    pub share_messages: u64,
    /// Most bytes one share may hold.
    pub share_bytes: u64,
    /// Most messages the introductions share holds, all senders together.
    pub intro_messages: u64,
    /// Most bytes the introductions share holds.
    pub intro_bytes: u64,
    /// Most messages one device may have in the introductions share.
    pub intro_per_sender: u64,
}

impl Quota {
    /// Limits with shares of `share_percent` of the mailbox and the given introductions
    /// share.
    pub fn new(
        max_messages: u64,
        max_bytes: u64,
        share_percent: u8,
        intro_messages: u64,
        intro_bytes: u64,
        intro_per_sender: u64,
    ) -> Self {
        let part = |v: u64| (v.saturating_mul(u64::from(share_percent.clamp(1, 100))) / 100).max(1);
        Quota {
            max_messages,
            max_bytes,
            share_messages: part(max_messages),
            share_bytes: part(max_bytes),
            intro_messages: intro_messages.min(max_messages),
            intro_bytes: intro_bytes.min(max_bytes),
            intro_per_sender: intro_per_sender.min(intro_messages),
        }
    }

    /// Checks one more entry of `size` bytes for `owner` under `share_col`: `None` if it
    /// fits, else the code to refuse it with. `fill` reads the current (committed plus
    /// batched) usage of a counter.
    pub fn check(
        &self,
        owner: &[u8],
        share_col: &[u8],
        intro: bool,
        size: u64,
        fill: impl Fn(&Key) -> (u64, u64),
    ) -> Option<ErrorCode> {
        let (m, b) = fill(&(owner.to_vec(), Tag::Total));
        if m + 1 > self.max_messages {
            return Some(ErrorCode::QuotaCount);
        }
        if b + size > self.max_bytes {
            return Some(ErrorCode::QuotaBytes);
        }
        let (sm, sb) = fill(&(owner.to_vec(), Tag::Share(share_col.to_vec())));
        if intro {
            let (im, ib) = fill(&(owner.to_vec(), Tag::Intro));
            if im + 1 > self.intro_messages
                || ib + size > self.intro_bytes
                || sm + 1 > self.intro_per_sender
            {
                return Some(ErrorCode::IntroFull);
            }
        } else if sm + 1 > self.share_messages || sb + size > self.share_bytes {
            return Some(ErrorCode::ShareFull);
        }
        None
    }
}

/// Fill level of one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Committed usage plus a batch's changes: what `key` holds now.
pub fn current(
    usage: &HashMap<Key, Usage>,
    batch: &HashMap<Key, (i64, i64)>,
    key: &Key,
) -> (u64, u64) {
    let base = usage.get(key).copied().unwrap_or_default();
    let (dm, db) = batch.get(key).copied().unwrap_or_default();
    (
        (base.messages as i64 + dm).max(0) as u64,
        (base.bytes as i64 + db).max(0) as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Quota {
        Quota::new(100, 10_000, 25, 10, 1_000, 3)
    }

    #[test]
    fn shares_are_a_part_of_the_mailbox() {
        let q = q();
        assert_eq!((q.share_messages, q.share_bytes), (25, 2_500));
        let owner = b"o".to_vec();
        let g = share_column(&Share::Grant([1; 32]), &PeerId::random());
        let usage: HashMap<Key, Usage> = [(
            (owner.clone(), Tag::Share(g.clone())),
            Usage {
                messages: 25,
                bytes: 100,
            },
        )]
        .into();
        let fill = |k: &Key| current(&usage, &HashMap::new(), k);
        assert_eq!(
            q.check(&owner, &g, false, 1, fill),
            Some(ErrorCode::ShareFull)
        );
        let other = share_column(&Share::Grant([2; 32]), &PeerId::random());
        assert_eq!(q.check(&owner, &other, false, 1, fill), None);
    }

    #[test]
    fn introductions_are_capped_per_sender_and_as_a_whole() {
        let q = q();
        let owner = b"o".to_vec();
        let mut batch: HashMap<Key, (i64, i64)> = HashMap::new();
        let usage = HashMap::new();
        let a = share_column(&Share::Intro, &PeerId::random());
        for _ in 0..3 {
            assert_eq!(
                q.check(&owner, &a, true, 10, |k| current(&usage, &batch, k)),
                None
            );
            for k in keys(&owner, Some(&a), true) {
                let e = batch.entry(k).or_default();
                e.0 += 1;
                e.1 += 10;
            }
        }
        assert_eq!(
            q.check(&owner, &a, true, 10, |k| current(&usage, &batch, k)),
            Some(ErrorCode::IntroFull),
            "one sender's part is full"
        );
        // Many fresh senders fill the whole share, then nobody new gets in.
        for _ in 0..7 {
            let s = share_column(&Share::Intro, &PeerId::random());
            assert_eq!(
                q.check(&owner, &s, true, 10, |k| current(&usage, &batch, k)),
                None
            );
            for k in keys(&owner, Some(&s), true) {
                let e = batch.entry(k).or_default();
                e.0 += 1;
                e.1 += 10;
            }
        }
        let fresh = share_column(&Share::Intro, &PeerId::random());
        assert_eq!(
            q.check(&owner, &fresh, true, 10, |k| current(&usage, &batch, k)),
            Some(ErrorCode::IntroFull)
        );
        // A granted sender is not affected by a full introductions share.
        let g = share_column(&Share::Grant([1; 32]), &PeerId::random());
        assert_eq!(
            q.check(&owner, &g, false, 10, |k| current(&usage, &batch, k)),
            None
        );
    }

    #[test]
    fn the_mailbox_limit_comes_first() {
        let q = q();
        let owner = b"o".to_vec();
        let usage: HashMap<Key, Usage> = [(
            (owner.clone(), Tag::Total),
            Usage {
                messages: 100,
                bytes: 0,
            },
        )]
        .into();
        let g = share_column(&Share::Grant([1; 32]), &PeerId::random());
        assert_eq!(
            q.check(&owner, &g, false, 1, |k| current(
                &usage,
                &HashMap::new(),
                k
            )),
            Some(ErrorCode::QuotaCount)
        );
    }
}
