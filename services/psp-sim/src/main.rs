//! `psp-sim`: the simulated payment processor as a process.

use anyhow::Context;
use psp_sim::{Behaviour, SimState, router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();

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
    Ok(())
}
