//! Given/when/then harnesses for aggregates ([`AggregateTest`]) and projections
//! ([`ProjectionTest`], in memory: no store, bus or runner), for Nexus's own tests and for
//! users' services.
//!
//! ```
//! # use nexus_runtime::testing::AggregateTest;
//! # use nexus_runtime::{Aggregate, DomainEvent};
//! # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Counter { n: u32 }
//! # #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)] struct Added(u32);
//! # impl DomainEvent for Added { fn event_type(&self) -> &'static str { "Added" } }
//! # #[derive(Debug, thiserror::Error)] #[error("too big")] struct TooBig;
//! # impl Aggregate for Counter {
//! #     const TYPE: &'static str = "counter";
//! #     type Command = u32; type Event = Added; type Error = TooBig;
//! #     fn handle(&self, c: &u32) -> Result<Vec<Added>, TooBig> {
//! #         if self.n + c > 10 { Err(TooBig) } else { Ok(vec![Added(*c)]) } }
//! #     fn apply(&mut self, e: &Added) { self.n += e.0; }
//! # }
//! AggregateTest::<Counter>::given([Added(4)]).when(3).then([Added(3)]);
//! AggregateTest::<Counter>::given([Added(9)]).when(3).then_err(|e| matches!(e, TooBig));
//! ```
//!
//! Sagas have theirs: [`SagaTest`] runs a saga definition on the real runner.

mod saga;

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::Utc;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use saga::{SagaScenario, SagaTest};

use crate::aggregate::Aggregate;
use crate::event::{DomainEvent, Metadata, NewEvent, RecordedEvent, StreamId};
use crate::projection::{Changes, DocumentCache, Projection, ProjectionError, Writes};
use crate::upcast::Upcasters;

/// One aggregate scenario: past events, then a command.
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

/// The outcome of a scenario, ready to be asserted.
pub struct AggregateOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from a fresh aggregate with `events` applied in order.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        Self { state }
    }

    /// Starts from a fresh aggregate with no history.
    pub fn given_no_history() -> Self {
        Self::given([])
    }

    /// Handles `command` against the state built so far.
    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let result = self.state.handle(&command);
        AggregateOutcome {
            state: self.state,
            result,
        }
    }
}

impl<A: Aggregate> AggregateOutcome<A>
where
    A::Event: PartialEq + Debug,
    A::Error: Debug,
{
    /// Asserts the command was accepted and emitted exactly `expected`; returns the new state.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(
                    events, expected,
                    "the command emitted other events than expected"
                );
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                state
            }
            Err(err) => {
                panic!("expected events {expected:?}, but the command was rejected: {err:?}")
            }
        }
    }

    /// Asserts the command was rejected with an error matching `check`.
    #[track_caller]
    pub fn then_err(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected a rejection, but the command emitted {events:?}"),
            Err(err) => assert!(
                check(&err),
                "the command was rejected with an unexpected error: {err:?}"
            ),
        }
    }
}

/// One projection scenario, run in memory: past events, then one event, then the documents.
///
/// ```
/// # use nexus_runtime::testing::ProjectionTest;
/// # use nexus_runtime::projection::{Changes, Projection, ProjectionError};
/// # use nexus_runtime::{DomainEvent, RecordedEvent};
/// # use serde_json::json;
/// #[derive(serde::Serialize, serde::Deserialize, DomainEvent)]
/// #[event(type = "Ticked")]
/// struct Ticked;
///
/// struct Counts;
///
/// #[async_trait::async_trait]
/// impl Projection for Counts {
///     fn name(&self) -> &str { "counts" }
///     async fn apply(&self, event: &RecordedEvent, changes: &mut Changes<'_>) -> Result<(), ProjectionError> {
///         let id = event.stream.aggregate_id();
///         let n: u64 = changes.get_as("counts", id).await?.unwrap_or(0);
///         changes.put_as("counts", id, &(n + 1))
///     }
/// }
///
/// ProjectionTest::new(Counts)
///     .given("meter", "m-1", [Ticked, Ticked])
///     .when("meter", "m-1", Ticked)
///     .then_documents("counts", [("m-1", json!(3))]);
/// ```
pub struct ProjectionTest<P: Projection> {
    projection: P,
    upcasters: Upcasters,
    documents: Writes,
    versions: BTreeMap<StreamId, u64>,
    position: u64,
}

