//! The `group` suite: one real `tern up` node sends to a group of 500 — itself and 499
//! simulated member devices ([`crate::sim`]), each on its own connection to a real
//! `tern-relay` on loopback, decrypting for real.
//!
//! - `group.last_recipient_p50` / `_p99`: ms from calling `group_send` on the node's API until
//!   the *last* of the members has decrypted the message, over a steady series (one message
//!   every [`GROUP_INTERVAL`], each awaited before the next).
//! - `group.sender_cpu_per_message`: the `tern` process's CPU time (user + system, from
//!   `/proc/<pid>/stat`) over the series, per message.
//! - `group.relay_bytes_per_message`: ciphertext bytes the relay stored per message (its
//!   `tern_relay_deposit_bytes_total` counter; a group message is stored once and referenced
//!   from every member's mailbox).
//! - `group.send_call_p50`: of the latency, the `group_send` call itself.
//! - `group.sender_idle_cpu_per_sec`: the node's CPU time per second while nothing is sent
//!   (heartbeats, presence, polls), which the CPU figures include over their series.
//! - `group.first_message_last_recipient`: ms until the last member decrypted the group's
//!   first message, which carries the sender key to each member over Olm (no baseline);
//!   `group.first_message_half_recipients` until half of them had.
//!
//! - `group.first_recipient_p50`: ms until the *first* member has decrypted it.
//! - `group.raw_relay_fanout_last_p50` / `_p99`: the floor under the latency — bare relay
//!   clients, one per member, listening on the same relay (alongside the members): one
//!   client deposits a ciphertext of the group message's size for all of them and the time
//!   until the last one has it pushed is taken. No encryption, no node, no store. With it,
//!   `group.raw_relay_deposit_ack_p50` (until the deposit is durable) and
//!   `group.raw_relay_fanout_first_p50` (until the first recipient has it). The clients get
//!   their pushes and acknowledge them on live streams (`/tern/live/1`), as members do.
//! - `group.raw_relay_cpu_per_message`: the relay process's CPU time per message of that
//!   fan-out, acknowledgements included.
//!
//!   Baseline for these two, in the same run on the same relay: another 499 bare clients
//!   that listen without a live stream, so every push is a `Deliver` request and every
//!   acknowledgement an `Ack` request (what every client did before live streams).
//!
//! Baseline in the same run, on the same node, relay and members: the naive client — the
//! same text sent pairwise to each member with the API `send` (one call per contact, one Olm
//! ciphertext and one deposit per member device), measured the same three ways per logical
//! message. Both runs start after the sessions and the sender key are in place (the group's
//! creation and a warm-up message), so they measure steady state.
//!
//! The group series is 100 messages after a warm-up, so it includes exactly one sender-key
//! rotation (every 100 messages, tern-crypto's default): one message of the series goes
//! pairwise to every member with the new key, as it does once per 100 in steady use.
//!
//! `--quick` uses 20 members and a handful of messages.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tern_relay::rpc::Requests as _;

use anyhow::{Context, anyhow};
use serde_json::json;
use tern_node::{
    Home,
    api::{client::ApiClient, read_node_file},
};
use tern_relay::{
    client::{Client, Config, Event, Keypair, Proto},
    libp2p::futures::future::join_all,
    wire::mailbox,
};

use super::{Opts, Report, ms, quantile};
use crate::{
    sim::{SimFleet, Tally},
    support::{Node, Relay, free_port, relay_metric},
};

/// Time between the starts of two group messages in the series.
const GROUP_INTERVAL: Duration = Duration::from_millis(200);
/// Size of a group text message's ciphertext as the relay stores it (a short text), for the
/// raw fan-out floor.
const GROUP_CIPHERTEXT_BYTES: usize = 475;
/// Longest wait for one message to reach every member.
const REACH_ALL: Duration = Duration::from_secs(120);
/// Longest wait for one API call that touches every member (creating the group).
const BIG_CALL: Duration = Duration::from_secs(600);

