//! Hold-back read through the engine: a message whose predecessor is missing stays out of
//! events and of the conversation list's preview until the engine's clock says its hold
//! ran out, then shows with the gap marked.

use std::time::Duration;

use tern_store::ConversationKind;

use super::{Harness, received};
use crate::consts::HOLD_BACK;

const CAROL: &str = "ca401ca401ca401ca401ca401ca401ca";

/// Stores a received message as the receive path does and hands it to the hold.
fn arrive(h: &mut Harness, seq: u64) {
    let m = received(h, CAROL, seq);
    let now = h.clock.now_ms();
    h.engine
        .store
        .transaction(|tx| -> Result<_, tern_store::WriteError> {
            tx.ensure_conversation(&m.conversation, ConversationKind::Direct, None, now)?;
            tx.record_incoming(&m, &[])
        })
        .unwrap();
    let shown = h
        .engine
        .hold
        .arrived(&h.engine.store, m, h.engine.clock.now())
        .unwrap();
    for message in shown {
        h.engine.emit(crate::types::Event::Message { message });
    }
}

fn preview(h: &Harness) -> Option<String> {
    let list = h.engine.conversations().unwrap();
    list.into_iter()
        .find(|c| c.id == CAROL)
        .and_then(|c| c.last_text)
}

#[tokio::test]
async fn a_held_message_shows_with_its_gap_when_the_engines_clock_ends_the_hold() {
    let mut h = Harness::new();
    arrive(&mut h, 1);
    assert_eq!(h.shown(), [(1, false)]);
    h.clock.advance(Duration::from_millis(100));
    arrive(&mut h, 3);
    h.engine.release_held();
    assert_eq!(h.shown(), [], "3 waits for 2");
    assert_eq!(
        preview(&h).as_deref(),
        Some("m1"),
        "the preview skips what is held"
    );
    h.clock.advance(HOLD_BACK - Duration::from_millis(1));
    h.engine.release_held();
    assert_eq!(h.shown(), [], "not before the hold ends");
    h.clock.advance(Duration::from_millis(1));
    h.engine.release_held();
    assert_eq!(h.shown(), [(3, true)]);
    assert_eq!(preview(&h).as_deref(), Some("m3"));
}

#[tokio::test]
async fn a_predecessor_within_the_hold_releases_both_in_order_without_a_gap() {
    let mut h = Harness::new();
    arrive(&mut h, 1);
    arrive(&mut h, 3);
    arrive(&mut h, 4);
    h.clock.advance(HOLD_BACK / 2);
    h.engine.release_held();
    assert_eq!(h.shown(), [(1, false)]);
    arrive(&mut h, 2);
    assert_eq!(h.shown(), [(2, false), (3, false), (4, false)]);
    h.clock.advance(HOLD_BACK * 2);
    h.engine.release_held();
    assert_eq!(h.shown(), [], "nothing is left held");
}
