//! Test helpers: fresh stores per test, on the embedded backend and on a throw-away PostgreSQL database.

use std::sync::Arc;

use nexus_runtime::EventStore;
use nexus_runtime::store::embedded::EmbeddedStore;

/// A fresh embedded store in its own temporary folder (kept alive by the returned guard).
pub(crate) fn embedded() -> (Arc<dyn EventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let store = EmbeddedStore::open(dir.path().join("events.db")).expect("open the embedded store");
    (Arc::new(store), dir)
}

/// The URL of a test server from `var`, or `None` (test skipped) when it is unset.
#[allow(
    dead_code,
    reason = "used by the server-backed test modules that are compiled in"
)]
pub(crate) fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) => {
            skip(&format!("{var} not set"));
            None
        }
    }
}

/// Skips a test that needs something this machine lacks; with `NEXUS_REQUIRE_SERVICES=1`
/// (set by CI) the test fails instead.
#[allow(
    dead_code,
    reason = "used by the server-backed test modules that are compiled in"
)]
pub(crate) fn skip(reason: &str) {
    if std::env::var("NEXUS_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{reason}, but NEXUS_REQUIRE_SERVICES=1");
    }
    #[expect(
        clippy::print_stderr,
        reason = "tell the person running the tests why this one did nothing"
    )]
    {
        eprintln!("skipped: {reason}");
    }
}

#[cfg(feature = "postgres")]
pub(crate) use pg::TestDb;

#[cfg(feature = "postgres")]
mod pg {
    use std::sync::Arc;

    use nexus_runtime::EventStore;
    use nexus_runtime::store::postgres::{PostgresOptions, PostgresStore};

    /// A PostgreSQL database created for one test and dropped when it ends.
    pub(crate) struct TestDb {
        admin_url: String,
        name: String,
        pub(crate) url: String,
    }

    impl TestDb {
        /// Creates a fresh database, or returns `None` (test skipped) when no server is configured.
        ///
        /// With `NEXUS_REQUIRE_SERVICES=1` a missing server fails the test instead.
        pub(crate) async fn create() -> Option<Self> {
            let admin_url = super::service_url("NEXUS_TEST_POSTGRES_URL")?;
            let name = format!("nexus_test_{}", uuid::Uuid::now_v7().simple());
            let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL server");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the test database");
            let url = with_database(&admin_url, &name);
            Some(Self {
                admin_url,
                name,
                url,
            })
        }

        /// A store on this database with `partitions` partitions.
        pub(crate) async fn store_with(&self, partitions: u16) -> Arc<PostgresStore> {
            let options = PostgresOptions {
                partitions,
                ..PostgresOptions::default()
            };
            Arc::new(
                PostgresStore::connect_with(&self.url, options)
                    .await
                    .expect("connect the PostgreSQL store"),
            )
        }

        /// A store on this database with the default options.
        pub(crate) async fn store(&self) -> Arc<dyn EventStore> {
            self.store_with(4).await
        }

        /// A raw client on this database.
        pub(crate) async fn client(&self) -> tokio_postgres::Client {
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
            tokio::spawn(connection);
            client
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let admin_url = self.admin_url.clone();
            let name = self.name.clone();
            // Drop the database on a separate thread: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a runtime to drop the test database");
                runtime.block_on(async move {
                    if let Ok((client, connection)) =
                        tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(connection);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                });
            })
            .join();
        }
    }

    /// `url` with its database name replaced by `database`.
    fn with_database(url: &str, database: &str) -> String {
        let (base, query) = url
            .split_once('?')
            .map_or((url, None), |(b, q)| (b, Some(q)));
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[scheme_end..].find('/') {
            Some(slash) => &base[..scheme_end + slash],
            None => base,
        };
        match query {
            Some(query) => format!("{base}/{database}?{query}"),
            None => format!("{base}/{database}"),
        }
    }
}
