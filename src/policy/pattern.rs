//! Reference patterns (`vault:secret/projects/*`) and the one spelling a
//! reference is matched and compared in: harmless variations (`a//b`,
//! `a/./b`) become one reference; spellings that could reach elsewhere
//! (`..`, an absolute file name, `%`, `?` or `\` in a Vault path) have no
//! canonical form and so match no pattern.

use serde::{Serialize, Serializer};

use crate::job::SecretRef;

/// `reference` in its canonical spelling, or `None` when it cannot be
/// compared (the resolver refuses most of those as malformed anyway).
///
/// `env:` names are kept as written (variables are case-sensitive);
/// `file:` names and the path of `vault:` references lose empty and `.`
/// segments; unknown schemes are kept as written (no resolver serves them).
pub(crate) fn canonical(reference: &str) -> Option<String> {
    let (scheme, rest) = reference.split_once(':')?;
    match scheme {
        "file" => path_form(rest).map(|path| format!("file:{path}")),
        "vault" => {
            let (path, field) = vault_parts(rest)?;
            let field = field.map(|f| format!("#{f}")).unwrap_or_default();
            Some(format!("vault:{path}{field}"))
        }
        _ => Some(reference.to_owned()),
    }
}

/// The canonical `MOUNT/PATH` of a Vault reference and its `FIELD`, if any.
/// `%`, `?` and `\` would be read by the HTTP layer, not as part of the
/// secret's path, so a path holding one is not compared at all.
pub(crate) fn vault_parts(rest: &str) -> Option<(String, Option<&str>)> {
    let (path, field) = match rest.split_once('#') {
        Some((path, field)) => (path, Some(field)),
        None => (rest, None),
    };
    if path.contains(['%', '?', '\\']) {
        return None;
    }
    Some((path_form(path)?, field))
}

/// A relative `/`-separated path without empty or `.` segments; `None` if
/// it is absolute, empty, or climbs with `..`.
pub(crate) fn path_form(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut segments = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            _ => segments.push(segment),
        }
    }
    (!segments.is_empty()).then(|| segments.join("/"))
}

/// One entry of `policy.github_token_ref` or `policy.secrets_ref`: a
/// reference in which `*` stands for any run of characters but `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefPattern(String);

impl RefPattern {
    /// Accepts a reference (`SCHEME:REST`, the scheme without `*`) that has
    /// a canonical form; the pattern is kept in that form.
    pub fn parse(text: &str) -> Result<RefPattern, String> {
        let shaped =
            SecretRef::parse(text).map_err(|e| e.replace("secret reference", "pattern"))?;
        let (scheme, _) = shaped.as_str().split_once(':').unwrap_or_default();
        if scheme.contains('*') {
            return Err("the scheme (env:, file:, vault:) cannot hold `*`".to_owned());
        }
        canonical(shaped.as_str()).map(RefPattern).ok_or_else(|| {
            "cannot match anything: no absolute file names, `..`, or `%`, `?`, `\\` in a Vault path"
                .to_owned()
        })
    }

    /// True when the canonical reference `reference` matches.
    pub fn matches(&self, reference: &str) -> bool {
        let pattern: Vec<&str> = self.0.split('/').collect();
        let text: Vec<&str> = reference.split('/').collect();
        pattern.len() == text.len()
            && pattern
                .iter()
                .zip(&text)
                .all(|(p, t)| segment_matches(p.as_bytes(), t.as_bytes()))
    }

    /// The pattern as matched.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for RefPattern {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&self.0)
    }
}

/// Wildcard matching within one segment (`*`: any run of bytes). Greedy
/// with one backtrack point, so it stays linear-ish whatever a payload
/// sends against however many stars the operator wrote.
fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last star take one more byte and try again after it.
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, reference: &str) -> bool {
        let reference = canonical(reference).expect("a comparable reference");
        RefPattern::parse(pattern).unwrap().matches(&reference)
    }

    #[test]
    fn a_star_matches_any_run_within_one_path_segment() {
        assert!(matches(
            "vault:secret/projects/*",
            "vault:secret/projects/my-project"
        ));
        assert!(matches(
            "vault:secret/projects/*",
            "vault:secret/projects/a#token"
        ));
        assert!(matches("env:PROJECT_ENV_*", "env:PROJECT_ENV_FOR_TEST"));
        assert!(matches("env:PROJECT_ENV_*", "env:PROJECT_ENV_"));
        assert!(matches("file:projects/*.env", "file:projects/a.b.env"));
        assert!(!matches("file:projects/*.env", "file:projects/a.env.bak"));
    }

    #[test]
    fn a_star_does_not_cross_a_slash() {
        assert!(!matches(
            "vault:secret/projects/*",
            "vault:secret/projects/a/b"
        ));
        assert!(!matches("vault:secret/*", "vault:secret/infra/ssh#key"));
        assert!(matches("vault:secret/*/*", "vault:secret/infra/ssh#key"));
    }

    #[test]
    fn without_a_star_only_the_reference_itself_matches() {
        assert!(matches("env:GITHUB_TOKEN", "env:GITHUB_TOKEN"));
        assert!(!matches("env:GITHUB_TOKEN", "env:GITHUB_TOKEN2"));
        assert!(!matches("env:GITHUB_TOKEN", "env:github_token"));
        assert!(!matches("vault:secret/github#token", "vault:secret/github"));
        assert!(!matches("env:X", "file:X"));
    }

    #[test]
    fn harmless_spellings_match_as_the_reference_they_resolve_to() {
        assert!(matches("file:projects/*", "file:projects//a"));
        assert!(matches("file:projects/*", "file:./projects/./a"));
        assert!(matches(
            "vault:secret/projects/*",
            "vault:secret//projects/./a#f"
        ));
        assert!(matches(
            "vault:secret//projects/*",
            "vault:secret/projects/a"
        ));
    }

    #[test]
    fn references_that_could_climb_or_escape_have_no_canonical_form() {
        for reference in [
            "file:projects/../ssh/id_ed25519",
            "file:/etc/shadow",
            "file:",
            "vault:secret/projects/../infra/ssh",
            "vault:secret/projects/a%2F..%2Finfra",
            "vault:secret/projects/a?version=1",
            "vault:secret\\infra",
        ] {
            assert_eq!(canonical(reference), None, "{reference}");
        }
        assert_eq!(
            canonical("vault:secret/x#a/../b").as_deref(),
            Some("vault:secret/x#a/../b")
        );
    }

    #[test]
    fn many_stars_against_a_long_reference_stay_fast() {
        let pattern = RefPattern::parse(&format!("env:{}b", "*a".repeat(30))).unwrap();
        let reference = format!("env:{}", "a".repeat(1000));
        let started = std::time::Instant::now();
        assert!(!pattern.matches(&reference));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_pattern_must_be_a_comparable_reference_with_a_plain_scheme() {
        assert_eq!(
            RefPattern::parse("vault:secret//projects/./*")
                .unwrap()
                .as_str(),
            "vault:secret/projects/*"
        );
        for bad in [
            "*",
            "*:x",
            "",
            "env:A B",
            "file:../x",
            "file:/run/secrets/*",
            "vault:secret/a%2Fb",
        ] {
            assert!(RefPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
