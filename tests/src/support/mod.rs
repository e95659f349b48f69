//! Helpers that start real `tern-relay` and `tern up` processes on 127.0.0.1 with temporary
//! homes, wait for them with bounded waits, and kill them on drop.
//!
//! The binaries are taken from the target directory this test binary runs from
//! (`target/<profile>/tern`, `target/<profile>/tern-relay`); `cargo test --workspace
//! --all-features` builds both before any test runs. When one is missing (a lone
//! `cargo test -p tern-tests`), it is built once with `cargo build`.

pub mod media;

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

/// A running `tern-relay`; killed on drop.
#[derive(Debug)]
pub struct Relay {
    child: Option<Child>,
    /// Its TCP address with `/p2p/<id>`.
    pub addr: String,
    /// The data directory.
    pub data: PathBuf,
    port: u16,
    /// The metrics endpoint's port, when started with [`Relay::start_with_metrics`].
    metrics: Option<u16>,
}

impl Relay {
    /// The relay process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts a relay with its data in `data` on a free loopback port; `extra` is appended
    /// to its TOML config.
    pub fn start(data: &Path, extra: &str) -> anyhow::Result<Relay> {
        Self::start_on(data, free_port(), extra)
    }

    /// Like [`Relay::start`], with the metrics endpoint on a free loopback port, read with
    /// [`Relay::metric`].
    pub fn start_with_metrics(data: &Path, extra: &str) -> anyhow::Result<Relay> {
        let metrics = free_port();
        let mut relay = Self::start(data, &format!("metrics = \"127.0.0.1:{metrics}\"\n{extra}"))?;
        relay.metrics = Some(metrics);
        Ok(relay)
    }

