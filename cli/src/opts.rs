//! The command line: `tern`'s options and commands, whose doc comments are its help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Tern: peer-to-peer, end-to-end encrypted messaging.
///
/// Exit codes: 0 ok (also when a reader of the output stops early, as `| head` does), 1
/// failure, 2 usage, 3 no node running, 4 unknown contact, group or message, 5 bad input (link,
/// text), 6 contact's identity key changed, 7 network, 8 home not initialised or already
/// initialised, 9 group refused it (not an admin, not a member, full), 10 wrong passphrase or
/// damaged backup, 11 the node must be stopped first (for `up`: one already runs for this home), 12 this device was revoked, 13 a file
/// could not be sent or fetched, 14 a new device's link was not confirmed (nothing applied), 15
/// a home relay refused the push endpoint.
#[derive(Debug, Parser)]
#[command(version)]
pub(crate) struct Opts {
    /// The node's home directory (default: TERN_HOME, else the per-user data dir + /tern).
    #[arg(long, env = "TERN_HOME", global = true)]
    pub(crate) home: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
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
    /// Stop the node running for this home, as Ctrl-C on `tern up` does, and wait (at most
    /// 30 s) until its process has ended.
    Down,
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
        /// Your own key for this text (1 to 64 visible ASCII characters): sent again under
        /// the same key within 30 days, it is not sent twice.
        #[arg(long, value_name = "KEY")]
        client_id: Option<String>,
    },
    /// Send a file or an image (up to 100 MiB) to a contact or, with --group, to a group;
    /// shows progress until the relay holds it, then prints the message id. An image is sent
    /// without its metadata (EXIF, GPS), scaled to 2048 px unless --original.
    #[command(name = "send-file")]
    SendFile {
        /// CONTACT PATH, or PATH with --group. (Checked after parsing, so that a missing
        /// one is named in words that fit both forms.)
        #[arg(num_args = 1..=2, value_names = ["CONTACT", "PATH"])]
        args: Vec<String>,
        /// Send to this group (id or title) instead of a contact.
        #[arg(long)]
        group: Option<String>,
        /// A caption sent with the file.
        #[arg(long)]
        caption: Option<String>,
        /// Send an image at its full size (still without metadata).
        #[arg(long, conflicts_with = "as_file")]
        original: bool,
        /// Send the file as it is, even an image: not decoded, scaled or stripped of its
        /// metadata (EXIF, GPS). For an image Tern cannot read.
        #[arg(long)]
        as_file: bool,
        /// Return once the file is queued, without waiting for the upload.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds without progress (the relay's storage
        /// full, say); the node goes on with the upload (`tern file list`).
        #[arg(long, value_name = "SECS", default_value_t = crate::file::IDLE.as_secs(),
              conflicts_with = "no_wait",
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        idle_secs: u64,
    },
    /// Open the web UI of the running node in the default browser (a one-time link, valid
    /// 60 s, through a private local file, so the link never appears in a process list).
    Ui {
        /// Print the one-time URL instead of opening a browser.
        #[arg(long)]
        print: bool,
        /// End every web UI session instead: open pages lose the node at once and need
        /// `tern ui` again (sessions otherwise last 30 days and ride out restarts).
        #[arg(long, conflicts_with = "print")]
        sign_out: bool,
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
        /// Most messages to show (1 to 500; default 50).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
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
        /// Most hits to show, newest first (1 to 500; default 20).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
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
    /// Home relays: where this device keeps its mailboxes. Contacts deposit every message at
    /// each of them, so one that is down or loses its data costs nothing.
    Relay {
        #[command(subcommand)]
        cmd: RelayCmd,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCmd {
    /// Add a home relay (saved; contacts and your other devices are told). A home relay's
    /// peer id at another address updates its address (the relay moved). Exit 5 for an
    /// address that is not a multiaddr ending in `/p2p/<peer id>`.
    Add {
        /// The relay's multiaddr, ending in `/p2p/<peer id>`.
        addr: String,
    },
    /// Remove a home relay (the last one stays; contacts and your other devices are told).
    Remove {
        /// The relay's multiaddr, as `tern relay list` shows it.
        addr: String,
    },
    /// Show the home relays: connected or not, and what each has yet to take.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PushCmd {
    /// Set the push endpoint and register it at every home relay (relays not connected now
    /// get it when they connect). Exit 5 for a URL that is not a plain http(s) URL, 15 when
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
pub(crate) enum GroupCmd {
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
        /// Make them admins (junior to every admin already there: they can remove members
        /// and admins added after them, not those before).
        #[arg(long)]
        admin: bool,
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
        /// Your own key for this text, as for `tern send --client-id`.
        #[arg(long, value_name = "KEY")]
        client_id: Option<String>,
    },
    /// Show a group's conversation in display order (marks it read).
    History {
        /// Group id or title.
        group: String,
        /// Most messages to show (1 to 500; default 50).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
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
pub(crate) enum FileCmd {
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
pub(crate) enum DeviceCmd {
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
pub(crate) enum IdCmd {
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
pub(crate) enum ContactCmd {
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
    /// Look a contact up in the DHT now and take their newest relays (and device list) if
    /// the record found verifies and is newer; prints their relays.
    Find {
        /// Contact name or user id.
        contact: String,
    },
    /// List contacts.
    List,
    /// Give a contact another name (as you see them; names are unique, in any case).
    Rename {
        /// Contact name or user id.
        contact: String,
        /// The new name (1 to 64 bytes).
        name: String,
    },
}

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
            &["group", "history", "Team", "--limit", "0"],
            &["history", "Bob", "--limit", "0"],
            &["history", "Bob", "--limit", "501"],
            &["group", "frobnicate"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }
}
