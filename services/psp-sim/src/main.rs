//! `psp-sim`: the simulated payment processor as a process.

use anyhow::Context;
use clap::Parser;
use psp_sim::{Behaviour, SimState, router};

/// A stand-in for an external payment processor. Every setting comes from the environment:
/// PSP_SIM_LISTEN (127.0.0.1:9090), PSP_SIM_LATENCY_MEDIAN_MS (50), PSP_SIM_LATENCY_SIGMA
/// (0.5), PSP_SIM_LATENCY_MAX_MS (5000), PSP_SIM_FAILURE_RATE (0), PSP_SIM_DECLINE_RATE (0).
/// PUT /admin/behaviour changes them while it runs.
#[derive(Parser)]
#[command(version)]
struct Cli {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    let telemetry = platform::telemetry::init("psp-sim");

    let listen = platform::config::var_or("PSP_SIM_LISTEN", "127.0.0.1:9090".to_owned())?;
    let behaviour = Behaviour::from_env()?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, ?behaviour, "psp-sim listening");

    let shutdown = platform::shutdown::Shutdown::new();
    shutdown.stop_on_signal(std::time::Duration::ZERO);
    platform::shutdown::serve(
        listener,
        router(SimState::new(behaviour)),
        shutdown,
        std::time::Duration::from_secs(5),
    )
    .await?;
    telemetry.shutdown();
    Ok(())
}
