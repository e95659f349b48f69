//! Online contact devices are dialed through a relay circuit (to go device to device): at
//! once through the relay that said the device is online, and again every few heartbeats
//! through the contact's relays in turn, so a dial that failed is not left for the next
//! presence change.

use tern_relay::wire::presence::{Entry, State};

use super::Harness;
use crate::{
    consts::DIRECT_REDIAL_HEARTBEATS,
    engine::{device_peer, relay_peer},
};

#[tokio::test]
async fn online_devices_are_dialed_through_the_relay_that_told_and_again_through_each() {
    let (mut alice, mut held) = Harness::holding("alice");
    alice.engine.relays.direct = true;
    let bob = Harness::with_relays("bob", 2);
    alice.add(&bob).await;
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

    // The second relay says Bob's device is online: dialed through it, not the first.
    alice.engine.on_presence(peer(1), told(State::Online));
    assert_eq!(held.dial().await, Some((device, relays[1].clone())));

    // Dialed again every few heartbeats (the network task passes over a device it is
    // connected to directly), through each of Bob's relays in turn; not in between.
    let mut expected = Vec::new();
    for beat in 1..=3 * DIRECT_REDIAL_HEARTBEATS {
        alice.engine.relays.heartbeats = beat;
        alice.engine.redial_online();
        if beat.is_multiple_of(DIRECT_REDIAL_HEARTBEATS) {
            let turn = (beat / DIRECT_REDIAL_HEARTBEATS) as usize;
            expected.push((device, relays[turn % 2].clone()));
        }
    }
    let mut dialed = Vec::new();
    for _ in 0..expected.len() {
        dialed.push(held.dial().await.unwrap());
    }
    assert_eq!(dialed, expected);
    assert_ne!(dialed[0].1, dialed[1].1, "the relays take turns");

    // Offline: not dialed on the heartbeat. Away again, through the first relay that says
    // so: that is the next dial.
    alice.engine.on_presence(peer(1), told(State::Offline));
    alice.engine.relays.heartbeats = 4 * DIRECT_REDIAL_HEARTBEATS;
    alice.engine.redial_online();
    alice.engine.on_presence(peer(0), told(State::Away));
    assert_eq!(held.dial().await, Some((device, relays[0].clone())));

    // With direct connections off, nothing is dialed.
    alice.engine.relays.direct = false;
    alice.engine.relays.heartbeats = 5 * DIRECT_REDIAL_HEARTBEATS;
    alice.engine.redial_online();
    alice.engine.on_presence(peer(1), told(State::Online));
    alice.engine.relays.direct = true;
    alice.engine.on_presence(peer(0), told(State::Online));
    assert_eq!(held.dial().await, Some((device, relays[0].clone())));
}
