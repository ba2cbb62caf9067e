//! Log setup shared by both services.
//!
//! JSON lines when stdout is not a terminal (what log shippers read), readable lines when it is;
//! the filter comes from `WARREN_LOG` in `EnvFilter` syntax. A thread of its own writes them.

use std::io::{BufWriter, IsTerminal};
use std::sync::Once;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// The variable holding the log filter.
pub const LOG_ENV: &str = "WARREN_LOG";

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `WARREN_LOG` is not a valid filter.
    #[error("WARREN_LOG is not a valid log filter ({0}); example: WARREN_LOG=info,lapin=warn")]
    BadFilter(String),
    /// Another global subscriber was installed first.
    #[error("a log subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the thread that writes the log alive; dropping it writes out what is queued, so
/// `main` holds it until the service has stopped.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber; `default_filter` applies when `WARREN_LOG` is unset.
///
/// Lines go to stdout from a thread of their own, as many per write as have queued since the
/// last, so a busy gateway's one worker thread makes no system call per request line
/// (docs/benchmarks.md, forty-second round). A quiet service still writes each line at once.
/// Nothing is dropped: when 128 000 lines are queued, logging waits for the writer.
pub fn init(default_filter: &str) -> Result<LogGuard, TelemetryError> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(text) if !text.trim().is_empty() => {
            EnvFilter::try_new(&text).map_err(|e| TelemetryError::BadFilter(e.to_string()))?
        }
        _ => EnvFilter::new(default_filter),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("warren-log")
        .finish(BufWriter::new(std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer);
    let result = if std::io::stdout().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(LogGuard { _writer: guard })
}

/// For tests: installs a subscriber once per process, printing only when `TEST_LOG` is set.
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(
                    std::env::var(LOG_ENV).unwrap_or_else(|_| "info".into()),
                ))
                .with_test_writer()
                .try_init();
        }
    });
}
