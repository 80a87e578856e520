//! The compatibility checker: schemas in, verdict out, no I/O.
//!
//! Two rule sets share one structural diff ([`diff`]):
//!
//! - the standard levels (`BACKWARD`, `FORWARD`, `FULL` and their transitive forms) follow
//!   Confluent's STRICT JSON Schema semantics, where open and closed content models differ;
//! - [`Level::Nexus`], the default for new subjects, is additive-only: adding an optional property
//!   is fine at any depth, while removing or renaming a property, adding a required one, changing or
//!   narrowing a type, narrowing an enum or tightening a constraint is breaking. It checks the
//!   proposal against every version of its major line, and a breaking change is accepted only as
//!   the first version of the next major line (`metadata.properties.major_version` = latest + 1).

mod diff;
mod prepare;
#[cfg(test)]
mod tests;

use std::{collections::HashSet, fmt, str::FromStr};

use serde::Serialize;
use serde_json::Value;

pub use diff::RENAMED_FROM;
pub use prepare::{Limits, PrepareError, Referenced, draft_of, prepare, prepare_with};

/// A compatibility level: which earlier versions a proposal is compared with, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// No check at all.
    None,
    /// The new schema reads data written with the latest version.
    Backward,
    /// The new schema reads data written with every version.
    BackwardTransitive,
    /// The latest version reads data written with the new schema.
    Forward,
    /// Every version reads data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every version.
    FullTransitive,
    /// Additive-only against every version of the major line, with the major-version rule.
    Nexus,
}

impl Level {
    /// Every level, in the order they are documented.
    pub const ALL: [Level; 8] = [
        Level::None,
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
        Level::Nexus,
    ];

