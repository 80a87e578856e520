//! The document rules see as `input`, as typed structs. It is serialised once to JSON text and
//! parsed by regorus (which shares repeated object keys); `policy-engine/README.md` describes it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Role, SchemaGate, Service};
use crate::diagnostic::Span;
use crate::facts::cargo::{PackageFact, ReachFact};
use crate::facts::strings::ArgFact;
use crate::facts::syntax::{CallKind, FieldShape, Tagging};
use crate::schemas::RegisteredSchema;

/// `input`.
#[derive(Debug, Serialize)]
pub(crate) struct Input<'a> {
    pub config: ConfigInput<'a>,
    pub packages: Vec<PackageInput<'a>>,
    pub reach: &'a [ReachFact],
    pub calls: &'a [CallFact<'a>],
    /// Call name → positions in `calls`, so rules look calls up instead of scanning them.
    pub call_index: BTreeMap<&'a str, Vec<usize>>,
    pub events: Vec<EventFact<'a>>,
    /// gRPC client type names generated from a `.proto` file (`WarrantyClient`) → the package
    /// whose folder holds that file.
    pub grpc_clients: BTreeMap<String, &'a str>,
    pub schemas: &'a [RegisteredSchema],
    pub schemas_loaded: bool,
}

/// `input.config`: what rules need of `nexus.toml`.
#[derive(Debug, Serialize)]
pub(crate) struct ConfigInput<'a> {
    pub services: &'a [Service],
    pub event_tables: &'a [String],
    /// Event-store types: the configured ones and the workspace's types implementing them.
    pub store_types: Vec<String>,
    pub include_tests: bool,
    /// Severity of an event no schema source can verify.
    pub schema_gate: SchemaGate,
}

/// `input.packages[_]`: a package and the service it builds.
#[derive(Debug, Serialize)]
pub(crate) struct PackageInput<'a> {
    #[serde(flatten)]
    pub package: &'a PackageFact,
    pub service: Option<&'a str>,
    pub role: Option<Role>,
}

/// `input.calls[_]`. Empty fields are left out to keep the input small: Rego treats a missing
/// `origin`, `receiver` or `args` like an empty one, and a missing `test` as false.
#[derive(Debug, Serialize)]
pub(crate) struct CallFact<'a> {
    pub file: &'a str,
    pub package: &'a str,
    pub span: &'a Span,
    pub kind: CallKind,
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub origin: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub receiver: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub receiver_type: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgFact>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// `input.events[_]`: one event type of a `DomainEvent` impl, with the shape serde gives it.
#[derive(Debug, Serialize)]
pub(crate) struct EventFact<'a> {
    pub file: &'a str,
    pub package: &'a str,
    pub type_name: &'a str,
    /// The type's path in its crate (`v1::GiftCardRedeemed`).
    pub type_path: String,
    pub variant: Option<&'a str>,
    pub event_type: &'a str,
    pub version: u32,
    pub span: &'a Span,
    /// `null` when the type's shape is unknown (defined elsewhere, or ambiguous).
    pub fields: Option<&'a [FieldShape]>,
    pub serde: Option<&'a Tagging>,
    pub test: bool,
}
