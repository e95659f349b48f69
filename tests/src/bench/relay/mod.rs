//! `relay` suite: the real `tern-relay` binary on 127.0.0.1, driven through
//! `tern_relay::client`, against baselines measured in the same run.
//!
//! - `relay.deposit_throughput`: durable deposits/s, 1 KiB ciphertexts, [`SENDERS`]
//!   clients × [`IN_FLIGHT`] requests in flight, each deposit acknowledged only after its
//!   group commit (`synchronous=FULL`). Baselines: the same clients and frames against a
//!   raw libp2p request/response echo server on the same transport (transport ceiling), and
//!   a raw batched durable SQLite insert loop (storage ceiling).
//! - `relay.deposit_ack_p50` / `_p99`: ms from sending a deposit to its acknowledgement in
//!   that run, against the echo round trip.
//! - `relay.push_p50` / `_p99`: ms from sending a deposit (a `Deposit` request) to the
//!   connected, listening recipient receiving it, at [`PUSH_RATE`] deposits/s, against the
//!   echo round trip at the same rate; `relay.push_stream_p50` / `_p99` the same with the
//!   deposits on a deposit stream, as nodes send them, and `_vs_stream_echo` against the
//!   round trip of deposits on a stream to the deposit-stream echo at the same rate (two
//!   hops over the same transport, like a push, with no relay between them).
//! - `relay.link_*`: deposits over a simulated link with a 20 ms round trip (as requests,
//!   on an open deposit stream, and a new stream's first), against that round trip: one
//!   round trip each is 1.0 (see `link`).
//! - `relay.idle_connection_bytes`: growth of the relay's resident memory per idle
//!   connection with thousands of clients connected.
//! - `relay.flood_deposit_p50` / `_p99` / `_max`: ms from a legitimate sender's deposit to
//!   its acknowledgement while strangers flood the same mailbox, against the same legitimate
//!   load with no attacker on the same relay in the same run (20 s of it: `_max` is mostly
//!   the flood's first moment, when every attacker's first requests arrive at once). The victim registers one grant
//!   (`SetGrants`), so its mailbox is closed, and stays offline for its mail (connected, never
//!   listening, fetching or acknowledging: the worst case for filling). The legitimate sender,
//!   a fresh identity on its own thread and runtime, deposits 1 KiB under that grant at
//!   [`FLOOD_RATE`]/s (within the relay's default per-peer rates). 100 attacking identities,
//!   one connection each, [`ATTACK_IN_FLIGHT`] deposits in flight each, deposit 1 KiB of junk
//!   for as long as the legitimate sender runs, waiting only when told `RateLimited`; every
//!   fourth shows a made-up token, the others none. The relay keeps its defaults (mailbox of
//!   10,000 messages, 25 % shares, introductions share of 1,000, 200 per sender, 5 a second
//!   after a burst of 100, per-peer rates) except the per-IP limits, raised ([`FLOOD_CONFIG`]) so the attackers, all on
//!   127.0.0.1, stand for attackers on many addresses and meet the mailbox's rules rather
//!   than the per-IP limit; the victim and the legitimate sender connect over `::1`. The
//!   attackers run in a `tern-bench` process of their own (started with a hidden argument,
//!   [`ATTACK_ARG`]), so the legitimate sender's figures do not queue behind their tasks, at
//!   the lowest CPU priority (`nice -n19`), since they stand for other machines: the relay
//!   and the legitimate sender come first on the machine's cores, and the attackers take the
//!   rest (their `_attack_rate` shows how hard they pushed). The relay runs two network
//!   threads (`worker_threads = 2`), baseline and floods alike. Reported with it:
//!   `relay.flood_legit_refused` (the run fails if it is not 0), `_attacker_accepted`
//!   against the introductions share and `_attacker_accepted_max_per_identity`,
//!   `_attacker_refused_<code>` per refusal reason (`intro_full`, `no_grant`,
//!   `rate_limited`, `transport`…), `_attack_rate` (attacker deposits answered per second),
//!   and the victim's mailbox as the relay counts it afterwards (`Usage`):
//!   `_victim_mailbox` against its quota and `_victim_intro` against the introductions share.
//! - `relay.flood_ip_limited_*`: the same figures with the relay's default per-IP limits
//!   ([`FLOOD_IP_CONFIG`]: 2,000 requests/s, bursts of 4,000, shared by all the attackers on
//!   127.0.0.1), against the same baseline.
//! - `relay.pipelined_w<N>_*`: the same deposits on deposit streams (`/tern/deposit/1`), one
//!   per client with a window of N deposits in flight (N = [`IN_FLIGHT`], as many as the
//!   request/response run keeps in flight, and 64, the window a node keeps per relay):
//!   `_throughput` against the request/response deposits, `_vs_echo` and `_vs_sqlite`
//!   against the transport and storage ceilings, `_ack_p50` / `_p99` (from a deposit taking
//!   its place in the window to its acknowledgement) against the request/response
//!   deposits, and `_vs_mosquitto`, `_ack_p50_vs_mosquitto`, `_ack_p99_vs_mosquitto`
//!   against Mosquitto publishers that keep as many publishes in flight. The Mosquitto
//!   comparison runs on its own in [`MOSQUITTO_ROUNDS`] alternated rounds, each on a fresh
//!   relay and a fresh broker: `_vs_mosquitto` is the median rate of each, `_round<k>` each
//!   round's pair, and the ack quantiles are those of every round's acknowledgements.
//!   `_server_cpu_vs_mosquitto` is the CPU time (user and system, from `/proc`) the relay
//!   process spent per deposit over its rounds against the broker process's per publish,
//!   `_server_network_cpu_vs_mosquitto` the same less the relay's storage threads (writer,
//!   flusher, checkpointer), and `_client_cpu_vs_mosquitto` this process's (the load's
//!   clients) per deposit against the same during the broker's rounds: on a machine whose
//!   cores the clients share with the server, the rate is bound by their sum.
//!   `tern-bench relay-deposits` runs the deposit figures alone, `relay-push` the push
//!   and link figures.
//! - `relay.*_vs_mosquitto`: the same deposit load and paced live delivery against a
//!   Mosquitto broker (QoS 1, persistence on) when `mosquitto` is installed; reported as
//!   skipped otherwise. See `mosquitto`.
//!
//! The relay binary is found through `TERN_RELAY_BIN` or next to `tern-bench`: build both,
//! `cargo build --release -p tern-relay --features server -p tern-tests`.

