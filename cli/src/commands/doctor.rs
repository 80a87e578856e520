//! `nexus doctor`: checks that this machine can build and run Nexus services.
//!
//! Every check has a stable id (`toolchain.rustc`, `service.postgres`, `port.8080`, …) and ends
//! as ok, warn, fail or skipped. Checks run concurrently, each within [`CHECK_TIMEOUT`].
//! The servers are optional (the embedded default needs none), so an unreachable server or a
//! busy port is a warning; only what stops Nexus from building or running at all fails.

use std::io::{self, Read as _, Write as _};
use std::net::{TcpListener, TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use futures::future::{BoxFuture, FutureExt as _};
use serde::Serialize;

use super::Outcome;
use crate::output;

/// How long one check may take before it is reported as not answering.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The ports `nexus up` listens on by default (on 127.0.0.1), what listens there, and the flag
/// of `nexus up` that moves it.
///
/// Keep this list in step with `nexus up`: a port in use here means `nexus up` would fail to
/// start that service.
const UP_PORTS: &[UpPort] = &[
    UpPort {
        port: 8080,
        purpose: "command service",
        flag: "--command-port",
    },
    UpPort {
        port: 8081,
        purpose: "query dashboard",
        flag: "--query-port",
    },
    UpPort {
        port: 8082,
        purpose: "schema registry",
        flag: "--registry-port",
    },
];

/// A port `nexus up` listens on.
#[derive(Debug, Clone, Copy)]
struct UpPort {
    port: u16,
    purpose: &'static str,
    flag: &'static str,
}

/// The folder, relative to the current directory, where `nexus up` keeps its data.
const DATA_DIR: &str = ".nexus";

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// PostgreSQL server to check.
    #[arg(
        long,
        value_name = "URL",
        env = "NEXUS_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// NATS server to check (JetStream must be enabled).
    #[arg(
        long,
        value_name = "URL",
        env = "NEXUS_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// RabbitMQ broker to check.
    #[arg(
        long,
        value_name = "URL",
        env = "NEXUS_RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    rabbitmq_url: String,
    /// An extra port to check is free, besides the ones `nexus up` uses; repeatable.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Skip the check with this id, or every check under this prefix (`service`, `port`); repeatable.
    #[arg(long = "skip", value_name = "ID")]
    skip: Vec<String>,
    /// Print `{"checks": […], "summary": {…}}` instead of lines.
    #[arg(long)]
    json: bool,
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

/// One check, as printed.
#[derive(Debug, Serialize)]
struct Check {
    id: String,
    status: Status,
    detail: String,
    /// What to do about it; `None` when the check passed.
    fix: Option<String>,
}

impl Check {
    fn ok(id: &str, detail: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(id: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(id: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    ok: usize,
    warn: usize,
    fail: usize,
    skipped: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    checks: Vec<Check>,
    summary: Summary,
}

pub(crate) fn run(args: DoctorArgs) -> anyhow::Result<Outcome> {
    let runtime = super::tokio_runtime()?;
    let checks = runtime.block_on(run_checks(&args));
    // A child process or socket that outlived its timeout must not keep doctor waiting.
    runtime.shutdown_background();

    let mut summary = Summary::default();
    for check in &checks {
        match check.status {
            Status::Ok => summary.ok += 1,
            Status::Warn => summary.warn += 1,
            Status::Fail => summary.fail += 1,
            Status::Skipped => summary.skipped += 1,
        }
    }
    let failed = summary.fail > 0;
    let report = Report { checks, summary };
    if args.json {
        output::json(&report)?;
    } else {
        output::line(&render_human(&report))?;
    }
    Ok(if failed {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

/// Runs every check concurrently and returns them in their fixed order.
async fn run_checks(args: &DoctorArgs) -> Vec<Check> {
    let mut planned: Vec<(String, BoxFuture<'static, Check>)> = vec![
        ("toolchain.rustc".to_owned(), toolchain("rustc").boxed()),
        ("toolchain.cargo".to_owned(), toolchain("cargo").boxed()),
        (
            "service.postgres".to_owned(),
            postgres(args.postgres_url.clone()).boxed(),
        ),
        (
            "service.postgres.role".to_owned(),
            postgres_role(args.postgres_url.clone()).boxed(),
        ),
        (
            "service.nats".to_owned(),
            nats(args.nats_url.clone()).boxed(),
        ),
        (
            "service.rabbitmq".to_owned(),
            rabbitmq(args.rabbitmq_url.clone()).boxed(),
        ),
    ];
    for &up in UP_PORTS {
        planned.push((
            format!("port.{}", up.port),
            port_free(up.port, Some(up)).boxed(),
        ));
    }
    for &port in &args.ports {
        let id = format!("port.{port}");
        if !planned.iter().any(|(planned, _)| *planned == id) {
            planned.push((id, port_free(port, None).boxed()));
        }
    }
    planned.push(("fs.data_dir".to_owned(), data_dir().boxed()));

    let running = planned.into_iter().map(|(id, check)| {
        let skipped_by = args
            .skip
            .iter()
            .find(|skip| id == **skip || id.starts_with(&format!("{skip}.")))
            .cloned();
        async move {
            if let Some(skip) = skipped_by {
                return Check {
                    detail: format!("skipped with --skip {skip}"),
                    id,
                    status: Status::Skipped,
                    fix: None,
                };
            }
            match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(check) => check,
                Err(_) => Check::warn(
                    &id,
                    format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
                    "run `nexus doctor` again; if it keeps timing out, check this by hand",
                ),
            }
        }
    });
    futures::future::join_all(running).await
}

fn render_human(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|check| check.id.len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for check in &report.checks {
        let mark = match check.status {
            Status::Ok => "✓ ok  ",
            Status::Warn => "! warn",
            Status::Fail => "✗ FAIL",
            Status::Skipped => "- skip",
        };
        text.push_str(&format!(
            "{mark}  {id:<width$}  {detail}\n",
            id = check.id,
            detail = check.detail
        ));
        if let Some(fix) = &check.fix {
            text.push_str(&format!("{:<6}  {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let s = &report.summary;
    text.push_str(&format!(
        "\nnexus doctor: {} ok, {} warning(s), {} failed, {} skipped",
        s.ok, s.warn, s.fail, s.skipped
    ));
    text
}

/// `rustc` or `cargo` on `PATH`, at least the workspace's `rust-version`.
async fn toolchain(tool: &'static str) -> Check {
    let id = format!("toolchain.{tool}");
    let minimum = env!("CARGO_PKG_RUST_VERSION");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
    })
    .await;
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(err)) if err.kind() == io::ErrorKind::NotFound => {
            return Check::fail(
                &id,
                format!("`{tool}` is not on PATH"),
                "install Rust with rustup (https://rustup.rs), then open a new shell",
            );
        }
        Ok(Err(err)) => {
            return Check::fail(
                &id,
                format!("failed to run `{tool} --version`: {err}"),
                "rustup update",
            );
        }
        Err(err) => {
            return Check::fail(
                &id,
                format!("failed to run `{tool} --version`: {err}"),
                "rustup update",
            );
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.lines().next().unwrap_or("no error message").trim();
        return Check::fail(
            &id,
            format!("`{tool} --version` failed: {reason}"),
            "rustup update",
        );
    }
    let line = stdout.lines().next().unwrap_or("").trim();
    let Some(found) = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| semver::Version::parse(v).ok())
    else {
        return Check::warn(
            &id,
            format!("could not read a version from `{line}`"),
            "rustup update",
        );
    };
    // Pre-releases count as their release: a 1.95 nightly builds a crate that needs 1.95.
    let release = semver::Version::new(found.major, found.minor, found.patch);
    match parse_rust_version(minimum) {
        Some(required) if release < required => Check::fail(
            &id,
            format!("{tool} {found} is older than the workspace's rust-version {minimum}"),
            "rustup update",
        ),
        Some(_) => Check::ok(&id, format!("{tool} {found} (needs {minimum} or newer)")),
        None => Check::ok(&id, format!("{tool} {found}")),
    }
}

/// `1.95` or `1.95.0` as a version.
fn parse_rust_version(text: &str) -> Option<semver::Version> {
    let mut parts = text.split('.').map(str::parse::<u64>);
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().transpose().ok()?.unwrap_or(0);
    Some(semver::Version::new(major, minor, patch))
}

/// PostgreSQL answers `SELECT version()`.
async fn postgres(url: String) -> Check {
    const ID: &str = "service.postgres";
    let shown = output::redact_url(&url);
    let fix = "start PostgreSQL (`docker compose up -d postgres` with the generated compose.yaml, \
               or the system service), or point --postgres-url / NEXUS_POSTGRES_URL at one; \
               only needed for `--store postgres`";
    let mut config: tokio_postgres::Config = match url.parse() {
        Ok(config) => config,
        Err(err) => {
            return Check::fail(
                ID,
                format!("invalid URL `{shown}`: {}", error_chain(&err)),
                "pass a URL like postgres://USER:PASSWORD@HOST:5432/DATABASE",
            );
        }
    };
    config.connect_timeout(CHECK_TIMEOUT);
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(err) => {
            return Check::warn(ID, format!("{shown}: {}", postgres_error(&err)), fix);
        }
    };
    tokio::spawn(connection);
    match client.query_one("SELECT version()", &[]).await {
        Ok(row) => {
            let version: String = row.get(0);
            // "PostgreSQL 16.4 (Debian 16.4-1) on x86_64-pc-linux-gnu, compiled by …"
            let short = version.split_whitespace().take(2).collect::<Vec<_>>();
            Check::ok(ID, format!("{} at {shown}", short.join(" ")))
        }
        Err(err) => Check::warn(
            ID,
            format!(
                "{shown}: `SELECT version()` failed: {}",
                postgres_error(&err)
            ),
            fix,
        ),
    }
}

/// The role the URL names cannot rewrite the event log: it may not `UPDATE`, `DELETE` or
/// `TRUNCATE` `nexus.events`, nor disable its triggers (as its owner or a superuser could).
async fn postgres_role(url: String) -> Check {
    const ID: &str = "service.postgres.role";
    let skipped = |detail: &str| Check {
        id: ID.to_owned(),
        status: Status::Skipped,
        detail: detail.to_owned(),
        fix: None,
    };
    let Ok(mut config) = url.parse::<tokio_postgres::Config>() else {
        return skipped("no valid PostgreSQL URL");
    };
    config.connect_timeout(CHECK_TIMEOUT);
    let Ok((client, connection)) = config.connect(tokio_postgres::NoTls).await else {
        return skipped("PostgreSQL is not reachable");
    };
    tokio::spawn(connection);
    let found = client
        .query_one("SELECT to_regclass('nexus.events') IS NOT NULL", &[])
        .await;
    match found {
        Ok(row) if row.get::<_, bool>(0) => {}
        Ok(_) => return Check::ok(ID, "no Nexus event store (schema `nexus`) in this database"),
        Err(err) => {
            return skipped(&format!(
                "cannot look for the event store: {}",
                postgres_error(&err)
            ));
        }
    }
    let rights = client
        .query_one(
            "SELECT current_user::text, \
                    has_table_privilege('nexus.events', 'UPDATE'), \
                    has_table_privilege('nexus.events', 'DELETE'), \
                    has_table_privilege('nexus.events', 'TRUNCATE'), \
                    pg_has_role(c.relowner, 'USAGE') OR r.rolsuper \
             FROM pg_class c, pg_roles r \
             WHERE c.oid = 'nexus.events'::regclass AND r.rolname = current_user",
            &[],
        )
        .await;
    let row = match rights {
        Ok(row) => row,
        Err(err) => {
            return skipped(&format!(
                "cannot read the role's privileges: {}",
                postgres_error(&err)
            ));
        }
    };
    let role: String = row.get(0);
    let can: Vec<&str> = [
        (row.get::<_, bool>(1), "UPDATE"),
        (row.get(2), "DELETE"),
        (row.get(3), "TRUNCATE"),
        (row.get(4), "disable triggers on"),
    ]
    .into_iter()
    .filter_map(|(granted, what)| granted.then_some(what))
    .collect();
    if can.is_empty() {
        return Check::ok(ID, format!("role `{role}` may only read and insert events"));
    }
    Check::warn(
        ID,
        format!("role `{role}` can {} nexus.events", can.join(", ")),
        "run the services under a role granted only SELECT and INSERT on nexus.events \
         (README: \"PostgreSQL roles\"); keep the owner for migrations",
    )
}

fn postgres_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error_chain(err),
    }
}

/// NATS accepts a connection and JetStream answers for the account.
async fn nats(url: String) -> Check {
    const ID: &str = "service.nats";
    let shown = output::redact_url(&url);
    let client = match async_nats::ConnectOptions::new()
        .connection_timeout(CHECK_TIMEOUT)
        .request_timeout(Some(CHECK_TIMEOUT))
        .connect(url.as_str())
        .await
    {
        Ok(client) => client,
        Err(err) => {
            return Check::warn(
                ID,
                format!("{shown}: {}", error_chain(&err)),
                "start NATS with JetStream (`nats-server -js`, or `docker compose up -d nats` \
                 with the generated compose.yaml), or point --nats-url / NEXUS_NATS_URL at one; \
                 only needed for the NATS bus",
            );
        }
    };
    let version = client.server_info().version;
    let jetstream_off = "restart nats-server with JetStream enabled (`nats-server -js`)";
    // The raw `$JS.API.INFO` request rather than `query_account`, whose typed answer does not
    // parse on servers older than the client's feature level.
    let reply = match client.request("$JS.API.INFO", Default::default()).await {
        Ok(reply) => reply,
        Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Check::warn(
                ID,
                format!("nats-server {version} at {shown}, but JetStream is not enabled"),
                jetstream_off,
            );
        }
        Err(err) => {
            return Check::warn(
                ID,
                format!(
                    "nats-server {version} at {shown}, but JetStream did not answer: {}",
                    error_chain(&err)
                ),
                jetstream_off,
            );
        }
    };
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    if let Some(error) = info.get("error") {
        let description = error["description"].as_str().unwrap_or("an error");
        return Check::warn(
            ID,
            format!("nats-server {version} at {shown}, but JetStream answered: {description}"),
            jetstream_off,
        );
    }
    match info["streams"].as_u64() {
        Some(streams) => Check::ok(
            ID,
            format!("nats-server {version} at {shown}, JetStream enabled ({streams} stream(s))"),
        ),
        None => Check::warn(
            ID,
            format!("nats-server {version} at {shown}, but JetStream's account info is unreadable"),
            jetstream_off,
        ),
    }
}

/// RabbitMQ answers the AMQP 0-9-1 protocol header with `Connection.Start`.
async fn rabbitmq(url: String) -> Check {
    const ID: &str = "service.rabbitmq";
    let shown = output::redact_url(&url);
    let fix = "start RabbitMQ (`docker compose up -d rabbitmq` with the generated compose.yaml, \
               or the system service), or point --rabbitmq-url / NEXUS_RABBITMQ_URL at one; \
               only needed for the RabbitMQ integration sink";
    let Some((host, port, tls)) = amqp_address(&url) else {
        return Check::fail(
            ID,
            format!("invalid URL `{shown}`"),
            "pass a URL like amqp://USER:PASSWORD@HOST:5672/%2f",
        );
    };
    let probe = tokio::task::spawn_blocking(move || amqp_probe(&host, port, tls)).await;
    match probe {
        Ok(Ok(server)) => Check::ok(ID, format!("{server} at {shown}")),
        Ok(Err(err)) => Check::warn(ID, format!("{shown}: {err}"), fix),
        Err(err) => Check::warn(ID, format!("{shown}: {err}"), fix),
    }
}

/// Host, port and whether TLS is used, from an `amqp://` or `amqps://` URL.
fn amqp_address(url: &str) -> Option<(String, u16, bool)> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("amqps://") {
        (true, rest)
    } else {
        (false, url.strip_prefix("amqp://")?)
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = if tls { 5671 } else { 5672 };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None => default_port,
        };
        (host, port)
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (host_port, default_port),
        }
    };
    let host = if host.is_empty() { "localhost" } else { host };
    Some((host.to_owned(), port, tls))
}

