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

use std::collections::{HashMap, hash_map::Entry};

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

/// What a usage counter of one mailbox counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter<'a> {
    /// The whole mailbox.
    Total,
    /// One share: `g` + token hash, or `s` + sender peer id bytes (as stored).
    Share(&'a [u8]),
    /// The introductions share as a whole.
    Intro,
}

/// The stored share column of an entry.
pub fn share_column(share: &Share, sender: &PeerId) -> Vec<u8> {
    match share {
        Share::Grant(h) => [b"g".as_slice(), h].concat(),
        Share::Sender | Share::Intro => [b"s".as_slice(), &sender.to_bytes()].concat(),
    }
}

/// The counters one entry counts in: the mailbox, its share, and (for an introduction)
/// the introductions share. Entries stored before shares existed count in the total only.
pub fn counters(share: Option<&[u8]>, intro: bool) -> impl Iterator<Item = Counter<'_>> {
    [
        Some(Counter::Total),
        share.map(Counter::Share),
        intro.then_some(Counter::Intro),
    ]
    .into_iter()
    .flatten()
}

/// A value per counter of every mailbox (fill levels, or a batch's changes to them), keyed
/// by owner first: a lookup hashes the owner's bytes once and allocates nothing; only a new
/// mailbox or share allocates its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters<V> {
    owners: HashMap<Vec<u8>, Mailbox<V>>,
}

/// One mailbox's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mailbox<V> {
    total: V,
    intro: V,
    shares: HashMap<Vec<u8>, V>,
}

impl<V: Default> Mailbox<V> {
    /// Changes one counter with `f` (created at its default).
    fn with_counter(&mut self, counter: Counter<'_>, f: impl FnOnce(&mut V)) {
        match counter {
            Counter::Total => f(&mut self.total),
            Counter::Intro => f(&mut self.intro),
            Counter::Share(s) => match self.shares.get_mut(s) {
                Some(v) => f(v),
                None => {
                    let mut v = V::default();
                    f(&mut v);
                    self.shares.insert(s.to_vec(), v);
                }
            },
        }
    }
}

impl<V: Copy + Default> Counters<V> {
    /// `owner`'s `counter` (the default when it counts nothing yet).
    pub fn get(&self, owner: &[u8], counter: Counter<'_>) -> V {
        let Some(m) = self.owners.get(owner) else {
            return V::default();
        };
        match counter {
            Counter::Total => m.total,
            Counter::Intro => m.intro,
            Counter::Share(s) => m.shares.get(s).copied().unwrap_or_default(),
        }
    }

    /// Changes `owner`'s `counter` with `f` (created at its default).
    pub fn update(&mut self, owner: &[u8], counter: Counter<'_>, f: impl FnOnce(&mut V)) {
        self.with_mailbox(owner, |m| m.with_counter(counter, f));
    }

    /// Changes `owner`'s counters with `f` (created empty).
    fn with_mailbox(&mut self, owner: &[u8], f: impl FnOnce(&mut Mailbox<V>)) {
        match self.owners.get_mut(owner) {
            Some(m) => f(m),
            None => {
                let mut m = Mailbox::default();
                f(&mut m);
                self.owners.insert(owner.to_vec(), m);
            }
        }
    }

    /// Every mailbox's total.
    pub fn totals(&self) -> impl Iterator<Item = V> + '_ {
        self.owners.values().map(|m| m.total)
    }
}

/// Signed changes to fill levels (messages, bytes).
pub type Delta = Counters<(i64, i64)>;

impl Delta {
    /// Adds one entry's change to every counter it counts in ([`counters`]).
    pub fn count(&mut self, owner: &[u8], share: Option<&[u8]>, intro: bool, m: i64, b: i64) {
        self.with_mailbox(owner, |mailbox| {
            for c in counters(share, intro) {
                mailbox.with_counter(c, |e| {
                    e.0 += m;
                    e.1 += b;
                });
            }
        });
    }