use std::time::Duration;

use anyhow::Context;
use tern_relay::{
    Multiaddr,
    client::{self, Client, Event, Keypair},
};

use super::{Opts, Report, ms, quantile};

mod deposits;
mod echo;
mod flood;
mod idle;
mod link;
mod mosquitto;
mod pipeline;
mod process;
mod push;
mod sqlite;
mod writer;

pub use flood::{ATTACK_ARG, flood_attacker};
use process::RelayProcess;

/// Concurrent sending clients in the throughput run.
const SENDERS: usize = 32;
/// Requests each sender keeps in flight.
const IN_FLIGHT: usize = 4;
/// Ciphertext size.
const CIPHERTEXT: usize = 1024;
/// Mailboxes the throughput run deposits into, round robin.
const MAILBOXES: usize = 100;
/// Deposits per second in the push-latency run.
const PUSH_RATE: u64 = 1000;
/// Rows per transaction in the SQLite baseline (about what the relay's group commit
/// gathers with this many requests in flight).
const SQLITE_BATCH: usize = 128;
/// Alternated rounds of the pipelined deposits against Mosquitto (see `mosquitto`).
const MOSQUITTO_ROUNDS: usize = 3;
/// Deposits of each kind over the simulated link (see `link`).
const LINK_SAMPLES: usize = 30;
/// Longest wait for the relay to start or a client to connect.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `f` on the suite's runtime (two worker threads).
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

/// Runs the suite.
pub fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    block_on(run_async(opts, report, false))
}

/// Runs the deposit figures of the suite only (`relay-deposits`): `relay.deposit_*`,
/// `relay.pipelined_*` and their Mosquitto anchors.
pub fn run_deposits(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    block_on(run_async(opts, report, true))
}

