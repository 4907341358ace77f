//! Logging: text or JSON lines on stderr. `RUST_LOG`, when set, wins over `log.level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn filter(level: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(v).unwrap_or_else(|_| EnvFilter::new("info"))
        }
        // rustls narrates every handshake at debug; keep it out unless asked for by name.
        _ => EnvFilter::try_new(format!("{level},rustls=warn,tokio_rustls=warn"))
            .unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

/// Installs the global subscriber once; later calls are ignored.
pub fn init(cfg: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&cfg.level))
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
