//! `nexus bench check --lines N`: generates a workspace of N lines of Rust and times `nexus check`
//! on it (a child process of this binary, release build recommended), printing JSON: cold runs
//! (the per-file facts cache emptied first) and warm runs (the cache filled by the cold run).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::Outcome;
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct BenchCheckArgs {
    /// Lines of Rust to generate.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) lines: usize,
    /// Packages to spread them over.
    #[arg(long, default_value_t = 8)]
    pub(crate) packages: usize,
    /// Generate into this folder and keep it (default: a temporary folder, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub(crate) keep: Option<PathBuf>,
    /// Timed runs of each kind (cold, then warm); the JSON reports each and the fastest.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    lines: usize,
    files: usize,
    packages: usize,
    /// Cold runs: the facts cache is emptied before each, so every file is parsed.
    cold_runs_seconds: Vec<f64>,
    best_cold_seconds: f64,
    /// Warm runs: every file's facts come from the cache the cold run wrote.
    warm_runs_seconds: Vec<f64>,
    best_warm_seconds: f64,
    findings: usize,
    exit_code: Option<i32>,
    target_seconds: f64,
    /// Judged on the best cold run.
    within_target: bool,
    warm_within_target: bool,
    /// CPUs this process may use and the 1-minute load average before and after the runs
    /// (`/proc/loadavg`, absent elsewhere): a loaded machine makes the times longer.
    cpus: usize,
    load_before: Option<f64>,
    load_after: Option<f64>,
}

/// The 1-minute load average, where `/proc/loadavg` exists.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

const LINES_PER_FILE: usize = 400;

/// The speed target of `nexus check` on 200,000 lines with 2 cores (tracker issue 5).
const TARGET_SECONDS: f64 = 3.0;

pub(crate) fn run(args: BenchCheckArgs) -> anyhow::Result<Outcome> {
    let (dir, temporary) = match &args.keep {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("nexus-bench-check-{}", std::process::id())),
            true,
        ),
    };
    let load_before = load_average();
    let generated = generate(&dir, args.lines, args.packages.max(2));
    let result = generated.and_then(|(files, lines)| {
        let exe = std::env::current_exe().context("failed to find the `nexus` binary")?;
        // The child's target folder is fixed, so emptying the cache below really empties it.
        let target = dir.join("target");
        let cache = target.join("nexus-check-cache");
        let run = || -> anyhow::Result<(f64, std::process::Output)> {
            let start = Instant::now();
            let out = std::process::Command::new(&exe)
                .arg("check")
                .arg(&dir)
                .args(["--format", "json"])
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .context("failed to run `nexus check`")?;
            let seconds = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            if out.status.code() == Some(2) {
                anyhow::bail!(
                    "`nexus check` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok((seconds, out))
        };
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        let mut outputs = Vec::new();
        for _ in 0..args.runs.max(1) {
            match std::fs::remove_dir_all(&cache) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(err)
                        .with_context(|| format!("failed to empty `{}`", cache.display()));
                }
                _ => {}
            }
            let (seconds, out) = run()?;
            cold.push(seconds);
            outputs.push(out);
        }
        for _ in 0..args.runs.max(1) {
            let (seconds, out) = run()?;
            warm.push(seconds);
            outputs.push(out);
        }
        let out = outputs.pop().expect("at least one run");
        if outputs.iter().any(|o| o.stdout != out.stdout) {
            anyhow::bail!("`nexus check` printed different findings with and without its cache");
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("`nexus check --format json` printed no JSON")?;
        let findings = json["findings"].as_array().map_or(0, Vec::len);
        let best = |runs: &[f64]| runs.iter().copied().fold(f64::INFINITY, f64::min);
        let (best_cold, best_warm) = (best(&cold), best(&warm));
        Ok(BenchReport {
            lines,
            files,
            packages: args.packages.max(2),
            cold_runs_seconds: cold,
            best_cold_seconds: best_cold,
            warm_runs_seconds: warm,
            best_warm_seconds: best_warm,
            findings,
            exit_code: out.status.code(),
            target_seconds: TARGET_SECONDS,
            within_target: best_cold < TARGET_SECONDS,
            warm_within_target: best_warm < TARGET_SECONDS,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            load_before,
            load_after: load_average(),
        })
    });
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    output::json(&result?)?;
    Ok(Outcome::Clean)
}

