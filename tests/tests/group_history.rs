//! Group membership history no member can rewrite, over real processes on 127.0.0.1: a
//! `tern-relay` and five `tern up` nodes.
//!
//! Mallory is made an admin, then removed by the group's creator. Her node is then used as a
//! crafted client: while it is stopped, operations signed with her identity key on the
//! history before her removal (grinding their free fields for the lowest hashes, removing the
//! other members and admins, adding an accomplice as admin) are written into its store as
//! owed, so that on its next start its own sending path delivers them to every member over
//! their pairwise sessions. Every member takes them in and nothing changes: she stays out,
//! nobody is removed, the accomplice is not in. A text she sent just before her removal,
//! held back until after it, is shown to every member, at the same place. And at the
//! ciphertext level, no sender key she holds opens anything sent after her removal (with a
//! positive control).

use std::time::Duration;

use serde_bytes::ByteArray;
use serde_json::Value;
use tern_crypto::{IdentityKey, group::GroupMessage};
use tern_node::{
    Home,
    group::{Action, MemberEntry, Op, SignedOp, resolve},
};
use tern_store::{Body, ConversationId, ConversationKind, Message, MessageId, Status};
use tern_tests::support::{
    Node, Relay, WAIT, contains, group_history, inbound_sender_keys, link_pair, message_ids,
    message_texts, opens, relay_ciphertexts, start_nodes, wait_for,
};

/// Longest wait for the group to settle after a node or the relay comes back.
const SETTLE: Duration = Duration::from_secs(60);

fn info(node: &Node, group: &str) -> Value {
    node.json(&["group", "info", group]).unwrap_or(Value::Null)
}

fn members(v: &Value) -> Vec<(String, bool)> {
    let mut m: Vec<(String, bool)> = v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["user_id"].as_str().unwrap_or_default().to_owned(),
                        m["admin"] == true,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    m
}

