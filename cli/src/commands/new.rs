//! `nexus new PATH`: generates a Cargo workspace with a command service, a query dashboard and
//! a shared events crate, from the templates in `templates/project/` embedded at build time.
//!
//! Everything is validated and rendered in memory first, then written into a temporary folder
//! beside the target and renamed into place, so a failure leaves nothing half-written.

pub(crate) mod schemas;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use include_dir::{Dir, include_dir};
use minijinja::Environment;
use minijinja::syntax::SyntaxConfig;
use serde::Serialize;

use super::Outcome;
use crate::output;

/// The project template: `*.jinja` files are rendered (and lose the suffix), others are copied.
static TEMPLATE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../templates/project");

/// Files of the orders sample that an empty skeleton (`--no-sample`) leaves out.
const SAMPLE_ONLY: &[&str] = &[
    "services/query-dashboard/src/projection.rs",
    "crates/events/src/fulfilment.rs",
    "crates/events/src/inventory.rs",
    "crates/events/src/payment.rs",
];

/// A file named `<stem>.empty.<ext>` replaces `<stem>.<ext>` in an empty skeleton.
const EMPTY_MARKER: &str = ".empty";

/// The Nexus checkout this binary was built from.
const BUILT_FROM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Workspace dependencies a generated project takes from the Nexus checkout, at the same versions.
const SHARED_DEPENDENCIES: &[&str] = &[
    "anyhow",
    "async-trait",
    "schemars",
    "serde",
    "serde_json",
    "tempfile",
    "thiserror",
    "tokio",
    "tracing",
    "tracing-subscriber",
];

/// Where events are kept: by a project `nexus new` generates, and by `nexus up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StoreKind {
    /// An SQLite file in the data folder, shared by the services (no server needed).
    Embedded,
    /// PostgreSQL (`--url` for `nexus up`, `DATABASE_URL` in a generated project).
    Postgres,
}

/// How events reach the query side: in a project `nexus new` generates, and in `nexus up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BusKind {
    /// The query side tails the event store's change-data-capture stream itself.
    #[value(name = "inprocess")]
    InProcess,
    /// A relay publishes events to NATS JetStream (`--nats-url`, `NATS_URL` in a generated
    /// project); the query side consumes them from there.
    Nats,
}

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// Folder to create; its last component is the project name unless `--name` is given.
    pub(crate) path: PathBuf,
    /// Project name (a valid crate name); defaults to the folder name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Event store of the generated services.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub(crate) store: StoreKind,
    /// Event bus between the command service and the query dashboard.
    #[arg(long, value_enum, default_value_t = BusKind::InProcess)]
    pub(crate) bus: BusKind,
    /// Generate an empty skeleton instead of the orders sample.
    #[arg(long)]
    pub(crate) no_sample: bool,
    /// Local Nexus checkout the project depends on by path (default: the checkout `nexus` was built from).
    #[arg(long, value_name = "PATH", env = "NEXUS_PATH")]
    pub(crate) nexus_path: Option<PathBuf>,
    /// Depend on Nexus from this git repository instead of a local checkout (`https://…`,
    /// `ssh://…` or `file://…`); the generated CI installs `nexus` from it too.
    #[arg(long, value_name = "URL", conflicts_with = "nexus_version")]
    pub(crate) nexus_git: Option<String>,
    /// With --nexus-git: the commit to pin.
    #[arg(
        long,
        value_name = "REV",
        requires = "nexus_git",
        conflicts_with = "tag"
    )]
    pub(crate) rev: Option<String>,
    /// With --nexus-git: the tag to pin.
    #[arg(long, value_name = "TAG", requires = "nexus_git")]
    pub(crate) tag: Option<String>,
    /// Depend on the published Nexus crates of this version (`0.3.1`) instead of a checkout.
    #[arg(long, value_name = "VERSION")]
    pub(crate) nexus_version: Option<String>,
    /// Print the files that would be written, and write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print the result as JSON (project, options and files written).
    #[arg(long)]
    pub(crate) json: bool,
}

