//! `loadtest`: the concurrency ladder, and the models around it.
//!
//! It tests concurrent requests, not requests per second: at each step N virtual clients
//! each keep one request in flight, and the tool measures what the service then delivers
//! (throughput, latency of successes and of failures, errors by class) and what it costs
//! the database (connections on the primary and in PgBouncer). A verdict against the
//! success criteria sets the exit code.

mod chart;
mod dbwatch;
mod report;
mod runner;
mod scenario;
mod stats;
mod verdict;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use dbwatch::DbWatch;
use report::{Report, Run, StepResult};
use runner::{Progress, StepPlan, Think, Workload};
use scenario::Mix;
use stats::Outcome;
use verdict::Thresholds;

#[derive(Parser)]
#[command(
    version,
    about = "Load tests for a Tierstack API: concurrency ladder, users, open model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed model: N clients, one request in flight each, no pause (the default ladder).
    Ladder {
        #[command(flatten)]
        common: Common,
        /// Concurrency steps, run in order.
        #[arg(long, value_delimiter = ',', default_value = "25,50,100,120")]
        steps: Vec<usize>,
        #[command(flatten)]
        thresholds: ThresholdArgs,
    },
    /// The same ladder against two targets in one run (the service and its
    /// hold-session demonstration mode), with a side-by-side table.
    Compare {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_value = "25,50,100,120")]
        steps: Vec<usize>,
        /// The second target (e.g. the demonstration mode's load balancer).
        #[arg(long)]
        versus: String,
        /// Label of the first target.
        #[arg(long, default_value = "normal")]
        label: String,
        /// Label of the second target.
        #[arg(long, default_value = "hold-session")]
        versus_label: String,
        #[command(flatten)]
        thresholds: ThresholdArgs,
    },
    /// Users with think time: N users who pause between requests.
    Users {
        #[command(flatten)]
        common: Common,
        /// User counts, run in order.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        users: Vec<usize>,
        /// Mean pause between a user's requests, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        think_ms: u64,
        #[arg(long, value_enum, default_value_t = ThinkKind::Exponential)]
        think: ThinkKind,
        /// Fail the run if the primary ever shows more busy connections than this.
        #[arg(long, default_value_t = 20)]
        max_primary_busy: i64,
    },
    /// Open model: a constant arrival rate per step, latency from the scheduled send time.
    Open {
        #[command(flatten)]
        common: Common,
        /// Requests per second, one step each.
        #[arg(long, value_delimiter = ',', default_value = "100,200,400")]
        rates: Vec<usize>,
        /// Requests outstanding at most; arrivals beyond it count as client timeouts.
        #[arg(long, default_value_t = 5000)]
        max_in_flight: usize,
        #[command(flatten)]
        thresholds: ThresholdArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ThinkKind {
    Fixed,
    Exponential,
}

#[derive(Args, Clone)]
struct Common {
    /// Base URL of the API (normally the load balancer).
    #[arg(long, env = "TIERSTACK_HAPROXY_URL")]
    target: String,
    /// Seconds of load before measuring, per step.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds measured, per step.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operation weights, e.g. `create=1,get=3,list=1,analytics=1`.
    #[arg(long, default_value = "create=1")]
    mix: Mix,
    /// Accounts to seed and spread the clients over.
    #[arg(long, default_value_t = 50)]
    accounts: usize,
    /// The primary, to seed accounts and watch its connections.
    #[arg(long, env = "DB_PRIMARY_URL")]
    primary_url: String,
    /// A replica, to watch the connections reads use.
    #[arg(long, env = "DB_REPLICA_URL")]
    replica_url: Option<String>,
    /// PgBouncer's admin console, to watch its pools.
    #[arg(long, env = "PGBOUNCER_ADMIN_URL")]
    pgbouncer_admin_url: Option<String>,
    /// The application database whose connections are counted.
    #[arg(long, default_value = "tierstack")]
    database: String,
    /// The client gives up on a request after this many seconds.
    #[arg(long, default_value_t = 15.0)]
    client_timeout: f64,
    /// Reports go to OUT_DIR/NAME/.
    #[arg(long, default_value = "target/loadtest")]
    out_dir: PathBuf,
    /// The run's name (default: the model and the UTC time).
    #[arg(long)]
    name: Option<String>,
    /// No progress bars (for logs and CI).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct ThresholdArgs {
    /// The highest step expected to be served without failures.
    #[arg(long, default_value_t = 100)]
    capacity: usize,
    /// Allowed p95 growth from the first step to capacity, and beyond capacity.
    #[arg(long, default_value_t = 3.0)]
    p95_growth_max: f64,
    /// Rejections beyond capacity must come back within this p99, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    rejection_p99_max_ms: f64,
}

impl From<&ThresholdArgs> for Thresholds {
    fn from(args: &ThresholdArgs) -> Self {
        Self {
            capacity: args.capacity,
            p95_growth_max: args.p95_growth_max,
            rejection_p99_max_ms: args.rejection_p99_max_ms,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let passed = match cli.command {
        Command::Ladder {
            common,
            steps,
            thresholds,
        } => {
            let thresholds = Thresholds::from(&thresholds);
            let workload = prepare(&common, &common.target, max_of(&steps)).await?;
            let mut run = ladder(&common, workload, &steps, "service").await;
            run.verdict = Some(verdict::judge(&run.steps, &thresholds));
            finish(
                &common,
                "ladder",
                closed_method(&common),
                thresholds,
                vec![run],
            )?
        }
        Command::Compare {
            common,
            steps,
            versus,
            label,
            versus_label,
            thresholds,
        } => {
            let thresholds = Thresholds::from(&thresholds);
            let mut runs = Vec::new();
            for (target, label) in [(&common.target, &label), (&versus, &versus_label)] {
                let workload = prepare(&common, target, max_of(&steps)).await?;
                let mut run = ladder(&common, workload, &steps, label).await;
                run.verdict = Some(verdict::judge(&run.steps, &thresholds));
                runs.push(run);
            }
            print!("\n{}", report::compare_table(&runs[0], &runs[1]));
            // The comparison passes when the service passes; the demonstration mode is
            // expected to fail, and the table shows where.
            let service_passed = runs[0].verdict.as_ref().is_some_and(|v| v.passed);
            finish(&common, "compare", closed_method(&common), thresholds, runs)?;
            service_passed
        }
        Command::Users {
            common,
            users,
            think_ms,
            think,
            max_primary_busy,
        } => {
            let think = match think {
                ThinkKind::Fixed => Think::Fixed(Duration::from_millis(think_ms)),
                ThinkKind::Exponential => Think::Exponential(Duration::from_millis(think_ms)),
            };
            let workload = prepare(&common, &common.target, max_of(&users)).await?;
            let mut steps = Vec::new();
            for &count in &users {
                let plan = StepPlan {
                    concurrency: count,
                    warmup: Duration::from_secs_f64(common.warmup),
                    duration: Duration::from_secs_f64(common.duration),
                    think: Some(think),
                };
                steps.push(measure_step(&common, workload.clone(), &plan, None).await);
            }
            let verdict = users_verdict(&steps, max_primary_busy);
            let method = format!(
                "Users model: each user sends one request, then thinks ({}), {:.0} s warm-up, \
                 {:.0} s measured per step, mix `{}`.",
                think.describe(),
                common.warmup,
                common.duration,
                common.mix.describe()
            );
            let run = Run {
                label: "users".into(),
                target: common.target.clone(),
                steps,
                verdict: Some(verdict),
            };
            finish(&common, "users", method, Thresholds::default(), vec![run])?
        }
        Command::Open {
            common,
            rates,
            max_in_flight,
            thresholds,
        } => {
            let thresholds = Thresholds::from(&thresholds);
            let workload = prepare(&common, &common.target, 256).await?;
            let mut steps = Vec::new();
            for &rate in &rates {
                steps.push(measure_open_step(&common, workload.clone(), rate, max_in_flight).await);
            }
            let method = format!(
                "Open model: a constant arrival rate per step, latency measured from each \
                 request's scheduled send time; {:.0} s warm-up, {:.0} s measured, mix `{}`.",
                common.warmup,
                common.duration,
                common.mix.describe()
            );
            let mut run = Run {
                label: "service".into(),
                target: common.target.clone(),
                steps,
                verdict: None,
            };
            run.verdict = Some(verdict::judge(
                &run.steps,
                &Thresholds {
                    capacity: usize::MAX,
                    ..thresholds.clone()
                },
            ));
            finish(&common, "open", method, thresholds, vec![run])?
        }
    };
    std::process::exit(if passed { 0 } else { 1 });
}

fn max_of(steps: &[usize]) -> usize {
    steps.iter().copied().max().unwrap_or(1).max(1)
}

fn closed_method(common: &Common) -> String {
    format!(
        "Closed model: at each step N virtual clients each keep one request in flight with no \
         pause ({} ms after a failure); {:.0} s warm-up, {:.0} s measured per step; mix `{}`, \
         {} seeded accounts, a fresh Idempotency-Key per payment. Latency from send to \
         response, HDR histograms; database connections sampled every 200 ms.",
        runner::FAILURE_PAUSE.as_millis(),
        common.warmup,
        common.duration,
        common.mix.describe(),
        common.accounts
    )
}

/// Seeds accounts and builds the HTTP client for one target.
async fn prepare(
    common: &Common,
    target: &str,
    connections: usize,
) -> anyhow::Result<Arc<Workload>> {
    let api_keys = scenario::seed_accounts(&common.primary_url, common.accounts.max(1)).await?;
    let workload = Workload::new(
        runner::http_client(connections),
        target,
        &api_keys,
        common.mix.clone(),
        Duration::from_secs_f64(common.client_timeout),
    )?;
    let last_key = api_keys.last().expect("seeded");
    scenario::wait_until_usable(&workload.target, last_key).await?;
    Ok(Arc::new(workload))
}

async fn ladder(common: &Common, workload: Arc<Workload>, steps: &[usize], label: &str) -> Run {
    let mut results = Vec::new();
    for &concurrency in steps {
        let plan = StepPlan {
            concurrency,
            warmup: Duration::from_secs_f64(common.warmup),
            duration: Duration::from_secs_f64(common.duration),
            think: None,
        };
        results.push(measure_step(common, workload.clone(), &plan, Some(label)).await);
    }
    Run {
        label: label.to_owned(),
        target: workload.target.clone(),
        steps: results,
        verdict: None,
    }
}

fn progress_bar(common: &Common, prefix: String, total: Duration) -> ProgressBar {
    if common.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

fn db_watch(common: &Common) -> DbWatch {
    DbWatch {
        primary_url: Some(common.primary_url.clone()),
        replica_url: common.replica_url.clone(),
        pgbouncer_admin_url: common.pgbouncer_admin_url.clone(),
        database: common.database.clone(),
        interval: Duration::from_millis(200),
    }
}

/// Runs `load` for warm-up plus duration with a progress bar and the database watcher on,
/// then builds the step's result.
async fn with_instruments<F>(
    common: &Common,
    step: usize,
    prefix: String,
    progress: Arc<Progress>,
    load: F,
) -> StepResult
where
    F: std::future::Future<Output = stats::Recorder>,
{
    let warmup = Duration::from_secs_f64(common.warmup);
    let duration = Duration::from_secs_f64(common.duration);
    let bar = progress_bar(common, prefix, warmup + duration);

    let (stop_watch, stop_signal) = tokio::sync::watch::channel(false);
    let watch = db_watch(common);
    let watcher = tokio::spawn(async move {
        // Sample only the measured part of the step.
        tokio::time::sleep(warmup).await;
        watch.run(stop_signal).await
    });
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{} measured, {} failed",
                    progress.completed.load(Ordering::Relaxed),
                    progress.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let recorder = load.await;
    let _ = stop_watch.send(true);
    ticker.abort();
    bar.finish_and_clear();
    let db = watcher.await.unwrap_or_default();

    let result = StepResult::new(step, duration.as_secs_f64(), &recorder, db);
    eprintln!(
        "step {:<5} goodput {:>7.1} req/s  p95 {:>7.1} ms  failures {:<5} pool timeouts {:<4} 5xx {:<4} primary busy max {}",
        result.concurrency,
        result.goodput_rps,
        result.success.p95_ms,
        result.failure.count,
        result.count(Outcome::PoolTimeout),
        result.server_errors(),
        result.db.primary_busy_max
    );
    result
}

async fn measure_step(
    common: &Common,
    workload: Arc<Workload>,
    plan: &StepPlan,
    label: Option<&str>,
) -> StepResult {
    let progress = Arc::new(Progress::default());
    let prefix = match label {
        Some(label) => format!("{label} c={}", plan.concurrency),
        None => format!("users={}", plan.concurrency),
    };
    let load = runner::run_step(workload, plan, progress.clone());
    with_instruments(common, plan.concurrency, prefix, progress, load).await
}

async fn measure_open_step(
    common: &Common,
    workload: Arc<Workload>,
    rate: usize,
    max_in_flight: usize,
) -> StepResult {
    let progress = Arc::new(Progress::default());
    let load = runner::run_open_step(
        workload,
        rate,
        Duration::from_secs_f64(common.warmup),
        Duration::from_secs_f64(common.duration),
        max_in_flight,
        progress.clone(),
    );
    with_instruments(common, rate, format!("rate={rate}/s"), progress, load).await
}

/// The users run passes with zero failures and a primary that never gets busier than a
/// small, fixed number of connections, however many users there are.
fn users_verdict(steps: &[StepResult], max_primary_busy: i64) -> verdict::Verdict {
    let mut checks = Vec::new();
    for step in steps {
        checks.push(verdict::Check {
            step: step.concurrency,
            criterion: "zero failed requests".into(),
            passed: step.failure.count == 0 && step.requests > 0,
            observed: format!("{} of {}", step.failure.count, step.requests),
        });
        checks.push(verdict::Check {
            step: step.concurrency,
            criterion: format!("primary busy connections <= {max_primary_busy}"),
            passed: step.db.primary_busy_max <= max_primary_busy,
            observed: step.db.primary_busy_max.to_string(),
        });
    }
    verdict::Verdict {
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}

/// Prints the tables and the verdict, writes the report folder, returns whether it passed.
fn finish(
    common: &Common,
    model: &str,
    method: String,
    thresholds: Thresholds,
    runs: Vec<Run>,
) -> anyhow::Result<bool> {
    let name = common
        .name
        .clone()
        .unwrap_or_else(|| format!("{model}-{}", time_stamp()));
    let report = Report {
        schema_version: report::SCHEMA_VERSION,
        name,
        model: model_kind(model).into(),
        method,
        thresholds,
        runs,
    };

    let mut passed = true;
    for run in &report.runs {
        println!("\n{} ({})", run.label, run.target);
        print!("{}", report::step_table(&report.model, &run.steps));
        if let Some(verdict) = &run.verdict {
            for check in verdict.checks.iter().filter(|c| !c.passed) {
                println!(
                    "  FAIL at {}: {} (observed {})",
                    check.step, check.criterion, check.observed
                );
            }
            println!("verdict: {}", if verdict.passed { "PASS" } else { "FAIL" });
            passed &= verdict.passed;
        }
    }
    let folder = report.write(&common.out_dir)?;
    println!(
        "\nreport: {}/report.md\nchart:  {}/chart.svg\njson:   {}/report.json",
        folder.display(),
        folder.display(),
        folder.display()
    );
    Ok(passed)
}

fn model_kind(command: &str) -> &'static str {
    match command {
        "users" => "users",
        "open" => "open",
        _ => "closed",
    }
}

/// UTC time as `YYYYMMDDTHHMMSSZ`, for run names.
fn time_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
