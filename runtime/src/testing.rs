//! A given/when/then harness for aggregates, for Nexus's own tests and for users' services.
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

use std::fmt::Debug;

pub use saga::{SagaScenario, SagaTest};

use crate::aggregate::Aggregate;

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
