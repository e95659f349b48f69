//! A group whose members live on two relays, one of which is down while the group is made
//! and used: what could not reach the member on the dead relay (the membership change that
//! adds them, a message from a member who is not their contact) is owed to them and arrives
//! once their relay is back, in the order every other member shows.

use std::time::Duration;

use serde_json::Value;
use tern_tests::support::{Node, Relay, link_pair, wait_for};

const CONVERGE: Duration = Duration::from_secs(90);

fn history(node: &Node, group: &str) -> Vec<Value> {
    node.json(&["group", "history", group, "--limit", "500"])
        .map(|v| v.as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

fn ids(h: &[Value]) -> Vec<String> {
    h.iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn texts(h: &[Value]) -> Vec<String> {
    h.iter()
        .filter(|m| m["kind"] == "text")
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_member_behind_a_dead_relay_gets_what_it_missed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("r1"), "")?;
    let mut r2 = Relay::start(&dir.path().join("r2"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&r1.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&r1.addr))?;
    let cy = Node::init_and_start(dir.path(), "cy", Some(&r2.addr))?;
    // Ana knows both; Ben and Cy know only Ana.
    link_pair(&ana, &ben, "ana", "ben")?;
    link_pair(&ana, &cy, "ana", "cy")?;

    // Cy's relay dies before Ana has ever had a session with Cy.
    r2.kill9();
    let group = ana.json(&["group", "create", "Field", "ben", "cy"])?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(group.len(), 32);
    ana.ok(&["group", "send", &group, "from ana during the outage"])?;
    wait_for("ben to join", CONVERGE, || {
        ben.json(&["group", "info", &group]).ok()
    })?;
    ben.ok(&["group", "send", &group, "from ben during the outage"])?;
    // Nothing can have reached Cy.
    assert!(cy.json(&["group", "info", &group]).is_err());

    r2.restart_after_kill9("")?;
    let want = ["from ana during the outage", "from ben during the outage"];
    let cy_history = wait_for("cy to get what it missed", CONVERGE, || {
        let h = history(&cy, &group);
        let t = texts(&h);
        want.iter().all(|w| t.iter().any(|x| x == w)).then_some(h)
    })?;
    let info = cy.json(&["group", "info", &group])?;
    assert_eq!(info["member"], true);
    assert_eq!(info["members"].as_array().map(Vec::len), Some(3));

    // Cy, who is no contact of Ben, can answer the group, and everyone shows one order.
    cy.ok(&["group", "send", &group, "from cy after the outage"])?;
    let mut last = Vec::new();
    for node in [&ana, &ben, &cy] {
        let h = wait_for("the reply everywhere", CONVERGE, || {
            let h = history(node, &group);
            texts(&h)
                .iter()
                .any(|t| t == "from cy after the outage")
                .then_some(h)
        })?;
        if !last.is_empty() {
            assert_eq!(ids(&h), last, "members show different orders");
        }
        last = ids(&h);
    }
    assert!(cy_history.len() >= 3);
    Ok(())
}
