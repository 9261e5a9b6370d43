//! Running `ansible-playbook` as a child process: a private workspace per
//! run, a cleared environment, output read concurrently and redacted, the
//! recap parsed into the contract's `stats` and `failed_task`; at the end of
//! every run, every process it started (wherever it went) ended and reaped.

mod output;
mod process;
mod recap;
mod tree;
mod workspace;

pub use process::{PlaybookOutcome, PlaybookRun, RunError, Runner, SshTarget};
pub use tree::{become_subreaper, finish_cleanups, reap_adopted_orphans};
pub use workspace::Workspace;
