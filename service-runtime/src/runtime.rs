//! The tokio runtime each service runs on, sized by `WARREN_WORKER_THREADS`.
//!
//! On a host shared by nginx, the broker, PostgreSQL and the services (the 2-core machines Warren
//! is benchmarked on), every idle worker thread that is woken for one request costs a context
//! switch. One worker per process measured about 15% less gateway CPU per single event than two
//! (docs/benchmarks.md); more processes, not more threads, then use more cores. The default
//! stays one worker per core, as tokio sizes it, for a host that runs one gateway.

use crate::config::{ConfigError, Settings};

/// Most worker threads accepted; far beyond any core count a service would run on.
const MAX_WORKER_THREADS: usize = 1024;

/// Why the runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `WARREN_WORKER_THREADS` is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The operating system refused threads or the I/O driver.
    #[error("cannot start the async runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// The worker count `settings` ask for (`WARREN_WORKER_THREADS`), default one per core.
pub fn worker_threads(settings: &Settings<'_>) -> Result<usize, ConfigError> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    settings.bounded("WARREN_WORKER_THREADS", cores, 1..=MAX_WORKER_THREADS)
}

/// A multi-threaded runtime with every driver on and the configured number of workers.
pub fn build(settings: &Settings<'_>) -> Result<tokio::runtime::Runtime, RuntimeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(settings)?)
        .enable_all()
        .build()?;
    Ok(runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(value: &'static str) -> Settings<'static> {
        Settings::from_lookup(move |name| (name == "WARREN_WORKER_THREADS").then(|| value.into()))
    }

    #[test]
    fn defaults_to_one_worker_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let none = Settings::from_lookup(|_| None);
        assert_eq!(worker_threads(&none).unwrap(), cores);
    }

    #[test]
    fn takes_a_count_and_refuses_zero_or_garbage() {
        assert_eq!(worker_threads(&settings("1")).unwrap(), 1);
        let zero = worker_threads(&settings("0")).unwrap_err();
        assert_eq!(zero.name, "WARREN_WORKER_THREADS");
        assert!(worker_threads(&settings("two")).is_err());
    }

    #[test]
    fn the_runtime_runs_on_the_configured_workers() {
        let runtime = build(&settings("1")).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 1);
    }
}
