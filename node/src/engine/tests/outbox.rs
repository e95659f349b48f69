//! Lanes: a failed row holds its lane back for its backoff (or the relay's `retry_after`),
//! nothing behind it overtakes it, and when it goes the rows follow in encryption order.
//! Rows queued while their lane runs join the run.

use std::time::Duration;

use tern_relay::wire::{
    ErrorCode, Rejection,
    presence::{Entry, State},
};
use tern_store::Status;

use libp2p::PeerId;

use super::{Harness, T0_MS, other_device, queue_group_text, queue_text};
use crate::{
    consts::{LANE_BATCH, RETRY_BASE, RETRY_MAX},
    engine::{relay_peer, send::backoff},
    net::NetError,
};

const BOB: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap()
}

/// (attempts, next attempt) of the first row of `device`'s lane.
fn head(h: &Harness, device: &str) -> Option<(u32, i64)> {
    h.engine
        .store
        .lane(device, 10)
        .unwrap()
        .first()
        .map(|r| (r.attempts, r.next_attempt_ms))
}

fn down() -> NetError {
    NetError::Transport("unreachable".into())
}

#[tokio::test]
async fn a_failed_row_holds_its_lane_for_the_backoff_then_the_rows_go_in_order() {
    let mut h = Harness::new();
    let device = other_device();
    let ids: Vec<_> = (1..=3)
        .map(|n| queue_text(&mut h, BOB, &device, n))
        .collect();
    h.courier.answer(Err(down()));
    h.engine.dispatch_lanes(false);
    h.settle().await;
    // The lane stopped at its first row: the two behind it were not tried.
    assert_eq!(h.courier.carried(), [vec![1]]);
    assert_eq!(head(&h, &device), Some((1, T0_MS + ms(backoff(0)))));
    // A row queued meanwhile does not start the waiting lane.
    let late = queue_text(&mut h, BOB, &device, 4);
    let rows = h.engine.store.lane(&device, 10).unwrap();
    h.engine
        .kick_lanes_for(&[rows.last().unwrap().delivery.clone()]);
    assert!(h.engine.outbox.lanes_busy.is_empty());
    // Not before the backoff has passed...
    h.clock.advance(backoff(0) - Duration::from_millis(1));
    h.engine.dispatch_lanes(false);
    assert!(
        h.engine.outbox.lanes_busy.is_empty(),
        "the lane waits its backoff"
    );
    assert_eq!(h.courier.carried().len(), 1);
    // ...then the failed row first, and the others after it in the order encrypted.
    h.clock.advance(Duration::from_millis(1));
    h.engine.dispatch_lanes(false);
    h.settle().await;
    assert_eq!(
        h.courier.carried(),
        [vec![1], vec![1], vec![2], vec![3], vec![4]]
    );
    assert_eq!(head(&h, &device), None, "every row was acknowledged");
    for id in ids.into_iter().chain([late]) {
        assert_eq!(
            h.engine.store.message(id).unwrap().unwrap().status,
            Status::Sent
        );
    }
}

#[tokio::test]
async fn each_failure_doubles_the_wait_and_a_relays_retry_after_wins() {
    let mut h = Harness::new();
    let device = other_device();
    queue_text(&mut h, BOB, &device, 1);
    queue_text(&mut h, BOB, &device, 2);
    let mut now = T0_MS;
    for attempt in 0..3 {
        h.courier.answer(Err(down()));
        h.engine.dispatch_lanes(false);
        h.settle().await;
        let wait = backoff(attempt);
        assert_eq!(wait, RETRY_BASE * 2u32.pow(attempt));
        assert_eq!(head(&h, &device), Some((attempt + 1, now + ms(wait))));
        h.clock.advance(wait);
        now += ms(wait);
    }
    // A relay that says when to come back is believed (up to RETRY_MAX), not the backoff.
    let retry_after = Duration::from_millis(7_250);
    h.courier.answer(Err(NetError::Rejected(Rejection {
        code: ErrorCode::RateLimited,
        retry_after_ms: Some(u64::try_from(retry_after.as_millis()).unwrap()),
    })));
    h.engine.dispatch_lanes(false);
    h.settle().await;
    assert_eq!(head(&h, &device), Some((4, now + ms(retry_after))));
    h.courier.answer(Err(NetError::Rejected(Rejection {
        code: ErrorCode::RateLimited,
        retry_after_ms: Some(3_600_000),
    })));
    h.clock.advance(retry_after);
    now += ms(retry_after);
    h.engine.dispatch_lanes(false);
    h.settle().await;
    assert_eq!(head(&h, &device), Some((5, now + ms(RETRY_MAX))));
    // Only the first row was ever tried.
    assert!(h.courier.carried().iter().all(|p| p == &[1]));
}

