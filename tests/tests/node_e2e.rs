//! End to end over real processes on 127.0.0.1: a `tern-relay` and two `tern up` nodes with
//! temporary homes, driven through the `tern` CLI and the local API.

use std::time::{Duration, Instant};

use serde_json::Value;
use tern_tests::support::{Node, Relay, WAIT, files_containing, link_pair, wait_direct, wait_for};

fn history(node: &Node, contact: &str) -> Vec<Value> {
    node.json(&["history", contact, "--limit", "500", "--no-mark-read"])
        .map(|v| v.as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

fn texts(h: &[Value]) -> Vec<String> {
    h.iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn ids(h: &[Value]) -> Vec<String> {
    h.iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until `node`'s history with `contact` satisfies `ok`.
fn wait_history(
    node: &Node,
    contact: &str,
    what: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    wait_for(what, WAIT, || {
        let h = history(node, contact);
        ok(&h).then_some(h)
    })
    .unwrap_or_else(|e| panic!("{e}; last history: {:#?}", texts(&history(node, contact))))
}

fn own_statuses_are(h: &[Value], status: &str) -> bool {
    h.iter()
        .filter(|m| m["own"] == Value::Bool(true))
        .all(|m| m["status"] == status)
}

#[test]
fn messages_both_ways_in_order_with_receipts_and_no_plaintext_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    const MARKER: &str = "zebra-marker-5e1f";

    a.ok(&["send", "Bob", &format!("a1 {MARKER}")]).unwrap();
    wait_history(&b, "Alice", "a1 at bob", |h| h.len() == 1);
    b.ok(&["send", "Alice", &format!("b1 {MARKER}")]).unwrap();
    wait_history(&a, "Bob", "b1 at alice", |h| h.len() == 2);
    a.ok(&["send", "Bob", &format!("a2 {MARKER}")]).unwrap();
    a.ok(&["send", "Bob", &format!("a3 {MARKER}")]).unwrap();
    b.ok(&["send", "Alice", &format!("b2 {MARKER}")]).unwrap();

    let ha = wait_history(&a, "Bob", "5 messages at alice", |h| h.len() == 5);
    let hb = wait_history(&b, "Alice", "5 messages at bob", |h| h.len() == 5);
    // Both sides show the same order, and it respects causality.
    assert_eq!(ids(&ha), ids(&hb));
    let order = texts(&ha);
    let pos = |p: &str| order.iter().position(|t| t.starts_with(p)).unwrap();
    assert!(pos("a1") < pos("b1") && pos("b1") < pos("a2") && pos("a2") < pos("a3"));
    assert!(pos("b1") < pos("b2"));

    // Delivered receipts come back before anyone reads.
    wait_history(&a, "Bob", "alice's messages delivered", |h| {
        own_statuses_are(h, "delivered")
    });
    wait_history(&b, "Alice", "bob's messages delivered", |h| {
        own_statuses_are(h, "delivered")
    });
    let convs = b.json(&["conversations"]).unwrap();
    assert_eq!(convs[0]["unread"], 3, "{convs}");

    // Reading (history marks read) sends read receipts.
    b.ok(&["history", "Alice"]).unwrap();
    wait_history(&a, "Bob", "alice's messages read", |h| {
        own_statuses_are(h, "read")
    });
    let convs = b.json(&["conversations"]).unwrap();
    assert_eq!(convs[0]["unread"], 0, "{convs}");

    let hits = b.json(&["search", MARKER]).unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 5, "{hits}");

    // Nothing that was sent is readable at rest: relay data, node databases, WALs, keys.
    a.stop().unwrap();
    b.stop().unwrap();
    relay.kill9();
    let leaks = files_containing(dir.path(), MARKER.as_bytes());
    assert!(leaks.is_empty(), "plaintext marker found in {leaks:?}");
}

#[test]
fn offline_recipient_relay_restart_and_unreachable_relay_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    // A session exists before Bob goes offline (the first message sets it up).
    a.ok(&["send", "Bob", "m0"]).unwrap();
    wait_history(&b, "Alice", "m0 at bob", |h| h.len() == 1);

    b.stop().unwrap();
    for i in 1..=3 {
        a.ok(&["send", "Bob", &format!("m{i}")]).unwrap();
    }
    // Deposited at the relay: sent, not delivered.
    wait_history(&a, "Bob", "m1..m3 deposited", |h| {
        h.len() == 4 && h[1..].iter().all(|m| m["status"] == "sent")
    });

    // The relay dies (kill -9) and comes back on the same address: its mail survives.
    relay.restart_after_kill9("").unwrap();
    a.ok(&["send", "Bob", "m4"]).unwrap();

    // Relay unreachable: the message stays pending, and goes out when it returns.
    relay.kill9();
    a.ok(&["send", "Bob", "m5"]).unwrap();
    let h = history(&a, "Bob");
    assert_eq!(h.last().unwrap()["status"], "pending", "{h:#?}");
    relay.restart_after_kill9("").unwrap();
    wait_history(&a, "Bob", "m5 deposited after the relay returned", |h| {
        h.len() == 6 && h.iter().all(|m| m["status"] != "pending")
    });

    b.restart().unwrap();
    let hb = wait_history(&b, "Alice", "all six at bob", |h| h.len() == 6);
    assert_eq!(texts(&hb), ["m0", "m1", "m2", "m3", "m4", "m5"]);
    wait_history(&a, "Bob", "all delivered", |h| {
        own_statuses_are(h, "delivered")
    });
}

#[test]
fn a_thousand_messages_arrive_complete_in_order_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    const N: usize = 1000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let mut api = a.api().await.unwrap();
        for i in 0..N {
            api.call(
                "send",
                serde_json::json!({"contact": "Bob", "text": format!("n{i}")}),
            )
            .await
            .unwrap();
        }
    });
    let sent = started.elapsed();
    let got = wait_for("1000 messages at bob", Duration::from_secs(60), || {
        let h = b
            .json(&["history", "Alice", "--limit", "500", "--no-mark-read"])
            .ok()?;
        let older = b
            .json(&[
                "history",
                "Alice",
                "--limit",
                "500",
                "--no-mark-read",
                "--before",
                h[0]["id"].as_str()?,
            ])
            .ok()?;
        let mut all: Vec<Value> = older.as_array()?.clone();
        all.extend(h.as_array()?.iter().cloned());
        (all.len() == N).then_some(all)
    })
    .unwrap();
    let expected: Vec<String> = (0..N).map(|i| format!("n{i}")).collect();
    assert_eq!(texts(&got), expected);
    let mut unique = ids(&got);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), N);
    eprintln!(
        "1000 messages: sent in {sent:?}, all stored at the recipient after {:?}",
        started.elapsed()
    );
}

