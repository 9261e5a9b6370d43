//! # infra-service
//!
//! The hands of the platform: reads jobs from Redis Streams, runs
//! `ansible-playbook` against real servers over SSH, keeps server status in
//! Postgres, and publishes exactly one result per job.
//!
//! ## The path of a job
//!
//! ```text
//! stream entry ──> job ──> workflow ──> result ──> ack
//! queue::Reader    job::   workflow::   job::      queue::Queue::finish
//!  (XREADGROUP)    parse   deploy /     JobResult  (SET EX, XADD, XACK
//!                          provision                in one transaction)
//! ```
//!
//! `worker` owns the loop: it takes as many entries as it has free slots,
//! runs each in a task of its own, and publishes the result before the ack.
//! A workflow resolves secrets (`secrets`), checks SSH (`workflow::preflight`,
//! `ssh`), runs the playbook (`ansible`) and returns a `workflow::Report`.
//!
//! Beside that path, live progress: our callback plugin writes each task
//! start and result to a file in the run's private directory; `ansible`
//! reads it while the playbook runs, redacts and numbers the events and
//! hands them to the `EventSink` the worker passed down through the
//! workflow; `worker` appends them to `job:events:<request_id>` (through
//! `queue`) and ends the stream with `job_finished` after the result.
//!
//! ## Code map
//!
//! - `config`: the settings tree (defaults, TOML file, `INFRA__*` variables).
//! - `cli`, `operator`: the command line and the one-shot operator commands
//!   (`enqueue`, `status` and `dead` need Redis only, via `queue::Caller`
//!   and `queue::DeadLetters`).
//! - `daemon`: builds the clients and runs the worker until the stop signal.
//! - `shutdown`, `telemetry`: SIGTERM/SIGINT; tracing output.
//! - `worker`: the read → run → publish → ack loop.
//! - `queue`: Redis Streams (names, groups, reads, results, dead letters).
//! - `job`: the contract's types; parsing is validation.
//! - `workflow`: what each job kind does, step by step.
//! - `secrets`: references to values, and redaction of values.
//! - `ansible`: one `ansible-playbook` child per run, its private directory.
//! - `ssh`: reachability probe, failure classes, retry policy.
//! - `store`: Postgres (servers, host keys, jobs ledger).
//! - `provider`: the Time4VPS API client.
//!
//! ## Invariants
//!
//! - An entry is acked only after its result is published, in the same
//!   transaction; a result that cannot be published is retried, not dropped.
//! - No entry is ever claimed without a free slot to run it.
//! - Only `secrets` turns a reference into a value; values live in
//!   `SecretString` and leave the process only through the playbook child's
//!   environment (and the 0600 key file in the run's private directory).
//!   Every text that leaves (output tail, failed task, progress events)
//!   passes the job's `Redactor` first; progress events carry names and a
//!   short failure message only, never task arguments or results.
//! - Progress is best effort: events are dropped (and counted), never
//!   waited for, so a slow Redis cannot slow or fail a job or its result.
//! - The playbook child starts from a cleared environment plus an allowlist.
//! - Only `store` runs SQL; only `queue` talks to Redis; `job` does no I/O;
//!   a workflow never talks to Redis.
//! - A Postgres failure costs a log line, never a job's result.

pub mod ansible;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod job;
pub mod operator;
pub mod provider;
pub mod queue;
pub mod secrets;
pub mod shutdown;
pub mod ssh;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
