//! JSON Schemas of the sample's events and commands, one document per event or command type,
//! as `nexus check` and `nexus schema check --dir` read them (requirement 8.1: the registry
//! holds event *and* command schemas).
//!
//! The generated project's `crates/events/tests/schemas.rs` splits the schemas the same way and
//! fails when `schemas/` no longer matches the Rust types.

use anyhow::Context as _;
use serde_json::{Map, Value};

use crate::events::{
    InventoryCommand, InventoryEvent, OrderCommand, OrderEvent, PaymentCommand, PaymentEvent,
};

/// The schema of every variant of the sample's event enums, keyed by event type.
pub(crate) fn event_schemas() -> anyhow::Result<Vec<(String, Value)>> {
    let mut all = split(serde_json::to_value(schemars::schema_for!(OrderEvent))?)?;
    all.extend(split(serde_json::to_value(schemars::schema_for!(
        InventoryEvent
    ))?)?);
    all.extend(split(serde_json::to_value(schemars::schema_for!(
        PaymentEvent
    ))?)?);
    Ok(all)
}

/// The schema of every variant of the sample's command enums, keyed by command type.
pub(crate) fn command_schemas() -> anyhow::Result<Vec<(String, Value)>> {
    let mut all = split(serde_json::to_value(schemars::schema_for!(OrderCommand))?)?;
    all.extend(split(serde_json::to_value(schemars::schema_for!(
        InventoryCommand
    ))?)?);
    all.extend(split(serde_json::to_value(schemars::schema_for!(
        PaymentCommand
    ))?)?);
    Ok(all)
}

/// Every subject of the sample: its event types, then its command types.
pub(crate) fn subjects() -> anyhow::Result<Vec<(String, Value)>> {
    let mut all = event_schemas()?;
    all.extend(command_schemas()?);
    Ok(all)
}

/// Splits the schema of an internally tagged enum (`#[serde(tag = "type")]`) of events or
/// commands into one self-contained schema per variant, named by the variant's tag.
pub(super) fn split(root: Value) -> anyhow::Result<Vec<(String, Value)>> {
    let variants = root
        .get("oneOf")
        .or_else(|| root.get("anyOf"))
        .and_then(Value::as_array)
        .context("the enum's schema has no `oneOf`: is it an internally tagged enum?")?;
    let mut out = Vec::new();
    for variant in variants {
        let tag = variant
            .pointer("/properties/type")
            .and_then(|t| {
                t.get("const")
                    .or_else(|| t.get("enum").and_then(|e| e.get(0)))
            })
            .and_then(Value::as_str)
            .context("a variant's schema has no constant `type` property")?
            .to_owned();
        let mut schema = Map::new();
        schema.insert(
            "$schema".into(),
            root.get("$schema")
                .cloned()
                .unwrap_or_else(|| "https://json-schema.org/draft/2020-12/schema".into()),
        );
        schema.insert("title".into(), Value::String(tag.clone()));
        if let Some(fields) = variant.as_object() {
            for (key, value) in fields {
                schema.insert(key.clone(), value.clone());
            }
        }
        if let Some(defs) = root.get("$defs") {
            schema.insert("$defs".into(), defs.clone());
        }
        out.push((tag, Value::Object(schema)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_gets_one_schema() {
        let schemas = event_schemas().expect("the sample's events have schemas");
        let subjects: Vec<&str> = schemas.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "OrderPlaced",
                "ItemAdded",
                "OrderSubmitted",
                "OrderConfirmed",
                "OrderCancelled",
                "StockAdded",
                "StockReserved",
                "StockReleased",
                "StockCountStarted",
                "StockCountFinished",
                "PaymentAuthorized",
                "PaymentCaptured",
                "PaymentRejected",
                "PaymentRefunded",
                "PaymentVoided"
            ]
        );
        let (_, placed) = &schemas[0];
        assert_eq!(placed["title"], "OrderPlaced");
        assert_eq!(placed["properties"]["customer"]["type"], "string");
        // Every payload carries serde's tag, so the schema requires it (NX004 knows the tag).
        assert_eq!(placed["required"], serde_json::json!(["type", "customer"]));
        assert_eq!(placed["properties"]["type"]["const"], "OrderPlaced");
    }

    #[test]
    fn every_command_type_gets_one_schema_after_the_events() {
        let all = subjects().expect("the sample's commands have schemas");
        let subjects: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
        let events = event_schemas()
            .expect("the sample's events have schemas")
            .len();
        assert_eq!(
            subjects[events..events + 5],
            [
                "PlaceOrder",
                "AddItem",
                "SubmitOrder",
                "ConfirmOrder",
                "CancelOrder"
            ]
        );
        assert!(subjects.contains(&"ReserveStock") && subjects.contains(&"ChargePayment"));
        let (_, add) = &all[events + 1];
        assert_eq!(add["title"], "AddItem");
        assert_eq!(add["properties"]["quantity"]["type"], "integer");
        assert_eq!(add["properties"]["type"]["const"], "AddItem");
    }
}
