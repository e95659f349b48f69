//! How the node's answers are shown: with `--json` as the node sent them, else as text from
//! the typed values of `tern_node::types`, so an answer that does not have the fields the
//! text needs is a clear failure rather than blanks.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tern_node::{
    Home,
    types::{GroupInfo, MailboxInfo, MessageInfo, MessageKind, PushRelayInfo},
};

use crate::exit::{self, Failure};

/// Senders `status` lists per mailbox.
const MAILBOX_SENDERS_SHOWN: usize = 5;

/// `s` made safe to print on a terminal: control characters (escape sequences, line breaks,
/// carriage returns, tabs, ...), the characters that reorder text (bidirectional overrides
/// and isolates) and invisible ones ([`tern_node::text::is_hidden_or_control`]) are shown
/// as escapes (`\n`, `\x1b`, `\u{202e}`). Text from others
/// (messages, names, titles, file names) then cannot clear the screen, set the window title,
/// reach the clipboard, or forge a line of output.
pub(crate) fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    use tern_node::text::is_hidden_or_control as unsafe_char;
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) && u32::from(c) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes one line of a command's output to stdout (what [`outln!`] expands to), made safe
/// for a terminal ([`shown`]: a line break inside is shown as `\n`; [`out_block`] writes
/// lines of its own).
pub(crate) fn out_line(line: std::fmt::Arguments<'_>) {
    let text = line.to_string();
    out_raw(shown(&text).as_bytes());
}

/// Writes `bytes` and a line break to stdout as they are (JSON, which escapes what it
/// carries). When the reader has gone (a pipe closed early, as by `head`), the command ends
/// there with success: what the reader wanted has been written. Any other write error ends
/// it with a failure.
fn out_raw(bytes: &[u8]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("tern: cannot write the output: {e}");
            std::process::exit(i32::from(exit::FAILURE));
        }
    }
}

pub(crate) fn print_json(v: &Value) {
    out_raw(
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .as_bytes(),
    );
}

/// Reads an answer of the node as `T`; one that does not fit (a field missing or of another
/// type) fails with what is wrong.
pub(crate) fn parse<T: DeserializeOwned>(v: &Value) -> Result<T, Failure> {
    T::deserialize(v).map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("unexpected answer from the node: {e}"),
        )
    })
}

/// Shows an answer: with `--json` as the node sent it, else read as `T` and printed by `text`.
pub(crate) fn show<T: DeserializeOwned>(
    v: &Value,
    json: bool,
    text: impl FnOnce(T),
) -> Result<(), Failure> {
    if json {
        print_json(v);
    } else {
        text(parse(v)?);
    }
    Ok(())
}

/// Writes `text` made here (a QR code), one output line per line of it.
pub(crate) fn out_block(text: &str) {
    for line in text.lines() {
        outln!("{line}");
    }
}

/// `text` as a QR code of Unicode half blocks, if it fits in one.
pub(crate) fn qr(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
    )
}

/// Now, ms since the epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds from `ms` (since the epoch) until now.
pub(crate) fn ago_secs(ms: u64) -> u64 {
    now_ms().saturating_sub(ms) / 1000
}

/// Whole days (rounded up) from now until `ms` (since the epoch).
pub(crate) fn days_until(ms: i64) -> u64 {
    let left = u64::try_from(ms).unwrap_or(0).saturating_sub(now_ms());
    left.div_ceil(24 * 3600 * 1000)
}

/// The first eight characters of an id.
fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// Prints a history page (`[Message]`): as JSON, or one line per message.
pub(crate) fn print_history(v: &Value, json: bool) -> Result<(), Failure> {
    show(v, json, |page: Vec<MessageInfo>| {
        for m in &page {
            print_message(m);
        }
    })
}

fn print_message(m: &MessageInfo) {
    let short_id = short(&m.id);
    let who = match (
        m.own,
        m.sender_name.as_deref().unwrap_or(""),
        m.sender_device_name.as_deref().unwrap_or(""),
    ) {
        // Sent by this user from another of their devices: which one.
        (true, _, device) if !device.is_empty() => format!("me ({device})"),
        (true, _, _) => "me".to_owned(),
        (false, "", _) => short(&m.sender),
        (false, name, _) => name.to_owned(),
    };
    if m.kind == MessageKind::Membership {
        outln!("{short_id} {:>8}  * {}", who, m.text);
    } else if let Some(f) = &m.media {
        let caption = &m.text;
        outln!(
            "{short_id} {:>8}: [file {} {} bytes, {}]{}{}  ({})",
            who,
            f.name,
            f.size,
            m.id,
            if caption.is_empty() { "" } else { " " },
            caption,
            m.status
        );
    } else {
        // A text of several lines: the lines after the first under its first, so none of
        // them reads as a message of its own.
        let mut lines = m.text.split('\n');
        let first = lines.next().unwrap_or_default();
        let rest: Vec<&str> = lines.collect();
        let Some((last, middle)) = rest.split_last() else {
            outln!("{short_id} {:>8}: {}  ({})", who, first, m.status);
            return;
        };
        outln!("{short_id} {:>8}: {}", who, first);
        let indent = short_id.chars().count() + 1 + who.chars().count().max(8) + 2;
        for line in middle {
            outln!("{:indent$}{line}", "");
        }
        outln!("{:indent$}{last}  ({})", "", m.status);
    }
}

