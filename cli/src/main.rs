//! `tern`: the Tern command line, a thin front over tern-node and its local API.
//!
//! The parts: `opts` (the command line and its help), `exit` (failures and the exit codes
//! they end with, listed there), `input` (passphrases and standard input), `render` (the
//! node's answers as JSON or text), and one module per group of commands: `id` (with
//! `init`), `device`, `contact` (with `safety-number` and `verify`), `chat` (`send`,
//! `history`, `conversations`, `search`), `group`, `status` (with `presence` and `push`),
//! `file` (with `send-file`), `ui` and `up`.

/// `println!` for a command's output, through [`render::out_line`]: a reader that stops
/// early (`tern history Bob | head`) ends the command quietly instead of with a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::render::out_line(format_args!($($arg)*))
    };
}

mod chat;
mod contact;
mod device;
mod exit;
mod file;
mod group;
mod id;
mod input;
mod opts;
mod render;
mod status;
mod ui;
mod up;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use tern_node::{
    Home,
    api::client::{ApiClient, ClientError},
};

use exit::Failure;
use opts::{Cmd, FileCmd, Opts};

fn default_home() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("tern")
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    // Logs go to stderr; TERN_LOG overrides the level. Nothing logged carries plaintext,
    // keys or tokens.
    let default = if matches!(opts.cmd, Cmd::Up { .. }) {
        "warn,tern_node=info,tern_cli=info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    let home = Home::new(opts.home.clone().unwrap_or_else(default_home));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts, home)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tern: {}", render::shown(&f.message));
            ExitCode::from(f.code)
        }
    }
}

/// Longest wait for a free API session when the node has every one taken (many commands
/// at once: a script sending a burst); then the command fails with the reason.
const BUSY_WAIT: Duration = Duration::from_secs(60);

/// A client of the node running for `home`. While the node has every API session taken,
/// waits for one to close (saying so once on stderr), retrying at growing intervals up to
/// half a second, for at most [`BUSY_WAIT`].
pub(crate) async fn client(home: &Home) -> Result<ApiClient, Failure> {
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    let mut pause = Duration::from_millis(5);
    let mut said = false;
    loop {
        match ApiClient::for_home(home).await {
            Err(ClientError::Busy) if tokio::time::Instant::now() + pause < deadline => {
                if !said {
                    eprintln!("tern: the node is busy with other commands; waiting for it");
                    said = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            r => return Ok(r?),
        }
    }
}

async fn run(opts: Opts, home: Home) -> Result<(), Failure> {
    let json = opts.json;
    match opts.cmd {
        Cmd::Init { name, device_name } => id::init(&home, json, &name, &device_name),
        Cmd::Up {
            relay,
            listen,
            api,
            no_direct,
            passphrase_file,
        } => {
            let home = if tern_node::unlock::uses_passphrase(&home) {
                let p = input::passphrase(passphrase_file.as_deref(), "store passphrase: ")?;
                home.with_passphrase(&p)
            } else {
                home
            };
            up::run(home, relay, listen, api, !no_direct).await
        }
        Cmd::Id { cmd } => id::run(&home, json, cmd).await,
        Cmd::Device { cmd } => device::run(&home, json, cmd).await,
        Cmd::Contact { cmd } => contact::run(&home, json, cmd).await,
        Cmd::SafetyNumber { contact } => contact::safety_number(&home, json, contact).await,
        Cmd::Verify { contact, scanned } => contact::verify(&home, json, contact, scanned).await,
        Cmd::Send {
            contact,
            text,
            client_id,
        } => chat::send(&home, json, contact, text, client_id).await,
        Cmd::History {
            contact,
            limit,
            before,
            no_mark_read,
        } => chat::history(&home, json, contact, limit, before, !no_mark_read).await,
        Cmd::Conversations => chat::conversations(&home, json).await,
        Cmd::Search { query, limit } => chat::search(&home, json, query, limit).await,
        Cmd::SendFile {
            mut args,
            group,
            caption,
            original,
            as_file,
            no_wait,
            idle_secs,
        } => {
            let Some(path) = args.pop().map(PathBuf::from) else {
                return Err(Failure::new(
                    exit::USAGE,
                    if group.is_some() {
                        "give the file to send to the group"
                    } else {
                        "give a contact (or --group) and a file"
                    },
                ));
            };
            let contact = args.pop();
            let target = match (contact, group) {
                (Some(c), None) => (Some(c), None),
                (None, Some(g)) => (None, Some(g)),
                // Usage errors, as clap's own (exit 2).
                (Some(_), Some(_)) => {
                    return Err(Failure::new(
                        exit::USAGE,
                        "give a contact or --group, not both",
                    ));
                }
                (None, None) => {
                    return Err(Failure::new(
                        exit::USAGE,
                        "give a contact (or --group) and a file",
                    ));
                }
            };
            let mut c = client(&home).await?;
            let wait = (!no_wait).then(|| std::time::Duration::from_secs(idle_secs));
            let prepare = (original, as_file);
            file::send(&mut c, target, path, caption, prepare, wait, json).await
        }
        Cmd::File { cmd } => {
            let mut c = client(&home).await?;
            match cmd {
                FileCmd::Get { message, to } => file::get(&mut c, message, to, json).await,
                FileCmd::List => file::list(&mut c, json).await,
            }
        }
        Cmd::Ui { sign_out: true, .. } => ui::sign_out(&home).await,
        Cmd::Ui { print, .. } => ui::open(&home, print).await,
        Cmd::Presence { contact } => status::presence(&home, json, contact).await,
        Cmd::Down => up::down(&home, json).await,
        Cmd::Status { set } => status::status(&home, json, set).await,
        Cmd::Push { cmd } => status::push(&home, json, cmd).await,
        Cmd::Relay { cmd } => status::relay(&home, json, cmd).await,
        Cmd::Group { cmd } => group::run(&home, json, cmd).await,
    }
}