fn wait_members(node: &Node, group: &str, want: &[(String, bool)], what: &str) {
    let mut want = want.to_vec();
    want.sort();
    wait_for(what, SETTLE, || {
        let v = info(node, group);
        (members(&v) == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", info(node, group)));
}

fn wait_text(node: &Node, group: &str, text: &str) {
    wait_for(text, SETTLE, || {
        message_texts(&group_history(node, group))
            .iter()
            .any(|t| t == text)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", message_texts(&group_history(node, group))));
}

/// Signs an operation of `key`'s user on `parents`, trying `tries` Lamport values and
/// keeping the one with the lowest hash (the grinding the old rule rewarded).
fn forge(
    key: &IdentityKey,
    group: [u8; 16],
    parents: &[&SignedOp],
    action: Action,
    tries: u64,
) -> SignedOp {
    let mut p: Vec<[u8; 32]> = parents.iter().map(|o| o.hash).collect();
    p.sort();
    p.dedup();
    let epoch = parents.iter().map(|o| o.op.epoch).max().unwrap() + 1;
    (0..tries)
        .map(|lamport| {
            SignedOp::sign(
                Op {
                    group: ByteArray::new(group),
                    epoch,
                    parents: p.iter().map(|h| ByteArray::new(*h)).collect(),
                    author: ByteArray::new(*key.user_id().as_bytes()),
                    at_ms: 1,
                    lamport: lamport + 1,
                    action: action.clone(),
                },
                key,
            )
            .unwrap()
        })
        .min_by_key(|o| o.hash)
        .unwrap()
}

#[test]
fn a_removed_admin_cannot_rewrite_history_and_a_text_sent_before_the_removal_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let names = ["alice", "bob", "carol", "dave", "mallory"];
    let mut nodes = start_nodes(dir.path(), &names, &relay.addr).unwrap();
    // Everyone knows everyone: the attacker's mail is taken from a contact.
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            link_pair(&nodes[i], &nodes[j], &cap(names[i]), &cap(names[j])).unwrap();
        }
    }
    let user = |i: usize| nodes[i].user.clone();
    let (ua, ub, uc, ud, um) = (user(0), user(1), user(2), user(3), user(4));

    // Alice creates the group; Bob, then Mallory, are made admins.
    let g = nodes[0]
        .json(&["group", "create", "Crew", "Carol", "Dave"])
        .unwrap();
    let group = g["id"].as_str().unwrap().to_owned();
    nodes[0]
        .ok(&["group", "add", &group, "Bob", "--admin"])
        .unwrap();
    nodes[0]
        .ok(&["group", "add", &group, "Mallory", "--admin"])
        .unwrap();
    let with_mallory = [
        (ua.clone(), true),
        (ub.clone(), true),
        (uc.clone(), false),
        (ud.clone(), false),
        (um.clone(), true),
    ];
    for n in &nodes {
        wait_members(n, &group, &with_mallory, "everyone sees the five");
    }
    // Everyone holds everyone's current sender key.
    for (i, n) in nodes.iter().enumerate() {
        n.ok(&["group", "send", &group, &format!("hello from {}", names[i])])
            .unwrap();
    }
    for n in &nodes {
        for name in names {
            wait_text(n, &group, &format!("hello from {name}"));
        }
    }

    // With the relay down, Mallory writes a text: it waits in her outbox. She stops.
    relay.kill9();
    const BEFORE: &str = "sent-before-my-removal";
    nodes[4].ok(&["group", "send", &group, BEFORE]).unwrap();
    nodes[4].stop().unwrap();
    relay.start_again("").unwrap();

    // Alice removes her; the others see it.
    nodes[0]
        .ok(&["group", "remove", &group, "Mallory"])
        .unwrap();
    let without = [
        (ua.clone(), true),
        (ub.clone(), true),
        (uc.clone(), false),
        (ud.clone(), false),
    ];
    for n in &nodes[..4] {
        wait_members(n, &group, &without, "mallory removed");
    }
    let epoch_after_removal = info(&nodes[0], &group)["epoch"].as_u64().unwrap();

    // The crafted client: Mallory's stopped node, her identity key, the history she held.
    let home = Home::new(&nodes[4].home);
    let (mut store, keys) = home.open().unwrap();
    let held: Vec<SignedOp> = store
        .group_ops()
        .unwrap()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(_, b)| SignedOp::from_bytes(&b).unwrap())
        .collect();
    let r = resolve(&held).unwrap();
    assert!(
        r.state
            .members
            .contains_key(keys.identity.user_id().as_bytes()),
        "mallory's node stopped before her removal reached it"
    );
    let heads: Vec<&SignedOp> = held
        .iter()
        .filter(|o| r.state.heads.contains(&o.hash))
        .collect();
    let granted = held
        .iter()
        .find(|o| {
            matches!(&o.op.action, Action::Add { members }
                if members.iter().any(|m| m.user.as_slice() == keys.identity.user_id().as_bytes()))
        })
        .unwrap();
    let gid = r.state.id;
    let bytes = |hex: &str| -> ByteArray<16> {
        ByteArray::new(tern_crypto::hex::decode_array(hex).unwrap())
    };
    let accomplice = IdentityKey::generate().unwrap();
    let forged = vec![
        // On the history just before her removal: remove every other admin and member.
        forge(
            &keys.identity,
            gid,
            &heads,
            Action::Remove {
                users: vec![bytes(&ua), bytes(&ub), bytes(&uc), bytes(&ud)],
            },
            400,
        ),
        // The members the seniority rule alone would let her remove.
        forge(
            &keys.identity,
            gid,
            &heads,
            Action::Remove {
                users: vec![bytes(&uc), bytes(&ud)],
            },
            400,
        ),
        // On her own grant, further back: an accomplice as admin.
        forge(
            &keys.identity,
            gid,
            &[granted],
            Action::Add {
                members: vec![MemberEntry {
                    user: ByteArray::new(*accomplice.user_id().as_bytes()),
                    identity_key: ByteArray::new(*accomplice.public().as_bytes()),
                    name: "accomplice".into(),
                    relays: vec![],
                    admin: true,
                }],
            },
            400,
        ),
    ];
    let now = 1_000;
    store
        .transaction(|tx| -> Result<(), tern_store::WriteError> {
            tx.ensure_conversation(
                &ConversationId(group.clone()),
                ConversationKind::Group,
                None,
                now,
            )?;
            for op in &forged {
                let mut id = [0u8; 16];
                id.copy_from_slice(&op.hash[..16]);
                tx.record_incoming(
                    &Message {
                        id: MessageId(id),
                        conversation: ConversationId(group.clone()),
                        sender_user: um.clone(),
                        sender_device: String::new(),
                        lamport: op.op.lamport,
                        seq: 0,
                        sent_at_ms: now,
                        received_at_ms: now,
                        own: true,
                        status: Status::Sent,
                        body: Body::Structured {
                            data: op.to_bytes().to_vec(),
                            text: Some("forged".into()),
                        },
                        edited_at_ms: None,
                    },
                    &[],
                )?;
                for u in [&ua, &ub, &uc, &ud] {
                    tx.owe_group_message(MessageId(id), u, &[], &[], now)?;
                }
            }
            Ok(())
        })
        .unwrap();
    drop(store);

    // Mallory's node comes back: it delivers the held text and the forged operations.
    nodes[4].restart().unwrap();
    for n in &nodes[..4] {
        wait_for("the forged operations taken in", SETTLE, || {
            (info(n, &group)["epoch"].as_u64()? >= epoch_after_removal + forged.len() as u64)
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", info(n, &group)));
        // Nothing changed: she is out, nobody was removed, no accomplice.
        assert_eq!(members(&info(n, &group)), {
            let mut w = without.to_vec();
            w.sort();
            w
        });
        wait_text(n, &group, BEFORE);
    }
    // The held text is at the same place everywhere.
    let place = |n: &Node| {
        let h = group_history(n, &group);
        let ids = message_ids(&h);
        let at = h.iter().position(|m| m["text"] == BEFORE).unwrap();
        (
            ids[at.saturating_sub(1)..(at + 2).min(ids.len())].to_vec(),
            h.len(),
        )
    };
    let first = place(&nodes[0]);
    for n in &nodes[1..4] {
        assert_eq!(
            place(n).0,
            first.0,
            "the held text is elsewhere at {}",
            n.user
        );
    }
    // Her own node learns of its removal and cannot act for the group any more.
    wait_for("mallory's node learns of her removal", SETTLE, || {
        (info(&nodes[4], &group)["member"] == false).then_some(())
    })
    .unwrap();
    let out = nodes[4].cli(&["group", "remove", &group, "Carol"]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");

    // After the removal: Dave goes offline so texts wait for him at the relay.
    nodes[3].stop().unwrap();
    // Each sender's first text after the removal carries its new key to Dave over his
    // pairwise session; the second is the one shared ciphertext, held once at the relay.
    const AFTER: [&str; 4] = [
        "after-removal-alice-1",
        "after-removal-alice-2",
        "after-removal-bob-1",
        "after-removal-bob-2",
    ];
    for (i, t) in AFTER.iter().enumerate() {
        nodes[i / 2].ok(&["group", "send", &group, t]).unwrap();
    }
    for n in &nodes[..3] {
        for t in AFTER {
            wait_text(n, &group, t);
        }
    }
    wait_for("the texts held for dave", WAIT, || {
        let held = relay_ciphertexts(&relay.data).ok()?;
        let n = held
            .iter()
            .filter(|b| GroupMessage::from_bytes(b).is_ok())
            .count();
        (n >= 2).then_some(())
    })
    .unwrap();
    let group_messages: Vec<Vec<u8>> = relay_ciphertexts(&relay.data)
        .unwrap()
        .into_iter()
        .filter(|b| GroupMessage::from_bytes(b).is_ok())
        .collect();
    for n in &mut nodes {
        n.stop().unwrap();
    }
    let mut mallory = inbound_sender_keys(&nodes[4].home);
    assert!(!mallory.is_empty(), "mallory holds no sender key at all");
    let mut carol = inbound_sender_keys(&nodes[2].home);
    let mut post = 0;
    for m in &group_messages {
        let Some(plain) = opens(&mut carol, m) else {
            continue;
        };
        if !AFTER.iter().any(|t| contains(&plain, t)) {
            continue;
        }
        post += 1;
        assert!(
            opens(&mut mallory, m).is_none(),
            "a sender key mallory holds opens a text sent after her removal"
        );
    }
    assert!(
        post >= 2,
        "carol's keys open {post} post-removal texts held at the relay"
    );
}

fn cap(name: &str) -> String {
    let mut c = name.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
