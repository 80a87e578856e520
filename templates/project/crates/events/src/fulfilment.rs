//! The order-fulfilment saga: when an order is submitted, reserve its stock, charge its payment,
//! then confirm it. When a step runs out of attempts, or the payment is not captured within the
//! payment timeout, the steps that succeeded are undone in reverse order: the payment refunded
//! (or its hold released), the stock released.
//!
//! It runs in the command service and coordinates the aggregates through the command path only
//! (`inventory/main`, `payment/{order}`, `order/{order}`), never by calling another service.
//! Its instances are served under `/sagas/fulfilment` (`nexus saga list fulfilment`).

use std::time::Duration;

use nexus_runtime::Aggregate;
use nexus_runtime::saga::{
    DefinitionError, SagaContext, SagaDefinition, Step, StepCommand, StepRetry,
};
use serde::Serialize;

use super::inventory::{Inventory, InventoryCommand, StockLine, WAREHOUSE};
use super::payment::{Payment, PaymentCommand};
use super::{Order, OrderCommand, OrderEvent};

/// The saga's name: its streams, routes and metrics.
pub const FULFILMENT: &str = "fulfilment";

/// How patient the saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FulfilmentOptions {
    /// How long the payment may take to be captured (a review included) before the saga times
    /// out and undoes the reservation.
    pub payment_timeout: Duration,
    /// How each step and each compensation is retried.
    pub retry: StepRetry,
}

impl Default for FulfilmentOptions {
    fn default() -> Self {
        Self {
            payment_timeout: Duration::from_secs(60),
            retry: StepRetry::new(3, Duration::from_millis(500)),
        }
    }
}

/// What the saga needs of the submitted order (the payload of `OrderSubmitted`).
struct Submitted {
    customer: String,
    lines: Vec<StockLine>,
    total_cents: u64,
}

fn submitted(context: &SagaContext<'_>) -> Result<Submitted, String> {
    match serde_json::from_value::<OrderEvent>(context.input.clone()) {
        Ok(OrderEvent::OrderSubmitted {
            customer,
            lines,
            total_cents,
        }) => Ok(Submitted {
            customer,
            lines: lines
                .into_iter()
                .map(|l| StockLine {
                    sku: l.sku,
                    quantity: l.quantity,
                })
                .collect(),
            total_cents,
        }),
        Ok(other) => Err(format!("started by {other:?}, not OrderSubmitted")),
        Err(err) => Err(format!("the start event does not decode: {err}")),
    }
}

/// A command of aggregate `aggregate` as the command path takes it.
fn command(aggregate: &str, id: &str, command: &impl Serialize) -> Result<StepCommand, String> {
    let json = serde_json::to_value(command).map_err(|err| err.to_string())?;
    Ok(StepCommand::new(aggregate, id, json))
}

