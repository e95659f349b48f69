//! Redundant mailboxes: two users whose devices keep mailboxes at two relays. One relay is
//! killed with SIGKILL during a burst to an offline recipient, its data wiped and it is
//! started again empty (same address: its identity key is kept, as an operator restoring a
//! lost disk would), and every message still arrives once, in order. Then both relays go down and one comes back:
//! everything sent meanwhile arrives through it, and the copies that reach the other relay
//! once it is back are not shown again. And a home relay added and removed at run time
//! (`tern relay add|remove`) reaches a contact without a new contact link: its messages go to
//! the new relay, and stop waiting for the removed one. Mail left at a removed relay (down
//! when its owner moved) is still drained from it once it is back. A relay that hangs
//! (SIGSTOP) holds up nothing that another relay can carry. Online contacts whose first
//! relay is down still connect directly, through the other.

use std::path::Path;
use std::time::Duration;

use tern_tests::support::{
    Node, Relay, free_port, link_pair, relay_db, wait_direct, wait_for, wait_outbox_empty,
    wipe_keeping_identity,
};

const WAIT: Duration = Duration::from_secs(90);

/// The texts Ben shows in his conversation with Ana, in display order.
fn shown(ben: &Node) -> Option<Vec<String>> {
    Some(
        ben.json(&["history", "Ana", "--limit", "500", "--no-mark-read"])
            .ok()?
            .as_array()?
            .iter()
            .filter(|m| m["kind"] == "text")
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

/// Waits until Ben shows at least `n` texts from Ana, and returns them.
fn wait_shown(ben: &Node, what: &str, n: usize) -> anyhow::Result<Vec<String>> {
    wait_for(what, WAIT, || shown(ben).filter(|h| h.len() >= n))
}

/// Waits until `node` shows `text` in its conversation with `contact`.
fn wait_text(node: &Node, contact: &str, text: &str, what: &str) -> anyhow::Result<()> {
    wait_for(what, WAIT, || {
        let h = node
            .json(&["history", contact, "--limit", "500", "--no-mark-read"])
            .ok()?;
        h.as_array()?
            .iter()
            .any(|m| m["text"] == text)
            .then_some(())
    })
}

/// How many mailbox entries a relay holds (read-only while it runs).
fn mail_held(relay: &Relay) -> anyhow::Result<i64> {
    let conn = relay_db(&relay.data)?;
    Ok(conn.query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))?)
}

/// A node with mailboxes at both relays, never connecting to contacts directly (so every
/// message goes through the relays).
fn start(dir: &Path, name: &str, r1: &Relay, r2: &Relay) -> anyhow::Result<Node> {
    Node::init_and_start_with(
        dir,
        name,
        Some(&r1.addr),
        &["--relay", &r2.addr, "--no-direct"],
    )
}

