//! `nexus up`: runs the reference system (the orders sample) until Ctrl-C.
//!
//! The command service with the order-fulfilment saga, the query dashboard with its projection,
//! the snapshot manager and the schema registry run in one process, on the embedded store and the in-process bus by default
//! (`--store postgres --bus nats` for the real servers). The two services share nothing but
//! the bus, exactly as in a project `nexus new` generates: the sample domain is the same code.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use clap::{Args, ValueEnum};
use nexus_runtime::bus::EventBus;
use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::bus::relay::RelayHandle;
use nexus_runtime::http::access::{AccessControl, OriginPolicy};
use nexus_runtime::http::{
    CommandService, Console, NotifyOptions, QueryDashboard, SagaApi, TemporalApi, serve_until,
    shutdown_signal,
};
use nexus_runtime::notify::NotificationHub;
use nexus_runtime::projection::store::audit::DEFAULT_SEGMENT;
use nexus_runtime::projection::{
    AuditRetention, HealthRegistry, ProjectionHandle, ProjectionRunner, ReadModels, RunnerOptions,
};
use nexus_runtime::saga::{SagaCommands, SagaHandle, SagaRunner};
use nexus_runtime::snapshot::SnapshotManagerHandle;
use nexus_runtime::snapshot::embedded::EmbeddedSnapshotStore;
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{
    CommandHandler, EventStore, Repository, SnapshotManager, SnapshotPolicy, SnapshotStore,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Outcome;
use super::new::{BusKind, StoreKind};
use crate::events::{FulfilmentOptions, Inventory, Order, Payment};
use crate::http::{self, Http};
use crate::output;
use crate::projection::OrderSummaries;

/// Where projections keep their read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReadModelKind {
    /// One SQLite file per projection under `--data-dir`.
    Sqlite,
    /// Tables in the schema `nexus_read_models` of the PostgreSQL at `--url`.
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
    /// Where the projections keep their read models (PostgreSQL needs `--url`).
    #[arg(long, value_enum, default_value_t = ReadModelKind::Sqlite)]
    read_models: ReadModelKind,
    /// The event bus.
    #[arg(long, value_enum, default_value_t = BusKind::InProcess)]
    bus: BusKind,
    /// NATS URL for `--bus nats`.
    #[arg(long, env = "NEXUS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// JetStream stream of the events with `--bus nats` (subjects `nexus.<name in lower case>.>`).
    #[arg(long, default_value = "NEXUS_EVENTS")]
    nats_stream: String,
    /// Folder of the embedded store, read models, checkpoints and registry.
    #[arg(long, default_value = ".nexus/data")]
    data_dir: PathBuf,
    /// Address the services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the command service (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    command_port: u16,
    /// Port of the query dashboard (0 picks a free one).
    #[arg(long, default_value_t = 8081)]
    query_port: u16,
    /// Port of the schema registry (0 picks a free one).
    #[arg(long, default_value_t = 8082)]
    registry_port: u16,
    /// Do not start the schema registry.
    #[arg(long)]
    no_registry: bool,
    /// Send a stream of sample commands through the command service and show the read
    /// models changing.
    #[arg(long)]
    demo: bool,
    /// With `--demo`: stop sending after this many orders (default: until Ctrl-C).
    #[arg(long, requires = "demo")]
    demo_orders: Option<u32>,
    /// A tracing UI's trace page for the console to link events to, with `{trace_id}` where the
    /// trace id goes (for example `http://127.0.0.1:16686/trace/{trace_id}` for Jaeger).
    #[arg(long, value_name = "URL")]
    trace_links: Option<String>,
    /// Remove the projections' read-model audit entries older than this age (90s, 30m, 2h, 7d,
    /// 2w), whole segments only, each removal recorded in the chain (default: keep them until
    /// `nexus audit prune`).
    #[arg(long, value_name = "AGE", value_parser = audit_age)]
    audit_retention: Option<Duration>,
    /// With `--audit-retention`: audit entries per segment; only whole segments are removed.
    #[arg(long, value_name = "ENTRIES", default_value_t = DEFAULT_SEGMENT,
          value_parser = clap::value_parser!(u64).range(1..))]
    audit_segment: u64,
    /// Print the service URLs (and demo steps) as JSON lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    origins: super::auth::OriginArgs,
    #[command(flatten)]
    auth: super::auth::AuthArgs,
}

