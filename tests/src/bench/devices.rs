//! The `devices` suite: a user's devices staying in step, over real `tern-relay` and `tern up`
//! processes on loopback.
//!
//! - `devices.history_move`: messages per second a newly linked device receives of a history
//!   of N messages (20,000 in a full run), from starting its `tern up` until its status shows
//!   every one, against the relay's raw paged fetch rate in the same run (of 10,000 at most:
//!   a mailbox's default quota).
//! - `devices.first_encrypt_p50` / `_p99`: ms from `tern device add` returning until the new
//!   device (started at once, as a user would) holds a text a contact on another relay sent
//!   after that moment (the contact sends 50 a second and learns the new device from the
//!   user's other device), against the raw relay's deposit → push latency in the same run.
//!   It includes the new node's start and the publication of its prekeys; each new device is
//!   revoked after its sample.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use super::{
    Opts, Report,
    delivery::{UNLIMITED, raw_fetch, raw_relay},
    ms, per_sec, quantile,
};
use crate::support::{Node, Relay, link_device, link_pair, seed_history, wait_for};

pub(crate) fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let n = opts.size(20_000, 300);
    let samples = opts.size(20, 2);
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("relay1"), UNLIMITED)?;
    let r2 = Relay::start(&dir.path().join("relay2"), UNLIMITED)?;
    let rt = tokio::runtime::Runtime::new()?;
    // A mailbox holds at most 10,000 messages by default: the rate is per message.
    let base_fetch = rt.block_on(raw_fetch(&r1.addr, n.min(10_000)))?;
    let (mut base_lat, _) = rt.block_on(raw_relay(&r1.addr, opts.size(200, 20), 1))?;

    // History: Ana holds n messages with Ben and links a laptop.
    let mut ana = Node::init_and_start(dir.path(), "ana", Some(&r1.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&r1.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ana.stop()?;
    seed_history(&ana.home, &ben.user, &ben.device, u32::try_from(n)?)?;
    ana.restart()?;
    let laptop_home = dir.path().join("ana-laptop");
    link_device(&ana, &laptop_home, &r1.addr, "laptop")?;
    let start = Instant::now();
    let laptop = Node::start(&laptop_home, Some(&r1.addr))?;
    let got = wait_for("the whole history", Duration::from_secs(900), || {
        let v = laptop.json(&["status"]).ok()?;
        let (r, t) = (
            v["history"]["received"].as_u64()?,
            v["history"]["total"].as_u64()?,
        );
        (t > 0 && r == t).then_some(r)
    })?;
    let rate = per_sec(usize::try_from(got)?, start.elapsed());
    report.compare(
        "devices.history_move",
        rate,
        "msg/s",
        "relay fetch, paged",
        base_fetch,
    );
    drop(laptop);

    // Convergence: Cleo, on the other relay, writes to Ana steadily while Ana links devices.
    let cleo = Node::init_and_start(dir.path(), "cleo", Some(&r2.addr))?;
    link_pair(&ana, &cleo, "ana", "cleo")?;
    cleo.ok(&["send", "ana", "hello"])?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let cleo_home = cleo.home.clone();
        rt.spawn(async move {
            let mut api =
                tern_node::api::client::ApiClient::for_home(&tern_node::Home::new(&cleo_home))
                    .await?;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                api.call(
                    "send",
                    json!({"contact": "ana", "text": format!("tick {i}")}),
                )
                .await?;
                i += 1;
            }
            anyhow::Ok(())
        })
    };
    let mut firsts = Vec::with_capacity(samples);
    for k in 0..samples {
        let home = dir.path().join(format!("ana-device-{k}"));
        let added = link_device(&ana, &home, &r1.addr, &format!("device {k}"))?;
        let t0 = Instant::now();
        let since_ms = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis(),
        )?;
        let device = Node::start(&home, Some(&r1.addr))?;
        wait_for(
            "a text cleo sent after the device was added",
            Duration::from_secs(120),
            || {
                let h = device.json(&["history", "cleo", "--limit", "20"]).ok()?;
                h.as_array()?
                    .iter()
                    .any(|m| m["sent_at"].as_i64().is_some_and(|t| t >= since_ms))
                    .then_some(())
            },
        )?;
        firsts.push(t0.elapsed());
        drop(device);
        let id = added["device_id"].as_str().unwrap_or_default().to_owned();
        ana.ok(&["device", "revoke", &id])?;
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(sender)??;
    let base_p50 = ms(quantile(&mut base_lat, 0.5));
    let base_p99 = ms(quantile(&mut base_lat, 0.99));
    report.compare(
        "devices.first_encrypt_p50",
        ms(quantile(&mut firsts, 0.5)),
        "ms",
        "relay deposit->push p50",
        base_p50,
    );
    report.compare(
        "devices.first_encrypt_p99",
        ms(quantile(&mut firsts, 0.99)),
        "ms",
        "relay deposit->push p99",
        base_p99,
    );
    Ok(())
}
