//! Newtypes for the contract's field rules; each constructor is the rule.
//!
//! A value of one of these types has passed its rule, so code downstream
//! (argv, extra vars, Redis keys, SQL) never re-checks it. Each `parse`
//! returns a message that states the rule and shows the offending input
//! (truncated, escaped), except `SecretRef`, whose input is never echoed.
//! Each type's `JsonSchema` sits after its parser and states the same rule
//! for producers (`infra-service schema`); the shared payload tables
//! (`tests/fixtures/contract/`) hold the two to agreement.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Why a payload was refused, and the request id if one could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidPayload {
    pub request_id: Option<RequestId>,
    /// Names the field and the rule it broke, e.g. "port: must be 1-65535".
    pub reason: String,
    /// The result's `error.details` (such as the contract's `reason`).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl InvalidPayload {
    /// A refusal carrying `reason`, with the request id if one was read.
    pub fn new(request_id: Option<RequestId>, reason: impl Into<String>) -> InvalidPayload {
        InvalidPayload {
            request_id,
            reason: reason.into(),
            details: serde_json::Map::new(),
        }
    }

    /// Adds (or replaces) one entry of the result's `error.details`.
    pub fn with_detail(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> InvalidPayload {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// `^(?:body)$(?!\n)`: the whole string matches `body`. `$(?!\n)` is the
/// end of the string both in ECMA-262 and in Python's `re`, whose `$` also
/// matches before a final newline. No lookbehind, no `\p{..}`, no `\d`
/// (Unicode digits in Python): the patterns mean the same in both.
pub(super) fn whole(body: &str) -> String {
    format!("^(?:{body})$(?!\\n)")
}

/// A string schema named `title` whose whole value matches `body`.
fn string_schema(title: &str, body: &str, description: &str) -> Schema {
    json_schema!({
        "title": title,
        "type": "string",
        "pattern": whole(body),
        "description": description,
    })
}

/// How much of a refused input a message shows: enough to recognise it,
/// never a megabyte of it in a log line or a dead-letter entry.
const SHOWN_CHARS: usize = 64;

/// `s` quoted and escaped (control characters become `\u{..}`), cut to
/// `SHOWN_CHARS` characters.
pub(crate) fn shown(s: &str) -> String {
    let mut cut: String = s.chars().take(SHOWN_CHARS).collect();
    if cut.len() < s.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// True when `s` is `min..=max` bytes long and every byte passes `allowed`.
/// All our character classes are ASCII, so bytes and characters coincide.
fn is_run_of(s: &str, min: usize, max: usize, allowed: impl Fn(u8) -> bool) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(allowed)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

const ID_RULE: &str = "must be 1-128 characters of [A-Za-z0-9._:-]";

/// 1-128 chars of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);
impl RequestId {
    /// Accepts 1-128 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(s: &str) -> Result<RequestId, String> {
        if is_run_of(s, 1, 128, is_id_byte) {
            Ok(RequestId(s.to_owned()))
        } else {
            Err(format!("{ID_RULE}, got {}", shown(s)))
        }
    }
    /// The id as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// `[A-Za-z0-9._:-]{1,128}`, as `is_id_byte` and `ID_RULE` say.
const ID_PATTERN: &str = "[A-Za-z0-9._:-]{1,128}";

impl JsonSchema for RequestId {
    fn schema_name() -> Cow<'static, str> {
        "RequestId".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "RequestId",
            ID_PATTERN,
            "1-128 characters of [A-Za-z0-9._:-]; names the result key and the progress stream.",
        )
    }
}

/// Same rule as `RequestId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServerHandle(String);
impl ServerHandle {
    /// Accepts 1-128 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(s: &str) -> Result<ServerHandle, String> {
        if is_run_of(s, 1, 128, is_id_byte) {
            Ok(ServerHandle(s.to_owned()))
        } else {
            Err(format!("{ID_RULE}, got {}", shown(s)))
        }
    }
    /// The handle as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for ServerHandle {
    fn schema_name() -> Cow<'static, str> {
        "ServerHandle".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "ServerHandle",
            ID_PATTERN,
            "1-128 characters of [A-Za-z0-9._:-]: the handle of a row of the worker's servers table.",
        )
    }
}

