//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;

/// Path of the `nexus` binary built for this test run.
#[allow(dead_code)]
pub(crate) fn nexus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nexus"))
}

/// The URL in `var`, or `None` (skipped) when unset; `NEXUS_REQUIRE_SERVICES=1` fails instead.
#[allow(dead_code)]
pub(crate) fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("NEXUS_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{var} is not set but NEXUS_REQUIRE_SERVICES=1"
            );
            #[expect(clippy::print_stderr, reason = "say why the test did nothing")]
            {
                eprintln!("skipped: {var} not set");
            }
            None
        }
    }
}

/// Creates database `name` on the server at `admin_url` (dropping a leftover one first) and
/// returns its URL.
#[allow(dead_code)]
pub(crate) fn fresh_database(admin_url: &str, name: &str) -> String {
    admin(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE); CREATE DATABASE {name}"),
    );
    match admin_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("unexpected PostgreSQL URL {admin_url}"),
    }
}

/// Drops database `name` (and any connection still open to it) on the server at `admin_url`.
#[allow(dead_code)]
pub(crate) fn drop_database(admin_url: &str, name: &str) {
    admin(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}

/// Runs `sql` (statements that may not run in a transaction, one at a time) on `admin_url`.
fn admin(admin_url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        for statement in sql.split("; ") {
            client.batch_execute(statement).await.unwrap();
        }
    });
}
