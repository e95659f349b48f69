//! Group messages lost on the way (a relay that lost them). A lost sender key: the group
//! messages under it that did arrive wait, their receiver asks the sending device for the
//! key, and gets it as it was first sent, with the group message it went with. Lost group
//! messages: the gap before one that arrived is asked for, and the sender sends them again
//! over the pairwise session. Nobody gets a key or a message by asking that it was not sent.

use std::time::Duration;

use tern_store::Body;
use tokio::sync::oneshot;

use super::Harness;
use crate::consts::{HOLD_BACK, RESEND_INTERVAL};
use crate::engine::{
    GroupCommand,
    group::keys::{KEY_REQUEST_AFTER_MS, SENT_KEY_KEEP_MS},
};

/// Waits until `from`'s outbox is empty, then returns what its courier carried to `to`
/// since `done` and moves `done` past it.
async fn carried(from: &mut Harness, to: &Harness, done: &mut usize) -> Vec<Vec<u8>> {
    from.settle_until(|h| h.engine.store.outbox_depth().unwrap() == 0)
        .await;
    let all = from.courier.carried_to(to.peer());
    let new = all[*done..].to_vec();
    *done = all.len();
    new
}

/// Hands `to` the payloads, as the direct path would.
fn hand(to: &mut Harness, from: &Harness, payloads: Vec<Vec<u8>>) {
    for p in payloads {
        to.engine.on_direct(from.peer(), 0, p);
    }
}

fn send(h: &mut Harness, group: &str, text: &str) {
    h.engine
        .group_send(group, None, Body::Text(text.into()), None)
        .unwrap();
}