fn relay_config(metrics_port: u16) -> String {
    format!(
        "metrics = \"127.0.0.1:{metrics_port}\"\n\
         [rate]\nrequests_per_sec = 1000000.0\nrequests_burst = 1000000.0\n\
         deposits_per_sec = 1000000.0\ndeposits_burst = 1000000.0\n\
         ip_requests_per_sec = 1000000.0\nip_requests_burst = 1000000.0\n\
         [connections]\nmax_per_ip = 10000\nip_connections_per_sec = 1000000.0\nip_connections_burst = 1000000.0\n\
         [mailbox]\nmax_messages = 1000000\nintro_max_messages = 1000000\n\
         intro_max_bytes = 1000000000000\nintro_per_sender = 1000000\n"
    )
}

/// What one series measured.
struct Series {
    /// Call → first member decrypted, per message.
    first: Vec<Duration>,
    /// Call → last member decrypted, per message.
    last: Vec<Duration>,
    /// The API call(s) for one logical message.
    calls: Vec<Duration>,
    /// Sender CPU per message, ms.
    cpu_ms: f64,
    /// Relay ciphertext bytes stored per message.
    relay_bytes: f64,
}

pub(crate) fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let members = opts.size(499, 20);
    let group_n = opts.size(100, 5);
    let pairwise_n = opts.size(20, 2);
    let dir = tempfile::tempdir()?;
    let metrics_port = free_port();
    let relay = Relay::start(&dir.path().join("relay"), &relay_config(metrics_port))?;
    let node = Node::init_and_start(dir.path(), "sender", Some(&relay.addr))?;
    let link = node.link()?;
    let pid = read_node_file(&Home::new(&node.home).node_file_path())
        .context("the node's node.json")?
        .pid;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let fleet = SimFleet::start(&relay.addr, members, "member").await?;
        fleet.trust(&link)?;
        let mut api = node.api().await?;
        for (i, l) in fleet.links().iter().enumerate() {
            api.call(
                "contact.add",
                json!({"link": l, "name": format!("member{i}")}),
            )
            .await?;
        }
        let users: Vec<String> = fleet.sims.iter().map(|s| s.user.to_string()).collect();
        let info = tokio::time::timeout(
            BIG_CALL,
            api.call("group_create", json!({"title": "Bench", "members": users})),
        )
        .await
        .map_err(|_| anyhow!("group_create did not answer in time"))??;
        let group = info["id"]
            .as_str()
            .ok_or_else(|| anyhow!("group_create returned no id: {info}"))?
            .to_owned();
        // Warm-up: the sender key goes out with this one (pairwise, to every member).
        let start = Instant::now();
        api.call("group_send", json!({"group": group, "text": "warm-up"}))
            .await?;
        let at = fleet.tally.wait("warm-up", members, BIG_CALL).await?;
        let first = at
            .iter()
            .max()
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(start));
        let mut arrivals: Vec<Duration> = at
            .iter()
            .map(|t| t.saturating_duration_since(start))
            .collect();
        arrivals.sort();
        let first_half = arrivals
            .get(arrivals.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or_default();

        // The node's background work (heartbeats, presence, mailbox polls) over a quiet
        // spell, to read the per-message CPU figures against.
        let quiet = Duration::from_secs(opts.size(5, 1) as u64);
        let idle_before = cpu_ticks(pid)?;
        tokio::time::sleep(quiet).await;
        let idle_ms = cpu_ticks(pid)?.saturating_sub(idle_before) as f64 * 1000.0
            / clock_ticks_per_sec()
            / quiet.as_secs_f64();
        let group_series = series(&mut api, &fleet, pid, metrics_port, group_n, |i| {
            let text = format!("group-{i}");
            vec![("group_send", json!({"group": group, "text": text}))]
        })
        .await?;
        let pairwise_series = series(&mut api, &fleet, pid, metrics_port, pairwise_n, |i| {
            let text = format!("pairwise-{i}");
            (0..members)
                .map(|m| {
                    (
                        "send",
                        json!({"contact": format!("member{m}"), "text": text}),
                    )
                })
                .collect()
        })
        .await?;
        let relay_pid = relay
            .pid()
            .ok_or_else(|| anyhow!("the relay is not running"))?;
        let mut floor = raw_fanout(
            &relay.addr,
            relay_pid,
            members,
            group_n,
            PushPath::LiveStream,
        )
        .await?;
        let mut floor_requests =
            raw_fanout(&relay.addr, relay_pid, members, group_n, PushPath::Requests).await?;
        let stats = fleet.stats();
        if stats.failures > 0 {
            anyhow::bail!("members failed to decrypt {} ciphertexts", stats.failures);
        }
        report.value("group.first_message_last_recipient", ms(first), "ms");
        report.value("group.first_message_half_recipients", ms(first_half), "ms");
        report.value("group.sender_idle_cpu_per_sec", idle_ms, "ms");
        let q = |name: &str, samples: &mut Vec<Duration>, q: f64, report: &mut Report| {
            report.value(name, ms(quantile(samples, q)), "ms");
        };
        q(
            "group.raw_relay_deposit_ack_p50",
            &mut floor.ack,
            0.5,
            report,
        );
        q(
            "group.raw_relay_fanout_first_p50",
            &mut floor.first,
            0.5,
            report,
        );
        for (name, q) in [
            ("group.raw_relay_fanout_last_p50", 0.5),
            ("group.raw_relay_fanout_last_p99", 0.99),
        ] {
            report.compare(
                name,
                ms(quantile(&mut floor.last, q)),
                "ms",
                "pushes and acks as requests",
                ms(quantile(&mut floor_requests.last, q)),
            );
        }
        report.compare(
            "group.raw_relay_cpu_per_message",
            floor.relay_cpu_ms,
            "ms",
            "pushes and acks as requests",
            floor_requests.relay_cpu_ms,
        );
        report_rows(report, members, group_series, pairwise_series);
        anyhow::Ok(())
    })
}

