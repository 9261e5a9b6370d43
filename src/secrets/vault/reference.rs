//! The `vault:` reference, parsed: `MOUNT/PATH` names a KV v2 secret,
//! `#FIELD` one of its fields. The first segment is the mount, so a mount
//! whose own path has a `/` in it cannot be named.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What a path segment keeps literal in the request URL: RFC 3986
/// unreserved characters. Everything else is percent-encoded, so no
/// segment can add a query, a fragment or another path level.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `vault:MOUNT/PATH` or `vault:MOUNT/PATH#FIELD`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRef {
    mount: String,
    path: Vec<String>,
    field: Option<String>,
}

impl VaultRef {
    /// Parses the part after `vault:`. The error says what is wrong with
    /// the shape; it never repeats the input.
    pub fn parse(rest: &str) -> Result<VaultRef, &'static str> {
        let (location, field) = match rest.split_once('#') {
            Some((_, "")) => return Err("empty field name after `#`"),
            Some((location, field)) => (location, Some(field.to_owned())),
            None => (rest, None),
        };
        let mut segments = location.split('/');
        let mount = segments.next().unwrap_or_default();
        let path: Vec<String> = segments.map(str::to_owned).collect();
        if mount.is_empty() {
            return Err("expected vault:MOUNT/PATH, the mount is empty");
        }
        if path.is_empty() {
            return Err("expected vault:MOUNT/PATH, there is no path after the mount");
        }
        if path.iter().any(String::is_empty) {
            return Err("empty path segment (`//` or a trailing `/`)");
        }
        let dots = |s: &str| s == "." || s == "..";
        if dots(mount) || path.iter().any(|s| dots(s)) {
            return Err("`.` and `..` are not allowed in a Vault path");
        }
        Ok(VaultRef {
            mount: mount.to_owned(),
            path,
            field,
        })
    }

    /// The field after `#`, if one was named.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// `MOUNT/PATH`, for messages.
    pub fn secret_path(&self) -> String {
        format!("{}/{}", self.mount, self.path.join("/"))
    }

    /// The KV v2 read path under the API root: `v1/MOUNT/data/PATH`, each
    /// segment percent-encoded.
    pub(crate) fn api_path(&self) -> String {
        let mut out = format!("v1/{}/data", encode(&self.mount));
        for segment in &self.path {
            out.push('/');
            out.push_str(&encode(segment));
        }
        out
    }
}

impl fmt::Display for VaultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vault:{}", self.secret_path())?;
        match &self.field {
            Some(field) => write!(f, "#{field}"),
            None => Ok(()),
        }
    }
}

fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_with_a_field_names_the_mount_the_path_and_the_field() {
        let r = VaultRef::parse("secret/github#token").unwrap();
        assert_eq!(r.secret_path(), "secret/github");
        assert_eq!(r.field(), Some("token"));
        assert_eq!(r.api_path(), "v1/secret/data/github");
        assert_eq!(r.to_string(), "vault:secret/github#token");
    }

    #[test]
    fn a_reference_without_a_field_names_the_whole_secret() {
        let r = VaultRef::parse("secret/projects/my-project").unwrap();
        assert_eq!(r.field(), None);
        assert_eq!(r.api_path(), "v1/secret/data/projects/my-project");
    }

    #[test]
    fn only_the_first_hash_separates_the_field() {
        let r = VaultRef::parse("kv/app#a#b").unwrap();
        assert_eq!(r.field(), Some("a#b"));
    }

    #[test]
    fn characters_outside_the_unreserved_set_are_percent_encoded_in_the_url() {
        let r = VaultRef::parse("kv/a?b=c/d%2e@x#f").unwrap();
        assert_eq!(r.api_path(), "v1/kv/data/a%3Fb%3Dc/d%252e%40x");
    }

    #[test]
    fn malformed_shapes_are_refused() {
        for bad in [
            "",
            "secret",
            "secret/",
            "/secret/x",
            "secret//x",
            "secret/x/",
            "secret/x#",
            "secret/../x",
            "../x",
            "secret/./x",
        ] {
            assert!(VaultRef::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
