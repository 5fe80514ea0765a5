//! Reading the configuration and the change log back: rows to the model, in the one byte-wise
//! order followers rely on.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Dialect, SqlStore, statement};
use crate::model::{AdminState, AlgorithmSpec, Backend, Change, Config, Health, Pool, PoolSpec};
use crate::route::RouteTable;
use crate::store::StoreError;

/// A route table row: its routes are JSON, as the store wrote them.
pub(crate) fn route_table_from(row: &AnyRow) -> Result<RouteTable, sqlx::Error> {
    let name: String = row.try_get("name")?;
    let routes: String = row.try_get("routes")?;
    let routes = serde_json::from_str(&routes).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(RouteTable { name, routes })
}

impl SqlStore {
    /// The whole configuration, consistent at one revision.
    pub async fn config(&self) -> Result<Config, StoreError> {
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
        let tables = statement("SELECT name, routes FROM route_tables")
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
        let mut route_tables = tables
            .iter()
            .map(route_table_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail())?;
        route_tables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Config {
            revision: revision as u64,
            pools,
            route_tables,
        })
    }

    /// One route table, if it has routes.
    pub async fn route_table(&self, name: &str) -> Result<Option<RouteTable>, StoreError> {
        let rows = self
            .fetch_alone(
                statement("SELECT name, routes FROM route_tables WHERE name = $1").bind(name),
            )
            .await
            .map_err(StoreError::database("reading a route table"))?;
        rows.first()
            .map(route_table_from)
            .transpose()
            .map_err(StoreError::database("reading a route table"))
    }

    /// The current revision.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        self.fetch_one_alone(statement("SELECT value FROM revision WHERE id = 1"))
            .await
            .and_then(|row| row.try_get::<i64, _>("value"))
            .map(|value| value as u64)
            .map_err(StoreError::database("reading the revision"))
    }

    /// Up to `limit` changes after `revision`, oldest first. When the log has been pruned past
    /// `revision`, the first change returned is later than `revision + 1`: a follower must then
    /// read the whole configuration instead.
    pub async fn changes_since(
        &self,
        revision: u64,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        let fail = || StoreError::database("reading the change log");
        let rows = self
            .fetch_alone(
                statement(
                    "SELECT revision, entity, operation, value, at_ms, fence_name, fence_token \
             FROM changes \
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
                    fence_name: row.try_get("fence_name")?,
                    fence_token: row
                        .try_get::<Option<i64>, _>("fence_token")?
                        .map(|token| token as u64),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(fail())
    }

    /// Deletes the change log's entries except the latest `keep` revisions; returns how many
    /// went. Followers further behind than that reload the whole configuration, so `keep` trades
    /// the log's size against how long a follower may be away and still catch up change by
    /// change.
    pub async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError> {
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
            protocol: row
                .try_get::<Option<String>, _>("protocol")?
                .map(|name| name.parse())
                .transpose()
                .map_err(|e: crate::validate::Invalid| sqlx::Error::Decode(e.reason.into()))?,
            slow_start_ms: whole(row, "slow_start_ms")?,
            max_requests: small(row, "max_requests")?,
            max_connections: small(row, "max_connections")?,
            queue_size: small(row, "queue_size")?,
            queue_timeout_ms: whole(row, "queue_timeout_ms")?,
            retry_budget_percent: row.try_get("retry_budget_percent")?,
            retry_budget_min: small(row, "retry_budget_min")?,
            sticky_cookie: row.try_get("sticky_cookie")?,
            tls: flag(row, "tls")?,
            ca_file: row.try_get("ca_file")?,
            server_name: row.try_get("server_name")?,
            client_cert: row.try_get("client_cert")?,
            client_key: row.try_get("client_key")?,
            insecure_skip_verify: flag(row, "insecure_skip_verify")?,
            send_proxy_protocol: row
                .try_get::<Option<String>, _>("send_proxy_protocol")?
                .map(|name| name.parse())
                .transpose()
                .map_err(|e: crate::validate::Invalid| sqlx::Error::Decode(e.reason.into()))?,
        },
    })
}

/// An optional count of milliseconds as stored.
pub(crate) fn millis(value: Option<u64>) -> Option<i64> {
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
/// A yes-or-no column, stored as 0 or 1 (the one integer type both dialects read alike).
fn flag(row: &AnyRow, column: &str) -> Result<Option<bool>, sqlx::Error> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(|n| n != 0))
}

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