#[tokio::test]
async fn a_reconnect_sends_a_waiting_lane_at_once() {
    let mut h = Harness::new();
    let device = other_device();
    queue_text(&mut h, BOB, &device, 1);
    h.courier.answer(Err(down()));
    h.engine.dispatch_lanes(false);
    h.settle().await;
    h.engine.dispatch_lanes(false);
    assert!(h.engine.outbox.lanes_busy.is_empty());
    // `all` (a relay came up): backoff or not.
    h.engine.dispatch_lanes(true);
    h.settle().await;
    assert_eq!(h.courier.carried(), [vec![1], vec![1]]);
    assert_eq!(head(&h, &device), None);
}

/// Queues text `n` to `device` of `user` and lets its lane go once: the relay refuses it,
/// its mailbox share full, so the row waits its backoff.
async fn refused_at_first(h: &mut Harness, user: &str, device: &str, n: u8) {
    queue_text(h, user, device, n);
    h.courier.answer(Err(NetError::Rejected(Rejection {
        code: ErrorCode::ShareFull,
        retry_after_ms: None,
    })));
    h.engine.dispatch_lanes(false);
    h.settle().await;
}

/// A row a full mailbox share refused waits its backoff; when a relay tells that the device
/// came online (it drains its mailbox now), its lane goes at once. Told again while the
/// device is still up, or told it is offline, nothing starts before the backoff.
#[tokio::test]
async fn a_device_coming_online_sends_its_waiting_lane_at_once() {
    let mut alice = Harness::named("alice");
    let bob = Harness::with_relays("bob", 1);
    alice.add(&bob).await;
    let peer = bob.peer();
    let device = peer.to_string();
    let relay = relay_peer(&bob.engine.relays.home_relays[0]).unwrap();
    let user = bob.engine.me.user_hex.clone();
    let told = |state| {
        vec![Entry {
            peer,
            state,
            last_seen_ms: None,
        }]
    };
    let waiting = |h: &Harness| h.engine.outbox.lanes_busy.is_empty();
    let attempts = |h: &Harness| {
        let rows = h.engine.store.lane_at(&device, &relay.to_string(), 10);
        rows.unwrap().first().map(|r| r.attempts)
    };

    refused_at_first(&mut alice, &user, &device, 1).await;
    assert_eq!(attempts(&alice), Some(1));
    alice.engine.on_presence(relay, told(State::Offline));
    assert!(waiting(&alice), "an offline device drains nothing");
    alice.engine.on_presence(relay, told(State::Online));
    alice.settle().await;
    assert_eq!(alice.courier.carried(), [vec![1], vec![1]]);
    assert_eq!(attempts(&alice), None);

    // Still online: a refusal now waits its backoff, whatever the relay says again.
    refused_at_first(&mut alice, &user, &device, 2).await;
    assert_eq!(attempts(&alice), Some(1));
    alice.engine.on_presence(relay, told(State::Away));
    assert!(waiting(&alice), "the device was up already");
    // Gone and back (away counts as up: the device is connected).
    alice.engine.on_presence(relay, told(State::Offline));
    alice.engine.on_presence(relay, told(State::Away));
    alice.settle().await;
    assert_eq!(
        alice.courier.carried(),
        [vec![1], vec![1], vec![2], vec![2]]
    );
    assert_eq!(attempts(&alice), None);

    // A lane at a relay whose last dial failed is not started by it: it would fail again.
    refused_at_first(&mut alice, &user, &device, 3).await;
    alice.engine.relays.dial_problems.insert(
        relay,
        crate::net::DialProblem::Unreachable("connection refused".into()),
    );
    alice.engine.on_presence(relay, told(State::Offline));
    alice.engine.on_presence(relay, told(State::Online));
    assert!(waiting(&alice), "the relay is known to be down");
    assert_eq!(attempts(&alice), Some(1));
}