/// The read model after a scenario's last event, ready to be asserted.
pub struct ProjectionOutcome<P: Projection> {
    test: ProjectionTest<P>,
    result: Result<(), ProjectionError>,
}

impl<P: Projection> ProjectionTest<P> {
    /// An empty read model for `projection`.
    pub fn new(projection: P) -> Self {
        Self {
            projection,
            upcasters: Upcasters::new(),
            documents: Writes::new(),
            versions: BTreeMap::new(),
            position: 0,
        }
    }

    /// Brings events of older schema versions to the current shape with `upcasters` before the
    /// projection sees them, as a runner [`with_upcasters`] does.
    ///
    /// [`with_upcasters`]: crate::projection::ProjectionRunner::with_upcasters
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Applies `events` of stream `aggregate_type`/`id` in order (versions continue the
    /// stream's); panics if the projection rejects one.
    #[track_caller]
    pub fn given<E: DomainEvent>(
        mut self,
        aggregate_type: &str,
        id: &str,
        events: impl IntoIterator<Item = E>,
    ) -> Self {
        for event in events {
            let recorded = self.record(aggregate_type, id, &event);
            if let Err(err) = self.apply(&recorded) {
                panic!(
                    "the projection rejected given event {} of {aggregate_type}/{id}: {err}",
                    recorded.version
                );
            }
        }
        self
    }

    /// Applies an event already recorded (for metadata, an older schema version, or an event
    /// type the domain no longer has); panics if the projection rejects it.
    #[track_caller]
    pub fn given_recorded(mut self, recorded: impl IntoIterator<Item = RecordedEvent>) -> Self {
        for event in recorded {
            if let Err(err) = self.apply(&event) {
                panic!("the projection rejected given event {}: {err}", event.id);
            }
        }
        self
    }

    /// Applies one more event of stream `aggregate_type`/`id` and keeps the outcome.
    pub fn when<E: DomainEvent>(
        mut self,
        aggregate_type: &str,
        id: &str,
        event: E,
    ) -> ProjectionOutcome<P> {
        let recorded = self.record(aggregate_type, id, &event);
        self.when_recorded(recorded)
    }

    /// Applies one recorded event and keeps the outcome.
    pub fn when_recorded(mut self, recorded: RecordedEvent) -> ProjectionOutcome<P> {
        let result = self.apply(&recorded);
        ProjectionOutcome { test: self, result }
    }

    /// The event as the store would have recorded it: the stream's next version, the log's next
    /// position.
    fn record<E: DomainEvent>(
        &mut self,
        aggregate_type: &str,
        id: &str,
        event: &E,
    ) -> RecordedEvent {
        let new = match NewEvent::from_domain(event, Metadata::correlated("projection-test")) {
            Ok(new) => new,
            Err(err) => panic!("the event does not serialise: {err}"),
        };
        let stream = StreamId::new(aggregate_type, id);
        let version = self.versions.entry(stream.clone()).or_default();
        *version += 1;
        self.position += 1;
        RecordedEvent {
            id: new.id,
            partition: stream.partition(1),
            stream,
            version: *version,
            position: self.position,
            commit: self.position,
            event_type: new.event_type,
            schema_version: new.schema_version,
            payload: new.payload,
            metadata: new.metadata,
            recorded_at: Utc::now(),
        }
    }

    /// Runs the projection on `event` as the runner would; its writes are kept only if it
    /// succeeds. The projection runs on a thread of its own with its own Tokio runtime, so a
    /// scenario works from a plain `#[test]` and from inside `#[tokio::test]` alike.
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if !self.projection.handles(event) {
            return Ok(());
        }
        let event = self
            .upcasters
            .upcast_event(event)
            .map_err(|err| ProjectionError::with_source("the event could not be upcast", err))?;
        let event = event.as_ref();
        let (projection, documents) = (&self.projection, &self.documents);
        let writes = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|err| ProjectionError::with_source("no Tokio runtime", err))?;
                    runtime.block_on(async {
                        let empty = DocumentCache::new(0);
                        let mut changes = Changes::in_memory(documents, &empty);
                        projection.apply(event, &mut changes).await?;
                        Ok::<_, ProjectionError>(changes.into_writes())
                    })
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        self.documents.extend(writes);
        Ok(())
    }

    /// Document `id` of `collection` as the scenario left it.
    pub fn document(&self, collection: &str, id: &str) -> Option<&Value> {
        self.documents
            .get(&(collection.to_owned(), id.to_owned()))
            .and_then(Option::as_ref)
    }

    /// Every document of `collection`, by id.
    pub fn documents(&self, collection: &str) -> BTreeMap<String, Value> {
        self.documents
            .iter()
            .filter(|((c, _), _)| c == collection)
            .filter_map(|((_, id), doc)| doc.clone().map(|doc| (id.clone(), doc)))
            .collect()
    }
}

