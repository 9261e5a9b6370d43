//! The run's extra vars file, `-e @vars.yml`: the job's values as YAML
//! with every string tagged `!unsafe`. Ansible renders any string it is
//! given as a Jinja template, so a value such as a branch named
//! `{{ lookup('pipe', ...) }}` (git allows the braces) would run on the
//! worker; an unsafe string is only ever data. Pure: no I/O.

use std::fmt::Write;

use serde_json::Value;

/// `value` as YAML flow syntax, every string `!unsafe`. Map keys stay
/// plain: they are ours (the variables' names), not the payload's.
pub(crate) fn unsafe_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out.push('\n');
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => out.push_str(&value.to_string()),
        Value::String(text) => {
            out.push_str("!unsafe ");
            write_quoted(out, text);
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_quoted(out, key);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// A YAML double-quoted scalar. Everything outside what YAML readers accept
/// unescaped (PyYAML refuses C0/C1 controls and DEL) is written `\uXXXX`
/// or `\UXXXXXXXX`.
fn write_quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if printable_beyond_ascii(c) => out.push(c),
            c if (c as u32) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
}

/// YAML's printable set beyond ASCII: `\u{85}`, `\u{A0}`-`\u{D7FF}`,
/// `\u{E000}`-`\u{FFFD}` and above (minus the BOM, which PyYAML reads as
/// a stream marker).
fn printable_beyond_ascii(c: char) -> bool {
    matches!(c, '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        && c != '\u{FEFF}'
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_string_is_unsafe_and_every_other_value_plain() {
        let vars = json!({
            "branch": "{{ lookup('pipe', 'id') }}",
            "modules": ["backend", "tg_bot"],
            "service_port": 8080,
            "health_path": null,
            "setup": true,
        });
        assert_eq!(
            unsafe_yaml(&vars),
            "{\"branch\": !unsafe \"{{ lookup('pipe', 'id') }}\", \
             \"health_path\": null, \
             \"modules\": [!unsafe \"backend\", !unsafe \"tg_bot\"], \
             \"service_port\": 8080, \"setup\": true}\n"
        );
    }

    #[test]
    fn quotes_backslashes_and_controls_are_escaped_and_unicode_kept() {
        let text = "a\"b\\c\nd\u{7f}e\u{9f}f\u{FEFF}g é 😀";
        let mut out = String::new();
        write_quoted(&mut out, text);
        assert_eq!(out, "\"a\\\"b\\\\c\\u000Ad\\u007Fe\\u009Ff\\uFEFFg é 😀\"");
    }
}
