//! `nexus new` end to end: bad input writes nothing; generated projects build, pass their own
//! tests and `nexus check`, and `nexus check` catches a planted call between the two services.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

use crate::support::nexus;

/// Runs `nexus new ARGS` in `dir`.
fn nexus_new(dir: &Path, args: &[&str]) -> Output {
    nexus()
        .arg("new")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("nexus runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readable folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts `nexus new` failed as a tool error (exit 2) saying `expected`.
fn assert_refused(output: &Output, expected: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected `{expected}` in stderr: {stderr}"
    );
}

#[test]
fn an_invalid_name_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (args, expected) in [
        (&["2shop"][..], "starts with a digit"),
        (&["my shop"][..], "` ` is not allowed"),
        (&["test"][..], "reserved name"),
        (&["shop", "--name", "fn"][..], "Rust keyword"),
        (&["shop", "--name", ""][..], "empty"),
    ] {
        let output = nexus_new(dir.path(), args);
        assert_refused(&output, expected);
        assert!(
            entries(dir.path()).is_empty(),
            "{args:?} wrote {:?}",
            entries(dir.path())
        );
    }
}

#[test]
fn a_non_empty_folder_is_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("demo");
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("notes.txt"), "mine\n").expect("write sentinel");
    let output = nexus_new(dir.path(), &["demo"]);
    assert_refused(&output, "already exists and is not empty");
    assert_eq!(entries(&target), ["notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(target.join("notes.txt")).expect("sentinel"),
        "mine\n"
    );
    assert_eq!(entries(dir.path()), ["demo"], "no staging folder is left");
}

#[test]
fn an_unknown_option_value_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = nexus_new(dir.path(), &["demo", "--store", "mysql"]);
    assert_refused(&output, "invalid value 'mysql' for '--store");
    assert!(text(&output.stderr).contains("embedded, postgres"));
    let output = nexus_new(dir.path(), &["demo", "--bus", "kafka"]);
    assert_refused(&output, "invalid value 'kafka' for '--bus");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn a_missing_nexus_checkout_asks_for_nexus_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = nexus_new(dir.path(), &["demo", "--nexus-path", "no-such-checkout"]);
    assert_refused(&output, "is not a Nexus checkout");
    assert!(text(&output.stderr).contains("--nexus-path"));
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn dry_run_lists_the_files_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = nexus_new(dir.path(), &["demo", "--dry-run", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["dry_run"], true);
    let files: Vec<&str> = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        ".github/workflows/ci.yml",
        ".gitignore",
        "Cargo.lock",
        "Cargo.toml",
        "README.md",
        "compose.yaml",
        "crates/events/Cargo.toml",
        "crates/events/src/lib.rs",
        "crates/events/tests/schemas.rs",
        "nexus.toml",
        "schemas/AddItem/1.0.0.json",
        "schemas/CancelOrder/1.0.0.json",
        "schemas/ConfirmOrder/1.0.0.json",
        "schemas/ItemAdded/1.0.0.json",
        "schemas/OrderCancelled/1.0.0.json",
        "schemas/OrderConfirmed/1.0.0.json",
        "schemas/OrderPlaced/1.0.0.json",
        "schemas/PlaceOrder/1.0.0.json",
        "services/command-service/Cargo.toml",
        "services/command-service/src/main.rs",
        "services/query-dashboard/Cargo.toml",
        "services/query-dashboard/src/main.rs",
        "services/query-dashboard/src/projection.rs",
    ] {
        assert!(
            files.contains(&expected),
            "{expected} missing from {files:?}"
        );
    }
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn json_lists_the_files_written_into_an_empty_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("skeleton")).expect("mkdir");
    let output = nexus_new(dir.path(), &["skeleton", "--no-sample", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["sample"], false);
    let files: Vec<&str> = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let root = dir.path().join("skeleton");
    for file in &files {
        assert!(
            root.join(file).is_file(),
            "{file} was listed but not written"
        );
    }
    assert!(!files.iter().any(|f| f.ends_with("projection.rs")));
    assert!(files.contains(&"schemas/README.md"));
    let lib = std::fs::read_to_string(root.join("crates/events/src/lib.rs")).expect("lib.rs");
    assert!(!lib.contains("OrderEvent"), "the skeleton has no sample");
    assert_eq!(
        entries(dir.path()),
        ["skeleton"],
        "no staging folder is left"
    );
}