/// The saga, version 1: reserve → charge (waits for the capture, at most the payment timeout)
/// → confirm; release and refund undo the first two.
pub fn fulfilment(options: FulfilmentOptions) -> Result<SagaDefinition, DefinitionError> {
    let order = Order::TYPE;
    let inventory = Inventory::TYPE;
    let payment = Payment::TYPE;
    SagaDefinition::builder(FULFILMENT, 1)
        // One instance per order: the correlation key is the order id, which is also the id of
        // its payment, so the payment's events find the instance.
        .starts_on(order, "OrderSubmitted")
        .step(
            Step::new("reserve-stock", move |c| {
                let order = submitted(c)?;
                command(
                    inventory,
                    WAREHOUSE,
                    &InventoryCommand::ReserveStock {
                        order: c.correlation_key.to_owned(),
                        lines: order.lines,
                    },
                )
            })
            .compensate(move |c| {
                command(
                    inventory,
                    WAREHOUSE,
                    &InventoryCommand::ReleaseStock {
                        order: c.correlation_key.to_owned(),
                    },
                )
            })
            .retry(options.retry)
            .compensation_retry(options.retry),
        )
        .step(
            Step::new("charge-payment", move |c| {
                let order = submitted(c)?;
                command(
                    payment,
                    c.correlation_key,
                    &PaymentCommand::ChargePayment {
                        customer: order.customer,
                        amount_cents: order.total_cents,
                    },
                )
            })
            .awaits("PaymentCaptured")
            .fails_on("PaymentRejected")
            .timeout(options.payment_timeout)
            .compensate(move |c| {
                command(payment, c.correlation_key, &PaymentCommand::RefundPayment)
            })
            .retry(options.retry)
            .compensation_retry(options.retry),
        )
        .step(
            Step::new("confirm-order", move |c| {
                command(order, c.correlation_key, &OrderCommand::ConfirmOrder)
            })
            .retry(options.retry),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nexus_runtime::saga::{SagaStatus, StepRetry, StepStatus};
    use nexus_runtime::testing::SagaTest;

    use super::super::OrderLine;
    use super::super::inventory::InventoryEvent;
    use super::super::payment::PaymentEvent;
    use super::*;

    /// Fast retries and a short payment timeout, so a scenario takes a moment.
    fn saga() -> SagaTest {
        let definition = fulfilment(FulfilmentOptions {
            payment_timeout: Duration::from_millis(500),
            retry: StepRetry::new(2, Duration::from_millis(10)),
        })
        .expect("the fulfilment saga is valid");
        SagaTest::new(definition)
            .aggregate::<Order>()
            .aggregate::<Inventory>()
            .aggregate::<Payment>()
            .given::<Inventory>(WAREHOUSE, [stocked()])
    }

    /// An order of `quantity` teas at `unit_price_cents`, placed and not yet submitted.
    fn placed(quantity: u32, unit_price_cents: u64) -> [OrderEvent; 2] {
        [
            OrderEvent::OrderPlaced {
                customer: "ada".into(),
            },
            OrderEvent::ItemAdded {
                sku: "tea".into(),
                quantity,
                unit_price_cents,
            },
        ]
    }

    fn stocked() -> InventoryEvent {
        InventoryEvent::StockAdded {
            sku: "tea".into(),
            quantity: 10,
        }
    }

    fn authorized(amount_cents: u64) -> PaymentEvent {
        PaymentEvent::PaymentAuthorized {
            customer: "ada".into(),
            amount_cents,
        }
    }

    fn tea(quantity: u32) -> Vec<StockLine> {
        vec![StockLine {
            sku: "tea".into(),
            quantity,
        }]
    }

    fn reserved(quantity: u32) -> InventoryEvent {
        InventoryEvent::StockReserved {
            order: "o-1".into(),
            lines: tea(quantity),
        }
    }

    fn submitted(quantity: u32, unit_price_cents: u64) -> OrderEvent {
        OrderEvent::OrderSubmitted {
            customer: "ada".into(),
            lines: vec![OrderLine {
                sku: "tea".into(),
                quantity,
                unit_price_cents,
            }],
            total_cents: u64::from(quantity) * unit_price_cents,
        }
    }

    #[tokio::test]
    async fn a_submitted_order_is_reserved_charged_and_confirmed() {
        let scenario = saga()
            .given::<Order>("o-1", placed(2, 450))
            .when::<Order>("o-1", OrderCommand::SubmitOrder)
            .await;
        let state = scenario.then_status("o-1", SagaStatus::Completed).await;
        assert!(state.steps.iter().all(|s| s.attempts == 1), "{state:#?}");
        scenario
            .then_events::<Inventory>(WAREHOUSE, [stocked(), reserved(2)])
            .await;
        scenario
            .then_events::<Payment>(
                "o-1",
                [
                    authorized(900),
                    PaymentEvent::PaymentCaptured { amount_cents: 900 },
                ],
            )
            .await;
        let [placed, item] = placed(2, 450);
        scenario
            .then_events::<Order>(
                "o-1",
                [
                    placed,
                    item,
                    submitted(2, 450),
                    OrderEvent::OrderConfirmed { total_cents: 900 },
                ],
            )
            .await;
        scenario.stop().await;
    }

    #[tokio::test]
    async fn a_declined_charge_releases_the_stock() {
        // 2 × 300 € is above the charge limit.
        let scenario = saga()
            .given::<Order>("o-1", placed(2, 30_000))
            .when::<Order>("o-1", OrderCommand::SubmitOrder)
            .await;
        let state = scenario.then_status("o-1", SagaStatus::Compensated).await;
        assert_eq!(state.steps[1].attempts, 2, "the charge was tried twice");
        assert!(
            state.steps[1]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("declined")),
            "{state:#?}"
        );
        assert_eq!(scenario.compensated("o-1").await, ["reserve-stock"]);
        scenario.then_events::<Payment>("o-1", []).await;
        let released = InventoryEvent::StockReleased {
            order: "o-1".into(),
            lines: tea(2),
        };
        scenario
            .then_events::<Inventory>(WAREHOUSE, [stocked(), reserved(2), released])
            .await;
        scenario.stop().await;
    }

    #[tokio::test]
    async fn a_payment_not_captured_in_time_is_voided_and_the_stock_released() {
        // 1 × 300 € waits for a review that never comes.
        let scenario = saga()
            .given::<Order>("o-1", placed(1, 30_000))
            .when::<Order>("o-1", OrderCommand::SubmitOrder)
            .await;
        let state = scenario.then_status("o-1", SagaStatus::TimedOut).await;
        assert!(state.timed_out);
        // Undone in reverse order of completion: the payment's hold, then the reservation.
        assert_eq!(
            scenario.compensated("o-1").await,
            ["charge-payment", "reserve-stock"]
        );
        scenario
            .then_events::<Payment>("o-1", [authorized(30_000), PaymentEvent::PaymentVoided])
            .await;
        // A capture after the timeout is refused: the hold is gone.
        let late = scenario
            .and::<Payment>("o-1", PaymentCommand::CapturePayment)
            .await;
        assert!(late.is_err(), "{late:?}");
        scenario.stop().await;
    }

    #[tokio::test]
    async fn a_payment_rejected_in_review_releases_the_stock() {
        let scenario = saga()
            .given::<Order>("o-1", placed(1, 30_000))
            .when::<Order>("o-1", OrderCommand::SubmitOrder)
            .await;
        scenario
            .wait_for("o-1", "the payment review", |s| {
                s.steps[1].status == StepStatus::Waiting
            })
            .await;
        scenario
            .and::<Payment>(
                "o-1",
                PaymentCommand::RejectPayment {
                    reason: "card reported stolen".into(),
                },
            )
            .await
            .expect("the review rejects the payment");
        let state = scenario.then_status("o-1", SagaStatus::Compensated).await;
        assert!(
            state.steps[1]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("PaymentRejected")),
            "{state:#?}"
        );
        // A rejected payment took nothing: only the reservation is undone.
        assert_eq!(scenario.compensated("o-1").await, ["reserve-stock"]);
        scenario
            .then_events::<Payment>(
                "o-1",
                [
                    authorized(30_000),
                    PaymentEvent::PaymentRejected {
                        reason: "card reported stolen".into(),
                    },
                ],
            )
            .await;
        scenario.stop().await;
    }

    #[tokio::test]
    async fn a_release_refused_during_a_stock_count_leaves_the_saga_stuck_until_retried() {
        let scenario = saga()
            .given::<Inventory>(WAREHOUSE, [InventoryEvent::StockCountStarted])
            .given::<Order>("o-1", placed(2, 30_000))
            .when::<Order>("o-1", OrderCommand::SubmitOrder)
            .await;
        let stuck = scenario.then_status("o-1", SagaStatus::Stuck).await;
        assert!(
            stuck
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("stock count")),
            "{stuck:#?}"
        );
        scenario
            .and::<Inventory>(WAREHOUSE, InventoryCommand::FinishStockCount)
            .await
            .expect("the count finishes");
        scenario
            .reader()
            .retry(&stuck.id, Some("operator".into()))
            .await
            .expect("a stuck saga can be retried");
        scenario.then_status("o-1", SagaStatus::Compensated).await;
        assert_eq!(scenario.compensated("o-1").await, ["reserve-stock"]);
        scenario.stop().await;
    }
}
