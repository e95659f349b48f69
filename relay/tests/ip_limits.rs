//! Limits per IP address against the real `tern-relay` binary: PeerIds are free to make, so
//! many of them from one host share one allowance of connections and of requests.

mod support;

use std::time::Duration;
use tern_relay::rpc::Requests as _;

use support::{Relay, WAIT, eventually};
use tern_relay::client::{self, Client, Keypair, RequestError};
use tern_relay::wire::ErrorCode;

/// How long a refused connection attempt may take to fail.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn try_connect(relay: &Relay) -> Option<Client> {
    let config = client::Config {
        connect_timeout: CONNECT_TIMEOUT,
        ..client::Config::default()
    };
    // A fresh PeerId every time.
    Client::connect(Keypair::generate_ed25519(), relay.tcp.clone(), config)
        .await
        .ok()
        .map(|(c, _)| c)
}

/// Connects `n` fresh PeerIds at once; returns the clients that got in.
async fn connect_many(relay: &Relay, n: usize) -> Vec<Client> {
    let attempts = (0..n).map(|_| try_connect(relay));
    tokio::time::timeout(WAIT, futures::future::join_all(attempts))
        .await
        .expect("connection attempts ended in time")
        .into_iter()
        .flatten()
        .collect()
}

async fn wait_metric(relay: &Relay, name: &str, want: f64) {
    eventually(&format!("{name} == {want}"), || async {
        (relay.metric(name).await == want).then_some(())
    })
    .await;
}

const PER_IP_REFUSED: &str = "tern_relay_connections_refused_total{reason=\"per_ip\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_ip_are_limited_whatever_their_peer_ids() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "[connections]\nmax_per_ip = 4\n");

    // Ten fresh PeerIds from 127.0.0.1, all at once: four get in.
    let mut clients = connect_many(&relay, 10).await;
    assert_eq!(
        clients.len(),
        4,
        "at most max_per_ip connections from one IP"
    );
    wait_metric(&relay, "tern_relay_connections", 4.0).await;
    wait_metric(&relay, PER_IP_REFUSED, 6.0).await;
    // The ones admitted work.
    for c in &clients {
        tokio::time::timeout(WAIT, c.fetch(0, 1))
            .await
            .unwrap()
            .unwrap();
    }
    // One by one, still refused while the four are open.
    assert!(try_connect(&relay).await.is_none());
    wait_metric(&relay, PER_IP_REFUSED, 7.0).await;

    // Closing two frees two slots, and no more.
    clients.truncate(2);
    wait_metric(&relay, "tern_relay_connections", 2.0).await;
    let more = connect_many(&relay, 5).await;
    assert_eq!(more.len(), 2, "closed connections gave their slots back");
    wait_metric(&relay, "tern_relay_connections", 4.0).await;
    wait_metric(&relay, PER_IP_REFUSED, 10.0).await;
    assert_eq!(
        relay
            .metric("tern_relay_connections_refused_total{reason=\"total\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_limit_refuses_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "[connections]\nmax_established = 3\n");
    let clients = connect_many(&relay, 5).await;
    assert_eq!(clients.len(), 3);
    wait_metric(
        &relay,
        "tern_relay_connections_refused_total{reason=\"total\"}",
        2.0,
    )
    .await;
    assert_eq!(relay.metric(PER_IP_REFUSED).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_ids_on_one_ip_share_one_request_allowance() {
    let dir = tempfile::tempdir().unwrap();
    // Per peer: plenty. Per IP: ten requests, refilling one per 1000 s.
    let relay = Relay::start(
        dir.path(),
        "[rate]\nip_requests_per_sec = 0.001\nip_requests_burst = 10.0\n",
    );
    let clients = connect_many(&relay, 3).await;
    assert_eq!(clients.len(), 3);
    // Ten requests spread over three PeerIds use up the address's allowance...
    for i in 0..10 {
        tokio::time::timeout(WAIT, clients[i % 3].fetch(0, 1))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
    }
    // ... so every one of them is now refused, with a time to retry.
    for c in &clients {
        match tokio::time::timeout(WAIT, c.fetch(0, 1)).await.unwrap() {
            Err(RequestError::Rejected(r)) => {
                assert_eq!(r.code, ErrorCode::RateLimited);
                assert!(r.retry_after_ms.is_some_and(|ms| ms > 0));
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }
    assert_eq!(
        relay.metric("tern_relay_rate_limited_by_ip_total").await,
        3.0
    );
    assert_eq!(
        relay
            .metric("tern_relay_rejects_total{reason=\"rate_limited\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_connects_too_often_or_has_spent_its_requests_is_refused_before_the_handshake()
 {
    let dir = tempfile::tempdir().unwrap();
    // Three connections at once, then one per 1000 s; ten requests, then one per 1000 s.
    let relay = Relay::start(
        dir.path(),
        "[connections]\nip_connections_per_sec = 0.001\nip_connections_burst = 3.0\n\
         [rate]\nip_requests_per_sec = 0.001\nip_requests_burst = 10.0\n",
    );
    let clients = connect_many(&relay, 5).await;
    assert_eq!(clients.len(), 3, "the burst of new connections, no more");
    wait_metric(
        &relay,
        "tern_relay_connections_refused_total{reason=\"ip_connect_rate\"}",
        2.0,
    )
    .await;
    // Spend the address's requests: a connection is then refused for that first, whatever
    // its own allowance (no connection token is taken for it).
    for i in 0..10 {
        tokio::time::timeout(WAIT, clients[i % 3].fetch(0, 1))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
    }
    assert!(try_connect(&relay).await.is_none());
    wait_metric(
        &relay,
        "tern_relay_connections_refused_total{reason=\"ip_requests\"}",
        1.0,
    )
    .await;
    // A refused request is told to wait its share: three connections from the address.
    match tokio::time::timeout(WAIT, clients[0].fetch(0, 1))
        .await
        .unwrap()
    {
        Err(RequestError::Rejected(r)) => {
            assert_eq!(r.code, ErrorCode::RateLimited);
            assert!(
                r.retry_after_ms.is_some_and(|ms| ms >= 10_000),
                "{:?}",
                r.retry_after_ms
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}
