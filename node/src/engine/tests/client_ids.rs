//! Texts sent under a client's key (`client_id`): sent again under it, a text is answered
//! as the message already sent and not sent twice, in a burst or on its own, to a contact or
//! to a group; a key reused for another text or conversation is refused; keys are
//! forgotten after 30 days.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{Harness, alice_and_bob};
use crate::{
    engine::{Command, GroupCommand},
    error::NodeError,
    types::{Event, MessageInfo},
};

/// How many `message` events `h` sent since the last look.
fn messages_shown(h: &mut Harness) -> usize {
    h.events()
        .into_iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .count()
}

fn bad_request(r: Result<MessageInfo, NodeError>) -> String {
    match r {
        Err(NodeError::BadRequest(why)) => why,
        other => panic!("not refused as a bad request: {other:?}"),
    }
}

#[tokio::test]
async fn a_text_sent_again_under_its_key_is_answered_and_not_sent_twice() {
    let (mut alice, bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    alice.events();
    let first = alice
        .engine
        .send_text_once(&bob_user, "hello".into(), Some("key-1"))
        .unwrap();
    let again = alice
        .engine
        .send_text_once(&bob_user, "hello".into(), Some("key-1"))
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.seq, first.seq);
    assert_eq!(alice.texts(&bob_user), ["hello"]);
    assert_eq!(messages_shown(&mut alice), 1, "shown once");
    // Carried once; the answer to a repeat tells the message as it stands now.
    alice.carry(1).await;
    let later = alice
        .engine
        .send_text_once(&bob_user, "hello".into(), Some("key-1"))
        .unwrap();
    assert_eq!(later.id, first.id);
    assert_eq!(alice.texts(&bob_user), ["hello"]);
    // Sent again under a name that no longer resolves (the contact renamed since): the key
    // still answers the message sent.
    let renamed = alice
        .engine
        .send_text_once("bob-before-renaming", "hello".into(), Some("key-1"))
        .unwrap();
    assert_eq!(renamed.id, first.id);
    // The same text under another key, or under none, is another message.
    alice
        .engine
        .send_text_once(&bob_user, "hello".into(), Some("key-2"))
        .unwrap();
    alice.engine.send_text(&bob_user, "hello".into()).unwrap();
    assert_eq!(alice.texts(&bob_user), ["hello"; 3]);
}

#[tokio::test]
async fn a_key_reused_for_another_text_or_contact_or_badly_formed_is_refused() {
    let (mut alice, bob) = alice_and_bob().await;
    let mut carol = Harness::named("carol");
    alice.add(&carol).await;
    carol.add(&alice).await;
    alice.start_session(&mut carol);
    let (bob_user, carol_user) = (
        bob.engine.me.user_hex.clone(),
        carol.engine.me.user_hex.clone(),
    );
    alice
        .engine
        .send_text_once(&bob_user, "one".into(), Some("k"))
        .unwrap();
    let why = bad_request(
        alice
            .engine
            .send_text_once(&bob_user, "two".into(), Some("k")),
    );
    assert!(why.contains("used for another message"), "{why}");
    bad_request(
        alice
            .engine
            .send_text_once(&carol_user, "one".into(), Some("k")),
    );
    for key in ["", "has space", "tab\t", "é", &"x".repeat(65)] {
        let why = bad_request(
            alice
                .engine
                .send_text_once(&bob_user, "x".into(), Some(key)),
        );
        assert!(why.contains("client_id"), "{key:?}: {why}");
    }
    assert_eq!(alice.texts(&bob_user), ["one"]);
    assert!(alice.texts(&carol_user).is_empty());
    // A key of 64 visible characters is fine.
    let long = "k".repeat(64);
    alice
        .engine
        .send_text_once(&bob_user, "two".into(), Some(&long))
        .unwrap();
}

#[tokio::test]
async fn a_burst_with_repeats_under_one_key_stores_each_text_once_in_order() {
    let (mut alice, bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    // t0..t9, each sent twice in a row under its key (a client retrying at once), and t0
    // once more at the end: one commit, ten messages.
    let mut cmds = Vec::new();
    let mut answers = Vec::new();
    let mut push = |i: usize| {
        let (reply, answer) = oneshot::channel();
        cmds.push(Command::Send {
            contact: bob_user.clone(),
            text: format!("t{i}"),
            client: Some(format!("c{i}")),
            reply,
        });
        answers.push((i, answer));
    };
    for i in 0..10 {
        push(i);
        push(i);
    }
    push(0);
    let commits = alice.engine.store.commits();
    alice.engine.on_commands(cmds);
    assert_eq!(alice.engine.store.commits(), commits + 1, "one commit");
    let mut ids = std::collections::HashMap::new();
    for (i, answer) in answers {
        let info = answer.await.unwrap().unwrap();
        assert_eq!(*ids.entry(i).or_insert(info.id.clone()), info.id, "t{i}");
    }
    let want: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    assert_eq!(alice.texts(&bob_user), want);
    assert_eq!(alice.carry(10).await.len(), 10);
}

#[tokio::test]
async fn a_group_text_sent_again_under_its_key_is_not_sent_twice() {
    let mut h = Harness::new();
    let (reply, rx) = oneshot::channel();
    h.engine.on_group_command(GroupCommand::Create {
        title: "T".into(),
        members: Vec::new(),
        reply,
    });
    let group = rx.await.unwrap().unwrap().id.to_string();
    let send = |h: &mut Harness, text: &str, key: &str| {
        let (reply, rx) = oneshot::channel();
        h.engine.on_group_command(GroupCommand::Send {
            group: group.clone(),
            text: text.into(),
            client: Some(key.into()),
            reply,
        });
        rx
    };
    let first = send(&mut h, "hi", "g1").await.unwrap().unwrap();
    let again = send(&mut h, "hi", "g1").await.unwrap().unwrap();
    assert_eq!(again.id, first.id);
    bad_request(send(&mut h, "other", "g1").await.unwrap());
    let texts_now = h.texts(&group);
    assert_eq!(texts_now.iter().filter(|t| *t == "hi").count(), 1);
    assert!(!texts_now.contains(&"other".to_owned()));
}

#[tokio::test]
async fn keys_are_forgotten_after_thirty_days() {
    let (mut alice, bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    alice
        .engine
        .send_text_once(&bob_user, "hi".into(), Some("old"))
        .unwrap();
    alice.clock.advance(Duration::from_secs(29 * 24 * 3600));
    alice.engine.forget_old_client_ids();
    alice
        .engine
        .send_text_once(&bob_user, "hi".into(), Some("old"))
        .unwrap();
    assert_eq!(alice.texts(&bob_user), ["hi"], "remembered for 29 days");
    alice.clock.advance(Duration::from_secs(2 * 24 * 3600));
    alice.engine.forget_old_client_ids();
    alice
        .engine
        .send_text_once(&bob_user, "hi".into(), Some("old"))
        .unwrap();
    assert_eq!(alice.texts(&bob_user), ["hi", "hi"], "forgotten after 30");
}
