//! Where each meeting's SFU room lives in a cluster (PostgreSQL only): the
//! `room_placements` table. The first join places a room on the least-loaded live node;
//! the row's primary key makes that the one placement, so a room never spans nodes. A
//! draining node gets no new room but keeps those placed on it. A trigger forgets the
//! placement when the meeting ends. Knows nodes only as rows of
//! `nodes` ([`super::cluster`]).
//!
//! A dead node's meetings are orphaned: their open sessions end when the node was last
//! alive, the attendance showing the gap until their participants rejoin elsewhere, and
//! a meeting left with nobody gets its grace period to be rejoined.

use sqlx::Row;

use super::cluster::{DB_NOW_MS, MISSED_HEARTBEATS};
use super::{Store, StoreError};

/// Where a room lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node_id: String,
    /// The hosting node's own base URL (`cluster.node_url`), where clients connect.
    pub node_url: String,
}

/// How many times a placement on a dead node is moved before giving up: each try moves
/// it once, and only a node dying between two statements makes another try needed.
const PLACEMENT_TRIES: usize = 3;

/// The least-loaded live node that does not drain: connected participants first (as of its last heartbeat),
/// then the rooms placed on it, which count at once where heartbeats lag a first join,
/// then its CPU, ties by name. One row or none.
fn least_loaded_live_node() -> String {
    format!(
        "SELECT n.node_id FROM nodes n \
         WHERE n.heartbeat_at > {DB_NOW_MS} - {MISSED_HEARTBEATS} * n.heartbeat_ms \
           AND NOT n.draining \
         ORDER BY n.participants, \
                  (SELECT count(*) FROM room_placements p WHERE p.node_id = n.node_id), \
                  n.rooms, n.cpu_permille NULLS LAST, n.node_id \
         LIMIT 1"
    )
}

impl Store {
    /// The node that hosts `meeting_id`'s room, placing it on the least-loaded live node
    /// if it has no placement yet, or if its node is dead (that node's participants are
    /// gone with it). `None`: no node is alive. Concurrent callers get the same answer:
    /// the insert does nothing where another placed the room first, and a move is
    /// conditioned on the dead node still being the host.
    pub async fn place_room(&self, meeting_id: &str) -> Result<Option<Placement>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO room_placements (meeting_id, node_id, placed_at) \
             SELECT $1, l.node_id, {DB_NOW_MS} FROM ({}) l \
             ON CONFLICT (meeting_id) DO NOTHING",
            least_loaded_live_node(),
        )))
        .bind(meeting_id)
        .execute(&self.pool)
        .await?;
        for _ in 0..PLACEMENT_TRIES {
            let Some((placement, live)) = self.placement(meeting_id).await? else {
                // No live node to place it on.
                return Ok(None);
            };
            if live {
                return Ok(Some(placement));
            }
            let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE room_placements SET node_id = l.node_id, placed_at = {DB_NOW_MS} \
                 FROM ({}) l \
                 WHERE room_placements.meeting_id = $1 AND room_placements.node_id = $2",
                least_loaded_live_node(),
            )))
            .bind(meeting_id)
            .bind(&placement.node_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if moved == 1 {
                tracing::info!(meeting = meeting_id, dead = %placement.node_id, "room moved off a dead node");
            }
        }
        Ok(self
            .placement(meeting_id)
            .await?
            .and_then(|(placement, live)| live.then_some(placement)))
    }

    /// The node `meeting_id`'s room is placed on, and whether that node is alive.
    pub async fn placement(
        &self,
        meeting_id: &str,
    ) -> Result<Option<(Placement, bool)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT p.node_id, COALESCE(n.node_url, ''), \
                    COALESCE(n.heartbeat_at > {DB_NOW_MS} - {MISSED_HEARTBEATS} * n.heartbeat_ms, FALSE) \
             FROM room_placements p LEFT JOIN nodes n ON n.node_id = p.node_id \
             WHERE p.meeting_id = $1"
        )))
        .bind(meeting_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok((
                Placement {
                    node_id: row.try_get(0)?,
                    node_url: row.try_get(1)?,
                },
                row.try_get(2)?,
            ))
        })
        .transpose()
    }

    /// The node hosting `meeting_id`'s room, placing it on `node_id` if it has none: a
    /// connection that reaches a node without a join (a token made with the API keys)
    /// opens the room there, and nowhere else after.
    pub async fn claim_room(&self, meeting_id: &str, node_id: &str) -> Result<String, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO room_placements (meeting_id, node_id, placed_at) \
             VALUES ($1, $2, {DB_NOW_MS}) ON CONFLICT (meeting_id) DO NOTHING"
        )))
        .bind(meeting_id)
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        let host: Option<String> =
            sqlx::query_scalar("SELECT node_id FROM room_placements WHERE meeting_id = $1")
                .bind(meeting_id)
                .fetch_optional(&self.pool)
                .await?;
        // Only the meeting's end deletes the row, and a meeting that ended is refused
        // before any claim; should it end in between, the claimant keeps the room.
        Ok(host.unwrap_or_else(|| node_id.to_owned()))
    }
}

