//! Persistence (sqlx): SQLite by default, PostgreSQL as an option, one set of queries
//! over `sqlx::Any` and embedded, numbered migrations per dialect. Owns the schema;
//! knows nothing of HTTP, Matrix semantics or media.

pub mod access;
pub mod api_tokens;
pub mod chat;
pub mod cluster;
pub mod crypto;
pub mod ghosts;
pub mod inbox;
pub mod meetings;
pub mod outbound;
pub mod placements;
pub mod rooms;
pub mod sessions;
pub mod sfu_effects;
pub mod webhooks;

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub use sqlx::AnyConnection as Connection;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URI could not be used (bad syntax, unreachable server, no file access).
    #[error("cannot open the database {uri}: {source}")]
    Open {
        uri: String,
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored row could not be decoded (written by an incompatible version?).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The crypto store (matrix-sdk-crypto's own database) failed; retried like a query.
    #[error("the crypto store failed: {0}")]
    CryptoStore(String),
    /// Encrypted events wait for the bot's device, which starts in the background.
    #[error("the bot's device is not ready yet")]
    DeviceNotReady,
}

/// Which SQL dialect the pool speaks; only migrations differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Creates the SQLite file readable by its owner only (it holds meeting chat and
/// attendance; SQLite gives its -wal and -shm files the same mode). An existing file
/// others can read is left as it is, with a warning.
fn create_private(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(file)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    mode = format!("{:o}", mode & 0o777),
                    "the SQLite database can be read by other users of this machine; chmod 600 it"
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A connection pool plus the knowledge of its dialect.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

impl Store {
    /// Opens (and for SQLite creates) the database. Does not migrate.
    pub async fn connect(uri: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(uri, max_connections, None).await
    }

    /// Opens a cluster node's PostgreSQL pool and applies pending migrations. Its
    /// connections end a transaction left idle longer than `idle_in_transaction`: a
    /// stalled node (SIGSTOP, a partition) must not hold the row locks that the next
    /// leader waits for.
    pub async fn open_for_cluster(
        uri: &str,
        max_connections: u32,
        idle_in_transaction: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let store = Self::connect_with(uri, max_connections, Some(idle_in_transaction)).await?;
        store.migrate().await?;
        Ok(store)
    }

    async fn connect_with(
        uri: &str,
        max_connections: u32,
        idle_in_transaction: Option<std::time::Duration>,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let open_err = |source| StoreError::Open {
            uri: redact_uri(uri),
            source,
        };
        let (dialect, uri) = if let Some(rest) = uri.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let file = path.split('?').next().unwrap_or(path);
            if let Some(parent) = Path::new(file).parent()
                && !parent.as_os_str().is_empty()
                && file != ":memory:"
            {
                std::fs::create_dir_all(parent).map_err(|e| open_err(sqlx::Error::Io(e)))?;
            }
            if file != ":memory:" {
                create_private(Path::new(file)).map_err(|e| open_err(sqlx::Error::Io(e)))?;
            }
            let uri = if file == ":memory:" {
                "sqlite::memory:".to_owned()
            } else if path.contains("mode=") {
                format!("sqlite://{path}")
            } else if path.contains('?') {
                format!("sqlite://{path}&mode=rwc")
            } else {
                format!("sqlite://{path}?mode=rwc")
            };
            (Dialect::Sqlite, uri)
        } else {
            (Dialect::Postgres, uri.to_owned())
        };
        let options = AnyConnectOptions::from_str(&uri).map_err(open_err)?;
        // SQLite has one writer; a single connection avoids SQLITE_BUSY on lock upgrades
        // and costs nothing since writes are serialised anyway.
        let max = match dialect {
            Dialect::Sqlite => 1,
            Dialect::Postgres => max_connections.max(1),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000;")
                            .await?;
                    }
                    if let (Dialect::Postgres, Some(limit)) = (dialect, idle_in_transaction) {
                        // A number we formatted, not outside input.
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "SET idle_in_transaction_session_timeout = {}",
                            limit.as_millis()
                        )))
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(open_err)?;
        Ok(Self { pool, dialect })
    }

    /// Opens the database and applies pending migrations.
    pub async fn open(uri: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect(uri, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations of this dialect; returns how many were new.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        let before = self.applied_migrations().await.unwrap_or(0);
        migrator.run(&self.pool).await?;
        let after = self.applied_migrations().await?;
        Ok(after.saturating_sub(before))
    }

    /// Applies the migrations up to `version` only: tests of a migration fill the
    /// database as the version before it left it.
    #[cfg(test)]
    pub async fn migrate_to(&self, version: i64) -> Result<(), StoreError> {
        let all = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        let migrator = Migrator {
            migrations: all
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect::<Vec<_>>()
                .into(),
            ..Migrator::DEFAULT
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    async fn applied_migrations(&self) -> Result<usize, sqlx::Error> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = $1")
                .bind(true)
                .fetch_one(&self.pool)
                .await?;
        Ok(count as usize)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Starts a database transaction; effects that must happen together go through it.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The URI without its password, for error messages and logs.
pub fn redact_uri(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Opens a fresh database of each dialect so every store test runs against both.
    use super::*;

    /// Env var holding a PostgreSQL URL with the right to create databases; set by
    /// `scripts/test.sh`, which starts a throwaway cluster.
    pub const POSTGRES_ENV: &str = "TCHAP_VISIO_TEST_POSTGRES_URL";

    pub struct TestDb {
        pub store: Store,
        /// Where `store` points: for tests that open connections of their own.
        pub uri: String,
        _dir: Option<tempfile::TempDir>,
    }

    pub async fn sqlite() -> TestDb {
        let db = sqlite_unmigrated().await;
        db.store.migrate().await.expect("migrate sqlite");
        db
    }

    pub async fn sqlite_unmigrated() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let uri = format!("sqlite://{}/test.db", dir.path().display());
        let store = Store::connect(&uri, 5).await.expect("open sqlite");
        TestDb {
            store,
            uri,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> TestDb {
        let db = postgres_unmigrated().await;
        db.store.migrate().await.expect("migrate postgres");
        db
    }

    pub async fn postgres_unmigrated() -> TestDb {
        let admin_url = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
            panic!("{POSTGRES_ENV} is not set: run the tests with scripts/test.sh, which starts PostgreSQL")
        });
        sqlx::any::install_default_drivers();
        let name = format!("tv_test_{}", rand::random::<u64>());
        let admin = AnyPool::connect(&admin_url)
            .await
            .expect("connect to test PostgreSQL");
        // The name is ours (random digits), not outside input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let mut url = url::Url::parse(&admin_url).expect("valid URL");
        url.set_path(&name);
        let store = Store::connect(url.as_str(), 5)
            .await
            .expect("open postgres");
        TestDb {
            store,
            uri: url.to_string(),
            _dir: None,
        }
    }

    /// Runs the same test body against SQLite and PostgreSQL.
    macro_rules! both_dialects {
        ($name:ident, $body:expr) => {
            mod $name {
                use super::*;
                #[tokio::test]
                async fn sqlite() {
                    let db = $crate::store::testing::sqlite().await;
                    ($body)(db.store.clone()).await;
                }
                #[tokio::test]
                async fn postgres() {
                    let db = $crate::store::testing::postgres().await;
                    ($body)(db.store.clone()).await;
                }
            }
        };
    }
    pub(crate) use both_dialects;
}

#[cfg(test)]
mod tests {
    use super::testing::both_dialects;
    use super::*;

    both_dialects!(migrations_are_idempotent, |store: Store| async move {
        assert_eq!(store.migrate().await.expect("migrate again"), 0);
    });

    #[tokio::test]
    async fn in_memory_sqlite_opens() {
        let store = Store::open("sqlite::memory:", 1)
            .await
            .expect("in-memory database");
        assert_eq!(store.dialect(), Dialect::Sqlite);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_uri("postgres://visio:secret@db/visio"),
            "postgres://visio:***@db/visio"
        );
        assert_eq!(redact_uri("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
