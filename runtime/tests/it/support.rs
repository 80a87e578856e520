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

pub(crate) use nexus_test_support::{service_url, skip};

#[cfg(feature = "postgres")]
pub(crate) use pg::TestDb;

#[cfg(feature = "postgres")]
mod pg {
    use std::sync::Arc;

    use nexus_runtime::EventStore;
    use nexus_runtime::store::postgres::{PostgresOptions, PostgresStore};

    /// A PostgreSQL database created for one test and dropped when it ends, with the stores
    /// the runtime's tests open on it.
    pub(crate) struct TestDb {
        db: nexus_test_support::TestDb,
        pub(crate) url: String,
    }

    impl TestDb {
        /// Creates a fresh database, or returns `None` (test skipped) when no server is configured.
        ///
        /// With `NEXUS_REQUIRE_SERVICES=1` a missing server fails the test instead.
        pub(crate) async fn create() -> Option<Self> {
            let db = nexus_test_support::TestDb::create().await?;
            Some(Self {
                url: db.url().to_owned(),
                db,
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
            self.db.client().await
        }
    }
}
