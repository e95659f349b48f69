//! Sessions are set up off the engine task: a text to a device without a session is
//! stored and waits while its prekey is claimed in a task; the claim's answer sets the
//! session up and the text goes at once, with no backoff to sit out.

use super::Harness;
use crate::types::{Event, MessageStatus};

#[tokio::test]
async fn a_text_waits_for_its_claim_and_goes_as_soon_as_the_claim_answers() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    alice.add(&bob).await;
    bob.add(&alice).await;
    let bob_user = bob.engine.me.user_hex.clone();
    let bob_device = bob.engine.me.keys.device.device_id();

    // No session with Bob's device: the send returns, stored and waiting, and the claim
    // runs in a task (one per device, however many texts wait for it).
    let first = alice.engine.send_text(&bob_user, "one".into()).unwrap();
    assert_eq!(first.status, MessageStatus::Pending);
    assert!(alice.engine.people.claiming.contains(&bob_device));
    alice.engine.send_text(&bob_user, "two".into()).unwrap();
    assert_eq!(alice.engine.people.claiming.len(), 1);
    assert!(alice.courier.carried().is_empty());

    // The task's claim fails (no network here): the device is free to be claimed again,
    // and nothing was sent.
    alice.settle().await;
    assert!(alice.engine.people.claiming.is_empty());
    assert!(alice.courier.carried().is_empty());

    // A claim that answers sets the session up, and both texts go at once, in order,
    // without the clock moving past any backoff.
    let claimed = Harness::claimed_prekey(&mut bob);
    alice
        .engine
        .on_prekey_claimed(bob.engine.me.user, bob_device, Ok(claimed));
    let carried = alice.carry(2).await;
    for ct in &carried {
        bob.engine.on_direct(alice.peer(), 0, ct.clone());
    }
    let texts = shown_texts(&mut bob);
    assert_eq!(texts, ["one", "two"]);
}

#[tokio::test]
async fn a_claim_for_a_device_that_has_a_session_by_then_changes_nothing() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    alice.add(&bob).await;
    bob.add(&alice).await;
    alice.start_session(&mut bob);
    let bob_device = bob.engine.me.keys.device.device_id();
    let curve = bob.engine.me.keys.certificate.certificate().curve25519;
    let before = alice
        .engine
        .load_sessions(&bob_device, curve)
        .unwrap()
        .current_session_id();
    assert!(before.is_some());
    // A second answer (a claim that raced the first) keeps the session there is.
    let claimed = Harness::claimed_prekey(&mut bob);
    let bob_user = bob.engine.me.user;
    alice
        .engine
        .on_prekey_claimed(bob_user, bob_device, Ok(claimed));
    let after = alice
        .engine
        .load_sessions(&bob_device, curve)
        .unwrap()
        .current_session_id();
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_text_sent_while_an_earlier_one_waits_goes_behind_it_even_with_a_session() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    alice.add(&bob).await;
    bob.add(&alice).await;
    let bob_user = bob.engine.me.user_hex.clone();

    // Nothing waits: the store is not asked again until something is stored to wait.
    alice.engine.encrypt_waiting(true);
    assert!(!alice.engine.outbox.encrypt_pending);
    // No session: "one" is stored to wait, and the engine knows something waits.
    alice.engine.send_text(&bob_user, "one".into()).unwrap();
    assert!(alice.engine.outbox.encrypt_pending);
    alice.settle().await;

    // A session comes by another way than the claim's answer (no pass over what waits):
    // "two" must still wait behind "one", not overtake it.
    alice.start_session(&mut bob);
    let two = alice.engine.send_text(&bob_user, "two".into()).unwrap();
    assert_eq!(two.status, MessageStatus::Pending);
    assert!(alice.courier.carried().is_empty(), "two went ahead of one");

    // The pass over what waits sends both, in order; then nothing waits, and "three" goes
    // at once without a look at the store's waiting messages.
    alice.engine.encrypt_waiting(true);
    let carried = alice.carry(2).await;
    alice.engine.encrypt_waiting(true);
    assert!(!alice.engine.outbox.encrypt_pending);
    alice.engine.send_text(&bob_user, "three".into()).unwrap();
    assert!(!alice.engine.outbox.encrypt_pending);
    let three = alice.carry(3).await;
    assert_eq!(three.len(), 3, "three did not go at once");
    for ct in carried.iter().chain(three.last()) {
        bob.engine.on_direct(alice.peer(), 0, ct.clone());
    }
    let texts = shown_texts(&mut bob);
    assert_eq!(texts, ["one", "two", "three"]);
}

/// The texts `h` showed since the last look at its events, in order.
fn shown_texts(h: &mut Harness) -> Vec<String> {
    h.events()
        .into_iter()
        .filter_map(|ev| match ev {
            Event::Message { message } => Some(message.text),
            _ => None,
        })
        .collect()
}
