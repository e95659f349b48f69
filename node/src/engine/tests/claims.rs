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

    // Nothing waits (the store is read on the first look).
    alice.engine.encrypt_waiting(true);
    assert_eq!(awaiting(&alice), []);
    // No session: "one" is stored to wait, and the engine knows texts to Bob wait.
    alice.engine.send_text(&bob_user, "one".into()).unwrap();
    assert_eq!(awaiting(&alice), [bob.engine.me.user]);
    alice.settle().await;

    // A session comes by another way than the claim's answer (no pass over what waits):
    // "two" must still wait behind "one", not overtake it.
    alice.session_only(&mut bob);
    alice.engine.send_text(&bob_user, "two".into()).unwrap();
    assert_eq!(
        alice.waiting_texts(&bob),
        ["one", "two"],
        "two went ahead of one"
    );

    // The pass over what waits sends both, in order; then nothing waits, and "three" goes
    // at once.
    alice.engine.encrypt_waiting(true);
    let carried = alice.carry(2).await;
    assert_eq!(awaiting(&alice), []);
    alice.engine.send_text(&bob_user, "three".into()).unwrap();
    assert_eq!(awaiting(&alice), []);
    let three = alice.carry(3).await;
    assert_eq!(three.len(), 3, "three did not go at once");
    for ct in carried.iter().chain(three.last()) {
        bob.engine.on_direct(alice.peer(), 0, ct.clone());
    }
    let texts = shown_texts(&mut bob);
    assert_eq!(texts, ["one", "two", "three"]);
}

/// A contact whose texts wait for a session, with more of them than the store hands out in
/// a page, neither hides another contact's waiting texts from a send (which would then
/// overtake them) nor holds them back from the pass that encrypts them; a restart finds both.
/// Once that contact's session is there, the long queue goes a page per pass, in order, and
/// a text sent between two passes waits behind what is left of it.
#[tokio::test]
async fn a_long_queue_of_texts_waiting_for_one_contact_holds_up_no_other() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    let mut carol = Harness::named("carol");
    alice.add(&bob).await;
    alice.add(&carol).await;
    bob.add(&alice).await;
    carol.add(&alice).await;
    let (bob_user, carol_user) = (
        bob.engine.me.user_hex.clone(),
        carol.engine.me.user_hex.clone(),
    );

    // Carol's claims do not answer: more texts wait for her than a page holds.
    let page = crate::consts::OUTBOX_BATCH as usize;
    for i in 0..=page {
        alice
            .engine
            .send_text(&carol_user, format!("c{i}"))
            .unwrap();
    }
    alice.engine.send_text(&bob_user, "one".into()).unwrap();
    alice
        .settle_until(|h| h.engine.people.claiming.is_empty())
        .await;
    let mut expected = vec![bob.engine.me.user, carol.engine.me.user];
    expected.sort();
    assert_eq!(awaiting(&alice), expected);

    // Bob's session is there after a restart (what waits is read from the store again):
    // "two" still waits behind "one".
    alice.session_only(&mut bob);
    alice.engine.outbox.awaiting = None;
    alice.engine.send_text(&bob_user, "two".into()).unwrap();
    assert_eq!(
        alice.waiting_texts(&bob),
        ["one", "two"],
        "two went ahead of one"
    );
    assert_eq!(awaiting(&alice), expected);

    // The pass over what waits reaches Bob's texts behind Carol's page: both go, in order,
    // and only Carol's still wait.
    alice.engine.encrypt_waiting(true);
    let carried = alice.carry(2).await;
    assert_eq!(carried.len(), 2);
    for ct in &carried {
        bob.engine.on_direct(alice.peer(), 0, ct.clone());
    }
    assert_eq!(shown_texts(&mut bob), ["one", "two"]);
    assert_eq!(awaiting(&alice), [carol.engine.me.user]);

    // Carol's claim answers; the pass it starts takes one page, so Carol's texts still wait
    // and "late" waits behind them; the next pass takes the rest, "late" last.
    alice.start_session(&mut carol);
    assert_eq!(alice.waiting_texts(&carol), [format!("c{page}")]);
    alice.engine.send_text(&carol_user, "late".into()).unwrap();
    assert_eq!(
        alice.waiting_texts(&carol),
        [format!("c{page}"), "late".into()]
    );
    alice.engine.encrypt_waiting(false);
    assert_eq!(awaiting(&alice), []);
    let carried = alice.carry(2 + page + 2).await;
    for ct in &carried[2..] {
        carol.engine.on_direct(alice.peer(), 0, ct.clone());
    }
    let mut want: Vec<String> = (0..=page).map(|i| format!("c{i}")).collect();
    want.push("late".into());
    assert_eq!(shown_texts(&mut carol), want);
}

/// The contacts `h`'s engine knows texts wait for (read from the store if not yet).
fn awaiting(h: &Harness) -> Vec<tern_crypto::UserId> {
    h.engine
        .outbox
        .awaiting
        .as_ref()
        .map(|a| a.iter().copied().collect())
        .unwrap_or_default()
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
