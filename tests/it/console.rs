//! The web console in real browsers against a running `nexus up --demo`: headless Chromium,
//! driven by `playwright-core` from Node (every step, `console/e2e.mjs`), then headless Firefox
//! (Debian's firefox-esr over WebDriver BiDi, driven by `puppeteer-core`, the engine-dependent
//! steps, `console/firefox.mjs`). Screenshots land in the target folder (`console-screenshots/`),
//! as CI artifacts.
//!
//! Needs `chromium` (or `NEXUS_TEST_CHROMIUM`), `firefox-esr` (or `NEXUS_TEST_FIREFOX`), `node`,
//! and `playwright-core` and `puppeteer-core` installed under `NEXUS_TEST_NODE_MODULES` (default
//! `/var/tmp/nexus-ci-node/node_modules`, where `.ci/run` installs them); skipped with a message
//! when one is missing, unless `NEXUS_REQUIRE_SERVICES=1`. Bounded: each browser run is killed,
//! and the test fails, after [`RUN_LIMIT`] or [`FIREFOX_RUN_LIMIT`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::up::Up;

/// The whole Chromium run, all steps.
const RUN_LIMIT: Duration = Duration::from_secs(100);
/// The whole Firefox run, all steps.
const FIREFOX_RUN_LIMIT: Duration = Duration::from_secs(60);

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

/// The console's own unit tests (`runtime/console/test`, node's test runner, no packages):
/// the live tail's rows and the search highlights, which the browser run cannot drive to
/// their bounds.
#[test]
fn the_console_unit_tests_pass_under_node() {
    let node_works = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_works {
        crate::support::skip("node is not installed");
        return;
    }
    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/console");
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&console)
        .output()
        .expect("run node --test");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn token(data: &Path, role: &str) -> String {
    let out = crate::support::nexus()
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
fn the_console_tails_searches_browses_and_repairs_the_demo_in_chromium_and_firefox_and_hides_what_a_token_may_not_do()
 {
    let Some((chromium, modules)) = crate::support::available(browser()) else {
        return;
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
    let demo = data.join("demo");
    let run = |script: &str, browser_env: (&str, &Path), limit: Duration| {
        let mut command = Command::new("node");
        command
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/it/console")
                    .join(script),
            )
            .env("NEXUS_CONSOLE_NODE_MODULES", &modules)
            .env(browser_env.0, browser_env.1)
            .env("NEXUS_CONSOLE_QUERY_URL", &up.query_url)
            .env("NEXUS_CONSOLE_COMMAND_URL", &up.command_url)
            .env("NEXUS_CONSOLE_REGISTRY_URL", &registry)
            .env("NEXUS_CONSOLE_TOKEN", &admin)
            .env("NEXUS_CONSOLE_READER_TOKEN", &reader)
            .env("NEXUS_CONSOLE_DEMO_DIR", &demo)
            .env("NEXUS_CONSOLE_SCREENSHOTS", &shots);
        run_bounded(command, script, limit, &shots);
    };
    run("e2e.mjs", ("NEXUS_CONSOLE_CHROMIUM", &chromium), RUN_LIMIT);
    // The same console in Firefox, when it and puppeteer-core are installed (`.ci/run` does).
    match firefox(&modules) {
        Ok(firefox) => run(
            "firefox.mjs",
            ("NEXUS_CONSOLE_FIREFOX", &firefox),
            FIREFOX_RUN_LIMIT,
        ),
        Err(why) => crate::support::skip(format_args!("Firefox: {why}")),
    }
}

/// Debian's Firefox ESR (or `NEXUS_TEST_FIREFOX`) and puppeteer-core under `modules`, which
/// drives it over WebDriver BiDi, or why the Firefox run cannot happen.
fn firefox(modules: &Path) -> Result<PathBuf, String> {
    let firefox = std::env::var_os("NEXUS_TEST_FIREFOX")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/firefox-esr", "/usr/bin/firefox"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .ok_or(
            "firefox is not installed (apt-get install firefox-esr, or set NEXUS_TEST_FIREFOX)",
        )?;
    if !modules.join("puppeteer-core/package.json").exists() {
        return Err(format!(
            "puppeteer-core is not installed under {}",
            modules.display()
        ));
    }
    Ok(firefox)
}

/// Runs one browser script to its end or until `limit` (then kills it), prints its steps, and
/// fails the test unless it succeeded.
fn run_bounded(mut command: Command, script: &str, limit: Duration, shots: &Path) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
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
        eprintln!("{script}:\n{report}screenshots: {}", shots.display());
    }
    match status {
        Some(status) => assert!(status.success(), "a step of {script} failed:\n{report}"),
        None => panic!("{script} took over {limit:?}:\n{report}"),
    }
}
