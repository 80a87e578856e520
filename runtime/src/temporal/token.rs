//! Continuation tokens: opaque, HMAC-SHA256-signed, bound to the caller and the query, pinning
//! the log position and key window of the query's first page, and expiring.
//!
//! A token is `base64url(payload) "." base64url(mac)`. Nothing in it grants access: every page
//! is authorised again, and a token is accepted only with the very query and caller it was
//! issued for.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::history::Pin;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Longest token accepted (they are about 150 bytes).
const MAX_TOKEN_LEN: usize = 1024;
/// The payload layout version.
const VERSION: u8 = 1;

/// Where a query stands: its pin, the last key read, and the last key of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) pin: Pin,
    pub(crate) after: u64,
    pub(crate) last: u64,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    v: u8,
    /// Hex of the first 16 bytes of SHA-256 of the caller and the query.
    q: String,
    pin: u64,
    after: u64,
    last: u64,
    /// Expiry, Unix seconds.
    exp: i64,
}

/// Why a continuation token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token this service issued, or altered since.
    #[error("the continuation token is malformed or its signature does not match")]
    Invalid,
    /// Issued for another query or another client.
    #[error("the continuation token was issued for another query or client")]
    Mismatch,
    /// Too old.
    #[error("the continuation token has expired; start the query again")]
    Expired,
}

/// Signs and checks continuation tokens with one secret key.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer with `key` (share it between replicas so any of them accepts the others' tokens).
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A signer with a fresh random key: tokens die with the process.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system provides random bytes");
        Self { key }
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    fn query_hash(fingerprint: &str) -> String {
        let digest = Sha256::digest(fingerprint.as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A token resuming at `cursor`, for the query and caller `fingerprint` names.
    pub(crate) fn sign(&self, fingerprint: &str, cursor: &Cursor, ttl: Duration) -> String {
        let payload = Payload {
            v: VERSION,
            q: Self::query_hash(fingerprint),
            pin: cursor.pin.0,
            after: cursor.after,
            last: cursor.last,
            exp: Utc::now().timestamp() + ttl.as_secs().min(i64::MAX as u64 / 2) as i64,
        };
        let body = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&payload).expect("a token payload always serialises"));
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// The cursor in `token` if this signer issued it, unaltered, for `fingerprint`, and it is
    /// still valid. The signature is checked in constant time before anything is decoded.
    pub(crate) fn verify(&self, token: &str, fingerprint: &str) -> Result<Cursor, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (body, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
        let payload: Payload = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Invalid)?;
        if payload.v != VERSION {
            return Err(TokenError::Invalid);
        }
        if payload.q != Self::query_hash(fingerprint) {
            return Err(TokenError::Mismatch);
        }
        if payload.exp < Utc::now().timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(Cursor {
            pin: Pin(payload.pin),
            after: payload.after,
            last: payload.last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            pin: Pin(40),
            after: 7,
            last: 30,
        }
    }

    #[test]
    fn a_token_round_trips_for_its_own_query_only() {
        let signer = TokenSigner::random();
        let token = signer.sign("alice\u{0}q", &cursor(), Duration::from_secs(60));
        assert_eq!(signer.verify(&token, "alice\u{0}q"), Ok(cursor()));
        assert_eq!(
            signer.verify(&token, "mallory\u{0}q"),
            Err(TokenError::Mismatch)
        );
        assert_eq!(
            TokenSigner::random().verify(&token, "alice\u{0}q"),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn edited_truncated_and_expired_tokens_are_refused() {
        let signer = TokenSigner::random();
        let token = signer.sign("c", &cursor(), Duration::from_secs(60));
        let (body, tag) = token.split_once('.').unwrap();
        // Widen the window: same signature, edited payload.
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        payload["last"] = serde_json::json!(1_000_000);
        let edited = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap())
        );
        assert_eq!(signer.verify(&edited, "c"), Err(TokenError::Invalid));
        assert_eq!(signer.verify(body, "c"), Err(TokenError::Invalid));
        assert_eq!(signer.verify("", "c"), Err(TokenError::Invalid));
        assert_eq!(
            signer.verify(&"a".repeat(5000), "c"),
            Err(TokenError::Invalid)
        );
        let expired = signer.sign("c", &cursor(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(signer.verify(&expired, "c"), Err(TokenError::Expired));
    }
}
