//! `worker`: relay the outbox to the stream and load the stream into ClickHouse.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::analytics;
use platform::db::Database;
use platform::redis::Redis;
use tokio::sync::watch;
use worker::admin::{self, AdminState};
use worker::config::WorkerConfig;
use worker::consumer::{Consumer, ConsumerStats};
use worker::monitor::LagMonitor;
use worker::relay::{Relay, RelayStats};

#[derive(Parser)]
#[command(
    version,
    about = "The Tierstack worker: outbox relay and ClickHouse loader"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay and consume until SIGTERM. Settings come from the environment (see the README).
    Run,
    /// Create the ClickHouse database and table, then exit (`run` also does this).
    Schema,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = platform::telemetry::init("worker");
    let config = WorkerConfig::from_env()?;
    let clickhouse_url = config.clickhouse.url.clone().expect("checked by from_env");
    let clickhouse_root = analytics::client(&clickhouse_url, "default");
    match Cli::parse().command {
        Command::Schema => {
            analytics::ensure_schema(&clickhouse_root, &config.clickhouse.database).await?;
            tracing::info!(database = %config.clickhouse.database, "ClickHouse schema in place");
            Ok(())
        }
        Command::Run => {
            let outcome = run(config, clickhouse_url, clickhouse_root).await;
            telemetry.shutdown();
            outcome
        }
    }
}

async fn run(
    config: WorkerConfig,
    clickhouse_url: String,
    clickhouse_root: clickhouse::Client,
) -> anyhow::Result<()> {
    let db = Database::connect(config.db.clone(), "tierstack-worker")?;
    let redis = Redis::connect(&config.redis)?.context("REDIS_URL must be set")?;
    let (stop_tx, stop) = watch::channel(false);

    let relay_stats = Arc::new(RelayStats::default());
    let consumer_stats = Arc::new(ConsumerStats::default());
    let lag = LagMonitor::default();

    let relay = Relay {
        db: db.clone(),
        redis: redis.clone(),
        name: config.consumer_name.clone(),
        batch: config.relay_batch,
        lease: config.relay_lease,
        poll: config.relay_poll,
        retention: config.outbox_retention,
        stats: relay_stats.clone(),
    };
    let consumer = Consumer {
        redis: redis.clone(),
        clickhouse: analytics::client(&clickhouse_url, &config.clickhouse.database),
        clickhouse_root,
        database: config.clickhouse.database.clone(),
        name: config.consumer_name.clone(),
        read_count: config.read_count,
        insert_max_rows: config.insert_max_rows,
        insert_period: config.insert_period,
        claim_idle: config.claim_idle,
        timeout: config.clickhouse.timeout,
        stats: consumer_stats.clone(),
    };

    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
    tracing::info!(
        admin = %config.admin_listen,
        consumer = %config.consumer_name,
        "worker started"
    );
    let admin_state = AdminState {
        lag: lag.clone(),
        relay: relay_stats,
        consumer: consumer_stats.clone(),
        redis: redis.clone(),
    };
    admin::register_metrics(&admin_state);
    let admin = admin::router(admin_state);
    let mut admin_stop = stop.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(listener, admin)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let monitor = tokio::spawn(lag.run(
        db.clone(),
        redis,
        consumer_stats,
        Duration::from_secs(2),
        stop.clone(),
    ));
    let relay = tokio::spawn(relay.run(stop.clone()));
    let consumer = tokio::spawn(consumer.run(stop.clone()));

    shutdown_signal().await;
    tracing::info!("stopping: finishing the current batches");
    let _ = stop_tx.send(true);
    let _ = tokio::join!(relay, consumer, monitor, admin_task);
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
