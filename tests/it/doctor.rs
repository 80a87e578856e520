//! `nexus doctor` and `nexus completions` end to end.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::{TestDb, nexus, service_url};

/// Every check `nexus doctor` runs with no `--port`, in its printed order.
const IDS: &[&str] = &[
    "toolchain.rustc",
    "toolchain.cargo",
    "service.postgres",
    "service.postgres.role",
    "service.nats",
    "service.rabbitmq",
    "port.8080",
    "port.8081",
    "port.8082",
    "fs.data_dir",
];

/// A port where nothing listens: connections are refused at once.
const CLOSED: &str = "127.0.0.1:1";

/// Runs `nexus` in `dir` with the server variables of the developer's shell cleared.
fn nexus_in(dir: &Path, args: &[&str]) -> Output {
    nexus()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run nexus")
}

/// `nexus doctor --json` with the servers pointed at a closed port, unless `args` says otherwise.
fn doctor_json(dir: &Path, args: &[&str]) -> (Output, Value) {
    let postgres = format!("postgres://postgres@{CLOSED}/x");
    let nats = format!("nats://{CLOSED}");
    let rabbitmq = format!("amqp://guest:guest@{CLOSED}/%2f");
    let mut all = vec!["doctor", "--json"];
    for (flag, default) in [
        ("--postgres-url", postgres.as_str()),
        ("--nats-url", nats.as_str()),
        ("--rabbitmq-url", rabbitmq.as_str()),
    ] {
        if !args.contains(&flag) {
            all.extend([flag, default]);
        }
    }
    all.extend(args);
    let output = nexus_in(dir, &all);
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("doctor --json is not JSON ({err}):\n{}", text(&output)));
    (output, report)
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks is a list")
        .iter()
        .find(|check| check["id"] == id)
        .unwrap_or_else(|| panic!("no check `{id}` in {report:#}"))
}

fn text(output: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn doctor_json_lists_every_check_with_a_status_and_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, report) = doctor_json(dir.path(), &[]);
    let checks = report["checks"].as_array().expect("checks is a list");
    let ids: Vec<&str> = checks
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, IDS, "{}", text(&output));
    for check in checks {
        let status = check["status"].as_str().expect("status");
        assert!(
            ["ok", "warn", "fail", "skipped"].contains(&status),
            "{check}"
        );
        assert!(
            check["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{check}"
        );
        assert_eq!(
            check["fix"].is_string(),
            status == "warn" || status == "fail",
            "a fix exactly when not ok: {check}"
        );
    }
    let count = |status: &str| checks.iter().filter(|c| c["status"] == status).count();
    for status in ["ok", "warn", "fail"] {
        assert_eq!(report["summary"][status], count(status), "{report:#}");
    }
    let expected = if count("fail") == 0 { 0 } else { 1 };
    assert_eq!(output.status.code(), Some(expected), "{}", text(&output));
    assert_eq!(check(&report, "fs.data_dir")["status"], "ok", "{report:#}");
}

#[test]
fn doctor_warns_about_an_unreachable_postgres_and_still_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, report) = doctor_json(
        dir.path(),
        &[
            "--postgres-url",
            "postgres://postgres@127.0.0.1:1/x",
            "--skip",
            "toolchain",
            "--skip",
            "port",
        ],
    );
    let postgres = check(&report, "service.postgres");
    assert_eq!(postgres["status"], "warn", "{report:#}");
    assert!(
        postgres["fix"]
            .as_str()
            .is_some_and(|fix| fix.contains("compose") && fix.contains("--postgres-url")),
        "{report:#}"
    );
    assert!(
        postgres["detail"]
            .as_str()
            .is_some_and(|d| d.contains("127.0.0.1:1")),
        "{report:#}"
    );
    for id in ["service.nats", "service.rabbitmq"] {
        assert_eq!(check(&report, id)["status"], "warn", "{report:#}");
    }
    assert_eq!(report["summary"]["fail"], 0, "{report:#}");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

#[test]
fn doctor_warns_about_a_port_in_use_and_names_the_process() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = listener
        .local_addr()
        .expect("local addr")
        .port()
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, report) = doctor_json(dir.path(), &["--port", &port, "--skip", "service"]);
    let id = format!("port.{port}");
    let busy = check(&report, &id);
    assert_eq!(busy["status"], "warn", "{report:#}");
    assert!(busy["fix"].is_string(), "{report:#}");
    if cfg!(target_os = "linux") {
        let pid = format!("pid {}", std::process::id());
        assert!(
            busy["detail"].as_str().is_some_and(|d| d.contains(&pid)),
            "names this test process ({pid}): {report:#}"
        );
    }
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    drop(listener);

    // Once released, the same port is free.
    let (_, report) = doctor_json(dir.path(), &["--port", &port, "--skip", "service"]);
    assert_eq!(check(&report, &id)["status"], "ok", "{report:#}");
}

#[test]
fn doctor_skips_the_checks_named_by_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, report) = doctor_json(
        dir.path(),
        &["--skip", "service", "--skip", "toolchain.cargo"],
    );
    for id in [
        "service.postgres",
        "service.postgres.role",
        "service.nats",
        "service.rabbitmq",
        "toolchain.cargo",
    ] {
        let skipped = check(&report, id);
        assert_eq!(skipped["status"], "skipped", "{report:#}");
        assert!(skipped["fix"].is_null(), "{report:#}");
    }
    assert_ne!(
        check(&report, "toolchain.rustc")["status"],
        "skipped",
        "{report:#}"
    );
    assert_eq!(report["summary"]["skipped"], 5, "{}", text(&output));
}

