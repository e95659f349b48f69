//! The `paths` suite: how many round trips a user's everyday paths cost on a slow link.
//!
//! Loopback answers in microseconds, so a path that waits for one answer before asking the
//! next question looks free there. Here one node reaches the relay through a proxy that
//! delays every byte by [`ONE_WAY`] each way (a 100 ms round trip, a phone's link), and each
//! path runs once through it and once over loopback, alternately, [`ROUNDS`] times. Each
//! figure is the median extra time the link adds, against the link's round trip measured in
//! the same run: its ratio is the number of round trips the path waits for one after
//! another. `<figure>_loopback` is the path's median time over loopback, for scale.
//!
//! - `paths.first_message`: Bob has added Alice; Alice adds Bob's contact link and sends him
//!   a text at once (no session yet). From the `send` call until Bob has the text, Alice on
//!   the slow link.
//! - `paths.contact_add`: the `contact add` of that path, on its own (a CLI call).
//! - `paths.catch_up`: Bob was offline while Alice sent him [`BACKLOG`] texts; from starting
//!   his `tern up` until he has stored them all, Bob on the slow link.
//! - `paths.send_after_start`: Alice starts `tern up` and sends Bob a text as soon as it is
//!   ready (a session exists); until Bob has it, Alice on the slow link.
//! - `paths.file`: Alice sends Bob a file of [`FILE_BYTES`] (not an image); from `send-file`
//!   until Bob's node has downloaded it, Alice on the slow link (which adds no bandwidth
//!   limit: what it shows is how many round trips the transfer waits for).
//! - `paths.second_text`: Alice and Bob have a session; Alice sends two texts, the second
//!   as soon as the first is accepted (while it is still on its way): from the second
//!   `send` until Bob has it, Alice on the slow link.
//! - `paths.group_first`: Alice has sessions with Bob and Carol (a text to each); she
//!   creates a group with both and sends it a text at once. From `group_create` until both
//!   have the text, Alice on the slow link (the sender key goes to each member first).
//! - `paths.device_link`: Ana links a laptop to her account, the laptop on the slow link:
//!   from starting `tern device link` until it shows its code, from `tern device add CODE`
//!   on her phone (a [`CARRY_CODE`] pause after the code is shown) until the laptop shows
//!   the words, and from the answer until the laptop's home is set up (the three added; the
//!   user's own time between them is not counted).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{
    Opts, Report,
    delivery::{UNLIMITED, backlog_catch_up, wait_text},
    ms, quantile,
};
use crate::support::{
    Linking, Node, Relay, WAIT,
    link::{delay_proxy, link_round_trips, tcp_target, via},
    link_pair, wait_for,
};

/// One-way delay of the slow link (a 100 ms round trip).
const ONE_WAY: Duration = Duration::from_millis(50);
/// Alternated rounds of each path (slow link, then loopback).
const ROUNDS: usize = 3;
/// Texts waiting for Bob in `paths.catch_up`.
const BACKLOG: usize = 100;
/// How long a user takes to carry a link code to their other device in
/// `paths.device_link`: a model of the person (a pause, not counted), without which the
/// code would be used before anyone could have read it.
const CARRY_CODE: Duration = Duration::from_secs(1);
/// Size of the file in `paths.file` (16 chunks of 256 KiB).
const FILE_BYTES: usize = 4 << 20;

/// The figures of one path: its times through the link and over loopback.
#[derive(Default)]
struct Times {
    link: Vec<Duration>,
    loopback: Vec<Duration>,
}

impl Times {
    fn push(&mut self, slow: bool, d: Duration) {
        if slow {
            self.link.push(d);
        } else {
            self.loopback.push(d);
        }
    }

    /// Median time the link added, and the median over loopback.
    fn extra(mut self) -> (Duration, Duration) {
        let loopback = quantile(&mut self.loopback, 0.5);
        (
            quantile(&mut self.link, 0.5).saturating_sub(loopback),
            loopback,
        )
    }
}

