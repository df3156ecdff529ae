//! Graceful shutdown.
//!
//! On SIGTERM (or Ctrl-C) a service goes through three phases:
//!
//! 1. **Draining**: readiness turns false at once, while requests are still accepted and
//!    served, so the load balancer stops sending new work without any request failing.
//! 2. **Stopping**: after `drain_delay` the listener closes and in-flight requests finish.
//! 3. **Exit**: when they have finished, or when `grace` has passed, whichever is first.

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Shared view of the shutdown phase. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    draining: watch::Sender<bool>,
    stopping: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            draining: watch::Sender::new(false),
            stopping: watch::Sender::new(false),
        }
    }

    /// True from the moment shutdown began; readiness reports false from then on.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn begin_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn stop(&self) {
        self.draining.send_replace(true);
        self.stopping.send_replace(true);
    }

    /// Resolves once the listener should close.
    pub async fn stopping(self) {
        let mut receiver = self.stopping.subscribe();
        // The sender lives in `self`, so `wait_for` can only end by seeing `true`.
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }

    /// Spawns the task that turns SIGTERM or Ctrl-C into draining, then stopping.
    pub fn stop_on_signal(&self, drain_delay: Duration) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(
                signal,
                drain_delay_ms = drain_delay.as_millis() as u64,
                "draining"
            );
            shutdown.begin_draining();
            tokio::time::sleep(drain_delay).await;
            tracing::info!("closing the listener; finishing in-flight requests");
            shutdown.stop();
        });
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};

    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the process");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Serves `app` until `shutdown` stops it, then waits at most `grace` for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: Shutdown,
    grace: Duration,
) -> std::io::Result<()> {
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().stopping());
    let grace_expired = async {
        shutdown.stopping().await;
        tokio::time::sleep(grace).await;
    };

    tokio::select! {
        result = server => {
            tracing::info!("all in-flight requests finished");
            result
        }
        _ = grace_expired => {
            tracing::error!(
                grace_ms = grace.as_millis() as u64,
                "in-flight requests still running when the grace period ended; exiting anyway"
            );
            Ok(())
        }
    }
}
