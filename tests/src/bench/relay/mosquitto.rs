//! The Mosquitto anchor of the `relay` suite: a broker child process, and `rumqttc` clients
//! (MQTT 3.1.1 over plain TCP) for the QoS 1 publish load and the paced live delivery.

use std::{
    collections::{HashMap, VecDeque},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

use super::{
    CIPHERTEXT, IN_FLIGHT, MAILBOXES, PUSH_RATE, SENDERS, START_TIMEOUT, ms, pipeline,
    process::RelayProcess,
    push,
    sqlite::{thread_cpu, threads_cpu, threads_named},
};
use crate::bench::{Report, per_sec, quantile};

/// Requests a client can queue for its event loop; a sender queues at most
/// [`IN_FLIGHT`], so its `try_publish` never finds the queue full.
const REQUESTS: usize = 64;
const _: () = assert!(REQUESTS >= IN_FLIGHT);

/// A mosquitto child process on 127.0.0.1 with persistence on; killed on drop.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts the broker, or `None` if mosquitto is not installed.
    fn start() -> anyhow::Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 0\n",
                dir.path().display()
            ),
        )?;
        let child = match Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("start mosquitto"),
        };
        let broker = Broker {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(broker))
    }
}

impl Broker {
    /// [`Broker::start`], reporting the anchors as skipped when mosquitto is not installed.
    fn start_or_skip(report: &mut Report) -> anyhow::Result<Option<Self>> {
        let broker = Self::start()?;
        if broker.is_none() {
            report.skipped(
                "relay.vs_mosquitto",
                "mosquitto not installed (Debian package mosquitto)",
            );
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects `client_id` to the broker on 127.0.0.1:`port` (TCP_NODELAY, 60 s keep-alive,
/// `clean` session or a persistent one) and waits for its CONNACK. `inflight` is the most
/// unacknowledged QoS 1 publishes the client lets out before it stops taking requests.
/// The event loop must be polled for anything to move.
async fn connect(
    port: u16,
    client_id: &str,
    clean: bool,
    inflight: u16,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(clean)
        .set_inflight(inflight);
    let (client, mut events) = AsyncClient::new(options, REQUESTS);
    events.network_options.set_tcp_nodelay(true);
    match events
        .poll()
        .await
        .with_context(|| format!("connect {client_id} to mosquitto"))?
    {
        Event::Incoming(Packet::ConnAck(_)) => Ok((client, events)),
        other => bail!("mosquitto answered {client_id}'s CONNECT with {other:?}"),
    }
}

/// Subscribes to `topic` at QoS 1 and waits for the SUBACK.
async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: &str,
) -> anyhow::Result<()> {
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await? {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
            {
                bail!("mosquitto refused the subscription to {topic}");
            }
            return Ok(());
        }
    }
}

/// [`SENDERS`] connections × `in_flight` QoS 1 publishes of [`CIPHERTEXT`] bytes to
/// [`MAILBOXES`] offline persistent subscribers. Wall time and PUBACK latencies.
async fn publish_load(
    port: u16,
    total: usize,
    in_flight: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    anyhow::ensure!(
        in_flight <= REQUESTS,
        "at most {REQUESTS} publishes in flight"
    );
    // Persistent sessions (clean_session=false) subscribed at QoS 1 and then gone: the
    // broker queues every publish for them.
    for m in 0..MAILBOXES {
        let (client, mut events) = connect(port, &format!("mailbox-{m}"), false, 1).await?;
        subscribe(&client, &mut events, &format!("mbox/{m}")).await?;
        client.disconnect().await?;
        while events.poll().await? != Event::Outgoing(Outgoing::Disconnect) {}
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..SENDERS {
        let (client, mut events) =
            connect(port, &format!("sender-{c}"), true, in_flight as u16).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let payload = vec![0x5a; CIPHERTEXT];
            // Queued publishes' send times, in order, until the event loop writes them
            // and so gives them packet ids; then by packet id until their PUBACK.
            let mut queued = VecDeque::with_capacity(in_flight);
            let mut sent: HashMap<u16, Instant> = HashMap::with_capacity(in_flight);
            let mut outstanding = 0;
            let mut lat = Vec::new();
            let mut done = false;
            loop {
                while !done && outstanding < in_flight {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        done = true;
                        break;
                    }
                    queued.push_back(Instant::now());
                    client.try_publish(
                        format!("mbox/{}", i % MAILBOXES),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )?;
                    outstanding += 1;
                }
                if outstanding == 0 {
                    return Ok::<_, anyhow::Error>(lat);
                }
                match events.poll().await? {
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        let t = queued.pop_front().context("unrequested PUBLISH")?;
                        sent.insert(pkid, t);
                    }
                    Event::Incoming(Packet::PubAck(ack)) => {
                        if let Some(t) = sent.remove(&ack.pkid) {
                            lat.push(t.elapsed());
                            outstanding -= 1;
                        }
                    }
                    _ => {}
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.context("publish task")??);
    }
    Ok((start.elapsed(), all))
}

/// QoS 1 publishes at [`PUSH_RATE`] per second to a connected subscriber; send →
/// receive latencies.
async fn paced_delivery(port: u16, n: usize) -> anyhow::Result<Vec<Duration>> {
    let (subscriber, mut sub_events) = connect(port, "live-subscriber", true, 1).await?;
    subscribe(&subscriber, &mut sub_events, "live/1").await?;
    let base = Instant::now();
    let receiver = tokio::spawn(async move {
        // Held so the subscriber's session stays open; its event loop PUBACKs each delivery.
        let _subscriber = subscriber;
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let event = tokio::time::timeout(START_TIMEOUT, sub_events.poll())
                .await
                .context("deliveries stopped")??;
            let Event::Incoming(Packet::Publish(publish)) = event else {
                continue;
            };
            let now = base.elapsed();
            let Some(stamp) = publish.payload.get(..8) else {
                continue;
            };
            let mut sent = [0u8; 8];
            sent.copy_from_slice(stamp);
            lat.push(now.saturating_sub(Duration::from_nanos(u64::from_le_bytes(sent))));
        }
        Ok::<_, anyhow::Error>(lat)
    });
    // No client-side window for the publisher: it publishes on every tick, as fast as
    // the broker acknowledges or not.
    let (publisher, mut pub_events) = connect(port, "live-publisher", true, u16::MAX).await?;
    // The publisher's event loop writes the publishes and reads (and drops) their PUBACKs;
    // it runs until every delivery has arrived.
    let drive = async {
        loop {
            if let Err(e) = pub_events.poll().await {
                return e;
            }
        }
    };
    let send_and_receive = async {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PUSH_RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..n {
            tick.tick().await;
            let mut payload = vec![0x5a; CIPHERTEXT];
            payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
            publisher
                .publish("live/1", QoS::AtLeastOnce, false, payload)
                .await?;
        }
        receiver.await.context("receiver")?
    };
    tokio::select! {
        r = send_and_receive => r,
        e = drive => bail!("mosquitto closed the publisher: {e}"),
    }
}

/// The Mosquitto anchor, when the broker is installed: the same deposit load as QoS 1
/// publishes to 100 offline persistent subscribers (so the broker stores every message, as
/// the relay stores mail), and the same paced live delivery to a connected QoS 1
/// subscriber. Mosquitto's persistence writes its store periodically, so its PUBACK is not
/// a durable acknowledgement: it is the faster kind of anchor.
/// `push`: the paced live deliveries per run, when measured (see [`push_rounds`]).
/// The pipelined deposits are compared in `rounds` alternated rounds of their own
/// ([`pipelined_rounds`]).
pub(super) async fn run(
    report: &mut Report,
    deposits: usize,
    push: Option<usize>,
    relay_rate: f64,
    relay_ack: &mut [Duration],
    rounds: usize,
) -> anyhow::Result<()> {
    let Some(broker) = Broker::start_or_skip(report)? else {
        return Ok(());
    };
    let (time, mut lat) = publish_load(broker.port, deposits, IN_FLIGHT).await?;
    let mqtt_rate = per_sec(deposits, time);
    report.compare(
        "relay.deposit_vs_mosquitto",
        relay_rate,
        "msg/s",
        "mosquitto QoS1 persistent",
        mqtt_rate,
    );
    report.compare(
        "relay.deposit_ack_p99_vs_mosquitto",
        ms(quantile(relay_ack, 0.99)),
        "ms",
        "mosquitto QoS1 PUBACK",
        ms(quantile(&mut lat, 0.99)),
    );
    for window in pipeline::WINDOWS {
        pipelined_rounds(report, deposits, window, rounds).await?;
    }
    drop(broker);
    let Some(push_messages) = push else {
        return Ok(());
    };
    push_rounds(report, push_messages, rounds).await
}

/// Pipelined deposits with `window` in flight per client against Mosquitto publishers with as
/// many publishes in flight, in `rounds` alternated rounds, each on a fresh relay and a
/// fresh broker (the relay first in even rounds, the broker first in odd ones), so that the
/// host's load, which drifts over a run, hits both alike. Reports the median rates
/// (`relay.pipelined_w<N>_vs_mosquitto`), each round's pair (`_round<k>`), and the ack
/// quantiles of every round's acknowledgements together.
async fn pipelined_rounds(
    report: &mut Report,
    deposits: usize,
    window: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let mut relay_rates = Vec::with_capacity(rounds);
    let mut mqtt_rates = Vec::with_capacity(rounds);
    let mut relay_lat = Vec::with_capacity(deposits * rounds);
    let mut mqtt_lat = Vec::with_capacity(deposits * rounds);
    // CPU time over every round's load.
    let mut relay_cpu = Cpu::default();
    let mut mqtt_cpu = Cpu::default();
    for round in 0..rounds {
        for relay_turn in [round % 2 == 0, round % 2 != 0] {
            if relay_turn {
                let relay = RelayProcess::start()?;
                let before = Cpu::now(relay.child.id())?;
                let run = pipeline::run(&relay.addr, deposits, window).await?;
                relay_cpu.add(&before, &Cpu::now(relay.child.id())?);
                relay_rates.push(run.rate);
                relay_lat.extend(run.lat);
            } else {
                let broker = Broker::start()?.context("mosquitto is no longer installed")?;
                let before = Cpu::now(broker.child.id())?;
                let (time, lat) = publish_load(broker.port, deposits, window).await?;
                mqtt_cpu.add(&before, &Cpu::now(broker.child.id())?);
                mqtt_rates.push(per_sec(deposits, time));
                mqtt_lat.extend(lat);
            }
        }
    }
    let name = format!("relay.pipelined_w{window}");
    let anchor = format!("mosquitto QoS1 persistent, {window} in flight");
    for (k, (relay, mqtt)) in relay_rates.iter().zip(&mqtt_rates).enumerate() {
        report.compare(
            &format!("{name}_vs_mosquitto_round{k}"),
            *relay,
            "msg/s",
            &anchor,
            *mqtt,
        );
    }
    report.compare(
        &format!("{name}_vs_mosquitto"),
        median_of(&mut relay_rates),
        "msg/s",
        &format!("{anchor}, median of {rounds} alternated rounds"),
        median_of(&mut mqtt_rates),
    );
    // Where the machine's time goes: a run on two cores that share the load's clients with
    // the server is bound by the CPU both spend on each message.
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / (deposits * rounds) as f64;
    let broker_cpu = format!("mosquitto process CPU, {window} in flight");
    report.compare(
        &format!("{name}_server_cpu_vs_mosquitto"),
        per_msg(relay_cpu.server),
        "µs/msg",
        &broker_cpu,
        per_msg(mqtt_cpu.server),
    );
    // The relay less its storage threads (writer, flusher, checkpointer): what the broker,
    // which writes nothing per message, is to be compared with.
    report.compare(
        &format!("{name}_server_network_cpu_vs_mosquitto"),
        per_msg(relay_cpu.server.saturating_sub(relay_cpu.storage)),
        "µs/msg",
        &broker_cpu,
        per_msg(mqtt_cpu.server),
    );
    report.compare(
        &format!("{name}_client_cpu_vs_mosquitto"),
        per_msg(relay_cpu.clients),
        "µs/msg",
        &format!("rumqttc clients' CPU, {window} in flight"),
        per_msg(mqtt_cpu.clients),
    );
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        report.compare(
            &format!("{name}_ack_{label}_vs_mosquitto"),
            ms(quantile(&mut relay_lat, q)),
            "ms",
            &format!("mosquitto QoS1 PUBACK, {window} in flight, {rounds} alternated rounds"),
            ms(quantile(&mut mqtt_lat, q)),
        );
    }
    Ok(())
}

