//! The directory and circuits: device lists and prekeys (versions, signatures, single use), and relayed connections through a reservation.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_relay_reservation_and_relayed_connection() {
    use tern_relay::libp2p::{
        self, StreamProtocol, SwarmBuilder, futures::StreamExt, identify, multiaddr::Protocol,
        noise, ping, relay as circuit, swarm::NetworkBehaviour, swarm::SwarmEvent, tcp, yamux,
    };
    #[derive(NetworkBehaviour)]
    #[behaviour(prelude = "tern_relay::libp2p::swarm::derive_prelude")]
    struct Node {
        relay: circuit::client::Behaviour,
        identify: identify::Behaviour,
        ping: ping::Behaviour,
    }
    fn node() -> libp2p::Swarm<Node> {
        SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key, relay| Node {
                relay,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/test/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(std::time::Duration::from_millis(200)),
                ),
            })
            .unwrap()
            .build()
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let hop = StreamProtocol::new("/libp2p/circuit/relay/0.2.0/hop");

    // The listener reserves a slot; the relay must offer hop without any external
    // address confirmation.
    let mut listener = node();
    let listener_id = *listener.local_peer_id();
    listener
        .listen_on(relay.tcp.clone().with(Protocol::P2pCircuit))
        .unwrap();
    let (mut reserved, mut saw_hop) = (false, false);
    tokio::time::timeout(WAIT, async {
        while !(reserved && saw_hop) {
            match listener.select_next_some().await {
                SwarmEvent::Behaviour(NodeEvent::Relay(
                    circuit::client::Event::ReservationReqAccepted { .. },
                )) => reserved = true,
                SwarmEvent::Behaviour(NodeEvent::Identify(identify::Event::Received {
                    info,
                    ..
                })) => {
                    saw_hop |= info.protocols.contains(&hop);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("reservation accepted and hop advertised");
    let listener_task = tokio::spawn(async move {
        loop {
            listener.select_next_some().await;
        }
    });

    // Another node reaches it through the relay and pings it.
    let mut dialer = node();
    dialer
        .dial(
            relay
                .tcp
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(listener_id)),
        )
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            })) = dialer.select_next_some().await
                && peer == listener_id
            {
                return;
            }
        }
    })
    .await
    .expect("ping through the relay circuit");
    listener_task.abort();
    assert!(relay.metric("tern_relay_circuits_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_versions_signatures_and_single_use_prekeys() {
    use tern_crypto::{
        DeviceKeys, DeviceList, IdentityKey, SignedDeviceList,
        prekey::{ClaimedPrekey, PrekeyBundle},
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let id = IdentityKey::generate().unwrap();
    let user = *id.user_id().as_bytes();
    let mut laptop = DeviceKeys::generate().unwrap();
    let cert = laptop.certify(&id, "laptop", 1).unwrap();
    let list1 = DeviceList::first(&id, cert.clone(), 1);
    let signed1 = list1.sign(&id).unwrap();
    let key = |d: &DeviceKeys| {
        let mut secret = *d.network_secret();
        client::Keypair::ed25519_from_bytes(&mut secret).unwrap()
    };
    let (device, _) = Client::connect(key(&laptop), relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let (stranger, _) = connect(&relay.tcp).await;

    // Only a device in the list may publish it; then anyone may fetch it.
    let e = stranger
        .publish_device_list(signed1.as_bytes().to_vec())
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NotAllowed);
    assert_eq!(
        rejected(stranger.fetch_device_list(user).await.unwrap_err()),
        ErrorCode::NotFound
    );
    device
        .publish_device_list(signed1.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(
        stranger.fetch_device_list(user).await.unwrap(),
        signed1.as_bytes()
    );
    // A tampered list fails its signature check.
    let mut tampered = signed1.as_bytes().to_vec();
    let n = tampered.len();
    tampered[n - 10] ^= 1;
    let code = rejected(device.publish_device_list(tampered).await.unwrap_err());
    assert!(
        matches!(code, ErrorCode::BadSignature | ErrorCode::Malformed),
        "{code:?}"
    );
    // Versions only grow.
    let code = rejected(
        device
            .publish_device_list(signed1.as_bytes().to_vec())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Stale);
    let phone = DeviceKeys::generate().unwrap();
    let list2 = list1
        .with_device(phone.certify(&id, "phone", 2).unwrap(), 2)
        .unwrap();
    let signed2 = list2.sign(&id).unwrap();
    device
        .publish_device_list(signed2.as_bytes().to_vec())
        .await
        .unwrap();
    let code = rejected(
        device
            .publish_device_list(signed1.as_bytes().to_vec())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Stale);
    let fetched =
        SignedDeviceList::from_bytes(&stranger.fetch_device_list(user).await.unwrap()).unwrap();
    assert_eq!(fetched.list().version, list2.version);

    // Prekeys: three one-time keys, each handed out once, then the fallback key.
    let bundle = PrekeyBundle::generate(&mut laptop, cert, 3).unwrap();
    let e = stranger
        .publish_prekeys(bundle.to_bytes().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        rejected(e),
        ErrorCode::NotAllowed,
        "only the device itself publishes its bundle"
    );
    assert_eq!(
        device
            .publish_prekeys(bundle.to_bytes().unwrap())
            .await
            .unwrap(),
        3
    );
    let laptop_peer = device.local_peer_id();
    let mut keys = std::collections::HashSet::new();
    let claims = futures_claims(&stranger, user, laptop_peer, 3).await;
    for (claim, fallback) in claims {
        assert!(!fallback);
        let verified = ClaimedPrekey::from_bytes(&claim)
            .unwrap()
            .verify(fetched.list())
            .unwrap();
        assert!(!verified.is_fallback());
        keys.insert(ClaimedPrekey::from_bytes(&claim).unwrap().prekey.key);
    }
    assert_eq!(keys.len(), 3, "each one-time key handed out once");
    let (claim, fallback) = stranger.claim_prekey(user, laptop_peer).await.unwrap();
    assert!(fallback);
    let verified = ClaimedPrekey::from_bytes(&claim)
        .unwrap()
        .verify(fetched.list())
        .unwrap();
    assert!(verified.is_fallback());
    // Unknown device, or the right device under the wrong user: nothing.
    let e = stranger
        .claim_prekey(user, PeerId::random())
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NotFound);
    let e = stranger
        .claim_prekey([0; 16], laptop_peer)
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NotFound);
}

/// Claims `n` prekeys concurrently (the relay must still hand each out once).
async fn futures_claims(
    c: &Client,
    user: [u8; 16],
    device: PeerId,
    n: usize,
) -> Vec<(Vec<u8>, bool)> {
    let calls = (0..n).map(|_| c.claim_prekey(user, device));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}