fn audit_age(text: &str) -> Result<Duration, String> {
    super::replay::parse_age(text)
        .filter(|age| !age.is_zero())
        .ok_or_else(|| format!("`{text}` is not an age: give one like 90s, 30m, 2h, 7d or 2w"))
}

/// The options of `up`'s projection runners: quick retries under `--demo`, and the audit
/// retention, pruning as often as its age and at least hourly.
fn runner_options(args: &UpArgs) -> RunnerOptions {
    let mut options = if args.demo {
        super::up_demo::runner_options()
    } else {
        RunnerOptions::default()
    };
    options.audit_retention = args.audit_retention.map(|keep| AuditRetention {
        keep,
        segment: args.audit_segment,
        every: keep.min(Duration::from_secs(3600)),
    });
    options
}

pub(crate) fn run(args: UpArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(up(args))
}

/// The event and snapshot stores, and a description for people.
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
            let description = format!("embedded store at {}", path.display());
            Ok((Arc::new(store), Arc::new(snapshots), description))
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
            let description = format!("PostgreSQL store at {}", output::redact_url(url));
            Ok((Arc::new(store), Arc::new(snapshots), description))
        }
    }
}

/// The bus the projections read, and the relay feeding it when it is NATS.
async fn connect_bus(
    args: &UpArgs,
    store: &Arc<dyn EventStore>,
) -> anyhow::Result<(Arc<dyn EventBus>, Option<RelayHandle>)> {
    match args.bus {
        BusKind::InProcess => Ok((Arc::new(InProcessBus::new(Arc::clone(store))), None)),
        BusKind::Nats => {
            use nexus_runtime::bus::nats::{JetStreamBus, NatsOptions};
            use nexus_runtime::bus::relay::Relay;
            use nexus_runtime::checkpoint::EmbeddedCheckpoints;
            let bus =
                JetStreamBus::connect(&args.nats_url, NatsOptions::for_stream(&args.nats_stream))
                    .await
                    .with_context(|| {
                        format!(
                            "failed to connect to NATS at {}",
                            output::redact_url(&args.nats_url)
                        )
                    })?;
            let checkpoints = EmbeddedCheckpoints::open(args.data_dir.join("relay.db"))
                .context("failed to open the relay's checkpoint")?;
            let relay = Relay::new("up", Arc::clone(store), bus.clone(), Arc::new(checkpoints));
            Ok((Arc::new(bus), Some(relay.spawn())))
        }
    }
}

/// The temporal API over a read-only history of the store, auditing into `audit.db` in the
/// data folder (or the schema `nexus_audit` on PostgreSQL).
async fn temporal_api(
    args: &UpArgs,
    snapshots: &Arc<dyn SnapshotStore>,
    access: &AccessControl,
) -> anyhow::Result<TemporalApi> {
    let api = match args.store {
        StoreKind::Embedded => TemporalApi::embedded(
            args.data_dir.join("events.db"),
            args.data_dir.join("audit.db"),
            access.clone(),
        )?,
        StoreKind::Postgres => {
            let url = args
                .url
                .as_deref()
                .context("--store postgres needs --url")?;
            TemporalApi::postgres(url, "nexus", "nexus_audit", access.clone()).await?
        }
    };
    Ok(api
        .with_snapshots(Arc::clone(snapshots))
        .aggregate::<Order>())
}

/// The order-fulfilment saga on its own projection runner over `bus` (its status read model is
/// `saga-fulfilment` beside the others). Under `--demo` its retries are quick and a payment
/// under review times out after 20 s, so failures show within seconds.
async fn fulfilment_saga(
    args: &UpArgs,
    store: &Arc<dyn EventStore>,
    snapshots: &Arc<dyn SnapshotStore>,
    bus: Arc<dyn EventBus>,
    read_models: &ReadModels,
) -> anyhow::Result<SagaHandle> {
    let commands = SagaCommands::new()
        .handler(CommandHandler::new(
            Repository::<Order>::new(Arc::clone(store)).with_snapshots(Arc::clone(snapshots)),
        ))
        .handler(CommandHandler::new(
            Repository::<Inventory>::new(Arc::clone(store)).with_snapshots(Arc::clone(snapshots)),
        ))
        .handler(CommandHandler::new(
            Repository::<Payment>::new(Arc::clone(store)).with_snapshots(Arc::clone(snapshots)),
        ));
    let projections =
        ProjectionRunner::with_read_models(Arc::clone(store), bus, read_models.clone())
            .with_options(runner_options(args));
    let options = if args.demo {
        super::up_demo::fulfilment_options()
    } else {
        FulfilmentOptions::default()
    };
    let definition = crate::events::fulfilment(options)?;
    SagaRunner::new(Arc::clone(store), commands, projections)
        .spawn(vec![definition])
        .await
        .context("failed to start the fulfilment saga")
}

