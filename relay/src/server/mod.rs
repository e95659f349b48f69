//! The relay server (feature `server`): one event loop owns the libp2p swarm; a writer
//! thread owns the database; a push task owns outgoing wake-ups; a blob task accepts
//! `/tern/blob/1` streams (each served by a task of its own) and collects expired blobs; an
//! HTTP task serves metrics and health.

pub mod blobs;
pub mod claims;
pub mod config;
mod deposits;
pub mod dht;
pub mod directory;
mod event_loop;
pub mod fence;
pub mod gate;
pub mod grants;
pub mod http;
pub mod identity;
pub mod introfull;
pub mod iplimit;
pub mod metrics;
pub mod penalty;
pub mod presence;
pub mod push;
pub mod quota;
pub mod ratelimit;
pub mod registrations;
pub mod storage;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use libp2p::{
    Multiaddr, PeerId, StreamProtocol, SwarmBuilder, identify, identity::Keypair, noise, ping,
    relay, request_response, swarm::NetworkBehaviour, tcp,
};

pub use config::Config;

use crate::wire::{directory as directory_wire, mailbox, presence as presence_wire};

/// How long shutdown waits for in-flight requests to be answered.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The identify protocol version string the relay announces.
pub const IDENTIFY_PROTOCOL: &str = "/tern/relay/1";

