//! The flood figures of the `relay` suite (`relay.flood_*`, `relay.flood_ip_limited_*`): a
//! closed mailbox under a flood of strangers, against the same legitimate load alone.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tern_crypto::grant::Grant;
use tern_relay::{
    Multiaddr, PeerId,
    client::{self, Client},
    libp2p,
    rpc::Requests as _,
    wire::{ErrorCode, mailbox},
};

use super::{CIPHERTEXT, connect, idle::futures_join, ms, process::RelayProcess};
use crate::bench::{Opts, Report, per_sec, quantile};

/// Deposits per second from the legitimate sender in the flood runs.
const FLOOD_RATE: u64 = 100;
/// Deposits each attacking identity keeps in flight on its one connection.
const ATTACK_IN_FLIGHT: usize = 4;
/// Longest an attacker waits after `RateLimited` before trying again.
const ATTACK_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait, beyond the paced sending time, for the legitimate sender to finish or for the
/// attackers' last requests after they are told to stop.
const FLOOD_WAIT: Duration = Duration::from_secs(120);
/// Where the flood runs' relay listens: attackers connect over IPv4, the victim and the
/// legitimate sender over IPv6, so each side has its own per-IP allowance.
const FLOOD_LISTEN: &[&str] = &["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"];
/// The flood run's relay: its defaults (mailbox and share quotas, per-peer rates) except the
/// per-IP limits, raised so that attackers on one loopback address stand for attackers on
/// as many addresses and meet the mailbox's rules, not the per-IP limit; and two network
/// threads, as on a relay of two cores (the quiet baseline runs on the same relay).
const FLOOD_CONFIG: &str = "
worker_threads = 2
[rate]
ip_requests_per_sec = 1000000000.0
ip_requests_burst = 1000000000.0
[connections]
max_per_ip = 20000
ip_connections_per_sec = 1000000000.0
ip_connections_burst = 1000000000.0
";
/// The per-IP flood run's relay: the relay's defaults throughout (but two network threads),
/// so the attackers, all on one address, share one per-IP allowance.
const FLOOD_IP_CONFIG: &str = "worker_threads = 2\n";

/// A closed mailbox under a flood of strangers: the same legitimate load alone, then with
/// the attackers, on one relay; then with the attackers on a relay with default per-IP
/// limits.
pub(super) async fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    // 20 s of legitimate load (within its grant's share, a quarter of the mailbox, and the
    // relay's sustained per-peer deposit rate): long enough that p99 is the flood's, not only
    // its first moment (every attacker's first requests arrive at once); that moment shows
    // in `_max`.
    let legit = opts.size(2_000, 40);
    let identities = opts.size(100, 10);
    let flood_relay = RelayProcess::start_with(FLOOD_CONFIG, FLOOD_LISTEN)?;
    let alone = flood_run(&flood_relay, 1, legit, 0).await?;
    if !alone.legit.refused.is_empty() {
        bail!(
            "the relay refused legitimate deposits with no attacker ({:?}); the flood \
             baseline is invalid",
            alone.legit.refused
        );
    }
    let mut baseline = alone.legit.latencies;
    let mut flooded = flood_run(&flood_relay, 2, legit, identities).await?;
    drop(flood_relay);
    report_flood(report, "relay.flood", &mut baseline, &mut flooded)?;
    let ip_relay = RelayProcess::start_with(FLOOD_IP_CONFIG, FLOOD_LISTEN)?;
    let mut ip_limited = flood_run(&ip_relay, 3, legit, identities).await?;
    drop(ip_relay);
    report_flood(
        report,
        "relay.flood_ip_limited",
        &mut baseline,
        &mut ip_limited,
    )
}

/// A legitimate sender's paced deposits into one mailbox: each accepted deposit's time to
/// its acknowledgement, and the refused ones by reason.
#[derive(Debug, Default)]
struct LegitOutcome {
    latencies: Vec<Duration>,
    refused: BTreeMap<String, usize>,
}

