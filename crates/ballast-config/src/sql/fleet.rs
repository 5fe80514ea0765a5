//! What the orchestrator records about LB servers beside their heartbeats: the figures it scraped
//! from their `/metrics`, and whether it finds them alive. Neither is configuration: no revision
//! moves, nothing enters the change log.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::write::check_fence;
use super::{SqlStore, now_ms, statement};
use crate::model::{LbFigures, LbServer, LbState, Liveness};
use crate::store::{Fence, StoreError};

/// The figures of an `lb_servers` row, if it has been scraped.
pub(crate) fn figures_from(row: &AnyRow) -> Result<Option<LbFigures>, sqlx::Error> {
    let Some(scraped_ms) = row.try_get::<Option<i64>, _>("scraped_ms")? else {
        return Ok(None);
    };
    let whole = |column: &str| -> Result<u64, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(column)?.unwrap_or(0).max(0) as u64)
    };
    Ok(Some(LbFigures {
        cpu_cores: row.try_get::<Option<f64>, _>("cpu_cores")?.unwrap_or(0.0),
        resident_bytes: whole("resident_bytes")?,
        connections: whole("connections")?,
        requests_per_second: row
            .try_get::<Option<f64>, _>("requests_per_second")?
            .unwrap_or(0.0),
        scraped_ms,
    }))
}

impl SqlStore {
    /// Records an LB server's heartbeat (its row, replaced whole). Not a configuration change:
    /// the revision stays where it is.
    pub async fn heartbeat(&self, server: &LbServer) -> Result<(), StoreError> {
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

    /// Every LB server that has reported, by name.
    pub async fn lb_servers(&self) -> Result<Vec<LbServer>, StoreError> {
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
                    figures: figures_from(row)?,
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

    /// Records the latest figures scraped from LB server `name` (nothing if it never reported),
    /// unless `fence` is older than the newest token seen.
    pub async fn record_lb_figures(
        &self,
        name: &str,
        figures: &LbFigures,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let query = statement(
            "UPDATE lb_servers SET cpu_cores = $1, resident_bytes = $2, connections = $3, \
             requests_per_second = $4, scraped_ms = $5 WHERE name = $6",
        )
        .bind(figures.cpu_cores)
        .bind(i64::try_from(figures.resident_bytes).unwrap_or(i64::MAX))
        .bind(i64::try_from(figures.connections).unwrap_or(i64::MAX))
        .bind(figures.requests_per_second)
        .bind(figures.scraped_ms)
        .bind(name);
        self.fenced(query, fence, "recording an LB's figures").await
    }

    /// Records the orchestrator's verdict on whether LB server `name` is alive, and why, unless
    /// `fence` is older than the newest token seen.
    pub async fn set_lb_liveness(
        &self,
        name: &str,
        liveness: Liveness,
        reason: &str,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let query =
            statement("UPDATE lb_servers SET liveness = $1, liveness_reason = $2 WHERE name = $3")
                .bind(liveness.as_str())
                .bind(reason)
                .bind(name);
        self.fenced(query, fence, "recording an LB's liveness")
            .await
    }

    /// Runs `query` in a transaction that first checks `fence`.
    async fn fenced(
        &self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
        fence: Option<&Fence>,
        context: &'static str,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .begin_write()
            .await
            .map_err(StoreError::database(context))?;
        if let Some(fence) = fence {
            check_fence(&mut tx, fence).await?;
        }
        query
            .execute(&mut *tx)
            .await
            .map_err(StoreError::database(context))?;
        tx.commit().await.map_err(StoreError::database(context))
    }
}
