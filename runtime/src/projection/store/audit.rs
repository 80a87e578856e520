//! The audit log of read-model changes: every document change a projection commits, appended
//! in the same transaction as the document, with the event that caused it and the document
//! before and after.
//!
//! Each projection has one chain of entries numbered from 1 (`seq`). An entry's SHA-256 hash
//! covers its length-prefixed fields and the previous entry's hash, computed here in Rust so
//! both backends store and check the very same bytes. Both backends refuse `UPDATE` and
//! `DELETE` by trigger; the one exception is retention ([`Retention`]), which may delete whole
//! old segments of the chain while a permit row it writes in the same transaction exists, and
//! records what it removed (with the hash of the last removed entry, the anchor verification
//! starts from) as a `prune` entry. A rebuild (a run starting below the checkpoint the log last
//! saw) appends a `rebuild` entry; earlier entries stay as they were.
//!
//! The chain detects an entry changed, inserted or removed anywhere but at the tail, as long as
//! the hashes after it were not all recomputed; keeping the newest hash somewhere else (the
//! verification report prints it) closes that gap.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::RecordedEvent;

/// Most entries one page of a document's history holds.
pub const MAX_HISTORY_PAGE: usize = 500;

/// Entries verification reads per query.
pub(crate) const VERIFY_PAGE: usize = 1000;

/// Entries per retention segment unless told otherwise.
pub const DEFAULT_SEGMENT: u64 = 1000;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A document was created, changed or deleted.
    Change,
    /// The projection started over below the checkpoint the log last saw: what follows is
    /// the rebuild applying events again.
    Rebuild,
    /// Retention removed the oldest entries (the range is in `detail`).
    Prune,
}

impl AuditKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Rebuild => "rebuild",
            Self::Prune => "prune",
        }
    }

    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "rebuild" => Self::Rebuild,
            "prune" => Self::Prune,
            _ => Self::Change,
        }
    }
}

/// The event behind a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditCause {
    /// The event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The aggregate type of its stream.
    pub aggregate_type: String,
    /// The aggregate id of its stream.
    pub aggregate_id: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its global log position.
    pub position: u64,
    /// Its correlation id.
    pub correlation_id: Option<String>,
}

impl AuditCause {
    pub(crate) fn of(event: &RecordedEvent) -> Self {
        Self {
            event_id: event.id.to_string(),
            event_type: event.event_type.clone(),
            aggregate_type: event.stream.aggregate_type().to_owned(),
            aggregate_id: event.stream.aggregate_id().to_owned(),
            version: event.version,
            position: event.position,
            correlation_id: event.metadata.correlation_id.clone(),
        }
    }
}

/// What one entry records and of which document, without its contents: what search catch-up
/// replays to find the documents changed since its index last committed.
#[cfg(feature = "search")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditMark {
    pub(crate) seq: u64,
    pub(crate) kind: AuditKind,
    pub(crate) collection: Option<String>,
    pub(crate) id: Option<String>,
}

/// One document write of a batch, in the order the projection made it.
#[derive(Debug, Clone)]
pub(crate) struct AuditWrite {
    pub(crate) collection: String,
    pub(crate) id: String,
    /// The document written; `None` for a deletion.
    pub(crate) after: Option<Value>,
    pub(crate) cause: Arc<AuditCause>,
}

/// One entry of a projection's audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Its number in the projection's chain, from 1.
    pub seq: u64,
    /// The projection.
    pub projection: String,
    /// What it records.
    pub kind: AuditKind,
    /// The document's collection (changes only).
    pub collection: Option<String>,
    /// The document's id (changes only).
    pub id: Option<String>,
    /// The document before; `None` when it did not exist.
    pub before: Option<Value>,
    /// The document after; `None` for a deletion.
    pub after: Option<Value>,
    /// The event that caused the change (changes only).
    pub cause: Option<AuditCause>,
    /// When it was committed.
    pub at: DateTime<Utc>,
    /// For a rebuild or prune: what happened.
    pub detail: Option<Value>,
    /// Its hash (hex), chained to the previous entry's.
    pub hash: String,
}

/// One page of a document's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditPage {
    /// Its changes, oldest first, with the rebuilds and prunes among them.
    pub entries: Vec<AuditEntry>,
    /// The `after` of the next page while more remain.
    pub next_after: Option<u64>,
}

