//! The SQL store, one implementation for both databases through sqlx's `Any` driver (the SQL
//! here is the subset both speak, with `$n` placeholders):
//!
//! - SQLite, the embedded default: one file in WAL mode, no server to run. Writes go through a
//!   single connection and open with `BEGIN IMMEDIATE`, so they are serialized without any
//!   transaction having to upgrade its lock half-way (SQLite's classic `BUSY`).
//! - PostgreSQL, when the configuration outgrows one machine. Writes are serialized by the row
//!   lock that bumping the revision takes, and each one sends `NOTIFY` on [`NOTIFY_CHANNEL`] with
//!   its revision, which is delivered when it commits.
//!
//! Reads use a pool of their own and see one consistent snapshot while a write is under way.
//!
//! By concern: connecting and the schema here, writes in [`write`] (the SQL interpreter of a
//! `Write`; `Config::apply` is the other, and `tests/interpreters.rs` keeps them in step),
//! reading rows back in [`read`], the fleet table in [`fleet`], leases in [`lease`].

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::store::StoreError;

pub(crate) mod fleet;
pub(crate) mod lease;
mod read;
mod write;

/// A statement that lives no longer than its query: an unnamed one on PostgreSQL. A named
/// (cached) statement outlives the transaction on the server connection that parsed it, and
/// behind a transaction-pooling PgBouncer that connection is another client's next: it fails
/// with `prepared statement "sqlx_s_1" already exists`. The parse this repeats costs little
/// against a configuration database's load. With [`SqlStore`] running every statement in a
/// transaction, parse and execution stay on one server connection even through such a pool.
pub(crate) fn statement<'q>(
    sql: impl sqlx::SqlSafeStr,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    sqlx::query(sql).persistent(false)
}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// The PostgreSQL channel each committed write is announced on, with its revision as payload.
pub const NOTIFY_CHANNEL: &str = "ballast_config";

/// Which database a store speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// One SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A configuration store in SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pub(crate) writer: AnyPool,
    reader: AnyPool,
    pub(crate) dialect: Dialect,
}

impl SqlStore {
    /// Connects to `url`: `postgres://…` for PostgreSQL; `sqlite://PATH` or a plain path for
    /// SQLite (the file is created if missing). Brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::connect_postgres(url).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Self::open_sqlite(Path::new(path)).await
    }

    /// Opens (creating if needed) the SQLite database at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = format!("sqlite://{}", path.display());
        let writer = pool_options()
            .max_connections(1)
            .connect(&format!("{url}?mode=rwc"))
            .await
            .map_err(StoreError::database("opening the database"))?;
        statement("PRAGMA journal_mode = WAL")
            .execute(&writer)
            .await
            .map_err(StoreError::database("switching to WAL"))?;
        migrate(&SQLITE_MIGRATIONS, &writer).await?;
        let reader = pool_options()
            .max_connections(4)
            .connect(&format!("{url}?mode=ro"))
            .await
            .map_err(StoreError::database("opening the database for reading"))?;
        Ok(Self {
            writer,
            reader,
            dialect: Dialect::Sqlite,
        })
    }

    /// Connects to the PostgreSQL database at `url`.
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        install_default_drivers();
        let writer = pool_options()
            .max_connections(8)
            .connect(url)
            .await
            .map_err(StoreError::database("connecting"))?;
        migrate(&POSTGRES_MIGRATIONS, &writer).await?;
        let reader = pool_options()
            .max_connections(8)
            .connect(url)
            .await
            .map_err(StoreError::database("connecting for reading"))?;
        Ok(Self {
            writer,
            reader,
            dialect: Dialect::Postgres,
        })
    }

    /// The same database on fresh connections, the old ones left to close. For a follower whose
    /// connections went silent: a partition drops packets without a reset, and a connection
    /// with a request in flight then waits out TCP's retransmission backoff, long after the
    /// network heals, while a new connection goes through at once.
    pub async fn reconnect(&self) -> Result<Self, StoreError> {
        if self.dialect == Dialect::Sqlite {
            return Ok(self.clone());
        }
        let connect = |pool: &AnyPool, size| {
            let options = (*pool.connect_options()).clone();
            pool_options().max_connections(size).connect_with(options)
        };
        let writer = connect(&self.writer, self.writer.options().get_max_connections())
            .await
            .map_err(StoreError::database("connecting"))?;
        let reader = connect(&self.reader, self.reader.options().get_max_connections())
            .await
            .map_err(StoreError::database("connecting for reading"))?;
        Ok(Self {
            writer,
            reader,
            dialect: self.dialect,
        })
    }

    /// Runs one write statement in a transaction of its own, so that its parse and execution
    /// share a server connection (see [`statement`]).
    pub(crate) async fn execute_alone(
        &self,
        query: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
    ) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Runs one read statement in a transaction of its own (see [`statement`]).
    pub(crate) async fn fetch_alone(
        &self,
        query: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut tx = self.reader.begin().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Like [`fetch_alone`](Self::fetch_alone), for exactly one row.
    pub(crate) async fn fetch_one_alone(
        &self,
        query: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
    ) -> Result<AnyRow, sqlx::Error> {
        let mut tx = self.reader.begin().await?;
        let row = query.fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Sends `payload` on [`NOTIFY_CHANNEL`], as every write does on PostgreSQL.
    pub(crate) async fn notify(&self, payload: &str) -> Result<(), sqlx::Error> {
        self.execute_alone(
            statement("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(payload),
        )
        .await
        .map(drop)
    }

    /// Which database this store speaks to.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A transaction on the writer, taking SQLite's write lock at once.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.writer.begin().await,
        }
    }
}

/// Pools that give up on an unreachable database in seconds rather than sqlx's default half
/// minute: a follower must notice and say so, and an API call must fail rather than hang.
fn pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new().acquire_timeout(std::time::Duration::from_secs(3))
}

/// Brings the schema up to date, running the migrator only when the schema is behind it. Its
/// own statements are named and cached, which a transaction-pooling PgBouncer cannot carry
/// (`prepared statement "sqlx_s_1" already exists` from the second process on): checked first
/// with an unnamed statement, an up-to-date schema never meets them.
async fn migrate(migrator: &Migrator, pool: &AnyPool) -> Result<(), StoreError> {
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let applied = async {
        let mut tx = pool.begin().await?;
        let version =
            statement("SELECT MAX(version) AS version FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut *tx)
                .await?
                .try_get::<Option<i64>, _>("version")?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(version.unwrap_or(0))
    }
    .await
    // No migrations table yet: a new database.
    .unwrap_or(0);
    if applied >= latest {
        return Ok(());
    }
    migrator.run(pool).await.map_err(|e| {
        let error = sqlx::Error::from(e);
        let context = if error.to_string().contains("prepared statement") {
            "migrating the schema (through a transaction-pooling PgBouncer? migrate once over a \
             direct connection to PostgreSQL: `ballast control --db` with that URL)"
        } else {
            "migrating the schema"
        };
        StoreError::Database {
            context,
            source: error,
        }
    })
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
