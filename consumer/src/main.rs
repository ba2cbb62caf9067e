//! The `consumer` binary: `consumer` runs the worker and read API; `consumer migrate` applies
//! migrations; `consumer deliver` runs a delivery worker (fan-out to subscriptions);
//! `consumer dlq list|replay` handles dead letters; `consumer healthcheck` probes a
//! running one; `consumer teardown` removes a prefix's queues and exchanges.

use anyhow::Context;
use consumer::ConsumerConfig;
use service_runtime::shutdown::shutdown_signal;

fn main() -> anyhow::Result<()> {
    let settings = service_runtime::config::Settings::from_env();
    let runtime = service_runtime::runtime::build(&settings).context("invalid configuration")?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("migrate") {
        let settings = service_runtime::config::Settings::from_env();
        let database_url =
            ConsumerConfig::database_url(&settings).context("invalid configuration")?;
        let _log = service_runtime::telemetry::init("info")?;
        let applied = consumer::db::migrate(database_url.expose()).await?;
        println!("migrations applied: {applied}");
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("teardown") {
        return consumer::cli::run_teardown(&args[1..]).await;
    }
    let config = ConsumerConfig::from_env().context("invalid configuration")?;
    match args.first().map(String::as_str) {
        None | Some("serve") => {}
        Some("deliver") => {
            let _log = service_runtime::telemetry::init("info,lapin=warn")?;
            let listener = tokio::net::TcpListener::bind(config.addr)
                .await
                .with_context(|| format!("cannot listen on {} (WARREN_CONSUMER_ADDR)", config.addr))?;
            consumer::deliver::worker::run(listener, config, shutdown_signal()).await?;
            return Ok(());
        }
        Some("dlq") => {
            let command = consumer::cli::parse_dlq(&args[1..])?;
            return consumer::cli::run_dlq(&config, command).await;
        }
        Some("healthcheck") => return service_runtime::healthcheck::probe(config.addr).await,
        Some(other) => anyhow::bail!(
            "unknown subcommand {other:?}; usage: consumer [serve|deliver|migrate|dlq|healthcheck|teardown]"
        ),
    }
    let _log = service_runtime::telemetry::init("info,lapin=warn")?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (WARREN_CONSUMER_ADDR)", config.addr))?;
    consumer::run(listener, config, shutdown_signal()).await?;
    Ok(())
}
