//! Running `ansible-playbook` as a child process: a private workspace per
//! run, a cleared environment, output read concurrently and redacted, the
//! recap parsed into the contract's `stats` and `failed_task`, task progress
//! followed live through our callback plugin; at the end of
//! every run, every process it started (wherever it went) ended and reaped.
//! By default a run is forked from a warm controller that imported Ansible
//! once (`controller`, `warm`), indistinguishable from a cold one; the
//! cold `ansible-playbook` process is the fallback.

mod controller;
mod env;
mod events;
mod frame;
mod launch;
mod masters;
mod output;
pub(crate) mod reaper;
mod recap;
mod run;
mod runner;
mod stop;
mod supervise;
mod tree;
mod vars;
mod warm;
mod workspace;

pub use events::{EventCounts, EventSink, EventStream, channel as event_channel};
pub(crate) use masters::close_control_masters;
pub use run::{PlaybookOutcome, PlaybookRun, RunError, SshTarget};
pub use runner::Runner;
pub use stop::finish_cleanups;
pub use workspace::Workspace;
