//! Marking read: all of a conversation, or the messages the reader saw, which leaves the
//! others unread, whenever they came. (The read receipts that go for the marked ones only:
//! `node_e2e::reading_some_messages_sends_read_receipts_for_those_only`.)

use tern_store::ConversationId;

use super::{Harness, alice_and_bob};
use crate::{
    error::NodeError,
    types::{Event, MarkRead, MessageStatus},
};

/// Bob holding Alice's texts `texts`, unread.
async fn bob_with(texts: &[&str]) -> (Harness, Harness) {
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    for t in texts {
        alice.engine.send_text(&bob_user, (*t).into()).unwrap();
    }
    for ct in alice.carry(texts.len()).await {
        bob.engine.on_direct(alice.peer(), 0, ct);
    }
    bob.events();
    (alice, bob)
}

fn read_events(h: &mut Harness) -> Vec<u64> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Read { unread, .. } => Some(unread),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn reading_the_messages_seen_leaves_the_others_unread() {
    let (alice, mut bob) = bob_with(&["one", "two", "three"]).await;
    let alice_user = alice.engine.me.user_hex.clone();
    let conv = ConversationId(alice_user.clone());
    assert_eq!(bob.engine.store.unread_count(&conv).unwrap(), 3);
    let page = bob
        .engine
        .history(&alice_user, None, None, &MarkRead::Nothing)
        .unwrap();
    assert_eq!(
        bob.engine.store.unread_count(&conv).unwrap(),
        3,
        "only looked"
    );
    // Seen: the first two (named twice, and one of them in the same call twice).
    let seen = vec![page[1].id.clone(), page[0].id.clone(), page[1].id.clone()];
    bob.engine
        .history(&alice_user, Some(1), None, &MarkRead::Ids(seen))
        .unwrap();
    assert_eq!(bob.engine.store.unread_count(&conv).unwrap(), 1);
    assert_eq!(read_events(&mut bob), [1], "one left unread");
    let statuses: Vec<MessageStatus> = bob
        .engine
        .history(&alice_user, None, None, &MarkRead::Nothing)
        .unwrap()
        .into_iter()
        .map(|m| m.status)
        .collect();
    assert_eq!(
        statuses,
        [
            MessageStatus::Read,
            MessageStatus::Read,
            MessageStatus::Received
        ]
    );

    // The same again: nothing more, no event.
    bob.engine
        .history(
            &alice_user,
            Some(1),
            None,
            &MarkRead::Ids(vec![page[1].id.clone()]),
        )
        .unwrap();
    assert!(read_events(&mut bob).is_empty());
    // All of it.
    bob.engine
        .history(&alice_user, Some(1), None, &MarkRead::All)
        .unwrap();
    assert_eq!(bob.engine.store.unread_count(&conv).unwrap(), 0);
    assert_eq!(read_events(&mut bob), [0]);
}

#[tokio::test]
async fn marking_a_message_of_another_conversation_or_none_is_refused() {
    let (alice, mut bob) = bob_with(&["one"]).await;
    let alice_user = alice.engine.me.user_hex.clone();
    let mut carol = Harness::named("carol");
    bob.add(&carol).await;
    carol.add(&bob).await;
    bob.start_session(&mut carol);
    // A message of Bob's conversation with Carol.
    let to_carol = bob
        .engine
        .send_text(&carol.engine.me.user_hex, "hi".into())
        .unwrap();
    let one = bob
        .engine
        .history(&alice_user, None, None, &MarkRead::Nothing)
        .unwrap()[0]
        .id
        .clone();
    for other in [to_carol.id.clone(), "00".repeat(16), "not an id".into()] {
        // With a message of the conversation: nothing of the call is marked.
        let ids = vec![one.clone(), other.clone()];
        let out = bob
            .engine
            .history(&alice_user, Some(1), None, &MarkRead::Ids(ids));
        assert!(
            matches!(out, Err(NodeError::UnknownMessage(_))),
            "{other}: {out:?}"
        );
    }
    let conv = ConversationId(alice_user);
    assert_eq!(
        bob.engine.store.unread_count(&conv).unwrap(),
        1,
        "nothing marked"
    );
}
