//! `tern send-file` and `tern file`: sending a file with a progress bar until the relay holds
//! it, saving a received one (downloading it first when needed), listing transfers.

use std::{path::PathBuf, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tern_node::{
    api::client::{ApiClient, ClientError},
    types::{Event, TransferInfo},
};

use crate::{
    exit::{self, Failure},
    render::{parse, print_json},
};

/// How long a transfer may go without progress (bytes moved or a new state) before the CLI
/// gives up waiting, unless `send-file --idle-secs` says otherwise (the node goes on with
/// it; `tern file list` shows it). A transfer paused by the relay (its storage full, say)
/// is retried by the node, and those retries are no progress.
pub(crate) const IDLE: Duration = Duration::from_secs(600);

fn bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// Follows `transfer` events of `id` until it is done (returns its last state) or failed,
/// or until it made no progress for `idle`.
async fn follow(
    c: &mut ApiClient,
    first: TransferInfo,
    quiet: bool,
    idle: Duration,
) -> Result<TransferInfo, Failure> {
    let pb = bar(first.total, quiet);
    pb.set_message(first.state.clone());
    let mut last = first;
    let mut progress_at = tokio::time::Instant::now();
    let mut reached = Reached::default();
    reached.advanced(&last);
    while last.state != "done" {
        if last.state == "failed" {
            pb.abandon();
            return Err(Failure::new(
                exit::FILE,
                format!(
                    "{} failed: {}",
                    last.name,
                    last.code.as_deref().unwrap_or("unknown")
                ),
            ));
        }
        let left = idle.saturating_sub(progress_at.elapsed());
        let next = if left.is_zero() {
            Err(ClientError::Timeout(idle))
        } else {
            c.next_event(left).await
        };
        let ev = match next {
            Ok(ev) => ev,
            Err(ClientError::Timeout(_)) => {
                pb.abandon();
                let why = match (&*last.state, &last.code) {
                    ("paused", Some(code)) => format!("paused ({code}), "),
                    _ => String::new(),
                };
                return Err(Failure::new(
                    exit::FAILURE,
                    format!(
                        "{}: {why}no progress for {} s; the node goes on with it (see `tern file list`)",
                        last.name,
                        idle.as_secs()
                    ),
                ));
            }
            Err(e) => {
                pb.abandon();
                return Err(e.into());
            }
        };
        if let Event::Transfer { transfer } = ev
            && transfer.id == last.id
        {
            if reached.advanced(&transfer) {
                progress_at = tokio::time::Instant::now();
            }
            pb.set_length(transfer.total.max(1));
            pb.set_position(transfer.bytes);
            pb.set_message(match (&*transfer.state, &transfer.code) {
                ("paused", Some(code)) => format!("paused: {code}"),
                (s, _) => s.to_owned(),
            });
            last = transfer;
        }
    }
    pb.finish_with_message("done");
    Ok(last)
}

/// What a followed transfer has reached so far: its mark at the last event and the states
/// it has been in.
#[derive(Default)]
struct Reached {
    mark: u64,
    states: Vec<String>,
}

impl Reached {
    /// Whether `t` is progress: bytes past the last event's mark (an upload that starts over
    /// at another relay climbs from zero again, and that is progress), or a state not seen
    /// before. The node's retries of a paused transfer (resumed at the same mark and paused
    /// again, for the same reason) are not.
    fn advanced(&mut self, t: &TransferInfo) -> bool {
        let new_state = !self.states.contains(&t.state);
        if new_state {
            self.states.push(t.state.clone());
        }
        let more = t.bytes > self.mark;
        self.mark = t.bytes;
        new_state || more
    }
}

/// `tern send-file`.
pub(crate) async fn send(
    c: &mut ApiClient,
    target: (Option<String>, Option<String>),
    path: PathBuf,
    caption: Option<String>,
    (original, as_file): (bool, bool),
    wait: Option<Duration>,
    json_out: bool,
) -> Result<(), Failure> {
    let path = std::path::absolute(&path)
        .map_err(|e| Failure::new(exit::BAD_INPUT, format!("{}: {e}", path.display())))?;
    // Subscribe first, so no event of this transfer is missed.
    c.subscribe().await?;
    let v = c
        .call(
            "file.send",
            json!({
                "contact": target.0,
                "group": target.1,
                "path": path.display().to_string(),
                "caption": caption,
                "original": original,
                "as_file": as_file,
            }),
        )
        .await?;
    let first = parse::<TransferInfo>(&v)?;
    let id = first.id.clone();
    let last = match wait {
        Some(idle) => follow(c, first, json_out, idle).await?,
        None => first,
    };
    if json_out {
        print_json(&serde_json::to_value(&last).unwrap_or(v));
    } else {
        outln!("{id}");
    }
    Ok(())
}

/// A path in the current directory for `name` that does not exist yet.
fn free_path(name: &str) -> Result<PathBuf, Failure> {
    let dir = std::env::current_dir().map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
        _ => (name.to_owned(), String::new()),
    };
    let mut p = dir.join(name);
    let mut n = 1;
    while p.exists() {
        p = dir.join(format!("{stem} ({n}){ext}"));
        n += 1;
    }
    Ok(p)
}

