//! What the crypto layer keeps: pairwise sessions, sender-key (group) sessions, the replay
//! ledger. One small trait per record kind, in the manner of libsignal's storage traits, so
//! tern-crypto's code can be written against them and tested with `MemoryStore` (feature `memory`).
//! Pickles are opaque, versioned byte blobs from tern-crypto: the store never looks inside.

use rusqlite::{OptionalExtension, params};

use crate::consts::{MAX_ARCHIVED_SESSIONS, MAX_BLOB_BYTES};
use crate::error::{Context, WriteError};
use crate::messages::{check_len, to_i64};
use crate::store::Tx;
pub use tern_crypto::group::ReplayLedger;

/// A pairwise (Olm) session with one remote device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PairwiseSession {
    /// Session id.
    pub session_id: String,
    /// The pickle.
    pub pickle: Vec<u8>,
    /// When it was first saved.
    pub created_at_ms: i64,
    /// When it was last saved.
    pub used_at_ms: i64,
}

/// This device's outbound sender-key (Megolm) session for a group.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutboundGroupSession {
    /// The group.
    pub group_id: String,
    /// Session id.
    pub session_id: String,
    /// The pickle.
    pub pickle: Vec<u8>,
    /// Messages encrypted with it so far (for rotation after N messages).
    pub message_count: u64,
    /// When it was created (for rotation after T days).
    pub created_at_ms: i64,
}

/// Another device's sender-key session, received over Olm.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InboundGroupSession {
    /// Session id.
    pub session_id: String,
    /// The group.
    pub group_id: String,
    /// The sending user.
    pub sender_user: String,
    /// The sending device.
    pub sender_device: String,
    /// The pickle.
    pub pickle: Vec<u8>,
    /// When the key arrived.
    pub received_at_ms: i64,
}

/// Pairwise sessions per remote device: a current one and up to [`MAX_ARCHIVED_SESSIONS`]
/// archived ones (Sesame).
pub trait SessionStore {
    /// The error of this store.
    type Error;
    /// The current session with a remote device.
    fn current_session(&self, peer_device: &str) -> Result<Option<PairwiseSession>, Self::Error>;
    /// The archived sessions with a remote device, most recently used first.
    fn archived_sessions(&self, peer_device: &str) -> Result<Vec<PairwiseSession>, Self::Error>;
    /// Saves a session's state and makes it the current one (the session used last is
    /// current, as Sesame has it); the previous current one is archived and the oldest
    /// archived ones beyond the bound are dropped.
    fn save_session(
        &mut self,
        peer_device: &str,
        session_id: &str,
        pickle: &[u8],
        now_ms: i64,
    ) -> Result<(), Self::Error>;
}

/// Sender-key sessions.
pub trait SenderKeyStore {
    /// The error of this store.
    type Error;
    /// This device's outbound session for a group.
    fn outbound_group_session(
        &self,
        group_id: &str,
    ) -> Result<Option<OutboundGroupSession>, Self::Error>;
    /// Saves (replaces) this device's outbound session for its group.
    fn save_outbound_group_session(
        &mut self,
        session: &OutboundGroupSession,
    ) -> Result<(), Self::Error>;
    /// An inbound session by id.
    fn inbound_group_session(
        &self,
        session_id: &str,
    ) -> Result<Option<InboundGroupSession>, Self::Error>;
    /// Saves (replaces) an inbound session.
    fn save_inbound_group_session(
        &mut self,
        session: &InboundGroupSession,
    ) -> Result<(), Self::Error>;
}

