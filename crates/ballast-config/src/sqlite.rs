//! The embedded store: one SQLite file in WAL mode, no server to run.
//!
//! Writes go through a single connection and open with `BEGIN IMMEDIATE`, so they are serialized
//! without any transaction having to upgrade its lock half-way (the classic SQLite `BUSY`); reads
//! use their own small pool and see a consistent snapshot while a write is under way.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::model::{
    AdminState, AlgorithmSpec, Backend, Change, Config, Health, Pool, PoolSpec, Write,
};
use crate::store::{ConfigStore, StoreError};
use crate::validate::{Invalid, canonical_address, check};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// A configuration store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::database("opening the database"))?;
        MIGRATIONS
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database {
                context: "migrating the schema",
                source: e.into(),
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(StoreError::database("opening the database for reading"))?;
        Ok(Self { writer, reader })
    }

    async fn write(&self, write: &Write) -> Result<u64, StoreError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::database("starting a write"))?;
        require_existing(&mut tx, write).await?;
        let revision: i64 =
            sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value")
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get("value"))
                .map_err(StoreError::database("bumping the revision"))?;
        mutate(&mut tx, write, revision).await?;
        let value = serde_json::to_string(write).unwrap_or_else(|_| "{}".to_owned());
        sqlx::query("INSERT INTO changes (revision, entity, operation, value, at_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(revision)
            .bind(write.entity())
            .bind(write.operation())
            .bind(value)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::database("appending to the change log"))?;
        tx.commit()
            .await
            .map_err(StoreError::database("committing a write"))?;
        Ok(revision as u64)
    }
}

/// Refuses a write that names a missing pool or backend, or would duplicate one.
async fn require_existing(
    tx: &mut Transaction<'static, Sqlite>,
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
        Write::DeletePool { pool } | Write::SetAlgorithm { pool, .. } => (pool, None),
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
    if let Some(address) = backend {
        if !backend_exists(tx, pool, address).await? {
            return Err(StoreError::NotFound(format!(
                "backend `{}` in pool `{pool}`",
                canonical_address(address)
            )));
        }
    }
    Ok(())
}

async fn pool_exists(
    tx: &mut Transaction<'static, Sqlite>,
    pool: &str,
) -> Result<bool, StoreError> {
    sqlx::query("SELECT 1 FROM pools WHERE name = ?")
        .bind(pool)
        .fetch_optional(&mut **tx)
        .await
        .map(|row| row.is_some())
        .map_err(StoreError::database("looking up a pool"))
}

async fn backend_exists(
    tx: &mut Transaction<'static, Sqlite>,
    pool: &str,
    address: &str,
) -> Result<bool, StoreError> {
    sqlx::query("SELECT 1 FROM backends WHERE pool = ? AND address = ?")
        .bind(pool)
        .bind(canonical_address(address))
        .fetch_optional(&mut **tx)
        .await
        .map(|row| row.is_some())
        .map_err(StoreError::database("looking up a backend"))
}

