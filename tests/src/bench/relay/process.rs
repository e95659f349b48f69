//! The `tern-relay` child process the `relay` suite measures.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};
use tern_relay::{Multiaddr, libp2p};

use super::START_TIMEOUT;

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

/// A `tern-relay` child process on 127.0.0.1 with the benchmark configuration; killed on
/// drop.
pub(super) struct RelayProcess {
    pub(super) child: Child,
    pub(super) addr: Multiaddr,
    pub(super) addrs: Vec<Multiaddr>,
    _dir: tempfile::TempDir,
}

/// The relay binary: `TERN_RELAY_BIN`, or `tern-relay` next to this one.
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
    pub(super) fn start() -> anyhow::Result<Self> {
        Self::start_with(BENCH_CONFIG, &["/ip4/127.0.0.1/tcp/0"])
    }

    /// The relay with `config` (TOML after `data_dir` and `listen`), listening on `listen`
    /// (each with port 0); waits until it has printed an address for each. `addr` is the
    /// first, `addrs` all of them in the order printed.
    pub(super) fn start_with(config: &str, listen: &[&str]) -> anyhow::Result<Self> {
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
    pub(super) fn addr_of(&self, ip6: bool) -> anyhow::Result<&Multiaddr> {
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
