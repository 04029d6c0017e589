//! Cluster rows (PostgreSQL only; SQLite stays single-node): the `nodes` table with its
//! heartbeats, load and drain mark, the `leadership` row with its epoch, and the fence
//! that every claim and send of a leader checks. Times are the database's clock, so that nodes
//! whose clocks disagree still judge each other alike.

use sqlx::Row;

use super::{Connection, Store, StoreError};

/// The database's clock in milliseconds since the epoch (`clock_timestamp`, not `now()`,
/// which stays at the transaction's start).
pub(super) const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// A node missing this many heartbeats is dead.
pub const MISSED_HEARTBEATS: i64 = 3;

/// What a node reports at each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    pub node_id: String,
    pub node_url: String,
    /// The interval the node promises between two heartbeats.
    pub heartbeat_ms: i64,
    pub participants: i64,
    pub rooms: i64,
    /// Share of one core used since the previous heartbeat, in per mille.
    pub cpu_permille: Option<i64>,
}

/// A live node, as placement will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    pub node_id: String,
    pub node_url: String,
    pub participants: i64,
    pub rooms: i64,
    pub cpu_permille: Option<i64>,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub silent_ms: i64,
    /// Drained: no new room is placed on it; those placed stay until they end.
    pub draining: bool,
}

/// The proof a leader carries: its term's epoch and the backend that holds the advisory
/// lock for it. It holds while the epoch is still the current one and that backend still
/// holds the lock; checked in SQL before each claim and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub epoch: i64,
    /// `pg_backend_pid()` of the lock connection.
    pub lock_pid: i32,
}

/// The advisory lock key of the leadership ("tvld"); one per database, and each
/// deployment has its own database.
pub const LEADER_LOCK_KEY: i64 = 0x7476_6c64;

/// Whether `fence` still holds. In a transaction the leadership row stays share-locked
/// until commit, so a new leader's epoch increment waits for the transaction, and a
/// transaction that began after it sees the new epoch and is refused.
pub async fn fence_holds(conn: &mut Connection, fence: &Fence) -> Result<bool, StoreError> {
    // Advisory locks on one bigint key show as classid = high half, objid = low half,
    // objsubid = 1 in pg_locks.
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM leadership l WHERE l.id = 1 AND l.epoch = $1 \
         AND EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted \
                     AND k.pid = $2 AND k.classid::BIGINT = $3 AND k.objid::BIGINT = $4 \
                     AND k.objsubid = 1) \
         FOR SHARE OF l",
    )
    .bind(fence.epoch)
    .bind(fence.lock_pid)
    .bind(LEADER_LOCK_KEY >> 32)
    .bind(LEADER_LOCK_KEY & 0xffff_ffff)
    .fetch_optional(conn)
    .await?;
    Ok(held.is_some())
}

