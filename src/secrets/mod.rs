//! Secret references to values. Only this module turns a reference into a
//! value (`env:` and `file:` in `resolve`, `vault:` through the `vault`
//! client); values live in `secrecy` types and leave the process only
//! through the playbook child's environment.

mod redact;
mod resolve;
pub mod vault;

pub use redact::Redactor;
pub(crate) use resolve::is_variable_name;
pub use resolve::{FailureReason, LocalSecrets, ResolveError, Resolver};
