//! The sample domain of the reference system: orders that are placed, filled, confirmed or cancelled.

use nexus_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// An order's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OrderStatus {
    /// Not placed yet.
    #[default]
    New,
    /// Placed, items may be added.
    Placed,
    /// Confirmed: no more changes.
    Confirmed,
    /// Cancelled: no more changes.
    Cancelled,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OrderLine {
    pub(crate) sku: String,
    pub(crate) quantity: u32,
    pub(crate) unit_price_cents: u64,
}

/// The order aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) status: OrderStatus,
    pub(crate) customer: String,
    pub(crate) lines: Vec<OrderLine>,
}

impl Order {
    /// The order's total in cents.
    pub(crate) fn total_cents(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| u64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }
}

/// What can happen to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum OrderEvent {
    /// A customer placed the order.
    OrderPlaced { customer: String },
    /// An item was added.
    ItemAdded {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    /// The order was confirmed.
    OrderConfirmed { total_cents: u64 },
    /// The order was cancelled.
    OrderCancelled { reason: String },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::ItemAdded { .. } => "ItemAdded",
            Self::OrderConfirmed { .. } => "OrderConfirmed",
            Self::OrderCancelled { .. } => "OrderCancelled",
        }
    }
}

/// What can be asked of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum OrderCommand {
    /// Place a new order.
    PlaceOrder { customer: String },
    /// Add an item to a placed order.
    AddItem {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    /// Confirm a placed order that has items.
    ConfirmOrder,
    /// Cancel a placed order.
    CancelOrder { reason: String },
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OrderError {
    #[error("the order is already placed")]
    AlreadyPlaced,
    #[error("the order is not placed")]
    NotPlaced,
    #[error("the order is {0:?} and can no longer change")]
    Closed(OrderStatus),
    #[error("quantity must be at least 1")]
    EmptyQuantity,
    #[error("an order needs at least one item to be confirmed")]
    NoItems,
    #[error("a customer is required")]
    NoCustomer,
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match (self.status, command) {
            (OrderStatus::New, OrderCommand::PlaceOrder { customer }) => {
                if customer.trim().is_empty() {
                    return Err(OrderError::NoCustomer);
                }
                Ok(vec![OrderEvent::OrderPlaced {
                    customer: customer.clone(),
                }])
            }
            (_, OrderCommand::PlaceOrder { .. }) => Err(OrderError::AlreadyPlaced),
            (OrderStatus::New, _) => Err(OrderError::NotPlaced),
            (status @ (OrderStatus::Confirmed | OrderStatus::Cancelled), _) => {
                Err(OrderError::Closed(status))
            }
            (OrderStatus::Placed, OrderCommand::AddItem { quantity: 0, .. }) => {
                Err(OrderError::EmptyQuantity)
            }
            (
                OrderStatus::Placed,
                OrderCommand::AddItem {
                    sku,
                    quantity,
                    unit_price_cents,
                },
            ) => Ok(vec![OrderEvent::ItemAdded {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price_cents: *unit_price_cents,
            }]),
            (OrderStatus::Placed, OrderCommand::ConfirmOrder) if self.lines.is_empty() => {
                Err(OrderError::NoItems)
            }
            (OrderStatus::Placed, OrderCommand::ConfirmOrder) => {
                Ok(vec![OrderEvent::OrderConfirmed {
                    total_cents: self.total_cents(),
                }])
            }
            (OrderStatus::Placed, OrderCommand::CancelOrder { reason }) => {
                Ok(vec![OrderEvent::OrderCancelled {
                    reason: reason.clone(),
                }])
            }
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced { customer } => {
                self.status = OrderStatus::Placed;
                self.customer = customer.clone();
            }
            OrderEvent::ItemAdded {
                sku,
                quantity,
                unit_price_cents,
            } => self.lines.push(OrderLine {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price_cents: *unit_price_cents,
            }),
            OrderEvent::OrderConfirmed { .. } => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use nexus_runtime::testing::AggregateTest;

    use super::*;

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced {
            customer: "ada".into(),
        }
    }

    fn item() -> OrderEvent {
        OrderEvent::ItemAdded {
            sku: "tea".into(),
            quantity: 2,
            unit_price_cents: 450,
        }
    }

    #[test]
    fn a_placed_order_with_items_confirms_with_its_total() {
        AggregateTest::<Order>::given([placed(), item()])
            .when(OrderCommand::ConfirmOrder)
            .then([OrderEvent::OrderConfirmed { total_cents: 900 }]);
    }

    #[test]
    fn an_empty_order_does_not_confirm() {
        AggregateTest::<Order>::given([placed()])
            .when(OrderCommand::ConfirmOrder)
            .then_err(|e| *e == OrderError::NoItems);
    }

    #[test]
    fn a_cancelled_order_takes_no_items() {
        AggregateTest::<Order>::given([
            placed(),
            OrderEvent::OrderCancelled {
                reason: "changed mind".into(),
            },
        ])
        .when(OrderCommand::AddItem {
            sku: "tea".into(),
            quantity: 1,
            unit_price_cents: 450,
        })
        .then_err(|e| *e == OrderError::Closed(OrderStatus::Cancelled));
    }

    #[test]
    fn an_order_is_placed_once() {
        AggregateTest::<Order>::given([placed()])
            .when(OrderCommand::PlaceOrder {
                customer: "bob".into(),
            })
            .then_err(|e| *e == OrderError::AlreadyPlaced);
    }
}