/// Binds `port` on the configured host, saying which service wanted it when that fails.
async fn bind(args: &UpArgs, port: u16, service: &str, flag: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(args.host, port);
    nexus_runtime::http::listen(addr).await.with_context(|| {
        format!("failed to listen on {addr} for the {service}; pick another port with {flag} (0 picks a free one)")
    })
}

/// Flags that contradict each other fail before anything is created on disk.
fn validate(args: &UpArgs) -> anyhow::Result<()> {
    if let Some(template) = &args.trace_links {
        anyhow::ensure!(
            template.contains("{trace_id}")
                && (template.starts_with("http://") || template.starts_with("https://")),
            "--trace-links must be an http(s) URL with `{{trace_id}}` where the trace id goes"
        );
    }
    if args.url.is_none() {
        if matches!(args.store, StoreKind::Postgres) {
            anyhow::bail!("--store postgres needs --url (or NEXUS_POSTGRES_URL)");
        }
        if matches!(args.read_models, ReadModelKind::Postgres) {
            anyhow::bail!("--read-models postgres needs --url (or NEXUS_POSTGRES_URL)");
        }
    }
    Ok(())
}

/// The services' sockets, bound before anything starts so that a port in use fails first.
struct Listeners {
    command: TcpListener,
    query: TcpListener,
    registry: Option<TcpListener>,
}

impl Listeners {
    async fn bind(args: &UpArgs) -> anyhow::Result<Self> {
        let command = bind(args, args.command_port, "command service", "--command-port").await?;
        let query = bind(args, args.query_port, "query dashboard", "--query-port").await?;
        let registry = if args.no_registry {
            None
        } else {
            let registry = bind(
                args,
                args.registry_port,
                "schema registry",
                "--registry-port",
            );
            Some(registry.await?)
        };
        Ok(Self {
            command,
            query,
            registry,
        })
    }
}

/// Access: `--auth FILE`, else a development key created once in the data folder.
async fn access_control(args: &UpArgs) -> anyhow::Result<AccessControl> {
    let dev_key = super::auth::dev_key_path(&args.data_dir);
    if args.auth.auth.is_none() {
        nexus_runtime::http::access::ensure_secret_file(&dev_key).with_context(|| {
            format!("failed to create the development key {}", dev_key.display())
        })?;
    }
    super::auth::access_for(
        &args.auth,
        SocketAddr::new(args.host, 0),
        Some(super::auth::dev_config(&dev_key)),
    )
    .await
}

/// Snapshots of the command side's aggregates, taken in the background every 100 events.
fn snapshot_manager(
    store: &Arc<dyn EventStore>,
    snapshots: &Arc<dyn SnapshotStore>,
) -> SnapshotManagerHandle {
    let every_100 = || SnapshotPolicy {
        every_events: Some(100),
        ..SnapshotPolicy::default()
    };
    SnapshotManager::new(Arc::clone(store), Arc::clone(snapshots))
        .register::<Order>(every_100())
        // The warehouse's stream grows with every order: its snapshots matter most.
        .register::<Inventory>(every_100())
        .spawn()
}

/// Where the projections (and the saga's status documents) keep their read models.
async fn open_read_models(args: &UpArgs) -> anyhow::Result<ReadModels> {
    match args.read_models {
        ReadModelKind::Sqlite => Ok(ReadModels::sqlite(args.data_dir.join("read-models"))),
        ReadModelKind::Postgres => {
            let url = args
                .url
                .as_deref()
                .context("--read-models postgres needs --url (or NEXUS_POSTGRES_URL)")?;
            ReadModels::postgres(url, ReadModels::DEFAULT_POSTGRES_SCHEMA)
                .await
                .context("failed to open the PostgreSQL read models")
        }
    }
}

/// The origins the command service and the registry allow: the configured ones, and the
/// console's, which the dashboard at `query_addr` serves and which calls both from there (its
/// pages write and read those two, nothing else changes).
fn service_origins(args: &UpArgs, query_addr: SocketAddr, base: OriginPolicy) -> OriginPolicy {
    console_origins(query_addr)
        .iter()
        .fold(args.origins.policy(base), OriginPolicy::allow_origin)
}

