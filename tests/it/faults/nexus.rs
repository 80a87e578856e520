//! `nexus up` as a process the suite starts, kills with SIGKILL and starts again on the same data.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::nexus;

/// How a run of `nexus up` keeps its events, read models and bus.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// A short name for reports (`embedded+inprocess`, ...).
    pub(crate) name: String,
    /// The flags after `nexus up` besides ports, `--json` and `--data-dir`.
    pub(crate) flags: Vec<String>,
    /// The PostgreSQL URL of the store, when it is PostgreSQL.
    pub(crate) postgres: Option<String>,
}

impl Layout {
    /// The embedded store with the in-process bus and SQLite read models.
    pub(crate) fn embedded() -> Self {
        Self {
            name: "embedded+inprocess".to_owned(),
            flags: Vec::new(),
            postgres: None,
        }
    }

    /// The embedded store, JetStream at `nats_url` (stream `stream`) and SQLite read models.
    pub(crate) fn embedded_nats(nats_url: &str, stream: &str) -> Self {
        Self {
            name: "embedded+nats".to_owned(),
            flags: nats_flags(nats_url, stream),
            postgres: None,
        }
    }

    /// PostgreSQL at `url` for the store and the read models, the in-process bus.
    pub(crate) fn postgres(url: &str) -> Self {
        Self {
            name: "postgres+inprocess+postgres-read-models".to_owned(),
            flags: [
                "--store",
                "postgres",
                "--url",
                url,
                "--read-models",
                "postgres",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            postgres: Some(url.to_owned()),
        }
    }

    /// PostgreSQL at `url` for the store and the read models, JetStream at `nats_url`.
    pub(crate) fn postgres_nats(url: &str, nats_url: &str, stream: &str) -> Self {
        let mut flags: Vec<String> = ["--store", "postgres", "--url", url]
            .into_iter()
            .chain(["--read-models", "postgres"])
            .map(str::to_owned)
            .collect();
        flags.extend(nats_flags(nats_url, stream));
        Self {
            name: "postgres+nats+postgres-read-models".to_owned(),
            flags,
            postgres: Some(url.to_owned()),
        }
    }
}

fn nats_flags(nats_url: &str, stream: &str) -> Vec<String> {
    [
        "--bus",
        "nats",
        "--nats-url",
        nats_url,
        "--nats-stream",
        stream,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// The URLs a running `nexus up` announced.
#[derive(Debug, Clone)]
pub(crate) struct Urls {
    pub(crate) command: String,
    pub(crate) query: String,
    pub(crate) registry: String,
}

/// A `nexus up` process on one data folder; killed with SIGKILL when dropped.
pub(crate) struct NexusUp {
    layout: Layout,
    data: PathBuf,
    child: Option<Child>,
    urls: Urls,
    starts: u32,
}

impl NexusUp {
    /// Starts `nexus up` with `layout` on `data` and waits for its URLs.
    pub(crate) fn start(layout: &Layout, data: &Path) -> Self {
        let (child, urls) = spawn(layout, data, 0);
        Self {
            layout: layout.clone(),
            data: data.to_path_buf(),
            child: Some(child),
            urls,
            starts: 1,
        }
    }

    /// The URLs of the current process.
    pub(crate) fn urls(&self) -> &Urls {
        &self.urls
    }

    /// The data folder.
    pub(crate) fn data(&self) -> &Path {
        &self.data
    }

    /// Kills the process with SIGKILL (no shutdown hook runs) and waits for it to be gone.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same data; returns the new URLs.
    pub(crate) fn restart(&mut self) -> Urls {
        self.kill9();
        let (child, urls) = spawn(&self.layout, &self.data, self.starts);
        self.child = Some(child);
        self.starts += 1;
        self.urls = urls.clone();
        urls
    }

    /// Stops the process with SIGINT and returns its exit code.
    pub(crate) fn interrupt(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nexus up did not stop within 30 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NexusUp {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawns `nexus up`, its log in `<data>/../nexus-<n>.log`, and reads the announced URLs.
fn spawn(layout: &Layout, data: &Path, n: u32) -> (Child, Urls) {
    let log_path = data.parent().unwrap_or(data).join(format!("nexus-{n}.log"));
    let log = std::fs::File::create(&log_path).expect("create the log file");
    let mut child = nexus()
        .args([
            "up",
            "--json",
            "--command-port",
            "0",
            "--query-port",
            "0",
            "--registry-port",
            "0",
            "--data-dir",
        ])
        .arg(data)
        .args(&layout.flags)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start nexus up");
    let stdout = child.stdout.take().expect("piped stdout");
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the first line, so the process never writes to a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let Ok(first) = lines.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!(
            "nexus up ({}) printed no URLs within 60 s; its log:\n{log}",
            layout.name
        );
    };
    let announced: Value = serde_json::from_str(&first).expect("the first line is JSON");
    let url = |key: &str| {
        announced[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {announced}"))
            .to_owned()
    };
    let urls = Urls {
        command: url("command_service"),
        query: url("query_dashboard"),
        registry: url("schema_registry"),
    };
    (child, urls)
}
