//! Meetings: created by the bot or an admin, looked up by public id or by the secret
//! slug of their link, and moved forward through their states.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Connection, StoreError};
use crate::ids::{MeetingId, MeetingSlug};
use crate::meeting::{AccessLevel, Meeting, MeetingState};

/// `SELECT <every column> FROM meetings <rest>`, as a `&'static str`. The thread root
/// is the event the link notice became, kept on its outbound row; `<rest>` names the
/// meeting's columns without a prefix, so the outbound row's are prefixed `o.`.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT * FROM (SELECT m.id, m.slug, m.title, m.matrix_room_id, m.creator, \
             m.state, m.created_at, m.started_at, m.ended_at, m.link_notice_id, \
             o.event_id AS thread_root_event_id, m.peak_participants, m.empty_since, \
             m.widget_state_key, m.access, m.lobby_notice_id, m.sfu_room, m.call_room_id FROM meetings m LEFT JOIN outbound o ON o.id = m.link_notice_id) \
             AS meetings ",
            $rest
        )
    };
}

fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: "meetings",
        detail: detail.into(),
    }
}

fn from_row(row: &AnyRow) -> Result<Meeting, StoreError> {
    let id: String = row.try_get("id")?;
    let slug: String = row.try_get("slug")?;
    let state: String = row.try_get("state")?;
    Ok(Meeting {
        id: MeetingId::parse(&id).map_err(|e| corrupt(format!("id `{id}`: {e}")))?,
        slug: MeetingSlug::parse(&slug).map_err(|e| corrupt(format!("slug of {id}: {e}")))?,
        title: row.try_get("title")?,
        matrix_room_id: row.try_get("matrix_room_id")?,
        creator: row.try_get("creator")?,
        state: MeetingState::parse(&state)
            .ok_or_else(|| corrupt(format!("state `{state}` of {id}")))?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        link_notice_id: row.try_get("link_notice_id")?,
        thread_root_event_id: row.try_get("thread_root_event_id")?,
        peak_participants: row.try_get("peak_participants")?,
        empty_since: row.try_get("empty_since")?,
        widget_state_key: row.try_get("widget_state_key")?,
        access: {
            let access: String = row.try_get("access")?;
            AccessLevel::parse(&access)
                .ok_or_else(|| corrupt(format!("access `{access}` of {id}")))?
        },
        lobby_notice_id: row.try_get("lobby_notice_id")?,
        sfu_room: row.try_get("sfu_room")?,
        call_room_id: row.try_get("call_room_id")?,
    })
}

