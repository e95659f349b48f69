//! An in-memory implementation of the crypto-facing storage traits, for unit tests of code
//! written against them (tern-crypto's group layer, the node). Never for a real device: it
//! forgets everything on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use crate::consts::MAX_ARCHIVED_SESSIONS;
use crate::sessions::{
    InboundGroupSession, OutboundGroupSession, PairwiseSession, ReplayLedger, SenderKeyStore,
    SessionStore,
};

/// In-memory sessions, sender keys and replay ledger.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    /// Per remote device: current session first, then archived ones, most recently used first.
    sessions: BTreeMap<String, Vec<PairwiseSession>>,
    outbound: BTreeMap<String, OutboundGroupSession>,
    inbound: BTreeMap<String, InboundGroupSession>,
    ledger: BTreeSet<(String, u32)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemoryStore {
    type Error = Infallible;

    fn current_session(&self, peer_device: &str) -> Result<Option<PairwiseSession>, Infallible> {
        Ok(self
            .sessions
            .get(peer_device)
            .and_then(|v| v.first().cloned()))
    }

    fn archived_sessions(&self, peer_device: &str) -> Result<Vec<PairwiseSession>, Infallible> {
        Ok(self
            .sessions
            .get(peer_device)
            .map(|v| v.iter().skip(1).cloned().collect())
            .unwrap_or_default())
    }

    fn save_session(
        &mut self,
        peer_device: &str,
        session_id: &str,
        pickle: &[u8],
        now_ms: i64,
    ) -> Result<(), Infallible> {
        let list = self.sessions.entry(peer_device.to_owned()).or_default();
        let created_at_ms = match list.iter().position(|s| s.session_id == session_id) {
            Some(i) => list.remove(i).created_at_ms,
            None => now_ms,
        };
        list.insert(
            0,
            PairwiseSession {
                session_id: session_id.to_owned(),
                pickle: pickle.to_vec(),
                created_at_ms,
                used_at_ms: now_ms,
            },
        );
        list.truncate(1 + MAX_ARCHIVED_SESSIONS as usize);
        Ok(())
    }
}

impl SenderKeyStore for MemoryStore {
    type Error = Infallible;

    fn outbound_group_session(
        &self,
        group_id: &str,
    ) -> Result<Option<OutboundGroupSession>, Infallible> {
        Ok(self.outbound.get(group_id).cloned())
    }

    fn save_outbound_group_session(
        &mut self,
        session: &OutboundGroupSession,
    ) -> Result<(), Infallible> {
        self.outbound
            .insert(session.group_id.clone(), session.clone());
        Ok(())
    }

    fn inbound_group_session(
        &self,
        session_id: &str,
    ) -> Result<Option<InboundGroupSession>, Infallible> {
        Ok(self.inbound.get(session_id).cloned())
    }

    fn save_inbound_group_session(
        &mut self,
        session: &InboundGroupSession,
    ) -> Result<(), Infallible> {
        self.inbound
            .insert(session.session_id.clone(), session.clone());
        Ok(())
    }
}

impl ReplayLedger for MemoryStore {
    type Error = Infallible;

    fn is_replay(&self, session_id: &str, index: u32) -> Result<bool, Infallible> {
        Ok(self.ledger.contains(&(session_id.to_owned(), index)))
    }

    fn record(&mut self, session_id: &str, index: u32) -> Result<(), Infallible> {
        self.ledger.insert((session_id.to_owned(), index));
        Ok(())
    }

    fn forget_below(&mut self, session_id: &str, index: u32) -> Result<(), Infallible> {
        self.ledger.retain(|(s, i)| s != session_id || *i >= index);
        Ok(())
    }
}