/// Runs the storage writer alone against the raw SQLite loop (`relay-writer`): `relay.writer_*`.
pub fn run_writer(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    writer::run(opts, report)
}

/// Runs the flood figures of the suite only (`relay-flood`): `relay.flood_*` and
/// `relay.flood_ip_limited_*`.
pub fn run_flood(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    block_on(flood::run(opts, report))
}

/// `deposits_only`: the deposit figures and their baselines, nothing else (`relay-deposits`).
async fn run_async(opts: &Opts, report: &mut Report, deposits_only: bool) -> anyhow::Result<()> {
    let deposits = opts.size(100_000, 1_000);
    let push_messages = opts.size(5_000, 200);
    let idle = opts.size(3_000, 50);

    let sqlite = tokio::task::spawn_blocking(move || sqlite::baseline(deposits)).await??;
    let echo = echo::echo_server()?;
    let relay = RelayProcess::start()?;

    let rounds = opts.size(MOSQUITTO_ROUNDS, 1);
    let (relay_rate, mut relay_lat) =
        deposits::run(report, &relay, &echo, sqlite, deposits).await?;
    if deposits_only {
        drop(relay);
        return mosquitto::run(report, deposits, None, relay_rate, &mut relay_lat, rounds).await;
    }

    // Deposit → live delivery latency at a fixed rate.
    push_figures(report, &relay, &echo, push_messages).await?;
    link::figures(report, &relay, opts.size(LINK_SAMPLES, 3)).await?;
    drop(relay);

    // Memory per idle connection, on a fresh relay.
    let fresh = RelayProcess::start()?;
    let per_conn = idle::connection_bytes(&fresh, idle).await?;
    report.value("relay.idle_connection_bytes", per_conn, "bytes");
    drop(fresh);

    flood::run(opts, report).await?;

    mosquitto::run(
        report,
        deposits,
        Some(push_messages),
        relay_rate,
        &mut relay_lat,
        rounds,
    )
    .await?;
    Ok(())
}

/// The push figures of the suite only (`relay-push`): `relay.push_*`, `relay.push_stream_*`
/// and their Mosquitto anchors, and `relay.link_*`.
pub fn run_push(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    block_on(async {
        let push_messages = opts.size(5_000, 200);
        let echo = echo::echo_server()?;
        let relay = RelayProcess::start()?;
        push_figures(report, &relay, &echo, push_messages).await?;
        link::figures(report, &relay, opts.size(LINK_SAMPLES, 3)).await?;
        drop(relay);
        mosquitto::run_push(report, push_messages, opts.size(MOSQUITTO_ROUNDS, 1)).await
    })
}

/// Deposit → live delivery latency at [`PUSH_RATE`] on `relay`, against the echo round trip
/// at the same rate, reported.
async fn push_figures(
    report: &mut Report,
    relay: &RelayProcess,
    echo: &echo::Server,
    push_messages: usize,
) -> anyhow::Result<()> {
    let stream_echo = echo::stream_echo()?;
    let mut push =
        push::latency(&relay.addr, (&echo.addr, &stream_echo.addr), push_messages).await?;
    for (prefix, lat) in &mut push.runs {
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            report.compare(
                &format!("{prefix}_{label}"),
                ms(quantile(lat, q)),
                "ms",
                "libp2p rr echo at same rate",
                ms(quantile(&mut push.echo, q)),
            );
        }
    }
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        let lat = &mut push.runs[1].1;
        report.compare(
            &format!("relay.push_stream_{label}_vs_stream_echo"),
            ms(quantile(lat, q)),
            "ms",
            "deposit-stream echo at same rate",
            ms(quantile(&mut push.stream_echo, q)),
        );
    }
    Ok(())
}

/// Connects a relay client with a fresh identity.
async fn connect(addr: &Multiaddr) -> anyhow::Result<(Client, tokio::sync::mpsc::Receiver<Event>)> {
    Client::connect(
        Keypair::generate_ed25519(),
        addr.clone(),
        client::Config::default(),
    )
    .await
    .with_context(|| format!("connect to {addr}"))
}
