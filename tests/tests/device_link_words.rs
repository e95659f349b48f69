//! Link words, over real processes on 127.0.0.1: a new device applies a provisioning record
//! only once its user confirms that the record's words are the ones the sending device
//! shows. Someone who saw the link code and used it first (Mallory, another user) gets a
//! record with other words in front of the new device; it is discarded, and the new device
//! ends up as Ana's, with her contacts and verified marks, not Mallory's.

use std::time::Duration;

use tern_tests::support::{Linking, Node, Relay, link_pair, wait_for};

/// Longest wait for a confirmation to reach the device that linked.
const WAIT: Duration = Duration::from_secs(30);

/// Where the link of `device` stands on `node`, as `device list` shows it (`None`: not a
/// link made there).
fn link_state(node: &Node, device: &str) -> anyhow::Result<Option<String>> {
    let list = node.json(&["device", "list"])?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["device_id"] == device)
        .and_then(|d| d["link"].as_str().map(str::to_owned)))
}

/// Waits until `node` shows the link of `device` confirmed.
fn wait_confirmed(node: &Node, device: &str) -> anyhow::Result<()> {
    wait_for("the link to show confirmed", WAIT, || {
        (link_state(node, device).ok()?.as_deref() == Some("confirmed")).then_some(())
    })
}

/// Ana (with Ben as a verified contact) and Mallory (with Ana as a verified contact).
fn ana_ben_and_mallory(dir: &std::path::Path, relay: &Relay) -> anyhow::Result<[Node; 3]> {
    let ana = Node::init_and_start(dir, "ana", Some(&relay.addr))?;
    let ben = Node::init_and_start(dir, "ben", Some(&relay.addr))?;
    let mallory = Node::init_and_start(dir, "mallory", Some(&relay.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ana.ok(&["verify", "ben"])?;
    mallory.ok(&["contact", "add", &ana.link()?, "--name", "ana"])?;
    mallory.ok(&["verify", "ana"])?;
    Ok([ana, ben, mallory])
}

/// The contacts of a node: (name, user id, verified).
fn contacts(node: &Node) -> anyhow::Result<Vec<(String, String, bool)>> {
    Ok(node
        .json(&["contact", "list"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["user_id"].as_str().unwrap_or_default().to_owned(),
                c["verified"].as_bool().unwrap_or(false),
            )
        })
        .collect())
}

fn words_of(added: &serde_json::Value) -> String {
    added["words"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_link_confirmed_with_matching_words_applies_the_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&relay.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ana.ok(&["verify", "ben"])?;

    let home = dir.path().join("ana-laptop");
    let mut link = Linking::start(&home, &relay.addr, "laptop")?;
    // `device add` (text) prints the words it sent the record with.
    let text = ana.ok(&["device", "add", &link.code])?;
    let device = text
        .lines()
        .find_map(|l| l.strip_prefix("linked device "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        link_state(&ana, &device)?.as_deref(),
        Some("waiting"),
        "{text}"
    );
    let words = text
        .lines()
        .find_map(|l| l.strip_prefix("words: "))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(words.split(' ').count(), 5, "{text}");
    // The new device shows the same words, and applies the record once they are typed.
    assert_eq!(link.next_words()?, words);
    link.answer(&words.to_uppercase())?;
    let (code, err) = link.finish()?;
    assert_eq!(code, Some(0), "{err}");

    // Ana's device learns that its record was the one confirmed.
    wait_confirmed(&ana, &device)?;

    let laptop = Node::start(&home, Some(&relay.addr))?;
    assert_eq!(laptop.user, ana.user);
    assert_eq!(
        contacts(&laptop)?,
        vec![("ben".into(), ben.user.clone(), true)]
    );
    Ok(())
}

#[test]
fn a_record_from_whoever_used_the_code_first_shows_other_words_and_is_not_applied()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let [ana, ben, mallory] = ana_ben_and_mallory(dir.path(), &relay)?;

    let home = dir.path().join("ana-laptop");
    let mut link = Linking::start(&home, &relay.addr, "laptop")?;
    // Mallory saw the code and uses it first: his record reaches the new device first.
    let added = mallory.json(&["device", "add", &link.code])?;
    let mallorys = words_of(&added);
    let device = added["device_id"].as_str().unwrap_or_default().to_owned();
    let first = link.next_words()?;
    assert_eq!(
        first, mallorys,
        "the new device shows the words of the record it got"
    );
    // Ana adds the device too: her screen shows other words.
    let anas = words_of(&ana.json(&["device", "add", &link.code])?);
    assert_ne!(anas, mallorys);
    // Ana sees the words differ from hers and discards that record; the next one shows
    // hers, and typing them applies it.
    link.answer("n")?;
    assert_eq!(link.next_words()?, anas);
    link.answer(&anas)?;
    let (code, err) = link.finish()?;
    assert_eq!(code, Some(0), "{err}");

    // The new device is Ana's, with her contacts and verified marks; none of Mallory's.
    let laptop = Node::start(&home, Some(&relay.addr))?;
    assert_eq!(laptop.user, ana.user);
    assert_ne!(laptop.user, mallory.user);
    assert_eq!(
        contacts(&laptop)?,
        vec![("ben".into(), ben.user.clone(), true)]
    );
    let id = laptop.json(&["id", "show"])?;
    assert_eq!(id["name"], "ana", "{id}");
    // Ana's device is told its record was confirmed; Mallory's, whose record was turned
    // down, is not (its confirmation would have gone to a mailbox only his record names).
    wait_confirmed(&ana, &device)?;
    assert_eq!(link_state(&mallory, &device)?.as_deref(), Some("waiting"));
    Ok(())
}

#[test]
fn typing_words_that_differ_stops_the_link_and_applies_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let [ana, _ben, mallory] = ana_ben_and_mallory(dir.path(), &relay)?;

    let home = dir.path().join("ana-laptop");
    let mut link = Linking::start(&home, &relay.addr, "laptop")?;
    let mallorys = words_of(&mallory.json(&["device", "add", &link.code])?);
    let anas = words_of(&ana.json(&["device", "add", &link.code])?);
    // The first record shown is Mallory's; Ana types the words her own device shows.
    assert_eq!(link.next_words()?, mallorys);
    link.answer(&anas)?;
    let (code, err) = link.finish()?;
    assert_eq!(code, Some(14), "{err}");
    assert!(err.contains("do not match"), "{err}");
    assert!(
        !tern_node::Home::new(&home).is_initialised(),
        "nothing was applied"
    );
    Ok(())
}

/// The relay dies and comes back while the new device waits for its record (a user can
/// take minutes to carry the code over, on a link that drops): the new device connects
/// again, turns live delivery back on and fetches what waits, so the record still arrives
/// and the link completes.
#[test]
fn a_link_survives_its_relay_restarting_while_it_waits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut relay = Relay::start(&dir.path().join("relay"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let mut link = Linking::start(&dir.path().join("ana-laptop"), &relay.addr, "laptop")?;

    relay.restart_after_kill9("")?;
    wait_for("ana back at the relay", WAIT, || {
        let s = ana.json(&["status"]).ok()?;
        (s["relays"][0]["connected"] == true).then_some(())
    })?;
    let added = ana.json(&["device", "add", &link.code])?;
    let shown = match link.next_words() {
        Ok(w) => w,
        Err(e) => {
            let (code, err) = link.finish()?;
            anyhow::bail!("{e}: the link exited {code:?}: {err}");
        }
    };
    assert_eq!(shown, words_of(&added));
    link.answer("y")?;
    let (code, err) = link.finish()?;
    assert_eq!(code, Some(0), "{err}");
    Ok(())
}
