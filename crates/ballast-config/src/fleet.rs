//! What the orchestrator records about LB servers beside their heartbeats: the figures it scraped
//! from their `/metrics`, and whether it finds them alive. Neither is configuration: no revision
//! moves, nothing enters the change log.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::model::{LbFigures, Liveness};
use crate::sql::{SqlStore, check_fence, statement};
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
