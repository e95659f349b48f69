//! Relay discovery on Tern's DHT over real processes on 127.0.0.1: five relays and four
//! nodes form the Kademlia DHT; a contact whose relays all changed while the other was
//! offline is found through it, and the message reaches them at their new relay.

use std::time::Duration;

use serde_json::Value;
use tern_tests::support::{Node, Relay, link_pair, message_texts, relay_db, wait_for};

/// Bound on the waits that span DHT queries, lane retries and a lookup.
const DHT_WAIT: Duration = Duration::from_secs(90);

fn stored(relay: &Relay) -> f64 {
    relay
        .metric("tern_relay_dht_records_stored_total")
        .unwrap_or(0.0)
}

fn texts(node: &Node, contact: &str) -> Vec<String> {
    let history = node
        .json(&["history", contact, "--limit", "100", "--no-mark-read"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    message_texts(&history)
}

fn contact_relays(node: &Node, name: &str) -> Vec<String> {
    let list = node.json(&["contact", "list"]).unwrap_or(Value::Null);
    list.as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .and_then(|c| c["relays"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_contact_whose_relays_changed_while_offline_is_found_through_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    // Relay 0 is where the others join; each learns the rest from it.
    let first = Relay::start_with_metrics(&dir.path().join("r0"), "").unwrap();
    let join = format!("[dht]\nbootstrap = [\"{}\"]\n", first.addr);
    let mut relays = vec![first];
    for i in 1..5 {
        relays.push(Relay::start_with_metrics(&dir.path().join(format!("r{i}")), &join).unwrap());
    }
    let start = |name: &str, relay: usize| {
        Node::init_and_start_with(
            dir.path(),
            name,
            Some(&relays[relay].addr),
            &["--no-direct"],
        )
        .unwrap()
    };
    let relays_0 = relays[0].addr.clone();
    let mut alice = start("alice", 1);
    let mut bob = start("bob", 2);
    let carol = start("carol", 3);
    let dave = start("dave", 4);
    link_pair(&alice, &bob, "Alice", "Bob").unwrap();
    link_pair(&carol, &dave, "Carol", "Dave").unwrap();

    // The DHT formed: every relay verified and stored the record of each of the four users
    // (with five relays, all of them are among the closest to every key).
    wait_for(
        "every relay to store the four users' records",
        DHT_WAIT,
        || relays.iter().all(|r| stored(r) >= 4.0).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", relays.iter().map(stored).collect::<Vec<_>>()));
    alice.ok(&["send", "Bob", "before the move"]).unwrap();
    wait_for("the first message at bob", DHT_WAIT, || {
        texts(&bob, "Alice")
            .contains(&"before the move".to_owned())
            .then_some(())
    })
    .unwrap();
    assert_eq!(contact_relays(&alice, "Bob"), vec![relays[2].addr.clone()]);

    // Alice goes offline; meanwhile Bob moves from relay 2 to relay 3, and relay 2 is gone.
    alice.stop().unwrap();
    let before = stored(&relays[1]);
    bob.stop().unwrap();
    let bob_home = bob.home.clone();
    drop(bob);
    let bob = Node::start_with(&bob_home, Some(&relays[3].addr), &["--no-direct"]).unwrap();
    // Bob's new record reached Alice's relay (it verified and is newer than the old one).
    wait_for("bob's new record at alice's relay", DHT_WAIT, || {
        (stored(&relays[1]) > before).then_some(())
    })
    .unwrap();
    relays[2].kill9();

    // Alice comes back knowing only Bob's old relay. Her delivery finds no relay of his,
    // she looks him up in the DHT, takes his new relays and the message goes there.
    alice.restart().unwrap();
    alice.ok(&["send", "Bob", "after the move"]).unwrap();
    wait_for("the message at bob's new relay", DHT_WAIT, || {
        texts(&bob, "Alice")
            .contains(&"after the move".to_owned())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; bob has {:?}", texts(&bob, "Alice")));
    assert_eq!(contact_relays(&alice, "Bob"), vec![relays[3].addr.clone()]);

    // On demand: Dave moves from relay 4 to relay 0; Carol finds him without sending.
    let mut dave = dave;
    dave.stop().unwrap();
    let dave_home = dave.home.clone();
    drop(dave);
    let _dave = Node::start_with(&dave_home, Some(&relays[0].addr), &["--no-direct"]).unwrap();
    let found = wait_for("carol to find dave at relay 0", DHT_WAIT, || {
        let c = carol.json(&["contact", "find", "Dave"]).ok()?;
        let relays: Vec<String> = serde_json::from_value(c["relays"].clone()).ok()?;
        (relays == vec![relays_0.clone()]).then_some(relays)
    })
    .unwrap();
    assert_eq!(contact_relays(&carol, "Dave"), found);
}

/// The DHT records a relay holds, as its database keeps them (read-only while it runs).
fn kept_records(relay: &Relay) -> Vec<Vec<u8>> {
    let Ok(conn) = relay_db(&relay.data) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare("SELECT value FROM dht_record ORDER BY key") else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// Every relay restarted at once (SIGKILL, same data) still serves the records it held: a
/// contact who moved and then went offline, so cannot publish again, is still found.
#[test]
fn records_outlive_a_restart_of_every_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Relay::start_with_metrics(&dir.path().join("r0"), "").unwrap();
    let join = format!("[dht]\nbootstrap = [\"{}\"]\n", first.addr);
    let mut second = Relay::start_with_metrics(&dir.path().join("r1"), &join).unwrap();
    let start = |name: &str, relay: &Relay| {
        Node::init_and_start_with(dir.path(), name, Some(&relay.addr), &["--no-direct"]).unwrap()
    };
    let carol = start("carol", &first);
    let mut dave = start("dave", &second);
    link_pair(&carol, &dave, "Carol", "Dave").unwrap();
    wait_for("both relays to keep both users' records", DHT_WAIT, || {
        [&first, &second]
            .iter()
            .all(|r| kept_records(r).len() == 2)
            .then_some(())
    })
    .unwrap();
    let before: Vec<_> = [&first, &second].iter().map(|r| kept_records(r)).collect();

    // Dave moves to the first relay and goes offline: he cannot publish again.
    dave.stop().unwrap();
    let dave_home = dave.home.clone();
    drop(dave);
    let mut dave = Node::start_with(&dave_home, Some(&first.addr), &["--no-direct"]).unwrap();
    wait_for("dave's new record kept at both relays", DHT_WAIT, || {
        [&first, &second]
            .iter()
            .zip(&before)
            .all(|(r, old)| {
                let now = kept_records(r);
                now.len() == 2 && now != *old
            })
            .then_some(())
    })
    .unwrap();
    dave.stop().unwrap();

    // Both relays restart at once, with no node left to publish Dave's record again.
    first.kill9();
    second.kill9();
    first.start_again("").unwrap();
    second.start_again(&join).unwrap();
    let found = wait_for("carol to find dave at the first relay", DHT_WAIT, || {
        let c = carol.json(&["contact", "find", "Dave"]).ok()?;
        let relays: Vec<String> = serde_json::from_value(c["relays"].clone()).ok()?;
        (relays == vec![first.addr.clone()]).then_some(relays)
    })
    .unwrap();
    assert_eq!(contact_relays(&carol, "Dave"), found);
}
