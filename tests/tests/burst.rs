//! Bursts, as a real user's traffic has them: thousands of texts pipelined over the local API
//! to a contact who is offline, under a low relay rate limit, past the contact's share of a
//! small mailbox, across a relay killed -9 and restarted (one sender, and several at once), and
//! across a direct connection that drops mid-burst. Every text must arrive exactly once, in
//! the order it was sent, with nothing reported undecryptable.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use tern_tests::support::{
    Node, Relay, group_history, link_pair, message_texts, start_nodes, wait_direct, wait_for,
    wait_outbox_empty, wipe_keeping_identity,
};

/// Longest a burst may take to drain or arrive (a 2-core CI machine, debug build).
const BURST_WAIT: Duration = Duration::from_secs(240);

/// Pipelines `texts` as `method` calls (`{key: target, text}`) on one API connection of
/// `node` and returns the replies in order; every call must be answered in time and succeed.
async fn pipeline(
    node: &Node,
    method: &str,
    key: &str,
    target: &str,
    texts: &[String],
) -> Vec<Value> {
    let mut api = node.api().await.unwrap();
    let calls: Vec<(&str, Value)> = texts
        .iter()
        .map(|t| (method, json!({key: target, "text": t})))
        .collect();
    let replies = tokio::time::timeout(BURST_WAIT, api.call_many(&calls))
        .await
        .expect("the node answers every pipelined send in time")
        .unwrap();
    assert_eq!(replies.len(), texts.len());
    replies
        .into_iter()
        .map(|r| r.expect("every pipelined send is accepted"))
        .collect()
}

/// Sends `n` texts to `contact` pipelined on one API connection; returns their texts in
/// the order sent. Every send must succeed.
fn send_burst(node: &Node, contact: &str, n: usize, tag: &str) -> Vec<String> {
    let texts: Vec<String> = (0..n).map(|i| format!("{tag} {i:05}")).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let replies = rt.block_on(pipeline(node, "send", "contact", contact, &texts));
    let seqs: Vec<u64> = replies.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    // Numbered in the order they were pipelined.
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence follows the pipeline"
    );
    texts
}

/// A contact's whole history as the API shows it, oldest first (paged back 500 at a time).
fn history(node: &Node, contact: &str) -> Vec<Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = node.api().await.unwrap();
        let mut all: Vec<Value> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut p = json!({"contact": contact, "limit": 500});
            if let Some(b) = &before {
                p["before"] = json!(b);
            }
            let page = tokio::time::timeout(BURST_WAIT, api.call("history", p))
                .await
                .expect("history answers in time")
                .unwrap();
            let page = page.as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                break;
            }
            before = page[0]["id"].as_str().map(str::to_owned);
            let mut page = page;
            page.extend(all);
            all = page;
        }
        all
    })
}