/// The command service's router: the aggregates, the temporal API's command-side routes and
/// `/sagas/...`, which serves the fulfilment saga's instances.
fn command_router(
    args: &UpArgs,
    running: &Running,
    access: &AccessControl,
    temporal: &TemporalApi,
    query_addr: SocketAddr,
) -> Router {
    let saga_api = SagaApi::new([running.sagas.reader().clone()], access.clone());
    CommandService::new(Arc::clone(&running.store))
        .with_snapshots(Arc::clone(&running.snapshots))
        .with_access(access.clone())
        .aggregate::<Order>()
        .aggregate::<Inventory>()
        .aggregate::<Payment>()
        .with_routes(temporal.command_routes(), temporal.command_openapi())
        .with_routes(saga_api.routes(), saga_api.openapi_paths())
        .with_origin_policy(service_origins(args, query_addr, OriginPolicy::new()))
        .router()
}

/// The query side: the projections read the bus, never the command service, and each commit
/// notifies the dashboard's WebSocket and SSE subscribers. Under `--demo` a second projection
/// (shipments) runs beside the orders.
struct QuerySide {
    health: HealthRegistry,
    notifications: NotificationHub,
    orders: ProjectionHandle,
    shipments: Option<ProjectionHandle>,
}

impl QuerySide {
    fn spawn(
        args: &UpArgs,
        store: &Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
        read_models: ReadModels,
    ) -> anyhow::Result<Self> {
        let notifications = NotificationHub::default();
        let runner = ProjectionRunner::with_read_models(Arc::clone(store), bus, read_models)
            .with_notifications(notifications.clone())
            .with_options(runner_options(args));
        let orders = runner
            .spawn(OrderSummaries)
            .context("failed to open the orders read model")?;
        let shipments = if args.demo {
            let folder = args.data_dir.join("demo");
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("failed to create {}", folder.display()))?;
            let shipments = runner
                .spawn(super::up_demo::Shipments::new(folder))
                .context("failed to open the shipments read model")?;
            Some(shipments)
        } else {
            None
        };
        Ok(Self {
            health: runner.health(),
            notifications,
            orders,
            shipments,
        })
    }

    /// The query dashboard's router: the read models, the console (pointed at the command
    /// service and the registry), live notifications and the temporal API's read routes.
    fn dashboard(
        &self,
        args: &UpArgs,
        access: &AccessControl,
        temporal: &TemporalApi,
        command_url: &str,
        registry_url: Option<&str>,
    ) -> Router {
        let mut console = Console::new().command_service(command_url);
        if let Some(url) = registry_url {
            console = console.registry(url);
        }
        if let Some(template) = &args.trace_links {
            console = console.trace_links(template);
        }
        let mut dashboard = QueryDashboard::new(self.health.clone())
            .with_access(access.clone())
            .read_model(&self.orders)
            .with_console(console)
            .with_notifications(self.notifications.clone(), NotifyOptions::default());
        if let Some(shipments) = &self.shipments {
            dashboard = dashboard.read_model(shipments);
        }
        dashboard
            .with_routes(temporal.dashboard_routes(), temporal.dashboard_openapi())
            .with_origin_policy(args.origins.policy(OriginPolicy::new()))
            .router()
    }
}

/// A server task and the name of its service.
type Server = (&'static str, JoinHandle<std::io::Result<()>>);

/// Resolves once `stop` has been sent.
async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Serves `router` on `listener` until `stopped` says so.
fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    stopped: &watch::Receiver<bool>,
) -> Server {
    let task = tokio::spawn(serve_until(
        listener,
        router,
        until_stopped(stopped.clone()),
    ));
    (name, task)
}

/// The schema registry on `listener`, keeping its schemas beside the event store (PostgreSQL
/// with `--store postgres`, else `registry.db` in the data folder).
async fn serve_registry(
    args: &UpArgs,
    listener: TcpListener,
    access: &AccessControl,
    query_addr: SocketAddr,
    stopped: &watch::Receiver<bool>,
) -> anyhow::Result<Server> {
    use nexus_schema_registry::server::{AppState, Options};
    let spec = match (&args.store, &args.url) {
        (StoreKind::Postgres, Some(url)) => url.clone(),
        _ => format!("sqlite:{}", args.data_dir.join("registry.db").display()),
    };
    let storage = super::registry::open_storage(&spec).await?;
    let options = Options {
        access: Some(access.clone()),
        origins: service_origins(args, query_addr, Options::default().origins),
        ..Options::default()
    };
    let state = AppState::new(storage, options);
    let task = tokio::spawn(nexus_schema_registry::server::serve(
        listener,
        state,
        until_stopped(stopped.clone()),
    ));
    Ok(("schema registry", task))
}

