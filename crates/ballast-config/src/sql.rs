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

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, AssertSqlSafe, Row, Transaction};

use crate::model::{
    AdminState, AlgorithmSpec, Backend, Change, Config, Health, LbServer, LbState, Pool, PoolSpec,
    Write,
};
use crate::store::{ConfigStore, Fence, StoreError};
use crate::validate::{Invalid, canonical_address, check};

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

    async fn write(&self, write: &Write, fence: Option<&Fence>) -> Result<u64, StoreError> {
        let mut tx = self
            .begin_write()
            .await
            .map_err(StoreError::database("starting a write"))?;
        // Bumping first takes the write lock, so the checks below cannot race another writer;
        // a refused write rolls back and the revision stays where it was.
        let revision: i64 =
            statement("UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value")
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get("value"))
                .map_err(StoreError::database("bumping the revision"))?;
        if let Some(fence) = fence {
            check_fence(&mut tx, fence).await?;
        }
        require_existing(&mut tx, write).await?;
        mutate(&mut tx, write, revision).await?;
        let value = serde_json::to_string(write).unwrap_or_else(|_| "{}".to_owned());
        statement(
            "INSERT INTO changes (revision, entity, operation, value, at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(revision)
        .bind(write.entity())
        .bind(write.operation())
        .bind(value)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::database("appending to the change log"))?;
        if self.dialect == Dialect::Postgres {
            statement("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::database("announcing the change"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::database("committing a write"))?;
        Ok(revision as u64)
    }
}

/// Refuses a token older than the newest seen for its name, and records it otherwise; inside the
/// write's transaction, after the revision row's lock is held.
pub(crate) async fn check_fence(
    tx: &mut Transaction<'static, Any>,
    fence: &Fence,
) -> Result<(), StoreError> {
    let token = i64::try_from(fence.token).unwrap_or(i64::MAX);
    let newest: Option<i64> = statement("SELECT token FROM fences WHERE name = $1")
        .bind(&fence.name)
        .fetch_optional(&mut **tx)
        .await
        .and_then(|row| row.map(|r| r.try_get("token")).transpose())
        .map_err(StoreError::database("reading the fence"))?;
    if let Some(newest) = newest
        && newest > token
    {
        return Err(StoreError::Fenced {
            name: fence.name.clone(),
            token: fence.token,
            newest: newest as u64,
        });
    }
    statement(
        "INSERT INTO fences (name, token) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET token = excluded.token",
    )
    .bind(&fence.name)
    .bind(token)
    .execute(&mut **tx)
    .await
    .map(|_| ())
    .map_err(StoreError::database("recording the fence"))
}

/// Refuses a write that names a missing pool or backend, or would duplicate one.
async fn require_existing(
    tx: &mut Transaction<'static, Any>,
    write: &Write,
) -> Result<(), StoreError> {
    let (pool, backend) = match write {
        Write::CreatePool(spec) => {
            if pool_exists(tx, &spec.name).await? {
                return Err(StoreError::Conflict(Invalid::new(
                    "name",
                    format!("pool `{}` already exists", spec.name),
                )));
            }
            return Ok(());
        }
        Write::DeletePool { pool }
        | Write::SetAlgorithm { pool, .. }
        | Write::SetPolicy { pool, .. } => (pool, None),
        Write::AddBackend { pool, address, .. } => {
            if !pool_exists(tx, pool).await? {
                return Err(StoreError::NotFound(format!("pool `{pool}`")));
            }
            if backend_exists(tx, pool, address).await? {
                return Err(StoreError::Conflict(Invalid::new(
                    "address",
                    format!(
                        "`{}` is already in pool `{pool}`",
                        canonical_address(address)
                    ),
                )));
            }
            return Ok(());
        }
        Write::RemoveBackend { pool, address }
        | Write::SetWeight { pool, address, .. }
        | Write::SetAdminState { pool, address, .. }
        | Write::SetHealth { pool, address, .. } => (pool, Some(address)),
    };
    if !pool_exists(tx, pool).await? {
        return Err(StoreError::NotFound(format!("pool `{pool}`")));
    }
    if let Some(address) = backend
        && !backend_exists(tx, pool, address).await?
    {
        return Err(StoreError::NotFound(format!(
            "backend `{}` in pool `{pool}`",
            canonical_address(address)
        )));
    }
    Ok(())
}

async fn pool_exists(tx: &mut Transaction<'static, Any>, pool: &str) -> Result<bool, StoreError> {
    statement("SELECT 1 FROM pools WHERE name = $1")
        .bind(pool)
        .fetch_optional(&mut **tx)
        .await
        .map(|row| row.is_some())
        .map_err(StoreError::database("looking up a pool"))
}

