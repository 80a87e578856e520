//! The orders domain: the `Order`, `Inventory` and `Payment` aggregates, their commands and
//! events, and the order-fulfilment saga that coordinates them, in one place.
//!
//! Both services depend on this crate: the command service decides on commands and runs the
//! saga, the query dashboard reads `OrderEvent`s from the bus. Neither calls the other.
//!
//! An order is placed, takes items, and is either confirmed at once (`ConfirmOrder`) or
//! submitted (`SubmitOrder`): then the [`fulfilment`] saga reserves its stock, charges its
//! payment and confirms it, releasing the stock and refunding the payment when a later step
//! fails or the payment times out.

mod fulfilment;
mod inventory;
mod payment;

pub use fulfilment::{FULFILMENT, FulfilmentOptions, fulfilment};
pub use inventory::{
    Inventory, InventoryCommand, InventoryError, InventoryEvent, StockLine, WAREHOUSE,
};
pub use payment::{
    AUTO_CAPTURE_LIMIT_CENTS, CHARGE_LIMIT_CENTS, Payment, PaymentCommand, PaymentError,
    PaymentEvent, PaymentStatus,
};

use nexus_runtime::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An order's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not placed yet.
    #[default]
    New,
    /// Placed, items may be added.
    Placed,
    /// Submitted for fulfilment: the saga reserves stock, charges and confirms it.
    Submitted,
    /// Confirmed: no more changes.
    Confirmed,
    /// Cancelled: no more changes.
    Cancelled,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    /// The product's stock-keeping unit.
    pub sku: String,
    /// How many of it.
    pub quantity: u32,
    /// The price of one, in cents.
    pub unit_price_cents: u64,
}

/// The order aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Where the order is in its lifecycle.
    pub status: OrderStatus,
    /// Who placed it.
    pub customer: String,
    /// What is in it.
    pub lines: Vec<OrderLine>,
}

impl Order {
    /// The order's total in cents.
    pub fn total_cents(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| u64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }
}

/// What can happen to an order. Each variant is an event type of its own name, version 1
/// (`#[event(type = "…", version = N)]` on a variant says otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[serde(tag = "type")]
pub enum OrderEvent {
    /// A customer placed the order.
    OrderPlaced {
        /// Who placed it.
        customer: String,
    },
    /// An item was added.
    ItemAdded {
        /// The product's stock-keeping unit.
        sku: String,
        /// How many of it.
        quantity: u32,
        /// The price of one, in cents.
        unit_price_cents: u64,
    },
    /// The order was submitted for fulfilment, with what it holds.
    OrderSubmitted {
        /// Who placed it.
        customer: String,
        /// What is in it.
        lines: Vec<OrderLine>,
        /// Its total, in cents.
        total_cents: u64,
    },
    /// The order was confirmed.
    OrderConfirmed {
        /// The order's total at confirmation, in cents.
        total_cents: u64,
    },
    /// The order was cancelled.
    OrderCancelled {
        /// Why.
        reason: String,
    },
}

