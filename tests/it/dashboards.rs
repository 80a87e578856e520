//! The Grafana dashboards `nexus new` generates, checked against a real Prometheus: `nexus up`
//! (embedded store, NATS JetStream, so the relay runs too) is scraped every second under a
//! short load, and every PromQL expression of every panel is evaluated through Prometheus's
//! HTTP API; each must return data. Needs Debian's `prometheus` (`.ci/run` installs it).
//! Its time is bounded by construction: 12 s of load, waits of at most 20 s, about 40 s in all.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::metrics::get_text;
use crate::support::{nexus, service_url};
use crate::up::{Up, drop_stream};

/// How long the load runs while Prometheus scrapes.
const LOAD: Duration = Duration::from_secs(12);
/// What `$__rate_interval` becomes: long enough to hold the whole load at a 1 s scrape.
const RATE_INTERVAL: &str = "30s";

/// The Prometheus binary, or `None` (skipped) when it is not installed;
/// `NEXUS_REQUIRE_SERVICES=1` fails instead.
fn prometheus_bin() -> Option<PathBuf> {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    crate::support::available(
        found.ok_or_else(|| "prometheus is not installed (apt-get install prometheus)".to_owned()),
    )
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(bin: &Path, dir: &Path, target: &str) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nexus\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "prometheus did not listen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Prometheus { child, url }
}

/// Evaluates `expr` now; the result's series.
fn query(prometheus: &Prometheus, expr: &str) -> Vec<Value> {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query", prometheus.url),
        [("query", expr)],
    )
    .expect("the Prometheus URL");
    let (status, body) = get_text(url.as_str());
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{expr}: {body}");
    assert_eq!(answer["status"], "success", "{expr}: {body}");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every `expr` of every panel of the dashboards `nexus new` writes, with the panel's title.
fn panel_queries(project: &Path) -> Vec<(String, String)> {
    let dashboards = project.join("observability/grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dashboards).expect("the generated dashboards") {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push((
                        format!(
                            "{} / {}",
                            path.file_name().unwrap().to_string_lossy(),
                            panel["title"]
                        ),
                        expr.replace("$__rate_interval", RATE_INTERVAL),
                    ));
                }
            }
        }
    }
    queries
}

#[test]
fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let Some(bin) = prometheus_bin() else { return };
    let Some(nats) = service_url("NEXUS_TEST_NATS_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let generated = nexus()
        .args(["new", "dash", "--nexus-path"])
        .arg(env!("CARGO_MANIFEST_DIR").trim_end_matches("/cli"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let project = dir.path().join("dash");
    let queries = panel_queries(&project);
    assert!(queries.len() >= 20, "{queries:?}");
    let prometheus_config =
        std::fs::read_to_string(project.join("observability/prometheus.yml")).unwrap();
    assert!(prometheus_config.contains("scrape_interval: 1s"));

    let stream = format!("NEXUS_DASHBOARD_TEST_{}", std::process::id());
    let up = Up::start(
        &dir.path().join("data"),
        &[
            "--bus",
            "nats",
            "--nats-url",
            &nats,
            "--nats-stream",
            &stream,
        ],
    );
    let target = up.command_url.trim_start_matches("http://").to_owned();
    let prometheus = start_prometheus(&bin, dir.path(), &target);
    let load_until = Instant::now() + LOAD;
    let mut round = 0;
    while Instant::now() < load_until {
        crate::metrics::drive(&up, &format!("d{round}"));
        round += 1;
    }
    // Two more scrapes after the load, so every series has its last values.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !query(&prometheus, "up{job=\"nexus\"} == 1").is_empty(),
        "prometheus did not scrape nexus up"
    );
    let empty: Vec<&(String, String)> = queries
        .iter()
        .filter(|(_, expr)| query(&prometheus, expr).is_empty())
        .collect();
    drop(up);
    drop_stream(&nats, &stream);
    assert!(empty.is_empty(), "panel queries without data: {empty:#?}");
}
