//! `nexus replay`: temporal queries from the command line.
//!
//! `events` prints an aggregate's events in a time range (NDJSON with `--json`), following
//! continuation tokens and waiting politely when the service rate-limits; `state` prints an
//! aggregate's state as of a time or version; `projection` rebuilds a projection's read model
//! as it stood at a time into a separate read model. Against the services (`--url`, with
//! `--token` or `NEXUS_TOKEN`) or, read-only, straight from a store (`--store`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nexus_runtime::StreamId;
use nexus_runtime::projection::ReadModelStore;
use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::temporal::{
    AsOf, History, Scope, SqliteHistory, TemporalLimits, TemporalQuery, TimeRange, TokenSigner,
    replay_projection, run_page, state_as_of,
};
use reqwest::Method;
use serde_json::{Value, json};

use super::Outcome;
use crate::events::Order;
use crate::http::{self, Http};
use crate::output;
use crate::projection::OrderSummaries;

/// Most waits for a rate limit before giving up.
const MAX_RATE_WAITS: u32 = 30;
/// How long one request may take (a page of a long range, a replay of a large projection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub(crate) enum ReplayCommand {
    /// Print an aggregate's events recorded in a time range `[--from, --to)`.
    Events(EventsArgs),
    /// Print an aggregate's state as of a time or a version.
    State(StateArgs),
    /// Rebuild a projection's read model as it stood at a time into a separate read model.
    Projection(ProjectionArgs),
}

/// Where history comes from.
#[derive(Debug, Args)]
pub(crate) struct Source {
    /// The service: the query dashboard for `events` and `projection`, the command service for
    /// `state` (e.g. http://127.0.0.1:8081).
    #[arg(long, env = "NEXUS_URL", conflicts_with = "store")]
    url: Option<String>,
    /// Bearer token or API key for `--url` (temporal endpoints always need one).
    #[arg(long, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read a store directly, read-only: `sqlite:PATH` or `postgres://…` (schema `nexus`).
    #[arg(long)]
    store: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// `<aggregate>/<id>`, or `<aggregate>` for every aggregate of that type.
    target: String,
    /// Start of the range (inclusive): RFC 3339, or a relative age like `2h`, `7d`, `30m`.
    #[arg(long)]
    from: Option<String>,
    /// End of the range (exclusive): RFC 3339 or a relative age (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type")]
    types: Vec<String>,
    /// Events one page examines (at most the service's scan limit).
    #[arg(long)]
    page_size: Option<usize>,
    /// NDJSON: one event per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    source: Source,
}

#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    /// `<aggregate>/<id>`.
    target: String,
    /// Everything recorded before this time: RFC 3339 or a relative age.
    #[arg(long, conflicts_with = "version", required_unless_present = "version")]
    at: Option<String>,
    /// Everything up to and including this version.
    #[arg(long)]
    version: Option<u64>,
    #[command(flatten)]
    source: Source,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectionArgs {
    /// The projection (the sample's is `orders`).
    name: String,
    /// Apply events recorded before this time: RFC 3339 or a relative age.
    #[arg(long)]
    until: String,
    /// With `--store`: the new SQLite read model file (must not exist). With `--url`: the name
    /// of the new read model on the service (`replay-<name>`).
    #[arg(long)]
    into: String,
    #[command(flatten)]
    source: Source,
}

pub(crate) fn run(command: ReplayCommand) -> anyhow::Result<Outcome> {
    let runtime = super::tokio_runtime()?;
    match command {
        ReplayCommand::Events(args) => runtime.block_on(events(args)),
        ReplayCommand::State(args) => runtime.block_on(state(args)),
        ReplayCommand::Projection(args) => runtime.block_on(projection(args)),
    }
}

/// A time given as RFC 3339 or as an age before `now` (`90s`, `30m`, `2h`, `7d`, `2w`).
pub(crate) fn parse_time(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let bad = || {
        anyhow::anyhow!(
            "`{text}` is not a time: give RFC 3339 (2026-01-31T12:00:00Z) or an age like 90s, 30m, 2h, 7d, 2w"
        )
    };
    parse_age(text)
        .and_then(|age| chrono::Duration::from_std(age).ok())
        .and_then(|age| now.checked_sub_signed(age))
        .ok_or_else(bad)
}

