//! What one step measured: latency histograms for successes and, separately, failures
//! (how fast a service fails matters as much as how fast it succeeds), and every response
//! sorted into a class read from its status and problem+json `type`.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// 503 `pool-timeout`: no database session in time.
    PoolTimeout,
    /// 503 `overloaded`: the in-flight limit shed the request.
    Overloaded,
    /// 429: rate limited.
    RateLimited,
    /// 503 `deadline-exceeded`.
    DeadlineExceeded,
    /// Any other 4xx: a client mistake, which a load test should never make.
    Other4xx,
    /// Any other 5xx.
    Server5xx,
    /// No answer within the client's own timeout.
    ClientTimeout,
    /// Refused, reset or otherwise broken connection.
    ConnectionError,
}

impl Outcome {
    /// Classifies a response by status and the problem `type` slug, if any.
    pub fn classify(status: u16, problem_type: Option<&str>) -> Self {
        let slug = problem_type
            .and_then(|t| t.rsplit('/').next())
            .unwrap_or("");
        match status {
            200..=299 => Self::Success,
            429 => Self::RateLimited,
            503 if slug == "pool-timeout" => Self::PoolTimeout,
            503 if slug == "overloaded" => Self::Overloaded,
            503 if slug == "deadline-exceeded" => Self::DeadlineExceeded,
            400..=499 => Self::Other4xx,
            _ => Self::Server5xx,
        }
    }

    /// The clean, expected way to refuse work beyond capacity.
    pub fn is_clean_rejection(self) -> bool {
        matches!(
            self,
            Self::PoolTimeout | Self::Overloaded | Self::RateLimited
        )
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Collects one client's results; clients' recorders are merged at the end of a step, so
/// recording never contends on a lock.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub success: Histogram<u64>,
    pub failure: Histogram<u64>,
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Rejections (503/429) that came without a `Retry-After` header.
    pub rejections_without_retry_after: u64,
}

/// Latencies are recorded in microseconds, from 1 µs to 5 minutes, at 3 significant digits.
const HIGHEST_MICROS: u64 = 300_000_000;

impl Default for Recorder {
    fn default() -> Self {
        let histogram =
            || Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid histogram bounds");
        Self {
            success: histogram(),
            failure: histogram(),
            outcomes: BTreeMap::new(),
            rejections_without_retry_after: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, outcome: Outcome, latency: Duration, has_retry_after: bool) {
        let micros = (latency.as_micros() as u64).clamp(1, HIGHEST_MICROS);
        let histogram = if outcome == Outcome::Success {
            &mut self.success
        } else {
            &mut self.failure
        };
        histogram.saturating_record(micros);
        *self.outcomes.entry(outcome).or_default() += 1;
        if outcome.is_clean_rejection() && !has_retry_after {
            self.rejections_without_retry_after += 1;
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.success.add(&other.success).expect("same bounds");
        self.failure.add(&other.failure).expect("same bounds");
        for (outcome, count) in &other.outcomes {
            *self.outcomes.entry(*outcome).or_default() += count;
        }
        self.rejections_without_retry_after += other.rejections_without_retry_after;
    }

    pub fn total(&self) -> u64 {
        self.outcomes.values().sum()
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_reads_the_problem_type() {
        let pt = Some("https://tierstack.dev/problems/pool-timeout");
        assert_eq!(Outcome::classify(503, pt), Outcome::PoolTimeout);
        let ov = Some("https://tierstack.dev/problems/overloaded");
        assert_eq!(Outcome::classify(503, ov), Outcome::Overloaded);
        assert_eq!(Outcome::classify(503, None), Outcome::Server5xx);
        assert_eq!(Outcome::classify(502, None), Outcome::Server5xx);
        assert_eq!(Outcome::classify(429, None), Outcome::RateLimited);
        assert_eq!(Outcome::classify(422, None), Outcome::Other4xx);
        assert_eq!(Outcome::classify(201, None), Outcome::Success);
    }

    #[test]
    fn successes_and_failures_go_to_separate_histograms_and_merge() {
        let mut a = Recorder::default();
        for ms in 1..=100 {
            a.record(Outcome::Success, Duration::from_millis(ms), false);
        }
        let mut b = Recorder::default();
        b.record(Outcome::Overloaded, Duration::from_micros(800), true);
        b.record(Outcome::PoolTimeout, Duration::from_millis(2), false);
        a.merge(&b);

        let success = Percentiles::of(&a.success);
        assert_eq!(success.count, 100);
        assert!((success.p50_ms - 50.0).abs() < 0.1, "{success:?}");
        assert!((success.p95_ms - 95.0).abs() < 0.1, "{success:?}");
        assert!((success.max_ms - 100.0).abs() < 0.1, "{success:?}");

        let failure = Percentiles::of(&a.failure);
        assert_eq!(failure.count, 2);
        assert!(failure.max_ms < 2.01);
        assert_eq!(a.total(), 102);
        assert_eq!(a.rejections_without_retry_after, 1);
    }
}