    /// The wire name, as in `{"compatibility": "BACKWARD"}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
            Level::Nexus => "NEXUS",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive
                | Level::ForwardTransitive
                | Level::FullTransitive
                | Level::Nexus
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compatibility level name that is not one of [`Level::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a compatibility level (expected one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NEXUS)"
)]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

/// The rule a change falls under, named for the pattern it flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Rule {
    /// A property disappeared.
    PropertyRemoved,
    /// A property disappeared and another with the same schema (or a rename marker) appeared.
    PropertyRenamed,
    /// An optional property appeared.
    PropertyAdded,
    /// A property appeared as required, or an existing one became required.
    RequiredPropertyAdded,
    /// A property is no longer required.
    RequiredRemoved,
    /// The type changed to an unrelated one.
    TypeChanged,
    /// The type accepts fewer kinds of values.
    TypeNarrowed,
    /// The type accepts more kinds of values.
    TypeExtended,
    /// An enum or const allows fewer values.
    EnumNarrowed,
    /// An enum allows more values.
    EnumExtended,
    /// A bound, pattern, format, `multipleOf`, `uniqueItems` or dependency accepts less.
    ConstraintTightened,
    /// A bound, pattern, format, `multipleOf`, `uniqueItems` or dependency accepts more.
    ConstraintRelaxed,
    /// The schema for unlisted properties accepts less.
    AdditionalPropertiesNarrowed,
    /// The schema for unlisted properties accepts more.
    AdditionalPropertiesExtended,
    /// Array items or tuple members changed.
    ItemsChanged,
    /// A `oneOf`/`anyOf`/`allOf`/`not` changed so that some value is accepted differently.
    CombinedTypeChanged,
    /// A `oneOf` gained alternatives.
    CombinedTypeExtended,
    /// The schema became `false`.
    SchemaNarrowed,
    /// The schema changed in a way the checker does not interpret.
    SchemaChanged,
}

impl Rule {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::PropertyRemoved => "property-removed",
            Rule::PropertyRenamed => "property-renamed",
            Rule::PropertyAdded => "property-added",
            Rule::RequiredPropertyAdded => "required-property-added",
            Rule::RequiredRemoved => "required-removed",
            Rule::TypeChanged => "type-changed",
            Rule::TypeNarrowed => "type-narrowed",
            Rule::TypeExtended => "type-extended",
            Rule::EnumNarrowed => "enum-narrowed",
            Rule::EnumExtended => "enum-extended",
            Rule::ConstraintTightened => "constraint-tightened",
            Rule::ConstraintRelaxed => "constraint-relaxed",
            Rule::AdditionalPropertiesNarrowed => "additional-properties-narrowed",
            Rule::AdditionalPropertiesExtended => "additional-properties-extended",
            Rule::ItemsChanged => "items-changed",
            Rule::CombinedTypeChanged => "combined-type-changed",
            Rule::CombinedTypeExtended => "combined-type-extended",
            Rule::SchemaNarrowed => "schema-narrowed",
            Rule::SchemaChanged => "schema-changed",
        }
    }

    fn remediation(self, level: Level, next_major: u64) -> String {
        let fix = match self {
            Rule::PropertyRemoved => {
                "keep the property (mark it `deprecated: true` if it should no longer be written)"
            }
            Rule::PropertyRenamed => {
                "keep the old property and add the new name as an optional property"
            }
            Rule::PropertyAdded => {
                "close the old content model with `additionalProperties: false`, or use the NEXUS level, which accepts optional additions"
            }
            Rule::RequiredPropertyAdded => {
                "add the property as optional (leave it out of `required`)"
            }
            Rule::TypeChanged | Rule::TypeNarrowed => {
                "keep the old type, or widen it (for example `[\"string\", \"null\"]`) instead of replacing it"
            }
            Rule::EnumNarrowed => "keep every value the enum allowed before",
            Rule::ConstraintTightened => "keep the constraint as loose as it was",
            Rule::AdditionalPropertiesNarrowed => {
                "keep accepting the properties the old schema accepted"
            }
            Rule::ItemsChanged | Rule::CombinedTypeChanged => {
                "keep accepting every value the old schema accepted"
            }
            Rule::SchemaNarrowed | Rule::SchemaChanged => "restore the previous definition",
            Rule::RequiredRemoved
            | Rule::TypeExtended
            | Rule::EnumExtended
            | Rule::ConstraintRelaxed
            | Rule::AdditionalPropertiesExtended
            | Rule::CombinedTypeExtended => {
                "readers of the old schema reject the values this change admits; keep the previous definition, or use a BACKWARD or NEXUS level"
            }
        };
        if level == Level::Nexus {
            format!(
                "{fix}, or publish it as a breaking change by setting `metadata.properties.major_version` to {next_major}"
            )
        } else {
            fix.to_owned()
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a proposal is incompatible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The newest earlier version the proposal breaks.
    pub version: u32,
    /// JSON pointer of the property or keyword, in the dereferenced schema.
    pub pointer: String,
    /// The rule broken.
    pub rule: Rule,
    /// What changed.
    pub message: String,
    /// How to fix it.
    pub remediation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] {} (against version {}); {}",
            self.pointer, self.rule, self.message, self.version, self.remediation
        )
    }
}

/// An earlier version of the subject, as the checker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Prior<'a> {
    /// Version number in the subject.
    pub version: u32,
    /// The dereferenced schema (see [`prepare`]).
    pub schema: &'a Value,
    /// Its major version (`metadata.properties.major_version`).
    pub major: u64,
}

/// What the checker decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The major version the proposal belongs to.
    pub major: u64,
    /// The reasons it is incompatible; empty when compatible.
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// Whether the proposal is compatible.
    pub fn is_compatible(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Why the checker could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The requested major version is neither an existing major line nor the latest + 1.
    #[error(
        "major version {proposed} is not allowed: the latest major version is {latest}, so a new major line must be {}",
        latest + 1
    )]
    MajorVersionSkipped {
        /// The major version asked for.
        proposed: u64,
        /// The highest existing major version.
        latest: u64,
    },
    /// The schemas are too large or too deeply nested to compare within the budget.
    #[error("the schemas are too complex to compare within the checker's budget")]
    TooComplex,
}