/// Connects, sends the AMQP 0-9-1 protocol header, and reads the server's product and version
/// from its `Connection.Start`. With TLS only the TCP connection is checked.
fn amqp_probe(host: &str, port: u16, tls: bool) -> io::Result<String> {
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address"));
    let mut stream = None;
    for addr in (host, port).to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(err) => last = err,
        }
    }
    let mut stream = stream.ok_or(last)?;
    if tls {
        return Ok("TCP connection (TLS handshake not checked)".to_owned());
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    stream.write_all(b"AMQP\x00\x00\x09\x01")?;
    let mut header = [0u8; 7];
    stream.read_exact(&mut header)?;
    if header.starts_with(b"AMQP") {
        return Err(io::Error::other(
            "the server does not speak AMQP 0-9-1 (it answered with its own protocol header)",
        ));
    }
    if header[0] != 1 {
        return Err(io::Error::other(
            "not an AMQP server (its first bytes are not an AMQP frame)",
        ));
    }
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if size > 1 << 20 {
        return Err(io::Error::other(
            "the server's first frame is implausibly large",
        ));
    }
    let mut payload = vec![0u8; size];
    stream.read_exact(&mut payload)?;
    let properties = connection_start(&payload)
        .ok_or_else(|| io::Error::other("the server's first frame is not Connection.Start"))?;
    let product = properties.0.unwrap_or_else(|| "AMQP server".to_owned());
    Ok(match properties.1 {
        Some(version) => format!("{product} {version} (AMQP 0-9-1)"),
        None => format!("{product} (AMQP 0-9-1)"),
    })
}

