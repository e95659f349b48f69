//! The relay's storage writer alone (`relay-writer`): deposits submitted straight to
//! `tern_relay::server::storage` (the relay's own writer thread, group commit, WAL with
//! `synchronous=FULL`, every deposit answered only after its commit, quotas and shares
//! checked), against the raw batched durable SQLite insert loop, the two alternated in one
//! process so that the machine's load hits both alike.
//!
//! - `relay.writer_throughput`: deposits/s of [`CIPHERTEXT`] bytes from [`SENDERS`] senders
//!   into [`MAILBOXES`] mailboxes round robin, with [`WINDOW`] deposits in flight (as many
//!   as the end-to-end runs keep), against the raw loop's rows/s; the median of
//!   [`ROUNDS`] alternated runs each.
//! - `relay.writer_us_per_deposit`: the same as µs of writer time per deposit, against µs
//!   per raw row: the ratio is what the writer costs over a bare insert.
//! - `relay.writer_ack_p50` / `_p99`: ms from a deposit's submission to its answer in the
//!   median run, against the time the raw loop takes for one transaction of its rows.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tern_relay::{
    PeerId,
    server::{
        metrics::Metrics,
        storage::{Deposited, Op, OpError, Quota, Settings, Share, Storage},
    },
};
use tokio::sync::oneshot;

use super::{
    CIPHERTEXT, IN_FLIGHT, MAILBOXES, SENDERS, SQLITE_BATCH, ms,
    sqlite::baseline as sqlite_baseline,
};
use crate::bench::{Opts, Report, per_sec, quantile};

/// Deposits in flight: as many as the end-to-end runs' clients keep together.
const WINDOW: usize = SENDERS * IN_FLIGHT;
/// Alternated runs of the writer and the raw loop.
const ROUNDS: usize = 5;

/// One run of the writer: deposits/s and every deposit's time to its answer.
struct Run {
    rate: f64,
    lat: Vec<Duration>,
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
        raw.push(sqlite_baseline(n)?);
        runs.push(rt.block_on(writer_run(n))?);
    }
    raw.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let raw_rate = raw[raw.len() / 2];
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

/// Deposits `n` messages through a fresh storage with [`WINDOW`] of them in flight. Every
/// deposit must be stored.
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
    let senders: Vec<PeerId> = (0..SENDERS).map(|_| PeerId::random()).collect();
    let mailboxes: Vec<PeerId> = (0..MAILBOXES).map(|_| PeerId::random()).collect();
    let body = vec![0x5au8; CIPHERTEXT];
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n + WINDOW {
        if in_flight.len() == WINDOW || i >= n {
            let Some((sent, rx)): Option<(Instant, oneshot::Receiver<Result<Deposited, OpError>>)> =
                in_flight.pop_front()
            else {
                break;
            };
            let stored = rx.await.context("storage writer gone")??;
            lat.push(sent.elapsed());
            anyhow::ensure!(stored.stored.len() == 1, "deposit not stored");
        }
        if i < n {
            let now = wall_ms();
            let sent = Instant::now();
            let (reply, rx) = oneshot::channel();
            h.submit_wait(Op::Deposit {
                sender: senders[i % SENDERS],
                recipients: vec![(mailboxes[i % MAILBOXES], Share::Sender)],
                ciphertext: body.clone(),
                now_ms: now,
                expires_ms: now + 7 * 86_400_000,
                intro_expires_ms: now + 86_400_000,
                early: None,
                reply,
            })
            .await?;
            in_flight.push_back((sent, rx));
        }
    }
    let rate = per_sec(n, start.elapsed());
    anyhow::ensure!(lat.len() == n, "{} of {n} deposits answered", lat.len());
    drop(h);
    storage.close().await;
    Ok(Run { rate, lat })
}

/// Now, ms since the epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
