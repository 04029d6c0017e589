//! Ghost users we registered and the rooms they joined, so each is registered, named
//! and invited once.

use sqlx::Row;

use super::{Connection, StoreError};

/// The display name a ghost was given, if it is registered.
pub async fn display_name(
    conn: &mut Connection,
    user_id: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT display_name FROM ghosts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Records a ghost and its display name (inserted or renamed).
pub async fn put(
    conn: &mut Connection,
    user_id: &str,
    display_name: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ghosts (user_id, display_name, registered_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET display_name = $2",
    )
    .bind(user_id)
    .bind(display_name)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the ghost is known to be in the room.
pub async fn in_room(
    conn: &mut Connection,
    user_id: &str,
    room_id: &str,
) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM ghost_rooms WHERE user_id = $1 AND room_id = $2")
        .bind(user_id)
        .bind(room_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

pub async fn add_room(
    conn: &mut Connection,
    user_id: &str,
    room_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ghost_rooms (user_id, room_id, joined_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, room_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(room_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::testing::both_dialects;

    both_dialects!(ghosts_are_remembered, |store: Store| async move {
        let mut conn = store.pool().acquire().await.expect("conn");
        let ghost = "@visio_g1:localhost";
        assert_eq!(display_name(&mut conn, ghost).await.expect("get"), None);
        put(&mut conn, ghost, "Zoé (invité·e)", 1)
            .await
            .expect("put");
        put(&mut conn, ghost, "Zoé B. (invité·e)", 2)
            .await
            .expect("rename");
        assert_eq!(
            display_name(&mut conn, ghost)
                .await
                .expect("get")
                .as_deref(),
            Some("Zoé B. (invité·e)")
        );
        assert!(!in_room(&mut conn, ghost, "!r").await.expect("get"));
        add_room(&mut conn, ghost, "!r", 3).await.expect("add");
        add_room(&mut conn, ghost, "!r", 4).await.expect("again");
        assert!(in_room(&mut conn, ghost, "!r").await.expect("get"));
    });
}
