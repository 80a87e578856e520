//! Everything the CLI prints: JSON documents, human lines, and rendered errors.

use std::io::{self, Write};

use serde::Serialize;

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event, with its spans' fields (correlation ids among them).
    #[default]
    Text,
    /// One JSON object per line, with the current span and the span list.
    Json,
}

/// Sets up `tracing`: log lines on stderr (`quiet` without `-v`, more with each `-v`;
/// `RUST_LOG` overrides) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans of the runtime
/// and registry exported over OTLP. The guard flushes the exporter when dropped.
pub(crate) fn init_tracing(
    verbose: u8,
    quiet: &str,
    format: LogFormat,
) -> Option<nexus_runtime::telemetry::otel::TracerGuard> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let default = match verbose {
        0 => quiet,
        1 => "info,nexus=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs);
    let (otel, guard) = match nexus_runtime::telemetry::otel::layer("nexus") {
        Ok(Some((layer, guard))) => (Some(layer), Some(guard)),
        Ok(None) => (None, None),
        Err(err) => {
            let _ = warning(&format!("tracing export is off: {err}"));
            (None, None)
        }
    };
    // Spans of Nexus's own work only, whatever the log level.
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("nexus_runtime", tracing::Level::INFO)
        .with_target("nexus_schema_registry", tracing::Level::INFO);
    let _ = registry.with(otel.with_filter(spans)).try_init();
    guard
}

/// Prints a value as pretty JSON on stdout. A closed pipe is not an error.
pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    line(&text)
}

/// Prints one line on stdout. A closed pipe is not an error.
pub(crate) fn line(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Writes a warning for people on stderr (stdout stays machine-readable).
#[expect(clippy::print_stderr, reason = "warnings go to stderr")]
pub(crate) fn warning(text: &str) -> anyhow::Result<()> {
    eprintln!("warning: {text}");
    Ok(())
}

/// Renders an error that made the tool fail, with its chain of causes.
#[expect(
    clippy::print_stderr,
    reason = "the one place that renders fatal errors"
)]
pub(crate) fn report(err: &anyhow::Error) {
    match err.downcast_ref::<miette::Report>() {
        Some(report) => eprintln!("{report:?}"),
        None => {
            let mut text = format!("error: {err}");
            for cause in err.chain().skip(1) {
                text.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{text}");
        }
    }
}

/// `url` with its secrets replaced by `***`, for showing where a command connects: the one
/// redaction the runtime logs with too ([`nexus_runtime::redact::url`]).
pub(crate) fn redact_url(url: &str) -> String {
    nexus_runtime::redact::url(url)
}
