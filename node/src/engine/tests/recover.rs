//! The receiver's side of order, between two engines whose rows travel in memory: a
//! message far ahead of its chain waits (by the engine's clock) for the earlier ones, then
//! is read; an earlier one whose key is gone by then is reported lost and asked for again;
//! a copy of what was read is acknowledged silently.

use std::time::Duration;

use super::{Harness, alice_and_bob};
use crate::{
    consts::{MAX_SAFE_SKIP, REORDER_WAIT},
    types::Event,
};

/// Hands Bob the `n`th text (from 1) Alice's courier carried, as the direct path would.
fn deliver(bob: &mut Harness, from: &Harness, carried: &[Vec<u8>], n: usize) {
    bob.engine.on_direct(from.peer(), 0, carried[n - 1].clone());
}

/// Alice sends `n` texts to `to` and returns their ciphertexts as her courier carried them.
async fn send_texts(alice: &mut Harness, to: &str, n: usize) -> Vec<Vec<u8>> {
    for i in 1..=n {
        alice.engine.send_text(to, format!("t{i}")).unwrap();
    }
    alice.carry(n).await
}

/// The `undecryptable` reasons among Bob's events since the last look, and the seqs shown.
fn seen(bob: &mut Harness) -> (Vec<String>, Vec<u64>) {
    let mut reasons = Vec::new();
    let mut shown = Vec::new();
    for ev in bob.events() {
        match ev {
            Event::Undecryptable { reason, .. } => reasons.push(reason),
            Event::Message { message } => shown.push(message.seq),
            _ => {}
        }
    }
    (reasons, shown)
}

#[tokio::test]
async fn a_message_ahead_waits_then_a_lost_key_is_asked_for_and_a_copy_is_not() {
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    // Past vodozemac's 40 kept keys: reading the last before the others loses the first.
    const TEXTS: usize = 45;
    let carried = send_texts(&mut alice, &bob_user, TEXTS).await;
    deliver(&mut bob, &alice, &carried, 1);
    assert_eq!(seen(&mut bob), (vec![], vec![1]));
    // The last one is far ahead of the chain: it waits for the earlier ones.
    assert!(TEXTS as u64 - 2 > MAX_SAFE_SKIP);
    deliver(&mut bob, &alice, &carried, TEXTS);
    bob.clock.advance(REORDER_WAIT - Duration::from_millis(1));
    deliver(&mut bob, &alice, &carried, TEXTS);
    assert_eq!(seen(&mut bob), (vec![], vec![]), "it waits");
    assert_eq!(bob.engine.inbox.reorder.len(), 1);
    // Its wait is over: it is read (and held back, its predecessor missing).
    bob.clock.advance(Duration::from_millis(1));
    deliver(&mut bob, &alice, &carried, TEXTS);
    assert!(bob.engine.inbox.reorder.is_empty());
    assert_eq!(seen(&mut bob), (vec![], vec![]));
    assert!(
        bob.engine
            .hold
            .is_held(crate::engine::parse_message_id(&last_id(&alice)).unwrap())
    );
    // The second's key went when the last was read: lost, reported, asked for again.
    deliver(&mut bob, &alice, &carried, 2);
    assert_eq!(seen(&mut bob).0, ["message_key_gone"]);
    assert_eq!(bob.engine.inbox.recovery.undecryptable, 1);
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 1);
    assert_eq!(
        bob.carry(1).await.len(),
        1,
        "the resend request went to Alice"
    );
    // A copy of the last one, read before, is acknowledged without a word.
    deliver(&mut bob, &alice, &carried, TEXTS);
    assert_eq!(seen(&mut bob), (vec![], vec![]));
    assert_eq!(bob.engine.inbox.recovery.undecryptable, 1);
    // One whose key was kept is still read.
    deliver(&mut bob, &alice, &carried, 20);
    assert!(
        bob.engine
            .store
            .has_sequence(
                &tern_store::ConversationId(alice.engine.me.user_hex.clone()),
                &alice.engine.me.device_hex,
                20
            )
            .unwrap()
    );
}

/// The last of Alice's texts Bob holds in order.
fn held(bob: &Harness, alice: &Harness) -> u64 {
    let conv = tern_store::ConversationId(alice.engine.me.user_hex.clone());
    bob.engine
        .store
        .contiguous_sequence(&conv, &alice.engine.me.device_hex)
        .unwrap()
}

/// The id of the newest text Alice sent.
fn last_id(alice: &Harness) -> String {
    alice
        .engine
        .store
        .conversations(None, 10)
        .unwrap()
        .conversations[0]
        .last_message
        .as_ref()
        .unwrap()
        .id
        .to_string()
}

