//! Which entries each mailbox holds, in memory: the writer's index from an owner to its
//! entries' ids, in place of an `(owner, seq)` index in the database.
//!
//! Deposits into many mailboxes touch a different leaf of such an index for each mailbox, in
//! every group commit: it was about two thirds of the pages the writer logged, and half of
//! its CPU per deposit. Here it costs a set insert. The entries themselves stay in the
//! `mailbox` table, looked up by id (its primary key).
//!
//! The index is read from the table at start-up and then follows each operation that
//! succeeds (see [`Moves`]); when a transaction is rolled back as a whole, the writer reads
//! it again. Memory: about 20 to 40 bytes per stored entry (a million entries take some
//! tens of MiB), besides each mailbox's key.

use std::collections::{BTreeSet, HashMap};

use rusqlite::Connection;

/// Mailbox owner (its peer id's bytes) → the ids of its entries, in order.
#[derive(Debug, Default)]
pub(in crate::server::storage) struct Index {
    owners: HashMap<Vec<u8>, BTreeSet<u64>>,
}

/// Entries one operation adds to mailboxes and removes from them, applied to the [`Index`]
/// only when the operation succeeded.
#[derive(Debug, Default)]
pub(in crate::server::storage) struct Moves {
    added: Vec<(Vec<u8>, u64)>,
    removed: Vec<(Vec<u8>, u64)>,
}

impl Moves {
    /// An entry `seq` stored in `owner`'s mailbox.
    pub(super) fn add(&mut self, owner: &[u8], seq: u64) {
        self.added.push((owner.to_vec(), seq));
    }

    /// Entry `seq` gone from `owner`'s mailbox.
    pub(super) fn remove(&mut self, owner: &[u8], seq: u64) {
        self.removed.push((owner.to_vec(), seq));
    }
}

impl Index {
    /// Reads every mailbox's entries from the `mailbox` table.
    pub(in crate::server::storage) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut index = Index::default();
        let mut stmt = conn.prepare("SELECT owner, seq FROM mailbox")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        for row in rows {
            let (owner, seq) = row?;
            index.owners.entry(owner).or_default().insert(seq);
        }
        Ok(index)
    }

    /// Takes an operation's moves in.
    pub(in crate::server::storage) fn apply(&mut self, moves: Moves) {
        for (owner, seq) in moves.added {
            self.owners.entry(owner).or_default().insert(seq);
        }
        for (owner, seq) in moves.removed {
            if let Some(set) = self.owners.get_mut(&owner) {
                set.remove(&seq);
                if set.is_empty() {
                    self.owners.remove(&owner);
                }
            }
        }
    }

    /// `owner`'s entry ids above `after`, in order.
    pub(super) fn after(&self, owner: &[u8], after: u64) -> impl Iterator<Item = u64> + '_ {
        self.owners
            .get(owner)
            .into_iter()
            .flat_map(move |set| set.range(after.saturating_add(1)..).copied())
    }

    /// How many entries there are, in all mailboxes.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.owners.values().map(BTreeSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_apply_in_order_and_empty_mailboxes_go() {
        let mut index = Index::default();
        let mut m = Moves::default();
        m.add(b"a", 3);
        m.add(b"a", 1);
        m.add(b"b", 2);
        index.apply(m);
        assert_eq!(index.after(b"a", 0).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(index.after(b"a", 1).collect::<Vec<_>>(), [3]);
        assert_eq!(index.after(b"a", u64::MAX).count(), 0);
        let mut m = Moves::default();
        m.remove(b"b", 2);
        m.remove(b"c", 9);
        index.apply(m);
        assert_eq!(index.after(b"b", 0).count(), 0);
        assert!(!index.owners.contains_key(b"b".as_slice()));
        assert_eq!(index.len(), 2);
    }
}
