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

/// `url` with its password replaced by `***`, for showing where a command connects.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!(
                "{}{user}:***@{host}{}",
                &url[..scheme_end],
                &url[authority_end..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        // An `@` after the host belongs to the path, not to the credentials.
        assert_eq!(
            redact_url("postgres://db:5432/orders?user=a@b"),
            "postgres://db:5432/orders?user=a@b"
        );
    }
}
