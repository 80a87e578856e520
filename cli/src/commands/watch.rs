//! `nexus watch [projection[/collection[/id]]]`: prints read-model notifications as they
//! arrive from the query dashboard, reconnecting (with backoff and jitter) and resuming after a
//! dropped connection.

use anyhow::Context;
use clap::Args;
use nexus_runtime::notify::client::{ClientEvent, ClientOptions, NotificationClient};
use nexus_runtime::notify::{Since, parse_filter_value};

use super::Outcome;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// What to watch: `projection`, `projection/collection` or `projection/collection/id`.
    #[arg(default_value = "orders")]
    target: String,
    /// The query dashboard.
    #[arg(long, default_value = "http://127.0.0.1:8081", env = "NEXUS_QUERY_URL")]
    url: String,
    /// Bearer token or API key (sent in the WebSocket subprotocol header, never in the URL).
    #[arg(long, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Only documents whose field equals a value, as the list endpoint filters (`status=confirmed`); repeatable.
    #[arg(long = "where", value_name = "FIELD=VALUE")]
    filters: Vec<String>,
    /// Resume after this `epoch:position` (printed with each notification).
    #[arg(long)]
    since: Option<String>,
    /// Print one JSON object per line (notifications and connection events).
    #[arg(long)]
    json: bool,
    /// Stop after this many notifications (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

pub(crate) fn run(args: WatchArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(watch(args))
}

async fn watch(args: WatchArgs) -> anyhow::Result<Outcome> {
    let mut parts = args.target.splitn(3, '/');
    let projection = parts
        .next()
        .filter(|p| !p.is_empty())
        .context("name a projection to watch")?;
    let mut options = ClientOptions::new(&args.url, projection);
    options.collection = parts.next().map(str::to_owned);
    options.id = parts.next().map(str::to_owned);
    options.token = args.token.clone();
    for filter in &args.filters {
        let (field, value) = filter
            .split_once('=')
            .with_context(|| format!("--where `{filter}` must look like FIELD=VALUE"))?;
        options
            .filter
            .push((field.to_owned(), parse_filter_value(value)));
    }
    options.since = args.since.as_deref().map(str::parse::<Since>).transpose()?;
    let mut client = NotificationClient::connect(options)?;
    let url = output::redact_url(&args.url);
    let mut received = 0u64;
    loop {
        let event = tokio::select! {
            event = client.next() => event,
            () = nexus_runtime::http::shutdown_signal() => return Ok(Outcome::Clean),
        };
        let Some(event) = event else {
            anyhow::bail!("the query dashboard at {url} stopped the subscription");
        };
        if args.json {
            output::line(&serde_json::to_string(&event_json(&event))?)?;
        } else if let Some(line) = human(&event) {
            output::line(&line)?;
        }
        match event {
            ClientEvent::Refused { code, message } => {
                anyhow::bail!(
                    "the query dashboard at {url} refused the subscription ({code}): {message}"
                );
            }
            ClientEvent::Notification(_) => {
                received += 1;
                if args.count.is_some_and(|count| received >= count) {
                    return Ok(Outcome::Clean);
                }
            }
            _ => {}
        }
    }
}

fn event_json(event: &ClientEvent) -> serde_json::Value {
    use serde_json::json;
    match event {
        ClientEvent::Notification(note) => json!({"type": "notification", "notification": note}),
        ClientEvent::Subscribed {
            epoch,
            position,
            replayed,
        } => {
            json!({"type": "subscribed", "epoch": epoch, "position": position, "replayed": replayed})
        }
        ClientEvent::Reset {
            epoch,
            position,
            reason,
        } => {
            json!({"type": "reset", "epoch": epoch, "position": position, "reason": reason})
        }
        ClientEvent::Throttled { limit } => json!({"type": "throttled", "limit": limit}),
        ClientEvent::Refused { code, message } => {
            json!({"type": "refused", "code": code, "message": message})
        }
        ClientEvent::Disconnected {
            reason,
            retry_in,
            attempt,
        } => json!({
            "type": "disconnected", "reason": reason, "retry_in_ms": retry_in.as_millis() as u64, "attempt": attempt
        }),
    }
}

fn human(event: &ClientEvent) -> Option<String> {
    Some(match event {
        ClientEvent::Notification(n) => {
            let coalesced = n
                .coalesced
                .map(|c| {
                    format!(
                        " (versions {}..{}, {} changes coalesced)",
                        c.from_version, n.aggregate_version, c.count
                    )
                })
                .unwrap_or_default();
            format!(
                "{} {}/{}/{} {:?} by {}/{}@{} event {}{coalesced}  [{}:{}]",
                n.committed_at.format("%H:%M:%S%.3f"),
                n.projection,
                n.collection,
                n.id,
                n.op,
                n.aggregate_type,
                n.aggregate_id,
                n.aggregate_version,
                n.event_id.0,
                n.epoch,
                n.resume.unwrap_or(n.position)
            )
            .replace("Upsert", "upsert")
            .replace("Delete", "delete")
        }
        ClientEvent::Subscribed {
            epoch,
            position,
            replayed,
        } => {
            format!("watching from {epoch}:{position} ({replayed} missed notifications replayed)")
        }
        ClientEvent::Reset {
            epoch,
            position,
            reason,
        } => {
            format!(
                "reset ({reason:?}): positions start over at {epoch}:{position}; refetch the documents"
            )
        }
        ClientEvent::Throttled { limit } => {
            format!("throttled at {limit}/s: changes of one document are coalesced")
        }
        ClientEvent::Refused { .. } => return None,
        ClientEvent::Disconnected {
            reason,
            retry_in,
            attempt,
        } => {
            format!(
                "disconnected ({reason}); reconnecting in {} ms (attempt {attempt})",
                retry_in.as_millis()
            )
        }
    })
}
