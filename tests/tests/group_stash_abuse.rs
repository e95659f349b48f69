//! Strangers against a device's group stash: a real group message the device cannot read
//! yet waits in its stash, while 20 fresh identities deposit 500 group-shaped messages each
//! (valid Megolm messages of sender keys nobody ever sent) into its mailbox. None of them
//! may take room in the stash or push the real message out of it: once what it waits for
//! arrives, the real message is shown, exactly once.
//!
//! The real message waits for its group rather than for its sender key. Tern sends a sender
//! key in the same pairwise message as the first group message it opens (see
//! `docs/decisions.md`), so on one relay a key cannot come after its message; the group,
//! though, comes from its admin, and the message from another member. So: Bob's relay is down
//! while Alice makes the group (her membership operations for Bob wait in her outbox), Alice
//! then stops, Carol sends to the group, and Bob's relay comes back. Bob gets Carol's sender
//! key and message, but not the group: the message is stashed, which his status shows
//! (`recovery.group_waiting`). When Alice returns, her operations reach Bob and the stash is
//! read. The stash is one table for both cases, with the same bounds.
//!
//! Bob's relay is configured to take the whole flood (an introductions share of 10,000, the
//! size of the node's stash) so that a stash that took strangers' messages would be filled,
//! and one that evicted its oldest rows to make room would lose the real message.

use std::time::Duration;
use tern_relay::rpc::Requests as _;

use serde_json::Value;
use tern_crypto::{
    DeviceId,
    group::{GroupId, OutboundSenderKey},
};
use tern_relay::client::{Client, Config, Keypair};
use tern_tests::support::{
    Node, Relay, group_history, link_pair, message_texts, refusal, wait_for, wait_mailbox_closed,
};

/// Longest wait for anything to arrive (a 2-core CI machine, debug build).
const WAIT: Duration = Duration::from_secs(180);
/// Strangers, each a fresh identity.
const STRANGERS: usize = 20;
/// Group-shaped messages each stranger deposits.
const PER_STRANGER: usize = 500;
/// Bob's relay takes the whole flood: 10,000 introductions (the node's stash holds 10,000),
/// 500 from each stranger, at any rate.
const BOB_RELAY: &str = "[mailbox]\nmax_messages = 20000\nintro_max_messages = 10000\n\
                         intro_max_bytes = 33554432\nintro_per_sender = 500\n\
                         intro_burst = 100000.0\n\
                         [rate]\nrequests_per_sec = 100000.0\nrequests_burst = 100000.0\n\
                         deposits_per_sec = 100000.0\ndeposits_burst = 100000.0\n\
                         ip_requests_per_sec = 100000.0\nip_requests_burst = 100000.0\n";
/// What Carol sends while Bob does not know the group yet.
const REAL: &str = "sent before bob knew the group";

/// `recovery.<field>` of a node's status.
fn recovery(node: &Node, field: &str) -> Option<u64> {
    node.json(&["status"]).ok()?["recovery"][field].as_u64()
}

/// Messages shaped like group messages from the device `peer`: each a valid Megolm message
/// of a fresh sender key, in a group of its own, that no one was ever sent.
fn junk(peer: &tern_relay::PeerId, n: usize) -> Vec<Vec<u8>> {
    let device = DeviceId::from_peer_id_bytes(&peer.to_bytes()).unwrap();
    let mut key = OutboundSenderKey::new(GroupId::from_bytes([7; 16]), device, 0);
    (0..n).map(|_| key.encrypt(b"x").unwrap()).collect()
}

