//! `tern group`: creating groups, changing their members, leaving, and their texts.

use serde_json::json;
use tern_node::{
    Home,
    types::{GroupInfo, MessageInfo},
};

use crate::{
    client,
    exit::Failure,
    input::text_arg,
    opts::GroupCmd,
    render::{print_group, print_history, print_membership, show},
};

/// `tern group ...`.
pub(crate) async fn run(home: &Home, json: bool, cmd: GroupCmd) -> Result<(), Failure> {
    // Read standard input before connecting, so a slow writer does not hold a connection.
    let cmd = match cmd {
        GroupCmd::Send {
            group,
            text,
            client_id,
        } => GroupCmd::Send {
            group,
            text: text_arg(text)?,
            client_id,
        },
        other => other,
    };
    let mut c = client(home).await?;
    match cmd {
        GroupCmd::Create { title, members } => {
            let v = c
                .call("group_create", json!({"title": title, "members": members}))
                .await?;
            show(&v, json, |g: GroupInfo| outln!("{}", g.id))
        }
        GroupCmd::Add {
            group,
            members,
            admin,
        } => {
            let v = c
                .call(
                    "group_add",
                    json!({"group": group, "members": members, "admin": admin}),
                )
                .await?;
            print_membership(&v, json)
        }
        GroupCmd::Remove { group, members } => {
            let v = c
                .call("group_remove", json!({"group": group, "members": members}))
                .await?;
            print_membership(&v, json)
        }
        GroupCmd::Leave { group } => {
            let v = c.call("group_leave", json!({"group": group})).await?;
            show(&v, json, |g: GroupInfo| outln!("left {}", g.title))
        }
        GroupCmd::Info { group } => {
            let v = c.call("group_info", json!({"group": group})).await?;
            show(&v, json, |g: GroupInfo| print_group(&g))
        }
        GroupCmd::List => {
            let v = c.call("group_list", json!({})).await?;
            show(&v, json, |groups: Vec<GroupInfo>| {
                for g in &groups {
                    let left = if g.member { "" } else { "  (not a member)" };
                    outln!(
                        "{} {:<20} members {:>3}  unread {:>4}{left}",
                        g.id,
                        g.title,
                        g.members.len(),
                        g.unread
                    );
                }
            })
        }
        GroupCmd::Send {
            group,
            text,
            client_id,
        } => {
            let v = c
                .call(
                    "group_send",
                    json!({"group": group, "text": text, "client_id": client_id}),
                )
                .await?;
            show(&v, json, |m: MessageInfo| outln!("{}", m.id))
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
            print_history(&v, json)
        }
    }
}
