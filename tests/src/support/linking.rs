//! Linking a second device, and a home seeded with history to move.

use super::*;

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
