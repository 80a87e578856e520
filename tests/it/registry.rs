//! `nexus registry serve` and `nexus schema …` end to end, plus a real Confluent client against the server.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::support::nexus;

/// A `nexus registry serve` child process, stopped when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        Self::start_with(tempfile::tempdir().expect("tempdir"), &[])
    }

    /// A server in `dir` with more flags for `nexus registry serve`.
    fn start_with(dir: tempfile::TempDir, flags: &[&std::ffi::OsStr]) -> Self {
        let storage = format!("sqlite:{}", dir.path().join("registry.db").display());
        let mut child = nexus()
            .args([
                "registry",
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--storage",
                &storage,
            ])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nexus registry serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the bound address");
        let url = first.trim().to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "first line is the URL: {url:?}"
        );
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    fn schema(&self, args: &[&str]) -> Output {
        nexus()
            .arg("schema")
            .args(args)
            .args(["--registry", &self.url])
            .output()
            .expect("run nexus schema")
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "registry did not stop within 10s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(output: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn write(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, body).expect("write schema");
}

const V1: &str = r#"{
  "type": "object",
  "properties": {
    "id": {"type": "string"},
    "customer": {
      "type": "object",
      "properties": {
        "email": {"type": "string"}
      }
    }
  }
}
"#;

const V1_1_ADDITIVE: &str = r#"{
  "type": "object",
  "properties": {
    "id": {"type": "string"},
    "customer": {
      "type": "object",
      "properties": {
        "email": {"type": "string"},
        "phone": {"type": "string", "maxLength": 20}
      }
    }
  }
}
"#;

const V1_2_RENAME: &str = r#"{
  "type": "object",
  "properties": {
    "id": {"type": "string"},
    "customer": {
      "type": "object",
      "properties": {
        "mail": {"type": "string"},
        "phone": {"type": "string", "maxLength": 20}
      }
    }
  }
}
"#;