/// The event bus for people.
fn bus_description(args: &UpArgs) -> String {
    match args.bus {
        BusKind::InProcess => "in-process bus".to_owned(),
        BusKind::Nats => format!("NATS JetStream at {}", output::redact_url(&args.nats_url)),
    }
}

/// Everything `up` runs besides the servers, stopped in this order once they have stopped.
struct Running {
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    relay: Option<RelayHandle>,
    manager: SnapshotManagerHandle,
    sagas: SagaHandle,
}

/// What a run leaves behind, for the closing line.
struct Stopped {
    head: u64,
    checkpoint: Option<u64>,
    snapshots_taken: u64,
}

impl Running {
    /// Stops the relay, the saga, the projections (each commits what it has) and the snapshot
    /// manager, then reads where the log and the orders projection stand.
    async fn stop(self, query: QuerySide) -> Stopped {
        if let Some(relay) = self.relay {
            relay.stop().await;
        }
        self.sagas.stop().await;
        let checkpoint = query.orders.read_model().checkpoint().await.ok().flatten();
        query.orders.stop().await;
        if let Some(shipments) = query.shipments {
            shipments.stop().await;
        }
        let snapshots_taken = self.manager.snapshots_taken();
        self.manager.stop().await;
        let head = self
            .store
            .head()
            .await
            .map(|h| h.position)
            .unwrap_or_default();
        Stopped {
            head,
            checkpoint: checkpoint.map(|c| c.position),
            snapshots_taken,
        }
    }
}

impl Stopped {
    fn report(&self, json: bool) -> anyhow::Result<()> {
        let Stopped {
            head,
            checkpoint,
            snapshots_taken,
        } = self;
        if json {
            let summary = json!({
                "stopped": true,
                "events": head,
                "projection_position": checkpoint,
                "snapshots_taken": snapshots_taken,
            });
            return output::line(&summary.to_string());
        }
        output::line(&format!(
            "nexus up: stopped cleanly; the log holds {head} events, the orders projection is at {}, {snapshots_taken} snapshots taken this run",
            checkpoint.map_or_else(|| "the start".to_owned(), |c| format!("position {c}"))
        ))
    }
}

/// Waits for every server to finish its requests in flight, logging those that failed.
async fn join(servers: Vec<Server>) {
    for (name, server) in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "the {name} stopped with an error"),
            Err(err) => tracing::warn!(%err, "the {name} task failed"),
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<Outcome> {
    validate(&args)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("failed to create {}", args.data_dir.display()))?;
    let listeners = Listeners::bind(&args).await?;
    let access = access_control(&args).await?;
    let (store, snapshots, store_description) = open(&args).await?;
    let (bus, relay) = connect_bus(&args, &store).await?;
    let manager = snapshot_manager(&store, &snapshots);
    let read_models = open_read_models(&args).await?;
    let temporal = temporal_api(&args, &snapshots, &access)
        .await?
        .projection(Arc::new(OrderSummaries), read_models.clone());
    // The command side runs the order-fulfilment saga: fed from the bus like a projection, it
    // commands the aggregates through the command path.
    let sagas = fulfilment_saga(&args, &store, &snapshots, Arc::clone(&bus), &read_models).await?;
    let running = Running {
        manager,
        store,
        snapshots,
        relay,
        sagas,
    };
    let query = QuerySide::spawn(&args, &running.store, bus, read_models)?;

    let query_addr = listeners.query.local_addr()?;
    let command_url = format!("http://{}", listeners.command.local_addr()?);
    let query_url = format!("http://{query_addr}");
    let registry_url = match &listeners.registry {
        Some(listener) => Some(format!("http://{}", listener.local_addr()?)),
        None => None,
    };
    let commands = command_router(&args, &running, &access, &temporal, query_addr);
    let dashboard = query.dashboard(
        &args,
        &access,
        &temporal,
        &command_url,
        registry_url.as_deref(),
    );
    let (stop, stopped) = watch::channel(false);
    let mut servers = vec![
        serve("command service", listeners.command, commands, &stopped),
        serve("query dashboard", listeners.query, dashboard, &stopped),
    ];
    if let Some(listener) = listeners.registry {
        servers.push(serve_registry(&args, listener, &access, query_addr, &stopped).await?);
    }

    // The sample's event schemas, so producers, consumers and `nexus check --registry` find them.
    let registered = match &registry_url {
        Some(url) => Some(register_schemas(url).await),
        None => None,
    };
    announce(
        &args,
        &store_description,
        &bus_description(&args),
        &command_url,
        &query_url,
        registry_url.as_deref(),
        registered.as_ref(),
    )?;
    let demo = args.demo.then(|| {
        tokio::spawn(demo(
            command_url.clone(),
            query_url.clone(),
            args.demo_orders,
            args.json,
            stopped.clone(),
        ))
    });

    // Run until Ctrl-C or SIGTERM, or until a server fails.
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        failure = first_failure(&mut servers) => Some(failure),
    };
    if !args.json {
        output::line("nexus up: stopping (requests in flight finish, projections commit)")?;
    }
    let _ = stop.send(true);
    if let Some(demo) = demo {
        let _ = demo.await;
    }
    join(servers).await;
    running.stop(query).await.report(args.json)?;
    match failed {
        Some((name, message)) => Err(anyhow::anyhow!("the {name} failed: {message}")),
        None => Ok(Outcome::Clean),
    }
}

