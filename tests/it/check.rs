//! `nexus check` and `nexus rules test` end to end: exit codes and every output format.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::nexus;

const CONFIG: &str = r#"[services.command-service]
package = "command-service"
role = "command"
addresses = ["command-service", "COMMAND_SERVICE_URL"]

[services.query-dashboard]
package = "query-dashboard"
role = "query"
addresses = ["query-dashboard", "QUERY_DASHBOARD_URL"]

[event_store]
tables = ["events"]
"#;

pub(crate) const VIOLATING: &str = r#"pub async fn purge(pool: &sqlx::PgPool) {
    sqlx::query("DELETE FROM events WHERE id = $1").execute(pool).await.unwrap();
}
"#;

const CLEAN: &str = r#"pub async fn append(pool: &sqlx::PgPool) {
    sqlx::query("INSERT INTO events (id) VALUES ($1)").execute(pool).await.unwrap();
}
"#;

/// A one-package workspace named `command-service` with `lib` as its `src/lib.rs`.
pub(crate) fn workspace(lib: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "Cargo.toml",
        "[package]\nname = \"command-service\"\nedition = \"2024\"\n",
    );
    write(dir.path(), "nexus.toml", CONFIG);
    write(dir.path(), "src/lib.rs", lib);
    dir
}

fn write(root: &Path, name: &str, text: &str) {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// Runs `nexus ARGS ROOT`.
fn check(root: &Path, args: &[&str]) -> Output {
    nexus().args(args).arg(root).output().expect("nexus runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_exits_1_on_a_violation_and_shows_where() {
    let dir = workspace(VIOLATING);
    let out = check(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("NX003::event-store-mutation"), "{text}");
    assert!(text.contains("src/lib.rs:2:17"), "{text}");
    assert!(text.contains("help: events are immutable"), "{text}");
    assert!(text.contains("1 error(s)"), "{text}");
}

#[test]
fn check_exits_0_on_a_clean_workspace() {
    let dir = workspace(CLEAN);
    let out = check(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("0 error(s)"));
}

#[test]
fn check_exits_2_when_it_cannot_run() {
    let dir = workspace(CLEAN);
    write(
        dir.path(),
        "nexus.toml",
        "[services.a]\nrole = \"reader\"\n",
    );
    let out = check(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown role `reader`") && stderr.contains("nexus.toml:2"),
        "{stderr}"
    );

    let empty = tempfile::tempdir().expect("temp dir");
    let out = check(empty.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2), "no Cargo.toml: {out:?}");

    let dir = workspace(CLEAN);
    write(
        dir.path(),
        "custom/broken/rule.rego",
        "package custom.broken\nmetadata := {\n",
    );
    let rules = dir.path().join("custom");
    let out = check(
        dir.path(),
        &["check", "--rules", rules.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(2), "unparsable policy: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid policy"),
        "{out:?}"
    );
}

#[test]
fn an_unparsable_file_is_reported_not_fatal() {
    let dir = workspace(&format!("mod broken;\n{VIOLATING}"));
    write(dir.path(), "src/broken.rs", "fn broken( {\n");
    let out = check(dir.path(), &["check", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the violation still counts: {out:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rules: Vec<&str> = json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(rules, vec!["parse-error", "event-store-mutation"]);
}

/// A real workspace: a `test_data/` folder of broken `.rs` files no target compiles, modules
/// reached through `#[path]` and `include!`, and a `rust-toolchain.toml` pinning a toolchain that
/// is not installed.
#[test]
fn only_compiled_files_are_checked_and_a_missing_pinned_toolchain_falls_back() {
    let dir = workspace(&format!(
        "#[path = \"../generated/store.rs\"]\nmod store;\ninclude!(\"parts.rs\");\n{CLEAN}"
    ));
    write(dir.path(), "generated/store.rs", VIOLATING);
    write(
        dir.path(),
        "src/parts.rs",
        "pub async fn wipe(pool: &sqlx::PgPool) {\n    sqlx::query(\"TRUNCATE events\").execute(pool).await.unwrap();\n}\n",
    );
    write(dir.path(), "test_data/broken.rs", "fn broken( {\n");
    write(dir.path(), "test_data/deeper/also_broken.rs", "impl {\n");
    write(dir.path(), "src/orphan.rs", "fn orphan( {\n");
    write(
        dir.path(),
        "rust-toolchain.toml",
        "[toolchain]\nchannel = \"1.61.0\"\n",
    );
    let out = nexus()
        .args(["check", "--format", "json"])
        .arg(dir.path())
        .current_dir(dir.path())
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("NEXUS_REGISTRY_URL")
        .output()
        .expect("nexus runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("backtrace"),
        "another tool's backtrace: {text}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let findings: Vec<(String, String)> = json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default().to_owned(),
                f["file"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("event-store-mutation", "generated/store.rs"),
        ("toolchain-fallback", "rust-toolchain.toml"),
        ("event-store-mutation", "src/parts.rs"),
    ];
    assert_eq!(
        findings,
        expected.map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{json:#}"
    );
    assert_eq!(json["summary"]["skipped"], 3, "{json:#}");
    assert_eq!(json["summary"]["files"], 3, "{json:#}");
    let note = json["findings"][1]["message"].as_str().unwrap_or_default();
    assert!(
        note.contains("1.61.0") && note.contains("not installed"),
        "{note}"
    );
}

#[test]
fn a_call_reaching_two_sibling_services_is_reported_not_fatal() {
    // One argument names the dashboard's host and the billing service's environment variable;
    // the billing service and a reporting service share the `gateway` address.
    let dir = workspace(
        r#"pub async fn forward(client: &reqwest::Client) -> Result<(), reqwest::Error> {
    let billing = std::env::var("BILLING_URL").unwrap_or_default();
    reqwest::get(format!("http://query-dashboard/proxy?to={billing}")).await?;
    client.get("http://gateway:8080/totals").send().await?;
    Ok(())
}
"#,
    );
    let config = format!(
        "{CONFIG}\n[services.billing]\npackage = \"billing\"\nrole = \"service\"\naddresses = [\"gateway\", \"BILLING_URL\"]\n\n[services.reporting]\npackage = \"reporting\"\nrole = \"query\"\naddresses = [\"gateway\"]\n"
    );
    write(dir.path(), "nexus.toml", &config);
    let out = check(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut found: Vec<(u64, String)> = json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["rule"] == "NX001")
        .map(|f| {
            let message = f["message"].as_str().expect("message");
            let service = message.split('`').nth(3).expect("a service name");
            (f["line"].as_u64().expect("line"), service.to_owned())
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (3, "billing".to_owned()),
            (3, "query-dashboard".to_owned()),
            (4, "billing".to_owned()),
            (4, "reporting".to_owned()),
        ],
        "{json:#}"
    );
}

#[test]
fn json_has_the_documented_shape() {
    let dir = workspace(VIOLATING);
    let out = check(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let finding = &json["findings"][0];
    let keys: Vec<&str> = finding
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "rule",
        "name",
        "severity",
        "file",
        "line",
        "column",
        "end_line",
        "end_column",
        "message",
        "help",
        "fingerprint",
    ];
    expected.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    assert_eq!(finding["rule"], "NX003");
    assert_eq!(finding["name"], "event-store-mutation");
    assert_eq!(finding["severity"], "error");
    assert_eq!(finding["file"], "src/lib.rs");
    assert_eq!(
        (finding["line"].as_u64(), finding["column"].as_u64()),
        (Some(2), Some(17))
    );
    assert_eq!(finding["end_column"].as_u64(), Some(51));
    assert_eq!(json["summary"]["errors"], 1);
}

#[test]
fn sarif_output_validates_against_the_official_schema() {
    let dir = workspace(VIOLATING);
    let out = check(dir.path(), &["check", "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(1));
    let sarif: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let text = include_str!("../../policy-engine/tests/it/data/sarif-schema-2.1.0.json");
    // The official schema's `run.language` pattern has a stray `]` Rust regex engines reject.
    let text = text.replace(
        r#""^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$""#,
        r#""^[a-zA-Z]{2}(-[a-zA-Z]{2})?$""#,
    );
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&sarif)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(sarif["runs"][0]["results"][0]["ruleId"], "NX003");
    assert_eq!(
        sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "src/lib.rs"
    );
}

#[test]
fn github_format_prints_workflow_commands_and_a_step_summary() {
    let dir = workspace(VIOLATING);
    let summary = dir.path().join("summary.md");
    let out = nexus()
        .args(["check", "--format", "github"])
        .arg(dir.path())
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .expect("nexus runs");
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("::error file=src/lib.rs,line=2,col=17,endLine=2,endColumn=51,title=NX003 event-store-mutation::"),
        "{text}"
    );
    assert!(
        first.contains("%0Ahelp: "),
        "multi-line messages are escaped: {first}"
    );
    let summary = std::fs::read_to_string(summary).expect("step summary written");
    assert!(
        summary.contains("| error | NX003 `event-store-mutation` | `src/lib.rs:2:17` |"),
        "{summary}"
    );
}

#[test]
fn junit_format_has_a_failure_per_error() {
    let dir = workspace(VIOLATING);
    let out = check(dir.path(), &["check", "--format", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.starts_with("<?xml"), "{text}");
    assert!(
        text.contains("<testsuite name=\"NX003 event-store-mutation\" tests=\"1\" failures=\"1\">"),
        "{text}"
    );
    assert!(
        text.contains(
            "<failure message=\"this SQL deletes from the event table `events`\" type=\"error\">"
        ),
        "{text}"
    );
    assert_eq!(text.matches("<failure").count(), 1);
}

#[test]
fn write_baseline_accepts_current_findings() {
    let dir = workspace(VIOLATING);
    let out = check(dir.path(), &["check", "--write-baseline"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let baseline =
        std::fs::read_to_string(dir.path().join("nexus-baseline.json")).expect("baseline");
    assert!(
        baseline.contains("\"rule\": \"NX003\"") && !baseline.contains("\"line\""),
        "{baseline}"
    );
    let out = check(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["summary"]["suppressed"], 1);
}

#[test]
fn the_facts_cache_gives_the_same_findings_and_no_cache_bypasses_it() {
    let dir = workspace(VIOLATING);
    // The cache lives in the workspace's Cargo target folder, wherever that is configured.
    let target = dir.path().join("build");
    let cache = target.join("nexus-check-cache");
    let run = |args: &[&str], root: &Path| -> Output {
        nexus()
            .args(args)
            .arg(root)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("nexus runs")
    };
    let uncached = run(&["check", "--format", "json", "--no-cache"], dir.path());
    assert_eq!(uncached.status.code(), Some(1), "{uncached:?}");
    assert!(!cache.exists(), "--no-cache writes no cache");

    let cold = run(&["check", "--format", "json"], dir.path());
    let entries = |dir: &Path| -> usize {
        walkdir_count(dir, |p| p.extension().is_some_and(|e| e == "json"))
    };
    assert_eq!(entries(&cache), 1, "one entry per Rust file");
    let warm = run(&["check", "--format", "json"], dir.path());
    assert_eq!(stdout(&cold), stdout(&uncached));
    assert_eq!(stdout(&warm), stdout(&uncached));

    // A changed file is parsed again, and the stale entry is removed.
    write(dir.path(), "src/lib.rs", CLEAN);
    let changed = run(&["check", "--format", "json"], dir.path());
    assert_eq!(changed.status.code(), Some(0), "{changed:?}");
    assert_eq!(entries(&cache), 1);
}

/// Files under `dir` (recursively) for which `keep` holds.
fn walkdir_count(dir: &Path, keep: impl Fn(&Path) -> bool + Copy) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .map(|p| {
                if p.is_dir() {
                    walkdir_count(&p, keep)
                } else {
                    usize::from(keep(&p))
                }
            })
            .sum()
    })
}

#[test]
fn user_rules_run_without_rust_changes() {
    let dir = workspace(CLEAN);
    write(
        dir.path(),
        "policies/no-println/rule.rego",
        r#"package custom.no_println

metadata := {"code": "ACME1", "name": "println-in-service", "severity": "warning", "summary": "services log with tracing", "remediation": "use tracing::info!"}

deny contains v if {
	some c in input.calls
	c.name == "println"
	v := {"message": "println! in a service", "span": c.span}
}
"#,
    );
    write(
        dir.path(),
        "src/lib.rs",
        "pub fn hello() {\n    println!(\"hi\");\n}\n",
    );
    let rules = dir.path().join("policies");
    let out = check(
        dir.path(),
        &[
            "check",
            "--format",
            "json",
            "--rules",
            rules.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "warnings do not fail: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["findings"][0]["rule"], "ACME1");
    assert_eq!(json["findings"][0]["severity"], "warning");
    assert_eq!(json["findings"][0]["line"], 2);
}

#[test]
fn rules_test_runs_policy_tests_with_coverage() {
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let out = nexus()
        .args(["rules", "test", "--coverage", "--threshold", "50"])
        .arg(&rules)
        .output()
        .expect("nexus runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(
            "PASS: data.nexus.rules.event_store_mutation_test.test_delete_from_events_is_flagged"
        ),
        "{text}"
    );
    assert!(text.contains("coverage"), "{text}");

    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "r/rule.rego",
        "package r\nmetadata := {\"code\": \"R1\", \"name\": \"r\"}\nx := 1\n",
    );
    write(
        dir.path(),
        "r/rule_test.rego",
        "package r_test\nimport data.r\ntest_x_is_two if r.x == 2\n",
    );
    let out = nexus()
        .args(["rules", "test"])
        .arg(dir.path().join("r"))
        .output()
        .expect("nexus runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing policy test fails: {out:?}"
    );
    assert!(stdout(&out).contains("FAIL: data.r_test.test_x_is_two"));
}

/// Serves a Confluent-compatible registry with one subject on 127.0.0.1 for `requests` requests.
fn registry(requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
                    break;
                }
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let schema = serde_json::json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]});
            let (status, body) = match path.as_str() {
                "/subjects" => ("200 OK", r#"["OrderPlaced"]"#.to_owned()),
                "/subjects/OrderPlaced/versions" => ("200 OK", "[1]".to_owned()),
                "/subjects/OrderPlaced/versions/1" => (
                    "200 OK",
                    serde_json::json!({"subject": "OrderPlaced", "version": 1, "id": 1, "schema": schema.to_string(), "schemaType": "JSON", "metadata": {"properties": {"major_version": "1"}}}).to_string(),
                ),
                _ => ("404 Not Found", r#"{"error_code":40401,"message":"Subject not found"}"#.to_owned()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{address}")
}

#[test]
fn event_schemas_are_checked_against_a_registry() {
    let lib = r#"use nexus_runtime::DomainEvent;

pub struct OrderPlaced {
    pub order_id: String,
}

impl DomainEvent for OrderPlaced {
    fn event_type(&self) -> &'static str { "OrderPlaced" }
    fn event_version(&self) -> u32 { 1 }
}

pub struct OrderShipped {
    pub order_id: String,
}

impl DomainEvent for OrderShipped {
    fn event_type(&self) -> &'static str { "OrderShipped" }
    fn event_version(&self) -> u32 { 1 }
}
"#;
    let dir = workspace(lib);
    let url = registry(3);
    let out = check(
        dir.path(),
        &["check", "--format", "json", "--registry", &url],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let findings = json["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0]["rule"], "NX004");
    assert!(
        findings[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`OrderShipped`")
    );

    // Without a registry or schemas folder, nothing verifies the events: an error by default
    // (events must conform before deployment), a warning when `nexus.toml` lowers the gate.
    let out = check(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["summary"]["errors"], 2, "{json:#}");
    let help = json["findings"][0]["help"].as_str().unwrap_or_default();
    assert!(
        help.contains("schemas/OrderPlaced/1.0.0.json") && help.contains("--registry"),
        "the fix names where schemas go and how to name a registry: {help}"
    );
    write(
        dir.path(),
        "nexus.toml",
        &format!("{CONFIG}\n[schemas]\ngate = \"warning\"\n"),
    );
    let out = check(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["summary"]["warnings"], 2, "{json:#}");
    write(dir.path(), "nexus.toml", CONFIG);

    // An unreachable registry makes the tool fail.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let out = check(dir.path(), &["check", "--registry", &closed]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
