//! Helpers that start the real `tern-relay` binary and clean it up.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use tern_relay::Multiaddr;

/// Longest wait for the relay to print its addresses.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for anything in a test.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running relay process; killed on drop.
pub struct Relay {
    child: Option<Child>,
    /// Its TCP address (with /p2p).
    pub tcp: Multiaddr,
    /// Its QUIC address (with /p2p).
    pub quic: Multiaddr,
    /// The metrics endpoint, if asked for.
    pub metrics: Option<String>,
    /// Data directory.
    pub data: PathBuf,
}

impl Relay {
    /// Starts a relay on 127.0.0.1 port 0 with `extra` TOML appended to the config.
    pub fn start(data: &Path, extra: &str) -> Relay {
        let cfg = data.join("relay.toml");
        let text = format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmetrics = \"127.0.0.1:0\"\n{extra}\n",
            data.join("db").display().to_string()
        );
        std::fs::write(&cfg, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-relay"))
            .arg("--config")
            .arg(&cfg)
            .env(
                "RUST_LOG",
                std::env::var("TERN_RELAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tern-relay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut relay = Relay {
            child: Some(child),
            tcp: Multiaddr::empty(),
            quic: Multiaddr::empty(),
            metrics: None,
            data: data.to_owned(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while relay.tcp.is_empty() || relay.quic.is_empty() || relay.metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("relay printed its addresses in time");
            if let Some(m) = line.strip_prefix("metrics ") {
                relay.metrics = Some(m.to_owned());
            } else if line.starts_with('/') {
                let addr: Multiaddr = line.parse().expect("printed address is a multiaddr");
                if line.contains("/tcp/") {
                    relay.tcp = addr;
                } else if line.contains("/quic-v1") {
                    relay.quic = addr;
                }
            }
        }
        relay
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("relay running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("relay did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET a path on the metrics endpoint: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::{client::legacy::Client, rt::TokioExecutor};
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let uri: hyper::Uri = format!("{}{}", self.metrics.as_ref().unwrap(), path)
            .parse()
            .unwrap();
        let resp = tokio::time::timeout(WAIT, client.get(uri))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// One metric's value (first sample whose line starts with `name `).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
