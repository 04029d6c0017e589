//! Bot API tokens: a name and a public id per token, the SHA-256 of the token (never
//! the token itself), its scope (JSON, read by the auth module) and a read-only flag.
//! Matching a presented token and deciding its scope are the auth module's job; this
//! module only stores and lists.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Connection, StoreError};

/// What is known of a token (its hash stays inside the store and the auth check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenInfo {
    pub name: String,
    pub id: String,
    /// The scope as stored (JSON, see `auth::api_token::TokenScope`).
    pub scope: String,
    pub read_only: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A token that may be used: its name, public id, hex SHA-256 and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveToken {
    pub name: String,
    pub id: String,
    pub sha256_hex: String,
    /// JSON, see `auth::api_token::TokenScope`.
    pub scope: String,
    pub read_only: bool,
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewApiToken<'a> {
    pub name: &'a str,
    pub id: &'a str,
    pub sha256_hex: &'a str,
    pub scope: &'a str,
    pub read_only: bool,
}

fn info_from_row(row: &AnyRow) -> Result<ApiTokenInfo, StoreError> {
    Ok(ApiTokenInfo {
        name: row.try_get("name")?,
        id: row.try_get("id")?,
        scope: row.try_get("scope")?,
        read_only: row.try_get::<i64, _>("read_only")? != 0,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Stores a token. False when an active token already has that name; a revoked one of
/// that name is replaced (names are how admins think of tokens; the new token's id,
/// and so its ghosts, are its own).
pub async fn create(
    conn: &mut Connection,
    token: &NewApiToken<'_>,
    now: i64,
) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM api_tokens WHERE name = $1 AND revoked_at IS NOT NULL")
        .bind(token.name)
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO api_tokens (name, id, token_sha256, scope, read_only, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
    )
    .bind(token.name)
    .bind(token.id)
    .bind(token.sha256_hex)
    .bind(token.scope)
    .bind(i64::from(token.read_only))
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Every token, revoked ones included, by name.
pub async fn list(conn: &mut Connection) -> Result<Vec<ApiTokenInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, id, scope, read_only, created_at, last_used_at, revoked_at \
         FROM api_tokens ORDER BY name",
    )
    .fetch_all(conn)
    .await?;
    rows.iter().map(info_from_row).collect()
}

/// The tokens not revoked.
pub async fn active(conn: &mut Connection) -> Result<Vec<ActiveToken>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, id, token_sha256, scope, read_only FROM api_tokens \
         WHERE revoked_at IS NULL ORDER BY name",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ActiveToken {
                name: row.try_get(0)?,
                id: row.try_get(1)?,
                sha256_hex: row.try_get(2)?,
                scope: row.try_get(3)?,
                read_only: row.try_get::<i64, _>(4)? != 0,
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

    /// A token whose id is derived from its hash, so that tests can predict it.
    fn new<'a>(name: &'a str, sha256_hex: &'a str) -> NewApiToken<'a> {
        NewApiToken {
            name,
            id: sha256_hex,
            sha256_hex,
            scope: r#"{"rooms":["!a:x.org"]}"#,
            read_only: name == "calendar",
        }
    }

    both_dialects!(
        tokens_are_created_listed_and_revoked,
        |store: Store| async move {
            let mut conn = store.pool().acquire().await.expect("conn");
            assert!(
                create(&mut conn, &new("minutes", "aa"), 10)
                    .await
                    .expect("create")
            );
            assert!(
                create(&mut conn, &new("calendar", "bb"), 20)
                    .await
                    .expect("create")
            );
            assert!(
                !create(&mut conn, &new("minutes", "cc"), 30)
                    .await
                    .expect("create"),
                "an active name is not reused"
            );
            let active_names = |tokens: Vec<ActiveToken>| {
                tokens
                    .into_iter()
                    .map(|t| {
                        assert_eq!(t.id, t.sha256_hex);
                        assert_eq!(t.read_only, t.name == "calendar");
                        assert_eq!(t.scope, r#"{"rooms":["!a:x.org"]}"#);
                        (t.name, t.sha256_hex)
                    })
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
                        id: "bb".into(),
                        scope: r#"{"rooms":["!a:x.org"]}"#.into(),
                        read_only: true,
                        created_at: 20,
                        last_used_at: None,
                        revoked_at: None
                    },
                    ApiTokenInfo {
                        name: "minutes".into(),
                        id: "aa".into(),
                        scope: r#"{"rooms":["!a:x.org"]}"#.into(),
                        read_only: false,
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
                create(&mut conn, &new("minutes", "dd"), 300)
                    .await
                    .expect("create")
            );
            assert_eq!(active(&mut conn).await.expect("active").len(), 2);
            // Two names never share a hash, nor an id.
            assert!(create(&mut conn, &new("other", "dd"), 301).await.is_err());
            let same_id = NewApiToken {
                id: "dd",
                ..new("other", "ee")
            };
            assert!(create(&mut conn, &same_id, 302).await.is_err());
        }
    );

    both_dialects!(
        tokens_made_before_scopes_reach_every_room_as_legacy,
        |store: Store| async move {
            // Back to the table as migration 0004 made it, with two tokens in it, then
            // migration 0007 again: each token gets an id of its own, the legacy
            // all-rooms scope and write access, as before the upgrade.
            let dir = match store.dialect() {
                crate::store::Dialect::Sqlite => "sqlite",
                crate::store::Dialect::Postgres => "postgres",
            };
            let v4 = match dir {
                "sqlite" => include_str!("../../migrations/sqlite/0004_bot_api.sql"),
                _ => include_str!("../../migrations/postgres/0004_bot_api.sql"),
            };
            let v4: String = v4
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let create_v4 = v4
                .split(';')
                .find(|statement| statement.contains("CREATE TABLE api_tokens"))
                .expect("0004 creates api_tokens");
            let mut conn = store.pool().acquire().await.expect("conn");
            for statement in [
                "DROP TABLE api_tokens",
                "DELETE FROM _sqlx_migrations WHERE version = 7",
                create_v4,
                "INSERT INTO api_tokens (name, token_sha256, created_at) VALUES ('old-a', 'aa', 1)",
                "INSERT INTO api_tokens (name, token_sha256, created_at) VALUES ('old-b', 'bb', 2)",
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
                    .execute(&mut *conn)
                    .await
                    .expect(statement);
            }
            drop(conn);
            assert_eq!(store.migrate().await.expect("0007 again"), 1, "{dir}");
            let mut conn = store.pool().acquire().await.expect("conn");
            let listed = list(&mut conn).await.expect("list");
            assert_eq!(listed.len(), 2);
            assert_ne!(listed[0].id, listed[1].id);
            for token in &listed {
                assert_eq!(token.id.len(), 16, "{token:?}");
                assert_eq!(token.scope, r#"{"all_rooms":true,"legacy":true}"#);
                assert!(!token.read_only);
            }
            assert_eq!(active(&mut conn).await.expect("active").len(), 2);
        }
    );
}
