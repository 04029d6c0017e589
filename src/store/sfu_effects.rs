//! The SFU outbox: effects on the SFU the bridge decided, stored with the decision and
//! applied after it commits. The rows are opaque JSON here; `bridge::effects` owns them.

use sqlx::Row;

use super::{Connection, Store, StoreError};
use crate::clock::now_ms;

/// Stores an effect; call it inside the transaction that decided it.
pub async fn enqueue(conn: &mut Connection, effect_json: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO sfu_effects (effect_json, created_at) VALUES ($1, $2) RETURNING id",
    )
    .bind(effect_json)
    .bind(now_ms())
    .fetch_one(conn)
    .await?)
}

impl Store {
    /// Effects not applied yet, oldest first: (id, effect JSON).
    pub async fn pending_sfu_effects(&self, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, effect_json FROM sfu_effects WHERE done_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    pub async fn mark_sfu_effect_done(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE sfu_effects SET done_at = $1 WHERE id = $2")
            .bind(now_ms())
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

    both_dialects!(
        effects_come_back_in_order_until_done,
        |store: Store| async move {
            let mut tx = store.begin().await.expect("begin");
            let first = enqueue(&mut tx, "{\"a\":1}").await.expect("enqueue");
            let second = enqueue(&mut tx, "{\"b\":2}").await.expect("enqueue");
            tx.commit().await.expect("commit");
            let mut rolled_back = store.begin().await.expect("begin");
            enqueue(&mut rolled_back, "{\"c\":3}")
                .await
                .expect("enqueue");
            drop(rolled_back);
            let pending = store.pending_sfu_effects(10).await.expect("pending");
            assert_eq!(
                pending,
                vec![
                    (first, "{\"a\":1}".to_owned()),
                    (second, "{\"b\":2}".to_owned())
                ]
            );
            store.mark_sfu_effect_done(first).await.expect("done");
            let pending = store.pending_sfu_effects(10).await.expect("pending");
            assert_eq!(pending, vec![(second, "{\"b\":2}".to_owned())]);
        }
    );
}