/// An age like 90s, 30m, 2h, 7d or 2w.
pub(crate) fn parse_age(text: &str) -> Option<std::time::Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    number
        .checked_mul(seconds)
        .filter(|s| i64::try_from(*s).is_ok())
        .map(std::time::Duration::from_secs)
}

fn split_target(target: &str) -> anyhow::Result<(String, Option<String>)> {
    match target.split_once('/') {
        Some((kind, id)) if !kind.is_empty() && !id.is_empty() => {
            Ok((kind.to_owned(), Some(id.to_owned())))
        }
        None if !target.is_empty() => Ok((target.to_owned(), None)),
        _ => bail!("`{target}` is not `<aggregate>/<id>` or `<aggregate>`"),
    }
}

/// The query `args` describe, checked against the default limits before any I/O.
fn events_query(args: &EventsArgs) -> anyhow::Result<TemporalQuery> {
    let now = Utc::now();
    let (kind, id) = split_target(&args.target)?;
    let limits = TemporalLimits::default();
    let to = match &args.to {
        Some(text) => parse_time(text, now)?,
        None => now,
    };
    let from = match &args.from {
        Some(text) => parse_time(text, now)?,
        None => to - chrono::Duration::days(1),
    };
    let query = TemporalQuery {
        scope: match id {
            Some(id) => Scope::Stream(StreamId::new(kind, id)),
            None => Scope::AggregateType(kind),
        },
        range: TimeRange { from, to },
        event_types: args.types.clone(),
        page_size: args.page_size,
    };
    query.validate(&limits)?;
    Ok(query)
}

/// A read-only history from `--store`.
async fn open_history(spec: &str) -> anyhow::Result<Arc<dyn History>> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        let history = SqliteHistory::open(path)
            .with_context(|| format!("cannot open the store at {path} read-only"))?;
        return Ok(Arc::new(history));
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let history = nexus_runtime::temporal::PostgresHistory::connect(spec, "nexus", 4)
            .await
            .with_context(|| format!("cannot open {} read-only", output::redact_url(spec)))?;
        return Ok(Arc::new(history));
    }
    bail!("`--store {spec}` must be `sqlite:PATH` or a postgres:// URL")
}

/// A spinner with a count on stderr; indicatif hides it when stderr is not a terminal.
fn progress() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} events {msg}") {
        bar.set_style(style);
    }
    bar
}

fn print_event(event: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return output::line(&event.to_string());
    }
    output::line(&format!(
        "{} {}/{} v{} {} {}",
        event["recorded_at"].as_str().unwrap_or("?"),
        event["stream"]["aggregate_type"].as_str().unwrap_or("?"),
        event["stream"]["aggregate_id"].as_str().unwrap_or("?"),
        event["version"],
        event["event_type"].as_str().unwrap_or("?"),
        event["payload"]
    ))
}

async fn events(args: EventsArgs) -> anyhow::Result<Outcome> {
    let query = events_query(&args)?;
    let bar = progress();
    let total = match (&args.source.store, &args.source.url) {
        (Some(spec), _) => events_from_store(spec, &query, args.json, &bar).await?,
        (None, Some(url)) => events_from_service(url, &args, &query, &bar).await?,
        (None, None) => bail!("give --url (the query dashboard) or --store"),
    };
    bar.finish_and_clear();
    if !args.json {
        output::line(&format!("{total} events"))?;
    }
    Ok(Outcome::Clean)
}

async fn events_from_store(
    spec: &str,
    query: &TemporalQuery,
    json: bool,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let history = open_history(spec).await?;
    let signer = TokenSigner::random();
    let limits = TemporalLimits::default();
    let mut token: Option<String> = None;
    let mut total = 0;
    loop {
        let page = run_page(
            history.as_ref(),
            &signer,
            &limits,
            query,
            "cli",
            token.as_deref(),
        )
        .await?;
        for event in &page.events {
            print_event(&serde_json::to_value(event)?, json)?;
        }
        total += page.returned as u64;
        bar.inc(page.returned as u64);
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok(total),
        }
    }
}

