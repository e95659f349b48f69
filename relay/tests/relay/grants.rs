//! Grants, shares and introductions: who may fill a mailbox and how much, rate limits on strangers, and bans for repeated refusals.

use super::*;

/// Introductions into one mailbox are rate-limited for all strangers together: past the
/// burst they are refused as `IntroFull` (remembered, held), whoever sends them, while the
/// same strangers still introduce themselves to another mailbox and a granted sender still
/// gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introductions_are_rate_limited_per_mailbox() {
    use tern_crypto::grant::Grant;
    let dir = tempfile::tempdir().unwrap();
    // Three at once, then one every 1,000 s: nothing refills during the test.
    let cfg = "[mailbox]\nintro_burst = 3.0\nintro_per_sec = 0.001\n";
    let relay = Relay::start(dir.path(), cfg);
    let Some(tern_relay::libp2p::multiaddr::Protocol::P2p(relay_peer)) = relay.tcp.iter().last()
    else {
        panic!("relay address without /p2p");
    };
    let rb = relay_peer.to_bytes();
    let grant = Grant::from_bytes([7; 32]);
    let (owner, _) = connect(&relay.tcp).await;
    let (other, _) = connect(&relay.tcp).await;
    for o in [&owner, &other] {
        o.set_grants(vec![grant.token_hash(&rb)]).await.unwrap();
    }
    let (o, o2) = (owner.local_peer_id(), other.local_peer_id());
    let (s1, _) = connect(&relay.tcp).await;
    let (s2, _) = connect(&relay.tcp).await;
    for _ in 0..3 {
        s1.deposit(vec![o], None, vec![3; 10]).await.unwrap();
    }
    for s in [&s1, &s2] {
        let e = s.deposit(vec![o], None, vec![3; 10]).await.unwrap_err();
        assert_eq!(
            rejected(e),
            ErrorCode::IntroFull,
            "past the burst, for everyone"
        );
    }
    // Another mailbox has an allowance of its own; a granted sender is not an introduction.
    s2.deposit(vec![o2], None, vec![4; 10]).await.unwrap();
    s2.deposit_with(vec![o], vec![Some(grant.token(&rb))], None, vec![5; 10])
        .await
        .unwrap();
    let u = owner.usage().await.unwrap();
    assert_eq!((u.intro.messages, u.total.messages), (3, 4));
    assert!(
        relay
            .metric("tern_relay_rejects_total{reason=\"intro_full\"}")
            .await
            >= 2.0,
        "the refusals are counted"
    );
}

