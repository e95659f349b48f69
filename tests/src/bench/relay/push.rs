//! Deposit → live delivery latency for the `relay` suite.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use tern_relay::{
    Multiaddr,
    client::{Event, Proto},
    rpc::Requests as _,
    wire::mailbox,
};

use super::{CIPHERTEXT, PUSH_RATE, START_TIMEOUT, connect};

/// Deposits at [`PUSH_RATE`] per second to a listening recipient and measures send →
/// delivery; then the echo round trip at the same rate.
pub(super) async fn latency(
    relay: &Multiaddr,
    echo: &Multiaddr,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (sender, _) = connect(relay).await?;
    let (recipient, mut events) = connect(relay).await?;
    recipient.listen(true).await?;
    let to = recipient.local_peer_id();
    let base = Instant::now();
    let period = Duration::from_micros(1_000_000 / PUSH_RATE);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            match tokio::time::timeout(START_TIMEOUT, events.recv()).await {
                Ok(Some(Event::Delivered(messages))) => {
                    let now = base.elapsed();
                    for m in messages {
                        let mut sent = [0u8; 8];
                        sent.copy_from_slice(&m.ciphertext[..8]);
                        lat.push(
                            now.saturating_sub(Duration::from_nanos(u64::from_le_bytes(sent))),
                        );
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => bail!("deliveries stopped after {}", lat.len()),
            }
        }
        Ok(lat)
    });
    let mut sends = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let mut body = vec![0x5a; CIPHERTEXT];
        body[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
        let s = sender.clone();
        sends.push(tokio::spawn(async move {
            s.deposit(vec![to], None, body).await
        }));
    }
    for s in sends {
        s.await?.context("deposit in the push-latency run")?;
    }
    let push = receiver.await??;

    let (echo_client, _) = connect(echo).await?;
    let frame = mailbox::Request::Fetch { after: 0, limit: 1 }.encode()?;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let (c, f) = (echo_client.clone(), frame.clone());
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            c.raw(Proto::Mailbox, f).await.map(|_| t.elapsed())
        }));
    }
    let mut echo_lat = Vec::with_capacity(n);
    for c in calls {
        echo_lat.push(c.await??);
    }
    Ok((push, echo_lat))
}
