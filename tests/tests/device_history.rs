//! The whole history moves to a newly linked device, over real processes on 127.0.0.1: Ana
//! holds 20,000 messages with Ben, links a laptop, and the laptop (killed with SIGKILL half
//! way and started again) ends with every one of them, once each, in the same order as the
//! phone, while it can already be used.

use std::time::Duration;

use tern_node::Home;
use tern_store::{ConversationId, MessageId, Page, Store};
use tern_tests::support::{Node, Relay, link_device, link_pair, seed_history, wait_for};

const WAIT: Duration = Duration::from_secs(120);
const HISTORY: u32 = 20_000;

/// Every message id of the conversation, in display order.
fn all_ids(store: &Store, conv: &ConversationId) -> anyhow::Result<Vec<MessageId>> {
    let mut out = Vec::new();
    let mut page = Page::Latest;
    loop {
        let batch = store.history(conv, page, Some(500))?;
        let Some(first) = batch.first() else { break };
        page = Page::Before(first.id);
        out.splice(0..0, batch.iter().map(|m| m.id));
    }
    Ok(out)
}

fn history_status(node: &Node) -> Option<(u64, u64)> {
    let v = node.json(&["status"]).ok()?;
    let h = &v["history"];
    Some((h["received"].as_u64()?, h["total"].as_u64()?))
}

#[test]
fn a_linked_device_gets_the_whole_history_even_when_killed_half_way() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let mut ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&relay.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ana.stop()?;
    seed_history(&ana.home, &ben.user, &ben.device, HISTORY)?;
    ana.restart()?;

    let laptop_home = dir.path().join("ana-laptop");
    link_device(&ana, &laptop_home, &relay.addr, "laptop")?;
    let mut laptop = Node::start(&laptop_home, Some(&relay.addr))?;
    // Killed as soon as history starts to arrive, then started again.
    let (received, total) = wait_for("history to start arriving", WAIT, || {
        history_status(&laptop).filter(|(r, _)| *r > 0)
    })?;
    laptop.kill9();
    assert!(
        received < total,
        "the kill came half way ({received} of {total} received)"
    );
    laptop.restart()?;
    // Usable meanwhile: a message sent now arrives while history is still moving.
    ben.ok(&["send", "ana", "while history moves"])?;
    wait_for("the whole history on the laptop", WAIT, || {
        history_status(&laptop).filter(|(r, t)| *t > 0 && r == t)
    })?;
    // (Ben never saw the seeded history, so his clock puts it first: found by search.)
    wait_for("ben's new message on the laptop", WAIT, || {
        laptop
            .json(&["search", "while history moves"])
            .ok()
            .filter(|h| h.as_array().is_some_and(|a| !a.is_empty()))
    })?;
    let shown = ana.json(&["status"])?;
    assert!(
        shown["history"]["sending"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "the phone owes nothing more: {shown}"
    );
    laptop.stop()?;
    ana.stop()?;

    let conv = ConversationId(ben.user.clone());
    let (phone_store, _) = Home::new(&ana.home).open()?;
    let (laptop_store, _) = Home::new(&laptop_home).open()?;
    let on_phone = all_ids(&phone_store, &conv)?;
    let on_laptop = all_ids(&laptop_store, &conv)?;
    assert!(on_phone.len() > HISTORY as usize, "{}", on_phone.len());
    assert_eq!(on_laptop.len(), on_phone.len(), "every message once");
    assert_eq!(on_laptop, on_phone, "the same order on both devices");
    Ok(())
}