/// The origins the console's pages have when the dashboard listens on `addr`: that address,
/// and on loopback also the other loopback names a browser may be pointed at.
fn console_origins(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut origins = vec![format!("http://{addr}")];
    if addr.ip().is_loopback() {
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            let origin = format!("http://{host}:{port}");
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
    }
    origins
}

/// Waits for the first server task that ends on its own (which only happens on failure).
async fn first_failure(servers: &mut [Server]) -> (String, String) {
    let (result, index, _) =
        futures::future::select_all(servers.iter_mut().map(|(_, task)| task)).await;
    let name = servers[index].0.to_owned();
    let message = match result {
        Ok(Ok(())) => "it stopped unexpectedly".to_owned(),
        Ok(Err(err)) => err.to_string(),
        Err(err) => err.to_string(),
    };
    (name, message)
}

fn announce(
    args: &UpArgs,
    store: &str,
    bus: &str,
    command_url: &str,
    query_url: &str,
    registry_url: Option<&str>,
    registered: Option<&anyhow::Result<Vec<String>>>,
) -> anyhow::Result<()> {
    let (subjects, registration_error) = match registered {
        Some(Ok(subjects)) => (subjects.clone(), None),
        Some(Err(err)) => (Vec::new(), Some(format!("{err:#}"))),
        None => (Vec::new(), None),
    };
    if args.json {
        return output::line(
            &json!({
                "store": store,
                "bus": bus,
                "command_service": command_url,
                "query_dashboard": query_url,
                "console": format!("{query_url}/console"),
                "schema_registry": registry_url,
                "metrics": format!("{command_url}/metrics"),
                "registered_subjects": subjects,
                "registration_error": registration_error,
                "dev_signing_key": args.auth.auth.is_none().then(|| super::auth::dev_key_path(&args.data_dir)),
            })
            .to_string(),
        );
    }
    let tracing = match std::env::var(nexus_runtime::telemetry::otel::ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.trim().is_empty() => format!(
            "\n  traces           exported over OTLP to {}",
            output::redact_url(&endpoint)
        ),
        _ => String::new(),
    };
    let mut text = format!(
        "nexus up: the orders reference system on the {store}, {bus}\n\
         \x20 command service  {command_url}  POST /commands/order/{{id}} · /openapi.json · /metrics\n\
         \x20 query dashboard  {query_url}  /read-models/orders/orders · /health · /openapi.json · /metrics\n\
         \x20                  live: /notifications/ws · /notifications/sse · nexus watch orders\n\
         \x20 console          {query_url}/console\n\
         \x20 metrics          {command_url}/metrics (Prometheus; every service of this process, so scrape one)\n\
         \x20                  watch it live: nexus top {command_url}{tracing}\n"
    );
    if let Some(url) = registry_url {
        text.push_str(&format!(
            "  schema registry  {url}  /subjects · /openapi.json · /metrics\n"
        ));
        match registration_error {
            Some(err) => text.push_str(&format!(
                "  warning: the sample's event schemas were not registered: {err}\n"
            )),
            None => text.push_str(&format!(
                "                   event schemas: {}\n",
                subjects.join(", ")
            )),
        }
    }
    if args.auth.auth.is_none() {
        text.push_str(&format!(
            "  access           history, audit and admin endpoints need a token (dev key {}):\n\
             \x20                  export NEXUS_TOKEN=$(nexus token issue --role admin --data-dir {})\n",
            super::auth::dev_key_path(&args.data_dir).display(),
            args.data_dir.display()
        ));
    }
    text.push_str(&format!(
        "try:\n\
         \x20 curl -s -X POST {command_url}/commands/order/o-1 -H 'content-type: application/json' -d '{{\"type\":\"PlaceOrder\",\"customer\":\"ada\"}}'\n\
         \x20 curl -s '{query_url}/read-models/orders/orders/o-1?wait_for=order/o-1@1'\n\
         Ctrl-C stops; the data stays in {}.",
        args.data_dir.display()
    ));
    output::line(&text)
}

