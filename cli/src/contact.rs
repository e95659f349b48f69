//! `tern contact`, `tern safety-number` and `tern verify`: a user's link, adding, renaming
//! and listing contacts, accepting a changed identity key, and checking one.

use serde_json::json;
use tern_node::{
    Home,
    types::{AddedContact, ContactInfo, LinkInfo, SafetyInfo},
};

use crate::{
    client,
    exit::Failure,
    opts::ContactCmd,
    render::{out_block, qr, show, shown},
};

/// `tern contact ...`.
pub(crate) async fn run(home: &Home, json: bool, cmd: ContactCmd) -> Result<(), Failure> {
    let mut c = client(home).await?;
    match cmd {
        ContactCmd::Link { no_qr, long } => {
            let v = c.call("contact.link", json!({})).await?;
            show(&v, json, |l: LinkInfo| {
                // No short form when no home relay can be named in one: the long link then.
                let link = match l.short.as_deref() {
                    Some(short) if !long && !short.is_empty() => short,
                    _ => &l.link,
                };
                outln!("{link}");
                if !no_qr && let Some(code) = qr(link) {
                    out_block(&code);
                }
            })
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
            show(&v, json, |added: AddedContact| {
                let contact = &added.contact;
                match added.outcome.as_str() {
                    "identity_changed" => warn_new_key(contact),
                    outcome => outln!("{} {} ({})", outcome, contact.name, contact.user_id),
                }
                if name.is_none() && needs_name(&link, &added) {
                    eprintln!(
                        "a short link carries no name: name them with `tern contact rename {} NAME`",
                        shown(&added.contact.name)
                    );
                }
            })
        }
        ContactCmd::Accept { contact } => {
            let v = c
                .call("contact.accept", json!({"contact": contact}))
                .await?;
            show(&v, json, |added: AddedContact| warn_new_key(&added.contact))
        }
        ContactCmd::Find { contact } => {
            let v = c.call("contact.find", json!({"contact": contact})).await?;
            show(&v, json, |ct: ContactInfo| {
                outln!("{} ({})", ct.name, ct.user_id);
                for r in ct.relays {
                    outln!("  relay {r}");
                }
            })
        }
        ContactCmd::Rename { contact, name } => {
            let v = c
                .call("contact.rename", json!({"contact": contact, "name": name}))
                .await?;
            show(&v, json, |ct: ContactInfo| {
                outln!("renamed {} ({})", ct.name, ct.user_id);
            })
        }
        ContactCmd::List => {
            let v = c.call("contact.list", json!({})).await?;
            show(&v, json, |contacts: Vec<ContactInfo>| {
                for ct in contacts {
                    let mut flags = Vec::new();
                    if ct.verified {
                        flags.push("verified");
                    }
                    if ct.identity_change_pending {
                        flags.push("IDENTITY CHANGED");
                    }
                    outln!("{:<20} {} {}", ct.name, ct.user_id, flags.join(" "));
                }
            })
        }
    }
}

fn warn_new_key(contact: &ContactInfo) {
    eprintln!(
        "WARNING: accepted a NEW identity key for {}; verify the safety number again",
        shown(&contact.name)
    );
}

/// Whether a contact was just added from a short link (which carries no name) without one.
fn needs_name(link: &str, added: &AddedContact) -> bool {
    let link = link.trim();
    let short = link.len() <= tern_node::consts::MAX_SHORT_LINK_CHARS
        && link
            .get(..tern_node::link::SHORT_LINK_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(tern_node::link::SHORT_LINK_PREFIX));
    short && added.outcome == "added"
}

/// `tern safety-number`.
pub(crate) async fn safety_number(home: &Home, json: bool, contact: String) -> Result<(), Failure> {
    let v = client(home)
        .await?
        .call("safety_number", json!({"contact": contact}))
        .await?;
    show(&v, json, |sn: SafetyInfo| {
        outln!("safety number with {}:", sn.name);
        outln!("{}", sn.digits);
        if let Some(code) = qr(&sn.qr) {
            out_block(&code);
        }
        outln!(
            "{}",
            if sn.verified {
                "verified"
            } else {
                "not verified: compare with your contact, then `tern verify`"
            }
        );
    })
}

/// `tern verify`.
pub(crate) async fn verify(
    home: &Home,
    json: bool,
    contact: String,
    scanned: Option<String>,
) -> Result<(), Failure> {
    let v = client(home)
        .await?
        .call("verify", json!({"contact": contact, "scanned": scanned}))
        .await?;
    show(&v, json, |ct: ContactInfo| {
        outln!("{} is verified", ct.name)
    })
}
