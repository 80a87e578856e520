//! `nexus saga`: listing, showing, retrying and aborting saga instances from the command line,
//! against a command service running a saga whose compensation gets stuck.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_runtime::bus::local::InProcessBus;
use nexus_runtime::http::access::{AccessControl, AuthConfig, TokenRequest, issue_hs256};
use nexus_runtime::http::{CommandService, SagaApi, serve_until};
use nexus_runtime::projection::{ProjectionRunner, ReadModels};
use nexus_runtime::saga::{
    SagaCommands, SagaDefinition, SagaHandle, SagaOptions, SagaRunner, Step, StepCommand,
    StepRetry, instance_id,
};
use nexus_runtime::store::embedded::EmbeddedStore;
use nexus_runtime::{
    Aggregate, CommandHandler, DomainEvent, EventStore, ExpectedVersion, Metadata, NewEvent,
    Repository, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::support::nexus;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// A gate that lets orders through; taking one back can be blocked.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Gate {
    undo_blocked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum GateEvent {
    Passed { order: String },
    Undone { order: String },
    UndoBlocked { blocked: bool },
}

impl DomainEvent for GateEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Passed { .. } => "Passed",
            Self::Undone { .. } => "Undone",
            Self::UndoBlocked { .. } => "UndoBlocked",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum GateCommand {
    Pass { order: String },
    Refuse,
    Undo { order: String },
    BlockUndo { blocked: bool },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(&'static str);

impl Aggregate for Gate {
    const TYPE: &'static str = "gate";
    type Command = GateCommand;
    type Event = GateEvent;
    type Error = Refused;

    fn handle(&self, command: &GateCommand) -> Result<Vec<GateEvent>, Refused> {
        match command {
            GateCommand::Pass { order } => Ok(vec![GateEvent::Passed {
                order: order.clone(),
            }]),
            GateCommand::Refuse => Err(Refused("the gate refuses")),
            GateCommand::Undo { .. } if self.undo_blocked => Err(Refused("undo is blocked")),
            GateCommand::Undo { order } => Ok(vec![GateEvent::Undone {
                order: order.clone(),
            }]),
            GateCommand::BlockUndo { blocked } => {
                Ok(vec![GateEvent::UndoBlocked { blocked: *blocked }])
            }
        }
    }

    fn apply(&mut self, event: &GateEvent) {
        if let GateEvent::UndoBlocked { blocked } = event {
            self.undo_blocked = *blocked;
        }
    }
}

fn definition() -> SagaDefinition {
    let fast = StepRetry::new(2, Duration::from_millis(10));
    SagaDefinition::builder("demo", 1)
        .starts_on("ticket", "Opened")
        .step(
            Step::new("pass", |c| {
                Ok(StepCommand::new(
                    "gate",
                    "g",
                    json!({"type": "Pass", "order": c.correlation_key}),
                ))
            })
            .compensate(|c| {
                Ok(StepCommand::new(
                    "gate",
                    "g",
                    json!({"type": "Undo", "order": c.correlation_key}),
                ))
            })
            .retry(fast)
            .compensation_retry(fast),
        )
        .step(
            Step::new("refuse", |_| {
                Ok(StepCommand::new("gate", "g", json!({"type": "Refuse"})))
            })
            .retry(fast),
        )
        .build()
        .unwrap()
}

/// Runs `nexus saga ARGS --url URL`, with `token` in `NEXUS_TOKEN`.
fn saga(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = nexus();
    command.arg("saga").args(args).arg("--url").arg(url);
    if let Some(token) = token {
        command.env("NEXUS_TOKEN", token);
    }
    command.output().unwrap()
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "nexus saga failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn until_status(url: &str, token: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = saga(url, Some(token), &["show", "demo", id, "--json"]);
        if output.status.success() {
            let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
            if doc["status"] == status {
                return doc;
            }
        }
        assert!(Instant::now() < deadline, "{id} never became {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `demo` saga over an embedded store in `dir` (where the HS256 secret is), its routes on
/// the command service behind access control, served on a free loopback port: the base URL,
/// the store, the server task and the running saga.
async fn serve_sagas(
    dir: &Path,
) -> (
    String,
    Arc<dyn EventStore>,
    tokio::task::JoinHandle<std::io::Result<()>>,
    SagaHandle,
) {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.join("events.db")).unwrap());
    let config = AuthConfig {
        issuer: Some("nexus-test".to_owned()),
        audience: Some("nexus".to_owned()),
        hs256_secret_file: Some("secret".into()),
        anonymous: Some(Vec::new()),
        ..AuthConfig::default()
    };
    let access = AccessControl::load(&config, dir).await.unwrap();
    let bus = Arc::new(InProcessBus::new(Arc::clone(&store)));
    let projections = ProjectionRunner::with_read_models(
        Arc::clone(&store),
        bus,
        ReadModels::sqlite(dir.join("read-models")),
    );
    let commands = SagaCommands::new().handler(CommandHandler::<Gate>::new(Repository::new(
        Arc::clone(&store),
    )));
    let sagas = SagaRunner::new(Arc::clone(&store), commands, projections)
        .with_options(SagaOptions {
            reconcile_interval: Duration::from_millis(500),
            ..SagaOptions::default()
        })
        .spawn(vec![definition()])
        .await
        .unwrap();
    let api = SagaApi::new([sagas.reader().clone()], access.clone());
    let app = CommandService::new(Arc::clone(&store))
        .with_access(access)
        .with_routes(api.routes(), api.openapi_paths())
        .router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve_until(listener, app, std::future::pending()));
    (url, store, server, sagas)
}

/// A token of role `admin`, signed with the test's secret.
fn admin_token() -> String {
    issue_hs256(
        SECRET.as_bytes(),
        &TokenRequest {
            issuer: "nexus-test",
            audience: "nexus",
            subject: "ops",
            roles: &["admin".to_owned()],
            roles_claim: "roles",
            ttl: Duration::from_secs(300),
            kid: None,
        },
    )
    .unwrap()
}

#[test]
fn nexus_saga_lists_shows_retries_and_aborts_stuck_instances() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let (url, store, _server, sagas) = runtime.block_on(serve_sagas(dir.path()));
    let token = admin_token();
    let handler = CommandHandler::<Gate>::new(Repository::new(Arc::clone(&store)));
    runtime.block_on(async {
        handler
            .execute(
                "g",
                &GateCommand::BlockUndo { blocked: true },
                Metadata::default(),
            )
            .await
            .unwrap();
        for ticket in ["t1", "t2"] {
            let opened = NewEvent::from_json("Opened", 1, "{}", Metadata::default()).unwrap();
            store
                .append(
                    &StreamId::new("ticket", ticket),
                    ExpectedVersion::NoStream,
                    vec![opened],
                )
                .await
                .unwrap();
        }
    });
    let (t1, t2) = (instance_id("demo", "t1"), instance_id("demo", "t2"));
    let stuck = until_status(&url, &token, &t1, "stuck");
    assert!(
        stuck["reason"]
            .as_str()
            .unwrap()
            .contains("undo is blocked"),
        "{stuck}"
    );
    until_status(&url, &token, &t2, "stuck");

    let listed = json_of(&saga(
        &url,
        Some(&token),
        &["list", "demo", "--status", "stuck", "--json"],
    ));
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
    let human = saga(&url, Some(&token), &["show", "demo", &t1]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("stuck") && text.contains("SagaStuck"),
        "{text}"
    );

    // Without a token retry is refused (exit code 2, the service's reason).
    let refused = saga(&url, None, &["retry", "demo", &t1]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let bad = saga(&url, Some(&token), &["list", "demo", "--status", "sleepy"]);
    assert_eq!(bad.status.code(), Some(2));

    runtime.block_on(async {
        handler
            .execute(
                "g",
                &GateCommand::BlockUndo { blocked: false },
                Metadata::default(),
            )
            .await
            .unwrap();
    });
    let retried = json_of(&saga(&url, Some(&token), &["retry", "demo", &t1, "--json"]));
    assert_eq!(retried["status"], "compensating");
    let done = until_status(&url, &token, &t1, "compensated");
    assert_eq!(done["steps"][0]["compensation"]["status"], "compensated");
    let aborted = json_of(&saga(
        &url,
        Some(&token),
        &["abort", "demo", &t2, "--reason", "undone by hand", "--json"],
    ));
    assert_eq!(aborted["status"], "aborted");
    let again = saga(&url, Some(&token), &["retry", "demo", &t2]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an aborted saga cannot be retried"
    );
    let shown = json_of(&saga(&url, Some(&token), &["show", "demo", &t2, "--json"]));
    assert_eq!(shown["reason"], "undone by hand");
    assert_eq!(
        shown["history"].as_array().unwrap().last().unwrap()["type"],
        "SagaAborted"
    );
    runtime.block_on(sagas.stop());
}