/// The major line a proposal belongs to, or why it may not join one.
///
/// Without an explicit major the proposal joins the latest line (1 for a new subject).
/// An explicit major must be an existing line or the latest + 1.
pub fn resolve_major(priors: &[Prior<'_>], proposed: Option<u64>) -> Result<u64, CheckError> {
    let latest = priors.iter().map(|p| p.major).max();
    match (latest, proposed) {
        (None, p) => Ok(p.unwrap_or(1)),
        (Some(latest), None) => Ok(latest),
        (Some(latest), Some(p)) => {
            if p == latest + 1 || priors.iter().any(|prior| prior.major == p) {
                Ok(p)
            } else {
                Err(CheckError::MajorVersionSkipped {
                    proposed: p,
                    latest,
                })
            }
        }
    }
}

/// Checks a dereferenced proposal against earlier versions (in ascending version order).
///
/// `group_by_major` limits the comparison to the proposal's major line, as Confluent's
/// `compatibilityGroup: "major_version"` does; [`Level::Nexus`] always groups.
pub fn check(
    level: Level,
    priors: &[Prior<'_>],
    proposed: &Value,
    proposed_major: Option<u64>,
    group_by_major: bool,
) -> Result<Verdict, CheckError> {
    let major = if level == Level::Nexus {
        resolve_major(priors, proposed_major)?
    } else {
        proposed_major.unwrap_or_else(|| priors.iter().map(|p| p.major).max().unwrap_or(1))
    };
    let next_major = priors
        .iter()
        .map(|p| p.major)
        .max()
        .unwrap_or(major)
        .max(major)
        + 1;
    let mut line: Vec<&Prior<'_>> = priors
        .iter()
        .filter(|p| !(group_by_major || level == Level::Nexus) || p.major == major)
        .collect();
    line.sort_by_key(|p| std::cmp::Reverse(p.version));
    if !level.transitive() {
        line.truncate(1);
    }
    let mut violations = Vec::new();
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    // A version that shares its schema with a newer one (the same value, not an equal copy)
    // yields the same changes, which the newer version already reported.
    let mut compared: Vec<&Value> = Vec::new();
    for prior in line {
        if compared.iter().any(|s| std::ptr::eq(*s, prior.schema)) {
            continue;
        }
        compared.push(prior.schema);
        for change in changes(level, prior.schema, proposed)? {
            all.push((prior.version, change));
        }
    }
    // A property reported as renamed against one version is not reported again as removed.
    let renamed: HashSet<String> = all
        .iter()
        .filter_map(|(_, c)| c.renamed_from.clone())
        .collect();
    for (version, change) in all {
        if change.rule == Rule::PropertyRemoved && renamed.contains(&change.pointer) {
            continue;
        }
        {
            if seen.insert((change.pointer.clone(), change.rule, change.message.clone())) {
                violations.push(Violation {
                    version,
                    pointer: change.pointer,
                    rule: change.rule,
                    message: change.message,
                    remediation: change.rule.remediation(level, next_major),
                });
            }
        }
    }
    Ok(Verdict { major, violations })
}

/// The breaking changes between one earlier version and a proposal under a level.
///
/// The diff records only those changes, so the accepted ones cost no allocation.
fn changes(level: Level, old: &Value, new: &Value) -> Result<Vec<diff::Change>, CheckError> {
    use diff::{Keep, diff_keeping};
    Ok(match level {
        Level::None => Vec::new(),
        Level::Nexus => diff_keeping(old, new, Keep::NotAdditive)?,
        Level::Backward | Level::BackwardTransitive => diff_keeping(old, new, Keep::NotBackward)?,
        Level::Forward | Level::ForwardTransitive => diff_keeping(new, old, Keep::NotBackward)?,
        Level::Full | Level::FullTransitive => {
            let mut changes = diff_keeping(old, new, Keep::NotBackward)?;
            changes.extend(diff_keeping(new, old, Keep::NotBackward)?);
            changes
        }
    })
}

/// One difference between two schemas, with whether each rule set accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// JSON pointer of the property or keyword.
    pub pointer: String,
    /// The rule it falls under.
    pub rule: Rule,
    /// What changed.
    pub message: String,
    /// Whether the NEXUS (additive-only) level accepts it.
    pub additive: bool,
    /// Whether Confluent's STRICT backward check accepts it.
    pub backward: bool,
}

/// Every difference between two dereferenced schemas, breaking or not (for `nexus schema diff`).
pub fn differences(old: &Value, new: &Value) -> Result<Vec<Difference>, CheckError> {
    Ok(diff::diff_keeping(old, new, diff::Keep::All)?
        .into_iter()
        .map(|c| Difference {
            pointer: c.pointer,
            rule: c.rule,
            message: c.message,
            additive: c.additive,
            backward: c.backward,
        })
        .collect())
}