/// One crypto-state change to write in the same transaction as a message.
#[derive(Clone, Copy, Debug)]
pub enum CryptoUpdate<'a> {
    /// A pairwise session's new state (it becomes current).
    Session {
        /// The remote device.
        peer_device: &'a str,
        /// Session id.
        session_id: &'a str,
        /// New pickle.
        pickle: &'a [u8],
    },
    /// This device's outbound group session's new state.
    OutboundGroup(&'a OutboundGroupSession),
    /// An inbound group session's new state.
    InboundGroup(&'a InboundGroupSession),
    /// A pairwise message was read: its digest goes into the ledger that tells a later copy
    /// (a duplicate) from a message whose key is gone (a loss).
    PairwiseSeen {
        /// The remote device.
        peer_device: &'a str,
        /// `tern_crypto::session::message_digest` of the ciphertext.
        digest: &'a [u8; 16],
    },
    /// A group message index to put in the replay ledger.
    Replay {
        /// Session id.
        session_id: &'a str,
        /// Message index.
        index: u32,
    },
}

impl Tx<'_> {
    /// Archives every session with `peer_device` (a revoked device): none is current, so
    /// nothing is encrypted with them again; they are kept as archived ones are.
    pub fn archive_sessions(&mut self, peer_device: &str) -> Result<(), WriteError> {
        const OP: &str = "archive sessions";
        self.tx
            .prepare_cached("UPDATE sessions SET current = 0 WHERE peer_device = ?1")
            .and_then(|mut s| s.execute([peer_device]))
            .write_ctx(OP)?;
        Ok(())
    }

    /// Applies crypto-state changes; `now_ms` stamps session use.
    pub fn apply_crypto(
        &mut self,
        updates: &[CryptoUpdate<'_>],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        for u in updates {
            match *u {
                CryptoUpdate::Session {
                    peer_device,
                    session_id,
                    pickle,
                } => self.save_session(peer_device, session_id, pickle, now_ms)?,
                CryptoUpdate::OutboundGroup(s) => self.save_outbound_group_session(s)?,
                CryptoUpdate::InboundGroup(s) => self.save_inbound_group_session(s)?,
                CryptoUpdate::Replay { session_id, index } => {
                    ReplayLedger::record(self, session_id, index)?
                }
                CryptoUpdate::PairwiseSeen {
                    peer_device,
                    digest,
                } => self.mark_pairwise_seen(peer_device, digest, now_ms)?,
            }
        }
        Ok(())
    }

    fn read_sessions(
        &self,
        op: &'static str,
        peer_device: &str,
        current: bool,
    ) -> Result<Vec<PairwiseSession>, WriteError> {
        self.tx
            .prepare_cached(
                "SELECT session_id, pickle, created_at_ms, used_at_ms FROM sessions \
                 WHERE peer_device = ?1 AND current = ?2 ORDER BY used_at_ms DESC, rowid DESC",
            )
            .and_then(|mut s| {
                s.query_map(params![peer_device, current], |r| {
                    Ok(PairwiseSession {
                        session_id: r.get(0)?,
                        pickle: r.get(1)?,
                        created_at_ms: r.get(2)?,
                        used_at_ms: r.get(3)?,
                    })
                })?
                .collect()
            })
            .write_ctx(op)
    }
}

impl SessionStore for Tx<'_> {
    type Error = WriteError;

    fn current_session(&self, peer_device: &str) -> Result<Option<PairwiseSession>, WriteError> {
        Ok(self
            .read_sessions("read current session", peer_device, true)?
            .into_iter()
            .next())
    }

    fn archived_sessions(&self, peer_device: &str) -> Result<Vec<PairwiseSession>, WriteError> {
        self.read_sessions("read archived sessions", peer_device, false)
    }

    fn save_session(
        &mut self,
        peer_device: &str,
        session_id: &str,
        pickle: &[u8],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "save session";
        check_len(OP, "session pickle", pickle.len(), MAX_BLOB_BYTES)?;
        self.tx
            .prepare_cached("UPDATE sessions SET current = 0 WHERE peer_device = ?1 AND current = 1 AND session_id <> ?2")
            .and_then(|mut s| s.execute(params![peer_device, session_id]))
            .write_ctx(OP)?;
        self.tx
            .prepare_cached(
                "INSERT INTO sessions (peer_device, session_id, pickle, created_at_ms, used_at_ms, current) \
                 VALUES (?1, ?2, ?3, ?4, ?4, 1) ON CONFLICT (peer_device, session_id) \
                 DO UPDATE SET pickle = excluded.pickle, used_at_ms = excluded.used_at_ms, current = 1",
            )
            .and_then(|mut s| s.execute(params![peer_device, session_id, pickle, now_ms]))
            .write_ctx(OP)?;
        self.tx
            .prepare_cached(
                "DELETE FROM sessions WHERE peer_device = ?1 AND current = 0 AND rowid NOT IN \
                 (SELECT rowid FROM sessions WHERE peer_device = ?1 AND current = 0 \
                  ORDER BY used_at_ms DESC, rowid DESC LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![peer_device, MAX_ARCHIVED_SESSIONS]))
            .write_ctx(OP)?;
        Ok(())
    }
}

