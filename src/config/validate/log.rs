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

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};
    use crate::config::LogFormat;

    #[test]
    fn format_and_level_words() {
        let c = valid("master_host: det\nlog: {format: json, level: debug, access: false}\n");
        assert_eq!((c.log.format, c.log.level.as_str(), c.log.access), (LogFormat::Json, "debug", false));
        let m = mistakes("master_host: det\nlog: {format: xml, level: \"loud=[\"}\n");
        assert!(has(&m, "log.format", "write text or json"), "{m:?}");
        assert!(has(&m, "log.level", "write error, warn"), "{m:?}");
    }
}
