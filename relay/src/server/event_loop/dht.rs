//! DHT events: inbound records checked before they are stored (`server::dht::Puts`) and,
//! once stored, kept in the relay's database for its next start; and other relays added to
//! the routing table under the addresses they listen on.
//!
//! Uses nothing but the loop's state.

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use libp2p::{
    PeerId, identify,
    kad::{self, store::RecordStore},
};

use super::{EventLoop, now_ms};
use crate::server::{dht, storage};

impl EventLoop {
    pub(super) fn on_kad_event(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => {
                let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
                    return;
                };
                let now = Instant::now();
                let key = record.key.clone();
                match self.dht_puts.admit(kad.store_mut(), source, record, now) {
                    Ok(()) => {
                        self.metrics.dht_stored.fetch_add(1, Relaxed);
                        tracing::debug!(%source, "DHT record stored");
                        // Kept for the next start (copied only once it passed its checks);
                        // served from memory meanwhile.
                        let ttl = Duration::from_secs(self.cfg.dht.record_ttl_secs);
                        let row = kad
                            .store_mut()
                            .get(&key)
                            .map(|stored| dht::row(&stored, now, now_ms(), ttl));
                        if let Some(row) = row
                            && self.storage.submit(storage::Op::PutDhtRecord(row)).is_err()
                        {
                            tracing::debug!("storage busy; a DHT record is kept in memory only");
                        }
                    }
                    Err(refusal) => {
                        self.metrics.dht_refused.fetch_add(1, Relaxed);
                        tracing::debug!(%source, %refusal, "DHT record refused");
                    }
                }
            }
            other => tracing::trace!(event = ?other, "DHT event"),
        }
    }

    /// A peer that serves the DHT (another relay; nodes are clients and do not say so) is
    /// added to the routing table under the addresses it listens on, so the relay can
    /// point others to it.
    pub(super) fn on_identified(&mut self, peer: PeerId, info: &identify::Info) {
        if !info.protocols.contains(&crate::dht::PROTOCOL) {
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            for addr in &info.listen_addrs {
                kad.add_address(&peer, addr.clone());
            }
        }
    }
}
