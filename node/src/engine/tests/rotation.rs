//! Sender keys: a group's outbound key is kept from one message to the next and replaced
//! once it is older than the rotation policy allows, by the engine's clock.

use std::time::Duration;

use tern_crypto::consts::DEFAULT_ROTATION_SECS;
use tern_store::Body;
use tokio::sync::oneshot;

use super::Harness;
use crate::engine::GroupCommand;

/// Creates a group with no other member and returns its id.
async fn group(h: &mut Harness) -> String {
    let (reply, rx) = oneshot::channel();
    h.engine.on_group_command(GroupCommand::Create {
        title: "T".into(),
        members: Vec::new(),
        reply,
    });
    rx.await.unwrap().unwrap().id.to_string()
}

/// Sends a text to the group and returns the id of the sender key it went under.
fn send(h: &mut Harness, group: &str) -> String {
    h.engine
        .group_send(group, None, Body::Text("hi".into()), None)
        .unwrap();
    h.engine.store.group_sender_key(group).unwrap().unwrap().0
}

#[tokio::test]
async fn a_sender_key_is_kept_until_it_is_too_old_then_replaced() {
    let mut h = Harness::new();
    let g = group(&mut h).await;
    let first = send(&mut h, &g);
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(send(&mut h, &g), first, "kept while young");
    h.clock
        .advance(Duration::from_secs(DEFAULT_ROTATION_SECS) - Duration::from_secs(61));
    assert_eq!(send(&mut h, &g), first, "kept up to its age limit");
    h.clock.advance(Duration::from_secs(2));
    let second = send(&mut h, &g);
    assert_ne!(second, first, "replaced once too old");
    assert_eq!(send(&mut h, &g), second, "and the new one is kept");
}
