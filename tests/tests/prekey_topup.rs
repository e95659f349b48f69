//! A device whose one-time keys are all claimed by others — so no session ever reaches it
//! to tell — learns the count from its relay (`PrekeyCount`) and tops up.

use std::time::{Duration, Instant};
use tern_relay::rpc::Requests as _;

use tern_relay::{
    Multiaddr, PeerId,
    client::{self, Client, Keypair},
};
use tern_tests::support::{Node, Relay, WAIT};

/// Longest wait for the node to notice and top up: it asks every minute
/// (`PREKEY_CHECK_HEARTBEATS` heartbeats), then publishes on its next outbox tick.
const TOPUP_WAIT: Duration = Duration::from_secs(150);
/// Pause between two probes while waiting for the top-up.
const PROBE_EVERY: Duration = Duration::from_millis(500);

fn hex16(s: &str) -> [u8; 16] {
    tern_crypto::hex::decode_array(s).unwrap()
}

/// One claim by a fresh PeerId: `Some(fallback)`, or `None` if the relay has no bundle yet.
async fn claim_once(relay: &Multiaddr, user: [u8; 16], device: PeerId) -> Option<bool> {
    let (c, _) = tokio::time::timeout(
        WAIT,
        Client::connect(
            Keypair::generate_ed25519(),
            relay.clone(),
            client::Config::default(),
        ),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let r = tokio::time::timeout(WAIT, c.claim_prekey(user, device))
        .await
        .expect("claim answered in time");
    r.ok().map(|(_, fallback)| fallback)
}

#[test]
fn a_device_drained_by_claims_tops_up() {
    let dir = tempfile::tempdir().unwrap();
    // The per-device claim limit is lifted: this test drains the device on purpose (the
    // per-claimer limit stays, so each claimer takes at most three keys).
    let relay = Relay::start(
        &dir.path().join("relay"),
        "[prekeys]\none_time_per_device = 100000\n",
    )
    .unwrap();
    let node = Node::init_and_start(dir.path(), "ana", Some(&relay.addr)).unwrap();
    let user = hex16(&node.user);
    let device: PeerId = node.device.parse().unwrap();
    let addr: Multiaddr = relay.addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The node publishes its first batch when it connects.
        let deadline = Instant::now() + WAIT;
        while claim_once(&addr, user, device).await != Some(false) {
            assert!(
                Instant::now() < deadline,
                "no one-time key published in time"
            );
            tokio::time::sleep(PROBE_EVERY).await;
        }
        // Drain: fresh claimers until the relay hands out the fallback key.
        let mut drained = 1;
        loop {
            assert!(drained < 1000, "the device's one-time keys never ran out");
            match claim_once(&addr, user, device).await {
                Some(false) => drained += 1,
                Some(true) => break,
                None => panic!("bundle vanished"),
            }
        }
        assert!(drained >= tern_node::consts::ONE_TIME_KEYS_LOW as usize);
        // No session reaches the device, yet it notices and publishes more.
        let deadline = Instant::now() + TOPUP_WAIT;
        loop {
            if claim_once(&addr, user, device).await == Some(false) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not top up its one-time keys within {TOPUP_WAIT:?}"
            );
            tokio::time::sleep(PROBE_EVERY).await;
        }
    });
    drop(node);
}
