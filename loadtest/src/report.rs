//! Results as a person and a program read them: a terminal table, a Markdown report, JSON
//! with a stable schema, and an SVG chart, all in one folder per run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::dbwatch::DbPeak;
use crate::stats::{Outcome, Percentiles, Recorder};
use crate::verdict::{Thresholds, Verdict};

/// Bumped whenever a field of the JSON report changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 1;

/// One step's results.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Concurrent clients (closed model), users (think-time model) or requests per second
    /// offered (open model).
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub goodput_rps: f64,
    pub success: Percentiles,
    pub failure: Percentiles,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub rejections_without_retry_after: u64,
    pub db: DbPeak,
}

impl StepResult {
    pub fn new(concurrency: usize, seconds: f64, recorder: &Recorder, db: DbPeak) -> Self {
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

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    /// 5xx that are not a clean rejection: everything but `overloaded` and `pool-timeout`.
    pub fn server_errors(&self) -> u64 {
        self.count(Outcome::Server5xx) + self.count(Outcome::DeadlineExceeded)
    }
}

/// A whole run of one mode against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub label: String,
    pub target: String,
    pub steps: Vec<StepResult>,
    pub verdict: Option<Verdict>,
}

/// Everything a report folder holds, as `report.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub name: String,
    /// `closed`, `users` or `open`.
    pub model: String,
    /// How the steps were run, in words (warm-up, duration, think time, mix).
    pub method: String,
    pub thresholds: Thresholds,
    pub runs: Vec<Run>,
}

impl Report {
    /// Writes `report.json`, `report.md` and `chart.svg` into `dir/name/`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let folder = dir.join(&self.name);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        std::fs::write(folder.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(folder.join("report.md"), self.markdown())?;
        std::fs::write(folder.join("chart.svg"), crate::chart::svg(self))?;
        Ok(folder)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Load test `{}`\n", self.name);
        let _ = writeln!(md, "{}\n", self.method);
        for run in &self.runs {
            let _ = writeln!(md, "## {} ({})\n", run.label, run.target);
            md.push_str(&step_table(&self.model, &run.steps));
            if let Some(verdict) = &run.verdict {
                let _ = writeln!(
                    md,
                    "\n**Verdict: {}**\n",
                    if verdict.passed { "PASS" } else { "FAIL" }
                );
                let _ = writeln!(md, "| step | criterion | observed | result |");
                let _ = writeln!(md, "|---:|---|---|---|");
                for check in &verdict.checks {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} |",
                        check.step,
                        check.criterion,
                        check.observed,
                        if check.passed { "pass" } else { "**FAIL**" }
                    );
                }
            }
            md.push('\n');
        }
        if self.runs.len() == 2 {
            md.push_str("\n## Side by side\n\n");
            md.push_str(&compare_table(&self.runs[0], &self.runs[1]));
        }
        md.push_str("\n![p95, throughput and database connections](chart.svg)\n");
        md
    }
}

fn step_label(model: &str) -> &'static str {
    match model {
        "open" => "offered req/s",
        "users" => "users",
        _ => "concurrency",
    }
}

/// The per-step table, in Markdown (also what the terminal shows).
pub fn step_table(model: &str, steps: &[StepResult]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| {} | goodput req/s | p50 ms | p95 ms | p99 ms | max ms | failures | fail p99 ms | pool timeouts | overloaded | 429 | 5xx | client timeouts/resets | primary conns max | primary busy max | replica busy max | pgbouncer sv_active max |",
        step_label(model)
    );
    let _ = writeln!(
        t,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for s in steps {
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.concurrency,
            s.goodput_rps,
            s.success.p50_ms,
            s.success.p95_ms,
            s.success.p99_ms,
            s.success.max_ms,
            s.failure.count,
            s.failure.p99_ms,
            s.count(Outcome::PoolTimeout),
            s.count(Outcome::Overloaded),
            s.count(Outcome::RateLimited),
            s.server_errors() + s.count(Outcome::Other4xx),
            s.count(Outcome::ClientTimeout) + s.count(Outcome::ConnectionError),
            s.db.primary_connections_max,
            s.db.primary_busy_max,
            s.db.replica_busy_max,
            s.db.pgbouncer_server_active_max,
        );
    }
    t
}

/// Two runs of the same steps, one row per step.
pub fn compare_table(a: &Run, b: &Run) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| concurrency | goodput ({a}) | goodput ({b}) | p95 ms ({a}) | p95 ms ({b}) | pool timeouts ({a}) | pool timeouts ({b}) | 503/5xx ({a}) | 503/5xx ({b}) | primary busy max ({a}) | primary busy max ({b}) | verdict ({a}) | verdict ({b}) |",
        a = a.label,
        b = b.label
    );
    let _ = writeln!(
        t,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    let failed_steps = |run: &Run| -> Vec<usize> {
        run.verdict
            .as_ref()
            .map(|v| {
                v.checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| c.step)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a_failed, b_failed) = (failed_steps(a), failed_steps(b));
    for (sa, sb) in a.steps.iter().zip(&b.steps) {
        let unavailable = |s: &StepResult| {
            s.count(Outcome::Overloaded) + s.count(Outcome::PoolTimeout) + s.server_errors()
        };
        let verdict = |failed: &[usize], step: usize| {
            if failed.contains(&step) {
                "fail"
            } else {
                "pass"
            }
        };
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sa.concurrency,
            sa.goodput_rps,
            sb.goodput_rps,
            sa.success.p95_ms,
            sb.success.p95_ms,
            sa.count(Outcome::PoolTimeout),
            sb.count(Outcome::PoolTimeout),
            unavailable(sa),
            unavailable(sb),
            sa.db.primary_busy_max,
            sb.db.primary_busy_max,
            verdict(&a_failed, sa.concurrency),
            verdict(&b_failed, sb.concurrency),
        );
    }
    t
}
