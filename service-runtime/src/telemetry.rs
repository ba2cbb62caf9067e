//! Log setup shared by both services.
//!
//! JSON lines when stdout is not a terminal (what log shippers read), readable lines when it is;
//! the filter comes from `WARREN_LOG` in `EnvFilter` syntax. A thread of its own writes them
//! ([`crate::log_writer`]).

use std::io::IsTerminal;
use std::sync::Once;

use tracing_subscriber::EnvFilter;

use crate::log_writer::{self, WriterGuard};

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
    /// The operating system refused the writer thread.
    #[error("cannot start the log writer thread: {0}")]
    WriterThread(#[source] std::io::Error),
}

/// Keeps the thread that writes the log alive; dropping it writes out what is queued, so
/// `main` holds it until the service has stopped.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: WriterGuard,
}

/// Installs the global subscriber; `default_filter` applies when `WARREN_LOG` is unset.
///
/// Lines go to stdout from a thread of their own, gathered for up to
/// [`log_writer::GATHER`] under load, so a busy gateway's one worker thread makes no system
/// call per request line (docs/benchmarks.md, forty-second and forty-third rounds). A quiet
/// service still writes each line at once. Nothing is dropped: past
/// [`log_writer::MAX_QUEUED_BYTES`] queued, logging waits for the writer.
pub fn init(default_filter: &str) -> Result<LogGuard, TelemetryError> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(text) if !text.trim().is_empty() => {
            EnvFilter::try_new(&text).map_err(|e| TelemetryError::BadFilter(e.to_string()))?
        }
        _ => EnvFilter::new(default_filter),
    };
    let (writer, guard) = log_writer::spawn(
        std::io::stdout(),
        log_writer::GATHER,
        log_writer::MAX_QUEUED_BYTES,
    )
    .map_err(TelemetryError::WriterThread)?;
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