fn is_kebab_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// kebab-case `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ProjectName(String);
impl ProjectName {
    /// Accepts `[a-z0-9][a-z0-9-]{0,62}`.
    pub fn parse(s: &str) -> Result<ProjectName, String> {
        if is_run_of(s, 1, 63, is_kebab_byte) && !s.starts_with('-') {
            Ok(ProjectName(s.to_owned()))
        } else {
            Err(format!(
                "must match [a-z0-9][a-z0-9-]{{0,62}} (kebab-case, at most 63 characters), got {}",
                shown(s)
            ))
        }
    }

    /// The contract's default: the repo part of `repo`, lower-cased.
    ///
    /// A repo part may hold `.` and `_`, which a project name may not, so the
    /// name is sanitized rather than refused: every character outside
    /// `[a-z0-9-]` becomes `-`, leading `-` are trimmed, and the result is cut
    /// to 63 characters. If nothing is left (a repo named `...`), the name is
    /// `project`.
    pub fn default_for(repo: &RepoName) -> ProjectName {
        let sanitized: String = repo
            .repo()
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii() && is_kebab_byte(c as u8) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let trimmed: String = sanitized.trim_start_matches('-').chars().take(63).collect();
        if trimmed.is_empty() {
            ProjectName("project".to_owned())
        } else {
            ProjectName(trimmed)
        }
    }

    /// The name as used for directories, compose project and containers.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for ProjectName {
    fn schema_name() -> Cow<'static, str> {
        "ProjectName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "ProjectName",
            "[a-z0-9][a-z0-9-]{0,62}",
            "kebab-case, at most 63 characters: the directory /opt/services/<name> and the compose project.",
        )
    }
}

fn is_repo_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// `owner/repo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RepoName(String);
impl RepoName {
    /// Accepts `owner/repo`, each part `[A-Za-z0-9._-]{1,100}`, neither `.`
    /// nor `..` (the name becomes a path and a URL).
    pub fn parse(s: &str) -> Result<RepoName, String> {
        let part_ok = |p: &str| is_run_of(p, 1, 100, is_repo_byte) && p != "." && p != "..";
        match s.split_once('/') {
            Some((owner, repo)) if part_ok(owner) && part_ok(repo) => Ok(RepoName(s.to_owned())),
            _ => Err(format!(
                "must be owner/repo, each part 1-100 characters of [A-Za-z0-9._-] and neither part . or .., got {}",
                shown(s)
            )),
        }
    }
    /// `owner/repo` as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The part after the `/`.
    pub fn repo(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, repo)| repo)
    }
}

/// One part of `owner/repo`: 1-100 of `[A-Za-z0-9._-]`, not `.` or `..`,
/// without lookaround: a first character that is no dot, or one dot and
/// then no dot, or two dots and at least one more character.
const REPO_PART: &str = "[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}|\\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,98}|\\.\\.[A-Za-z0-9._-]{1,98}";

impl JsonSchema for RepoName {
    fn schema_name() -> Cow<'static, str> {
        "RepoName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "RepoName",
            &format!("(?:{REPO_PART})/(?:{REPO_PART})"),
            "owner/repo, each part 1-100 characters of [A-Za-z0-9._-] and neither part . or ..",
        )
    }
}

