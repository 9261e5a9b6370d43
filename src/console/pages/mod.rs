//! One module per page; each reads through `store` and `queue` and renders
//! with `html`, every value through `Console::show`.

pub(crate) mod dead;
pub(crate) mod job;
pub(crate) mod jobs;
pub(crate) mod overview;
pub(crate) mod servers;
