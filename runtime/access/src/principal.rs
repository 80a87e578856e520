//! Who is calling: the [`Principal`] the access layer puts into each request's extensions.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::permission::{Permission, Permissions};
use crate::rejection::{ErrorStyle, Rejection};

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// No credential: the caller gets the anonymous permissions of the service.
    Anonymous,
    /// A bearer JWT; the subject is its `sub` claim.
    Token,
    /// A static API key; the subject is the key's configured id.
    ApiKey,
}

/// The caller of one request, as established by the access layer.
///
/// Handlers behind [`crate::AccessControl::require`] take it as an extractor; on a route that
/// has no access layer the extractor answers 401 instead of inventing an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`, the API key's id, or `anonymous`.
    pub subject: String,
    /// The roles the credential carries (token claim or API-key configuration).
    pub roles: Vec<String>,
    /// What the roles grant.
    pub permissions: Permissions,
    /// How the caller authenticated.
    pub via: Via,
    /// When the credential stops being accepted (a token's `exp` plus the allowed clock
    /// skew); `None` for API keys and anonymous callers. Long-lived connections end then.
    pub expires_at: Option<std::time::SystemTime>,
}

impl Principal {
    /// The anonymous caller with `permissions`.
    pub fn anonymous(permissions: Permissions) -> Self {
        Self {
            subject: "anonymous".to_owned(),
            roles: Vec::new(),
            permissions: permissions
                .into_iter()
                .filter(|p| !p.always_authenticated())
                .collect(),
            via: Via::Anonymous,
            expires_at: None,
        }
    }

    /// Whether the caller may do `permission`.
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Whether the caller presented a credential.
    pub fn is_authenticated(&self) -> bool {
        self.via != Via::Anonymous
    }

    /// A stable identity for per-client limits: `token:<sub>` for tokens, `key:<id>` for API
    /// keys and `anonymous` otherwise. Never the peer address, so clients behind one proxy are
    /// told apart and a client moving between addresses is not.
    pub fn client_id(&self) -> String {
        match self.via {
            Via::Anonymous => "anonymous".to_owned(),
            Via::Token => format!("token:{}", self.subject),
            Via::ApiKey => format!("key:{}", self.subject),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Principal>() {
            Some(principal) => Ok(principal.clone()),
            None => {
                let style = parts
                    .extensions
                    .get::<ErrorStyle>()
                    .copied()
                    .unwrap_or_default();
                Err(Rejection::unauthenticated(
                    "this route has no access layer",
                    style,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_never_holds_always_authenticated_permissions() {
        let all = Permission::ALL.into_iter().collect();
        let anonymous = Principal::anonymous(all);
        assert!(!anonymous.may(Permission::TemporalRead));
        assert!(!anonymous.may(Permission::RegistryAdmin));
        assert!(anonymous.may(Permission::ReadModelsRead));
        assert_eq!(anonymous.client_id(), "anonymous");
    }

    #[test]
    fn client_ids_keep_tokens_and_keys_apart() {
        let mut principal = Principal::anonymous(Permissions::new());
        principal.subject = "ci".to_owned();
        principal.via = Via::Token;
        assert_eq!(principal.client_id(), "token:ci");
        principal.via = Via::ApiKey;
        assert_eq!(principal.client_id(), "key:ci");
    }
}
