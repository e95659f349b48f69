//! `tern send`, `tern history`, `tern conversations` and `tern search`: texts with contacts,
//! and the conversations they make.

use serde_json::json;
use tern_node::{
    Home,
    types::{ConversationInfo, MessageInfo, SearchHitInfo},
};

use crate::{
    client,
    exit::Failure,
    input::text_arg,
    render::{print_history, show},
};

/// `tern send`: prints the message id.
pub(crate) async fn send(
    home: &Home,
    json: bool,
    contact: String,
    text: String,
    client_id: Option<String>,
) -> Result<(), Failure> {
    let text = text_arg(text)?;
    let v = client(home)
        .await?
        .call(
            "send",
            json!({"contact": contact, "text": text, "client_id": client_id}),
        )
        .await?;
    show(&v, json, |m: MessageInfo| outln!("{}", m.id))
}

/// `tern history`.
pub(crate) async fn history(
    home: &Home,
    json: bool,
    contact: String,
    limit: Option<u32>,
    before: Option<String>,
    mark_read: bool,
) -> Result<(), Failure> {
    let v = client(home)
        .await?
        .call(
            "history",
            json!({"contact": contact, "limit": limit, "before": before, "mark_read": mark_read}),
        )
        .await?;
    print_history(&v, json)
}

/// `tern conversations`: most recent first.
pub(crate) async fn conversations(home: &Home, json: bool) -> Result<(), Failure> {
    let v = client(home).await?.call("conversations", json!({})).await?;
    show(&v, json, |list: Vec<ConversationInfo>| {
        for c in &list {
            outln!(
                "{:<20} unread {:>4}  {}",
                c.name
                    .as_deref()
                    .or(c.title.as_deref())
                    .unwrap_or(c.id.as_str()),
                c.unread,
                c.last_text.as_deref().unwrap_or("")
            );
        }
    })
}

/// `tern search`.
pub(crate) async fn search(
    home: &Home,
    json: bool,
    query: String,
    limit: Option<u32>,
) -> Result<(), Failure> {
    let limit = limit.unwrap_or(SEARCH_DEFAULT);
    // One more than shown, to tell whether there are more (none past 500).
    let asked = (limit + 1).min(SEARCH_MAX);
    let mut v = client(home)
        .await?
        .call("search", json!({"query": query, "limit": asked}))
        .await?;
    let shown = limit as usize;
    let more = v.as_array().is_some_and(|hits| hits.len() > shown);
    if let Some(hits) = v.as_array_mut() {
        hits.truncate(shown);
    }
    show(&v, json, |hits: Vec<SearchHitInfo>| {
        for h in &hits {
            outln!("{} {}", h.id.chars().take(8).collect::<String>(), h.snippet);
        }
    })?;
    if more && !json {
        eprintln!(
            "(the newest {limit} hits; there are more{})",
            if limit < SEARCH_MAX {
                ": --limit shows up to 500"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Hits `tern search` shows unless told, and the most it can show.
const SEARCH_DEFAULT: u32 = 20;
const SEARCH_MAX: u32 = 500;
