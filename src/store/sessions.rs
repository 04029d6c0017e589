//! Participant sessions: one row per connection to a meeting, opened on join and closed
//! on leave, so attendance survives a restart of the service.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Connection, StoreError};
use crate::ids::MeetingId;
use crate::meeting::Session;

/// `SELECT <every column> FROM participant_sessions <rest>`, as a `&'static str`.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT meeting_id, sid, identity, attendee_key, display_name, matrix_user_id, \
             joined_at, left_at, last_seen_at FROM participant_sessions ",
            $rest
        )
    };
}

fn from_row(row: &AnyRow) -> Result<Session, StoreError> {
    let meeting_id: String = row.try_get("meeting_id")?;
    Ok(Session {
        meeting_id: MeetingId::parse(&meeting_id).map_err(|e| StoreError::Corrupt {
            table: "participant_sessions",
            detail: format!("meeting id `{meeting_id}`: {e}"),
        })?,
        sid: row.try_get("sid")?,
        identity: row.try_get("identity")?,
        attendee_key: row.try_get("attendee_key")?,
        display_name: row.try_get("display_name")?,
        matrix_user_id: row.try_get("matrix_user_id")?,
        joined_at: row.try_get("joined_at")?,
        left_at: row.try_get("left_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
    })
}

/// Records a session; false if it was recorded already (an event seen twice).
pub async fn open(conn: &mut Connection, session: &Session) -> Result<bool, StoreError> {
    open_on(conn, session, None).await
}

/// Records a session reported by `node`'s SFU (in a cluster; `None`: a single node).
pub async fn open_on(
    conn: &mut Connection,
    session: &Session,
    node: Option<&str>,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO participant_sessions (meeting_id, sid, identity, attendee_key, \
         display_name, matrix_user_id, joined_at, left_at, last_seen_at, node_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (meeting_id, sid) DO NOTHING",
    )
    .bind(session.meeting_id.as_str())
    .bind(&session.sid)
    .bind(&session.identity)
    .bind(&session.attendee_key)
    .bind(&session.display_name)
    .bind(session.matrix_user_id.as_deref())
    .bind(session.joined_at)
    .bind(session.left_at)
    .bind(session.last_seen_at)
    .bind(node)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Closes an open session at `at`; false if it was not open (unknown, or closed already).
pub async fn close(
    conn: &mut Connection,
    meeting_id: &MeetingId,
    sid: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let closed = sqlx::query(
        "UPDATE participant_sessions SET left_at = $3, last_seen_at = $3 \
         WHERE meeting_id = $1 AND sid = $2 AND left_at IS NULL",
    )
    .bind(meeting_id.as_str())
    .bind(sid)
    .bind(at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(closed == 1)
}

/// Closes every session of a meeting still open, at `at` (the meeting ended).
pub async fn close_all(
    conn: &mut Connection,
    meeting_id: &MeetingId,
    at: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE participant_sessions SET left_at = $2, last_seen_at = $2 \
         WHERE meeting_id = $1 AND left_at IS NULL",
    )
    .bind(meeting_id.as_str())
    .bind(at)
    .execute(conn)
    .await?
    .rows_affected())
}

/// After a restart nobody is connected any more: every open session ends when it was
/// last seen alive. Returns how many were closed.
pub async fn close_stale_at_last_seen(conn: &mut Connection) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("UPDATE participant_sessions SET left_at = last_seen_at WHERE left_at IS NULL")
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Marks every open session as alive at `at` (called periodically while running, so a
/// crash loses at most one period of attendance).
pub async fn touch_open(conn: &mut Connection, at: i64) -> Result<u64, StoreError> {
    touch_open_on(conn, at, None).await
}

/// As [`touch_open`], for the sessions `node`'s SFU reported (`None`: all of them, a
/// single node). A cluster node touches only its own: a dead node's sessions must age.
pub async fn touch_open_on(
    conn: &mut Connection,
    at: i64,
    node: Option<&str>,
) -> Result<u64, StoreError> {
    let query = match node {
        None => {
            sqlx::query("UPDATE participant_sessions SET last_seen_at = $1 WHERE left_at IS NULL")
                .bind(at)
        }
        Some(node) => sqlx::query(
            "UPDATE participant_sessions SET last_seen_at = $1 \
             WHERE left_at IS NULL AND node_id = $2",
        )
        .bind(at)
        .bind(node),
    };
    Ok(query.execute(conn).await?.rows_affected())
}

/// A cluster node's start: the sessions its previous run left open end when they were
/// last seen alive (its SFU starts empty). Returns how many were closed.
pub async fn close_stale_of_node(conn: &mut Connection, node: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE participant_sessions SET left_at = last_seen_at \
         WHERE left_at IS NULL AND node_id = $1",
    )
    .bind(node)
    .execute(conn)
    .await?
    .rows_affected())
}

