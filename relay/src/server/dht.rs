//! The relay as a server of Tern's Kademlia DHT ([`crate::dht`]): its Kademlia behaviour
//! (off when `[dht] enabled = false`), and the check every inbound put passes before its
//! record is stored (`StoreInserts::FilterBoth` hands each one to [`Puts::admit`]).
//!
//! A record is stored only if its peer is within its put rate, it is within the size cap,
//! it verifies as a signed relay record (signature, device list, bounds), it sits under its
//! own key, and it is newer than the record already held there. Provider records are never
//! stored: Tern's DHT carries relay records only.

use std::time::{Duration, Instant};

use libp2p::{
    PeerId,
    kad::{
        self,
        store::{self, MemoryStore, MemoryStoreConfig, RecordStore},
    },
    swarm::behaviour::toggle::Toggle,
};
use tern_crypto::relay_record::{RelayRecordError, SignedRelayRecord};

use super::{config::DhtConfig, ratelimit::Limiter, storage::DhtRow};

/// The relay's Kademlia behaviour.
pub(crate) type Kad = kad::Behaviour<MemoryStore>;

/// The relay's Kademlia behaviour as `cfg` asks: a server with a bounded in-memory store,
/// or none.
pub(crate) fn behaviour(peer: PeerId, cfg: &DhtConfig) -> Toggle<Kad> {
    if !cfg.enabled {
        return Toggle::from(None);
    }
    let store = MemoryStore::with_config(
        peer,
        MemoryStoreConfig {
            max_records: cfg.max_records,
            // The store refuses a value of this size or more; the cap itself is allowed.
            max_value_bytes: cfg.max_record_bytes.saturating_add(1),
            ..MemoryStoreConfig::default()
        },
    );
    let mut c = crate::dht::config();
    c.set_record_ttl(Some(Duration::from_secs(cfg.record_ttl_secs)))
        // A relay publishes nothing of its own; it passes on what it holds to the peers
        // closest to each key (the replication job), who check it again.
        .set_publication_interval(None);
    let mut kad = kad::Behaviour::with_config(peer, store, c);
    kad.set_mode(Some(kad::Mode::Server));
    Toggle::from(Some(kad))
}

