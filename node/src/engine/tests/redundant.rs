//! Redundant mailboxes: every row goes to every relay of its device's user, each relay in a
//! lane of its own, so a relay that is down holds back only its own lane; a row leaves once
//! every relay took it; a group row likewise, retried only where it was not taken.

use libp2p::PeerId;
use tern_store::{MessageId, Status};

use super::{Harness, id, other_device, queue_group_text, queue_text};
use crate::{
    consts::OUTBOX_BATCH,
    engine::{relay_peer, send::backoff},
};

/// Alice, and Bob's user id, device and two relays (Bob is Alice's contact).
async fn alice_and_bob_at_two_relays() -> (Harness, String, String, Vec<PeerId>) {
    let mut alice = Harness::named("alice");
    let bob = Harness::with_relays("bob", 2);
    alice.add(&bob).await;
    let relays: Vec<PeerId> = bob
        .engine
        .relays
        .home_relays
        .iter()
        .filter_map(relay_peer)
        .collect();
    assert_eq!(relays.len(), 2);
    let user = bob.engine.me.user_hex.clone();
    (alice, user, bob.peer().to_string(), relays)
}

/// Whether the first of `relays` took every row of `device` and the second failed once at
/// its first row (its lane waits).
fn taken_by_first_only(h: &Harness, device: &str, relays: &[PeerId]) -> bool {
    let at = |r: usize| {
        h.engine
            .store
            .lane_at(device, &relays[r].to_string(), 10)
            .unwrap()
    };
    at(0).is_empty() && at(1).first().is_some_and(|row| row.attempts == 1)
}

fn status(h: &Harness, id: MessageId) -> Status {
    h.engine.store.message(id).unwrap().unwrap().status
}

#[tokio::test]
async fn a_relay_that_is_down_holds_back_only_its_own_lane() {
    let (mut alice, bob, device, relays) = alice_and_bob_at_two_relays().await;
    alice.courier.set_down(relays[1], true);
    for n in 1..=3 {
        queue_text(&mut alice, &bob, &device, n);
    }
    alice.engine.dispatch_lanes(false);
    // Two lane tasks report: the first relay took all three, the second failed at the first.
    alice
        .settle_until(|h| taken_by_first_only(h, &device, &relays))
        .await;
    assert_eq!(
        alice.courier.carried_at(relays[0]),
        [vec![1], vec![2], vec![3]]
    );
    assert_eq!(alice.courier.carried_at(relays[1]), [vec![1]]);
    let store = &alice.engine.store;
    assert!(
        store
            .lane_at(&device, &relays[0].to_string(), 10)
            .unwrap()
            .is_empty()
    );
    let waiting = store.lane_at(&device, &relays[1].to_string(), 10).unwrap();
    assert_eq!(
        waiting.len(),
        3,
        "the second relay still owes all three, in order"
    );
    assert_eq!(waiting[0].attempts, 1);
    // Held by a mailbox: sent (the person sees it left), though not at every relay yet.
    for n in 1..=3 {
        assert_eq!(status(&alice, id(n)), Status::Sent);
    }
    // The second relay is back: after its backoff it takes the rows in order, and they go.
    alice.courier.set_down(relays[1], false);
    alice.clock.advance(backoff(0));
    alice.engine.dispatch_lanes(false);
    alice
        .settle_until(|h| h.engine.store.lane(&device, 10).unwrap().is_empty())
        .await;
    assert_eq!(
        alice.courier.carried_at(relays[1]),
        [vec![1], vec![1], vec![2], vec![3]]
    );
    assert_eq!(
        alice.courier.carried_at(relays[0]).len(),
        3,
        "nothing twice"
    );
    assert!(alice.engine.store.lane(&device, 10).unwrap().is_empty());
    for n in 1..=3 {
        assert_eq!(status(&alice, id(n)), Status::Sent);
    }
}

