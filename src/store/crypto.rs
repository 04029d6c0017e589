//! What end-to-end encryption keeps in our database (the crypto store is a second
//! database, owned by matrix-sdk-crypto): our device, where the to-device stream stands,
//! encryption input not yet fed to the crypto store, events parked until their room key
//! arrives, and rooms' members and settings for encrypting. In a cluster each node keeps
//! its own device, to-device stream and input (named by its node id); the cross-signing
//! keys are shared, and the lock that serialises their creation lives here too.

use std::borrow::Cow;

use sqlx::Row;
use sqlx::pool::PoolConnection;

use super::{Connection, Store, StoreError};
use crate::clock::now_ms;

/// Names in `crypto_state`.
pub const DEVICE_ID: &str = "device_id";
pub const SYNC_TOKEN: &str = "sync_token";
pub const CROSS_SIGNING: &str = "cross_signing";

/// The name of a per-device value (`DEVICE_ID`, `SYNC_TOKEN`) for `node`: a single node
/// (`None`) keeps the names it had before clustering; a cluster node's carry its id
/// (which the config limits to letters, digits, `.`, `_` and `-`).
pub fn per_node<'a>(name: &'a str, node: Option<&str>) -> Cow<'a, str> {
    match node {
        None => Cow::Borrowed(name),
        Some(node) => Cow::Owned(format!("{name}:{node}")),
    }
}

/// The `crypto_inbox.node_id` of `node`'s input.
fn inbox_node(node: Option<&str>) -> &str {
    node.unwrap_or("")
}

pub async fn state(conn: &mut Connection, name: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT value FROM crypto_state WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn set_state(conn: &mut Connection, name: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO crypto_state (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = $2",
    )
    .bind(name)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores encryption input for `node`'s device (`None`: a single node's), inside the
/// caller's transaction (with the events or the sync token it came with).
pub async fn push_input(
    conn: &mut Connection,
    node: Option<&str>,
    input_json: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO crypto_inbox (input_json, received_at, node_id) VALUES ($1, $2, $3)")
        .bind(input_json)
        .bind(now_ms())
        .bind(inbox_node(node))
        .execute(conn)
        .await?;
    Ok(())
}

/// One stored batch of encryption input.
#[derive(Debug, Clone)]
pub struct StoredInput {
    pub seq: i64,
    pub json: String,
}

/// A parked event whose room key arrived or whose wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub inbox_seq: i64,
    pub room_id: String,
}

