//! `nexus audit verify|history|prune`: the audit log of a projection's read-model changes, read
//! from its read model (a folder of SQLite files or PostgreSQL), like `nexus dlq`.
//!
//! `verify` walks the projection's hash chain and exits 1 when it is broken; `history` prints a
//! document's changes with the events that made them; `prune` removes whole old segments and
//! records the removal in the chain. Safe while the service runs.

use chrono::Utc;
use clap::{Args, Subcommand};
use nexus_runtime::projection::store::audit::{DEFAULT_SEGMENT, MAX_HISTORY_PAGE};
use nexus_runtime::projection::{AuditEntry, AuditKind, Retention};

use super::Outcome;
use super::dlq::ReadModelSource;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    source: ReadModelSource,
    /// Print JSON (`history`: one entry per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check a projection's audit chain; exit code 1 when an entry does not verify.
    Verify {
        /// The projection.
        projection: String,
    },
    /// Print the history of one document: each change, the event behind it, before and after.
    History {
        /// The projection.
        projection: String,
        /// The document's collection.
        collection: String,
        /// The document's id.
        id: String,
        /// Start after this entry (the seq of the last one seen).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Remove the oldest whole segments whose entries are all older than `--older-than`.
    Prune {
        /// The projection.
        projection: String,
        /// Keep entries from this time on: RFC 3339 or an age like 90d, 12h, 2w.
        #[arg(long)]
        older_than: String,
        /// Entries per segment: only whole segments are removed.
        #[arg(long, default_value_t = DEFAULT_SEGMENT)]
        segment: u64,
    },
}

pub(crate) fn run(args: AuditArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(run_async(args))
}

async fn run_async(args: AuditArgs) -> anyhow::Result<Outcome> {
    match &args.command {
        AuditCommand::Verify { projection } => {
            let report = args.source.open(projection).await?.audit_verify().await?;
            if args.json {
                output::json(&report)?;
            } else {
                match (&report.broken, report.first_seq, report.last_seq) {
                    (Some(broken), _, _) => output::line(&format!(
                        "`{projection}`: the audit chain is broken at entry {}: {} ({} entries verified before it)",
                        broken.seq, broken.reason, report.entries_checked
                    ))?,
                    (None, Some(first), Some(last)) => output::line(&format!(
                        "`{projection}`: {} entries verified (seq {first} to {last}); newest hash {}",
                        report.entries_checked,
                        report.last_hash.as_deref().unwrap_or_default()
                    ))?,
                    _ => output::line(&format!("`{projection}`: the audit log is empty"))?,
                }
            }
            if !report.is_intact() {
                return Ok(Outcome::Findings);
            }
        }
        AuditCommand::History {
            projection,
            collection,
            id,
            after,
        } => {
            let store = args.source.open(projection).await?;
            let mut after = *after;
            let mut printed = 0;
            loop {
                let page = store
                    .audit_history(collection, id, after, MAX_HISTORY_PAGE)
                    .await?;
                for entry in &page.entries {
                    if args.json {
                        output::line(&serde_json::to_string(entry)?)?;
                    } else {
                        output::line(&describe(entry))?;
                    }
                }
                printed += page.entries.len();
                match page.next_after {
                    Some(next) => after = next,
                    None => break,
                }
            }
            if printed == 0 && !args.json {
                output::line(&format!(
                    "no audit entries for `{collection}/{id}` of `{projection}`"
                ))?;
            }
        }
        AuditCommand::Prune {
            projection,
            older_than,
            segment,
        } => {
            anyhow::ensure!(*segment > 0, "--segment must be at least 1");
            let retention = Retention {
                older_than: super::replay::parse_time(older_than, Utc::now())?,
                segment: *segment,
            };
            let report = args
                .source
                .open(projection)
                .await?
                .audit_prune(retention)
                .await?;
            if args.json {
                output::json(&report)?;
            } else {
                match report.range {
                    Some((first, last)) => output::line(&format!(
                        "`{projection}`: removed {} audit entries (seq {first} to {last}), recorded as entry {}",
                        report.removed,
                        report.entry.unwrap_or_default()
                    ))?,
                    None => output::line(&format!(
                        "`{projection}`: no whole segment of {segment} entries is older than {}",
                        retention.older_than.to_rfc3339()
                    ))?,
                }
            }
        }
    }
    Ok(Outcome::Clean)
}

/// One line per entry: seq, time, what changed and which event did it.
fn describe(entry: &AuditEntry) -> String {
    let at = entry
        .at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let json = |value: &Option<serde_json::Value>| {
        value
            .as_ref()
            .map_or_else(|| "-".to_owned(), serde_json::Value::to_string)
    };
    match (entry.kind, &entry.cause) {
        (AuditKind::Change, Some(cause)) => format!(
            "{:>6}  {at}  {}/{} v{} {} (position {}{}): {} -> {}",
            entry.seq,
            cause.aggregate_type,
            cause.aggregate_id,
            cause.version,
            cause.event_type,
            cause.position,
            cause
                .correlation_id
                .as_ref()
                .map(|c| format!(", correlation {c}"))
                .unwrap_or_default(),
            json(&entry.before),
            json(&entry.after)
        ),
        (kind, _) => format!(
            "{:>6}  {at}  {}: {}",
            entry.seq,
            match kind {
                AuditKind::Rebuild => "rebuild",
                AuditKind::Prune => "prune",
                AuditKind::Change => "change",
            },
            json(&entry.detail)
        ),
    }
}