/// What `nexus new` did, as printed by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    name: String,
    path: String,
    store: StoreKind,
    bus: BusKind,
    sample: bool,
    /// The local checkout the project depends on, when it depends on one by path.
    nexus_path: Option<String>,
    /// Where the project takes Nexus from: a path, a git URL with its pin, or a version.
    nexus: String,
    dry_run: bool,
    files: Vec<String>,
}

pub(crate) fn run(args: NewArgs) -> anyhow::Result<Outcome> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| {
                format!(
                    "cannot take a project name from `{}`; pass --name",
                    args.path.display()
                )
            })?,
    };
    validate_name(&name)?;
    check_target(&args.path)?;
    let source = NexusSource::from_args(&args)?;
    let nexus = match &source {
        NexusSource::Path(path) => NexusCheckout::open(Some(path))?,
        NexusSource::Git { .. } | NexusSource::Version(_) => NexusCheckout::built_in()?,
    };
    let files = render(&name, &args, &nexus, &source)?;

    let listed: Vec<String> = files
        .keys()
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .collect();
    if !args.dry_run {
        write_atomically(&args.path, &files)?;
    }
    let report = Report {
        name: name.clone(),
        path: args.path.display().to_string(),
        store: args.store,
        bus: args.bus,
        sample: !args.no_sample,
        nexus_path: match &source {
            NexusSource::Path(_) => Some(nexus.root.display().to_string()),
            _ => None,
        },
        nexus: source.describe(&nexus.root),
        dry_run: args.dry_run,
        files: listed,
    };
    if args.json {
        output::json(&report)?;
    } else {
        print_human(&report)?;
    }
    Ok(Outcome::Clean)
}

fn print_human(report: &Report) -> anyhow::Result<()> {
    let verb = if report.dry_run {
        "Would create"
    } else {
        "Created"
    };
    let store = match report.store {
        StoreKind::Embedded => "embedded store",
        StoreKind::Postgres => "PostgreSQL store",
    };
    let bus = match report.bus {
        BusKind::InProcess => "in-process bus",
        BusKind::Nats => "NATS bus",
    };
    let sample = if report.sample {
        "orders sample"
    } else {
        "empty skeleton"
    };
    output::line(&format!(
        "{verb} `{}` in {} ({store}, {bus}, {sample}; Nexus {})",
        report.name, report.path, report.nexus
    ))?;
    if report.dry_run {
        for file in &report.files {
            output::line(&format!("  {file}"))?;
        }
        return Ok(());
    }
    output::line(&format!("\nNext:\n  cd {}", report.path))?;
    output::line("  cargo test                       # aggregate, projection and schema tests")?;
    output::line("  nexus check                      # architecture rules, schemas included")?;
    if report.store == StoreKind::Postgres || report.bus == BusKind::Nats {
        output::line("  docker compose up -d             # PostgreSQL, NATS and RabbitMQ")?;
    }
    output::line("  cargo run -p command-service     # http://127.0.0.1:8080")?;
    output::line("  cargo run -p query-dashboard     # http://127.0.0.1:8081")?;
    Ok(())
}

/// Rust keywords and names cargo refuses for packages.
const RESERVED: &[&str] = &[
    "abstract",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "Self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "alloc",
    "core",
    "std",
    "proc-macro",
    "proc_macro",
    "test",
    "build",
    "deps",
    "examples",
    "incremental",
    "nexus",
    "nexus-runtime",
    "nexus_runtime",
];