/// Registers the JSON Schema of every sample event and command type under its type's subject
/// (major version 1); registering an unchanged schema again is a no-op in the registry.
async fn register_schemas(url: &str) -> anyhow::Result<Vec<String>> {
    let client = nexus_schema_registry::client::Client::new(url)?;
    let mut subjects = Vec::new();
    for (subject, schema) in super::new::schemas::subjects()? {
        client
            .register(&subject, &schema.to_string(), Some(1), None)
            .await
            .with_context(|| format!("failed to register the schema of `{subject}`"))?;
        subjects.push(subject);
    }
    Ok(subjects)
}

/// Sends sample orders through the command service over HTTP and prints how the read model
/// answers after each command (read-your-writes with `wait_for`).
async fn demo(
    command_url: String,
    query_url: String,
    limit: Option<u32>,
    json_lines: bool,
    mut stopped: watch::Receiver<bool>,
) {
    let client = match Http::new(Duration::from_secs(10)) {
        Ok(client) => client,
        Err(err) => {
            let _ = output::line(&format!("  demo  stopped: {err:#}"));
            return;
        }
    };
    // Stock for what the demo orders (and for a stuck saga's order, see `up_demo`).
    for sku in super::up_demo::SKUS {
        let restock = json!({"type": "Restock", "sku": sku, "quantity": super::up_demo::RESTOCK});
        let restocked = match http::url(
            &command_url,
            &["commands", "inventory", crate::events::WAREHOUSE],
            &[],
        ) {
            Ok(url) => {
                client
                    .send(reqwest::Method::POST, &url, Some(&restock))
                    .await
            }
            Err(err) => Err(err),
        };
        match restocked {
            Ok(answer) if answer.status.is_success() => {}
            Ok(answer) => {
                let _ = output::line(&format!(
                    "  demo  restocking {sku} -> {}: {}",
                    answer.status,
                    answer.json()
                ));
            }
            Err(err) => {
                let _ = output::line(&format!("  demo  restocking {sku}: {err:#}"));
            }
        }
    }
    let customers = ["ada", "grace", "linus", "barbara"];
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut n = 0u32;
    while limit.is_none_or(|limit| n < limit) && !*stopped.borrow() {
        let id = format!("{}-{n}", &run[run.len() - 6..]);
        let customer = customers[n as usize % customers.len()];
        let mut script = vec![
            json!({"type": "PlaceOrder", "customer": customer}),
            json!({"type": "AddItem", "sku": "espresso", "quantity": 2, "unit_price_cents": 250}),
            json!({"type": "AddItem", "sku": "croissant", "quantity": 1 + n % 3, "unit_price_cents": 320}),
        ];
        // Submitted orders are confirmed by the fulfilment saga (stock reserved, payment charged).
        script.push(if n % 4 == 3 {
            json!({"type": "CancelOrder", "reason": "customer left"})
        } else {
            json!({"type": "SubmitOrder"})
        });
        for command in script {
            if *stopped.borrow() {
                return;
            }
            let step = demo_step(&client, &command_url, &query_url, &id, &command).await;
            let line = match step {
                Ok(step) if json_lines => step.to_string(),
                Ok(step) => describe(&step),
                Err(err) => format!("  demo  order {id}: {err:#}"),
            };
            if output::line(&line).is_err() {
                return;
            }
        }
        n += 1;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped.changed() => return,
        }
    }
}