impl AuditPage {
    /// The page of `rows` read with `limit + 1`: at most `limit` entries, and `next_after`
    /// when the extra row shows more remain. A stored text that is not JSON is corrupt.
    pub(crate) fn of(mut rows: Vec<Row>, limit: i64) -> Result<Self, serde_json::Error> {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_after = more.then(|| rows.last().map(|r| r.seq)).flatten();
        let entries = rows.into_iter().map(Row::entry).collect::<Result<_, _>>()?;
        Ok(Self {
            entries,
            next_after,
        })
    }
}

/// Where verification found the chain broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditBreak {
    /// The first entry that does not verify.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// What verifying a projection's chain found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// The projection.
    pub projection: String,
    /// Entries checked (up to the break, if any).
    pub entries_checked: u64,
    /// The first entry kept (retention removed those before it).
    pub first_seq: Option<u64>,
    /// The newest entry.
    pub last_seq: Option<u64>,
    /// The newest entry's hash (hex): keep it elsewhere to detect a rewritten tail later.
    pub last_hash: Option<String>,
    /// The first break, if the chain does not verify.
    pub broken: Option<AuditBreak>,
}

impl AuditReport {
    /// Whether every entry verified.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Which old entries retention removes: whole segments of `segment` entries (`seq` 1 to
/// `segment`, then the next `segment`, ...) whose entries were all committed before
/// `older_than`; a segment the newest entry has not completed yet is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries committed before this may go.
    pub older_than: DateTime<Utc>,
    /// Entries per segment (at least 1).
    pub segment: u64,
}

/// Retention a runner applies to its projection's audit log by itself, every `every`: whole
/// segments of `segment` entries all older than `keep` go, each prune recorded in the chain
/// (see [`Retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// How long entries are kept at least.
    pub keep: std::time::Duration,
    /// Entries per segment (at least 1).
    pub segment: u64,
    /// How often the runner prunes.
    pub every: std::time::Duration,
}

impl AuditRetention {
    /// The retention that applies now.
    pub fn now(&self) -> Retention {
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        Retention {
            older_than: Utc::now()
                .checked_sub_signed(keep)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            segment: self.segment.max(1),
        }
    }
}

/// What a prune removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// The projection.
    pub projection: String,
    /// Entries removed.
    pub removed: u64,
    /// The first and last `seq` removed, when anything was.
    pub range: Option<(u64, u64)>,
    /// The `prune` entry that records it.
    pub entry: Option<u64>,
}

/// An entry as both backends store it: the hashed fields and the hash.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) seq: u64,
    pub(crate) projection: String,
    pub(crate) kind: AuditKind,
    pub(crate) collection: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) before: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) event_id: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) aggregate_type: Option<String>,
    pub(crate) aggregate_id: Option<String>,
    pub(crate) version: Option<i64>,
    pub(crate) position: Option<i64>,
    pub(crate) correlation_id: Option<String>,
    /// Microseconds since the epoch.
    pub(crate) at: i64,
    pub(crate) detail: Option<String>,
    pub(crate) hash: Vec<u8>,
}

fn text(hasher: &mut Sha256, value: Option<&str>) {
    match value {
        None => hasher.update([0u8]),
        Some(text) => {
            hasher.update([1u8]);
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        }
    }
}

fn number(hasher: &mut Sha256, value: Option<i64>) {
    match value {
        None => hasher.update([0u8]),
        Some(n) => {
            hasher.update([1u8]);
            hasher.update(n.to_be_bytes());
        }
    }
}

impl Row {
    /// The hash of this entry after `prev` (empty for the first entry of a chain).
    pub(crate) fn compute_hash(&self, prev: &[u8]) -> Vec<u8> {
        let mut hasher = Sha256::new();
        hasher.update(b"nexus-read-model-audit-v1");
        hasher.update((prev.len() as u64).to_be_bytes());
        hasher.update(prev);
        number(&mut hasher, Some(self.seq as i64));
        text(&mut hasher, Some(&self.projection));
        text(&mut hasher, Some(self.kind.as_str()));
        for field in [&self.collection, &self.id, &self.before, &self.after] {
            text(&mut hasher, field.as_deref());
        }
        for field in [
            &self.event_id,
            &self.event_type,
            &self.aggregate_type,
            &self.aggregate_id,
        ] {
            text(&mut hasher, field.as_deref());
        }
        number(&mut hasher, self.version);
        number(&mut hasher, self.position);
        text(&mut hasher, self.correlation_id.as_deref());
        number(&mut hasher, Some(self.at));
        text(&mut hasher, self.detail.as_deref());
        hasher.finalize().to_vec()
    }

