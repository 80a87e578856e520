//! `nexus saga list|show|retry|abort`: the instances of a saga, through the command service's
//! `/sagas` routes (`--url`, with `--token` or `NEXUS_TOKEN`; retry and abort need `dlq:admin`).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::Outcome;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct SagaArgs {
    /// The command service running the sagas.
    #[arg(
        long,
        global = true,
        env = "NEXUS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Bearer token or API key (retry and abort always need one with `dlq:admin`).
    #[arg(long, global = true, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: SagaCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SagaCommand {
    /// List instances of a saga, by status.
    List {
        /// The saga.
        saga: String,
        /// Only instances with this status (running, compensating, completed, compensated,
        /// timed_out, stuck, aborted).
        #[arg(long)]
        status: Option<String>,
        /// Instances per page (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Instances to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Show one instance: its steps with attempts and times, and its history.
    Show {
        /// The saga.
        saga: String,
        /// The instance id.
        id: String,
    },
    /// Try the failed compensation of a stuck instance again.
    Retry {
        /// The saga.
        saga: String,
        /// The instance id.
        id: String,
    },
    /// Give up on a stuck instance (it ends `aborted`).
    Abort {
        /// The saga.
        saga: String,
        /// The instance id.
        id: String,
        /// Why (kept in the saga's history).
        #[arg(long)]
        reason: String,
    },
}

pub(crate) fn run(args: SagaArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(run_async(args))
}

async fn run_async(args: SagaArgs) -> anyhow::Result<Outcome> {
    let client = Client::new(&args.url, args.token.clone())?;
    match &args.command {
        SagaCommand::List {
            saga,
            status,
            limit,
            offset,
        } => {
            let mut query = vec![format!("limit={limit}"), format!("offset={offset}")];
            if let Some(status) = status {
                query.push(format!("status={}", encode(status)));
            }
            let page = client
                .send(
                    hyper::Method::GET,
                    &format!("/sagas/{}?{}", encode(saga), query.join("&")),
                    None,
                )
                .await?;
            if args.json {
                output::json(&page)?;
            } else {
                let items = page["items"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    output::line(&format!("no instances of `{saga}`"))?;
                }
                for item in &items {
                    output::line(&format!(
                        "{}  {:<12} {:<16} {}{}",
                        text(&item["id"]),
                        text(&item["status"]),
                        text(&item["current_step"]),
                        text(&item["correlation_key"]),
                        item["reason"]
                            .as_str()
                            .map(|r| format!("  ({r})"))
                            .unwrap_or_default()
                    ))?;
                }
                if let Some(next) = page["next_offset"].as_u64() {
                    output::line(&format!("more: --offset {next}"))?;
                }
            }
        }
        SagaCommand::Show { saga, id } => {
            let doc = client
                .send(
                    hyper::Method::GET,
                    &format!("/sagas/{}/{}", encode(saga), encode(id)),
                    None,
                )
                .await?;
            if args.json {
                output::json(&doc)?;
            } else {
                show(&doc)?;
            }
        }
        SagaCommand::Retry { saga, id } => {
            let done = client
                .send(
                    hyper::Method::POST,
                    &format!("/sagas/{}/{}/retry", encode(saga), encode(id)),
                    None,
                )
                .await?;
            acted(args.json, &done, "retried; it compensates again")?;
        }
        SagaCommand::Abort { saga, id, reason } => {
            let done = client
                .send(
                    hyper::Method::POST,
                    &format!("/sagas/{}/{}/abort", encode(saga), encode(id)),
                    Some(json!({ "reason": reason })),
                )
                .await?;
            acted(args.json, &done, "aborted")?;
        }
    }
    Ok(Outcome::Clean)
}

fn acted(json: bool, done: &Value, what: &str) -> anyhow::Result<()> {
    if json {
        output::json(done)
    } else {
        output::line(&format!(
            "{} {what} (now {})",
            text(&done["id"]),
            text(&done["status"])
        ))
    }
}

fn show(doc: &Value) -> anyhow::Result<()> {
    output::line(&format!(
        "{} {} v{}  {}",
        text(&doc["saga"]),
        text(&doc["id"]),
        text(&doc["definition_version"]),
        text(&doc["status"])
    ))?;
    output::line(&format!(
        "  correlation key: {}",
        text(&doc["correlation_key"])
    ))?;
    if let Some(reason) = doc["reason"].as_str() {
        output::line(&format!("  reason: {reason}"))?;
    }
    if let Some(due) = doc["next_due"].as_str() {
        output::line(&format!("  next due: {due}"))?;
    }
    for (index, step) in doc["steps"].as_array().into_iter().flatten().enumerate() {
        let mut line = format!(
            "  {index}. {:<16} {:<10} attempts {}",
            text(&step["name"]),
            text(&step["status"]),
            text(&step["attempts"])
        );
        if let Some(error) = step["last_error"].as_str() {
            line.push_str(&format!("  last error: {error}"));
        }
        if let Some(c) = step.get("compensation").filter(|c| !c.is_null()) {
            line.push_str(&format!(
                "  compensation: {} ({} attempts)",
                text(&c["status"]),
                text(&c["attempts"])
            ));
        }
        output::line(&line)?;
    }
    output::line("  history:")?;
    for event in doc["history"].as_array().into_iter().flatten() {
        output::line(&format!(
            "    {:>3} {} {}",
            text(&event["version"]),
            text(&event["recorded_at"]),
            text(&event["type"])
        ))?;
    }
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment or query value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A small JSON-over-HTTP client for one service.
struct Client {
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        if token
            .as_deref()
            .is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            bail!("the token must be one word without spaces");
        }
        if !url.starts_with("http://") {
            bail!("--url must be an http:// URL of the command service");
        }
        Ok(Self {
            inner:
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
            base: url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Sends a request; an error status is an error naming the service's message.
    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let shown = output::redact_url(url.split('?').next().unwrap_or(&url));
        let mut request = hyper::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(bytes))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.inner.request(request))
            .await
            .with_context(|| format!("no answer from {shown} within 30 s"))?
            .with_context(|| format!("cannot reach {shown}"))?;
        let status = response.status();
        let bytes = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
            .await
            .with_context(|| format!("{shown} did not finish its answer within 30 s"))??
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            let code = body["error"].as_str().unwrap_or("error");
            bail!("{shown} answered {status} ({code}): {message}");
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("order-fulfilment"), "order-fulfilment");
        assert_eq!(encode("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