#[test]
fn a_wiped_relay_and_then_both_relays_down_lose_and_double_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let mut r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = start(dir.path(), "ana", &r1, &r2)?;
    let mut ben = start(dir.path(), "ben", &r1, &r2)?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    let status = ana.json(&["status"])?;
    assert_eq!(
        status["relays"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    ana.ok(&["send", "Ben", "hello"])?;
    wait_shown(&ben, "the first message", 1)?;

    // A burst while Ben is offline (so it waits in his mailboxes), with the first relay
    // killed, wiped and started again empty in the middle of it: what it held is gone, and
    // must still be at the second.
    ben.stop()?;
    let home = ana.home.clone();
    let burst = 60;
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        for i in 0..burst {
            tern_tests::support::tern_ok(&home, &["send", "Ben", &format!("b{i:02}")])?;
        }
        Ok(())
    });
    wait_for("part of the burst at the first relay", WAIT, || {
        (mail_held(&r1).ok()? >= 15).then_some(())
    })?;
    r1.kill9();
    wipe_keeping_identity(&r1.data)?;
    r1.start_again("")?;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    ben.restart()?;
    let mut want: Vec<String> = std::iter::once("hello".to_owned())
        .chain((0..burst).map(|i| format!("b{i:02}")))
        .collect();
    let got = wait_shown(&ben, "the whole burst", want.len())?;
    assert_eq!(got, want, "every message once, in order");

    // Both relays down; what is sent meanwhile arrives once the second is back alone.
    r1.kill9();
    r2.kill9();
    for i in 0..10 {
        ana.ok(&["send", "Ben", &format!("d{i}")])?;
    }
    r2.start_again("")?;
    want.extend((0..10).map(|i| format!("d{i}")));
    let got = wait_shown(&ben, "what was sent while both were down", want.len())?;
    assert_eq!(got, want, "every message once, in order");

    // The first relay back: it is given every row it missed (the outbox waits for it), and
    // the copies that reach Ben through it are dropped.
    let queued = ana.json(&["status"])?["outbox"].as_u64().unwrap_or(0);
    assert!(queued > 0, "rows wait for the relay that is down");
    r1.start_again("")?;
    wait_outbox_empty(&ana, WAIT)?;
    ben.ok(&["send", "Ana", "all here"])?;
    wait_text(&ana, "Ben", "all here", "Ben's answer at Ana")?;
    // Ben took (and acknowledged) every copy the first relay was given after it came back.
    wait_for("Ben to drain the first relay", WAIT, || {
        (mail_held(&r1).ok()? == 0).then_some(())
    })?;
    want.push("all here".to_owned());
    assert_eq!(shown(&ben), Some(want), "no copy is shown twice");
    Ok(())
}

/// Online contacts connect device to device even when the first relay of each one's list
/// is down: each dials the other through a circuit at the relay that said it is online
/// (or, failing that, at the next of its relays a while later), and upgrades to a direct
/// connection; with both relays down then, messages still go, device to device.
#[test]
fn online_contacts_connect_directly_through_the_relay_that_is_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let mut r2 = Relay::start(&dir.path().join("r2"), "")?;
    let both =
        |name| Node::init_and_start_with(dir.path(), name, Some(&r1.addr), &["--relay", &r2.addr]);
    let ana = both("ana")?;
    let ben = both("ben")?;
    r1.kill9();
    link_pair(&ana, &ben, "Ana", "Ben")?;
    wait_direct(&ana, &ben, WAIT)?;
    ana.ok(&["send", "Ben", "hello"])?;
    wait_text(&ben, "Ana", "hello", "the first message")?;
    r2.kill9();
    ana.ok(&["send", "Ben", "no relay left"])?;
    ben.ok(&["send", "Ana", "none needed"])?;
    wait_text(&ben, "Ana", "no relay left", "Ana's text, device to device")?;
    wait_text(&ana, "Ben", "none needed", "Ben's answer, device to device")?;
    Ok(())
}