/// `tern file get`.
pub(crate) async fn get(
    c: &mut ApiClient,
    message: String,
    to: Option<PathBuf>,
    json_out: bool,
) -> Result<(), Failure> {
    c.subscribe().await?;
    let to = match to {
        Some(t) => std::path::absolute(&t)
            .map_err(|e| Failure::new(exit::BAD_INPUT, format!("{}: {e}", t.display())))?,
        None => {
            // Learn the file's name (and fetch it, if it is not here yet).
            let v = c.call("file.get", json!({"message": message})).await?;
            let first = parse::<TransferInfo>(&v)?;
            if first.state != "done" {
                follow(c, first.clone(), json_out, IDLE).await?;
            }
            free_path(&first.name)?
        }
    };
    let v = c
        .call(
            "file.get",
            json!({"message": message, "to": to.display().to_string()}),
        )
        .await?;
    let first = parse::<TransferInfo>(&v)?;
    let last = if first.state == "done" {
        first
    } else {
        follow(c, first, json_out, IDLE).await?
    };
    if json_out {
        print_json(&serde_json::to_value(&last).unwrap_or(v));
    } else {
        outln!("{}", last.path.unwrap_or_else(|| to.display().to_string()));
    }
    Ok(())
}

/// `tern file list`.
pub(crate) async fn list(c: &mut ApiClient, json_out: bool) -> Result<(), Failure> {
    let v = c.call("file.transfers", json!({})).await?;
    if json_out {
        print_json(&v);
        return Ok(());
    }
    for t in parse::<Vec<TransferInfo>>(&v)? {
        outln!(
            "{} {:4} {:11} {:>12}/{:<12} {}{}",
            t.id,
            t.direction,
            t.state,
            t.bytes,
            t.total,
            t.name,
            t.code.map(|c| format!(" ({c})")).unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(state: &str, bytes: u64) -> TransferInfo {
        serde_json::from_value(json!({
            "id": "00", "direction": "up", "name": "f", "state": state,
            "bytes": bytes, "total": 100, "code": (state == "paused").then_some("storage_full"),
        }))
        .unwrap()
    }

    #[test]
    fn retries_of_a_paused_transfer_are_no_progress() {
        let mut r = Reached::default();
        assert!(r.advanced(&at("staging", 0)));
        assert!(r.advanced(&at("uploading", 0)));
        assert!(r.advanced(&at("uploading", 10)));
        assert!(r.advanced(&at("paused", 10)));
        // Retried: resumed at its mark and paused again, as often as the node retries.
        for _ in 0..3 {
            assert!(!r.advanced(&at("uploading", 10)));
            assert!(!r.advanced(&at("paused", 10)));
        }
        assert!(r.advanced(&at("uploading", 11)));
        // Started over (another relay): climbing again is progress.
        assert!(!r.advanced(&at("uploading", 0)));
        assert!(r.advanced(&at("uploading", 5)));
        assert!(r.advanced(&at("done", 100)));
    }
}
