//! A stale device list: a text encrypted for an older list of its addressee is answered
//! with the current list, naming the text and the device it missed; the sender takes the
//! list and owes that text to the new device.

use super::{Harness, alice_and_bob, link_device};

/// The version of `of`'s device list `holder` knows.
fn known_version(holder: &Harness, of: &Harness) -> u64 {
    holder
        .engine
        .known(&of.engine.me.user)
        .and_then(|c| c.list.as_ref())
        .map(|l| l.list().version)
        .unwrap()
}

#[tokio::test]
async fn a_text_for_a_stale_list_is_answered_and_owed_to_the_device_it_missed() {
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    let old = known_version(&alice, &bob);
    let phone = link_device(&mut bob);
    assert!(bob.engine.me.keys.device_list.list().version > old);
    // Alice still holds Bob's old list: her text goes to his first device only.
    let sent = alice
        .engine
        .send_text(&bob_user, "for every device".into())
        .unwrap();
    let carried = alice.carry(1).await;
    bob.engine.on_direct(alice.peer(), 0, carried[0].clone());
    // Bob answers on his next tick with his list, naming the text and the phone it missed.
    assert!(bob.courier.carried().is_empty());
    bob.engine.flush_list_answers();
    let answer = bob.carry(1).await;
    alice.engine.on_direct(bob.peer(), 0, answer[0].clone());
    assert_eq!(
        known_version(&alice, &bob),
        bob.engine.me.keys.device_list.list().version,
        "Alice took Bob's current list"
    );
    let owed = alice.engine.store.due_resync(10).unwrap();
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0].message_id.to_string(), sent.id);
    assert_eq!(owed[0].device, phone);
    assert!(alice.engine.lists.resync_due);
}
