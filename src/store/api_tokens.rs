//! Bot API tokens: a name per token and the SHA-256 of the token, never the token
//! itself. Matching a presented token is the auth module's job (constant time); this
//! module only stores and lists.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Connection, StoreError};

/// What is known of a token (its hash stays inside the store and the auth check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenInfo {
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A token that may be used: its name and hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveToken {
    pub name: String,
    pub sha256_hex: String,
}

fn info_from_row(row: &AnyRow) -> Result<ApiTokenInfo, StoreError> {
    Ok(ApiTokenInfo {
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Stores a token under `name`. False when an active token already has that name; a
/// revoked one of that name is replaced (names are how admins think of tokens).
pub async fn create(
    conn: &mut Connection,
    name: &str,
    sha256_hex: &str,
    now: i64,
) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM api_tokens WHERE name = $1 AND revoked_at IS NOT NULL")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO api_tokens (name, token_sha256, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(sha256_hex)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Every token, revoked ones included, by name.
pub async fn list(conn: &mut Connection) -> Result<Vec<ApiTokenInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY name",
    )
    .fetch_all(conn)
    .await?;
    rows.iter().map(info_from_row).collect()
}

/// The tokens not revoked.
pub async fn active(conn: &mut Connection) -> Result<Vec<ActiveToken>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, token_sha256 FROM api_tokens WHERE revoked_at IS NULL ORDER BY name",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ActiveToken {
                name: row.try_get(0)?,
                sha256_hex: row.try_get(1)?,
            })
        })
        .collect()
}

/// Revokes the active token called `name`; false if there is none.
pub async fn revoke(conn: &mut Connection, name: &str, now: i64) -> Result<bool, StoreError> {
    let changed =
        sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL")
            .bind(name)
            .bind(now)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(changed == 1)
}

/// How often `last_used_at` is written at most, so a busy bot does not write on every call.
pub const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// Records that the token was used at `now` (at most once a minute).
pub async fn touch(conn: &mut Connection, name: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_tokens SET last_used_at = $2 WHERE name = $1 \
         AND (last_used_at IS NULL OR last_used_at <= $3)",
    )
    .bind(name)
    .bind(now)
    .bind(now - LAST_USED_RESOLUTION_MS)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::testing::both_dialects;

    both_dialects!(
        tokens_are_created_listed_and_revoked,
        |store: Store| async move {
            let mut conn = store.pool().acquire().await.expect("conn");
            assert!(
                create(&mut conn, "minutes", "aa", 10)
                    .await
                    .expect("create")
            );
            assert!(
                create(&mut conn, "calendar", "bb", 20)
                    .await
                    .expect("create")
            );
            assert!(
                !create(&mut conn, "minutes", "cc", 30)
                    .await
                    .expect("create"),
                "an active name is not reused"
            );
            let active_names = |tokens: Vec<ActiveToken>| {
                tokens
                    .into_iter()
                    .map(|t| (t.name, t.sha256_hex))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                active_names(active(&mut conn).await.expect("active")),
                vec![
                    ("calendar".into(), "bb".into()),
                    ("minutes".into(), "aa".into())
                ]
            );

            touch(&mut conn, "minutes", 100_000).await.expect("touch");
            // Within the resolution the first use stays recorded.
            touch(&mut conn, "minutes", 100_500).await.expect("touch");
            assert!(revoke(&mut conn, "minutes", 200_000).await.expect("revoke"));
            assert!(!revoke(&mut conn, "minutes", 200_001).await.expect("revoke"));
            assert!(!revoke(&mut conn, "nobody", 1).await.expect("revoke"));
            assert_eq!(
                list(&mut conn).await.expect("list"),
                vec![
                    ApiTokenInfo {
                        name: "calendar".into(),
                        created_at: 20,
                        last_used_at: None,
                        revoked_at: None
                    },
                    ApiTokenInfo {
                        name: "minutes".into(),
                        created_at: 10,
                        last_used_at: Some(100_000),
                        revoked_at: Some(200_000)
                    },
                ]
            );
            assert_eq!(
                active_names(active(&mut conn).await.expect("active")),
                vec![("calendar".into(), "bb".into())]
            );
            // A revoked name can be given to a new token.
            assert!(
                create(&mut conn, "minutes", "dd", 300)
                    .await
                    .expect("create")
            );
            assert_eq!(active(&mut conn).await.expect("active").len(), 2);
            // Two names never share a hash.
            assert!(create(&mut conn, "other", "dd", 301).await.is_err());
        }
    );
}
