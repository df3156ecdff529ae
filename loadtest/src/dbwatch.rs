//! Samples the database connections a step actually uses: client backends on the primary
//! (`pg_stat_activity`) and server connections in PgBouncer's pools (`SHOW POOLS`).

use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::watch;

/// The busiest moment seen during a step.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DbPeak {
    pub samples: u32,
    /// Client backends connected to the application database on the primary.
    pub primary_connections_max: i64,
    /// Of those, the ones not idle (running a statement or inside a transaction).
    pub primary_busy_max: i64,
    /// Client backends connected to the application database on the replica.
    pub replica_connections_max: i64,
    /// Of those, the ones not idle.
    pub replica_busy_max: i64,
    /// PgBouncer server connections assigned to clients (`sv_active`).
    pub pgbouncer_server_active_max: i64,
    /// PgBouncer clients waiting for a server connection (`cl_waiting`).
    pub pgbouncer_clients_waiting_max: i64,
}

pub struct DbWatch {
    pub primary_url: Option<String>,
    pub replica_url: Option<String>,
    pub pgbouncer_admin_url: Option<String>,
    pub database: String,
    pub interval: Duration,
}

impl DbWatch {
    /// Samples until `stop` turns true, then returns the peak.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> DbPeak {
        let mut peak = DbPeak::default();
        let mut primary = match &self.primary_url {
            Some(url) => PgConnection::connect(url).await.ok(),
            None => None,
        };
        let mut replica = match &self.replica_url {
            Some(url) => PgConnection::connect(url).await.ok(),
            None => None,
        };
        let mut pgbouncer = match &self.pgbouncer_admin_url {
            Some(url) => PgConnection::connect(url).await.ok(),
            None => None,
        };
        if primary.is_none() && pgbouncer.is_none() {
            return peak;
        }

        let mut ticker = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            if let Some(connection) = primary.as_mut()
                && let Ok((connections, busy)) = self.sample_backends(connection).await
            {
                peak.primary_connections_max = peak.primary_connections_max.max(connections);
                peak.primary_busy_max = peak.primary_busy_max.max(busy);
            }
            if let Some(connection) = replica.as_mut()
                && let Ok((connections, busy)) = self.sample_backends(connection).await
            {
                peak.replica_connections_max = peak.replica_connections_max.max(connections);
                peak.replica_busy_max = peak.replica_busy_max.max(busy);
            }
            if let Some(connection) = pgbouncer.as_mut()
                && let Ok((active, waiting)) = sample_pgbouncer(connection).await
            {
                peak.pgbouncer_server_active_max = peak.pgbouncer_server_active_max.max(active);
                peak.pgbouncer_clients_waiting_max =
                    peak.pgbouncer_clients_waiting_max.max(waiting);
            }
            peak.samples += 1;
        }
        peak
    }

    /// Client backends of the application database on one server, and how many are busy.
    async fn sample_backends(&self, connection: &mut PgConnection) -> sqlx::Result<(i64, i64)> {
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .bind(&self.database)
        .fetch_one(connection)
        .await
    }
}

/// Sums `sv_active` and `cl_waiting` over every pool but PgBouncer's own. The admin console
/// speaks only the simple query protocol, which `raw_sql` uses.
async fn sample_pgbouncer(connection: &mut PgConnection) -> sqlx::Result<(i64, i64)> {
    let rows = sqlx::raw_sql("SHOW POOLS").fetch_all(connection).await?;
    let mut active = 0;
    let mut waiting = 0;
    for row in rows {
        let database: String = row.try_get("database")?;
        if database == "pgbouncer" {
            continue;
        }
        active += number(&row, "sv_active");
        waiting += number(&row, "cl_waiting");
    }
    Ok((active, waiting))
}

/// PgBouncer reports counters as int8 in some columns and as text in others, depending on
/// its version; accept either.
fn number(row: &sqlx::postgres::PgRow, column: &str) -> i64 {
    row.try_get::<i64, _>(column)
        .or_else(|_| row.try_get::<i32, _>(column).map(i64::from))
        .or_else(|_| {
            row.try_get::<String, _>(column)
                .map(|s| s.parse().unwrap_or(0))
        })
        .unwrap_or(0)
}
