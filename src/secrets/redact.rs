//! Replacing every resolved secret value in outgoing text with `***`.
//!
//! A value rarely leaks verbatim only: tools print it base64-encoded (HTTP
//! basic auth, `docker login`), URL-encoded (clone URLs), JSON-escaped
//! (Ansible results), or one line at a time (a `.env` file, a private key).
//! The [`Redactor`] owns the list of those forms and one automaton that finds
//! them all in a single pass.

use std::collections::BTreeSet;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};

/// What every match is replaced with.
const MASK: &str = "***";

/// Encoded forms shorter than this are dropped: they would match ordinary text
/// far more often than they would hide a secret.
const MIN_DERIVED_LEN: usize = 4;

/// A line of a multi-line value is a needle of its own from this length on.
const MIN_LINE_LEN: usize = 8;

/// The `VALUE` of a `KEY=VALUE` line is a needle of its own from this length on.
const MIN_ENV_VALUE_LEN: usize = 4;

/// RFC 3986 unreserved characters stay literal; the form most URL encoders emit.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Knows the secret values of one job and scrubs them from text.
///
/// Deliberately not `Display`, and its `Debug` shows only how many needles it
/// holds, so a redactor logged by mistake leaks nothing.
#[derive(Clone, Default)]
pub struct Redactor {
    matcher: Matcher,
    needle_count: usize,
    longest: usize,
}

#[derive(Clone, Default)]
enum Matcher {
    /// No values: text passes unchanged.
    #[default]
    Nothing,
    Needles(AhoCorasick),
    /// The automaton could not be built; every text is withheld (fail closed).
    WithholdAll,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("needles", &self.needle_count)
            .finish()
    }
}

impl Redactor {
    /// A redactor for these values (and their base64 and URL-encoded forms).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretString>) -> Redactor {
        let mut needles = BTreeSet::new();
        for value in values {
            add_value(&mut needles, value.expose_secret());
        }
        let needle_count = needles.len();
        let longest = needles.iter().map(String::len).max().unwrap_or(0);
        let matcher = if needles.is_empty() {
            Matcher::Nothing
        } else {
            // A contiguous NFA, not the DFA the builder picks for few
            // needles: one redactor is built per job and searches a few KiB,
            // and building the DFA cost more than all its searches (and
            // megabytes over the lines of an SSH key).
            match AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(&needles)
            {
                Ok(automaton) => Matcher::Needles(automaton),
                Err(error) => {
                    tracing::error!(error.message = %error, needles = needle_count,
                        "cannot build the redaction automaton; withholding all output");
                    Matcher::WithholdAll
                }
            }
        };
        Redactor {
            matcher,
            needle_count,
            longest,
        }
    }

    /// `text` with every known value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        self.redact_from(text, 0)
    }

    /// How many distinct strings (values and their encodings) are searched for.
    #[cfg(test)]
    fn needle_count(&self) -> usize {
        self.needle_count
    }

    /// Byte length of the longest needle: how far a secret can reach across a
    /// cut, so how much margin a text must keep before it is cut.
    pub fn longest_needle(&self) -> usize {
        self.longest
    }

    /// Redacts `text` as a whole but returns only what follows byte `start`
    /// (a char boundary). A secret straddling `start` becomes `***`, so cutting
    /// here cannot leave a fragment of it behind.
    pub(crate) fn redact_from(&self, text: &str, start: usize) -> String {
        let automaton = match &self.matcher {
            Matcher::Nothing => return text[start..].to_owned(),
            Matcher::WithholdAll if text[start..].is_empty() => return String::new(),
            Matcher::WithholdAll => return MASK.to_owned(),
            Matcher::Needles(automaton) => automaton,
        };
        let mut out = String::with_capacity(text.len() - start);
        let mut copied_to = start;
        for found in automaton.find_iter(text) {
            if found.end() <= start {
                continue;
            }
            if found.start() > copied_to {
                out.push_str(&text[copied_to..found.start()]);
            }
            out.push_str(MASK);
            copied_to = found.end();
        }
        out.push_str(&text[copied_to..]);
        out
    }
}