impl SenderKeyStore for Tx<'_> {
    type Error = WriteError;

    fn outbound_group_session(
        &self,
        group_id: &str,
    ) -> Result<Option<OutboundGroupSession>, WriteError> {
        self.tx
            .prepare_cached(
                "SELECT group_id, session_id, pickle, message_count, created_at_ms FROM outbound_group_sessions WHERE group_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([group_id], |r| {
                    Ok(OutboundGroupSession {
                        group_id: r.get(0)?,
                        session_id: r.get(1)?,
                        pickle: r.get(2)?,
                        message_count: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                        created_at_ms: r.get(4)?,
                    })
                })
                .optional()
            })
            .write_ctx("read outbound group session")
    }

    fn save_outbound_group_session(&mut self, s: &OutboundGroupSession) -> Result<(), WriteError> {
        const OP: &str = "save outbound group session";
        check_len(OP, "group session pickle", s.pickle.len(), MAX_BLOB_BYTES)?;
        let count = to_i64(OP, "message count", s.message_count)?;
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO outbound_group_sessions (group_id, session_id, pickle, message_count, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| st.execute(params![s.group_id, s.session_id, s.pickle, count, s.created_at_ms]))
            .write_ctx(OP)?;
        Ok(())
    }

    fn inbound_group_session(
        &self,
        session_id: &str,
    ) -> Result<Option<InboundGroupSession>, WriteError> {
        self.tx
            .prepare_cached(
                "SELECT session_id, group_id, sender_user, sender_device, pickle, received_at_ms \
                 FROM inbound_group_sessions WHERE session_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([session_id], |r| {
                    Ok(InboundGroupSession {
                        session_id: r.get(0)?,
                        group_id: r.get(1)?,
                        sender_user: r.get(2)?,
                        sender_device: r.get(3)?,
                        pickle: r.get(4)?,
                        received_at_ms: r.get(5)?,
                    })
                })
                .optional()
            })
            .write_ctx("read inbound group session")
    }

    fn save_inbound_group_session(&mut self, s: &InboundGroupSession) -> Result<(), WriteError> {
        const OP: &str = "save inbound group session";
        check_len(OP, "group session pickle", s.pickle.len(), MAX_BLOB_BYTES)?;
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO inbound_group_sessions \
                 (session_id, group_id, sender_user, sender_device, pickle, received_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| {
                st.execute(params![s.session_id, s.group_id, s.sender_user, s.sender_device, s.pickle, s.received_at_ms])
            })
            .write_ctx(OP)?;
        Ok(())
    }
}

