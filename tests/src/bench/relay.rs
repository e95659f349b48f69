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
//! - `relay.flood_deposit_p50` / `_p99` / `_max`: ms from a legitimate sender's deposit to
//!   its acknowledgement while strangers flood the same mailbox, against the same legitimate
//!   load with no attacker on the same relay in the same run (20 s of it: `_max` is mostly
//!   the flood's first moment, when every attacker's first requests arrive at once). The victim registers one grant
//!   (`SetGrants`), so its mailbox is closed, and stays offline for its mail (connected, never
//!   listening, fetching or acknowledging: the worst case for filling). The legitimate sender,
//!   a fresh identity on its own thread and runtime, deposits 1 KiB under that grant at
//!   [`FLOOD_RATE`]/s (within the relay's default per-peer rates). 100 attacking identities,
//!   one connection each, [`ATTACK_IN_FLIGHT`] deposits in flight each, deposit 1 KiB of junk
//!   for as long as the legitimate sender runs, waiting only when told `RateLimited`; every
//!   fourth shows a made-up token, the others none. The relay keeps its defaults (mailbox of
//!   10,000 messages, 25 % shares, introductions share of 1,000, 200 per sender, 5 a second
//!   after a burst of 100, per-peer rates) except the per-IP limits, raised ([`FLOOD_CONFIG`]) so the attackers, all on
//!   127.0.0.1, stand for attackers on many addresses and meet the mailbox's rules rather
//!   than the per-IP limit; the victim and the legitimate sender connect over `::1`. The
//!   attackers run in a `tern-bench` process of their own (started with a hidden argument,
//!   [`ATTACK_ARG`]), so the legitimate sender's figures do not queue behind their tasks, at
//!   the lowest CPU priority (`nice -n19`), since they stand for other machines: the relay
//!   and the legitimate sender come first on the machine's cores, and the attackers take the
//!   rest (their `_attack_rate` shows how hard they pushed). The relay runs two network
//!   threads (`worker_threads = 2`), baseline and floods alike. Reported with it:
//!   `relay.flood_legit_refused` (the run fails if it is not 0), `_attacker_accepted`
//!   against the introductions share and `_attacker_accepted_max_per_identity`,
//!   `_attacker_refused_<code>` per refusal reason (`intro_full`, `no_grant`,
//!   `rate_limited`, `transport`…), `_attack_rate` (attacker deposits answered per second),
//!   and the victim's mailbox as the relay counts it afterwards (`Usage`):
//!   `_victim_mailbox` against its quota and `_victim_intro` against the introductions share.
//! - `relay.flood_ip_limited_*`: the same figures with the relay's default per-IP limits
//!   ([`FLOOD_IP_CONFIG`]: 2,000 requests/s, bursts of 4,000, shared by all the attackers on
//!   127.0.0.1), against the same baseline.
//! - `relay.pipelined_w<N>_*`: the same deposits on deposit streams (`/tern/deposit/1`), one
//!   per client with a window of N deposits in flight (N = [`IN_FLIGHT`], as many as the
//!   request/response run and the Mosquitto publishers keep in flight, and a wide one):
//!   `_throughput` against the request/response deposits, `_vs_echo` and `_vs_sqlite`
//!   against the transport and storage ceilings, `_ack_p50` / `_p99` (from a deposit taking
//!   its place in the window to its acknowledgement) against the request/response
//!   deposits, and `_vs_mosquitto`, `_ack_p50_vs_mosquitto`, `_ack_p99_vs_mosquitto`.
//!   `tern-bench relay-deposits` runs the deposit figures alone.
//! - `relay.*_vs_mosquitto`: the same deposit load and paced live delivery against a
//!   Mosquitto broker (QoS 1, persistence on) when `mosquitto` is installed; reported as
//!   skipped otherwise. See [`mosquitto`].
//!
//! The relay binary is found through `TERN_RELAY_BIN` or next to `tern-bench`: build both,
//! `cargo build --release -p tern-relay --features server -p tern-tests`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tern_relay::rpc::Requests as _;

use anyhow::{Context, bail};
use tern_crypto::grant::Grant;
use tern_relay::{
    Multiaddr, PeerId,
    client::{self, Client, Event, Keypair, Proto},
    libp2p::{
        self, SwarmBuilder, futures::StreamExt, noise, request_response, swarm::SwarmEvent, tcp,
        yamux,
    },
    wire::{ErrorCode, Frame, mailbox},
};

