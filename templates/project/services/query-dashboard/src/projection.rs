//! The `orders` projection: one summary document per order and one per customer.
//!
//! It reads order events from the bus (never from the command service) and writes two
//! collections of its read model: `orders` (keyed by order id) and `customers` (keyed by
//! customer), which the query dashboard serves under `/read-models/orders/...`.

use async_trait::async_trait;
use nexus_runtime::RecordedEvent;
use nexus_runtime::projection::{Changes, Projection, ProjectionError};
use nexus_runtime::search::{CollectionSchema, Language, SearchSchema};
use serde_json::{Value, json};

use crate::events::{Order, OrderEvent};

/// Summaries of orders and of customers' confirmed spending.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderSummaries;

impl OrderSummaries {
    /// The projection's name: the key of its read model, checkpoint and dead letters.
    pub const NAME: &'static str = "orders";
    /// One document per order: `id`, `customer`, `status`, `items`, `lines`, `total_cents`, `version`.
    pub const ORDERS: &'static str = "orders";
    /// One document per customer: `id`, `orders`, `confirmed`, `total_cents` (of confirmed orders).
    pub const CUSTOMERS: &'static str = "customers";
}

fn number(document: &Value, field: &str) -> u64 {
    document.get(field).and_then(Value::as_u64).unwrap_or(0)
}

async fn existing_order(changes: &Changes<'_>, id: &str) -> Result<Value, ProjectionError> {
    changes
        .get(OrderSummaries::ORDERS, id)
        .await?
        .ok_or_else(|| ProjectionError::new(format!("order {id} has no summary yet")))
}

async fn customer(changes: &Changes<'_>, name: &str) -> Result<Value, ProjectionError> {
    Ok(changes
        .get(OrderSummaries::CUSTOMERS, name)
        .await?
        .unwrap_or_else(|| json!({ "id": name, "orders": 0, "confirmed": 0, "total_cents": 0 })))
}

