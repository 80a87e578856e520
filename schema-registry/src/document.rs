//! Schema documents as text: JSON or YAML in, a `serde_json::Value` and a canonical text out.
//!
//! The canonical text is what identifies a schema: the same canonical text gets the same id.
//! For JSON input it is the input without insignificant whitespace, keys kept in their order
//! (as Confluent's compact re-serialisation does); with `normalize`, and for YAML input, it is
//! the compact JSON of the parsed value with keys sorted.

use serde_json::Value;

/// Why a schema text cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The text looks like JSON but is not well-formed.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The text is neither JSON nor well-formed YAML.
    #[error("malformed YAML: {0}")]
    Yaml(String),
}

/// Whether the text is JSON (as opposed to YAML): it starts with `{` or `[`.
pub fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['))
}

/// Parses a schema written as JSON or YAML.
pub fn parse(text: &str) -> Result<Value, ParseError> {
    if looks_like_json(text) || text.trim() == "true" || text.trim() == "false" {
        serde_json::from_str(text).map_err(|e| ParseError::Json {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    } else {
        serde_saphyr::from_str::<Value>(text).map_err(|e| ParseError::Yaml(e.to_string()))
    }
}

/// The canonical text of a parsed schema (see the module documentation).
pub fn canonical(text: &str, value: &Value, normalize: bool) -> String {
    if normalize || !looks_like_json(text) {
        sorted(value).to_string()
    } else {
        minify(text)
    }
}

/// The value with object keys in sorted order at every depth (whatever `serde_json`'s map type).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Removes whitespace outside strings from well-formed JSON.
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_json_drops_whitespace_and_keeps_key_order() {
        let text = "{\n  \"type\": \"object\",\n  \"title\": \"a b\\\" c\"\n}";
        let value = parse(text).expect("valid");
        assert_eq!(
            canonical(text, &value, false),
            r#"{"type":"object","title":"a b\" c"}"#
        );
        assert_eq!(
            canonical(text, &value, true),
            r#"{"title":"a b\" c","type":"object"}"#
        );
    }

    #[test]
    fn yaml_input_parses_to_the_same_value_as_json() {
        let yaml = "type: object\nproperties:\n  id:\n    type: string\n";
        let value = parse(yaml).expect("valid yaml");
        assert_eq!(
            value,
            json!({"type": "object", "properties": {"id": {"type": "string"}}})
        );
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = parse("{\n  \"type\": }").expect_err("malformed");
        assert!(matches!(err, ParseError::Json { line: 2, .. }), "{err:?}");
    }

    #[test]
    fn malformed_yaml_is_an_error() {
        assert!(matches!(parse("a: [1, 2"), Err(ParseError::Yaml(_))));
    }
}
