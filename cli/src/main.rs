//! `tern`: the Tern command line, a thin front over tern-node and its local API.
//!
//! Exit codes (also in `tern --help`):
//!
//! | code | meaning |
//! | ---: | --- |
//! | 0 | success |
//! | 1 | any other failure |
//! | 2 | bad command-line usage |
//! | 3 | no node is running for this home (start one with `tern up`) |
//! | 4 | unknown or ambiguous contact or group, or unknown message |
//! | 5 | bad input: malformed or tampered contact link, empty or oversize text |
//! | 6 | the contact's identity key changed: sending is blocked until accepted |
//! | 7 | network: relay unreachable (for a first message to a contact) |
//! | 8 | home: no identity yet (`tern init`), or one exists already |
//! | 9 | group: not an admin, not (or no longer) a member, or the group would be over its size limit |
//! | 10 | passphrase or backup refused: wrong passphrase, or a backup file that is altered, truncated, not a backup or of an unknown version |
//! | 11 | the node is running: stop it first (`tern id passphrase`) |
//! | 12 | this device was revoked by another device of the user: it no longer sends |
//! | 13 | a file could not be sent or fetched |
//! | 14 | a new device's link was not confirmed: the words typed are not the record's, or no answer came; nothing was applied |
//! | 15 | a home relay refused the push endpoint (`not_allowed`: outside its allow-list) |

mod file;
mod up;

use std::{io::Read, path::PathBuf, process::ExitCode};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tern_node::{
    Home,
    api::client::{ApiClient, ClientError},
};

