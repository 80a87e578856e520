//! Everything the CLI prints: JSON documents, human lines, and rendered errors.

use std::io::{self, Write};

use serde::Serialize;

/// Sets up `tracing` output on stderr: `quiet` without `-v`, more with each `-v`; `RUST_LOG` overrides.
pub(crate) fn init_tracing(verbose: u8, quiet: &str) {
    let default = match verbose {
        0 => quiet,
        1 => "info,nexus=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
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