/// A valid git ref name, no leading `-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GitRef(String);
impl GitRef {
    /// Accepts what `git check-ref-format --allow-onelevel` accepts, minus a
    /// leading `-` (it would read as an option in `git` argv), at most 255
    /// bytes.
    pub fn parse(s: &str) -> Result<GitRef, String> {
        match git_ref_violation(s) {
            None => Ok(GitRef(s.to_owned())),
            Some(rule) => Err(format!(
                "must be a valid git ref name ({rule}), got {}",
                shown(s)
            )),
        }
    }
    /// The ref as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `git_ref_violation`'s rules as lookaheads, in its order, then the
/// characters allowed (no ASCII control character, space or `~^:?*[\`).
/// Only the length differs: JSON Schema counts characters, the
/// worker 255 bytes of UTF-8.
const GIT_REF_PATTERN: &str = concat!(
    "(?!-)",                           // starts with -
    "(?!@$)",                          // is @
    "(?![^\\n]*\\.\\.)",               // contains ..
    "(?![^\\n]*@\\{)",                 // contains @{
    "(?![^\\n]*\\{[{%#])",             // a template delimiter
    "(?!/)(?![^\\n]*/$)(?![^\\n]*//)", // starts or ends with /, or //
    "(?![^\\n]*\\.$)",                 // ends with .
    "(?!\\.)(?![^\\n]*/\\.)",          // a component starts with .
    "(?![^\\n]*\\.lock(?:/|$))",       // a component ends with .lock
    "[^\\x00-\\x20\\x7f~^:?*\\[\\\\]{1,255}",
);

impl JsonSchema for GitRef {
    fn schema_name() -> Cow<'static, str> {
        "GitRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "GitRef",
            GIT_REF_PATTERN,
            "A ref name as `git check-ref-format --allow-onelevel` accepts it, not starting with - \
             and without a template delimiter ({{, {%, {#): no ASCII control character, space, \
             ~ ^ : ? * [ or \\, no .. or @{ or //, not @ alone, not starting or ending with /, \
             not ending with ., no component starting with . or ending with .lock. The worker also \
             refuses more than 255 bytes of UTF-8 (the pattern counts 255 characters).",
        )
    }
}

/// The first `git check-ref-format` rule (plus ours) that `s` breaks.
fn git_ref_violation(s: &str) -> Option<&'static str> {
    const FORBIDDEN: &[char] = &[' ', '~', '^', ':', '?', '*', '[', '\\'];
    if s.is_empty() {
        Some("empty")
    } else if s.len() > 255 {
        Some("longer than 255 bytes")
    } else if s.starts_with('-') {
        Some("starts with -")
    } else if s == "@" {
        Some("is @")
    } else if s.chars().any(|c| c.is_ascii_control()) {
        Some("contains a control character")
    } else if s.contains(FORBIDDEN) {
        Some("contains a space or one of ~ ^ : ? * [ \\")
    } else if s.contains("..") {
        Some("contains ..")
    } else if s.contains("@{") {
        Some("contains @{")
    } else if ["{{", "{%", "{#"]
        .iter()
        .any(|delimiter| s.contains(delimiter))
    {
        // Git allows them; no branch needs them, and a template delimiter
        // in a value Ansible sees is one mistake away from running.
        Some("contains a template delimiter {{, {% or {#")
    } else if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
        Some("starts or ends with / or contains //")
    } else if s.ends_with('.') {
        Some("ends with .")
    } else if s
        .split('/')
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        Some("a component starts with . or ends with .lock")
    } else {
        None
    }
}

/// An IPv4/IPv6 address or a DNS host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ServerAddress(String);
impl ServerAddress {
    /// Accepts an IPv4 or IPv6 address (std syntax, no brackets or zone) or
    /// a DNS host name: labels of 1-63 `[A-Za-z0-9-]` not starting or ending
    /// with `-`, at most 253 characters, one optional trailing dot, and a last
    /// label that is not all digits (RFC 3696 2), so a mistyped IPv4 such as
    /// `10.0.0.256` is refused instead of looked up.
    pub fn parse(s: &str) -> Result<ServerAddress, String> {
        if s.parse::<IpAddr>().is_ok() || is_host_name(s) {
            Ok(ServerAddress(s.to_owned()))
        } else {
            Err(format!(
                "must be an IPv4 or IPv6 address or a DNS host name, got {}",
                shown(s)
            ))
        }
    }
    /// The address as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// One spelling per server, as its lock and its pinned host key are
    /// keyed: an IP address in its canonical form (an IPv4-mapped IPv6
    /// address as IPv4, IPv6 compressed and lower case), a host name in
    /// lower case without its trailing dot. Another spelling of the same
    /// server must not dodge its lock or its pin.
    pub fn canonical(&self) -> String {
        match self.0.parse::<IpAddr>() {
            Ok(ip) => ip.to_canonical().to_string(),
            Err(_) => self.0.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
    /// The address as it goes into a URL's host: IPv6 in brackets.
    pub fn url_host(&self) -> String {
        match self.0.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]", self.0),
            _ => self.0.clone(),
        }
    }
}

