//! The `orders` projection: one summary document per order and one per customer.
//!
//! It reads order events from the bus (never from the command service) and writes two
//! collections of its read model: `orders` (keyed by order id) and `customers` (keyed by
//! customer), which the query dashboard serves under `/read-models/orders/...`.

use async_trait::async_trait;
use nexus_runtime::projection::{Changes, Projection, ProjectionError};
use nexus_runtime::search::{CollectionSchema, Language, SearchSchema};
use nexus_runtime::{EventEnvelope, RecordedEvent};
use serde::{Deserialize, Serialize};

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

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed, items may still be added.
    Placed,
    /// Submitted for fulfilment: the order-fulfilment saga reserves, charges and confirms it.
    Submitted,
    /// Confirmed at its total.
    Confirmed,
    /// Cancelled.
    Cancelled,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product's stock-keeping unit.
    pub sku: String,
    /// How many of it.
    pub quantity: u32,
    /// The price of one, in cents.
    pub unit_price_cents: u64,
}

/// A document of the `orders` collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The order id.
    pub id: String,
    /// Who placed it.
    pub customer: String,
    /// Where it stands.
    pub status: OrderStatus,
    /// Items over all lines.
    pub items: u64,
    /// Its lines, in the order they were added.
    pub lines: Vec<OrderLine>,
    /// Its total in cents.
    pub total_cents: u64,
    /// The order stream's version this summary reflects.
    pub version: u64,
}

/// A document of the `customers` collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerSummary {
    /// The customer.
    pub id: String,
    /// Orders placed.
    pub orders: u64,
    /// Orders confirmed.
    pub confirmed: u64,
    /// The total of confirmed orders, in cents.
    pub total_cents: u64,
}

async fn existing_order(changes: &Changes<'_>, id: &str) -> Result<OrderSummary, ProjectionError> {
    changes
        .get_as(OrderSummaries::ORDERS, id)
        .await?
        .ok_or_else(|| ProjectionError::new(format!("order {id} has no summary yet")))
}

async fn customer(changes: &Changes<'_>, name: &str) -> Result<CustomerSummary, ProjectionError> {
    Ok(changes
        .get_as(OrderSummaries::CUSTOMERS, name)
        .await?
        .unwrap_or_else(|| CustomerSummary {
            id: name.to_owned(),
            ..CustomerSummary::default()
        }))
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
        let envelope = EventEnvelope::<OrderEvent>::decode(event)?;
        let mut order = match envelope.event {
            OrderEvent::OrderPlaced { customer: name } => {
                let mut summary = customer(changes, &name).await?;
                summary.orders += 1;
                changes.put_as(Self::CUSTOMERS, &name, &summary)?;
                OrderSummary {
                    id: id.to_owned(),
                    customer: name,
                    status: OrderStatus::Placed,
                    items: 0,
                    lines: Vec::new(),
                    total_cents: 0,
                    version: 0,
                }
            }
            OrderEvent::ItemAdded {
                sku,
                quantity,
                unit_price_cents,
            } => {
                let mut order = existing_order(changes, id).await?;
                order.items += u64::from(quantity);
                order.total_cents += u64::from(quantity) * unit_price_cents;
                order.lines.push(OrderLine {
                    sku,
                    quantity,
                    unit_price_cents,
                });
                order
            }
            OrderEvent::OrderSubmitted { .. } => {
                let mut order = existing_order(changes, id).await?;
                order.status = OrderStatus::Submitted;
                order
            }
            OrderEvent::OrderConfirmed { total_cents } => {
                let mut order = existing_order(changes, id).await?;
                order.status = OrderStatus::Confirmed;
                order.total_cents = total_cents;
                let mut summary = customer(changes, &order.customer).await?;
                summary.confirmed += 1;
                summary.total_cents += total_cents;
                changes.put_as(Self::CUSTOMERS, &order.customer, &summary)?;
                order
            }
            OrderEvent::OrderCancelled { .. } => {
                let mut order = existing_order(changes, id).await?;
                order.status = OrderStatus::Cancelled;
                order
            }
        };
        order.version = envelope.version;
        changes.put_as(Self::ORDERS, id, &order)
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

    use nexus_runtime::testing::ProjectionTest;

    use super::OrderSummaries;
    use crate::events::{Order, OrderCommand, OrderEvent};

    fn placed(customer: &str) -> OrderEvent {
        OrderEvent::OrderPlaced {
            customer: customer.into(),
        }
    }

    fn item(sku: &str, quantity: u32, unit_price_cents: u64) -> OrderEvent {
        OrderEvent::ItemAdded {
            sku: sku.into(),
            quantity,
            unit_price_cents,
        }
    }

    #[test]
    fn a_confirmed_order_counts_for_its_customer() {
        ProjectionTest::new(OrderSummaries)
            .given("order", "o-1", [placed("ada"), item("tea", 2, 450)])
            .when(
                "order",
                "o-1",
                OrderEvent::OrderConfirmed { total_cents: 900 },
            )
            .then_document(
                OrderSummaries::ORDERS,
                "o-1",
                json!({
                    "id": "o-1", "customer": "ada", "status": "confirmed", "items": 2,
                    "lines": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}],
                    "total_cents": 900, "version": 3,
                }),
            )
            .then_documents(
                OrderSummaries::CUSTOMERS,
                [(
                    "ada",
                    json!({"id": "ada", "orders": 1, "confirmed": 1, "total_cents": 900}),
                )],
            );
    }

    #[test]
    fn a_cancelled_order_keeps_its_lines_and_counts_nothing_confirmed() {
        ProjectionTest::new(OrderSummaries)
            .given("order", "o-2", [placed("grace"), item("cake", 1, 300)])
            .when(
                "order",
                "o-2",
                OrderEvent::OrderCancelled {
                    reason: "changed mind".into(),
                },
            )
            .then_document_as::<super::OrderSummary>(OrderSummaries::ORDERS, "o-2", |order| {
                assert_eq!(order.status, super::OrderStatus::Cancelled);
                assert_eq!(order.total_cents, 300);
                assert_eq!(order.version, 3);
            })
            .then_document(
                OrderSummaries::CUSTOMERS,
                "grace",
                json!({"id": "grace", "orders": 1, "confirmed": 0, "total_cents": 0}),
            );
    }

    #[test]
    fn an_item_for_an_order_never_placed_is_refused() {
        ProjectionTest::new(OrderSummaries)
            .when("order", "o-3", item("tea", 1, 450))
            .then_err(|err| err.to_string().contains("no summary yet"));
    }

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
