//! Tern's DHT from the node's side (`tern_relay::dht`): the node is a Kademlia client
//! (`Mode::Client`: it asks and publishes, it stores and answers nothing for others) that
//! knows the relays it is told of (home relays and contacts' relays) as its way in. The
//! values are relay records; this module moves bytes, and the engine verifies every value
//! before it uses it (`engine::dht`).

use std::{collections::HashMap, time::Duration};

use libp2p::{
    PeerId,
    kad::{
        self,
        store::{MemoryStore, MemoryStoreConfig},
    },
};
use tokio::sync::oneshot;

use super::{Client, Command, EventLoop, NetError};

/// Most values one lookup collects (one per relay that answers with a record); the engine
/// keeps the newest that verifies.
pub const MAX_FOUND: usize = 8;

/// How often the node publishes its own record again, unchanged (kad's publication job),
/// so it outlives the relays' record lifetime and reaches relays that joined since.
pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// A DHT command to the event loop.
#[derive(Debug)]
pub(super) enum DhtCommand {
    /// Publishes `value` under `key`; answers once the closest relays have been asked.
    Put {
        key: [u8; 32],
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Looks `key` up; answers with the values found (at most [`MAX_FOUND`]).
    Get {
        key: [u8; 32],
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
}

/// A lookup or publication waiting for its query to end.
pub(super) enum Pending {
    Put(oneshot::Sender<Result<(), NetError>>),
    Get {
        found: Vec<Vec<u8>>,
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
}

/// The node's Kademlia behaviour: a client, with room for its own record only.
pub(super) fn behaviour(local: PeerId) -> kad::Behaviour<MemoryStore> {
    let store = MemoryStore::with_config(
        local,
        MemoryStoreConfig {
            max_records: 4,
            max_value_bytes: tern_crypto::consts::MAX_RELAY_RECORD_BYTES + 1,
            ..MemoryStoreConfig::default()
        },
    );
    let mut c = tern_relay::dht::config();
    c.set_publication_interval(Some(REPUBLISH_INTERVAL))
        // The relays decide how long they keep a record; the node's own copy stays.
        .set_record_ttl(None)
        .set_replication_interval(None);
    let mut kad = kad::Behaviour::with_config(local, store, c);
    kad.set_mode(Some(kad::Mode::Client));
    kad
}

impl Client {
    /// Publishes this user's relay record (`value`, already signed) under `key`.
    pub async fn dht_put(&self, key: [u8; 32], value: Vec<u8>) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Dht(DhtCommand::Put { key, value, reply }))
            .await?;
        rx.await.map_err(|_| NetError::Closed)?
    }

    /// Looks a relay record up: the values found, unverified.
    pub async fn dht_get(&self, key: [u8; 32]) -> Result<Vec<Vec<u8>>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Dht(DhtCommand::Get { key, reply }))
            .await?;
        rx.await.map_err(|_| NetError::Closed)
    }
}

impl EventLoop {
    pub(super) fn on_dht_command(&mut self, cmd: DhtCommand) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match cmd {
            DhtCommand::Put { key, value, reply } => {
                let record = kad::Record::new(tern_relay::dht::record_key(&key), value);
                match kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        self.dht.insert(id, Pending::Put(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Transport(format!("{e:?}"))));
                    }
                }
            }
            DhtCommand::Get { key, reply } => {
                let id = kad.get_record(tern_relay::dht::record_key(&key));
                self.dht.insert(
                    id,
                    Pending::Get {
                        found: Vec::new(),
                        reply,
                    },
                );
            }
        }
    }

    pub(super) fn on_kad(&mut self, ev: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = ev
        else {
            return;
        };
        match (self.dht.get_mut(&id), result) {
            (
                Some(Pending::Get { found, .. }),
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))),
            ) if found.len() < MAX_FOUND && !found.contains(&r.record.value) => {
                found.push(r.record.value);
            }
            (Some(Pending::Put(_)), kad::QueryResult::PutRecord(result)) => {
                if let Some(Pending::Put(reply)) = self.dht.remove(&id) {
                    let _ = reply.send(
                        result
                            .map(|_| ())
                            .map_err(|e| NetError::Transport(e.to_string())),
                    );
                }
                return;
            }
            _ => {}
        }
        if step.last
            && let Some(Pending::Get { found, reply }) = self.dht.remove(&id)
        {
            let _ = reply.send(found);
        }
    }
}

/// Lookups and publications in flight, by query.
pub(super) type Queries = HashMap<kad::QueryId, Pending>;
