//! Running `ansible-playbook` as a child process: a private workspace per
//! run, a cleared environment, output read concurrently and redacted, the
//! recap parsed into the contract's `stats` and `failed_task`.

mod output;
mod process;
mod recap;
mod workspace;

pub use process::{PlaybookOutcome, PlaybookRun, RunError, Runner, SshTarget};
pub use workspace::Workspace;