    /// A row of `kind` with no document or cause, hashed after `tail`.
    pub(crate) fn mark(
        projection: &str,
        tail: &Tail,
        kind: AuditKind,
        position: Option<i64>,
        detail: &Value,
        at: i64,
    ) -> Self {
        let mut row = Self {
            seq: tail.seq + 1,
            projection: projection.to_owned(),
            kind,
            collection: None,
            id: None,
            before: None,
            after: None,
            event_id: None,
            event_type: None,
            aggregate_type: None,
            aggregate_id: None,
            version: None,
            position,
            correlation_id: None,
            at,
            detail: Some(detail.to_string()),
            hash: Vec::new(),
        };
        row.hash = row.compute_hash(&tail.hash);
        row
    }

    /// The public form; a stored text that is not JSON is corrupt.
    pub(crate) fn entry(self) -> Result<AuditEntry, serde_json::Error> {
        let json =
            |text: Option<String>| text.map(|t| serde_json::from_str::<Value>(&t)).transpose();
        let cause = match (
            self.event_id,
            self.event_type,
            self.aggregate_type,
            self.aggregate_id,
        ) {
            (Some(event_id), Some(event_type), Some(aggregate_type), Some(aggregate_id)) => {
                Some(AuditCause {
                    event_id,
                    event_type,
                    aggregate_type,
                    aggregate_id,
                    version: self.version.unwrap_or_default() as u64,
                    position: self.position.unwrap_or_default() as u64,
                    correlation_id: self.correlation_id,
                })
            }
            _ => None,
        };
        Ok(AuditEntry {
            seq: self.seq,
            projection: self.projection,
            kind: self.kind,
            collection: self.collection,
            id: self.id,
            before: json(self.before)?,
            after: json(self.after)?,
            cause,
            at: DateTime::from_timestamp_micros(self.at).unwrap_or_default(),
            detail: json(self.detail)?,
            hash: hex(&self.hash),
        })
    }
}

/// The newest entry of a chain: what the next one hashes after (seq 0 and no hash when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tail {
    pub(crate) seq: u64,
    pub(crate) hash: Vec<u8>,
}

/// Counts `entries` appended to `projection`'s audit log (after their commit).
pub(crate) fn count_appended(projection: &str, entries: u64) {
    if entries > 0 {
        metrics::counter!("nexus_projection_audit_entries_total", "projection" => projection.to_owned())
            .increment(entries);
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The entries of a batch's document writes after `tail`, skipping writes that change nothing.
///
/// `committed` holds each written document's body as committed before the batch (read inside
/// the commit's transaction, `None` when absent); a document written several times in the batch
/// gets one entry per write, each one's `before` being the previous write.
pub(crate) fn change_rows(
    projection: &str,
    tail: &Tail,
    writes: &[AuditWrite],
    mut committed: HashMap<(String, String), Option<String>>,
    at: i64,
) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::with_capacity(writes.len());
    let mut prev = tail.hash.clone();
    let mut seq = tail.seq;
    for write in writes {
        let key = (write.collection.clone(), write.id.clone());
        let after = write.after.as_ref().map(Value::to_string);
        let before = committed.get(&key).cloned().flatten();
        if before == after {
            continue;
        }
        committed.insert(key, after.clone());
        seq += 1;
        let cause = &write.cause;
        let mut row = Row {
            seq,
            projection: projection.to_owned(),
            kind: AuditKind::Change,
            collection: Some(write.collection.clone()),
            id: Some(write.id.clone()),
            before,
            after,
            event_id: Some(cause.event_id.clone()),
            event_type: Some(cause.event_type.clone()),
            aggregate_type: Some(cause.aggregate_type.clone()),
            aggregate_id: Some(cause.aggregate_id.clone()),
            version: Some(cause.version as i64),
            position: Some(cause.position as i64),
            correlation_id: cause.correlation_id.clone(),
            at,
            detail: None,
            hash: Vec::new(),
        };
        row.hash = row.compute_hash(&prev);
        prev.clone_from(&row.hash);
        rows.push(row);
    }
    rows
}

/// The documents a batch's audit needs the committed body of, each once.
pub(crate) fn written_documents(writes: &[AuditWrite]) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    writes
        .iter()
        .map(|w| (w.collection.clone(), w.id.clone()))
        .filter(|key| seen.insert(key.clone()))
        .collect()
}