pub(crate) fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let rounds = opts.size(ROUNDS, 1);
    let backlog = opts.size(BACKLOG, 10);
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), UNLIMITED)?;
    let rt = tokio::runtime::Runtime::new()?;
    let proxy = rt.block_on(delay_proxy(tcp_target(&relay.addr)?, ONE_WAY))?;
    let slow_addr = via(&relay.addr, proxy.addr)?;

    let mut times: [Times; 8] = Default::default();
    for round in 0..rounds {
        for slow in [true, false] {
            let alice_relay = if slow { &slow_addr } else { &relay.addr };
            let sub = dir.path().join(format!("{round}-{slow}"));
            let (add, first) = first_message(&sub.join("first"), alice_relay, &relay.addr, &rt)?;
            // Bob is the one on the slow link here.
            let (_, catch) = backlog_catch_up(
                &sub.join("catch"),
                (&relay.addr, alice_relay),
                &rt,
                backlog,
                WAIT,
            )?;
            let start = send_after_start(&sub.join("start"), alice_relay, &relay.addr, &rt)?;
            let file = file_transfer(&sub.join("file"), alice_relay, &relay.addr, FILE_BYTES)?;
            let group = group_first(&sub.join("group"), alice_relay, &relay.addr, &rt)?;
            let second = second_text(&sub.join("second"), alice_relay, &relay.addr, &rt)?;
            let link = device_link(&sub.join("link"), alice_relay, &relay.addr)?;
            for (t, d) in times
                .iter_mut()
                .zip([first, add, catch, start, file, group, second, link])
            {
                t.push(slow, d);
            }
        }
    }
    let mut rtt = rt.block_on(link_round_trips(20, ONE_WAY))?;
    let rtt = ms(quantile(&mut rtt, 0.5));
    let names = [
        "paths.first_message",
        "paths.contact_add",
        "paths.catch_up",
        "paths.send_after_start",
        "paths.file",
        "paths.group_first",
        "paths.second_text",
        "paths.device_link",
    ];
    for (name, times) in names.into_iter().zip(times) {
        let (extra, loopback) = times.extra();
        report.compare(name, ms(extra), "ms", "link round trip (100 ms)", rtt);
        report.value(&format!("{name}_loopback"), ms(loopback), "ms");
    }
    Ok(())
}

