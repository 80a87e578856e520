//! The audit log of read-model changes end to end: `nexus up` records the orders projection's
//! changes, the query dashboard serves a document's history to `audit:read`, and
//! `nexus audit history|prune|verify` read, prune and check the chain, exiting 1 once an entry
//! was rewritten behind the database's back.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::support::nexus;
use crate::up::{Up, confirmed_order, http};

fn audit(data: &Path, args: &[&str]) -> Output {
    nexus()
        .arg("audit")
        .args(args)
        .arg("--read-models")
        .arg(data.join("read-models"))
        .output()
        .expect("run nexus audit")
}

/// `nexus audit …` that must succeed.
fn audit_ok(data: &Path, args: &[&str]) -> Output {
    let out = audit(data, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn up_audits_read_model_changes_served_over_http_and_verified_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &[]);
    confirmed_order(&up, "o-1");

    // The history is for audit:read only.
    let uri = format!("{}/audit/read-models/orders/orders/o-1", up.query_url);
    assert_eq!(http("GET", &uri, &[], None).0, 401);
    let issued = nexus()
        .args(["token", "issue", "--role", "auditor", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(issued.status.success());
    let auditor = format!(
        "Bearer {}",
        String::from_utf8(issued.stdout).unwrap().trim()
    );
    let (status, history) = http("GET", &uri, &[("Authorization", &auditor)], None);
    assert_eq!(status, 200, "{history}");
    let entries = history["entries"].as_array().unwrap();
    let versions: Vec<&Value> = entries.iter().map(|e| &e["cause"]["version"]).collect();
    assert_eq!(versions, [&json!(1), &json!(2), &json!(3)], "{history}");
    assert_eq!(entries[0]["before"], Value::Null);
    assert_eq!(entries[0]["cause"]["event_type"], "OrderPlaced");
    assert_eq!(entries[2]["before"]["status"], "placed");
    assert_eq!(entries[2]["after"]["status"], "confirmed");

    // The CLI reads the same history and verifies the chain while the service runs.
    let listed = audit_ok(&data, &["history", "orders", "orders", "o-1", "--json"]);
    let lines: Vec<Value> = stdout(&listed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], entries[2]["seq"]);
    let verified = audit(&data, &["verify", "orders", "--json"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["broken"], Value::Null);
    let checked = report["entries_checked"].as_u64().unwrap();
    assert!(checked >= 3, "{report}");
    let (code, _) = up.interrupt();
    assert_eq!(code, Some(0));

    // Pruning everything old keeps the chain verifiable from its recorded anchor.
    let pruned = audit_ok(
        &data,
        &[
            "prune",
            "orders",
            "--older-than",
            "0s",
            "--segment",
            "2",
            "--json",
        ],
    );
    let pruned: Value = serde_json::from_slice(&pruned.stdout).unwrap();
    assert!(pruned["removed"].as_u64() >= Some(2), "{pruned}");
    assert_eq!(
        pruned["removed"].as_u64().unwrap() % 2,
        0,
        "whole segments only: {pruned}"
    );
    let verified = audit(&data, &["verify", "orders"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(
        stdout(&verified).contains("entries verified"),
        "{}",
        stdout(&verified)
    );

    // Someone bypassing the trigger rewrites the prune's record: verify finds it and exits 1.
    let seq = pruned["entry"].as_i64().unwrap();
    let conn = rusqlite::Connection::open(data.join("read-models/orders.db")).unwrap();
    conn.execute_batch(&format!(
        "DROP TRIGGER audit_log_is_append_only_update; \
         UPDATE audit_log SET at = at - 1 WHERE seq = {seq};"
    ))
    .unwrap();
    drop(conn);
    let broken = audit(&data, &["verify", "orders"]);
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
    assert!(
        stdout(&broken).contains(&format!("broken at entry {seq}")),
        "{}",
        stdout(&broken)
    );
    let broken = audit(&data, &["verify", "orders", "--json"]);
    assert_eq!(broken.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert_eq!(report["broken"]["seq"], seq);
}
