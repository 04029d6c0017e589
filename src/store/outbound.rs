//! The outbound queue: requests to the homeserver that must eventually be made, in
//! order per room, each with a transaction id fixed at enqueue time.

use sqlx::Row;

use super::{Connection, Store, StoreError};
use crate::clock::now_ms;

/// A queued request due for an attempt.
#[derive(Debug, Clone)]
pub struct OutboundRow {
    pub id: i64,
    pub room_id: Option<String>,
    pub txn_id: String,
    pub request_json: String,
    pub attempts: i64,
    pub created_at: i64,
}

/// Queues a request; call it inside the transaction that records why it is sent.
pub async fn enqueue(
    conn: &mut Connection,
    room_id: Option<&str>,
    txn_id: &str,
    request_json: &str,
) -> Result<i64, StoreError> {
    enqueue_not_before(conn, room_id, txn_id, request_json, now_ms()).await
}

/// Queues a request that is not sent before `not_before_ms` (pacing); the room's later
/// requests wait behind it, so its order holds.
pub async fn enqueue_not_before(
    conn: &mut Connection,
    room_id: Option<&str>,
    txn_id: &str,
    request_json: &str,
    not_before_ms: i64,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO outbound (room_id, txn_id, request_json, state, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, 'pending', 0, $4, $5) RETURNING id",
    )
    .bind(room_id)
    .bind(txn_id)
    .bind(request_json)
    .bind(not_before_ms)
    .bind(now_ms())
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// The event a sent request created (`None` while it waits, or when it failed).
pub async fn sent_event_id(conn: &mut Connection, id: i64) -> Result<Option<String>, StoreError> {
    let event_id: Option<Option<String>> =
        sqlx::query_scalar("SELECT event_id FROM outbound WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(event_id.flatten())
}

impl Store {
    /// The oldest pending request that is due and has no earlier pending request in
    /// the same room (so a room's messages keep their order through retries).
    pub async fn next_due_outbound(&self, now: i64) -> Result<Option<OutboundRow>, StoreError> {
        let row = sqlx::query(
            "SELECT o.id, o.room_id, o.txn_id, o.request_json, o.attempts, o.created_at FROM outbound o \
             WHERE o.state = 'pending' AND o.next_attempt_at <= $1 \
             AND NOT EXISTS (SELECT 1 FROM outbound p WHERE p.state = 'pending' \
                             AND p.room_id = o.room_id AND p.id < o.id) \
             ORDER BY o.id LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(OutboundRow {
                id: row.try_get(0)?,
                room_id: row.try_get(1)?,
                txn_id: row.try_get(2)?,
                request_json: row.try_get(3)?,
                attempts: row.try_get(4)?,
                created_at: row.try_get(5)?,
            })
        })
        .transpose()
    }

    /// When the next request becomes due, counting only the head of each room's queue
    /// (a request behind a backed-off one is not due before it).
    pub async fn next_outbound_due_at(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(o.next_attempt_at) FROM outbound o WHERE o.state = 'pending' \
             AND NOT EXISTS (SELECT 1 FROM outbound p WHERE p.state = 'pending' \
                             AND p.room_id = o.room_id AND p.id < o.id)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn outbound_pending_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM outbound WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Records the homeserver's answer; `event_id` is the event the request created, if
    /// any, kept apart so that later requests can refer to it (a thread's root).
    pub async fn mark_outbound_sent(
        &self,
        id: i64,
        result_json: &str,
        event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.finish_outbound(id, "sent", None, Some(result_json), event_id)
            .await
    }

    pub async fn mark_outbound_failed(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.finish_outbound(id, "failed", Some(error), None, None)
            .await
    }

    async fn finish_outbound(
        &self,
        id: i64,
        state: &str,
        error: Option<&str>,
        result: Option<&str>,
        event_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbound SET state = $1, attempts = attempts + 1, last_error = $2, \
             result_json = $3, event_id = $4, finished_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(error)
        .bind(result)
        .bind(event_id)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub async fn reschedule_outbound(
        &self,
        id: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbound SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 \
             WHERE id = $3",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_dialects;

    async fn add(store: &Store, room: Option<&str>, txn: &str) -> i64 {
        let mut tx = store.begin().await.expect("begin");
        let id = enqueue(&mut tx, room, txn, "{}").await.expect("enqueue");
        tx.commit().await.expect("commit");
        id
    }

    both_dialects!(rooms_keep_their_order, |store: Store| async move {
        let a1 = add(&store, Some("!a"), "t1").await;
        let a2 = add(&store, Some("!a"), "t2").await;
        let b1 = add(&store, Some("!b"), "t3").await;
        let now = now_ms();
        assert_eq!(
            store
                .next_due_outbound(now)
                .await
                .expect("next")
                .map(|r| r.id),
            Some(a1)
        );
        // a1 backs off: room !a waits, room !b goes ahead.
        store
            .reschedule_outbound(a1, now + 60_000, "down")
            .await
            .expect("reschedule");
        assert_eq!(
            store
                .next_due_outbound(now)
                .await
                .expect("next")
                .map(|r| r.id),
            Some(b1)
        );
        store
            .mark_outbound_sent(b1, "{}", None)
            .await
            .expect("sent");
        assert!(store.next_due_outbound(now).await.expect("next").is_none());
        assert_eq!(
            store.next_outbound_due_at().await.expect("due"),
            Some(now + 60_000)
        );
        // Once a1 is due again it goes first, then a2.
        let later = now + 60_000;
        let row = store
            .next_due_outbound(later)
            .await
            .expect("next")
            .expect("a1 due");
        assert_eq!((row.id, row.attempts, row.txn_id.as_str()), (a1, 1, "t1"));
        store
            .mark_outbound_failed(a1, "forbidden")
            .await
            .expect("failed");
        assert_eq!(
            store
                .next_due_outbound(later)
                .await
                .expect("next")
                .map(|r| r.id),
            Some(a2)
        );
        assert_eq!(store.outbound_pending_count().await.expect("count"), 1);
    });

    both_dialects!(transaction_ids_are_unique, |store: Store| async move {
        add(&store, None, "same").await;
        let mut tx = store.begin().await.expect("begin");
        assert!(enqueue(&mut tx, None, "same", "{}").await.is_err());
    });
}