/// A mailbox closed by its owner's grants: a granted sender and an allow-listed contact get
/// in, each in its own share; strangers only into the capped introductions share; a grant the
/// owner rotated away (revoked) is refused with `NoGrant`, also after a restart; and the
/// owner's `Usage` names who fills the mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_shares_and_introductions() {
    use tern_crypto::grant::Grant;
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[mailbox]\nmax_messages = 40\nshare_percent = 25\nintro_max_messages = 6\n\
               intro_per_sender = 2\n";
    let mut relay = Relay::start(dir.path(), cfg);
    let (owner, _) = connect(&relay.tcp).await;
    let (friend, _) = connect(&relay.tcp).await;
    let (contact, _) = connect(&relay.tcp).await;
    let o = owner.local_peer_id();
    let Some(tern_relay::libp2p::multiaddr::Protocol::P2p(relay_peer)) = relay.tcp.iter().last()
    else {
        panic!("relay address without /p2p");
    };
    let rb = relay_peer.to_bytes();
    let (old, new) = (Grant::from_bytes([1; 32]), Grant::from_bytes([2; 32]));
    owner.set_grants(vec![old.token_hash(&rb)]).await.unwrap();
    owner
        .set_allow_list(vec![contact.local_peer_id()])
        .await
        .unwrap();

    // The granted friend: its share is a quarter of 40.
    for _ in 0..10 {
        friend
            .deposit_with(vec![o], vec![Some(old.token(&rb))], None, vec![1; 10])
            .await
            .unwrap();
    }
    let e = friend
        .deposit_with(vec![o], vec![Some(old.token(&rb))], None, vec![1; 10])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::ShareFull);
    // The contact needs no token: the allow-list admits it, in its own share.
    contact.deposit(vec![o], None, vec![2; 10]).await.unwrap();
    // Strangers: two each, six in all.
    let mut took = 0;
    for _ in 0..5 {
        let (stranger, _) = connect(&relay.tcp).await;
        for _ in 0..3 {
            match stranger.deposit(vec![o], None, vec![3; 10]).await {
                Ok(_) => took += 1,
                Err(e) => assert_eq!(rejected(e), ErrorCode::IntroFull),
            }
        }
    }
    assert_eq!(took, 6);
    // A stranger with a made-up token is refused outright.
    let (stranger, _) = connect(&relay.tcp).await;
    let e = stranger
        .deposit_with(vec![o], vec![Some([9; 32])], None, vec![3; 10])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NoGrant);

    // What the owner sees: its mailbox by share, and which messages were introductions.
    let u = owner.usage().await.unwrap();
    assert_eq!(u.total.messages, 17);
    assert_eq!(u.intro.messages, 6);
    assert_eq!(u.registered, 1);
    assert_eq!(u.grants.len(), 1);
    assert_eq!(u.grants[0].1.messages, 10);
    assert!(
        u.senders
            .iter()
            .any(|(p, f)| *p == contact.local_peer_id() && f.messages == 1)
    );
    let mail = fetch_all(&owner).await;
    assert_eq!(mail.iter().filter(|m| m.intro).count(), 6);

    // The owner rotates the friend's grant (a revocation); it survives a restart.
    owner.set_grants(vec![new.token_hash(&rb)]).await.unwrap();
    drop((owner, friend, contact, stranger));
    assert!(relay.terminate().success());
    let relay = Relay::start(dir.path(), cfg);
    let (friend, _) = connect(&relay.tcp).await;
    let e = friend
        .deposit_with(vec![o], vec![Some(old.token(&rb))], None, vec![1; 10])
        .await
        .unwrap_err();
    assert_eq!(
        rejected(e),
        ErrorCode::NoGrant,
        "a revoked grant is refused"
    );
    // A fan-out names the refused recipient and reaches the rest.
    let (other, _) = connect(&relay.tcp).await;
    let (_, refused) = friend
        .deposit_with(
            vec![o, other.local_peer_id()],
            vec![Some(old.token(&rb)), None],
            None,
            vec![1; 10],
        )
        .await
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].peer, refused[0].code), (o, ErrorCode::NoGrant));
    // The token made for another relay is worth nothing here.
    let e = friend
        .deposit_with(
            vec![o],
            vec![Some(new.token(b"another relay"))],
            None,
            vec![1; 10],
        )
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NoGrant);
}

