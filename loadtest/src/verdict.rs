//! The success criteria, as thresholds a run either meets or fails (like k6 thresholds).
//!
//! - Up to the capacity step (100 by default): zero pool timeouts and zero 5xx at every
//!   step, and the p95 at capacity within `p95_growth_max` times the p95 of the first step.
//! - Beyond capacity: every failure is a clean rejection (503 `overloaded` or
//!   `pool-timeout`, or 429) that carries `Retry-After` and comes back fast (its p99 under
//!   `rejection_p99_max_ms`); no client timeouts or broken connections; and the successful
//!   requests keep their p95 within `p95_growth_max` times the capacity step's.

use serde::Serialize;

use crate::report::StepResult;
use crate::stats::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// The highest step expected to be served without failures.
    pub capacity: usize,
    /// Allowed growth of p95 from the first step to the capacity step, and from the
    /// capacity step to the steps beyond it.
    pub p95_growth_max: f64,
    /// How fast a rejection beyond capacity must be, at p99.
    pub rejection_p99_max_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            capacity: 100,
            p95_growth_max: 3.0,
            rejection_p99_max_ms: 50.0,
        }
    }
}

/// One criterion, checked.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub step: usize,
    pub criterion: String,
    pub passed: bool,
    pub observed: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<Check>,
}