/// Adds a value, its lines and its `.env` values, each with its encodings.
///
/// Every value is split, not only multi-line ones: a one-line `.env`
/// (`DB_PASSWORD=...`, its trailing newline stripped by the resolver) must
/// still hide the password on its own. Over-redaction is the safe side.
fn add_value(needles: &mut BTreeSet<String>, value: &str) {
    if value.is_empty() {
        return;
    }
    add_piece(needles, value);
    for line in value.lines() {
        let line = line.trim();
        if line.len() >= MIN_LINE_LEN {
            add_piece(needles, line);
        }
        if let Some(env_value) = env_line_value(line)
            && env_value.len() >= MIN_ENV_VALUE_LEN
        {
            add_piece(needles, env_value);
        }
    }
}

/// The `VALUE` of a `KEY=VALUE` (or `export KEY=VALUE`) line, quotes stripped.
fn env_line_value(line: &str) -> Option<&str> {
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (key, value) = line.split_once('=')?;
    let key_is_identifier = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !key_is_identifier {
        return None;
    }
    let value = value.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q));
    Some(unquoted.unwrap_or(value))
}

/// Adds one piece of secret text verbatim and in every encoded form.
fn add_piece(needles: &mut BTreeSet<String>, piece: &str) {
    needles.insert(piece.to_owned());
    for derived in encoded_forms(piece) {
        if derived.len() >= MIN_DERIVED_LEN && derived != piece {
            needles.insert(derived);
        }
    }
}

/// Base64 (standard and URL-safe, padded, unpadded and embedded), percent
/// encoding and JSON string escaping of `piece`.
fn encoded_forms(piece: &str) -> Vec<String> {
    let bytes = piece.as_bytes();
    let mut forms = vec![
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        utf8_percent_encode(piece, NON_ALPHANUMERIC).to_string(),
        utf8_percent_encode(piece, URL_COMPONENT).to_string(),
    ];
    for alignment in 0..3 {
        forms.push(embedded_base64(bytes, alignment, &STANDARD_NO_PAD));
        forms.push(embedded_base64(bytes, alignment, &URL_SAFE_NO_PAD));
    }
    if let Ok(quoted) = serde_json::to_string(piece) {
        forms.push(quoted[1..quoted.len() - 1].to_owned());
    }
    forms
}

