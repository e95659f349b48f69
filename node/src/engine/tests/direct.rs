//! Online contact devices are dialed through a relay circuit (to go device to device): at
//! once through the relay that said the device is online, and again every few heartbeats
//! through the contact's relays in turn, so a dial that failed is not left for the next
//! presence change. A device is as present as the best of its relays says.

use tern_relay::wire::presence::{Entry, State};

use super::Harness;
use crate::{
    consts::{DIRECT_REDIAL_HEARTBEATS, DIRECT_REDIAL_MAX_DOUBLINGS},
    engine::{Internal, device_peer, relay_peer},
};

#[tokio::test]
async fn online_devices_are_dialed_through_the_relay_that_told_and_again_through_each() {
    let (mut alice, mut held) = Harness::holding("alice");
    alice.engine.relays.direct = true;
    let bob = Harness::with_relays("bob", 3);
    alice.add(&bob).await;
    while held.dial().is_some() {}
    let device = device_peer(&bob.engine.me.keys.device.device_id()).unwrap();
    let relays = bob.engine.relays.home_relays.clone();
    let told = |state| {
        vec![Entry {
            peer: device,
            state,
            last_seen_ms: None,
        }]
    };
    let peer = |i: usize| relay_peer(&relays[i]).unwrap();
    let via = |i: usize| Some((device, relays[i].clone()));

    // The second relay says Bob's device is online: dialed through it, not the first.
    alice.engine.on_presence(peer(1), told(State::Online));
    assert_eq!(held.dial(), via(1));

    // Dialed again (the network task passes over a device it is connected to directly),
    // first DIRECT_REDIAL_HEARTBEATS heartbeats on, then twice as long each time, through
    // each of Bob's relays in turn; not in between.
    let mut beats = (1..).map(|b| {
        alice.engine.relays.heartbeats = b;
        alice.engine.redial_online();
        (b, held.dial())
    });
    let step = DIRECT_REDIAL_HEARTBEATS;
    let (first, second, third) = (1 + step, 1 + 3 * step, 1 + 7 * step);
    let dials: Vec<_> = beats
        .by_ref()
        .take_while(|(b, _)| *b <= third)
        .filter_map(|(b, d)| d.map(|d| (b, d)))
        .collect();
    assert_eq!(
        dials,
        [
            (first, via(1).unwrap()),
            (second, via(2).unwrap()),
            (third, via(0).unwrap())
        ]
    );
    // The wait stops doubling.
    let most = step << DIRECT_REDIAL_MAX_DOUBLINGS;
    let later: Vec<u64> = beats
        .by_ref()
        .take_while(|(b, _)| *b <= third + 15 * most)
        .filter_map(|(b, d)| d.map(|_| b))
        .collect();
    let gaps: Vec<u64> = later.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(later.len() >= 10, "{later:?}");
    assert!(gaps.iter().skip(2).all(|g| *g == most), "{gaps:?}");
    drop(beats);

    // Told of again: dialed at once through the relay that told. Offline: not dialed.
    let beat = alice.engine.relays.heartbeats;
    alice.engine.on_presence(peer(0), told(State::Away));
    assert_eq!(held.dial(), via(0));
    alice.engine.on_presence(peer(0), told(State::Offline));
    alice.engine.on_presence(peer(1), told(State::Offline));
    for b in beat..beat + 10 * most {
        alice.engine.relays.heartbeats = b;
        alice.engine.redial_online();
        assert_eq!(held.dial(), None);
    }
    // With direct connections off, nothing is dialed.
    alice.engine.relays.direct = false;
    alice.engine.on_presence(peer(2), told(State::Online));
    assert_eq!(held.dial(), None);
}