use super::{Opts, Report, per_sec, quantile};

mod pipeline;

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

/// Deposits per second from the legitimate sender in the flood runs.
const FLOOD_RATE: u64 = 100;
/// Deposits each attacking identity keeps in flight on its one connection.
const ATTACK_IN_FLIGHT: usize = 4;
/// Longest an attacker waits after `RateLimited` before trying again.
const ATTACK_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait, beyond the paced sending time, for the legitimate sender to finish or for the
/// attackers' last requests after they are told to stop.
const FLOOD_WAIT: Duration = Duration::from_secs(120);
/// Where the flood runs' relay listens: attackers connect over IPv4, the victim and the
/// legitimate sender over IPv6, so each side has its own per-IP allowance.
const FLOOD_LISTEN: &[&str] = &["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"];
/// The flood run's relay: its defaults (mailbox and share quotas, per-peer rates) except the
/// per-IP limits, raised so that attackers on one loopback address stand for attackers on
/// as many addresses and meet the mailbox's rules, not the per-IP limit; and two network
/// threads, as on a relay of two cores (the quiet baseline runs on the same relay).
const FLOOD_CONFIG: &str = "
worker_threads = 2
[rate]
ip_requests_per_sec = 1000000000.0
ip_requests_burst = 1000000000.0
[connections]
max_per_ip = 20000
ip_connections_per_sec = 1000000000.0
ip_connections_burst = 1000000000.0
";
/// The per-IP flood run's relay: the relay's defaults throughout (but two network threads),
/// so the attackers, all on one address, share one per-IP allowance.
const FLOOD_IP_CONFIG: &str = "worker_threads = 2\n";

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
ip_connections_per_sec = 1000000000.0
ip_connections_burst = 1000000000.0
max_concurrent_streams = 1024
";

/// Runs `f` on the suite's runtime (two worker threads).
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

/// Runs the suite.
pub fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    block_on(run_async(opts, report, false))
}

/// Runs the deposit figures of the suite only (`relay-deposits`): `relay.deposit_*`,
/// `relay.pipelined_*` and their Mosquitto anchors.
pub fn run_deposits(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    block_on(run_async(opts, report, true))
}

/// Runs the flood figures of the suite only (`relay-flood`): `relay.flood_*` and
/// `relay.flood_ip_limited_*`.
pub fn run_flood(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    block_on(floods(opts, report))
}

