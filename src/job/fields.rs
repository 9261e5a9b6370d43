//! Newtypes for the contract's field rules; each constructor is the rule.

use serde::Serialize;

/// Why a payload was refused, and the request id if one could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidPayload {
    pub request_id: Option<RequestId>,
    /// Names the field and the rule it broke, e.g. "port: must be 1-65535".
    pub reason: String,
}

/// 1-128 chars of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);
impl RequestId {
    pub fn parse(_s: &str) -> Result<RequestId, String> {
        unimplemented!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// Same rule as `RequestId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServerHandle(String);
impl ServerHandle {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// kebab-case `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ProjectName(String);
impl ProjectName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// `owner/repo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RepoName(String);
impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// A valid git ref name, no leading `-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GitRef(String);
impl GitRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// An IPv4/IPv6 address or a DNS host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ServerAddress(String);
impl ServerAddress {
    pub fn parse(_s: &str) -> Result<ServerAddress, String> {
        unimplemented!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// `[a-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Module(String);
/// A secret reference as written (`env:NAME`, `file:NAME`, `vault:...`);
/// `secrets` interprets it. Never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SecretRef(String);
impl SecretRef {
    pub fn parse(_s: &str) -> Result<SecretRef, String> {
        unimplemented!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
