//! `nexus replay` end to end against a running `nexus up`: events of an aggregate in a time
//! range (NDJSON), state as of a version, and the orders projection rebuilt as of a time, read
//! straight from the store read-only; bad input exits 2 with a clear message.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::support::nexus;
use crate::up::{Up, command};

fn replay(args: &[&str]) -> Output {
    nexus()
        .arg("replay")
        .args(args)
        .env_remove("NEXUS_TOKEN")
        .env_remove("NEXUS_URL")
        .output()
        .expect("run nexus replay")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn place_orders(up: &Up) {
    for (id, body) in [
        ("o-1", json!({"type": "PlaceOrder", "customer": "ada"})),
        (
            "o-1",
            json!({"type": "AddItem", "sku": "tea", "quantity": 3, "unit_price_cents": 150}),
        ),
        ("o-1", json!({"type": "ConfirmOrder"})),
        ("o-2", json!({"type": "PlaceOrder", "customer": "grace"})),
    ] {
        let (status, body) = command(up, id, body);
        assert_eq!(status, 200, "{body}");
    }
}

/// Replays with bad input (a reversed or too long range, a time that is not one, a stream
/// without events, an unknown aggregate, no store, a store file that does not exist) exit 2
/// with a clear message, and create nothing; `store` is the running system's store, `dir` a
/// folder for the missing one.
fn assert_bad_input_is_refused(store: &str, dir: &Path) {
    for (args, message) in [
        (
            vec![
                "events",
                "order/o-1",
                "--from",
                "1h",
                "--to",
                "2h",
                "--store",
                store,
            ],
            "reversed",
        ),
        (
            vec!["events", "order/o-1", "--from", "100d", "--store", store],
            "the limit is 90 days",
        ),
        (
            vec![
                "events",
                "order/o-1",
                "--from",
                "yesterday",
                "--store",
                store,
            ],
            "not a time",
        ),
        (
            vec!["events", "order/nobody", "--from", "1h", "--store", store],
            "has no events",
        ),
        (
            vec!["state", "ship/1", "--version", "1", "--store", store],
            "unknown aggregate",
        ),
        (vec!["events", "order/o-1", "--from", "1h"], "give --url"),
    ] {
        let out = replay(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    let missing = format!("sqlite:{}", dir.join("missing.db").display());
    let out = replay(&["events", "order/o-1", "--from", "1h", "--store", &missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!Path::new(&dir.join("missing.db")).exists());
}

#[test]
fn replay_reads_events_state_and_projections_of_a_running_system_from_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    place_orders(&up);
    let store = format!("sqlite:{}", data.join("events.db").display());

    // Events of one aggregate as NDJSON, in version order.
    let out = replay(&[
        "events",
        "order/o-1",
        "--from",
        "1h",
        "--json",
        "--store",
        &store,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(
        events
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(events[0]["event_type"], "OrderPlaced");
    assert!(
        !stderr(&out).contains('\u{1b}'),
        "no progress bar when not a terminal"
    );
    // Only one type, and human output.
    let out = replay(&[
        "events",
        "order/o-1",
        "--from",
        "1h",
        "--type",
        "OrderConfirmed",
        "--store",
        &store,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("OrderConfirmed"), "{}", stdout(&out));
    assert!(
        stdout(&out).trim_end().ends_with("1 events"),
        "{}",
        stdout(&out)
    );

    // State as of a version, with the sample's aggregate code.
    let out = replay(&["state", "order/o-1", "--version", "2", "--store", &store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(state["version"], 2);
    assert_eq!(state["events_folded"], 2);

    // The orders projection as of now, into a new read model file; the live one is untouched.
    let into = dir.path().join("orders-asof.db");
    let now = chrono::Utc::now().to_rfc3339();
    let out = replay(&[
        "projection",
        "orders",
        "--until",
        &now,
        "--into",
        into.to_str().unwrap(),
        "--store",
        &store,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["summary"]["applied"], 4, "{summary}");
    assert!(into.exists());
    // Rebuilding into an existing file is refused.
    let again = replay(&[
        "projection",
        "orders",
        "--until",
        &now,
        "--into",
        into.to_str().unwrap(),
        "--store",
        &store,
    ]);
    assert_eq!(again.status.code(), Some(2));

    // Bad input: a clear message and exit 2.
    assert_bad_input_is_refused(&store, dir.path());
    drop(up);
}

fn issue_token(data: &Path, role: &str) -> String {
    let out = nexus()
        .args(["token", "issue", "--role", role, "--data-dir"])
        .arg(data)
        .output()
        .expect("run nexus token issue");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

#[test]
fn replay_talks_to_the_services_of_nexus_up_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    place_orders(&up);
    let token = issue_token(&data, "admin");

    // Events through the query dashboard, one event per page: the CLI follows the tokens.
    let out = replay(&[
        "events",
        "order/o-1",
        "--from",
        "1h",
        "--json",
        "--page-size",
        "1",
        "--url",
        &up.query_url,
        "--token",
        &token,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let versions: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["version"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(versions, [1, 2, 3]);

    // State as of a version through the command service, with the aggregate's code.
    let out = replay(&[
        "state",
        "order/o-1",
        "--version",
        "1",
        "--url",
        &up.command_url,
        "--token",
        &token,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(state["version"], 1);

    // The orders projection as of now, rebuilt by the dashboard into its own read model.
    let now = chrono::Utc::now().to_rfc3339();
    let out = replay(&[
        "projection",
        "orders",
        "--until",
        &now,
        "--into",
        "then",
        "--url",
        &up.query_url,
        "--token",
        &token,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rebuilt: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rebuilt["read_model"], "replay-then");
    assert_eq!(rebuilt["summary"]["applied"], 4, "{rebuilt}");

    // Without a token, with a bad one, or without the permission: a clear message and exit 2.
    let reader = issue_token(&data, "reader");
    for (credential, message) in [
        (None, "401"),
        (Some("not-a-key"), "401"),
        (Some(reader.as_str()), "403"),
    ] {
        let mut args = vec![
            "events",
            "order/o-1",
            "--from",
            "1h",
            "--url",
            &up.query_url,
        ];
        if let Some(credential) = credential {
            args.extend(["--token", credential]);
        }
        let out = replay(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
        assert!(!stderr(&out).contains(&token), "tokens are never printed");
    }

    // Every request is in the audit log, refusals too.
    let (status, audit) = crate::up::http(
        "GET",
        &format!("{}/audit/temporal?limit=1000", up.query_url),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(status, 200, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["status"] == 403), "{audit}");
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "state" && e["outcome"] == "ok")
    );
    drop(up);
}
