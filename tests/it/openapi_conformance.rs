//! The three OpenAPI documents `nexus up` serves (command service, query dashboard, schema
//! registry) hold against their servers: `schemathesis` generates requests from each document,
//! with an admin token so the protected operations run too, and checks that no answer is a 5xx
//! and that every status, content type and body is one the document declares.
//!
//! Bounded: a fixed seed, at most [`MAX_EXAMPLES`] examples per operation and a wall-clock limit
//! per document ([`RUN_LIMIT`]). Needs schemathesis in the virtualenv of `NEXUS_TEST_PYTHON`
//! (`.ci/run` installs it); skipped without it unless `NEXUS_REQUIRE_SERVICES=1`.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::nexus;
use crate::up::{Up, confirmed_order};

/// Examples generated per operation and phase.
const MAX_EXAMPLES: &str = "30";
/// One document's run is killed (and the test fails) past this.
const RUN_LIMIT: Duration = Duration::from_secs(150);
/// The checks run on every response: no 5xx, only declared statuses, content types and bodies,
/// and a request the document forbids is refused.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection";

/// The `st` command next to `NEXUS_TEST_PYTHON`, or `None` (skipped) when schemathesis is absent;
/// `NEXUS_REQUIRE_SERVICES=1` fails instead.
fn schemathesis() -> Option<std::path::PathBuf> {
    let python = std::env::var("NEXUS_TEST_PYTHON").ok();
    let st = python.as_deref().and_then(|python| {
        let st = Path::new(python).with_file_name("st");
        let works = Command::new(&st)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        works.then_some(st)
    });
    crate::support::available(st.ok_or_else(|| {
        "no schemathesis next to NEXUS_TEST_PYTHON (set it to a virtualenv's python with \
         schemathesis installed, as .ci/run does)"
            .to_owned()
    }))
}

/// Schemathesis's configuration: a request the document forbids may also be refused with 414.
/// A query string over hyper's request-line limit (64 KiB) is refused before any handler sees
/// it; schemathesis's own list of refusals leaves 414 out, so a generated over-long (and so
/// forbidden) `aggs` counted as "accepted".
const CONFIG: &str = r#"[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "5xx"]
"#;

/// Runs schemathesis on the document at `base/openapi.json`; returns its exit code and output.
fn run(st: &Path, work: &Path, name: &str, base: &str, token: &str) -> (Option<i32>, String) {
    let log = work.join(format!("{name}.log"));
    let config = work.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut child = Command::new(st)
        .current_dir(work)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/openapi.json")])
        // The SSE stream answers 200 and never ends: a request of schemathesis would only
        // time out. Its refusals (400, 404, 503) are the same code as the WebSocket
        // endpoint's, which schemathesis does run (without an upgrade it answers 400).
        .args(["--exclude-path", "/notifications/sse"])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", "1"])
        .args(["--generation-database", "none", "--workers", "1"])
        .args(["--request-timeout", "10", "--no-color"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .env("NO_COLOR", "1")
        .env("COLUMNS", "120")
        .stdin(Stdio::null())
        .stdout(File::create(&log).unwrap())
        .stderr(Stdio::from(
            File::options().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .expect("start schemathesis");
    let deadline = Instant::now() + RUN_LIMIT;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis on {name} ran over {RUN_LIMIT:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (code, std::fs::read_to_string(&log).unwrap())
}

/// The `Operations:` and `Test cases:` lines of a run, for the test's output.
fn summary(output: &str) -> String {
    let operations = output
        .lines()
        .find(|l| l.trim_start().starts_with("Operations:"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cases = output
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    format!("{operations}; {cases}")
}

#[test]
fn the_openapi_documents_of_nexus_up_hold_against_generated_requests() {
    let Some(st) = schemathesis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    let output = nexus()
        .args(["token", "issue", "--role", "admin", "--data-dir"])
        .arg(&data)
        .env_remove("NEXUS_TOKEN")
        .output()
        .expect("run nexus token issue");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    // The documents' examples name order `o-1` at version 3: make it exist, so they succeed.
    confirmed_order(&up, "o-1");

    let registry = up.announced["schema_registry"].as_str().unwrap().to_owned();
    let mut failures = Vec::new();
    for (name, base) in [
        ("command service", up.command_url.as_str()),
        ("query dashboard", up.query_url.as_str()),
        ("schema registry", registry.as_str()),
    ] {
        let started = Instant::now();
        let file = name.replace(' ', "-");
        let (code, output) = run(&st, dir.path(), &file, base, &token);
        #[expect(clippy::print_stderr, reason = "what each run covered")]
        {
            eprintln!(
                "schemathesis {name}: {} in {:.1} s",
                summary(&output),
                started.elapsed().as_secs_f64()
            );
        }
        if code != Some(0) {
            failures.push(format!(
                "schemathesis on the {name} document exited {code:?}:\n{output}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