#[tokio::test]
async fn a_copy_older_than_the_sessions_memory_is_told_from_a_loss_by_the_ledger() {
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    // More than the session itself remembers as read.
    let texts = tern_crypto::consts::PAIRWISE_DUPLICATE_WINDOW + 2;
    let carried = send_texts(&mut alice, &bob_user, texts).await;
    for n in 1..=texts {
        deliver(&mut bob, &alice, &carried, n);
    }
    let (reasons, shown) = seen(&mut bob);
    assert!(reasons.is_empty());
    assert_eq!(shown.len(), texts);
    // The first one comes again (a relay's copy): acknowledged, nothing reported or asked.
    deliver(&mut bob, &alice, &carried, 1);
    assert_eq!(seen(&mut bob), (vec![], vec![]));
    assert_eq!(bob.engine.inbox.recovery.undecryptable, 0);
    assert!(bob.engine.inbox.lost.is_empty());
}

/// Hands `to` every payload `from`'s courier carried since `done` (once `from`'s outbox has
/// gone), as the direct path would; moves `done` past them.
async fn pass(from: &mut Harness, to: &mut Harness, done: &mut usize) {
    from.settle_until(|h| h.engine.store.outbox_depth().unwrap() == 0)
        .await;
    let carried = from.courier.carried();
    for payload in &carried[*done..] {
        to.engine.on_direct(from.peer(), 0, payload.clone());
    }
    *done = carried.len();
}

/// More texts lost than one resend brings (a relay lost a long burst): the receiver asks
/// again from where the first answer left off, until the gap is filled.
#[tokio::test]
async fn a_loss_larger_than_one_resend_is_asked_for_until_it_is_filled() {
    use crate::consts::{HOLD_BACK, MAX_RESEND, RESEND_INTERVAL};
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    let total = MAX_RESEND as usize + 102;
    let carried = send_texts(&mut alice, &bob_user, total).await;
    deliver(&mut bob, &alice, &carried, 1);
    // Only the last comes: the ones between were lost.
    deliver(&mut bob, &alice, &carried, total);
    bob.clock.advance(REORDER_WAIT);
    deliver(&mut bob, &alice, &carried, total);
    assert_eq!(held(&bob, &alice), 1);
    let (mut to_alice, mut to_bob) = (bob.courier.carried().len(), total);
    let mut rounds = 0;
    while held(&bob, &alice) < total as u64 {
        rounds += 1;
        assert!(rounds <= 8, "stuck at {} of {total}", held(&bob, &alice));
        bob.clock.advance(HOLD_BACK.max(RESEND_INTERVAL));
        bob.engine.release_held();
        pass(&mut bob, &mut alice, &mut to_alice).await;
        pass(&mut alice, &mut bob, &mut to_bob).await;
    }
    assert!(bob.engine.inbox.recovery.resends_asked >= 2);
    assert_eq!(
        alice.engine.inbox.recovery.texts_resent,
        total as u64 - 2,
        "each lost text was sent again once"
    );
}

/// Alice and Bob, with `sent` texts from Alice of which Bob read the first `read`: the two,
/// and the ciphertexts Alice's courier carried.
async fn texts_read(sent: usize, read: usize) -> (Harness, Harness, Vec<Vec<u8>>) {
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    let carried = send_texts(&mut alice, &bob_user, sent).await;
    for n in 1..=read {
        deliver(&mut bob, &alice, &carried, n);
    }
    (alice, bob, carried)
}

/// The end of a burst lost (a relay that lost it) with nothing sent after it: the sender,
/// whose texts stay unreceipted past the last receipted one, tells the contact how far it
/// has sent once the contact is online, and the contact asks for the rest.
#[tokio::test]
async fn texts_lost_at_the_end_of_a_burst_are_noticed_once_the_contact_is_online() {
    use crate::consts::REORDER_WAIT;
    let (mut alice, mut bob, carried) = texts_read(5, 3).await;
    // Bob's receipt for the three he has reaches Alice.
    bob.engine.flush_delivered();
    let (mut to_alice, mut to_bob) = (0, carried.len());
    pass(&mut bob, &mut alice, &mut to_alice).await;
    assert_eq!(held(&bob, &alice), 3);
    // Not told within the first minute, nor while Bob is offline.
    alice.clock.advance(Duration::from_secs(59));
    alice.engine.tell_tails();
    alice.clock.advance(Duration::from_secs(31));
    alice.engine.tell_tails();
    assert_eq!(alice.courier.carried().len(), to_bob, "nothing told");
    // Bob is online: told once.
    alice.engine.relays.peers_up.insert(bob.peer());
    alice.clock.advance(Duration::from_secs(31));
    alice.engine.tell_tails();
    alice.clock.advance(Duration::from_secs(31));
    alice.engine.tell_tails();
    pass(&mut alice, &mut bob, &mut to_bob).await;
    assert_eq!(to_bob, carried.len() + 1, "told once");
    // Bob looks again a while later (what was on its way would have come) and asks.
    bob.engine.check_tails();
    bob.engine.release_held();
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 0);
    bob.clock.advance(REORDER_WAIT);
    bob.engine.check_tails();
    bob.engine.release_held();
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 1);
    pass(&mut bob, &mut alice, &mut to_alice).await;
    pass(&mut alice, &mut bob, &mut to_bob).await;
    assert_eq!(held(&bob, &alice), 5, "the lost end came again");
    assert_eq!(alice.engine.inbox.recovery.texts_resent, 2);
    // Receipted now: nothing more is told.
    bob.engine.flush_delivered();
    pass(&mut bob, &mut alice, &mut to_alice).await;
    alice.clock.advance(Duration::from_secs(3600));
    alice.engine.tell_tails();
    assert_eq!(alice.courier.carried().len(), to_bob, "nothing more told");
}

