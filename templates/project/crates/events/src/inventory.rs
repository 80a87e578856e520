//! The inventory: the stock of one warehouse by SKU, and what each order holds reserved.
//!
//! The fulfilment saga reserves an order's lines here and releases them when the order cannot be
//! fulfilled. While a stock count runs, nothing goes back on the shelf: a release is refused
//! until the count finishes (and a saga compensating then waits, stuck, for an operator).

use std::collections::BTreeMap;

use nexus_runtime::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The warehouse every order reserves from: the id of the sample's one `Inventory`.
pub const WAREHOUSE: &str = "main";

/// So many units of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockLine {
    /// The product's stock-keeping unit.
    pub sku: String,
    /// How many of it.
    pub quantity: u32,
}

/// A warehouse's stock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Units on the shelf and free to reserve, by SKU.
    pub available: BTreeMap<String, u32>,
    /// What each order holds reserved, by order id.
    pub reserved: BTreeMap<String, Vec<StockLine>>,
    /// Whether a stock count is running.
    pub counting: bool,
}

/// What can happen to a warehouse's stock.
#[allow(
    clippy::enum_variant_names,
    reason = "event and command types are global names (schema subjects): the prefix keeps them unique"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[serde(tag = "type")]
pub enum InventoryEvent {
    /// Units arrived on the shelf.
    StockAdded {
        /// The product's stock-keeping unit.
        sku: String,
        /// How many arrived.
        quantity: u32,
    },
    /// An order's lines were taken off the available stock.
    StockReserved {
        /// The order.
        order: String,
        /// What it holds.
        lines: Vec<StockLine>,
    },
    /// An order's reservation went back on the shelf.
    StockReleased {
        /// The order.
        order: String,
        /// What it held.
        lines: Vec<StockLine>,
    },
    /// A stock count began: nothing goes back on the shelf until it finishes.
    StockCountStarted,
    /// The stock count finished.
    StockCountFinished,
}

/// What can be asked of a warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum InventoryCommand {
    /// Put units of a product on the shelf.
    Restock {
        /// The product's stock-keeping unit.
        sku: String,
        /// How many (at least 1).
        quantity: u32,
    },
    /// Reserve an order's lines (nothing happens if the order already holds a reservation).
    ReserveStock {
        /// The order.
        order: String,
        /// What it needs.
        lines: Vec<StockLine>,
    },
    /// Put an order's reservation back on the shelf (nothing happens if it holds none).
    ReleaseStock {
        /// The order.
        order: String,
    },
    /// Begin a stock count.
    StartStockCount,
    /// Finish the stock count.
    FinishStockCount,
}

/// Why a warehouse refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// `Restock` or a reservation line with quantity 0.
    #[error("quantity must be at least 1")]
    EmptyQuantity,
    /// A reservation without lines.
    #[error("a reservation needs at least one line")]
    NoLines,
    /// Not enough of a product on the shelf.
    #[error("only {available} of `{sku}` available, {wanted} wanted")]
    OutOfStock {
        /// The product.
        sku: String,
        /// What is on the shelf.
        available: u32,
        /// What the order wants.
        wanted: u32,
    },
    /// A release while a stock count runs.
    #[error("a stock count is running: nothing goes back on the shelf until it finishes")]
    Counting,
    /// `StartStockCount` while one runs, or `FinishStockCount` while none does.
    #[error("a stock count is {0}")]
    CountState(&'static str),
}

