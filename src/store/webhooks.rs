//! The webhook delivery queue: one row per event and receiver, inserted in the
//! transaction that records what happened, then attempted by the webhook worker until
//! the receiver accepts it or the attempts run out (the failure is kept).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Connection, Store, StoreError};

/// A delivery to make, as inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery<'a> {
    /// Sent as `X-Tchap-Visio-Delivery`; the same on every retry.
    pub id: &'a str,
    /// The event's id (the body's `id`), the same for every receiver.
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub url: &'a str,
    /// The exact JSON sent on every attempt.
    pub body: &'a str,
    pub created_at: i64,
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub url: String,
    pub body: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// `SELECT <every column> FROM webhook_deliveries <rest>`, as a `&'static str`.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, event_id, event_type, url, body, state, attempts, next_attempt_at, \
             last_status, last_error, created_at, finished_at FROM webhook_deliveries ",
            $rest
        )
    };
}

fn from_row(row: &AnyRow) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        url: row.try_get("url")?,
        body: row.try_get("body")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Queues a delivery, due at once; call it inside the transaction that records the event.
pub async fn insert(conn: &mut Connection, delivery: &NewDelivery<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, event_type, url, body, state, attempts, \
         next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
    )
    .bind(delivery.id)
    .bind(delivery.event_id)
    .bind(delivery.event_type)
    .bind(delivery.url)
    .bind(delivery.body)
    .bind(delivery.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Up to `limit` pending deliveries to `url` due at `now`, oldest first.
    pub async fn due_webhook_deliveries(
        &self,
        url: &str,
        now: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query(select!(
            "WHERE state = 'pending' AND url = $1 AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at, created_at, id LIMIT $3"
        ))
        .bind(url)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// When the next pending delivery to `url` is due, if any.
    pub async fn next_webhook_due_at(&self, url: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending' AND url = $1",
        )
        .bind(url)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Receivers with pending deliveries.
    pub async fn pending_webhook_urls(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT url FROM webhook_deliveries WHERE state = 'pending' ORDER BY url",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn webhook_pending_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The receiver accepted it (a 2xx answer).
    pub async fn mark_webhook_delivered(
        &self,
        id: &str,
        status: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.finish_webhook(id, "delivered", Some(status), None, now)
            .await
    }

    /// No more attempts: the failure stays recorded.
    pub async fn mark_webhook_failed(
        &self,
        id: &str,
        status: Option<i64>,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.finish_webhook(id, "failed", status, Some(error), now)
            .await
    }

    async fn finish_webhook(
        &self,
        id: &str,
        state: &str,
        status: Option<i64>,
        error: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $2, attempts = attempts + 1, last_status = $3, \
             last_error = $4, finished_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(status)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub async fn reschedule_webhook(
        &self,
        id: &str,
        status: Option<i64>,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $2, \
             last_error = $3, next_attempt_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(next_attempt_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up every pending delivery to `url` (the receiver left the config).
    pub async fn fail_webhooks_to(
        &self,
        url: &str,
        error: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET state = 'failed', last_error = $2, finished_at = $3 \
             WHERE url = $1 AND state = 'pending'",
        )
        .bind(url)
        .bind(error)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Forgets deliveries that succeeded before `before` (failures are kept for the admin).
    pub async fn prune_delivered_webhooks(&self, before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM webhook_deliveries WHERE state = 'delivered' AND finished_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Every delivery of an event, by receiver (for tests and diagnostics).
    pub async fn webhook_deliveries_of(
        &self,
        event_id: &str,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query(select!("WHERE event_id = $1 ORDER BY url"))
            .bind(event_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::both_dialects;

    async fn add(store: &Store, id: &str, url: &str, at: i64) {
        let mut tx = store.begin().await.expect("begin");
        insert(
            &mut tx,
            &NewDelivery {
                id,
                event_id: &format!("ev-{id}"),
                event_type: "meeting.started",
                url,
                body: "{}",
                created_at: at,
            },
        )
        .await
        .expect("insert");
        tx.commit().await.expect("commit");
    }

    fn ids(rows: &[DeliveryRow]) -> Vec<&str> {
        rows.iter().map(|r| r.id.as_str()).collect()
    }

    both_dialects!(
        deliveries_are_queued_per_receiver,
        |store: Store| async move {
            let a = "http://a.example/hook";
            let b = "http://b.example/hook";
            add(&store, "d1", a, 100).await;
            add(&store, "d2", a, 200).await;
            add(&store, "d3", b, 150).await;
            assert_eq!(
                ids(&store
                    .due_webhook_deliveries(a, 1000, 10)
                    .await
                    .expect("due")),
                ["d1", "d2"]
            );
            assert_eq!(
                ids(&store.due_webhook_deliveries(a, 1000, 1).await.expect("due")),
                ["d1"]
            );
            assert_eq!(
                ids(&store.due_webhook_deliveries(a, 150, 10).await.expect("due")),
                ["d1"],
                "not due yet"
            );
            assert_eq!(
                store.pending_webhook_urls().await.expect("urls"),
                vec![a.to_owned(), b.to_owned()]
            );

            // d1 fails once: it goes back in the queue, later, with its id.
            store
                .reschedule_webhook("d1", Some(500), "HTTP 500", 5000)
                .await
                .expect("reschedule");
            assert_eq!(
                ids(&store
                    .due_webhook_deliveries(a, 1000, 10)
                    .await
                    .expect("due")),
                ["d2"]
            );
            assert_eq!(store.next_webhook_due_at(a).await.expect("due"), Some(200));
            store
                .mark_webhook_delivered("d2", 204, 1001)
                .await
                .expect("delivered");
            assert_eq!(store.next_webhook_due_at(a).await.expect("due"), Some(5000));
            let row = store
                .due_webhook_deliveries(a, 5000, 10)
                .await
                .expect("due")
                .pop()
                .expect("d1 due again");
            assert_eq!(
                (
                    row.id.as_str(),
                    row.attempts,
                    row.last_status,
                    row.last_error.as_deref()
                ),
                ("d1", 1, Some(500), Some("HTTP 500"))
            );
            store
                .mark_webhook_failed("d1", None, "timed out", 6000)
                .await
                .expect("failed");
            let kept = store.webhook_deliveries_of("ev-d1").await.expect("rows");
            assert_eq!(
                (
                    kept[0].state.as_str(),
                    kept[0].attempts,
                    kept[0].finished_at
                ),
                ("failed", 2, Some(6000))
            );
            assert_eq!(store.next_webhook_due_at(a).await.expect("due"), None);
            assert_eq!(store.webhook_pending_count().await.expect("count"), 1);

            assert_eq!(
                store
                    .fail_webhooks_to(b, "receiver removed", 7000)
                    .await
                    .expect("fail"),
                1
            );
            assert_eq!(store.webhook_pending_count().await.expect("count"), 0);
            // Delivery ids are unique.
            let mut tx = store.begin().await.expect("begin");
            let dup = NewDelivery {
                id: "d1",
                event_id: "x",
                event_type: "t",
                url: a,
                body: "{}",
                created_at: 1,
            };
            assert!(insert(&mut tx, &dup).await.is_err());
        }
    );
}
