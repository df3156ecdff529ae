//! `/metrics` in the Prometheus text format, for the counters and gauges the services
//! already keep in atomics.
//!
//! Written by hand rather than with a metrics library because each service exposes a few
//! dozen plain numbers it already has; the telemetry work replaces this with OpenTelemetry
//! metrics. Until then every service writes its page with this one type, so the format is
//! the same everywhere.

use std::fmt::{Display, Write as _};

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// A metrics page being written: one `HELP`, `TYPE` and sample line per metric.
#[derive(Debug, Default)]
pub struct MetricsText {
    out: String,
}

impl MetricsText {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counter(&mut self, name: &str, help: &str, value: impl Display) {
        self.sample("counter", name, help, value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.sample("gauge", name, help, value);
    }

    fn sample(&mut self, kind: &str, name: &str, help: &str, value: impl Display) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }

    pub fn as_str(&self) -> &str {
        &self.out
    }
}

impl IntoResponse for MetricsText {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            self.out,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_metric_has_help_type_and_one_sample() {
        let mut text = MetricsText::new();
        text.counter("jobs_total", "Jobs run.", 3u64);
        text.gauge("queue_length", "Jobs waiting.", 2.5);
        assert_eq!(
            text.as_str(),
            "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total 3\n\
             # HELP queue_length Jobs waiting.\n# TYPE queue_length gauge\nqueue_length 2.5\n"
        );
    }
}
