//! Secret references to values. Only this module turns a reference into a
//! value; values live in `secrecy` types and leave the process only through
//! the playbook child's environment.

mod redact;
mod resolve;

pub use redact::Redactor;
pub use resolve::{ResolveError, Resolver};
