//! Groups end to end over real processes on 127.0.0.1: a `tern-relay` and several `tern up`
//! nodes, driven through the `tern` CLI and the local API.
//!
//! - every member shows the same order, which respects causality, including a member that
//!   was offline while the others sent concurrently;
//! - an added member reads what is sent after it joined and nothing before; a removed member
//!   is cut off at the ciphertext level (no sender key it holds opens what follows), checked
//!   against the relay's stored ciphertext with a positive control;
//! - bad input is refused with the documented codes;
//! - API subscribers hear of a group they joined, its messages and batched notifications;
//! - members offline through the creation or their own removal catch up on return, and a
//!   member added mid-burst sees a suffix of the same order.

use std::{collections::HashSet, path::Path, time::Duration};

use serde_json::{Value, json};
use tern_crypto::group::{GroupMessage, InboundSenderKey};
use tern_node::{api::client::ClientError, types::Event};
use tern_tests::support::{
    Node, Relay, WAIT, contains, group_history, inbound_sender_keys, link_pair, message_ids,
    message_texts, opens, relay_ciphertexts, start_nodes, tern_with_stdin, wait_for,
};

/// Longest wait for a group to converge after an offline member returns.
const CONVERGE: Duration = Duration::from_secs(90);

/// Messages each member sends in the concurrent burst.
const PER_SENDER: usize = 8;

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `node`'s history of `group` satisfies `ok`.
fn wait_history(
    node: &Node,
    group: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    wait_for(what, timeout, || {
        let h = group_history(node, group);
        ok(&h).then_some(h)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; last texts: {:?}",
            message_texts(&group_history(node, group))
        )
    })
}

fn has_text(h: &[Value], text: &str) -> bool {
    h.iter().any(|m| m["kind"] == "text" && m["text"] == text)
}

/// Waits until `node` knows `group` with exactly the members `users` (and itself a member
/// or not, as `member` says).
fn wait_members(node: &Node, group: &str, users: &[&str], member: bool) -> Value {
    let want: HashSet<&str> = users.iter().copied().collect();
    wait_for(
        &format!("{} to see the members of {group}", node.user),
        WAIT,
        || {
            let g = node.json(&["group", "info", group]).ok()?;
            let have: HashSet<&str> = g["members"]
                .as_array()?
                .iter()
                .filter_map(|m| m["user_id"].as_str())
                .collect();
            (have == want && g["member"] == member).then_some(g.clone())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; last info: {:?}",
            node.json(&["group", "info", group]).ok()
        )
    })
}

/// Relay, then nodes named `names`; the first is linked with every other one.
fn star(dir: &Path, names: &[&str]) -> (Relay, Vec<Node>) {
    let relay = Relay::start_with_metrics(&dir.join("relay"), "").unwrap();
    let nodes = start_nodes(dir, names, &relay.addr).unwrap();
    for (node, name) in nodes.iter().zip(names).skip(1) {
        link_pair(&nodes[0], node, &capitalised(names[0]), &capitalised(name)).unwrap();
    }
    (relay, nodes)
}

