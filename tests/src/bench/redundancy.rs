//! The `redundancy` suite: what it costs a sender that its recipient keeps mailboxes at two
//! relays rather than one (every message is deposited at each).
//!
//! Two runs in one process, alternating sizes alike: Alice sends a burst of texts to Bob,
//! who is offline (so nothing comes back: no receipts, no acknowledgements), both `--no-direct`;
//! once with both users at one relay, once at two. Each run is measured from the first `send`
//! until Alice's outbox is empty (every relay took every row):
//!
//! - `redundancy.sender_cpu_per_msg`: CPU time (user + system) of Alice's `tern up` process
//!   per message, in µs, from `/proc/<pid>/stat` (clock ticks of 10 ms: the bursts are long
//!   enough that this rounding is small).
//! - `redundancy.relay_bytes_per_msg`: ciphertext bytes the relays hold for Bob per message
//!   (read from their databases: Bob is offline, so everything deposited stays).
//! - `redundancy.sender_written_bytes_per_msg`: bytes Alice's process wrote per message
//!   (`wchar` in `/proc/<pid>/io`: sockets and the store alike).
//!
//! The baseline of each figure is the same figure with one relay, in the same run.

use std::time::Duration;

use super::{
    Opts, Report,
    delivery::{UNLIMITED, send_burst},
};
use crate::support::{Node, Relay, link_pair, relay_ciphertexts, wait_for, wait_outbox_empty};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// What one run cost the sender, per message: (CPU µs, bytes held at relays, written bytes).
type Cost = (f64, f64, f64);

pub(crate) fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let n = opts.size(1_000, 20);
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("r1"), UNLIMITED)?;
    let r2 = Relay::start(&dir.path().join("r2"), UNLIMITED)?;
    let rt = tokio::runtime::Runtime::new()?;
    let one = burst(&dir.path().join("one"), &rt, &[&r1], n)?;
    let two = burst(&dir.path().join("two"), &rt, &[&r1, &r2], n)?;
    report.compare(
        "redundancy.sender_cpu_per_msg",
        two.0,
        "us",
        "one relay",
        one.0,
    );
    report.compare(
        "redundancy.relay_bytes_per_msg",
        two.1,
        "bytes",
        "one relay",
        one.1,
    );
    report.compare(
        "redundancy.sender_written_bytes_per_msg",
        two.2,
        "bytes",
        "one relay",
        one.2,
    );
    Ok(())
}

/// Alice and Bob at `relays`; Bob offline; `n` texts from Alice until her outbox is empty.
fn burst(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    relays: &[&Relay],
    n: usize,
) -> anyhow::Result<Cost> {
    std::fs::create_dir_all(dir)?;
    let mut extra = vec!["--no-direct"];
    for r in &relays[1..] {
        extra.extend(["--relay", r.addr.as_str()]);
    }
    let a = Node::init_and_start_with(dir, "alice", Some(&relays[0].addr), &extra)?;
    let mut b = Node::init_and_start_with(dir, "bob", Some(&relays[0].addr), &extra)?;
    link_pair(&a, &b, "Alice", "Bob")?;
    // Sessions first, both ways, so the burst measures sending, not their set-up (until
    // Alice hears from Bob her messages carry the session's pre-key header).
    a.ok(&["send", "Bob", "hello"])?;
    wait_for("the first message", Duration::from_secs(60), || {
        let h = b.json(&["history", "Alice", "--no-mark-read"]).ok()?;
        (!h.as_array()?.is_empty()).then_some(())
    })?;
    b.ok(&["send", "Alice", "hi"])?;
    wait_for("the answer", Duration::from_secs(60), || {
        let h = a.json(&["history", "Bob", "--no-mark-read"]).ok()?;
        h.as_array()?
            .iter()
            .any(|m| m["text"] == "hi")
            .then_some(())
    })?;
    // Nothing of the set-up may still be on its way when the counters are read: Alice's
    // receipt for the answer has reached Bob, and Bob's for the first message Alice.
    wait_for("the receipts", Duration::from_secs(60), || {
        let delivered = |n: &Node, peer: &str| -> Option<bool> {
            let h = n.json(&["history", peer, "--no-mark-read"]).ok()?;
            Some(
                h.as_array()?
                    .iter()
                    .filter(|m| m["own"] == true)
                    .all(|m| m["status"] == "delivered"),
            )
        };
        (delivered(&a, "Bob")? && delivered(&b, "Alice")?).then_some(())
    })?;
    wait_outbox_empty(&b, Duration::from_secs(60))?;
    b.stop()?;
    wait_outbox_empty(&a, Duration::from_secs(60))?;
    let pid = a
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the sender is not running"))?;
    let deposited = || -> anyhow::Result<f64> {
        let mut sum = 0;
        for r in relays {
            sum += relay_ciphertexts(&r.data)?
                .iter()
                .map(Vec::len)
                .sum::<usize>();
        }
        Ok(sum as f64)
    };
    let (cpu0, written0, bytes0) = (cpu_secs(pid)?, written(pid)?, deposited()?);
    rt.block_on(send_burst(&a, "Bob", "redundant", n))?;
    wait_outbox_empty(&a, Duration::from_secs(600))?;
    let per = |v: f64| v / n as f64;
    Ok((
        per((cpu_secs(pid)? - cpu0) * 1e6),
        per(deposited()? - bytes0),
        per(written(pid)? - written0),
    ))
}

/// User + system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are counted from its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name.
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    Ok((tick(11)? + tick(12)?) / TICKS_PER_SEC)
}

/// Bytes a process wrote so far (`wchar`).
fn written(pid: u32) -> anyhow::Result<f64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .ok_or_else(|| anyhow::anyhow!("no wchar in /proc/{pid}/io"))?
        .trim()
        .parse::<f64>()
        .map_err(Into::into)
}