async fn events_from_service(
    url: &str,
    args: &EventsArgs,
    query: &TemporalQuery,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let client = Client::new(args.source.token.clone())?;
    let mut params: Vec<(&str, String)> = vec![
        ("from", query.range.from.to_rfc3339()),
        ("to", query.range.to.to_rfc3339()),
    ];
    match &query.scope {
        Scope::Stream(stream) => {
            params.push(("aggregate_type", stream.aggregate_type().to_owned()));
            params.push(("aggregate_id", stream.aggregate_id().to_owned()));
        }
        Scope::AggregateType(kind) => params.push(("aggregate_type", kind.clone())),
        Scope::All => {}
    }
    params.extend(query.event_types.iter().map(|t| ("event_type", t.clone())));
    if let Some(size) = query.page_size {
        params.push(("limit", size.to_string()));
    }
    let mut token: Option<String> = None;
    let mut total = 0;
    loop {
        let mut page_params = params.clone();
        if let Some(token) = &token {
            page_params.push(("token", token.clone()));
        }
        let query: Vec<(&str, &str)> = page_params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page_url = http::url(url, &["temporal", "events"], &query)?;
        let page = client.send_patiently(Method::GET, &page_url, bar).await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            print_event(event, args.json)?;
        }
        total += events.len() as u64;
        bar.inc(events.len() as u64);
        if page["partial"] == true {
            bar.set_message(format!(
                "page stopped at its {} ({} examined), continuing",
                page["reason"].as_str().unwrap_or("limit"),
                page["scanned"]
            ));
        }
        match page["next_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => return Ok(total),
        }
    }
}

async fn state(args: StateArgs) -> anyhow::Result<Outcome> {
    let (kind, id) = split_target(&args.target)?;
    let id = id.with_context(|| format!("`{}` is not `<aggregate>/<id>`", args.target))?;
    let now = Utc::now();
    let at = match (&args.at, args.version) {
        (Some(text), None) => AsOf::Time(parse_time(text, now)?),
        (None, Some(version)) => AsOf::Version(version),
        _ => bail!("give exactly one of --at and --version"),
    };
    let body = match (&args.source.store, &args.source.url) {
        (Some(spec), _) => state_from_store(spec, &kind, &id, at).await?,
        (None, Some(url)) => {
            let client = Client::new(args.source.token.clone())?;
            let (key, value) = match at {
                AsOf::Time(time) => ("at", time.to_rfc3339()),
                AsOf::Version(version) => ("version", version.to_string()),
            };
            let url = http::url(url, &["temporal", "state", &kind, &id], &[(key, &value)])?;
            client
                .send_patiently(Method::GET, &url, &ProgressBar::hidden())
                .await?
        }
        (None, None) => bail!("give --url (the command service) or --store"),
    };
    output::json(&body)?;
    Ok(Outcome::Clean)
}

async fn state_from_store(spec: &str, kind: &str, id: &str, at: AsOf) -> anyhow::Result<Value> {
    use nexus_runtime::Aggregate;
    if kind != Order::TYPE {
        bail!(
            "unknown aggregate `{kind}`: with --store this CLI rebuilds the sample's `{}`; use --url with your command service for others",
            Order::TYPE
        );
    }
    let history = open_history(spec).await?;
    let snapshots: Option<Arc<dyn nexus_runtime::SnapshotStore>> =
        match spec.strip_prefix("sqlite:") {
            Some(path) => {
                let beside = EmbeddedSnapshotStore::path_beside(std::path::Path::new(path));
                if beside.exists() {
                    Some(Arc::new(EmbeddedSnapshotStore::open(beside)?))
                } else {
                    None
                }
            }
            None => None,
        };
    let found = state_as_of::<Order>(
        history.as_ref(),
        snapshots.as_deref(),
        &TemporalLimits::default(),
        id,
        at,
    )
    .await?
    .with_context(|| format!("{kind} `{id}` had no events at that point"))?;
    Ok(json!({
        "aggregate": kind,
        "id": id,
        "version": found.version,
        "target_version": found.target_version,
        "snapshot_version": found.snapshot_version,
        "events_folded": found.events_folded,
        "partial": found.partial.is_some(),
        "state": serde_json::to_value(&found.state)?,
    }))
}