/// What the attacking identities got, all together.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AttackTally {
    /// Deposits answered (accepted or refused).
    attempts: usize,
    /// Deposits the relay took.
    accepted: usize,
    /// The most any one identity got taken.
    max_per_identity: usize,
    /// Refusals by reason (an error code, or `transport`).
    refused: BTreeMap<String, usize>,
}

impl AttackTally {
    fn add(&mut self, other: AttackTally) {
        self.attempts += other.attempts;
        self.accepted += other.accepted;
        self.max_per_identity = self.max_per_identity.max(other.max_per_identity);
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
    }
}

/// One flood run: the legitimate sender's outcome, the attack's, how long the attack ran and
/// the victim's mailbox as the relay counts it afterwards.
#[derive(Debug)]
struct FloodRun {
    legit: LegitOutcome,
    attack: AttackTally,
    attack_time: Duration,
    usage: mailbox::Usage,
}

/// `snake_case` name of an error code for a figure's name (`IntroFull` → `intro_full`).
fn code_name(code: ErrorCode) -> String {
    if let ErrorCode::Other(n) = code {
        return format!("code_{n}");
    }
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a deposit to one recipient was not taken, or `None` if it was.
fn refusal_of(r: &Result<(u64, Vec<mailbox::Refusal>), client::RequestError>) -> Option<String> {
    match r {
        Ok((_, refused)) => refused.first().map(|f| code_name(f.code)),
        Err(client::RequestError::Rejected(rej)) => Some(code_name(rej.code)),
        Err(_) => Some("transport".to_owned()),
    }
}

/// The legitimate sender, on a thread and single-threaded runtime of its own (so its timing
/// does not queue behind the attackers' tasks in the bench's runtime): connects to `addr`
/// with a fresh identity and deposits `n` [`CIPHERTEXT`]-byte messages for `to` with
/// `token`, one every 1/[`FLOOD_RATE`] s whether or not earlier ones were acknowledged.
fn legit_load(
    addr: Multiaddr,
    to: PeerId,
    token: [u8; 32],
    n: usize,
) -> anyhow::Result<LegitOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (sender, _events) = connect(&addr).await?;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / FLOOD_RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sends = Vec::with_capacity(n);
        for i in 0..n {
            tick.tick().await;
            let mut body = vec![0x4c; CIPHERTEXT];
            body[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let s = sender.clone();
            sends.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = s
                    .deposit_with(vec![to], vec![Some(token)], None, body)
                    .await;
                (t.elapsed(), refusal_of(&r))
            }));
        }
        let mut out = LegitOutcome::default();
        for s in sends {
            match s.await.context("legitimate deposit task")? {
                (d, None) => out.latencies.push(d),
                (_, Some(why)) => *out.refused.entry(why).or_default() += 1,
            }
        }
        Ok(out)
    })
}

/// One attacking identity: [`ATTACK_IN_FLIGHT`] loops on its one connection depositing 1 KiB
/// of junk for `to` until `stop`, each waiting only when told `RateLimited` (for the
/// `retry_after_ms` given, at most [`ATTACK_MAX_BACKOFF`]). Every fourth identity shows a
/// made-up token, the others none.
async fn attacker(c: Client, i: usize, to: PeerId, stop: Arc<AtomicBool>) -> AttackTally {
    let tokens = if i % 4 == 3 {
        vec![Some([(i as u8) ^ 0xa5; 32])]
    } else {
        Vec::new()
    };
    let loops = (0..ATTACK_IN_FLIGHT).map(|l| {
        let (c, tokens, stop) = (c.clone(), tokens.clone(), stop.clone());
        async move {
            let mut t = AttackTally::default();
            let junk = vec![(i * ATTACK_IN_FLIGHT + l) as u8; CIPHERTEXT];
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .deposit_with(vec![to], tokens.clone(), None, junk.clone())
                    .await;
                t.attempts += 1;
                match refusal_of(&r) {
                    None => t.accepted += 1,
                    Some(why) => *t.refused.entry(why).or_default() += 1,
                }
                if let Err(client::RequestError::Rejected(rej)) = &r
                    && rej.code == ErrorCode::RateLimited
                {
                    let wait = Duration::from_millis(rej.retry_after_ms.unwrap_or(10));
                    tokio::time::sleep(wait.min(ATTACK_MAX_BACKOFF)).await;
                }
            }
            t
        }
    });
    let mut all = AttackTally::default();
    for t in libp2p::futures::future::join_all(loops).await {
        all.add(t);
    }
    all.max_per_identity = all.accepted;
    all
}

