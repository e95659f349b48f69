//! Deposit grants (see `tern_crypto::grant`) and mail kept apart from unknown senders.
//!
//! - `grants_held`: per remote device, the grant it issued this user, shown (as a token)
//!   when depositing into that device's mailboxes.
//! - `grant_epochs`: per user this device granted, the revocation epoch its grant is derived
//!   with (absent: 0). Grants themselves are derived, not stored.
//! - `quarantine`: mail from devices of no known user, taken out of the relay's mailbox so it
//!   cannot pin it, and read again once the sender becomes known. Bounded by the caller.

use rusqlite::params;

use crate::error::{Context, ReadError, WriteError};
use crate::store::{Store, Tx};

/// A ciphertext kept apart until its sender is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Row id.
    pub id: i64,
    /// The sending device (peer id string).
    pub sender: String,
    /// When it was kept (ms since the epoch).
    pub kept_at_ms: i64,
    /// The ciphertext.
    pub payload: Vec<u8>,
}

impl Tx<'_> {
    /// Records the grant `device` issued this user (replacing an older one).
    pub fn set_held_grant(
        &mut self,
        device: &str,
        grant: &[u8; 32],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        self.tx
            .prepare_cached(
                "INSERT INTO grants_held (device, grant, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device) DO UPDATE SET grant = excluded.grant,
                 updated_at_ms = excluded.updated_at_ms",
            )
            .and_then(|mut s| s.execute(params![device, grant.as_slice(), now_ms]))
            .write_ctx("save held grant")?;
        Ok(())
    }

    /// Forgets the grant of `device` (its relay refused it).
    pub fn forget_held_grant(&mut self, device: &str) -> Result<(), WriteError> {
        self.tx
            .execute("DELETE FROM grants_held WHERE device = ?1", [device])
            .write_ctx("forget held grant")?;
        Ok(())
    }

    /// Moves `user`'s grant to its next epoch (revoking the current one); the new epoch.
    pub fn bump_grant_epoch(&mut self, user: &str) -> Result<u32, WriteError> {
        let epoch: i64 = self
            .tx
            .query_row(
                "INSERT INTO grant_epochs (user, epoch) VALUES (?1, 1)
                 ON CONFLICT(user) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                [user],
                |r| r.get(0),
            )
            .write_ctx("bump grant epoch")?;
        Ok(u32::try_from(epoch).unwrap_or(u32::MAX))
    }

    /// Keeps a ciphertext from an unknown device.
    pub fn quarantine(
        &mut self,
        sender: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        self.tx
            .prepare_cached(
                "INSERT INTO quarantine (sender, kept_at_ms, payload) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![sender, now_ms, payload]))
            .write_ctx("quarantine mail")?;
        Ok(())
    }

    /// Drops quarantined rows (read, or expired).
    pub fn release_quarantined(&mut self, ids: &[i64]) -> Result<(), WriteError> {
        let mut s = self
            .tx
            .prepare_cached("DELETE FROM quarantine WHERE id = ?1")
            .write_ctx("release quarantined mail")?;
        for id in ids {
            s.execute([id]).write_ctx("release quarantined mail")?;
        }
        Ok(())
    }

    /// Drops quarantined mail kept before `before_ms`; how many rows went.
    pub fn expire_quarantine(&mut self, before_ms: i64) -> Result<usize, WriteError> {
        self.tx
            .execute("DELETE FROM quarantine WHERE kept_at_ms < ?1", [before_ms])
            .write_ctx("expire quarantined mail")
    }
}