async fn mutate(
    tx: &mut Transaction<'static, Sqlite>,
    write: &Write,
    revision: i64,
) -> Result<(), StoreError> {
    let query = match write {
        Write::CreatePool(spec) => sqlx::query(
            "INSERT INTO pools (name, algorithm, table_size, points_per_weight, load_factor, \
             peak_ewma_ms, hash_key, dns_name, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&spec.name)
        .bind(&spec.algorithm.algorithm)
        .bind(spec.algorithm.table_size)
        .bind(spec.algorithm.points_per_weight)
        .bind(spec.algorithm.load_factor)
        .bind(spec.algorithm.peak_ewma_ms.map(|ms| ms as i64))
        .bind(&spec.hash_key)
        .bind(&spec.dns_name)
        .bind(revision),
        Write::DeletePool { pool } => sqlx::query("DELETE FROM pools WHERE name = ?").bind(pool),
        Write::SetAlgorithm { pool, algorithm } => sqlx::query(
            "UPDATE pools SET algorithm = ?, table_size = ?, points_per_weight = ?, \
             load_factor = ?, peak_ewma_ms = ?, revision = ? WHERE name = ?",
        )
        .bind(&algorithm.algorithm)
        .bind(algorithm.table_size)
        .bind(algorithm.points_per_weight)
        .bind(algorithm.load_factor)
        .bind(algorithm.peak_ewma_ms.map(|ms| ms as i64))
        .bind(revision)
        .bind(pool),
        Write::AddBackend {
            pool,
            address,
            weight,
        } => sqlx::query(
            "INSERT INTO backends (pool, address, weight, admin_state, health, revision) \
             VALUES (?, ?, ?, 'active', 'unknown', ?)",
        )
        .bind(pool)
        .bind(canonical_address(address))
        .bind(i64::from(*weight))
        .bind(revision),
        Write::RemoveBackend { pool, address } => {
            sqlx::query("DELETE FROM backends WHERE pool = ? AND address = ?")
                .bind(pool)
                .bind(canonical_address(address))
        }
        Write::SetWeight {
            pool,
            address,
            weight,
        } => sqlx::query(
            "UPDATE backends SET weight = ?, revision = ? WHERE pool = ? AND address = ?",
        )
        .bind(i64::from(*weight))
        .bind(revision)
        .bind(pool)
        .bind(canonical_address(address)),
        Write::SetAdminState {
            pool,
            address,
            state,
        } => sqlx::query(
            "UPDATE backends SET admin_state = ?, revision = ? WHERE pool = ? AND address = ?",
        )
        .bind(state.as_str())
        .bind(revision)
        .bind(pool)
        .bind(canonical_address(address)),
        Write::SetHealth {
            pool,
            address,
            health,
        } => sqlx::query(
            "UPDATE backends SET health = ?, revision = ? WHERE pool = ? AND address = ?",
        )
        .bind(health.as_str())
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn pool_from(row: &SqliteRow) -> Result<PoolSpec, sqlx::Error> {
    Ok(PoolSpec {
        name: row.try_get("name")?,
        algorithm: AlgorithmSpec {
            algorithm: row.try_get("algorithm")?,
            table_size: row.try_get("table_size")?,
            points_per_weight: row.try_get("points_per_weight")?,
            load_factor: row.try_get("load_factor")?,
            peak_ewma_ms: row
                .try_get::<Option<i64>, _>("peak_ewma_ms")?
                .map(|ms| ms as u64),
        },
        hash_key: row.try_get("hash_key")?,
        dns_name: row.try_get("dns_name")?,
    })
}

fn backend_from(row: &SqliteRow) -> Result<(String, Backend), sqlx::Error> {
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
        },
    ))
}

impl ConfigStore for SqliteStore {
    async fn apply(&self, write: Write) -> Result<u64, StoreError> {
        check(&write)?;
        self.write(&write).await
    }

    async fn config(&self) -> Result<Config, StoreError> {
        let fail = || StoreError::database("reading the configuration");
        let mut tx = self.reader.begin().await.map_err(fail())?;
        let revision: i64 = sqlx::query("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get("value"))
            .map_err(fail())?;
        let pools = sqlx::query("SELECT * FROM pools ORDER BY name")
            .fetch_all(&mut *tx)
            .await
            .map_err(fail())?;
        let backends = sqlx::query("SELECT * FROM backends ORDER BY pool, address")
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
        Ok(Config {
            revision: revision as u64,
            pools,
        })
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        sqlx::query("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&self.reader)
            .await
            .and_then(|row| row.try_get::<i64, _>("value"))
            .map(|value| value as u64)
            .map_err(StoreError::database("reading the revision"))
    }

    async fn changes_since(&self, revision: u64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let fail = || StoreError::database("reading the change log");
        let rows = sqlx::query(
            "SELECT revision, entity, operation, value, at_ms FROM changes \
             WHERE revision > ? ORDER BY revision LIMIT ?",
        )
        .bind(i64::try_from(revision).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
}