/// The `rebuild` entry for a run starting at `from` below `previous`, the checkpoint the log saw.
pub(crate) fn rebuild_row(projection: &str, tail: &Tail, from: u64, previous: u64) -> Row {
    Row::mark(
        projection,
        tail,
        AuditKind::Rebuild,
        Some(from as i64),
        &serde_json::json!({ "from": from, "previous_checkpoint": previous }),
        Utc::now().timestamp_micros(),
    )
}

/// The `prune` entry recording that entries `first..=last` (`removed` of them) went.
pub(crate) fn prune_row(
    projection: &str,
    tail: &Tail,
    (first, last, removed): (u64, u64, u64),
    anchor: &[u8],
    retention: &Retention,
) -> Row {
    Row::mark(
        projection,
        tail,
        AuditKind::Prune,
        None,
        &serde_json::json!({
            "removed_from": first,
            "removed_to": last,
            "removed": removed,
            "anchor": hex(anchor),
            "older_than": retention.older_than.to_rfc3339(),
            "segment": retention.segment,
        }),
        Utc::now().timestamp_micros(),
    )
}

/// The last `seq` a prune entry removed and the hash of that entry.
pub(crate) fn prune_anchor(row: &Row) -> Option<(u64, Vec<u8>)> {
    let detail: Value = serde_json::from_str(row.detail.as_deref()?).ok()?;
    Some((
        detail["removed_to"].as_u64()?,
        unhex(detail["anchor"].as_str()?)?,
    ))
}

/// Checks a chain fed page by page, in `seq` order.
pub(crate) struct Verifier {
    report: AuditReport,
    /// The newest prune's anchor: the removed entries' last `seq` and hash.
    anchor: Option<(u64, Vec<u8>)>,
    prev: Option<(u64, Vec<u8>)>,
}

impl Verifier {
    /// A verifier of `projection`'s chain whose newest `prune` entry is `newest_prune`.
    pub(crate) fn new(projection: &str, newest_prune: Option<&Row>) -> Self {
        Self {
            report: AuditReport {
                projection: projection.to_owned(),
                entries_checked: 0,
                first_seq: None,
                last_seq: None,
                last_hash: None,
                broken: None,
            },
            anchor: newest_prune.and_then(prune_anchor),
            prev: None,
        }
    }

    /// Checks the next rows; `false` once the chain broke (the rest need not be read).
    pub(crate) fn feed(&mut self, rows: &[Row]) -> bool {
        for row in rows {
            if self.report.broken.is_some() {
                return false;
            }
            let prev: Result<Vec<u8>, String> = match &self.prev {
                Some((seq, hash)) if row.seq == seq + 1 => Ok(hash.clone()),
                Some((seq, _)) => Err(format!(
                    "entries {} to {} are missing",
                    seq + 1,
                    row.seq - 1
                )),
                None if row.seq == 1 => Ok(Vec::new()),
                None => match &self.anchor {
                    Some((removed_to, anchor)) if row.seq == removed_to + 1 => Ok(anchor.clone()),
                    _ => Err(format!(
                        "entries before {} are missing and no prune recorded their removal",
                        row.seq
                    )),
                },
            };
            if self.report.first_seq.is_none() {
                self.report.first_seq = Some(row.seq);
            }
            let broken = match prev {
                Ok(prev) if row.compute_hash(&prev) == row.hash => None,
                Ok(_) => {
                    Some("its hash does not match its content and the previous entry".to_owned())
                }
                Err(reason) => Some(reason),
            };
            if let Some(reason) = broken {
                self.report.broken = Some(AuditBreak {
                    seq: row.seq,
                    reason,
                });
                return false;
            }
            self.report.entries_checked += 1;
            self.report.last_seq = Some(row.seq);
            self.report.last_hash = Some(hex(&row.hash));
            self.prev = Some((row.seq, row.hash.clone()));
        }
        true
    }

    pub(crate) fn finish(self) -> AuditReport {
        self.report
    }
}

/// Which entries a prune removes: the segments from the one holding the first entry kept,
/// oldest first, as long as each is whole (the newest entry completes it) and its newest entry
/// is older than the retention. A backend asks for the newest `at` of each range [`Self::next`]
/// names and reports it with [`Self::observe`].
pub(crate) struct PrunePlan {
    start: u64,
    segment: u64,
    last: u64,
    cutoff: i64,
    upto: Option<u64>,
    done: bool,
}

