//! `nexus dlq list|show|redrive`: a projection's dead-letter queue, read from its read model.
//!
//! Redrive marks dead letters; the running projection picks them up within a second (it polls
//! its queue), so this works while the service runs, from another process.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use nexus_runtime::StreamId;
use nexus_runtime::projection::{ProjectionRunner, ReadModelStore, ReadModels, RedriveFilter};

use super::Outcome;
use crate::output;

/// Where the projections' read models are: a folder of SQLite files or a PostgreSQL database
/// (shared with `nexus audit`).
#[derive(Debug, Args)]
pub(crate) struct ReadModelSource {
    /// Folder holding the projections' read models (SQLite files).
    #[arg(long, global = true, default_value = ".nexus/data/read-models")]
    read_models: PathBuf,
    /// Read models in PostgreSQL instead: the database URL.
    #[arg(long, global = true, env = "NEXUS_READ_MODELS_URL")]
    postgres_url: Option<String>,
    /// With `--postgres-url`: the schema holding the read models.
    #[arg(long, global = true, default_value = ReadModels::DEFAULT_POSTGRES_SCHEMA)]
    schema: String,
}

impl ReadModelSource {
    /// The read model of `projection`; a SQLite file must exist already.
    pub(crate) async fn open(&self, projection: &str) -> anyhow::Result<ReadModelStore> {
        if let Some(url) = &self.postgres_url {
            let read_models = ReadModels::postgres(url, &self.schema)
                .await
                .context("failed to open the read models in PostgreSQL")?;
            return Ok(read_models.open(projection)?);
        }
        let path = ProjectionRunner::read_model_path(&self.read_models, projection);
        anyhow::ensure!(
            path.exists(),
            "no read model for projection `{projection}` at {} (use --read-models to point at the folder)",
            path.display()
        );
        ReadModelStore::open(&path).with_context(|| format!("failed to open {}", path.display()))
    }
}

#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(flatten)]
    source: ReadModelSource,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List the dead letters of a projection.
    List {
        /// The projection.
        projection: String,
    },
    /// Show one dead letter with its full event and metadata.
    Show {
        /// The projection.
        projection: String,
        /// The dead letter's id.
        id: i64,
    },
    /// Ask the projection to process dead letters again.
    Redrive {
        /// The projection.
        projection: String,
        /// One dead letter.
        #[arg(long, conflicts_with_all = ["stream", "all"])]
        id: Option<i64>,
        /// Every dead letter of one stream, as `aggregate_type/aggregate_id`.
        #[arg(long, conflicts_with = "all")]
        stream: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

async fn open(args: &DlqArgs, projection: &str) -> anyhow::Result<ReadModelStore> {
    args.source.open(projection).await
}

pub(crate) fn run(args: DlqArgs) -> anyhow::Result<Outcome> {
    super::tokio_runtime()?.block_on(run_async(args))
}

async fn run_async(args: DlqArgs) -> anyhow::Result<Outcome> {
    match &args.command {
        DlqCommand::List { projection } => {
            let letters = open(&args, projection).await?.dead_letters().await?;
            if args.json {
                output::json(&letters)?;
            } else if letters.is_empty() {
                output::line(&format!("no dead letters for `{projection}`"))?;
            } else {
                for l in &letters {
                    output::line(&format!(
                        "{:>5}  {:<8} {} v{} {} (position {}, {} attempts): {}",
                        l.id,
                        format!("{:?}", l.status).to_lowercase(),
                        l.event.stream,
                        l.event.version,
                        l.event.event_type,
                        l.event.position,
                        l.attempts,
                        l.error
                    ))?;
                }
            }
        }
        DlqCommand::Show { projection, id } => {
            let letter = open(&args, projection).await?.dead_letter(*id).await?;
            output::json(&letter)?;
        }
        DlqCommand::Redrive {
            projection,
            id,
            stream,
            all,
        } => {
            let filter = match (id, stream, all) {
                (Some(id), _, _) => RedriveFilter::Id(*id),
                (None, Some(stream), _) => {
                    let (kind, id) = stream.split_once('/').with_context(|| {
                        format!("--stream `{stream}` must be `aggregate_type/aggregate_id`")
                    })?;
                    RedriveFilter::Stream(StreamId::new(kind, id))
                }
                (None, None, true) => RedriveFilter::All,
                (None, None, false) => {
                    anyhow::bail!("say what to redrive: --id N, --stream TYPE/ID or --all")
                }
            };
            let marked = open(&args, projection)
                .await?
                .request_redrive(&filter)
                .await?;
            if args.json {
                output::json(&serde_json::json!({ "projection": projection, "marked": marked }))?;
            } else {
                output::line(&format!(
                    "{marked} dead letter(s) of `{projection}` marked for redrive; the running projection picks them up"
                ))?;
            }
        }
    }
    Ok(Outcome::Clean)
}
