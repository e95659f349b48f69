//! `tern up`: the daemon (`tern_node::daemon`) in the foreground until Ctrl-C or SIGTERM.

use std::{io::Write, net::SocketAddr};

use tern_node::{
    Home,
    daemon::{self, UpError, UpOptions},
};

use crate::exit::{self, Failure};

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
            other => Failure::new(exit::FAILURE, other.to_string()),
        })
}
