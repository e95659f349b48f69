//! Deposit throughput and acknowledgement latency for the `relay` suite: request/response
//! deposits and deposit streams against the transport and storage ceilings.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tern_relay::{
    Multiaddr, PeerId,
    client::{self, Client, Proto},
    rpc::Requests as _,
    wire::mailbox,
};

use super::{
    CIPHERTEXT, IN_FLIGHT, MAILBOXES, SENDERS, connect,
    echo::{self, Server},
    ms, pipeline,
    process::RelayProcess,
};
use crate::bench::{Report, per_sec, quantile};

/// The deposit figures on `relay` against `echo` (transport) and `sqlite` (rows/s of the
/// storage ceiling), `deposits` of each kind, with the pipelined runs reported against
/// those ceilings and the request/response deposits. Returns the request/response
/// deposits' rate and latencies.
pub(super) async fn run(
    report: &mut Report,
    relay: &RelayProcess,
    echo: &Server,
    sqlite: f64,
    deposits: usize,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    // Throughput and acknowledgement latency.
    let request = mailbox::Request::Deposit {
        recipients: vec![PeerId::random()],
        ttl_secs: None,
        ciphertext: serde_bytes::ByteBuf::from(vec![0x5a; CIPHERTEXT]),
        tokens: Vec::new(),
        follows: None,
    }
    .encode()?;
    let (echo_time, mut echo_lat) = load(&echo.addr, deposits, move |c, _| {
        let req = request.clone();
        async move { c.raw(Proto::Mailbox, req).await.map(|_| ()) }
    })
    .await?;
    let mailboxes: Arc<Vec<PeerId>> = Arc::new((0..MAILBOXES).map(|_| PeerId::random()).collect());
    let (relay_time, mut relay_lat) = load(&relay.addr, deposits, move |c, i| {
        let to = mailboxes[i % MAILBOXES];
        async move {
            c.deposit(vec![to], None, vec![0x5a; CIPHERTEXT])
                .await
                .map(|_| ())
        }
    })
    .await?;
    let relay_rate = per_sec(deposits, relay_time);
    let echo_rate = per_sec(deposits, echo_time);
    report.compare(
        "relay.deposit_throughput",
        relay_rate,
        "msg/s",
        "libp2p rr echo (transport)",
        echo_rate,
    );
    report.compare(
        "relay.deposit_vs_sqlite",
        relay_rate,
        "msg/s",
        "batched durable SQLite insert",
        sqlite,
    );
    for (name, q) in [
        ("relay.deposit_ack_p50", 0.5),
        ("relay.deposit_ack_p99", 0.99),
    ] {
        report.compare(
            name,
            ms(quantile(&mut relay_lat, q)),
            "ms",
            "libp2p rr echo (transport)",
            ms(quantile(&mut echo_lat, q)),
        );
    }
    let stream_echo = echo::stream_echo()?;
    for window in pipeline::WINDOWS {
        let mut ceiling = pipeline::run(&stream_echo.addr, deposits, window).await?;
        let mut run = pipeline::run(&relay.addr, deposits, window).await?;
        let name = run.name();
        report.compare(
            &format!("{name}_vs_stream_echo"),
            run.rate,
            "msg/s",
            "deposit-stream echo (transport)",
            ceiling.rate,
        );
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            report.compare(
                &format!("{name}_ack_{label}_vs_stream_echo"),
                ms(quantile(&mut run.lat, q)),
                "ms",
                "deposit-stream echo (transport)",
                ms(quantile(&mut ceiling.lat, q)),
            );
        }
        report.compare(
            &format!("{name}_throughput"),
            run.rate,
            "msg/s",
            "relay request/response deposits",
            relay_rate,
        );
        report.compare(
            &format!("{name}_vs_echo"),
            run.rate,
            "msg/s",
            "libp2p rr echo (transport)",
            echo_rate,
        );
        report.compare(
            &format!("{name}_vs_sqlite"),
            run.rate,
            "msg/s",
            "batched durable SQLite insert",
            sqlite,
        );
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            report.compare(
                &format!("{name}_ack_{label}"),
                ms(quantile(&mut run.lat, q)),
                "ms",
                "relay request/response deposits",
                ms(quantile(&mut relay_lat, q)),
            );
        }
    }
    Ok((relay_rate, relay_lat))
}

/// Connects [`SENDERS`] clients to `addr` and runs `total` operations with [`IN_FLIGHT`]
/// per client in flight. Returns the wall time and every operation's latency.
async fn load<F, Fut>(
    addr: &Multiaddr,
    total: usize,
    op: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), client::RequestError>> + Send,
{
    let mut clients = Vec::with_capacity(SENDERS);
    for _ in 0..SENDERS {
        clients.push(connect(addr).await?.0);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in &clients {
        for _ in 0..IN_FLIGHT {
            let (c, next, op) = (c.clone(), next.clone(), op.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, client::RequestError>(lat);
                    }
                    let t = Instant::now();
                    op(c.clone(), i).await?;
                    lat.push(t.elapsed());
                }
            }));
        }
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.context("load task")??);
    }
    Ok((start.elapsed(), all))
}
