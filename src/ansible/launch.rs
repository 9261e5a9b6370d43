//! A started playbook, whichever way it started: a cold child of tokio's or
//! a warm run forked by the controller. Supervision and the stop see only
//! this: a pid (also the process group's id), two output pipes and an exit
//! to wait for.

use std::io;
use std::process::ExitStatus;

use tokio::io::AsyncRead;
use tokio::process::Child;

use super::warm::WarmChild;
use crate::metrics::RunMode;

/// One of the playbook's output pipes.
pub(crate) type Pipe = Box<dyn AsyncRead + Send + Unpin>;

/// The running playbook. Dropped unexited, it is SIGKILLed either way.
#[derive(Debug)]
pub(crate) enum Launched {
    Cold(Child),
    Warm(WarmChild),
}

impl Launched {
    /// How it was started.
    pub(crate) fn mode(&self) -> RunMode {
        match self {
            Launched::Cold(_) => RunMode::Cold,
            Launched::Warm(_) => RunMode::Warm,
        }
    }

    /// Its pid; `None` once tokio reaped a cold one.
    pub(crate) fn pid(&self) -> Option<i32> {
        match self {
            Launched::Cold(child) => child.id().and_then(|pid| i32::try_from(pid).ok()),
            Launched::Warm(child) => Some(child.pid()),
        }
    }

    /// Its stdout and stderr; once only.
    pub(crate) fn take_pipes(&mut self) -> (Pipe, Pipe) {
        match self {
            Launched::Cold(child) => (
                Box::new(child.stdout.take().expect("stdout is piped")),
                Box::new(child.stderr.take().expect("stderr is piped")),
            ),
            Launched::Warm(child) => (
                Box::new(child.stdout.take().expect("stdout is taken once")),
                Box::new(child.stderr.take().expect("stderr is taken once")),
            ),
        }
    }

    /// Waits for its exit; cancel-safe.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Launched::Cold(child) => child.wait().await,
            Launched::Warm(child) => child.wait().await,
        }
    }
}
