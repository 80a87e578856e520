//! The fault-injection suite: the reference system (`nexus up`) under a bounded load of
//! orders while one fault at a time hits it — `kill -9` of `nexus up`, a restart of
//! PostgreSQL, `kill -9` of NATS, a restart of RabbitMQ under the integration relay, a read
//! model file deleted — each server a private instance on free loopback ports.
//!
//! After each fault: every acknowledged command has its events in the store exactly once,
//! the served read models equal a rebuild from the store document by document, and every
//! service answers. Each test prints what it injected and verified; the fault moments come
//! from a seed it prints (`NEXUS_FAULT_SEED=<seed>` repeats a run).

mod load;
mod nats_crash;
mod nexus;
mod rabbitmq;
mod servers;
mod verify;

use std::path::Path;
use std::time::{Duration, Instant};

use load::{Ledger, Load, Rng, Target};
use nexus::{Layout, NexusUp};
use servers::{Nats, Postgres};
use verify::Verified;

/// Clients sending orders at once.
const CLIENTS: usize = 8;
/// Times the scenario kills `nexus up`.
const KILLS: u32 = 3;
/// Commands acknowledged between two faults, at least: each fault hits a loaded system.
const PROGRESS: u64 = 40;
/// How long the served read models may take to equal a rebuild once the load stopped.
const CONVERGE: Duration = Duration::from_secs(15);

/// Prints one line of the suite's report (shown with `--nocapture`, and on failure), and
/// appends it to the file `NEXUS_FAULT_REPORT` names, where `.ci/run` shows it after the run.
pub(crate) fn report(line: &str) {
    #[expect(clippy::print_stderr, reason = "the suite shows what it checked")]
    {
        eprintln!("faults: {line}");
    }
    if let Some(path) = std::env::var_os("NEXUS_FAULT_REPORT") {
        use std::io::Write as _;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "faults: {line}"));
        appended.expect("append to the fault report");
    }
}

/// Holds the suite to one fault test at a time, even when the rest of the end-to-end tests
/// run beside it under `cargo test --workspace`: two faults at once would prove neither.
pub(crate) fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed fault test poisons the lock; the next one still runs on its own.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends the load to `layout` while `inject` hits it `faults` times at seeded moments, then
/// verifies the store and the read models; returns the ledger and what was verified.
fn under_load(
    layout: &Layout,
    dir: &Path,
    faults: u32,
    mut inject: impl FnMut(&mut NexusUp, &mut Rng),
) -> (Ledger, Verified) {
    let (mut rng, seed) = Rng::from_env();
    report(&format!("{}: seed {seed}", layout.name));
    let mut up = NexusUp::start(layout, &dir.join("data"));
    let target = Target::new(&up.urls().command);
    let run = format!("r{}", std::process::id());
    let load = Load::start(CLIENTS, &target, &run);
    for _ in 0..faults {
        load.wait_for_progress(PROGRESS, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.between(500, 2500)));
        inject(&mut up, &mut rng);
        target.set(&up.urls().command);
    }
    load.wait_for_progress(PROGRESS, Duration::from_secs(60));
    let ledger = load.finish();
    let verified = verify::verify(layout, up.data(), up.urls(), &ledger, CONVERGE);
    assert!(
        ledger.acks.len() as u64 >= PROGRESS * u64::from(faults + 1),
        "the load made too little progress to prove anything: {} commands",
        ledger.acks.len()
    );
    assert_eq!(
        up.interrupt(),
        Some(0),
        "nexus up stops cleanly after the faults"
    );
    (ledger, verified)
}

fn summary(layout: &Layout, faults: &str, ledger: &Ledger, verified: &Verified) {
    report(&format!(
        "{}: {faults}; {} requests, {} sent again (no answer, or 5xx while a server was down), {} answered as replays; {verified}",
        layout.name, ledger.requests, ledger.resent, ledger.replayed
    ));
}

