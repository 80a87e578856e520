//! The web console in a real browser: headless Chromium, driven by `playwright-core` from Node,
//! against a running `nexus up --demo` (the steps are in `console/e2e.mjs`). Screenshots land in
//! the target folder (`console-screenshots/`), as CI artifacts.
//!
//! Needs `chromium` (or `NEXUS_TEST_CHROMIUM`), `node`, and `playwright-core` installed under
//! `NEXUS_TEST_NODE_MODULES` (default `/var/tmp/nexus-ci-node/node_modules`, where `.ci/run`
//! installs it); skipped with a message when one is missing, unless `NEXUS_REQUIRE_SERVICES=1`.
//! Bounded: the browser run is killed, and the test fails, after [`RUN_LIMIT`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::nexus_bin;
use crate::up::Up;

/// The whole browser run, all steps.
const RUN_LIMIT: Duration = Duration::from_secs(100);

/// Where `.ci/run` installs playwright-core when the environment does not say.
const DEFAULT_NODE_MODULES: &str = "/var/tmp/nexus-ci-node/node_modules";

/// The browser, Node.js and playwright-core, or why the test cannot run.
pub(crate) fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("NEXUS_TEST_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .ok_or(
            "chromium is not installed (apt-get install chromium, or set NEXUS_TEST_CHROMIUM)",
        )?;
    let node_works = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_works {
        return Err("node is not installed".to_owned());
    }
    let modules = std::env::var_os("NEXUS_TEST_NODE_MODULES")
        .map_or_else(|| PathBuf::from(DEFAULT_NODE_MODULES), PathBuf::from);
    if !modules.join("playwright-core/package.json").exists() {
        return Err(format!(
            "playwright-core is not installed under {} (npm install --prefix {} playwright-core)",
            modules.display(),
            modules.parent().unwrap_or(&modules).display()
        ));
    }
    Ok((chromium, modules))
}

fn token(data: &Path, role: &str) -> String {
    let out = Command::new(nexus_bin())
        .args(["token", "issue", "--role", role, "--data-dir"])
        .arg(data)
        .output()
        .expect("run nexus token issue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_console_browses_streams_projections_dead_letters_and_schemas_in_chromium_and_hides_what_a_token_may_not_do()
 {
    let (chromium, modules) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var("NEXUS_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("NEXUS_REQUIRE_SERVICES=1 but {why}")
        }
        Err(why) => {
            #[expect(clippy::print_stderr, reason = "say why the test did nothing")]
            {
                eprintln!("skipped: {why}");
            }
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data, &["--demo", "--demo-orders", "3"]);
    let registry = up.announced["schema_registry"]
        .as_str()
        .expect("the registry runs")
        .to_owned();
    let (admin, reader) = (token(&data, "admin"), token(&data, "reader"));
    // The demo's orders are in the read model before the browser looks.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = crate::up::http(
            "GET",
            &format!(
                "{}/read-models/orders/orders?status=confirmed",
                up.query_url
            ),
            &[],
            None,
        );
        if page["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo confirmed no order within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/it/console/e2e.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .env("NEXUS_CONSOLE_NODE_MODULES", &modules)
        .env("NEXUS_CONSOLE_CHROMIUM", &chromium)
        .env("NEXUS_CONSOLE_QUERY_URL", &up.query_url)
        .env("NEXUS_CONSOLE_COMMAND_URL", &up.command_url)
        .env("NEXUS_CONSOLE_REGISTRY_URL", &registry)
        .env("NEXUS_CONSOLE_TOKEN", &admin)
        .env("NEXUS_CONSOLE_READER_TOKEN", &reader)
        .env("NEXUS_CONSOLE_DEMO_DIR", data.join("demo"))
        .env("NEXUS_CONSOLE_SCREENSHOTS", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    #[expect(
        clippy::print_stderr,
        reason = "the steps and where the screenshots are"
    )]
    {
        eprintln!("{report}screenshots: {}", shots.display());
    }
    match status {
        Some(status) => assert!(status.success(), "a browser step failed:\n{report}"),
        None => panic!("the browser run took over {RUN_LIMIT:?}:\n{report}"),
    }
}