fn capitalised(name: &str) -> String {
    let mut c = name.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Sends `texts` in order to `group` through `node`'s API; returns their ids.
async fn send_all(node: &Node, group: &str, texts: Vec<String>) -> Vec<String> {
    let mut api = node.api().await.unwrap();
    let mut ids = Vec::new();
    for text in texts {
        let m = api
            .call("group_send", json!({"group": group, "text": text}))
            .await
            .unwrap_or_else(|e| panic!("{} sending {text:?}: {e}", node.user));
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[test]
fn concurrent_senders_and_an_offline_member_converge_to_one_causal_order() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, mut nodes) = star(dir.path(), &["alice", "bob", "carol", "dave", "erin"]);
    let users: Vec<String> = nodes.iter().map(|n| n.user.clone()).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();

    // Alice creates the group; her members are her contacts, not each other's.
    let g = nodes[0]
        .json(&["group", "create", "Team", "Bob", "Carol", "Dave", "Erin"])
        .unwrap();
    let group = g["id"].as_str().unwrap().to_owned();
    assert_eq!(group.len(), 32, "{g}");
    assert_eq!(g["admin"], true, "{g}");
    assert_eq!(g["members"].as_array().unwrap().len(), 5, "{g}");
    for n in &nodes {
        wait_members(n, &group, &users, true);
    }

    // Erin goes offline; the others talk at once.
    nodes[4].stop().unwrap();
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    a.ok(&["group", "send", &group, "a-first"]).unwrap();
    wait_history(b, &group, "a-first at bob", WAIT, |h| {
        has_text(h, "a-first")
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batch = |p: &str| -> Vec<String> { (1..=PER_SENDER).map(|i| format!("{p}{i}")).collect() };
    rt.block_on(async {
        // Bob has seen a-first: his reply must come after it everywhere.
        let mut bob = vec!["b-after-a".to_owned()];
        bob.extend(batch("b"));
        tokio::join!(
            send_all(a, &group, batch("a")),
            send_all(b, &group, bob),
            send_all(c, &group, batch("c")),
            send_all(d, &group, batch("d")),
        );
    });
    // Carol answers Bob once his reply reached her.
    wait_history(c, &group, "b-after-a at carol", WAIT, |h| {
        has_text(h, "b-after-a")
    });
    c.ok(&["group", "send", &group, "c-after-b"]).unwrap();

    let mut expected: Vec<String> = ["a-first", "b-after-a", "c-after-b"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for p in ["a", "b", "c", "d"] {
        expected.extend(batch(p));
    }
    expected.sort();

    // Erin comes back and catches up.
    nodes[4].restart().unwrap();
    let complete = |h: &[Value]| {
        let mut t = message_texts(h);
        t.sort();
        t == expected
    };
    let mut histories = Vec::new();
    for n in &nodes {
        histories.push(wait_history(
            n,
            &group,
            &format!("all {} texts at {}", expected.len(), n.user),
            CONVERGE,
            complete,
        ));
    }
    // The same messages in the same order everywhere (membership entries included). A
    // membership entry can trail the texts by a moment; the texts are all there already.
    let reference = message_ids(&histories[0]);
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let same = wait_for(
            &format!("{}'s order to equal alice's", n.user),
            WAIT,
            || {
                let h = group_history(n, &group);
                (message_ids(&h) == reference).then_some(h)
            },
        );
        match same {
            Ok(h) => histories[i] = h,
            Err(e) => panic!(
                "{e}\nalice: {:?}\n{}: {:?}",
                order_view(&histories[0]),
                n.user,
                order_view(&group_history(n, &group))
            ),
        }
    }
    eprintln!(
        "one order on all five nodes ({} entries): {:?}",
        reference.len(),
        message_texts(&histories[0])
    );
    let unique: HashSet<&String> = reference.iter().collect();
    assert_eq!(unique.len(), reference.len(), "duplicates: {reference:?}");

    // Causality and per-sender order, on every node.
    for (n, h) in nodes.iter().zip(&histories) {
        let order = message_texts(h);
        let pos = |t: &str| {
            order
                .iter()
                .position(|x| x == t)
                .unwrap_or_else(|| panic!("{t} missing at {}", n.user))
        };
        assert!(pos("a-first") < pos("b-after-a"), "{}: {order:?}", n.user);
        assert!(pos("b-after-a") < pos("c-after-b"), "{}: {order:?}", n.user);
        assert!(pos("b-after-a") < pos("b1"), "{}: {order:?}", n.user);
        assert!(pos("a-first") < pos("a1"), "{}: {order:?}", n.user);
        for p in ["a", "b", "c", "d"] {
            for i in 1..PER_SENDER {
                assert!(
                    pos(&format!("{p}{i}")) < pos(&format!("{p}{}", i + 1)),
                    "{}: {order:?}",
                    n.user
                );
            }
        }
        // The membership entry for the creation comes before everything said in the group.
        let first_text = h.iter().position(|m| m["kind"] == "text").unwrap();
        assert!(
            h[..first_text].iter().any(|m| m["kind"] == "membership"),
            "{}: no membership entry before the first text: {:?}",
            n.user,
            order_view(h)
        );
    }
    // The online members had the burst pushed on their live streams (`/tern/live/1`) and
    // acknowledged it there, not with a request per message.
    let metric = |name: &str| relay.metric(name).unwrap();
    let on_stream = metric("tern_relay_live_stream_pushes_total");
    let pushed = metric("tern_relay_live_deliveries_total");
    assert!(
        on_stream > 0.0 && on_stream >= pushed / 2.0,
        "{on_stream} of {pushed} pushes on live streams"
    );
    assert!(metric("tern_relay_live_stream_acks_total") > 0.0);
}

/// `(kind, text, lamport, sender)` per message, for failure messages.
fn order_view(h: &[Value]) -> Vec<String> {
    h.iter()
        .map(|m| {
            format!(
                "{} {:?} L{} {}",
                m["kind"].as_str().unwrap_or(""),
                m["text"].as_str().unwrap_or(""),
                m["lamport"],
                &m["sender"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(6)
                    .collect::<String>()
            )
        })
        .collect()
}

#[test]
fn an_added_member_reads_only_what_follows_and_a_removed_one_cannot_decrypt_anything_after() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, mut nodes) = star(dir.path(), &["alice", "bob", "carol", "dave", "frank"]);
    let user = |i: usize| nodes[i].user.clone();
    let (ua, ub, uc, ud, uf) = (user(0), user(1), user(2), user(3), user(4));

    let g = nodes[0]
        .json(&["group", "create", "Crew", "Bob", "Carol", "Dave"])
        .unwrap();
    let group = g["id"].as_str().unwrap().to_owned();
    for n in &nodes[..4] {
        wait_members(n, &group, &[&ua, &ub, &uc, &ud], true);
    }
    nodes[0]
        .ok(&["group", "send", &group, "before-frank"])
        .unwrap();
    for n in &nodes[1..4] {
        wait_history(n, &group, "before-frank", WAIT, |h| {
            has_text(h, "before-frank")
        });
    }

    // Frank joins: he sees what follows, not what came before.
    let g = nodes[0].json(&["group", "add", &group, "Frank"]).unwrap();
    assert_eq!(g["members"].as_array().unwrap().len(), 5, "{g}");
    for n in &nodes {
        wait_members(n, &group, &[&ua, &ub, &uc, &ud, &uf], true);
    }
    nodes[1]
        .ok(&["group", "send", &group, "after-frank"])
        .unwrap();
    for n in [&nodes[0], &nodes[2], &nodes[3], &nodes[4]] {
        wait_history(n, &group, "after-frank", WAIT, |h| {
            has_text(h, "after-frank")
        });
    }
    let hf = group_history(&nodes[4], &group);
    assert_eq!(message_texts(&hf), ["after-frank"], "{:?}", order_view(&hf));

    // Dave goes offline so the next messages wait in his mailbox, where the relay holds
    // them; then Alice removes Carol.
    nodes[3].stop().unwrap();
    let g = nodes[0]
        .json(&["group", "remove", &group, "Carol"])
        .unwrap();
    assert_eq!(g["members"].as_array().unwrap().len(), 4, "{g}");
    for i in [0, 1, 4] {
        wait_members(&nodes[i], &group, &[&ua, &ub, &ud, &uf], true);
    }
    let gc = wait_members(&nodes[2], &group, &[&ua, &ub, &ud, &uf], false);
    assert_eq!(gc["admin"], false, "{gc}");
    // The removal as a structured change, alike at the remover, a member and the removed
    // (who learns it was done to them without reading names out of the text).
    for i in [0, 1, 2] {
        let h = wait_history(
            &nodes[i],
            &group,
            "the removal in the timeline",
            WAIT,
            |h| {
                h.iter()
                    .any(|m| m["kind"] == "membership" && m["membership"]["action"] == "removed")
            },
        );
        let m = h
            .iter()
            .find(|m| m["membership"]["action"] == "removed")
            .unwrap();
        assert_eq!(m["sender"], json!(ua), "{m}");
        let change = &m["membership"];
        assert_eq!(change["applied"], true, "at node {i}: {m}");
        let users = change["users"].as_array().unwrap();
        assert_eq!(users.len(), 1, "at node {i}: {m}");
        assert_eq!(users[0]["user_id"], json!(uc), "at node {i}: {m}");
        // Named as this node knows her (Carol herself by her own name).
        let name = users[0]["name"].as_str().unwrap_or_default();
        assert!(name.eq_ignore_ascii_case("carol"), "at node {i}: {m}");
    }
    const AFTER: [&str; 3] = ["after-removal-a1", "after-removal-a2", "after-removal-b"];
    nodes[0].ok(&["group", "send", &group, AFTER[0]]).unwrap();
    nodes[0].ok(&["group", "send", &group, AFTER[1]]).unwrap();
    nodes[1].ok(&["group", "send", &group, AFTER[2]]).unwrap();
    for i in [0, 1, 4] {
        wait_history(&nodes[i], &group, "the post-removal texts", WAIT, |h| {
            AFTER.iter().all(|t| has_text(h, t))
        });
    }
    // Every copy is out of the senders' outboxes (Dave's in his mailbox at the relay).
    for i in [0, 1] {
        wait_history(&nodes[i], &group, "own messages sent", WAIT, |h| {
            h.iter()
                .filter(|m| m["own"] == true)
                .all(|m| m["status"] != "pending")
        });
    }
    let held = relay_ciphertexts(&relay.data).unwrap();
    let group_messages: Vec<Vec<u8>> = held
        .into_iter()
        .filter(|b| GroupMessage::from_bytes(b).is_ok())
        .collect();
    assert!(
        !group_messages.is_empty(),
        "the relay holds no group message for offline Dave"
    );

    // Dave returns and gets everything; Carol got nothing after her removal.
    nodes[3].restart().unwrap();
    wait_history(&nodes[3], &group, "post-removal texts at dave", WAIT, |h| {
        AFTER.iter().all(|t| has_text(h, t))
    });
    let hc = group_history(&nodes[2], &group);
    assert!(
        AFTER.iter().all(|t| !has_text(&hc, t)),
        "carol got a post-removal message: {:?}",
        order_view(&hc)
    );
    assert!(has_text(&hc, "after-frank"), "{:?}", order_view(&hc));
    let out = nodes[2].cli(&["group", "send", &group, "still here?"]);
    assert_eq!(code(&out), Some(9), "{}", stderr(&out));

    // At the ciphertext level: stop everyone, open the stores.
    for n in &mut nodes {
        n.stop().unwrap();
    }
    let mut carol = inbound_sender_keys(&nodes[2].home);
    assert!(!carol.is_empty(), "carol holds no sender key at all");
    let mut remaining: Vec<(String, InboundSenderKey)> = [1, 3, 4]
        .iter()
        .flat_map(|&i| inbound_sender_keys(&nodes[i].home))
        .collect();
    let mut post_removal = 0;
    for m in &group_messages {
        // Positive control: a remaining member's key opens it (and tells us what it is).
        let plain = opens(&mut remaining, m).unwrap_or_else(|| {
            panic!("no remaining member's key opens a group message held for Dave")
        });
        if !AFTER.iter().any(|t| contains(&plain, t)) {
            continue;
        }
        post_removal += 1;
        let parsed = GroupMessage::from_bytes(m).unwrap();
        assert!(
            carol.iter().all(|(id, _)| *id != parsed.session_id),
            "carol holds the sender key of a post-removal message"
        );
        assert!(
            opens(&mut carol, m).is_none(),
            "one of carol's sender keys opens a post-removal message"
        );
    }
    eprintln!(
        "relay held {} group ciphertexts for offline dave, {post_removal} sent after the \
         removal; carol holds {} sender keys, none opens them",
        group_messages.len(),
        carol.len()
    );
    assert!(
        post_removal > 0,
        "none of the {} group messages at the relay is a post-removal one",
        group_messages.len()
    );
}

#[test]
fn bad_group_input_is_refused_with_clear_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, nodes) = star(dir.path(), &["alice", "bob", "carol"]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    link_pair(b, c, "Bob", "Carol").unwrap();
    let group = a.ok(&["group", "create", "Team", "Bob"]).unwrap();
    let group = group.trim().to_owned();
    assert_eq!(group.len(), 32, "prints the group id: {group:?}");
    wait_members(b, &group, &[&a.user, &b.user], true);

    // Unknown group, by title and by id.
    let out = a.cli(&["group", "send", "Nope", "hi"]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown group"), "{}", stderr(&out));
    let out = a.cli(&["group", "info", &"0".repeat(32)]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    // Two groups with one title: the title is ambiguous, the id is not.
    let second = a.ok(&["group", "create", "Team"]).unwrap();
    let out = a.cli(&["group", "info", "Team"]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more than one group"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        a.json(&["group", "info", second.trim()]).unwrap()["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Titles are 1 to 128 bytes, and no group id (which would name another group in
    // commands); members must be contacts.
    for title in [
        "",
        "  ",
        &"t".repeat(tern_node::consts::MAX_GROUP_TITLE_BYTES + 1),
        &group,
    ] {
        let out = a.cli(&["group", "create", title, "Bob"]);
        assert_eq!(code(&out), Some(5), "{title:?}: {}", stderr(&out));
    }
    let out = a.cli(&["group", "create", "Ghosts", "Mallory"]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown contact"), "{}", stderr(&out));

    // A member who is no admin can neither add nor remove.
    let out = b.cli(&["group", "add", &group, "Carol"]);
    assert_eq!(code(&out), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin"), "{}", stderr(&out));
    let out = b.cli(&["group", "remove", &group, "Alice"]);
    assert_eq!(code(&out), Some(9), "{}", stderr(&out));
    wait_members(a, &group, &[&a.user, &b.user], true);

    // Empty and oversize text.
    assert_eq!(code(&a.cli(&["group", "send", &group, ""])), Some(5));
    let big = "x".repeat(tern_node::consts::MAX_TEXT_BYTES + 1);
    let out = a.cli(&["group", "send", &group, &big]);
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));

    // `-` reads the text from standard input and prints the message id.
    let out = tern_with_stdin(&b.home, &["group", "send", &group, "-"], b"from stdin\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let h = wait_history(a, &group, "the stdin text at alice", WAIT, |h| {
        has_text(h, "from stdin")
    });
    assert_eq!(h.last().unwrap()["id"], id.as_str());

    // Bob leaves: he can no longer send, and the group shows it.
    let g = b.json(&["group", "leave", &group]).unwrap();
    assert_eq!(g["member"], false, "{g}");
    let out = b.cli(&["group", "send", &group, "hello?"]);
    assert_eq!(code(&out), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a member"), "{}", stderr(&out));
    wait_members(a, &group, &[&a.user], true);
    let listed = b.json(&["group", "list"]).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == group.as_str() && g["member"] == false),
        "{listed}"
    );

    // Malformed API parameters are -32602 with the parameter named.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = a.api().await.unwrap();
        for (method, params, name) in [
            ("group_add", json!({"group": group}), "members"),
            (
                "group_add",
                json!({"group": group, "members": "Bob"}),
                "members",
            ),
            (
                "group_remove",
                json!({"group": group, "members": []}),
                "members",
            ),
            (
                "group_history",
                json!({"group": group, "limit": "ten"}),
                "limit",
            ),
            (
                "group_history",
                json!({"group": group, "mark_read": 1}),
                "mark_read",
            ),
            ("group_send", json!({"group": group}), "text"),
            ("group_info", json!({}), "group"),
        ] {
            match api.call(method, params.clone()).await {
                Err(ClientError::Rpc { code, message }) => {
                    assert_eq!(code, -32602, "{method} {params}: {message}");
                    assert!(message.contains(name), "{method} {params}: {message}");
                }
                other => panic!("{method} {params}: {other:?}"),
            }
        }
        match api
            .call("group_info", json!({"group": "Nope"}))
            .await
            .unwrap_err()
        {
            ClientError::Rpc { code, .. } => assert_eq!(code, 1012),
            other => panic!("{other:?}"),
        }
    });
}

/// Reads events from `api` until `pick` returns `Some`, at most [`WAIT`] in all.
async fn wait_event<T>(
    api: &mut tern_node::api::client::ApiClient,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ev = api
            .next_event(left)
            .await
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        if let Some(v) = pick(ev) {
            return v;
        }
    }
}

