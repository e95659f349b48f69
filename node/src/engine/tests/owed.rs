//! Group messages owed to members who could not be reached when they were sent: once a
//! member can be reached they go, a bounded number per call and the rest at the next calls
//! with no further reason to look, and never held up behind a member who still cannot be
//! reached.

use tern_store::Body;
use tokio::sync::oneshot;

use super::Harness;
use crate::consts::OUTBOX_BATCH;
use crate::engine::GroupCommand;

/// Sends `n` texts to the group.
fn send(h: &mut Harness, group: &str, n: usize) {
    for i in 0..n {
        h.engine
            .group_send(group, None, Body::Text(format!("text {i}")), None)
            .unwrap();
    }
}

/// How many group messages (and membership changes) `h` owes `member`.
fn owed_to(h: &Harness, member: &Harness) -> usize {
    let user = &member.engine.me.user_hex;
    h.engine
        .store
        .owed_group_messages(None, u32::MAX)
        .unwrap()
        .iter()
        .filter(|o| o.user_id == *user)
        .count()
}

#[tokio::test]
async fn what_one_call_cannot_send_goes_at_the_next_with_no_other_reason_to_look() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    alice.add(&bob).await;
    let g = alice.create_group(&[&bob]).await;
    // No session with Bob yet: everything is owed to him.
    send(&mut alice, &g, OUTBOX_BATCH as usize + 50);
    let owed = owed_to(&alice, &bob);
    assert!(owed > OUTBOX_BATCH as usize, "{owed} owed");

    // His session is set up: one call sends one batch...
    alice.start_session(&mut bob);
    alice.engine.deliver_owed();
    assert_eq!(owed_to(&alice, &bob), owed - OUTBOX_BATCH as usize);
    // ...and the next call (the next outbox tick) the rest, though nothing new happened.
    assert!(!alice.engine.groups.owed_due);
    alice.engine.deliver_owed();
    assert_eq!(owed_to(&alice, &bob), 0);
    // Then the pass is over until there is a reason to look again.
    alice.engine.deliver_owed();
    assert!(alice.engine.groups.owed_sweep.is_none());
}

#[tokio::test]
async fn a_member_who_cannot_be_reached_holds_up_nobody_owed_after_them() {
    let mut alice = Harness::named("alice");
    let mut bob = Harness::named("bob");
    let carol = Harness::named("carol");
    alice.add(&bob).await;
    alice.add(&carol).await;
    let g = alice.create_group(&[&carol]).await;
    // More is owed to Carol (never reachable here) than one page of owed rows holds, all
    // of it older than anything owed to Bob.
    send(&mut alice, &g, OUTBOX_BATCH as usize + 10);
    assert!(owed_to(&alice, &carol) > OUTBOX_BATCH as usize);
    let (reply, answer) = oneshot::channel();
    alice.engine.on_group_command(GroupCommand::Add {
        group: g.clone(),
        members: vec![bob.engine.me.user_hex.clone()],
        admin: false,
        reply,
    });
    alice.answer(answer).await.unwrap();
    send(&mut alice, &g, 1);
    assert!(owed_to(&alice, &bob) > 0);
    let carols = owed_to(&alice, &carol);

    alice.start_session(&mut bob);
    alice.engine.deliver_owed();
    assert_eq!(owed_to(&alice, &bob), 0, "Bob's rows are read past Carol's");
    assert_eq!(owed_to(&alice, &carol), carols, "Carol's still wait");
}
