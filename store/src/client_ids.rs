//! Keys a client chose for the texts it sent (`client_id` in the node's API), each with the
//! message it was sent as. A client that lost the answer to a send sends it again under the
//! same key and gets the message already sent, rather than a second one.
//!
//! A key is written in the transaction that stores its message ([`Tx::remember_client_id`]),
//! so a message is never stored without its key or the other way round. Keys are kept for
//! [`crate::consts::CLIENT_ID_KEEP_MS`] and then forgotten ([`Tx::forget_client_ids_before`]).

use rusqlite::{OptionalExtension, params};

use crate::error::{Context, ReadError, WriteError};
use crate::store::{Store, Tx};
use crate::types::MessageId;

impl Store {
    /// The message sent under a client's key, if the key is remembered.
    pub fn client_id_message(&self, client_id: &str) -> Result<Option<MessageId>, ReadError> {
        const OP: &str = "read client id";
        let id: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT message_id FROM client_ids WHERE client_id = ?1")
            .and_then(|mut s| s.query_row([client_id], |r| r.get(0)).optional())
            .read_ctx(OP)?;
        id.map(|v| {
            <[u8; 16]>::try_from(v.as_slice())
                .map(MessageId)
                .map_err(|_| ReadError::Invalid {
                    op: OP,
                    what: "message id",
                    reason: format!("{} bytes, not 16", v.len()),
                })
        })
        .transpose()
    }
}

impl Tx<'_> {
    /// Remembers that `message` was sent under the client's key (replacing the message of a
    /// key whose message is gone).
    pub fn remember_client_id(
        &mut self,
        client_id: &str,
        message: MessageId,
        now_ms: i64,
    ) -> Result<(), WriteError> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO client_ids(client_id, message_id, created_at_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![client_id, message.0.as_slice(), now_ms]))
            .write_ctx("remember client id")?;
        Ok(())
    }

    /// Forgets the keys remembered before `before_ms`. Returns how many went.
    pub fn forget_client_ids_before(&mut self, before_ms: i64) -> Result<usize, WriteError> {
        self.tx
            .prepare_cached("DELETE FROM client_ids WHERE created_at_ms < ?1")
            .and_then(|mut s| s.execute([before_ms]))
            .write_ctx("forget client ids")
    }
}

#[cfg(test)]
mod tests {
    use crate::outbox::tests::store;
    use crate::types::MessageId;

    #[test]
    fn a_key_is_remembered_replaced_and_forgotten_by_age() {
        let (_dir, mut store) = store();
        assert_eq!(store.client_id_message("k1").unwrap(), None);
        store
            .transaction(|tx| tx.remember_client_id("k1", MessageId([1; 16]), 1_000))
            .unwrap();
        store
            .transaction(|tx| tx.remember_client_id("k2", MessageId([2; 16]), 5_000))
            .unwrap();
        assert_eq!(
            store.client_id_message("k1").unwrap(),
            Some(MessageId([1; 16]))
        );
        store
            .transaction(|tx| tx.remember_client_id("k1", MessageId([3; 16]), 2_000))
            .unwrap();
        assert_eq!(
            store.client_id_message("k1").unwrap(),
            Some(MessageId([3; 16]))
        );
        let gone = store
            .transaction(|tx| tx.forget_client_ids_before(4_000))
            .unwrap();
        assert_eq!(gone, 1);
        assert_eq!(store.client_id_message("k1").unwrap(), None);
        assert_eq!(
            store.client_id_message("k2").unwrap(),
            Some(MessageId([2; 16]))
        );
    }
}