/// One of two relays frozen (SIGSTOP: it keeps its connections and its port and answers
/// nothing, as a hung or overloaded relay does) holds up nothing, the first relay of every
/// user's list being the frozen one: a burst to an online recipient, and one to an offline
/// recipient who then starts again, arrive whole and in order through the other relay while
/// it stays frozen, and so does the answer; so does a first message to a contact added
/// meanwhile (its prekey is claimed at the other relay). Once the relay thaws, it is given
/// what it missed, and the copies that reach the recipient through it are not shown again.
#[test]
fn a_frozen_relay_holds_up_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = start(dir.path(), "ana", &r1, &r2)?;
    let mut ben = start(dir.path(), "ben", &r1, &r2)?;
    let cy = start(dir.path(), "cy", &r1, &r2)?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    ana.ok(&["send", "Ben", "hello"])?;
    wait_shown(&ben, "the first message", 1)?;
    let mut want = vec!["hello".to_owned()];
    // Cy's prekeys are at both relays before the first freezes.
    wait_for("Cy's prekeys at both relays", WAIT, || {
        let status = cy.json(&["status"]).ok()?;
        let relays = status["relays"].as_array()?;
        (relays.len() == 2 && relays.iter().all(|r| r["connected"] == true)).then_some(())
    })?;

    r1.freeze()?;
    let burst = 30;
    for i in 0..burst {
        ana.ok(&["send", "Ben", &format!("a{i:02}")])?;
    }
    want.extend((0..burst).map(|i| format!("a{i:02}")));
    let got = wait_shown(&ben, "a burst with the first relay frozen", want.len())?;
    assert_eq!(got, want, "every message once, in order");

    ben.stop()?;
    for i in 0..burst {
        ana.ok(&["send", "Ben", &format!("b{i:02}")])?;
    }
    ben.restart()?;
    want.extend((0..burst).map(|i| format!("b{i:02}")));
    let got = wait_shown(
        &ben,
        "a burst to Ben offline, with the relay frozen",
        want.len(),
    )?;
    assert_eq!(got, want, "every message once, in order");
    ben.ok(&["send", "Ana", "all here"])?;
    wait_text(&ana, "Ben", "all here", "Ben's answer at Ana")?;
    want.push("all here".to_owned());

    link_pair(&ana, &cy, "Ana", "Cy")?;
    ana.ok(&["send", "Cy", "hi Cy"])?;
    wait_text(
        &cy,
        "Ana",
        "hi Cy",
        "a first message to a contact added meanwhile",
    )?;
    let queued = ana.json(&["status"])?["outbox"].as_u64().unwrap_or(0);
    assert!(queued > 0, "rows wait for the frozen relay");

    r1.thaw()?;
    wait_outbox_empty(&ana, WAIT)?;
    wait_for("Ben to drain the thawed relay", WAIT, || {
        (mail_held(&r1).ok()? == 0).then_some(())
    })?;
    assert_eq!(shown(&ben), Some(want), "no copy is shown twice");
    Ok(())
}

/// The addresses in a list of relays (`relay.*`).
fn addrs(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|r| r["addr"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The relays `node` holds for its contact `name`.
fn contact_relays(node: &Node, name: &str) -> Option<Vec<String>> {
    let list = node.json(&["contact", "list"]).ok()?;
    let c = list.as_array()?.iter().find(|c| c["name"] == name)?;
    Some(
        c["relays"]
            .as_array()?
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect(),
    )
}

#[test]
fn a_relay_added_and_removed_at_run_time_reaches_contacts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = Node::init_and_start_with(dir.path(), "ana", Some(&r1.addr), &["--no-direct"])?;
    let ben = start(dir.path(), "ben", &r1, &r2)?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    ana.ok(&["send", "Ben", "hello"])?;
    wait_shown(&ben, "the first message", 1)?;

    // Ana adds the second relay: Ben is told, with no new contact link.
    let added = addrs(&ana.json(&["relay", "add", &r2.addr])?);
    assert_eq!(added, [r1.addr.clone(), r2.addr.clone()]);
    assert_eq!(addrs(&ana.json(&["relay", "list"])?), added);
    wait_for("Ben to learn Ana's second relay", WAIT, || {
        (contact_relays(&ben, "Ana")? == [r1.addr.clone(), r2.addr.clone()]).then_some(())
    })?;

    // With the first relay gone, Ben's message reaches Ana through the second, and the row
    // waits for the first.
    r1.kill9();
    ben.ok(&["send", "Ana", "through the second"])?;
    wait_for("Ben's message at Ana", WAIT, || {
        let h = ana
            .json(&["history", "Ben", "--limit", "500", "--no-mark-read"])
            .ok()?;
        h.as_array()?
            .iter()
            .any(|m| m["text"] == "through the second")
            .then_some(())
    })?;
    let status = ben.json(&["status"])?;
    let waiting = status["relays"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["addr"] == r1.addr.as_str()))
        .and_then(|r| r["waiting"].as_u64());
    assert!(waiting > Some(0), "the first relay owes rows: {status}");
    // Why they wait is said once: the relay cannot be reached, not also "no answer".
    wait_for("Ben to see the first relay down", WAIT, || {
        relay_entry(&ben, &r1.addr).filter(|r| r["problem"].is_string())
    })?;
    let text = ben.ok(&["status"])?;
    assert!(text.contains("cannot connect"), "{text}");
    assert!(!text.contains("no answer from the relay"), "{text}");

    // Ana removes it: Ben stops waiting for it, and his outbox empties.
    let left = addrs(&ana.json(&["relay", "remove", &r1.addr])?);
    assert_eq!(left, std::slice::from_ref(&r2.addr));
    wait_for("Ben to learn Ana's relays", WAIT, || {
        (contact_relays(&ben, "Ana")? == [r2.addr.clone()]).then_some(())
    })?;
    wait_outbox_empty(&ben, WAIT)?;

    // The last relay stays; a malformed address is bad input.
    let out = ana.cli(&["relay", "remove", &r2.addr]);
    assert_eq!(out.status.code(), Some(5));
    let out = ana.cli(&["relay", "add", "/ip4/127.0.0.1/tcp/1"]);
    assert_eq!(out.status.code(), Some(5));
    // A node on its embedded relay is started with relays of its own first.
    let cy = Node::init_and_start(dir.path(), "cy", None)?;
    let out = cy.cli(&["relay", "add", &r2.addr]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        cy.json(&["relay", "list"])?.as_array().map(Vec::len),
        Some(1)
    );
    Ok(())
}

