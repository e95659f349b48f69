//! `relay` suite: the real `tern-relay` binary on 127.0.0.1, driven through
//! `tern_relay::client`, against baselines measured in the same run.
//!
//! - `relay.deposit_throughput`: durable deposits/s, 1 KiB ciphertexts, [`SENDERS`]
//!   clients × [`IN_FLIGHT`] requests in flight, each deposit acknowledged only after its
//!   group commit (`synchronous=FULL`). Baselines: the same clients and frames against a
//!   raw libp2p request/response echo server on the same transport (transport ceiling), and
//!   a raw batched durable SQLite insert loop (storage ceiling).
//! - `relay.deposit_ack_p50` / `_p99`: ms from sending a deposit to its acknowledgement in
//!   that run, against the echo round trip.
//! - `relay.push_p50` / `_p99`: ms from sending a deposit to the connected, listening
//!   recipient receiving it, at [`PUSH_RATE`] deposits/s, against the echo round trip at the
//!   same rate.
//! - `relay.idle_connection_bytes`: growth of the relay's resident memory per idle
//!   connection with thousands of clients connected.
//! - `relay.*_vs_mosquitto`: the same deposit load and paced live delivery against a
//!   Mosquitto broker (QoS 1, persistence on) when `mosquitto` is installed; reported as
//!   skipped otherwise. See [`mosquitto`].
//!
//! The relay binary is found through `TERN_RELAY_BIN` or next to `tern-bench`: build both,
//! `cargo build --release -p tern-relay --features server -p tern-tests`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tern_relay::{
    Multiaddr, PeerId,
    client::{self, Client, Event, Keypair, Proto},
    libp2p::{
        self, SwarmBuilder, futures::StreamExt, noise, request_response, swarm::SwarmEvent, tcp,
        yamux,
    },
    wire::{Frame, mailbox},
};

use super::{Opts, Report, per_sec, quantile};

/// Concurrent sending clients in the throughput run.
const SENDERS: usize = 32;
/// Requests each sender keeps in flight.
const IN_FLIGHT: usize = 4;
/// Ciphertext size.
const CIPHERTEXT: usize = 1024;
/// Mailboxes the throughput run deposits into, round robin.
const MAILBOXES: usize = 100;
/// Deposits per second in the push-latency run.
const PUSH_RATE: u64 = 1000;
/// Rows per transaction in the SQLite baseline (about what the relay's group commit
/// gathers with this many requests in flight).
const SQLITE_BATCH: usize = 128;
/// Longest wait for the relay to start or a client to connect.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits high enough that the benchmark measures the relay, not its abuse protection.
const BENCH_CONFIG: &str = "
[mailbox]
max_messages = 100000000
max_bytes = 1000000000000
[rate]
requests_per_sec = 1000000000.0
requests_burst = 1000000000.0
deposits_per_sec = 1000000000.0
deposits_burst = 1000000000.0
ip_requests_per_sec = 1000000000.0
ip_requests_burst = 1000000000.0
[connections]
max_established = 20000
max_per_ip = 20000
max_concurrent_streams = 1024
";

/// Runs the suite.
pub fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts, report))
}