/// A receipt lost on the way (a relay that lost it): the texts it covered stay `sent` at the
/// sender until the receiver, told how far the sender has sent, receipts them again.
#[tokio::test]
async fn texts_whose_receipt_was_lost_are_receipted_again_when_the_sender_says_how_far_it_sent() {
    let (mut alice, mut bob, carried) = texts_read(3, 3).await;
    let bob_user = bob.engine.me.user_hex.clone();
    // Bob's receipt is lost.
    bob.engine.flush_delivered();
    bob.settle_until(|h| h.engine.store.outbox_depth().unwrap() == 0)
        .await;
    let mut to_alice = bob.courier.carried().len();
    let statuses = |alice: &Harness| -> Vec<String> {
        alice
            .engine
            .store
            .history(
                &tern_store::ConversationId(bob_user.clone()),
                tern_store::Page::Latest,
                Some(10),
            )
            .unwrap()
            .iter()
            .map(|m| format!("{:?}", m.status))
            .collect()
    };
    assert_eq!(statuses(&alice), ["Sent", "Sent", "Sent"]);
    alice.engine.relays.peers_up.insert(bob.peer());
    alice.clock.advance(Duration::from_secs(61));
    alice.engine.tell_tails();
    let mut to_bob = carried.len();
    pass(&mut alice, &mut bob, &mut to_bob).await;
    assert_eq!(to_bob, carried.len() + 1, "told how far she sent");
    bob.engine.flush_delivered();
    pass(&mut bob, &mut alice, &mut to_alice).await;
    assert_eq!(statuses(&alice), ["Delivered", "Delivered", "Delivered"]);
    assert_eq!(
        bob.engine.inbox.recovery.resends_asked, 0,
        "nothing was lost"
    );
}

/// A device told how far a contact has sent that already holds it all does nothing.
#[tokio::test]
async fn a_device_that_holds_everything_it_is_told_of_asks_for_nothing() {
    use crate::consts::REORDER_WAIT;
    let (mut alice, mut bob, _) = texts_read(3, 3).await;
    let bob_user = bob.engine.me.user_hex.clone();
    let alice_user = alice.engine.me.user;
    let alice_device = alice.engine.me.keys.device.device_id();
    bob.engine.on_sent_up_to(&alice_user, alice_device, (1, 3));
    // Told of one more than it holds, which then arrives in time: nothing asked either.
    bob.engine.on_sent_up_to(&alice_user, alice_device, (1, 4));
    alice.engine.send_text(&bob_user, "t4".into()).unwrap();
    let more = alice.carry(4).await;
    deliver(&mut bob, &alice, &more, 4);
    bob.clock.advance(REORDER_WAIT);
    bob.engine.check_tails();
    bob.engine.release_held();
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 0);
}

/// A gap whose resend brought nothing (the sender no longer has those texts) is given up,
/// and a later gap is asked for from above it, not from below it again.
#[tokio::test]
async fn a_later_gap_is_asked_for_from_above_one_given_up_on() {
    use crate::consts::{HOLD_BACK, RESEND_INTERVAL};
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    let carried = send_texts(&mut alice, &bob_user, 9).await;
    // 2 to 4 never come; 5 and 6 do.
    for n in [1, 5, 6] {
        deliver(&mut bob, &alice, &carried, n);
    }
    bob.clock.advance(HOLD_BACK);
    bob.engine.release_held();
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 1);
    // That request is lost (as if Alice no longer had them): it brings nothing, given up.
    bob.settle_until(|h| h.engine.store.outbox_depth().unwrap() == 0)
        .await;
    let mut to_alice = bob.courier.carried().len();
    bob.clock.advance(RESEND_INTERVAL);
    bob.engine.release_held();
    bob.clock.advance(RESEND_INTERVAL);
    bob.engine.release_held();
    assert!(bob.engine.inbox.resends.is_empty(), "given up");
    // 7 and 8 are lost too; 9 comes: they are asked for from 6 on, not from 1.
    deliver(&mut bob, &alice, &carried, 9);
    bob.clock.advance(HOLD_BACK.max(RESEND_INTERVAL));
    bob.engine.release_held();
    assert_eq!(bob.engine.inbox.recovery.resends_asked, 2);
    let mut to_bob = carried.len();
    pass(&mut bob, &mut alice, &mut to_alice).await;
    assert_eq!(
        alice.engine.inbox.recovery.texts_resent, 2,
        "only 7 and 8 were asked for"
    );
    pass(&mut alice, &mut bob, &mut to_bob).await;
    let conv = tern_store::ConversationId(alice.engine.me.user_hex.clone());
    let device = &alice.engine.me.device_hex;
    for n in 7..=8 {
        assert!(bob.engine.store.has_sequence(&conv, device, n).unwrap());
    }
}
