//! `tern status`, `tern presence`, `tern push` and `tern relay`: the node's state, contacts'
//! presence, the push endpoint at the home relays, and the home relays themselves.

use std::time::Duration;

use serde_json::json;
use tern_node::{
    Home,
    types::{PresenceInfo, PushInfo, RelayInfo, StatusInfo},
};

use crate::{
    client,
    exit::Failure,
    opts::{PushCmd, RelayCmd},
    render::{ago_secs, days_until, print_mailbox, push_state, show},
};

/// `tern presence`: one contact, or all.
pub(crate) async fn presence(
    home: &Home,
    json: bool,
    contact: Option<String>,
) -> Result<(), Failure> {
    let v = client(home)
        .await?
        .call("presence", json!({"contact": contact}))
        .await?;
    show(&v, json, |list: Vec<PresenceInfo>| {
        for p in &list {
            let seen = p
                .last_seen
                .map(|ms| format!(" (last seen {}s ago)", ago_secs(ms)))
                .unwrap_or_default();
            outln!("{:<20} {}{}", p.name, p.state, seen);
        }
    })
}

/// `tern status`, after setting it to `set` if given.
pub(crate) async fn status(home: &Home, json: bool, set: Option<String>) -> Result<(), Failure> {
    let mut c = client(home).await?;
    if let Some(status) = set {
        c.call("status.set", json!({"status": status})).await?;
    }
    let v = c.call("status", json!({})).await?;
    show(&v, json, |s: StatusInfo| print_status(&s))
}

fn print_status(v: &StatusInfo) {
    outln!("status  {}", v.status);
    outln!("user id {}", v.user_id);
    outln!("outbox  {}", v.outbox);
    outln!("unread  {}", v.unread);
    let push = &v.push;
    match &push.host {
        // Only the host: the path of a push URL is often its secret part.
        Some(host) => outln!("push    {host}/…  (tern push status)"),
        None => outln!("push    none"),
    }
    let r = &v.recovery;
    if r.undecryptable + r.resends_asked + r.texts_resent > 0 {
        outln!(
            "lost    {} undecryptable, {} resends asked, {} texts sent again",
            r.undecryptable,
            r.resends_asked,
            r.texts_resent
        );
    }
    if r.group_waiting > 0 {
        outln!(
            "waiting {} group messages for their sender key or group",
            r.group_waiting
        );
    }
    if r.strangers_waiting > 0 {
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        outln!(
            "strangers {} from {} of no one you have added wait here (7 days); add the sender as a contact to read them",
            plural(r.strangers_waiting, "message", "messages"),
            plural(r.stranger_devices, "device", "devices")
        );
    }
    if r.texts_from_non_contacts > 0 {
        outln!(
            "others  {} from group members you have not added were not kept; add them as contacts and they are sent again",
            if r.texts_from_non_contacts == 1 {
                "1 text".to_owned()
            } else {
                format!("{} texts", r.texts_from_non_contacts)
            }
        );
    }
    if r.strangers_expired > 0 {
        outln!(
            "dropped {} messages from devices of no one you had added, after 7 days",
            r.strangers_expired
        );
    }
    if r.group_keys_asked + r.group_keys_resent > 0 {
        outln!(
            "keys    {} lost sender keys asked for, {} sent again",
            r.group_keys_asked,
            r.group_keys_resent
        );
    }
    let h = &v.history;
    if h.total > 0 {
        outln!(
            "history {} of {} messages received from the linking device",
            h.received,
            h.total
        );
    }
    for d in &h.sending {
        outln!(
            "history {} of {} messages queued for device {}",
            d.sent,
            d.total,
            d.device_id
        );
    }
    for r in &v.relays {
        print_relay(r);
        if let Some(m) = &r.mailbox {
            print_mailbox(m);
        }
        if let Some(p) = push.relays.iter().find(|p| p.addr == r.addr)
            && p.state != "none"
        {
            outln!("        push {}", push_state(p));
        }
    }
}

/// `tern push ...`.
pub(crate) async fn push(home: &Home, json: bool, cmd: PushCmd) -> Result<(), Failure> {
    let (method, params) = match &cmd {
        PushCmd::Set { url } => ("push.set", json!({"url": url})),
        PushCmd::Clear => ("push.clear", json!({})),
        PushCmd::Status => ("push.status", json!({})),
    };
    let v = client(home).await?.call(method, params).await?;
    show(&v, json, |p: PushInfo| {
        match (&cmd, &p.url) {
            (PushCmd::Clear, _) => outln!("push endpoint cleared"),
            (_, Some(url)) => outln!("push endpoint {url}"),
            (_, None) => outln!("no push endpoint"),
        }
        for r in &p.relays {
            outln!("relay   {} {}", r.addr, push_state(r));
        }
    })
}