/// Kills `nexus up` with SIGKILL and starts it again on the same data after a short pause.
fn kill9_and_restart(up: &mut NexusUp, rng: &mut Rng) {
    up.kill9();
    std::thread::sleep(Duration::from_millis(rng.between(0, 300)));
    up.restart();
}

/// The crash scenario of issue #10 on one layout: three SIGKILLs of `nexus up` mid-load.
fn crash_scenario(layout: &Layout, dir: &Path) {
    let (ledger, verified) = under_load(layout, dir, KILLS, kill9_and_restart);
    summary(
        layout,
        &format!("{KILLS} x kill -9 of nexus up"),
        &ledger,
        &verified,
    );
}

#[test]
fn kill9_of_nexus_up_loses_and_duplicates_nothing_on_the_embedded_store() {
    let _one_fault_at_a_time = exclusive();
    let dir = tempfile::tempdir().unwrap();
    crash_scenario(&Layout::embedded(), dir.path());
}

#[test]
fn kill9_of_nexus_up_loses_and_duplicates_nothing_on_postgres() {
    let _one_fault_at_a_time = exclusive();
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let url = postgres.create_database("faults");
    let dir = tempfile::tempdir().unwrap();
    crash_scenario(&Layout::postgres(&url), dir.path());
}

/// A restart of PostgreSQL under `layout` (store and read models on it).
fn postgres_restart(postgres: &Postgres, layout: &Layout) {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, verified) = under_load(layout, dir.path(), 1, |_, rng| {
        postgres.restart(Duration::from_millis(rng.between(200, 1500)));
    });
    summary(
        layout,
        "1 x PostgreSQL stopped (-m immediate) and started again",
        &ledger,
        &verified,
    );
}

#[test]
fn a_postgres_restart_mid_load_loses_and_duplicates_nothing() {
    let _one_fault_at_a_time = exclusive();
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let url = postgres.create_database("faults");
    postgres_restart(&postgres, &Layout::postgres(&url));
}

#[test]
fn a_nats_kill9_mid_load_loses_and_duplicates_nothing() {
    let _one_fault_at_a_time = exclusive();
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::embedded_nats(&url, "FAULTS_NATS_KILL");
    let (ledger, verified) = under_load(&layout, dir.path(), 1, |_, rng| {
        nats.kill_and_restart(Duration::from_millis(rng.between(200, 1500)));
    });
    summary(
        &layout,
        "1 x kill -9 of nats-server, started again on the same store",
        &ledger,
        &verified,
    );
}

#[test]
fn a_read_model_file_deleted_while_running_is_rebuilt_from_the_store() {
    let _one_fault_at_a_time = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::embedded();
    let mut deleted = Vec::new();
    let (ledger, verified) = under_load(&layout, dir.path(), 1, |up, _| {
        let folder = up.data().join("read-models");
        for entry in std::fs::read_dir(&folder).unwrap().filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("orders.db") {
                std::fs::remove_file(entry.path()).unwrap();
                deleted.push(name);
            }
        }
    });
    assert!(
        deleted.iter().any(|n| n == "orders.db"),
        "the read model file existed: {deleted:?}"
    );
    summary(
        &layout,
        &format!("{deleted:?} deleted while running"),
        &ledger,
        &verified,
    );
    // Started again, the projection finds no read model and rebuilds it from the store.
    let mut up = NexusUp::start(&layout, &dir.path().join("data"));
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let expected = runtime.block_on(async {
        let store = verify::open_store(&layout, up.data()).await;
        let head = verify::all_events(store.as_ref())
            .await
            .last()
            .map_or(0, |e| e.position);
        verify::rebuild(store, head).await
    });
    let rebuilt_in = verify::converge(&up.urls().query, &expected, started, CONVERGE);
    verify::services_answer(up.urls());
    assert_eq!(up.interrupt(), Some(0));
    report(&format!(
        "{}: after a restart the deleted read model was rebuilt from the store: {} documents equal in {} ms",
        layout.name,
        expected.len(),
        rebuilt_in.as_millis()
    ));
}
