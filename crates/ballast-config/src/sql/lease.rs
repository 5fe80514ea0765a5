//! Leases in the configuration database, for leader election when there is no Redis: one row per
//! name with its holder, a fencing token and an expiry by the database's own clock (so that the
//! candidates' clocks need not agree). A new holder's token is larger than every token the name's
//! lease or fence has seen, so [`SqlStore::apply_fenced`]
//! refuses a former holder's late writes.

use std::time::Duration;

use sqlx::Row;

use super::{Dialect, SqlStore, statement};
use crate::store::StoreError;

/// A lease held: its fencing token and how long it was granted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token of this holding.
    pub token: u64,
    /// The TTL it was granted (or renewed) with.
    pub ttl: Duration,
}

impl Dialect {
    /// The database clock in milliseconds since the epoch, as SQL.
    fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl SqlStore {
    /// Takes the lease `name` for `holder` if it is free, expired, or already `holder`'s (then it
    /// is renewed with the same token); `None` while someone else holds it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let fail = || StoreError::database("taking a lease");
        let mut tx = self.begin_write().await.map_err(fail())?;
        // The row exists from now on, so that PostgreSQL can lock it below.
        statement(
            "INSERT INTO leases (name, holder, token, expires_ms) VALUES ($1, '', 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(fail())?;
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE OF leases",
        };
        let row = statement(sqlx::AssertSqlSafe(format!(
            "SELECT leases.holder, leases.token, leases.expires_ms, {now} AS now_ms, \
             COALESCE(fences.token, 0) AS fenced FROM leases \
             LEFT JOIN fences ON fences.name = leases.name WHERE leases.name = $1{lock}",
            now = self.dialect.now_ms()
        )))
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(fail())?;
        let current: String = row.try_get("holder").map_err(fail())?;
        let token: i64 = row.try_get("token").map_err(fail())?;
        let expires: i64 = row.try_get("expires_ms").map_err(fail())?;
        let now: i64 = row.try_get("now_ms").map_err(fail())?;
        let fenced: i64 = row.try_get("fenced").map_err(fail())?;
        let live = expires > now;
        if live && current != holder {
            return Ok(None);
        }
        let token = if live { token } else { token.max(fenced) + 1 };
        statement("UPDATE leases SET holder = $1, token = $2, expires_ms = $3 WHERE name = $4")
            .bind(holder)
            .bind(token)
            .bind(now.saturating_add(millis(ttl)))
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(fail())?;
        tx.commit().await.map_err(fail())?;
        Ok(Some(Lease {
            token: token as u64,
            ttl,
        }))
    }

    /// Extends `holder`'s lease with `token` by `ttl` from now, if it has not expired or passed
    /// to someone else; `false` otherwise.
    pub async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.dialect.now_ms();
        self.execute_alone(
            statement(sqlx::AssertSqlSafe(format!(
                "UPDATE leases SET expires_ms = {now} + $1 \
             WHERE name = $2 AND holder = $3 AND token = $4 AND expires_ms > {now}"
            )))
            .bind(millis(ttl))
            .bind(name)
            .bind(holder)
            .bind(i64::try_from(token).unwrap_or(i64::MAX)),
        )
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(StoreError::database("renewing a lease"))
    }

    /// Gives the lease up at once, if `holder` still has it with `token`.
    pub async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        self.execute_alone(
            statement(
                "UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2 AND token = $3",
            )
            .bind(name)
            .bind(holder)
            .bind(i64::try_from(token).unwrap_or(i64::MAX)),
        )
        .await
        .map(drop)
        .map_err(StoreError::database("releasing a lease"))
    }
}