#[test]
fn mail_left_at_a_removed_relay_is_still_drained() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = Node::init_and_start_with(dir.path(), "ana", Some(&r1.addr), &["--no-direct"])?;
    let mut ben = Node::init_and_start_with(dir.path(), "ben", Some(&r1.addr), &["--no-direct"])?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    ana.ok(&["send", "Ben", "hello"])?;
    wait_shown(&ben, "the first message", 1)?;

    // A burst while Ben is offline waits at his only relay.
    ben.stop()?;
    let burst = 20;
    for i in 0..burst {
        ana.ok(&["send", "Ben", &format!("m{i:02}")])?;
    }
    wait_outbox_empty(&ana, WAIT)?;
    let held = mail_held(&r1)?;
    assert!(held >= burst, "the burst waits at the relay: {held}");

    // That relay is down when Ben comes back, and he moves to another before it returns.
    r1.kill9();
    ben.restart()?;
    ben.ok(&["relay", "add", &r2.addr])?;
    let left = addrs(&ben.json(&["relay", "remove", &r1.addr])?);
    assert_eq!(
        left,
        std::slice::from_ref(&r2.addr),
        "no longer a home relay"
    );
    let status = ben.json(&["status"])?;
    let drained = status["relays"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["addr"] == r1.addr.as_str()))
        .and_then(|r| r["draining_until_ms"].as_i64());
    assert!(
        drained.is_some(),
        "status names the relay still drained: {status}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ben.home.join("config.json"))?)?;
    assert_eq!(
        config["draining_relays"][0]["addr"], r1.addr,
        "kept across restarts: {config}"
    );

    // Back: what waited there is taken, once and in order, and acknowledged.
    r1.start_again("")?;
    let want: Vec<String> = std::iter::once("hello".to_owned())
        .chain((0..burst).map(|i| format!("m{i:02}")))
        .collect();
    let got = wait_shown(&ben, "the mail left at the removed relay", want.len())?;
    assert_eq!(got, want, "every message once, in order");
    wait_for("Ben to drain the removed relay", WAIT, || {
        (mail_held(&r1).ok()? == 0).then_some(())
    })?;
    Ok(())
}

