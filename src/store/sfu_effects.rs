//! The SFU outbox: effects on the SFU the bridge decided, stored with the decision and
//! applied after it commits. The rows are opaque JSON here; `bridge::effects` owns them.
//!
//! In a cluster each row names the node whose SFU hosts the meeting's room, read from
//! `room_placements` ([`super::placements`]) in the deciding transaction: that node
//! applies it, so effects of one meeting are applied by one worker, in id order. A row
//! naming no node (the room was placed nowhere) is the leader's.

use sqlx::Row;

use super::{Connection, Store, StoreError};
use crate::clock::now_ms;

/// Which effects a worker applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectTarget {
    /// A single node: all of them.
    All,
    /// A cluster node: those for rooms it hosts.
    Node(String),
    /// A cluster's leader: those for rooms placed nowhere.
    Unplaced,
}

/// The node hosting the room of `meeting_id` as the caller's transaction sees it; `None`
/// on SQLite (a single node) or where the room is placed nowhere.
pub async fn host(conn: &mut Connection, meeting_id: &str) -> Result<Option<String>, StoreError> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar("SELECT node_id FROM room_placements WHERE meeting_id = $1")
            .bind(meeting_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Stores an effect for `node`'s SFU; call it inside the transaction that decided it.
pub async fn enqueue(
    conn: &mut Connection,
    node: Option<&str>,
    effect_json: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO sfu_effects (effect_json, created_at, node_id) VALUES ($1, $2, $3) \
         RETURNING id",
    )
    .bind(effect_json)
    .bind(now_ms())
    .bind(node)
    .fetch_one(conn)
    .await?)
}

impl Store {
    /// Effects for `target` not applied yet, oldest first: (id, effect JSON).
    pub async fn pending_sfu_effects(
        &self,
        target: &EffectTarget,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let (filter, node) = match target {
            EffectTarget::All => ("", None),
            EffectTarget::Node(node) => ("AND node_id = $2", Some(node.as_str())),
            EffectTarget::Unplaced => ("AND node_id IS NULL", None),
        };
        let sql = format!(
            "SELECT id, effect_json FROM sfu_effects WHERE done_at IS NULL {filter} \
             ORDER BY id LIMIT $1"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit);
        if let Some(node) = node {
            query = query.bind(node);
        }
        let rows = query.fetch_all(&self.pool).await?;
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
            let first = enqueue(&mut tx, None, "{\"a\":1}").await.expect("enqueue");
            let second = enqueue(&mut tx, None, "{\"b\":2}").await.expect("enqueue");
            tx.commit().await.expect("commit");
            let mut rolled_back = store.begin().await.expect("begin");
            enqueue(&mut rolled_back, None, "{\"c\":3}")
                .await
                .expect("enqueue");
            drop(rolled_back);
            let pending = store
                .pending_sfu_effects(&EffectTarget::All, 10)
                .await
                .expect("pending");
            assert_eq!(
                pending,
                vec![
                    (first, "{\"a\":1}".to_owned()),
                    (second, "{\"b\":2}".to_owned())
                ]
            );
            store.mark_sfu_effect_done(first).await.expect("done");
            let pending = store
                .pending_sfu_effects(&EffectTarget::All, 10)
                .await
                .expect("pending");
            assert_eq!(pending, vec![(second, "{\"b\":2}".to_owned())]);
        }
    );

    both_dialects!(
        each_worker_reads_its_targets_rows,
        |store: Store| async move {
            let mut tx = store.begin().await.expect("begin");
            let on_a = enqueue(&mut tx, Some("a"), "{}").await.expect("enqueue");
            let nowhere = enqueue(&mut tx, None, "{}").await.expect("enqueue");
            let on_b = enqueue(&mut tx, Some("b"), "{}").await.expect("enqueue");
            assert_eq!(host(&mut tx, "no-such-meeting").await.expect("host"), None);
            tx.commit().await.expect("commit");
            let ids = |target: EffectTarget| {
                let store = store.clone();
                async move {
                    store
                        .pending_sfu_effects(&target, 10)
                        .await
                        .expect("pending")
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(ids(EffectTarget::All).await, [on_a, nowhere, on_b]);
            assert_eq!(ids(EffectTarget::Node("a".into())).await, [on_a]);
            assert_eq!(ids(EffectTarget::Node("b".into())).await, [on_b]);
            assert_eq!(ids(EffectTarget::Unplaced).await, [nowhere]);
        }
    );
}
