//! Running `ansible-playbook` as a child process: a private workspace per
//! run, a cleared environment, output read concurrently and redacted, the
//! recap parsed into the contract's `stats` and `failed_task`, task progress
//! followed live through our callback plugin; at the end of
//! every run, every process it started (wherever it went) ended and reaped.

mod events;
mod output;
mod process;
mod recap;
mod tree;
mod workspace;

pub use events::{EventCounts, EventSink, EventStream, channel as event_channel};
pub use process::{PlaybookOutcome, PlaybookRun, RunError, Runner, SshTarget};
pub use tree::{become_subreaper, finish_cleanups, reap_adopted_orphans};
pub use workspace::Workspace;
