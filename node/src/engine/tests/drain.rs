//! A removed home relay's mailbox is still drained for [`RELAY_DRAIN`] by the engine's clock,
//! and the relays drained are kept in `config.json`, at most [`MAX_DRAINING_RELAYS`].

use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::oneshot;

use super::{Harness, other_device};
use crate::consts::{MAX_DRAINING_RELAYS, RELAY_DRAIN};
use crate::engine::{relay_peer, relay_set::RelayCommand};

/// Alice with `relays` home relays saved, as `tern up --relay` leaves them.
fn alice(relays: usize) -> Harness {
    let mut h = Harness::with_relays("alice", relays);
    h.engine.me.config.relays = h.engine.home_relay_addrs();
    h
}

/// Removes a home relay, or adds one as `relay add` does once the relay answered at the
/// address (there is no network here to ask).
fn command(h: &mut Harness, remove: bool, addr: &str) {
    if !remove {
        h.engine.relay_added(addr.parse().unwrap()).unwrap();
        return;
    }
    let (reply, mut answer) = oneshot::channel();
    let addr = addr.to_owned();
    h.engine
        .on_relay_command(RelayCommand::Remove { addr, reply });
    answer.try_recv().unwrap().unwrap();
}

fn peer(addr: &str) -> PeerId {
    relay_peer(&addr.parse().unwrap()).unwrap()
}

/// The relays drained as `config.json` has them.
fn saved(h: &Harness) -> Vec<String> {
    let config = h.engine.me.home.config().unwrap();
    config.draining_relays.into_iter().map(|d| d.addr).collect()
}

#[tokio::test]
async fn a_removed_relay_is_drained_until_its_time_is_over_and_not_after() {
    let mut h = alice(2);
    let removed = h.engine.relays.home_relays[1].to_string();
    command(&mut h, true, &removed);
    assert_eq!(
        h.engine.relays.home_relays.len(),
        1,
        "no longer a home relay"
    );
    assert!(h.engine.mailbox_relay_peers().contains(&peer(&removed)));
    assert_eq!(saved(&h), std::slice::from_ref(&removed));
    assert_eq!(h.engine.draining_infos().len(), 1, "status names it");

    h.clock.advance(RELAY_DRAIN - Duration::from_secs(1));
    h.engine.end_drains();
    assert!(h.engine.mailbox_relay_peers().contains(&peer(&removed)));
    h.clock.advance(Duration::from_secs(2));
    h.engine.end_drains();
    assert!(!h.engine.mailbox_relay_peers().contains(&peer(&removed)));
    assert!(saved(&h).is_empty());
    assert!(h.engine.draining_infos().is_empty());
}

#[tokio::test]
async fn a_drained_relay_added_again_is_a_home_relay_and_the_oldest_drain_ends_first() {
    let mut h = alice(1);
    let addrs: Vec<String> = (0..=MAX_DRAINING_RELAYS)
        .map(|_| format!("/ip4/127.0.0.1/tcp/9/p2p/{}", other_device()))
        .collect();
    // Added again: home, not drained.
    command(&mut h, false, &addrs[0]);
    command(&mut h, true, &addrs[0]);
    command(&mut h, false, &addrs[0]);
    assert!(saved(&h).is_empty());
    assert!(h.engine.home_relay_peers().contains(&peer(&addrs[0])));
    command(&mut h, true, &addrs[0]);
    // One more removed than are drained at once: the first removed stops.
    for a in &addrs[1..] {
        h.clock.advance(Duration::from_secs(1));
        command(&mut h, false, a);
        command(&mut h, true, a);
    }
    assert_eq!(saved(&h), addrs[1..]);
    assert!(!h.engine.mailbox_relay_peers().contains(&peer(&addrs[0])));
}

/// A drain asked for while one runs (the one after a relay's setup, say) starts as soon as
/// that one ends; mail left waiting for its predecessors is drained again on the tick, not
/// at once: it comes back on every drain until they arrive, and would make drains loop.
#[tokio::test]
async fn a_drain_asked_for_meanwhile_runs_at_once_and_waiting_mail_on_the_tick() {
    let mut h = alice(1);
    let relay = h.engine.home_relay_peers()[0];
    h.engine.relays.relay_up.insert(relay);
    h.engine.fetch_mailbox(relay);
    // Mail left waiting (as `on_mail` marks it), and a drain asked for meanwhile.
    h.engine.relays.refetch.insert(relay);
    h.engine.fetch_mailbox(relay);
    assert!(h.engine.relays.drain_again.contains(&relay));
    // The first drain ends (nothing answers here): the one asked for starts at once.
    h.settle().await;
    assert!(
        h.engine.relays.fetching.contains(&relay),
        "the drain asked for meanwhile runs"
    );
    assert!(h.engine.relays.drain_again.is_empty());
    // It ends too: the waiting mail is left to the tick.
    h.settle().await;
    assert!(!h.engine.relays.fetching.contains(&relay), "no drain loop");
    assert!(h.engine.relays.refetch.contains(&relay));
    h.engine.refetch_due();
    assert!(
        h.engine.relays.fetching.contains(&relay),
        "the tick drains it"
    );
}