/// Bob adds Alice; Alice adds Bob and sends at once. Returns (contact add, send → Bob has
/// it).
fn first_message(
    dir: &Path,
    alice_relay: &str,
    bob_relay: &str,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(Duration, Duration)> {
    std::fs::create_dir_all(dir)?;
    let a = Node::init_and_start_with(dir, "alice", Some(alice_relay), &["--no-direct"])?;
    let b = Node::init_and_start_with(dir, "bob", Some(bob_relay), &["--no-direct"])?;
    let (la, lb) = (a.link()?, b.link()?);
    b.ok(&["contact", "add", &la, "--name", "Alice"])?;
    rt.block_on(async {
        let mut receiver = b.api().await?;
        receiver.subscribe().await?;
        let start = Instant::now();
        a.ok(&["contact", "add", &lb, "--name", "Bob"])?;
        let added = start.elapsed();
        let mut sender = a.api().await?;
        let start = Instant::now();
        sender
            .call("send", json!({"contact": "Bob", "text": "first"}))
            .await?;
        wait_text(&mut receiver, "first", WAIT).await?;
        Ok((added, start.elapsed()))
    })
}

/// Alice and Bob have a session; Alice stops, starts again and sends at once: until Bob
/// has it.
fn send_after_start(
    dir: &Path,
    alice_relay: &str,
    bob_relay: &str,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Duration> {
    let (mut a, b) = super::delivery::mailbox_pair(dir, alice_relay, bob_relay)?;
    text_arrives(rt, &a, (&b, "Bob"), "warm-up")?;
    a.stop()?;
    let start = Instant::now();
    a.restart()?;
    text_arrives(rt, &a, (&b, "Bob"), "after start")?;
    Ok(start.elapsed())
}

/// Alice and Bob have a session; Alice sends two texts back to back: from the second
/// `send` until Bob has it (the first is still on its way: its answer takes a round trip).
fn second_text(
    dir: &Path,
    alice_relay: &str,
    bob_relay: &str,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Duration> {
    let (a, b) = super::delivery::mailbox_pair(dir, alice_relay, bob_relay)?;
    text_arrives(rt, &a, (&b, "Bob"), "warm-up")?;
    rt.block_on(async {
        a.api()
            .await?
            .call("send", json!({"contact": "Bob", "text": "one"}))
            .await
            .map_err(anyhow::Error::from)
    })?;
    text_arrives(rt, &a, (&b, "Bob"), "two")
}

/// Ana's phone (on `phone_relay`'s loopback address) links a laptop that reaches the same
/// relay at `laptop_relay`: the time the laptop's `tern device link` takes to show its code,
/// to show the words once the phone ran `device add`, and to set up its home once answered.
fn device_link(dir: &Path, laptop_relay: &str, phone_relay: &str) -> anyhow::Result<Duration> {
    let phone = Node::init_and_start(dir, "ana", Some(phone_relay))?;
    let start = Instant::now();
    let mut link = Linking::start(&dir.join("laptop"), laptop_relay, "laptop")?;
    let to_code = start.elapsed();
    // The user carries the code over (not counted): the laptop's setup behind the code
    // goes on meanwhile, as it does for a person.
    std::thread::sleep(CARRY_CODE);
    let added = Instant::now();
    let words = phone.json(&["device", "add", &link.code])?["words"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let shown = link.next_words()?;
    let to_words = added.elapsed();
    anyhow::ensure!(
        shown == words,
        "the laptop shows {shown:?}, the phone {words:?}"
    );
    let answered = Instant::now();
    link.answer("y")?;
    link.line_after("linked: ")?;
    Ok(to_code + to_words + answered.elapsed())
}

/// Alice sends Bob a file of `size` pseudo-random bytes: until Bob's node has it.
fn file_transfer(
    dir: &Path,
    alice_relay: &str,
    bob_relay: &str,
    size: usize,
) -> anyhow::Result<Duration> {
    let (a, b) = super::delivery::mailbox_pair(dir, alice_relay, bob_relay)?;
    let src = dir.join("report.bin");
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&src, bytes)?;
    let start = Instant::now();
    let id = a
        .ok(&["send-file", "Bob", &src.to_string_lossy()])?
        .trim()
        .to_owned();
    wait_for("bob to download the file", WAIT, || {
        let list = b.json(&["file", "list"]).ok()?;
        list.as_array()?
            .iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "done")
            .then_some(())
    })?;
    Ok(start.elapsed())
}

/// Alice (on `alice_relay`) has sessions with Bob and Carol; she creates a group with both
/// and sends it a text: until both have it.
fn group_first(
    dir: &Path,
    alice_relay: &str,
    others_relay: &str,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Duration> {
    let (a, b) = super::delivery::mailbox_pair(dir, alice_relay, others_relay)?;
    let c = Node::init_and_start_with(dir, "carol", Some(others_relay), &["--no-direct"])?;
    link_pair(&a, &c, "Alice", "Carol")?;
    text_arrives(rt, &a, (&b, "Bob"), "to Bob")?;
    text_arrives(rt, &a, (&c, "Carol"), "to Carol")?;
    rt.block_on(async {
        let mut at_bob = b.api().await?;
        at_bob.subscribe().await?;
        let mut at_carol = c.api().await?;
        at_carol.subscribe().await?;
        let mut sender = a.api().await?;
        let start = Instant::now();
        let group = sender
            .call(
                "group_create",
                json!({"title": "Trip", "members": ["Bob", "Carol"]}),
            )
            .await?;
        let id = group["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("group_create gave no id: {group}"))?;
        sender
            .call("group_send", json!({"group": id, "text": "first in group"}))
            .await?;
        wait_text(&mut at_bob, "first in group", WAIT).await?;
        wait_text(&mut at_carol, "first in group", WAIT).await?;
        Ok(start.elapsed())
    })
}

/// `a` sends `to` (the node, and its name in `a`'s contacts) `text` through its API;
/// returns once it has it, with the time from the `send` call.
fn text_arrives(
    rt: &tokio::runtime::Runtime,
    a: &Node,
    (to, name): (&Node, &str),
    text: &str,
) -> anyhow::Result<Duration> {
    rt.block_on(async {
        let mut receiver = to.api().await?;
        receiver.subscribe().await?;
        let mut sender = a.api().await?;
        let start = Instant::now();
        sender
            .call("send", json!({"contact": name, "text": text}))
            .await?;
        wait_text(&mut receiver, text, WAIT).await?;
        Ok(start.elapsed())
    })
}
