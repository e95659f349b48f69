//! Full-text search over message text: FTS5 with the trigram tokenizer, so any substring of
//! three or more characters matches (words, prefixes, the middle of words, any script), case-
//! and diacritic-insensitively. Shorter terms (a two-character word in Chinese, "ok") cannot
//! use a trigram index: they are checked with `LIKE`, as a filter on the indexed terms' hits
//! or, when the whole query is short terms, by a scan from the newest message back.

use rusqlite::params_from_iter;
use rusqlite::types::Value;

use crate::consts::{
    DEFAULT_SEARCH_PAGE_SIZE, MAX_PAGE_SIZE, MAX_SEARCH_QUERY_BYTES, MAX_SEARCH_TERMS,
    MIN_INDEXED_TERM_CHARS, PREVIEW_CHARS, SNIPPET_TOKENS,
};
use crate::error::{Context, SearchError};
use crate::messages::message_id;
use crate::store::Store;
use crate::types::{ConversationId, SearchCursor, SearchHit, SearchResults, SnippetPart};

/// Marks the start and end of a match inside FTS5 snippets; control characters that the
/// snippet parser turns into [`SnippetPart`]s.
const MARK_START: char = '\u{2}';
const MARK_END: char = '\u{3}';

/// A parsed query.
struct Query {
    /// The FTS5 MATCH expression for terms of three characters or more, if any.
    fts: Option<String>,
    /// `LIKE` patterns for shorter terms.
    likes: Vec<String>,
    /// The short terms, for highlighting when there is no FTS snippet.
    short_terms: Vec<String>,
}