/// One relay's line: address, connection, and the rows it has yet to take.
fn print_relay(r: &RelayInfo) {
    let state = if r.connected {
        "connected"
    } else {
        "disconnected"
    };
    let drain = match r.draining_until_ms {
        Some(until) if r.connected => format!(
            ", removed: its mailbox is still drained for {} days",
            days_until(until)
        ),
        // It may never answer again (a relay that lost its data directory): the drain is
        // a chance, not a promise.
        Some(until) => format!(
            ", removed: its mailbox is drained if it comes back within {} days",
            days_until(until)
        ),
        // Not this device's: a relay of a contact's (or of another own device's).
        None if !r.home => ", not a home relay".to_owned(),
        None => String::new(),
    };
    match r.waiting {
        0 => outln!("relay   {} {state}{drain}", r.addr),
        n => outln!("relay   {} {state}, {n} to deposit{drain}", r.addr),
    }
    if r.waiting > 0 {
        // A relay that cannot be reached says why below; "no answer" adds nothing to that.
        let unreachable = r.problem.is_some();
        for code in r.held.iter().filter(|c| !(unreachable && *c == "network")) {
            outln!("        held back: {}", held_words(code));
        }
    }
    if let Some(problem) = &r.problem {
        outln!("        {problem}");
    }
}

/// Why a relay holds rows back, in words (its refusal code, or `network`).
fn held_words(code: &str) -> String {
    match code {
        "share_full" | "quota_count" | "quota_bytes" => {
            "a recipient's mailbox there is full; it goes as they fetch their mail".into()
        }
        "rate_limited" => "the relay's rate limit; it goes in a moment".into(),
        "storage_full" => "the relay's disk is full; it goes once the relay has room".into(),
        "unavailable" => "the relay is busy; it goes in a moment".into(),
        "network" => "no answer from the relay; tried again".into(),
        other => format!("refused ({other}); tried again"),
    }
}

/// `tern relay ...`.
pub(crate) async fn relay(home: &Home, json: bool, cmd: RelayCmd) -> Result<(), Failure> {
    let (method, params) = match &cmd {
        RelayCmd::Add { addr } => ("relay.add", json!({"addr": addr})),
        RelayCmd::Remove { addr } => ("relay.remove", json!({"addr": addr})),
        RelayCmd::List => ("relay.list", json!({})),
    };
    let mut c = client(home).await?;
    // A relay is removed by its peer id, wherever it is: which one goes is said.
    let removing = match &cmd {
        RelayCmd::Remove { addr } if !json => {
            let list: Vec<RelayInfo> =
                crate::render::parse(&c.call("relay.list", json!({})).await?)?;
            same_peer(addr, &list).map(|r| r.addr.clone())
        }
        _ => None,
    };
    let mut v = c.call(method, params).await?;
    if let RelayCmd::Add { addr } = &cmd
        && !json
    {
        // The node answered once the relay answered a check at the address; it connects to
        // it as a home relay a moment later. That moment is waited for (briefly), so the
        // list does not show the relay just checked as disconnected.
        let deadline = tokio::time::Instant::now() + ADDED_CONNECT_WAIT;
        loop {
            let list: Vec<RelayInfo> = crate::render::parse(&v)?;
            if same_peer(addr, &list).is_none_or(|r| r.connected)
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            v = c.call("relay.list", json!({})).await?;
        }
    }
    show(&v, json, |list: Vec<RelayInfo>| {
        if let (RelayCmd::Remove { addr }, Some(gone)) = (&cmd, &removing) {
            if gone == addr.trim() {
                outln!("removed {gone}");
            } else {
                outln!("removed {gone} (the home relay with the peer id of {addr})");
            }
        }
        for r in &list {
            print_relay(r);
        }
    })
}

/// Longest `tern relay add` waits for the relay it added to connect before listing.
const ADDED_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// The relay of `list` with the peer id `addr` ends in.
fn same_peer<'a>(addr: &str, list: &'a [RelayInfo]) -> Option<&'a RelayInfo> {
    let (_, peer) = addr.trim().rsplit_once("/p2p/")?;
    let suffix = format!("/p2p/{peer}");
    list.iter().find(|r| r.addr.ends_with(&suffix))
}