#[test]
fn strangers_group_messages_do_not_evict_a_stashed_message() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = Relay::start(&dir.path().join("r1"), "").unwrap();
    let mut r2 = Relay::start(&dir.path().join("r2"), BOB_RELAY).unwrap();
    let mut alice = Node::init_and_start(dir.path(), "alice", Some(&r1.addr)).unwrap();
    let carol = Node::init_and_start(dir.path(), "carol", Some(&r1.addr)).unwrap();
    let mut bob = Node::init_and_start(dir.path(), "bob", Some(&r2.addr)).unwrap();
    link_pair(&alice, &bob, "alice", "bob").unwrap();
    link_pair(&alice, &carol, "alice", "carol").unwrap();
    link_pair(&bob, &carol, "bob", "carol").unwrap();
    let victim: tern_relay::PeerId = bob.device.parse().unwrap();
    let addr: tern_relay::Multiaddr = r2.addr.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Bob's node closes his mailbox (registers its grants): strangers are then introductions.
    wait_mailbox_closed(
        &rt,
        &r2.addr,
        victim,
        "bob's mailbox closed to strangers",
        WAIT,
    )
    .unwrap();

    // Bob and his relay go away; Alice makes the group, Carol joins it, Alice goes away with
    // her operations for Bob still waiting for his relay.
    bob.stop().unwrap();
    r2.kill9();
    let group = alice
        .json(&["group", "create", "Stash", "bob", "carol"])
        .unwrap()["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(group.len(), 32);
    wait_for("carol to join", WAIT, || {
        let g = carol.json(&["group", "info", &group]).ok()?;
        (g["member"] == true).then_some(())
    })
    .unwrap();
    alice.stop().unwrap();
    carol.ok(&["group", "send", &group, REAL]).unwrap();

    // Bob's relay comes back and so does Bob: Carol's key and message reach him, the group
    // does not, and the message waits in his stash.
    r2.restart_after_kill9(BOB_RELAY).unwrap();
    bob.restart().unwrap();
    wait_for("carol's message in bob's stash", WAIT, || {
        (recovery(&bob, "group_waiting")? == 1).then_some(())
    })
    .unwrap();
    assert!(
        bob.json(&["group", "info", &group]).is_err(),
        "bob must not know the group yet"
    );

    // The flood: 20 fresh identities, 500 group-shaped messages each.
    let seen_before = recovery(&bob, "group_from_strangers").unwrap_or(0);
    let accepted: usize = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..STRANGERS {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let key = Keypair::generate_ed25519();
                let messages = junk(&key.public().to_peer_id(), PER_STRANGER);
                let (c, _events) = Client::connect(key, addr, Config::default()).await.unwrap();
                let mut took = 0;
                for m in messages {
                    match c.deposit(vec![victim], None, m).await {
                        Ok((_, refused)) if refused.is_empty() => took += 1,
                        Ok((_, refused)) => panic!("refused for its one recipient: {refused:?}"),
                        Err(e) => panic!("the relay refused the flood: {:?}", refusal(e)),
                    }
                }
                took
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    assert_eq!(accepted, STRANGERS * PER_STRANGER);
    // Bob has looked at every one of them (each fetch of one counts again).
    wait_for("bob to read the flood", WAIT, || {
        let seen = recovery(&bob, "group_from_strangers")?;
        (seen >= seen_before + accepted as u64).then_some(())
    })
    .unwrap();
    let waiting_after_flood = recovery(&bob, "group_waiting");

    // Alice comes back; her operations reach Bob, and the stashed message is shown once.
    alice.restart().unwrap();
    let history = wait_for("carol's message at bob", WAIT, || {
        let h = group_history(&bob, &group);
        message_texts(&h).iter().any(|t| t == REAL).then_some(h)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the stashed message was lost (stash: {:?} after the flood, {:?} now)",
            waiting_after_flood,
            recovery(&bob, "group_waiting")
        )
    });
    let shown = message_texts(&history)
        .iter()
        .filter(|t| *t == REAL)
        .count();
    assert_eq!(shown, 1, "shown exactly once: {history:?}");
    assert_eq!(
        waiting_after_flood,
        Some(1),
        "no stranger's message was kept in the stash"
    );
    wait_for("bob's stash empty", WAIT, || {
        (recovery(&bob, "group_waiting")? == 0).then_some(())
    })
    .unwrap();
    // Nothing of the flood shows anywhere: Bob has the group and his two contacts.
    let conversations = bob.json(&["conversations"]).unwrap_or(Value::Null);
    let mut names: Vec<&str> = conversations
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    names.sort_unstable();
    assert_eq!(names, ["Stash", "alice", "carol"], "{conversations}");
}