impl Aggregate for Inventory {
    const TYPE: &'static str = "inventory";
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    fn handle(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::Restock { quantity: 0, .. } => Err(InventoryError::EmptyQuantity),
            InventoryCommand::Restock { sku, quantity } => Ok(vec![InventoryEvent::StockAdded {
                sku: sku.clone(),
                quantity: *quantity,
            }]),
            InventoryCommand::ReserveStock { order, .. } if self.reserved.contains_key(order) => {
                Ok(vec![])
            }
            InventoryCommand::ReserveStock { lines, .. } if lines.is_empty() => {
                Err(InventoryError::NoLines)
            }
            InventoryCommand::ReserveStock { order, lines } => {
                let mut wanted: BTreeMap<&str, u32> = BTreeMap::new();
                for line in lines {
                    if line.quantity == 0 {
                        return Err(InventoryError::EmptyQuantity);
                    }
                    let total = wanted.entry(&line.sku).or_default();
                    *total = total.saturating_add(line.quantity);
                }
                for (sku, wanted) in wanted {
                    let available = self.available.get(sku).copied().unwrap_or(0);
                    if available < wanted {
                        return Err(InventoryError::OutOfStock {
                            sku: sku.to_owned(),
                            available,
                            wanted,
                        });
                    }
                }
                Ok(vec![InventoryEvent::StockReserved {
                    order: order.clone(),
                    lines: lines.clone(),
                }])
            }
            InventoryCommand::ReleaseStock { order } => match self.reserved.get(order) {
                None => Ok(vec![]),
                Some(_) if self.counting => Err(InventoryError::Counting),
                Some(lines) => Ok(vec![InventoryEvent::StockReleased {
                    order: order.clone(),
                    lines: lines.clone(),
                }]),
            },
            InventoryCommand::StartStockCount if self.counting => {
                Err(InventoryError::CountState("already running"))
            }
            InventoryCommand::StartStockCount => Ok(vec![InventoryEvent::StockCountStarted]),
            InventoryCommand::FinishStockCount if !self.counting => {
                Err(InventoryError::CountState("not running"))
            }
            InventoryCommand::FinishStockCount => Ok(vec![InventoryEvent::StockCountFinished]),
        }
    }

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::StockAdded { sku, quantity } => {
                let available = self.available.entry(sku.clone()).or_default();
                *available = available.saturating_add(*quantity);
            }
            InventoryEvent::StockReserved { order, lines } => {
                for line in lines {
                    let available = self.available.entry(line.sku.clone()).or_default();
                    *available = available.saturating_sub(line.quantity);
                }
                self.reserved.insert(order.clone(), lines.clone());
            }
            InventoryEvent::StockReleased { order, lines } => {
                for line in lines {
                    let available = self.available.entry(line.sku.clone()).or_default();
                    *available = available.saturating_add(line.quantity);
                }
                self.reserved.remove(order);
            }
            InventoryEvent::StockCountStarted => self.counting = true,
            InventoryEvent::StockCountFinished => self.counting = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use nexus_runtime::testing::AggregateTest;

    use super::*;

    fn line(sku: &str, quantity: u32) -> StockLine {
        StockLine {
            sku: sku.into(),
            quantity,
        }
    }

    fn stocked() -> InventoryEvent {
        InventoryEvent::StockAdded {
            sku: "tea".into(),
            quantity: 5,
        }
    }

    fn reserved() -> InventoryEvent {
        InventoryEvent::StockReserved {
            order: "o-1".into(),
            lines: vec![line("tea", 2)],
        }
    }

    #[test]
    fn an_order_reserves_what_is_on_the_shelf() {
        let inventory = AggregateTest::<Inventory>::given([stocked()])
            .when(InventoryCommand::ReserveStock {
                order: "o-1".into(),
                lines: vec![line("tea", 2)],
            })
            .then([reserved()]);
        assert_eq!(inventory.available["tea"], 3);
    }

    #[test]
    fn an_order_cannot_reserve_more_than_is_on_the_shelf() {
        AggregateTest::<Inventory>::given([stocked()])
            .when(InventoryCommand::ReserveStock {
                order: "o-1".into(),
                lines: vec![line("tea", 4), line("tea", 2)],
            })
            .then_err(|e| {
                *e == InventoryError::OutOfStock {
                    sku: "tea".into(),
                    available: 5,
                    wanted: 6,
                }
            });
    }

    #[test]
    fn a_release_puts_the_reservation_back_once() {
        let inventory = AggregateTest::<Inventory>::given([stocked(), reserved()])
            .when(InventoryCommand::ReleaseStock {
                order: "o-1".into(),
            })
            .then([InventoryEvent::StockReleased {
                order: "o-1".into(),
                lines: vec![line("tea", 2)],
            }]);
        assert_eq!(inventory.available["tea"], 5);
        AggregateTest::<Inventory>::given([stocked()])
            .when(InventoryCommand::ReleaseStock {
                order: "o-1".into(),
            })
            .then([]);
    }

    #[test]
    fn nothing_goes_back_on_the_shelf_during_a_stock_count() {
        AggregateTest::<Inventory>::given([
            stocked(),
            reserved(),
            InventoryEvent::StockCountStarted,
        ])
        .when(InventoryCommand::ReleaseStock {
            order: "o-1".into(),
        })
        .then_err(|e| *e == InventoryError::Counting);
        AggregateTest::<Inventory>::given([
            stocked(),
            reserved(),
            InventoryEvent::StockCountStarted,
            InventoryEvent::StockCountFinished,
        ])
        .when(InventoryCommand::ReleaseStock {
            order: "o-1".into(),
        })
        .then([InventoryEvent::StockReleased {
            order: "o-1".into(),
            lines: vec![line("tea", 2)],
        }]);
    }
}
