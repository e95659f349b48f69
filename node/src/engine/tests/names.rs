//! Names and ids in commands: a contact is named by its user id or its name, and neither may
//! be taken for another contact.

use super::Harness;
use crate::error::NodeError;

/// A contact whose link offers another contact's user id as its name (anyone may call
/// themselves anything): that id is ambiguous rather than taken for the other contact, so a
/// text meant for the one listed under it never goes to the other; each is still found by
/// what names it alone. Naming a contact with a user id is refused outright.
#[tokio::test]
async fn a_user_id_that_is_also_a_contacts_name_names_no_one() {
    let mut alice = Harness::named("alice");
    let carol = Harness::named("carol");
    let carol_id = carol.engine.me.user.to_string();
    let mallory = Harness::named(&carol_id);
    let mallory_id = mallory.engine.me.user.to_string();
    alice.add(&carol).await;
    alice.add(&mallory).await;

    assert!(
        matches!(
            alice.engine.resolve(&carol_id),
            Err(NodeError::AmbiguousContact(_))
        ),
        "{:?}",
        alice.engine.resolve(&carol_id)
    );
    assert_eq!(alice.engine.resolve("Carol").unwrap(), carol.engine.me.user);
    assert_eq!(
        alice.engine.resolve(&mallory_id).unwrap(),
        mallory.engine.me.user
    );

    // Renamed (to something that is no id), Mallory no longer clashes with Carol's id.
    alice.engine.rename_contact(&mallory_id, "Mal").unwrap();
    assert_eq!(
        alice.engine.resolve(&carol_id).unwrap(),
        carol.engine.me.user
    );
    for id in [&carol_id, &mallory_id, &carol_id.to_uppercase()] {
        match alice.engine.rename_contact("Mal", id) {
            Err(NodeError::BadRequest(m)) => assert!(m.contains("user id"), "{m}"),
            other => panic!("renamed to a user id: {other:?}"),
        }
    }
    // A name of hex digits that is not a user id's length is a name like any other.
    alice.engine.rename_contact("Mal", "deadbeef").unwrap();
    assert_eq!(
        alice.engine.resolve("DEADBEEF").unwrap(),
        mallory.engine.me.user
    );
}