/// CPU time (user and system) of a server process and of this one, whose clients load it.
#[derive(Debug, Default)]
struct Cpu {
    /// The whole server process.
    server: Duration,
    /// The server's storage threads (a relay's `tern-relay-*` threads: writer, flusher,
    /// checkpointer; none in a broker).
    storage: Duration,
    /// This process.
    clients: Duration,
}

impl Cpu {
    /// The times so far, for the server process `pid`.
    fn now(pid: u32) -> anyhow::Result<Self> {
        let process = pid.to_string();
        let storage = threads_named(
            &process,
            &["tern-relay-stor", "tern-relay-flus", "tern-relay-chec"],
        )?;
        Ok(Self {
            server: thread_cpu(&process)?,
            storage: threads_cpu(&storage)?,
            clients: thread_cpu("self")?,
        })
    }

    /// Adds what each time grew by from `before` to `after`.
    fn add(&mut self, before: &Self, after: &Self) {
        self.server += after.server.saturating_sub(before.server);
        self.storage += after.storage.saturating_sub(before.storage);
        self.clients += after.clients.saturating_sub(before.clients);
    }
}

/// The median of some rates (sorted in place; the upper one of an even count).
fn median_of(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or_default()
}

/// The Mosquitto anchor of the paced live-delivery runs alone (`relay-push`), when the
/// broker is installed: [`push_rounds`].
pub(super) async fn run_push(
    report: &mut Report,
    push_messages: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let Some(broker) = Broker::start_or_skip(report)? else {
        return Ok(());
    };
    drop(broker);
    push_rounds(report, push_messages, rounds).await
}

