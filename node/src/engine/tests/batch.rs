//! Texts queued together (a burst of `send` commands) are stored in one store batch: one
//! commit for all of them, answered, shown and carried after it, in their order; a text that
//! fails inside the batch fails alone.

use tokio::sync::oneshot;

use super::{Harness, alice_and_bob};
use crate::{engine::Command, error::NodeError, types::MessageInfo};

type Answer = oneshot::Receiver<Result<MessageInfo, NodeError>>;

/// `send` commands for `texts` to `contact`, and where each is answered.
fn sends(contact: &str, texts: &[String]) -> (Vec<Command>, Vec<Answer>) {
    texts
        .iter()
        .map(|text| {
            let (reply, answer) = oneshot::channel();
            let cmd = Command::Send {
                contact: contact.to_owned(),
                text: text.clone(),
                client: None,
                reply,
            };
            (cmd, answer)
        })
        .unzip()
}

/// The seqs of the texts `h` was shown since the last look.
fn shown_seqs(h: &mut Harness) -> Vec<u64> {
    h.shown().into_iter().map(|(seq, _)| seq).collect()
}

#[tokio::test]
async fn texts_queued_together_commit_once_and_go_in_order() {
    let (mut alice, mut bob) = alice_and_bob().await;
    let bob_user = bob.engine.me.user_hex.clone();
    alice.events();
    // A burst with one text to nobody in the middle of it.
    let mut texts: Vec<String> = (1..=20).map(|i| format!("t{i}")).collect();
    texts.insert(10, "to nobody".into());
    let (mut cmds, answers) = sends(&bob_user, &texts);
    if let Command::Send { contact, .. } = &mut cmds[10] {
        *contact = "nobody".into();
    }
    let commits = alice.engine.store.commits();
    alice.engine.on_commands(cmds);
    assert_eq!(
        alice.engine.store.commits(),
        commits + 1,
        "the burst is one commit"
    );
    let mut seqs = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer.await.expect("answered") {
            Ok(info) => seqs.push(info.seq),
            Err(e) => assert_eq!(i, 10, "only the text to nobody fails: {e}"),
        }
    }
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    assert_eq!(
        shown_seqs(&mut alice),
        seqs,
        "shown once committed, in order"
    );

    // Bob reads every one, in order, with no gap.
    let carried = alice.carry(20).await;
    for ciphertext in &carried {
        bob.engine.on_direct(alice.peer(), 0, ciphertext.clone());
    }
    assert_eq!(
        bob.shown(),
        seqs.iter().map(|s| (*s, false)).collect::<Vec<_>>()
    );

    // Texts that come one at a time are a commit each, as before.
    let commits = alice.engine.store.commits();
    for text in ["u1", "u2", "u3"] {
        let (cmds, _answers) = sends(&bob_user, &[text.to_owned()]);
        alice.engine.on_commands(cmds);
    }
    assert!(alice.engine.store.commits() >= commits + 3);
}