fn received_texts(node: &Node, contact: &str) -> Vec<String> {
    history(node, contact)
        .iter()
        .filter(|m| m["own"] == json!(false))
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A node's losses and repairs since it started (`status.recovery`).
fn recovery(node: &Node) -> Value {
    node.json(&["status"]).unwrap()["recovery"].clone()
}

/// Nothing was lost on the way, waited for past its chain, or asked for again: the wire
/// kept the order, so no repair was needed.
fn assert_nothing_repaired(receiver: &Node, sender: &Node) {
    let r = recovery(receiver);
    assert_eq!(r["undecryptable"], 0, "{r}");
    assert_eq!(r["resends_asked"], 0, "{r}");
    assert_eq!(recovery(sender)["texts_resent"], 0);
}

fn outbox(node: &Node) -> u64 {
    node.json(&["status"])
        .ok()
        .and_then(|s| s["outbox"].as_u64())
        .unwrap_or(u64::MAX)
}

/// Waits until `node` holds `expected` from `contact` (by count), then checks it is exactly
/// `expected`: every text once, in the order sent.
fn assert_arrives_complete(node: &Node, contact: &str, expected: &[String]) {
    let mut last = 0;
    let got = wait_for("the whole burst in history", BURST_WAIT, || {
        let got = received_texts(node, contact);
        last = got.len();
        (got.len() >= expected.len()).then_some(got)
    })
    .unwrap_or_else(|e| panic!("{e}: {last} of {} arrived", expected.len()));
    assert_eq!(got.len(), expected.len(), "no duplicates");
    if got != expected {
        let first_bad = got.iter().zip(expected).position(|(g, e)| g != e);
        panic!("order or content differs first at {first_bad:?}");
    }
}

#[test]
fn a_pipelined_burst_to_an_offline_contact_arrives_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    b.stop().unwrap();

    let sent = send_burst(&a, "Bob", 2_000, "burst");
    // The outbox drains to the relay (past its deposit burst, at its rate limit).
    wait_outbox_empty(&a, BURST_WAIT).unwrap();
    // On the relay's deposit stream, once the node has opened it (the first deposits may
    // go as requests while it opens).
    let on_stream = relay.metric("tern_relay_stream_deposits_total").unwrap();
    assert!(on_stream >= 1_900.0, "deposits on the stream: {on_stream}");
    b.restart().unwrap();
    assert_arrives_complete(&b, "Alice", &sent);
    assert_nothing_repaired(&b, &a);
    assert_eq!(recovery(&b)["waited"], 0, "mail came in order");
}

/// Alice and Bob, contacts on one relay that takes 40 deposits a second from a device (10 at
/// once), with its metrics.
fn rate_limited_pair(dir: &Path) -> (Relay, Node, Node) {
    let relay = Relay::start_with_metrics(
        &dir.join("relay"),
        "[rate]\ndeposits_per_sec = 40.0\ndeposits_burst = 10.0\n",
    )
    .unwrap();
    let a = Node::init_and_start(dir, "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir, "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    (relay, a, b)
}

/// How many deposits `relay` refused with `reason`.
fn rejects(relay: &Relay, reason: &str) -> f64 {
    relay
        .metric(&format!("tern_relay_rejects_total{{reason=\"{reason}\"}}"))
        .unwrap_or(0.0)
}

#[test]
fn a_burst_under_a_low_deposit_rate_limit_waits_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    // Deposits are refused with rate_limited once the burst allowance is gone; the sender
    // must wait, not drop or reorder, and then keep to the rate.
    let (relay, a, mut b) = rate_limited_pair(dir.path());
    b.stop().unwrap();

    let sent = send_burst(&a, "Bob", 400, "slow");
    // While it drains, the outbox depth is visible in status and goes down.
    let depth = outbox(&a);
    assert!(depth > 0 && depth <= 400 + 4, "outbox depth {depth}");
    wait_outbox_empty(&a, BURST_WAIT).unwrap();
    let refused = rejects(&relay, "rate_limited");
    assert!(refused > 0.0, "the rate limit was hit ({refused})");
    // A device's texts go a window at a time on the deposit stream, each following the
    // one before: what was in flight behind a refused one was refused with it.
    let fenced = rejects(&relay, "out_of_order");
    assert!(
        fenced > 0.0,
        "deposits behind a refused one were fenced ({fenced})"
    );
    // Once refused for its rate, the sender paces its deposits by the relay's retry time
    // instead of sending a window that is refused again: the relay reads few deposits for
    // nothing (a window of 16 at each refusal read about 1,000 for these 400).
    assert!(
        refused + fenced < 100.0,
        "{refused} refused for their rate and {fenced} behind them, for 400 stored"
    );
    b.restart().unwrap();
    assert_arrives_complete(&b, "Alice", &sent);
    assert_nothing_repaired(&b, &a);
    assert_eq!(recovery(&b)["waited"], 0, "mail was stored in order");
}

