//! Building and running the service; tests use the same path as `main`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use platform::db::Database;
use platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::app::{AppState, admin_router, router};
use crate::config::ApiConfig;

/// How often readiness probes the database, and how often a failed replica is retried.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A built service, bound to its port but not yet serving.
pub struct Application {
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    state: AppState,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and prepares the pools. Does not wait
    /// for the database: an instance may start before it and report not-ready.
    pub async fn build(config: ApiConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        // Idempotent: `main` has done this already; tests that build the service in
        // process get the same telemetry through here.
        platform::telemetry::init("api");
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin_listener = match config.admin_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (API_ADMIN_LISTEN)"))?,
            ),
            None => None,
        };
        let db = Database::connect(config.db.clone(), "tierstack-api")?;
        let state = AppState::new(config, db, shutdown)?;
        crate::routes::metrics::register(&state);
        Ok(Self {
            listener,
            admin_listener,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the shutdown handle stops it and in-flight requests have finished (or
    /// the grace period ended), then closes the pools.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let state = self.state;
        state.start_readiness_probe(PROBE_INTERVAL).await;
        tokio::spawn(state.db.clone().watch_replicas(PROBE_INTERVAL));

        if let Some(admin) = self.admin_listener {
            let (router, shutdown) = (admin_router(state.clone()), state.shutdown.clone());
            tracing::info!(admin = %admin.local_addr()?, "admin listener serving /metrics");
            // The admin port stays up through the drain and closes with the process: a
            // scrape during shutdown still sees the last numbers.
            tokio::spawn(async move {
                let _ = axum::serve(admin, router)
                    .with_graceful_shutdown(shutdown.stopping())
                    .await;
            });
        }
        tracing::info!(
            listen = %self.listener.local_addr()?,
            admission_limit = state.config.admission_limit,
            writer_pool_size = state.config.db.writer_pool_size,
            reader_pool_size = state.config.db.reader_pool_size,
            replicas = state.config.db.reader_urls.len(),
            demo_hold_session_across_psp = state.config.demo_hold_session_across_psp,
            "api serving"
        );
        if state.config.demo_hold_session_across_psp {
            tracing::warn!(
                "DEMONSTRATION MODE: every payment holds a database session across the \
                 processor call; never run this in production"
            );
        }

        let grace = state.config.shutdown_grace;
        let shutdown = state.shutdown.clone();
        let db = state.db.clone();
        platform::shutdown::serve(self.listener, router(state), shutdown, grace).await?;
        db.close().await;
        tracing::info!("api stopped");
        Ok(())
    }
}
