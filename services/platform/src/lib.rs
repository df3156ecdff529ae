//! What every Tierstack service shares.
//!
//! - [`config`]: typed settings read from environment variables with documented defaults.
//! - [`db`]: the writer and reader pools, and the scoped database session that is the
//!   only way service code touches PostgreSQL.
//! - [`problem`]: RFC 9457 `application/problem+json` errors with stable types.
//! - [`analytics`]: the ClickHouse table of payment events and the query that reads it.
//! - [`admission`]: the in-flight limit and request deadline that make overload fail fast.
//! - [`redis`]: Redis behind a timeout and a circuit breaker.
//! - [`shutdown`]: SIGTERM handling, readiness, and draining.
//! - [`telemetry`]: logs, traces and metrics (OpenTelemetry, OTLP and Prometheus).

pub mod admission;
pub mod analytics;
pub mod config;
pub mod db;
pub mod problem;
pub mod redis;
pub mod shutdown;
pub mod telemetry;