async fn backend_exists(
    tx: &mut Transaction<'static, Any>,
    pool: &str,
    address: &str,
) -> Result<bool, StoreError> {
    statement("SELECT 1 FROM backends WHERE pool = $1 AND address = $2")
        .bind(pool)
        .bind(canonical_address(address))
        .fetch_optional(&mut **tx)
        .await
        .map(|row| row.is_some())
        .map_err(StoreError::database("looking up a backend"))
}

async fn mutate(
    tx: &mut Transaction<'static, Any>,
    write: &Write,
    revision: i64,
) -> Result<(), StoreError> {
    let query = match write {
        Write::CreatePool(spec) => statement(AssertSqlSafe(format!(
            "INSERT INTO pools (name, algorithm, table_size, points_per_weight, load_factor, \
             peak_ewma_ms, hash_key, dns_name, revision, {POLICY_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {})",
            placeholders(10, POLICY_COLUMNS)
        )))
        .bind(&spec.name)
        .bind(&spec.algorithm.algorithm)
        .bind(spec.algorithm.table_size.map(i64::from))
        .bind(spec.algorithm.points_per_weight.map(i64::from))
        .bind(spec.algorithm.load_factor)
        .bind(spec.algorithm.peak_ewma_ms.map(|ms| ms as i64))
        .bind(&spec.hash_key)
        .bind(&spec.dns_name)
        .bind(revision)
        .bind_policy(&spec.policy),
        Write::DeletePool { pool } => statement("DELETE FROM pools WHERE name = $1").bind(pool),
        Write::SetAlgorithm {
            pool,
            algorithm,
            hash_key,
        } => statement(
            "UPDATE pools SET algorithm = $1, table_size = $2, points_per_weight = $3, \
             load_factor = $4, peak_ewma_ms = $5, revision = $6, \
             hash_key = COALESCE($7, hash_key) WHERE name = $8",
        )
        .bind(&algorithm.algorithm)
        .bind(algorithm.table_size.map(i64::from))
        .bind(algorithm.points_per_weight.map(i64::from))
        .bind(algorithm.load_factor)
        .bind(algorithm.peak_ewma_ms.map(|ms| ms as i64))
        .bind(revision)
        .bind(hash_key.as_deref())
        .bind(pool),
        Write::SetPolicy { pool, policy } => statement(AssertSqlSafe(format!(
            "UPDATE pools SET revision = $1, ({POLICY_COLUMNS}) = ({}) WHERE name = $2",
            placeholders(3, POLICY_COLUMNS)
        )))
        .bind(revision)
        .bind(pool)
        .bind_policy(policy),
        Write::AddBackend {
            pool,
            address,
            weight,
        } => statement(
            "INSERT INTO backends (pool, address, weight, admin_state, health, revision) \
             VALUES ($1, $2, $3, 'active', 'unknown', $4)",
        )
        .bind(pool)
        .bind(canonical_address(address))
        .bind(i64::from(*weight))
        .bind(revision),
        Write::RemoveBackend { pool, address } => {
            statement("DELETE FROM backends WHERE pool = $1 AND address = $2")
                .bind(pool)
                .bind(canonical_address(address))
        }
        Write::SetWeight {
            pool,
            address,
            weight,
        } => statement(
            "UPDATE backends SET weight = $1, revision = $2 WHERE pool = $3 AND address = $4",
        )
        .bind(i64::from(*weight))
        .bind(revision)
        .bind(pool)
        .bind(canonical_address(address)),
        Write::SetAdminState {
            pool,
            address,
            state,
        } => statement(
            "UPDATE backends SET admin_state = $1, revision = $2 WHERE pool = $3 AND address = $4",
        )
        .bind(state.as_str())
        .bind(revision)
        .bind(pool)
        .bind(canonical_address(address)),
        Write::SetHealth {
            pool,
            address,
            health,
            phi,
            reason,
        } => statement(
            "UPDATE backends SET health = $1, phi = $2, health_reason = $3, revision = $4 \
             WHERE pool = $5 AND address = $6",
        )
        .bind(health.as_str())
        .bind(phi.map(|phi| phi.min(f64::MAX)))
        .bind(reason)
        .bind(revision)
        .bind(pool)
        .bind(canonical_address(address)),
    };
    query
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(StoreError::database("applying a write"))
}

/// A pool's policy columns, in the order [`BindPolicy::bind_policy`] binds them.
const POLICY_COLUMNS: &str = "retries, connect_timeout_ms, response_timeout_ms, health_path, \
     health_interval_ms, health_timeout_ms, health_rise, health_fall, phi_threshold, phi_window, \
     phi_min_std_dev_ms, phi_acceptable_pause_ms";

