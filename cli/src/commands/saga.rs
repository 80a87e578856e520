//! `nexus saga list|show|retry|abort`: the instances of a saga, through the command service's
//! `/sagas` routes (`--url`, with `--token` or `NEXUS_TOKEN`; retry and abort need `dlq:admin`).

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::Outcome;
use crate::http::{self, Http};
use crate::output;

/// How long one request to the command service may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    let client = Http::new(REQUEST_TIMEOUT)?.with_token(args.token.clone())?;
    let base = args.url.as_str();
    if http::url(base, &[], &[]).is_err() {
        bail!("--url must be an http:// URL of the command service");
    }
    match &args.command {
        SagaCommand::List {
            saga,
            status,
            limit,
            offset,
        } => {
            let (limit, offset) = (limit.to_string(), offset.to_string());
            let mut query = vec![("limit", limit.as_str()), ("offset", offset.as_str())];
            if let Some(status) = status {
                query.push(("status", status));
            }
            let url = http::url(base, &["sagas", saga], &query)?;
            let page = client.json(Method::GET, &url, None).await?;
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
            let url = http::url(base, &["sagas", saga, id], &[])?;
            let doc = client.json(Method::GET, &url, None).await?;
            if args.json {
                output::json(&doc)?;
            } else {
                show(&doc)?;
            }
        }
        SagaCommand::Retry { saga, id } => {
            let url = http::url(base, &["sagas", saga, id, "retry"], &[])?;
            let done = client.json(Method::POST, &url, None).await?;
            acted(args.json, &done, "retried; it compensates again")?;
        }
        SagaCommand::Abort { saga, id, reason } => {
            let url = http::url(base, &["sagas", saga, id, "abort"], &[])?;
            let body = json!({ "reason": reason });
            let done = client.json(Method::POST, &url, Some(&body)).await?;
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