/// How many sessions of the meeting are open.
pub async fn open_count(conn: &mut Connection, meeting_id: &MeetingId) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) FROM participant_sessions WHERE meeting_id = $1 AND left_at IS NULL",
    )
    .bind(meeting_id.as_str())
    .fetch_one(conn)
    .await?;
    Ok(row.try_get(0)?)
}

/// The latest time anyone left the meeting, if anyone did.
pub async fn last_left_at(
    conn: &mut Connection,
    meeting_id: &MeetingId,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query("SELECT MAX(left_at) FROM participant_sessions WHERE meeting_id = $1")
        .bind(meeting_id.as_str())
        .fetch_one(conn)
        .await?;
    Ok(row.try_get(0)?)
}

/// One session of a meeting.
pub async fn get(
    conn: &mut Connection,
    meeting_id: &MeetingId,
    sid: &str,
) -> Result<Option<Session>, StoreError> {
    let row = sqlx::query(select!("WHERE meeting_id = $1 AND sid = $2"))
        .bind(meeting_id.as_str())
        .bind(sid)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every session of a meeting, in order of arrival.
pub async fn list_for_meeting(
    conn: &mut Connection,
    meeting_id: &MeetingId,
) -> Result<Vec<Session>, StoreError> {
    let rows = sqlx::query(select!("WHERE meeting_id = $1 ORDER BY joined_at, sid"))
        .bind(meeting_id.as_str())
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meeting::Meeting;
    use crate::store::testing::both_dialects;
    use crate::store::{Store, meetings};

    fn session(meeting: &Meeting, sid: &str, joined_at: i64) -> Session {
        Session {
            meeting_id: meeting.id.clone(),
            sid: sid.into(),
            identity: format!("b-1-{sid}"),
            attendee_key: "b-1".into(),
            display_name: "Zoé".into(),
            matrix_user_id: None,
            joined_at,
            left_at: None,
            last_seen_at: joined_at,
        }
    }

    both_dialects!(sessions_open_close_and_survive, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let m = Meeting::new("t", None, None, 0).expect("valid");
        meetings::create(&mut conn, &m).await.expect("create");
        assert!(
            open(&mut conn, &session(&m, "PA_a", 10))
                .await
                .expect("open")
        );
        assert!(
            !open(&mut conn, &session(&m, "PA_a", 10))
                .await
                .expect("open"),
            "an event seen twice records one session"
        );
        assert!(
            open(&mut conn, &session(&m, "PA_b", 20))
                .await
                .expect("open")
        );
        assert_eq!(open_count(&mut conn, &m.id).await.expect("count"), 2);
        assert!(close(&mut conn, &m.id, "PA_a", 30).await.expect("close"));
        assert!(!close(&mut conn, &m.id, "PA_a", 31).await.expect("close"));
        assert!(!close(&mut conn, &m.id, "PA_zz", 31).await.expect("close"));
        assert_eq!(last_left_at(&mut conn, &m.id).await.expect("max"), Some(30));
        assert_eq!(touch_open(&mut conn, 40).await.expect("touch"), 1);
        // A restart: the open session ends when it was last seen.
        assert_eq!(close_stale_at_last_seen(&mut conn).await.expect("close"), 1);
        let listed = list_for_meeting(&mut conn, &m.id).await.expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|s| (s.sid.as_str(), s.left_at))
                .collect::<Vec<_>>(),
            vec![("PA_a", Some(30)), ("PA_b", Some(40))]
        );
        assert_eq!(open_count(&mut conn, &m.id).await.expect("count"), 0);
        let one = get(&mut conn, &m.id, "PA_b")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!((one.sid.as_str(), one.left_at), ("PA_b", Some(40)));
        assert!(get(&mut conn, &m.id, "PA_zz").await.expect("get").is_none());
        assert!(
            open(&mut conn, &session(&m, "PA_c", 50))
                .await
                .expect("open")
        );
        assert_eq!(close_all(&mut conn, &m.id, 60).await.expect("close"), 1);
    });
}
