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
    let texts: Vec<String> = bob
        .events()
        .into_iter()
        .filter_map(|ev| match ev {
            Event::Message { message } => Some(message.text),
            _ => None,
        })
        .collect();
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
