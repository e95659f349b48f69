//! Looking inside homes and files: what is (and is not) readable at rest.

use super::*;

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// Every inbound sender key in a stopped node's store, as (session id, pickle).
///
/// The session ids are listed with a read-only query on the SQLCipher file, keyed from the
/// home's key file and the salt in the file's header (the store's own key format); each key
/// is then loaded through `tern_store` itself, so the pickles are what the node would use.
pub fn inbound_sender_keys(home: &Path) -> Vec<(String, tern_crypto::group::InboundSenderKey)> {
    use tern_store::{
        SenderKeyStore,
        consts::{KEY_LEN, KEYFILE_LEN, KEYFILE_MAGIC, SALT_LEN},
    };
    let home = Home::new(home);
    let keyfile = std::fs::read(home.store_key_path()).unwrap();
    assert_eq!(keyfile.len(), KEYFILE_LEN);
    assert_eq!(&keyfile[..KEYFILE_MAGIC.len()], KEYFILE_MAGIC);
    let key = &keyfile[KEYFILE_LEN - KEY_LEN..];
    let db = std::fs::read(home.db_path()).unwrap();
    let salt = &db[..SALT_LEN];
    let hex = tern_crypto::hex::encode;
    let conn = rusqlite::Connection::open_with_flags(
        home.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.pragma_update(None, "key", format!("x'{}{}'", hex(key), hex(salt)))
        .unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT session_id FROM inbound_group_sessions ORDER BY session_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);

    let (mut store, _keys) = home.open().unwrap();
    store
        .transaction(|tx| {
            ids.iter()
                .map(|id| {
                    let s = tx.inbound_group_session(id)?.unwrap();
                    let key = tern_crypto::group::InboundSenderKey::from_pickle(&s.pickle).unwrap();
                    assert_eq!(&key.session_id(), id);
                    Ok((id.clone(), key))
                })
                .collect::<Result<Vec<_>, tern_store::WriteError>>()
        })
        .unwrap()
}

/// Which of `keys` opens `message`, with the plaintext.
pub fn opens(
    keys: &mut [(String, tern_crypto::group::InboundSenderKey)],
    message: &[u8],
) -> Option<Vec<u8>> {
    let message = tern_crypto::group::GroupMessage::from_bytes(message).ok()?;
    keys.iter_mut().find_map(|(_, key)| {
        key.decrypt(
            &message,
            &mut tern_crypto::group::MemoryReplayLedger::default(),
        )
        .ok()
        .map(|d| d.body.to_vec())
    })
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
