//! The SQL interpreter of a [`Write`]: one transaction that bumps the revision (taking the write
//! lock first), checks what the write names exists, applies it, appends it to the change log
//! and, on PostgreSQL, announces it.

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::{Dialect, NOTIFY_CHANNEL, SqlStore, now_ms, statement};
use crate::model::{RouteEditError, Write};
use crate::store::{Fence, StoreError};
use crate::validate::{Invalid, canonical_address, check};

impl SqlStore {
    /// Applies one write in one transaction; returns the revision it produced. An invalid or
    /// clashing write changes nothing and leaves the revision where it was.
    pub async fn apply(&self, write: Write) -> Result<u64, StoreError> {
        check(&write)?;
        self.write(&write, None).await
    }

    /// Applies one write like [`apply`](Self::apply), but only if `fence`'s token is at least the
    /// newest the store has seen for its name — checked and recorded in the write's own
    /// transaction, so a writer whose lease passed to another cannot land a late write.
    pub async fn apply_fenced(&self, write: Write, fence: &Fence) -> Result<u64, StoreError> {
        check(&write)?;
        self.write(&write, Some(fence)).await
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
        match write.route_table() {
            Some(table) => edit_route_table(&mut tx, write, table, revision).await?,
            None => mutate(&mut tx, write, revision).await?,
        }
        let value = serde_json::to_string(write).unwrap_or_else(|_| "{}".to_owned());
        statement(
            "INSERT INTO changes (revision, entity, operation, value, at_ms, fence_name, \
             fence_token) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(revision)
        .bind(write.entity())
        .bind(write.operation())
        .bind(value)
        .bind(now_ms())
        .bind(fence.map(|f| f.name.clone()))
        .bind(fence.map(|f| i64::try_from(f.token).unwrap_or(i64::MAX)))
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
        Write::DeletePool { pool } => {
            if let Some((table, position)) = route_to(tx, pool).await? {
                return Err(StoreError::Conflict(Invalid::new(
                    "pool",
                    format!(
                        "route {position} of route table `{table}` sends requests to pool \
                         `{pool}`: remove or change it first"
                    ),
                )));
            }
            (pool, None)
        }
        Write::SetAlgorithm { pool, .. } | Write::SetPolicy { pool, .. } => (pool, None),
        Write::AddRoute { route, .. } => {
            if let Some(pool) = &route.pool
                && !pool_exists(tx, pool).await?
            {
                return Err(StoreError::Invalid(Invalid::new(
                    "pool",
                    format!("no pool `{pool}`"),
                )));
            }
            return Ok(());
        }
        Write::RemoveRoute { .. } | Write::MoveRoute { .. } => return Ok(()),
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

/// The first route (table, position) that sends requests to `pool`.
async fn route_to(
    tx: &mut Transaction<'static, Any>,
    pool: &str,
) -> Result<Option<(String, usize)>, StoreError> {
    let rows = statement("SELECT name, routes FROM route_tables")
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::database("reading the route tables"))?;
    let mut tables = rows
        .iter()
        .map(super::read::route_table_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::database("reading the route tables"))?;
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tables
        .into_iter()
        .find_map(|table| table.uses_pool(pool).map(|at| (table.name, at))))
}

/// Applies a route write to its table's row, with the function followers apply it with.
async fn edit_route_table(
    tx: &mut Transaction<'static, Any>,
    write: &Write,
    name: &str,
    revision: i64,
) -> Result<(), StoreError> {
    let fail = StoreError::database("editing a route table");
    let existing = statement("SELECT name, routes FROM route_tables WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::database("reading a route table"))?
        .map(|row| super::read::route_table_from(&row))
        .transpose()
        .map_err(StoreError::database("reading a route table"))?;
    let edited = write
        .edit_route_table(existing)
        .map_err(|error| match error {
            RouteEditError::NoTable(table) => {
                StoreError::NotFound(format!("route table `{table}`"))
            }
            // A place to add at is the caller's mistake; a route to remove or move is missing.
            RouteEditError::Position(invalid) if matches!(write, Write::AddRoute { .. }) => {
                StoreError::Invalid(invalid)
            }
            RouteEditError::Position(invalid) => StoreError::NotFound(invalid.reason),
        })?;
    let query = match &edited {
        Some(table) => statement(
            "INSERT INTO route_tables (name, routes, revision) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET routes = excluded.routes, revision = excluded.revision",
        )
        .bind(name)
        .bind(serde_json::to_string(&table.routes).unwrap_or_else(|_| "[]".to_owned()))
        .bind(revision),
        None => statement("DELETE FROM route_tables WHERE name = $1").bind(name),
    };
    query.execute(&mut **tx).await.map(drop).map_err(fail)
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
        // Edited whole by `edit_route_table`.
        Write::AddRoute { .. } | Write::RemoveRoute { .. } | Write::MoveRoute { .. } => {
            return Ok(());
        }
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
     phi_min_std_dev_ms, phi_acceptable_pause_ms, protocol, send_proxy_protocol, \
     slow_start_ms, max_requests, queue_size, queue_timeout_ms, retry_budget_percent, \
     retry_budget_min, sticky_cookie, tls, ca_file, server_name, client_cert, client_key, \
     insecure_skip_verify, max_connections";

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
            .bind(super::read::millis(policy.connect_timeout_ms))
            .bind(super::read::millis(policy.response_timeout_ms))
            .bind(&policy.health_path)
            .bind(super::read::millis(policy.health_interval_ms))
            .bind(super::read::millis(policy.health_timeout_ms))
            .bind(policy.health_rise.map(i64::from))
            .bind(policy.health_fall.map(i64::from))
            .bind(policy.phi_threshold)
            .bind(policy.phi_window.map(i64::from))
            .bind(super::read::millis(policy.phi_min_std_dev_ms))
            .bind(super::read::millis(policy.phi_acceptable_pause_ms))
            .bind(policy.protocol.map(crate::model::UpstreamProtocol::name))
            .bind(
                policy
                    .send_proxy_protocol
                    .map(crate::model::ProxyProtocol::name),
            )
            .bind(super::read::millis(policy.slow_start_ms))
            .bind(policy.max_requests.map(i64::from))
            .bind(policy.queue_size.map(i64::from))
            .bind(super::read::millis(policy.queue_timeout_ms))
            .bind(policy.retry_budget_percent)
            .bind(policy.retry_budget_min.map(i64::from))
            .bind(policy.sticky_cookie.as_deref())
            .bind(policy.tls.map(i64::from))
            .bind(policy.ca_file.as_deref())
            .bind(policy.server_name.as_deref())
            .bind(policy.client_cert.as_deref())
            .bind(policy.client_key.as_deref())
            .bind(policy.insecure_skip_verify.map(i64::from))
            .bind(policy.max_connections.map(i64::from))
    }
}
