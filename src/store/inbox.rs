//! The transaction inbox: events the homeserver pushed, kept until processed.

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Connection, Store, StoreError};
use crate::clock::now_ms;

/// One event of a transaction, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInboxEvent {
    pub event_id: String,
    pub room_id: Option<String>,
    pub json: String,
}

/// A stored event waiting to be processed.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub seq: i64,
    pub event_id: String,
    pub json: String,
}

/// What storing a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOutcome {
    /// First time this txnId was seen; `new_events` events were not already in the inbox.
    Stored { new_events: usize },
    /// The txnId was seen before with other events: the homeserver numbers its
    /// transactions again (Synapse on SQLite does after a restart), so this is a new
    /// transaction and was stored like one.
    ReusedId { new_events: usize },
    /// The txnId was stored before with the same events: nothing changed.
    Replay,
}

/// What identifies a transaction's content: the SHA-256 (hex) of its sorted event ids.
/// Event ids rather than the body, because a homeserver retrying a transaction may send
/// the same events with other `unsigned` fields (age) or without its ephemeral part.
pub fn events_digest(events: &[NewInboxEvent]) -> String {
    let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    // JSON keeps the list unambiguous whatever characters an id holds.
    let joined = serde_json::to_string(&ids).expect("a list of strings always serialises");
    hex::encode(Sha256::digest(joined.as_bytes()))
}

impl Store {
    /// Stores a transaction's events in one database transaction keyed by txnId and the
    /// digest of its event ids: the same id with the same events is a replay, the same
    /// id with other events a new transaction. An event id already in the inbox (sent
    /// again in another transaction) is skipped.
    pub async fn store_transaction(
        &self,
        txn_id: &str,
        events: &[NewInboxEvent],
    ) -> Result<TransactionOutcome, StoreError> {
        self.store_transaction_with_crypto(txn_id, events, None)
            .await
    }

    /// Like [`Self::store_transaction`], with the transaction's encryption input
    /// (MSC2409/MSC3202 fields) stored in the same database transaction, so that a
    /// transaction the homeserver sees acknowledged never loses its to-device messages.
    /// A replay stores neither again.
    pub async fn store_transaction_with_crypto(
        &self,
        txn_id: &str,
        events: &[NewInboxEvent],
        crypto_input: Option<&str>,
    ) -> Result<TransactionOutcome, StoreError> {
        let now = now_ms();
        let digest = events_digest(events);
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO appservice_transactions (txn_id, received_at, events_digest) \
             VALUES ($1, $2, $3) ON CONFLICT (txn_id) DO NOTHING",
        )
        .bind(txn_id)
        .bind(now)
        .bind(&digest)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let reused = if inserted == 1 {
            false
        } else {
            // Known id: it now names this content, so a retry of this transaction is
            // recognised as a replay.
            let changed = sqlx::query(
                "UPDATE appservice_transactions SET events_digest = $1, received_at = $2 \
                 WHERE txn_id = $3 AND (events_digest IS NULL OR events_digest <> $1)",
            )
            .bind(&digest)
            .bind(now)
            .bind(txn_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                tx.rollback().await?;
                return Ok(TransactionOutcome::Replay);
            }
            true
        };
        let new_events = insert_events(&mut tx, txn_id, events, now).await?;
        if let Some(input) = crypto_input {
            super::crypto::push_input(&mut tx, None, input).await?;
        }
        tx.commit().await?;
        Ok(if reused {
            TransactionOutcome::ReusedId { new_events }
        } else {
            TransactionOutcome::Stored { new_events }
        })
    }

    /// Stores one `/sync` answer of `mode: bot`: its events (an event already in the
    /// inbox is skipped), its encryption input and its `next_batch`, in one database
    /// transaction, so that a crash either keeps all of it or asks for it again.
    pub async fn store_sync_batch(
        &self,
        next_batch: &str,
        events: &[NewInboxEvent],
        crypto_input: Option<&str>,
    ) -> Result<usize, StoreError> {
        let now = now_ms();
        let txn_id = format!("sync:{next_batch}");
        let mut tx = self.begin().await?;
        let new_events = insert_events(&mut tx, &txn_id, events, now).await?;
        if let Some(input) = crypto_input {
            super::crypto::push_input(&mut tx, None, input).await?;
        }
        super::crypto::set_state(&mut tx, super::crypto::SYNC_TOKEN, next_batch).await?;
        tx.commit().await?;
        Ok(new_events)
    }

    /// The oldest unprocessed events, in arrival order.
    pub async fn pending_inbox(&self, limit: i64) -> Result<Vec<InboxEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, event_json FROM inbox WHERE processed_at IS NULL \
             ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(InboxEvent {
                    seq: row.try_get(0)?,
                    event_id: row.try_get(1)?,
                    json: row.try_get(2)?,
                })
            })
            .collect()
    }

    pub async fn inbox_pending_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

