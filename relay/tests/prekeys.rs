//! Prekey claim limits against the real `tern-relay` binary: a claimer, or many claimers,
//! cannot empty a device's one-time keys; over the limits claims get the fallback key.

mod support;

use support::{Relay, WAIT};
use tern_crypto::{
    DeviceKeys, DeviceList, IdentityKey, SignedDeviceList,
    prekey::{ClaimedPrekey, PrekeyBundle},
};
use tern_relay::client::{self, Client, Keypair};
use tern_relay::rpc::Requests as _;

/// One-time keys the test device publishes (the relay's maximum per device).
const PUBLISHED: u32 = 500;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}

async fn stranger(relay: &Relay) -> Client {
    within(Client::connect(
        Keypair::generate_ed25519(),
        relay.tcp.clone(),
        client::Config::default(),
    ))
    .await
    .unwrap()
    .0
}

/// Claims `n` times; returns how many claims were one-time keys (checking every claim
/// verifies, and fallback claims are the fallback key).
async fn claim_n(
    c: &Client,
    user: [u8; 16],
    device: &Client,
    list: &SignedDeviceList,
    n: usize,
) -> usize {
    let mut one_time = 0;
    for _ in 0..n {
        let (claim, fallback) = within(c.claim_prekey(user, device.local_peer_id()))
            .await
            .unwrap();
        let verified = ClaimedPrekey::from_bytes(&claim)
            .unwrap()
            .verify(list.list())
            .unwrap();
        assert_eq!(verified.is_fallback(), fallback);
        if !fallback {
            one_time += 1;
        }
    }
    one_time
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_per_claimer_and_per_device_are_limited_and_the_owner_sees_its_count() {
    let dir = tempfile::tempdir().unwrap();
    // Per claimer: the default (3). Per device: 10, to reach it with a few claimers.
    let relay = Relay::start(dir.path(), "[prekeys]\none_time_per_device = 10\n");
    let id = IdentityKey::generate().unwrap();
    let user = *id.user_id().as_bytes();
    let mut laptop = DeviceKeys::generate().unwrap();
    let cert = laptop.certify(&id, "laptop", 1).unwrap();
    let list = DeviceList::first(&id, cert.clone(), 1).sign(&id).unwrap();
    let mut secret = *laptop.network_secret();
    let key = Keypair::ed25519_from_bytes(&mut secret).unwrap();
    let (device, _) = within(Client::connect(
        key,
        relay.tcp.clone(),
        client::Config::default(),
    ))
    .await
    .unwrap();
    within(device.publish_device_list(list.as_bytes().to_vec()))
        .await
        .unwrap();
    assert_eq!(within(device.prekey_count()).await.unwrap(), 0);
    let mut held = 0;
    while held < PUBLISHED {
        let bundle = PrekeyBundle::generate(&mut laptop, cert.clone(), 50).unwrap();
        held = within(device.publish_prekeys(bundle.to_bytes().unwrap()))
            .await
            .unwrap();
    }
    assert_eq!(within(device.prekey_count()).await.unwrap(), PUBLISHED);

    // One claimer, twenty claims: three one-time keys, then the fallback key.
    let greedy = stranger(&relay).await;
    assert_eq!(claim_n(&greedy, user, &device, &list, 20).await, 3);
    assert_eq!(within(device.prekey_count()).await.unwrap(), PUBLISHED - 3);

    // Fresh PeerIds, three claims each: the device's ten an hour are soon out.
    let mut handed = 3;
    for _ in 0..5 {
        let c = stranger(&relay).await;
        handed += claim_n(&c, user, &device, &list, 3).await;
    }
    assert_eq!(handed, 10, "at most one_time_per_device an hour in all");
    assert_eq!(within(device.prekey_count()).await.unwrap(), PUBLISHED - 10);
    // 17 from the first claimer and 8 from the others got the fallback key by the limits.
    assert_eq!(
        relay.metric("tern_relay_prekey_claims_limited_total").await,
        25.0
    );
    // A count is the caller's own: a stranger holds none.
    assert_eq!(within(greedy.prekey_count()).await.unwrap(), 0);
}
