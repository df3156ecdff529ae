//! The Tierstack payments API.

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod domain;
pub mod error;
pub mod extract;
pub mod psp;
pub mod ratelimit;
pub mod routes;
pub mod startup;
pub mod store;

/// The schema migrations, embedded in the binary and applied by `api migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