/// Tern: peer-to-peer, end-to-end encrypted messaging.
///
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 no node running, 4 unknown contact, group or
/// message, 5 bad input (link, text), 6 contact's identity key changed, 7 network, 8 home not
/// initialised or already initialised, 9 group refused it (not an admin, not a member, full),
/// 10 wrong passphrase or damaged backup, 11 the node must be stopped first, 12 this device
/// was revoked, 13 a file could not be sent or fetched, 14 a new device's link was not
/// confirmed (nothing applied), 15 a home relay refused the push endpoint.
#[derive(Debug, Parser)]
#[command(version)]
struct Opts {
    /// The node's home directory (default: TERN_HOME, else the per-user data dir + /tern).
    #[arg(long, env = "TERN_HOME", global = true)]
    home: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create an identity and this first device; refuses to overwrite an existing one.
    Init {
        /// Your display name (offered to contacts in your link).
        #[arg(long, default_value = "me")]
        name: String,
        /// This device's name.
        #[arg(long, default_value = "device")]
        device_name: String,
    },
    /// Run the node in the foreground (Ctrl-C stops it). On a home with no identity yet, first
    /// creates one as `tern init` would (name from $USER). Without --relay (and none saved),
    /// an embedded relay runs on loopback.
    Up {
        /// Home relay multiaddr ending in `/p2p/<peer id>`; repeatable; saved for next time.
        #[arg(long)]
        relay: Vec<String>,
        /// Multiaddr to listen on for direct connections; repeatable.
        #[arg(long)]
        listen: Vec<String>,
        /// Address of the local API (loopback only).
        #[arg(long, default_value = "127.0.0.1:0")]
        api: std::net::SocketAddr,
        /// Never connect to contacts directly: all messages go through relay mailboxes and
        /// contacts do not learn this device's addresses.
        #[arg(long)]
        no_direct: bool,
        /// File holding the store's passphrase (when `tern id passphrase` set one); without
        /// it the passphrase is asked at the terminal.
        #[arg(long, env = "TERN_PASSPHRASE_FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Identity commands.
    Id {
        #[command(subcommand)]
        cmd: IdCmd,
    },
    /// Contact commands.
    Contact {
        #[command(subcommand)]
        cmd: ContactCmd,
    },
    /// Send a text (TEXT `-` reads standard input); prints the message id.
    Send {
        /// Contact name or user id.
        contact: String,
        /// The text, or `-` for standard input.
        text: String,
    },
    /// Send a file or an image (up to 100 MiB) to a contact or, with --group, to a group;
    /// shows progress until the relay holds it, then prints the message id. An image is sent
    /// without its metadata (EXIF, GPS), scaled to 2048 px unless --original.
    #[command(name = "send-file")]
    SendFile {
        /// CONTACT PATH, or PATH with --group.
        #[arg(required = true, num_args = 1..=2, value_names = ["CONTACT", "PATH"])]
        args: Vec<String>,
        /// Send to this group (id or title) instead of a contact.
        #[arg(long)]
        group: Option<String>,
        /// A caption sent with the file.
        #[arg(long)]
        caption: Option<String>,
        /// Send an image at its full size (still without metadata).
        #[arg(long)]
        original: bool,
        /// Return once the file is queued, without waiting for the upload.
        #[arg(long)]
        no_wait: bool,
    },
    /// Open the web UI of the running node in the default browser (a one-time link, valid
    /// 60 s, through a private local file, so the link never appears in a process list).
    Ui {
        /// Print the one-time URL instead of opening a browser.
        #[arg(long)]
        print: bool,
    },
    /// Files received and sent: save one, list transfers.
    File {
        #[command(subcommand)]
        cmd: FileCmd,
    },
    /// Show a conversation in display order (marks it read).
    History {
        /// Contact name or user id.
        contact: String,
        /// Most messages to show.
        #[arg(long)]
        limit: Option<u32>,
        /// Show messages before this message id.
        #[arg(long)]
        before: Option<String>,
        /// Do not mark the conversation read.
        #[arg(long)]
        no_mark_read: bool,
    },
    /// List conversations, most recent first.
    Conversations,
    /// Show contacts' presence.
    Presence {
        /// One contact (default: all).
        contact: Option<String>,
    },
    /// Show the node's status, or set it to away/online.
    Status {
        /// `away` or `online`.
        set: Option<String>,
    },
    /// Search all conversations.
    Search {
        /// Words to find.
        query: String,
    },
    /// Show the safety number with a contact (digits and QR code).
    SafetyNumber {
        /// Contact name or user id.
        contact: String,
    },
    /// Mark a contact verified after comparing safety numbers.
    Verify {
        /// Contact name or user id.
        contact: String,
        /// The contact's QR payload (hex) as scanned; checked if given.
        #[arg(long)]
        scanned: Option<String>,
    },
    /// This user's devices: link a new one, list them.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Group commands (GROUP is a group id or a unique title; MEMBER a contact name or user id).
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Push wake-ups: a URL (e.g. a UnifiedPush endpoint) the home relays POST a content-free
    /// `{"v":1,"type":"wakeup","unread":N}` to when mail arrives while this device is not
    /// connected. Each relay takes only URLs under its `push.allowed_prefixes`.
    Push {
        #[command(subcommand)]
        cmd: PushCmd,
    },
}

#[derive(Debug, Subcommand)]
enum PushCmd {
    /// Set the push endpoint and register it at every home relay (relays not connected now
    /// get it when they connect). Exit 5 for a URL that is not a plain http(s) URL, 14 when
    /// a relay refuses it (the message names the relay and its code).
    Set {
        /// The endpoint: http:// or https://, no user name or password.
        url: String,
    },
    /// Remove the push endpoint at every home relay.
    Clear,
    /// Show the push endpoint and whether each home relay holds it.
    Status,
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Create a group with you as admin; prints its id.
    Create {
        /// The group's title.
        title: String,
        /// Contacts to add (names or user ids).
        members: Vec<String>,
    },
    /// Add contacts to a group (admins only).
    Add {
        /// Group id or title.
        group: String,
        /// Contacts to add (names or user ids).
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members from a group (admins only); the group's keys are rotated.
    Remove {
        /// Group id or title.
        group: String,
        /// Members to remove (names or user ids).
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// Group id or title.
        group: String,
    },
    /// Show a group: title, id, members, your role.
    Info {
        /// Group id or title.
        group: String,
    },
    /// List the groups you know.
    List,
    /// Send a text to a group (TEXT `-` reads standard input); prints the message id.
    Send {
        /// Group id or title.
        group: String,
        /// The text, or `-` for standard input.
        text: String,
    },
    /// Show a group's conversation in display order (marks it read).
    History {
        /// Group id or title.
        group: String,
        /// Most messages to show.
        #[arg(long)]
        limit: Option<u32>,
        /// Show messages before this message id.
        #[arg(long)]
        before: Option<String>,
        /// Do not mark the conversation read.
        #[arg(long)]
        no_mark_read: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FileCmd {
    /// Save a message's file (downloading it first if needed; files over 25 MB are not
    /// downloaded until asked for) and print where it went.
    Get {
        /// The message id (32 hex digits, as `tern history` shows for files).
        message: String,
        /// Where to write it (must not exist); default: the file's name in the current
        /// directory.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Transfers in progress, and those finished in the last day.
    List,
}

#[derive(Debug, Subcommand)]
enum DeviceCmd {
    /// Make this (empty) home a new device of an existing user: prints a link code (and its
    /// QR code) to enter with `tern device add` on a device of that user, waits for its
    /// provisioning record, shows the record's words and asks on standard input whether
    /// they are the words that device shows: `y` (or the words themselves, for scripts)
    /// applies it, `n` discards it and waits for another; words that differ stop with exit
    /// 14 and nothing applied. Then run `tern up`.
    Link {
        /// A relay the other device can reach (its `tern status` lists its relays).
        #[arg(long)]
        relay: String,
        /// This device's name.
        #[arg(long, default_value = "device")]
        name: String,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Print the code only, without the QR code.
        #[arg(long)]
        no_qr: bool,
    },
    /// Link a new device from the code it shows (`tern device link` there).
    Add {
        /// The `tern-device:` code.
        code: String,
    },
    /// List this user's devices.
    List,
    /// Revoke another device of yours (a lost laptop): it is sent nothing from now on, its
    /// messages are refused, and it stops sending once it learns of it.
    Revoke {
        /// The device id or name (`tern device list`).
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum IdCmd {
    /// Show user id, device id and fingerprint.
    Show,
    /// Write an identity backup (identity secret, name, relays, contacts, groups, the device
    /// list; no history) to FILE, sealed under a passphrase (asked twice, or
    /// --passphrase-file). The node must be running. Passphrases need at least 12
    /// characters, at least 6 of them different.
    Backup {
        /// The file to write (mode 0600, replaced atomically).
        file: PathBuf,
        /// Read the passphrase from this file (first line) instead of asking.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore an identity backup into this (empty) home as a new device of the user, then
    /// run `tern up`. Nothing is written if the file does not open.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Home relay to use instead of the backup's (repeatable).
        #[arg(long)]
        relay: Vec<String>,
        /// This new device's name.
        #[arg(long, default_value = "device")]
        name: String,
        /// Read the passphrase from this file (first line) instead of asking.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Set or change the passphrase that encrypts this home's store (the node must be
    /// stopped). With --keyfile, go back to a random key in store.key.
    Passphrase {
        /// The current passphrase, from this file (when the store has one).
        #[arg(long, env = "TERN_PASSPHRASE_FILE")]
        passphrase_file: Option<PathBuf>,
        /// The new passphrase, from this file, instead of asking twice.
        #[arg(long, conflicts_with = "keyfile")]
        new_passphrase_file: Option<PathBuf>,
        /// Unlock the store with a new random keyfile instead of a passphrase.
        #[arg(long)]
        keyfile: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContactCmd {
    /// Print your short contact link (`TERN:...`, names your first relay) and its QR code.
    /// With --json, both forms: `short` and `link` (the long one).
    Link {
        /// Print the link only, without the QR code.
        #[arg(long)]
        no_qr: bool,
        /// Print the long link instead: it carries your device list, so adding it needs no
        /// relay, but it is ~1,100 characters (too long for a phone to scan).
        #[arg(long)]
        long: bool,
    },
    /// Add a contact from their link, short (`TERN:...`: their device list is fetched from
    /// the relay it names) or long (`tern:...`).
    Add {
        /// The `TERN:` or `tern:` link.
        link: String,
        /// The name to show for them.
        #[arg(long)]
        name: Option<String>,
        /// Accept a changed identity key for a known contact (after verifying it!).
        #[arg(long)]
        accept_new_key: bool,
    },
    /// Accept the pending new identity key of a contact.
    Accept {
        /// Contact name or user id.
        contact: String,
    },
    /// List contacts.
    List,
}

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::NotRunning { .. } => 3,
            ClientError::Rpc { code, .. } => match code {
                1001 | 1002 | 1006 | 1012 | 1013 => 4,
                1003 | 1005 | -32602 => 5,
                1004 | 1010 => 6,
                1009 => 7,
                1014..=1016 => 9,
                1017 => 5,
                1019 => 12,
                1020 => 13,
                1021 => 14,
                1022 => 15,
                _ => 1,
            },
            _ => 1,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(1, format!("{e:#}"))
    }
}

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
            eprintln!("tern: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn client(home: &Home) -> Result<ApiClient, Failure> {
    Ok(ApiClient::for_home(home).await?)
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Whether a contact was just added from a short link (which carries no name) without one.
fn outcome_needs_name(link: &str, added: &Value) -> bool {
    let link = link.trim();
    let short = link.len() <= tern_node::consts::MAX_SHORT_LINK_CHARS
        && link
            .get(..tern_node::link::SHORT_LINK_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(tern_node::link::SHORT_LINK_PREFIX));
    short && s(added, "outcome") == "added"
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Lines of standard input, read by a thread of their own as they come (the channel closes
/// at end of input), shared by the answers to a device link's offers.
fn stdin_lines() -> std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::sync::Arc::new(tokio::sync::Mutex::new(rx))
}

fn qr(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
    )
}

async fn run(opts: Opts, home: Home) -> Result<(), Failure> {
    let json = opts.json;
    match opts.cmd {
        Cmd::Init { name, device_name } => {
            let created = home.init(&name, &device_name).map_err(|e| match e {
                tern_node::home::HomeError::AlreadyInitialised { .. } => {
                    Failure::new(8, e.to_string())
                }
                tern_node::home::HomeError::BadName => Failure::new(5, e.to_string()),
                other => Failure::new(1, other.to_string()),
            })?;
            if json {
                print_json(
                    &json!({"user_id": created.user_id, "device_id": created.device_id, "home": home.dir()}),
                );
            } else {
                println!("created identity in {}", home.dir().display());
                println!("user id   {}", created.user_id);
                println!("device id {}", created.device_id);
                println!("next: tern --home {} up", home.dir().display());
            }
            Ok(())
        }
        Cmd::Up {
            relay,
            listen,
            api,
            no_direct,
            passphrase_file,
        } => {
            let home = if tern_node::unlock::uses_passphrase(&home) {
                let p = passphrase(passphrase_file.as_deref(), "store passphrase: ")?;
                home.with_passphrase(&p)
            } else {
                home
            };
            up::run(home, relay, listen, api, !no_direct).await
        }
        Cmd::Id {
            cmd:
                IdCmd::Backup {
                    file,
                    passphrase_file,
                },
        } => {
            let file = std::env::current_dir()
                .map_err(|e| Failure::new(1, format!("current directory: {e}")))?
                .join(file);
            let mut api = client(&home).await?;
            let p = new_passphrase(passphrase_file.as_deref(), "backup passphrase")?;
            let v = api
                .call("id.backup", json!({"path": file, "passphrase": p.as_str()}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "backup written to {} ({} contacts, {} groups); keep it and its passphrase apart",
                    s(&v, "path"),
                    v.get("contacts").and_then(Value::as_u64).unwrap_or(0),
                    v.get("groups").and_then(Value::as_u64).unwrap_or(0)
                );
            }
            Ok(())
        }
        Cmd::Id {
            cmd:
                IdCmd::Restore {
                    file,
                    relay,
                    name,
                    passphrase_file,
                },
        } => restore(&home, json, &file, relay, &name, passphrase_file.as_deref()),
        Cmd::Id {
            cmd:
                IdCmd::Passphrase {
                    passphrase_file,
                    new_passphrase_file,
                    keyfile,
                },
        } => {
            change_passphrase(
                &home,
                json,
                passphrase_file.as_deref(),
                new_passphrase_file.as_deref(),
                keyfile,
            )
            .await
        }
        Cmd::Device {
            cmd:
                DeviceCmd::Link {
                    relay,
                    name,
                    timeout,
                    no_qr,
                },
        } => {
            let relay: tern_node::libp2p::Multiaddr = relay
                .parse()
                .map_err(|e| Failure::new(5, format!("bad relay address {relay}: {e}")))?;
            let answers = stdin_lines();
            let created = tern_node::link_new_device(
                &home,
                relay,
                &name,
                |code| {
                    if json {
                        print_json(&json!({"code": code}));
                    } else {
                        println!("link code: {code}");
                        if !no_qr && let Some(q) = qr(code) {
                            println!("{q}");
                        }
                        println!("on a linked device run: tern device add <code>   (waiting...)");
                    }
                },
                |offer| {
                    // What was typed before these words are shown is no answer to them.
                    if let Ok(mut early) = answers.try_lock() {
                        while early.try_recv().is_ok() {}
                    }
                    if json {
                        print_json(&json!({
                            "offer": offer.number,
                            "words": offer.words.to_string(),
                            "name": offer.name,
                            "contacts": offer.contacts,
                        }));
                    } else {
                        println!(
                            "provisioning record {} arrived, for user {:?} with {} contacts",
                            offer.number, offer.name, offer.contacts
                        );
                        println!("words: {}", offer.words);
                        println!(
                            "Are these the words `tern device add` showed on your other device? \
                             Type y (or the words) to apply it, n to discard it [y/N]:"
                        );
                    }
                    let answers = answers.clone();
                    async move {
                        let mut lines = answers.lock().await;
                        let answer = match lines.recv().await {
                            None => tern_node::LinkAnswer::Stop,
                            Some(line) => match line.trim().to_ascii_lowercase().as_str() {
                                "y" | "yes" => tern_node::LinkAnswer::Yes,
                                "" | "n" | "no" => tern_node::LinkAnswer::No,
                                _ => tern_node::LinkAnswer::Words(line),
                            },
                        };
                        if answer == tern_node::LinkAnswer::No && !json {
                            println!("discarded; waiting for another record");
                        }
                        answer
                    }
                },
                std::time::Duration::from_secs(timeout),
            )
            .await
            .map_err(|e| {
                let code = match e.code() {
                    1009 => 7,
                    -32602 | 1005 => 5,
                    1021 => 14,
                    _ => 1,
                };
                Failure::new(code, e.to_string())
            })?;
            print_created(json, &home, &created, "linked", "device id");
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Add { code },
        } => {
            let v = client(&home)
                .await?
                .call("device.add", json!({"code": code}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("linked device {} ({})", s(&v, "device_id"), s(&v, "name"));
                println!("words: {}", s(&v, "words"));
                println!(
                    "The new device shows the words of each record it gets: confirm there only \
                     the one that shows these words."
                );
            }
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::Revoke { device },
        } => {
            let v = client(&home)
                .await?
                .call("device.revoke", json!({"device": device}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("revoked device {} ({})", s(&v, "device_id"), s(&v, "name"));
            }
            Ok(())
        }
        Cmd::Device {
            cmd: DeviceCmd::List,
        } => {
            let v = client(&home).await?.call("device.list", json!({})).await?;
            if json {
                print_json(&v);
            } else {
                for d in v.as_array().cloned().unwrap_or_default() {
                    let this = if d.get("this_device").and_then(Value::as_bool) == Some(true) {
                        "  (this device)"
                    } else {
                        ""
                    };
                    println!("{}  {}{this}", s(&d, "device_id"), s(&d, "name"));
                }
            }
            Ok(())
        }
        Cmd::Id { cmd: IdCmd::Show } => {
            let v = client(&home).await?.call("id.show", json!({})).await?;
            if json {
                print_json(&v);
            } else {
                println!("name        {}", s(&v, "name"));
                println!("user id     {}", s(&v, "user_id"));
                println!("device id   {}", s(&v, "device_id"));
                println!("fingerprint {}", s(&v, "fingerprint"));
            }
            Ok(())
        }
        Cmd::Contact { cmd } => contact(&home, json, cmd).await,
        Cmd::Send { contact, text } => {
            let text = text_arg(text)?;
            let v = client(&home)
                .await?
                .call("send", json!({"contact": contact, "text": text}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", s(&v, "id"));
            }
            Ok(())
        }
        Cmd::History {
            contact,
            limit,
            before,
            no_mark_read,
        } => {
            let v = client(&home)
                .await?
                .call(
                    "history",
                    json!({"contact": contact, "limit": limit, "before": before, "mark_read": !no_mark_read}),
                )
                .await?;
            print_history(&v, json);
            Ok(())
        }
        Cmd::SendFile {
            mut args,
            group,
            caption,
            original,
            no_wait,
        } => {
            let path = PathBuf::from(args.pop().unwrap_or_default());
            let contact = args.pop();
            let target = match (contact, group) {
                (Some(c), None) => (Some(c), None),
                (None, Some(g)) => (None, Some(g)),
                (Some(_), Some(_)) => {
                    return Err(Failure::new(5, "give a contact or --group, not both"));
                }
                (None, None) => {
                    return Err(Failure::new(5, "give a contact (or --group) and a file"));
                }
            };
            let mut c = client(&home).await?;
            file::send(&mut c, target, path, caption, original, !no_wait, json).await
        }
        Cmd::Ui { print } => {
            let mut c = client(&home).await?;
            let v = c.call("ui.code", json!({})).await?;
            let url = s(&v, "url").to_owned();
            if print {
                println!("{url}");
                return Ok(());
            }
            // The code travels in the URL's fragment, which the browser never sends; the file
            // that redirects to it is readable by this user only.
            let page = home.dir().join("ui-open.html");
            let html = format!(
                "<!doctype html><meta charset=utf-8><meta name=referrer content=no-referrer>\
                 <meta http-equiv=refresh content=\"0;url={url}\"><title>Tern</title>"
            );
            tern_node::home::write_atomic(&page, html.as_bytes(), true)
                .map_err(|e| Failure::new(1, e.to_string()))?;
            let opener = std::env::var("BROWSER").ok().unwrap_or_else(|| {
                if cfg!(target_os = "macos") {
                    "open"
                } else {
                    "xdg-open"
                }
                .to_owned()
            });
            match std::process::Command::new(&opener).arg(&page).status() {
                Ok(st) if st.success() => {
                    println!("opened the web UI ({})", page.display());
                    Ok(())
                }
                _ => Err(Failure::new(
                    1,
                    format!(
                        "could not start {opener}; open {} in a browser (valid 60 s), or run `tern ui --print`",
                        page.display()
                    ),
                )),
            }
        }
        Cmd::File { cmd } => {
            let mut c = client(&home).await?;
            match cmd {
                FileCmd::Get { message, to } => file::get(&mut c, message, to, json).await,
                FileCmd::List => file::list(&mut c, json).await,
            }
        }
        Cmd::Conversations => {
            let v = client(&home)
                .await?
                .call("conversations", json!({}))
                .await?;
            if json {
                print_json(&v);
            } else {
                for c in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} unread {:>4}  {}",
                        c.get("name")
                            .or_else(|| c.get("title"))
                            .and_then(Value::as_str)
                            .unwrap_or(s(c, "id")),
                        c.get("unread").and_then(Value::as_u64).unwrap_or(0),
                        c.get("last_text").and_then(Value::as_str).unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Cmd::Presence { contact } => {
            let v = client(&home)
                .await?
                .call("presence", json!({"contact": contact}))
                .await?;
            if json {
                print_json(&v);
            } else {
                for p in v.as_array().into_iter().flatten() {
                    let seen = p
                        .get("last_seen")
                        .and_then(Value::as_u64)
                        .map(|ms| format!(" (last seen {}s ago)", ago_secs(ms)))
                        .unwrap_or_default();
                    println!("{:<20} {}{}", s(p, "name"), s(p, "state"), seen);
                }
            }
            Ok(())
        }
        Cmd::Status { set } => {
            let mut c = client(&home).await?;
            if let Some(status) = set {
                c.call("status.set", json!({"status": status})).await?;
            }
            let v = c.call("status", json!({})).await?;
            if json {
                print_json(&v);
            } else {
                println!("status  {}", s(&v, "status"));
                println!("user id {}", s(&v, "user_id"));
                println!(
                    "outbox  {}",
                    v.get("outbox").and_then(Value::as_u64).unwrap_or(0)
                );
                println!(
                    "unread  {}",
                    v.get("unread").and_then(Value::as_u64).unwrap_or(0)
                );
                let push = &v["push"];
                match push.get("host").and_then(Value::as_str) {
                    // Only the host: the path of a push URL is often its secret part.
                    Some(host) => println!("push    {host}/…  (tern push status)"),
                    None => println!("push    none"),
                }
                let r = &v["recovery"];
                let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
                if n("undecryptable") + n("resends_asked") + n("texts_resent") > 0 {
                    println!(
                        "lost    {} undecryptable, {} resends asked, {} texts sent again",
                        n("undecryptable"),
                        n("resends_asked"),
                        n("texts_resent")
                    );
                }
                if n("group_waiting") > 0 {
                    println!(
                        "waiting {} group messages for their sender key or group",
                        n("group_waiting")
                    );
                }
                let h = &v["history"];
                let hn = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or(0);
                if hn("total") > 0 {
                    println!(
                        "history {} of {} messages received from the linking device",
                        hn("received"),
                        hn("total")
                    );
                }
                for d in h
                    .get("sending")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let dn = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
                    println!(
                        "history {} of {} messages queued for device {}",
                        dn("sent"),
                        dn("total"),
                        s(d, "device_id")
                    );
                }
                for r in v
                    .get("relays")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    println!(
                        "relay   {} {}",
                        s(r, "addr"),
                        if r.get("connected").and_then(Value::as_bool) == Some(true) {
                            "connected"
                        } else {
                            "disconnected"
                        }
                    );
                    print_mailbox(&r["mailbox"]);
                    if let Some(p) = push
                        .get("relays")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|p| p["addr"] == r["addr"])
                        && s(p, "state") != "none"
                    {
                        println!("        push {}", push_state(p));
                    }
                }
            }
            Ok(())
        }
        Cmd::Push { cmd } => {
            let (method, params) = match &cmd {
                PushCmd::Set { url } => ("push.set", json!({"url": url})),
                PushCmd::Clear => ("push.clear", json!({})),
                PushCmd::Status => ("push.status", json!({})),
            };
            let v = client(&home).await?.call(method, params).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            match (&cmd, v.get("url").and_then(Value::as_str)) {
                (PushCmd::Clear, _) => println!("push endpoint cleared"),
                (_, Some(url)) => println!("push endpoint {url}"),
                (_, None) => println!("no push endpoint"),
            }
            for p in v
                .get("relays")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("relay   {} {}", s(p, "addr"), push_state(p));
            }
            Ok(())
        }
        Cmd::Search { query } => {
            let v = client(&home)
                .await?
                .call("search", json!({"query": query}))
                .await?;
            if json {
                print_json(&v);
            } else {
                for h in v.as_array().into_iter().flatten() {
                    println!(
                        "{} {}",
                        s(h, "id").chars().take(8).collect::<String>(),
                        s(h, "snippet")
                    );
                }
            }
            Ok(())
        }
        Cmd::SafetyNumber { contact } => {
            let v = client(&home)
                .await?
                .call("safety_number", json!({"contact": contact}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("safety number with {}:", s(&v, "name"));
                println!("{}", s(&v, "digits"));
                if let Some(code) = qr(s(&v, "qr")) {
                    println!("{code}");
                }
                println!(
                    "{}",
                    if v.get("verified").and_then(Value::as_bool) == Some(true) {
                        "verified"
                    } else {
                        "not verified: compare with your contact, then `tern verify`"
                    }
                );
            }
            Ok(())
        }
        Cmd::Verify { contact, scanned } => {
            let v = client(&home)
                .await?
                .call("verify", json!({"contact": contact, "scanned": scanned}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{} is verified", s(&v, "name"));
            }
            Ok(())
        }
        Cmd::Group { cmd } => group(&home, json, cmd).await,
    }
}

/// A TEXT argument: `-` reads standard input (without its trailing newlines).
/// Reads a passphrase from the first line of `path` (a trailing newline is not part of it).
fn read_passphrase_file(path: &std::path::Path) -> Result<Zeroizing<String>, Failure> {
    let limit = tern_node::backup::MAX_PASSPHRASE_FILE_BYTES;
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| Failure::new(1, format!("passphrase file {}: {e}", path.display())))?;
    if bytes.len() > limit {
        return Err(Failure::new(
            5,
            format!("passphrase file {} is over {limit} bytes", path.display()),
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Failure::new(
            5,
            format!("passphrase file {} is not UTF-8", path.display()),
        )
    })?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(Zeroizing::new(line.to_owned()))
}

/// A passphrase from `file`, else asked at the terminal without echo.
fn passphrase(file: Option<&std::path::Path>, prompt: &str) -> Result<Zeroizing<String>, Failure> {
    match file {
        Some(f) => read_passphrase_file(f),
        None => rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| {
                Failure::new(
                    2,
                    format!(
                        "cannot read a passphrase at the terminal ({e}); use --passphrase-file"
                    ),
                )
            }),
    }
}

/// A new passphrase: from `file`, else asked twice; checked against the strength rule.
fn new_passphrase(
    file: Option<&std::path::Path>,
    what: &str,
) -> Result<Zeroizing<String>, Failure> {
    let p = match file {
        Some(f) => read_passphrase_file(f)?,
        None => {
            let first = passphrase(None, &format!("new {what}: "))?;
            tern_crypto_check(&first)?;
            let again = passphrase(None, &format!("new {what} again: "))?;
            if !bool::from(first.as_bytes().ct_eq(again.as_bytes())) {
                return Err(Failure::new(5, "the two passphrases differ"));
            }
            first
        }
    };
    tern_crypto_check(&p)?;
    Ok(p)
}

fn tern_crypto_check(p: &str) -> Result<(), Failure> {
    tern_node::backup::check_strength(p).map_err(|e| Failure::new(5, e.to_string()))
}

fn restore(
    home: &Home,
    json: bool,
    file: &std::path::Path,
    relay: Vec<String>,
    name: &str,
    passphrase_file: Option<&std::path::Path>,
) -> Result<(), Failure> {
    use tern_node::backup::BackupError;
    if home.is_initialised() {
        return Err(Failure::new(
            8,
            format!(
                "{} already holds a Tern identity; restore into an empty home",
                home.dir().display()
            ),
        ));
    }
    let bytes = tern_node::backup::read_file(file).map_err(|e| Failure::new(1, e.to_string()))?;
    let p = passphrase(passphrase_file, "backup passphrase: ")?;
    let relays = if relay.is_empty() { None } else { Some(relay) };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let created = tern_node::backup::restore(home, &bytes, &p, relays, name, now).map_err(|e| {
        let code = match &e {
            BackupError::File(_) | BackupError::Contents(_) => 10,
            BackupError::BadInput(_) | BackupError::Weak(_) => 5,
            BackupError::Home(tern_node::home::HomeError::AlreadyInitialised { .. }) => 8,
            _ => 1,
        };
        Failure::new(code, e.to_string())
    })?;
    print_created(json, home, &created, "restored", "new device id");
    Ok(())
}

/// Reports a home set up as a device of an existing user (`verb`: linked or restored).
fn print_created(
    json: bool,
    home: &Home,
    created: &tern_node::home::Created,
    verb: &str,
    device_label: &str,
) {
    if json {
        print_json(
            &json!({"user_id": created.user_id, "device_id": created.device_id, "home": home.dir()}),
        );
    } else {
        println!(
            "{verb}: user id {}, {device_label} {}",
            created.user_id, created.device_id
        );
        println!("next: tern --home {} up", home.dir().display());
    }
}

async fn change_passphrase(
    home: &Home,
    json: bool,
    passphrase_file: Option<&std::path::Path>,
    new_passphrase_file: Option<&std::path::Path>,
    keyfile: bool,
) -> Result<(), Failure> {
    use tern_node::{home::HomeError, unlock};
    if !home.is_initialised() {
        return Err(Failure::new(
            8,
            format!("no Tern identity in {}", home.dir().display()),
        ));
    }
    // Rekeying rewrites every page: a running node has the store open.
    if ApiClient::for_home(home).await.is_ok() {
        return Err(Failure::new(
            11,
            "the node is running for this home: stop it (Ctrl-C on `tern up`) and run this again",
        ));
    }
    let home = if unlock::uses_passphrase(home) {
        let p = passphrase(passphrase_file, "current store passphrase: ")?;
        home.clone().with_passphrase(&p)
    } else {
        home.clone()
    };
    let home_err = |e: HomeError| {
        let code = match &e {
            HomeError::WrongPassphrase { .. } | HomeError::PassphraseNeeded => 10,
            HomeError::WeakPassphrase(_) => 5,
            _ => 1,
        };
        Failure::new(code, e.to_string())
    };
    let mut store = home.open_store().map_err(home_err)?;
    let new = if keyfile {
        None
    } else {
        Some(new_passphrase(new_passphrase_file, "store passphrase")?)
    };
    let target = match &new {
        Some(p) => unlock::Target::Passphrase(p),
        None => unlock::Target::Keyfile,
    };
    unlock::change(&home, &mut store, target).map_err(home_err)?;
    let mode = if keyfile { "keyfile" } else { "passphrase" };
    if json {
        print_json(&json!({"unlock": mode}));
    } else if keyfile {
        println!(
            "the store is now unlocked by a new random key in {}",
            home.store_key_path().display()
        );
    } else {
        println!(
            "the store is now unlocked by the new passphrase; `tern up` asks for it (or --passphrase-file)"
        );
    }
    Ok(())
}

fn text_arg(text: String) -> Result<String, Failure> {
    if text != "-" {
        return Ok(text);
    }
    let mut buf = String::new();
    std::io::stdin()
        .read_to_string(&mut buf)
        .map_err(|e| Failure::new(5, format!("reading standard input: {e}")))?;
    Ok(buf.trim_end_matches('\n').to_owned())
}

/// Prints a history page (`[Message]`): as JSON, or one line per message.
fn print_history(v: &Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    for m in v.as_array().into_iter().flatten() {
        let short_id = s(m, "id").chars().take(8).collect::<String>();
        let who = match (
            m.get("own").and_then(Value::as_bool) == Some(true),
            s(m, "sender_name"),
            s(m, "sender_device_name"),
        ) {
            // Sent by this user from another of their devices: which one.
            (true, _, device) if !device.is_empty() => format!("me ({device})"),
            (true, _, _) => "me".to_owned(),
            (false, "", _) => s(m, "sender").chars().take(8).collect(),
            (false, name, _) => name.to_owned(),
        };
        if s(m, "kind") == "membership" {
            println!("{short_id} {:>8}  * {}", who, s(m, "text"));
        } else if let Some(f) = m.get("media") {
            let caption = s(m, "text");
            println!(
                "{short_id} {:>8}: [file {} {} bytes, {}]{}{}  ({})",
                who,
                s(f, "name"),
                f.get("size").and_then(Value::as_u64).unwrap_or(0),
                s(m, "id"),
                if caption.is_empty() { "" } else { " " },
                caption,
                s(m, "status")
            );
        } else {
            println!(
                "{short_id} {:>8}: {}  ({})",
                who,
                s(m, "text"),
                s(m, "status")
            );
        }
    }
}

/// Prints a `GroupInfo` as text: title, id, epoch, role, members.
fn print_group(g: &Value) {
    let flag = |k: &str| g.get(k).and_then(Value::as_bool) == Some(true);
    let members = g.get("members").and_then(Value::as_array);
    println!("{}", s(g, "title"));
    println!("id      {}", s(g, "id"));
    println!(
        "epoch   {}",
        g.get("epoch").and_then(Value::as_u64).unwrap_or(0)
    );
    println!(
        "you     {}",
        if !flag("member") {
            "not a member"
        } else if flag("admin") {
            "admin"
        } else {
            "member"
        }
    );
    println!(
        "unread  {}",
        g.get("unread").and_then(Value::as_u64).unwrap_or(0)
    );
    println!("members {}", members.map_or(0, Vec::len));
    for m in members.into_iter().flatten() {
        let admin = if m.get("admin").and_then(Value::as_bool) == Some(true) {
            " (admin)"
        } else {
            ""
        };
        println!("  {:<20} {}{admin}", s(m, "name"), s(m, "user_id"));
    }
}

/// After a membership change: the group as JSON, or a one-line summary.
fn print_membership(g: &Value, json: bool) {
    if json {
        print_json(g);
    } else {
        println!(
            "{}: {} members (epoch {})",
            s(g, "title"),
            g.get("members")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            g.get("epoch").and_then(Value::as_u64).unwrap_or(0)
        );
    }
}

async fn group(home: &Home, json: bool, cmd: GroupCmd) -> Result<(), Failure> {
    // Read standard input before connecting, so a slow writer does not hold a connection.
    let cmd = match cmd {
        GroupCmd::Send { group, text } => GroupCmd::Send {
            group,
            text: text_arg(text)?,
        },
        other => other,
    };
    let mut c = client(home).await?;
    match cmd {
        GroupCmd::Create { title, members } => {
            let v = c
                .call("group_create", json!({"title": title, "members": members}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", s(&v, "id"));
            }
        }
        GroupCmd::Add { group, members } => {
            let v = c
                .call("group_add", json!({"group": group, "members": members}))
                .await?;
            print_membership(&v, json);
        }
        GroupCmd::Remove { group, members } => {
            let v = c
                .call("group_remove", json!({"group": group, "members": members}))
                .await?;
            print_membership(&v, json);
        }
        GroupCmd::Leave { group } => {
            let v = c.call("group_leave", json!({"group": group})).await?;
            if json {
                print_json(&v);
            } else {
                println!("left {}", s(&v, "title"));
            }
        }
        GroupCmd::Info { group } => {
            let v = c.call("group_info", json!({"group": group})).await?;
            if json {
                print_json(&v);
            } else {
                print_group(&v);
            }
        }
        GroupCmd::List => {
            let v = c.call("group_list", json!({})).await?;
            if json {
                print_json(&v);
            } else {
                for g in v.as_array().into_iter().flatten() {
                    let members = g
                        .get("members")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    let left = if g.get("member").and_then(Value::as_bool) == Some(false) {
                        "  (not a member)"
                    } else {
                        ""
                    };
                    println!(
                        "{} {:<20} members {:>3}  unread {:>4}{left}",
                        s(g, "id"),
                        s(g, "title"),
                        members,
                        g.get("unread").and_then(Value::as_u64).unwrap_or(0)
                    );
                }
            }
        }
        GroupCmd::Send { group, text } => {
            let v = c
                .call("group_send", json!({"group": group, "text": text}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", s(&v, "id"));
            }
        }
        GroupCmd::History {
            group,
            limit,
            before,
            no_mark_read,
        } => {
            let v = c
                .call(
                    "group_history",
                    json!({"group": group, "limit": limit, "before": before, "mark_read": !no_mark_read}),
                )
                .await?;
            print_history(&v, json);
        }
    }
    Ok(())
}

fn ago_secs(ms: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(ms) / 1000
}

async fn contact(home: &Home, json: bool, cmd: ContactCmd) -> Result<(), Failure> {
    let mut c = client(home).await?;
    match cmd {
        ContactCmd::Link { no_qr, long } => {
            let v = c.call("contact.link", json!({})).await?;
            if json {
                print_json(&v);
            } else {
                // No short form when no home relay can be named in one: the long link then.
                let link = match s(&v, "short") {
                    short if !long && !short.is_empty() => short,
                    _ => s(&v, "link"),
                };
                println!("{link}");
                if !no_qr && let Some(code) = qr(link) {
                    println!("{code}");
                }
            }
        }
        ContactCmd::Add {
            link,
            name,
            accept_new_key,
        } => {
            let v = c
                .call(
                    "contact.add",
                    json!({"link": link, "name": name, "accept_new_key": accept_new_key}),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                let contact = v.get("contact").cloned().unwrap_or(Value::Null);
                match s(&v, "outcome") {
                    "identity_changed" => eprintln!(
                        "WARNING: accepted a NEW identity key for {}; verify the safety number again",
                        s(&contact, "name")
                    ),
                    outcome => println!(
                        "{} {} ({})",
                        outcome,
                        s(&contact, "name"),
                        s(&contact, "user_id")
                    ),
                }
                if name.is_none() && outcome_needs_name(&link, &v) {
                    eprintln!(
                        "a short link carries no name: add it again with --name NAME to name them"
                    );
                }
            }
        }
        ContactCmd::Accept { contact } => {
            let v = c
                .call("contact.accept", json!({"contact": contact}))
                .await?;
            if json {
                print_json(&v);
            } else {
                eprintln!(
                    "WARNING: accepted a NEW identity key for {}; verify the safety number again",
                    s(v.get("contact").unwrap_or(&Value::Null), "name")
                );
            }
        }
        ContactCmd::List => {
            let v = c.call("contact.list", json!({})).await?;
            if json {
                print_json(&v);
            } else {
                for ct in v.as_array().into_iter().flatten() {
                    let mut flags = Vec::new();
                    if ct.get("verified").and_then(Value::as_bool) == Some(true) {
                        flags.push("verified");
                    }
                    if ct.get("identity_change_pending").and_then(Value::as_bool) == Some(true) {
                        flags.push("IDENTITY CHANGED");
                    }
                    println!(
                        "{:<20} {} {}",
                        s(ct, "name"),
                        s(ct, "user_id"),
                        flags.join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}

/// The push endpoint's state at one home relay, in words.
fn push_state(p: &Value) -> String {
    let code = s(p, "code");
    match s(p, "state") {
        "registered" => "registered".into(),
        "cleared" => "cleared".into(),
        "refused" => format!("refused ({code})"),
        "failed" => format!("not yet (failed: {code}; tried again)"),
        "pending" if p["connected"] == true => "not yet (waiting for the relay)".into(),
        "pending" => "not yet (relay not connected)".into(),
        other => other.to_owned(),
    }
}

/// How full this device's mailbox at one relay is, and the senders filling it most.
fn print_mailbox(m: &Value) {
    if m.is_null() {
        return;
    }
    let n = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
    println!(
        "mailbox {} of {} messages waiting ({} from strangers, of {}), {} grants",
        n("messages"),
        n("max_messages"),
        n("intro_messages"),
        n("intro_max_messages"),
        n("grants")
    );
    let senders = m.get("by_sender").and_then(Value::as_array);
    for x in senders.into_iter().flatten().take(MAILBOX_SENDERS_SHOWN) {
        let who = x
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| x.get("user_id").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| format!("unknown device {}", s(x, "device_id")));
        println!(
            "  from  {who}: {} messages, {} bytes (share limit {})",
            x.get("messages").and_then(Value::as_u64).unwrap_or(0),
            x.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            n("share_messages")
        );
    }
}

/// Senders `status` lists per mailbox.
const MAILBOX_SENDERS_SHOWN: usize = 5;

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cmd, GroupCmd, Opts};

    fn parse(args: &[&str]) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("tern").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Opts::command().debug_assert();
    }

    #[test]
    fn group_commands_parse() {
        let o = parse(&["group", "create", "Team", "Bob", "Carol"]).unwrap();
        match o.cmd {
            Cmd::Group {
                cmd: GroupCmd::Create { title, members },
            } => {
                assert_eq!(title, "Team");
                assert_eq!(members, ["Bob", "Carol"]);
            }
            other => panic!("{other:?}"),
        }
        // A group of one (the creator) is allowed.
        assert!(parse(&["group", "create", "Solo"]).is_ok());
        let o = parse(&[
            "--json", "group", "history", "Team", "--limit", "5", "--before", "ab",
        ])
        .unwrap();
        assert!(o.json);
        match o.cmd {
            Cmd::Group {
                cmd:
                    GroupCmd::History {
                        group,
                        limit,
                        before,
                        no_mark_read,
                    },
            } => {
                assert_eq!(group, "Team");
                assert_eq!(limit, Some(5));
                assert_eq!(before.as_deref(), Some("ab"));
                assert!(!no_mark_read);
            }
            other => panic!("{other:?}"),
        }
        // --json is global: it may follow the subcommand.
        assert!(parse(&["group", "list", "--json"]).unwrap().json);
        assert!(parse(&["group", "info", "Team", "--json"]).unwrap().json);
        assert!(matches!(
            parse(&["group", "send", "Team", "-"]).unwrap().cmd,
            Cmd::Group {
                cmd: GroupCmd::Send { ref text, .. }
            } if text == "-"
        ));
    }

    #[test]
    fn group_commands_refuse_missing_arguments() {
        for args in [
            &["group"][..],
            &["group", "create"],
            &["group", "add", "Team"],
            &["group", "remove", "Team"],
            &["group", "leave"],
            &["group", "info"],
            &["group", "send", "Team"],
            &["group", "history"],
            &["group", "history", "Team", "--limit", "many"],
            &["group", "frobnicate"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }
}