impl Store {
    /// Every held grant: device → grant bytes.
    pub fn held_grants(&self) -> Result<Vec<(String, [u8; 32])>, ReadError> {
        let rows: Vec<(String, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT device, grant FROM grants_held")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .read_ctx("read held grants")?;
        Ok(rows
            .into_iter()
            .filter_map(|(d, g)| <[u8; 32]>::try_from(g).ok().map(|g| (d, g)))
            .collect())
    }

    /// Every user whose grant was revoked at least once, with its current epoch.
    pub fn grant_epochs(&self) -> Result<Vec<(String, u32)>, ReadError> {
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare_cached("SELECT user, epoch FROM grant_epochs")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .read_ctx("read grant epochs")?;
        Ok(rows
            .into_iter()
            .map(|(u, e)| (u, u32::try_from(e).unwrap_or(u32::MAX)))
            .collect())
    }

    /// Quarantined mail: rows and bytes held, per sender and in all.
    pub fn quarantine_fill(&self, sender: &str) -> Result<(u64, u64, u64), ReadError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0),
                        COALESCE(SUM(sender = ?1), 0) FROM quarantine",
                [sender],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                        r.get::<_, i64>(2)?.max(0) as u64,
                    ))
                },
            )
            .read_ctx("read quarantine fill")
    }

    /// What the quarantine holds: (messages, sending devices).
    pub fn quarantine_summary(&self) -> Result<(u64, u64), ReadError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COUNT(DISTINCT sender) FROM quarantine",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                    ))
                },
            )
            .read_ctx("read quarantine summary")
    }

    /// Quarantined mail from the given devices, oldest first, at most `limit`.
    pub fn quarantined_from(
        &self,
        senders: &[String],
        limit: usize,
    ) -> Result<Vec<Quarantined>, ReadError> {
        let mut out = Vec::new();
        let mut s = self
            .conn
            .prepare_cached(
                "SELECT id, sender, kept_at_ms, payload FROM quarantine WHERE sender = ?1
                 ORDER BY id LIMIT ?2",
            )
            .read_ctx("read quarantined mail")?;
        for sender in senders {
            let rows = s
                .query_map(params![sender, limit as i64], |r| {
                    Ok(Quarantined {
                        id: r.get(0)?,
                        sender: r.get(1)?,
                        kept_at_ms: r.get(2)?,
                        payload: r.get(3)?,
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .read_ctx("read quarantined mail")?;
            out.extend(rows);
        }
        out.sort_by_key(|q| q.id);
        out.truncate(limit);
        Ok(out)
    }

    /// The devices with quarantined mail.
    pub fn quarantined_senders(&self) -> Result<Vec<String>, ReadError> {
        self.conn
            .prepare_cached("SELECT DISTINCT sender FROM quarantine")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .read_ctx("read quarantined senders")
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Options, Store};
    use crate::{StorageKey, Unlock};

    fn store(dir: &tempfile::TempDir) -> Store {
        let mut k = [7u8; 32];
        let key = StorageKey::from_bytes(&mut k);
        Store::open_with(
            &dir.path().join("s.db"),
            Unlock::Key(&key),
            &Options::default(),
        )
        .unwrap()
    }

    #[test]
    fn grants_and_epochs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.transaction(|tx| {
            tx.set_held_grant("dev-a", &[1; 32], 1)?;
            tx.set_held_grant("dev-a", &[2; 32], 2)?;
            tx.set_held_grant("dev-b", &[3; 32], 2)?;
            tx.forget_held_grant("dev-b")?;
            assert_eq!(tx.bump_grant_epoch("u")?, 1);
            assert_eq!(tx.bump_grant_epoch("u")?, 2);
            Ok::<_, crate::WriteError>(())
        })
        .unwrap();
        assert_eq!(
            s.held_grants().unwrap(),
            vec![("dev-a".to_owned(), [2; 32])]
        );
        assert_eq!(s.grant_epochs().unwrap(), vec![("u".to_owned(), 2)]);
    }

    #[test]
    fn quarantine_keeps_releases_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.transaction(|tx| {
            tx.quarantine("x", b"one", 10)?;
            tx.quarantine("y", b"two!", 20)?;
            tx.quarantine("x", b"three", 30)
        })
        .unwrap();
        assert_eq!(s.quarantine_fill("x").unwrap(), (3, 12, 2));
        let from_x = s.quarantined_from(&["x".to_owned()], 10).unwrap();
        assert_eq!(from_x.len(), 2);
        assert_eq!(from_x[0].payload, b"one");
        s.transaction(|tx| tx.release_quarantined(&[from_x[0].id]))
            .unwrap();
        assert_eq!(s.transaction(|tx| tx.expire_quarantine(25)).unwrap(), 1);
        let mut left = s.quarantined_senders().unwrap();
        left.sort();
        assert_eq!(left, vec!["x".to_owned()]);
    }
}
