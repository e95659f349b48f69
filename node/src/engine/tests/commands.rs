//! Commands that wait for the network do it off the engine: while a relay holds its answer
//! the engine serves other commands, and the answer, when it comes, completes the command.

use serde_bytes::ByteBuf;
use tern_relay::{
    client::Proto,
    wire::{directory, presence},
};
use tokio::sync::oneshot;

use super::{Harness, link_device};
use crate::{
    consts::MAX_COMMANDS_IN_FLIGHT,
    engine::{Command, device_peer, relay_peer},
    error::NodeError,
    types::ContactInfo,
};

/// The contacts as the engine lists them now (a command that never waits).
async fn contacts(h: &mut Harness) -> Vec<ContactInfo> {
    let (reply, answer) = oneshot::channel();
    h.engine.on_command(Command::Contacts(reply));
    answer.await.unwrap().unwrap()
}

/// The first home relay of `h` (the one its contact link names first).
fn first_relay(h: &Harness) -> libp2p::PeerId {
    relay_peer(&h.engine.relays.home_relays[0]).unwrap()
}

/// Asks for every contact's presence; returns where the answer comes.
fn ask_presence(
    h: &mut Harness,
) -> oneshot::Receiver<Result<Vec<crate::types::PresenceInfo>, NodeError>> {
    let (reply, answer) = oneshot::channel();
    h.engine.on_command(Command::Presence {
        contact: None,
        reply,
    });
    answer
}

#[tokio::test]
async fn a_presence_query_waits_for_its_relay_off_the_engine() {
    let (mut alice, mut held) = Harness::holding("alice");
    let bob = Harness::named("bob");
    alice.add(&bob).await;
    let bob_device = device_peer(&bob.engine.me.keys.device.device_id()).unwrap();

    let mut answer = ask_presence(&mut alice);
    // (The prekey claim `add` started for Bob's device is held too, and passed over.)
    let request = held.request_for(Proto::Presence).await.unwrap();
    assert_eq!(request.relay, first_relay(&bob));
    assert_eq!(request.proto, Proto::Presence);
    assert_eq!(
        presence::Request::decode(&request.frame).unwrap(),
        presence::Request::Query {
            peers: vec![bob_device]
        }
    );
    // The relay has not answered: the query waits, and the engine answers others.
    assert!(answer.try_recv().is_err());
    assert_eq!(contacts(&mut alice).await.len(), 1);
    assert!(answer.try_recv().is_err());

    // The relay's answer completes the query with what it said.
    let entries = vec![presence::Entry {
        peer: bob_device,
        state: presence::State::Online,
        last_seen_ms: None,
    }];
    request.answer(Ok(presence::Response::Presence { entries }
        .encode()
        .unwrap()));
    let shown = alice.answer(answer).await.unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].user_id, bob.engine.me.user);
    assert_eq!(shown[0].state, "online");
    assert_eq!(alice.engine.answering, 0);
}

#[tokio::test]
async fn a_short_link_waits_for_its_device_list_off_the_engine() {
    let (mut alice, mut held) = Harness::holding("alice");
    let bob = Harness::named("bob");
    let short = bob.engine.contact_link().unwrap().short.unwrap();

    let (reply, mut answer) = oneshot::channel();
    alice.engine.on_command(Command::AddContact {
        link: short,
        name: Some("Bob".into()),
        accept_new_key: false,
        reply,
    });
    let request = held.request().await.unwrap();
    assert_eq!(request.relay, first_relay(&bob));
    assert_eq!(request.proto, Proto::Directory);
    assert!(matches!(
        directory::Request::decode(&request.frame).unwrap(),
        directory::Request::FetchDeviceList { .. }
    ));
    // The link's relay has not answered: nothing is added yet, and the engine answers
    // other commands.
    assert!(answer.try_recv().is_err());
    assert!(contacts(&mut alice).await.is_empty());

    // The relay's list completes the add: Bob is a contact with his device.
    let list = ByteBuf::from(bob.engine.me.keys.device_list.as_bytes().to_vec());
    request.answer(Ok(directory::Response::DeviceList { list }
        .encode()
        .unwrap()));
    let added = alice.answer(answer).await.unwrap();
    assert_eq!(added.outcome, "added");
    assert_eq!(added.contact.user_id, bob.engine.me.user);
    assert_eq!(added.contact.name, "Bob");
    assert_eq!(added.contact.devices, 1);
    assert_eq!(contacts(&mut alice).await.len(), 1);
}

#[tokio::test]
async fn commands_waiting_for_the_network_are_bounded() {
    let (mut alice, mut held) = Harness::holding("alice");
    let bob = Harness::named("bob");
    alice.add(&bob).await;

    let mut waiting = Vec::new();
    let mut requests = Vec::new();
    for _ in 0..MAX_COMMANDS_IN_FLIGHT {
        waiting.push(ask_presence(&mut alice));
        requests.push(held.request_for(Proto::Presence).await.unwrap());
    }
    // One more is refused at once, with why.
    let refused = ask_presence(&mut alice).await.unwrap().unwrap_err();
    assert!(refused.to_string().contains("waiting for the network"));

    // A relay that fails leaves the presence unknown; every query is answered, and new
    // ones are taken again.
    for request in requests {
        request.answer(Err(crate::net::NetError::Transport("down".into())));
    }
    for answer in waiting {
        let shown = alice.answer(answer).await.unwrap();
        assert_eq!(shown[0].state, "unknown");
    }
    assert_eq!(alice.engine.answering, 0);
    let again = ask_presence(&mut alice);
    held.request_for(Proto::Presence)
        .await
        .unwrap()
        .answer(Ok(presence::Response::Presence { entries: vec![] }
            .encode()
            .unwrap()));
    assert_eq!(alice.answer(again).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_revocation_is_answered_once_its_list_is_published_off_the_engine() {
    let (mut alice, mut held) = Harness::holding("alice");
    let phone = link_device(&mut alice);
    let (reply, mut answer) = oneshot::channel();
    alice.engine.on_command(Command::DeviceRevoke {
        device: "phone".into(),
        reply,
    });
    // The new list is stored and used at once; its publication at the home relay waits.
    let request = held.request().await.unwrap();
    assert_eq!(request.relay, first_relay(&alice));
    let directory::Request::PublishDeviceList { list } =
        directory::Request::decode(&request.frame).unwrap()
    else {
        panic!("not a publication");
    };
    assert_eq!(list.as_ref(), alice.engine.me.keys.device_list.as_bytes());
    assert!(answer.try_recv().is_err());
    let (reply, devices) = oneshot::channel();
    alice.engine.on_command(Command::Devices(reply));
    let devices = devices.await.unwrap().unwrap();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].this_device);

    // The relay takes it: the revocation is answered with the device revoked.
    request.answer(Ok(directory::Response::Ok.encode().unwrap()));
    let revoked = alice.answer(answer).await.unwrap();
    assert_eq!(revoked.name, "phone");
    assert_eq!(revoked.device_id.to_peer_id_string(), phone);
    assert!(alice.engine.relays.setup_pending.is_empty());
}