/// Checks `name` against cargo's rules for package names (plus the names the project uses itself).
fn validate_name(name: &str) -> anyhow::Result<()> {
    let help =
        "a project name is ASCII letters, digits, `-` and `_`, and does not start with a digit";
    let Some(first) = name.chars().next() else {
        bail!("the project name is empty; {help}");
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        bail!("invalid project name `{name}`: `{bad}` is not allowed; {help}");
    }
    if first.is_ascii_digit() {
        bail!("invalid project name `{name}`: it starts with a digit; {help}");
    }
    if RESERVED.contains(&name) {
        bail!(
            "invalid project name `{name}`: it is a Rust keyword or a reserved name; pick another one or pass --name"
        );
    }
    if matches!(name, "command-service" | "query-dashboard") || name.ends_with("-events") {
        bail!("invalid project name `{name}`: it clashes with a package of the generated project");
    }
    Ok(())
}

/// The target must not exist, or be an empty folder; missing parent folders are created when
/// the project is written, as `cargo new` does.
fn check_target(path: &Path) -> anyhow::Result<()> {
    if let Some(file) = path.ancestors().skip(1).find(|a| a.exists() && !a.is_dir()) {
        bail!(
            "`{}` is a file, so `{}` cannot be created under it",
            file.display(),
            path.display()
        );
    }
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "`{}` already exists and is not empty; nexus new never overwrites files, pick another folder",
                    path.display()
                );
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) if path.exists() => {
            bail!(
                "`{}` already exists and is not a folder; pick another path",
                path.display()
            )
        }
        Err(err) => {
            return Err(err).with_context(|| format!("failed to inspect `{}`", path.display()));
        }
    }
    Ok(())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The Nexus checkout a generated project depends on.
struct NexusCheckout {
    root: PathBuf,
    lockfile: Option<String>,
    dependencies: BTreeMap<String, String>,
}

/// The workspace manifest and lockfile this binary was built with, for projects that do not
/// depend on a local checkout.
const BUILT_IN_MANIFEST: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"));
const BUILT_IN_LOCKFILE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"));

/// Where a generated project takes Nexus from.
#[derive(Debug)]
enum NexusSource {
    /// A local checkout, by path (`--nexus-path`, or the checkout this binary was built from).
    Path(PathBuf),
    /// A git repository (`--nexus-git`), pinned by `--rev` or `--tag`, or its default branch.
    Git {
        url: String,
        pin: Option<(&'static str, String)>,
    },
    /// Published crates (`--nexus-version`).
    Version(String),
}

impl NexusSource {
    fn from_args(args: &NewArgs) -> anyhow::Result<Self> {
        if let Some(url) = &args.nexus_git {
            let has_scheme = ["https://", "http://", "ssh://", "git://", "file://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            if !has_scheme || url.chars().any(|c| c.is_whitespace() || c == '"') {
                bail!(
                    "--nexus-git `{url}` is not a git URL: give https://…, ssh://…, git://… or file://…"
                );
            }
            let pin = match (&args.rev, &args.tag) {
                (Some(rev), _) => Some(("rev", rev.clone())),
                (None, Some(tag)) => Some(("tag", tag.clone())),
                (None, None) => None,
            };
            return Ok(Self::Git {
                url: url.clone(),
                pin,
            });
        }
        if let Some(version) = &args.nexus_version {
            semver::Version::parse(version).with_context(|| {
                format!("--nexus-version `{version}` is not a version like 0.3.1")
            })?;
            return Ok(Self::Version(version.clone()));
        }
        Ok(Self::Path(
            args.nexus_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(BUILT_FROM)),
        ))
    }

    /// The `nexus-runtime` entry of the generated `[workspace.dependencies]`, as inline TOML.
    fn runtime_dependency(&self, root: &Path) -> anyhow::Result<String> {
        Ok(match self {
            Self::Path(_) => format!(
                "{{ path = {} }}",
                serde_json::to_string(&root.join("runtime").display().to_string())?
            ),
            Self::Git { url, pin } => match pin {
                Some((kind, value)) => format!(
                    "{{ git = {}, {kind} = {} }}",
                    serde_json::to_string(url)?,
                    serde_json::to_string(value)?
                ),
                None => format!("{{ git = {} }}", serde_json::to_string(url)?),
            },
            Self::Version(version) => {
                format!(
                    "{{ version = {} }}",
                    serde_json::to_string(&format!("={version}"))?
                )
            }
        })
    }

