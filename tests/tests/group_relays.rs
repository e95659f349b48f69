//! A group whose members live on two relays, one of which is down while the group is made
//! and used: what could not reach the member on the dead relay (the membership change that
//! adds them, a message from a member who is not their contact) is owed to them and arrives
//! once their relay is back, in the order every other member shows.

use std::time::Duration;

use tern_tests::support::{
    Node, Relay, group_history, link_pair, message_ids, message_texts, wait_for,
};

const CONVERGE: Duration = Duration::from_secs(90);

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
    cy.ok(&["contact", "add", &ana.link()?, "--name", "ana"])?;

    // Cy's relay dies before Ana has ever had a session with Cy: Ana adds Cy only then
    // (adding a contact claims their prekeys, which Cy's dead relay cannot hand out).
    r2.kill9();
    ana.ok(&["contact", "add", &cy.link()?, "--name", "cy"])?;
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
        let h = group_history(&cy, &group);
        let t = message_texts(&h);
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
            let h = group_history(node, &group);
            message_texts(&h)
                .iter()
                .any(|t| t == "from cy after the outage")
                .then_some(h)
        })?;
        if !last.is_empty() {
            assert_eq!(message_ids(&h), last, "members show different orders");
        }
        last = message_ids(&h);
    }
    assert!(cy_history.len() >= 3);
    Ok(())
}

/// The relay's (message id, mailbox references) for every message held, read-only while it
/// runs.
fn relay_holdings(relay: &Relay) -> anyhow::Result<Vec<(i64, i64)>> {
    let db = relay.data.join("db").join("relay.sqlite3");
    let conn = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut st =
        conn.prepare("SELECT message, COUNT(*) FROM mailbox GROUP BY message ORDER BY message")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[test]
fn a_group_message_is_one_deposit_stored_once_for_every_member_device() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let mut members = Vec::new();
    for name in ["ben", "cy", "dee"] {
        let m = Node::init_and_start(dir.path(), name, Some(&relay.addr))?;
        link_pair(&ana, &m, "ana", name)?;
        members.push(m);
    }
    let group = ana.json(&["group", "create", "Trio", "ben", "cy", "dee"])?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The first message carries the sender key to each device over its pairwise session.
    ana.ok(&["group", "send", &group, "first"])?;
    for m in &members {
        wait_for("the first message", CONVERGE, || {
            message_texts(&group_history(m, &group))
                .contains(&"first".to_owned())
                .then_some(())
        })?;
    }
    // With every member offline, the next one stays at the relay: one stored message
    // referenced from three mailboxes.
    for m in &mut members {
        m.stop()?;
    }
    wait_for("earlier mail to be acknowledged", CONVERGE, || {
        relay_holdings(&relay).ok().filter(Vec::is_empty)
    })?;
    ana.ok(&["group", "send", &group, "second"])?;
    let held = wait_for("the second message at the relay", CONVERGE, || {
        relay_holdings(&relay).ok().filter(|h| !h.is_empty())
    })?;
    assert_eq!(held.len(), 1, "one stored message: {held:?}");
    assert_eq!(held[0].1, 3, "referenced from each member device's mailbox");
    for m in &mut members {
        m.restart()?;
    }
    for m in &members {
        wait_for("the second message after coming back", CONVERGE, || {
            message_texts(&group_history(m, &group))
                .contains(&"second".to_owned())
                .then_some(())
        })?;
    }
    Ok(())
}