    /// Adds `other`'s changes to these.
    pub fn add(&mut self, other: Delta) {
        for (owner, m) in other.owners {
            let mine = self.owners.entry(owner).or_default();
            mine.total.0 += m.total.0;
            mine.total.1 += m.total.1;
            mine.intro.0 += m.intro.0;
            mine.intro.1 += m.intro.1;
            for (share, (dm, db)) in m.shares {
                let e = mine.shares.entry(share).or_default();
                e.0 += dm;
                e.1 += db;
            }
        }
    }
}

impl Counters<Usage> {
    /// Applies committed changes; a share left empty is forgotten, and so is a mailbox left
    /// empty (only the mailboxes and shares the changes touch are looked at). Returns the
    /// change to all mailboxes' totals.
    pub fn apply(&mut self, delta: Delta) -> (i64, i64) {
        fn shift(u: &mut Usage, (m, b): (i64, i64)) {
            u.messages = (u.messages as i64 + m).max(0) as u64;
            u.bytes = (u.bytes as i64 + b).max(0) as u64;
            if u.messages == 0 {
                *u = Usage::default();
            }
        }
        let (mut dm, mut db) = (0, 0);
        for (owner, d) in delta.owners {
            dm += d.total.0;
            db += d.total.1;
            let mut mailbox = match self.owners.entry(owner) {
                Entry::Occupied(o) => o,
                Entry::Vacant(v) => v.insert_entry(Mailbox::default()),
            };
            let m = mailbox.get_mut();
            shift(&mut m.total, d.total);
            shift(&mut m.intro, d.intro);
            for (share, change) in d.shares {
                let mut counter = match m.shares.entry(share) {
                    Entry::Occupied(o) => o,
                    Entry::Vacant(v) => v.insert_entry(Usage::default()),
                };
                shift(counter.get_mut(), change);
                if counter.get().messages == 0 {
                    counter.remove();
                }
            }
            if m.total.messages == 0 {
                mailbox.remove();
            }
        }
        (dm, db)
    }
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
        share_col: &[u8],
        intro: bool,
        size: u64,
        fill: impl Fn(Counter<'_>) -> (u64, u64),
    ) -> Option<ErrorCode> {
        let (m, b) = fill(Counter::Total);
        if m + 1 > self.max_messages {
            return Some(ErrorCode::QuotaCount);
        }
        if b + size > self.max_bytes {
            return Some(ErrorCode::QuotaBytes);
        }
        let (sm, sb) = fill(Counter::Share(share_col));
        if intro {
            let (im, ib) = fill(Counter::Intro);
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

/// Committed usage plus a batch's changes: what `owner`'s `counter` holds now.
pub fn current(
    usage: &Counters<Usage>,
    batch: &Delta,
    owner: &[u8],
    counter: Counter<'_>,
) -> (u64, u64) {
    let base = usage.get(owner, counter);
    let (dm, db) = batch.get(owner, counter);
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

    /// Usage with one counter of `owner` set.
    fn usage_of(owner: &[u8], counter: Counter<'_>, messages: u64, bytes: u64) -> Counters<Usage> {
        let mut u = Counters::default();
        u.update(owner, counter, |v| *v = Usage { messages, bytes });
        u
    }

    #[test]
    fn shares_are_a_part_of_the_mailbox() {
        let q = q();
        assert_eq!((q.share_messages, q.share_bytes), (25, 2_500));
        let owner = b"o".to_vec();
        let g = share_column(&Share::Grant([1; 32]), &PeerId::random());
        let usage = usage_of(&owner, Counter::Share(&g), 25, 100);
        let fill = |c: Counter<'_>| current(&usage, &Delta::default(), &owner, c);
        assert_eq!(q.check(&g, false, 1, fill), Some(ErrorCode::ShareFull));
        let other = share_column(&Share::Grant([2; 32]), &PeerId::random());
        assert_eq!(q.check(&other, false, 1, fill), None);
    }

    #[test]
    fn introductions_are_capped_per_sender_and_as_a_whole() {
        let q = q();
        let owner = b"o".to_vec();
        let mut batch = Delta::default();
        let usage = Counters::default();
        let a = share_column(&Share::Intro, &PeerId::random());
        for _ in 0..3 {
            assert_eq!(
                q.check(&a, true, 10, |c| current(&usage, &batch, &owner, c)),
                None
            );
            batch.count(&owner, Some(&a), true, 1, 10);
        }
        assert_eq!(
            q.check(&a, true, 10, |c| current(&usage, &batch, &owner, c)),
            Some(ErrorCode::IntroFull),
            "one sender's part is full"
        );
        // Many fresh senders fill the whole share, then nobody new gets in.
        for _ in 0..7 {
            let s = share_column(&Share::Intro, &PeerId::random());
            assert_eq!(
                q.check(&s, true, 10, |c| current(&usage, &batch, &owner, c)),
                None
            );
            batch.count(&owner, Some(&s), true, 1, 10);
        }
        let fresh = share_column(&Share::Intro, &PeerId::random());
        assert_eq!(
            q.check(&fresh, true, 10, |c| current(&usage, &batch, &owner, c)),
            Some(ErrorCode::IntroFull)
        );
        // A granted sender is not affected by a full introductions share.
        let g = share_column(&Share::Grant([1; 32]), &PeerId::random());
        assert_eq!(
            q.check(&g, false, 10, |c| current(&usage, &batch, &owner, c)),
            None
        );
    }

    #[test]
    fn the_mailbox_limit_comes_first() {
        let q = q();
        let owner = b"o".to_vec();
        let usage = usage_of(&owner, Counter::Total, 100, 0);
        let g = share_column(&Share::Grant([1; 32]), &PeerId::random());
        assert_eq!(
            q.check(&g, false, 1, |c| current(
                &usage,
                &Delta::default(),
                &owner,
                c
            )),
            Some(ErrorCode::QuotaCount)
        );
    }

    /// Committed changes land in every counter they count in, other mailboxes are
    /// untouched, and emptied counters and mailboxes are forgotten.
    #[test]
    fn applied_changes_count_and_empty_counters_go() {
        let (a, b) = (b"a".to_vec(), b"b".to_vec());
        let (s1, s2) = (b"s1".to_vec(), b"s2".to_vec());
        let mut usage: Counters<Usage> = Counters::default();
        let mut d = Delta::default();
        d.count(&a, Some(&s1), false, 2, 20);
        d.count(&a, Some(&s2), true, 1, 5);
        d.count(&b, None, false, 1, 7);
        assert_eq!(usage.apply(d), (4, 32));
        assert_eq!(
            usage.get(&a, Counter::Total),
            Usage {
                messages: 3,
                bytes: 25
            }
        );
        assert_eq!(
            usage.get(&a, Counter::Share(&s1)),
            Usage {
                messages: 2,
                bytes: 20
            }
        );
        assert_eq!(
            usage.get(&a, Counter::Intro),
            Usage {
                messages: 1,
                bytes: 5
            }
        );
        assert_eq!(
            usage.get(&b, Counter::Total),
            Usage {
                messages: 1,
                bytes: 7
            }
        );
        assert_eq!(usage.get(&b, Counter::Share(&s1)), Usage::default());
        // Changes made in two parts add up like one.
        let (mut first, mut second) = (Delta::default(), Delta::default());
        first.count(&a, Some(&s2), true, -1, -5);
        second.count(&b, None, false, -1, -7);
        first.add(second);
        assert_eq!(usage.apply(first), (-2, -12));
        assert_eq!(usage.get(&a, Counter::Share(&s2)), Usage::default());
        assert_eq!(usage.get(&a, Counter::Intro), Usage::default());
        assert_eq!(
            usage.get(&a, Counter::Total),
            Usage {
                messages: 2,
                bytes: 20
            }
        );
        assert_eq!(
            usage.totals().count(),
            1,
            "the emptied mailbox is forgotten"
        );
    }
}