/// The row that keeps `record`, stored at `now` (`now_ms` since the epoch), for the next
/// start; a record without an expiry expires `ttl` from now.
pub(crate) fn row(record: &kad::Record, now: Instant, now_ms: u64, ttl: Duration) -> DhtRow {
    let left = record
        .expires
        .map_or(ttl, |e| e.saturating_duration_since(now));
    DhtRow {
        key: record.key.to_vec(),
        value: record.value.clone(),
        expires_ms: now_ms.saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// Puts the records kept before a restart back into `store`, each checked again as an
/// inbound put is ([`store_checked`]) and given the time it had left. Returns how many it
/// holds.
pub(crate) fn restore(
    store: &mut MemoryStore,
    cfg: &DhtConfig,
    rows: Vec<DhtRow>,
    now: Instant,
    now_ms: u64,
) -> usize {
    rows.into_iter()
        .filter_map(|r| {
            let left = Duration::from_millis(r.expires_ms.saturating_sub(now_ms));
            let mut record = kad::Record::new(kad::RecordKey::from(r.key), r.value);
            record.expires = Some(now + left);
            store_checked(store, record, cfg.max_record_bytes, now).ok()
        })
        .count()
}

/// Why an inbound record was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer put more records than its rate allows.
    #[error("peer over its put rate")]
    RateLimited,
    /// The record is over the configured size.
    #[error("record of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The record does not verify, is not under its own key, or is not newer.
    #[error(transparent)]
    Invalid(#[from] RelayRecordError),
    /// The store holds as many unexpired records as it may.
    #[error("record store is full")]
    Full,
}

/// The checks on inbound puts, with each peer's put rate.
#[derive(Debug)]
pub struct Puts {
    rate: Limiter<PeerId>,
    max_bytes: usize,
}

impl Puts {
    /// Checks as `cfg` says.
    pub fn new(cfg: &DhtConfig) -> Self {
        Self {
            rate: Limiter::new(cfg.puts_per_sec, cfg.puts_burst),
            max_bytes: cfg.max_record_bytes,
        }
    }

    /// Forgets the rates of peers that have been quiet long enough to be full again.
    pub fn prune(&mut self, now: Instant) {
        self.rate.prune(now);
    }

    /// Checks `record`, put by `source`, and stores it in `store` if it passes. The cheap
    /// checks come first, so a flood costs no signature checks.
    pub fn admit(
        &mut self,
        store: &mut MemoryStore,
        source: PeerId,
        record: kad::Record,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.rate
            .take(&source, 1.0, now)
            .map_err(|_| Refusal::RateLimited)?;
        store_checked(store, record, self.max_bytes, now)
    }
}

/// Stores `record` in `store` if it is at most `max_bytes`, verifies as a signed relay
/// record under its own key, and is newer than the record held there; when the store is
/// full, expired records make room first.
fn store_checked(
    store: &mut MemoryStore,
    record: kad::Record,
    max_bytes: usize,
    now: Instant,
) -> Result<(), Refusal> {
    if record.value.len() > max_bytes {
        return Err(Refusal::TooLarge(record.value.len()));
    }
    let offered = SignedRelayRecord::from_bytes(&record.value)?;
    offered.check_key(record.key.as_ref())?;
    if let Some(held) = store.get(&record.key) {
        // What is held passed these checks when it was stored; only its version counts.
        if let Ok(held) = SignedRelayRecord::from_bytes(&held.value) {
            offered.check_replaces(&held)?;
        }
    }
    let len = record.value.len();
    match store.put(record.clone()) {
        Ok(()) => Ok(()),
        Err(store::Error::MaxRecords) => {
            let expired: Vec<_> = store
                .records()
                .filter(|r| r.is_expired(now))
                .map(|r| r.key.clone())
                .collect();
            for key in &expired {
                store.remove(key);
            }
            store.put(record).map_err(|_| Refusal::Full)
        }
        Err(_) => Err(Refusal::TooLarge(len)),
    }
}

#[cfg(test)]
mod tests {
    use tern_crypto::{
        DeviceKeys, DeviceList, IdentityKey,
        relay_record::{RelayRecord, dht_key},
    };

    use super::*;

    fn signed(id: &IdentityKey, version: u64) -> SignedRelayRecord {
        let cert = DeviceKeys::generate()
            .unwrap()
            .certify(id, "laptop", 1)
            .unwrap();
        RelayRecord {
            user_id: id.user_id(),
            identity_key: id.public(),
            version,
            issued_at: 1,
            relays: vec![format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", PeerId::random())],
            device_list: DeviceList::first(id, cert, 1).sign(id).unwrap(),
        }
        .sign(id)
        .unwrap()
    }

    fn record(r: &SignedRelayRecord, key: &[u8; 32]) -> kad::Record {
        kad::Record::new(crate::dht::record_key(key), r.as_bytes().to_vec())
    }

    fn setup(cfg: DhtConfig) -> (Puts, MemoryStore) {
        let store = MemoryStore::with_config(
            PeerId::random(),
            MemoryStoreConfig {
                max_records: cfg.max_records,
                max_value_bytes: cfg.max_record_bytes + 1,
                ..MemoryStoreConfig::default()
            },
        );
        (Puts::new(&cfg), store)
    }

    #[test]
    fn newer_replaces_older_and_stale_is_refused() {
        let (mut puts, mut store) = setup(DhtConfig::default());
        let id = IdentityKey::generate().unwrap();
        let key = dht_key(&id.user_id(), &id.public());
        let (v1, v2) = (signed(&id, 1), signed(&id, 2));
        let now = Instant::now();
        let peer = PeerId::random();
        puts.admit(&mut store, peer, record(&v2, &key), now)
            .unwrap();
        for stale in [&v1, &v2] {
            assert!(matches!(
                puts.admit(&mut store, peer, record(stale, &key), now),
                Err(Refusal::Invalid(RelayRecordError::Stale { current: 2, .. }))
            ));
        }
        let held = store.get(&crate::dht::record_key(&key)).unwrap();
        assert_eq!(held.value, v2.as_bytes());
        puts.admit(&mut store, peer, record(&signed(&id, 3), &key), now)
            .unwrap();
    }

    #[test]
    fn wrong_key_junk_and_oversize_refused() {
        let (mut puts, mut store) = setup(DhtConfig {
            max_record_bytes: 4096,
            ..DhtConfig::default()
        });
        let (id, other) = (
            IdentityKey::generate().unwrap(),
            IdentityKey::generate().unwrap(),
        );
        let now = Instant::now();
        let peer = PeerId::random();
        let under_other = dht_key(&other.user_id(), &other.public());
        assert!(matches!(
            puts.admit(&mut store, peer, record(&signed(&id, 1), &under_other), now),
            Err(Refusal::Invalid(RelayRecordError::WrongKey))
        ));
        let junk = kad::Record::new(crate::dht::record_key(&under_other), vec![1, 15, 0xa0]);
        assert!(matches!(
            puts.admit(&mut store, peer, junk, now),
            Err(Refusal::Invalid(_))
        ));
        let big = kad::Record::new(crate::dht::record_key(&under_other), vec![0; 4097]);
        assert!(matches!(
            puts.admit(&mut store, peer, big, now),
            Err(Refusal::TooLarge(4097))
        ));
        assert_eq!(store.records().count(), 0);
    }

    fn kept(r: &SignedRelayRecord, key: &[u8; 32], expires_ms: u64) -> DhtRow {
        DhtRow {
            key: crate::dht::record_key(key).to_vec(),
            value: r.as_bytes().to_vec(),
            expires_ms,
        }
    }

    /// Records read back at start-up are checked like inbound puts: only signed relay
    /// records under their own key, the newest of a key, with the time they had left.
    #[test]
    fn records_kept_are_checked_again_when_read_back() {
        let (_, mut store) = setup(DhtConfig::default());
        let (id, other) = (
            IdentityKey::generate().unwrap(),
            IdentityKey::generate().unwrap(),
        );
        let key = dht_key(&id.user_id(), &id.public());
        let other_key = dht_key(&other.user_id(), &other.public());
        let (now, now_ms) = (Instant::now(), 1_000_000);
        let mut junk = kept(&signed(&other, 1), &other_key, now_ms + 5_000);
        junk.value = vec![1, 15, 0xa0];
        let v2 = signed(&id, 2);
        let rows = vec![
            kept(&v2, &key, now_ms + 60_000),
            // Older than the one before it under the same key.
            kept(&signed(&id, 1), &key, now_ms + 90_000),
            // Under another user's key.
            kept(&signed(&id, 3), &other_key, now_ms + 60_000),
            junk,
        ];
        assert_eq!(
            restore(&mut store, &DhtConfig::default(), rows, now, now_ms),
            1
        );
        let held = store.get(&crate::dht::record_key(&key)).unwrap();
        assert_eq!(held.value, v2.as_bytes());
        let left = held.expires.unwrap().duration_since(now);
        assert_eq!(left, Duration::from_secs(60));
        assert!(store.get(&crate::dht::record_key(&other_key)).is_none());
    }

    /// The row kept for a stored record carries the time it has left from now on.
    #[test]
    fn a_row_keeps_the_time_left() {
        let id = IdentityKey::generate().unwrap();
        let key = dht_key(&id.user_id(), &id.public());
        let now = Instant::now();
        let mut r = record(&signed(&id, 1), &key);
        let ttl = Duration::from_secs(100);
        assert_eq!(row(&r, now, 5_000, ttl).expires_ms, 105_000);
        r.expires = Some(now + Duration::from_secs(7));
        let kept = row(&r, now, 5_000, ttl);
        assert_eq!(kept.expires_ms, 12_000);
        assert_eq!(kept.value, r.value);
        assert_eq!(kept.key, r.key.to_vec());
    }

    #[test]
    fn puts_per_peer_and_records_are_bounded() {
        let (mut puts, mut store) = setup(DhtConfig {
            max_records: 2,
            puts_burst: 3.0,
            puts_per_sec: 0.001,
            ..DhtConfig::default()
        });
        let now = Instant::now();
        let flooder = PeerId::random();
        let ids: Vec<_> = (0..4).map(|_| IdentityKey::generate().unwrap()).collect();
        let put = |puts: &mut Puts, store: &mut MemoryStore, peer, id: &IdentityKey| {
            let key = dht_key(&id.user_id(), &id.public());
            puts.admit(store, peer, record(&signed(id, 1), &key), now)
        };
        put(&mut puts, &mut store, flooder, &ids[0]).unwrap();
        put(&mut puts, &mut store, flooder, &ids[1]).unwrap();
        // The store is full of live records: a third is refused, whoever puts it.
        assert!(matches!(
            put(&mut puts, &mut store, flooder, &ids[2]),
            Err(Refusal::Full)
        ));
        // The flooder's burst is spent; another peer is not held back by it.
        assert!(matches!(
            put(&mut puts, &mut store, flooder, &ids[3]),
            Err(Refusal::RateLimited)
        ));
        assert!(matches!(
            put(&mut puts, &mut store, PeerId::random(), &ids[3]),
            Err(Refusal::Full)
        ));
    }
}