/// The same for a group: each group text is one deposit for the member's devices, and once
/// refused for its rate the sender's fan-outs wait their turn rather than each retrying on
/// its own.
#[test]
fn a_group_burst_under_a_low_deposit_rate_limit_keeps_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a, mut b) = rate_limited_pair(dir.path());
    let group = a.json(&["group", "create", "Slow", "Bob"]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(&["group", "send", &group, "first"]).unwrap();
    wait_for("Bob in the group", BURST_WAIT, || {
        (message_texts(&group_history(&b, &group)) == ["first"]).then_some(())
    })
    .unwrap();
    b.stop().unwrap();
    let texts: Vec<String> = (0..200).map(|i| format!("slow {i:03}")).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(pipeline(&a, "group_send", "group", &group, &texts));
    wait_outbox_empty(&a, BURST_WAIT).unwrap();
    let refused = rejects(&relay, "rate_limited") + rejects(&relay, "out_of_order");
    assert!(refused > 0.0, "the rate limit was hit");
    // Before fan-outs waited their turn: about 1,760 refused for these 200; since, 28 to
    // 129 (most in the first moment, before the first refusal tells the rate).
    assert!(
        refused < 400.0,
        "{refused} deposits refused for their rate or behind one, for 200 stored"
    );
    b.restart().unwrap();
    let mut want = vec!["first".to_owned()];
    want.extend(texts);
    let got = wait_for("the group burst at Bob", BURST_WAIT, || {
        let t = message_texts(&group_history(&b, &group));
        (t.len() >= want.len()).then_some(t)
    })
    .unwrap();
    assert_eq!(got, want, "every text once, in order");
}