/// The target folder shared by every generated project, outside the running test's own
/// target folder (whose lock cargo holds).
#[test]
fn missing_parent_folders_are_created_and_a_file_in_the_way_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = nexus_new(dir.path(), &["work/clients/shop", "--no-sample", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(dir.path().join("work/clients/shop/Cargo.toml").is_file());
    assert_eq!(entries(&dir.path().join("work/clients")), ["shop"]);

    std::fs::write(dir.path().join("notes"), "mine\n").expect("write a file");
    let output = nexus_new(dir.path(), &["notes/shop"]);
    assert_refused(&output, "is a file, so");
    assert_eq!(
        entries(dir.path()),
        ["notes", "work"],
        "nothing else was written"
    );
}

fn shared_target() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    base.join("e2e-generated")
}

/// Runs `cargo ARGS --offline` in `project` with the shared target folder.
fn cargo(project: &Path, args: &[&str]) {
    cargo_with(project, args, args[0] != "fmt");
}

/// Runs `cargo ARGS` (with `--offline` when `offline`) in `project` with the shared target folder.
fn cargo_with(project: &Path, args: &[&str], offline: bool) {
    let started = Instant::now();
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .args(offline.then_some("--offline"))
        .current_dir(project)
        .env("CARGO_TARGET_DIR", shared_target())
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("NEXUS_UPDATE_SCHEMAS")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed in {}:\n{}\n{}",
        project.display(),
        text(&output.stdout),
        text(&output.stderr)
    );
    #[expect(clippy::print_stderr, reason = "show where the minutes go")]
    {
        eprintln!(
            "cargo {} in {}: {:.1?}",
            args.join(" "),
            project.file_name().unwrap_or_default().to_string_lossy(),
            started.elapsed()
        );
    }
}

/// Runs `nexus check --format json` on `project`: (exit code, report).
fn check(project: &Path) -> (Option<i32>, Value) {
    let output = nexus()
        .args(["check", "--format", "json"])
        .arg(project)
        .env("NO_COLOR", "1")
        .env_remove("NEXUS_REGISTRY_URL")
        .output()
        .expect("nexus check runs");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "nexus check printed no JSON ({err}): {}{}",
            text(&output.stdout),
            text(&output.stderr)
        )
    });
    (output.status.code(), report)
}

/// Generates `name` with `options` under `dir`, then checks it is formatted and clean.
fn generate(dir: &Path, name: &str, options: &[&str]) -> PathBuf {
    let mut args = vec![name];
    args.extend_from_slice(options);
    let output = nexus_new(dir, &args);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let project = dir.join(name);
    cargo(&project, &["fmt", "--check"]);
    let (code, report) = check(&project);
    assert_eq!(
        code,
        Some(0),
        "nexus check on {name} {options:?}: {report:#}"
    );
    assert_eq!(report["summary"]["errors"], 0, "{report:#}");
    assert_eq!(report["summary"]["warnings"], 0, "{report:#}");
    assert_eq!(
        report["summary"]["notes"], 0,
        "every event has a schema: {report:#}"
    );
    project
}

/// Adds a direct call from the command service to the query dashboard; returns its line.
fn plant_direct_call(project: &Path) -> usize {
    let main = project.join("services/command-service/src/main.rs");
    let mut source = std::fs::read_to_string(&main).expect("main.rs");
    source.push_str(
        r#"
/// Asks the dashboard directly instead of projecting events: what `nexus check` refuses.
#[expect(dead_code, reason = "planted for nexus check to find; nothing calls it")]
async fn confirmed_orders() -> anyhow::Result<String> {
    let dashboard = std::env::var("QUERY_DASHBOARD_URL")?;
    let body = reqwest::get(format!("{dashboard}/read-models/orders/orders?status=confirmed"))
        .await?
        .text()
        .await?;
    Ok(body)
}
"#,
    );
    std::fs::write(&main, &source).expect("write main.rs");
    source
        .lines()
        .position(|l| l.contains("reqwest::get"))
        .expect("planted line")
        + 1
}

