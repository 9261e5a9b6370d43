//! Reading a KV v2 secret (`GET /v1/MOUNT/data/PATH`) into its fields,
//! each a `SecretString` straight from the answer body; and a whole secret
//! as `.env` text.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use tokio::time::Instant;

use super::VaultError;
use super::http::{Api, Call};
use super::reference::VaultRef;

/// The fields of one secret version. `Debug` shows the field names only.
pub struct Secret {
    fields: BTreeMap<String, SecretString>,
}

/// Why a whole secret cannot be written as `.env` lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{key}` {problem}")]
pub struct EnvLineError {
    /// The field's name (a name, never its value).
    pub key: String,
    /// What rule the field breaks.
    pub problem: &'static str,
}

impl Secret {
    /// The value of `field`, if the secret has it.
    pub fn into_field(mut self, field: &str) -> Option<SecretString> {
        self.fields.remove(field)
    }

    /// The field names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    /// Every field as a `KEY=VALUE` line, sorted by key, each line ending
    /// in `\n`. Values are written as they are, unquoted, so one with a
    /// line break cannot be a line: such a secret is refused rather than
    /// quoted, because `.env` readers disagree on quoting rules. A key must
    /// be a shell variable name.
    pub fn env_text(&self) -> Result<SecretString, EnvLineError> {
        for (key, value) in &self.fields {
            env_line_problem(key, value.expose_secret()).map_err(|problem| EnvLineError {
                key: key.clone(),
                problem,
            })?;
        }
        let mut text = Zeroizing::new(String::new());
        for (key, value) in &self.fields {
            text.push_str(key);
            text.push('=');
            text.push_str(value.expose_secret());
            text.push('\n');
        }
        Ok(SecretString::from(text.as_str()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn env_line_problem(key: &str, value: &str) -> Result<(), &'static str> {
    let mut chars = key.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("is not a variable name ([A-Za-z_][A-Za-z0-9_]*), so it cannot be a .env line");
    }
    if value.contains(['\n', '\r']) {
        return Err(
            "holds a line break, which a .env line cannot carry (name the field with #FIELD to use it alone)",
        );
    }
    if value.contains('\0') {
        return Err("holds a NUL character, which no environment can carry");
    }
    Ok(())
}

/// Reads the latest version of `reference`'s secret with `token`.
pub(crate) async fn read(
    api: &Api,
    token: &SecretString,
    reference: &VaultRef,
    deadline: Instant,
) -> Result<Secret, VaultError> {
    let path = reference.secret_path();
    let call = Call::get(reference.api_path(), format!("the read of {path}")).token(token);
    let reply = api.call(call, deadline).await?;
    match reply.status.as_u16() {
        200 => {
            let answer: KvAnswer = reply.json()?;
            let fields = answer
                .data
                .and_then(|d| d.data)
                .ok_or_else(|| VaultError::BadAnswer {
                    what: format!("the read of {path}"),
                    status: 200,
                    problem: "no `data.data` (is the mount KV version 2?)".to_owned(),
                })?;
            let fields = fields.into_iter().map(|(k, v)| (k, v.0)).collect();
            Ok(Secret { fields })
        }
        404 => Err(missing(reply.json::<KvAnswer>().ok(), path)),
        403 => Err(VaultError::Forbidden { path }),
        _ => Err(reply.unexpected()),
    }
}

/// A 404: no secret at all (`{"errors": []}`), or a latest version that was
/// deleted or destroyed (its metadata comes back, its data is null).
fn missing(answer: Option<KvAnswer>, path: String) -> VaultError {
    let metadata = answer.and_then(|a| a.data).and_then(|d| d.metadata);
    match metadata {
        Some(m) if m.destroyed => VaultError::Destroyed {
            path,
            version: m.version,
        },
        Some(m) if !m.deletion_time.is_empty() => VaultError::Deleted {
            path,
            version: m.version,
        },
        _ => VaultError::NotFound { path },
    }
}

#[derive(Deserialize)]
struct KvAnswer {
    data: Option<KvData>,
}

#[derive(Deserialize)]
struct KvData {
    data: Option<BTreeMap<String, FieldValue>>,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
    #[serde(default)]
    version: Option<u64>,
}

/// One field's value. KV v2 stores any JSON: a string is the value as it
/// is, a number or boolean its JSON text, an object or array its compact
/// JSON (as `vault kv get -field` prints them), null an empty value.
struct FieldValue(SecretString);

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FieldValue, D::Error> {
        deserializer.deserialize_any(FieldVisitor).map(FieldValue)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = SecretString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a KV field value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretString, E> {
        Ok(SecretString::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SecretString, E> {
        Ok(SecretString::from(Zeroizing::new(v).as_str()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SecretString, E> {
        Ok(SecretString::from(serde_json::Value::from(v).to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<SecretString, E> {
        Ok(SecretString::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<SecretString, E> {
        Ok(SecretString::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretString, A::Error> {
        let value = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(SecretString::from(
            Zeroizing::new(value.to_string()).as_str(),
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<SecretString, A::Error> {
        let value = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(SecretString::from(
            Zeroizing::new(value.to_string()).as_str(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(json: &str) -> Secret {
        let fields: BTreeMap<String, FieldValue> = serde_json::from_str(json).unwrap();
        Secret {
            fields: fields.into_iter().map(|(k, v)| (k, v.0)).collect(),
        }
    }

    fn field(json: &str, name: &str) -> String {
        secret(json)
            .into_field(name)
            .unwrap()
            .expose_secret()
            .to_owned()
    }

    #[test]
    fn every_json_kind_of_value_becomes_text() {
        let json = r#"{"s": "text", "n": 42, "f": 1.5, "b": true, "z": null,
                       "o": {"a": [1, "x"]}, "l": ["p", 2]}"#;
        assert_eq!(field(json, "s"), "text");
        assert_eq!(field(json, "n"), "42");
        assert_eq!(field(json, "f"), "1.5");
        assert_eq!(field(json, "b"), "true");
        assert_eq!(field(json, "z"), "");
        assert_eq!(field(json, "o"), r#"{"a":[1,"x"]}"#);
        assert_eq!(field(json, "l"), r#"["p",2]"#);
    }

    #[test]
    fn a_whole_secret_becomes_sorted_env_lines() {
        let s = secret(r#"{"PORT": 8080, "API_KEY": "k=v&x", "_X": ""}"#);
        let text = s.env_text().unwrap();
        assert_eq!(text.expose_secret(), "API_KEY=k=v&x\nPORT=8080\n_X=\n");
    }

    #[test]
    fn an_empty_secret_is_an_empty_env() {
        assert_eq!(secret("{}").env_text().unwrap().expose_secret(), "");
    }

    #[test]
    fn a_value_with_a_line_break_is_refused_naming_the_key_only() {
        for value in [r#""a\nb""#, r#""a\r\nb""#] {
            let s = secret(&format!(r#"{{"OK": "x", "KEY_PEM": {value}}}"#));
            let e = s.env_text().unwrap_err();
            assert_eq!(e.key, "KEY_PEM");
            assert!(e.to_string().contains("line break"), "{e}");
            assert!(!e.to_string().contains("a\nb"), "{e}");
        }
    }

    #[test]
    fn a_key_that_is_no_variable_name_is_refused() {
        for key in ["1ABC", "A-B", "A B", "", "Ä"] {
            let s = secret(&format!(r#"{{"{key}": "v"}}"#));
            assert_eq!(s.env_text().unwrap_err().key, key);
        }
    }

    #[test]
    fn debug_shows_field_names_and_no_value() {
        let s = secret(r#"{"token": "ghp_secretvalue"}"#);
        let printed = format!("{s:?}");
        assert!(printed.contains("token"), "{printed}");
        assert!(!printed.contains("ghp_"), "{printed}");
    }

    #[test]
    fn a_404_with_metadata_tells_deleted_from_destroyed_from_absent() {
        let parse = |json: &str| serde_json::from_str::<KvAnswer>(json).ok();
        let deleted = r#"{"data": {"data": null, "metadata": {"deletion_time": "2024-01-01T00:00:00Z", "destroyed": false, "version": 3}}}"#;
        let destroyed = r#"{"data": {"data": null, "metadata": {"deletion_time": "", "destroyed": true, "version": 2}}}"#;
        assert!(matches!(
            missing(parse(deleted), "kv/x".into()),
            VaultError::Deleted {
                version: Some(3),
                ..
            }
        ));
        assert!(matches!(
            missing(parse(destroyed), "kv/x".into()),
            VaultError::Destroyed { .. }
        ));
        assert!(matches!(
            missing(parse(r#"{"errors": []}"#), "kv/x".into()),
            VaultError::NotFound { .. }
        ));
        assert!(matches!(
            missing(None, "kv/x".into()),
            VaultError::NotFound { .. }
        ));
    }
}
