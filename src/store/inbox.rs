//! The transaction inbox: events the homeserver pushed, kept until processed.

use sqlx::Row;

use super::{Connection, Store, StoreError, now_ms};

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
    /// The txnId was stored before: nothing changed.
    Replay,
}

impl Store {
    /// Stores a transaction's events in one database transaction keyed by txnId.
    /// An event id already in the inbox (sent again in another transaction) is skipped.
    pub async fn store_transaction(
        &self,
        txn_id: &str,
        events: &[NewInboxEvent],
    ) -> Result<TransactionOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO appservice_transactions (txn_id, received_at) VALUES ($1, $2) \
             ON CONFLICT (txn_id) DO NOTHING",
        )
        .bind(txn_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(TransactionOutcome::Replay);
        }
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
            .execute(&mut *tx)
            .await?
            .rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(TransactionOutcome::Stored { new_events })
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