/// The `product` and `version` server properties of a `Connection.Start` method payload.
fn connection_start(payload: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let mut at = Cursor { bytes: payload };
    // Class 10 (connection), method 10 (start), then the protocol version 0-9.
    if at.take(4)? != [0, 10, 0, 10] {
        return None;
    }
    at.take(2)?;
    let table_len = at.u32()? as usize;
    let mut table = Cursor {
        bytes: at.take(table_len)?,
    };
    let (mut product, mut version) = (None, None);
    while !table.bytes.is_empty() {
        let name_len = usize::from(table.take(1)?[0]);
        let name = table.take(name_len)?.to_vec();
        let kind = table.take(1)?[0];
        let skip = match kind {
            b'S' | b'F' | b'A' | b'x' => {
                let len = table.u32()? as usize;
                let value = table.take(len)?;
                if kind == b'S' {
                    let text = String::from_utf8_lossy(value).into_owned();
                    match name.as_slice() {
                        b"product" => product = Some(text),
                        b"version" => version = Some(text),
                        _ => {}
                    }
                }
                0
            }
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'T' | b'd' => 8,
            b'V' => 0,
            _ => return Some((product, version)),
        };
        table.take(skip)?;
    }
    Some((product, version))
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// A port `nexus up` (`up` is `Some`) or `--port` names is free on 127.0.0.1.
async fn port_free(port: u16, up: Option<UpPort>) -> Check {
    let id = format!("port.{port}");
    let checked =
        tokio::task::spawn_blocking(move || match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => Ok(()),
            Err(err) => Err((err, holder(port))),
        })
        .await;
    let (port_of, instead) = match up {
        Some(up) => (
            format!("{} port, ", up.purpose),
            format!(
                "or move the {} with `nexus up {} PORT`",
                up.purpose, up.flag
            ),
        ),
        None => (String::new(), "or pick another port".to_owned()),
    };
    match checked {
        Ok(Ok(())) => Check::ok(&id, format!("{port_of}free")),
        Ok(Err((err, holder))) => {
            let (detail, fix) = match (err.kind(), holder) {
                (io::ErrorKind::AddrInUse, Some(holder)) => (
                    format!("{port_of}in use by {holder}"),
                    format!("stop {holder}, {instead}"),
                ),
                (io::ErrorKind::AddrInUse, None) => (
                    format!("{port_of}in use"),
                    format!(
                        "stop what listens on {port} (`ss -ltnp 'sport = :{port}'` shows it), \
                         {instead}"
                    ),
                ),
                (_, _) => (
                    format!("{port_of}cannot listen on it: {err}"),
                    instead.trim_start_matches("or ").to_owned(),
                ),
            };
            Check::warn(&id, detail, fix)
        }
        Err(err) => Check::warn(
            &id,
            format!("{port_of}could not check: {err}"),
            "run `nexus doctor` again",
        ),
    }
}

