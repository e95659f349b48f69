//! Encryption at rest, keys, and files that are not what they should be.

mod common;

use common::*;
use tern_store::{
    Body, ConversationKind, CryptoUpdate, FaultKind, KdfParams, OpenError, Page, ReadError,
    SCHEMA_VERSION, StorageKey, Store, Unlock,
};

const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";

fn cheap_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 1024,
        iterations: 1,
        lanes: 1,
    }
}

#[test]
fn file_holds_no_plaintext_or_key() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    let pickle = format!("pickle-{MARKER}");
    let mut m = incoming(1, "alice", 1, &format!("hello {MARKER} there"));
    m.body = Body::Structured {
        data: format!("data-{MARKER}").into_bytes(),
        text: Some(format!("caption {MARKER}")),
    };
    store
        .record_incoming(
            &m,
            &[CryptoUpdate::Session {
                peer_device: "a1",
                session_id: "s1",
                pickle: pickle.as_bytes(),
            }],
        )
        .unwrap();
    for n in 2..200 {
        store
            .record_incoming(
                &incoming(n, "alice", n, &format!("message {n} {MARKER}")),
                &[],
            )
            .unwrap();
    }
    let wal = env.path.with_extension("db-wal");
    // While open (WAL holds recent pages) and after close (checkpointed into the main file).
    for path in [&env.path, &wal] {
        assert!(
            !file_contains(path, MARKER.as_bytes()),
            "{} leaks the marker",
            path.display()
        );
        assert!(
            !file_contains(path, &KEY_BYTES),
            "{} leaks the key",
            path.display()
        );
    }
    assert!(std::fs::metadata(&env.path).unwrap().len() > 0);
    drop(store);
    assert!(!file_contains(&env.path, MARKER.as_bytes()));
    assert!(!file_contains(&env.path, b"SQLite format 3"));
    // The marker is really in there, for whoever holds the key.
    let store = open(&env.path);
    assert_eq!(
        store.search(MARKER, None, Some(500)).unwrap().hits.len(),
        199
    );
}

#[test]
fn wrong_key_is_a_clear_error_and_changes_nothing() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    store
        .record_incoming(&incoming(1, "alice", 1, "kept"), &[])
        .unwrap();
    drop(store);
    let before = std::fs::read(&env.path).unwrap();
    let mut other = [0x17u8; 32];
    let wrong = StorageKey::from_bytes(&mut other);
    let err = Store::open(&env.path, Unlock::Key(&wrong)).unwrap_err();
    assert!(matches!(err, OpenError::WrongKey { .. }), "{err:?}");
    assert!(err.to_string().contains("wrong storage key"), "{err}");
    assert_eq!(
        std::fs::read(&env.path).unwrap(),
        before,
        "a failed open writes nothing"
    );
    let store = open(&env.path);
    assert_eq!(
        store
            .history(&conv("alice"), Page::Latest, None)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn passphrase_unlocks_and_wrong_passphrase_does_not() {
    let env = env();
    let unlock = |p: &'static [u8]| Unlock::Passphrase {
        passphrase: p,
        params: cheap_kdf(),
    };
    let mut store = Store::open(&env.path, unlock(b"correct horse")).unwrap();
    ensure(&mut store, "alice", ConversationKind::Direct);
    drop(store);
    let store = Store::open(&env.path, unlock(b"correct horse")).unwrap();
    assert!(store.conversation(&conv("alice")).unwrap().is_some());
    drop(store);
    let err = Store::open(&env.path, unlock(b"battery staple")).unwrap_err();
    assert!(matches!(err, OpenError::WrongKey { .. }), "{err:?}");
    // The same passphrase with other Argon2id costs is another key.
    let err = Store::open(
        &env.path,
        Unlock::Passphrase {
            passphrase: b"correct horse",
            params: KdfParams {
                iterations: 2,
                ..cheap_kdf()
            },
        },
    )
    .unwrap_err();
    assert!(matches!(err, OpenError::WrongKey { .. }), "{err:?}");
}

#[test]
fn default_argon2id_parameters_work() {
    let env = env();
    let unlock = || Unlock::Passphrase {
        passphrase: "pässwörd".as_bytes(),
        params: KdfParams::default(),
    };
    drop(Store::open(&env.path, unlock()).unwrap());
    drop(Store::open(&env.path, unlock()).unwrap());
}