/// A peer that keeps depositing with tokens the owner never registered is disconnected and
/// its reconnections refused for a while; an honest peer on the same relay is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_grant_refusals_get_a_peer_banned() {
    use tern_crypto::grant::Grant;
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[rate]\nrefusals_per_sec = 0.01\nrefusals_burst = 5.0\nban_secs = 600\n";
    let relay = Relay::start(dir.path(), cfg);
    let (owner, _) = connect(&relay.tcp).await;
    let o = owner.local_peer_id();
    let Some(tern_relay::libp2p::multiaddr::Protocol::P2p(relay_peer)) = relay.tcp.iter().last()
    else {
        panic!("relay address without /p2p");
    };
    let friend_grant = Grant::from_bytes([5; 32]);
    owner
        .set_grants(vec![friend_grant.token_hash(&relay_peer.to_bytes())])
        .await
        .unwrap();

    let bad_key = libp2p_key();
    let (bad, _) = Client::connect(
        bad_key.clone(),
        relay.tcp.clone(),
        client::Config::default(),
    )
    .await
    .unwrap();
    let mut refused = 0;
    let mut cut_off = false;
    for _ in 0..20 {
        match bad
            .deposit_with(vec![o], vec![Some([9; 32])], None, vec![1; 8])
            .await
        {
            Err(RequestError::Rejected(r)) => {
                assert_eq!(r.code, ErrorCode::NoGrant);
                refused += 1;
            }
            Err(_) => {
                cut_off = true;
                break;
            }
            Ok(_) => panic!("a made-up token is never taken"),
        }
    }
    assert!(cut_off, "the peer was disconnected");
    assert!(refused <= 6, "after its allowance ({refused} refusals)");
    eventually("the ban in the metrics", || async {
        (relay.metric("tern_relay_peers_banned_total").await == 1.0).then_some(())
    })
    .await;
    // Coming back under the same identity does not help.
    let back = Client::connect(bad_key, relay.tcp.clone(), client::Config::default()).await;
    if let Ok((c, _)) = back {
        assert!(
            c.deposit(vec![o], None, vec![1; 8]).await.is_err(),
            "a banned peer's requests are not served"
        );
    }
    // A granted friend still deposits.
    let (friend, _) = connect(&relay.tcp).await;
    friend
        .deposit_with(
            vec![o],
            vec![Some(friend_grant.token(&relay_peer.to_bytes()))],
            None,
            vec![2; 8],
        )
        .await
        .unwrap();
}

/// A listening owner of a closed mailbox: a granted sender's deposits come live at once, with
/// the ids their entries have; strangers' introductions come only once stored, marked as
/// introductions, and one the introductions share refuses never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_owner_gets_introductions_only_once_stored() {
    use tern_crypto::grant::Grant;
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[mailbox]\nintro_max_messages = 2\nintro_per_sender = 2\n";
    let relay = Relay::start(dir.path(), cfg);
    let (owner, mut events) = connect(&relay.tcp).await;
    let (friend, _) = connect(&relay.tcp).await;
    let (stranger, _) = connect(&relay.tcp).await;
    let o = owner.local_peer_id();
    let Some(tern_relay::libp2p::multiaddr::Protocol::P2p(relay_peer)) = relay.tcp.iter().last()
    else {
        panic!("relay address without /p2p");
    };
    let rb = relay_peer.to_bytes();
    let grant = Grant::from_bytes([1; 32]);
    owner.set_grants(vec![grant.token_hash(&rb)]).await.unwrap();
    owner.listen(true).await.unwrap();
    eventually("the owner's live stream", || async {
        owner.live_stream_open().then_some(())
    })
    .await;

    let granted = |body: u8| {
        let friend = friend.clone();
        let token = grant.token(&rb);
        async move {
            friend
                .deposit_with(vec![o], vec![Some(token)], None, vec![body; 10])
                .await
                .unwrap()
        }
    };
    granted(1).await;
    for _ in 0..2 {
        stranger.deposit(vec![o], None, vec![2; 10]).await.unwrap();
    }
    let e = stranger
        .deposit(vec![o], None, vec![3; 10])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::IntroFull);
    // The stream keeps its order: whatever came of the refused introduction comes before
    // this.
    granted(4).await;
    let mut got = Vec::new();
    while !got.iter().any(|m: &Envelope| m.ciphertext[0] == 4) {
        if let Event::Delivered(mail) = next_event(&mut events).await {
            got.extend(mail);
        }
    }
    let mut bodies: Vec<(u8, bool)> = got.iter().map(|m| (m.ciphertext[0], m.intro)).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, [(1, false), (2, true), (2, true), (4, false)]);
    // What came live is what the mailbox holds, id for id.
    let mut stored = fetch_all(&owner).await;
    stored.sort_by_key(|m| m.id);
    got.sort_by_key(|m| m.id);
    assert_eq!(got, stored);
}