/// Restricts `path` to the relay's user (`mode` 0700 for directories, 0600 for files): the
/// data directory holds who writes to whom, allow-lists, last-seen times and push URLs.
pub(crate) fn private(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Something the running relay tells its host (the binary prints these).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Announcement {
    /// The relay listens on this full address (ending in `/p2p/<peer id>`).
    Listening(Multiaddr),
    /// The metrics and health endpoint is bound here.
    Metrics(SocketAddr),
}

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The identity key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The database could not be opened.
    #[error(transparent)]
    Storage(#[from] storage::OpenError),
    /// The libp2p transport could not be built.
    #[error("cannot build transport: {0}")]
    Transport(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What libp2p said.
        message: String,
    },
    /// Another relay process uses the data directory.
    #[error("another tern-relay is using the data directory {path}; one relay per directory")]
    InUse {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] http::BindError),
    /// The push client could not be set up.
    #[error(transparent)]
    Push(#[from] push::SetupError),
    /// The blob store could not be opened.
    #[error("cannot open the blob store: {0}")]
    Blobs(#[source] std::io::Error),
}

/// Takes `dir` for this process alone: an exclusive lock on `dir/relay.lock`.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, RunError> {
    let path = dir.join("relay.lock");
    let io = |source| RunError::DataDir {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    private(&path, 0o600).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::InUse {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Refuses a TCP listen address whose port another process listens on. libp2p's TCP
/// transport binds its listeners with `SO_REUSEPORT`, so a second relay on the same port
/// would bind too, and the kernel would share new connections between the two; a plain
/// bind, tried and let go first, fails on a port in use. Port 0 and other transports pass.
fn port_free(addr: &Multiaddr) -> Result<(), RunError> {
    use libp2p::multiaddr::Protocol;
    let mut it = addr.iter();
    let ip: std::net::IpAddr = match it.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let Some(Protocol::Tcp(port)) = it.next() else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(RunError::Listen {
            addr: addr.clone(),
            message: "address in use: another process listens on it".into(),
        }),
        // Anything else (an address not on this machine...) is libp2p's to report.
        Err(_) => Ok(()),
    }
}

/// The relay's composed libp2p behaviour.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub(crate) struct Behaviour {
    /// First, so a refused connection reaches no other behaviour.
    limits: iplimit::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    relay: relay::Behaviour,
    mailbox: request_response::Behaviour<crate::wire::FrameCodec>,
    presence: request_response::Behaviour<crate::wire::FrameCodec>,
    directory: request_response::Behaviour<crate::wire::FrameCodec>,
    live: crate::live::Behaviour,
    /// `/tern/blob/1` and `/tern/deposit/1` streams.
    streams: crate::inbound::Behaviour,
    /// Tern's DHT of relay records (`/tern/kad/1`), unless turned off.
    kad: libp2p::swarm::behaviour::toggle::Toggle<dht::Kad>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behaviour(..)")
    }
}

fn relay_config(c: &config::CircuitConfig) -> relay::Config {
    relay::Config {
        max_reservations: c.max_reservations,
        max_reservations_per_peer: c.max_reservations_per_peer,
        reservation_duration: Duration::from_secs(c.reservation_duration_secs),
        max_circuits: c.max_circuits,
        max_circuits_per_peer: c.max_circuits_per_peer,
        max_circuit_duration: Duration::from_secs(c.max_circuit_duration_secs),
        max_circuit_bytes: c.max_circuit_bytes,
        ..relay::Config::default()
    }
}

fn rr(
    protocol: StreamProtocol,
    codec: crate::wire::FrameCodec,
    cfg: &config::ConnectionConfig,
    budget: &Arc<tokio::sync::Semaphore>,
) -> request_response::Behaviour<crate::wire::FrameCodec> {
    request_response::Behaviour::with_codec(
        codec.with_budget(budget.clone()),
        [(protocol, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(cfg.request_timeout_secs))
            .with_max_concurrent_streams(cfg.max_concurrent_streams),
    )
}

/// `budget`: the read budget of every request protocol and connection; `streams`: where
/// blob and deposit streams go.
fn build_swarm(
    key: Keypair,
    cfg: &Config,
    metrics: Arc<metrics::Metrics>,
    budget: &Arc<tokio::sync::Semaphore>,
    streams: crate::inbound::Behaviour,
) -> Result<libp2p::Swarm<Behaviour>, RunError> {
    let conn = cfg.connections.clone();
    let circuit = cfg.circuit.clone();
    let rate = cfg.rate.clone();
    let dht = cfg.dht.clone();
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            crate::yamux_config,
        )
        .map_err(|e| RunError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            Behaviour {
                limits: iplimit::Behaviour::new(
                    iplimit::Limits {
                        max_pending_incoming: conn.max_pending_incoming,
                        max_established: conn.max_established,
                        max_per_peer: conn.max_per_peer,
                        max_per_ip: conn.max_per_ip,
                    },
                    gate::Gate::new(
                        (conn.ip_connections_per_sec, conn.ip_connections_burst),
                        (rate.ip_requests_per_sec, rate.ip_requests_burst),
                    ),
                    metrics,
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!("tern-relay/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: crate::ping_behaviour(),
                relay: relay::Behaviour::new(peer_id, relay_config(&circuit)),
                mailbox: rr(mailbox::PROTOCOL, mailbox::codec(), &conn, budget),
                presence: rr(
                    presence_wire::PROTOCOL,
                    presence_wire::codec(),
                    &conn,
                    budget,
                ),
                directory: rr(
                    directory_wire::PROTOCOL,
                    directory_wire::codec(),
                    &conn,
                    budget,
                ),
                live: crate::live::Behaviour::server(),
                streams,
                kad: dht::behaviour(peer_id, &dht),
            }
        })
        .map_err(|e| RunError::Transport(e.to_string()))?
        .with_swarm_config(|c| crate::swarm_config(c, Duration::from_secs(conn.idle_timeout_secs)))
        .build();
    Ok(swarm)
}

/// Now, in ms since the epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs the relay until `shutdown` completes, then stops accepting work, answers what is
/// in flight (bounded by [`SHUTDOWN_GRACE`]), commits the storage queue and returns.
///
/// `announce` is called with each listen address (and the metrics address) as soon as it
/// is bound.
pub async fn run(
    config: Config,
    announce: impl FnMut(Announcement) + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .and_then(|()| private(&config.data_dir, 0o700))
        .map_err(|source| RunError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    // One relay per data directory (two would share one identity and one database), held
    // until `run` returns; the system lets go of it when the process ends, however.
    let _lock = lock_data_dir(&config.data_dir)?;
    let key = identity::load_or_create(&config.data_dir)?;
    let local_peer_id = key.public().to_peer_id();
    let metrics = Arc::new(metrics::Metrics::default());
    let (storage, mut loaded) = storage::Storage::open(
        &config.data_dir,
        storage::Settings {
            max_batch: config.storage.max_batch,
            queue_depth: config.storage.queue_depth,
            max_database_bytes: config.storage.max_database_bytes,
            quota: storage::Quota::new(
                config.mailbox.max_messages,
                config.mailbox.max_bytes,
                config.mailbox.share_percent,
                config.mailbox.intro_max_messages,
                config.mailbox.intro_max_bytes,
                config.mailbox.intro_per_sender,
            ),
            grant_idle_ms: config.mailbox.grant_idle_secs.saturating_mul(1000),
            reserve_bytes: config.storage.reserve_bytes,
        },
        metrics.clone(),
    )?;
    // One read budget for the requests of every protocol and connection, and for the
    // unanswered frames of every deposit stream.
    let budget = Arc::new(tokio::sync::Semaphore::new(
        config.connections.read_budget_bytes,
    ));
    let (streams, [blob_streams, deposit_streams]) =
        crate::inbound::Behaviour::new([crate::blob::PROTOCOL, crate::wire::deposit::PROTOCOL]);
    let mut swarm = build_swarm(key, &config, metrics.clone(), &budget, streams)?;
    // Offer the hop protocol from the start: a relay's reachability is its operator's
    // promise, not something to wait for AutoNAT to confirm.
    swarm
        .behaviour_mut()
        .relay
        .set_status(Some(relay::Status::Enable));
    for addr in config.public_addrs()? {
        swarm.add_external_address(addr);
    }
    if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
        let kept = loaded.dht.len();
        let held = dht::restore(
            kad.store_mut(),
            &config.dht,
            std::mem::take(&mut loaded.dht),
            std::time::Instant::now(),
            now_ms(),
        );
        if kept > 0 {
            tracing::info!(kept, held, "DHT records read back from the database");
        }
        let bootstrap = config.dht_bootstrap()?;
        for (peer, addr) in &bootstrap {
            kad.add_address(peer, addr.clone());
        }
        if !bootstrap.is_empty() {
            // Periodic bootstraps follow on their own; this one joins at once.
            let _ = kad.bootstrap();
        }
    }
    for addr in config.listen_addrs()? {
        port_free(&addr)?;
        swarm
            .listen_on(addr.clone())
            .map_err(|e| RunError::Listen {
                addr,
                message: e.to_string(),
            })?;
    }
    let (http_stop, http_stop_rx) = tokio::sync::watch::channel(false);
    let mut announce = announce;
    if let Some(addr) = config.metrics {
        let bound = http::serve(addr, metrics.clone(), storage.handle(), http_stop_rx).await?;
        announce(Announcement::Metrics(bound));
    }
    let push = push::spawn(config.push.clone(), loaded.push.clone(), metrics.clone())?;
    // Blob streams are served by a task of their own, never by the event loop or the
    // mailbox writer: a 100 MB upload must not stall deposits.
    let blob_task = blobs::spawn(
        &config.data_dir,
        config.blobs.clone(),
        metrics.clone(),
        storage::Reader::open(&config.data_dir)?,
        blob_streams,
        http_stop.subscribe(),
    )
    .map_err(RunError::Blobs)?;
    // Deposit streams are read by tasks of their own; the event loop serves their deposits.
    let (notes, notes_rx) = tokio::sync::mpsc::channel(deposits::NOTE_QUEUE);
    deposits::spawn_acceptor(
        deposit_streams,
        deposits::Limits {
            window: config.connections.deposit_window,
            stream_bytes: config.connections.deposit_stream_bytes,
            per_peer: config.connections.max_per_peer as usize,
            budget,
        },
        notes,
        metrics.clone(),
    );
    tracing::info!(peer_id = %local_peer_id, "relay starting");
    let el = event_loop::EventLoop::new(
        swarm,
        config,
        metrics,
        storage.handle(),
        push,
        loaded,
        Box::new(announce),
        notes_rx,
    );
    // A task of its own rather than the future the runtime blocks on: on a current-thread
    // runtime that future is polled only once the ready tasks have run and the driver has
    // been polled, so each wake-up of the loop (a deposit read from a stream, a completion)
    // would cost a pass of the driver before it is served.
    // Dropping `run` (an embedded relay's task aborted) still stops the loop.
    let mut looping = AbortOnDrop(tokio::spawn(el.run(shutdown)));
    if let Err(e) = (&mut looping.0).await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    let _ = http_stop.send(true);
    let _ = blob_task.await;
    storage.close().await;
    tracing::info!("relay stopped");
    Ok(())
}

/// A spawned task that is aborted when this is dropped (a no-op once it has finished).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The peer id the relay in `data_dir` has (or will have).
pub fn peer_id(data_dir: &std::path::Path) -> Result<PeerId, identity::IdentityError> {
    Ok(identity::load_or_create(data_dir)?.public().to_peer_id())
}
