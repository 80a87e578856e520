//! The crash scenario of issue #10 on the JetStream layouts: `kill -9` of `nexus up` with
//! events delivered to the killed process but not yet acknowledged, and a PostgreSQL restart
//! that makes the projection worker restart with deliveries in flight. The read models must
//! equal a rebuild from the store within seconds, not after the consumer's `ack_wait` (600 s).

use super::nexus::Layout;
use super::servers::{Nats, Postgres};
use super::{crash_scenario, postgres_restart, summary, under_load};

#[test]
fn kill9_of_nexus_up_loses_and_duplicates_nothing_on_the_embedded_store_with_nats() {
    let _one_fault_at_a_time = super::exclusive();
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    crash_scenario(
        &Layout::embedded_nats(&nats.url(), "FAULTS_EMBEDDED"),
        dir.path(),
    );
}

#[test]
fn kill9_of_nexus_up_loses_and_duplicates_nothing_on_postgres_with_nats() {
    let _one_fault_at_a_time = super::exclusive();
    let (Some(postgres), Some(nats)) = (Postgres::start(), Nats::start()) else {
        return;
    };
    let url = postgres.create_database("faults");
    let dir = tempfile::tempdir().unwrap();
    crash_scenario(
        &Layout::postgres_nats(&url, &nats.url(), "FAULTS_POSTGRES"),
        dir.path(),
    );
}

#[test]
fn a_postgres_restart_mid_load_loses_and_duplicates_nothing_with_nats() {
    let _one_fault_at_a_time = super::exclusive();
    let (Some(postgres), Some(nats)) = (Postgres::start(), Nats::start()) else {
        return;
    };
    let url = postgres.create_database("faults");
    postgres_restart(
        &postgres,
        &Layout::postgres_nats(&url, &nats.url(), "FAULTS_PG_RESTART"),
    );
}

#[test]
fn a_jetstream_that_lost_its_store_is_refilled_from_the_event_store() {
    let _one_fault_at_a_time = super::exclusive();
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::embedded_nats(&url, "FAULTS_NATS_WIPED");
    // Everything down; JetStream comes back without the stream the relay had published to,
    // and the projection without its read model, so it can only be rebuilt from a refilled stream.
    let (ledger, verified) = under_load(&layout, dir.path(), 1, |up, _| {
        up.kill9();
        nats.kill_wipe_and_restart();
        std::fs::remove_dir_all(up.data().join("read-models")).unwrap();
        up.restart();
    });
    summary(
        &layout,
        "1 x kill -9 of nexus up and nats-server, JetStream's store and the read model deleted",
        &ledger,
        &verified,
    );
    // The projection could rebuild from the store alone; other consumers of the stream can't:
    // the relay must have noticed the stream holds less than its checkpoint and refilled it.
    let held = stream_messages(&url, "FAULTS_NATS_WIPED");
    assert_eq!(
        held, verified.events as u64,
        "JetStream holds {held} of the {} events after losing its store",
        verified.events
    );
    super::report(&format!(
        "embedded+nats: the stream holds all {held} events again after losing its store"
    ));
}

/// How many messages JetStream stream `name` at `url` holds.
fn stream_messages(url: &str, name: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(name)
            .await
            .expect("the stream exists");
        stream.info().await.expect("stream info").state.messages
    })
}