#[test]
fn online_contacts_connect_directly_and_messages_flow_without_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    // Presence tells each node the other is online; it dials through the relay circuit,
    // and identify/DCUtR upgrade that to a direct connection.
    wait_direct(&a, &b, WAIT).unwrap();
    // Sessions first (prekeys come from the relay), then the relay goes away.
    a.ok(&["send", "Bob", "via anything"]).unwrap();
    wait_history(&b, "Alice", "first message", |h| h.len() == 1);
    relay.kill9();
    a.ok(&["send", "Bob", "direct only"]).unwrap();
    b.ok(&["send", "Alice", "direct back"]).unwrap();
    let hb = wait_history(&b, "Alice", "direct messages at bob", |h| h.len() == 3);
    assert_eq!(texts(&hb)[1], "direct only");
    wait_history(&a, "Bob", "delivered over the direct path", |h| {
        h.len() == 3 && own_statuses_are(h, "delivered")
    });
}

#[test]
fn first_message_waits_for_an_unreachable_relay_then_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    // No session yet, and Bob's relay (which holds his prekeys) is gone.
    relay.kill9();
    let out = a.cli(&["send", "Bob", "first words"]);
    assert!(
        out.status.success(),
        "send must succeed and wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 32, "prints the message id: {id:?}");
    a.ok(&["send", "Bob", "second words"]).unwrap();
    let h = history(&a, "Bob");
    assert_eq!(texts(&h), ["first words", "second words"]);
    assert_eq!(h[0]["id"], id.as_str());
    assert!(h.iter().all(|m| m["status"] == "pending"), "{h:#?}");

    relay.restart_after_kill9("").unwrap();
    let hb = wait_history(&b, "Alice", "both at bob", |h| h.len() == 2);
    assert_eq!(texts(&hb), ["first words", "second words"]);
    assert_eq!(hb[0]["id"], id.as_str());
    wait_history(&a, "Bob", "both delivered", |h| {
        own_statuses_are(h, "delivered")
    });
}

