//! What the bot remembers about rooms (encryption, notices already sent).

use sqlx::Row;

use super::{Connection, StoreError, now_ms};

/// The bot's knowledge of one room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomInfo {
    pub encrypted: bool,
    pub encryption_notice_sent: bool,
}

pub async fn get(conn: &mut Connection, room_id: &str) -> Result<RoomInfo, StoreError> {
    let row = sqlx::query("SELECT encrypted, encryption_notice_sent FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(row) => RoomInfo {
            encrypted: row.try_get::<i64, _>(0)? != 0,
            encryption_notice_sent: row.try_get::<i64, _>(1)? != 0,
        },
        None => RoomInfo::default(),
    })
}

pub async fn put(conn: &mut Connection, room_id: &str, info: &RoomInfo) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rooms (room_id, encrypted, encryption_notice_sent, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (room_id) DO UPDATE SET encrypted = $2, encryption_notice_sent = $3, updated_at = $4",
    )
    .bind(room_id)
    .bind(i64::from(info.encrypted))
    .bind(i64::from(info.encryption_notice_sent))
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::testing::both_dialects;

    both_dialects!(room_info_round_trips, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        assert_eq!(
            get(&mut conn, "!r").await.expect("get"),
            RoomInfo::default()
        );
        let info = RoomInfo {
            encrypted: true,
            encryption_notice_sent: false,
        };
        put(&mut conn, "!r", &info).await.expect("put");
        assert_eq!(get(&mut conn, "!r").await.expect("get"), info);
        let info = RoomInfo {
            encrypted: true,
            encryption_notice_sent: true,
        };
        put(&mut conn, "!r", &info).await.expect("put");
        assert_eq!(get(&mut conn, "!r").await.expect("get"), info);
    });
}
