//! Chat messages of meetings, from both sides, kept for the summary and the bot API.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Connection, StoreError};
use crate::ids::MeetingId;
use crate::meeting::{ChatMessage, ChatOrigin};

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        table: "chat_messages",
        detail,
    }
}

fn from_row(row: &AnyRow) -> Result<ChatMessage, StoreError> {
    let meeting_id: String = row.try_get("meeting_id")?;
    let origin: String = row.try_get("origin")?;
    Ok(ChatMessage {
        meeting_id: MeetingId::parse(&meeting_id)
            .map_err(|e| corrupt(format!("meeting id `{meeting_id}`: {e}")))?,
        message_id: row.try_get("message_id")?,
        origin: ChatOrigin::parse(&origin).ok_or_else(|| corrupt(format!("origin `{origin}`")))?,
        sender_identity: row.try_get("sender_identity")?,
        sender_name: row.try_get("sender_name")?,
        matrix_user_id: row.try_get("matrix_user_id")?,
        body: row.try_get("body")?,
        sent_at: row.try_get("sent_at")?,
    })
}

/// Stores a message; false if its id was stored already (mirrored once, whatever the
/// number of times it is seen).
pub async fn insert(conn: &mut Connection, message: &ChatMessage) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO chat_messages (meeting_id, message_id, origin, sender_identity, \
         sender_name, matrix_user_id, body, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (meeting_id, message_id) DO NOTHING",
    )
    .bind(message.meeting_id.as_str())
    .bind(&message.message_id)
    .bind(message.origin.as_str())
    .bind(message.sender_identity.as_deref())
    .bind(&message.sender_name)
    .bind(message.matrix_user_id.as_deref())
    .bind(&message.body)
    .bind(message.sent_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn count_for_meeting(
    conn: &mut Connection,
    meeting_id: &MeetingId,
) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) FROM chat_messages WHERE meeting_id = $1")
        .bind(meeting_id.as_str())
        .fetch_one(conn)
        .await?;
    Ok(row.try_get(0)?)
}

/// Every message of a meeting, oldest first.
pub async fn list_for_meeting(
    conn: &mut Connection,
    meeting_id: &MeetingId,
) -> Result<Vec<ChatMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT meeting_id, message_id, origin, sender_identity, sender_name, matrix_user_id, \
         body, sent_at FROM chat_messages WHERE meeting_id = $1 ORDER BY sent_at, message_id",
    )
    .bind(meeting_id.as_str())
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The latest `limit` messages of a meeting, oldest first (the history a late joiner
/// loads).
pub async fn recent_for_meeting(
    conn: &mut Connection,
    meeting_id: &MeetingId,
    limit: i64,
) -> Result<Vec<ChatMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT meeting_id, message_id, origin, sender_identity, sender_name, matrix_user_id, \
         body, sent_at FROM chat_messages WHERE meeting_id = $1 \
         ORDER BY sent_at DESC, message_id DESC LIMIT $2",
    )
    .bind(meeting_id.as_str())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let mut messages = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    messages.reverse();
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meeting::Meeting;
    use crate::store::testing::both_dialects;
    use crate::store::{Store, meetings};

    both_dialects!(chat_is_stored_once_in_order, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let m = Meeting::new("t", None, None, 0).expect("valid");
        meetings::create(&mut conn, &m).await.expect("create");
        let message = |id: &str, at: i64, origin| ChatMessage {
            meeting_id: m.id.clone(),
            message_id: id.into(),
            origin,
            sender_identity: Some("b-1-x".into()),
            sender_name: "Zoé".into(),
            matrix_user_id: None,
            body: format!("message {id}"),
            sent_at: at,
        };
        assert!(
            insert(&mut conn, &message("m2", 20, ChatOrigin::Matrix))
                .await
                .expect("insert")
        );
        assert!(
            insert(&mut conn, &message("m1", 10, ChatOrigin::Meeting))
                .await
                .expect("insert")
        );
        assert!(
            !insert(&mut conn, &message("m1", 10, ChatOrigin::Meeting))
                .await
                .expect("insert")
        );
        assert_eq!(count_for_meeting(&mut conn, &m.id).await.expect("count"), 2);
        let listed = list_for_meeting(&mut conn, &m.id).await.expect("list");
        assert_eq!(
            listed,
            vec![
                message("m1", 10, ChatOrigin::Meeting),
                message("m2", 20, ChatOrigin::Matrix)
            ]
        );
        assert!(
            insert(&mut conn, &message("m3", 30, ChatOrigin::Meeting))
                .await
                .expect("insert")
        );
        let recent = recent_for_meeting(&mut conn, &m.id, 2)
            .await
            .expect("recent");
        assert_eq!(
            recent,
            vec![
                message("m2", 20, ChatOrigin::Matrix),
                message("m3", 30, ChatOrigin::Meeting)
            ],
            "the latest two, oldest first"
        );
    });
}