/// Stores a new meeting. Id and slug are random; a collision is a query error.
pub async fn create(conn: &mut Connection, meeting: &Meeting) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO meetings (id, slug, title, matrix_room_id, creator, state, created_at, \
         started_at, ended_at, link_notice_id, peak_participants, empty_since, \
         widget_state_key, access, lobby_notice_id, sfu_room, call_room_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(meeting.id.as_str())
    .bind(meeting.slug.expose())
    .bind(&meeting.title)
    .bind(meeting.matrix_room_id.as_deref())
    .bind(meeting.creator.as_deref())
    .bind(meeting.state.as_str())
    .bind(meeting.created_at)
    .bind(meeting.started_at)
    .bind(meeting.ended_at)
    .bind(meeting.link_notice_id)
    .bind(meeting.peak_participants)
    .bind(meeting.empty_since)
    .bind(meeting.widget_state_key.as_deref())
    .bind(meeting.access.as_str())
    .bind(meeting.lobby_notice_id)
    .bind(meeting.sfu_room.as_deref())
    .bind(meeting.call_room_id.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_by_id(
    conn: &mut Connection,
    id: &MeetingId,
) -> Result<Option<Meeting>, StoreError> {
    let row = sqlx::query(select!("WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The meeting a join link points to. The lookup goes through a unique index, so its
/// time says nothing useful about how close a guess was.
pub async fn get_by_slug(
    conn: &mut Connection,
    slug: &MeetingSlug,
) -> Result<Option<Meeting>, StoreError> {
    let row = sqlx::query(select!("WHERE slug = $1"))
        .bind(slug.expose())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every meeting started from a Matrix room, newest first.
pub async fn list_by_room(
    conn: &mut Connection,
    matrix_room_id: &str,
) -> Result<Vec<Meeting>, StoreError> {
    let rows = sqlx::query(select!(
        "WHERE matrix_room_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(matrix_room_id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The room's meeting that has not ended, if any (at most one by the bridge's rule);
/// Element Call calls are not the room's meeting (see [`live_calls_for_room`]).
pub async fn active_for_room(
    conn: &mut Connection,
    matrix_room_id: &str,
) -> Result<Option<Meeting>, StoreError> {
    let row = sqlx::query(select!(
        "WHERE matrix_room_id = $1 AND state != 'ended' AND sfu_room IS NULL \
         ORDER BY created_at DESC, id LIMIT 1"
    ))
    .bind(matrix_room_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The record of the Element Call call in LiveKit room `sfu_room`, unless it ended.
pub async fn live_call(
    conn: &mut Connection,
    sfu_room: &str,
) -> Result<Option<Meeting>, StoreError> {
    let row = sqlx::query(select!(
        "WHERE sfu_room = $1 AND state != 'ended' ORDER BY created_at DESC, id LIMIT 1"
    ))
    .bind(sfu_room)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The Element Call calls of a Matrix room that have not ended.
pub async fn live_calls_for_room(
    conn: &mut Connection,
    matrix_room_id: &str,
) -> Result<Vec<Meeting>, StoreError> {
    let rows = sqlx::query(select!(
        "WHERE call_room_id = $1 AND state != 'ended' ORDER BY created_at, id"
    ))
    .bind(matrix_room_id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The Element Call calls that have not ended in rooms the bot is not in (whose
/// departures the homeserver never tells us).
pub async fn live_calls_outside_bot_rooms(
    conn: &mut Connection,
) -> Result<Vec<Meeting>, StoreError> {
    let rows = sqlx::query(select!(
        "WHERE call_room_id IS NOT NULL AND matrix_room_id IS NULL AND state != 'ended' \
         ORDER BY created_at, id"
    ))
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Every meeting that has not ended, oldest first (start-up recovery, grace timers).
pub async fn list_not_ended(conn: &mut Connection) -> Result<Vec<Meeting>, StoreError> {
    let rows = sqlx::query(select!("WHERE state != 'ended' ORDER BY created_at, id"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The meeting whose thread starts at `event_id`, if any.
pub async fn get_by_thread_root(
    conn: &mut Connection,
    matrix_room_id: &str,
    event_id: &str,
) -> Result<Option<Meeting>, StoreError> {
    let row = sqlx::query(select!(
        "WHERE matrix_room_id = $1 AND thread_root_event_id = $2"
    ))
    .bind(matrix_room_id)
    .bind(event_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Records which queued request is the meeting's link notice (its thread's root).
pub async fn set_link_notice(
    conn: &mut Connection,
    id: &MeetingId,
    outbound_id: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE meetings SET link_notice_id = $2 WHERE id = $1")
        .bind(id.as_str())
        .bind(outbound_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// For tests: the meeting's link notice went out and became `event_id` (a notice row
/// is queued first for a meeting that has none).
#[cfg(test)]
pub async fn link_notice_sent_as(
    conn: &mut Connection,
    id: &MeetingId,
    event_id: &str,
) -> Result<(), StoreError> {
    let meeting = get_by_id(conn, id).await?.expect("the meeting exists");
    let notice = match meeting.link_notice_id {
        Some(notice) => notice,
        None => {
            let request = serde_json::json!({
                "kind": "send", "room_id": meeting.matrix_room_id,
                "event_type": "m.room.message", "content": {"body": "link"},
            });
            let notice = super::outbound::enqueue(
                conn,
                meeting.matrix_room_id.as_deref(),
                &format!("test-{id}"),
                &request.to_string(),
            )
            .await?;
            set_link_notice(conn, id, notice).await?;
            notice
        }
    };
    sqlx::query("UPDATE outbound SET state = 'sent', event_id = $2 WHERE id = $1")
        .bind(notice)
        .bind(event_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// When the meeting became empty (`None`: someone is in).
pub async fn set_empty_since(
    conn: &mut Connection,
    id: &MeetingId,
    empty_since: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE meetings SET empty_since = $2 WHERE id = $1")
        .bind(id.as_str())
        .bind(empty_since)
        .execute(conn)
        .await?;
    Ok(())
}

/// Raises the peak number of participants to `present` if it is higher.
pub async fn raise_peak(
    conn: &mut Connection,
    id: &MeetingId,
    present: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE meetings SET peak_participants = $2 WHERE id = $1 AND peak_participants < $2",
    )
    .bind(id.as_str())
    .bind(present)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the state key of the widget set for a meeting (`None` once removed).
pub async fn set_widget(
    conn: &mut Connection,
    id: &MeetingId,
    state_key: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE meetings SET widget_state_key = $2 WHERE id = $1")
        .bind(id.as_str())
        .bind(state_key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a meeting to `state` if that is a step forward from where it is
/// (see [`MeetingState::predecessors`]), stamping `started_at` or `ended_at` with
/// `now_ms`. Returns whether it moved: `false` for an unknown id, a repeated step, or a
/// step back. The check and the change are one statement, so two callers racing to end
/// a meeting see exactly one `true`.
pub async fn set_state(
    conn: &mut Connection,
    id: &MeetingId,
    state: MeetingState,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let sql = match state {
        MeetingState::Scheduled => return Ok(false),
        MeetingState::Running => {
            "UPDATE meetings SET state = 'running', started_at = $2 \
             WHERE id = $1 AND state = 'scheduled'"
        }
        MeetingState::Ended => {
            "UPDATE meetings SET state = 'ended', ended_at = $2 \
             WHERE id = $1 AND state IN ('scheduled', 'running')"
        }
    };
    let changed = sqlx::query(sql)
        .bind(id.as_str())
        .bind(now_ms)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::store::Store;
    use crate::store::testing::both_dialects;

    fn meeting(title: &str, room: Option<&str>, created_at: i64) -> Meeting {
        Meeting::new(
            title,
            room.map(str::to_owned),
            Some("@alice:localhost".into()),
            created_at,
        )
        .expect("valid title")
    }

    both_dialects!(meetings_round_trip, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let m = meeting("Point hebdo", Some("!r:localhost"), now_ms());
        create(&mut conn, &m).await.expect("create");
        assert_eq!(
            get_by_id(&mut conn, &m.id).await.expect("get"),
            Some(m.clone())
        );
        assert_eq!(
            get_by_slug(&mut conn, &m.slug).await.expect("get"),
            Some(m.clone())
        );
        assert_eq!(
            get_by_id(&mut conn, &MeetingId::generate())
                .await
                .expect("get"),
            None
        );
        assert_eq!(
            get_by_slug(&mut conn, &MeetingSlug::generate())
                .await
                .expect("get"),
            None
        );
        let admin = Meeting::new("Admin", None, None, 1).expect("valid");
        create(&mut conn, &admin).await.expect("create");
        assert_eq!(
            get_by_id(&mut conn, &admin.id).await.expect("get"),
            Some(admin)
        );
    });

    both_dialects!(slugs_and_ids_are_unique, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let first = meeting("a", None, 1);
        create(&mut conn, &first).await.expect("create");
        let mut same_slug = meeting("b", None, 2);
        same_slug.slug = first.slug.clone();
        assert!(create(&mut conn, &same_slug).await.is_err());
        let mut same_id = meeting("c", None, 3);
        same_id.id = first.id.clone();
        assert!(create(&mut conn, &same_id).await.is_err());
    });

    both_dialects!(listed_by_room_newest_first, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let old = meeting("old", Some("!r:localhost"), 100);
        let new = meeting("new", Some("!r:localhost"), 200);
        let elsewhere = meeting("other", Some("!s:localhost"), 150);
        for m in [&old, &new, &elsewhere] {
            create(&mut conn, m).await.expect("create");
        }
        let listed = list_by_room(&mut conn, "!r:localhost").await.expect("list");
        assert_eq!(listed, vec![new, old]);
        assert!(
            list_by_room(&mut conn, "!none:localhost")
                .await
                .expect("list")
                .is_empty()
        );
    });

    both_dialects!(states_only_move_forward, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let m = meeting("t", None, 1);
        create(&mut conn, &m).await.expect("create");
        let steps = [
            (
                MeetingState::Scheduled,
                5,
                false,
                "nothing moves back to scheduled",
            ),
            (MeetingState::Running, 10, true, "starts"),
            (MeetingState::Running, 11, false, "already running"),
            (MeetingState::Ended, 20, true, "ends"),
            (MeetingState::Ended, 21, false, "already ended"),
            (MeetingState::Running, 22, false, "no way back"),
        ];
        for (state, at, moved, why) in steps {
            assert_eq!(
                set_state(&mut conn, &m.id, state, at).await.expect("set"),
                moved,
                "{why}"
            );
        }
        let stored = get_by_id(&mut conn, &m.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            (stored.state, stored.started_at, stored.ended_at),
            (MeetingState::Ended, Some(10), Some(20))
        );

        // Nobody came: scheduled straight to ended, never started.
        let empty = meeting("empty", None, 1);
        create(&mut conn, &empty).await.expect("create");
        assert!(
            set_state(&mut conn, &empty.id, MeetingState::Ended, 30)
                .await
                .expect("set")
        );
        let stored = get_by_id(&mut conn, &empty.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!((stored.started_at, stored.ended_at), (None, Some(30)));
        assert!(
            !set_state(&mut conn, &MeetingId::generate(), MeetingState::Ended, 1)
                .await
                .expect("set")
        );
    });

    both_dialects!(bridge_fields_round_trip, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let m = meeting("t", Some("!r:localhost"), 1);
        create(&mut conn, &m).await.expect("create");
        assert_eq!(
            active_for_room(&mut conn, "!r:localhost")
                .await
                .expect("get"),
            Some(m.clone())
        );
        link_notice_sent_as(&mut conn, &m.id, "$root")
            .await
            .expect("set");
        set_empty_since(&mut conn, &m.id, Some(7))
            .await
            .expect("set");
        raise_peak(&mut conn, &m.id, 3).await.expect("raise");
        raise_peak(&mut conn, &m.id, 2).await.expect("never lowers");
        set_widget(&mut conn, &m.id, Some("w1")).await.expect("set");
        let stored = get_by_thread_root(&mut conn, "!r:localhost", "$root")
            .await
            .expect("get")
            .expect("found by its thread");
        assert_eq!(
            (
                stored.thread_root_event_id.as_deref(),
                stored.empty_since,
                stored.peak_participants,
                stored.widget_state_key.as_deref()
            ),
            (Some("$root"), Some(7), 3, Some("w1"))
        );
        assert_eq!(list_not_ended(&mut conn).await.expect("list").len(), 1);
        assert!(
            get_by_thread_root(&mut conn, "!other:localhost", "$root")
                .await
                .expect("get")
                .is_none()
        );
        set_state(&mut conn, &m.id, MeetingState::Ended, 9)
            .await
            .expect("end");
        assert!(
            active_for_room(&mut conn, "!r:localhost")
                .await
                .expect("get")
                .is_none()
        );
        assert!(list_not_ended(&mut conn).await.expect("list").is_empty());
    });

    both_dialects!(corrupt_rows_are_reported, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let m = meeting("t", None, 1);
        create(&mut conn, &m).await.expect("create");
        sqlx::query("UPDATE meetings SET slug = 'short' WHERE id = $1")
            .bind(m.id.as_str())
            .execute(&mut *conn)
            .await
            .expect("update");
        let err = get_by_id(&mut conn, &m.id).await.expect_err("corrupt");
        assert!(
            matches!(
                err,
                StoreError::Corrupt {
                    table: "meetings",
                    ..
                }
            ),
            "{err}"
        );
    });

    /// An install upgraded with a meeting in its thread, a message waiting for that
    /// thread and a link notice not sent yet: the thread roots move to the link notices'
    /// outbound rows and the waiting message still reaches its thread.
    async fn thread_roots_survive_the_move_to_outbound_rows(db: crate::store::testing::TestDb) {
        let store = db.store;
        store.migrate_to(8).await.expect("migrate to 0008");
        let mut conn = store.pool().acquire().await.expect("conn");
        let sent = meeting("Point hebdo", Some("!r:localhost"), 1);
        let waiting = meeting("Comité", Some("!r:localhost"), 2);
        for (m, root) in [(&sent, Some("$root")), (&waiting, None)] {
            sqlx::query(
                "INSERT INTO meetings (id, slug, title, matrix_room_id, creator, state, \
                 created_at, thread_root_event_id, peak_participants) \
                 VALUES ($1, $2, $3, '!r:localhost', NULL, 'scheduled', 1, $4, 0)",
            )
            .bind(m.id.as_str())
            .bind(m.slug.expose())
            .bind(&m.title)
            .bind(root)
            .execute(&mut *conn)
            .await
            .expect("a meeting as 0008 kept it");
        }
        let send = |extra: &str| {
            format!(
                r#"{{"kind":"send","room_id":"!r:localhost","event_type":"m.room.message","content":{{"body":"b"}}{extra}}}"#
            )
        };
        let rows = [
            (
                "t1",
                send(&format!(r#","root_of":"{}""#, sent.id)),
                "sent",
                Some(r#"{"event_id":"$root"}"#),
            ),
            (
                "t2",
                send(&format!(r#","in_thread_of":"{}""#, sent.id)),
                "pending",
                None,
            ),
            (
                "t3",
                send(&format!(r#","root_of":"{}""#, waiting.id)),
                "pending",
                None,
            ),
        ];
        let mut ids = Vec::new();
        for (txn, request, state, result) in rows {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO outbound (room_id, txn_id, request_json, state, attempts, \
                 next_attempt_at, result_json, created_at) \
                 VALUES ('!r:localhost', $1, $2, $3, 0, 0, $4, 0) RETURNING id",
            )
            .bind(txn)
            .bind(request)
            .bind(state)
            .bind(result)
            .fetch_one(&mut *conn)
            .await
            .expect("an outbound row as 0008 kept it");
            ids.push(id);
        }
        drop(conn);

        store.migrate().await.expect("migrate to the latest");
        let mut conn = store.pool().acquire().await.expect("conn");
        let stored = get_by_thread_root(&mut conn, "!r:localhost", "$root")
            .await
            .expect("read")
            .expect("the meeting is still found by its thread");
        assert_eq!(
            (
                stored.id.as_str(),
                stored.link_notice_id,
                stored.thread_root_event_id.as_deref()
            ),
            (sent.id.as_str(), Some(ids[0]), Some("$root"))
        );
        let stored = get_by_id(&mut conn, &waiting.id)
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(
            (stored.link_notice_id, stored.thread_root_event_id),
            (Some(ids[2]), None)
        );
        let requests: Vec<String> = sqlx::query_scalar(
            "SELECT request_json FROM outbound WHERE id IN ($1, $2) ORDER BY id",
        )
        .bind(ids[1])
        .bind(ids[2])
        .fetch_all(&mut *conn)
        .await
        .expect("read");
        assert!(
            requests.iter().all(|r| !r.contains("root_of")),
            "no meeting id is left in the queue: {requests:?}"
        );
        let requests: Vec<crate::matrix::queue::OutboundRequest> = requests
            .iter()
            .map(|r| serde_json::from_str(r).expect("the new code reads migrated rows"))
            .collect();
        let threads: Vec<Option<i64>> = requests
            .iter()
            .map(|r| match r {
                crate::matrix::queue::OutboundRequest::Send { in_thread_of, .. } => *in_thread_of,
                other => panic!("still a send: {other:?}"),
            })
            .collect();
        assert_eq!(
            threads,
            [Some(ids[0]), None],
            "the waiting message names its root's row"
        );
    }

    #[tokio::test]
    async fn thread_roots_survive_the_move_to_outbound_rows_sqlite() {
        thread_roots_survive_the_move_to_outbound_rows(
            crate::store::testing::sqlite_unmigrated().await,
        )
        .await;
    }

    #[tokio::test]
    async fn thread_roots_survive_the_move_to_outbound_rows_postgres() {
        thread_roots_survive_the_move_to_outbound_rows(
            crate::store::testing::postgres_unmigrated().await,
        )
        .await;
    }
}