/// A reader that stops reading early (`tern history Bob | head -1`) ends the command quietly,
/// with success, whatever it was printing: text or JSON. Here the reading end of the pipe is
/// closed before the command starts, so every write meets a broken pipe.
#[test]
fn output_into_a_closed_pipe_ends_the_command_quietly() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    a.ok(&["send", "Bob", "one"]).unwrap();
    a.ok(&["send", "Bob", "two"]).unwrap();
    for args in [
        &["status"][..],
        &["history", "Bob", "--no-mark-read"],
        &["--json", "history", "Bob", "--no-mark-read"],
        &["contact", "list"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = tern_tests::support::tern_command(&a.home, args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "tern {args:?}: {:?} {err}",
            out.status
        );
        assert!(err.is_empty(), "tern {args:?} wrote to stderr: {err}");
    }
}

/// Commands started while the node has every API session taken (a script sending a burst
/// at once) wait for one to close, saying so, rather than failing: the message sent while
/// every session is held goes out once they close. A node that is busy is not reported as
/// not running.
#[test]
fn a_command_waits_while_every_api_session_is_taken() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use tern_node::api::client::ClientError;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let held: Vec<_> = (0..tern_node::consts::MAX_API_CONNECTIONS)
        .map(|_| rt.block_on(a.api()).unwrap())
        .collect();
    let busy = rt.block_on(a.api()).unwrap_err();
    assert!(
        matches!(busy.downcast_ref(), Some(ClientError::Busy)),
        "{busy:#}"
    );

    let mut child = tern_tests::support::tern_command(
        &a.home,
        &["send", "Bob", "sent while the node was busy"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(WAIT);
    if first.is_err() {
        let _ = child.kill();
    }
    let first = first.expect("the waiting command says why it waits");
    assert!(first.contains("busy"), "{first}");
    drop(held);
    let status = wait_for("the waiting command to finish", WAIT, || {
        child.try_wait().unwrap()
    });
    let status = status.unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}")
    });
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "{status:?}: {first} {rest:?}");
    wait_history(&b, "Alice", "the message sent while busy", |h| {
        texts(h) == ["sent while the node was busy"]
    });
}

#[test]
fn a_text_sent_again_from_the_cli_under_its_client_id_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();

    let first = a
        .ok(&["send", "Bob", "hi", "--client-id", "note-1"])
        .unwrap();
    let again = a
        .ok(&["send", "Bob", "hi", "--client-id", "note-1"])
        .unwrap();
    assert_eq!(first, again, "the message sent under the key");
    // The key once more, for another text: refused as bad input, nothing sent.
    let reused = a.cli(&["send", "Bob", "bye", "--client-id", "note-1"]);
    assert_eq!(reused.status.code(), Some(5), "{reused:?}");
    let err = String::from_utf8_lossy(&reused.stderr);
    assert!(err.contains("used for another message"), "{err}");
    a.ok(&["send", "Bob", "bye"]).unwrap();
    let h = wait_history(&b, "Alice", "two texts at bob", |h| h.len() >= 2);
    assert_eq!(texts(&h), ["hi", "bye"]);

    a.ok(&["group", "create", "Team", "Bob"]).unwrap();
    let g1 = a
        .ok(&["group", "send", "Team", "all", "--client-id", "g-1"])
        .unwrap();
    let g2 = a
        .ok(&["group", "send", "Team", "all", "--client-id", "g-1"])
        .unwrap();
    assert_eq!(g1, g2);
    let in_group = wait_for("the group text at bob", WAIT, || {
        let h = b
            .json(&["group", "history", "Team", "--no-mark-read"])
            .ok()?;
        let texts: Vec<String> = h
            .as_array()?
            .iter()
            .filter(|m| m["kind"] == "text")
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        (!texts.is_empty()).then_some(texts)
    })
    .unwrap();
    assert_eq!(in_group, ["all"]);
    let own = a.json(&["group", "history", "Team"]).unwrap();
    let sent = own
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "all");
    assert_eq!(sent.count(), 1, "stored once");
}