/// The base64 characters that encode only `bytes` when `bytes` sits
/// `alignment` bytes into a 3-byte group of a longer blob, as the token does
/// in `base64("user:" + token)`. Characters shared with the neighbouring
/// bytes differ from blob to blob, so they are left out.
fn embedded_base64(bytes: &[u8], alignment: usize, engine: &impl base64::Engine) -> String {
    let mut shifted = vec![0u8; alignment];
    shifted.extend_from_slice(bytes);
    let encoded = engine.encode(&shifted);
    // Characters 0..skip carry bits of the padding bytes; the one at `end`
    // (if any) carries bits of whatever follows.
    let skip = (8 * alignment).div_ceil(6);
    let end = 8 * shifted.len() / 6;
    encoded.get(skip..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str]) -> Redactor {
        let secrets: Vec<SecretString> = values.iter().map(|v| SecretString::from(*v)).collect();
        Redactor::new(&secrets)
    }

    const TOKEN: &str = "ghp_S3cr3tT0kenValue/+?&=xyz";

    #[test]
    fn the_value_itself_is_replaced() {
        let r = redactor(&[TOKEN]);
        assert_eq!(r.redact(&format!("token is {TOKEN}.")), "token is ***.");
    }

    #[test]
    fn empty_values_are_ignored_and_text_passes_unchanged() {
        let r = redactor(&["", ""]);
        assert_eq!(r.needle_count(), 0);
        assert_eq!(r.redact("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn standard_and_url_safe_base64_padded_or_not_are_replaced() {
        let r = redactor(&[TOKEN]);
        for encoded in [
            STANDARD.encode(TOKEN),
            STANDARD_NO_PAD.encode(TOKEN),
            URL_SAFE.encode(TOKEN),
            URL_SAFE_NO_PAD.encode(TOKEN),
        ] {
            let out = r.redact(&format!("x {encoded} y"));
            assert_eq!(out, "x *** y", "form {encoded}");
        }
    }

    #[test]
    fn base64_inside_a_longer_blob_is_replaced_at_every_alignment() {
        let r = redactor(&[TOKEN]);
        for prefix in ["", "u:", "user:", "x-access-token:"] {
            for engine in [&STANDARD, &URL_SAFE] {
                let blob = engine.encode(format!("{prefix}{TOKEN}@github.com"));
                let out = r.redact(&format!("Authorization: Basic {blob}"));
                assert!(out.contains("***"), "prefix {prefix:?}: {out}");
                // Whatever is left of the blob no longer decodes to the token.
                assert!(!out.contains(&blob[blob.len() / 2 - 4..blob.len() / 2 + 4]));
            }
        }
    }

    #[test]
    fn the_percent_encoded_form_is_replaced() {
        let r = redactor(&[TOKEN]);
        let strict = utf8_percent_encode(TOKEN, NON_ALPHANUMERIC).to_string();
        let component = utf8_percent_encode(TOKEN, URL_COMPONENT).to_string();
        assert_ne!(strict, component);
        assert_eq!(r.redact(&format!("https://{strict}@h/")), "https://***@h/");
        assert_eq!(
            r.redact(&format!("https://{component}@h/")),
            "https://***@h/"
        );
    }

    #[test]
    fn the_json_escaped_form_is_replaced() {
        let r = redactor(&["pa\"ss\\word"]);
        assert_eq!(r.redact(r#"{"msg": "pa\"ss\\word"}"#), r#"{"msg": "***"}"#);
    }

    #[test]
    fn each_long_line_of_a_multi_line_value_is_replaced_on_its_own() {
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nshort\n-----END OPENSSH PRIVATE KEY-----\n";
        let r = redactor(&[key]);
        assert_eq!(
            r.redact("line b3BlbnNzaC1rZXktdjEAAAAA seen"),
            "line *** seen"
        );
        // A short line alone is not a needle: it would match too much.
        assert_eq!(r.redact("short"), "short");
        assert_eq!(r.redact(key), "***");
    }

    #[test]
    fn env_values_are_replaced_without_their_keys() {
        let env = "DB_PASSWORD=hunter22\nexport API_KEY='k3y-v4lue'\nQUOTED=\"abcd\"\nTINY=abc\n# comment";
        let r = redactor(&[env]);
        assert_eq!(r.redact("pw hunter22"), "pw ***");
        assert_eq!(r.redact("key k3y-v4lue"), "key ***");
        assert_eq!(r.redact("q abcd"), "q ***");
        assert_eq!(r.redact("t abc"), "t abc");
    }

    #[test]
    fn a_one_line_env_still_hides_its_value() {
        let r = redactor(&["DB_PASSWORD=hunter22"]);
        assert_eq!(
            r.redact("postgres://app:hunter22@db"),
            "postgres://app:***@db"
        );
    }

    #[test]
    fn the_longest_overlapping_needle_wins() {
        let r = redactor(&["abcd", "abcdefgh"]);
        assert_eq!(r.redact("xabcdefghx abcdx"), "x***x ***x");
        assert!(r.longest_needle() >= "abcdefgh".len());
    }

    #[test]
    fn debug_shows_a_count_and_no_value() {
        let r = redactor(&[TOKEN]);
        let printed = format!("{r:?}");
        assert!(printed.starts_with("Redactor { needles: "), "{printed}");
        assert!(!printed.contains("ghp_"));
    }

    #[test]
    fn redacting_from_an_offset_masks_a_secret_straddling_it() {
        let r = redactor(&["secretvalue"]);
        let text = "aaa secretvalue bbb";
        assert_eq!(r.redact_from(text, 8), "*** bbb");
        assert_eq!(r.redact_from(text, 15), " bbb");
        assert_eq!(r.redact_from(text, 0), "aaa *** bbb");
    }
}
