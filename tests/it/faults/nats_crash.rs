//! The crash scenario of issue #10 on the JetStream layouts: `kill -9` of `nexus up` with
//! events delivered to the killed process but not yet acknowledged, and a PostgreSQL restart
//! that makes the projection worker restart with deliveries in flight. The read models must
//! equal a rebuild from the store within seconds, not after the consumer's `ack_wait` (600 s).

use super::nexus::Layout;
use super::servers::{Nats, Postgres};
use super::{crash_scenario, postgres_restart};

#[test]
fn kill9_of_nexus_up_loses_and_duplicates_nothing_on_the_embedded_store_with_nats() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    crash_scenario(
        &Layout::embedded_nats(&nats.url(), "FAULTS_EMBEDDED"),
        dir.path(),
    );
}

#[test]
fn kill9_of_nexus_up_loses_and_duplicates_nothing_on_postgres_with_nats() {
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
    let (Some(postgres), Some(nats)) = (Postgres::start(), Nats::start()) else {
        return;
    };
    let url = postgres.create_database("faults");
    postgres_restart(
        &postgres,
        &Layout::postgres_nats(&url, &nats.url(), "FAULTS_PG_RESTART"),
    );
}