/// Whether `node`'s status lists a circuit address through `relay` (a reservation there).
fn circuit_via(node: &Node, relay: &str) -> Option<bool> {
    let status = node.json(&["status"]).ok()?;
    Some(status["listen"].as_array()?.iter().any(|a| {
        a.as_str()
            .is_some_and(|a| a.starts_with(relay) && a.contains("/p2p-circuit"))
    }))
}

/// Waits until `node` does (`want`) or does not list a circuit address through `relay`.
fn wait_circuit(node: &Node, relay: &str, want: bool, what: &str) -> anyhow::Result<()> {
    wait_for(what, WAIT, || {
        (circuit_via(node, relay)? == want).then_some(())
    })
}

/// A home relay carries circuits to its node (a reservation) and a removed one no longer
/// does, though it stays connected to be drained; added again while connected, it carries
/// them again.
#[test]
fn a_removed_relay_gives_up_its_circuits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ben = Node::init_and_start_with(dir.path(), "ben", Some(&r1.addr), &["--no-direct"])?;
    wait_circuit(
        &ben,
        &r1.addr,
        true,
        "a circuit address through the first relay",
    )?;
    ben.ok(&["relay", "add", &r2.addr])?;
    wait_circuit(
        &ben,
        &r2.addr,
        true,
        "a circuit address through the added relay",
    )?;

    // Named at a port it is not at, the home relay with that peer id goes, and the output
    // says which it was.
    let (at, peer) = r1.addr.split_once("/p2p/").unwrap();
    let wrong = format!("{}/9/p2p/{peer}", at.rsplit_once('/').unwrap().0);
    let out = ben.ok(&["relay", "remove", &wrong])?;
    assert_eq!(
        out.lines().next(),
        Some(
            format!(
                "removed {} (the home relay with the peer id of {wrong})",
                r1.addr
            )
            .as_str()
        ),
        "{out}"
    );
    // Removing it again says it was.
    let again = ben.cli(&["relay", "remove", &r1.addr]);
    assert_eq!(again.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("was removed already"),
        "{again:?}"
    );
    wait_circuit(
        &ben,
        &r1.addr,
        false,
        "the removed relay's circuit address to go",
    )?;
    assert_eq!(
        circuit_via(&ben, &r2.addr),
        Some(true),
        "the other relay's stays"
    );
    let status = ben.json(&["status"])?;
    let removed = status["relays"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["addr"] == r1.addr.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        removed["connected"], true,
        "still connected while it is drained: {status}"
    );

    ben.ok(&["relay", "add", &r1.addr])?;
    wait_circuit(
        &ben,
        &r1.addr,
        true,
        "a circuit address through the relay added again",
    )?;
    Ok(())
}

/// The entry for the relay at `addr` in a node's status, once it is there.
fn relay_entry(node: &Node, addr: &str) -> Option<serde_json::Value> {
    node.json(&["status"]).ok()?["relays"]
        .as_array()?
        .iter()
        .find(|r| r["addr"] == addr)
        .cloned()
}

