//! What Nexus's test suites share (a dev-dependency only): skipping a test whose server or
//! tool is missing, and throw-away PostgreSQL databases.
//!
//! A test whose server variable (`NEXUS_TEST_POSTGRES_URL`, `NEXUS_TEST_NATS_URL`, …) is unset
//! prints `skipped: …` and returns; with `NEXUS_REQUIRE_SERVICES=1` (set by CI) the same case
//! fails instead, so CI never passes by skipping.
//!
//! [`TestDb`] creates a database named `nexus_test_<uuid>` on the test server and drops it
//! when the value is dropped, whether the test passed or panicked.

use std::fmt::Display;

/// Whether a missing server or tool fails the test (`NEXUS_REQUIRE_SERVICES=1`) instead of
/// skipping it.
pub fn services_required() -> bool {
    std::env::var("NEXUS_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Skips a test that needs something this machine lacks: prints `skipped: {reason}`, or, with
/// `NEXUS_REQUIRE_SERVICES=1`, fails the test.
///
/// # Panics
///
/// With `NEXUS_REQUIRE_SERVICES=1`.
pub fn skip(reason: impl Display) {
    assert!(
        !services_required(),
        "{reason}, but NEXUS_REQUIRE_SERVICES=1"
    );
    #[expect(
        clippy::print_stderr,
        reason = "tell the person running the tests why this one did nothing"
    )]
    {
        eprintln!("skipped: {reason}");
    }
}

/// The URL of a test server from `var`, or `None` (the test skips, see [`skip`]) when unset.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip(format_args!("{var} not set"));
            None
        }
    }
}

/// `Some` of what was found, or `None` (the test skips, see [`skip`]) with why it was not.
pub fn available<T>(found: Result<T, String>) -> Option<T> {
    match found {
        Ok(found) => Some(found),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// A PostgreSQL database created for one test and dropped when this value is.
#[derive(Debug)]
pub struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    /// A fresh database on the server of `NEXUS_TEST_POSTGRES_URL`, or `None` (the test
    /// skips, see [`skip`]) when it is unset.
    ///
    /// # Panics
    ///
    /// When the server refuses the connection or the `CREATE DATABASE`.
    pub async fn create() -> Option<Self> {
        let admin_url = service_url("NEXUS_TEST_POSTGRES_URL")?;
        Some(Self::create_on(&admin_url).await)
    }

    /// [`TestDb::create`] for tests that are not async.
    ///
    /// # Panics
    ///
    /// Inside an async runtime, or as [`TestDb::create`] does.
    pub fn create_blocking() -> Option<Self> {
        let admin_url = service_url("NEXUS_TEST_POSTGRES_URL")?;
        Some(runtime().block_on(Self::create_on(&admin_url)))
    }

    /// A fresh database on the server at `admin_url`.
    ///
    /// # Panics
    ///
    /// When the server refuses the connection or the `CREATE DATABASE`.
    pub async fn create_on(admin_url: &str) -> Self {
        let name = format!("nexus_test_{}", uuid::Uuid::now_v7().simple());
        connect(admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        Self {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of the server's maintenance database the test database was created from.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's connection settings.
    ///
    /// # Panics
    ///
    /// When the server's URL is not a PostgreSQL URL.
    pub fn config(&self) -> tokio_postgres::Config {
        self.url.parse().expect("a PostgreSQL URL")
    }

    /// A client on this database (its connection runs on the current runtime).
    ///
    /// # Panics
    ///
    /// When the server refuses the connection.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // A thread of its own: `drop` cannot await, and may run inside a runtime or outside.
        let dropped = std::thread::spawn(move || {
            runtime().block_on(async move {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            #[expect(
                clippy::print_stderr,
                reason = "a database left behind is worth a line, not a second panic"
            )]
            {
                eprintln!("could not drop the test database {}", self.name);
            }
        }
    }
}

/// A client on `url`, its connection spawned on the current runtime.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL server");
    tokio::spawn(connection);
    client
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime for the test database")
}

/// `url` with its database name replaced by `database` (its query kept).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/postgres", "t1"),
            "postgres://u@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@host?sslmode=disable", "t1"),
            "postgres://u@host/t1?sslmode=disable"
        );
    }

    #[tokio::test]
    async fn a_test_database_is_created_and_dropped_with_its_value() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let name = db.name().to_owned();
        let count = |client: tokio_postgres::Client, name: String| async move {
            client
                .query_one(
                    "SELECT count(*) FROM pg_database WHERE datname = $1",
                    &[&name],
                )
                .await
                .expect("query")
                .get::<_, i64>(0)
        };
        assert_eq!(
            db.client()
                .await
                .query_one("SELECT 1", &[])
                .await
                .map(|r| r.get::<_, i32>(0))
                .ok(),
            Some(1)
        );
        let admin = connect(&db.admin_url).await;
        assert_eq!(count(admin, name.clone()).await, 1);
        drop(db);
        let admin_url = std::env::var("NEXUS_TEST_POSTGRES_URL").expect("set");
        assert_eq!(
            count(connect(&admin_url).await, name).await,
            0,
            "dropped with its value"
        );
    }
}