/// An IPv4 address as Rust's `Ipv4Addr` parses it: four decimal octets
/// 0-255 without leading zeros.
const IPV4: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}";

/// An IPv6 address as Rust's `Ipv6Addr` parses it: eight groups of 1-4
/// hex digits, or `k` groups, `::` for at least one zero group and at
/// most `7 - k` more; the last two groups may be an IPv4 address.
fn ipv6_pattern() -> String {
    const H: &str = "[0-9A-Fa-f]{1,4}";
    let mut forms = vec![
        format!("{H}(?::{H}){{7}}"),
        format!("{H}(?::{H}){{5}}:{IPV4}"),
    ];
    for head in 0..=7 {
        let head_groups = match head {
            0 => String::new(),
            1 => H.to_owned(),
            2 => format!("{H}:{H}"),
            n => format!("{H}(?::{H}){{{}}}", n - 1),
        };
        let room = 7 - head;
        let mut tails = Vec::new();
        match room {
            0 => {}
            1 => tails.push(H.to_owned()),
            2 => tails.extend([IPV4.to_owned(), format!("{H}(?::{H})?")]),
            _ => tails.extend([
                format!("(?:{H}:){{0,{}}}{IPV4}", room - 2),
                format!("{H}(?::{H}){{0,{}}}", room - 1),
            ]),
        }
        let tail = if tails.is_empty() {
            String::new()
        } else {
            format!("(?:{})?", tails.join("|"))
        };
        forms.push(format!("{head_groups}::{tail}"));
    }
    forms.join("|")
}

/// A DNS host name as `is_host_name` accepts it: at most 253 characters
/// before one optional trailing dot, labels of 1-63 `[A-Za-z0-9-]` not
/// starting or ending with `-`, the last label not all digits.
const HOST_NAME: &str = concat!(
    "(?=[^\\n]{1,253}\\.?$)",
    "(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)*",
    "(?![0-9]+\\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.?",
);

impl JsonSchema for ServerAddress {
    fn schema_name() -> Cow<'static, str> {
        "ServerAddress".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "ServerAddress",
            "description": "An IPv4 or IPv6 address (no brackets, no zone) or a DNS host name \
                (labels of 1-63 [A-Za-z0-9-] not starting or ending with -, at most 253 characters \
                and one trailing dot, a last label that is not all digits).",
            "type": "string",
            "anyOf": [
                {"title": "IPv4", "pattern": whole(IPV4)},
                {"title": "IPv6", "pattern": whole(&ipv6_pattern())},
                {"title": "DNS host name", "pattern": whole(HOST_NAME)},
            ],
        })
    }
}

fn is_host_name(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        is_run_of(l, 1, 63, |b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let last_is_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok) && !last_is_numeric
}

/// `[a-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Module(String);
impl Module {
    /// Accepts 1-64 characters of `[a-z0-9_-]` (a docker compose profile).
    pub fn parse(s: &str) -> Result<Module, String> {
        let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-');
        if is_run_of(s, 1, 64, ok) {
            Ok(Module(s.to_owned()))
        } else {
            Err(format!(
                "must be 1-64 characters of [a-z0-9_-], got {}",
                shown(s)
            ))
        }
    }
    /// The profile name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl JsonSchema for Module {
    fn schema_name() -> Cow<'static, str> {
        "Module".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "Module",
            "[a-z0-9_-]{1,64}",
            "A docker compose profile to enable: 1-64 characters of [a-z0-9_-].",
        )
    }
}