/// Group fan-out rows likewise: one that failed waits its backoff until the device comes
/// online, then goes at once; rows for other devices keep their backoff.
#[tokio::test]
async fn a_device_coming_online_gets_its_waiting_group_rows_at_once() {
    let mut alice = Harness::named("alice");
    let bob = Harness::with_relays("bob", 1);
    alice.add(&bob).await;
    let peer = bob.peer();
    let relay = relay_peer(&bob.engine.relays.home_relays[0]).unwrap();
    let user = bob.engine.me.user_hex.clone();
    let shared = [
        (user.clone(), peer.to_string()),
        (user.clone(), other_device()),
    ];
    queue_group_text(&mut alice, &user, &shared);
    alice.courier.set_down(relay, true);
    alice.engine.dispatch_fanouts(false);
    alice
        .settle_until(|h| h.engine.outbox.fan_in_flight.is_empty())
        .await;
    assert_eq!(alice.courier.carried_at(relay).len(), 2);
    alice.courier.set_down(relay, false);
    alice.engine.on_presence(
        relay,
        vec![Entry {
            peer,
            state: State::Online,
            last_seen_ms: None,
        }],
    );
    alice
        .settle_until(|h| h.engine.outbox.fan_in_flight.is_empty())
        .await;
    // Bob's device got it again at once; the other device's row waits its backoff.
    let carried = alice.courier.carried.lock().unwrap().clone();
    let to = |p: PeerId| carried.iter().filter(|(d, _, _)| *d == p).count();
    assert_eq!(to(peer), 2);
    assert_eq!(carried.len(), 3);
    // Bob's row left the outbox; the other device's is still there.
    let left = alice.engine.store.due_fanout(i64::MAX, 10).unwrap();
    let left: Vec<_> = left.iter().map(|e| &e.delivery.recipient_device).collect();
    assert_eq!(left, [&shared[1].1]);
}

/// Rows queued while their lane's task runs are handed to it (on a slow link they go into
/// the deposit stream's window at once, not a round trip later after the run's answers), as
/// many as its channel holds; the rest go on the next run. Everything goes once, in order,
/// and is acknowledged.
#[tokio::test]
async fn rows_queued_while_their_lane_runs_join_the_run_in_order() {
    let mut h = Harness::new();
    let device = other_device();
    let open = h.courier.hold();
    let mut ids = vec![queue_text(&mut h, BOB, &device, 1)];
    h.engine.dispatch_lanes(false);
    assert_eq!(h.engine.outbox.lanes_busy.len(), 1, "the lane runs");
    // More than the run's channel holds, queued while the first is unanswered.
    let queued = u8::try_from(LANE_BATCH).unwrap() + 6;
    for n in 2..=queued + 1 {
        ids.push(queue_text(&mut h, BOB, &device, n));
        let rows = h.engine.store.lane(&device, 200).unwrap();
        h.engine
            .kick_lanes_for(&[rows.last().unwrap().delivery.clone()]);
    }
    let joined: Vec<Vec<u8>> = (1..=LANE_BATCH as u8 + 1).map(|n| vec![n]).collect();
    let wait = async {
        while h.courier.carried() != joined {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(super::REPORT_WAIT, wait)
        .await
        .expect("the rows queued meanwhile reach the running task");
    assert_eq!(h.engine.outbox.lanes_busy.len(), 1, "still one run");
    assert_eq!(
        h.engine.store.lane(&device, 200).unwrap().len(),
        usize::from(queued) + 1,
        "nothing is acknowledged before the answers"
    );
    // The answers: the run's rows are taken, and the rest follow on the next run.
    open.send(true).unwrap();
    while !h.engine.store.lane(&device, 200).unwrap().is_empty() {
        h.settle().await;
    }
    let all: Vec<Vec<u8>> = (1..=queued + 1).map(|n| vec![n]).collect();
    assert_eq!(h.courier.carried(), all, "each once, in order");
    for id in ids {
        assert_eq!(
            h.engine.store.message(id).unwrap().unwrap().status,
            Status::Sent
        );
    }
}