    /// What `cargo install` needs to install the matching `nexus` CLI (after `--locked`).
    fn install_arguments(&self) -> Option<String> {
        match self {
            Self::Path(_) => None,
            Self::Git { url, pin } => Some(match pin {
                Some((kind, value)) => format!("--git '{url}' --{kind} '{value}' nexus-cli"),
                None => format!("--git '{url}' nexus-cli"),
            }),
            Self::Version(version) => Some(format!("nexus-cli --version '={version}'")),
        }
    }

    /// One phrase for messages: `at /path`, `from git URL (rev R)`, `version V from crates.io`.
    fn describe(&self, root: &Path) -> String {
        match self {
            Self::Path(_) => format!("at {}", root.display()),
            Self::Git {
                url,
                pin: Some((kind, value)),
            } => format!("from git {url} ({kind} {value})"),
            Self::Git { url, pin: None } => format!("from git {url}"),
            Self::Version(version) => format!("version {version} from crates.io"),
        }
    }
}

impl NexusCheckout {
    /// The dependency versions and lockfile this binary was built with.
    fn built_in() -> anyhow::Result<Self> {
        Ok(Self {
            root: PathBuf::from(BUILT_FROM),
            lockfile: Some(BUILT_IN_LOCKFILE.to_owned()),
            dependencies: workspace_dependencies(BUILT_IN_MANIFEST)
                .context("failed to read the workspace manifest built into nexus")?,
        })
    }

    fn open(given: Option<&Path>) -> anyhow::Result<Self> {
        let (path, hint) = match given {
            Some(path) => (path.to_path_buf(), "check --nexus-path"),
            None => (
                PathBuf::from(BUILT_FROM),
                "this `nexus` was built from a checkout that is gone; pass --nexus-path PATH (a Nexus checkout)",
            ),
        };
        if !path.join("runtime/Cargo.toml").is_file() {
            bail!(
                "`{}` is not a Nexus checkout (it has no runtime/Cargo.toml); {hint}",
                path.display()
            );
        }
        let root = path
            .canonicalize()
            .with_context(|| format!("failed to resolve `{}`", path.display()))?;
        let manifest = std::fs::read_to_string(root.join("Cargo.toml"))
            .with_context(|| format!("failed to read `{}`", root.join("Cargo.toml").display()))?;
        let dependencies = workspace_dependencies(&manifest)
            .with_context(|| format!("failed to read `{}`", root.join("Cargo.toml").display()))?;
        let lockfile = std::fs::read_to_string(root.join("Cargo.lock")).ok();
        Ok(Self {
            root,
            lockfile,
            dependencies,
        })
    }
}

/// The `[workspace.dependencies]` entries a generated project shares, as inline TOML.
fn workspace_dependencies(manifest: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let value: toml::Table = toml::from_str(manifest)?;
    let table = value
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table)
        .context("it has no [workspace.dependencies]")?;
    let mut out = BTreeMap::new();
    for name in SHARED_DEPENDENCIES {
        let spec = table
            .get(*name)
            .with_context(|| format!("[workspace.dependencies] has no `{name}`"))?;
        out.insert((*name).to_owned(), inline_toml(spec)?);
    }
    Ok(out)
}

/// Writes a dependency specification (a version string or a table of strings, booleans and
/// arrays of strings) as inline TOML.
fn inline_toml(value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => serde_json::to_string(s)?,
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Array(items) => {
            let items: anyhow::Result<Vec<String>> = items.iter().map(inline_toml).collect();
            format!("[{}]", items?.join(", "))
        }
        toml::Value::Table(table) => {
            // `version` first, as people write it.
            let mut entries: Vec<_> = table.iter().collect();
            entries.sort_by_key(|(k, _)| *k != "version");
            let fields: anyhow::Result<Vec<String>> = entries
                .into_iter()
                .map(|(k, v)| Ok(format!("{k} = {}", inline_toml(v)?)))
                .collect();
            format!("{{ {} }}", fields?.join(", "))
        }
        other => bail!("unsupported value `{other:?}` in a dependency specification"),
    })
}

