//! The untyped step between a stream entry's bytes and a job: the size
//! limit, UTF-8, "a JSON object", and field readers whose errors start with
//! the field's contract name. `deploy` and `provision` apply the rules.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

use super::MAX_PAYLOAD_BYTES;
use super::fields::shown;

/// A JSON object as received; duplicate keys keep the last value, as
/// Python's `json` does.
pub(super) type Object = Map<String, Value>;

/// Why the bytes are not a usable object. `object` is set when the payload
/// is a JSON object refused for its size, so a request id can still be read.
#[derive(Debug)]
pub(super) struct Unusable {
    pub object: Option<Object>,
    pub reason: String,
}

/// Reads `payload` as one JSON object, refusing anything over
/// `MAX_PAYLOAD_BYTES`.
pub(super) fn read_object(payload: &[u8]) -> Result<Object, Unusable> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        // Still parsed, only to recover the request id: serde_json reads
        // 10 MB in milliseconds, and a result beats a silent dead letter.
        let object = match serde_json::from_slice(payload) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        };
        return Err(Unusable {
            object,
            reason: format!(
                "payload: {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
                payload.len()
            ),
        });
    }
    let unusable = |reason: String| Unusable {
        object: None,
        reason,
    };
    let text = std::str::from_utf8(payload)
        .map_err(|e| unusable(format!("payload: must be UTF-8, {e}")))?;
    // The serde error names a line and column, never the input.
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(unusable(format!(
            "payload: must be a JSON object, got {}",
            kind(&other)
        ))),
        Err(e) => Err(unusable(format!("payload: must be JSON, {e}"))),
    }
}

/// A JSON value's type, for messages that must not echo the value.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `field`'s value, `None` when absent or `null`.
fn get<'a>(object: &'a Object, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|v| !v.is_null())
}

/// An optional string field parsed by `parse`; `null` counts as absent.
pub(super) fn optional<T>(
    object: &Object,
    field: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match get(object, field) {
        None => Ok(None),
        Some(Value::String(s)) => parse(s)
            .map(Some)
            .map_err(|rule| format!("{field}: {rule}")),
        Some(other) => Err(format!("{field}: must be a string, got {}", kind(other))),
    }
}

/// A required string field parsed by `parse`; `null` counts as missing.
pub(super) fn required<T>(
    object: &Object,
    field: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, String> {
    optional(object, field, parse)?.ok_or_else(|| format!("{field}: is required"))
}

/// An optional boolean field, `false` when absent or `null`.
pub(super) fn flag(object: &Object, field: &str) -> Result<bool, String> {
    match get(object, field) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "{field}: must be true or false, got {}",
            kind(other)
        )),
    }
}

/// A required TCP port: a JSON integer 1-65535. `8080.0` and `"8080"` are
/// refused: producers send integers, and guessing would hide their bugs.
pub(super) fn port(object: &Object, field: &str) -> Result<u16, String> {
    let value = get(object, field).ok_or_else(|| format!("{field}: is required"))?;
    let port = value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0);
    port.ok_or_else(|| {
        let got = match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) => shown(s),
            other => kind(other).to_owned(),
        };
        format!("{field}: must be an integer 1-65535, got {got}")
    })
}

/// `port`'s rule as a schema: a schema, never a value.
pub(super) struct Port;

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "Port",
            "description": "A TCP port: a JSON integer 1-65535. The worker also refuses a number \
                written with a fraction or exponent (8080.0), which JSON Schema counts as an integer.",
            "type": "integer",
            "minimum": 1,
            "maximum": 65535,
        })
    }
}

/// An optional array of strings, each parsed by `parse`; `[]` when absent
/// or `null`. An element's error names it as `field[i]`.
pub(super) fn list<T>(
    object: &Object,
    field: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let items = match get(object, field) {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "{field}: must be an array of strings, got {}",
                kind(other)
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => parse(s).map_err(|rule| format!("{field}[{i}]: {rule}")),
            other => Err(format!(
                "{field}[{i}]: must be a string, got {}",
                kind(other)
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(payload: &[u8]) -> String {
        read_object(payload).unwrap_err().reason
    }

    #[test]
    fn a_json_object_is_read() {
        let object = read_object(br#"{"a": 1}"#).unwrap();
        assert_eq!(object["a"], 1);
    }

    #[test]
    fn a_duplicated_key_keeps_its_last_value_as_python_does() {
        let object = read_object(br#"{"a": 1, "a": 2}"#).unwrap();
        assert_eq!(object["a"], 2);
    }

    #[test]
    fn bytes_that_are_not_json_are_refused() {
        assert!(reason(b"payload=1").starts_with("payload: must be JSON"));
        assert!(reason(b"").starts_with("payload: must be JSON"));
        assert!(reason(br#"{"a": 1"#).starts_with("payload: must be JSON"));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused() {
        assert!(reason(b"{\"a\": \"\xff\"}").starts_with("payload: must be UTF-8"));
    }

    #[test]
    fn json_that_is_not_an_object_is_refused_naming_what_it_is() {
        assert_eq!(
            reason(b"[1]"),
            "payload: must be a JSON object, got an array"
        );
        assert_eq!(
            reason(br#""x""#),
            "payload: must be a JSON object, got a string"
        );
        assert_eq!(reason(b"null"), "payload: must be a JSON object, got null");
    }

    #[test]
    fn a_payload_at_the_limit_is_read_and_one_byte_more_is_refused() {
        let at_limit = |extra: usize| {
            let mut p = br#"{"pad": ""#.to_vec();
            p.resize(MAX_PAYLOAD_BYTES - 2 + extra, b'x');
            p.extend_from_slice(br#""}"#);
            p
        };
        assert!(read_object(&at_limit(0)).is_ok());
        let refused = read_object(&at_limit(1)).unwrap_err();
        assert_eq!(
            refused.reason,
            "payload: 1048577 bytes exceeds the 1048576-byte limit"
        );
        assert!(
            refused.object.is_some(),
            "the object is kept for its request id"
        );
    }

    #[test]
    fn an_oversized_payload_that_is_not_an_object_keeps_nothing() {
        let refused = read_object(&vec![b'['; MAX_PAYLOAD_BYTES + 1]).unwrap_err();
        assert!(refused.object.is_none());
    }

    #[test]
    fn null_counts_as_absent() {
        let object = read_object(br#"{"s": null, "b": null, "l": null}"#).unwrap();
        assert_eq!(optional(&object, "s", |s| Ok(s.to_owned())), Ok(None));
        assert_eq!(flag(&object, "b"), Ok(false));
        assert_eq!(list(&object, "l", |s| Ok(s.to_owned())), Ok(vec![]));
        assert_eq!(
            required(&object, "s", |s| Ok(s.to_owned())),
            Err("s: is required".to_owned())
        );
    }
}
