//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info` for the daemon,
//! `warn` for one-shot commands so their output stays readable).
//!
//! Invariant: colour escape codes are written only to a terminal, and never when `NO_COLOR`
//! is set (<https://no-color.org>), so a log redirected to a file or a journal stays plain
//! text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Whether log lines may carry colour: `NO_COLOR` set to anything but the empty string turns
/// it off; otherwise only a terminal gets it.
pub fn colour_allowed(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

pub fn init(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = colour_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_allowed(true, None));
        assert!(!colour_allowed(false, None), "a file or a pipe");
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(
            colour_allowed(true, Some(OsStr::new(""))),
            "NO_COLOR= (empty) means unset"
        );
    }
}
