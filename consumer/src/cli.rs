//! The consumer's operator subcommands other than serving: `dlq list`, `dlq replay` and
//! `teardown`.

use std::time::Duration;

use lapin::ConnectionProperties;
use service_runtime::config::{amqp_url, Settings};
use service_runtime::topology::Topology;

use crate::config::ConsumerConfig;
use crate::db::DbError;
use crate::deliver::{queues, store};
use crate::write::dead_letter::admin;

/// Usage of the `dlq` subcommand.
pub const DLQ_USAGE: &str =
    "usage: consumer dlq list [--max N]     (default 20)\n       consumer dlq replay [--limit N] (default: all)";

/// A bad command line.
#[derive(Debug, thiserror::Error)]
#[error("{0}\n{DLQ_USAGE}")]
pub struct UsageError(String);

/// What `dlq` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum DlqCommand {
    /// Show up to this many dead letters.
    List(usize),
    /// Republish up to this many.
    Replay(usize),
}

/// Parses the words after `dlq`.
pub fn parse_dlq(args: &[String]) -> Result<DlqCommand, UsageError> {
    let number = |flag: &str, default: usize| -> Result<usize, UsageError> {
        match args.get(1).map(String::as_str) {
            None => Ok(default),
            Some(given) if given == flag => args
                .get(2)
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| UsageError(format!("{flag} takes a positive whole number"))),
            Some(other) => Err(UsageError(format!("unexpected argument {other:?}"))),
        }
    };
    match args.first().map(String::as_str) {
        Some("list") => Ok(DlqCommand::List(number("--max", 20)?)),
        Some("replay") => Ok(DlqCommand::Replay(number("--limit", usize::MAX)?)),
        _ => Err(UsageError("expected list or replay".into())),
    }
}

/// How long teardown waits for the database that lists the subscriptions.
const SUBSCRIPTION_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// `consumer teardown [--force]`: deletes the queues and exchanges of `WARREN_AMQP_PREFIX`, with
/// the queues of the subscriptions stored in `WARREN_DATABASE_URL`'s database, so scripts and test
/// stacks leave nothing behind on a shared broker. The rows stay: dropping the database is the
/// operator's call. Without `--force` a queue that still holds messages is kept and the command
/// fails. A database it cannot read is reported and the rest is still removed.
pub async fn run_teardown(args: &[String]) -> anyhow::Result<()> {
    let force = match args {
        [] => false,
        [flag] if flag == "--force" => true,
        _ => anyhow::bail!("usage: consumer teardown [--force]"),
    };
    let settings = Settings::from_env();
    let url = amqp_url(&settings)?;
    let topology = Topology::from_settings(&settings)?;
    let database_url = ConsumerConfig::database_url(&settings)?;
    let looked_up = tokio::time::timeout(
        SUBSCRIPTION_LOOKUP_TIMEOUT,
        subscription_queues(database_url.expose(), &topology),
    )
    .await
    .map_err(|_| format!("no answer in {SUBSCRIPTION_LOOKUP_TIMEOUT:?}"))
    .and_then(|found| found.map_err(|error| error.to_string()));
    let subscription_queues = match looked_up {
        Ok(queues) => queues,
        Err(why) => {
            eprintln!(
                "warning: subscriptions' queues not removed, their database could not be read \
                 ({why}); delete those subscriptions through the API"
            );
            Vec::new()
        }
    };
    let (connection, _) =
        service_runtime::amqp::connect(&url, ConnectionProperties::default()).await?;
    let removed = topology
        .remove_with(&connection, &subscription_queues, force)
        .await;
    service_runtime::amqp::close(&connection, "teardown done").await;
    removed?;
    println!(
        "removed the queues and exchanges of prefix {} ({} subscription queue(s))",
        topology.prefix(),
        subscription_queues.len()
    );
    Ok(())
}

/// The queues of the subscriptions stored in `database_url`'s database, under `topology`'s
/// prefix: what removing a prefix deletes besides the store's own.
pub async fn subscription_queues(
    database_url: &str,
    topology: &Topology,
) -> Result<Vec<String>, DbError> {
    let mut conn = crate::db::connect(database_url).await?;
    let ids = store::ids(&mut conn).await?;
    Ok(ids
        .into_iter()
        .map(|id| queues::queue_name(topology, id))
        .collect())
}

/// Runs a `dlq` command and prints its report.
pub async fn run_dlq(config: &ConsumerConfig, command: DlqCommand) -> anyhow::Result<()> {
    let (connection, _) =
        service_runtime::amqp::connect(&config.amqp_url, ConnectionProperties::default()).await?;
    config
        .topology
        .declare(&connection, config.queue_limits)
        .await?;
    match command {
        DlqCommand::List(max) => {
            let report = admin::list(&connection, &config.topology, max).await?;
            println!(
                "{} message(s) in {}",
                report.total,
                config.topology.dead_letter_queue()
            );
            for (reason, count) in &report.reasons {
                println!("  {count:>6}  {reason}");
            }
            for (index, letter) in report.shown.iter().enumerate() {
                println!(
                    "#{index} routing_key={} bytes={} reason={}\n   {}",
                    letter.routing_key, letter.bytes, letter.reason, letter.preview
                );
            }
        }
        DlqCommand::Replay(limit) => {
            let replayed = admin::replay(&connection, &config.topology, limit).await?;
            println!(
                "replayed {replayed} message(s) to {}",
                config.topology.exchange()
            );
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn dlq_commands_parse_with_defaults_and_flags() {
        assert_eq!(parse_dlq(&args(&["list"])).unwrap(), DlqCommand::List(20));
        assert_eq!(
            parse_dlq(&args(&["list", "--max", "5"])).unwrap(),
            DlqCommand::List(5)
        );
        assert_eq!(
            parse_dlq(&args(&["replay"])).unwrap(),
            DlqCommand::Replay(usize::MAX)
        );
        assert_eq!(
            parse_dlq(&args(&["replay", "--limit", "3"])).unwrap(),
            DlqCommand::Replay(3)
        );
    }

    #[test]
    fn bad_dlq_commands_are_refused() {
        assert!(parse_dlq(&args(&[])).is_err());
        assert!(parse_dlq(&args(&["purge"])).is_err());
        assert!(parse_dlq(&args(&["replay", "--limit", "0"])).is_err());
        assert!(parse_dlq(&args(&["list", "--limit", "3"])).is_err());
    }
}
