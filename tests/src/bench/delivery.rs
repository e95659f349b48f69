//! The `delivery` suite: Tern messages between two real `tern up` nodes on loopback.
//!
//! - `delivery.direct_p50` / `_p99`: ms from calling `send` on the sender's API to the
//!   recipient's `message` event, at a steady rate, over a direct connection.
//! - `delivery.mailbox_p50` / `_p99`: the same with both nodes run `--no-direct`, so every
//!   message is deposited at the relay and pushed to the recipient.
//! - `delivery.direct_send_call_p50` / `mailbox_…`: of that, the `send` call itself (the
//!   sender encrypts, commits message, ratchet and outbox, and answers).
//! - `delivery.throughput_direct` / `_mailbox`: messages per second, sent back to back, until
//!   the recipient has stored the last one.
//! - `delivery.burst_send_api`: texts per second a client gets accepted when it pipelines a
//!   burst on one API connection (each one encrypted, committed with its ratchet state and
//!   outbox row, and answered), against the relay's deposits with one in flight.
//! - `delivery.catch_up`: a device that was offline while N texts (10,000 in a full run) were
//!   sent to it: messages per second from starting `tern up` until all are stored, against
//!   the relay's raw fetch rate of as many messages in the same run (paged, no decryption).
//!
//! - `delivery.burst_over_link`: ms until a burst of texts (200 in a full run) from a node
//!   whose link to the relay has a 50 ms round trip is stored by its online recipient,
//!   against that round trip: about the burst's round trips.
//!
//! Baseline in the same run: the raw relay path — one `tern-relay` client deposits, another
//! listening client receives the push (no encryption, no node, no store) — at the same rate,
//! and its deposit throughput with one request in flight.

use std::time::{Duration, Instant};
use tern_relay::rpc::Requests as _;

use serde_json::json;
use tern_node::{api::client::ApiClient, types::Event};
use tern_relay::client::{Client, Config, Event as RelayEvent, Keypair};

use super::{Opts, Report, ms, per_sec, quantile};
use crate::support::{Node, Relay, WAIT, link_pair, wait_direct, wait_for, wait_outbox_empty};

/// Relay config for the bench: rate limits and mailbox quotas far above anything it sends
/// (the raw baselines deposit without a grant, as introductions).
pub(crate) const UNLIMITED: &str = "[rate]\nrequests_per_sec = 1000000.0\nrequests_burst = 1000000.0\ndeposits_per_sec = 1000000.0\ndeposits_burst = 1000000.0\nip_requests_per_sec = 1000000.0\nip_requests_burst = 1000000.0\n[connections]\nmax_per_ip = 10000\nip_connections_per_sec = 1000000.0\nip_connections_burst = 1000000.0\n[mailbox]\nmax_messages = 100000000\nmax_bytes = 1000000000000\nintro_max_messages = 100000000\nintro_max_bytes = 1000000000000\nintro_per_sender = 100000000\n";

/// Messages per second in the latency runs.
const RATE: u64 = 50;