async fn run_async(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let deposits = opts.size(100_000, 1_000);
    let push_messages = opts.size(5_000, 200);
    let idle = opts.size(3_000, 50);

    let sqlite = tokio::task::spawn_blocking(move || sqlite_baseline(deposits)).await??;
    let echo = EchoServer::start()?;
    let relay = RelayProcess::start()?;

    // Throughput and acknowledgement latency.
    let request = mailbox::Request::Deposit {
        recipients: vec![PeerId::random()],
        ttl_secs: None,
        ciphertext: serde_bytes::ByteBuf::from(vec![0x5a; CIPHERTEXT]),
        tokens: Vec::new(),
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
    report.compare(
        "relay.deposit_throughput",
        relay_rate,
        "msg/s",
        "libp2p rr echo (transport)",
        per_sec(deposits, echo_time),
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

    // Deposit → live delivery latency at a fixed rate.
    let (mut push_lat, mut echo_paced) =
        push_latency(&relay.addr, &echo.addr, push_messages).await?;
    for (name, q) in [("relay.push_p50", 0.5), ("relay.push_p99", 0.99)] {
        report.compare(
            name,
            ms(quantile(&mut push_lat, q)),
            "ms",
            "libp2p rr echo at same rate",
            ms(quantile(&mut echo_paced, q)),
        );
    }
    drop(relay);

    // Memory per idle connection, on a fresh relay.
    let fresh = RelayProcess::start()?;
    let per_conn = idle_connection_bytes(&fresh, idle).await?;
    report.value("relay.idle_connection_bytes", per_conn, "bytes");
    drop(fresh);

    mosquitto(
        report,
        deposits,
        push_messages,
        relay_rate,
        &mut relay_lat,
        &mut push_lat,
    )
    .await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The Mosquitto anchor, when the broker is installed: the same deposit load as QoS 1
/// publishes to 100 offline persistent subscribers (so the broker stores every message, as
/// the relay stores mail), and the same paced live delivery to a connected QoS 1
/// subscriber. Mosquitto's persistence writes its store periodically, so its PUBACK is not
/// a durable acknowledgement: it is the faster kind of anchor.
async fn mosquitto(
    report: &mut Report,
    deposits: usize,
    push_messages: usize,
    relay_rate: f64,
    relay_ack: &mut [Duration],
    relay_push: &mut [Duration],
) -> anyhow::Result<()> {
    let Some(broker) = mqtt::Broker::start()? else {
        report.skipped(
            "relay.vs_mosquitto",
            "mosquitto not installed (Debian package mosquitto)",
        );
        return Ok(());
    };
    let (time, mut lat) = mqtt::publish_load(broker.port, deposits).await?;
    report.compare(
        "relay.deposit_vs_mosquitto",
        relay_rate,
        "msg/s",
        "mosquitto QoS1 persistent",
        per_sec(deposits, time),
    );
    report.compare(
        "relay.deposit_ack_p99_vs_mosquitto",
        ms(quantile(relay_ack, 0.99)),
        "ms",
        "mosquitto QoS1 PUBACK",
        ms(quantile(&mut lat, 0.99)),
    );
    let mut live = mqtt::paced_delivery(broker.port, push_messages).await?;
    for (name, q) in [
        ("relay.push_p50_vs_mosquitto", 0.5),
        ("relay.push_p99_vs_mosquitto", 0.99),
    ] {
        report.compare(
            name,
            ms(quantile(relay_push, q)),
            "ms",
            "mosquitto QoS1 live",
            ms(quantile(&mut live, q)),
        );
    }
    Ok(())
}

/// The MQTT side of the Mosquitto anchor: a broker child process, and `rumqttc` clients
/// (MQTT 3.1.1 over plain TCP) for the QoS 1 publish load and the paced live delivery.
mod mqtt {
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

    use super::{CIPHERTEXT, IN_FLIGHT, MAILBOXES, PUSH_RATE, SENDERS, START_TIMEOUT};

    /// Requests a client can queue for its event loop; a sender queues at most
    /// [`IN_FLIGHT`], so its `try_publish` never finds the queue full.
    const REQUESTS: usize = 64;
    const _: () = assert!(REQUESTS >= IN_FLIGHT);

    /// A mosquitto child process on 127.0.0.1 with persistence on; killed on drop.
    pub(super) struct Broker {
        child: Child,
        pub(super) port: u16,
        _dir: tempfile::TempDir,
    }

    impl Broker {
        /// Starts the broker, or `None` if mosquitto is not installed.
        pub(super) fn start() -> anyhow::Result<Option<Self>> {
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

    /// [`SENDERS`] connections × [`IN_FLIGHT`] QoS 1 publishes of [`CIPHERTEXT`] bytes to
    /// [`MAILBOXES`] offline persistent subscribers. Wall time and PUBACK latencies.
    pub(super) async fn publish_load(
        port: u16,
        total: usize,
    ) -> anyhow::Result<(Duration, Vec<Duration>)> {
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
                connect(port, &format!("sender-{c}"), true, IN_FLIGHT as u16).await?;
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let payload = vec![0x5a; CIPHERTEXT];
                // Queued publishes' send times, in order, until the event loop writes them
                // and so gives them packet ids; then by packet id until their PUBACK.
                let mut queued = VecDeque::with_capacity(IN_FLIGHT);
                let mut sent: HashMap<u16, Instant> = HashMap::with_capacity(IN_FLIGHT);
                let mut outstanding = 0;
                let mut lat = Vec::new();
                let mut done = false;
                loop {
                    while !done && outstanding < IN_FLIGHT {
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
    pub(super) async fn paced_delivery(port: u16, n: usize) -> anyhow::Result<Vec<Duration>> {
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
}

/// The storage ceiling: `n` 1 KiB rows inserted into a WAL database with
/// `synchronous=FULL`, [`SQLITE_BATCH`] rows per transaction. Rows per second.
fn sqlite_baseline(n: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("baseline.sqlite3"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE message (id INTEGER PRIMARY KEY, owner BLOB NOT NULL, body BLOB NOT NULL);
         CREATE INDEX message_owner ON message(owner, id);",
    )?;
    let owner = PeerId::random().to_bytes();
    let body = vec![0x5au8; CIPHERTEXT];
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let take = left.min(SQLITE_BATCH);
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached("INSERT INTO message(owner, body) VALUES (?1, ?2)")?;
            for _ in 0..take {
                stmt.execute(rusqlite::params![owner, body])?;
            }
        }
        tx.commit()?;
        left -= take;
    }
    Ok(per_sec(n, start.elapsed()))
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

async fn connect(addr: &Multiaddr) -> anyhow::Result<(Client, tokio::sync::mpsc::Receiver<Event>)> {
    Client::connect(
        Keypair::generate_ed25519(),
        addr.clone(),
        client::Config::default(),
    )
    .await
    .with_context(|| format!("connect to {addr}"))
}

/// Deposits at [`PUSH_RATE`] per second to a listening recipient and measures send →
/// delivery; then the echo round trip at the same rate.
async fn push_latency(
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

async fn idle_connection_bytes(relay: &RelayProcess, n: usize) -> anyhow::Result<f64> {
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

async fn futures_join(count: usize, addr: &Multiaddr) -> anyhow::Result<Vec<Client>> {
    let conns = (0..count).map(|_| connect(addr));
    libp2p::futures::future::join_all(conns)
        .await
        .into_iter()
        .map(|r| r.map(|(c, _)| c))
        .collect()
}

/// A `tern-relay` child process on 127.0.0.1 with the benchmark configuration; killed on
/// drop.
struct RelayProcess {
    child: Child,
    addr: Multiaddr,
    _dir: tempfile::TempDir,
}

fn relay_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TERN_RELAY_BIN") {
        return Ok(p.into());
    }
    let sibling = std::env::current_exe()?.with_file_name("tern-relay");
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "tern-relay binary not found next to tern-bench; build it with \
         `cargo build --release -p tern-relay --features server` or set TERN_RELAY_BIN"
    )
}

impl RelayProcess {
    fn start() -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n{BENCH_CONFIG}",
                dir.path().join("data").display().to_string()
            ),
        )?;
        let mut child = Command::new(relay_binary()?)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start tern-relay")?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    bail!("tern-relay printed no address within {START_TIMEOUT:?}");
                }
            };
            if line.starts_with('/') && line.contains("/tcp/") {
                return Ok(Self {
                    addr: line.parse()?,
                    child,
                    _dir: dir,
                });
            }
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The transport ceiling: a libp2p request/response server on the same transport (TCP,
/// Noise, Yamux) and protocol id as the relay's mailbox, answering every request at once
/// with `Ok`, on its own thread and single-threaded runtime as the relay has its own
/// process and (by default) one network thread.
struct EchoServer {
    addr: Multiaddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start() -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            // Single-threaded, like the relay's default runtime.
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let ok = match mailbox::Response::Ok.encode() {
                    Ok(b) => b,
                    Err(_) => return,
                };
                let built = SwarmBuilder::with_new_identity()
                    .with_tokio()
                    .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
                    .map(|b| {
                        b.with_behaviour(|_| {
                            request_response::Behaviour::with_codec(
                                mailbox::codec(),
                                [(mailbox::PROTOCOL, request_response::ProtocolSupport::Full)],
                                request_response::Config::default().with_max_concurrent_streams(1024),
                            )
                        })
                    });
                let Ok(Ok(builder)) = built else { return };
                let mut swarm = builder
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                    .build();
                let Ok(listen) = "/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>() else { return };
                if swarm.listen_on(listen).is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        ev = swarm.select_next_some() => match ev {
                            SwarmEvent::NewListenAddr { address, .. } => {
                                let full = address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
                                let _ = addr_tx.send(full);
                            }
                            SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Request { channel, .. },
                                ..
                            }) => {
                                let _ = swarm.behaviour_mut().send_response(channel, Frame::Data(ok.clone()));
                            }
                            _ => {}
                        }
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(START_TIMEOUT)
            .context("echo server did not start")?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