#[test]
fn search_shows_the_newest_hits_and_says_when_there_are_more() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    for i in 0..25 {
        a.ok(&["send", "Bob", &format!("needle {i:02}")]).unwrap();
    }
    let lines = |out: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    // The newest 20, and a word that there are more.
    let out = a.cli(&["search", "needle"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = lines(&out);
    assert_eq!(shown.len(), 20, "{shown:?}");
    assert!(shown[0].ends_with("[needle] 24"), "newest first: {shown:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there are more"), "{err}");
    // All of them, and no such word.
    let out = a.cli(&["search", "needle", "--limit", "30"]);
    assert_eq!(lines(&out).len(), 25);
    assert!(out.stderr.is_empty(), "{out:?}");
    // --json: the hits as the node gives them, as many as asked.
    let hits = a.json(&["search", "needle", "--limit", "5"]).unwrap();
    assert_eq!(hits.as_array().map(Vec::len), Some(5));
    assert_eq!(
        a.cli(&["search", "needle", "--limit", "0"]).status.code(),
        Some(2)
    );
}

#[test]
fn reading_some_messages_sends_read_receipts_for_those_only() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    for t in ["one", "two", "three"] {
        a.ok(&["send", "Bob", t]).unwrap();
    }
    let got = wait_history(&b, "Alice", "three texts at bob", |h| h.len() == 3);
    wait_history(&a, "Bob", "delivered", |h| own_statuses_are(h, "delivered"));
    // Bob's page has shown "one" and "two" when it marks read; "three" stays unread.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = b.api().await.unwrap();
        let seen = serde_json::json!([got[0]["id"], got[1]["id"]]);
        api.call(
            "history",
            serde_json::json!({"contact": "Alice", "limit": 1, "mark_read_ids": seen}),
        )
        .await
        .unwrap();
        let both = api
            .call(
                "history",
                serde_json::json!({"contact": "Alice", "mark_read": true, "mark_read_ids": seen}),
            )
            .await;
        assert!(both.is_err(), "one or the other: {both:?}");
    });
    let statuses = |h: &[Value]| -> Vec<String> {
        h.iter()
            .map(|m| m["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let seen = wait_history(&a, "Bob", "two read receipts", |h| {
        statuses(h) == ["read", "read", "delivered"]
    });
    assert_eq!(texts(&seen), ["one", "two", "three"]);
    let unread = b.json(&["conversations"]).unwrap();
    assert_eq!(unread[0]["unread"], 1, "{unread}");
    assert_eq!(
        statuses(&history(&b, "Alice")),
        ["read", "read", "received"]
    );
}

/// Deposit grants Bob has registered at his relay, read from its database while it runs.
fn grants_at_relay(relay: &Relay, device: &str) -> i64 {
    let owner = tern_crypto::DeviceId::from_peer_id_string(device)
        .unwrap()
        .to_peer_id_bytes();
    let Ok(conn) = tern_tests::support::relay_db(&relay.data) else {
        return -1;
    };
    conn.query_row(
        "SELECT COUNT(*) FROM deposit_grant WHERE owner = ?1",
        [owner],
        |r| r.get(0),
    )
    .unwrap_or(-1)
}

/// `status` shows the mailbox as the relay holds it when asked, not as it was the last time
/// (a minute ago at most): a grant registered since the last `status` is in the next one.
#[test]
fn status_shows_the_mailbox_as_the_relay_holds_it_now() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr)).unwrap();
    let bob = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    let cy = Node::init_and_start(dir.path(), "cy", Some(&relay.addr)).unwrap();
    let device = bob.json(&["status"]).unwrap()["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let grants_shown = || -> Option<u64> {
        bob.json(&["status"]).ok()?["relays"][0]["mailbox"]["grants"].as_u64()
    };
    link_pair(&ana, &bob, "Ana", "Bob").unwrap();
    // Bob's grants (his own user's, then Ana's) registered, and his status agreeing.
    let first = wait_for("Bob's status to show his grants at the relay", WAIT, || {
        let n = grants_at_relay(&relay, &device);
        (n >= 2 && grants_shown()? == n as u64).then_some(n)
    })
    .unwrap();
    link_pair(&cy, &bob, "Cy", "Bob").unwrap();
    wait_for("Bob's grant for Cy at the relay", WAIT, || {
        (grants_at_relay(&relay, &device) > first).then_some(())
    })
    .unwrap();
    let now = grants_at_relay(&relay, &device);
    assert_eq!(
        grants_shown(),
        Some(now as u64),
        "the first status after it"
    );
}
