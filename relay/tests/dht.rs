//! The relay as a server of Tern's DHT, over the wire: a Kademlia client puts relay records
//! to a real `tern-relay`; the relay stores only a record that verifies, sits under its own
//! key and is newer than the one it holds, and answers lookups with that one.

mod support;

use support::{Relay, WAIT, eventually};
use tern_crypto::{
    DeviceKeys, DeviceList, IdentityKey,
    relay_record::{RelayRecord, SignedRelayRecord, dht_key},
};
use tern_relay::libp2p::{
    self, PeerId, SwarmBuilder,
    futures::StreamExt,
    identify,
    kad::{self, store::MemoryStore},
    noise,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "tern_relay::libp2p::swarm::derive_prelude")]
struct Client {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

fn client() -> libp2p::Swarm<Client> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let me = key.public().to_peer_id();
            let mut kad =
                kad::Behaviour::with_config(me, MemoryStore::new(me), tern_relay::dht::config());
            kad.set_mode(Some(kad::Mode::Client));
            Client {
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/test/1".into(),
                    key.public(),
                )),
            }
        })
        .unwrap()
        .build()
}

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

/// Runs the swarm until query `id` ends; the values found on the way that came from a peer.
async fn finish(swarm: &mut libp2p::Swarm<Client>, id: kad::QueryId) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(ClientEvent::Kad(kad::Event::OutboundQueryProgressed {
                id: done,
                result,
                step,
                ..
            })) = swarm.select_next_some().await
                && done == id
            {
                if let kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))) = result
                    && r.peer.is_some()
                {
                    found.push(r.record.value);
                }
                if step.last {
                    return;
                }
            }
        }
    })
    .await
    .expect("the query ended in time");
    found
}

#[tokio::test]
async fn only_verified_newer_records_are_stored_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let relay_peer = match relay.tcp.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("relay address without /p2p"),
    };
    let mut swarm = client();
    swarm
        .behaviour_mut()
        .kad
        .add_address(&relay_peer, relay.tcp.clone());

    let (id, other) = (
        IdentityKey::generate().unwrap(),
        IdentityKey::generate().unwrap(),
    );
    let key = tern_relay::dht::record_key(&dht_key(&id.user_id(), &id.public()));
    let (v1, v2, v3) = (signed(&id, 1), signed(&id, 2), signed(&id, 3));
    let mut forged = v3.as_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let puts = [
        (key.clone(), v2.as_bytes().to_vec()), // stored
        (key.clone(), v1.as_bytes().to_vec()), // stale
        (key.clone(), forged),                 // bad signature
        (
            // another user's key
            tern_relay::dht::record_key(&dht_key(&other.user_id(), &other.public())),
            v3.as_bytes().to_vec(),
        ),
    ];
    for (k, value) in puts {
        let q = swarm
            .behaviour_mut()
            .kad
            .put_record(kad::Record::new(k, value), kad::Quorum::One)
            .unwrap();
        finish(&mut swarm, q).await;
    }
    eventually(
        "the relay to count one record stored and three refused",
        || async {
            let stored = relay.metric("tern_relay_dht_records_stored_total").await;
            let refused = relay.metric("tern_relay_dht_records_refused_total").await;
            (stored == 1.0 && refused == 3.0).then_some(())
        },
    )
    .await;

    let q = swarm.behaviour_mut().kad.get_record(key);
    let found = finish(&mut swarm, q).await;
    assert_eq!(found, vec![v2.as_bytes().to_vec()]);
}
