//! Push wake-ups from the node side, over real processes on 127.0.0.1: a `tern-relay` with
//! push allowed under a local receiver's prefix, and `tern up` nodes driven through the CLI
//! (`tern push set|clear|status`, `tern status`).

use std::time::Duration;

use serde_json::{Value, json};
use tern_tests::support::{
    Node, PushPost, PushReceiver, Relay, WAIT, link_pair, wait_for, wait_outbox_empty,
};

/// The relay's debounce in these tests: one immediate wake-up and at most one trailing one
/// per this many seconds.
const DEBOUNCE_SECS: u64 = 2;

fn relay_config(port: u16) -> String {
    format!(
        "[push]\nallowed_prefixes = [\"http://127.0.0.1:{port}/\"]\ndebounce_secs = {DEBOUNCE_SECS}\n"
    )
}

/// The push state `tern status` shows for the first home relay.
fn push_state(node: &Node) -> Option<String> {
    let s = node.json(&["status"]).ok()?;
    s["push"]["relays"][0]["state"].as_str().map(str::to_owned)
}

fn wait_push_state(node: &Node, want: &str) -> anyhow::Result<()> {
    wait_for(&format!("push state {want}"), WAIT, || {
        (push_state(node).as_deref() == Some(want)).then_some(())
    })
}

/// Stops `node` and waits until the relay has let go of its connection (so it is no longer
/// listening and mail for it wakes its push endpoint).
fn stop_and_wait_offline(node: &mut Node, relay: &Relay) -> anyhow::Result<()> {
    let before = relay.metric("tern_relay_connections")?;
    node.stop()?;
    wait_for("the relay to see the node go", WAIT, || {
        (relay.metric("tern_relay_connections").ok()? < before).then_some(())
    })
}

/// A wake-up body: exactly `{"v":1,"type":"wakeup","unread":N}`; returns N.
fn wakeup_unread(post: &PushPost) -> u64 {
    assert_eq!(post.content_type, "application/json", "{post:?}");
    let v: Value = serde_json::from_str(&post.body).unwrap_or_else(|e| panic!("{e}: {post:?}"));
    let o = v.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["type", "unread", "v"],
        "nothing but version, type, count"
    );
    assert_eq!(v["v"], 1);
    assert_eq!(v["type"], "wakeup");
    v["unread"].as_u64().expect("unread is a count")
}

fn unread(node: &Node) -> (u64, u64) {
    let s = node.json(&["status"]).expect("status");
    let c = node.json(&["conversations"]).expect("conversations");
    let sum = c
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["unread"].as_u64().unwrap_or(0))
        .sum();
    (s["unread"].as_u64().unwrap_or(u64::MAX), sum)
}

/// Sends `n` texts from `from` to `to` on one API connection, back to back.
fn burst(from: &Node, to: &str, n: usize, tag: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut api = from.api().await?;
        for i in 0..n {
            api.call(
                "send",
                json!({"contact": to, "text": format!("{tag} {i} private words")}),
            )
            .await?;
        }
        Ok(())
    })
}