fn report_rows(report: &mut Report, members: usize, mut g: Series, mut p: Series) {
    report.value("group.members", (members + 1) as f64, "members");
    report.value("group.send_call_p50", ms(quantile(&mut g.calls, 0.5)), "ms");
    report.value(
        "group.first_recipient_p50",
        ms(quantile(&mut g.first, 0.5)),
        "ms",
    );
    report.compare(
        "group.last_recipient_p50",
        ms(quantile(&mut g.last, 0.5)),
        "ms",
        "pairwise to each, last p50",
        ms(quantile(&mut p.last, 0.5)),
    );
    report.compare(
        "group.last_recipient_p99",
        ms(quantile(&mut g.last, 0.99)),
        "ms",
        "pairwise to each, last p99",
        ms(quantile(&mut p.last, 0.99)),
    );
    report.compare(
        "group.sender_cpu_per_message",
        g.cpu_ms,
        "ms",
        "pairwise to each member",
        p.cpu_ms,
    );
    report.compare(
        "group.relay_bytes_per_message",
        g.relay_bytes,
        "bytes",
        "pairwise to each member",
        p.relay_bytes,
    );
}

/// Sends `n` logical messages (each the API calls `calls(i)` make, all carrying the text of
/// message `i`), each awaited until every member has decrypted it, and measures them.
async fn series<F>(
    api: &mut ApiClient,
    fleet: &SimFleet,
    pid: u32,
    metrics_port: u16,
    n: usize,
    calls: F,
) -> anyhow::Result<Series>
where
    F: Fn(usize) -> Vec<(&'static str, serde_json::Value)>,
{
    let members = fleet.sims.len();
    let mut last = Vec::with_capacity(n);
    let mut first = Vec::with_capacity(n);
    let mut call_times = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(GROUP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bytes_before = relay_deposit_bytes(metrics_port)?;
    let cpu_before = cpu_ticks(pid)?;
    for i in 0..n {
        tick.tick().await;
        let requests = calls(i);
        let text = requests
            .first()
            .and_then(|(_, p)| p["text"].as_str())
            .unwrap_or_default()
            .to_owned();
        let start = Instant::now();
        for (method, params) in requests {
            api.call(method, params).await?;
        }
        call_times.push(start.elapsed());
        let at = fleet.tally.wait(&text, members, REACH_ALL).await?;
        let latest = at.iter().max().copied().unwrap_or(start);
        let earliest = at.iter().min().copied().unwrap_or(start);
        last.push(latest.saturating_duration_since(start));
        first.push(earliest.saturating_duration_since(start));
        fleet.tally.forget(&text);
    }
    let cpu_after = cpu_ticks(pid)?;
    let bytes_after = relay_deposit_bytes(metrics_port)?;
    let per_tick_ms = 1000.0 / clock_ticks_per_sec();
    Ok(Series {
        first,
        last,
        calls: call_times,
        cpu_ms: (cpu_after.saturating_sub(cpu_before)) as f64 * per_tick_ms / n as f64,
        relay_bytes: bytes_after.saturating_sub(bytes_before) as f64 / n as f64,
    })
}

/// utime + stime of a process, in clock ticks (every thread).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux if that fails).
fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The relay's `tern_relay_deposit_bytes_total` from its metrics endpoint.
fn relay_deposit_bytes(port: u16) -> anyhow::Result<u64> {
    Ok(relay_metric(port, "tern_relay_deposit_bytes_total")? as u64)
}

/// How the bare clients of [`raw_fanout`] get their pushes and acknowledge them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushPath {
    /// On the live stream (`/tern/live/1`), as the node and the simulated members do.
    LiveStream,
    /// As `Deliver` requests, acknowledged with `Ack` requests: the clients listen with a
    /// bare `Listen` request and never open a live stream.
    Requests,
}

/// The relay's fan-out floor: `members` bare clients listen, one deposit names them all, and
/// the time until the last has it pushed, `n` times at [`GROUP_INTERVAL`]; with the relay
/// process's CPU time per message.
async fn raw_fanout(
    relay: &str,
    relay_pid: u32,
    members: usize,
    n: usize,
    path: PushPath,
) -> anyhow::Result<RawFanout> {
    let addr: tern_relay::Multiaddr = relay.parse()?;
    let tally = Arc::new(Tally::default());
    let mut receivers = Vec::with_capacity(members);
    let mut tasks = Vec::with_capacity(members);
    for start in (0..members).step_by(32) {
        let batch = (start..members.min(start + 32))
            .map(|_| Client::connect(Keypair::generate_ed25519(), addr.clone(), Config::default()));
        for r in join_all(batch).await {
            let (client, mut events) = r?;
            match path {
                PushPath::LiveStream => client.listen(true).await?,
                PushPath::Requests => {
                    let listen = mailbox::Request::Listen { enabled: true }.encode()?;
                    client.raw(Proto::Mailbox, listen).await?;
                }
            }
            let (c, tally) = (client.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    if let Event::Delivered(mail) = ev {
                        let at = Instant::now();
                        let ids = mail.iter().map(|m| m.id).collect();
                        for m in &mail {
                            tally.record(&String::from_utf8_lossy(&m.ciphertext[..16]), at);
                        }
                        let _ = match path {
                            PushPath::LiveStream => c.ack_pushed(ids).await,
                            PushPath::Requests => c.ack(ids).await.map(drop),
                        };
                    }
                }
            }));
            receivers.push(client);
        }
    }
    let peers: Vec<_> = receivers.iter().map(Client::local_peer_id).collect();
    let (sender, _) = Client::connect(Keypair::generate_ed25519(), addr, Config::default()).await?;
    let mut tick = tokio::time::interval(GROUP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = RawFanout::default();
    let cpu_before = cpu_ticks(relay_pid)?;
    for i in 0..n {
        tick.tick().await;
        let tag = format!("raw-fanout-{i:06}");
        let mut body = tag.clone().into_bytes();
        body.resize(16, b' ');
        let tag = String::from_utf8_lossy(&body).into_owned();
        body.resize(GROUP_CIPHERTEXT_BYTES, 0x5a);
        let start = Instant::now();
        sender.deposit(peers.clone(), None, body).await?;
        out.ack.push(start.elapsed());
        let at = tally.wait(&tag, members, REACH_ALL).await?;
        let since =
            |t: Option<&Instant>| t.map_or(Duration::ZERO, |t| t.saturating_duration_since(start));
        out.first.push(since(at.iter().min()));
        out.last.push(since(at.iter().max()));
        tally.forget(&tag);
    }
    out.relay_cpu_ms = cpu_ticks(relay_pid)?.saturating_sub(cpu_before) as f64 * 1000.0
        / clock_ticks_per_sec()
        / n as f64;
    for t in tasks {
        t.abort();
    }
    Ok(out)
}

/// What the raw fan-out measured, per message.
#[derive(Default)]
struct RawFanout {
    /// Deposit call → durable acknowledgement.
    ack: Vec<Duration>,
    /// Deposit call → first recipient has it.
    first: Vec<Duration>,
    /// Deposit call → last recipient has it.
    last: Vec<Duration>,
    /// The relay process's CPU time per message (pushes and acknowledgements included).
    relay_cpu_ms: f64,
}
