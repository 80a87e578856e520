//! The token issuer's public keys (a JWKS file or URL), cached, refreshed, and looked up by
//! `kid`.
//!
//! A key set is fetched at start, again once it is older than the refresh interval, and again
//! when a token names a `kid` the set lacks (a rotation), at most once per cooldown so a flood
//! of made-up `kid`s cannot hammer the issuer. Fetches are single-flight. A failed fetch keeps
//! the last good set. Each key's algorithm is fixed here, from configuration (`jwks_pinned`),
//! the JWK's own `alg`, or its key type, and must be in the allowed list; symmetric (`oct`)
//! keys are never taken from a JWKS.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The most keys kept from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub(crate) enum JwksSource {
    File(PathBuf),
    Url(reqwest::Url),
}

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The file could not be read.
    #[error("failed to read the JWKS file `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The URL did not answer with a 200 in time.
    #[error("failed to fetch the JWKS from `{url}`: {reason}")]
    Fetch {
        /// The URL (its path and query are left out).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The document is not a JWKS or is over the size limit.
    #[error("the JWKS document is invalid: {0}")]
    Invalid(String),
}

struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched_at: Instant,
}

/// The cached key set of one issuer.
pub(crate) struct Jwks {
    source: JwksSource,
    allowed: Vec<Algorithm>,
    pinned: BTreeMap<String, Algorithm>,
    max_age: Duration,
    cooldown: Duration,
    current: RwLock<Arc<KeySet>>,
    /// When the last fetch started; held across a fetch so fetches are single-flight.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    pub(crate) fn new(
        source: JwksSource,
        allowed: Vec<Algorithm>,
        pinned: BTreeMap<String, Algorithm>,
        max_age: Duration,
        cooldown: Duration,
    ) -> Self {
        Self {
            source,
            allowed,
            pinned,
            max_age,
            cooldown,
            current: RwLock::new(Arc::new(KeySet {
                keys: HashMap::new(),
                fetched_at: Instant::now(),
            })),
            last_attempt: tokio::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }

    /// Fetches the key set now, ignoring the cooldown (start-up).
    pub(crate) async fn load(&self) -> Result<usize, JwksError> {
        let mut last = self.last_attempt.lock().await;
        *last = Some(Instant::now());
        let set = self.fetch().await?;
        let count = set.keys.len();
        self.swap(set);
        Ok(count)
    }

    /// The key for `kid` with its configured algorithm, fetching the set again if it is stale
    /// or lacks `kid` (at most once per cooldown).
    pub(crate) async fn key(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        let set = self.snapshot();
        if set.fetched_at.elapsed() >= self.max_age {
            self.refresh().await;
        } else if let Some(found) = set.keys.get(kid) {
            return Some(found.clone());
        } else {
            tracing::debug!(target: "nexus::access", kid, "unknown kid: refreshing the JWKS");
            self.refresh().await;
        }
        self.snapshot().keys.get(kid).cloned()
    }

    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn swap(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    /// Fetches again unless a fetch started within the cooldown; keeps the old set on failure.
    async fn refresh(&self) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(target: "nexus::access", keys = set.keys.len(), "JWKS refreshed");
                self.swap(set);
            }
            Err(error) => {
                tracing::warn!(target: "nexus::access", %error, "JWKS refresh failed; keeping the last good keys");
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let bytes = match &self.source {
            JwksSource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|source| JwksError::Read {
                        path: path.clone(),
                        source,
                    })?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(JwksError::Invalid(format!("over {MAX_JWKS_BYTES} bytes")));
                }
                bytes
            }
            JwksSource::Url(url) => self.get(url).await?,
        };
        let set: JwkSet =
            serde_json::from_slice(&bytes).map_err(|e| JwksError::Invalid(e.to_string()))?;
        Ok(KeySet {
            keys: self.usable_keys(&set),
            fetched_at: Instant::now(),
        })
    }

    /// The document at `url`: a 200 within [`FETCH_TIMEOUT`], at most [`MAX_JWKS_BYTES`] long.
    async fn get(&self, url: &reqwest::Url) -> Result<Vec<u8>, JwksError> {
        let failed = |reason: String| JwksError::Fetch {
            url: redact(url),
            reason,
        };
        let reason = |e: reqwest::Error| {
            if e.is_timeout() {
                return format!("no answer within {FETCH_TIMEOUT:?}");
            }
            let e = e.without_url();
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(inner) = cause {
                text = format!("{text}: {inner}");
                cause = inner.source();
            }
            text
        };
        let mut response = self
            .http
            .get(url.clone())
            .timeout(FETCH_TIMEOUT)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| failed(reason(e)))?;
        if !response.status().is_success() {
            return Err(failed(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(reason(e)))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::Invalid(format!("over {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The keys of `set` with a `kid` and an allowed algorithm, at most [`MAX_JWKS_KEYS`].
    fn usable_keys(&self, set: &JwkSet) -> HashMap<String, (Algorithm, DecodingKey)> {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if keys.len() == MAX_JWKS_KEYS {
                tracing::warn!(target: "nexus::access", limit = MAX_JWKS_KEYS, "JWKS has more keys than kept");
                break;
            }
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Some(algorithm) = self.algorithm_of(&kid, jwk) else {
                tracing::warn!(target: "nexus::access", kid, "JWKS key skipped: no allowed algorithm fits it");
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, (algorithm, key));
                }
                Err(error) => {
                    tracing::warn!(target: "nexus::access", kid, %error, "JWKS key skipped");
                }
            }
        }
        keys
    }

    /// The algorithm `jwk` is used with: pinned, else its `alg`, else its key type's usual one;
    /// it must be allowed and of the key's family.
    fn algorithm_of(&self, kid: &str, jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
        let family_default = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            _ => return None,
        };
        let algorithm = match self.pinned.get(kid) {
            Some(pinned) => *pinned,
            None => match jwk.common.key_algorithm {
                Some(alg) => Algorithm::try_from(alg).ok()?,
                None => family_default,
            },
        };
        (algorithm.family() == family_default.family() && self.allowed.contains(&algorithm))
            .then_some(algorithm)
    }
}

/// `scheme://authority` of `url`, for messages and logs (paths and queries may hold secrets).
pub(crate) fn redact(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}