/// `$first, $first+1, …`, one per column of `columns`.
fn placeholders(first: usize, columns: &str) -> String {
    let count = columns.split(',').count();
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds a pool's policy, one value per [`POLICY_COLUMNS`].
trait BindPolicy<'q> {
    fn bind_policy(self, policy: &'q crate::model::PoolPolicy) -> Self;
}

impl<'q> BindPolicy<'q> for sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    fn bind_policy(self, policy: &'q crate::model::PoolPolicy) -> Self {
        self.bind(policy.retries.map(i64::from))
            .bind(millis(policy.connect_timeout_ms))
            .bind(millis(policy.response_timeout_ms))
            .bind(&policy.health_path)
            .bind(millis(policy.health_interval_ms))
            .bind(millis(policy.health_timeout_ms))
            .bind(policy.health_rise.map(i64::from))
            .bind(policy.health_fall.map(i64::from))
            .bind(policy.phi_threshold)
            .bind(policy.phi_window.map(i64::from))
            .bind(millis(policy.phi_min_std_dev_ms))
            .bind(millis(policy.phi_acceptable_pause_ms))
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn pool_from(row: &AnyRow) -> Result<PoolSpec, sqlx::Error> {
    Ok(PoolSpec {
        name: row.try_get("name")?,
        algorithm: AlgorithmSpec {
            algorithm: row.try_get("algorithm")?,
            table_size: small(row, "table_size")?,
            points_per_weight: small(row, "points_per_weight")?,
            load_factor: row.try_get("load_factor")?,
            peak_ewma_ms: row
                .try_get::<Option<i64>, _>("peak_ewma_ms")?
                .map(|ms| ms as u64),
        },
        hash_key: row.try_get("hash_key")?,
        dns_name: row.try_get("dns_name")?,
        policy: crate::model::PoolPolicy {
            retries: small(row, "retries")?,
            connect_timeout_ms: whole(row, "connect_timeout_ms")?,
            response_timeout_ms: whole(row, "response_timeout_ms")?,
            health_path: row.try_get("health_path")?,
            health_interval_ms: whole(row, "health_interval_ms")?,
            health_timeout_ms: whole(row, "health_timeout_ms")?,
            health_rise: small(row, "health_rise")?,
            health_fall: small(row, "health_fall")?,
            phi_threshold: row.try_get("phi_threshold")?,
            phi_window: small(row, "phi_window")?,
            phi_min_std_dev_ms: whole(row, "phi_min_std_dev_ms")?,
            phi_acceptable_pause_ms: whole(row, "phi_acceptable_pause_ms")?,
        },
    })
}

/// An optional count of milliseconds as stored.
fn millis(value: Option<u64>) -> Option<i64> {
    value.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

/// An optional non-negative whole number.
fn whole(row: &AnyRow, column: &str) -> Result<Option<u64>, sqlx::Error> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|value| {
            u64::try_from(value).map_err(|e| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: e.into(),
            })
        })
        .transpose()
}

/// An optional whole number that must fit in `u32`.
fn small(row: &AnyRow, column: &str) -> Result<Option<u32>, sqlx::Error> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|value| {
            u32::try_from(value).map_err(|e| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: e.into(),
            })
        })
        .transpose()
}

fn backend_from(row: &AnyRow) -> Result<(String, Backend), sqlx::Error> {
    let text = |column: &str| row.try_get::<String, _>(column);
    let decode = |column: &str, e: String| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: e.into(),
    };
    Ok((
        text("pool")?,
        Backend {
            address: text("address")?,
            weight: u32::try_from(row.try_get::<i64, _>("weight")?)
                .map_err(|e| decode("weight", e.to_string()))?,
            admin_state: text("admin_state")?
                .parse::<AdminState>()
                .map_err(|e| decode("admin_state", e))?,
            health: text("health")?
                .parse::<Health>()
                .map_err(|e| decode("health", e))?,
            phi: row.try_get("phi")?,
            health_reason: row.try_get("health_reason")?,
        },
    ))
}

impl ConfigStore for SqlStore {
    async fn apply(&self, write: Write) -> Result<u64, StoreError> {
        check(&write)?;
        self.write(&write, None).await
    }

    async fn apply_fenced(&self, write: Write, fence: &Fence) -> Result<u64, StoreError> {
        check(&write)?;
        self.write(&write, Some(fence)).await
    }

