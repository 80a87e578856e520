//! What `nexus up --demo` adds beside the sample orders: the `shipments` projection, whose
//! simulated courier can be taken down, so dead letters and their redrive can be tried.
//!
//! `shipments` books a courier for every confirmed order and keeps one document per shipment.
//! While the file `courier-down` exists in the demo folder (`<data-dir>/demo/`), the courier
//! "does not answer": the event fails, retries, and lands in the dead-letter queue. Remove the
//! file and redrive the letter (`nexus dlq redrive shipments --all`, or the console's
//! Dead letters page) and the shipment appears. Only `--demo` runs it; it is not part of the
//! sample project `nexus new` generates.
//!
//! The demo also stocks the warehouse and submits its orders, so the order-fulfilment saga runs
//! for each (`/sagas/fulfilment`). A stuck saga, one an operator must retry, is made by hand:
//! start a stock count (`POST /commands/inventory/main {"type":"StartStockCount"}`), submit an
//! order above the charge limit (500 €: say one `espresso` at 60000 cents): its charge is
//! declined, and releasing its stock is refused while the count runs, so after the release's
//! retries the saga is `stuck`. Finish the count (`FinishStockCount`) and retry it
//! (`POST /sagas/fulfilment/{id}/retry` with a `dlq:admin` token, `nexus saga retry`, or the
//! console): it ends `compensated`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use nexus_runtime::RecordedEvent;
use nexus_runtime::projection::{
    Changes, Projection, ProjectionError, RetrySchedule, RunnerOptions,
};
use serde_json::json;

use crate::events::{FulfilmentOptions, Order, OrderEvent};
use nexus_runtime::saga::StepRetry;

/// The file whose presence takes the simulated courier down.
pub(crate) const COURIER_DOWN: &str = "courier-down";

/// Shipments of confirmed orders, booked with a simulated courier.
#[derive(Debug, Clone)]
pub(crate) struct Shipments {
    folder: PathBuf,
}

impl Shipments {
    /// The projection's name.
    pub(crate) const NAME: &'static str = "shipments";
    /// One document per confirmed order: `order`, `total_cents`, `courier`, `confirmed_at`.
    pub(crate) const COLLECTION: &'static str = "shipments";

    /// A projection whose courier is down while `folder/courier-down` exists.
    pub(crate) fn new(folder: PathBuf) -> Self {
        Self { folder }
    }

    fn courier_down(&self) -> bool {
        self.folder.join(COURIER_DOWN).exists()
    }
}

/// Under `--demo` failed events retry quickly (0.2 s doubling to 1 s, 3 retries), so a dead
/// letter shows up within about 2 s instead of the default schedule's minutes.
pub(crate) fn runner_options() -> RunnerOptions {
    RunnerOptions {
        retry: RetrySchedule {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(1),
            max_retries: 3,
        },
        ..RunnerOptions::default()
    }
}

/// The products the demo orders, stocked when it starts.
pub(crate) const SKUS: [&str; 2] = ["espresso", "croissant"];
/// How many of each it stocks.
pub(crate) const RESTOCK: u32 = 1_000;

/// Under `--demo` the saga retries quickly (3 attempts, 0.2 s doubling) and a payment under
/// review times out after 20 s, so a failed or stuck saga shows within seconds.
pub(crate) fn fulfilment_options() -> FulfilmentOptions {
    FulfilmentOptions {
        payment_timeout: Duration::from_secs(20),
        retry: StepRetry::new(3, Duration::from_millis(200)),
    }
}

#[async_trait]
impl Projection for Shipments {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn handles(&self, event: &RecordedEvent) -> bool {
        event.stream.aggregate_type() == <Order as nexus_runtime::Aggregate>::TYPE
            && event.event_type == "OrderConfirmed"
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        changes: &mut Changes<'_>,
    ) -> Result<(), ProjectionError> {
        let OrderEvent::OrderConfirmed { total_cents } = event.decode::<OrderEvent>()? else {
            return Ok(());
        };
        if self.courier_down() {
            return Err(ProjectionError::new(format!(
                "the courier service does not answer (demo: remove {} to bring it back)",
                self.folder.join(COURIER_DOWN).display()
            )));
        }
        let order = event.stream.aggregate_id();
        changes.put(
            Self::COLLECTION,
            order,
            json!({
                "order": order,
                "total_cents": total_cents,
                "courier": "demo-courier",
                "confirmed_at": event.recorded_at,
            }),
        );
        Ok(())
    }
}