/// A home relay that is down says why it cannot be reached; one that lost its whole data
/// directory, identity key included, and came back at its address answers as another relay,
/// and the node says so, with the address to add should it still be the user's relay. Once
/// the user swaps it in, it is connected and the problem is gone.
#[test]
fn a_relay_back_with_a_new_identity_is_named_as_such() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = start(dir.path(), "ana", &r1, &r2)?;
    let old = r1.addr.clone();
    wait_for("both relays connected", WAIT, || {
        relay_entry(&ana, &old).filter(|r| r["connected"] == true)
    })?;

    r1.kill9();
    let down = wait_for("the down relay's problem", WAIT, || {
        relay_entry(&ana, &old).and_then(|r| r["problem"].as_str().map(str::to_owned))
    })?;
    assert!(
        down.contains("cannot connect: connection refused"),
        "{down}"
    );

    std::fs::remove_dir_all(&r1.data)?;
    r1.start_again("")?;
    let new = r1.addr.clone();
    assert_ne!(new, old, "a relay with no key makes a new identity");
    let other = wait_for("the other identity named", WAIT, || {
        relay_entry(&ana, &old)
            .and_then(|r| r["problem"].as_str().map(str::to_owned))
            .filter(|p| p.contains("answers as"))
    })?;
    assert!(
        other.contains(&format!("`tern relay add {new}`")),
        "{other}"
    );

    // The relay just checked and added is listed connected, not as a relay that is down.
    let added = ana.ok(&["relay", "add", &new])?;
    assert!(added.contains(&format!("{new} connected")), "{added}");
    ana.ok(&["relay", "remove", &old])?;
    let now = wait_for("the new relay connected", WAIT, || {
        relay_entry(&ana, &new).filter(|r| r["connected"] == true)
    })?;
    assert!(now.get("problem").is_none(), "{now}");
    // The old address, removed, is drained should its relay come back; the status does not
    // promise that it will.
    let gone = relay_entry(&ana, &old).expect("the removed relay is listed while drained");
    assert!(gone["draining_until_ms"].is_i64(), "{gone}");
    let problem = gone["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("nothing is left there to drain"), "{gone}");
    let text = ana.ok(&["status"])?;
    let line = text
        .lines()
        .find(|l| l.contains(&old))
        .expect("the removed relay's line");
    assert!(
        line.contains("removed: its mailbox is drained if it comes back within"),
        "{text}"
    );
    Ok(())
}

/// A home relay that moved (the same data and key, another port) is taken at its new
/// address by `tern relay add`: the address is replaced rather than ignored as a relay
/// already known, the node connects there and listens through its circuit there, and
/// contacts learn the new address.
#[test]
fn a_relay_that_moved_is_taken_at_its_new_address() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = start(dir.path(), "ana", &r1, &r2)?;
    let ben = start(dir.path(), "ben", &r1, &r2)?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    let old = r1.addr.clone();

    r1.kill9();
    let moved = Relay::start(&r1.data, "")?;
    assert_ne!(moved.addr, old);
    assert_eq!(
        moved.addr.rsplit('/').next(),
        old.rsplit('/').next(),
        "the same key, the same peer id"
    );
    let homes = ana.json(&["relay", "add", &moved.addr])?;
    let addrs: Vec<&str> = homes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["addr"].as_str())
        .collect();
    assert_eq!(addrs, [moved.addr.as_str(), r2.addr.as_str()]);
    wait_for("the moved relay connected", WAIT, || {
        relay_entry(&ana, &moved.addr).filter(|r| r["connected"] == true)
    })?;
    // Ana is reachable through the relay's circuit at its new address, and not the old.
    wait_for("a circuit address through the moved relay", WAIT, || {
        let status = ana.json(&["status"]).ok()?;
        let listen: Vec<&str> = status["listen"]
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let through = |relay: &str| {
            listen
                .iter()
                .any(|a| a.starts_with(&format!("{relay}/p2p-circuit")))
        };
        (through(&moved.addr) && !through(&old)).then_some(())
    })?;
    wait_for("Ben told of the new address", WAIT, || {
        contact_relays(&ben, "Ana").filter(|r| r.contains(&moved.addr) && !r.contains(&old))
    })?;
    Ok(())
}