/// Each relay's word on a device is kept apart: one relay saying it is offline (it lost the
/// device's connection) does not hide another that sees it online, whatever the order they
/// told in; and a relay's word that it is online goes when the relay goes down (it cannot
/// tell when the device leaves), rather than showing the device online for good.
#[tokio::test]
async fn a_device_is_as_present_as_its_best_relay_says_until_that_relay_goes() {
    let mut alice = Harness::named("alice");
    let bob = Harness::with_relays("bob", 2);
    alice.add(&bob).await;
    let device = device_peer(&bob.engine.me.keys.device.device_id()).unwrap();
    let relays = bob.engine.relays.home_relays.clone();
    let peer = |i: usize| relay_peer(&relays[i]).unwrap();
    let told = |state, last_seen_ms| told(device, state, last_seen_ms);
    let shown = |h: &Harness| shown(h, &bob);

    alice.engine.on_presence(peer(0), told(State::Online, None));
    alice
        .engine
        .on_presence(peer(1), told(State::Offline, Some(5)));
    assert_eq!(shown(&alice), ("online".into(), None));
    alice
        .engine
        .on_presence(peer(1), told(State::Offline, Some(6)));
    alice.engine.on_presence(peer(0), told(State::Online, None));
    assert_eq!(shown(&alice), ("online".into(), None));

    alice.engine.forget_presence_at(peer(0));
    assert_eq!(shown(&alice), ("offline".into(), Some(6)));
    // When it was last seen stays true with its relay gone.
    alice.engine.forget_presence_at(peer(1));
    assert_eq!(shown(&alice), ("offline".into(), Some(6)));
    // Online at one relay only, which then goes: no longer shown online.
    alice.engine.on_presence(peer(0), told(State::Away, None));
    assert_eq!(shown(&alice), ("away".into(), None));
    alice.engine.forget_presence_at(peer(0));
    assert_eq!(shown(&alice), ("offline".into(), Some(6)));
}

/// A device this node is connected to is shown online whatever its relays say (one that
/// lost sight of it, or none), also when it became a contact's after the connection came up;
/// an away a relay told stays away; once the connection goes, the relays' word is shown
/// again. The network task's own list of connections, asked every heartbeat, overrides what
/// the events said (one can be lost to a full queue).
#[tokio::test]
async fn a_connected_device_is_shown_online_until_its_connection_goes() {
    let mut alice = Harness::named("alice");
    let bob = Harness::with_relays("bob", 1);
    let device = device_peer(&bob.engine.me.keys.device.device_id()).unwrap();
    let relay = relay_peer(&bob.engine.relays.home_relays[0]).unwrap();
    let told = |state, last_seen_ms| told(device, state, last_seen_ms);
    let shown = |h: &Harness| shown(h, &bob);
    // Connected before Bob is a contact (he added Alice first and dialled her).
    alice.engine.on_net(crate::net::Event::PeerUp {
        peer: device,
        relayed: true,
    });
    alice.add(&bob).await;
    assert_eq!(shown(&alice), ("online".into(), None));
    alice
        .engine
        .on_presence(relay, told(State::Offline, Some(7)));
    assert_eq!(shown(&alice), ("online".into(), None));
    alice.engine.on_presence(relay, told(State::Away, None));
    assert_eq!(shown(&alice), ("away".into(), None));
    alice.engine.forget_presence_at(relay);
    assert_eq!(shown(&alice), ("online".into(), None));
    alice
        .engine
        .on_presence(relay, told(State::Offline, Some(8)));
    alice
        .engine
        .on_net(crate::net::Event::PeerDown { peer: device });
    assert_eq!(shown(&alice), ("offline".into(), Some(8)));

    // The network task's list wins over the events: up without a `PeerUp`, then down
    // without a `PeerDown`.
    let others: std::collections::HashSet<_> = [libp2p::PeerId::random()].into();
    let mut with_bob = others.clone();
    with_bob.insert(device);
    alice.engine.on_internal(Internal::PeersUp(with_bob));
    assert_eq!(shown(&alice), ("online".into(), None));
    alice.engine.on_internal(Internal::PeersUp(others));
    assert_eq!(shown(&alice), ("offline".into(), Some(8)));
}

/// A relay's presence word on `device`.
fn told(device: libp2p::PeerId, state: State, last_seen_ms: Option<u64>) -> Vec<Entry> {
    vec![Entry {
        peer: device,
        state,
        last_seen_ms,
    }]
}

/// `bob`'s presence as `h` shows it: state and last seen.
fn shown(h: &Harness, bob: &Harness) -> (String, Option<u64>) {
    let p = h.engine.presence_of(&bob.engine.me.user);
    (p.state, p.last_seen)
}
