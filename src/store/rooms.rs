//! What the bot remembers about rooms (encryption, notices already sent).

use sqlx::Row;

use super::{Connection, StoreError};
use crate::clock::now_ms;

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

/// The room's `m.room.power_levels` content as last seen, if any.
pub async fn power_levels(
    conn: &mut Connection,
    room_id: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT power_levels_json FROM rooms WHERE room_id = $1")
        .bind(room_id)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(row) => row.try_get(0)?,
        None => None,
    })
}

pub async fn set_power_levels(
    conn: &mut Connection,
    room_id: &str,
    json: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rooms (room_id, encrypted, encryption_notice_sent, updated_at, power_levels_json) \
         VALUES ($1, 0, 0, $2, $3) \
         ON CONFLICT (room_id) DO UPDATE SET power_levels_json = $3, updated_at = $2",
    )
    .bind(room_id)
    .bind(now_ms())
    .bind(json)
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
        assert_eq!(power_levels(&mut conn, "!r").await.expect("get"), None);
        set_power_levels(&mut conn, "!r", "{}").await.expect("set");
        set_power_levels(&mut conn, "!new", r#"{"users":{}}"#)
            .await
            .expect("set");
        assert_eq!(
            power_levels(&mut conn, "!r").await.expect("get").as_deref(),
            Some("{}")
        );
        assert_eq!(
            get(&mut conn, "!r").await.expect("get"),
            info,
            "other fields kept"
        );
        assert_eq!(
            power_levels(&mut conn, "!new")
                .await
                .expect("get")
                .as_deref(),
            Some(r#"{"users":{}}"#)
        );
    });
}