/// The relay's paced live deliveries (deposits as requests and on a stream, `push::relay_runs`)
/// against the same paced delivery through Mosquitto, in `rounds` alternated rounds, each on
/// a fresh relay and a fresh broker (the relay first in even rounds): every round's p50 pair
/// (`<prefix>_p50_vs_mosquitto_round<k>`), and the p50 and p99 of every round's deliveries
/// together (`<prefix>_p50_vs_mosquitto`, `_p99_vs_mosquitto`).
async fn push_rounds(report: &mut Report, n: usize, rounds: usize) -> anyhow::Result<()> {
    let mut relay: Vec<(&str, Vec<Duration>)> = Vec::new();
    let mut mqtt = Vec::with_capacity(n * rounds);
    let mut round_p50 = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut pair = (Vec::new(), Duration::ZERO);
        for relay_turn in [round % 2 == 0, round % 2 != 0] {
            if relay_turn {
                let process = RelayProcess::start()?;
                for (prefix, mut lat) in push::relay_runs(&process.addr, n).await? {
                    pair.0.push((prefix, quantile(&mut lat, 0.5)));
                    match relay.iter_mut().find(|(p, _)| *p == prefix) {
                        Some((_, all)) => all.extend(lat),
                        None => relay.push((prefix, lat)),
                    }
                }
            } else {
                let broker = Broker::start()?.context("mosquitto is no longer installed")?;
                let mut lat = paced_delivery(broker.port, n).await?;
                pair.1 = quantile(&mut lat, 0.5);
                mqtt.extend(lat);
            }
        }
        round_p50.push(pair);
    }
    for (k, (runs, mqtt_p50)) in round_p50.iter().enumerate() {
        for (prefix, p50) in runs {
            report.compare(
                &format!("{prefix}_p50_vs_mosquitto_round{k}"),
                ms(*p50),
                "ms",
                "mosquitto QoS1 live",
                ms(*mqtt_p50),
            );
        }
    }
    for (prefix, lat) in &mut relay {
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            report.compare(
                &format!("{prefix}_{label}_vs_mosquitto"),
                ms(quantile(lat, q)),
                "ms",
                &format!("mosquitto QoS1 live, {rounds} alternated rounds"),
                ms(quantile(&mut mqtt, q)),
            );
        }
    }
    Ok(())
}
