//! Bearer JWTs: verification with a key chosen by configuration, and HS256 issuing for
//! development tokens (`nexus token issue`).
//!
//! The algorithm a token is checked with always comes from the key it is checked against
//! (configuration or the issuer's JWKS), never from the token's header: a token whose header
//! names another algorithm is refused, which closes the RS256-public-key-as-HMAC-secret trick.
//! `exp`, `nbf`, `iss`, `aud` and `sub` are required and checked (the crate checks neither the
//! presence of `aud` nor `nbf` unless told to).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::jwks::Jwks;

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a bearer token was refused; the message is safe to send to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWT, or over [`MAX_TOKEN_BYTES`].
    #[error("the token is malformed")]
    Malformed,
    /// No configured key matches the token's `kid` (or it has none where one is needed).
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The header's `alg` is not the algorithm configured for the key.
    #[error("the token's algorithm does not match its key")]
    Algorithm,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` is not the configured audience.
    #[error("the token is for another audience")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("the token is from another issuer")]
    Issuer,
    /// A required claim is absent or has the wrong type.
    #[error("the token lacks claim `{0}`")]
    MissingClaim(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        match error.into_kind() {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::InvalidIssuer => Self::Issuer,
            ErrorKind::InvalidSignature => Self::Signature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::Algorithm,
            ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                Self::MissingClaim(claim)
            }
            _ => Self::Malformed,
        }
    }
}

/// The claims of a verified token that the access layer uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedToken {
    /// `sub`.
    pub subject: String,
    /// The roles found under the configured claim.
    pub roles: Vec<String>,
    /// When the token stops being accepted: `exp` plus the allowed clock skew.
    pub expires_at: Option<std::time::SystemTime>,
}

/// Checks bearer tokens against the configured HS256 secret and JWKS.
pub(crate) struct Verifier {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) leeway_secs: u64,
    /// The roles claim, split at dots.
    pub(crate) roles_claim: Vec<String>,
    pub(crate) hs256: Option<(Option<String>, DecodingKey)>,
    pub(crate) jwks: Option<Jwks>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("hs256", &self.hs256.is_some())
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Verifies `token` and reads its subject and roles.
    pub(crate) async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let (algorithm, key) = self.key_for(header.kid.as_deref()).await?;
        let validation = self.validation(algorithm);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)?;
        let subject = match data.claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(TokenError::MissingClaim("sub".to_owned())),
        };
        let expires_at = data.claims.get("exp").and_then(Value::as_u64).map(|exp| {
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(exp.saturating_add(self.leeway_secs))
        });
        Ok(VerifiedToken {
            subject,
            roles: roles_at(&data.claims, &self.roles_claim),
            expires_at,
        })
    }

    /// The key (and its configured algorithm) for a token with `kid`.
    async fn key_for(&self, kid: Option<&str>) -> Result<(Algorithm, DecodingKey), TokenError> {
        if let Some((hs_kid, key)) = &self.hs256
            && (kid.is_none() || kid == hs_kid.as_deref())
        {
            return Ok((Algorithm::HS256, key.clone()));
        }
        match (kid, &self.jwks) {
            (Some(kid), Some(jwks)) => jwks.key(kid).await.ok_or(TokenError::UnknownKey),
            _ => Err(TokenError::UnknownKey),
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.validate_aud = true;
        validation.leeway = self.leeway_secs;
        validation
    }
}

/// The roles under `path` in `claims`: a string is one role, an array its string elements.
fn roles_at(claims: &Value, path: &[String]) -> Vec<String> {
    let mut value = claims;
    for step in path {
        match value.get(step) {
            Some(inner) => value = inner,
            None => return Vec::new(),
        }
    }
    match value {
        Value::String(role) => vec![role.clone()],
        Value::Array(roles) => roles
            .iter()
            .filter_map(|role| role.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// What an HS256 development token says.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// `sub`.
    pub subject: &'a str,
    /// The roles, written under `roles_claim`.
    pub roles: &'a [String],
    /// The claim the roles go under (a top-level name).
    pub roles_claim: &'a str,
    /// How long the token is valid from now.
    pub ttl: Duration,
    /// The `kid` header, if the secret has one.
    pub kid: Option<&'a str>,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The secret is too short to be safe.
    #[error("the signing secret has {0} bytes; at least 32 are needed")]
    WeakSecret(usize),
    /// The crate refused to sign.
    #[error("failed to sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Signs an HS256 token with `secret`.
pub fn issue_hs256(secret: &[u8], request: &TokenRequest<'_>) -> Result<String, IssueError> {
    if secret.len() < crate::MIN_SECRET_BYTES {
        return Err(IssueError::WeakSecret(secret.len()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = json!({
        "iss": request.issuer,
        "aud": request.audience,
        "sub": request.subject,
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(request.ttl.as_secs()),
    });
    claims[request.roles_claim] = json!(request.roles);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = request.kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret).map_err(IssueError::Sign)?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(IssueError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_read_from_strings_arrays_and_nested_claims() {
        let claims = json!({"roles": ["a", 1, "b"], "scope": "x", "realm": {"roles": ["r"]}});
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(roles_at(&claims, &path("roles")), ["a", "b"]);
        assert_eq!(roles_at(&claims, &path("scope")), ["x"]);
        assert_eq!(roles_at(&claims, &path("realm.roles")), ["r"]);
        assert!(roles_at(&claims, &path("missing.roles")).is_empty());
    }
}