async fn demo_step(
    client: &Http,
    command_url: &str,
    query_url: &str,
    id: &str,
    command: &Value,
) -> anyhow::Result<Value> {
    let url = http::url(command_url, &["commands", "order", id], &[])?;
    let sent = client
        .send(reqwest::Method::POST, &url, Some(command))
        .await?;
    let (status, answer) = (sent.status, sent.json());
    if !status.is_success() {
        return Ok(
            json!({"order": id, "command": command["type"], "status": status.as_u16(), "answer": answer}),
        );
    }
    let mut version = answer["version"].as_u64().unwrap_or_default();
    // A submitted order is the saga's now: show how it ended, and the order as it left it.
    let saga = if command["type"] == "SubmitOrder" {
        let saga = saga_outcome(client, command_url, id).await?;
        if saga["status"] == "completed" {
            version += 1;
        }
        Some(saga)
    } else {
        None
    };
    let wait_for = format!("order/{id}@{version}");
    let url = http::url(
        query_url,
        &["read-models", "orders", "orders", id],
        &[("wait_for", &wait_for)],
    )?;
    let order = client.send(reqwest::Method::GET, &url, None).await?.json();
    let customer = order["customer"].as_str().unwrap_or_default();
    let url = http::url(
        query_url,
        &["read-models", "orders", "customers", customer],
        &[],
    )?;
    let spending = client.send(reqwest::Method::GET, &url, None).await?.json();
    let mut step = json!({
        "order": id,
        "command": command["type"],
        "status": status.as_u16(),
        "version": version,
        "read_model": order,
        "customer": spending,
    });
    if let Some(saga) = saga {
        step["saga"] = saga;
    }
    Ok(step)
}

/// The fulfilment saga of order `id` once it ended or got stuck (or as it is after 30 s).
async fn saga_outcome(client: &Http, command_url: &str, id: &str) -> anyhow::Result<Value> {
    let instance = nexus_runtime::saga::instance_id(crate::events::FULFILMENT, id);
    let url = http::url(
        command_url,
        &["sagas", crate::events::FULFILMENT, &instance],
        &[],
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.send(reqwest::Method::GET, &url, None).await?;
        let (status, saga) = (answer.status, answer.json());
        let settled = status.is_success()
            && !matches!(saga["status"].as_str(), Some("running" | "compensating"));
        if settled || tokio::time::Instant::now() >= deadline {
            return Ok(json!({
                "saga": crate::events::FULFILMENT,
                "id": instance,
                "status": saga["status"],
                "reason": saga["reason"],
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn describe(step: &Value) -> String {
    let command = step["command"].as_str().unwrap_or_default();
    let order = step["order"].as_str().unwrap_or_default();
    if step["status"] != 200 {
        return format!(
            "  demo  order {order:<10} {command:<13} -> {}: {}",
            step["status"],
            step["answer"]["message"].as_str().unwrap_or_default()
        );
    }
    let model = &step["read_model"];
    let customer = &step["customer"];
    let saga = match step["saga"]["status"].as_str() {
        Some(status) => format!(" | saga {status}"),
        None => String::new(),
    };
    format!(
        "  demo  order {order:<10} {command:<13} -> v{:<2} read model: {:<9} {} items {:>5} cents | {} {} orders, {} cents confirmed{saga}",
        step["version"],
        model["status"].as_str().unwrap_or("?"),
        model["items"],
        model["total_cents"],
        customer["id"].as_str().unwrap_or("?"),
        customer["orders"],
        customer["total_cents"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_retention_is_an_age_pruned_at_least_hourly() {
        assert_eq!(audit_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["0d", "", "7", "7y", "2026-01-31T00:00:00Z"] {
            assert!(audit_age(bad).is_err(), "{bad}");
        }
        let args = |extra: &[&str]| {
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                up: UpArgs,
            }
            let mut argv = vec!["up"];
            argv.extend_from_slice(extra);
            <Cli as clap::Parser>::try_parse_from(argv).map(|cli| cli.up)
        };
        assert_eq!(runner_options(&args(&[]).unwrap()).audit_retention, None);
        let week =
            runner_options(&args(&["--audit-retention", "1w", "--audit-segment", "500"]).unwrap())
                .audit_retention
                .unwrap();
        assert_eq!(
            (week.keep, week.segment, week.every),
            (Duration::from_secs(604_800), 500, Duration::from_secs(3600))
        );
        let quick = runner_options(&args(&["--audit-retention", "90s"]).unwrap())
            .audit_retention
            .unwrap();
        assert_eq!(quick.every, Duration::from_secs(90));
        assert!(args(&["--audit-segment", "0"]).is_err());
    }
}