impl PrunePlan {
    pub(crate) fn new(first: u64, last: u64, retention: &Retention) -> Self {
        let segment = retention.segment.max(1);
        Self {
            start: first.saturating_sub(1) / segment * segment,
            segment,
            last,
            cutoff: retention.older_than.timestamp_micros(),
            upto: None,
            done: false,
        }
    }

    /// The next segment to look at (`seq` from, to), if any.
    pub(crate) fn next(&self) -> Option<(u64, u64)> {
        let end = self.start + self.segment;
        (!self.done && end <= self.last).then_some((self.start + 1, end))
    }

    /// The newest `at` of the segment [`Self::next`] named (`None`: it holds no entry).
    pub(crate) fn observe(&mut self, newest: Option<i64>) {
        match newest {
            Some(at) if at >= self.cutoff => self.done = true,
            Some(_) => self.upto = Some(self.start + self.segment),
            None => {}
        }
        self.start += self.segment;
    }

    /// The last `seq` to remove, if any segment qualified.
    pub(crate) fn upto(&self) -> Option<u64> {
        self.upto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(version: u64) -> Arc<AuditCause> {
        Arc::new(AuditCause {
            event_id: format!("e{version}"),
            event_type: "Ticked".into(),
            aggregate_type: "meter".into(),
            aggregate_id: "a".into(),
            version,
            position: version,
            correlation_id: None,
        })
    }

    fn write(id: &str, after: Option<Value>, version: u64) -> AuditWrite {
        AuditWrite {
            collection: "c".into(),
            id: id.into(),
            after,
            cause: cause(version),
        }
    }

    #[test]
    fn a_batch_chains_one_entry_per_real_change() {
        let writes = [
            write("a", Some(serde_json::json!({"n": 1})), 1),
            write("a", Some(serde_json::json!({"n": 1})), 2),
            write("a", None, 3),
            write("b", None, 4),
        ];
        let committed = HashMap::from([(("c".to_owned(), "a".to_owned()), None)]);
        let rows = change_rows("p", &Tail::default(), &writes, committed, 7);
        // The repeated put and the deletion of a document that never existed change nothing.
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].seq, rows[1].seq), (1, 2));
        assert_eq!(rows[0].before, None);
        assert_eq!(rows[1].before.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(rows[1].after, None);
        assert_eq!(rows[1].version, Some(3));
        let mut verifier = Verifier::new("p", None);
        assert!(verifier.feed(&rows));
        assert!(verifier.finish().is_intact());

        let mut tampered = rows.clone();
        tampered[1].after = Some("{}".into());
        let mut verifier = Verifier::new("p", None);
        assert!(!verifier.feed(&tampered));
        let report = verifier.finish();
        assert_eq!(report.broken.map(|b| b.seq), Some(2));
        assert_eq!(report.entries_checked, 1);
    }

    #[test]
    fn a_hash_covers_every_field_length_prefixed() {
        let row = rebuild_row("p", &Tail::default(), 0, 9);
        let base = row.compute_hash(&[]);
        let mut moved = row.clone();
        // The same bytes split differently between two fields hash differently.
        moved.collection = Some("ab".into());
        moved.id = Some("c".into());
        let mut other = row.clone();
        other.collection = Some("a".into());
        other.id = Some("bc".into());
        assert_ne!(moved.compute_hash(&[]), other.compute_hash(&[]));
        let mut none = row.clone();
        none.correlation_id = Some(String::new());
        assert_ne!(none.compute_hash(&[]), base);
        assert_ne!(row.compute_hash(&[0]), base);
        assert_eq!(unhex(&hex(&base)), Some(base));
    }

    #[test]
    fn prune_stops_at_the_first_segment_holding_a_young_entry_or_the_unfinished_one() {
        let retention = Retention {
            older_than: DateTime::from_timestamp_micros(100).unwrap(),
            segment: 10,
        };
        // Entry n was committed at time n * 3: entries 1 to 33 are older than 100.
        let upto = |first: u64, last: u64| {
            let mut plan = PrunePlan::new(first, last, &retention);
            while let Some((_, to)) = plan.next() {
                plan.observe(Some((to * 3) as i64));
            }
            plan.upto()
        };
        assert_eq!(upto(1, 95), Some(30));
        assert_eq!(upto(21, 95), Some(30));
        assert_eq!(upto(31, 95), None);
        // All old, but the newest segment is not finished.
        assert_eq!(upto(1, 29), Some(20));
    }
}