/// Renders every file of the project in memory, keyed by its path relative to the project.
fn render(
    name: &str,
    args: &NewArgs,
    nexus: &NexusCheckout,
    source: &NexusSource,
) -> anyhow::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let sample = !args.no_sample;
    let context = minijinja::context! {
        name => name,
        crate_name => name.replace('-', "_"),
        store => minijinja::value::Serde(args.store),
        bus => minijinja::value::Serde(args.bus),
        sample => sample,
        nexus_path => nexus.root.display().to_string(),
        nexus_runtime_dependency => source.runtime_dependency(&nexus.root)?,
        nexus_install => source.install_arguments(),
        nexus_description => source.describe(&nexus.root),
        deps => minijinja::value::Serde(&nexus.dependencies),
        version => env!("CARGO_PKG_VERSION"),
    };
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // The files are TOML, YAML, Markdown and Rust: nothing to escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .context("invalid template syntax configuration")?,
    );

    let mut template_files = Vec::new();
    collect(&TEMPLATE, &mut template_files);
    // What the empty variants replace, compared without `.jinja` (either side may be a template).
    let replaced: Vec<PathBuf> = template_files
        .iter()
        .filter_map(|f| empty_variant_of(f.path()))
        .map(|p| without_jinja(&p))
        .collect();

    let mut files = BTreeMap::new();
    for file in template_files {
        let source_path = file.path();
        let mut path = source_path.to_path_buf();
        if let Some(original) = empty_variant_of(source_path) {
            if sample {
                continue;
            }
            path = original;
        } else if !sample
            && (replaced.contains(&without_jinja(&path))
                || SAMPLE_ONLY.iter().any(|s| Path::new(s) == source_path))
        {
            continue;
        }
        let mut contents = file.contents().to_vec();
        if path.extension().is_some_and(|e| e == "jinja") {
            let source = std::str::from_utf8(&contents)
                .with_context(|| format!("template `{}` is not UTF-8", source_path.display()))?;
            let rendered = env
                .render_named_str(&source_path.to_string_lossy(), source, &context)
                .map_err(|err| anyhow::anyhow!("{err:#}"))
                .with_context(|| format!("failed to render `{}`", source_path.display()))?;
            contents = rendered.into_bytes();
            path.set_extension("");
        }
        if files.insert(output_path(&path), contents).is_some() {
            bail!(
                "two templates write `{}`; this is a bug in the templates",
                output_path(&path).display()
            );
        }
    }
    if let Some(lockfile) = &nexus.lockfile {
        files.insert(PathBuf::from("Cargo.lock"), lockfile.clone().into_bytes());
    }
    if sample {
        for (subject, schema) in schemas::subjects()? {
            let mut text = serde_json::to_string_pretty(&schema)?;
            text.push('\n');
            files.insert(
                PathBuf::from("schemas").join(&subject).join("1.0.0.json"),
                text.into_bytes(),
            );
        }
    }
    Ok(files)
}

fn collect<'a>(dir: &'a Dir<'a>, out: &mut Vec<&'a include_dir::File<'a>>) {
    for file in dir.files() {
        out.push(file);
    }
    for sub in dir.dirs() {
        collect(sub, out);
    }
}

/// For `x/lib.empty.rs(.jinja)`, the path it replaces: `x/lib.rs(.jinja)`.
fn empty_variant_of(path: &Path) -> Option<PathBuf> {
    let file = path.file_name()?.to_str()?;
    let (stem, rest) = file.split_once('.')?;
    let rest = rest.strip_prefix(&EMPTY_MARKER[1..])?.strip_prefix('.')?;
    Some(path.with_file_name(format!("{stem}.{rest}")))
}