#[test]
fn a_burst_past_the_contacts_mailbox_share_waits_for_room_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    // Bob's mailbox holds 200 messages, a quarter of it per granted user: 50 of Alice's at a
    // time. Her burst of 400 meets a full share many times over; she must keep the rest
    // and send it as Bob drains his mailbox, through the relay only (no direct path).
    let limits = "[mailbox]\nmax_messages = 200\nintro_max_messages = 50\n";
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), limits).unwrap();
    let no_direct = ["--no-direct"];
    let a = Node::init_and_start_with(dir.path(), "alice", Some(&relay.addr), &no_direct).unwrap();
    let mut b =
        Node::init_and_start_with(dir.path(), "bob", Some(&relay.addr), &no_direct).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    b.stop().unwrap();

    let sent = send_burst(&a, "Bob", 400, "full");
    wait_for("the share to fill", BURST_WAIT, || {
        let full = relay.metric(SHARE_FULL).unwrap_or(0.0);
        (full > 0.0).then_some(())
    })
    .unwrap();
    // Most of the burst is still Alice's to send while Bob is away, and she is told why.
    assert!(outbox(&a) > 300, "outbox {}", outbox(&a));
    let held = |a: &Node| -> Vec<Value> {
        let s = a.json(&["status"]).unwrap();
        s["relays"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["held"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    wait_for("the reason shown", BURST_WAIT, || {
        held(&a).contains(&json!("share_full")).then_some(())
    })
    .unwrap();
    let text = a.ok(&["status"]).unwrap();
    assert!(
        text.contains("held back: a recipient's mailbox there is full"),
        "{text}"
    );
    b.restart().unwrap();
    assert_arrives_complete(&b, "Alice", &sent);
    wait_outbox_empty(&a, BURST_WAIT).unwrap();
    assert!(held(&a).is_empty(), "{:?}", held(&a));
    assert_nothing_repaired(&b, &a);
    assert_eq!(recovery(&b)["waited"], 0, "mail was stored in order");
}

#[test]
fn a_relay_killed_mid_burst_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A deposit rate that stretches the burst over several seconds, so the kill lands in it.
    let limits = "[rate]\ndeposits_per_sec = 150.0\ndeposits_burst = 50.0\n";
    let mut relay = Relay::start(&dir.path().join("relay"), limits).unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    b.stop().unwrap();

    let sent = send_burst(&a, "Bob", 1_500, "kill");
    // Mid-burst: some deposited, some not.
    let left = wait_for("part of the burst at the relay", BURST_WAIT, || {
        let left = outbox(&a);
        (left < 1_300).then_some(left)
    })
    .unwrap();
    relay.restart_after_kill9(limits).unwrap();
    assert!(left > 100, "the relay died mid-burst ({left} still to go)");
    wait_outbox_empty(&a, BURST_WAIT).unwrap();
    b.restart().unwrap();
    assert_arrives_complete(&b, "Alice", &sent);
    assert_nothing_repaired(&b, &a);
}

/// Several senders bursting to one offline contact at once when the relay is killed -9 and
/// restarted: every node reconnects and sends again at about the same moment, and each
/// sender's texts still arrive once, in its order, with nothing to repair.
#[test]
fn bursts_from_several_senders_across_a_relay_kill_arrive_complete_and_in_order() {
    const SENDERS: usize = 4;
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    // Stretches each burst over about two seconds, so the kill lands in all of them.
    let limits = "[rate]\ndeposits_per_sec = 150.0\ndeposits_burst = 50.0\n";
    let mut relay = Relay::start(&dir.path().join("relay"), limits).unwrap();
    let names = ["bob", "s0", "s1", "s2", "s3"];
    let mut nodes = start_nodes(dir.path(), &names[..=SENDERS], &relay.addr).unwrap();
    let mut bob = nodes.remove(0);
    for (i, s) in nodes.iter().enumerate() {
        link_pair(s, &bob, &format!("S{i}"), "Bob").unwrap();
    }
    bob.stop().unwrap();

    let sent: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, s)| scope.spawn(move || send_burst(s, "Bob", N, &format!("s{i}"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = (SENDERS * N) as u64;
    let left = wait_for("part of the bursts at the relay", BURST_WAIT, || {
        let left: u64 = nodes.iter().map(outbox).sum();
        (left < total * 3 / 4).then_some(left)
    })
    .unwrap();
    relay.restart_after_kill9(limits).unwrap();
    assert!(left > 100, "the relay died mid-burst ({left} still to go)");
    for s in &nodes {
        wait_outbox_empty(s, BURST_WAIT).unwrap();
    }
    bob.restart().unwrap();
    for (i, (s, texts)) in nodes.iter().zip(&sent).enumerate() {
        assert_arrives_complete(&bob, &format!("S{i}"), texts);
        assert_nothing_repaired(&bob, s);
    }
}

#[test]
fn a_burst_sent_again_under_its_client_ids_after_a_kill_arrives_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let own = |a: &Node| -> Option<usize> {
        let h = a.json(&["history", "Bob", "--limit", "500"]).ok()?;
        Some(h.as_array()?.iter().filter(|m| m["own"] == true).count())
    };
    let call = |t: &String| ("send", json!({"contact": "Bob", "text": t, "client_id": t}));
    // Batches of pipelined sends, each text under its own key, until the node is killed -9
    // under them: the answers of the last batch are lost, though some of it was stored.
    let pid = a.pid().unwrap().to_string();
    let (tried, answered) = std::thread::scope(|s| {
        let a = &a;
        let killer = s.spawn(move || {
            wait_for("part of the burst stored", BURST_WAIT, || {
                own(a).filter(|n| *n >= 300).map(|_| ())
            })
            .unwrap();
            let killed = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap();
            assert!(killed.success());
        });
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tried, answered) = rt.block_on(async {
            let mut api = a.api().await.unwrap();
            let mut tried: Vec<String> = Vec::new();
            let mut answered: Vec<(String, Value)> = Vec::new();
            for batch in 0..100 {
                let these: Vec<String> = (0..100).map(|i| format!("k{batch:02}-{i:03}")).collect();
                let calls: Vec<(&str, Value)> = these.iter().map(call).collect();
                tried.extend(these.iter().cloned());
                let Ok(replies) = api.call_many(&calls).await else {
                    break;
                };
                answered.extend(
                    these
                        .into_iter()
                        .zip(replies.into_iter().map(Result::unwrap)),
                );
            }
            (tried, answered)
        });
        killer.join().unwrap();
        (tried, answered)
    });
    assert!(answered.len() < tried.len(), "killed mid-burst");
    // Sent again, all of it under the same keys: what was stored is answered as it was,
    // the rest is sent now.
    a.restart().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let again: Vec<Value> = rt.block_on(async {
        let mut api = a.api().await.unwrap();
        let mut out = Vec::new();
        for chunk in tried.chunks(500) {
            let calls: Vec<(&str, Value)> = chunk.iter().map(call).collect();
            let replies = tokio::time::timeout(BURST_WAIT, api.call_many(&calls))
                .await
                .expect("answered in time")
                .unwrap();
            out.extend(replies.into_iter().map(|r| r.expect("sent again")));
        }
        out
    });
    for ((text, first), second) in answered.iter().zip(&again) {
        assert_eq!(
            first["id"], second["id"],
            "{text} is the message answered before"
        );
    }
    let seqs: Vec<u64> = again.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one message per key, in order"
    );
    assert_arrives_complete(&b, "Alice", &tried);
    let stored = history(&a, "Bob")
        .iter()
        .filter(|m| m["own"] == json!(true))
        .count();
    assert_eq!(stored, tried.len(), "each key's text stored once");
}