/// A generated service started from `project`, killed when dropped.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the built binary `name` of `project` on a free loopback port with `env`; returns it
/// and its URL once it listens.
fn start_service(
    project: &Path,
    name: &str,
    addr_var: &str,
    env: &[(&str, &str)],
) -> (Service, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(shared_target().join("debug").join(name))
        .current_dir(project)
        .env(addr_var, format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env_remove("NEXUS_CONFIG")
        .env_remove("NEXUS_INSECURE")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let service = Service(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not listen on {url}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (service, url)
}

/// The generated services take who may call them from `nexus.toml`'s `[auth]` table: commands
/// and read models stay open on loopback, history needs a token that `nexus token issue` signs
/// with the development key the services created, and each serves its temporal routes.
fn generated_services_read_their_auth_table_and_serve_history(project: &Path) {
    use crate::up::http;
    cargo(
        project,
        &["build", "-p", "command-service", "-p", "query-dashboard"],
    );
    let receiver = crate::traces::Receiver::start();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let (_commands, command_url) =
        start_service(project, "command-service", "COMMAND_SERVICE_ADDR", &otel);
    let (_dashboard, query_url) =
        start_service(project, "query-dashboard", "QUERY_DASHBOARD_ADDR", &otel);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, body) = http(
        "POST",
        &format!("{command_url}/commands/order/o-1"),
        &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
        Some(serde_json::json!({"type": "PlaceOrder", "customer": "ada"})),
    );
    assert!((200..300).contains(&status), "{status}: {body}");
    // Both services export their spans over OTLP, and the dashboard's continue the command's
    // trace from the event's metadata.
    let trace: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let spans = receiver.trace(
        &trace,
        &[
            "POST /commands/{aggregate}/{id}",
            "command order",
            "append",
            "commit orders",
        ],
    );
    assert_eq!(
        crate::traces::hex(&spans["POST /commands/{aggregate}/{id}"].parent_span_id),
        "00f067aa0ba902b7"
    );

    let state = format!("{command_url}/temporal/state/order/o-1?version=1");
    let (status, body) = http("GET", &state, &[], None);
    assert_eq!(status, 401, "history needs a credential: {body}");
    let key = project.join(".nexus/data/auth/dev-signing-key");
    assert!(key.is_file(), "the service created the development key");
    let token = nexus()
        .args(["token", "issue", "--role", "auditor", "--data-dir"])
        .arg(project.join(".nexus/data"))
        .output()
        .expect("nexus token issue runs");
    assert!(token.status.success(), "{}", text(&token.stderr));
    let bearer = format!("Bearer {}", text(&token.stdout).trim());
    let (status, body) = http("GET", &state, &[("Authorization", &bearer)], None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1, "{body}");

    let now = chrono::Utc::now();
    let events = format!(
        "{query_url}/temporal/events?aggregate_type=order&from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let (status, _) = http("GET", &events, &[], None);
    assert_eq!(status, 401);
    let (status, body) = http("GET", &events, &[("Authorization", &bearer)], None);
    assert_eq!(status, 200, "{body}");
    let listed = body["events"].as_array().expect("events");
    assert_eq!(listed.len(), 1, "{body}");
    assert!(listed[0].to_string().contains("o-1"), "{body}");
    let (status, body) = http("GET", &format!("{query_url}/openapi.json"), &[], None);
    assert_eq!(status, 200);
    assert!(body["paths"]["/temporal/events"].is_object(), "{body}");
}

/// The heavy part, run in one test so the builds do not fight over the cores: each option
/// combination that changes the code is built and tested once, in one shared target folder.
#[test]
fn generated_projects_pass_their_tests_and_nexus_check() {
    let dir = tempfile::tempdir().expect("temp dir");

    // The default: the orders sample on the embedded store and the in-process bus.
    let demo = generate(
        dir.path(),
        "demo",
        &["--store", "embedded", "--bus", "inprocess"],
    );
    cargo(&demo, &["test", "--workspace"]);
    generated_services_read_their_auth_table_and_serve_history(&demo);
    let line = plant_direct_call(&demo);
    let (code, report) = check(&demo);
    assert_eq!(code, Some(1), "{report:#}");
    let findings = report["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 1, "{report:#}");
    assert_eq!(findings[0]["rule"], "NX001");
    assert_eq!(findings[0]["file"], "services/command-service/src/main.rs");
    assert_eq!(findings[0]["line"], line);
    assert!(
        findings[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("query-dashboard")),
        "{report:#}"
    );

    // The server-backed variant: its tests need no server.
    let servers = generate(
        dir.path(),
        "shop",
        &["--store", "postgres", "--bus", "nats"],
    );
    cargo(&servers, &["test", "--workspace"]);

    // The empty skeleton.
    let skeleton = generate(dir.path(), "skeleton", &["--no-sample"]);
    cargo(&skeleton, &["test", "--workspace"]);

    a_project_generated_from_a_git_url_builds_with_no_path_to_nexus(dir.path());
}

/// `--nexus-git file://…` against a bare clone of this repository: no path to the checkout is
/// left, cargo fetches Nexus over git and the project builds; CI installs `nexus` from the same
/// URL and commit.
fn a_project_generated_from_a_git_url_builds_with_no_path_to_nexus(dir: &Path) {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        let output = Command::new("git").args(args).output().expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout).trim().to_owned()
    };
    let checkout_text = checkout.to_str().expect("a UTF-8 path");
    let rev = git(&["-C", checkout_text, "rev-parse", "HEAD"]);
    let bare = dir.join("nexus.git");
    git(&[
        "clone",
        "--quiet",
        "--bare",
        checkout_text,
        bare.to_str().unwrap(),
    ]);
    let url = format!("file://{}", bare.display());
    let project = generate(dir, "remote", &["--nexus-git", &url, "--rev", &rev]);

    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!(
            "nexus-runtime = {{ git = \"{url}\", rev = \"{rev}\" }}"
        )),
        "{manifest}"
    );
    let real = checkout.canonicalize().unwrap();
    for file in ["Cargo.toml", "README.md", ".github/workflows/ci.yml"] {
        let contents = std::fs::read_to_string(project.join(file)).unwrap();
        assert!(
            !contents.contains(real.to_str().unwrap()),
            "{file} still names the local checkout:\n{contents}"
        );
    }
    let workflow = std::fs::read_to_string(project.join(".github/workflows/ci.yml")).unwrap();
    assert!(
        workflow.contains(&format!(
            "cargo install --locked --git '{url}' --rev '{rev}' nexus-cli"
        )),
        "{workflow}"
    );
    // Fetching the git dependency needs cargo online (a local file:// URL); the build after it
    // does not.
    cargo_with(&project, &["fetch"], false);
    cargo(&project, &["build", "--workspace"]);
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(&project)
        .output()
        .expect("cargo metadata runs");
    let metadata: Value = serde_json::from_slice(&metadata.stdout).expect("metadata JSON");
    let runtime = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "nexus-runtime")
        .expect("nexus-runtime is a dependency");
    assert!(
        runtime["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("git+file://")),
        "{}",
        runtime["source"]
    );
}

#[test]
fn a_published_version_is_pinned_exactly_and_installed_by_ci() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = nexus_new(dir.path(), &["pinned", "--nexus-version", "0.3.1"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("Nexus version 0.3.1 from crates.io"));
    let project = dir.path().join("pinned");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("nexus-runtime = { version = \"=0.3.1\" }"),
        "{manifest}"
    );
    let workflow = std::fs::read_to_string(project.join(".github/workflows/ci.yml")).unwrap();
    assert!(
        workflow.contains("cargo install --locked nexus-cli --version '=0.3.1'"),
        "{workflow}"
    );
    assert!(!workflow.contains("Check out Nexus"), "{workflow}");

    let bad = nexus_new(dir.path(), &["other", "--nexus-version", "latest"]);
    assert_refused(&bad, "--nexus-version `latest` is not a version");
    let bad = nexus_new(dir.path(), &["other", "--nexus-git", "github.com/x/nexus"]);
    assert_refused(&bad, "is not a git URL");
    let bad = nexus_new(dir.path(), &["other", "--rev", "abc"]);
    assert_refused(&bad, "--nexus-git");
}