impl Store {
    /// The oldest encryption input for `node`'s device not yet fed, in arrival order.
    pub async fn pending_crypto_input(
        &self,
        node: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredInput>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, input_json FROM crypto_inbox WHERE node_id = $1 ORDER BY seq LIMIT $2",
        )
        .bind(inbox_node(node))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredInput {
                    seq: row.try_get(0)?,
                    json: row.try_get(1)?,
                })
            })
            .collect()
    }

    /// Forgets input the crypto store has taken.
    pub async fn crypto_input_fed(&self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM crypto_inbox WHERE seq = $1")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Makes the events waiting for `session_id` pending again; returns how many.
    pub async fn unpark_session(&self, session_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE inbox SET processed_at = NULL WHERE seq IN \
             (SELECT inbox_seq FROM parked_events WHERE session_id = $1)",
        )
        .bind(session_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM parked_events WHERE session_id = $1")
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Drops the parked events that waited since before `parked_before` (ms); returns
    /// them, for counting and logging.
    pub async fn give_up_parked(&self, parked_before: i64) -> Result<Vec<Parked>, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT inbox_seq, room_id FROM parked_events WHERE parked_at < $1 ORDER BY inbox_seq",
        )
        .bind(parked_before)
        .fetch_all(&mut *tx)
        .await?;
        let dropped = rows
            .iter()
            .map(|row| {
                Ok(Parked {
                    inbox_seq: row.try_get(0)?,
                    room_id: row.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        sqlx::query("DELETE FROM parked_events WHERE parked_at < $1")
            .bind(parked_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(dropped)
    }

    /// The sessions parked events wait for: (room, session).
    pub async fn parked_sessions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT room_id, session_id FROM parked_events ORDER BY room_id, session_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    pub async fn parked_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM parked_events")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// The advisory lock key of the cross-signing identity's creation ("tvxs"): one node at a
/// time decides whether to create it or to sign its device with the kept one.
pub const CROSS_SIGNING_LOCK_KEY: i64 = 0x7476_7873;

/// Held while a node creates the cross-signing identity or signs its device with it, so
/// that nodes starting together on a new database make one identity, not one each. On
/// PostgreSQL a session advisory lock on a pooled connection: it outlives the HTTP calls
/// made under it without holding a transaction open, and goes with the connection if
/// the process dies. SQLite serves one node only: nothing to lock.
pub struct CrossSigningLock {
    conn: Option<PoolConnection<sqlx::Any>>,
}

impl CrossSigningLock {
    /// Releases the lock and gives the connection back to the pool.
    pub async fn release(mut self) -> Result<(), StoreError> {
        if let Some(mut conn) = self.conn.take() {
            let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                .bind(CROSS_SIGNING_LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if !unlocked {
                return Err(StoreError::Corrupt {
                    table: "pg_locks",
                    detail: "the cross-signing lock was not held by its connection".into(),
                });
            }
        }
        Ok(())
    }
}

impl Drop for CrossSigningLock {
    /// Not released (an error on the way): the connection is closed rather than given
    /// back to the pool with the lock still held; the server frees the lock with it.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

impl Store {
    /// Waits for the cross-signing lock (see [`CrossSigningLock`]).
    pub async fn lock_cross_signing(&self) -> Result<CrossSigningLock, StoreError> {
        if self.dialect == super::Dialect::Sqlite {
            return Ok(CrossSigningLock { conn: None });
        }
        let mut conn = self.pool.acquire().await?;
        // `pg_advisory_lock` returns void, which the Any driver cannot decode.
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_lock($1)) AS l")
            .bind(CROSS_SIGNING_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        Ok(CrossSigningLock { conn: Some(conn) })
    }

    /// A single node's device becomes cluster node `node`'s (the first start of a former
    /// single node with `cluster` configured), with its to-device stream and pending
    /// input, so that its crypto store is used, not set aside. Returns the device id, or
    /// `None` when there is no single node's device or `node` has one already. Once
    /// only: the single node's rows are moved, not copied, so no other node takes it too.
    pub async fn adopt_single_node_device(&self, node: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin().await?;
        if state(&mut tx, &per_node(DEVICE_ID, Some(node)))
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let device: Option<String> =
            sqlx::query_scalar("DELETE FROM crypto_state WHERE name = $1 RETURNING value")
                .bind(DEVICE_ID)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(device) = device else {
            return Ok(None);
        };
        set_state(&mut tx, &per_node(DEVICE_ID, Some(node)), &device).await?;
        let token: Option<String> =
            sqlx::query_scalar("DELETE FROM crypto_state WHERE name = $1 RETURNING value")
                .bind(SYNC_TOKEN)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(token) = token {
            set_state(&mut tx, &per_node(SYNC_TOKEN, Some(node)), &token).await?;
        }
        sqlx::query("UPDATE crypto_inbox SET node_id = $1 WHERE node_id = ''")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(device))
    }
}

/// Parks an encrypted event until its room key arrives (inside the inbox transaction
/// that marks it processed).
pub async fn park(
    conn: &mut Connection,
    inbox_seq: i64,
    room_id: &str,
    session_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO parked_events (inbox_seq, room_id, session_id, parked_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (inbox_seq) DO NOTHING",
    )
    .bind(inbox_seq)
    .bind(room_id)
    .bind(session_id)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// What the outbound worker needs to encrypt for a room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomCrypto {
    /// Whether we know if the room is encrypted (from its state, an invite, or asking).
    pub encryption_known: bool,
    /// The room's `m.room.encryption` content; `None`: clear, or not known.
    pub encryption_json: Option<String>,
    pub history_visibility: Option<String>,
    pub members_loaded: bool,
}

pub async fn room(conn: &mut Connection, room_id: &str) -> Result<RoomCrypto, StoreError> {
    let row = sqlx::query(
        "SELECT encryption_json, history_visibility, members_loaded, encrypted FROM rooms WHERE room_id = $1",
    )
    .bind(room_id)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(row) => {
            let encrypted = row.try_get::<i64, _>(3)? != 0;
            let json: Option<String> = row.try_get(0)?;
            RoomCrypto {
                encryption_known: encrypted || json.is_some(),
                // `''`: asked, and clear. A room known encrypted before its settings (an
                // invite's stripped state) has the defaults.
                encryption_json: match json {
                    Some(json) if !json.is_empty() => Some(json),
                    _ if encrypted => Some("{}".to_owned()),
                    _ => None,
                },
                history_visibility: row.try_get(1)?,
                members_loaded: row.try_get::<i64, _>(2)? != 0,
            }
        }
        None => RoomCrypto::default(),
    })
}

/// Records a room's `m.room.encryption` content (encryption is never turned off).
pub async fn set_room_encryption(
    conn: &mut Connection,
    room_id: &str,
    content_json: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rooms (room_id, encrypted, encryption_notice_sent, updated_at, encryption_json) \
         VALUES ($1, 1, 0, $2, $3) \
         ON CONFLICT (room_id) DO UPDATE SET encrypted = 1, encryption_json = $3, updated_at = $2",
    )
    .bind(room_id)
    .bind(now_ms())
    .bind(content_json)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that the homeserver said the room is not encrypted (until an
/// `m.room.encryption` event says otherwise).
pub async fn set_room_clear(conn: &mut Connection, room_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rooms (room_id, encrypted, encryption_notice_sent, updated_at, encryption_json) \
         VALUES ($1, 0, 0, $2, '') \
         ON CONFLICT (room_id) DO UPDATE SET encryption_json = '', updated_at = $2 \
         WHERE rooms.encrypted = 0",
    )
    .bind(room_id)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_history_visibility(
    conn: &mut Connection,
    room_id: &str,
    visibility: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rooms (room_id, encrypted, encryption_notice_sent, updated_at, history_visibility) \
         VALUES ($1, 0, 0, $2, $3) \
         ON CONFLICT (room_id) DO UPDATE SET history_visibility = $3, updated_at = $2",
    )
    .bind(room_id)
    .bind(now_ms())
    .bind(visibility)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records one membership (`join`, `invite`, `leave`, `ban`, `knock`).
pub async fn set_member(
    conn: &mut Connection,
    room_id: &str,
    user_id: &str,
    membership: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO room_members (room_id, user_id, membership) VALUES ($1, $2, $3) \
         ON CONFLICT (room_id, user_id) DO UPDATE SET membership = $3",
    )
    .bind(room_id)
    .bind(user_id)
    .bind(membership)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a room's member list as the homeserver gave it (the current truth: it
/// overrides what earlier events said) and marks it loaded.
pub async fn load_members(
    conn: &mut Connection,
    room_id: &str,
    members: &[(String, String)],
) -> Result<(), StoreError> {
    for (user, membership) in members {
        sqlx::query(
            "INSERT INTO room_members (room_id, user_id, membership) VALUES ($1, $2, $3) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = $3",
        )
        .bind(room_id)
        .bind(user)
        .bind(membership)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO rooms (room_id, encrypted, encryption_notice_sent, updated_at, members_loaded) \
         VALUES ($1, 0, 0, $2, 1) \
         ON CONFLICT (room_id) DO UPDATE SET members_loaded = 1, updated_at = $2",
    )
    .bind(room_id)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Users of a room with one of `memberships`.
pub async fn members(
    conn: &mut Connection,
    room_id: &str,
    memberships: &[&str],
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT user_id, membership FROM room_members WHERE room_id = $1 ORDER BY user_id",
    )
    .bind(room_id)
    .fetch_all(conn)
    .await?;
    let mut users = Vec::new();
    for row in rows {
        let membership: String = row.try_get(1)?;
        if memberships.contains(&membership.as_str()) {
            users.push(row.try_get(0)?);
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::inbox::NewInboxEvent;
    use crate::store::testing::both_dialects;

    both_dialects!(
        parked_events_come_back_when_their_key_arrives,
        |store: Store| async move {
            let event = |id: &str| NewInboxEvent {
                event_id: id.into(),
                room_id: Some("!r:x".into()),
                json: "{}".into(),
            };
            store
                .store_transaction("t", &[event("$a"), event("$b")])
                .await
                .expect("store");
            let batch = store.pending_inbox(10).await.expect("pending");
            let mut tx = store.begin().await.expect("begin");
            for e in &batch {
                park(
                    &mut tx,
                    e.seq,
                    "!r:x",
                    if e.event_id == "$a" { "s1" } else { "s2" },
                )
                .await
                .expect("park");
                crate::store::inbox::mark_processed(&mut tx, e.seq)
                    .await
                    .expect("processed");
            }
            tx.commit().await.expect("commit");
            assert!(store.pending_inbox(10).await.expect("pending").is_empty());
            assert_eq!(store.unpark_session("s1").await.expect("unpark"), 1);
            assert_eq!(store.unpark_session("s1").await.expect("again"), 0);
            let pending = store.pending_inbox(10).await.expect("pending");
            assert_eq!(pending.len(), 1);
            assert_eq!(pending[0].event_id, "$a");
            let dropped = store.give_up_parked(now_ms() + 1).await.expect("give up");
            assert_eq!(dropped.len(), 1);
            assert_eq!(store.parked_count().await.expect("count"), 0);
        }
    );

    both_dialects!(members_and_settings, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        assert_eq!(
            room(&mut conn, "!r:x").await.expect("room"),
            RoomCrypto::default()
        );
        load_members(
            &mut conn,
            "!r:x",
            &[
                ("@a:x".into(), "join".into()),
                ("@b:x".into(), "join".into()),
                ("@c:x".into(), "invite".into()),
            ],
        )
        .await
        .expect("load");
        // Events after the load update it.
        set_member(&mut conn, "!r:x", "@b:x", "leave")
            .await
            .expect("member");
        set_room_encryption(&mut conn, "!r:x", r#"{"algorithm":"m.megolm.v1.aes-sha2"}"#)
            .await
            .expect("encryption");
        let info = room(&mut conn, "!r:x").await.expect("room");
        assert!(info.members_loaded);
        assert!(info.encryption_json.is_some());
        assert_eq!(
            members(&mut conn, "!r:x", &["join"])
                .await
                .expect("members"),
            ["@a:x"]
        );
        assert_eq!(
            members(&mut conn, "!r:x", &["join", "invite"])
                .await
                .expect("members"),
            ["@a:x", "@c:x"]
        );
        set_state(&mut conn, DEVICE_ID, "TVABC").await.expect("set");
        set_state(&mut conn, DEVICE_ID, "TVDEF").await.expect("set");
        assert_eq!(
            state(&mut conn, DEVICE_ID).await.expect("get").as_deref(),
            Some("TVDEF")
        );
    });

    both_dialects!(
        each_node_has_its_own_device_stream_and_input,
        |store: Store| async move {
            let mut tx = store.begin().await.expect("begin");
            push_input(&mut tx, None, "single").await.expect("push");
            push_input(&mut tx, Some("n1"), "one-a")
                .await
                .expect("push");
            push_input(&mut tx, Some("n2"), "two").await.expect("push");
            push_input(&mut tx, Some("n1"), "one-b")
                .await
                .expect("push");
            for (node, device) in [(None, "TVSINGLE"), (Some("n1"), "TVONE")] {
                set_state(&mut tx, &per_node(DEVICE_ID, node), device)
                    .await
                    .expect("device");
            }
            tx.commit().await.expect("commit");
            let json = |node| {
                let store = store.clone();
                async move {
                    store
                        .pending_crypto_input(node, 10)
                        .await
                        .expect("pending")
                        .into_iter()
                        .map(|i| i.json)
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(json(Some("n1")).await, ["one-a", "one-b"]);
            assert_eq!(json(Some("n2")).await, ["two"]);
            assert_eq!(json(None).await, ["single"]);
            let first = store
                .pending_crypto_input(Some("n1"), 1)
                .await
                .expect("pending");
            store.crypto_input_fed(first[0].seq).await.expect("fed");
            assert_eq!(json(Some("n1")).await, ["one-b"]);
            assert_eq!(
                json(Some("n2")).await,
                ["two"],
                "another node's input stays"
            );
            let mut conn = store.pool().acquire().await.expect("conn");
            assert_eq!(
                state(&mut conn, &per_node(DEVICE_ID, Some("n1")))
                    .await
                    .expect("get")
                    .as_deref(),
                Some("TVONE")
            );
            assert_eq!(
                state(&mut conn, DEVICE_ID).await.expect("get").as_deref(),
                Some("TVSINGLE"),
                "a single node's names are unchanged"
            );
            assert_eq!(
                state(&mut conn, &per_node(DEVICE_ID, Some("n2")))
                    .await
                    .expect("get"),
                None
            );
        }
    );

    both_dialects!(
        a_former_single_node_s_device_goes_to_one_cluster_node,
        |store: Store| async move {
            assert_eq!(
                store.adopt_single_node_device("n1").await.expect("adopt"),
                None,
                "no single node's device"
            );
            let mut tx = store.begin().await.expect("begin");
            set_state(&mut tx, DEVICE_ID, "TVOLD")
                .await
                .expect("device");
            set_state(&mut tx, SYNC_TOKEN, "s42").await.expect("token");
            push_input(&mut tx, None, "waiting").await.expect("push");
            tx.commit().await.expect("commit");

            assert_eq!(
                store.adopt_single_node_device("n1").await.expect("adopt"),
                Some("TVOLD".to_owned())
            );
            assert_eq!(
                store.adopt_single_node_device("n2").await.expect("adopt"),
                None,
                "taken by node 1"
            );
            assert_eq!(
                store.adopt_single_node_device("n1").await.expect("again"),
                None,
                "node 1 has its device"
            );
            let mut conn = store.pool().acquire().await.expect("conn");
            assert_eq!(
                state(&mut conn, &per_node(DEVICE_ID, Some("n1")))
                    .await
                    .expect("get")
                    .as_deref(),
                Some("TVOLD")
            );
            assert_eq!(
                state(&mut conn, &per_node(SYNC_TOKEN, Some("n1")))
                    .await
                    .expect("get")
                    .as_deref(),
                Some("s42")
            );
            assert_eq!(state(&mut conn, DEVICE_ID).await.expect("get"), None);
            assert_eq!(state(&mut conn, SYNC_TOKEN).await.expect("get"), None);
            drop(conn);
            let moved = store
                .pending_crypto_input(Some("n1"), 10)
                .await
                .expect("pending");
            assert_eq!(moved.len(), 1);
            assert_eq!(moved[0].json, "waiting");
            assert!(
                store
                    .pending_crypto_input(None, 10)
                    .await
                    .expect("pending")
                    .is_empty()
            );
        }
    );

    /// Whether another session can take the cross-signing lock now (and gives it back).
    async fn lock_is_free(uri: &str) -> bool {
        use sqlx::Connection as _;
        let mut other = sqlx::AnyConnection::connect(uri).await.expect("connect");
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(CROSS_SIGNING_LOCK_KEY)
            .fetch_one(&mut other)
            .await
            .expect("try");
        if free {
            let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                .bind(CROSS_SIGNING_LOCK_KEY)
                .fetch_one(&mut other)
                .await
                .expect("unlock");
        }
        other.close().await.expect("close");
        free
    }

    #[tokio::test]
    async fn nodes_take_turns_with_the_cross_signing_identity() {
        let db = crate::store::testing::postgres().await;
        let store = db.store.clone();
        let held = store.lock_cross_signing().await.expect("lock");
        assert!(!lock_is_free(&db.uri).await, "held by the first node");
        // A second node waits for it, and gets it once the first releases it.
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.lock_cross_signing().await.expect("second lock") }
        });
        held.release().await.expect("release");
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the second node gets the lock")
            .expect("task");
        assert!(!lock_is_free(&db.uri).await, "now held by the second");
        // Dropped on an error path: the connection goes, and the lock with it.
        drop(second);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !lock_is_free(&db.uri).await {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock outlived its dropped connection"
            );
            tokio::task::yield_now().await;
        }
        // The pool still works, and the lock is free for the next.
        store
            .lock_cross_signing()
            .await
            .expect("lock again")
            .release()
            .await
            .expect("release");
        assert!(lock_is_free(&db.uri).await);
    }

    #[tokio::test]
    async fn sqlite_has_one_node_and_nothing_to_lock() {
        let db = crate::store::testing::sqlite().await;
        let first = db.store.lock_cross_signing().await.expect("lock");
        let second = db.store.lock_cross_signing().await.expect("no wait");
        first.release().await.expect("release");
        second.release().await.expect("release");
    }
}
