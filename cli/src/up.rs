//! `tern up`: the node in the foreground, with an embedded relay when none is configured.

use std::{io::Write, net::SocketAddr, time::Duration};

use tern_node::{
    Config, Home, Node,
    api::{self, NodeFile},
    libp2p::{Multiaddr, multiaddr::Protocol},
    types::Event,
};
use tern_relay::server::{self, Announcement};
use tokio::sync::{mpsc, oneshot};

use crate::Failure;

/// The display name a first `tern up` uses when `$USER` is not set.
const DEFAULT_NAME: &str = "me";
/// The device name a first `tern up` gives this device.
const DEFAULT_DEVICE_NAME: &str = "device";
/// How long `up` waits for the home relay before printing the ready line anyway.
const RELAY_READY_WAIT: Duration = Duration::from_secs(10);
/// Listen addresses of the embedded relay queued for `up` (it uses the first).
const EMBEDDED_ADDR_QUEUE: usize = 8;
/// How long the embedded relay may take to bind.
const EMBEDDED_START_WAIT: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Starts the embedded relay on loopback; returns its TCP address and a stop handle.
async fn embedded_relay(
    home: &Home,
    port: Option<u16>,
) -> Result<(Multiaddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>), Failure> {
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
        if let Err(e) = server::run(config, announce, async {
            let _ = stop_rx.await;
        })
        .await
        {
            eprintln!("tern: embedded relay stopped: {e}");
        }
    });
    let addr = tokio::time::timeout(EMBEDDED_START_WAIT, addr_rx.recv())
        .await
        .ok()
        .flatten()
        .ok_or_else(|| Failure::new(1, "the embedded relay did not start"))?;
    Ok((addr, stop_tx, task))
}

fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

pub(crate) async fn run(
    home: Home,
    relay: Vec<String>,
    listen: Vec<String>,
    api_addr: SocketAddr,
    direct: bool,
) -> Result<(), Failure> {
    if !home.is_initialised() {
        // A first `tern up` should just work: create the identity `tern init` would have.
        let name = std::env::var("USER")
            .ok()
            .filter(|n| !n.is_empty() && n.len() <= tern_node::consts::MAX_NAME_BYTES)
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let created = home
            .init(&name, DEFAULT_DEVICE_NAME)
            .map_err(|e| Failure::new(1, e.to_string()))?;
        eprintln!(
            "tern: created a new identity in {} (user id {}, name {name:?}); keep this directory safe",
            home.dir().display(),
            created.user_id
        );
    }
    let mut config = home.config().map_err(|e| Failure::new(1, e.to_string()))?;
    let parse = |s: &String| -> Result<Multiaddr, Failure> {
        s.parse()
            .map_err(|e| Failure::new(2, format!("bad multiaddr {s:?}: {e}")))
    };
    let mut relays: Vec<Multiaddr> = relay.iter().map(parse).collect::<Result<_, _>>()?;
    if !relays.is_empty() {
        for r in &relays {
            if !matches!(r.iter().last(), Some(Protocol::P2p(_))) {
                return Err(Failure::new(
                    2,
                    format!("relay address {r} lacks /p2p/<peer id>"),
                ));
            }
        }
        config.relays = relay.clone();
        home.save_config(&config)
            .map_err(|e| Failure::new(1, e.to_string()))?;
    } else {
        relays = config.relays.iter().map(parse).collect::<Result<_, _>>()?;
    }
    let mut embedded = None;
    if relays.is_empty() {
        let (addr, stop, task) = embedded_relay(&home, config.embedded_relay_port).await?;
        if config.embedded_relay_port.is_none() {
            config.embedded_relay_port = tcp_port(&addr);
            home.save_config(&config)
                .map_err(|e| Failure::new(1, e.to_string()))?;
        }
        eprintln!("tern: embedded relay at {addr}");
        relays.push(addr);
        embedded = Some((stop, task));
    }
    let listen: Vec<Multiaddr> = if listen.is_empty() {
        vec![
            "/ip4/0.0.0.0/tcp/0"
                .parse()
                .map_err(|_| Failure::new(1, "listen address"))?,
        ]
    } else {
        listen.iter().map(parse).collect::<Result<_, _>>()?
    };
    let node = Node::start(Config {
        home: home.clone(),
        relays: relays.clone(),
        listen,
        direct,
    })
    .await
    .map_err(|e| Failure::new(1, e.to_string()))?;
    let mut events = node.subscribe();
    let token = api::new_token(&home).map_err(|e| Failure::new(1, e.to_string()))?;
    let (bound, _api_task) = api::server::serve(node.clone(), api_addr, token)
        .await
        .map_err(|e| Failure::new(1, e.to_string()))?;
    api::write_node_file(
        &home,
        &NodeFile {
            api: bound,
            pid: std::process::id(),
        },
    )
    .map_err(|e| Failure::new(1, e.to_string()))?;
    // Wait (bounded) until a home relay is connected and our keys are published there.
    let ready = tokio::time::timeout(RELAY_READY_WAIT, async {
        loop {
            match events.recv().await {
                Ok(Event::Connection {
                    connected: true, ..
                }) => return true,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let id = node
        .id()
        .await
        .map_err(|e| Failure::new(1, e.to_string()))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "ready api={bound} user={} device={} relay={} relay_connected={ready}",
            id.user_id,
            id.device_id,
            relays.first().map(ToString::to_string).unwrap_or_default()
        );
        let _ = out.flush();
    }
    shutdown_signal().await;
    let _ = std::fs::remove_file(home.node_file_path());
    drop(node);
    if let Some((stop, task)) = embedded {
        let _ = stop.send(());
        let _ = tokio::time::timeout(server::SHUTDOWN_GRACE, task).await;
    }
    Ok(())
}
