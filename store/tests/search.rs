//! Full-text search: words, prefixes, substrings, non-ASCII text, paging, and the index
//! following edits and deletes.

mod common;

use common::*;
use tern_store::{ConversationKind, MessageId, SearchError, SearchHit, Store, WriteError};

fn setup() -> (Env, Store) {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    ensure(&mut store, "team", ConversationKind::Group);
    let texts: &[(&str, &str)] = &[
        ("alice", "Let's meet at the Café Müller tomorrow"),
        ("team", "The deployment finished without errors"),
        ("alice", "unbelievable weather today"),
        ("team", "Größenordnung der Änderung ist klein"),
        ("alice", "東京で会いましょう、明日の午後"),
        ("team", "ПРИВЕТ всем, как дела?"),
        ("alice", "pizza 🍕 tonight?"),
        ("team", "ok"),
        ("alice", "meeting notes: deploy at noon"),
    ];
    store
        .transaction(|tx| {
            for (n, (c, t)) in texts.iter().enumerate() {
                tx.record_incoming(&incoming(n as u64 + 1, c, n as u64, t), &[])?;
            }
            Ok::<_, WriteError>(())
        })
        .unwrap();
    (env, store)
}

fn found(store: &Store, q: &str) -> Vec<MessageId> {
    store
        .search(q, None, Some(100))
        .unwrap()
        .hits
        .into_iter()
        .map(|h| h.message_id)
        .collect()
}

fn marked(hit: &SearchHit) -> String {
    hit.snippet
        .iter()
        .filter(|p| p.highlighted)
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("|")
}

#[test]
fn word_prefix_and_substring() {
    let (_env, store) = setup();
    assert_eq!(found(&store, "weather"), [id(3)], "word");
    assert_eq!(found(&store, "WEATHER"), [id(3)], "case-insensitive");
    assert_eq!(
        found(&store, "deploy"),
        [id(9), id(2)],
        "prefix, newest first"
    );
    assert_eq!(found(&store, "believ"), [id(3)], "inside a word");
    assert_eq!(
        found(&store, "deploy noon"),
        [id(9)],
        "all terms must match"
    );
    assert!(found(&store, "deploy banana").is_empty());
    assert!(found(&store, "zebra").is_empty());
}

#[test]
fn non_ascii_text() {
    let (_env, store) = setup();
    assert_eq!(found(&store, "Müller"), [id(1)]);
    assert_eq!(found(&store, "cafe"), [id(1)], "diacritics ignored");
    assert_eq!(
        found(&store, "größe"),
        [id(4)],
        "lower-case query, capitalised text"
    );
    assert_eq!(found(&store, "änderung"), [id(4)]);
    assert_eq!(found(&store, "привет"), [id(6)], "Cyrillic case folding");
    assert_eq!(
        found(&store, "会いましょう"),
        [id(5)],
        "Japanese, no spaces"
    );
    assert_eq!(
        found(&store, "明日"),
        [id(5)],
        "two-character CJK word (short-term path)"
    );
    assert_eq!(found(&store, "🍕"), [id(7)], "emoji");
}

#[test]
fn short_terms_fall_back_to_a_scan() {
    let (_env, store) = setup();
    assert_eq!(found(&store, "ok"), [id(8)]);
    assert_eq!(found(&store, "OK"), [id(8)]);
    assert_eq!(
        found(&store, "at noon"),
        [id(9)],
        "mixed short and indexed terms"
    );
    let hits = store.search("ok", None, None).unwrap().hits;
    assert_eq!(marked(&hits[0]), "ok");
}

#[test]
fn hits_carry_conversation_and_highlighted_snippet() {
    let (_env, store) = setup();
    let hits = store.search("deploy", None, None).unwrap().hits;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].conversation, conv("alice"));
    assert_eq!(hits[1].conversation, conv("team"));
    assert_eq!(marked(&hits[0]), "deploy");
    assert_eq!(marked(&hits[1]), "deploy");
    let whole: String = hits[1].snippet.iter().map(|p| p.text.as_str()).collect();
    assert!(whole.contains("The deployment finished"), "{whole}");
    let hits = store.search("Müller", None, None).unwrap().hits;
    assert_eq!(marked(&hits[0]), "Müller");
}

#[test]
fn index_follows_edits_and_deletes() {
    let (_env, mut store) = setup();
    store
        .transaction(|tx| tx.edit_text(id(3), "sunny skies", 5))
        .unwrap();
    assert!(found(&store, "weather").is_empty());
    assert_eq!(found(&store, "sunny"), [id(3)]);
    store.transaction(|tx| tx.delete_message(id(9))).unwrap();
    assert_eq!(found(&store, "deploy"), [id(2)]);
    assert!(found(&store, "noon").is_empty());
}

#[test]
fn paging_newest_first() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    store
        .transaction(|tx| {
            for n in 0..95u64 {
                let text = if n % 2 == 0 {
                    format!("needle {n}")
                } else {
                    format!("hay {n}")
                };
                tx.record_incoming(&incoming(n, "alice", n, &text), &[])?;
            }
            Ok::<_, WriteError>(())
        })
        .unwrap();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.search("needle", cursor, Some(10)).unwrap();
        assert!(page.hits.len() <= 10);
        all.extend(page.hits.iter().map(|h| h.message_id));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<MessageId> = (0..95u64).rev().filter(|n| n % 2 == 0).map(id).collect();
    assert_eq!(all, expected);
}

#[test]
fn bad_queries_are_typed_errors() {
    let (_env, store) = setup();
    assert!(matches!(
        store.search("  ", None, None),
        Err(SearchError::EmptyQuery)
    ));
    let long = "x".repeat(tern_store::consts::MAX_SEARCH_QUERY_BYTES + 1);
    assert!(matches!(
        store.search(&long, None, None),
        Err(SearchError::QueryTooLong { .. })
    ));
    // FTS5 syntax in user input is matched literally, never an error.
    for q in [
        "\"unbalanced",
        "a OR b",
        "NEAR(x y)",
        "col:thing",
        "*",
        "-(",
        "100%",
    ] {
        store.search(q, None, None).unwrap();
    }
    assert_eq!(found(&store, "notes:"), [id(9)]);
}