/// The process listening on a TCP port, as `name (pid N)`, when this user may see it.
#[cfg(target_os = "linux")]
fn holder(port: u16) -> Option<String> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit_once(':')?.1;
                    let listening = *fields.get(3)? == "0A";
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| fields.get(9).map(|inode| (*inode).to_owned()))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes
        .iter()
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| targets.iter().any(|t| target.as_os_str() == t.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("`{}` (pid {pid})", comm.trim()));
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn holder(_port: u16) -> Option<String> {
    None
}

/// `.nexus/` in the current directory exists as a writable folder, or can be created.
async fn data_dir() -> Check {
    const ID: &str = "fs.data_dir";
    let checked = tokio::task::spawn_blocking(|| check_data_dir(Path::new(DATA_DIR))).await;
    match checked {
        Ok(check) => check,
        Err(err) => Check::warn(
            ID,
            format!("could not check: {err}"),
            "run `nexus doctor` again",
        ),
    }
}

fn check_data_dir(dir: &Path) -> Check {
    const ID: &str = "fs.data_dir";
    let cwd = std::env::current_dir()
        .map(|cwd| cwd.display().to_string())
        .unwrap_or_else(|_| ".".to_owned());
    let shown = format!("{}/ in {cwd}", dir.display());
    let fix_permissions = format!(
        "run Nexus from a folder you can write to, or make {}/ writable",
        dir.display()
    );
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Check::fail(
            ID,
            format!("{shown} is a file, not a folder"),
            format!("move the file `{}` out of the way", dir.display()),
        ),
        Ok(_) => match tempfile::Builder::new().prefix(".doctor-").tempfile_in(dir) {
            Ok(_) => Check::ok(ID, format!("{shown} is writable")),
            Err(err) => Check::fail(
                ID,
                format!("{shown} is not writable: {err}"),
                fix_permissions,
            ),
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            // Probe the parent without leaving `.nexus/` behind.
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            match tempfile::Builder::new()
                .prefix(".nexus-doctor-")
                .tempdir_in(parent)
            {
                Ok(_) => Check::ok(ID, format!("{shown} does not exist yet and can be created")),
                Err(err) => Check::fail(
                    ID,
                    format!("{shown} does not exist and cannot be created: {err}"),
                    fix_permissions,
                ),
            }
        }
        Err(err) => Check::fail(ID, format!("cannot read {shown}: {err}"), fix_permissions),
    }
}