#[tokio::test]
async fn a_lost_sender_key_is_asked_for_and_sent_again_as_it_was_first_sent() {
    let (mut alice, mut bob) = super::alice_and_bob().await;
    let (mut to_bob, mut to_alice) = (0, 0);
    let g = alice.create_group(&[&bob]).await;
    let ops = carried(&mut alice, &bob, &mut to_bob).await;
    hand(&mut bob, &alice, ops);
    assert!(bob.engine.resolve_group(&g).is_ok(), "Bob is in the group");

    // The first text carries Alice's key to Bob over their session: it is lost.
    send(&mut alice, &g, "one");
    let lost = carried(&mut alice, &bob, &mut to_bob).await;
    assert_eq!(lost.len(), 1);
    // The next ones go under that key, which Bob is taken to have: they arrive and wait.
    for t in ["two", "three"] {
        send(&mut alice, &g, t);
    }
    let later = carried(&mut alice, &bob, &mut to_bob).await;
    assert_eq!(later.len(), 2);
    hand(&mut bob, &alice, later);
    assert!(bob.texts(&g).is_empty());
    assert_eq!(bob.engine.store.group_stash_len().unwrap(), 2);

    // Not asked for while the key may still be on its way.
    bob.clock
        .advance(Duration::from_millis(KEY_REQUEST_AFTER_MS as u64 - 1));
    bob.engine.ask_group_keys();
    assert_eq!(bob.engine.inbox.recovery.group_keys_asked, 0);
    // Then asked for, once.
    bob.clock.advance(Duration::from_secs(60));
    bob.engine.ask_group_keys();
    assert_eq!(bob.engine.inbox.recovery.group_keys_asked, 1);
    bob.engine.ask_group_keys();
    assert_eq!(
        bob.engine.inbox.recovery.group_keys_asked, 1,
        "not again at once"
    );
    let request = carried(&mut bob, &alice, &mut to_alice).await;
    assert_eq!(request.len(), 1);
    hand(&mut alice, &bob, request.clone());
    assert_eq!(alice.engine.inbox.recovery.group_keys_resent, 1);

    // The key comes at the index it was first sent at, with the text it went with: all
    // three are read, in order.
    let answer = carried(&mut alice, &bob, &mut to_bob).await;
    assert_eq!(answer.len(), 1);
    hand(&mut bob, &alice, answer.clone());
    assert_eq!(bob.texts(&g), ["one", "two", "three"]);
    assert_eq!(bob.engine.store.group_stash_len().unwrap(), 0);

    // The answer coming twice changes nothing: the key held is kept, nothing is read twice.
    hand(&mut bob, &alice, answer);
    send(&mut alice, &g, "four");
    let four = carried(&mut alice, &bob, &mut to_bob).await;
    hand(&mut bob, &alice, four);
    assert_eq!(bob.texts(&g), ["one", "two", "three", "four"]);

    // Nothing more is asked for once nothing waits.
    bob.clock.advance(Duration::from_secs(3600));
    bob.engine.ask_group_keys();
    assert_eq!(bob.engine.inbox.recovery.group_keys_asked, 1);

    // A request again within the minute is not answered again.
    bob.engine
        .send_control_to(
            &alice.engine.me.user,
            Some(alice.engine.me.keys.device.device_id()),
            crate::envelope::Body::KeyRequest {
                session: alice.engine.store.group_sender_key(&g).unwrap().unwrap().0,
            },
            |_| Ok(()),
        )
        .unwrap();
    let again = carried(&mut bob, &alice, &mut to_alice).await;
    hand(&mut alice, &bob, again);
    assert_eq!(alice.engine.inbox.recovery.group_keys_resent, 1);

    // After the keep time the key is forgotten, and a request brings nothing.
    alice
        .clock
        .advance(Duration::from_millis(SENT_KEY_KEEP_MS as u64 + 1));
    alice.engine.prune_sent_keys();
    let session = alice.engine.store.group_sender_key(&g).unwrap().unwrap().0;
    let bob_device = bob.engine.me.keys.device.device_id();
    assert!(
        alice
            .engine
            .store
            .sent_key_for(&session, &bob_device.to_peer_id_string())
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_key_is_sent_again_only_to_a_device_it_was_sent_to() {
    let (mut alice, mut bob) = super::alice_and_bob().await;
    let mut carol = Harness::named("carol");
    alice.add(&carol).await;
    carol.add(&alice).await;
    let (mut to_bob, mut to_carol) = (0, 0);
    let g = alice.create_group(&[&bob]).await;
    let ops = carried(&mut alice, &bob, &mut to_bob).await;
    hand(&mut bob, &alice, ops);
    send(&mut alice, &g, "before carol");
    carried(&mut alice, &bob, &mut to_bob).await;
    let session = alice.engine.store.group_sender_key(&g).unwrap().unwrap().0;
    // Carol, a contact but no member, asks for the group's key.
    carol.start_session(&mut alice);
    carol
        .engine
        .send_control_to(
            &alice.engine.me.user,
            Some(alice.engine.me.keys.device.device_id()),
            crate::envelope::Body::KeyRequest { session },
            |_| Ok(()),
        )
        .unwrap();
    let request = carried(&mut carol, &alice, &mut to_carol).await;
    assert_eq!(request.len(), 1);
    hand(&mut alice, &carol, request);
    assert_eq!(alice.engine.inbox.recovery.group_keys_resent, 0);
    assert_eq!(
        alice.engine.store.outbox_depth().unwrap(),
        0,
        "nothing was queued for Carol"
    );
}

/// Adds `member` to the group (Alice is its admin); returns the operation's payloads Alice
/// sent, once her outbox is empty.
async fn add(alice: &mut Harness, group: &str, member: &Harness, done: &mut usize) -> Vec<Vec<u8>> {
    let (reply, answer) = oneshot::channel();
    alice.engine.on_group_command(GroupCommand::Add {
        group: group.to_owned(),
        members: vec![member.engine.me.user_hex.clone()],
        admin: false,
        reply,
    });
    alice.answer(answer).await.unwrap();
    carried(alice, member, done).await
}

#[tokio::test]
async fn lost_group_messages_are_asked_for_and_sent_again_only_to_devices_they_were_for() {
    let (mut alice, mut bob) = super::alice_and_bob().await;
    let (mut to_bob, mut to_alice) = (0, 0);
    let g = alice.create_group(&[&bob]).await;
    let ops = carried(&mut alice, &bob, &mut to_bob).await;
    hand(&mut bob, &alice, ops);
    send(&mut alice, &g, "one");
    let one = carried(&mut alice, &bob, &mut to_bob).await;
    hand(&mut bob, &alice, one);
    // Two to four are lost on the way; five arrives.
    for t in ["two", "three", "four"] {
        send(&mut alice, &g, t);
    }
    assert_eq!(carried(&mut alice, &bob, &mut to_bob).await.len(), 3);
    send(&mut alice, &g, "five");
    let five = carried(&mut alice, &bob, &mut to_bob).await;
    hand(&mut bob, &alice, five);
    assert_eq!(bob.texts(&g), ["one", "five"]);
    // Five is held back for its missing predecessors, then shown with the gap marked, and
    // the gap is asked for.
    bob.events();
    bob.clock.advance(HOLD_BACK);
    bob.engine.release_held();
    assert_eq!(bob.shown(), [(5, true)]);
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 1);
    let request = carried(&mut bob, &alice, &mut to_alice).await;
    assert_eq!(request.len(), 1);
    hand(&mut alice, &bob, request);
    assert_eq!(alice.engine.inbox.recovery.texts_resent, 3);
    let again = carried(&mut alice, &bob, &mut to_bob).await;
    assert_eq!(again.len(), 3, "one copy each over the pairwise session");
    hand(&mut bob, &alice, again);
    assert_eq!(bob.texts(&g), ["one", "two", "three", "four", "five"]);
    // The resend is followed: the gap is filled, nothing more is asked.
    bob.clock.advance(RESEND_INTERVAL);
    bob.engine.release_held();
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 1);
    assert!(bob.engine.inbox.resends.is_empty());

    // Carol joins later: asking for everything Alice sent before brings her nothing, since
    // none of it went under a key she was given.
    let mut carol = Harness::named("carol");
    alice.add(&carol).await;
    carol.add(&alice).await;
    alice.start_session(&mut carol);
    let mut to_carol = 0;
    let ops = add(&mut alice, &g, &carol, &mut to_carol).await;
    hand(&mut carol, &alice, ops);
    assert!(
        carol.engine.resolve_group(&g).is_ok(),
        "Carol is in the group"
    );
    send(&mut alice, &g, "six");
    let six = carried(&mut alice, &carol, &mut to_carol).await;
    hand(&mut carol, &alice, six);
    assert_eq!(
        carol.texts(&g),
        ["six"],
        "her first text needs no predecessor"
    );
    let mut from_carol = 0;
    carol
        .engine
        .send_control_to(
            &alice.engine.me.user,
            Some(alice.engine.me.keys.device.device_id()),
            crate::envelope::Body::Resend {
                after_seq: 0,
                up_to_seq: Some(5),
                group: Some(serde_bytes::ByteArray::new(
                    *tern_crypto::group::GroupId::from_hex(&g)
                        .unwrap()
                        .as_bytes(),
                )),
            },
            |_| Ok(()),
        )
        .unwrap();
    let request = carried(&mut carol, &alice, &mut from_carol).await;
    hand(&mut alice, &carol, request);
    assert_eq!(alice.engine.inbox.recovery.texts_resent, 3, "nothing more");
    assert_eq!(alice.engine.store.outbox_depth().unwrap(), 0);
    assert!(
        carried(&mut alice, &carol, &mut to_carol).await.is_empty(),
        "nothing went to Carol"
    );
}
