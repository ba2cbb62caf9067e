//! The `gateway` binary: `gateway` serves; `gateway healthcheck` probes a running one.

use anyhow::Context;
use gateway::GatewayConfig;
use shared_types::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::from_env().context("invalid configuration")?;
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("healthcheck") => return shared_types::healthcheck::probe(config.addr).await,
        Some(other) => {
            anyhow::bail!("unknown subcommand {other:?}; usage: gateway [serve|healthcheck]")
        }
    }
    shared_types::telemetry::init("info,lapin=warn")?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (WARREN_GATEWAY_ADDR)", config.addr))?;
    gateway::run(listener, config, shutdown_signal()).await;
    Ok(())
}
