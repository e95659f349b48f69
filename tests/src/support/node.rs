//! Nodes: the `tern` CLI, a `tern up` process, and waits on what nodes report.

use super::*;

/// The `tern` CLI for a home with `args`, standard input empty: for a test that needs its
/// output elsewhere than [`tern`] captures it, or to run it in the background.
pub fn tern_command(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("tern"));
    c.arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TERN_HOME")
        .stdin(Stdio::null());
    c
}

/// Runs the `tern` CLI once for a home.
pub fn tern(home: &Path, args: &[&str]) -> Output {
    tern_command(home, args)
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
    /// The `ready ...` line `tern up` printed.
    pub ready: String,
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
            ready: line.clone(),
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

    /// Runs the CLI, killing it if it has not exited within `limit` (an error then).
    pub fn cli_within(&self, args: &[&str], limit: Duration) -> anyhow::Result<Output> {
        let child = tern_command(&self.home, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(out) => Ok(out?),
            Err(_) => {
                let _ = signal(Some(pid), "-KILL");
                bail!("tern {args:?} still running after {limit:?}")
            }
        }
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

    /// SIGSTOP: the node keeps its connections and answers nothing, as a phone that lost
    /// its network without a word does. [`Node::thaw`] lets it go on; a frozen node is
    /// still killed on drop.
    pub fn freeze(&self) -> anyhow::Result<()> {
        signal(self.pid(), "-STOP")
    }

    /// SIGCONT after [`Node::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        signal(self.pid(), "-CONT")
    }

    /// The node's exit code once its process has ended (reaped), `None` while it runs.
    pub fn exit_code(&mut self) -> anyhow::Result<Option<i32>> {
        let c = self.child.as_mut().context("the node was not started")?;
        Ok(c.try_wait()?.map(|s| s.code().unwrap_or(-1)))
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
