//! Which share each recipient of a deposit takes it into, from the grants its owner
//! registered and the token the sender showed (see `quota.rs` for the shares and
//! `tern_crypto::grant` for grants and tokens).
//!
//! A sender the owner named in its presence allow-list (a device of one of its contacts: the
//! relay knows these already) deposits in its own share without a token, so a contact is
//! served from the moment it is added, before any grant could reach it.
//!
//! The registered token hashes of every closed mailbox are held in memory (at most
//! [`mailbox::MAX_GRANTS`] each) so admitting a deposit never waits for the disk; the
//! database is their durable copy, loaded at start.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use serde_bytes::ByteArray;

use super::quota::Share;
use crate::wire::{
    ErrorCode,
    mailbox::{self, Refusal},
};

/// One mailbox's registered grants.
#[derive(Debug, Default)]
struct Registered {
    hashes: HashSet<[u8; 32]>,
    /// When the owner last registered them (ms since the epoch).
    updated_ms: u64,
}

/// The grants of every mailbox whose owner registered any.
#[derive(Debug, Default)]
pub struct Grants {
    by_owner: HashMap<PeerId, Registered>,
}

/// A deposit's recipients sorted by how it may reach them.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Recipients to store it for, each with its share.
    pub to: Vec<(PeerId, Share)>,
    /// Recipients refused before storage (a token their owner did not register).
    pub refused: Vec<Refusal>,
}

impl Grants {
    /// The grants loaded from storage.
    pub fn load(loaded: Vec<(PeerId, Vec<[u8; 32]>, u64)>) -> Self {
        let by_owner = loaded
            .into_iter()
            .map(|(o, h, t)| {
                (
                    o,
                    Registered {
                        hashes: h.into_iter().collect(),
                        updated_ms: t,
                    },
                )
            })
            .collect();
        Grants { by_owner }
    }

    /// Replaces `owner`'s grants (after they were stored).
    pub fn set(&mut self, owner: PeerId, hashes: Vec<[u8; 32]>, now_ms: u64) {
        self.by_owner.insert(
            owner,
            Registered {
                hashes: hashes.into_iter().collect(),
                updated_ms: now_ms,
            },
        );
    }

    /// Forgets the grants of owners who have not registered them since `before_ms` (the
    /// storage sweep deletes them too).
    pub fn expire(&mut self, before_ms: u64) {
        self.by_owner.retain(|_, r| r.updated_ms >= before_ms);
    }

    /// How many mailboxes have grants.
    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    /// Whether no mailbox has grants.
    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// Sorts a deposit's deduplicated `recipients` (with `tokens` in the same order, or
    /// none) into shares. A token is only looked at for a mailbox with grants; a wrong one
    /// is refused (`NoGrant`), never taken as an introduction, so a revoked sender cannot
    /// fall back on the introductions share while it still shows its old token.
    /// `allowed(owner)`: the owner named the sender in its allow-list.
    pub fn admit(
        &self,
        recipients: Vec<PeerId>,
        tokens: &[Option<ByteArray<32>>],
        allowed: impl Fn(&PeerId) -> bool,
    ) -> Result<Admitted, ErrorCode> {
        if !tokens.is_empty() && tokens.len() != recipients.len() {
            return Err(ErrorCode::BadRequest);
        }
        let mut out = Admitted::default();
        for (i, r) in recipients.into_iter().enumerate() {
            let Some(reg) = self.by_owner.get(&r) else {
                out.to.push((r, Share::Sender));
                continue;
            };
            let token = tokens.get(i).and_then(Option::as_ref);
            let granted = token.map(|t| tern_crypto::grant::token_hash(t));
            if let Some(h) = granted.filter(|h| reg.hashes.contains(h)) {
                out.to.push((r, Share::Grant(h)));
                continue;
            }
            if allowed(&r) {
                out.to.push((r, Share::Sender));
                continue;
            }
            match token {
                None => out.to.push((r, Share::Intro)),
                Some(_) => out.refused.push(Refusal {
                    peer: r,
                    code: ErrorCode::NoGrant,
                }),
            }
        }
        Ok(out)
    }
}

/// Checks a `SetGrants` request's size.
pub fn check_set(hashes: &[ByteArray<32>]) -> Result<(), ErrorCode> {
    if hashes.len() > mailbox::MAX_GRANTS {
        return Err(ErrorCode::BadRequest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_grants_and_tokens() {
        let (open, closed) = (PeerId::random(), PeerId::random());
        let token = [7u8; 32];
        let mut g = Grants::default();
        g.set(closed, vec![tern_crypto::grant::token_hash(&token)], 1);
        let t = |b: [u8; 32]| Some(ByteArray::new(b));
        // An open mailbox: the sender's share, token or not.
        let no = |_: &PeerId| false;
        let a = g.admit(vec![open], &[t([1; 32])], no).unwrap();
        assert_eq!(a.to, vec![(open, Share::Sender)]);
        // A closed one: the grant's share with the right token, an introduction without
        // one, refused with a wrong one.
        let a = g.admit(vec![closed], &[t(token)], no).unwrap();
        assert_eq!(
            a.to,
            vec![(closed, Share::Grant(tern_crypto::grant::token_hash(&token)))]
        );
        assert_eq!(
            g.admit(vec![closed], &[], no).unwrap().to,
            vec![(closed, Share::Intro)]
        );
        let a = g
            .admit(vec![closed, open], &[t([2; 32]), None], no)
            .unwrap();
        assert_eq!(a.to, vec![(open, Share::Sender)]);
        assert_eq!(a.refused[0].code, ErrorCode::NoGrant);
        // Tokens must match the recipients one to one.
        assert_eq!(
            g.admit(vec![closed, open], &[t(token)], no).unwrap_err(),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn an_allowed_sender_needs_no_token() {
        let closed = PeerId::random();
        let mut g = Grants::default();
        g.set(closed, vec![], 1);
        let a = g.admit(vec![closed], &[], |_| true).unwrap();
        assert_eq!(a.to, vec![(closed, Share::Sender)]);
        // Even with a stale token, the allow-list admits it.
        let a = g
            .admit(vec![closed], &[Some(ByteArray::new([1; 32]))], |_| true)
            .unwrap();
        assert_eq!(a.to, vec![(closed, Share::Sender)]);
    }

    #[test]
    fn idle_grants_expire() {
        let mut g = Grants::default();
        g.set(PeerId::random(), vec![], 10);
        g.set(PeerId::random(), vec![], 100);
        g.expire(50);
        assert_eq!(g.len(), 1);
    }
}