async fn projection(args: ProjectionArgs) -> anyhow::Result<Outcome> {
    let until = parse_time(&args.until, Utc::now())?;
    let body = match (&args.source.store, &args.source.url) {
        (Some(spec), _) => {
            if args.name != OrderSummaries::NAME {
                bail!(
                    "unknown projection `{}`: with --store this CLI rebuilds the sample's `{}`; your own projections get `nexus_runtime::temporal::replay_projection` and the dashboard's `POST /admin/projections/{{name}}/replay`",
                    args.name,
                    OrderSummaries::NAME
                );
            }
            if std::path::Path::new(&args.into).exists() {
                bail!("{} exists already: rebuild into a new file", args.into);
            }
            let history = open_history(spec).await?;
            let target = ReadModelStore::open(&args.into)
                .with_context(|| format!("cannot create the read model {}", args.into))?;
            let summary =
                replay_projection(history.as_ref(), &OrderSummaries, until, &target).await?;
            json!({ "read_model": args.into, "summary": summary })
        }
        (None, Some(url)) => {
            let client = Client::new(args.source.token.clone())?;
            let url = http::url(
                url,
                &["admin", "projections", &args.name, "replay"],
                &[("until", &until.to_rfc3339()), ("into", &args.into)],
            )?;
            client
                .send_patiently(Method::POST, &url, &ProgressBar::hidden())
                .await?
        }
        (None, None) => bail!("give --store or --url (the query dashboard)"),
    };
    output::json(&body)?;
    Ok(Outcome::Clean)
}

/// The service client, waiting as long as `Retry-After` says when rate-limited.
struct Client {
    http: Http,
}

impl Client {
    fn new(token: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            http: Http::new(REQUEST_TIMEOUT)?.with_token(token)?,
        })
    }

    /// Sends the request; on 429 waits as long as `Retry-After` says (saying so on stderr) and
    /// tries again. Any other error status is an error naming the service's message.
    async fn send_patiently(
        &self,
        method: Method,
        url: &reqwest::Url,
        bar: &ProgressBar,
    ) -> anyhow::Result<Value> {
        for _ in 0..=MAX_RATE_WAITS {
            let answer = self.http.send(method.clone(), url, None).await?;
            if answer.status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let wait = answer.retry_after.unwrap_or(6).clamp(1, 120);
                let limit = answer.json()["limit"].as_u64();
                bar.suspend(|| say(&format!(
                    "nexus replay: the service allows {} requests per minute; waiting {wait} s as it asks (Retry-After)",
                    limit.map_or_else(|| "a few".to_owned(), |n| n.to_string())
                )));
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            return answer.into_json(url);
        }
        bail!("still rate-limited after {MAX_RATE_WAITS} waits")
    }
}

#[expect(
    clippy::print_stderr,
    reason = "tell the person at the terminal why replay is pausing"
)]
fn say(text: &str) {
    eprintln!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("2h", now).unwrap(),
            now - chrono::Duration::hours(2)
        );
        assert_eq!(
            parse_time("7d", now).unwrap(),
            now - chrono::Duration::days(7)
        );
        assert_eq!(
            parse_time("2026-01-31T12:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-31T11:00:00+00:00"
        );
        for bad in [
            "",
            "h",
            "2",
            "2y",
            "-2h",
            "2026-01-31",
            "99999999999999999999d",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_and_queries_are_checked_before_any_io() {
        assert!(split_target("order/42").is_ok());
        assert!(split_target("order").is_ok());
        assert!(split_target("/42").is_err());
        assert!(split_target("order/").is_err());
        let args = |from: &str, to: &str| EventsArgs {
            target: "order/1".into(),
            from: Some(from.into()),
            to: Some(to.into()),
            types: Vec::new(),
            page_size: None,
            json: false,
            source: Source {
                url: None,
                token: None,
                store: None,
            },
        };
        let reversed = events_query(&args("1h", "2h")).unwrap_err().to_string();
        assert!(reversed.contains("reversed"), "{reversed}");
        let long = events_query(&args("100d", "1h")).unwrap_err().to_string();
        assert!(long.contains("90 days"), "{long}");
        assert!(events_query(&args("2h", "1h")).is_ok());
    }
}