impl Store {
    /// Registers the node or records its heartbeat and load. Returns whether the node
    /// is marked draining: `node drain` run elsewhere reaches the node this way, at its
    /// next heartbeat, with no endpoint of its own.
    pub async fn node_heartbeat(&self, beat: &NodeBeat) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO nodes (node_id, node_url, started_at, heartbeat_at, heartbeat_ms, \
                                participants, rooms, cpu_permille) \
             VALUES ($1, $2, {DB_NOW_MS}, {DB_NOW_MS}, $3, $4, $5, $6) \
             ON CONFLICT (node_id) DO UPDATE SET node_url = EXCLUDED.node_url, \
                 heartbeat_at = EXCLUDED.heartbeat_at, heartbeat_ms = EXCLUDED.heartbeat_ms, \
                 participants = EXCLUDED.participants, rooms = EXCLUDED.rooms, \
                 cpu_permille = EXCLUDED.cpu_permille \
             RETURNING draining"
        )))
        .bind(&beat.node_id)
        .bind(&beat.node_url)
        .bind(beat.heartbeat_ms)
        .bind(beat.participants)
        .bind(beat.rooms)
        .bind(beat.cpu_permille)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Records that the node starts afresh (its `started_at`), before its first
    /// heartbeat. A start ends a drain: in a rolling upgrade the node that comes back is
    /// the upgraded one, and an operator expects it to take meetings again.
    pub async fn node_started(&self, beat: &NodeBeat) -> Result<(), StoreError> {
        self.node_heartbeat(beat).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE nodes SET started_at = {DB_NOW_MS}, draining = FALSE WHERE node_id = $1"
        )))
        .bind(&beat.node_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a clean stop: the node counts as dead at once, so that the rejoins of
    /// its meetings' participants are placed on a live node without waiting for three
    /// missed heartbeats.
    pub async fn node_stopped(&self, node_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET heartbeat_at = 0 WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks `node_id` draining or not. Returns the number of rooms still placed on it,
    /// or `None` when no such node ever registered.
    pub async fn set_draining(
        &self,
        node_id: &str,
        draining: bool,
    ) -> Result<Option<i64>, StoreError> {
        let updated = sqlx::query("UPDATE nodes SET draining = $2 WHERE node_id = $1")
            .bind(node_id)
            .bind(draining)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        Ok(Some(
            sqlx::query_scalar("SELECT count(*) FROM room_placements WHERE node_id = $1")
                .bind(node_id)
                .fetch_one(&self.pool)
                .await?,
        ))
    }

    /// The nodes that missed fewer than [`MISSED_HEARTBEATS`] heartbeats, least loaded
    /// first (participants, then rooms, then CPU), ties by name.
    pub async fn live_nodes(&self) -> Result<Vec<LiveNode>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT node_id, node_url, participants, rooms, cpu_permille, \
                    {DB_NOW_MS} - heartbeat_at AS silent_ms, draining \
             FROM nodes WHERE heartbeat_at > {DB_NOW_MS} - $1 * heartbeat_ms \
             ORDER BY participants, rooms, cpu_permille NULLS LAST, node_id"
        )))
        .bind(MISSED_HEARTBEATS)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(LiveNode {
                    node_id: row.try_get(0)?,
                    node_url: row.try_get(1)?,
                    participants: row.try_get(2)?,
                    rooms: row.try_get(3)?,
                    cpu_permille: row.try_get(4)?,
                    silent_ms: row.try_get(5)?,
                    draining: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// The URLs of every node that ever registered, dead ones too (a node that comes
    /// back keeps its rooms' clients), for the page's Content-Security-Policy.
    pub async fn node_urls(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT node_url FROM nodes ORDER BY node_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The current term: its epoch and its leader (`None` before the first one).
    pub async fn leadership(&self) -> Result<(i64, Option<String>), StoreError> {
        let row = sqlx::query("SELECT epoch, node_id FROM leadership WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// [`fence_holds`] outside a transaction: right before a send that cannot be
    /// undone.
    pub async fn fence_holds(&self, fence: &Fence) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fence_holds(&mut conn, fence).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::testing;

    fn beat(node: &str, participants: i64, heartbeat_ms: i64) -> NodeBeat {
        NodeBeat {
            node_id: node.into(),
            node_url: format!("http://{node}.internal:29330"),
            heartbeat_ms,
            participants,
            rooms: participants / 2,
            cpu_permille: None,
        }
    }

    #[tokio::test]
    async fn live_nodes_come_least_loaded_first_and_a_silent_node_dies_after_three_intervals() {
        let db = testing::postgres().await;
        let store = db.store.clone();
        let interval = Duration::from_millis(200);
        let ms = interval.as_millis() as i64;
        store
            .node_started(&beat("busy", 40, ms))
            .await
            .expect("start");
        let quiet_beat = Instant::now();
        store
            .node_started(&beat("quiet", 3, ms))
            .await
            .expect("start");
        store
            .node_started(&beat("steady", 10, 60_000))
            .await
            .expect("start");
        let names = |nodes: Vec<LiveNode>| -> Vec<String> {
            nodes.into_iter().map(|n| n.node_id).collect()
        };
        assert_eq!(
            names(store.live_nodes().await.expect("live")),
            ["quiet", "steady", "busy"]
        );

        // `busy` keeps beating, `quiet` falls silent.
        let deadline = quiet_beat + interval * 3 + Duration::from_secs(2);
        let mut ticker = tokio::time::interval(interval / 4);
        loop {
            assert!(Instant::now() < deadline, "quiet never died");
            ticker.tick().await;
            store
                .node_heartbeat(&beat("busy", 40, ms))
                .await
                .expect("beat");
            let live = names(store.live_nodes().await.expect("live"));
            assert!(live.contains(&"busy".to_owned()), "{live:?}");
            if !live.contains(&"quiet".to_owned()) {
                // Its last heartbeat was written after `quiet_beat`: dead means at
                // least three intervals of silence.
                assert!(
                    quiet_beat.elapsed() >= interval * 3,
                    "declared dead after {:?}",
                    quiet_beat.elapsed()
                );
                break;
            }
        }
        assert_eq!(
            names(store.live_nodes().await.expect("live")),
            ["steady", "busy"]
        );
        // A heartbeat brings it back.
        store
            .node_heartbeat(&beat("quiet", 3, ms))
            .await
            .expect("beat");
        assert_eq!(
            names(store.live_nodes().await.expect("live"))[0],
            "quiet",
            "least loaded again"
        );
    }
}
