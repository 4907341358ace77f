//! Logging: text or JSON lines on stderr. `RUST_LOG`, when set, wins over `log.level`.
//! Both `log.level` and `log.format` change on reload: the level through tracing-subscriber's
//! reload handle on the filter, the format through one event formatter that picks text or
//! JSON per line from a switch (so no layer has to be swapped under a running subscriber).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{ConfigErrors, LogConfig, LogFormat, Overrides};

pub fn filter(level: &str) -> EnvFilter {
    match rust_log() {
        Some(v) => EnvFilter::try_new(v).unwrap_or_else(|_| EnvFilter::new("info")),
        // rustls narrates every handshake at debug; keep it out unless asked for by name.
        None => EnvFilter::try_new(format!("{level},rustls=warn,tokio_rustls=warn"))
            .unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// Text or JSON, chosen per line by a switch that a reload flips.
struct Switch {
    json: Arc<AtomicBool>,
    text: Format<Full, tracing_subscriber::fmt::time::SystemTime>,
    as_json: Format<Json, tracing_subscriber::fmt::time::SystemTime>,
}

impl<S, N> FormatEvent<S, N> for Switch
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if self.json.load(Ordering::Relaxed) {
            self.as_json.format_event(ctx, writer, event)
        } else {
            self.text.format_event(ctx, writer, event)
        }
    }
}

struct Live {
    filter: reload::Handle<EnvFilter, Registry>,
    json: Arc<AtomicBool>,
    current: Mutex<LogConfig>,
}

static LIVE: OnceLock<Live> = OnceLock::new();

/// Installs the global subscriber once; later calls only apply `cfg` (as a reload does).
pub fn init(cfg: &LogConfig) {
    if LIVE.get().is_some() {
        apply(cfg);
        return;
    }
    let json = Arc::new(AtomicBool::new(cfg.format == LogFormat::Json));
    let (filter_layer, handle) = reload::Layer::new(filter(&cfg.level));
    let format = Switch {
        json: json.clone(),
        text: tracing_subscriber::fmt::format().with_ansi(false),
        as_json: tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false),
    };
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .event_format(format);
    if tracing_subscriber::registry()
        .with(filter_layer)
        .with(fmt_layer)
        .try_init()
        .is_ok()
    {
        let _ = LIVE.set(Live {
            filter: handle,
            json,
            current: Mutex::new(cfg.clone()),
        });
    }
}

/// Applies a reloaded `log` section: the format from the next line on, the level for every
/// event from now. (`log.access` lives in the shared state; see `state::Shared`.)
pub fn apply(cfg: &LogConfig) {
    let Some(live) = LIVE.get() else {
        return;
    };
    let mut current = live.current.lock().unwrap_or_else(|p| p.into_inner());
    live.json
        .store(cfg.format == LogFormat::Json, Ordering::Relaxed);
    if current.level != cfg.level {
        if let Some(v) = rust_log() {
            tracing::warn!(
                log_level = %cfg.level,
                rust_log = %v,
                "log.level changed, but RUST_LOG is set and wins over it; unset RUST_LOG in the service's environment to use log.level"
            );
        } else if let Err(e) = live.filter.reload(filter(&cfg.level)) {
            tracing::error!(error = %e, "cannot apply log.level");
        }
    }
    *current = cfg.clone();
}

/// Prints configuration errors before logging is set up: as JSON lines when the (otherwise
/// broken) configuration asks for JSON, so a log pipeline never sees a stray text line.
pub(crate) fn config_errors(flags: &Overrides, errors: &ConfigErrors) {
    let vars = crate::config::env_vars();
    let json = crate::config::log_format_hint(&vars, flags).is_some_and(|f| f.trim() == "json");
    if !json {
        eprintln!("{errors}");
        return;
    }
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    for e in &errors.0 {
        let line = serde_json::json!({
            "timestamp": now,
            "level": "ERROR",
            "message": format!("configuration error: {e}"),
            "key": e.key,
            "source": e.source,
            "target": "det_tls_proxy::config",
        });
        eprintln!("{line}");
    }
}
