//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info` for the daemon,
//! `warn` for one-shot commands so their output stays readable).

use tracing_subscriber::EnvFilter;

pub fn init(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