#[tokio::test]
async fn a_group_row_goes_to_every_relay_and_again_only_where_it_was_not_taken() {
    let (mut alice, bob, device, relays) = alice_and_bob_at_two_relays().await;
    // A group text whose one shared ciphertext goes to Bob's device (as the group send
    // path records it).
    queue_group_text(&mut alice, &bob, &[(bob.clone(), device.clone())]);
    alice.courier.set_down(relays[0], true);
    alice.engine.dispatch_fanouts(false);
    // Both relays' answers are in (whatever else reports meanwhile).
    alice
        .settle_until(|h| h.engine.outbox.fan_in_flight.is_empty())
        .await;
    assert_eq!(alice.courier.carried_at(relays[1]), [b"megolm".to_vec()]);
    assert_eq!(alice.courier.carried_at(relays[0]), [b"megolm".to_vec()]);
    let taken = alice.engine.store.fanout_taken(id(10), &device).unwrap();
    assert_eq!(taken, [relays[1].to_string()]);
    // Held by a mailbox: sent, while the first relay still owes it.
    assert_eq!(status(&alice, id(10)), Status::Sent);
    alice.courier.set_down(relays[0], false);
    alice.clock.advance(backoff(0));
    alice.engine.dispatch_fanouts(false);
    alice
        .settle_until(|h| h.engine.outbox.fan_in_flight.is_empty())
        .await;
    assert_eq!(alice.courier.carried_at(relays[0]).len(), 2);
    assert_eq!(
        alice.courier.carried_at(relays[1]).len(),
        1,
        "not again where it was taken"
    );
    assert_eq!(status(&alice, id(10)), Status::Sent);
}

#[tokio::test]
async fn lanes_waiting_for_a_relay_never_keep_other_devices_from_being_looked_at() {
    let (mut alice, bob, _, relays) = alice_and_bob_at_two_relays().await;
    // More devices of Bob's with rows than one look at the outbox takes; all but the last
    // (in the order they are paged) wait for their backoff at both relays.
    let mut devices: Vec<String> = (0..=OUTBOX_BATCH).map(|_| other_device()).collect();
    devices.sort();
    for (n, device) in devices.iter().enumerate() {
        queue_text(&mut alice, &bob, device, u8::try_from(n + 1).unwrap());
    }
    let later = alice.clock.now_ms() + 3_600_000;
    let heads: Vec<i64> = devices[..devices.len() - 1]
        .iter()
        .map(|d| alice.engine.store.lane(d, 1).unwrap()[0].row)
        .collect();
    alice
        .engine
        .store
        .transaction(|tx| -> Result<(), tern_store::WriteError> {
            for row in &heads {
                for relay in &relays {
                    tx.reschedule_row_at(*row, &relay.to_string(), later)?;
                }
            }
            Ok(())
        })
        .unwrap();
    // The first look finds nothing due; the next goes on where it stopped.
    alice.engine.dispatch_lanes(false);
    assert!(alice.engine.outbox.lanes_busy.is_empty());
    alice.engine.dispatch_lanes(false);
    alice.carry(2).await;
    let last = u8::try_from(devices.len()).unwrap();
    assert_eq!(alice.courier.carried(), [vec![last], vec![last]]);
}

#[tokio::test]
async fn an_older_relay_set_arriving_late_does_not_replace_a_newer_one() {
    let (mut alice, bob, _, relays) = alice_and_bob_at_two_relays().await;
    let bob = tern_crypto::UserId::from_hex(&bob).unwrap();
    let addr = |r: &PeerId| format!("/ip4/127.0.0.1/tcp/9/p2p/{r}");
    let held = |h: &Harness| h.engine.known(&bob).unwrap().contact.relays.clone();
    // Bob announced only his second relay at 2,000, then that announcement's predecessor,
    // naming only the first, arrives through a slower relay.
    alice.engine.take_relays(&bob, &[addr(&relays[1])], 2_000);
    assert_eq!(held(&alice), [addr(&relays[1])]);
    alice.engine.take_relays(&bob, &[addr(&relays[0])], 1_000);
    assert_eq!(held(&alice), [addr(&relays[1])], "the newer set stays");
    // A later announcement replaces it.
    alice.engine.take_relays(&bob, &[addr(&relays[0])], 3_000);
    assert_eq!(held(&alice), [addr(&relays[0])]);
}

/// A relay record made at `version` (ms), naming `relays` (signed by a key of its own: the
/// record is taken as found, after the DHT lookup checked it).
fn relay_record(version: u64, relays: Vec<String>) -> tern_crypto::relay_record::SignedRelayRecord {
    let id = tern_crypto::IdentityKey::generate().unwrap();
    crate::engine::dht::tests::signed(&id, version, relays)
}