fn parse(text: &str) -> Result<Query, SearchError> {
    if text.len() > MAX_SEARCH_QUERY_BYTES {
        return Err(SearchError::QueryTooLong {
            reason: "more bytes than the limit",
        });
    }
    let terms: Vec<&str> = text.split_whitespace().collect();
    if terms.is_empty() {
        return Err(SearchError::EmptyQuery);
    }
    if terms.len() > MAX_SEARCH_TERMS {
        return Err(SearchError::QueryTooLong {
            reason: "more terms than the limit",
        });
    }
    let mut phrases = Vec::new();
    let mut likes = Vec::new();
    let mut short_terms = Vec::new();
    for t in terms {
        if t.chars().count() >= MIN_INDEXED_TERM_CHARS {
            // A quoted FTS5 string: the term is matched as a literal, operators and all.
            phrases.push(format!("\"{}\"", t.replace('"', "\"\"")));
        } else {
            let mut pattern = String::with_capacity(t.len() + 2);
            pattern.push('%');
            for c in t.chars() {
                if matches!(c, '%' | '_' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push('%');
            likes.push(pattern);
            short_terms.push(t.to_owned());
        }
    }
    Ok(Query {
        fts: (!phrases.is_empty()).then(|| phrases.join(" ")),
        likes,
        short_terms,
    })
}

/// Splits an FTS5 snippet with our marks into parts.
fn parse_snippet(s: &str) -> Vec<SnippetPart> {
    let mut parts = Vec::new();
    let mut highlighted = false;
    let mut cur = String::new();
    for c in s.chars() {
        if c == MARK_START || c == MARK_END {
            if !cur.is_empty() {
                parts.push(SnippetPart {
                    text: std::mem::take(&mut cur),
                    highlighted,
                });
            }
            highlighted = c == MARK_START;
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        parts.push(SnippetPart {
            text: cur,
            highlighted,
        });
    }
    parts
}

/// Highlights short terms the way `LIKE` matched them (ASCII case-insensitive), in a window
/// of text around the first match.
fn highlight_short(text: &str, terms: &[String]) -> Vec<SnippetPart> {
    let lower = text.to_ascii_lowercase();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for t in terms {
        let t = t.to_ascii_lowercase();
        let mut from = 0;
        while let Some(i) = lower.get(from..).and_then(|rest| rest.find(&t)) {
            ranges.push((from + i, from + i + t.len()));
            from += i + t.len().max(1);
        }
    }
    ranges.sort_unstable();
    let first = ranges.first().map_or(0, |r| r.0);
    // A window of about PREVIEW_CHARS characters starting a little before the first match.
    let start = text[..first]
        .char_indices()
        .rev()
        .nth(PREVIEW_CHARS / 4)
        .map_or(0, |(i, _)| i);
    let end = text[start..]
        .char_indices()
        .nth(PREVIEW_CHARS)
        .map_or(text.len(), |(i, _)| start + i);
    let mut parts = Vec::new();
    let mut at = start;
    for (a, b) in ranges {
        let (a, b) = (a.max(at), b.min(end));
        if a >= b {
            continue;
        }
        if a > at {
            parts.push(SnippetPart {
                text: text[at..a].to_owned(),
                highlighted: false,
            });
        }
        parts.push(SnippetPart {
            text: text[a..b].to_owned(),
            highlighted: true,
        });
        at = b;
    }
    if at < end {
        parts.push(SnippetPart {
            text: text[at..end].to_owned(),
            highlighted: false,
        });
    }
    parts
}

impl Store {
    /// Searches message text across all conversations, newest stored first, `limit` hits per
    /// page (default [`DEFAULT_SEARCH_PAGE_SIZE`], capped at [`MAX_PAGE_SIZE`]). Every
    /// whitespace-separated term must occur in the text, anywhere (substring match).
    pub fn search(
        &self,
        query: &str,
        after: Option<SearchCursor>,
        limit: Option<u32>,
    ) -> Result<SearchResults, SearchError> {
        const OP: &str = "search messages";
        let q = parse(query)?;
        let limit = limit
            .unwrap_or(DEFAULT_SEARCH_PAGE_SIZE)
            .clamp(1, MAX_PAGE_SIZE);
        let mut args: Vec<Value> = Vec::new();
        let mut sql = String::new();
        let from_fts = q.fts.is_some();
        if let Some(fts) = &q.fts {
            sql.push_str(&format!(
                "SELECT message_search.rowid, c.conversation_id, m.id, m.received_at_ms, \
                 snippet(message_search, 0, char({}), char({}), '…', {SNIPPET_TOKENS}) \
                 FROM message_search JOIN messages m ON m.rowid = message_search.rowid \
                 JOIN conversations c ON c.rowid = m.conversation \
                 WHERE message_search MATCH ?",
                MARK_START as u32, MARK_END as u32
            ));
            args.push(Value::Text(fts.clone()));
            if let Some(cur) = after {
                sql.push_str(" AND message_search.rowid < ?");
                args.push(Value::Integer(cur.0));
            }
        } else {
            sql.push_str(
                "SELECT m.rowid, c.conversation_id, m.id, m.received_at_ms, m.body_text \
                 FROM messages m JOIN conversations c ON c.rowid = m.conversation \
                 WHERE m.body_text IS NOT NULL",
            );
            if let Some(cur) = after {
                sql.push_str(" AND m.rowid < ?");
                args.push(Value::Integer(cur.0));
            }
        }
        for like in &q.likes {
            sql.push_str(" AND m.body_text LIKE ? ESCAPE '\\'");
            args.push(Value::Text(like.clone()));
        }
        sql.push_str(if from_fts {
            " ORDER BY message_search.rowid DESC LIMIT ?"
        } else {
            " ORDER BY m.rowid DESC LIMIT ?"
        });
        args.push(Value::Integer(i64::from(limit)));

        let rows: Vec<(i64, String, Vec<u8>, i64, String)> = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect()
            })
            .read_ctx(OP)?;
        let full = rows.len() == limit as usize;
        let mut hits = Vec::with_capacity(rows.len());
        let mut next = None;
        for (rowid, conv, id, received_at_ms, text) in rows {
            let snippet = if from_fts {
                parse_snippet(&text)
            } else {
                highlight_short(&text, &q.short_terms)
            };
            hits.push(SearchHit {
                conversation: ConversationId(conv),
                message_id: message_id(OP, &id)?,
                received_at_ms,
                snippet,
            });
            next = Some(SearchCursor(rowid));
        }
        Ok(SearchResults {
            hits,
            next: if full { next } else { None },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert!(matches!(parse("   "), Err(SearchError::EmptyQuery)));
        let q = parse("hello \"world\" ok").unwrap();
        assert_eq!(q.fts.as_deref(), Some("\"hello\" \"\"\"world\"\"\""));
        assert_eq!(q.likes, vec!["%ok%".to_owned()]);
        let q = parse("5%").unwrap();
        assert_eq!(q.likes, vec!["%5\\%%".to_owned()]);
        assert!(q.fts.is_none());
        assert!(matches!(
            parse(&"a ".repeat(MAX_SEARCH_TERMS + 1)),
            Err(SearchError::QueryTooLong { .. })
        ));
    }

    #[test]
    fn snippet_parts() {
        let parts = parse_snippet("…say \u{2}hel\u{3}lo to");
        assert_eq!(parts.len(), 3);
        assert!(parts[1].highlighted && parts[1].text == "hel");
        let parts = highlight_short("we say OK and ok", &["ok".to_owned()]);
        let marked: Vec<&str> = parts
            .iter()
            .filter(|p| p.highlighted)
            .map(|p| p.text.as_str())
            .collect();
        assert_eq!(marked, vec!["OK", "ok"]);
    }
}
