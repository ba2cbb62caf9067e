//! The `consumer` binary: `consumer` runs the worker and read API; `consumer migrate` applies
//! migrations; `consumer healthcheck` probes a running one.

use anyhow::Context;
use consumer::ConsumerConfig;
use shared_types::shutdown::shutdown_signal;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ConsumerConfig::from_env().context("invalid configuration")?;
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("migrate") => {
            shared_types::telemetry::init("info")?;
            let applied = consumer::db::migrate(&config.database_url).await?;
            println!("migrations applied: {applied}");
            return Ok(());
        }
        Some("healthcheck") => return shared_types::healthcheck::probe(config.addr).await,
        Some(other) => anyhow::bail!(
            "unknown subcommand {other:?}; usage: consumer [serve|migrate|healthcheck]"
        ),
    }
    shared_types::telemetry::init("info,lapin=warn")?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (WARREN_CONSUMER_ADDR)", config.addr))?;
    consumer::run(listener, config, shutdown_signal()).await?;
    Ok(())
}
