//! Memory per idle connection for the `relay` suite.

use std::time::{Duration, Instant};

use anyhow::Context;
use tern_relay::{Multiaddr, client::Client, libp2p, rpc::Requests as _};

use super::{connect, process::RelayProcess};

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

/// Waits until the relay's RSS stops moving (two reads 200 ms apart within 0.5 %),
/// at most 10 s.
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = rss(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss(pid)?;
        if now.abs_diff(last) * 200 <= last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Growth of `relay`'s resident memory per idle connection, with `n` of them.
pub(super) async fn connection_bytes(relay: &RelayProcess, n: usize) -> anyhow::Result<f64> {
    let pid = relay.child.id();
    // Warm up: one connection and request so lazily built state is not counted per client.
    let (warm, _) = connect(&relay.addr).await?;
    warm.fetch(0, 1).await?;
    let before = settled_rss(pid).await?;
    let mut clients = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(50) {
        let count = 50.min(n - chunk * 50);
        let batch = futures_join(count, &relay.addr).await?;
        clients.extend(batch);
    }
    let after = settled_rss(pid).await?;
    let per = after.saturating_sub(before) as f64 / n as f64;
    drop(clients);
    Ok(per)
}

/// Connects `count` clients to `addr` at once.
pub(super) async fn futures_join(count: usize, addr: &Multiaddr) -> anyhow::Result<Vec<Client>> {
    let conns = (0..count).map(|_| connect(addr));
    libp2p::futures::future::join_all(conns)
        .await
        .into_iter()
        .map(|r| r.map(|(c, _)| c))
        .collect()
}