/// A relay that stops answering while its connections stay open (SIGSTOP; a host powered
/// off or a link gone without a word look the same) is let go once its pings go
/// unanswered: `tern status` stops calling it connected, and what is sent meanwhile arrives
/// through the other relay. Once it answers again, the node dials it again and gives it
/// everything it missed, and the copies that reach the recipient through it are not shown
/// again.
#[test]
fn a_relay_that_stops_answering_is_let_go_and_taken_again_when_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = start(dir.path(), "ana", &r1, &r2)?;
    let ben = start(dir.path(), "ben", &r1, &r2)?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    ana.ok(&["send", "Ben", "hello"])?;
    wait_shown(&ben, "the first message", 1)?;
    let connected = |node: &Node| relay_entry(node, &r1.addr).map(|r| r["connected"] == true);

    r1.freeze()?;
    // Pings every 15 s, each given 10 s, the second failure closes: well inside WAIT.
    wait_for("the stopped relay to be let go", WAIT, || {
        (!connected(&ana)?).then_some(())
    })?;
    ana.ok(&["send", "Ben", "while it is gone"])?;
    wait_shown(&ben, "a message while the relay is let go", 2)?;
    let queued = relay_entry(&ana, &r1.addr)
        .and_then(|r| r["waiting"].as_u64())
        .unwrap_or(0);
    assert!(queued > 0, "rows wait for the relay that was let go");

    r1.thaw()?;
    wait_for("the relay to be dialled again", WAIT, || {
        connected(&ana)?.then_some(())
    })?;
    wait_outbox_empty(&ana, WAIT)?;
    wait_for("Ben to drain the relay that came back", WAIT, || {
        (mail_held(&r1).ok()? == 0).then_some(())
    })?;
    assert_eq!(
        shown(&ben),
        Some(vec!["hello".to_owned(), "while it is gone".to_owned()]),
        "no copy is shown twice"
    );
    Ok(())
}

/// The value of `key` in `node`'s ready line.
fn ready_field(node: &Node, key: &str) -> Option<String> {
    node.ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

/// `tern up`'s ready line names a home relay it is connected to: with the first of two
/// down, the second, not the first with `relay_connected=true`.
#[test]
fn the_ready_line_names_the_relay_that_is_connected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    r1.kill9();
    let ana = start(dir.path(), "ana", &r1, &r2)?;
    let field = |k: &str| ready_field(&ana, k);
    assert_eq!(
        field("relay_connected").as_deref(),
        Some("true"),
        "{}",
        ana.ready
    );
    assert_eq!(field("relay"), Some(r2.addr.clone()), "{}", ana.ready);
    Ok(())
}

/// With its only home relay down, `tern up`'s ready line says so, even when a contact's
/// relay connects while it waits: a contact's relay is not a home relay.
#[test]
fn the_ready_line_does_not_take_a_contacts_relay_for_a_home_relay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let mut ana = Node::init_and_start(dir.path(), "ana", Some(&r1.addr))?;
    let bob = Node::init_and_start(dir.path(), "bob", Some(&r2.addr))?;
    link_pair(&ana, &bob, "Ana", "Bob")?;
    // Back up with her relay down, Ana connects to Bob's relay while she waits for hers.
    ana.stop()?;
    r1.kill9();
    ana.restart()?;
    let field = |k: &str| ready_field(&ana, k);
    assert_eq!(
        field("relay_connected").as_deref(),
        Some("false"),
        "{}",
        ana.ready
    );
    assert_eq!(field("relay"), Some(r1.addr.clone()), "{}", ana.ready);
    Ok(())
}

/// A text held by one of its recipient's relays is `sent` for the person who wrote it,
/// while the other relay, down, still gets its copy when it is back: no "pending" for as
/// long as a relay is away.
#[test]
fn a_text_one_relay_holds_is_sent_while_the_other_is_down() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("r1"), "")?;
    let mut r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = start(dir.path(), "ana", &r1, &r2)?;
    let mut ben = start(dir.path(), "ben", &r1, &r2)?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    ben.stop()?;
    r2.kill9();
    let id = ana
        .ok(&["send", "Ben", "while r2 is down"])?
        .trim()
        .to_owned();
    wait_for("the text sent", WAIT, || {
        let h = ana.json(&["history", "Ben", "--no-mark-read"]).ok()?;
        h.as_array()?
            .iter()
            .any(|m| m["id"] == id.as_str() && m["status"] == "sent")
            .then_some(())
    })?;
    let outbox = ana.json(&["status"])?["outbox"].as_u64();
    assert!(
        outbox.is_some_and(|n| n >= 1),
        "r2's copy still waits: {outbox:?}"
    );
    r2.restart_after_kill9("")?;
    wait_outbox_empty(&ana, WAIT)?;
    ben.restart()?;
    wait_text(&ben, "Ana", "while r2 is down", "the text at ben")?;
    Ok(())
}

