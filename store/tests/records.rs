//! Own keys, contacts, groups and media metadata.

mod common;

use common::*;
use tern_store::{Contact, ContactSaved, Member, OwnDevice, OwnIdentity, WriteError};

#[test]
fn own_keys_and_device_list() {
    let env = env();
    let mut store = open(&env.path);
    assert!(store.own_identity().unwrap().is_none());
    let identity = OwnIdentity {
        user_id: "me".into(),
        sealed_identity_key: vec![1, 2, 3],
        created_at_ms: 5,
    };
    let device = OwnDevice {
        device_id: "12D3KooWme".into(),
        sealed_device_key: vec![4],
        account_pickle: vec![5, 6],
        certificate: vec![7],
        created_at_ms: 6,
    };
    store
        .transaction(|tx| {
            tx.save_own_identity(&identity)?;
            tx.save_own_device(&device)?;
            tx.save_own_device_list(1, b"list v1")
        })
        .unwrap();
    assert!(
        !format!("{identity:?}").contains("[1, 2, 3]"),
        "Debug hides sealed keys"
    );
    let err = store
        .transaction(|tx| tx.save_own_device_list(1, b"replayed"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::StaleDeviceList {
                offered: 1,
                stored: 1,
                ..
            }
        ),
        "{err:?}"
    );
    store
        .transaction(|tx| tx.save_own_device_list(2, b"list v2"))
        .unwrap();
    drop(store);
    let store = open(&env.path);
    assert_eq!(store.own_identity().unwrap(), Some(identity));
    assert_eq!(store.own_device().unwrap(), Some(device));
    assert_eq!(
        store.own_device_list().unwrap(),
        Some((2, b"list v2".to_vec()))
    );
}

#[test]
fn contacts_warn_on_identity_change_and_refuse_stale_lists() {
    let env = env();
    let mut store = open(&env.path);
    let alice = Contact {
        user_id: "alice".into(),
        display_name: "Alice".into(),
        verified: true,
        identity_key: vec![0xaa; 32],
        device_list: Some(b"v3".to_vec()),
        device_list_version: 3,
        relays: vec![
            "/ip4/127.0.0.1/tcp/4001".into(),
            "/dns/relay.example/tcp/4001".into(),
        ],
    };
    assert_eq!(
        store.transaction(|tx| tx.save_contact(&alice, 1)).unwrap(),
        ContactSaved::Added
    );
    let renamed = Contact {
        display_name: "Alice B.".into(),
        relays: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        ..alice.clone()
    };
    assert_eq!(
        store
            .transaction(|tx| tx.save_contact(&renamed, 2))
            .unwrap(),
        ContactSaved::Updated
    );
    let stored = store.contact("alice").unwrap().unwrap();
    assert_eq!(stored, renamed);

    let stale = Contact {
        device_list: Some(b"v2".to_vec()),
        device_list_version: 2,
        ..renamed.clone()
    };
    let err = store
        .transaction(|tx| tx.save_contact(&stale, 3))
        .unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::StaleDeviceList {
                offered: 2,
                stored: 3,
                ..
            }
        ),
        "{err:?}"
    );

    let changed = Contact {
        identity_key: vec![0xbb; 32],
        ..renamed
    };
    assert_eq!(
        store
            .transaction(|tx| tx.save_contact(&changed, 4))
            .unwrap(),
        ContactSaved::IdentityChanged
    );
    let stored = store.contact("alice").unwrap().unwrap();
    assert!(
        !stored.verified,
        "a new identity key is never silently verified"
    );
    assert_eq!(stored.identity_key, vec![0xbb; 32]);
    assert_eq!(store.contact_ids().unwrap(), ["alice"]);
    assert!(store.contact("bob").unwrap().is_none());
}

#[test]
fn groups_and_members() {
    let env = env();
    let mut store = open(&env.path);
    store
        .transaction(|tx| {
            tx.save_group("g1", "Climbing", 1)?;
            for (user, role) in [("carol", 0), ("alice", 1), ("bob", 0)] {
                tx.add_member(
                    "g1",
                    &Member {
                        user_id: user.into(),
                        role,
                        added_at_ms: 2,
                    },
                )?;
            }
            tx.add_member(
                "g1",
                &Member {
                    user_id: "bob".into(),
                    role: 1,
                    added_at_ms: 9,
                },
            )
        })
        .unwrap();
    let members = store.members("g1").unwrap();
    let names: Vec<(&str, u8)> = members
        .iter()
        .map(|m| (m.user_id.as_str(), m.role))
        .collect();
    assert_eq!(names, [("alice", 1), ("bob", 1), ("carol", 0)]);
    assert!(
        store
            .transaction(|tx| tx.remove_member("g1", "carol"))
            .unwrap()
    );
    assert!(
        !store
            .transaction(|tx| tx.remove_member("g1", "carol"))
            .unwrap()
    );
    assert_eq!(store.members("g1").unwrap().len(), 2);
}
