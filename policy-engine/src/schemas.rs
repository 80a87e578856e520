//! Registered event schemas, handed to the engine as data: from a `schemas/` folder or from a
//! Confluent-compatible registry response that the caller fetched (this crate does no network I/O).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CheckError;

/// One registered JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredSchema {
    /// The subject: the event type name, e.g. `OrderPlaced`.
    pub subject: String,
    /// The registry's version number of this subject.
    pub version: u32,
    /// The event's major version this schema describes.
    pub major_version: u32,
    /// The JSON Schema document.
    pub schema: Value,
}

/// Loads every `*.json` under `dir`. The file stem names the subject, optionally followed by
/// `.v<major>` (`OrderPlaced.v2.json`); `x-nexus-major-version` in the document overrides it.
pub fn load_dir(dir: &Path) -> Result<Vec<RegisteredSchema>, CheckError> {
    let mut schemas = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|err| CheckError::Schemas {
            source_name: dir.display().to_string(),
            message: err.to_string(),
        })?;
        let path = entry.path();
        if !entry.file_type().is_file() || path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(path).map_err(|err| CheckError::Schemas {
            source_name: path.display().to_string(),
            message: err.to_string(),
        })?;
        let schema: Value = serde_json::from_str(&text).map_err(|err| CheckError::Schemas {
            source_name: path.display().to_string(),
            message: format!("not JSON: {err}"),
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (subject, major) = match stem.rsplit_once(".v") {
            Some((subject, major)) if major.parse::<u32>().is_ok() => {
                (subject.to_owned(), major.parse::<u32>().unwrap_or(1))
            }
            _ => (stem.clone(), 1),
        };
        let major = schema
            .get("x-nexus-major-version")
            .and_then(Value::as_u64)
            .map_or(major, |m| m as u32);
        schemas.push(RegisteredSchema {
            subject,
            version: major,
            major_version: major,
            schema,
        });
    }
    Ok(schemas)
}

/// Parses one `GET /subjects/{subject}/versions/…` response body of a Confluent-compatible registry.
pub fn from_registry_response(body: &str) -> Result<RegisteredSchema, CheckError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Response {
        subject: String,
        version: u32,
        schema: String,
        #[serde(default)]
        schema_type: Option<String>,
        #[serde(default)]
        metadata: Option<Value>,
    }
    let invalid = |message: String| CheckError::Schemas {
        source_name: "schema registry".to_owned(),
        message,
    };
    let response: Response =
        serde_json::from_str(body).map_err(|err| invalid(format!("unexpected response: {err}")))?;
    if let Some(kind) = &response.schema_type
        && kind != "JSON"
    {
        return Err(invalid(format!(
            "subject `{}` has a {kind} schema; only JSON Schema is supported",
            response.subject
        )));
    }
    let schema: Value = serde_json::from_str(&response.schema).map_err(|err| {
        invalid(format!(
            "schema of `{}` is not JSON: {err}",
            response.subject
        ))
    })?;
    let major = response
        .metadata
        .as_ref()
        .and_then(|m| m.pointer("/properties/major_version"))
        .and_then(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_u64().map(|n| n as u32))
        })
        .unwrap_or(response.version);
    Ok(RegisteredSchema {
        subject: response.subject,
        version: response.version,
        major_version: major,
        schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_registry_response() {
        let schema = from_registry_response(
            r#"{"subject":"OrderPlaced","version":3,"id":7,"schema":"{\"type\":\"object\"}","schemaType":"JSON","metadata":{"properties":{"major_version":"2"}}}"#,
        )
        .expect("valid response");
        assert_eq!(schema.major_version, 2);
        assert_eq!(schema.version, 3);
        assert_eq!(schema.schema["type"], "object");
    }
}
