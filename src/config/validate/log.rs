//! `log.*`.

use super::Check;
use crate::config::raw::{RawLog, DEFAULT_LOG_LEVEL};
use crate::config::{LogConfig, LogFormat};

pub(super) fn log(c: &mut Check, raw: &RawLog) -> LogConfig {
    let format = match raw.format.as_deref().map(str::trim) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            let source = c.src("log.format");
            c.fail(
                "log.format",
                format!("{other:?}: write text or json"),
                Some(source),
            );
            LogFormat::Text
        }
    };
    let level = raw
        .level
        .clone()
        .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        let source = c.src("log.level");
        c.fail(
            "log.level",
            format!("{level:?}: write error, warn, info, debug or trace"),
            Some(source),
        );
    }
    LogConfig {
        format,
        level,
        access: raw.access.unwrap_or(true),
    }
}