#[test]
fn a_direct_connection_dropping_mid_burst_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    // A first message, so both hold a session and the direct path comes up.
    a.ok(&["send", "Bob", "hello"]).unwrap();
    wait_direct(&a, &b, BURST_WAIT).unwrap();

    let sent = {
        let a_ref = &a;
        std::thread::scope(|s| {
            let sender = s.spawn(move || send_burst(a_ref, "Bob", 1_500, "drop"));
            // Bob dies while the burst goes out (some direct, the rest to the mailbox).
            wait_for("part of the burst at bob", BURST_WAIT, || {
                (received_texts(&b, "Alice").len() >= 100).then_some(())
            })
            .unwrap();
            b.kill9();
            sender.join().unwrap()
        })
    };
    wait_outbox_empty(&a, BURST_WAIT).unwrap();
    b.restart().unwrap();
    let mut expected = vec!["hello".to_owned()];
    expected.extend(sent);
    assert_arrives_complete(&b, "Alice", &expected);
    assert_eq!(recovery(&b)["undecryptable"], 0);
}

#[test]
fn group_bursts_from_two_senders_reach_an_offline_member_complete_and_in_one_order() {
    let dir = tempfile::tempdir().unwrap();
    group_bursts_reach_an_offline_member(dir.path(), "", &[]);
}

/// The relay's metric of deposits refused for a full share of a mailbox.
const SHARE_FULL: &str = "tern_relay_rejects_total{reason=\"share_full\"}";

/// The same through the relay only, past each sender's share of a small mailbox (50 of 200
/// messages): the rest of both bursts waits at the senders and follows once Carol is back.
#[test]
fn group_bursts_past_the_members_mailbox_share_follow_her_back_complete() {
    let limits = "[mailbox]\nmax_messages = 200\nintro_max_messages = 50\n";
    let dir = tempfile::tempdir().unwrap();
    let relay = group_bursts_reach_an_offline_member(dir.path(), limits, &["--no-direct"]);
    let full = relay.metric(SHARE_FULL).unwrap_or(0.0);
    assert!(full > 0.0, "the shares filled ({full})");
}

