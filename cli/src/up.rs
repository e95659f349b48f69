//! `tern up`: the daemon (`tern_node::daemon`) in the foreground until Ctrl-C or SIGTERM.

use std::{io::Write, net::SocketAddr, time::Duration};

use serde_json::json;
use tern_node::{
    Home,
    api::client::{ApiClient, ClientError},
    daemon::{self, UpError, UpOptions},
};

use crate::{
    exit::{self, Failure},
    render::print_json,
};

/// Longest `tern down` waits for the node's process to end once asked to stop (the node
/// gives its embedded relay a few seconds to finish).
const DOWN_WAIT: Duration = Duration::from_secs(30);
/// How often `tern down` looks whether the node has ended.
const DOWN_POLL: Duration = Duration::from_millis(50);

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

pub(crate) async fn run(
    home: Home,
    relays: Vec<String>,
    listen: Vec<String>,
    api: SocketAddr,
    direct: bool,
) -> Result<(), Failure> {
    let opts = UpOptions {
        relays,
        listen,
        api,
        direct,
    };
    let ready = |r: daemon::Ready| {
        for note in &r.notes {
            eprintln!("tern: {note}");
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "ready api={} user={} device={} relay={} relay_connected={}",
            r.api, r.user_id, r.device_id, r.relay, r.relay_connected
        );
        let _ = writeln!(
            out,
            "web UI: run `tern ui` (or open http://{}/ after `tern ui --print`)",
            r.api
        );
        let _ = out.flush();
    };
    daemon::run(home, opts, ready, shutdown_signal())
        .await
        .map_err(|e| match e {
            UpError::Usage(m) => Failure::new(exit::USAGE, m),
            UpError::InUse(m) => Failure::new(exit::NODE_RUNNING, m),
            other => Failure::new(exit::FAILURE, other.to_string()),
        })
}

/// `tern down`: asks the node of `home` to stop (API `node.stop`) and waits until it no
/// longer answers and its process has ended. No node running is exit 3, as for any command
/// that needs one.
pub(crate) async fn down(home: &Home, json_out: bool) -> Result<(), Failure> {
    let pid = tern_node::api::read_node_file(&home.node_file_path()).map(|f| f.pid);
    let mut c = crate::client(home).await?;
    c.call("node.stop", json!({})).await?;
    drop(c);
    let deadline = tokio::time::Instant::now() + DOWN_WAIT;
    loop {
        let answers = !matches!(
            ApiClient::for_home(home).await,
            Err(ClientError::NotRunning { .. })
        );
        if !answers && !pid.is_some_and(process_alive) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::new(
                exit::FAILURE,
                format!(
                    "the node was asked to stop but is still running after {} s",
                    DOWN_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(DOWN_POLL).await;
    }
    if json_out {
        print_json(&json!({"stopped": true}));
    } else {
        outln!("stopped");
    }
    Ok(())
}

/// Whether process `pid` still runs (not ended, nor a zombie waiting for its parent), where
/// `/proc` tells; elsewhere the API's silence is taken as the end.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}
