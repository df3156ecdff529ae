//! `loadtest`: the concurrency ladder.
//!
//! It tests concurrent requests, not requests per second: at each step N virtual clients
//! each keep one request in flight, and the tool measures what the service then delivers
//! (throughput, latency, errors by class) and what it costs the database (connections on
//! the primary and in PgBouncer).

mod dbwatch;
mod runner;
mod scenario;
mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use dbwatch::{DbPeak, DbWatch};
use runner::{Progress, StepPlan, Workload, run_step};
use scenario::Mix;
use stats::{Outcome, Percentiles, Recorder};

#[derive(Parser)]
#[command(version, about = "Concurrency ladder against a Tierstack API")]
struct Cli {
    /// Base URL of the API (normally the load balancer).
    #[arg(long, env = "TIERSTACK_HAPROXY_URL")]
    target: String,
    /// Concurrency steps, run in order.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,120")]
    steps: Vec<usize>,
    /// Seconds of load before measuring, per step.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds measured, per step.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operation weights, e.g. `create=1,get=3,list=1`.
    #[arg(long, default_value = "create=1")]
    mix: Mix,
    /// Accounts to seed and spread the clients over.
    #[arg(long, default_value_t = 50)]
    accounts: usize,
    /// The primary, to seed accounts and watch its connections.
    #[arg(long, env = "DB_PRIMARY_URL")]
    primary_url: String,
    /// PgBouncer's admin console, to watch its pools.
    #[arg(long, env = "PGBOUNCER_ADMIN_URL")]
    pgbouncer_admin_url: Option<String>,
    /// The application database whose connections are counted.
    #[arg(long, default_value = "tierstack")]
    database: String,
    /// The client gives up on a request after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    client_timeout: f64,
    /// Write the results as JSON here.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// A label for this run in the output (e.g. the mode under test).
    #[arg(long, default_value = "")]
    label: String,
}

/// One step's results, as printed and as written to JSON.
#[derive(Debug, Serialize)]
struct StepResult {
    concurrency: usize,
    seconds: f64,
    requests: u64,
    throughput_rps: f64,
    goodput_rps: f64,
    success: Percentiles,
    failure: Percentiles,
    outcomes: std::collections::BTreeMap<Outcome, u64>,
    rejections_without_retry_after: u64,
    db: DbPeak,
}

impl StepResult {
    fn new(concurrency: usize, seconds: f64, recorder: &Recorder, db: DbPeak) -> Self {
        let requests = recorder.total();
        Self {
            concurrency,
            seconds,
            requests,
            throughput_rps: requests as f64 / seconds,
            goodput_rps: recorder.count(Outcome::Success) as f64 / seconds,
            success: Percentiles::of(&recorder.success),
            failure: Percentiles::of(&recorder.failure),
            outcomes: recorder.outcomes.clone(),
            rejections_without_retry_after: recorder.rejections_without_retry_after,
            db,
        }
    }

    fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    fn server_errors(&self) -> u64 {
        self.count(Outcome::Server5xx) + self.count(Outcome::DeadlineExceeded)
    }
}

#[derive(Serialize)]
struct RunReport<'a> {
    label: &'a str,
    target: &'a str,
    mix: &'a Mix,
    warmup_seconds: f64,
    steps: &'a [StepResult],
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let max_concurrency = cli.steps.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(cli.client_timeout))
        .pool_max_idle_per_host(max_concurrency)
        .build()?;

    let api_keys = scenario::seed_accounts(&cli.primary_url, cli.accounts.max(1)).await?;
    scenario::wait_until_usable(&client, &cli.target, api_keys.last().expect("seeded")).await?;
    let workload = Arc::new(Workload {
        client,
        target: cli.target.trim_end_matches('/').to_owned(),
        api_keys,
        mix: cli.mix.clone(),
    });

    let mut results = Vec::new();
    for &concurrency in &cli.steps {
        let plan = StepPlan {
            concurrency,
            warmup: Duration::from_secs_f64(cli.warmup),
            duration: Duration::from_secs_f64(cli.duration),
        };
        let result = run_one_step(&cli, workload.clone(), &plan).await;
        results.push(result);
    }

    print_table(&cli.label, &results);
    if let Some(path) = &cli.json_out {
        let report = RunReport {
            label: &cli.label,
            target: &cli.target,
            mix: &cli.mix,
            warmup_seconds: cli.warmup,
            steps: &results,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

async fn run_one_step(cli: &Cli, workload: Arc<Workload>, plan: &StepPlan) -> StepResult {
    let progress = Arc::new(Progress::default());
    let bar = ProgressBar::new((plan.warmup + plan.duration).as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("c={}", plan.concurrency));

    let (stop_watch, stop_signal) = tokio::sync::watch::channel(false);
    let watch = DbWatch {
        primary_url: Some(cli.primary_url.clone()),
        pgbouncer_admin_url: cli.pgbouncer_admin_url.clone(),
        database: cli.database.clone(),
        interval: Duration::from_millis(200),
    };
    let warmup = plan.warmup;
    let watcher = tokio::spawn(async move {
        // Sample only the measured part of the step.
        tokio::time::sleep(warmup).await;
        watch.run(stop_signal).await
    });

    let ticker_progress = progress.clone();
    let ticker_bar = bar.clone();
    let ticker = tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ticker_bar.set_position(started.elapsed().as_millis() as u64);
            ticker_bar.set_message(format!(
                "{} measured, {} failed",
                ticker_progress.completed.load(Ordering::Relaxed),
                ticker_progress.failed.load(Ordering::Relaxed)
            ));
        }
    });

    let recorder = run_step(workload, plan, progress).await;
    let _ = stop_watch.send(true);
    ticker.abort();
    bar.finish_and_clear();
    let db = watcher.await.unwrap_or_default();

    let result = StepResult::new(plan.concurrency, plan.duration.as_secs_f64(), &recorder, db);
    eprintln!(
        "c={:<4} {:>8.1} req/s  p95 {:>7.1} ms  pool timeouts {}  5xx {}  primary conns max {}",
        result.concurrency,
        result.goodput_rps,
        result.success.p95_ms,
        result.count(Outcome::PoolTimeout),
        result.server_errors(),
        result.db.primary_connections_max
    );
    result
}

fn print_table(label: &str, results: &[StepResult]) {
    if !label.is_empty() {
        println!("\n{label}");
    }
    println!(
        "| concurrency | goodput req/s | p50 ms | p95 ms | p99 ms | fail p99 ms | pool timeouts | overloaded | other 5xx | client timeouts | primary conns max | pgbouncer sv_active max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r.concurrency,
            r.goodput_rps,
            r.success.p50_ms,
            r.success.p95_ms,
            r.success.p99_ms,
            r.failure.p99_ms,
            r.count(Outcome::PoolTimeout),
            r.count(Outcome::Overloaded),
            r.server_errors(),
            r.count(Outcome::ClientTimeout) + r.count(Outcome::ConnectionError),
            r.db.primary_connections_max,
            r.db.pgbouncer_server_active_max,
        );
    }
}