/// Prints a `GroupInfo` as text: title, id, epoch, role, members.
pub(crate) fn print_group(g: &GroupInfo) {
    outln!("{}", g.title);
    outln!("id      {}", g.id);
    outln!("epoch   {}", g.epoch);
    outln!(
        "you     {}",
        if !g.member {
            "not a member"
        } else if g.admin {
            "admin"
        } else {
            "member"
        }
    );
    outln!("unread  {}", g.unread);
    outln!("members {}", g.members.len());
    for m in &g.members {
        let admin = if m.admin { " (admin)" } else { "" };
        outln!("  {:<20} {}{admin}", m.name, m.user_id);
    }
}

/// After a membership change: the group as JSON, or a one-line summary.
pub(crate) fn print_membership(v: &Value, json: bool) -> Result<(), Failure> {
    show(v, json, |g: GroupInfo| {
        outln!(
            "{}: {} members (epoch {})",
            g.title,
            g.members.len(),
            g.epoch
        );
    })
}

/// Reports a home set up as a device of an existing user (`verb`: linked or restored).
pub(crate) fn print_created(
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
        outln!(
            "{verb}: user id {}, {device_label} {}",
            created.user_id,
            created.device_id
        );
        outln!("next: tern --home {} up", home.dir().display());
    }
}

/// The push endpoint's state at one home relay, in words.
pub(crate) fn push_state(p: &PushRelayInfo) -> String {
    let code = p.code.as_deref().unwrap_or("");
    match p.state.as_str() {
        "registered" => "registered".into(),
        "cleared" => "cleared".into(),
        "refused" => format!("refused ({code})"),
        "failed" => format!("not yet (failed: {code}; tried again)"),
        "pending" if p.connected => "not yet (waiting for the relay)".into(),
        "pending" => "not yet (relay not connected)".into(),
        other => other.to_owned(),
    }
}

/// Mailbox figures older than this are shown with their age.
const STALE_MAILBOX_SECS: u64 = 5;

/// How full this device's mailbox at one relay is, and the senders filling it most.
pub(crate) fn print_mailbox(m: &MailboxInfo) {
    // Figures the relay did not give just now (it is down or slow) say how old they are.
    let age = ago_secs(u64::try_from(m.at_ms).unwrap_or(0));
    let stale = if age >= STALE_MAILBOX_SECS {
        format!(" (as of {age}s ago)")
    } else {
        String::new()
    };
    outln!(
        "mailbox {} of {} messages waiting ({} from strangers, of {}), {} grants{stale}",
        m.messages,
        m.max_messages,
        m.intro_messages,
        m.intro_max_messages,
        m.grants
    );
    for x in m.by_sender.iter().take(MAILBOX_SENDERS_SHOWN) {
        let who = x
            .name
            .clone()
            .or_else(|| x.user_id.map(|u| u.to_string()))
            .unwrap_or_else(|| {
                format!(
                    "unknown device {}",
                    x.device_id.map(|d| d.to_string()).unwrap_or_default()
                )
            });
        outln!(
            "  from  {who}: {} messages, {} bytes (share limit {})",
            x.messages,
            x.bytes,
            m.share_messages
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tern_node::types::{IdInfo, PushRelayInfo};

    use super::{parse, push_state};

    #[test]
    fn an_answer_without_the_fields_is_a_failure_that_names_them() {
        let (u, d) = (
            "0123456789abcdef0123456789abcdef",
            "12D3KooW9tHTtS3inCZiYykw4u5G4frbjVFqhkmJX12gSNCVeH3e",
        );
        let good = json!({"user_id": u, "device_id": d, "name": "n", "fingerprint": "f"});
        assert_eq!(parse::<IdInfo>(&good).unwrap().name, "n");
        let missing = json!({"user_id": u, "device_id": d, "fingerprint": "f"});
        let e = parse::<IdInfo>(&missing).unwrap_err();
        assert_eq!(e.code, crate::exit::FAILURE);
        assert!(
            e.message.starts_with("unexpected answer from the node: ")
                && e.message.contains("missing field `name`"),
            "{}",
            e.message
        );
        let mistyped = json!({"user_id": 7, "device_id": d, "name": "n", "fingerprint": "f"});
        let e = parse::<IdInfo>(&mistyped).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        assert!(parse::<Vec<IdInfo>>(&json!({"not": "a list"})).is_err());
    }

    #[test]
    fn text_from_others_cannot_drive_a_terminal() {
        use super::shown;
        assert_eq!(shown("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(
            shown("a\u{1b}[2Jb\u{7}\r\n\tc\u{0}\u{9b}31m"),
            "a\\x1b[2Jb\\x07\\r\\n\\tc\\x00\\x9b31m"
        );
        assert_eq!(shown("abc\u{202e}def\u{2066}"), "abc\\u{202e}def\\u{2066}");
    }

    #[test]
    fn push_states_read_as_words() {
        let p = |state: &str, connected: bool, code: Option<&str>| PushRelayInfo {
            addr: "/ip4/127.0.0.1/tcp/1".into(),
            connected,
            state: state.into(),
            code: code.map(str::to_owned),
        };
        assert_eq!(push_state(&p("registered", true, None)), "registered");
        assert_eq!(
            push_state(&p("refused", true, Some("not_allowed"))),
            "refused (not_allowed)"
        );
        assert_eq!(
            push_state(&p("failed", true, Some("network"))),
            "not yet (failed: network; tried again)"
        );
        assert_eq!(
            push_state(&p("pending", true, None)),
            "not yet (waiting for the relay)"
        );
        assert_eq!(
            push_state(&p("pending", false, None)),
            "not yet (relay not connected)"
        );
    }
}
