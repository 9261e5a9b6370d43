//! The contract as JSON Schema (draft 2020-12), for producers and callers
//! in other languages: the two payloads as their parsers accept them, the
//! result and the progress event as they are written. Derived from the
//! types (`schemars`); `infra-service schema` prints or writes them, and
//! the committed copies under `schema/` are checked against this output.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::Value;

use super::deploy::DeployPayload;
use super::event::JobEvent;
use super::provision::ProvisionPayload;
use super::result::JobResult;

/// Where the schemas' `$id`s live; `v1` is the contract's version.
const ID_BASE: &str = "https://infra-service/schema/v1/";

/// One schema file: its name under `schema/` and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    /// e.g. `deploy_job.schema.json`.
    pub name: &'static str,
    /// Pretty JSON, keys sorted, a trailing newline.
    pub text: String,
}

/// The four schemas, in a fixed order: deploy job, provision job, result,
/// progress event.
pub fn files() -> Vec<SchemaFile> {
    // Payloads as they are read; the result and event as they are written.
    let read = SchemaSettings::draft2020_12().for_deserialize();
    let written = SchemaSettings::draft2020_12().for_serialize();
    vec![
        file::<DeployPayload>("deploy_job.schema.json", read.clone()),
        file::<ProvisionPayload>("provision_job.schema.json", read.clone()),
        file::<JobResult>("job_result.schema.json", written),
        // `JobEvent` is written by hand (`to_json`) and read with serde; its
        // optional fields are optional on both sides.
        file::<JobEvent>("job_event.schema.json", read),
    ]
}

/// All four as one JSON object keyed by file name, keys sorted.
pub fn bundle() -> String {
    let all: serde_json::Map<String, Value> = files()
        .into_iter()
        .map(|file| {
            let value = serde_json::from_str(&file.text).expect("a schema file is JSON");
            (file.name.to_owned(), value)
        })
        .collect();
    pretty(Value::Object(all))
}

fn file<T: JsonSchema>(name: &'static str, settings: SchemaSettings) -> SchemaFile {
    let mut schema: Schema = settings.into_generator().into_root_schema_for::<T>();
    schema.insert("$id".into(), format!("{ID_BASE}{name}").into());
    let mut value = schema.to_value();
    unwrap_descriptions(&mut value);
    SchemaFile {
        name,
        text: pretty(value),
    }
}

/// Doc comments are wrapped for the source; a description is one line.
fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    Value::String(text) if key == "description" => {
                        *text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// Pretty JSON with every object's keys sorted, whatever serde_json's
/// `preserve_order` says, and a trailing newline: byte-stable output.
fn pretty(mut value: Value) -> String {
    value.sort_all_objects();
    let mut text = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