/// The sessions reported by dead nodes' SFUs that are still open: closed when the
/// node was last seen alive, each row once (the update is its own claim).
fn close_dead_nodes_sessions() -> String {
    format!(
        "UPDATE participant_sessions s \
         SET left_at = GREATEST(s.last_seen_at, n.heartbeat_at), \
             last_seen_at = GREATEST(s.last_seen_at, n.heartbeat_at) \
         FROM nodes n \
         WHERE s.node_id = n.node_id AND s.left_at IS NULL \
           AND n.heartbeat_at <= {DB_NOW_MS} - {MISSED_HEARTBEATS} * n.heartbeat_ms \
         RETURNING s.meeting_id"
    )
}

impl Store {
    /// Orphans dead nodes' meetings: closes the sessions their SFUs reported, and starts
    /// the grace period of each running meeting nobody is left in. Returns the meetings
    /// touched. Safe on several nodes at once (each session closes once), though only
    /// the leader calls it.
    pub async fn orphan_dead_nodes_meetings(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        let mut meetings: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(close_dead_nodes_sessions()))
                .fetch_all(&mut *tx)
                .await?;
        meetings.sort();
        meetings.dedup();
        for meeting in &meetings {
            // The meeting's row first: a join elsewhere that opens a session clears
            // `empty_since` under the same lock, so either it sees ours and clears it,
            // or the count below sees its session.
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM meetings WHERE id = $1 FOR UPDATE")
                    .bind(meeting)
                    .fetch_optional(&mut *tx)
                    .await?;
            if state.as_deref() != Some("running") {
                continue;
            }
            sqlx::query(
                "UPDATE meetings SET empty_since = $2 \
                 WHERE id = $1 AND empty_since IS NULL AND NOT EXISTS \
                   (SELECT 1 FROM participant_sessions \
                    WHERE meeting_id = $1 AND left_at IS NULL)",
            )
            .bind(meeting)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(meetings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meeting::{Meeting, MeetingState};
    use crate::store::cluster::NodeBeat;
    use crate::store::{meetings, testing};

    async fn node(store: &Store, node: &str, participants: i64) {
        store
            .node_started(&NodeBeat {
                node_id: node.into(),
                node_url: format!("http://{node}.internal:29330"),
                heartbeat_ms: 60_000,
                participants,
                rooms: 0,
                cpu_permille: None,
            })
            .await
            .expect("start");
    }

    /// Makes `node` silent for ten intervals, without waiting for it.
    async fn silence(store: &Store, node: &str) {
        sqlx::query(
            "UPDATE nodes SET heartbeat_at = heartbeat_at - 10 * heartbeat_ms WHERE node_id = $1",
        )
        .bind(node)
        .execute(store.pool())
        .await
        .expect("silence");
    }

    async fn meeting(store: &Store, title: &str) -> String {
        let m = Meeting::new(title, None, None, crate::clock::now_ms()).expect("valid title");
        let mut conn = store.pool().acquire().await.expect("conn");
        meetings::create(&mut conn, &m).await.expect("create");
        m.id.as_str().to_owned()
    }

    async fn host(store: &Store, meeting: &str) -> String {
        store
            .place_room(meeting)
            .await
            .expect("place")
            .expect("a live node")
            .node_id
    }

    #[tokio::test]
    async fn a_room_goes_to_the_least_loaded_live_node_and_stays_there() {
        let db = testing::postgres().await;
        let store = &db.store;
        let m = meeting(store, "Premier").await;
        assert_eq!(
            store.place_room(&m).await.expect("place"),
            None,
            "no node yet"
        );
        node(store, "busy", 40).await;
        node(store, "quiet", 3).await;
        node(store, "dead", 0).await;
        silence(store, "dead").await;
        let placed = store.place_room(&m).await.expect("place").expect("placed");
        assert_eq!(
            placed,
            Placement {
                node_id: "quiet".into(),
                node_url: "http://quiet.internal:29330".into(),
            }
        );
        // Its load changes; the room does not move.
        node(store, "quiet", 500).await;
        assert_eq!(host(store, &m).await, "quiet");
        assert_eq!(store.claim_room(&m, "busy").await.expect("claim"), "quiet");
        // A second meeting goes where the load is least now.
        let second = meeting(store, "Second").await;
        assert_eq!(host(store, &second).await, "busy");
    }

    #[tokio::test]
    async fn a_draining_node_gets_no_new_room_and_keeps_those_placed_on_it() {
        let db = testing::postgres().await;
        let store = &db.store;
        node(store, "a", 0).await;
        node(store, "b", 30).await;
        let running = meeting(store, "En cours").await;
        assert_eq!(host(store, &running).await, "a");
        assert_eq!(
            store.set_draining("a", true).await.expect("drain"),
            Some(1),
            "one room still placed on a"
        );
        assert_eq!(
            store.set_draining("ghost", true).await.expect("drain"),
            None
        );
        let live = store.live_nodes().await.expect("live");
        assert!(
            live.iter().any(|n| n.node_id == "a" && n.draining),
            "{live:?}"
        );

        // A new meeting goes to b, though a is less loaded.
        let new = meeting(store, "Nouvelle").await;
        assert_eq!(host(store, &new).await, "b");
        // The meeting already on a stays there, for every later join.
        assert_eq!(host(store, &running).await, "a");
        assert_eq!(
            store
                .placement(&running)
                .await
                .expect("read")
                .map(|(p, live)| (p.node_id, live)),
            Some(("a".into(), true))
        );
        // Heartbeats keep the mark and report it to the node.
        let beat = NodeBeat {
            node_id: "a".into(),
            node_url: "http://a.internal:29330".into(),
            heartbeat_ms: 60_000,
            participants: 0,
            rooms: 1,
            cpu_permille: None,
        };
        assert!(store.node_heartbeat(&beat).await.expect("beat"));

        // Every node draining: nowhere to place a new room.
        store.set_draining("b", true).await.expect("drain");
        let third = meeting(store, "Troisième").await;
        assert_eq!(store.place_room(&third).await.expect("place"), None);
        // `node undrain` on b, and a's restart (a rolling upgrade), end the drains.
        store.set_draining("b", false).await.expect("undrain");
        assert_eq!(host(store, &third).await, "b");
        node(store, "a", 0).await;
        assert!(!store.node_heartbeat(&beat).await.expect("beat"));
        let fourth = meeting(store, "Quatrième").await;
        assert_eq!(host(store, &fourth).await, "a");
    }

    #[tokio::test]
    async fn a_node_stopped_cleanly_is_dead_at_once_and_its_rooms_move_at_the_next_join() {
        let db = testing::postgres().await;
        let store = &db.store;
        node(store, "a", 0).await;
        node(store, "b", 30).await;
        let m = meeting(store, "Mise à jour").await;
        assert_eq!(host(store, &m).await, "a");
        store.node_stopped("a").await.expect("stop");
        let live = store.live_nodes().await.expect("live");
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(host(store, &m).await, "b");
    }

    #[tokio::test]
    async fn rooms_placed_at_once_spread_before_any_heartbeat_counts_them() {
        let db = testing::postgres().await;
        let store = &db.store;
        for name in ["a", "b", "c"] {
            node(store, name, 0).await;
        }
        let mut hosts = Vec::new();
        for title in ["Un", "Deux", "Trois"] {
            let m = meeting(store, title).await;
            hosts.push(host(store, &m).await);
        }
        hosts.sort();
        assert_eq!(hosts, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn nodes_racing_on_a_first_join_agree_on_one_node() {
        let db = testing::postgres().await;
        let store = &db.store;
        for name in ["a", "b", "c"] {
            node(store, name, 0).await;
        }
        for round in 0..5 {
            let m = meeting(store, &format!("Course {round}")).await;
            let placing = (0..6)
                .map(|_| {
                    let store = store.clone();
                    let m = m.clone();
                    tokio::spawn(async move { host(&store, &m).await })
                })
                .collect::<Vec<_>>();
            let claiming = ["a", "b", "c"].map(|name| {
                let store = store.clone();
                let m = m.clone();
                tokio::spawn(async move { store.claim_room(&m, name).await.expect("claim") })
            });
            let mut seen = Vec::new();
            for task in placing.into_iter().chain(claiming) {
                seen.push(task.await.expect("task"));
            }
            seen.dedup();
            assert_eq!(seen.len(), 1, "round {round}: {seen:?}");
        }
    }

    #[tokio::test]
    async fn a_room_on_a_dead_node_moves_once_and_the_placement_ends_with_the_meeting() {
        let db = testing::postgres().await;
        let store = &db.store;
        node(store, "a", 0).await;
        node(store, "b", 5).await;
        let m = meeting(store, "Panne").await;
        assert_eq!(host(store, &m).await, "a");
        silence(store, "a").await;
        assert_eq!(
            store
                .placement(&m)
                .await
                .expect("read")
                .map(|(p, live)| (p.node_id, live)),
            Some(("a".into(), false))
        );
        assert_eq!(host(store, &m).await, "b");
        // `a` comes back: the room stays on `b`, and `a` may not open it.
        node(store, "a", 0).await;
        assert_eq!(host(store, &m).await, "b");
        assert_eq!(store.claim_room(&m, "a").await.expect("claim"), "b");

        let mut conn = store.pool().acquire().await.expect("conn");
        let id = crate::ids::MeetingId::parse(&m).expect("meeting id");
        assert!(
            meetings::set_state(&mut conn, &id, MeetingState::Ended, crate::clock::now_ms())
                .await
                .expect("end")
        );
        assert_eq!(store.placement(&m).await.expect("read"), None);
    }
}
