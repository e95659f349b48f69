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
pub(crate) async fn search(home: &Home, json: bool, query: String) -> Result<(), Failure> {
    let v = client(home)
        .await?
        .call("search", json!({"query": query}))
        .await?;
    show(&v, json, |hits: Vec<SearchHitInfo>| {
        for h in &hits {
            outln!("{} {}", h.id.chars().take(8).collect::<String>(), h.snippet);
        }
    })
}