/// `deposits_only`: the deposit figures and their baselines, nothing else (`relay-deposits`).
async fn run_async(opts: &Opts, report: &mut Report, deposits_only: bool) -> anyhow::Result<()> {
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
    let mut pipelined = Vec::new();
    for window in pipeline::WINDOWS {
        let mut run = pipeline::run(&relay.addr, deposits, window).await?;
        let name = run.name();
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
        pipelined.push(run);
    }
    if deposits_only {
        drop(relay);
        return mosquitto(
            report,
            deposits,
            None,
            relay_rate,
            &mut relay_lat,
            &mut pipelined,
        )
        .await;
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

    floods(opts, report).await?;

    mosquitto(
        report,
        deposits,
        Some((push_messages, &mut push_lat)),
        relay_rate,
        &mut relay_lat,
        &mut pipelined,
    )
    .await?;
    Ok(())
}

/// A closed mailbox under a flood of strangers: the same legitimate load alone, then with
/// the attackers, on one relay; then with the attackers on a relay with default per-IP
/// limits.
async fn floods(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    // 20 s of legitimate load (within its grant's share, a quarter of the mailbox, and the
    // relay's sustained per-peer deposit rate): long enough that p99 is the flood's, not only
    // its first moment (every attacker's first requests arrive at once); that moment shows
    // in `_max`.
    let legit = opts.size(2_000, 40);
    let identities = opts.size(100, 10);
    let flood_relay = RelayProcess::start_with(FLOOD_CONFIG, FLOOD_LISTEN)?;
    let alone = flood_run(&flood_relay, 1, legit, 0).await?;
    if !alone.legit.refused.is_empty() {
        bail!(
            "the relay refused legitimate deposits with no attacker ({:?}); the flood \
             baseline is invalid",
            alone.legit.refused
        );
    }
    let mut baseline = alone.legit.latencies;
    let mut flooded = flood_run(&flood_relay, 2, legit, identities).await?;
    drop(flood_relay);
    report_flood(report, "relay.flood", &mut baseline, &mut flooded)?;
    let ip_relay = RelayProcess::start_with(FLOOD_IP_CONFIG, FLOOD_LISTEN)?;
    let mut ip_limited = flood_run(&ip_relay, 3, legit, identities).await?;
    drop(ip_relay);
    report_flood(
        report,
        "relay.flood_ip_limited",
        &mut baseline,
        &mut ip_limited,
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The Mosquitto anchor, when the broker is installed: the same deposit load as QoS 1
/// publishes to 100 offline persistent subscribers (so the broker stores every message, as
/// the relay stores mail), and the same paced live delivery to a connected QoS 1
/// subscriber. Mosquitto's persistence writes its store periodically, so its PUBACK is not
/// a durable acknowledgement: it is the faster kind of anchor.
/// `push`: the paced live-delivery run (messages, the relay's latencies), when measured.
/// `pipelined`: the pipelined deposit runs, compared with the same deposit load.
async fn mosquitto(
    report: &mut Report,
    deposits: usize,
    push: Option<(usize, &mut [Duration])>,
    relay_rate: f64,
    relay_ack: &mut [Duration],
    pipelined: &mut [pipeline::Run],
) -> anyhow::Result<()> {
    let Some(broker) = mqtt::Broker::start()? else {
        report.skipped(
            "relay.vs_mosquitto",
            "mosquitto not installed (Debian package mosquitto)",
        );
        return Ok(());
    };
    let (time, mut lat) = mqtt::publish_load(broker.port, deposits).await?;
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
    for run in pipelined {
        let name = run.name();
        report.compare(
            &format!("{name}_vs_mosquitto"),
            run.rate,
            "msg/s",
            "mosquitto QoS1 persistent",
            mqtt_rate,
        );
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            report.compare(
                &format!("{name}_ack_{label}_vs_mosquitto"),
                ms(quantile(&mut run.lat, q)),
                "ms",
                "mosquitto QoS1 PUBACK",
                ms(quantile(&mut lat, q)),
            );
        }
    }
    let Some((push_messages, relay_push)) = push else {
        return Ok(());
    };
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

/// A legitimate sender's paced deposits into one mailbox: each accepted deposit's time to
/// its acknowledgement, and the refused ones by reason.
#[derive(Debug, Default)]
struct LegitOutcome {
    latencies: Vec<Duration>,
    refused: BTreeMap<String, usize>,
}

/// What the attacking identities got, all together.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AttackTally {
    /// Deposits answered (accepted or refused).
    attempts: usize,
    /// Deposits the relay took.
    accepted: usize,
    /// The most any one identity got taken.
    max_per_identity: usize,
    /// Refusals by reason (an error code, or `transport`).
    refused: BTreeMap<String, usize>,
}

impl AttackTally {
    fn add(&mut self, other: AttackTally) {
        self.attempts += other.attempts;
        self.accepted += other.accepted;
        self.max_per_identity = self.max_per_identity.max(other.max_per_identity);
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
    }
}

/// One flood run: the legitimate sender's outcome, the attack's, how long the attack ran and
/// the victim's mailbox as the relay counts it afterwards.
#[derive(Debug)]
struct FloodRun {
    legit: LegitOutcome,
    attack: AttackTally,
    attack_time: Duration,
    usage: mailbox::Usage,
}

/// `snake_case` name of an error code for a figure's name (`IntroFull` → `intro_full`).
fn code_name(code: ErrorCode) -> String {
    if let ErrorCode::Other(n) = code {
        return format!("code_{n}");
    }
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a deposit to one recipient was not taken, or `None` if it was.
fn refusal_of(r: &Result<(u64, Vec<mailbox::Refusal>), client::RequestError>) -> Option<String> {
    match r {
        Ok((_, refused)) => refused.first().map(|f| code_name(f.code)),
        Err(client::RequestError::Rejected(rej)) => Some(code_name(rej.code)),
        Err(_) => Some("transport".to_owned()),
    }
}

/// The legitimate sender, on a thread and single-threaded runtime of its own (so its timing
/// does not queue behind the attackers' tasks in the bench's runtime): connects to `addr`
/// with a fresh identity and deposits `n` [`CIPHERTEXT`]-byte messages for `to` with
/// `token`, one every 1/[`FLOOD_RATE`] s whether or not earlier ones were acknowledged.
fn legit_load(
    addr: Multiaddr,
    to: PeerId,
    token: [u8; 32],
    n: usize,
) -> anyhow::Result<LegitOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (sender, _events) = connect(&addr).await?;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / FLOOD_RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sends = Vec::with_capacity(n);
        for i in 0..n {
            tick.tick().await;
            let mut body = vec![0x4c; CIPHERTEXT];
            body[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let s = sender.clone();
            sends.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = s
                    .deposit_with(vec![to], vec![Some(token)], None, body)
                    .await;
                (t.elapsed(), refusal_of(&r))
            }));
        }
        let mut out = LegitOutcome::default();
        for s in sends {
            match s.await.context("legitimate deposit task")? {
                (d, None) => out.latencies.push(d),
                (_, Some(why)) => *out.refused.entry(why).or_default() += 1,
            }
        }
        Ok(out)
    })
}