impl<P: Projection> ProjectionOutcome<P> {
    #[track_caller]
    fn applied(&self) -> &ProjectionTest<P> {
        if let Err(err) = &self.result {
            panic!("expected the event to apply, but the projection failed: {err}");
        }
        &self.test
    }

    /// Asserts the event applied and `collection` holds exactly `expected` (id, document).
    #[track_caller]
    pub fn then_documents<'a>(
        self,
        collection: &str,
        expected: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Self {
        let expected: BTreeMap<String, Value> = expected
            .into_iter()
            .map(|(id, doc)| (id.to_owned(), doc))
            .collect();
        let actual = self.applied().documents(collection);
        assert_eq!(
            actual, expected,
            "collection `{collection}` holds other documents than expected"
        );
        self
    }

    /// Asserts the event applied and document `id` of `collection` equals `expected`.
    #[track_caller]
    pub fn then_document(self, collection: &str, id: &str, expected: Value) -> Self {
        let actual = self.applied().document(collection, id);
        assert_eq!(
            actual,
            Some(&expected),
            "document `{id}` of `{collection}` differs"
        );
        self
    }

    /// Asserts the event applied and document `id` of `collection` decodes as `T` and passes
    /// `check`.
    #[track_caller]
    pub fn then_document_as<T: DeserializeOwned>(
        self,
        collection: &str,
        id: &str,
        check: impl FnOnce(T),
    ) -> Self {
        let Some(document) = self.applied().document(collection, id) else {
            panic!("no document `{id}` in `{collection}`");
        };
        match serde_json::from_value(document.clone()) {
            Ok(typed) => check(typed),
            Err(err) => panic!("document `{id}` of `{collection}` does not decode: {err}"),
        }
        self
    }

    /// Asserts the event applied and left no document `id` in `collection`.
    #[track_caller]
    pub fn then_no_document(self, collection: &str, id: &str) -> Self {
        if let Some(document) = self.applied().document(collection, id) {
            panic!("expected no document `{id}` in `{collection}`, found {document}");
        }
        self
    }

    /// Asserts the projection failed on the event with an error matching `check`; nothing of
    /// the event was written.
    #[track_caller]
    pub fn then_err(self, check: impl FnOnce(&ProjectionError) -> bool) {
        match &self.result {
            Ok(()) => panic!("expected the projection to fail, but it applied the event"),
            Err(err) => assert!(
                check(err),
                "the projection failed with another error: {err}"
            ),
        }
    }

    /// The scenario, to go on with more events.
    pub fn and(self) -> ProjectionTest<P> {
        let _ = self.applied();
        self.test
    }
}