/// A contact's relay record found in the DHT is taken as a device-list message's relay set
/// is: one made before the set held (named by a message sent later) does not bring back a
/// relay, and one made after it that drops a relay lets the rows that waited only for that
/// relay leave the outbox.
#[tokio::test]
async fn a_relay_record_from_the_dht_is_taken_by_when_it_was_made_and_settles_rows() {
    let (mut alice, bob, device, relays) = alice_and_bob_at_two_relays().await;
    let user = tern_crypto::UserId::from_hex(&bob).unwrap();
    let addr = |r: &PeerId| format!("/ip4/127.0.0.1/tcp/9/p2p/{r}");
    // The set held, in any order.
    let held = |h: &Harness| {
        let mut set = h.engine.known(&user).unwrap().contact.relays.clone();
        set.sort();
        set
    };
    // A text the first relay takes and the second, down, does not.
    alice.courier.set_down(relays[1], true);
    queue_text(&mut alice, &bob, &device, 1);
    alice.engine.dispatch_lanes(false);
    let waits_at_second = |h: &Harness| taken_by_first_only(h, &device, &relays);
    alice.settle_until(waits_at_second).await;
    // Bob's message sent a second from now named both relays (the relay record of his
    // that Alice looked up when she added him was none: no DHT here).
    let t = u64::try_from(alice.clock.now_ms()).unwrap();
    let mut both = vec![addr(&relays[0]), addr(&relays[1])];
    both.sort();
    alice
        .engine
        .take_relays(&user, &both, i64::try_from(t + 1_000).unwrap());
    assert_eq!(held(&alice), both);
    // A record made before it, naming the first only, is older than that message.
    alice
        .engine
        .take_relay_record(&user, relay_record(t + 500, vec![addr(&relays[0])]))
        .unwrap();
    assert_eq!(
        held(&alice),
        both,
        "an older record does not replace the set"
    );
    assert!(waits_at_second(&alice));
    // One made after it takes the second relay out: the row, which the first took, leaves.
    alice
        .engine
        .take_relay_record(&user, relay_record(t + 2_000, vec![addr(&relays[0])]))
        .unwrap();
    assert_eq!(held(&alice), [addr(&relays[0])]);
    assert!(
        alice.engine.store.lane(&device, 10).unwrap().is_empty(),
        "nothing waits for the relay taken out"
    );
    assert_eq!(status(&alice, id(1)), Status::Sent);
}

/// Rows left waiting for a relay no longer in their user's set (a set changed without
/// settling, as earlier builds did for a relay record from the DHT) leave at the next start.
#[tokio::test]
async fn rows_waiting_for_a_relay_out_of_the_set_leave_at_start() {
    let (mut alice, bob, device, relays) = alice_and_bob_at_two_relays().await;
    let user = tern_crypto::UserId::from_hex(&bob).unwrap();
    alice.courier.set_down(relays[1], true);
    queue_text(&mut alice, &bob, &device, 1);
    alice.engine.dispatch_lanes(false);
    alice
        .settle_until(|h| {
            h.engine
                .store
                .lane_at(&device, &relays[0].to_string(), 10)
                .unwrap()
                .is_empty()
        })
        .await;
    // The second relay leaves the set as it did then: without the rows being settled.
    let first = format!("/ip4/127.0.0.1/tcp/9/p2p/{}", relays[0]);
    let c = alice.engine.people.contacts.get_mut(&user).unwrap();
    c.relays = vec![first.parse().unwrap()];
    c.contact.relays = vec![first];
    assert_eq!(alice.engine.store.lane(&device, 10).unwrap().len(), 1);
    alice.engine.settle_all_relay_sets();
    assert!(alice.engine.store.lane(&device, 10).unwrap().is_empty());
    assert_eq!(status(&alice, id(1)), Status::Sent);
}

/// A contact just added is looked up in the DHT at once: a short link names one of their
/// relays, their relay record all of them.
#[tokio::test]
async fn a_contact_just_added_is_looked_up_in_the_dht_at_once() {
    let mut alice = Harness::named("alice");
    let bob = Harness::with_relays("bob", 2);
    alice.add(&bob).await;
    assert_eq!(
        alice.engine.looked_up_at(&bob.engine.me.user),
        Some(alice.clock.now_ms())
    );
}

/// A home relay that fails to take the allow-list (here nothing answers it) is given it
/// again once `ALLOW_LIST_RETRY` passed, not only when it is next set up; a relay that is
/// not connected is not asked.
#[tokio::test]
async fn a_home_relay_that_failed_to_take_the_allow_list_is_given_it_again() {
    let mut h = Harness::with_relays("alice", 2);
    let relays = h.engine.home_relay_peers();
    h.engine.relays.relay_up.insert(relays[0]);
    h.engine.push_allow_list();
    let failed = |h: &Harness| h.engine.relays.allow_list_retry.contains_key(&relays[0]);
    h.settle_until(failed).await;
    assert!(!h.engine.relays.allow_list_retry.contains_key(&relays[1]));
    // Not due yet: nothing is tried again.
    h.engine.retry_allow_lists();
    assert!(failed(&h));
    h.clock.advance(std::time::Duration::from_secs(31));
    h.engine.retry_allow_lists();
    assert!(h.engine.relays.allow_list_retry.is_empty(), "given again");
    // It fails again, and is due again later.
    h.settle_until(failed).await;
}