#[test]
fn keyfile_unlocks_an_unattended_node() {
    let env = env();
    let keyfile = env.dir.path().join("store.key");
    let key = StorageKey::load_or_create_keyfile(&keyfile).unwrap();
    let mut store = Store::open(&env.path, Unlock::Key(&key)).unwrap();
    ensure(&mut store, "alice", ConversationKind::Direct);
    drop(store);
    let again = StorageKey::load_or_create_keyfile(&keyfile).unwrap();
    let store = Store::open(&env.path, Unlock::Key(&again)).unwrap();
    assert!(store.conversation(&conv("alice")).unwrap().is_some());
}

#[test]
fn plain_sqlite_file_is_refused() {
    let env = env();
    let conn = rusqlite::Connection::open(&env.path).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(conn);
    let err = Store::open(&env.path, Unlock::Key(&key())).unwrap_err();
    assert!(matches!(err, OpenError::NotEncrypted { .. }), "{err:?}");
}

#[test]
fn garbage_files_are_refused() {
    let env = env();
    std::fs::write(&env.path, b"not a database at all").unwrap();
    let err = Store::open(&env.path, Unlock::Key(&key())).unwrap_err();
    assert!(matches!(err, OpenError::Foreign { .. }), "{err:?}");
    assert_eq!(std::fs::read(&env.path).unwrap(), b"not a database at all");

    // Page-aligned random bytes look like an encrypted file: they fail to decrypt.
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&env.path, &noise).unwrap();
    let err = Store::open(&env.path, Unlock::Key(&key())).unwrap_err();
    assert!(matches!(err, OpenError::WrongKey { .. }), "{err:?}");
    assert_eq!(std::fs::read(&env.path).unwrap(), noise);

    std::fs::write(&env.path, b"short").unwrap();
    assert!(matches!(
        Store::open(&env.path, Unlock::Key(&key())),
        Err(OpenError::Foreign { .. })
    ));
}

#[test]
fn another_apps_encrypted_database_is_foreign() {
    let env = env();
    let conn = raw_connection(&env.path);
    conn.execute_batch("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('theirs');")
        .unwrap();
    drop(conn);
    let err = Store::open(&env.path, Unlock::Key(&key())).unwrap_err();
    assert!(matches!(err, OpenError::Foreign { .. }), "{err:?}");
    let conn = raw_connection(&env.path);
    let body: String = conn
        .query_row("SELECT body FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(body, "theirs", "their data is untouched");
}

#[test]
fn newer_schema_is_refused_without_harm() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    store
        .record_incoming(&incoming(1, "alice", 1, "kept"), &[])
        .unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    drop(store);
    let conn = raw_connection(&env.path);
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
        .unwrap();
    drop(conn);
    let err = Store::open(&env.path, Unlock::Key(&key())).unwrap_err();
    match &err {
        OpenError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 5, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade Tern"), "{err}");
    // Put the version back (as the newer Tern would have left the data) and all is there.
    let conn = raw_connection(&env.path);
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .unwrap();
    drop(conn);
    let store = open(&env.path);
    assert_eq!(
        store
            .history(&conv("alice"), Page::Latest, None)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn damaged_pages_give_a_typed_corrupt_error() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    store
        .transaction(|tx| {
            for n in 0..2_000 {
                tx.insert_message(&incoming(
                    n,
                    "alice",
                    n,
                    &format!("message number {n} with some text"),
                ))?;
            }
            Ok::<_, tern_store::WriteError>(())
        })
        .unwrap();
    drop(store);
    let mut bytes = std::fs::read(&env.path).unwrap();
    let pages = bytes.len() / 4096;
    assert!(pages > 20, "{pages} pages");
    // Scribble over the middle of every page but the first.
    for p in 1..pages {
        let at = p * 4096 + 1500;
        bytes[at..at + 64].fill(0xee);
    }
    std::fs::write(&env.path, &bytes).unwrap();
    let result = Store::open(&env.path, Unlock::Key(&key()));
    match result {
        Err(OpenError::Storage { source, .. }) | Err(OpenError::Migrate { source, .. }) => {
            assert_eq!(source.kind(), FaultKind::Corrupt)
        }
        Err(other) => panic!("unexpected open error {other:?}"),
        Ok(store) => {
            let err = store
                .history(&conv("alice"), Page::Latest, None)
                .unwrap_err();
            assert!(
                matches!(&err, ReadError::Storage { .. })
                    && err.fault_kind() == Some(FaultKind::Corrupt),
                "{err:?}"
            );
        }
    }
}
