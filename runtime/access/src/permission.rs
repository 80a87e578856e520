//! What a caller may do: the permissions routes require and roles grant.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One thing a caller may do on a Nexus service; its wire name is `area:verb` (`commands:write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Permission {
    /// Run commands on the command service.
    #[serde(rename = "commands:write")]
    CommandsWrite,
    /// Read an aggregate's current state from the command service.
    #[serde(rename = "aggregates:read")]
    AggregatesRead,
    /// Read the query dashboard's read models.
    #[serde(rename = "read-models:read")]
    ReadModelsRead,
    /// Read history: events by time range, state as of a time (always needs authentication).
    #[serde(rename = "temporal:read")]
    TemporalRead,
    /// Read the audit log (always needs authentication).
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Inspect and redrive dead letters, rebuild projections (always needs authentication).
    #[serde(rename = "dlq:admin")]
    DlqAdmin,
    /// Read schemas, subjects, versions, configuration and modes from the registry.
    #[serde(rename = "registry:read")]
    RegistryRead,
    /// Register schemas.
    #[serde(rename = "registry:write")]
    RegistryWrite,
    /// Change compatibility configuration and modes, delete subjects and versions (always needs
    /// authentication).
    #[serde(rename = "registry:admin")]
    RegistryAdmin,
}

/// A set of permissions.
pub type Permissions = BTreeSet<Permission>;

impl Permission {
    /// Every permission, in declaration order.
    pub const ALL: [Permission; 9] = [
        Permission::CommandsWrite,
        Permission::AggregatesRead,
        Permission::ReadModelsRead,
        Permission::TemporalRead,
        Permission::AuditRead,
        Permission::DlqAdmin,
        Permission::RegistryRead,
        Permission::RegistryWrite,
        Permission::RegistryAdmin,
    ];

    /// The wire name, `area:verb`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CommandsWrite => "commands:write",
            Permission::AggregatesRead => "aggregates:read",
            Permission::ReadModelsRead => "read-models:read",
            Permission::TemporalRead => "temporal:read",
            Permission::AuditRead => "audit:read",
            Permission::DlqAdmin => "dlq:admin",
            Permission::RegistryRead => "registry:read",
            Permission::RegistryWrite => "registry:write",
            Permission::RegistryAdmin => "registry:admin",
        }
    }

    /// Whether this permission is never granted to anonymous callers, whatever the
    /// configuration says: history, audit and administration always need a credential.
    pub fn always_authenticated(self) -> bool {
        matches!(
            self,
            Permission::TemporalRead
                | Permission::AuditRead
                | Permission::DlqAdmin
                | Permission::RegistryAdmin
        )
    }

    /// The permissions an anonymous caller gets where endpoints are open (a loopback bind
    /// without configuration): everything except what [`Self::always_authenticated`] keeps back.
    pub fn open() -> Permissions {
        Self::ALL
            .into_iter()
            .filter(|p| !p.always_authenticated())
            .collect()
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission `{0}` (expected one of {list})", list = Permission::ALL.map(Permission::as_str).join(", "))]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPermission(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_serde_and_from_str() {
        for permission in Permission::ALL {
            let json = serde_json::to_string(&permission).unwrap();
            assert_eq!(json, format!("\"{}\"", permission.as_str()));
            assert_eq!(
                serde_json::from_str::<Permission>(&json).unwrap(),
                permission
            );
            assert_eq!(
                permission.as_str().parse::<Permission>().unwrap(),
                permission
            );
        }
        assert!("temporal:write".parse::<Permission>().is_err());
    }

    #[test]
    fn open_permissions_exclude_history_audit_and_administration() {
        let open = Permission::open();
        for kept_back in [
            Permission::TemporalRead,
            Permission::AuditRead,
            Permission::DlqAdmin,
            Permission::RegistryAdmin,
        ] {
            assert!(!open.contains(&kept_back), "{kept_back} must not be open");
        }
        assert!(open.contains(&Permission::CommandsWrite));
        assert!(open.contains(&Permission::RegistryWrite));
    }
}