pub(crate) fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let latency_n = opts.size(1_000, 20);
    let burst_n = opts.size(2_000, 30);
    let catch_up_n = opts.size(10_000, 200);
    let dir = tempfile::tempdir()?;
    // Rate limits raised far above the load so they measure the path, not the limiter.
    let relay = Relay::start(&dir.path().join("relay"), UNLIMITED)?;
    let rt = tokio::runtime::Runtime::new()?;

    let (mut base_lat, base_rate) = rt.block_on(raw_relay(&relay.addr, latency_n, burst_n))?;
    let base_fetch = rt.block_on(raw_fetch(&relay.addr, catch_up_n))?;

    let mut results = Vec::new();
    for (label, extra) in [("direct", &[][..]), ("mailbox", &["--no-direct"][..])] {
        let sub = dir.path().join(label);
        std::fs::create_dir_all(&sub)?;
        let a = Node::init_and_start_with(&sub, "alice", Some(&relay.addr), extra)?;
        let b = Node::init_and_start_with(&sub, "bob", Some(&relay.addr), extra)?;
        link_pair(&a, &b, "Alice", "Bob")?;
        if label == "direct" {
            wait_direct(&a, &b, WAIT)?;
        }
        let (lat, calls, rate) = rt.block_on(node_path(&a, &b, latency_n, burst_n))?;
        results.push((label, lat, calls, rate));
    }
    let (api_rate, catch_up) = catch_up(dir.path(), &relay.addr, &rt, catch_up_n)?;
    let (burst, rtt) = burst_over_link(dir.path(), &relay.addr, &rt, opts.size(200, 10))?;
    report.compare(
        "delivery.burst_over_link",
        ms(burst),
        "ms",
        "link round trip (50 ms)",
        ms(rtt),
    );
    report.compare(
        "delivery.burst_send_api",
        api_rate,
        "msg/s",
        "relay deposits, 1 in flight",
        base_rate,
    );
    report.compare(
        "delivery.catch_up",
        catch_up,
        "msg/s",
        "relay fetch, paged",
        base_fetch,
    );
    let base_p50 = ms(quantile(&mut base_lat, 0.5));
    let base_p99 = ms(quantile(&mut base_lat, 0.99));
    for (label, mut lat, mut calls, rate) in results {
        // How much of the latency is the sender's own work (encrypt, commit, API answer).
        report.value(
            &format!("delivery.{label}_send_call_p50"),
            ms(quantile(&mut calls, 0.5)),
            "ms",
        );
        report.compare(
            &format!("delivery.{label}_p50"),
            ms(quantile(&mut lat, 0.5)),
            "ms",
            "relay deposit->push p50",
            base_p50,
        );
        report.compare(
            &format!("delivery.{label}_p99"),
            ms(quantile(&mut lat, 0.99)),
            "ms",
            "relay deposit->push p99",
            base_p99,
        );
        report.compare(
            &format!("delivery.throughput_{label}"),
            rate,
            "msg/s",
            "relay deposits, 1 in flight",
            base_rate,
        );
    }
    Ok(())
}

/// Latencies at a steady rate, then back-to-back throughput, from A's API to B's events.
async fn node_path(
    a: &Node,
    b: &Node,
    n: usize,
    burst: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, f64)> {
    let mut sender = a.api().await?;
    let mut receiver = b.api().await?;
    receiver.subscribe().await?;
    // Warm up: the first message sets up the session.
    sender
        .call("send", json!({"contact": "Bob", "text": "warm-up"}))
        .await?;
    wait_message(&mut receiver, "warm-up").await?;

    let mut lat = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for i in 0..n {
        tick.tick().await;
        let text = format!("lat-{i}");
        let t = Instant::now();
        sender
            .call("send", json!({"contact": "Bob", "text": text}))
            .await?;
        calls.push(t.elapsed());
        wait_message(&mut receiver, &text).await?;
        lat.push(t.elapsed());
    }

    let start = Instant::now();
    let last = format!("burst-{}", burst - 1);
    let send_all = async {
        for i in 0..burst {
            sender
                .call(
                    "send",
                    json!({"contact": "Bob", "text": format!("burst-{i}")}),
                )
                .await?;
        }
        anyhow::Ok(())
    };
    let (sent, got) = tokio::join!(send_all, wait_message_long(&mut receiver, &last));
    sent?;
    got?;
    Ok((lat, calls, per_sec(burst, start.elapsed())))
}

async fn wait_message(api: &mut ApiClient, text: &str) -> anyhow::Result<()> {
    wait_text(api, text, WAIT).await
}

async fn wait_message_long(api: &mut ApiClient, text: &str) -> anyhow::Result<()> {
    wait_text(api, text, Duration::from_secs(300)).await
}

pub(crate) async fn wait_text(
    api: &mut ApiClient,
    text: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("no message {text:?} within {timeout:?}");
        }
        if let Event::Message { message } = api.next_event(left).await?
            && message.text == text
        {
            return Ok(());
        }
    }
}

