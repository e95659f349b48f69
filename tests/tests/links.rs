//! Short contact links over real processes: two nodes homed at two different relays become
//! contacts from `TERN:` links alone (each node fetches the other's device list from the
//! relay the link names), talk both ways, and see names rather than hex ids. Links that
//! point at a relay holding the wrong list, no list, or nothing at all are refused with
//! their own errors. Adding a contact claims a prekey of each of their devices at once, so
//! a first text sent right after does not wait a round trip for it.

use serde_json::Value;
use tern_crypto::{IdentityKey, UserId};
use tern_node::link::{SHORT_LINK_PREFIX, ShortLink};
use tern_tests::support::{Node, Relay, WAIT, free_port, relay_db, wait_for};

fn short_link(node: &Node) -> String {
    let v = node.json(&["contact", "link"]).unwrap();
    let short = v["short"].as_str().unwrap_or_default().to_owned();
    assert!(short.starts_with(SHORT_LINK_PREFIX), "{v}");
    short
}

/// Adds a short link, waiting (bounded) while the other node has not yet published its
/// device list at its relay; any other failure ends the wait at once.
fn add_short(node: &Node, link: &str, name: &str) {
    wait_for("the contact's device list at its relay", WAIT, || {
        let out = node.cli(&["contact", "add", link, "--name", name]);
        if out.status.success() {
            return Some(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("holds no device list"), "contact add: {err}");
        None
    })
    .unwrap();
}

fn history(node: &Node, contact: &str) -> Vec<Value> {
    node.json(&["history", contact, "--no-mark-read"])
        .map(|v| v.as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

fn wait_texts(node: &Node, contact: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} messages with {contact}"), WAIT, || {
        let h = history(node, contact);
        (h.len() == n).then_some(h)
    })
    .unwrap()
}

#[test]
fn short_links_across_two_relays_carry_a_conversation_with_names() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = Relay::start(&dir.path().join("relay1"), "").unwrap();
    let r2 = Relay::start(&dir.path().join("relay2"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&r1.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&r2.addr)).unwrap();

    let la = short_link(&a);
    let lb = short_link(&b);
    // Each names its own relay, and only the short form is under the QR-friendly size.
    let long = a.json(&["contact", "link"]).unwrap()["link"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(la.len() < 300 && long.len() > 3 * la.len(), "{la} / {long}");

    // The text form prints the short link first, then its QR code.
    let text = a.ok(&["contact", "link"]).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(la.as_str()));
    let qr_rows = lines.filter(|l| l.contains('█') || l.contains('▀')).count();
    assert!(qr_rows > 20, "no QR code under the link:\n{text}");
    assert_eq!(
        a.ok(&["contact", "link", "--long", "--no-qr"])
            .unwrap()
            .trim(),
        long
    );

    add_short(&a, &lb, "Bob");
    add_short(&b, &la, "Alice");
    let contacts = a.json(&["contact", "list"]).unwrap();
    assert_eq!(
        contacts[0]["relays"][0].as_str(),
        Some(r2.addr.as_str()),
        "{contacts}"
    );

    a.ok(&["send", "Bob", "hello from alice"]).unwrap();
    wait_texts(&b, "Alice", 1);
    b.ok(&["send", "Alice", "hello from bob"]).unwrap();
    let h = wait_texts(&a, "Bob", 2);

    // Names, not hex: in the JSON and in the text the CLI prints.
    let by_text = |t: &str| h.iter().find(|m| m["text"] == t).cloned().unwrap();
    assert_eq!(by_text("hello from bob")["sender_name"], "Bob");
    assert_eq!(by_text("hello from alice")["sender_name"], "alice");
    assert_eq!(
        by_text("hello from alice")["sender_device_name"],
        Value::Null
    );
    let shown = a.ok(&["history", "Bob"]).unwrap();
    assert!(shown.contains("Bob: hello from bob"), "{shown}");
    assert!(!shown.contains(&b.user[..8]), "{shown}");
    let convs = a.json(&["conversations"]).unwrap();
    assert_eq!(convs[0]["name"], "Bob", "{convs}");
    let shown = a.ok(&["conversations"]).unwrap();
    assert!(shown.starts_with("Bob "), "{shown}");
}

/// A short link carries no name: the contact is named by the start of their user id, the
/// CLI says how to name them, and `contact rename` does. Names stay unique and readable.
#[test]
fn a_contact_added_without_a_name_is_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    let c = Node::init_and_start(dir.path(), "carol", Some(&relay.addr)).unwrap();
    add_short(&b, &short_link(&c), "Carol");
    let la = short_link(&a);
    let added = wait_for("alice's device list at the relay", WAIT, || {
        let out = b.cli(&["contact", "add", &la]);
        out.status.success().then_some(out)
    })
    .unwrap();
    let hex = &a.user[..8];
    let err = String::from_utf8_lossy(&added.stderr);
    assert!(
        err.contains(&format!("tern contact rename {hex} NAME")),
        "{err}"
    );

    let code = |args: &[&str]| b.cli(args).status.code();
    assert_eq!(code(&["contact", "rename", hex, "carol"]), Some(5), "taken");
    assert_eq!(code(&["contact", "rename", hex, "  "]), Some(5), "empty");
    assert_eq!(
        code(&["contact", "rename", hex, "a\u{1b}[2J"]),
        Some(5),
        "control"
    );
    assert_eq!(
        code(&["contact", "rename", hex, &"x".repeat(65)]),
        Some(5),
        "long"
    );
    assert_eq!(
        code(&["contact", "rename", hex, "Carol\u{200b}"]),
        Some(5),
        "invisible"
    );
    assert_eq!(
        code(&["contact", "rename", hex, "\u{202e}ecila"]),
        Some(5),
        "reordering"
    );
    assert_eq!(
        code(&["contact", "rename", "Nobody", "Al"]),
        Some(4),
        "unknown"
    );
    // Another contact's user id would name that contact in commands, not this one.
    assert_eq!(
        code(&["contact", "rename", hex, &c.user]),
        Some(5),
        "a user id"
    );
    let out = b.ok(&["contact", "rename", hex, "  Alice  "]).unwrap();
    assert!(out.contains("renamed Alice"), "{out}");
    // A name given when adding is held to the same rule.
    let lc = short_link(&c);
    assert_eq!(code(&["contact", "add", &lc, "--name", "ALICE"]), Some(5));
    assert!(b.ok(&["contact", "add", &lc, "--name", "Caro"]).is_ok());

    // The new name is the one used everywhere, and it survives a restart.
    a.ok(&["contact", "add", &short_link(&b), "--name", "Bob"])
        .unwrap();
    a.ok(&["send", "Bob", "hi bob"]).unwrap();
    let h = wait_texts(&b, "Alice", 1);
    assert_eq!(h[0]["sender_name"], "Alice");
    let mut b = b;
    b.restart().unwrap();
    let contacts = b.json(&["contact", "list"]).unwrap();
    let names: Vec<&str> = contacts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"Alice") && names.contains(&"Caro"),
        "{names:?}"
    );
    assert!(
        b.ok(&["history", "alice"])
            .unwrap()
            .contains("Alice: hi bob")
    );
}

