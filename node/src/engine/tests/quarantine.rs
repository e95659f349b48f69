//! Mail from a device of no known user waits in the quarantine and is read once its sender
//! is known; a message there that waits for the earlier ones of its chain is read on a later
//! pass, with nothing else arriving to bring the quarantine up again. Status says what
//! waits there, and what was dropped after a week.

use libp2p::PeerId;
use serde_bytes::ByteBuf;
use tern_relay::wire::mailbox::Envelope;

use super::Harness;
use crate::consts::MAX_SAFE_SKIP;

/// Hands `to` a page of mail from `from`'s device: `carried[n - 1]` for each `n`, in order.
fn mail(to: &mut Harness, from: &Harness, carried: &[Vec<u8>], ns: &[usize]) {
    let page = ns
        .iter()
        .map(|n| Envelope {
            id: *n as u64,
            sender: from.peer(),
            deposited_ms: 0,
            ciphertext: ByteBuf::from(carried[n - 1].clone()),
            intro: true,
        })
        .collect();
    to.engine.on_mail(PeerId::random(), page);
}

#[tokio::test]
async fn a_quarantined_message_that_waits_for_its_chain_is_read_on_a_later_pass() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    // Alice knows Bob; Bob does not know Alice yet.
    alice.add(&bob).await;
    alice.start_session(&mut bob);
    let bob_user = bob.engine.me.user_hex.clone();
    // Far enough apart that the last is read only after the ones before it.
    let n = MAX_SAFE_SKIP as usize + 4;
    for i in 1..=n {
        alice.engine.send_text(&bob_user, format!("t{i}")).unwrap();
    }
    let carried = alice.carry(n).await;
    // The first, then the last (pushed ahead of the rest), then the rest: all quarantined.
    let order: Vec<usize> = [1, n].into_iter().chain(2..n).collect();
    mail(&mut bob, &alice, &carried, &order);
    assert!(bob.shown().is_empty(), "nothing is read from a stranger");
    // Status says what waits, and from how many devices.
    let r = bob.engine.status_info(Vec::new()).unwrap().recovery;
    assert_eq!((r.strangers_waiting, r.stranger_devices), (n as u64, 1));

    // Bob adds Alice: the quarantine is read, in the order it came.
    bob.add(&alice).await;
    bob.engine.replay_quarantine();
    let seqs: Vec<u64> = bob.shown().into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        seqs,
        (1..n as u64).collect::<Vec<_>>(),
        "the last one waits"
    );

    // The next pass (the next outbox tick) reads it.
    bob.engine.replay_quarantine();
    assert_eq!(bob.shown(), vec![(n as u64, false)]);
    let r = bob.engine.status_info(Vec::new()).unwrap().recovery;
    assert_eq!((r.strangers_waiting, r.strangers_expired), (0, 0));
}

#[tokio::test]
async fn mail_from_a_stranger_not_added_within_a_week_is_dropped_and_counted() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    alice.add(&bob).await;
    alice.start_session(&mut bob);
    let bob_user = bob.engine.me.user_hex.clone();
    for i in 1..=3 {
        alice.engine.send_text(&bob_user, format!("t{i}")).unwrap();
    }
    let carried = alice.carry(3).await;
    mail(&mut bob, &alice, &carried, &[1, 2, 3]);
    bob.engine.replay_quarantine();
    let r = bob.engine.status_info(Vec::new()).unwrap().recovery;
    assert_eq!((r.strangers_waiting, r.strangers_expired), (3, 0));
    // A week passes without Bob adding Alice.
    bob.clock.advance(std::time::Duration::from_millis(
        crate::consts::QUARANTINE_TTL_MS as u64 + 1,
    ));
    bob.engine.inbox.quarantine_due = true;
    bob.engine.replay_quarantine();
    let r = bob.engine.status_info(Vec::new()).unwrap().recovery;
    assert_eq!((r.strangers_waiting, r.strangers_expired), (0, 3));
}

/// A direct text from someone known only as a fellow group member (not added as a contact)
/// is not kept, but counted, so status can say so.
#[tokio::test]
async fn a_text_from_a_group_member_not_added_is_counted() {
    let (mut alice, mut bob) = super::alice_and_bob().await;
    // Bob knows Alice only as a group member: her entry moves from contacts to peers.
    let alice_user = alice.engine.me.user;
    let state = bob.engine.people.contacts.remove(&alice_user).unwrap();
    bob.engine.people.peers.insert(alice_user, state);
    bob.engine.rebuild_device_owner();
    let bob_user = bob.engine.me.user_hex.clone();
    alice.engine.send_text(&bob_user, "hello".into()).unwrap();
    let carried = alice.carry(1).await;
    bob.engine.on_direct(alice.peer(), 0, carried[0].clone());
    assert!(bob.shown().is_empty(), "not kept");
    let r = bob.engine.status_info(Vec::new()).unwrap().recovery;
    assert_eq!(r.texts_from_non_contacts, 1);
}