#[test]
fn offline_device_is_woken_in_batches_without_content_and_not_after_clear() -> anyhow::Result<()> {
    let push = PushReceiver::start()?;
    let dir = tempfile::tempdir()?;
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), &relay_config(push.port))?;
    // Mailboxes only, so every text to an offline device lands at the relay.
    let alice =
        Node::init_and_start_with(dir.path(), "alice", Some(&relay.addr), &["--no-direct"])?;
    let mut bob =
        Node::init_and_start_with(dir.path(), "bob", Some(&relay.addr), &["--no-direct"])?;
    link_pair(&alice, &bob, "Alice", "Bob")?;
    // Bob's first text hands Alice his deposit grant, so her texts are his contact's mail,
    // which wakes him (strangers' introductions wake nobody).
    bob.ok(&["send", "Alice", "hello"])?;
    wait_for("alice to have bob's text", WAIT, || {
        (unread(&alice).0 == 1).then_some(())
    })?;

    assert_eq!(push_state(&bob).as_deref(), Some("none"));
    let url = format!("http://127.0.0.1:{}/bob", push.port);
    let out = bob.ok(&["push", "set", &url])?;
    assert!(out.contains("registered"), "{out}");
    assert_eq!(push_state(&bob).as_deref(), Some("registered"));
    let status = bob.json(&["status"])?;
    assert_eq!(status["push"]["url"], url.as_str());
    assert_eq!(
        status["push"]["host"],
        format!("http://127.0.0.1:{}", push.port).as_str()
    );
    // The text status shows the host only.
    let text = bob.ok(&["status"])?;
    assert!(!text.contains("/bob"), "{text}");
    assert!(text.contains("push registered"), "{text}");

    // Bob goes offline; Alice sends a burst of 5.
    stop_and_wait_offline(&mut bob, &relay)?;
    burst(&alice, "Bob", 5, "burst")?;
    wait_outbox_empty(&alice, WAIT)?;
    let first = push.next(WAIT).expect("an immediate wake-up");
    assert_eq!(first.path, "/bob");
    let mut posts = vec![first];
    // The burst's wake-ups end with one carrying the whole count (the first, or one trailing
    // wake-up after the debounce).
    while wakeup_unread(posts.last().expect("a post")) < 5 {
        let next = push
            .next(Duration::from_secs(DEBOUNCE_SECS) + WAIT)
            .expect("a trailing wake-up with the final count");
        posts.push(next);
    }
    // Nothing more for this burst, one debounce later.
    if let Some(extra) = push.next(Duration::from_secs(DEBOUNCE_SECS + 1)) {
        posts.push(extra);
    }
    assert!(posts.len() <= 2, "a burst of 5 is batched: {posts:#?}");
    for p in &posts {
        assert!(!p.body.contains("private") && !p.body.contains("burst"));
        assert!(!p.body.contains(&alice.user) && !p.body.contains(&alice.device));
    }
    let sent = relay.metric("tern_relay_push_sent_total")?;

    // Bob comes back: the 5 are unread, and stay so across a restart; the endpoint is
    // registered again when the relay comes up.
    bob.restart()?;
    wait_for("bob to have the burst unread", WAIT, || {
        (unread(&bob) == (5, 5)).then_some(())
    })?;
    wait_push_state(&bob, "registered")?;
    bob.restart()?;
    assert_eq!(unread(&bob), (5, 5), "unread counts survive a restart");
    wait_push_state(&bob, "registered")?;

    // Cleared: the next mail for offline Bob wakes nobody.
    let out = bob.ok(&["push", "clear"])?;
    assert!(out.contains("cleared"), "{out}");
    assert_eq!(push_state(&bob).as_deref(), Some("cleared"));
    assert_eq!(bob.json(&["status"])?["push"]["url"], Value::Null);
    stop_and_wait_offline(&mut bob, &relay)?;
    burst(&alice, "Bob", 1, "after clear")?;
    wait_outbox_empty(&alice, WAIT)?;
    // A wake-up would come at once (the last one was more than a debounce ago): give it
    // the debounce and then some.
    let none = push.next(Duration::from_secs(DEBOUNCE_SECS + 2));
    assert!(none.is_none(), "woken after clear: {none:?}");
    assert_eq!(relay.metric("tern_relay_push_sent_total")?, sent);

    // Positive control: the same path, with a URL registered again, does wake him.
    bob.restart()?;
    wait_push_state(&bob, "none")?;
    bob.ok(&[
        "push",
        "set",
        &format!("http://127.0.0.1:{}/bob2", push.port),
    ])?;
    stop_and_wait_offline(&mut bob, &relay)?;
    burst(&alice, "Bob", 1, "control")?;
    wait_outbox_empty(&alice, WAIT)?;
    let control = push.next(WAIT).expect("a wake-up at the new URL");
    assert_eq!(control.path, "/bob2");
    assert!(wakeup_unread(&control) >= 1);
    Ok(())
}

#[test]
fn endpoint_outside_the_allow_list_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let push = PushReceiver::start()?;
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), &relay_config(push.port))?;
    let bob = Node::init_and_start(dir.path(), "bob", Some(&relay.addr))?;
    wait_for("bob's relay up", WAIT, || {
        let s = bob.json(&["status"]).ok()?;
        (s["relays"][0]["connected"] == true).then_some(())
    })?;

    // Not a plain http(s) URL: refused by the node itself (bad input, exit 5).
    for bad in [
        "ftp://127.0.0.1/x",
        "http://user:pw@127.0.0.1/x",
        "not a url",
    ] {
        let out = bob.cli(&["push", "set", bad]);
        assert_eq!(out.status.code(), Some(5), "{bad}: {out:?}");
    }
    // A URL the relay does not allow: exit 15, naming the relay and its code.
    let outside = format!("http://127.0.0.1:{}/bob", push.port + 1);
    let out = bob.cli(&["push", "set", &outside]);
    assert_eq!(out.status.code(), Some(15), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not_allowed"), "{err}");
    let relay_id = relay.addr.rsplit('/').next().unwrap_or_default();
    assert!(err.contains(relay_id), "{err}");
    assert!(err.contains("nothing changed"), "{err}");
    // Nothing changed: no endpoint, nothing registered.
    let s = bob.json(&["push", "status"])?;
    assert_eq!(s["url"], Value::Null, "{s}");
    assert_eq!(s["relays"][0]["state"], "none", "{s}");

    // An allowed one is registered; a later refused one leaves it in force.
    let good = format!("http://127.0.0.1:{}/bob", push.port);
    bob.ok(&["push", "set", &good])?;
    let out = bob.cli(&["push", "set", &outside]);
    assert_eq!(out.status.code(), Some(15), "{out:?}");
    let s = bob.json(&["push", "status"])?;
    assert_eq!(s["url"], good.as_str(), "{s}");
    assert_eq!(s["relays"][0]["state"], "registered", "{s}");
    Ok(())
}