impl ReplayLedger for Tx<'_> {
    type Error = WriteError;

    fn is_replay(&self, session_id: &str, index: u32) -> Result<bool, WriteError> {
        self.tx
            .prepare_cached(
                "SELECT 1 FROM replay_ledger WHERE session_id = ?1 AND message_index = ?2",
            )
            .and_then(|mut s| s.exists(params![session_id, index]))
            .write_ctx("check replay ledger")
    }

    fn record(&mut self, session_id: &str, index: u32) -> Result<(), WriteError> {
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO replay_ledger (session_id, message_index) VALUES (?1, ?2)",
            )
            .and_then(|mut s| s.execute(params![session_id, index]))
            .write_ctx("record in replay ledger")?;
        Ok(())
    }

    fn forget_below(&mut self, session_id: &str, index: u32) -> Result<(), WriteError> {
        self.tx
            .prepare_cached(
                "DELETE FROM replay_ledger WHERE session_id = ?1 AND message_index < ?2",
            )
            .and_then(|mut s| s.execute(params![session_id, index]))
            .write_ctx("prune replay ledger")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, StorageKey, Store, Unlock};

    /// The behaviour every implementation must share, run against SQLite and memory alike.
    fn contract<S>(s: &mut S)
    where
        S: SessionStore
            + SenderKeyStore<Error = <S as SessionStore>::Error>
            + ReplayLedger<Error = <S as SessionStore>::Error>,
        <S as SessionStore>::Error: std::fmt::Debug,
    {
        assert!(s.current_session("d").unwrap().is_none());
        s.save_session("d", "s1", b"p1", 10).unwrap();
        s.save_session("d", "s1", b"p1b", 11).unwrap();
        let cur = s.current_session("d").unwrap().unwrap();
        assert_eq!(
            (
                cur.session_id.as_str(),
                cur.pickle.as_slice(),
                cur.created_at_ms,
                cur.used_at_ms
            ),
            ("s1", &b"p1b"[..], 10, 11)
        );
        assert!(s.archived_sessions("d").unwrap().is_empty());
        // A second session (a race, or a fresh one) becomes current; the first is archived.
        s.save_session("d", "s2", b"p2", 12).unwrap();
        assert_eq!(s.current_session("d").unwrap().unwrap().session_id, "s2");
        let archived: Vec<String> = s
            .archived_sessions("d")
            .unwrap()
            .into_iter()
            .map(|x| x.session_id)
            .collect();
        assert_eq!(archived, ["s1"]);
        // Using the archived one makes it current again (Sesame).
        s.save_session("d", "s1", b"p1c", 13).unwrap();
        assert_eq!(s.current_session("d").unwrap().unwrap().pickle, b"p1c");
        // The archive is bounded, oldest dropped first.
        for i in 0..(MAX_ARCHIVED_SESSIONS + 5) {
            s.save_session("d", &format!("n{i}"), b"x", 100 + i64::from(i))
                .unwrap();
        }
        let archived = s.archived_sessions("d").unwrap();
        assert_eq!(archived.len(), MAX_ARCHIVED_SESSIONS as usize);
        assert_eq!(
            archived[0].session_id,
            format!("n{}", MAX_ARCHIVED_SESSIONS + 3)
        );
        assert!(s.current_session("other").unwrap().is_none());

        let out = OutboundGroupSession {
            group_id: "g".into(),
            session_id: "o1".into(),
            pickle: b"op".to_vec(),
            message_count: 3,
            created_at_ms: 5,
        };
        s.save_outbound_group_session(&out).unwrap();
        assert_eq!(s.outbound_group_session("g").unwrap(), Some(out.clone()));
        let rotated = OutboundGroupSession {
            session_id: "o2".into(),
            message_count: 0,
            ..out
        };
        s.save_outbound_group_session(&rotated).unwrap();
        assert_eq!(s.outbound_group_session("g").unwrap(), Some(rotated));
        let inb = InboundGroupSession {
            session_id: "i1".into(),
            group_id: "g".into(),
            sender_user: "bob".into(),
            sender_device: "b1".into(),
            pickle: b"ip".to_vec(),
            received_at_ms: 9,
        };
        s.save_inbound_group_session(&inb).unwrap();
        assert_eq!(s.inbound_group_session("i1").unwrap(), Some(inb));
        assert!(s.inbound_group_session("nope").unwrap().is_none());

        assert!(!s.is_replay("i1", 0).unwrap());
        s.record("i1", 0).unwrap();
        s.record("i1", 0).unwrap();
        assert!(s.is_replay("i1", 0).unwrap());
        assert!(!s.is_replay("i1", 1).unwrap());
        assert!(!s.is_replay("i2", 0).unwrap());
        s.record("i1", 5).unwrap();
        s.record("i2", 0).unwrap();
        s.forget_below("i1", 5).unwrap();
        assert!(!s.is_replay("i1", 0).unwrap(), "forgotten");
        assert!(s.is_replay("i1", 5).unwrap(), "kept");
        assert!(s.is_replay("i2", 0).unwrap(), "other sessions untouched");
    }

    #[test]
    fn memory_store_meets_the_contract() {
        contract(&mut MemoryStore::new());
    }

    #[test]
    fn sqlite_store_meets_the_contract_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.db");
        let mut k = [3u8; 32];
        let key = StorageKey::from_bytes(&mut k);
        let mut store = Store::open(&path, Unlock::Key(&key)).unwrap();
        store
            .transaction(|tx| {
                contract(tx);
                Ok::<_, WriteError>(())
            })
            .unwrap();
        drop(store);
        let mut store = Store::open(&path, Unlock::Key(&key)).unwrap();
        store
            .transaction(|tx| {
                assert!(tx.is_replay("i1", 5)?);
                assert!(!tx.is_replay("i1", 0)?);
                assert_eq!(
                    tx.archived_sessions("d")?.len(),
                    MAX_ARCHIVED_SESSIONS as usize
                );
                assert!(tx.outbound_group_session("g")?.is_some());
                Ok::<_, WriteError>(())
            })
            .unwrap();
    }
}