/// The argument of `tern-bench` that makes it an attacker process of the flood runs
/// (hidden; see [`flood_attacker`]).
pub const ATTACK_ARG: &str = "--flood-attack";

/// The attacker side of a flood run, in a `tern-bench` process of its own: connects
/// `identities` fresh identities to `addr` (one connection each), prints `ready`, floods `to`
/// with attacker loops until its standard input closes, then prints what they got as one
/// JSON line and returns.
pub fn flood_attacker(addr: &str, to: &str, identities: usize) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr: Multiaddr = addr.parse().context("attack address")?;
    let to: PeerId = to.parse().context("attacked mailbox")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tally = rt.block_on(async move {
        let mut attackers = Vec::with_capacity(identities);
        for chunk in 0..identities.div_ceil(50) {
            attackers.extend(futures_join(50.min(identities - chunk * 50), &addr).await?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = attackers
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(attacker(c, i, to, stop.clone())))
            .collect();
        println!("ready");
        std::io::stdout().flush()?;
        // The parent closes our standard input to stop the attack (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + FLOOD_WAIT;
        let mut all = AttackTally::default();
        for t in tasks {
            let one = tokio::time::timeout_at(deadline, t)
                .await
                .with_context(|| format!("attackers still busy {FLOOD_WAIT:?} after the stop"))?
                .context("attacker task")?;
            all.add(one);
        }
        anyhow::Ok(all)
    })?;
    println!("{}", serde_json::to_string(&tally)?);
    std::io::stdout().flush()?;
    Ok(())
}