/// Alice, Bob and Carol in a group on one relay (with `limits`, nodes with `extra`); Carol
/// goes offline while Alice and Bob each pipeline 200 texts to the group; once she is back,
/// every member holds both bursts once each, each sender's in the order sent, all in one
/// order. Returns the relay (its metrics).
fn group_bursts_reach_an_offline_member(dir: &Path, limits: &str, extra: &[&str]) -> Relay {
    let relay = Relay::start_with_metrics(&dir.join("relay"), limits).unwrap();
    let nodes: Vec<Node> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| Node::init_and_start_with(dir, n, Some(&relay.addr), extra).unwrap())
        .collect();
    let mut nodes = nodes;
    link_pair(&nodes[0], &nodes[1], "Alice", "Bob").unwrap();
    link_pair(&nodes[0], &nodes[2], "Alice", "Carol").unwrap();
    let g = nodes[0]
        .json(&["group", "create", "Burst", "Bob", "Carol"])
        .unwrap();
    let group = g["id"].as_str().unwrap().to_owned();
    for n in &nodes {
        wait_for("every member to know the group", BURST_WAIT, || {
            let info = n.json(&["group", "info", &group]).ok()?;
            (info["members"].as_array()?.len() == 3).then_some(())
        })
        .unwrap();
    }
    // Carol goes offline; Alice and Bob each pipeline 200 texts at once (two sender-key
    // rotations each on the way: keys travel over the pairwise lanes).
    nodes[2].stop().unwrap();
    let per = 200;
    let a_texts: Vec<String> = (0..per).map(|i| format!("a {i:04}")).collect();
    let b_texts: Vec<String> = (0..per).map(|i| format!("b {i:04}")).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::join!(
            pipeline(&nodes[0], "group_send", "group", &group, &a_texts),
            pipeline(&nodes[1], "group_send", "group", &group, &b_texts),
        );
    });
    nodes[2].restart().unwrap();
    let texts_of = |n: &Node| -> Vec<String> { message_texts(&group_history(n, &group)) };
    let mut orders = Vec::new();
    for n in &nodes {
        let got = wait_for("both bursts at every member", BURST_WAIT, || {
            let t = texts_of(n);
            (t.len() >= 2 * per).then_some(t)
        })
        .unwrap_or_else(|e| panic!("{e}: {} has {}", n.user, texts_of(n).len()));
        assert_eq!(got.len(), 2 * per, "no duplicates at {}", n.user);
        // Each sender's texts in the order sent.
        for (prefix, sent) in [("a ", &a_texts), ("b ", &b_texts)] {
            let theirs: Vec<&String> = got.iter().filter(|t| t.starts_with(prefix)).collect();
            assert_eq!(theirs.len(), sent.len(), "{prefix} at {}", n.user);
            assert!(
                theirs.iter().zip(sent.iter()).all(|(g, s)| *g == s),
                "{prefix}order at {}",
                n.user
            );
        }
        orders.push(got);
    }
    // Every member shows the same order.
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
    relay
}