#[cfg(test)]
mod projection_tests {
    use async_trait::async_trait;
    use serde_json::json;

    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, nexus_macros::DomainEvent)]
    #[event(type = "Moved")]
    struct Moved {
        to: String,
    }

    #[derive(serde::Serialize, serde::Deserialize, nexus_macros::DomainEvent)]
    #[event(type = "Vanished")]
    struct Vanished;

    /// Keeps where each parcel is, with the version that put it there; deletes vanished ones;
    /// refuses a move to nowhere.
    struct Parcels;

    #[async_trait]
    impl Projection for Parcels {
        fn name(&self) -> &str {
            "parcels"
        }

        async fn apply(
            &self,
            event: &RecordedEvent,
            changes: &mut Changes<'_>,
        ) -> Result<(), ProjectionError> {
            let id = event.stream.aggregate_id();
            match event.event_type.as_str() {
                "Moved" => {
                    let moved: Moved = event.decode()?;
                    if moved.to.is_empty() {
                        return Err(ProjectionError::new("a parcel cannot move to nowhere"));
                    }
                    let hops: u64 = changes
                        .get("parcels", id)
                        .await?
                        .and_then(|doc| doc["hops"].as_u64())
                        .unwrap_or(0);
                    changes.put(
                        "parcels",
                        id,
                        json!({"at": moved.to, "version": event.version, "hops": hops + 1}),
                    );
                }
                _ => changes.delete("parcels", id),
            }
            Ok(())
        }
    }

    fn moved(to: &str) -> Moved {
        Moved { to: to.to_owned() }
    }

    #[test]
    fn documents_follow_the_events_with_versions_per_stream() {
        ProjectionTest::new(Parcels)
            .given("parcel", "p-1", [moved("depot"), moved("van")])
            .given("parcel", "p-2", [moved("depot")])
            .when("parcel", "p-1", moved("door"))
            .then_documents(
                "parcels",
                [
                    ("p-1", json!({"at": "door", "version": 3, "hops": 3})),
                    ("p-2", json!({"at": "depot", "version": 1, "hops": 1})),
                ],
            )
            .then_document_as::<serde_json::Map<String, Value>>("parcels", "p-2", |doc| {
                assert_eq!(doc["at"], "depot");
            });
    }

    #[test]
    fn a_deletion_removes_the_document_and_a_failure_writes_nothing() {
        ProjectionTest::new(Parcels)
            .given("parcel", "p-1", [moved("depot")])
            .when("parcel", "p-1", Vanished)
            .then_no_document("parcels", "p-1")
            .and()
            .given("parcel", "p-2", [moved("van")])
            .when("parcel", "p-2", moved(""))
            .then_err(|err| err.to_string().contains("nowhere"));
    }

    #[tokio::test]
    async fn a_scenario_runs_inside_a_tokio_test_too() {
        ProjectionTest::new(Parcels)
            .when("parcel", "p-9", moved("shelf"))
            .then_document(
                "parcels",
                "p-9",
                json!({"at": "shelf", "version": 1, "hops": 1}),
            );
    }

    #[test]
    fn an_event_stored_at_an_older_version_is_upcast_before_the_projection_sees_it() {
        // v1 of `Moved` named the place `where`; the current `Moved` (v2) calls it `to`.
        let upcasters =
            Upcasters::new().step("Moved", 1, |mut v| Ok(json!({"to": v["where"].take()})));
        let mut old = ProjectionTest::new(Parcels).record("parcel", "p-1", &moved("x"));
        old.payload =
            serde_json::value::RawValue::from_string(r#"{"where":"attic"}"#.to_owned()).unwrap();
        old.schema_version = 1;
        ProjectionTest::new(Parcels)
            .with_upcasters(upcasters)
            .when_recorded(old.clone())
            .then_document(
                "parcels",
                "p-1",
                json!({"at": "attic", "version": 1, "hops": 1}),
            );
        // Without the step, the old payload does not decode: the projection fails, as a runner's
        // would (and dead-letters it after its retries).
        ProjectionTest::new(Parcels)
            .when_recorded(old)
            .then_err(|err| err.to_string().contains("does not decode"));
    }

    #[test]
    #[should_panic(expected = "holds other documents than expected")]
    fn a_wrong_expectation_fails_the_test() {
        ProjectionTest::new(Parcels)
            .when("parcel", "p-1", moved("depot"))
            .then_documents("parcels", [("p-1", json!({"at": "elsewhere"}))]);
    }
}