/// A secret reference as written (`env:NAME`, `file:NAME`, `vault:...`);
/// `secrets` interprets it. Never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SecretRef(String);
impl SecretRef {
    /// Checks the shape only: 1-1024 characters, no whitespace or control
    /// characters, a non-empty scheme before a `:`. Unknown schemes pass;
    /// `secrets` refuses them when resolving. The error never repeats the
    /// input: a producer that sent a token instead of a reference must not
    /// see it copied into results and dead letters.
    pub fn parse(s: &str) -> Result<SecretRef, String> {
        let len = s.chars().count();
        let reason = if !(1..=1024).contains(&len) {
            Some(format!(
                "must be a secret reference of 1-1024 characters, got {len}"
            ))
        } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("must be a secret reference without whitespace or control characters".to_owned())
        } else if s
            .split_once(':')
            .is_none_or(|(scheme, _)| scheme.is_empty())
        {
            Some("must be a secret reference SCHEME:REST (env:, file:, vault:)".to_owned())
        } else {
            None
        };
        match reason {
            None => Ok(SecretRef(s.to_owned())),
            Some(reason) => Err(reason),
        }
    }
    /// The reference as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What `char::is_whitespace` or `char::is_control` is true of, as a class
/// body: Unicode White_Space and the C0/C1 controls (not `\s`, which in
/// ECMA-262 also holds U+FEFF).
const SPACE_OR_CONTROL: &str =
    "\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

impl JsonSchema for SecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut schema = string_schema(
            "SecretRef",
            &format!("[^:{SPACE_OR_CONTROL}]+:[^{SPACE_OR_CONTROL}]*"),
            "A secret reference SCHEME:REST, never a value (contract section 2): env:NAME, \
             file:NAME (under the worker's secrets directory), vault:MOUNT/PATH#FIELD or \
             vault:MOUNT/PATH. 1-1024 characters, no whitespace or control character. Only the \
             shape is checked with the payload: an unknown scheme, or a reference the operator's \
             policy does not allow for the field, fails the job with secret_unresolved instead.",
        );
        schema.insert("minLength".into(), 1.into());
        schema.insert("maxLength".into(), 1024.into());
        schema.insert(
            "examples".into(),
            serde_json::json!([
                "env:GITHUB_TOKEN",
                "file:projects/app",
                "vault:secret/github#token"
            ]),
        );
        schema
    }
}

/// What a DeployJob does on the server (contract section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployAction {
    /// Check out, write `.env`, pull, `up -d`, wait until healthy, roll back.
    Deploy,
    /// `docker compose restart`, wait until healthy.
    Restart,
    /// `docker compose stop`; the files stay.
    Stop,
    /// `down --volumes`, the directory, the port and CI keys go.
    Remove,
    /// The compose logs' tail, in `output_tail`.
    Logs,
}

impl DeployAction {
    /// Every action, in the contract's order.
    pub const ALL: [DeployAction; 5] = [
        DeployAction::Deploy,
        DeployAction::Restart,
        DeployAction::Stop,
        DeployAction::Remove,
        DeployAction::Logs,
    ];

    /// One of the contract's names.
    pub fn parse(s: &str) -> Result<DeployAction, String> {
        DeployAction::ALL
            .into_iter()
            .find(|action| action.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "must be one of deploy, restart, stop, remove, logs, got {}",
                    shown(s)
                )
            })
    }

    /// The name as the contract spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployAction::Deploy => "deploy",
            DeployAction::Restart => "restart",
            DeployAction::Stop => "stop",
            DeployAction::Remove => "remove",
            DeployAction::Logs => "logs",
        }
    }
}

impl JsonSchema for DeployAction {
    fn schema_name() -> Cow<'static, str> {
        "DeployAction".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "DeployAction",
            "description": "What the worker does on the server (contract section 6): deploy, \
                restart, stop, remove or logs.",
            "type": "string",
            "enum": DeployAction::ALL.map(DeployAction::as_str),
        })
    }
}