/// A member's only relay loses its disk while it holds a burst of group texts for her, with
/// the sender key that went with one of them (the burst crosses a key rotation): once she is
/// back and the sender writes again, she asks for that key and for the texts before the
/// gap, and holds every one once, in the order sent. She and the sender are no contacts of
/// each other: they know each other through the group only.
#[test]
fn a_group_burst_a_wiped_relay_lost_comes_back_with_its_sender_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut ana_relay = Relay::start(&dir.path().join("ra"), "").unwrap();
    let ben_relay = Relay::start(&dir.path().join("rb"), "").unwrap();
    // No direct connections: everything for Ana goes through her relay.
    let no_direct = ["--no-direct"];
    let mut ana =
        Node::init_and_start_with(dir.path(), "ana", Some(&ana_relay.addr), &no_direct).unwrap();
    let ben =
        Node::init_and_start_with(dir.path(), "ben", Some(&ben_relay.addr), &no_direct).unwrap();
    let cy =
        Node::init_and_start_with(dir.path(), "cy", Some(&ben_relay.addr), &no_direct).unwrap();
    link_pair(&cy, &ana, "Cy", "Ana").unwrap();
    link_pair(&cy, &ben, "Cy", "Ben").unwrap();
    let group = cy.json(&["group", "create", "Team", "Ana", "Ben"]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in [&ana, &ben] {
        wait_for("every member to know the group", BURST_WAIT, || {
            let info = n.json(&["group", "info", &group]).ok()?;
            (info["members"].as_array()?.len() == 3).then_some(())
        })
        .unwrap();
    }
    ben.ok(&["group", "send", &group, "hi"]).unwrap();
    let texts_of = |n: &Node| -> Vec<String> { message_texts(&group_history(n, &group)) };
    wait_for("the first text at Ana", BURST_WAIT, || {
        (texts_of(&ana) == ["hi"]).then_some(())
    })
    .unwrap();

    // Ana offline; Ben's burst waits at her relay, past a key rotation (every 100 texts).
    ana.stop().unwrap();
    let burst: Vec<String> = (0..150).map(|i| format!("g {i:03}")).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(pipeline(&ben, "group_send", "group", &group, &burst));
    wait_outbox_empty(&ben, BURST_WAIT).unwrap();
    ana_relay.kill9();
    wipe_keeping_identity(&ana_relay.data).unwrap();
    ana_relay.start_again("").unwrap();
    ana.restart().unwrap();
    ben.ok(&["group", "send", &group, "after"]).unwrap();

    let mut want = vec!["hi".to_owned()];
    want.extend(burst);
    want.push("after".to_owned());
    let mut last = 0;
    let got = wait_for("everything at Ana", BURST_WAIT, || {
        let t = texts_of(&ana);
        last = t.len();
        (t.len() >= want.len()).then_some(t)
    })
    .unwrap_or_else(|e| panic!("{e}: {last} of {} at Ana", want.len()));
    assert_eq!(got, want, "every text once, in the order sent");
    let r = recovery(&ana);
    assert!(r["group_keys_asked"].as_u64() >= Some(1), "{r}");
    assert!(r["resends_asked"].as_u64() >= Some(1), "{r}");
    assert_eq!(r["group_waiting"], 0, "{r}");
    let b = recovery(&ben);
    assert!(b["group_keys_resent"].as_u64() >= Some(1), "{b}");
    assert!(b["texts_resent"].as_u64() >= Some(100), "{b}");
}

/// A contact's only relay loses its disk while it holds the whole of a burst for him, and
/// the sender writes nothing after it: once he is back online, the sender, whose texts stay
/// unreceipted, tells him how far it has sent, and he asks for them all again.
#[test]
fn a_burst_a_wiped_relay_lost_comes_back_with_nothing_sent_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut bob_relay = Relay::start(&dir.path().join("rb"), "").unwrap();
    let alice_relay = Relay::start(&dir.path().join("ra"), "").unwrap();
    let no_direct = ["--no-direct"];
    let alice = Node::init_and_start_with(dir.path(), "alice", Some(&alice_relay.addr), &no_direct)
        .unwrap();
    let mut bob =
        Node::init_and_start_with(dir.path(), "bob", Some(&bob_relay.addr), &no_direct).unwrap();
    link_pair(&alice, &bob, "Alice", "Bob").unwrap();
    alice.ok(&["send", "Bob", "hello"]).unwrap();
    wait_for("the first text at Bob", BURST_WAIT, || {
        (received_texts(&bob, "Alice") == ["hello"]).then_some(())
    })
    .unwrap();
    bob.stop().unwrap();
    let mut sent = vec!["hello".to_owned()];
    sent.extend(send_burst(&alice, "Bob", 80, "lost"));
    wait_outbox_empty(&alice, BURST_WAIT).unwrap();
    bob_relay.kill9();
    wipe_keeping_identity(&bob_relay.data).unwrap();
    bob_relay.start_again("").unwrap();
    bob.restart().unwrap();
    assert_arrives_complete(&bob, "Alice", &sent);
    assert!(recovery(&bob)["resends_asked"].as_u64() >= Some(1));
    assert_eq!(recovery(&alice)["texts_resent"], 80);
    // And the burst shows as delivered at Alice.
    wait_for("the burst delivered at Alice", BURST_WAIT, || {
        history(&alice, "Bob")
            .iter()
            .filter(|m| m["own"] == json!(true))
            .all(|m| m["status"] == "delivered" || m["status"] == "read")
            .then_some(())
    })
    .unwrap();
}
