//! The relay's storage writer alone (`relay-writer`): deposits submitted straight to
//! `tern_relay::server::storage` (the relay's own writer thread, group commit, WAL, every
//! deposit answered only after its commit was flushed to disk, quotas and shares checked), against the raw batched durable SQLite insert loop, the two alternated in one
//! process so that the machine's load hits both alike.
//!
//! - `relay.writer_throughput`: deposits/s of [`CIPHERTEXT`] bytes from [`SENDERS`] senders
//!   into [`MAILBOXES`] mailboxes round robin, with [`WINDOW`] deposits in flight (as many
//!   as the end-to-end runs keep), against the raw loop's rows/s; the median of
//!   [`ROUNDS`] alternated runs each. The answers are awaited in any order, as the relay's
//!   event loop does.
//! - `relay.writer_us_per_deposit`: the same as µs of writer time per deposit, against µs
//!   per raw row: the ratio is what the writer costs over a bare insert.
//! - `relay.writer_cpu_us_per_deposit`: CPU time of the storage's threads (the writer and
//!   the flusher) per deposit (the median of the runs), against the raw loop's thread per
//!   row: the storage's own cost, apart from the waits for the disk that both share.
//! - `relay.writer_ack_p50` / `_p99`: ms from a deposit's submission to its answer in the
//!   median run, against the time the raw loop takes for one transaction of its rows.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tern_relay::{
    PeerId,
    libp2p::futures::{StreamExt, stream::FuturesUnordered},
    server::{
        metrics::Metrics,
        storage::{Deposited, Op, Quota, Settings, Share, Storage},
    },
};
use tokio::sync::oneshot;

use super::{
    CIPHERTEXT, IN_FLIGHT, MAILBOXES, SENDERS, SQLITE_BATCH, ms,
    sqlite::{self, threads_cpu, threads_named},
};
use crate::bench::{Opts, Report, median, per_sec, quantile};

/// Deposits in flight: as many as the end-to-end runs' clients keep together.
const WINDOW: usize = SENDERS * IN_FLIGHT;
/// Alternated runs of the writer and the raw loop.
const ROUNDS: usize = 5;

/// One run of the writer.
struct Run {
    /// Deposits answered per second.
    rate: f64,
    /// Every deposit's time from its submission to its answer.
    lat: Vec<Duration>,
    /// CPU time the writer thread spent (user and system).
    cpu: Duration,
}

/// Runs the suite.
pub fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let n = opts.size(50_000, 500);
    let rounds = opts.size(ROUNDS, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut raw = Vec::with_capacity(rounds);
    let mut runs = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        raw.push(sqlite::run(n)?);
        runs.push(rt.block_on(writer_run(n))?);
    }
    let mut raw_rate: Vec<f64> = raw.iter().map(|r| r.rate).collect();
    let mut raw_cpu: Vec<Duration> = raw.iter().map(|r| r.cpu).collect();
    let mut cpu: Vec<Duration> = runs.iter().map(|r| r.cpu).collect();
    raw_rate.sort_by(f64::total_cmp);
    let raw_rate = raw_rate[rounds / 2];
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let (cpu, raw_cpu) = (per(median(&mut cpu)), per(median(&mut raw_cpu)));
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mid = &mut runs[rounds / 2];
    report.compare(
        "relay.writer_throughput",
        mid.rate,
        "msg/s",
        "batched durable SQLite insert",
        raw_rate,
    );
    report.compare(
        "relay.writer_us_per_deposit",
        1e6 / mid.rate,
        "us",
        "batched durable SQLite insert",
        1e6 / raw_rate,
    );
    report.compare(
        "relay.writer_cpu_us_per_deposit",
        cpu,
        "us",
        "batched durable SQLite insert",
        raw_cpu,
    );
    // The raw loop's time for one transaction of its rows: what a deposit would wait for
    // if the writer cost no more than the bare inserts.
    let raw_txn = ms(Duration::from_secs_f64(SQLITE_BATCH as f64 / raw_rate));
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        report.compare(
            &format!("relay.writer_ack_{label}"),
            ms(quantile(&mut mid.lat, q)),
            "ms",
            "raw SQLite transaction",
            raw_txn,
        );
    }
    Ok(())
}

/// Deposits `n` messages through a fresh storage with [`WINDOW`] of them in flight, waiting
/// for their answers in any order, as the relay's event loop does. Every deposit must be
/// stored.
async fn writer_run(n: usize) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        max_batch: 1024,
        queue_depth: 16_384,
        max_database_bytes: 0,
        // Large enough that the run measures the writer, not a full mailbox; the quotas
        // are still checked for every deposit.
        quota: Quota::new(100_000_000, 1_000_000_000_000, 25, 1_000, 1 << 30, 200),
        grant_idle_ms: 60_000,
        reserve_bytes: 0,
    };
    let (storage, _) = Storage::open(dir.path(), settings, Arc::new(Metrics::default()))?;
    let h = storage.handle();
    // Once the writer has answered, its thread runs under its name.
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Ping { reply }).await?;
    rx.await.context("storage writer gone")??;
    let threads = storage_threads()?;
    let cpu_before = threads_cpu(&threads)?;
    let senders: Vec<PeerId> = (0..SENDERS).map(|_| PeerId::random()).collect();
    let mailboxes: Vec<PeerId> = (0..MAILBOXES).map(|_| PeerId::random()).collect();
    let body = vec![0x5au8; CIPHERTEXT];
    let mut in_flight = FuturesUnordered::new();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n + WINDOW {
        if in_flight.len() == WINDOW || i >= n {
            let Some(answer) = in_flight.next().await else {
                break;
            };
            let (sent, stored): (Duration, Deposited) = answer?;
            lat.push(sent);
            anyhow::ensure!(stored.stored.len() == 1, "deposit not stored");
        }
        if i < n {
            let now = wall_ms();
            let sent = Instant::now();
            let (reply, rx) = oneshot::channel();
            h.submit_deposit(1, |first_id| Op::Deposit {
                sender: senders[i % SENDERS],
                recipients: vec![(mailboxes[i % MAILBOXES], Share::Sender)],
                ciphertext: body.clone(),
                now_ms: now,
                expires_ms: now + 7 * 86_400_000,
                intro_expires_ms: now + 86_400_000,
                first_id,
                fenced: None,
                reply: reply.into(),
            })
            .await?;
            in_flight.push(async move {
                let stored = rx.await.context("storage writer gone")??;
                Ok::<_, anyhow::Error>((sent.elapsed(), stored))
            });
        }
    }
    let rate = per_sec(n, start.elapsed());
    anyhow::ensure!(lat.len() == n, "{} of {n} deposits answered", lat.len());
    let cpu = threads_cpu(&threads)?.saturating_sub(cpu_before);
    drop(h);
    storage.close().await;
    Ok(Run { rate, lat, cpu })
}

/// The storage's threads' `/proc` entries (`self/task/<id>`), found by their names (cut to
/// 15 bytes): the writer (`tern-relay-storage`), which must be there, and the flusher
/// (`tern-relay-flush`).
fn storage_threads() -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        !threads_named("self", &[WRITER])?.is_empty(),
        "no storage writer thread (tern-relay-storage) in this process"
    );
    threads_named("self", &[WRITER, "tern-relay-flus"])
}

/// The storage writer thread's name, as `/proc` has it.
const WRITER: &str = "tern-relay-stor";

/// Now, ms since the epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
