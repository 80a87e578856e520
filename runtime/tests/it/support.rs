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

/// Requests to a router in the test's own process, with tokens of an HS256 issuer.
#[cfg(feature = "http")]
pub(crate) mod http {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use nexus_runtime::http::access::{AccessControl, AuthConfig, TokenRequest, issue_hs256};
    use serde_json::Value;
    use tower::ServiceExt;

    const SECRET: &str = "a-dead-letter-test-secret-of-more-than-32-bytes";

    /// Access control that trusts [`token`]s (its secret is written into `dir`); callers
    /// without a token may do nothing.
    pub(crate) async fn access(dir: &std::path::Path) -> AccessControl {
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        let config = AuthConfig {
            issuer: Some("nexus-test".to_owned()),
            audience: Some("nexus".to_owned()),
            hs256_secret_file: Some("secret".into()),
            ..AuthConfig::default()
        };
        AccessControl::load(&config, dir).await.unwrap()
    }

    /// An `Authorization` header value for an operator with `role`, valid for a minute.
    pub(crate) fn token(role: &str) -> String {
        let roles = [role.to_owned()];
        let token = issue_hs256(
            SECRET.as_bytes(),
            &TokenRequest {
                issuer: "nexus-test",
                audience: "nexus",
                subject: "operator",
                roles: &roles,
                roles_claim: "roles",
                ttl: Duration::from_secs(60),
                kid: None,
            },
        )
        .unwrap();
        format!("Bearer {token}")
    }

    /// Sends one request to `app` (on loopback, with `auth` and a JSON `body` when given):
    /// the status and the JSON body (`null` when it is not JSON).
    pub(crate) async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "127.0.0.1");
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        let body = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let response = app
            .clone()
            .oneshot(builder.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// One caller of a router, sending the same credential (or none) with every request.
    pub(crate) struct Caller<'a> {
        app: &'a Router,
        auth: Option<String>,
    }

    impl<'a> Caller<'a> {
        /// A caller without a credential.
        pub(crate) fn anonymous(app: &'a Router) -> Self {
            Self { app, auth: None }
        }

        /// An operator with `role`, holding a [`token`].
        pub(crate) fn with_role(app: &'a Router, role: &str) -> Self {
            Self::with_auth(app, &token(role))
        }

        /// A caller sending `authorization` as it is.
        pub(crate) fn with_auth(app: &'a Router, authorization: &str) -> Self {
            Self {
                app,
                auth: Some(authorization.to_owned()),
            }
        }

        /// `GET uri`: the status and the JSON body.
        pub(crate) async fn get(&self, uri: &str) -> (StatusCode, Value) {
            send(self.app, "GET", uri, self.auth.as_deref(), None).await
        }

        /// `POST uri`, with a JSON `body` when given: the status and the JSON body.
        pub(crate) async fn post(&self, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
            send(self.app, "POST", uri, self.auth.as_deref(), body).await
        }
    }
}

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

        /// The database's name.
        pub(crate) fn name(&self) -> &str {
            self.db.name()
        }

        /// A client on the server's maintenance database, as a superuser.
        async fn superuser(&self) -> tokio_postgres::Client {
            let (superuser, connection) =
                tokio_postgres::connect(self.db.admin_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            superuser
        }

        /// Takes the database away from under its users: it refuses new connections and every
        /// session on it is ended, until [`TestDb::come_back`].
        pub(crate) async fn go_away(&self) {
            let superuser = self.superuser().await;
            let name = self.db.name();
            superuser
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                .await
                .unwrap();
            superuser
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    &[&name],
                )
                .await
                .unwrap();
        }

        /// Lets connections to the database in again.
        pub(crate) async fn come_back(&self) {
            let name = self.db.name();
            self.superuser()
                .await
                .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                .await
                .unwrap();
        }
    }
}
