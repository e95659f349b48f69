//! Relays: a `tern-relay` process, its metrics, and what its database holds.

use super::*;

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

    /// Starts a relay with its data in `data` on a loopback port of its own choosing (it
    /// binds port 0; the port is read from the address it prints); `extra` is appended to
    /// its TOML config.
    pub fn start(data: &Path, extra: &str) -> anyhow::Result<Relay> {
        Self::start_on(data, 0, extra, false)
    }

    /// Like [`Relay::start`], with the metrics endpoint on a loopback port of its own
    /// choosing too, read with [`Relay::metric`].
    pub fn start_with_metrics(data: &Path, extra: &str) -> anyhow::Result<Relay> {
        Self::start_on(data, 0, extra, true)
    }

    /// One counter or gauge from the relay's metrics endpoint.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let port = self
            .metrics
            .ok_or_else(|| anyhow!("the relay was started without metrics"))?;
        relay_metric(port, name)
    }

    /// Starts a relay listening on `port` (0: any free one), with the metrics endpoint on a
    /// free port if `metrics`; waits for the addresses it prints.
    fn start_on(data: &Path, port: u16, extra: &str, metrics: bool) -> anyhow::Result<Relay> {
        std::fs::create_dir_all(data)?;
        let cfg = data.join("relay.toml");
        let metrics_line = if metrics {
            "metrics = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n{metrics_line}{extra}\n",
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
        let (mut addr, mut metrics_port) = (None, None);
        while addr.is_none() || (metrics && metrics_port.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                bail!("relay printed no address in time");
            };
            if line.starts_with("/ip4/") && line.contains("/tcp/") {
                addr = Some(line);
            } else if let Some(a) = line.strip_prefix("metrics http://") {
                metrics_port = a.rsplit(':').next().and_then(|p| p.parse().ok());
            }
        }
        let addr = addr.unwrap_or_default();
        // "/ip4/127.0.0.1/tcp/<port>/p2p/<id>"
        let port = addr
            .split('/')
            .nth(4)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no TCP port in the relay's address {addr}"))?;
        Ok(Relay {
            child: Some(child),
            addr,
            data: data.to_owned(),
            port,
            metrics: metrics_port,
        })
    }

    /// SIGKILL, then start again on the same port with the same data.
    pub fn restart_after_kill9(&mut self, extra: &str) -> anyhow::Result<()> {
        self.kill9();
        let fresh = Self::start_on(&self.data, self.port, extra, false)?;
        *self = fresh;
        Ok(())
    }

    /// Starts a relay killed with [`Relay::kill9`] again, on the same port with the same
    /// data (without metrics).
    pub fn start_again(&mut self, extra: &str) -> anyhow::Result<()> {
        self.kill9();
        let fresh = Self::start_on(&self.data, self.port, extra, false)?;
        *self = fresh;
        Ok(())
    }

    /// SIGSTOP: the relay keeps its connections and its port, and answers nothing, as an
    /// overloaded or hung relay does. [`Relay::thaw`] lets it go on; a frozen relay is
    /// still killed on drop.
    pub fn freeze(&self) -> anyhow::Result<()> {
        signal(self.pid(), "-STOP")
    }

    /// SIGCONT after [`Relay::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        signal(self.pid(), "-CONT")
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

/// Removes everything in a relay's data directory (`data`, as [`Relay::data`]) but its
/// identity key: the relay starts again with no mail, no device lists, no prekeys, at the same
/// address, as an operator restoring a lost disk would have it.
pub fn wipe_keeping_identity(data: &Path) -> anyhow::Result<()> {
    let db = data.join("db");
    for entry in std::fs::read_dir(&db)? {
        let path = entry?.path();
        // The relay's identity key (`tern_relay::server::identity::IDENTITY_FILE`).
        if path.file_name() == Some("identity.key".as_ref()) {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
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