    async fn config(&self) -> Result<Config, StoreError> {
        let fail = || StoreError::database("reading the configuration");
        let mut tx = self.reader.begin().await.map_err(fail())?;
        if self.dialect == Dialect::Postgres {
            // One snapshot for the revision, the pools and the backends (READ COMMITTED gives
            // each statement its own, and a write between them would mix two revisions).
            statement("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(fail())?;
        }
        let revision: i64 = statement("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("value"))
            .map_err(fail())?;
        let pools = statement("SELECT * FROM pools ORDER BY name")
            .fetch_all(&mut *tx)
            .await
            .map_err(fail())?;
        let backends = statement("SELECT * FROM backends ORDER BY pool, address")
            .fetch_all(&mut *tx)
            .await
            .map_err(fail())?;
        tx.commit().await.map_err(fail())?;
        let mut pools: Vec<Pool> = pools
            .iter()
            .map(|row| {
                pool_from(row).map(|spec| Pool {
                    spec,
                    backends: Vec::new(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(fail())?;
        for row in &backends {
            let (pool, backend) = backend_from(row).map_err(fail())?;
            if let Some(pool) = pools.iter_mut().find(|p| p.spec.name == pool) {
                pool.backends.push(backend);
            }
        }
        // Ordered here rather than in SQL: PostgreSQL's collation depends on the server's locale,
        // and followers rely on one byte-wise order (see `Config::apply`).
        pools.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        for pool in &mut pools {
            pool.backends.sort_by(|a, b| a.address.cmp(&b.address));
        }
        Ok(Config {
            revision: revision as u64,
            pools,
        })
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.fetch_one_alone(statement("SELECT value FROM revision WHERE id = 1"))
            .await
            .and_then(|row| row.try_get::<i64, _>("value"))
            .map(|value| value as u64)
            .map_err(StoreError::database("reading the revision"))
    }

    async fn heartbeat(&self, server: &LbServer) -> Result<(), StoreError> {
        crate::validate::check_lb_name(&server.name)?;
        let list = |items: &[String]| serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
        self.execute_alone(
            statement(
                "INSERT INTO lb_servers (name, addresses, pools, admin, applied_revision, state, \
             last_heartbeat_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (name) DO UPDATE SET addresses = excluded.addresses, \
             pools = excluded.pools, admin = excluded.admin, \
             applied_revision = excluded.applied_revision, state = excluded.state, \
             last_heartbeat_ms = excluded.last_heartbeat_ms",
            )
            .bind(&server.name)
            .bind(list(&server.addresses))
            .bind(list(&server.pools))
            .bind(&server.admin)
            .bind(i64::try_from(server.applied_revision).unwrap_or(i64::MAX))
            .bind(server.state.as_str())
            .bind(now_ms()),
        )
        .await
        .map(|_| ())
        .map_err(StoreError::database("recording a heartbeat"))
    }

    async fn lb_servers(&self) -> Result<Vec<LbServer>, StoreError> {
        let fail = || StoreError::database("reading the LB servers");
        let rows = self
            .fetch_alone(statement("SELECT * FROM lb_servers ORDER BY name"))
            .await
            .map_err(fail())?;
        let list = |text: String| serde_json::from_str::<Vec<String>>(&text).unwrap_or_default();
        let mut servers = rows
            .iter()
            .map(|row| {
                Ok(LbServer {
                    name: row.try_get("name")?,
                    addresses: list(row.try_get("addresses")?),
                    pools: list(row.try_get("pools")?),
                    admin: row.try_get("admin")?,
                    applied_revision: row.try_get::<i64, _>("applied_revision")? as u64,
                    state: row
                        .try_get::<String, _>("state")?
                        .parse::<LbState>()
                        .map_err(|e| sqlx::Error::ColumnDecode {
                            index: "state".to_owned(),
                            source: e.into(),
                        })?,
                    last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
                    figures: crate::fleet::figures_from(row)?,
                    liveness: row.try_get::<String, _>("liveness")?.parse().map_err(
                        |e: String| sqlx::Error::ColumnDecode {
                            index: "liveness".to_owned(),
                            source: e.into(),
                        },
                    )?,
                    liveness_reason: row.try_get("liveness_reason")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(fail())?;
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(servers)
    }

    async fn changes_since(&self, revision: u64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let fail = || StoreError::database("reading the change log");
        let rows = self
            .fetch_alone(
                statement(
                    "SELECT revision, entity, operation, value, at_ms FROM changes \
             WHERE revision > $1 ORDER BY revision LIMIT $2",
                )
                .bind(i64::try_from(revision).unwrap_or(i64::MAX))
                .bind(i64::from(limit)),
            )
            .await
            .map_err(fail())?;
        rows.iter()
            .map(|row| {
                let value: String = row.try_get("value")?;
                Ok(Change {
                    revision: row.try_get::<i64, _>("revision")? as u64,
                    entity: row.try_get("entity")?,
                    operation: row.try_get("operation")?,
                    value: serde_json::from_str(&value).unwrap_or(serde_json::Value::Null),
                    at_ms: row.try_get("at_ms")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(fail())
    }

    async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError> {
        self.execute_alone(
statement(
            "DELETE FROM changes WHERE revision <= (SELECT value FROM revision WHERE id = 1) - $1",
        )
        .bind(i64::try_from(keep).unwrap_or(i64::MAX)),
)
.await
        .map(|done| done.rows_affected())
        .map_err(StoreError::database("pruning the change log"))
    }
}