/// What can be asked of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum OrderCommand {
    /// Place a new order.
    PlaceOrder {
        /// Who places it.
        customer: String,
    },
    /// Add an item to a placed order.
    AddItem {
        /// The product's stock-keeping unit.
        sku: String,
        /// How many of it (at least 1).
        quantity: u32,
        /// The price of one, in cents.
        unit_price_cents: u64,
    },
    /// Submit a placed order that has items for fulfilment (the saga confirms it).
    SubmitOrder,
    /// Confirm a placed or submitted order that has items.
    ConfirmOrder,
    /// Cancel a placed or submitted order.
    CancelOrder {
        /// Why.
        reason: String,
    },
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// `PlaceOrder` on an order that exists.
    #[error("the order is already placed")]
    AlreadyPlaced,
    /// Anything but `PlaceOrder` on an order that does not exist.
    #[error("the order is not placed")]
    NotPlaced,
    /// Anything on a confirmed or cancelled order.
    #[error("the order is {0:?} and can no longer change")]
    Closed(OrderStatus),
    /// `AddItem` with quantity 0.
    #[error("quantity must be at least 1")]
    EmptyQuantity,
    /// `AddItem` on a submitted order.
    #[error("the order is submitted and takes no more items")]
    Submitted,
    /// `SubmitOrder` or `ConfirmOrder` on an order without items.
    #[error("an order needs at least one item to be submitted or confirmed")]
    NoItems,
    /// `PlaceOrder` without a customer.
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
            (OrderStatus::Submitted, OrderCommand::AddItem { .. }) => Err(OrderError::Submitted),
            // Submitting twice changes nothing (the saga runs once per order anyway).
            (OrderStatus::Submitted, OrderCommand::SubmitOrder) => Ok(vec![]),
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
            (_, OrderCommand::SubmitOrder | OrderCommand::ConfirmOrder)
                if self.lines.is_empty() =>
            {
                Err(OrderError::NoItems)
            }
            (OrderStatus::Placed, OrderCommand::SubmitOrder) => {
                Ok(vec![OrderEvent::OrderSubmitted {
                    customer: self.customer.clone(),
                    lines: self.lines.clone(),
                    total_cents: self.total_cents(),
                }])
            }
            (_, OrderCommand::ConfirmOrder) => Ok(vec![OrderEvent::OrderConfirmed {
                total_cents: self.total_cents(),
            }]),
            (_, OrderCommand::CancelOrder { reason }) => Ok(vec![OrderEvent::OrderCancelled {
                reason: reason.clone(),
            }]),
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
            OrderEvent::OrderSubmitted { .. } => self.status = OrderStatus::Submitted,
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
    fn a_new_order_is_placed_for_its_customer() {
        AggregateTest::<Order>::given_no_history()
            .when(OrderCommand::PlaceOrder {
                customer: "ada".into(),
            })
            .then([placed()]);
    }

    #[test]
    fn an_order_needs_a_customer() {
        AggregateTest::<Order>::given_no_history()
            .when(OrderCommand::PlaceOrder {
                customer: " ".into(),
            })
            .then_err(|e| *e == OrderError::NoCustomer);
    }

    #[test]
    fn a_placed_order_takes_items() {
        let order = AggregateTest::<Order>::given([placed()])
            .when(OrderCommand::AddItem {
                sku: "tea".into(),
                quantity: 2,
                unit_price_cents: 450,
            })
            .then([item()]);
        assert_eq!(order.total_cents(), 900);
    }

    #[test]
    fn an_item_needs_a_quantity() {
        AggregateTest::<Order>::given([placed()])
            .when(OrderCommand::AddItem {
                sku: "tea".into(),
                quantity: 0,
                unit_price_cents: 450,
            })
            .then_err(|e| *e == OrderError::EmptyQuantity);
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
    fn a_placed_order_can_be_cancelled() {
        AggregateTest::<Order>::given([placed(), item()])
            .when(OrderCommand::CancelOrder {
                reason: "changed mind".into(),
            })
            .then([OrderEvent::OrderCancelled {
                reason: "changed mind".into(),
            }]);
    }

    #[test]
    fn a_submitted_order_carries_what_the_saga_needs_and_takes_no_more_items() {
        let order = AggregateTest::<Order>::given([placed(), item()])
            .when(OrderCommand::SubmitOrder)
            .then([OrderEvent::OrderSubmitted {
                customer: "ada".into(),
                lines: vec![OrderLine {
                    sku: "tea".into(),
                    quantity: 2,
                    unit_price_cents: 450,
                }],
                total_cents: 900,
            }]);
        assert_eq!(order.status, OrderStatus::Submitted);
        let submitted = OrderEvent::OrderSubmitted {
            customer: "ada".into(),
            lines: order.lines.clone(),
            total_cents: 900,
        };
        AggregateTest::<Order>::given([placed(), item(), submitted.clone()])
            .when(OrderCommand::AddItem {
                sku: "tea".into(),
                quantity: 1,
                unit_price_cents: 450,
            })
            .then_err(|e| *e == OrderError::Submitted);
        AggregateTest::<Order>::given([placed(), item(), submitted])
            .when(OrderCommand::ConfirmOrder)
            .then([OrderEvent::OrderConfirmed { total_cents: 900 }]);
        AggregateTest::<Order>::given([placed()])
            .when(OrderCommand::SubmitOrder)
            .then_err(|e| *e == OrderError::NoItems);
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