/// `tern relay add` takes an address only once something answers there as the relay it
/// names: a known relay's peer id at a wrong port, a relay nothing serves, or a node that is
/// not a relay are refused, and nothing is saved or told to contacts.
#[test]
fn a_relay_address_that_does_not_answer_as_that_relay_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("r1"), "")?;
    let r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = Node::init_and_start_with(dir.path(), "ana", Some(&r1.addr), &["--no-direct"])?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&r1.addr))?;
    link_pair(&ana, &ben, "Ana", "Ben")?;
    let homes = || -> anyhow::Result<Vec<String>> { Ok(addrs(&ana.json(&["relay", "list"])?)) };
    let peer_of = |addr: &str| addr.rsplit('/').next().unwrap_or_default().to_owned();
    let refused = |addr: &str, says: &[&str]| -> anyhow::Result<()> {
        let out = ana.cli_within(&["relay", "add", addr], WAIT)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{addr}: {err}");
        for s in says {
            assert!(err.contains(s), "{addr}: {err:?} should say {s:?}");
        }
        assert_eq!(homes()?, std::slice::from_ref(&r1.addr), "nothing saved");
        Ok(())
    };

    // The home relay's peer id at a port nothing listens on: not taken as "it moved".
    let wrong = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        free_port(),
        peer_of(&r1.addr)
    );
    refused(
        &wrong,
        &[
            "cannot be used",
            "connection refused",
            &format!("stays at {}", r1.addr),
        ],
    )?;
    // The second relay's peer id at a port nothing listens on.
    let unserved = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        free_port(),
        peer_of(&r2.addr)
    );
    refused(&unserved, &["cannot be used", "connection refused"])?;
    // The second relay's address with the first relay's peer id: something answers, as
    // another identity.
    let port = r2.addr.split('/').nth(4).unwrap_or_default().to_owned();
    let other = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", peer_of(&r1.addr));
    refused(&other, &["answers there as", &peer_of(&r2.addr)])?;
    // Ben's node: a peer that answers as itself, but is no relay.
    let status = ben.json(&["status"])?;
    let direct = status["listen"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/") && !a.contains("p2p-circuit"))
        .map(str::to_owned)
        .expect("ben listens on loopback");
    let device = status["device_id"].as_str().unwrap_or_default();
    refused(
        &format!("{direct}/p2p/{device}"),
        &["does not answer as a Tern relay"],
    )?;

    // The second relay at its real address is taken, and Ben learns of it.
    let added = addrs(&ana.json(&["relay", "add", &r2.addr])?);
    assert_eq!(added, [r1.addr.clone(), r2.addr.clone()]);
    wait_for("Ben to learn Ana's second relay", WAIT, || {
        (contact_relays(&ben, "Ana")? == [r1.addr.clone(), r2.addr.clone()]).then_some(())
    })?;
    Ok(())
}

/// A relay at its limit of connections cuts a new one as it opens: the node refused says
/// that this is what such a relay does, not only "connection reset by peer".
#[test]
fn a_relay_at_its_connection_limit_is_named_as_a_likely_cause() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(
        &dir.path().join("relay"),
        "[connections]\nmax_established = 1\n",
    )?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    wait_for("ana connected", WAIT, || {
        relay_entry(&ana, &relay.addr).filter(|r| r["connected"] == true)
    })?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&relay.addr))?;
    let problem = wait_for("ben's dial problem", WAIT, || {
        relay_entry(&ben, &relay.addr).and_then(|r| r["problem"].as_str().map(str::to_owned))
    })?;
    assert!(problem.contains("limit of connections"), "{problem}");
    Ok(())
}
