//! `tern send-file` and `tern file`: sending a file with a progress bar until the relay holds
//! it, saving a received one (downloading it first when needed), listing transfers.

use std::{path::PathBuf, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tern_node::{
    api::client::ApiClient,
    types::{Event, TransferInfo},
};

use crate::{
    exit::{self, Failure},
    render::{parse, print_json},
};

/// How long a transfer may go without any event before the CLI gives up waiting (the node
/// goes on with it; `tern file list` shows it).
const IDLE: Duration = Duration::from_secs(600);

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

/// Follows `transfer` events of `id` until it is done (returns its last state) or failed.
async fn follow(
    c: &mut ApiClient,
    first: TransferInfo,
    quiet: bool,
) -> Result<TransferInfo, Failure> {
    let pb = bar(first.total, quiet);
    pb.set_message(first.state.clone());
    let mut last = first;
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
        let ev = c.next_event(IDLE).await.map_err(|_| {
            Failure::new(
                exit::FAILURE,
                format!(
                    "no progress for {} s; the node goes on with it (see `tern file list`)",
                    IDLE.as_secs()
                ),
            )
        })?;
        if let Event::Transfer { transfer } = ev
            && transfer.id == last.id
        {
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

/// `tern send-file`.
pub(crate) async fn send(
    c: &mut ApiClient,
    target: (Option<String>, Option<String>),
    path: PathBuf,
    caption: Option<String>,
    original: bool,
    wait: bool,
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
            }),
        )
        .await?;
    let first = parse::<TransferInfo>(&v)?;
    let id = first.id.clone();
    let last = if wait {
        follow(c, first, json_out).await?
    } else {
        first
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
                follow(c, first.clone(), json_out).await?;
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
        follow(c, first, json_out).await?
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