/// Writes a workspace of `packages` crates with about `lines` lines of Rust; returns (files, lines).
fn generate(dir: &Path, lines: usize, packages: usize) -> anyhow::Result<(usize, usize)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create `{}`", dir.display()))?;
    let names: Vec<String> = (0..packages)
        .map(|i| match i {
            0 => "command-service".to_owned(),
            1 => "query-dashboard".to_owned(),
            i => format!("service-{i}"),
        })
        .collect();
    let members: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[workspace]\nmembers = [{}]\nresolver = \"3\"\n",
            members.join(", ")
        ),
    )?;
    let mut config = String::new();
    for (i, name) in names.iter().enumerate() {
        let role = match i {
            0 => "command",
            1 => "query",
            _ => "service",
        };
        let env = name.to_uppercase().replace('-', "_");
        writeln!(
            config,
            "[services.{name}]\npackage = {name:?}\nrole = {role:?}\naddresses = [{name:?}, \"{env}_URL\"]\n"
        )?;
    }
    config.push_str("[event_store]\ntables = [\"events\"]\n");
    std::fs::write(dir.join("nexus.toml"), config)?;
    std::fs::create_dir_all(dir.join("schemas"))?;

    let files = lines.div_ceil(LINES_PER_FILE).max(1);
    let mut written = 0;
    for index in 0..files {
        let package = &names[index % packages];
        let src = dir.join(package).join("src");
        std::fs::create_dir_all(&src)?;
        let body = module(index, LINES_PER_FILE.min(lines - written.min(lines)).max(1));
        written += body.lines().count();
        std::fs::write(src.join(format!("m{index}.rs")), body)?;
    }
    for package in &names {
        let src = dir.join(package).join("src");
        std::fs::create_dir_all(&src)?;
        let mut lib = String::from("//! Generated benchmark crate.\n");
        for index in (0..files).filter(|i| names[i % packages] == *package) {
            writeln!(lib, "pub mod m{index};")?;
        }
        written += lib.lines().count();
        std::fs::write(src.join("lib.rs"), lib)?;
        std::fs::write(
            dir.join(package).join("Cargo.toml"),
            format!("[package]\nname = {package:?}\nversion = \"0.1.0\"\nedition = \"2024\"\n"),
        )?;
    }
    Ok((files + packages, written))
}

/// One generated module of about `lines` lines: structs, SQL, HTTP calls, events and tests.
fn module(index: usize, lines: usize) -> String {
    let mut out = format!(
        "//! Generated module {index}.\nuse std::collections::HashMap;\n\nconst TABLE_{index}: &str = \"orders_read_model\";\nconst API_{index}: &str = \"https://api.example.com/v1\";\n\n"
    );
    let mut item = 0;
    while out.lines().count() + 24 < lines {
        let n = index * 1000 + item;
        let violation = n.is_multiple_of(997);
        let sql = if violation {
            "UPDATE events SET payload = $1 WHERE id = $2"
        } else {
            "SELECT id, payload FROM events WHERE stream_id = $1 ORDER BY version"
        };
        write!(
            out,
            r#"#[derive(Debug, Clone, serde::Serialize)]
pub struct Order{n} {{
    pub id: u64,
    pub total_cents: i64,
    pub note: Option<String>,
}}

pub async fn load_{n}(pool: &sqlx::PgPool, stream: &str) -> sqlx::Result<Vec<Order{n}>> {{
    let rows = sqlx::query("{sql}").bind(stream).fetch_all(pool).await?;
    let mut totals: HashMap<u64, i64> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {{
        *totals.entry(i as u64).or_default() += row.len() as i64;
    }}
    sqlx::query(&format!("UPDATE {{}} SET total = $1", TABLE_{index})).execute(pool).await?;
    let client = reqwest::Client::new();
    let _ = client.get(format!("{{API_{index}}}/orders/{n}")).send().await;
    tracing::info!("loaded {{}} orders for {{}}", totals.len(), stream);
    Ok(totals.into_iter().map(|(id, total_cents)| Order{n} {{ id, total_cents, note: None }}).collect())
}}

"#
        )
        .expect("writing to a string");
        item += 1;
    }
    while out.lines().count() < lines {
        out.push_str("// padding\n");
    }
    out
}