#[test]
fn subscribers_hear_of_groups_their_messages_and_batched_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, nodes) = star(dir.path(), &["alice", "bob"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut bob = b.api().await.unwrap();
        bob.subscribe().await.unwrap();
        let mut alice = a.api().await.unwrap();
        let g = alice
            .call("group_create", json!({"title": "News", "members": ["Bob"]}))
            .await
            .unwrap();
        let group = g["id"].as_str().unwrap().to_owned();
        let joined = wait_event(&mut bob, "bob joining News", |ev| match ev {
            Event::Group { group: info } if info.id.to_string() == group => Some(info),
            _ => None,
        })
        .await;
        assert!(joined.member && !joined.admin, "{joined:?}");
        assert_eq!(joined.title, "News");
        assert_eq!(joined.members.len(), 2, "{joined:?}");

        let sent = send_all(a, &group, vec!["n1".into(), "n2".into(), "n3".into()]).await;
        let mut seen = Vec::new();
        while seen.len() < sent.len() {
            let m = wait_event(&mut bob, "alice's messages at bob", |ev| match ev {
                Event::Message { message }
                    if message.kind == tern_node::types::MessageKind::Text =>
                {
                    Some(message)
                }
                _ => None,
            })
            .await;
            assert_eq!(m.conversation, group);
            seen.push(m.id);
        }
        // (Event order is arrival order; the display order is checked on the history.)
        let (mut seen, mut sent) = (seen, sent);
        seen.sort();
        sent.sort();
        assert_eq!(seen, sent);
        let (unread, text) = wait_event(&mut bob, "a notification for News", |ev| match ev {
            Event::Notification {
                conversation,
                title,
                unread,
                text,
            } if conversation == group => {
                assert_eq!(title, "News");
                Some((unread, text))
            }
            _ => None,
        })
        .await;
        assert!((1..=3).contains(&unread), "{unread}: {text}");
        assert!(text.contains("News"), "{text}");
        // Reading the group clears its unread count, and every subscriber hears of it (a
        // second tab of the web UI clears its badge): here one that did not read it.
        let mut tab = b.api().await.unwrap();
        tab.subscribe().await.unwrap();
        let page = bob
            .call("group_history", json!({"group": group, "mark_read": true}))
            .await
            .unwrap();
        assert_eq!(message_texts(page.as_array().unwrap()), ["n1", "n2", "n3"]);
        let read = |ev| match ev {
            Event::Read { conversation, .. } => Some(conversation.to_string()),
            _ => None,
        };
        assert_eq!(wait_event(&mut tab, "News read", read).await, group);
        // A direct conversation likewise (the CLI reading it).
        alice
            .call("send", json!({"contact": "Bob", "text": "direct"}))
            .await
            .unwrap();
        wait_event(&mut tab, "alice's direct text", |ev| match ev {
            Event::Message { message } if message.text == "direct" => Some(()),
            _ => None,
        })
        .await;
        b.ok(&["history", "Alice"]).unwrap();
        assert_eq!(
            wait_event(&mut tab, "the direct text read", read).await,
            a.user
        );
        let info = bob
            .call("group_info", json!({"group": "news"}))
            .await
            .unwrap();
        assert_eq!(info["unread"], 0, "{info}");
    });

    // Paging through the CLI: the newest two, then what came before them.
    let last = b
        .json(&["group", "history", "News", "--limit", "2"])
        .unwrap();
    let last = last.as_array().unwrap();
    assert_eq!(message_texts(last), ["n2", "n3"]);
    let before = b
        .json(&[
            "group",
            "history",
            "News",
            "--before",
            last[0]["id"].as_str().unwrap(),
        ])
        .unwrap();
    let before = before.as_array().unwrap();
    assert_eq!(message_texts(before), ["n1"]);
    assert!(
        before.iter().any(|m| m["kind"] == "membership"),
        "{before:?}"
    );
}