#[test]
fn schema_commands_register_check_get_and_list_against_a_served_registry() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = dir.path().join("v1.json");
    let additive = dir.path().join("additive.yaml");
    let rename = dir.path().join("rename.json");
    write(&v1, V1);
    // YAML input is accepted as well.
    write(
        &additive,
        "type: object\nproperties:\n  id:\n    type: string\n  customer:\n    type: object\n    properties:\n      email:\n        type: string\n      phone:\n        type: string\n        maxLength: 20\n",
    );
    write(&rename, V1_2_RENAME);

    let out = server.schema(&["register", "orders", v1.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 1"),
        "{}",
        text(&out)
    );

    let out = server.schema(&["check", "orders", additive.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = server.schema(&["check", "orders", rename.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("property-renamed"), "{}", text(&out));
    assert!(
        stdout.contains("`email` was renamed to `mail`"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("rename.json:8:"),
        "diagnostic points at file and line: {}",
        text(&out)
    );
    assert!(
        stdout.contains("major_version"),
        "remediation is shown: {}",
        text(&out)
    );

    // Registering the incompatible file fails with findings and stores nothing.
    let out = server.schema(&["register", "orders", rename.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // The breaking change is accepted as the next major version.
    let out = server.schema(&[
        "register",
        "orders",
        rename.to_str().expect("utf-8"),
        "--major",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("semver 2.0.0"),
        "{}",
        text(&out)
    );

    let out = server.schema(&["get", "orders"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let latest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("get prints JSON");
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["schemaType"], "JSON");

    let out = server.schema(&["list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "orders",
        "{}",
        text(&out)
    );
    let out = server.schema(&["list", "orders"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1\n2",
        "{}",
        text(&out)
    );

    let out = server.schema(&["diff", "orders@1", "orders@2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("breaking"),
        "{}",
        text(&out)
    );

    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

#[test]
fn schema_check_dir_offline_reports_file_line_and_property_and_exits_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schemas = dir.path().join("schemas");
    write(&schemas.join("orders/1.0.0.json"), V1);
    write(&schemas.join("orders/1.1.0.json"), V1_1_ADDITIVE);
    write(&schemas.join("orders/1.2.0.json"), V1_2_RENAME);
    write(&schemas.join("payments.json"), r#"{"type": "object"}"#);

    let out = nexus()
        .args(["schema", "check", "--offline", "--dir"])
        .arg(&schemas)
        .output()
        .expect("run nexus schema check");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1.2.0.json:8:"), "{}", text(&out));
    assert!(
        stdout.contains("nexus::schema::property-renamed"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("checked 4 schema(s): 1 violation(s)"),
        "{}",
        text(&out)
    );

    // The fix: publish the rename as the next major version.
    std::fs::rename(
        schemas.join("orders/1.2.0.json"),
        schemas.join("orders/2.0.0.json"),
    )
    .expect("rename");
    let out = nexus()
        .args(["schema", "check", "--offline", "--dir"])
        .arg(&schemas)
        .output()
        .expect("run nexus schema check");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Skipping a major version is reported too.
    std::fs::rename(
        schemas.join("orders/2.0.0.json"),
        schemas.join("orders/3.0.0.json"),
    )
    .expect("rename");
    let out = nexus()
        .args(["schema", "check", "--offline", "--dir"])
        .arg(&schemas)
        .output()
        .expect("run nexus schema check");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("major-version-skipped"),
        "{}",
        text(&out)
    );
}

#[test]
fn schema_check_dir_against_the_registry_uses_the_newest_file() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let schemas = dir.path().join("schemas");
    write(&schemas.join("orders/1.0.0.json"), V1);
    let out = server.schema(&[
        "register",
        "orders",
        schemas.join("orders/1.0.0.json").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    write(&schemas.join("orders/1.1.0.json"), V1_1_ADDITIVE);
    let dir_arg = schemas.to_str().expect("utf-8");
    let out = server.schema(&["check", "--dir", dir_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    write(&schemas.join("orders/1.2.0.json"), V1_2_RENAME);
    let out = server.schema(&["check", "--dir", dir_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1.2.0.json:8:"),
        "{}",
        text(&out)
    );
}

#[test]
fn schema_commands_fail_with_exit_two_when_the_registry_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("v1.json");
    write(&file, V1);
    let out = nexus()
        .args(["schema", "register", "orders"])
        .arg(&file)
        .args(["--registry", "http://127.0.0.1:1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the registry"),
        "{}",
        text(&out)
    );
}

#[test]
fn confluent_kafka_python_client_talks_to_the_registry() {
    let Some(python) = crate::support::service_url("NEXUS_TEST_PYTHON") else {
        return;
    };
    // The client authenticates as Confluent's clients do, with an API key's id and secret as
    // HTTP Basic credentials: changing configuration and deleting need `registry:admin`.
    let key = nexus()
        .args(["token", "api-key", "--id", "confluent", "--role", "admin"])
        .output()
        .expect("run nexus token api-key");
    assert!(key.status.success(), "{}", text(&key));
    let printed = String::from_utf8(key.stdout).expect("utf-8");
    let (secret, entry) = printed.split_once('\n').expect("the key, then its entry");
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, entry).expect("write the auth file");
    let server = Server::start_with(dir, &["--auth".as_ref(), auth.as_os_str()]);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/it/fixtures/confluent_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&server.url)
        .arg(format!("confluent:{}", secret.trim()))
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("confluent-kafka client: ok"),
        "{}",
        text(&out)
    );
}

/// Parses the JSON document a `--json` command printed on stdout.
fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("stdout is one JSON document ({err}): {}", text(output)))
}

#[test]
fn schema_register_json_prints_the_stored_version_or_the_violations_that_refused_it() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = dir.path().join("v1.json");
    let rename = dir.path().join("rename.json");
    write(&v1, V1);
    write(&rename, V1_2_RENAME);

    let out = server.schema(&["register", "orders", v1.to_str().expect("utf-8"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let registered = json(&out);
    assert_eq!(registered["subject"], "orders", "{registered}");
    assert_eq!(registered["version"], 1, "{registered}");
    assert!(registered["id"].is_u64(), "{registered}");
    assert_eq!(registered["major_version"], 1, "{registered}");
    assert_eq!(registered["semver"], "1.0.0", "{registered}");

    // Refused: exit 1, and the violations as `check --json` reports a subject.
    let out = server.schema(&[
        "register",
        "orders",
        rename.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let refused = json(&out);
    assert_eq!(refused["subject"], "orders", "{refused}");
    assert_eq!(refused["compatible"], false, "{refused}");
    let violation = &refused["violations"][0];
    assert_eq!(violation["rule"], "property-renamed", "{refused}");
    assert_eq!(violation["line"], 8, "{refused}");
    assert!(
        violation["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("rename.json")),
        "{refused}"
    );

    let out = server.schema(&[
        "register",
        "orders",
        rename.to_str().expect("utf-8"),
        "--major",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let registered = json(&out);
    assert_eq!(registered["version"], 2, "{registered}");
    assert_eq!(registered["major_version"], 2, "{registered}");
    assert_eq!(registered["semver"], "2.0.0", "{registered}");
}

#[test]
fn schema_check_json_reports_each_subject_and_locates_each_violation() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let schemas = dir.path().join("schemas");
    let v1 = schemas.join("orders/1.0.0.json");
    write(&v1, V1);
    let out = server.schema(&["register", "orders", v1.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // One file, compatible.
    let additive = dir.path().join("additive.json");
    write(&additive, V1_1_ADDITIVE);
    let out = server.schema(&[
        "check",
        "orders",
        additive.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["compatible"], true, "{report}");
    assert_eq!(report["subjects"][0]["subject"], "orders", "{report}");
    assert_eq!(report["subjects"][0]["compatible"], true, "{report}");
    assert_eq!(report["subjects"][0]["violations"], serde_json::json!([]));

    // One file, incompatible: the violation carries the file, line and column of the diagnostic.
    let rename = dir.path().join("rename.json");
    write(&rename, V1_2_RENAME);
    let out = server.schema(&["check", "orders", rename.to_str().expect("utf-8"), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let human = server.schema(&["check", "orders", rename.to_str().expect("utf-8")]);
    let report = json(&out);
    assert_eq!(report["compatible"], false, "{report}");
    let subject = &report["subjects"][0];
    assert_eq!(subject["compatible"], false, "{report}");
    assert_eq!(subject["file"], rename.to_str().expect("utf-8"), "{report}");
    let violation = &subject["violations"][0];
    assert_eq!(violation["rule"], "property-renamed", "{report}");
    assert_eq!(
        violation["pointer"], "/properties/customer/properties/mail",
        "{report}"
    );
    assert!(
        violation["message"]
            .as_str()
            .is_some_and(|m| m.contains("`email` was renamed to `mail`")),
        "{report}"
    );
    assert!(
        violation["remediation"]
            .as_str()
            .is_some_and(|r| r.contains("major_version")),
        "{report}"
    );
    assert_eq!(violation["version"], 1, "{report}");
    assert_eq!(
        violation["file"],
        rename.to_str().expect("utf-8"),
        "{report}"
    );
    assert_eq!(violation["line"], 8, "{report}");
    // The same place the human diagnostic names.
    let place = format!("rename.json:{}:{}]", violation["line"], violation["column"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains(&place),
        "{place} in {}",
        text(&human)
    );

    // A folder against the registry: compatible, then incompatible in its newest file.
    write(&schemas.join("orders/1.1.0.json"), V1_1_ADDITIVE);
    let dir_arg = schemas.to_str().expect("utf-8");
    let out = server.schema(&["check", "--dir", dir_arg, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["compatible"], true, "{report}");
    assert_eq!(report["checked"], 1, "{report}");
    assert!(
        report["subjects"][0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("1.1.0.json")),
        "{report}"
    );
    write(&schemas.join("orders/1.2.0.json"), V1_2_RENAME);
    let out = server.schema(&["check", "--dir", dir_arg, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["compatible"], false, "{report}");
    let violation = &report["subjects"][0]["violations"][0];
    assert_eq!(violation["rule"], "property-renamed", "{report}");
    assert!(
        violation["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("1.2.0.json")),
        "{report}"
    );
    assert_eq!(violation["line"], 8, "{report}");
}

#[test]
fn schema_check_dir_offline_json_reports_violations_per_file_of_each_subject() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schemas = dir.path().join("schemas");
    write(&schemas.join("orders/1.0.0.json"), V1);
    write(&schemas.join("orders/1.1.0.json"), V1_1_ADDITIVE);
    write(&schemas.join("orders/1.2.0.json"), V1_2_RENAME);
    write(&schemas.join("payments.json"), r#"{"type": "object"}"#);
    let check = || {
        nexus()
            .args(["schema", "check", "--offline", "--json", "--dir"])
            .arg(&schemas)
            .output()
            .expect("run nexus schema check")
    };

    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["compatible"], false, "{report}");
    assert_eq!(report["checked"], 4, "{report}");
    let subjects = report["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 2, "{report}");
    assert_eq!(subjects[0]["subject"], "orders", "{report}");
    assert_eq!(subjects[0]["compatible"], false, "{report}");
    let violations = subjects[0]["violations"].as_array().expect("violations");
    assert_eq!(violations.len(), 1, "{report}");
    assert_eq!(violations[0]["rule"], "property-renamed", "{report}");
    assert_eq!(violations[0]["version"], 2, "against 1.1.0: {report}");
    assert!(
        violations[0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("1.2.0.json")),
        "{report}"
    );
    assert_eq!(violations[0]["line"], 8, "{report}");
    assert!(violations[0]["column"].is_u64(), "{report}");
    assert_eq!(subjects[1]["subject"], "payments", "{report}");
    assert_eq!(subjects[1]["compatible"], true, "{report}");

    // Published as the next major version, the folder is compatible.
    std::fs::rename(
        schemas.join("orders/1.2.0.json"),
        schemas.join("orders/2.0.0.json"),
    )
    .expect("rename");
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["compatible"], true, "{report}");
    assert!(
        report["subjects"]
            .as_array()
            .expect("subjects")
            .iter()
            .all(|s| s["compatible"] == true && s["violations"] == serde_json::json!([])),
        "{report}"
    );

    // A skipped major version is a violation of the file, with no line to point at.
    std::fs::rename(
        schemas.join("orders/2.0.0.json"),
        schemas.join("orders/3.0.0.json"),
    )
    .expect("rename");
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json(&out);
    let violation = &report["subjects"][0]["violations"][0];
    assert_eq!(violation["rule"], "major-version-skipped", "{report}");
    assert!(
        violation["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("3.0.0.json")),
        "{report}"
    );
    assert!(violation["line"].is_null(), "{report}");
}

#[test]
fn schema_diff_json_lists_each_difference_with_its_pointer_rule_and_verdict() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = dir.path().join("v1.json");
    let additive = dir.path().join("additive.json");
    let rename = dir.path().join("rename.json");
    write(&v1, V1);
    write(&additive, V1_1_ADDITIVE);
    write(&rename, V1_2_RENAME);

    // Two files, only additive differences.
    let out = server.schema(&[
        "diff",
        v1.to_str().expect("utf-8"),
        additive.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["compatible"], true, "{report}");
    assert_eq!(report["level"], "NEXUS", "{report}");
    let differences = report["differences"].as_array().expect("differences");
    assert!(!differences.is_empty(), "{report}");
    assert!(
        differences.iter().all(|d| d["breaking"] == false),
        "{report}"
    );
    assert!(
        differences
            .iter()
            .any(|d| d["pointer"] == "/properties/customer/properties/phone"
                && d["rule"] == "property-added"),
        "{report}"
    );

    // Two registered versions, one breaking difference.
    for (file, major) in [(&v1, "1"), (&rename, "2")] {
        let out = server.schema(&[
            "register",
            "orders",
            file.to_str().expect("utf-8"),
            "--major",
            major,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let out = server.schema(&["diff", "orders@1", "orders@2", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["compatible"], false, "{report}");
    let differences = report["differences"].as_array().expect("differences");
    assert!(
        differences.iter().any(|d| d["rule"] == "property-renamed"
            && d["breaking"] == true
            && d["pointer"]
                .as_str()
                .is_some_and(|p| p.starts_with("/properties/customer/properties/"))
            && d["message"].is_string()),
        "{report}"
    );
}

#[test]
fn schema_json_failures_exit_two_with_the_error_on_stderr_and_nothing_on_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("v1.json");
    write(&file, V1);
    for command in ["register", "check"] {
        let out = nexus()
            .args(["schema", command, "orders"])
            .arg(&file)
            .args(["--json", "--registry", "http://127.0.0.1:1"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot reach the registry"),
            "{}",
            text(&out)
        );
    }

    // A folder whose first subject has a violation and whose second does not parse: the human
    // output has already shown the violation, the JSON output shows nothing.
    let schemas = dir.path().join("schemas");
    write(&schemas.join("orders/1.0.0.json"), V1);
    write(&schemas.join("orders/1.1.0.json"), V1_2_RENAME);
    write(&schemas.join("payments.json"), "{\"type\": ");
    let out = nexus()
        .args(["schema", "check", "--offline", "--json", "--dir"])
        .arg(&schemas)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(!out.stderr.is_empty(), "{}", text(&out));
}

#[test]
fn registry_serve_never_logs_the_storage_password() {
    let Some(url) = crate::support::service_url("NEXUS_TEST_POSTGRES_URL") else {
        return;
    };
    // The shared server trusts local connections, so a password in the URL is accepted and ignored.
    let with_password = url.replacen("://postgres@", "://postgres:s3cret-token@", 1);
    assert!(with_password.contains("s3cret-token"), "{with_password}");
    let mut child = nexus()
        .args([
            "registry",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--storage",
            &with_password,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nexus registry serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the bound address");
    assert!(first.starts_with("http://"), "{first:?}");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains("s3cret-token"), "the password leaked: {log}");
}
