//! Presence: who may see it, its time to live, and coalesced updates.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_visibility_ttl_and_coalescing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        "[presence]\nheartbeat_ttl_secs = 2\ncoalesce_ms = 300\n",
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, mut bob_events) = connect(&relay.tcp).await;
    let (eve, _) = connect(&relay.tcp).await;
    let a = alice.local_peer_id();
    alice
        .set_allow_list(vec![bob.local_peer_id()])
        .await
        .unwrap();

    let now = bob.subscribe(vec![a, eve.local_peer_id()]).await.unwrap();
    assert_eq!(now[0].state, State::Online);
    // Eve never allowed Bob: she looks like a stranger.
    assert_eq!(now[1].state, State::Unknown);
    assert_eq!(eve.query(vec![a]).await.unwrap()[0].state, State::Unknown);
    assert_eq!(
        eve.subscribe(vec![a]).await.unwrap()[0].state,
        State::Unknown
    );

    // Several changes within one coalescing window arrive as one update, latest state.
    alice.heartbeat(Status::Away).await.unwrap();
    alice.heartbeat(Status::Online).await.unwrap();
    alice.heartbeat(Status::Away).await.unwrap();
    let Event::Presence(update) = next_event(&mut bob_events).await else {
        panic!("expected presence")
    };
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].peer, a);
    assert_eq!(update[0].state, State::Away);

    // Alice falls silent: after the TTL Bob sees her offline, with a last-seen time. (If a
    // coalescing tick split the three heartbeats above, one more `Away` comes first.)
    let update = loop {
        let Event::Presence(update) = next_event(&mut bob_events).await else {
            panic!("expected presence")
        };
        if update[0].state != State::Away {
            break update;
        }
    };
    assert_eq!(update[0].state, State::Offline);
    assert!(update[0].last_seen_ms.is_some());
    // A heartbeat brings her back.
    alice.heartbeat(Status::Online).await.unwrap();
    let Event::Presence(update) = next_event(&mut bob_events).await else {
        panic!("expected presence")
    };
    assert_eq!(update[0].state, State::Online);
    // Disconnecting makes her offline at once.
    drop(alice);
    let Event::Presence(update) = next_event(&mut bob_events).await else {
        panic!("expected presence")
    };
    assert_eq!(update[0].state, State::Offline);
    assert_eq!(bob.query(vec![a]).await.unwrap()[0].state, State::Offline);
    // Eve got nothing in all this.
    assert_eq!(eve.query(vec![a]).await.unwrap()[0].state, State::Unknown);
}