/// A running attacker process (`tern-bench --flood-attack`); killed on drop.
struct AttackProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl AttackProcess {
    /// Starts the attackers and waits until all of them are connected.
    fn start(addr: &Multiaddr, to: PeerId, identities: usize) -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        // At the lowest priority: the attackers stand for other machines, and on a machine
        // of few cores their own CPU use would otherwise be counted against the relay.
        let mut child = Command::new("nice")
            .arg("-n19")
            .arg(std::env::current_exe()?)
            .args([
                ATTACK_ARG,
                &addr.to_string(),
                &to.to_string(),
                &identities.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the attacker process")?;
        let stdout = child.stdout.take().context("attacker stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let this = Self { child, lines };
        match this.lines.recv_timeout(FLOOD_WAIT) {
            Ok(l) if l == "ready" => Ok(this),
            Ok(l) => bail!("the attacker process said {l:?} instead of ready"),
            Err(_) => bail!("the attackers did not connect within {FLOOD_WAIT:?}"),
        }
    }

    /// Stops the attack and returns what it got.
    fn stop(mut self) -> anyhow::Result<AttackTally> {
        drop(self.child.stdin.take());
        let line = self.lines.recv_timeout(FLOOD_WAIT).with_context(|| {
            format!("no tally from the attackers {FLOOD_WAIT:?} after the stop")
        })?;
        let tally = serde_json::from_str(&line).context("the attackers' tally")?;
        Ok(tally)
    }
}

impl Drop for AttackProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One flood run on `relay`: a fresh victim (on the relay's IPv6 address) registers grant
/// `[phase; 32]`; `identities` attackers connect (on its IPv4 address) and flood the victim
/// while the legitimate sender (IPv6) makes `legit` deposits under that grant; then the
/// attackers stop and the victim asks for its mailbox's usage. The victim never listens,
/// fetches or acknowledges: it is offline as far as its mail goes, the worst case for filling.
async fn flood_run(
    relay: &RelayProcess,
    phase: u8,
    legit: usize,
    identities: usize,
) -> anyhow::Result<FloodRun> {
    let (victim, _victim_events) = connect(relay.addr_of(true)?).await?;
    let relay_id = victim.relay_peer_id().to_bytes();
    let grant = Grant::from_bytes([phase; 32]);
    victim
        .set_grants(vec![grant.token_hash(&relay_id)])
        .await
        .context("the victim registers its grant")?;
    let token = grant.token(&relay_id);
    let to = victim.local_peer_id();

    let v4 = relay.addr_of(false)?;
    // The attackers run in a process of their own, so the legitimate sender's figures do
    // not queue behind their tasks in this one.
    let mut attack = match identities {
        0 => None,
        n => Some(AttackProcess::start(v4, to, n)?),
    };
    let started = Instant::now();

    let (tx, rx) = tokio::sync::oneshot::channel();
    let v6 = relay.addr_of(true)?.clone();
    std::thread::spawn(move || {
        let _ = tx.send(legit_load(v6, to, token, legit));
    });
    let bound = Duration::from_secs_f64(legit as f64 / FLOOD_RATE as f64) + FLOOD_WAIT;
    let outcome = tokio::time::timeout(bound, rx).await;
    let tally = match attack.take() {
        Some(a) => tokio::task::spawn_blocking(move || a.stop())
            .await
            .context("attack process")??,
        None => AttackTally::default(),
    };
    let legit = outcome
        .with_context(|| format!("the legitimate sender did not finish within {bound:?}"))?
        .context("legitimate sender thread")??;
    let attack = tally;
    let attack_time = started.elapsed();
    let usage = victim.usage().await.context("the victim's usage")?;
    Ok(FloodRun {
        legit,
        attack,
        attack_time,
        usage,
    })
}

/// Reports a flood run under `prefix` against the no-attacker `baseline` latencies; fails the
/// run if a legitimate deposit was refused or the attackers got past the introductions share.
fn report_flood(
    report: &mut Report,
    prefix: &str,
    baseline: &mut [Duration],
    run: &mut FloodRun,
) -> anyhow::Result<()> {
    for (name, q) in [
        ("deposit_p50", 0.5),
        ("deposit_p99", 0.99),
        ("deposit_max", 1.0),
    ] {
        report.compare(
            &format!("{prefix}_{name}"),
            ms(quantile(&mut run.legit.latencies, q)),
            "ms",
            "same legit load, no attacker",
            ms(quantile(baseline, q)),
        );
    }
    let legit_refused: usize = run.legit.refused.values().sum();
    report.value(
        &format!("{prefix}_legit_refused"),
        legit_refused as f64,
        "msg",
    );
    let intro_quota = run.usage.intro_quota.messages as f64;
    report.compare(
        &format!("{prefix}_attacker_accepted"),
        run.attack.accepted as f64,
        "msg",
        "introductions share (messages)",
        intro_quota,
    );
    report.value(
        &format!("{prefix}_attacker_accepted_max_per_identity"),
        run.attack.max_per_identity as f64,
        "msg",
    );
    for (why, n) in &run.attack.refused {
        report.value(
            &format!("{prefix}_attacker_refused_{why}"),
            *n as f64,
            "msg",
        );
    }
    report.value(
        &format!("{prefix}_attack_rate"),
        per_sec(run.attack.attempts, run.attack_time),
        "req/s",
    );
    report.compare(
        &format!("{prefix}_victim_mailbox"),
        run.usage.total.messages as f64,
        "msg",
        "mailbox quota (messages)",
        run.usage.quota.messages as f64,
    );
    report.compare(
        &format!("{prefix}_victim_intro"),
        run.usage.intro.messages as f64,
        "msg",
        "introductions share (messages)",
        intro_quota,
    );
    if legit_refused > 0 {
        bail!(
            "{prefix}: the relay refused {legit_refused} of the legitimate sender's deposits \
             ({:?}); the latency figures are invalid",
            run.legit.refused
        );
    }
    if run.attack.accepted as f64 > intro_quota {
        bail!(
            "{prefix}: the relay took {} attacker deposits, more than the introductions share \
             ({intro_quota})",
            run.attack.accepted
        );
    }
    Ok(())
}