fn without_jinja(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "jinja") {
        path.with_extension("")
    } else {
        path.to_path_buf()
    }
}

/// Template paths start dotfiles with `dot-` so they do not act on the Nexus repository itself.
fn output_path(path: &Path) -> PathBuf {
    path.components()
        .map(|c| {
            let part = c.as_os_str().to_string_lossy();
            match part.strip_prefix("dot-") {
                Some(rest) => format!(".{rest}"),
                None => part.into_owned(),
            }
        })
        .collect()
}

/// Writes `files` into a temporary folder beside `target`, then renames it into place.
fn write_atomically(target: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> anyhow::Result<()> {
    let parent = parent_of(target);
    // The outermost parent folder this creates, removed again if writing fails.
    let created = parent
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
        .map(Path::to_path_buf);
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("failed to create `{}`", parent.display()))?;
    let written = stage_and_move(target, &parent, files);
    if written.is_err()
        && let Some(created) = created
    {
        let _ = std::fs::remove_dir_all(created);
    }
    written
}

/// Writes `files` into a staging folder in `parent`, then renames it to `target`.
fn stage_and_move(
    target: &Path,
    parent: &Path,
    files: &BTreeMap<PathBuf, Vec<u8>>,
) -> anyhow::Result<()> {
    let staging = tempfile::Builder::new()
        .prefix(".nexus-new-")
        .tempdir_in(parent)
        .with_context(|| {
            format!(
                "failed to create a temporary folder in `{}`",
                parent.display()
            )
        })?;
    for (path, contents) in files {
        let full = staging.path().join(path);
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
        }
        std::fs::write(&full, contents)
            .with_context(|| format!("failed to write `{}`", full.display()))?;
    }
    // An empty target folder is replaced; `check_target` made sure it is empty.
    if target.is_dir() {
        std::fs::remove_dir(target).with_context(|| {
            format!("failed to replace the empty folder `{}`", target.display())
        })?;
    }
    let staged = staging.keep();
    if let Err(err) = std::fs::rename(&staged, target) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(err)
            .with_context(|| format!("failed to move the project to `{}`", target.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_cargo_rules() {
        for good in ["demo", "my-shop", "shop_2", "_x"] {
            validate_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "2shop",
            "my shop",
            "shop!",
            "test",
            "std",
            "fn",
            "command-service",
            "x-events",
        ] {
            assert!(validate_name(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn empty_variants_replace_their_originals() {
        assert_eq!(
            empty_variant_of(Path::new("crates/events/src/lib.empty.rs")),
            Some(PathBuf::from("crates/events/src/lib.rs"))
        );
        assert_eq!(
            empty_variant_of(Path::new("a/main.empty.rs.jinja")),
            Some(PathBuf::from("a/main.rs.jinja"))
        );
        assert_eq!(empty_variant_of(Path::new("a/main.rs.jinja")), None);
    }

    #[test]
    fn dotfiles_are_renamed() {
        assert_eq!(
            output_path(Path::new("dot-github/workflows/ci.yml")),
            PathBuf::from(".github/workflows/ci.yml")
        );
    }

    #[test]
    fn dependency_specifications_are_inline_toml() {
        let deps = workspace_dependencies(
            "[workspace.dependencies]\nanyhow = \"1\"\nasync-trait = \"0.1\"\nschemars = { version = \"1.2\", default-features = false, features = [\"derive\"] }\nserde = \"1\"\nserde_json = \"1\"\ntempfile = \"3\"\nthiserror = \"2\"\ntokio = \"1\"\ntracing = \"0.1\"\ntracing-subscriber = \"0.3\"\n",
        )
        .expect("valid manifest");
        assert_eq!(deps["anyhow"], "\"1\"");
        assert_eq!(
            deps["schemars"],
            "{ version = \"1.2\", default-features = false, features = [\"derive\"] }"
        );
    }
}
