//! `nexus up`: runs the reference system (the orders sample) on the embedded default.
//!
//! It drives sample orders through the command path, tails the store's change-data-capture
//! stream as the bus relay would, and lets the snapshot manager snapshot busy orders.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::store::subscribe;
use nexus_runtime::{
    CommandError, CommandHandler, EventStore, Metadata, Repository, SnapshotManager,
    SnapshotPolicy, SnapshotStore,
};

use super::Outcome;
use crate::output;
use crate::sample::{Order, OrderCommand};

/// Where the reference system keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StoreKind {
    /// A SQLite file under `--data-dir` (no set-up).
    Embedded,
    /// PostgreSQL at `--url`.
    Postgres,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The event store backend.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    store: StoreKind,
    /// PostgreSQL URL for `--store postgres`.
    #[arg(long, env = "NEXUS_POSTGRES_URL")]
    url: Option<String>,
    /// Folder of the embedded store's files.
    #[arg(long, default_value = ".nexus/data")]
    data_dir: PathBuf,
    /// How many sample orders to drive through the command path.
    #[arg(long, default_value_t = 3)]
    orders: u32,
}

pub(crate) fn run(args: UpArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(up(args))
}

async fn open(
    args: &UpArgs,
) -> anyhow::Result<(Arc<dyn EventStore>, Arc<dyn SnapshotStore>, String)> {
    match args.store {
        StoreKind::Embedded => {
            let path = args.data_dir.join("events.db");
            let store = EmbeddedStore::open(&path).with_context(|| {
                format!("failed to open the embedded store at {}", path.display())
            })?;
            let snapshots = EmbeddedSnapshotStore::open(EmbeddedSnapshotStore::path_beside(&path))
                .context("failed to open the embedded snapshot store")?;
            Ok((
                Arc::new(store),
                Arc::new(snapshots),
                path.display().to_string(),
            ))
        }
        StoreKind::Postgres => {
            use nexus_runtime::snapshot::postgres::PostgresSnapshotStore;
            use nexus_runtime::store::postgres::PostgresStore;
            let url = args
                .url
                .as_deref()
                .context("--store postgres needs --url (or NEXUS_POSTGRES_URL)")?;
            let store = PostgresStore::connect(url)
                .await
                .context("failed to open the PostgreSQL store")?;
            let snapshots = PostgresSnapshotStore::with_pool(store.pool().clone(), store.schema());
            Ok((Arc::new(store), Arc::new(snapshots), url.to_owned()))
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<Outcome> {
    let (store, snapshots, location) = open(&args).await?;
    output::line(&format!("nexus up: event store at {location}"))?;
    let head = store.head().await.context("failed to read the log head")?;

    // The change-data-capture tail: what the bus relay publishes, after commit.
    let tail = {
        let mut subscription = subscribe(Arc::clone(&store), head);
        tokio::spawn(async move {
            let mut seen = 0u64;
            while let Ok(event) = subscription.next().await {
                seen += 1;
                let line = format!(
                    "  cdc  #{:<5} {:<24} v{:<3} {}",
                    event.position,
                    event.stream.to_string(),
                    event.version,
                    event.event_type
                );
                if output::line(&line).is_err() {
                    break;
                }
            }
            seen
        })
    };
    let policy = SnapshotPolicy {
        every_events: Some(3),
        ..SnapshotPolicy::default()
    };
    let manager = SnapshotManager::new(Arc::clone(&store), Arc::clone(&snapshots))
        .register::<Order>(policy)
        .spawn();
    let repository =
        Repository::<Order>::new(Arc::clone(&store)).with_snapshots(Arc::clone(&snapshots));
    let handler = CommandHandler::new(repository.clone());

    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let mut appended = 0usize;
    for n in 0..args.orders {
        let id = format!("{}-{n}", &run_id[run_id.len() - 8..]);
        let metadata = Metadata::correlated(format!("up-{id}"));
        let mut script = vec![
            OrderCommand::PlaceOrder {
                customer: format!("customer-{n}"),
            },
            OrderCommand::AddItem {
                sku: "espresso".into(),
                quantity: 2,
                unit_price_cents: 250,
            },
            OrderCommand::AddItem {
                sku: "croissant".into(),
                quantity: 1,
                unit_price_cents: 320,
            },
        ];
        script.push(if n % 3 == 2 {
            OrderCommand::CancelOrder {
                reason: "customer left".into(),
            }
        } else {
            OrderCommand::ConfirmOrder
        });
        // A command the order must refuse, to show a domain error.
        script.push(OrderCommand::AddItem {
            sku: "late".into(),
            quantity: 1,
            unit_price_cents: 100,
        });
        for command in &script {
            match handler.execute(&id, command, metadata.clone()).await {
                Ok(done) => {
                    appended += done.event_ids.len();
                    output::line(&format!(
                        "  cmd  order-{id:<18} {:<14} -> version {}",
                        command_name(command),
                        done.version
                    ))?;
                }
                Err(CommandError::Rejected(reason)) => output::line(&format!(
                    "  cmd  order-{id:<18} {:<14} -> rejected: {reason}",
                    command_name(command)
                ))?,
                Err(other) => return Err(other).context("the command path failed"),
            }
        }
        // A caller deciding on a stale version gets a conflict, never a lost write.
        if n == 0 {
            let stale = handler
                .execute_at(&id, 1, &OrderCommand::ConfirmOrder, metadata.clone())
                .await;
            if let Err(err @ CommandError::Conflict { .. }) = stale {
                output::line(&format!("  cmd  order-{id:<18} ConfirmOrder@1  -> {err}"))?;
            }
        }
        let loaded = repository
            .load(&id)
            .await
            .context("failed to load an order")?;
        output::line(&format!(
            "  load order-{id:<18} {:?}, {} lines, total {} cents (snapshot at {:?}, {} events replayed)",
            loaded.state.status,
            loaded.state.lines.len(),
            loaded.state.total_cents(),
            loaded.snapshot_version,
            loaded.events_applied
        ))?;
    }

    // Let the tail and the snapshot manager catch up before stopping cleanly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snapshots_taken = manager.snapshots_taken();
    manager.stop().await;
    tail.abort();
    output::line(&format!(
        "nexus up: {appended} events appended for {} orders, {snapshots_taken} snapshots taken",
        args.orders
    ))?;
    Ok(Outcome::Clean)
}

fn command_name(command: &OrderCommand) -> &'static str {
    match command {
        OrderCommand::PlaceOrder { .. } => "PlaceOrder",
        OrderCommand::AddItem { .. } => "AddItem",
        OrderCommand::ConfirmOrder => "ConfirmOrder",
        OrderCommand::CancelOrder { .. } => "CancelOrder",
    }
}
