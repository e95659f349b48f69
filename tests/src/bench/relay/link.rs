//! `relay.link_*`: deposits over a link with a real round trip ([`ONE_WAY`] each way,
//! through `support::link::delay_proxy`), each awaited before the next, against the link's
//! own round trip measured through the same kind of proxy in the same run (one byte echoed
//! over plain TCP). A ratio near 1 is one round trip per deposit; each round trip of
//! protocol negotiation a stream waits for adds 1.
//!
//! - `relay.link_deposit_request_p50`: a `Deposit` request (a stream of its own each);
//! - `relay.link_deposit_stream_p50`: a deposit on an open deposit stream;
//! - `relay.link_first_stream_deposit_p50`: opening a deposit stream and its first deposit.

use std::time::Duration;

use anyhow::Context;
use tern_relay::{
    Multiaddr,
    client::{Client, Keypair},
    rpc::Requests as _,
};
use tokio::time::Instant;

use super::{CIPHERTEXT, RelayProcess, Report, connect, ms};
use crate::{
    bench::median,
    support::link::{delay_proxy, link_round_trips, tcp_target, via},
};

/// One-way delay of the simulated link (a 20 ms round trip).
const ONE_WAY: Duration = Duration::from_millis(10);

/// Reports the figures on `relay`, `samples` of each.
pub(super) async fn figures(
    report: &mut Report,
    relay: &RelayProcess,
    samples: usize,
) -> anyhow::Result<()> {
    let mut rtt = link_round_trips(samples, ONE_WAY).await?;
    let rtt = ms(median(&mut rtt));
    let baseline = format!("link round trip ({} ms)", 2 * ONE_WAY.as_millis());

    let addr = relay.addr.to_string();
    let proxy = delay_proxy(tcp_target(&addr)?, ONE_WAY).await?;
    let via: Multiaddr = via(&addr, proxy.addr)?.parse().context("proxy address")?;
    let (client, _events) = connect(&via).await?;
    let to = Keypair::generate_ed25519().public().to_peer_id();
    let deposit = |client: &Client| {
        let client = client.clone();
        async move { client.deposit(vec![to], None, vec![0x5a; CIPHERTEXT]).await }
    };
    // The connection's first moments (identify) out of the way.
    deposit(&client)
        .await
        .context("first deposit over the link")?;

    let mut request = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        deposit(&client)
            .await
            .context("deposit request over the link")?;
        request.push(t.elapsed());
    }
    let (mut first, mut stream) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        let t = Instant::now();
        let pipe = client
            .open_pipeline(4)
            .await
            .context("open a deposit stream")?;
        pipe.deposit_with(vec![to], Vec::new(), None, vec![0x5a; CIPHERTEXT])
            .await
            .context("first deposit on a stream over the link")?;
        first.push(t.elapsed());
        if stream.is_empty() {
            for _ in 0..samples {
                let t = Instant::now();
                pipe.deposit_with(vec![to], Vec::new(), None, vec![0x5a; CIPHERTEXT])
                    .await
                    .context("deposit on a stream over the link")?;
                stream.push(t.elapsed());
            }
        }
    }
    for (name, lat) in [
        ("relay.link_deposit_request_p50", &mut request),
        ("relay.link_deposit_stream_p50", &mut stream),
        ("relay.link_first_stream_deposit_p50", &mut first),
    ] {
        report.compare(name, ms(median(lat)), "ms", &baseline, rtt);
    }
    Ok(())
}
