//! `session-cost`: what the writer's PgBouncer-safe settings cost, measured side by side.
//!
//! Under PgBouncer 1.18 in transaction mode the writer runs with the prepared statement
//! cache off and every statement inside an explicit transaction. This tool runs the same
//! small read as many sessions, concurrently, in four configurations, interleaved over
//! several rounds so machine noise hits all of them alike, and prints medians and ratios:
//!
//! - `product`: the product's writer path (`Database::write`): PgBouncer, cache off,
//!   `BEGIN; SET LOCAL ...` per session.
//! - `direct-uncached-tx`: straight to the primary with the product's settings (cache off,
//!   explicit transaction): separates the cost of PgBouncer's hop from the cost of the
//!   settings it forces.
//! - `direct-tx`: straight to the primary, statement cache on, explicit transaction.
//! - `direct`: straight to the primary, statement cache on, no transaction (the floor).
//! - `pgbouncer-cached`: PgBouncer with the default statement cache and no transaction,
//!   which is what breaks; its error count is the reason for the product's settings.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use platform::db::{Database, DbConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

#[derive(Parser)]
struct Cli {
    /// PgBouncer URL of the application database.
    #[arg(long, env = "DB_WRITER_URL")]
    writer_url: String,
    /// Direct primary URL of the same database.
    #[arg(long, env = "DB_PRIMARY_URL")]
    primary_url: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Sessions per task per round.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const QUERY: &str = "SELECT id, amount, status FROM payments WHERE id = $1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Product,
    DirectUncachedTx,
    DirectTx,
    Direct,
    PgbouncerCached,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Product,
        Mode::DirectUncachedTx,
        Mode::DirectTx,
        Mode::Direct,
        Mode::PgbouncerCached,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Product => "product (pgbouncer, cache off, tx)",
            Mode::DirectUncachedTx => "direct-uncached-tx (primary, cache off, tx)",
            Mode::DirectTx => "direct-tx (primary, cache on, tx)",
            Mode::Direct => "direct (primary, cache on, no tx)",
            Mode::PgbouncerCached => "pgbouncer-cached (cache on, no tx)",
        }
    }
}

struct Targets {
    product: Database,
    direct_uncached: PgPool,
    direct: PgPool,
    pgbouncer_cached: PgPool,
}

#[derive(Default, Clone, Copy)]
struct Round {
    sessions_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pool_size = cli.concurrency as u32;
    let mut config = DbConfig {
        writer_url: cli.writer_url.clone(),
        reader_urls: Vec::new(),
        writer_pool_size: pool_size,
        reader_pool_size: 1,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
        idle_in_transaction_timeout: Duration::from_secs(10),
        session_hold_warn: Duration::from_secs(1),
        writer_transaction_pooling: true,
    };
    config.writer_pool_size = pool_size;
    let targets = Arc::new(Targets {
        product: Database::connect(config, "session-cost")?,
        direct_uncached: PgPoolOptions::new()
            .max_connections(pool_size)
            .connect_with(PgConnectOptions::from_str(&cli.primary_url)?.statement_cache_capacity(0))
            .await?,
        direct: PgPoolOptions::new()
            .max_connections(pool_size)
            .connect_with(PgConnectOptions::from_str(&cli.primary_url)?)
            .await?,
        pgbouncer_cached: PgPoolOptions::new()
            .max_connections(pool_size)
            .connect_with(PgConnectOptions::from_str(&cli.writer_url)?)
            .await?,
    });

    let mut results: Vec<(Mode, Vec<Round>)> = Mode::ALL.iter().map(|m| (*m, Vec::new())).collect();
    for round in 0..cli.rounds {
        for (mode, rounds) in results.iter_mut() {
            let measured = run(targets.clone(), *mode, cli.concurrency, cli.sessions).await;
            rounds.push(measured);
        }
        eprintln!("round {} of {} done", round + 1, cli.rounds);
    }

    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "\n{} concurrent sessions, {} sessions per task per round, {} rounds (medians over rounds)\n",
        cli.concurrency, cli.sessions, cli.rounds
    );
    println!("| mode | sessions/s | p50 µs | p99 µs | errors (all rounds) |");
    println!("|---|---:|---:|---:|---:|");
    let mut throughput = Vec::new();
    let mut p50 = Vec::new();
    for (mode, rounds) in &results {
        let mut rate: Vec<f64> = rounds.iter().map(|r| r.sessions_per_second).collect();
        let mut p50s: Vec<f64> = rounds.iter().map(|r| r.p50_us as f64).collect();
        let mut p99s: Vec<f64> = rounds.iter().map(|r| r.p99_us as f64).collect();
        let errors: u64 = rounds.iter().map(|r| r.errors).sum();
        let (rate, p50_us, p99_us) = (median(&mut rate), median(&mut p50s), median(&mut p99s));
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} |",
            mode.name(),
            rate,
            p50_us,
            p99_us,
            errors
        );
        throughput.push(rate);
        p50.push(p50_us);
    }
    let ratio = |name: &str, other: usize| {
        println!(
            "product vs {name}: throughput x{:.2}, p50 x{:.2}",
            throughput[0] / throughput[other],
            p50[0] / p50[other]
        )
    };
    println!();
    ratio("direct-uncached-tx (the PgBouncer hop alone)", 1);
    ratio("direct-tx", 2);
    ratio("direct, no tx (the floor)", 3);
    Ok(())
}

/// Session latencies in microseconds, 1 µs to 60 s. Fixed bounds so that histograms from
/// different tasks merge exactly.
fn session_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

async fn run(targets: Arc<Targets>, mode: Mode, concurrency: usize, sessions: usize) -> Round {
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let targets = targets.clone();
            tokio::spawn(async move {
                let mut histogram = session_histogram();
                let mut errors = 0u64;
                for _ in 0..sessions {
                    let id = uuid::Uuid::now_v7();
                    let began = Instant::now();
                    let ok = one_session(&targets, mode, id).await;
                    histogram.saturating_record(began.elapsed().as_micros() as u64);
                    if !ok {
                        errors += 1;
                    }
                }
                (histogram, errors)
            })
        })
        .collect();

    let mut histogram = session_histogram();
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await.expect("task");
        histogram.add(&h).expect("same precision");
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Round {
        sessions_per_second: (concurrency * sessions) as f64 / elapsed,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        errors,
    }
}

async fn one_session(targets: &Targets, mode: Mode, id: uuid::Uuid) -> bool {
    match mode {
        Mode::Product => targets
            .product
            .write("session_cost", move |c| {
                Box::pin(async move {
                    sqlx::query(QUERY)
                        .bind(id)
                        .fetch_optional(c)
                        .await
                        .map(|_| ())
                })
            })
            .await
            .is_ok(),
        Mode::DirectUncachedTx | Mode::DirectTx => {
            let pool = if mode == Mode::DirectTx {
                &targets.direct
            } else {
                &targets.direct_uncached
            };
            let attempt = async {
                let mut tx = pool.begin().await?;
                sqlx::query(QUERY).bind(id).fetch_optional(&mut *tx).await?;
                tx.commit().await
            };
            attempt.await.is_ok()
        }
        Mode::Direct => sqlx::query(QUERY)
            .bind(id)
            .fetch_optional(&targets.direct)
            .await
            .is_ok(),
        Mode::PgbouncerCached => (&targets.pgbouncer_cached)
            .fetch_optional(sqlx::query(QUERY).bind(id))
            .await
            .is_ok(),
    }
}