/// `before` naming no message of the group is "unknown message" (1006, exit 4), as
/// docs/api.md has it, not a storage failure.
#[test]
fn paging_before_an_unknown_message_says_unknown_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, nodes) = star(dir.path(), &["alice"]);
    let a = &nodes[0];
    a.ok(&["group", "create", "Solo"]).unwrap();
    let sent = a.ok(&["group", "send", "Solo", "s1"]).unwrap();
    let sent = sent.trim();
    let page = a
        .json(&["group", "history", "Solo", "--before", sent])
        .unwrap();
    assert_eq!(
        message_texts(page.as_array().unwrap()),
        Vec::<String>::new()
    );
    for before in ["f".repeat(32), "not-an-id".to_owned()] {
        let out = a.cli(&["group", "history", "Solo", "--before", &before]);
        assert_eq!(code(&out), Some(4), "{before}: {}", stderr(&out));
        assert!(stderr(&out).contains("no such message"), "{}", stderr(&out));
    }
}

/// A member offline when the group is made catches up when it returns; a member removed
/// while offline learns of it on return, and what it sent from its stale state (under the
/// membership it last knew, at which it was a member) is shown by every other member, at the
/// same place.
#[test]
fn members_offline_through_creation_or_removal_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = star(dir.path(), &["alice", "bob", "carol", "dave"]);
    let users: Vec<String> = nodes.iter().map(|n| n.user.clone()).collect();
    let (ua, ub, uc, ud) = (&users[0], &users[1], &users[2], &users[3]);
    nodes[3].stop().unwrap();
    let group = nodes[0]
        .ok(&["group", "create", "Late", "Bob", "Carol", "Dave"])
        .unwrap()
        .trim()
        .to_owned();
    for n in &nodes[..3] {
        wait_members(n, &group, &[ua, ub, uc, ud], true);
    }
    nodes[0].ok(&["group", "send", &group, "m1"]).unwrap();
    wait_history(&nodes[1], &group, "m1 at bob", WAIT, |h| has_text(h, "m1"));
    nodes[1].ok(&["group", "send", &group, "m2"]).unwrap();
    wait_history(&nodes[0], &group, "m2 at alice", WAIT, |h| {
        has_text(h, "m2")
    });

    // Carol is removed while offline.
    nodes[2].stop().unwrap();
    nodes[0].ok(&["group", "remove", &group, "Carol"]).unwrap();
    nodes[0].ok(&["group", "send", &group, "m3"]).unwrap();
    wait_history(&nodes[1], &group, "m3 at bob", WAIT, |h| has_text(h, "m3"));

    // Dave never saw the group: he gets it, its members and all three texts.
    nodes[3].restart().unwrap();
    wait_members(&nodes[3], &group, &[ua, ub, ud], true);
    wait_history(&nodes[3], &group, "m1..m3 at dave", WAIT, |h| {
        message_texts(h) == ["m1", "m2", "m3"]
    });

    // Carol returns and at once tries to send: refused if she already knows, else sent from
    // her stale state (and then shown by everyone else, in the same place); either way she
    // learns she is out.
    nodes[2].restart().unwrap();
    let out = nodes[2].cli(&["group", "send", &group, "stale"]);
    assert!(
        out.status.success() || code(&out) == Some(9),
        "{}",
        stderr(&out)
    );
    let sent_stale = out.status.success();
    let gc = wait_members(&nodes[2], &group, &[ua, ub, ud], false);
    assert_eq!(gc["member"], false);
    let hc = group_history(&nodes[2], &group);
    assert!(!has_text(&hc, "m3"), "{:?}", order_view(&hc));
    // Her outbox drains (what she sent is with the relay or the recipients), then a later
    // message from Alice reaching Bob and Dave marks the point by which they saw it.
    wait_for("carol's outbox to drain", WAIT, || {
        let s = nodes[2].json(&["status"]).ok()?;
        (s["outbox"] == 0).then_some(())
    })
    .unwrap();
    nodes[0].ok(&["group", "send", &group, "m4"]).unwrap();
    for i in [0, 1, 3] {
        let h = wait_history(&nodes[i], &group, "m4", WAIT, |h| {
            has_text(h, "m4") && (!sent_stale || has_text(h, "stale"))
        });
        let texts: Vec<String> = message_texts(&h)
            .into_iter()
            .filter(|t| t != "stale")
            .collect();
        assert_eq!(
            texts,
            ["m1", "m2", "m3", "m4"],
            "{}: {:?}",
            nodes[i].user,
            order_view(&h)
        );
    }
    let ids0 = message_ids(&group_history(&nodes[0], &group));
    for i in [1, 3] {
        assert_eq!(
            message_ids(&group_history(&nodes[i], &group)),
            ids0,
            "{}",
            nodes[i].user
        );
    }
}

