//! Helpers that start real `tern-relay` and `tern up` processes on 127.0.0.1 with temporary
//! homes, wait for them with bounded waits, and kill them on drop.
//!
//! The binaries are taken from the target directory this test binary runs from
//! (`target/<profile>/tern`, `target/<profile>/tern-relay`); `cargo test --workspace
//! --all-features` builds both before any test runs. When one is missing (a lone
//! `cargo test -p tern-tests`), it is built once with `cargo build`.

mod inspect;
pub mod link;
mod linking;
pub mod media;
mod node;
mod push;
mod relay;

pub use inspect::*;
pub use linking::*;
pub use node::*;
pub use push::*;
pub use relay::*;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Once, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use tern_node::{Home, api::client::ApiClient};

/// Longest wait for a process to start and print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a condition in a test.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a condition is re-checked while waiting.
pub const POLL: Duration = Duration::from_millis(25);

static BUILD: Once = Once::new();

/// The path of a workspace binary next to the running test binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> (a test) or target/<profile>/<bin> (tern-bench)
    // → target/<profile>/<name>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        BUILD.call_once(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = dir.ends_with("release");
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "tern-cli",
                "-p",
                "tern-relay",
                "--features",
                "tern-relay/server",
            ]);
            if release {
                cmd.arg("--release");
            }
            let _ = cmd.status();
        });
    }
    path
}

/// A free TCP port on 127.0.0.1 (bound and released; another process could take it in
/// between, which on a test machine does not happen in practice).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until `f` returns `Some`, re-checking every [`POLL`], at most `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

fn spawn_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Sends a signal (`kill` argument, as `-STOP`) to a running child process.
fn signal(pid: Option<u32>, which: &str) -> anyhow::Result<()> {
    let pid = pid.context("the process is not running")?;
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill {which} {pid} failed");
    Ok(())
}

fn terminate(child: &mut Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    if !status.success() {
        bail!("kill -TERM failed");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {} did not exit after SIGTERM", child.id());
        }
        std::thread::sleep(POLL);
    }
}

/// A runtime for a test's async parts: two worker threads, as on a 2-core CI machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