/// One attacking identity: [`ATTACK_IN_FLIGHT`] loops on its one connection depositing 1 KiB
/// of junk for `to` until `stop`, each waiting only when told `RateLimited` (for the
/// `retry_after_ms` given, at most [`ATTACK_MAX_BACKOFF`]). Every fourth identity shows a
/// made-up token, the others none.
async fn attacker(c: Client, i: usize, to: PeerId, stop: Arc<AtomicBool>) -> AttackTally {
    let tokens = if i % 4 == 3 {
        vec![Some([(i as u8) ^ 0xa5; 32])]
    } else {
        Vec::new()
    };
    let loops = (0..ATTACK_IN_FLIGHT).map(|l| {
        let (c, tokens, stop) = (c.clone(), tokens.clone(), stop.clone());
        async move {
            let mut t = AttackTally::default();
            let junk = vec![(i * ATTACK_IN_FLIGHT + l) as u8; CIPHERTEXT];
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .deposit_with(vec![to], tokens.clone(), None, junk.clone())
                    .await;
                t.attempts += 1;
                match refusal_of(&r) {
                    None => t.accepted += 1,
                    Some(why) => *t.refused.entry(why).or_default() += 1,
                }
                if let Err(client::RequestError::Rejected(rej)) = &r
                    && rej.code == ErrorCode::RateLimited
                {
                    let wait = Duration::from_millis(rej.retry_after_ms.unwrap_or(10));
                    tokio::time::sleep(wait.min(ATTACK_MAX_BACKOFF)).await;
                }
            }
            t
        }
    });
    let mut all = AttackTally::default();
    for t in libp2p::futures::future::join_all(loops).await {
        all.add(t);
    }
    all.max_per_identity = all.accepted;
    all
}

/// The argument of `tern-bench` that makes it an attacker process of the flood runs
/// (hidden; see [`flood_attacker`]).
pub const ATTACK_ARG: &str = "--flood-attack";

/// The attacker side of a flood run, in a `tern-bench` process of its own: connects
/// `identities` fresh identities to `addr` (one connection each), prints `ready`, floods `to`
/// with attacker loops until its standard input closes, then prints what they got as one
/// JSON line and returns.
pub fn flood_attacker(addr: &str, to: &str, identities: usize) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr: Multiaddr = addr.parse().context("attack address")?;
    let to: PeerId = to.parse().context("attacked mailbox")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tally = rt.block_on(async move {
        let mut attackers = Vec::with_capacity(identities);
        for chunk in 0..identities.div_ceil(50) {
            attackers.extend(futures_join(50.min(identities - chunk * 50), &addr).await?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = attackers
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(attacker(c, i, to, stop.clone())))
            .collect();
        println!("ready");
        std::io::stdout().flush()?;
        // The parent closes our standard input to stop the attack (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + FLOOD_WAIT;
        let mut all = AttackTally::default();
        for t in tasks {
            let one = tokio::time::timeout_at(deadline, t)
                .await
                .with_context(|| format!("attackers still busy {FLOOD_WAIT:?} after the stop"))?
                .context("attacker task")?;
            all.add(one);
        }
        anyhow::Ok(all)
    })?;
    println!("{}", serde_json::to_string(&tally)?);
    std::io::stdout().flush()?;
    Ok(())
}

