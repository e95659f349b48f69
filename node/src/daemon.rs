//! The daemon `tern up` runs: the node, its local API and web UI, and an embedded relay when
//! none is configured; it writes the node file clients find it by, and shuts everything
//! down in order. The CLI only parses arguments and prints the ready line.

use std::{future::Future, net::SocketAddr, time::Duration};

use libp2p::{Multiaddr, multiaddr::Protocol};
use tern_relay::server::{self, Announcement};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Config, Home, Node,
    api::{self, NodeFile},
    types::Event,
};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpError {
    /// An argument is wrong (a relay address without `/p2p/`, a bad multiaddr).
    #[error("{0}")]
    Usage(String),
    /// Something failed while starting.
    #[error("{0}")]
    Failed(String),
    /// Another node runs for this home.
    #[error("{0}")]
    InUse(String),
}

/// What `tern up` was asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Home relays given on the command line (saved for next time); empty: the saved ones,
    /// or an embedded relay.
    pub relays: Vec<String>,
    /// Addresses to listen on for direct connections; empty: all interfaces, any port.
    pub listen: Vec<String>,
    /// The local API's address (loopback only; port 0 picks one).
    pub api: SocketAddr,
    /// Whether contacts may connect directly.
    pub direct: bool,
}

/// What the running daemon tells its host once it is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The API (and web UI) address.
    pub api: SocketAddr,
    /// This user's id.
    pub user_id: String,
    /// This device's id.
    pub device_id: String,
    /// The home relay that connected first, or (none did in time) the first one.
    pub relay: String,
    /// Whether a home relay was connected (with keys published) before the wait ran out.
    pub relay_connected: bool,
    /// A note for the user (e.g. that a new identity was created), if any.
    pub notes: Vec<String>,
}

/// The display name a first `tern up` uses when `$USER` is not set.
const DEFAULT_NAME: &str = "me";
/// The device name a first `tern up` gives this device.
const DEFAULT_DEVICE_NAME: &str = "device";
/// How long `up` waits for the home relay before printing the ready line anyway.
const RELAY_READY_WAIT: Duration = Duration::from_secs(10);
/// Listen addresses of the embedded relay queued for `up` (it uses the first).
const EMBEDDED_ADDR_QUEUE: usize = 8;
/// How long the API may take, when the node stops, to answer the requests it took.
const API_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the embedded relay may take to bind.
const EMBEDDED_START_WAIT: Duration = Duration::from_secs(10);

/// Starts the embedded relay on loopback; returns its TCP address and a stop handle.
async fn embedded_relay(
    home: &Home,
    port: Option<u16>,
) -> Result<(Multiaddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>), UpError> {
    let mut config = server::Config {
        data_dir: home.relay_dir(),
        listen: vec![format!("/ip4/127.0.0.1/tcp/{}", port.unwrap_or(0))],
        ..server::Config::default()
    };
    config.metrics = None;
    // Only the first address is used; a few slots cover every listener the relay announces.
    let (addr_tx, mut addr_rx) = mpsc::channel(EMBEDDED_ADDR_QUEUE);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let announce = move |a: Announcement| {
            if let Announcement::Listening(addr) = a {
                let _ = addr_tx.try_send(addr);
            }
        };
        if let Err(e) = server::run(config, announce, async move {
            let _ = stop_rx.await;
        })
        .await
        {
            tracing::error!("embedded relay stopped: {e}");
        }
    });
    let addr = tokio::time::timeout(EMBEDDED_START_WAIT, addr_rx.recv())
        .await
        .ok()
        .flatten()
        .ok_or_else(|| UpError::Failed("the embedded relay did not start".into()))?;
    Ok((addr, stop_tx, task))
}

fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// Runs the daemon until `shutdown` completes: creates an identity on an empty home (as
/// `tern init` would, named from `$USER`), starts the embedded relay when no relay is known,
/// the node, and the API with the web UI; calls `ready` once a home relay is connected (or
/// after a bounded wait); then waits for `shutdown` and stops in order.
pub async fn run(
    home: Home,
    opts: UpOptions,
    ready: impl FnOnce(Ready),
    shutdown: impl Future<Output = ()>,
) -> Result<(), UpError> {
    let failed = |e: &dyn std::fmt::Display| UpError::Failed(e.to_string());
    let mut notes = Vec::new();
    // The home is this process's before anything in it is touched (its identity created,
    // its configuration saved, its embedded relay started): one node per home.
    crate::home::create_private_dir(home.dir()).map_err(|e| failed(&e))?;
    let lock = home.lock().map_err(|e| match e {
        crate::home::HomeError::InUse { .. } => UpError::InUse(e.to_string()),
        e => failed(&e),
    })?;
    if !home.is_initialised() {
        // A first `tern up` should just work: create the identity `tern init` would have.
        let name = std::env::var("USER")
            .ok()
            .filter(|n| !n.is_empty() && n.len() <= crate::consts::MAX_NAME_BYTES)
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let created = home
            .init(&name, DEFAULT_DEVICE_NAME)
            .map_err(|e| failed(&e))?;
        notes.push(format!(
            "created a new identity in {} (user id {}, name {name:?}); keep this directory safe",
            home.dir().display(),
            created.user_id
        ));
    }
    let mut config = home.config().map_err(|e| failed(&e))?;
    let parse = |s: &String| -> Result<Multiaddr, UpError> {
        s.parse()
            .map_err(|e| UpError::Usage(format!("bad multiaddr {s:?}: {e}")))
    };
    let mut relays: Vec<Multiaddr> = opts.relays.iter().map(parse).collect::<Result<_, _>>()?;
    if !relays.is_empty() {
        for r in &relays {
            if !matches!(r.iter().last(), Some(Protocol::P2p(_))) {
                return Err(UpError::Usage(format!(
                    "relay address {r} lacks /p2p/<peer id>"
                )));
            }
        }
        config.relays = opts.relays.clone();
        home.save_config(&config).map_err(|e| failed(&e))?;
    } else {
        relays = config.relays.iter().map(parse).collect::<Result<_, _>>()?;
    }
    let mut embedded = None;
    if relays.is_empty() {
        let (addr, stop, task) = embedded_relay(&home, config.embedded_relay_port).await?;
        if config.embedded_relay_port.is_none() {
            config.embedded_relay_port = tcp_port(&addr);
            home.save_config(&config).map_err(|e| failed(&e))?;
        }
        notes.push(format!("embedded relay at {addr}"));
        relays.push(addr);
        embedded = Some((stop, task));
    }
    let listen: Vec<Multiaddr> = if opts.listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/tcp/0"
                .parse()
                .map_err(|_| UpError::Failed("listen address".into()))?,
        ]
    } else {
        opts.listen.iter().map(parse).collect::<Result<_, _>>()?
    };
    let node = Node::start(
        Config {
            home: home.clone(),
            relays: relays.clone(),
            listen,
            direct: opts.direct,
        },
        lock,
    )
    .await
    .map_err(|e| failed(&e))?;
    let mut events = node.subscribe();
    let token = api::new_token(&home).map_err(|e| failed(&e))?;
    // No port asked for: the last run's, when free, so an open web UI page finds the node
    // again; else any.
    let again = match (opts.api.port(), config.api_port) {
        (0, Some(port)) => {
            let addr = SocketAddr::new(opts.api.ip(), port);
            api::server::serve(node.clone(), addr, token.clone(), &home)
                .await
                .ok()
        }
        _ => None,
    };
    let (bound, api_server) = match again {
        Some(served) => served,
        None => api::server::serve(node.clone(), opts.api, token, &home)
            .await
            .map_err(|e| failed(&e))?,
    };
    if config.api_port != Some(bound.port()) {
        config.api_port = Some(bound.port());
        home.save_config(&config).map_err(|e| failed(&e))?;
    }
    api::write_node_file(
        &home,
        &NodeFile {
            api: bound,
            pid: std::process::id(),
        },
    )
    .map_err(|e| failed(&e))?;
    // Wait (bounded) until a home relay is connected and our keys are published there.
    // The first home relay to connect (any of them will do; a contact's relay, which may
    // connect first, does not).
    let home_peers: Vec<String> = relays
        .iter()
        .filter_map(crate::engine::relay_peer)
        .map(|p| p.to_string())
        .collect();
    let connected = tokio::time::timeout(RELAY_READY_WAIT, async {
        loop {
            match events.recv().await {
                Ok(Event::Connection {
                    connected: true,
                    relay,
                }) if home_peers.contains(&relay) => return Some(relay),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let id = node.id().await.map_err(|e| failed(&e))?;
    ready(Ready {
        api: bound,
        user_id: id.user_id.to_string(),
        device_id: id.device_id.to_string(),
        relay_connected: connected.is_some(),
        // Events name a relay by its peer id; the line gives its address.
        relay: relays
            .iter()
            .find(|a| {
                connected.as_deref().is_some_and(|peer| {
                    matches!(a.iter().last(), Some(Protocol::P2p(p)) if p.to_string() == peer)
                })
            })
            .or(relays.first())
            .map(ToString::to_string)
            .unwrap_or_default(),
        notes,
    });
    tokio::select! {
        () = shutdown => {}
        () = node.stop_requested() => tracing::info!("stop asked for over the API"),
    }
    let _ = std::fs::remove_file(home.node_file_path());
    // Requests the node took are answered before it goes (new ones are told it stops).
    api_server.stop(API_STOP_GRACE).await;
    drop(node);
    if let Some((stop, task)) = embedded {
        let _ = stop.send(());
        let _ = tokio::time::timeout(server::SHUTDOWN_GRACE, task).await;
    }
    Ok(())
}
