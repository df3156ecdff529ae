pub mod analytics;
pub mod health;
pub mod metrics;
pub mod payments;