/// A running attacker process (`tern-bench --flood-attack`); killed on drop.
struct AttackProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl AttackProcess {
    /// Starts the attackers and waits until all of them are connected.
    fn start(addr: &Multiaddr, to: PeerId, identities: usize) -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        // At the lowest priority: the attackers stand for other machines, and on a machine
        // of few cores their own CPU use would otherwise be counted against the relay.
        let mut child = Command::new("nice")
            .arg("-n19")
            .arg(std::env::current_exe()?)
            .args([
                ATTACK_ARG,
                &addr.to_string(),
                &to.to_string(),
                &identities.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the attacker process")?;
        let stdout = child.stdout.take().context("attacker stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let this = Self { child, lines };
        match this.lines.recv_timeout(FLOOD_WAIT) {
            Ok(l) if l == "ready" => Ok(this),
            Ok(l) => bail!("the attacker process said {l:?} instead of ready"),
            Err(_) => bail!("the attackers did not connect within {FLOOD_WAIT:?}"),
        }
    }

    /// Stops the attack and returns what it got.
    fn stop(mut self) -> anyhow::Result<AttackTally> {
        drop(self.child.stdin.take());
        let line = self.lines.recv_timeout(FLOOD_WAIT).with_context(|| {
            format!("no tally from the attackers {FLOOD_WAIT:?} after the stop")
        })?;
        let tally = serde_json::from_str(&line).context("the attackers' tally")?;
        Ok(tally)
    }
}

impl Drop for AttackProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One flood run on `relay`: a fresh victim (on the relay's IPv6 address) registers grant
/// `[phase; 32]`; `identities` attackers connect (on its IPv4 address) and flood the victim
/// while the legitimate sender (IPv6) makes `legit` deposits under that grant; then the
/// attackers stop and the victim asks for its mailbox's usage. The victim never listens,
/// fetches or acknowledges: it is offline as far as its mail goes, the worst case for filling.
async fn flood_run(
    relay: &RelayProcess,
    phase: u8,
    legit: usize,
    identities: usize,
) -> anyhow::Result<FloodRun> {
    let (victim, _victim_events) = connect(relay.addr_of(true)?).await?;
    let relay_id = victim.relay_peer_id().to_bytes();
    let grant = Grant::from_bytes([phase; 32]);
    victim
        .set_grants(vec![grant.token_hash(&relay_id)])
        .await
        .context("the victim registers its grant")?;
    let token = grant.token(&relay_id);
    let to = victim.local_peer_id();

    let v4 = relay.addr_of(false)?;
    // The attackers run in a process of their own, so the legitimate sender's figures do
    // not queue behind their tasks in this one.
    let mut attack = match identities {
        0 => None,
        n => Some(AttackProcess::start(v4, to, n)?),
    };
    let started = Instant::now();

    let (tx, rx) = tokio::sync::oneshot::channel();
    let v6 = relay.addr_of(true)?.clone();
    std::thread::spawn(move || {
        let _ = tx.send(legit_load(v6, to, token, legit));
    });
    let bound = Duration::from_secs_f64(legit as f64 / FLOOD_RATE as f64) + FLOOD_WAIT;
    let outcome = tokio::time::timeout(bound, rx).await;
    let tally = match attack.take() {
        Some(a) => tokio::task::spawn_blocking(move || a.stop())
            .await
            .context("attack process")??,
        None => AttackTally::default(),
    };
    let legit = outcome
        .with_context(|| format!("the legitimate sender did not finish within {bound:?}"))?
        .context("legitimate sender thread")??;
    let attack = tally;
    let attack_time = started.elapsed();
    let usage = victim.usage().await.context("the victim's usage")?;
    Ok(FloodRun {
        legit,
        attack,
        attack_time,
        usage,
    })
}

/// Reports a flood run under `prefix` against the no-attacker `baseline` latencies; fails the
/// run if a legitimate deposit was refused or the attackers got past the introductions share.
fn report_flood(
    report: &mut Report,
    prefix: &str,
    baseline: &mut [Duration],
    run: &mut FloodRun,
) -> anyhow::Result<()> {
    for (name, q) in [
        ("deposit_p50", 0.5),
        ("deposit_p99", 0.99),
        ("deposit_max", 1.0),
    ] {
        report.compare(
            &format!("{prefix}_{name}"),
            ms(quantile(&mut run.legit.latencies, q)),
            "ms",
            "same legit load, no attacker",
            ms(quantile(baseline, q)),
        );
    }
    let legit_refused: usize = run.legit.refused.values().sum();
    report.value(
        &format!("{prefix}_legit_refused"),
        legit_refused as f64,
        "msg",
    );
    let intro_quota = run.usage.intro_quota.messages as f64;
    report.compare(
        &format!("{prefix}_attacker_accepted"),
        run.attack.accepted as f64,
        "msg",
        "introductions share (messages)",
        intro_quota,
    );
    report.value(
        &format!("{prefix}_attacker_accepted_max_per_identity"),
        run.attack.max_per_identity as f64,
        "msg",
    );
    for (why, n) in &run.attack.refused {
        report.value(
            &format!("{prefix}_attacker_refused_{why}"),
            *n as f64,
            "msg",
        );
    }
    report.value(
        &format!("{prefix}_attack_rate"),
        per_sec(run.attack.attempts, run.attack_time),
        "req/s",
    );
    report.compare(
        &format!("{prefix}_victim_mailbox"),
        run.usage.total.messages as f64,
        "msg",
        "mailbox quota (messages)",
        run.usage.quota.messages as f64,
    );
    report.compare(
        &format!("{prefix}_victim_intro"),
        run.usage.intro.messages as f64,
        "msg",
        "introductions share (messages)",
        intro_quota,
    );
    if legit_refused > 0 {
        bail!(
            "{prefix}: the relay refused {legit_refused} of the legitimate sender's deposits \
             ({:?}); the latency figures are invalid",
            run.legit.refused
        );
    }
    if run.attack.accepted as f64 > intro_quota {
        bail!(
            "{prefix}: the relay took {} attacker deposits, more than the introductions share \
             ({intro_quota})",
            run.attack.accepted
        );
    }
    Ok(())
}

/// A `tern-relay` child process on 127.0.0.1 with the benchmark configuration; killed on
/// drop.
struct RelayProcess {
    child: Child,
    addr: Multiaddr,
    addrs: Vec<Multiaddr>,
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
    /// The relay with [`BENCH_CONFIG`], listening on 127.0.0.1.
    fn start() -> anyhow::Result<Self> {
        Self::start_with(BENCH_CONFIG, &["/ip4/127.0.0.1/tcp/0"])
    }

    /// The relay with `config` (TOML after `data_dir` and `listen`), listening on `listen`
    /// (each with port 0); waits until it has printed an address for each. `addr` is the
    /// first, `addrs` all of them in the order printed.
    fn start_with(config: &str, listen: &[&str]) -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("relay.toml");
        let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
        std::fs::write(
            &path,
            format!(
                "data_dir = {:?}\nlisten = [{}]\n{config}",
                dir.path().join("data").display().to_string(),
                listen.join(", ")
            ),
        )?;
        let mut child = Command::new(relay_binary()?)
            .arg("--config")
            .arg(&path)
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
        let mut addrs: Vec<Multiaddr> = Vec::with_capacity(listen.len());
        while addrs.len() < listen.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "tern-relay printed {} of {} addresses within {START_TIMEOUT:?}",
                        addrs.len(),
                        listen.len()
                    );
                }
            };
            if line.starts_with('/') && line.contains("/tcp/") {
                match line.parse() {
                    Ok(a) => addrs.push(a),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("tern-relay printed a bad address {line:?}: {e}");
                    }
                }
            }
        }
        Ok(Self {
            addr: addrs[0].clone(),
            addrs,
            child,
            _dir: dir,
        })
    }

    /// The first printed address whose first component is `ip4` or `ip6`.
    fn addr_of(&self, ip6: bool) -> anyhow::Result<&Multiaddr> {
        self.addrs
            .iter()
            .find(|a| {
                matches!(
                    (a.iter().next(), ip6),
                    (Some(libp2p::multiaddr::Protocol::Ip4(_)), false)
                        | (Some(libp2p::multiaddr::Protocol::Ip6(_)), true)
                )
            })
            .with_context(|| {
                format!(
                    "the relay has no {} address",
                    if ip6 { "IPv6" } else { "IPv4" }
                )
            })
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