pub fn judge(steps: &[StepResult], thresholds: &Thresholds) -> Verdict {
    let mut checks = Vec::new();
    let mut check = |step: usize, criterion: String, passed: bool, observed: String| {
        checks.push(Check {
            step,
            criterion,
            passed,
            observed,
        })
    };

    let first = steps.first();
    let at_capacity = steps
        .iter()
        .filter(|s| s.concurrency <= thresholds.capacity)
        .max_by_key(|s| s.concurrency);

    for step in steps {
        let c = step.concurrency;
        if step.requests == 0 {
            check(c, "requests completed".into(), false, "none".into());
            continue;
        }
        if c <= thresholds.capacity {
            let pool_timeouts = step.count(Outcome::PoolTimeout);
            check(
                c,
                "zero pool timeouts".into(),
                pool_timeouts == 0,
                pool_timeouts.to_string(),
            );
            let server_errors = step.server_errors();
            check(
                c,
                "zero 5xx".into(),
                server_errors == 0,
                server_errors.to_string(),
            );
            let broken = step.count(Outcome::ClientTimeout) + step.count(Outcome::ConnectionError);
            check(
                c,
                "zero client timeouts and connection errors".into(),
                broken == 0,
                broken.to_string(),
            );
        } else {
            let unclean: u64 = step
                .outcomes
                .iter()
                .filter(|(o, _)| **o != Outcome::Success && !o.is_clean_rejection())
                .map(|(_, n)| n)
                .sum();
            check(
                c,
                "failures are only 503 overloaded/pool-timeout or 429".into(),
                unclean == 0,
                format!("{unclean} other failures"),
            );
            check(
                c,
                "every rejection carries Retry-After".into(),
                step.rejections_without_retry_after == 0,
                format!("{} without", step.rejections_without_retry_after),
            );
            if step.failure.count > 0 {
                check(
                    c,
                    format!("rejections p99 <= {} ms", thresholds.rejection_p99_max_ms),
                    step.failure.p99_ms <= thresholds.rejection_p99_max_ms,
                    format!("{:.1} ms", step.failure.p99_ms),
                );
            }
            if let Some(capacity) = at_capacity
                && capacity.success.count > 0
            {
                let limit = capacity.success.p95_ms * thresholds.p95_growth_max;
                check(
                    c,
                    format!(
                        "successes keep p95 <= {:.1}x p95 at {}",
                        thresholds.p95_growth_max, capacity.concurrency
                    ),
                    step.success.p95_ms <= limit,
                    format!("{:.1} ms (limit {:.1} ms)", step.success.p95_ms, limit),
                );
            }
        }
    }

    if let (Some(first), Some(capacity)) = (first, at_capacity)
        && capacity.concurrency > first.concurrency
        && first.success.count > 0
    {
        let limit = first.success.p95_ms * thresholds.p95_growth_max;
        check(
            capacity.concurrency,
            format!(
                "p95 <= {:.1}x p95 at {}",
                thresholds.p95_growth_max, first.concurrency
            ),
            capacity.success.p95_ms <= limit,
            format!("{:.1} ms (limit {:.1} ms)", capacity.success.p95_ms, limit),
        );
    }

    Verdict {
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbwatch::DbPeak;
    use crate::stats::Recorder;
    use std::time::Duration;

    /// A step of `ok` successes at `p95_ms` and the given failures at `fail_ms`.
    fn step(
        concurrency: usize,
        ok: u64,
        p95_ms: u64,
        failures: &[(Outcome, u64)],
        fail_ms: u64,
    ) -> StepResult {
        let mut recorder = Recorder::default();
        for _ in 0..ok {
            recorder.record(Outcome::Success, Duration::from_millis(p95_ms), false);
        }
        for (outcome, n) in failures {
            for _ in 0..*n {
                recorder.record(*outcome, Duration::from_millis(fail_ms), true);
            }
        }
        StepResult::new(concurrency, 10.0, &recorder, DbPeak::default())
    }

    fn failed(verdict: &Verdict) -> Vec<(usize, String)> {
        verdict
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| (c.step, c.criterion.clone()))
            .collect()
    }

    #[test]
    fn a_healthy_ladder_with_clean_fast_rejections_beyond_capacity_passes() {
        let steps = [
            step(25, 1000, 100, &[], 0),
            step(50, 1000, 120, &[], 0),
            step(100, 1000, 200, &[], 0),
            step(120, 1000, 210, &[(Outcome::Overloaded, 300)], 2),
        ];
        let verdict = judge(&steps, &Thresholds::default());
        assert!(verdict.passed, "{:?}", failed(&verdict));
    }

    #[test]
    fn a_pool_timeout_at_capacity_fails() {
        let steps = [
            step(25, 1000, 100, &[], 0),
            step(100, 1000, 200, &[(Outcome::PoolTimeout, 1)], 500),
        ];
        let verdict = judge(&steps, &Thresholds::default());
        assert_eq!(failed(&verdict), [(100, "zero pool timeouts".to_owned())]);
    }

    #[test]
    fn p95_growing_past_the_factor_fails() {
        let steps = [step(25, 1000, 100, &[], 0), step(100, 1000, 301, &[], 0)];
        let verdict = judge(&steps, &Thresholds::default());
        assert!(!verdict.passed);
        assert!(failed(&verdict)[0].1.starts_with("p95 <= 3.0x"));
    }

    #[test]
    fn beyond_capacity_slow_or_unclean_failures_fail() {
        let base = step(100, 1000, 200, &[], 0);
        let slow = step(120, 1000, 200, &[(Outcome::Overloaded, 10)], 80);
        let verdict = judge(&[base.clone(), slow], &Thresholds::default());
        assert_eq!(
            failed(&verdict),
            [(120, "rejections p99 <= 50 ms".to_owned())]
        );

        let unclean = step(120, 1000, 200, &[(Outcome::Server5xx, 1)], 1);
        let verdict = judge(&[base, unclean], &Thresholds::default());
        assert_eq!(
            failed(&verdict),
            [(
                120,
                "failures are only 503 overloaded/pool-timeout or 429".to_owned()
            )]
        );
    }

    #[test]
    fn rejections_without_retry_after_fail() {
        let mut recorder = Recorder::default();
        recorder.record(Outcome::Success, Duration::from_millis(100), false);
        recorder.record(Outcome::Overloaded, Duration::from_millis(1), false);
        let beyond = StepResult::new(120, 10.0, &recorder, DbPeak::default());
        let verdict = judge(
            &[step(100, 10, 100, &[], 0), beyond],
            &Thresholds::default(),
        );
        assert_eq!(
            failed(&verdict),
            [(120, "every rejection carries Retry-After".to_owned())]
        );
    }
}
