//! The `gateway` binary: `gateway` serves; `gateway keygen --scope ingest|read|admin` prints a new API
//! key and its configuration line; `gateway keys init|show` makes a stack's keys on its first start
//! and shows them (see `service_runtime::key_store`); `gateway healthcheck` probes a running one.

use anyhow::Context;
use gateway::GatewayConfig;
use service_runtime::auth::{generate_key, Scope};
use service_runtime::key_store;
use service_runtime::server::Listeners;
use service_runtime::shutdown::shutdown_signal;
use service_runtime::unix_socket::UnixSocket;

const USAGE: &str =
    "usage: gateway [serve | healthcheck | keygen --scope ingest|read|admin | keys init|show]";

fn main() -> anyhow::Result<()> {
    let settings = service_runtime::config::Settings::from_env();
    let runtime = service_runtime::runtime::build(&settings).context("invalid configuration")?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("keygen") {
        let scope: Scope = match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("--scope"), Some(scope)) => scope.parse().map_err(anyhow::Error::msg)?,
            _ => anyhow::bail!(USAGE),
        };
        let (key, line) = generate_key(scope);
        println!("key:  {key}");
        println!("hash: {line}");
        println!("# give the key to the client; configure the hash with WARREN_KEYS_FILE (the line as is)");
        println!(
            "# or WARREN_{}_KEYS (the hex part)",
            scope.as_str().to_uppercase()
        );
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("keys") {
        let settings = service_runtime::config::Settings::from_env();
        let text = key_store::command(args.get(1).map(String::as_str), &settings)
            .ok_or_else(|| anyhow::anyhow!(USAGE))??;
        print!("{text}");
        return Ok(());
    }
    let config = GatewayConfig::from_env().context("invalid configuration")?;
    match args.first().map(String::as_str) {
        None | Some("serve") => {}
        Some("healthcheck") => return service_runtime::healthcheck::probe(config.addr).await,
        Some(other) => anyhow::bail!("unknown subcommand {other:?}; {USAGE}"),
    }
    let _log = service_runtime::telemetry::init("info,lapin=warn,lapin::returned_messages=error")?;
    let tcp = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (WARREN_GATEWAY_ADDR)", config.addr))?;
    let unix = config
        .unix_socket
        .as_deref()
        .map(UnixSocket::bind)
        .transpose()
        .context("cannot listen on the unix socket WARREN_GATEWAY_SOCKET names")?;
    gateway::run(Listeners { tcp, unix }, config, shutdown_signal()).await;
    Ok(())
}