    /// One counter or gauge from the relay's metrics endpoint.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let port = self
            .metrics
            .ok_or_else(|| anyhow!("the relay was started without metrics"))?;
        relay_metric(port, name)
    }

    fn start_on(data: &Path, port: u16, extra: &str) -> anyhow::Result<Relay> {
        std::fs::create_dir_all(data)?;
        let cfg = data.join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n{extra}\n",
                data.join("db").display().to_string()
            ),
        )?;
        let mut child = Command::new(bin("tern-relay"))
            .arg("--config")
            .arg(&cfg)
            .env(
                "RUST_LOG",
                std::env::var("TERN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn tern-relay")?;
        let lines = spawn_lines(&mut child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("relay printed no address in time"))?;
            if line.starts_with("/ip4/") && line.contains("/tcp/") {
                break line;
            }
        };
        Ok(Relay {
            child: Some(child),
            addr,
            data: data.to_owned(),
            port,
            metrics: None,
        })
    }

    /// SIGKILL, then start again on the same port with the same data.
    pub fn restart_after_kill9(&mut self, extra: &str) -> anyhow::Result<()> {
        self.kill9();
        let fresh = Self::start_on(&self.data, self.port, extra)?;
        *self = fresh;
        Ok(())
    }

    /// Starts a relay killed with [`Relay::kill9`] again, on the same port with the same
    /// data (without metrics).
    pub fn start_again(&mut self, extra: &str) -> anyhow::Result<()> {
        self.kill9();
        let fresh = Self::start_on(&self.data, self.port, extra)?;
        *self = fresh;
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One counter or gauge (the line `name value`) from the metrics endpoint of a relay on
/// 127.0.0.1:`port`.
pub fn relay_metric(port: u16, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {name} in the relay's metrics"))
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `tern` CLI once for a home.
pub fn tern(home: &Path, args: &[&str]) -> Output {
    Command::new(bin("tern"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TERN_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tern: {e}"))
}

/// Runs the `tern` CLI and returns stdout, failing unless it exits 0.
pub fn tern_ok(home: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = tern(home, args);
    if !out.status.success() {
        bail!(
            "tern {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the `tern` CLI with `--json` and parses stdout.
pub fn tern_json(home: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = tern_ok(home, &all)?;
    serde_json::from_str(&out).with_context(|| format!("JSON from tern {args:?}: {out}"))
}

/// A `tern up` process; killed on drop.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    /// The home directory.
    pub home: PathBuf,
    /// The local API address.
    pub api: SocketAddr,
    /// User id.
    pub user: String,
    /// Device id.
    pub device: String,
    relay: Option<String>,
    extra: Vec<String>,
}

impl Node {
    /// Creates a home with `name` under `dir` and starts `tern up` against `relay`.
    pub fn init_and_start(dir: &Path, name: &str, relay: Option<&str>) -> anyhow::Result<Node> {
        Self::init_and_start_with(dir, name, relay, &[])
    }

    /// Like [`Node::init_and_start`] with extra `tern up` arguments.
    pub fn init_and_start_with(
        dir: &Path,
        name: &str,
        relay: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Node> {
        let home = dir.join(name);
        tern_ok(&home, &["init", "--name", name])?;
        Self::start_with(&home, relay, extra)
    }

    /// Starts `tern up` for an existing home (`relay`: None runs the embedded relay).
    pub fn start(home: &Path, relay: Option<&str>) -> anyhow::Result<Node> {
        Self::start_with(home, relay, &[])
    }

    /// Like [`Node::start`] with extra `tern up` arguments (e.g. `--no-direct`).
    pub fn start_with(home: &Path, relay: Option<&str>, extra: &[&str]) -> anyhow::Result<Node> {
        let mut cmd = Command::new(bin("tern"));
        cmd.arg("--home")
            .arg(home)
            .args(["up", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env_remove("TERN_HOME")
            .env(
                "TERN_LOG",
                std::env::var("TERN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(r) = relay {
            cmd.args(["--relay", r]);
        }
        cmd.args(extra);
        let mut child = cmd.spawn().context("spawn tern up")?;
        let lines = spawn_lines(&mut child);
        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("tern up printed no ready line in time"))?;
            if line.starts_with("ready ") {
                break line;
            }
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("ready line lacks {k}: {line}"))
        };
        Ok(Node {
            child: Some(child),
            home: home.to_owned(),
            api: field("api")?.parse()?,
            user: field("user")?,
            device: field("device")?,
            relay: relay.map(str::to_owned),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// The `tern up` process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        tern(&self.home, args)
    }

    /// Runs the CLI and returns stdout (exit 0 required).
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        tern_ok(&self.home, args)
    }

    /// Runs the CLI with `--json`.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        tern_json(&self.home, args)
    }

    /// This node's contact link.
    pub fn link(&self) -> anyhow::Result<String> {
        Ok(self.json(&["contact", "link"])?["link"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// A connected API client.
    pub async fn api(&self) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::for_home(&Home::new(&self.home)).await?)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(mut c) => terminate(&mut c),
            None => Ok(()),
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node again (after [`Node::stop`] or [`Node::kill9`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let fresh = Node::start_with(&self.home, self.relay.as_deref(), &extra)?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `a` holds a direct (not relayed) connection to `b`'s device.
pub fn wait_direct(a: &Node, b: &Node, timeout: Duration) -> anyhow::Result<()> {
    wait_for("a direct connection", timeout, || {
        let s = a.json(&["status"]).ok()?;
        s["peers"]
            .as_array()?
            .iter()
            .any(|p| p["user_id"] == b.user.as_str() && p["direct"].as_u64() > Some(0))
            .then_some(())
    })
}

/// Waits until `node`'s outbox is empty: everything handed to a relay or a peer.
pub fn wait_outbox_empty(node: &Node, timeout: Duration) -> anyhow::Result<()> {
    wait_for("the outbox to drain", timeout, || {
        let s = node.json(&["status"]).ok()?;
        (s["outbox"].as_u64()? == 0).then_some(())
    })
}

/// Makes two nodes contacts of each other (each adds the other's link).
pub fn link_pair(a: &Node, b: &Node, a_name: &str, b_name: &str) -> anyhow::Result<()> {
    let la = a.link()?;
    let lb = b.link()?;
    a.ok(&["contact", "add", &lb, "--name", b_name])?;
    b.ok(&["contact", "add", &la, "--name", a_name])?;
    Ok(())
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// Runs the `tern` CLI once for a home with `input` on its standard input.
pub fn tern_with_stdin(home: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin("tern"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TERN_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run tern: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        // A failed write shows as the command's own failure below.
        let _ = stdin.write_all(input);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for tern: {e}"))
}

/// Starts one node per name under `dir` against `relay`, all at once (each `tern init` +
/// `tern up`), in the order of `names`.
pub fn start_nodes(dir: &Path, names: &[&str], relay: &str) -> anyhow::Result<Vec<Node>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| s.spawn(move || Node::init_and_start(dir, name, Some(relay))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("a node start panicked"))
                    .and_then(|r| r)
            })
            .collect()
    })
}

/// A read-only connection to a running relay's SQLite database (in `data`).
pub fn relay_db(data: &Path) -> anyhow::Result<rusqlite::Connection> {
    use rusqlite::{Connection, OpenFlags};
    let db_dir = data.join("db");
    let db = std::fs::read_dir(&db_dir)
        .with_context(|| format!("relay data dir {}", db_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sqlite3"))
        .ok_or_else(|| anyhow!("no relay database in {}", db_dir.display()))?;
    let conn = Connection::open_with_flags(
        &db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(WAIT)?;
    Ok(conn)
}

/// Every ciphertext a relay holds in its mailboxes right now, read from its SQLite database
/// (in `data`, as [`Relay::data`]) through a read-only connection while it runs. What is
/// there is exactly what the relay (and anyone with its disk) can see.
pub fn relay_ciphertexts(data: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let conn = relay_db(data)?;
    let mut st = conn.prepare(
        "SELECT body FROM message WHERE id IN (SELECT message FROM mailbox) ORDER BY id",
    )?;
    let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A node's group history (up to 500 messages, not marked read); empty if it cannot be read.
pub fn group_history(node: &Node, group: &str) -> Vec<serde_json::Value> {
    node.json(&[
        "group",
        "history",
        group,
        "--limit",
        "500",
        "--no-mark-read",
    ])
    .map(|v| v.as_array().cloned().unwrap_or_default())
    .unwrap_or_default()
}

/// The ids of a history, in display order.
pub fn message_ids(h: &[serde_json::Value]) -> Vec<String> {
    h.iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The texts of the `text` messages of a history, in display order.
pub fn message_texts(h: &[serde_json::Value]) -> Vec<String> {
    h.iter()
        .filter(|m| m["kind"] == "text")
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A running `tern device link` on an empty home: the code it printed, and its output and
/// input, to answer the words of the records it shows. Killed on drop.
#[derive(Debug)]
pub struct Linking {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The `tern-device:` code it shows.
    pub code: String,
}

impl Linking {
    /// Starts `tern device link` in `home` (relay `relay`, device name `name`) and waits for
    /// its code.
    pub fn start(home: &Path, relay: &str, name: &str) -> anyhow::Result<Linking> {
        let mut child = Command::new(bin("tern"))
            .arg("--home")
            .arg(home)
            .args(["device", "link", "--relay", relay, "--name", name])
            .args(["--no-qr", "--timeout", "60"])
            .env_remove("TERN_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn tern device link")?;
        let lines = spawn_lines(&mut child);
        let mut linking = Linking {
            child,
            lines,
            code: String::new(),
        };
        linking.code = linking
            .line_after("link code: ")
            .context("tern device link printed no code")?;
        Ok(linking)
    }

    /// The rest of the next output line that starts with `prefix` (earlier lines skipped),
    /// waiting at most [`WAIT`].
    pub fn line_after(&mut self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("tern device link printed no {prefix:?} line in time"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
    }

    /// The words of the next record it shows.
    pub fn next_words(&mut self) -> anyhow::Result<String> {
        self.line_after("words: ")
    }

    /// Writes one answer line (`y`, `n` or the words) to its input.
    pub fn answer(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("no input to tern device link"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits at most [`WAIT`] for it to exit: its exit code and standard error.
    pub fn finish(mut self) -> anyhow::Result<(Option<i32>, String)> {
        use std::io::Read;
        let status = wait_for("tern device link to exit", WAIT, || {
            self.child.try_wait().ok().flatten()
        })?;
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Ok((status.code(), err))
    }
}

impl Drop for Linking {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Links a new device of `of`'s user in the empty home `home`: `tern device link` there (its
/// relay: `relay`), `tern device add CODE` on `of`, checks that the new device shows the
/// words `device add` printed, confirms them there, and waits for the new home to be set up.
/// Returns the new device's JSON from `device add`.
pub fn link_device(
    of: &Node,
    home: &Path,
    relay: &str,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut link = Linking::start(home, relay, name)?;
    let added = of.json(&["device", "add", &link.code])?;
    let words = added["words"]
        .as_str()
        .ok_or_else(|| anyhow!("device add gave no words: {added}"))?
        .to_owned();
    let shown = link.next_words()?;
    if shown != words {
        bail!("the new device shows {shown:?}, the adding device {words:?}");
    }
    link.answer(&words)?;
    let (code, err) = link.finish()?;
    if code != Some(0) {
        bail!("tern device link exited {code:?}: {err}");
    }
    Ok(added)
}

/// The messages a relay's mailbox for `device` (a device id as `tern` prints it) holds right
/// now, from `sender` only if given, read from its SQLite database (in `data`) while it runs:
/// their ids.
pub fn relay_mail_from(
    data: &Path,
    device: &str,
    sender: Option<&str>,
) -> anyhow::Result<Vec<i64>> {
    let key = |d: &str| {
        tern_crypto::DeviceId::from_peer_id_string(d)
            .map(|d| d.to_peer_id_bytes())
            .ok_or_else(|| anyhow!("{d} is not a device id"))
    };
    let owner = key(device)?;
    let sender = sender.map(key).transpose()?;
    let conn = relay_db(data)?;
    let mut st = conn.prepare(
        "SELECT m.id FROM mailbox b JOIN message m ON m.id = b.message \
         WHERE b.owner = ?1 AND (?2 IS NULL OR m.sender = ?2) ORDER BY b.seq",
    )?;
    let rows = st.query_map(rusqlite::params![owner, sender], |r| r.get(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Writes `n` messages of a conversation with `ben` (user and device id) into the store of
/// the stopped node at `home`, as if they had been exchanged: every third one its own, each
/// sender's sequence without gaps. For history tests and benches: 20,000 real sends would
/// take minutes.
pub fn seed_history(home: &Path, ben: &str, ben_device: &str, n: u32) -> anyhow::Result<()> {
    let (mut store, keys) = tern_node::Home::new(home).open()?;
    let me = keys.identity.user_id().to_string();
    let my_device = keys.device.device_id().to_peer_id_string();
    let conv = tern_store::ConversationId(ben.to_owned());
    let pad = "x".repeat(300);
    store.transaction(|tx| -> anyhow::Result<()> {
        tx.ensure_conversation(&conv, tern_store::ConversationKind::Direct, Some("ben"), 1)?;
        let (mut own_seq, mut ben_seq) = (0u64, 0u64);
        for i in 1..=n {
            let own = i % 3 == 0;
            // Each sender's sequence runs without gaps, as a real exchange's does.
            let seq = if own { &mut own_seq } else { &mut ben_seq };
            *seq += 1;
            let seq = *seq;
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[4] = 0x5e;
            tx.insert_message(&tern_store::Message {
                id: tern_store::MessageId(id),
                conversation: conv.clone(),
                sender_user: if own { me.clone() } else { ben.to_owned() },
                sender_device: if own {
                    my_device.clone()
                } else {
                    ben_device.to_owned()
                },
                lamport: u64::from(i),
                seq,
                sent_at_ms: 1_700_000_000_000 + i64::from(i),
                received_at_ms: 1_700_000_000_000 + i64::from(i),
                own,
                status: if own {
                    tern_store::Status::Read
                } else {
                    tern_store::Status::Received
                },
                body: tern_store::Body::Text(format!("old message {i} {pad}")),
                edited_at_ms: None,
            })?;
        }
        Ok(())
    })?;
    Ok(())
}

/// A POST a [`PushReceiver`] got.
#[derive(Debug, Clone)]
pub struct PushPost {
    /// When it arrived.
    pub at: Instant,
    /// The request path.
    pub path: String,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// A local HTTP server standing in for a push gateway (e.g. a UnifiedPush distributor) on
/// 127.0.0.1, port chosen by the system: records every request and answers `200`.
#[derive(Debug)]
pub struct PushReceiver {
    /// Its port.
    pub port: u16,
    posts: mpsc::Receiver<PushPost>,
}

impl PushReceiver {
    /// Binds 127.0.0.1:0 and serves on a thread (one connection at a time, which is all a
    /// relay's debounced wake-ups need).
    pub fn start() -> anyhow::Result<PushReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (tx, posts) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match read_post(stream) {
                    Ok(post) => {
                        if tx.send(post).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("push receiver: {e:#}"),
                }
            }
        });
        Ok(PushReceiver { port, posts })
    }

    /// The next request, waiting at most `timeout` (`None`: none came).
    pub fn next(&self, timeout: Duration) -> Option<PushPost> {
        self.posts.recv_timeout(timeout).ok()
    }
}

fn read_post(stream: std::net::TcpStream) -> anyhow::Result<PushPost> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse()?,
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut stream = stream;
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    if method != "POST" {
        bail!("push receiver got {method} {path}");
    }
    Ok(PushPost {
        at: Instant::now(),
        path,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Every inbound sender key in a stopped node's store, as (session id, pickle).
///
/// The session ids are listed with a read-only query on the SQLCipher file, keyed from the
/// home's key file and the salt in the file's header (the store's own key format); each key
/// is then loaded through `tern_store` itself, so the pickles are what the node would use.
pub fn inbound_sender_keys(home: &Path) -> Vec<(String, tern_crypto::group::InboundSenderKey)> {
    use tern_store::{
        SenderKeyStore,
        consts::{KEY_LEN, KEYFILE_LEN, KEYFILE_MAGIC, SALT_LEN},
    };
    let home = Home::new(home);
    let keyfile = std::fs::read(home.store_key_path()).unwrap();
    assert_eq!(keyfile.len(), KEYFILE_LEN);
    assert_eq!(&keyfile[..KEYFILE_MAGIC.len()], KEYFILE_MAGIC);
    let key = &keyfile[KEYFILE_LEN - KEY_LEN..];
    let db = std::fs::read(home.db_path()).unwrap();
    let salt = &db[..SALT_LEN];
    let hex = tern_crypto::hex::encode;
    let conn = rusqlite::Connection::open_with_flags(
        home.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.pragma_update(None, "key", format!("x'{}{}'", hex(key), hex(salt)))
        .unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT session_id FROM inbound_group_sessions ORDER BY session_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);

    let (mut store, _keys) = home.open().unwrap();
    store
        .transaction(|tx| {
            ids.iter()
                .map(|id| {
                    let s = tx.inbound_group_session(id)?.unwrap();
                    let key = tern_crypto::group::InboundSenderKey::from_pickle(&s.pickle).unwrap();
                    assert_eq!(&key.session_id(), id);
                    Ok((id.clone(), key))
                })
                .collect::<Result<Vec<_>, tern_store::WriteError>>()
        })
        .unwrap()
}

/// Which of `keys` opens `message`, with the plaintext.
pub fn opens(
    keys: &mut [(String, tern_crypto::group::InboundSenderKey)],
    message: &[u8],
) -> Option<Vec<u8>> {
    let message = tern_crypto::group::GroupMessage::from_bytes(message).ok()?;
    keys.iter_mut().find_map(|(_, key)| {
        key.decrypt(
            &message,
            &mut tern_crypto::group::MemoryReplayLedger::default(),
        )
        .ok()
        .map(|d| d.body.to_vec())
    })
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The relay's code in a refusal; panics on any other failure.
pub fn refusal(e: tern_relay::client::RequestError) -> tern_relay::wire::ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected a refusal, got {e}"))
}

/// Waits (bounded) until the device `victim` has closed its mailbox at the relay `addr` to
/// strangers (registered its grants): a fresh identity's deposit with a wrong token is then
/// refused `no_grant` rather than taken.
pub fn wait_mailbox_closed(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    victim: tern_relay::PeerId,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    use tern_relay::client::{Client, Config, Keypair};
    use tern_relay::rpc::Requests as _;
    let addr: tern_relay::Multiaddr = addr.parse()?;
    let (prober, _) = rt.block_on(Client::connect(
        Keypair::generate_ed25519(),
        addr,
        Config::default(),
    ))?;
    wait_for(what, timeout, || {
        let r =
            rt.block_on(prober.deposit_with(vec![victim], vec![Some([0; 32])], None, vec![1; 16]));
        match r {
            Err(e) => (refusal(e) == tern_relay::wire::ErrorCode::NoGrant).then_some(()),
            Ok(_) => None,
        }
    })
}