#[test]
fn doctor_fails_with_exit_1_when_the_data_dir_is_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".nexus"), "not a folder").expect("write .nexus");
    let (output, report) = doctor_json(dir.path(), &["--skip", "service", "--skip", "port"]);
    let data_dir = check(&report, "fs.data_dir");
    assert_eq!(data_dir["status"], "fail", "{report:#}");
    assert!(data_dir["fix"].is_string(), "{report:#}");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
}

#[test]
fn doctor_prints_one_aligned_line_per_check_with_fix_hints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = nexus_in(
        dir.path(),
        &[
            "doctor",
            "--postgres-url",
            "postgres://postgres@127.0.0.1:1/x",
            "--skip",
            "service.nats",
            "--skip",
            "service.rabbitmq",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = |id: &str| {
        stdout
            .lines()
            .find(|line| line.split_whitespace().nth(2) == Some(id))
            .unwrap_or_else(|| panic!("no line for `{id}`:\n{}", text(&output)))
            .to_owned()
    };
    let columns: Vec<usize> = IDS
        .iter()
        .map(|id| {
            let line = line(id);
            let at = line.find(id).expect("id on its line");
            line[..at].chars().count()
        })
        .collect();
    assert!(
        columns.windows(2).all(|w| w[0] == w[1]),
        "ids start in one column:\n{stdout}"
    );
    assert!(line("service.postgres").contains("warn"), "{stdout}");
    assert!(line("service.nats").contains("skip"), "{stdout}");
    assert!(stdout.contains("fix: start PostgreSQL"), "{stdout}");
    assert!(stdout.contains("nexus doctor: "), "{stdout}");
}

#[test]
fn doctor_reports_a_reachable_postgres_as_ok_with_its_version() {
    let Some(url) = service_url("NEXUS_TEST_POSTGRES_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, report) = doctor_json(dir.path(), &["--postgres-url", &url]);
    let postgres = check(&report, "service.postgres");
    assert_eq!(postgres["status"], "ok", "{}", text(&output));
    assert!(
        postgres["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("PostgreSQL ")),
        "{report:#}"
    );
}

#[test]
fn doctor_reports_a_reachable_nats_with_jetstream_as_ok() {
    let Some(url) = service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, report) = doctor_json(dir.path(), &["--nats-url", &url]);
    let nats = check(&report, "service.nats");
    assert_eq!(nats["status"], "ok", "{}", text(&output));
    assert!(
        nats["detail"]
            .as_str()
            .is_some_and(|d| d.contains("JetStream enabled")),
        "{report:#}"
    );
}

#[test]
fn doctor_reports_a_reachable_rabbitmq_as_ok() {
    let Some(url) = service_url("NEXUS_TEST_RABBITMQ_URL") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, report) = doctor_json(dir.path(), &["--rabbitmq-url", &url]);
    let rabbitmq = check(&report, "service.rabbitmq");
    assert_eq!(rabbitmq["status"], "ok", "{}", text(&output));
    assert!(
        rabbitmq["detail"]
            .as_str()
            .is_some_and(|d| d.contains("AMQP 0-9-1")),
        "{report:#}"
    );
}

#[test]
fn completions_print_a_bash_script_that_knows_the_subcommands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = nexus_in(dir.path(), &["completions", "bash"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(script.contains("complete "), "{script}");
    for subcommand in ["check", "registry", "schema", "doctor", "completions"] {
        assert!(script.contains(subcommand), "missing `{subcommand}`");
    }
}

#[test]
fn completions_print_a_zsh_script_starting_with_compdef() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = nexus_in(dir.path(), &["completions", "zsh"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("#compdef nexus"),
        "{}",
        text(&output)
    );
}

#[test]
fn completions_reject_an_unknown_shell_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = nexus_in(dir.path(), &["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'tcsh'") && stderr.contains("bash"),
        "{stderr}"
    );
}

/// Runs `sql` on the server at `url` (a PostgreSQL URL with a database).
fn psql(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client.batch_execute(sql).await.expect(sql);
    });
}

#[test]
fn doctor_warns_when_the_service_role_can_rewrite_events_and_not_when_it_may_only_insert() {
    let Some(db) = TestDb::create_blocking() else {
        return;
    };
    let role = format!("nexus_svc_{}", uuid::Uuid::now_v7().simple());
    let db_url = db.url().to_owned();
    // The schema as the event store creates it, reduced to what the check reads.
    psql(
        &db_url,
        &format!(
            "CREATE SCHEMA nexus; CREATE TABLE nexus.events (position bigint); \
             CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA nexus TO {role}; \
             GRANT SELECT, INSERT ON nexus.events TO {role}"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (output, owner) = doctor_json(dir.path(), &["--postgres-url", &db_url]);
    let role_check = check(&owner, "service.postgres.role");
    let restricted_url = db_url.replacen("postgres@", &format!("{role}@"), 1);
    let (_, restricted) = doctor_json(dir.path(), &["--postgres-url", &restricted_url]);
    let admin_url = db.admin_url().to_owned();
    drop(db);
    psql(&admin_url, &format!("DROP ROLE {role}"));
    assert_eq!(role_check["status"], "warn", "{}", text(&output));
    let detail = role_check["detail"].as_str().unwrap_or_default();
    for right in ["UPDATE", "DELETE", "TRUNCATE", "disable triggers"] {
        assert!(detail.contains(right), "{detail}");
    }
    assert!(
        role_check["fix"]
            .as_str()
            .is_some_and(|f| f.contains("SELECT and INSERT")),
        "{owner:#}"
    );
    assert_eq!(output.status.code(), Some(0), "a warning is not a failure");
    let role_check = check(&restricted, "service.postgres.role");
    assert_eq!(role_check["status"], "ok", "{restricted:#}");
    assert!(
        role_check["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&role) && d.contains("only read and insert")),
        "{restricted:#}"
    );
}
