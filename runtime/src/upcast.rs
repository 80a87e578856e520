//! Upcasting: a stored event of an older schema version is rewritten to the current shape, in
//! memory, before an aggregate ([`Repository::with_upcasters`]) or a projection
//! ([`ProjectionRunner::with_upcasters`]) sees it. The store is never rewritten: events stay
//! immutable, and the step that turns version `n` into `n + 1` is code next to the event type.
//!
//! An event's schema version is the major version of its schema in the registry: a breaking
//! change to an event's schema bumps the major (`nexus schema check` refuses it otherwise), and
//! comes with an upcaster from the previous major, so every stored event still decodes.
//!
//! ```
//! use nexus_runtime::upcast::Upcasters;
//! use serde_json::json;
//!
//! // v1 of `OrderPlaced` had `customer_name`; v2 calls it `customer` and adds `channel`.
//! let upcasters = Upcasters::new().step("OrderPlaced", 1, |mut payload| {
//!     let name = payload["customer_name"].take();
//!     Ok(json!({"customer": name, "channel": "web"}))
//! });
//! let (payload, version) = upcasters
//!     .upcast("OrderPlaced", 1, r#"{"customer_name":"ada"}"#)
//!     .unwrap();
//! let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
//! assert_eq!((payload, version), (json!({"customer": "ada", "channel": "web"}), 2));
//! ```
//!
//! [`Repository::with_upcasters`]: crate::Repository::with_upcasters
//! [`ProjectionRunner::with_upcasters`]: crate::projection::ProjectionRunner::with_upcasters

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::RecordedEvent;

/// One step: the payload of version `n` in, the payload of version `n + 1` out, or why not.
type Step = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// Why a stored event could not be brought to its current version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The stored payload is not JSON.
    #[error("event `{event_type}` v{version} is not valid JSON")]
    Json {
        /// The event's type.
        event_type: String,
        /// The schema version it was stored with.
        version: u32,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A step refused the payload.
    #[error("upcasting `{event_type}` from v{from} to v{} failed: {message}", from + 1)]
    Step {
        /// The event's type.
        event_type: String,
        /// The version the failing step starts from.
        from: u32,
        /// What the step said.
        message: String,
    },
}

/// The upcasting steps of a service's events, by event type and the version each starts from.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<String, HashMap<u32, Arc<Step>>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut steps: Vec<(&str, u32)> = self
            .steps
            .iter()
            .flat_map(|(event_type, by_version)| {
                by_version
                    .keys()
                    .map(move |from| (event_type.as_str(), *from))
            })
            .collect();
        steps.sort_unstable();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

impl Upcasters {
    /// No steps: every event is read as stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step that turns `event_type` version `from` into version `from + 1`; a later
    /// step for the same type and version replaces it.
    pub fn step(
        mut self,
        event_type: &str,
        from: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .entry(event_type.to_owned())
            .or_default()
            .insert(from, Arc::new(step));
        self
    }

    /// Whether there is no step at all.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The payload of an `event_type` event stored at `version`, brought through every step
    /// from there on, and the version it ends at. Borrowed, unparsed, when no step applies.
    pub fn upcast<'a>(
        &self,
        event_type: &str,
        version: u32,
        payload: &'a str,
    ) -> Result<(Cow<'a, str>, u32), UpcastError> {
        let Some(steps) = self.steps.get(event_type) else {
            return Ok((Cow::Borrowed(payload), version));
        };
        if !steps.contains_key(&version) {
            return Ok((Cow::Borrowed(payload), version));
        }
        let mut value: Value =
            serde_json::from_str(payload).map_err(|source| UpcastError::Json {
                event_type: event_type.to_owned(),
                version,
                source,
            })?;
        let mut current = version;
        // Each step raises the version by one, so the chain ends after at most `steps.len()`.
        while let Some(step) = steps.get(&current) {
            value = step(value).map_err(|message| UpcastError::Step {
                event_type: event_type.to_owned(),
                from: current,
                message,
            })?;
            current += 1;
        }
        Ok((Cow::Owned(value.to_string()), current))
    }

    /// `event` brought to its current version (payload and schema version), or borrowed as it
    /// is when no step applies.
    pub fn upcast_event<'a>(
        &self,
        event: &'a RecordedEvent,
    ) -> Result<Cow<'a, RecordedEvent>, UpcastError> {
        match self.upcast(&event.event_type, event.schema_version, event.payload.get())? {
            (Cow::Borrowed(_), _) => Ok(Cow::Borrowed(event)),
            (Cow::Owned(payload), version) => {
                let payload =
                    RawValue::from_string(payload).map_err(|source| UpcastError::Json {
                        event_type: event.event_type.clone(),
                        version,
                        source,
                    })?;
                Ok(Cow::Owned(RecordedEvent {
                    payload,
                    schema_version: version,
                    ..event.clone()
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn renamed() -> Upcasters {
        Upcasters::new()
            .step("Placed", 1, |mut v| {
                let name = v["name"].take();
                Ok(json!({"customer": name}))
            })
            .step("Placed", 2, |mut v| {
                v["channel"] = json!("web");
                Ok(v)
            })
    }

    #[test]
    fn steps_chain_from_the_stored_version_to_the_last() {
        let upcasters = renamed();
        let (payload, version) = upcasters.upcast("Placed", 1, r#"{"name":"ada"}"#).unwrap();
        assert_eq!(version, 3);
        let payload: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(payload, json!({"customer": "ada", "channel": "web"}));
        let (payload, version) = upcasters
            .upcast("Placed", 2, r#"{"customer":"bo"}"#)
            .unwrap();
        assert_eq!(version, 3);
        assert!(payload.contains("web"));
    }

    #[test]
    fn a_current_event_or_another_type_is_borrowed_unparsed() {
        let upcasters = renamed();
        for (event_type, version) in [("Placed", 3), ("Shipped", 1)] {
            let (payload, to) = upcasters
                .upcast(event_type, version, "not even json")
                .unwrap();
            assert!(matches!(payload, Cow::Borrowed("not even json")));
            assert_eq!(to, version);
        }
    }

    #[test]
    fn a_refusing_step_names_the_type_and_versions() {
        let upcasters = Upcasters::new().step("Placed", 4, |_| Err("no name".to_owned()));
        let err = upcasters.upcast("Placed", 4, "{}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "upcasting `Placed` from v4 to v5 failed: no name"
        );
        let err = upcasters.upcast("Placed", 4, "{").unwrap_err();
        assert!(matches!(err, UpcastError::Json { version: 4, .. }));
    }
}