/// An error and its causes, joined with `: `, without repeating a cause already shown.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_address_reads_host_port_and_tls() {
        assert_eq!(
            amqp_address("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Some(("127.0.0.1".to_owned(), 5672, false))
        );
        assert_eq!(
            amqp_address("amqps://broker"),
            Some(("broker".to_owned(), 5671, true))
        );
        assert_eq!(
            amqp_address("amqp://[::1]:5673"),
            Some(("::1".to_owned(), 5673, false))
        );
        assert_eq!(amqp_address("http://x"), None);
    }

    #[test]
    fn rust_version_accepts_two_or_three_parts() {
        assert_eq!(
            parse_rust_version("1.95"),
            Some(semver::Version::new(1, 95, 0))
        );
        assert_eq!(
            parse_rust_version("1.95.2"),
            Some(semver::Version::new(1, 95, 2))
        );
        assert_eq!(parse_rust_version("one"), None);
    }

    #[test]
    fn connection_start_reads_product_and_version() {
        let mut table = Vec::new();
        for (name, kind, value) in [
            ("capabilities", b'F', &b"\x00\x00\x00\x00"[..0]),
            ("product", b'S', b"RabbitMQ"),
            ("version", b'S', b"3.12.1"),
        ] {
            table.push(u8::try_from(name.len()).unwrap());
            table.extend_from_slice(name.as_bytes());
            table.push(kind);
            table.extend_from_slice(&u32::try_from(value.len()).unwrap().to_be_bytes());
            table.extend_from_slice(value);
        }
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend_from_slice(&u32::try_from(table.len()).unwrap().to_be_bytes());
        payload.extend_from_slice(&table);
        assert_eq!(
            connection_start(&payload),
            Some((Some("RabbitMQ".to_owned()), Some("3.12.1".to_owned())))
        );
        assert_eq!(connection_start(&[0, 10, 0, 11]), None);
    }
}