/// Inserts events into the inbox, skipping those already there; returns how many were new.
async fn insert_events(
    conn: &mut Connection,
    txn_id: &str,
    events: &[NewInboxEvent],
    now: i64,
) -> Result<usize, StoreError> {
    let mut new_events = 0;
    for event in events {
        new_events += sqlx::query(
            "INSERT INTO inbox (event_id, txn_id, room_id, event_json, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event.event_id)
        .bind(txn_id)
        .bind(event.room_id.as_deref())
        .bind(&event.json)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
    }
    Ok(new_events)
}

/// Marks an event processed; called in the same database transaction as its effects,
/// so an event's effects are recorded exactly once even across a crash.
pub async fn mark_processed(conn: &mut Connection, seq: i64) -> Result<bool, StoreError> {
    let changed =
        sqlx::query("UPDATE inbox SET processed_at = $1 WHERE seq = $2 AND processed_at IS NULL")
            .bind(now_ms())
            .bind(seq)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_dialects;

    fn event(id: &str) -> NewInboxEvent {
        NewInboxEvent {
            event_id: id.into(),
            room_id: Some("!r:localhost".into()),
            json: format!(r#"{{"event_id":"{id}"}}"#),
        }
    }

    both_dialects!(
        replayed_transactions_store_nothing,
        |store: Store| async move {
            let events = [event("$a"), event("$b")];
            assert_eq!(
                store.store_transaction("t1", &events).await.expect("store"),
                TransactionOutcome::Stored { new_events: 2 }
            );
            for _ in 0..5 {
                assert_eq!(
                    store
                        .store_transaction("t1", &events)
                        .await
                        .expect("replay"),
                    TransactionOutcome::Replay
                );
            }
            // The same event in a new transaction is not stored twice either.
            assert_eq!(
                store
                    .store_transaction("t2", &[event("$b"), event("$c")])
                    .await
                    .expect("store"),
                TransactionOutcome::Stored { new_events: 1 }
            );
            let pending = store.pending_inbox(10).await.expect("pending");
            let ids: Vec<_> = pending.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, ["$a", "$b", "$c"]);
        }
    );

    both_dialects!(
        a_known_txn_id_with_other_events_is_a_new_transaction,
        |store: Store| async move {
            // What Synapse on SQLite does after a restart: txn ids start again at 1.
            assert_eq!(
                store
                    .store_transaction("1", &[event("$before")])
                    .await
                    .expect("store"),
                TransactionOutcome::Stored { new_events: 1 }
            );
            assert_eq!(
                store
                    .store_transaction("1", &[event("$after"), event("$before")])
                    .await
                    .expect("reused id"),
                TransactionOutcome::ReusedId { new_events: 1 }
            );
            // The id now names the new content: the same events in another order are a
            // retry of it, the old content again is another new transaction (nothing new).
            assert_eq!(
                store
                    .store_transaction("1", &[event("$before"), event("$after")])
                    .await
                    .expect("replay"),
                TransactionOutcome::Replay
            );
            assert_eq!(
                store
                    .store_transaction("1", &[event("$before")])
                    .await
                    .expect("old content"),
                TransactionOutcome::ReusedId { new_events: 0 }
            );
            let pending = store.pending_inbox(10).await.expect("pending");
            let ids: Vec<_> = pending.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, ["$before", "$after"]);
        }
    );

    both_dialects!(
        an_id_stored_before_digests_is_not_a_replay,
        |store: Store| async move {
            sqlx::query(
                "INSERT INTO appservice_transactions (txn_id, received_at) VALUES ('old', 1)",
            )
            .execute(store.pool())
            .await
            .expect("row from before the migration");
            assert_eq!(
                store
                    .store_transaction("old", &[event("$new")])
                    .await
                    .expect("store"),
                TransactionOutcome::ReusedId { new_events: 1 }
            );
            assert_eq!(
                store
                    .store_transaction("old", &[event("$new")])
                    .await
                    .expect("replay"),
                TransactionOutcome::Replay
            );
        }
    );

    #[test]
    fn digests_ignore_order_and_tell_contents_apart() {
        assert_eq!(
            events_digest(&[event("$a"), event("$b")]),
            events_digest(&[event("$b"), event("$a")])
        );
        assert_ne!(events_digest(&[event("$a")]), events_digest(&[event("$b")]));
        // No separator trick makes two lists collide.
        assert_ne!(
            events_digest(&[event("$a"), event("$b")]),
            events_digest(&[event("$a\",\"$b")])
        );
    }

    both_dialects!(processing_is_once, |store: Store| async move {
        store
            .store_transaction("t", &[event("$x"), event("$y")])
            .await
            .expect("store");
        let pending = store.pending_inbox(10).await.expect("pending");
        let mut tx = store.begin().await.expect("begin");
        assert!(mark_processed(&mut tx, pending[0].seq).await.expect("mark"));
        assert!(
            !mark_processed(&mut tx, pending[0].seq)
                .await
                .expect("mark again")
        );
        tx.commit().await.expect("commit");
        // A rolled-back mark leaves the event pending.
        let mut tx = store.begin().await.expect("begin");
        assert!(mark_processed(&mut tx, pending[1].seq).await.expect("mark"));
        tx.rollback().await.expect("rollback");
        let left = store.pending_inbox(10).await.expect("pending");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].event_id, "$y");
        assert_eq!(store.inbox_pending_count().await.expect("count"), 1);
    });
}