/// An HTTP path starting with `/`, at most 512 characters of the URL path
/// and query alphabet: it is put into a URL on the server, so no spaces,
/// no `#`, no control characters, nothing to percent-decode into them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HealthPath(String);
impl HealthPath {
    /// Accepts `/` followed by 0-511 of `[A-Za-z0-9._~!$&'()*+,;=:@%/?-]`.
    pub fn parse(s: &str) -> Result<HealthPath, String> {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"._~!$&'()*+,;=:@%/?-".contains(&b);
        if s.starts_with('/') && is_run_of(s, 1, 512, ok) {
            Ok(HealthPath(s.to_owned()))
        } else {
            Err(format!(
                "must be an HTTP path starting with / (at most 512 of [A-Za-z0-9._~!$&'()*+,;=:@%/?-]), got {}",
                shown(s)
            ))
        }
    }
    /// The path as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for HealthPath {
    fn schema_name() -> Cow<'static, str> {
        "HealthPath".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "HealthPath",
            "/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,511}",
            "An HTTP path starting with /, at most 512 characters of [A-Za-z0-9._~!$&'()*+,;=:@%/?-] \
             (no space, no #, no control character).",
        )
    }
}

/// `Display` shows the value as received, so ids and names go into
/// tracing fields with `%`. A `SecretRef` is a name, not a secret.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(
    RequestId,
    ServerHandle,
    ProjectName,
    RepoName,
    GitRef,
    ServerAddress,
    Module,
    SecretRef,
    HealthPath
);

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    // RequestId and ServerHandle

    #[test]
    fn every_spelling_of_a_server_has_one_canonical_form() {
        let canonical = |s: &str| ServerAddress::parse(s).unwrap().canonical();
        assert_eq!(canonical("::ffff:203.0.113.10"), "203.0.113.10");
        assert_eq!(canonical("203.0.113.10"), "203.0.113.10");
        assert_eq!(canonical("2001:DB8:0::1"), "2001:db8::1");
        assert_eq!(canonical("VPS.Example.com."), "vps.example.com");
    }

    #[test]
    fn a_request_id_of_the_allowed_characters_is_accepted() {
        for ok in [
            "dep-0c1d",
            "1700000000000-0",
            "a",
            "A.b_c:d-e",
            &"x".repeat(128),
        ] {
            assert_eq!(RequestId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn an_empty_or_overlong_request_id_is_refused() {
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn a_request_id_with_a_space_slash_or_non_ascii_is_refused() {
        for bad in ["a b", "a/b", "dép", "a\n", "a*"] {
            let err = RequestId::parse(bad).unwrap_err();
            assert!(err.contains("[A-Za-z0-9._:-]"), "{err}");
        }
    }

    #[test]
    fn a_server_handle_follows_the_request_id_rule() {
        assert!(ServerHandle::parse("vps-hel1-01").is_ok());
        assert!(ServerHandle::parse("").is_err());
        assert!(ServerHandle::parse("vps hel1").is_err());
        assert!(ServerHandle::parse(&"h".repeat(129)).is_err());
    }

    #[test]
    fn a_refusal_shows_a_long_input_cut_short() {
        let err = RequestId::parse(&"é".repeat(10_000)).unwrap_err();
        assert!(err.len() < 300, "{} bytes", err.len());
        assert!(err.contains("..."));
    }

    // ProjectName

    #[test]
    fn a_kebab_case_project_name_is_accepted() {
        for ok in ["my-project", "a", "0", "a-", &"a".repeat(63)] {
            assert!(ProjectName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_project_name_breaking_kebab_case_is_refused() {
        for bad in [
            "",
            "-a",
            "My-Project",
            "my_project",
            "my.project",
            &"a".repeat(64),
        ] {
            assert!(ProjectName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_project_name_is_the_repo_part_lower_cased() {
        assert_eq!(
            ProjectName::default_for(&repo("acme/My-Project")).as_str(),
            "my-project"
        );
    }

    #[test]
    fn the_default_project_name_turns_dots_and_underscores_into_dashes() {
        assert_eq!(
            ProjectName::default_for(&repo("acme/my_app.v2")).as_str(),
            "my-app-v2"
        );
    }

    #[test]
    fn the_default_project_name_drops_leading_dashes_and_keeps_63_characters() {
        assert_eq!(ProjectName::default_for(&repo("acme/.-_x")).as_str(), "x");
        let long = ProjectName::default_for(&repo(&format!("acme/{}", "b".repeat(100))));
        assert_eq!(long.as_str().len(), 63);
    }

    #[test]
    fn a_repo_part_with_nothing_usable_defaults_to_project() {
        assert_eq!(
            ProjectName::default_for(&repo("acme/...")).as_str(),
            "project"
        );
        assert_eq!(
            ProjectName::default_for(&repo("acme/_")).as_str(),
            "project"
        );
    }

    #[test]
    fn every_default_project_name_passes_the_project_name_rule() {
        for r in ["acme/...", "acme/-x-", "a/B_C", "o/9.9", "o/a..b"] {
            let name = ProjectName::default_for(&repo(r));
            assert!(ProjectName::parse(name.as_str()).is_ok(), "{r} -> {name}");
        }
    }

    // RepoName

    #[test]
    fn an_owner_slash_repo_name_is_accepted_and_split() {
        let name = repo("acme/my-project.rs_2");
        assert_eq!(name.repo(), "my-project.rs_2");
        assert!(RepoName::parse("a/...").is_ok());
    }

    #[test]
    fn a_repo_name_climbing_out_of_its_directory_is_refused() {
        for bad in ["../x", "./x", "x/..", "x/.", "/x", "x/"] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_repo_name_without_exactly_one_slash_is_refused() {
        for bad in ["acme", "acme/x/y", "", "/"] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_repo_part_with_other_characters_or_over_100_is_refused() {
        assert!(RepoName::parse("acme/my project").is_err());
        assert!(RepoName::parse("acme/x;y").is_err());
        assert!(RepoName::parse(&format!("acme/{}", "r".repeat(101))).is_err());
        assert!(RepoName::parse(&format!("{}/r", "o".repeat(100))).is_ok());
    }

    // GitRef

    #[test]
    fn ordinary_branch_and_tag_names_are_valid_refs() {
        for ok in [
            "main",
            "feature/x-1",
            "release/v1.2.3",
            "refs/heads/dev",
            "a.b",
            "a@b",
            "ünï",
            "a{b}",
        ] {
            assert!(GitRef::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_ref_holding_a_template_delimiter_is_refused() {
        for bad in ["{{lookup('pipe','id')}}", "a{%b", "x{#y"] {
            let err = GitRef::parse(bad).unwrap_err();
            assert!(err.contains("template delimiter"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_ref_breaking_check_ref_format_is_refused() {
        for bad in [
            "", "@", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a@{1}",
            "a\u{7f}", "a\tb", "/a", "a/", "a//b", "a.", ".a", "a/.b", "a.lock", "a.lock/b",
        ] {
            let err = GitRef::parse(bad).unwrap_err();
            assert!(
                err.starts_with("must be a valid git ref name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_ref_starting_with_a_dash_is_refused() {
        let err = GitRef::parse("--upload-pack=evil").unwrap_err();
        assert!(err.contains("starts with -"), "{err}");
    }

    #[test]
    fn a_ref_over_255_bytes_is_refused() {
        assert!(GitRef::parse(&"r".repeat(255)).is_ok());
        assert!(GitRef::parse(&"r".repeat(256)).is_err());
    }

    // ServerAddress

    #[test]
    fn ip_addresses_and_host_names_are_server_addresses() {
        for ok in [
            "203.0.113.10",
            "2001:db8::1",
            "::1",
            "example.com",
            "example.com.",
            "vps-1",
            "a1.b-2.c3",
            "localhost",
            "1.2.3.4a",
        ] {
            assert!(ServerAddress::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_shell_command_is_not_a_server_address() {
        let err = ServerAddress::parse("; rm -rf /").unwrap_err();
        assert!(
            err.starts_with("must be an IPv4 or IPv6 address or a DNS host name"),
            "{err}"
        );
    }

    #[test]
    fn malformed_host_names_are_refused() {
        for bad in [
            "",
            ".",
            "-a.com",
            "a-.com",
            "a..com",
            "a.com..",
            "a_b.com",
            "a b",
            "[::1]",
            "fe80::1%eth0",
            "user@host",
            "host:22",
            "10.0.0.256",
            "1.2.3",
        ] {
            assert!(ServerAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_names_are_limited_to_63_per_label_and_253_in_all() {
        assert!(ServerAddress::parse(&format!("{}.com", "a".repeat(63))).is_ok());
        assert!(ServerAddress::parse(&format!("{}.com", "a".repeat(64))).is_err());
        let label = "a".repeat(49);
        let name_253 = [label.as_str(); 5].join(".") + ".com";
        assert_eq!(name_253.len(), 253);
        assert!(ServerAddress::parse(&name_253).is_ok());
        assert!(ServerAddress::parse(&format!("{name_253}.")).is_ok());
        assert!(ServerAddress::parse(&format!("a{name_253}")).is_err());
    }

    #[test]
    fn an_ipv6_address_is_bracketed_for_urls() {
        assert_eq!(
            ServerAddress::parse("2001:db8::1").unwrap().url_host(),
            "[2001:db8::1]"
        );
        assert_eq!(
            ServerAddress::parse("203.0.113.10").unwrap().url_host(),
            "203.0.113.10"
        );
        assert_eq!(
            ServerAddress::parse("example.com").unwrap().url_host(),
            "example.com"
        );
    }

    // Module

    #[test]
    fn a_compose_profile_name_is_a_module() {
        for ok in ["backend", "tg_bot", "a-1", &"m".repeat(64)] {
            assert!(Module::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_module_with_a_space_capital_or_over_64_characters_is_refused() {
        for bad in ["tg bot", "", "Backend", "a.b", &"m".repeat(65)] {
            assert!(Module::parse(bad).is_err(), "{bad}");
        }
    }

    // SecretRef

    #[test]
    fn references_of_every_documented_form_are_accepted() {
        for ok in [
            "env:X",
            "file:x/y",
            "vault:secret/x#y",
            "vault:secret/projects/my-project",
        ] {
            assert_eq!(SecretRef::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn an_unknown_scheme_is_left_to_the_secrets_module() {
        assert!(SecretRef::parse("aws-sm:prod/x").is_ok());
    }

    #[test]
    fn a_reference_without_a_scheme_is_refused() {
        for bad in ["", ":x", "ghp_abcdef", "secret"] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reference_with_whitespace_or_control_characters_is_refused() {
        for bad in ["env:A B", "env:A\n", "env:\tA", "env:A\u{0}"] {
            assert!(SecretRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_reference_over_1024_characters_is_refused() {
        assert!(SecretRef::parse(&format!("env:{}", "A".repeat(1020))).is_ok());
        assert!(SecretRef::parse(&format!("env:{}", "A".repeat(1021))).is_err());
    }

    #[test]
    fn a_refused_reference_is_never_repeated_in_the_message() {
        for bad in ["ghp_SECRETTOKEN", "env:SECRET TOKEN", &"S".repeat(2000)] {
            let err = SecretRef::parse(bad).unwrap_err();
            assert!(!err.contains("SECRET") && !err.contains("SSSS"), "{err}");
        }
    }

    // DeployAction and HealthPath

    #[test]
    fn the_five_actions_parse_by_their_contract_names_and_nothing_else() {
        for action in DeployAction::ALL {
            assert_eq!(DeployAction::parse(action.as_str()), Ok(action));
        }
        for bad in ["", "Deploy", "restart ", "delete", "logs;id"] {
            let e = DeployAction::parse(bad).unwrap_err();
            assert!(e.starts_with("must be one of deploy, restart"), "{e}");
        }
    }

    #[test]
    fn a_health_path_is_a_url_path_that_cannot_break_out_of_the_url() {
        for good in [
            "/",
            "/healthz",
            "/api/v1/health?full=1",
            "/a%20b",
            "/x-y_z.~",
        ] {
            assert_eq!(HealthPath::parse(good).unwrap().as_str(), good);
        }
        let long = format!("/{}", "a".repeat(512));
        for bad in ["", "healthz", "/a b", "/a#b", "/a\nb", "/\"", &long] {
            assert!(HealthPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
