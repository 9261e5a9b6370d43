//! The tracing subscriber: human-readable or JSON lines on stdout; and an
//! error's whole cause chain on one line, as the logs and messages show it.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// An error and its causes on one line, for a log field or an error
/// message; reqwest's own `Display` stops at "error sending request".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over
/// `log.level` so an operator can raise verbosity without editing files.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second init (tests calling in twice) is harmless: keep the first.
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Pretty => builder.with_ansi(false).try_init(),
    };
}