#[test]
fn short_links_to_the_wrong_list_no_list_or_no_relay_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = Relay::start(&dir.path().join("relay1"), "").unwrap();
    let r2 = Relay::start_with_metrics(&dir.path().join("relay2"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&r1.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&r2.addr)).unwrap();
    // Alice does not know bob: a link with bob's id and another key is no identity change
    // here, it is a link the relay's list contradicts.

    let refused = |link: &str| {
        let out = a.cli(&["contact", "add", link, "--name", "Mallory"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bob = UserId::from_hex(&b.user).unwrap();
    let relay2 = r2.addr.parse().unwrap();

    // Bob's user id and relay, another identity key: the relay's list (bob's, signed by
    // bob's key) does not match the link's key.
    let mallory = IdentityKey::generate().unwrap();
    let forged = ShortLink::create(&mallory, bob, &relay2).unwrap();
    // Bounded wait while bob's node has not yet published his list.
    let (code, err) = wait_for("bob's device list at his relay", WAIT, || {
        let (code, err) = refused(&forged);
        (!err.contains("holds no device list")).then_some((code, err))
    })
    .unwrap();
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("signed by another identity key"), "{err}");

    // A user the relay has never heard of.
    let nobody = ShortLink::create(&mallory, mallory.user_id(), &relay2).unwrap();
    let (code, err) = refused(&nobody);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("holds no device list"), "{err}");
    // Refused links leave no connection behind: alice lets go of bob's relay again, and only
    // bob is connected to it.
    wait_for("alice to leave bob's relay", WAIT, || {
        (r2.metric("tern_relay_connections").ok()? == 1.0).then_some(())
    })
    .unwrap();

    // A relay that is not there (a closed port, a peer id no one has): a network error.
    let nobody_there = tern_crypto::DeviceKeys::generate().unwrap().device_id();
    let gone = format!("/ip4/127.0.0.1/tcp/{}/p2p/{nobody_there}", free_port())
        .parse()
        .unwrap();
    let (code, err) = refused(&ShortLink::create(&mallory, mallory.user_id(), &gone).unwrap());
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("could not fetch the device list"), "{err}");

    // A typo is caught before any network: the signature is the checksum. (Bob's genuine
    // link still works: the refusals left nothing behind that gets in its way.)
    let mut typo: Vec<char> = short_link(&b).chars().collect();
    let i = typo.len() / 2;
    typo[i] = if typo[i] == 'A' { 'B' } else { 'A' };
    let (code, err) = refused(&typo.into_iter().collect::<String>());
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("does not verify"), "{err}");

    // None of these left a contact behind.
    let contacts = a.json(&["contact", "list"]).unwrap();
    assert_eq!(contacts.as_array().map(Vec::len), Some(0), "{contacts}");
    add_short(&a, &short_link(&b), "Bob");
}

/// The one-time keys the relay in `data` holds for `device` (a device id as `tern up`
/// prints it).
fn one_time_keys(data: &std::path::Path, device: &str) -> usize {
    let device: tern_relay::PeerId = device.parse().unwrap();
    relay_db(data)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM one_time_key WHERE device = ?1",
            [device.to_bytes()],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize
}

#[test]
fn adding_a_contact_claims_their_prekeys_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    let batch = tern_node::consts::ONE_TIME_KEYS_BATCH;
    // Bob's first batch of one-time keys is published after he connects.
    wait_for("bob's one-time keys at the relay", WAIT, || {
        (one_time_keys(&relay.data, &b.device) == batch).then_some(())
    })
    .unwrap();

    a.ok(&["contact", "add", &b.link().unwrap(), "--name", "Bob"])
        .unwrap();
    wait_for("alice's claim of a prekey of bob's device", WAIT, || {
        (one_time_keys(&relay.data, &b.device) == batch - 1).then_some(())
    })
    .expect("contact add claims the new contact's prekeys, before any text");

    // The first text uses the session that claim set up: no second key is taken.
    b.ok(&["contact", "add", &a.link().unwrap(), "--name", "Alice"])
        .unwrap();
    a.ok(&["send", "Bob", "hello"]).unwrap();
    let h = wait_texts(&b, "Alice", 1);
    assert_eq!(h[0]["text"], "hello", "{h:?}");
    assert_eq!(
        one_time_keys(&relay.data, &b.device),
        batch - 1,
        "one key claimed for one session"
    );
}
