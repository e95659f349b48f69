//! Pipelined deposits (`/tern/deposit/1`) for the `relay` suite: the same deposits as the
//! request/response run ([`SENDERS`] clients, 1 KiB ciphertexts, [`MAILBOXES`] mailboxes
//! round robin), each client on one deposit stream with a window of deposits in flight.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tern_relay::{Multiaddr, PeerId, pipeline::Ticket, rpc::deposit_request};

use super::{CIPHERTEXT, IN_FLIGHT, MAILBOXES, SENDERS, connect};

/// Windows measured: [`IN_FLIGHT`] (as many deposits in flight as the request/response run
/// has) and the window a node keeps per relay. The Mosquitto publishers run with each.
pub(super) const WINDOWS: [usize; 2] = [IN_FLIGHT, tern_node::consts::MAX_LANES_IN_FLIGHT];

/// One pipelined run's figures.
pub(super) struct Run {
    /// Deposits in flight per client.
    pub(super) window: usize,
    /// Deposits acknowledged per second.
    pub(super) rate: f64,
    /// From a deposit taking its place in the window to its acknowledgement.
    pub(super) lat: Vec<Duration>,
}

impl Run {
    /// The figures' name prefix.
    pub(super) fn name(&self) -> String {
        format!("relay.pipelined_w{}", self.window)
    }
}

/// Deposits `total` messages from [`SENDERS`] clients, each on a deposit stream with
/// `window` deposits in flight; every deposit must be stored.
pub(super) async fn run(addr: &Multiaddr, total: usize, window: usize) -> anyhow::Result<Run> {
    let mut pipes = Vec::with_capacity(SENDERS);
    let mut clients = Vec::with_capacity(SENDERS);
    for _ in 0..SENDERS {
        let c = connect(addr).await?.0;
        pipes.push(
            c.open_pipeline(window)
                .await
                .context("open a deposit stream")?,
        );
        clients.push(c);
    }
    let mailboxes: Arc<Vec<PeerId>> = Arc::new((0..MAILBOXES).map(|_| PeerId::random()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(SENDERS);
    for pipe in pipes {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Ticket)>(window);
        let (next, mailboxes) = (next.clone(), mailboxes.clone());
        let producer = tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let req = deposit_request(
                    vec![mailboxes[i % MAILBOXES]],
                    Vec::new(),
                    None,
                    vec![0x5a; CIPHERTEXT],
                );
                let ticket = pipe.submit(&req).await?;
                if tx.send((Instant::now(), ticket)).await.is_err() {
                    return Ok(());
                }
            }
        });
        // Answers come in the stream's order: waiting for them in that order times each.
        let consumer = tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some((sent, ticket)) = rx.recv().await {
                ticket.answer().await?;
                lat.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        });
        tasks.push((producer, consumer));
    }
    let mut lat = Vec::with_capacity(total);
    for (producer, consumer) in tasks {
        producer.await.context("producer task")??;
        lat.extend(consumer.await.context("consumer task")??);
    }
    let elapsed = start.elapsed();
    drop(clients);
    Ok(Run {
        window,
        rate: crate::bench::per_sec(total, elapsed),
        lat,
    })
}