#[async_trait]
impl Projection for OrderSummaries {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        event.stream.aggregate_type() == <Order as nexus_runtime::Aggregate>::TYPE
    }

    /// Orders are searchable by customer and by the SKUs of their lines, with `status` as a
    /// facet and `total_cents` for ranges, sorting and statistics
    /// (`/read-models/orders/orders/search?q=ada&status=confirmed`); customers stay filter-only.
    fn search(&self) -> SearchSchema {
        SearchSchema::new().collection(
            Self::ORDERS,
            CollectionSchema::new()
                .text("customer", Language::Simple)
                .text("lines.sku", Language::Simple)
                .facet("status")
                .numeric("total_cents"),
        )
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let id = event.stream.aggregate_id();
        let order = match event.decode::<OrderEvent>()? {
            OrderEvent::OrderPlaced { customer: name } => {
                let mut summary = customer(changes, &name).await?;
                summary["orders"] = json!(number(&summary, "orders") + 1);
                changes.put(Self::CUSTOMERS, &name, summary);
                json!({
                    "id": id,
                    "customer": name,
                    "status": "placed",
                    "items": 0,
                    "lines": [],
                    "total_cents": 0,
                })
            }
            OrderEvent::ItemAdded {
                sku,
                quantity,
                unit_price_cents,
            } => {
                let mut order = existing_order(changes, id).await?;
                if let Some(lines) = order["lines"].as_array_mut() {
                    lines.push(json!({
                        "sku": sku,
                        "quantity": quantity,
                        "unit_price_cents": unit_price_cents,
                    }));
                }
                order["items"] = json!(number(&order, "items") + u64::from(quantity));
                order["total_cents"] =
                    json!(number(&order, "total_cents") + u64::from(quantity) * unit_price_cents);
                order
            }
            OrderEvent::OrderSubmitted { .. } => {
                let mut order = existing_order(changes, id).await?;
                order["status"] = json!("submitted");
                order
            }
            OrderEvent::OrderConfirmed { total_cents } => {
                let mut order = existing_order(changes, id).await?;
                order["status"] = json!("confirmed");
                order["total_cents"] = json!(total_cents);
                let name = order["customer"].as_str().unwrap_or_default().to_owned();
                let mut summary = customer(changes, &name).await?;
                summary["confirmed"] = json!(number(&summary, "confirmed") + 1);
                summary["total_cents"] = json!(number(&summary, "total_cents") + total_cents);
                changes.put(Self::CUSTOMERS, &name, summary);
                order
            }
            OrderEvent::OrderCancelled { .. } => {
                let mut order = existing_order(changes, id).await?;
                order["status"] = json!("cancelled");
                order
            }
        };
        let mut order = order;
        order["version"] = json!(event.version);
        changes.put(Self::ORDERS, id, order);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use nexus_runtime::bus::local::InProcessBus;
    use nexus_runtime::projection::{ProjectionHandle, ProjectionRunner};
    use nexus_runtime::store::embedded::EmbeddedStore;
    use nexus_runtime::{CommandHandler, EventStore, Metadata, Repository};
    use serde_json::json;

    use super::OrderSummaries;
    use crate::events::{Order, OrderCommand};

    /// Waits until the read model has applied `version` of order `id`, then returns the summary.
    async fn summary_at(
        projection: &ProjectionHandle,
        id: &str,
        version: u64,
    ) -> serde_json::Value {
        for _ in 0..500 {
            let document = projection
                .read_model()
                .get(OrderSummaries::ORDERS, id)
                .await
                .expect("the read model is readable");
            if let Some(document) = document
                && document["version"] == json!(version)
            {
                return document;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("order {id} did not reach version {version} in the read model");
    }

    #[tokio::test]
    async fn orders_and_customers_follow_the_events() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store: Arc<dyn EventStore> =
            Arc::new(EmbeddedStore::open(dir.path().join("events.db")).expect("the store opens"));
        let commands = CommandHandler::new(Repository::<Order>::new(Arc::clone(&store)));
        let script = [
            OrderCommand::PlaceOrder {
                customer: "ada".into(),
            },
            OrderCommand::AddItem {
                sku: "tea".into(),
                quantity: 2,
                unit_price_cents: 450,
            },
            OrderCommand::AddItem {
                sku: "cake".into(),
                quantity: 1,
                unit_price_cents: 300,
            },
            OrderCommand::ConfirmOrder,
        ];
        for command in &script {
            commands
                .execute("o-1", command, Metadata::default())
                .await
                .expect("the command is accepted");
        }
        for command in [
            OrderCommand::PlaceOrder {
                customer: "ada".into(),
            },
            OrderCommand::CancelOrder {
                reason: "changed mind".into(),
            },
        ] {
            commands
                .execute("o-2", &command, Metadata::default())
                .await
                .expect("the command is accepted");
        }

        let bus = Arc::new(InProcessBus::new(Arc::clone(&store)));
        let runner = ProjectionRunner::new(store, bus, dir.path().join("read-models"));
        let projection = runner.spawn(OrderSummaries).expect("the projection starts");

        let confirmed = summary_at(&projection, "o-1", 4).await;
        assert_eq!(confirmed["customer"], "ada");
        assert_eq!(confirmed["status"], "confirmed");
        assert_eq!(confirmed["items"], 3);
        assert_eq!(confirmed["total_cents"], 1200);
        assert_eq!(confirmed["lines"].as_array().map(Vec::len), Some(2));
        let cancelled = summary_at(&projection, "o-2", 2).await;
        assert_eq!(cancelled["status"], "cancelled");

        let ada = projection
            .read_model()
            .get(OrderSummaries::CUSTOMERS, "ada")
            .await
            .expect("the read model is readable")
            .expect("ada has a summary");
        assert_eq!(ada["orders"], 2);
        assert_eq!(ada["confirmed"], 1);
        assert_eq!(ada["total_cents"], 1200);
        projection.stop().await;
    }
}
