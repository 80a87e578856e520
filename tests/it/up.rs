//! `nexus up` and `nexus bench store|bus`: the reference system runs end to end, and the
//! benchmarks print the JSON documents their users parse.

use std::process::Command;

use crate::support::nexus_bin;

#[test]
fn up_drives_the_sample_through_the_command_path_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = || {
        Command::new(nexus_bin())
            .args(["up", "--orders", "2", "--data-dir"])
            .arg(&data)
            .output()
            .expect("run nexus up")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(text.contains("PlaceOrder     -> version 1"), "{text}");
    assert!(
        text.contains("rejected: the order is Confirmed and can no longer change"),
        "{text}"
    );
    assert!(
        text.contains("is at version 4, expected 1"),
        "a stale version is a conflict: {text}"
    );
    assert!(text.contains("cdc "), "committed events are tailed: {text}");
    assert!(text.contains("8 events appended for 2 orders"), "{text}");
    assert!(data.join("events.db").exists());
    assert!(data.join("events.snapshots.db").exists());
    let second = run();
    assert!(second.status.success());
    let text = String::from_utf8_lossy(&second.stdout);
    // The log keeps the first run's events: the second run's first event is at position 9.
    assert!(text.contains("cdc  #9 "), "{text}");
}

#[test]
fn up_rejects_postgres_without_a_url() {
    let output = Command::new(nexus_bin())
        .args(["up", "--store", "postgres"])
        .env_remove("NEXUS_POSTGRES_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--store postgres needs --url"));
}

#[test]
fn bench_store_prints_its_measurements_as_json() {
    let output = Command::new(nexus_bin())
        .args([
            "bench",
            "store",
            "--backend",
            "embedded",
            "--writers",
            "2",
            "--events",
            "200",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["backend"], "embedded");
    assert_eq!(run["append"]["events"], 200);
    for key in ["events_per_sec", "appends_per_sec"] {
        assert!(run["append"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(run["append"]["latency_ms"]["p99"].is_number());
    assert_eq!(run["rehydrate_10k_ms"]["events"], 10_000);
    assert!(run["rehydrate_10k_ms"]["with_snapshot"]["p50"].is_number());
    assert!(run["stream_read_ms"]["p99"].is_number());
    assert_eq!(run["cdc_latency_ms"]["samples"], 500);
}

#[test]
fn bench_refuses_a_load_smaller_than_its_writers() {
    let output = Command::new(nexus_bin())
        .args(["bench", "store", "--writers", "8", "--events", "4"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must cover at least one batch"));
}

#[test]
fn bench_bus_prints_latency_and_lag_per_projection_count() {
    let output = Command::new(nexus_bin())
        .args([
            "bench",
            "bus",
            "--projections",
            "1,2",
            "--rate",
            "500",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["backend"], "inprocess");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["projections"], 2);
    assert_eq!(
        runs[1]["latency_ms"]["samples"], 1000,
        "each projection saw each event once"
    );
    assert!(runs[0]["latency_ms"]["p999"].is_number());
}

#[test]
fn bench_store_measures_postgres_against_its_plain_insert_ceiling() {
    let Ok(url) = std::env::var("NEXUS_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("NEXUS_REQUIRE_SERVICES").as_deref(),
            Ok("1"),
            "NEXUS_TEST_POSTGRES_URL is not set but NEXUS_REQUIRE_SERVICES=1"
        );
        return;
    };
    let output = Command::new(nexus_bin())
        .args([
            "bench",
            "store",
            "--backend",
            "postgres",
            "--writers",
            "2",
            "--events",
            "200",
            "--batch",
            "2",
            "--json",
            "--url",
        ])
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["backend"], "postgres");
    assert_eq!(run["append"]["events"], 200);
    assert!(run["ceiling"]["events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(run["ceiling"]["ratio"].as_f64().unwrap() > 0.0);
}