/// Bob is offline while Alice pipelines `n` texts to him over her API (the first figure: how
/// fast they are accepted); once her outbox has drained to the relay, Bob starts, and the
/// second figure is how fast he stores them all, from `tern up` to the last one.
fn catch_up(
    dir: &std::path::Path,
    relay: &str,
    rt: &tokio::runtime::Runtime,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let (accepted, stored) = backlog_catch_up(
        &dir.join("catch-up"),
        (relay, relay),
        rt,
        n,
        Duration::from_secs(600),
    )?;
    Ok((per_sec(n, accepted), per_sec(n, stored)))
}

/// Alice and Bob in `dir` ([`mailbox_pair`], at `relays`: Alice's, Bob's). Bob is offline
/// while Alice pipelines `n` texts to him over her API; once her outbox has drained to the
/// relay, Bob starts. Returns how long Alice's API took to accept them, and how long Bob
/// took from `tern up` to store them all (exactly `n`: more would be duplicates). Each wait
/// is bounded by `timeout`.
pub(crate) fn backlog_catch_up(
    dir: &std::path::Path,
    (alice_relay, bob_relay): (&str, &str),
    rt: &tokio::runtime::Runtime,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<(Duration, Duration)> {
    let (a, mut b) = mailbox_pair(dir, alice_relay, bob_relay)?;
    b.stop()?;
    let accepted = rt.block_on(send_burst(&a, "Bob", "catch-up", n))?;
    wait_outbox_empty(&a, timeout)?;
    let start = Instant::now();
    b.restart()?;
    let unread = wait_for("bob to store the backlog", timeout, || {
        let convs = b.json(&["conversations"]).ok()?;
        let unread = convs.as_array()?.first()?["unread"].as_u64()?;
        (unread as usize >= n).then_some(unread)
    })?;
    let stored = start.elapsed();
    anyhow::ensure!(
        unread as usize == n,
        "bob stored {unread} of {n}: duplicates"
    );
    Ok((accepted, stored))
}

/// Alice and Bob in `dir`, both `--no-direct` (every message goes through the mailbox),
/// Alice reaching the relay at `alice_relay` and Bob at `bob_relay`, linked.
pub(crate) fn mailbox_pair(
    dir: &std::path::Path,
    alice_relay: &str,
    bob_relay: &str,
) -> anyhow::Result<(Node, Node)> {
    std::fs::create_dir_all(dir)?;
    let a = Node::init_and_start_with(dir, "alice", Some(alice_relay), &["--no-direct"])?;
    let b = Node::init_and_start_with(dir, "bob", Some(bob_relay), &["--no-direct"])?;
    link_pair(&a, &b, "Alice", "Bob")?;
    Ok((a, b))
}

/// One-way delay of the sender's link in `burst_over_link` (a 50 ms round trip).
const LINK_ONE_WAY: Duration = Duration::from_millis(25);

/// Alice reaches the relay over a link with a real round trip ([`LINK_ONE_WAY`] each way,
/// through a delay proxy), Bob over loopback, both `--no-direct`. Alice sends `n` texts
/// pipelined on her API; returns how long until Bob has stored them all, and the link's
/// round trip measured in the same run. With deposits pipelined the burst costs a few
/// round trips; one deposit at a time would cost `n`.
fn burst_over_link(
    dir: &std::path::Path,
    relay: &str,
    rt: &tokio::runtime::Runtime,
    n: usize,
) -> anyhow::Result<(Duration, Duration)> {
    use crate::support::link::{delay_proxy, link_round_trips, tcp_target};
    let proxy = rt.block_on(delay_proxy(tcp_target(relay)?, LINK_ONE_WAY))?;
    let via = crate::support::link::via(relay, proxy.addr)?;
    let (a, b) = mailbox_pair(&dir.join("link"), &via, relay)?;
    let took = rt.block_on(async {
        let mut sender = a.api().await?;
        let mut receiver = b.api().await?;
        receiver.subscribe().await?;
        // The session first, so the burst measures deposits only.
        sender
            .call("send", json!({"contact": "Bob", "text": "warm-up"}))
            .await?;
        wait_message(&mut receiver, "warm-up").await?;
        let start = Instant::now();
        send_burst(&a, "Bob", "link", n).await?;
        wait_message_long(&mut receiver, &format!("link {}", n - 1)).await?;
        anyhow::Ok(start.elapsed())
    })?;
    let mut rtt = rt.block_on(link_round_trips(20, LINK_ONE_WAY))?;
    Ok((took, quantile(&mut rtt, 0.5)))
}

/// Sends `n` texts (`"{prefix} {i}"`) from `node` to `contact`, pipelined on one API
/// connection; returns how long until every one was accepted.
pub(crate) async fn send_burst(
    node: &Node,
    contact: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let mut api = node.api().await?;
    let texts: Vec<String> = (0..n).map(|i| format!("{prefix} {i}")).collect();
    let calls: Vec<(&str, serde_json::Value)> = texts
        .iter()
        .map(|t| ("send", json!({"contact": contact, "text": t})))
        .collect();
    let start = Instant::now();
    for r in api.call_many(&calls).await? {
        r?;
    }
    Ok(start.elapsed())
}

/// The relay's raw fetch rate: `n` small messages deposited for a fresh client, then read
/// back page by page as a node drains its mailbox (no decryption, no store).
pub(crate) async fn raw_fetch(addr: &str, n: usize) -> anyhow::Result<f64> {
    let addr: tern_relay::Multiaddr = addr.parse()?;
    let (sender, _) =
        Client::connect(Keypair::generate_ed25519(), addr.clone(), Config::default()).await?;
    let (receiver, _) =
        Client::connect(Keypair::generate_ed25519(), addr, Config::default()).await?;
    let to = receiver.local_peer_id();
    for _ in 0..n {
        sender.deposit(vec![to], None, vec![7u8; 200]).await?;
    }
    let start = Instant::now();
    let (mut after, mut got) = (0, 0);
    loop {
        let (page, more) = receiver.fetch(after, 256).await?;
        got += page.len();
        if let Some(last) = page.last() {
            after = last.id;
        }
        if !more || page.is_empty() {
            break;
        }
    }
    anyhow::ensure!(got == n, "fetched {got} of {n}");
    Ok(per_sec(n, start.elapsed()))
}

/// The raw relay path: deposit → push latency at [`RATE`], and deposits/s one at a time.
pub(crate) async fn raw_relay(
    addr: &str,
    n: usize,
    burst: usize,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let addr: tern_relay::Multiaddr = addr.parse()?;
    let (sender, _) =
        Client::connect(Keypair::generate_ed25519(), addr.clone(), Config::default()).await?;
    let (receiver, mut events) =
        Client::connect(Keypair::generate_ed25519(), addr, Config::default()).await?;
    receiver.listen(true).await?;
    let to = receiver.local_peer_id();
    let mut lat = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for _ in 0..n {
        tick.tick().await;
        let t = Instant::now();
        sender.deposit(vec![to], None, vec![7u8; 200]).await?;
        loop {
            match tokio::time::timeout(WAIT, events.recv()).await {
                Ok(Some(RelayEvent::Delivered(msgs))) => {
                    let ids: Vec<u64> = msgs.iter().map(|m| m.id).collect();
                    lat.push(t.elapsed());
                    receiver.ack_pushed(ids).await?;
                    break;
                }
                Ok(Some(_)) => {}
                _ => anyhow::bail!("no push from the relay"),
            }
        }
    }
    let start = Instant::now();
    for _ in 0..burst {
        sender.deposit(vec![to], None, vec![7u8; 200]).await?;
    }
    Ok((lat, per_sec(burst, start.elapsed())))
}