/// A member added while the others are sending sees a suffix of the conversation: in the
/// same order as everyone else, with nothing sent before it joined.
#[test]
fn a_member_added_mid_burst_sees_a_consistent_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, nodes) = star(dir.path(), &["alice", "bob", "carol", "frank"]);
    let users: Vec<String> = nodes.iter().map(|n| n.user.clone()).collect();
    let (ua, ub, uc, uf) = (&users[0], &users[1], &users[2], &users[3]);
    let group = nodes[0]
        .ok(&["group", "create", "Burst", "Bob", "Carol"])
        .unwrap()
        .trim()
        .to_owned();
    for n in &nodes[..3] {
        wait_members(n, &group, &[ua, ub, uc], true);
    }
    let burst = |p: &str| -> Vec<String> { (1..=PER_SENDER).map(|i| format!("{p}{i}")).collect() };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let add = async {
            let mut api = nodes[0].api().await.unwrap();
            api.call("group_add", json!({"group": group, "members": ["Frank"]}))
                .await
                .unwrap()
        };
        tokio::join!(
            send_all(&nodes[1], &group, burst("b")),
            send_all(&nodes[2], &group, burst("c")),
            add,
        );
    });
    for n in &nodes {
        wait_members(n, &group, &[ua, ub, uc, uf], true);
    }
    // A closing message from each sender, sent once it knows Frank is in.
    nodes[1].ok(&["group", "send", &group, "b-end"]).unwrap();
    nodes[2].ok(&["group", "send", &group, "c-end"]).unwrap();
    let mut all = burst("b");
    all.extend(burst("c"));
    all.extend(["b-end".to_owned(), "c-end".to_owned()]);
    all.sort();
    let members_full: Vec<Vec<Value>> = nodes[..3]
        .iter()
        .map(|n| {
            wait_history(n, &group, "every text", WAIT, |h| {
                let mut t = message_texts(h);
                t.sort();
                t == all
            })
        })
        .collect();
    let reference = message_ids(&members_full[0]);
    for (n, h) in nodes[1..3].iter().zip(&members_full[1..]) {
        let h = if message_ids(h) == reference {
            h.clone()
        } else {
            wait_history(n, &group, "alice's order", WAIT, |h| {
                message_ids(h) == reference
            })
        };
        assert_eq!(message_ids(&h), reference);
    }
    let hf = wait_history(&nodes[3], &group, "the closing texts at frank", WAIT, |h| {
        has_text(h, "b-end") && has_text(h, "c-end")
    });
    // Frank's view: every entry is in Alice's, in the same relative order, and it holds no
    // text from before the entry that added him.
    let pos: Vec<usize> = message_ids(&hf)
        .iter()
        .map(|id| {
            reference.iter().position(|r| r == id).unwrap_or_else(|| {
                panic!(
                    "frank holds {id} that alice lacks\nalice: {:?}\nfrank: {:?}",
                    order_view(&members_full[0]),
                    order_view(&hf)
                )
            })
        })
        .collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "frank's order differs\nalice: {:?}\nfrank: {:?}",
        order_view(&members_full[0]),
        order_view(&hf)
    );
    let added_at = members_full[0]
        .iter()
        .position(|m| {
            m["kind"] == "membership" && m["text"].as_str().unwrap_or("").contains("added")
        })
        .unwrap();
    for (p, m) in pos.iter().zip(&hf) {
        if m["kind"] == "text" {
            assert!(
                *p > added_at,
                "frank holds {} from before he joined\nalice: {:?}",
                m["text"],
                order_view(&members_full[0])
            );
        }
    }
    eprintln!(
        "frank holds {} of {} entries: {:?}",
        hf.len(),
        reference.len(),
        message_texts(&hf)
    );
}
