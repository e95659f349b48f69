//! Deposit → live delivery latency for the `relay` suite: deposits as `Deposit` requests and
//! on a deposit stream (as nodes send them), each to a listening recipient.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use tern_relay::{
    Multiaddr,
    client::{Client, Event, Proto},
    rpc::Requests as _,
    wire::mailbox,
};

use super::{CIPHERTEXT, PUSH_RATE, START_TIMEOUT, connect};

/// Deposits in flight on the stream of the pipelined run (more than are ever waiting at
/// [`PUSH_RATE`]: the window never holds a deposit back).
const PUSH_WINDOW: usize = 64;

/// How the sender deposits.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A `Deposit` request each (`/tern/mailbox/1`).
    Request,
    /// One deposit stream (`/tern/deposit/1`).
    Stream,
}

/// The push latencies: each run's figure prefix (`relay.push` for deposits as requests,
/// `relay.push_stream` on a stream) with its latencies, and the echo round trips at the
/// same rate: a request/response echo, and deposits on a stream to the deposit-stream echo
/// (two hops over the same transport, as a push takes, with nothing between them).
pub(super) struct Latencies {
    pub(super) runs: [(&'static str, Vec<Duration>); 2],
    pub(super) echo: Vec<Duration>,
    pub(super) stream_echo: Vec<Duration>,
}

/// Deposits `n` messages at [`PUSH_RATE`] per second to a listening recipient, as requests
/// and then on a deposit stream, and measures send → delivery; then the echo round trip at
/// the same rate.
pub(super) async fn latency(
    relay: &Multiaddr,
    (echo, stream_echo): (&Multiaddr, &Multiaddr),
    n: usize,
) -> anyhow::Result<Latencies> {
    let runs = relay_runs(relay, n).await?;

    let (client, _) = connect(stream_echo).await?;
    let pipe = client
        .open_pipeline(PUSH_WINDOW)
        .await
        .context("open a deposit stream to the echo")?;
    let stream_echo = paced_round_trips(n, move || {
        let p = pipe.clone();
        async move {
            let to = vec![tern_relay::PeerId::random()];
            p.deposit_with(to, Vec::new(), None, vec![0x5a; CIPHERTEXT])
                .await
                .map(drop)
        }
    })
    .await
    .context("deposit to the stream echo")?;

    let (echo_client, _) = connect(echo).await?;
    let frame = mailbox::Request::Fetch { after: 0, limit: 1 }.encode()?;
    let echo_lat = paced_round_trips(n, move || {
        let (c, f) = (echo_client.clone(), frame.clone());
        async move { c.raw(Proto::Mailbox, f).await.map(drop) }
    })
    .await
    .context("request to the echo")?;
    Ok(Latencies {
        runs,
        echo: echo_lat,
        stream_echo,
    })
}

/// The relay's two paced runs on `relay`, `n` deposits each: as requests, then on a
/// deposit stream; each with its figure prefix.
pub(super) async fn relay_runs(
    relay: &Multiaddr,
    n: usize,
) -> anyhow::Result<[(&'static str, Vec<Duration>); 2]> {
    let request = paced_push(relay, n, Via::Request).await?;
    let stream = paced_push(relay, n, Via::Stream).await?;
    Ok([("relay.push", request), ("relay.push_stream", stream)])
}

/// `n` calls of `call` at [`PUSH_RATE`] per second, each in a task of its own; their round
/// trips.
async fn paced_round_trips<F, E>(n: usize, call: impl Fn() -> F) -> anyhow::Result<Vec<Duration>>
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut tick = pacer();
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let f = call();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            f.await.map(|()| t.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for c in calls {
        lat.push(c.await??);
    }
    Ok(lat)
}

/// A ticker at [`PUSH_RATE`] that catches up after a late tick.
fn pacer() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PUSH_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tick
}

/// One paced run with fresh clients: each deposit carries its send time, which the
/// recipient subtracts from the time it has it.
async fn paced_push(relay: &Multiaddr, n: usize, via: Via) -> anyhow::Result<Vec<Duration>> {
    let (sender, _) = connect(relay).await?;
    let (recipient, mut events) = connect(relay).await?;
    recipient.listen(true).await?;
    let to = recipient.local_peer_id();
    let pipe = match via {
        Via::Request => None,
        Via::Stream => Some(
            sender
                .open_pipeline(PUSH_WINDOW)
                .await
                .context("open a deposit stream")?,
        ),
    };
    let base = Instant::now();
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
    let mut tick = pacer();
    let mut sends = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let mut body = vec![0x5a; CIPHERTEXT];
        body[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
        let (s, pipe): (Client, _) = (sender.clone(), pipe.clone());
        sends.push(tokio::spawn(async move {
            match pipe {
                Some(p) => p.deposit_with(vec![to], Vec::new(), None, body).await,
                None => s.deposit(vec![to], None, body).await,
            }
        }));
    }
    for s in sends {
        s.await?.context("deposit in the push-latency run")?;
    }
    receiver.await?
}
