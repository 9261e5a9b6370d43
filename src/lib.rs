//! # infra-service
//!
//! The hands of the platform: reads jobs from Redis Streams, runs
//! `ansible-playbook` against real servers over SSH, keeps server status in
//! Postgres, and publishes exactly one result per job. The wire format is
//! `CONTRACT.md` in the shared folder beside this repository; every name
//! the producers see comes from it.
//!
//! ## The path of a job
//!
//! ```text
//! stream entry ──> job ──────> workflow ──> result ──> ack
//! queue::Reader    job::Job::  workflow::   job::      queue::Queue::finish
//!  (XREADGROUP in  parse       deploy /     JobResult  (SET EX, XADD, XACK
//!   Lua: TAKE)                 provision                in one Lua script)
//! ```
//!
//! `worker` owns the loop: it takes as many entries as it has free slots and
//! runs each in a task of its own through one step, `Worker::handle`
//! (`worker::step`): parse, ask the ledger (`worker::ledger`) whether the
//! request runs here, admit it (`workflow::admit`: a deploy's target
//! against the policy), run its workflow, publish the result before the ack.
//! A workflow checks a deploy's references against the policy (`policy`),
//! resolves secrets (`secrets`), checks SSH (`workflow::preflight`, `ssh`;
//! unless `ssh.preflight` is off), runs the playbook (`ansible`) and
//! returns a `workflow::Report`.
//!
//! Beside that path, live progress: our callback plugin writes each task
//! start and result to a file in the run's private directory; `ansible`
//! reads it while the playbook runs, redacts and numbers the events and
//! hands them to the `EventSink` the worker passed down through the
//! workflow; `worker::progress` appends them to `job:events:<request_id>`
//! (through `queue`) and the stream ends with `job_finished`, published
//! with the result in one script.
//!
//! ## Code map
//!
//! - `config`: the settings tree (defaults, TOML file, `INFRA__*`
//!   variables), checked once into typed values (`RedisUrl`, `PostgresUrl`,
//!   `SocketAddr`, `BaseUrl`); nothing later re-checks them.
//! - `cli`, `operator`: the command line and the one-shot operator commands
//!   (`enqueue`, `status` and `dead` need Redis only, via `queue::Caller`
//!   and `queue::DeadLetters`).
//! - `console`: the operator console in the browser (`infra-service
//!   console`): server-rendered pages over the queues, the ledger and the
//!   servers, live progress by Server-Sent Events; read-only unless
//!   `console.allow_actions`, a login by token off loopback, CSRF on every
//!   POST; every text it shows is redacted and escaped. Reads through
//!   `store` and `queue` (`queue::Inspector`) like any other caller.
//! - `daemon`: builds the clients, starts the orphan reaper, and runs the
//!   worker until the stop signal.
//! - `http`: `/metrics`, `/healthz`, `/readyz`; `heartbeat`: the ops file
//!   touched while Redis answers.
//! - `metrics`: every metric, in one registry; call sites record with
//!   one-line calls.
//! - `shutdown`, `telemetry`: SIGTERM/SIGINT; tracing output.
//! - `retry`: the backoff every "wait out the outage" loop uses.
//! - `outbound`: what the HTTP clients that carry credentials (Vault,
//!   GitHub) share: no redirects, no proxies, errors that quote no body.
//! - `worker`: the read → run → publish → ack loop, and only the loop;
//!   `worker::step` handles one entry start to ack, `worker::ledger` is the
//!   jobs ledger's part of it, `worker::leases` keeps running entries'
//!   leases fresh, `worker::progress` forwards progress events.
//! - `queue`: Redis Streams (names, groups, reads and takeovers, leases,
//!   results, dead letters and their replay); Lua scripts for the steps
//!   that must check ownership atomically.
//! - `job`: the contract's types; parsing is validation (`job::Job::parse`
//!   picks the parser by queue). States are enums end to end: `JobKind`,
//!   `JobStatus`, `ErrorCode`, `EventKind`, spelled by `serde` as the
//!   contract spells them, parsed back by every reader. `job::schema`
//!   derives the contract's JSON Schemas from the same types (each field
//!   type's `JsonSchema` beside its parser), committed under `schema/`.
//! - `workflow`: what each job kind does, step by step; `workflow::admit`
//!   decides, before a claimed job runs, whether its deploy target is
//!   allowed and which address its ssh connects to; `workflow::lifecycle`
//!   checks what a deploy's play hands back with `set_stats` (revisions, a
//!   rollback), which the `infra_events` plugin writes to a file of the
//!   run's private directory: structured data, never scraped output.
//! - `policy`: what a job may name and where it may deploy: reference
//!   patterns per payload field (`pattern`), the worker's own credentials,
//!   gathered from the settings in one place and compared by what they
//!   resolve to (`credentials`), and `policy.deploy_targets` (`targets`).
//! - `secrets`: references to values (`env:`, `file:`, and `vault:`
//!   through `secrets::vault`, the Vault/OpenBao KV v2 client that logs in
//!   on first use and renews its token in the background), and redaction
//!   of values (the one way any text is scrubbed of them).
//! - `ansible`: one `ansible-playbook` child per run: what a run is and
//!   what it gives back (`run`), its private directory (`workspace`), its
//!   environment (`env`, pure), spawning it and
//!   reading its output (`runner`, `supervise`, `output`, `events`,
//!   `recap`), stopping and reaping its whole process tree (`stop`, `tree`,
//!   `masters`); `ansible::reaper` is the process-wide subreaper and its
//!   orphan loop, which ends after the drain. A run starts warm (forked by
//!   the long-lived Python controller: `controller` starts, pings and
//!   restarts it, `frame` is its channel, `warm` one forked run) or cold;
//!   `launch` is either, so supervision and the stop are one path.
//! - `ssh`: reachability probe (a run's probe leaves its connection as the
//!   run's ControlMaster, which the playbook reuses), failure classes,
//!   retry policy.
//! - `store`: Postgres (servers, host keys, the jobs ledger with its
//!   `JobState`, server locks).
//! - `provider`: the Time4VPS API client.
//! - `github`: GitHub Actions repository secrets (the repository's public
//!   key, values sealed with `crypto_box_seal`, one `PUT` at a time), as a
//!   GitHub App (`github::app`: JWT, installation token cached until shortly
//!   before it expires) or with the job's token; `github::api` honours
//!   GitHub's rate limits and retries 5xx until a deadline.
//! - `ci`: what `setup_ci` gives a repository (contract section 7): the
//!   key pair made for it (`ci::key`), the secrets, `DEPLOY_KNOWN_HOSTS`
//!   from the pinned host key, the result's `ci` object; pure data.
//!   `workflow::ci` runs the steps after a successful deploy: key onto the
//!   server, secrets into GitHub, older keys off.
//!
//! ## Invariants
//!
//! - An entry is acked only after its result is published, in the same
//!   script, and only by the consumer that owns it; a result that cannot be
//!   published is retried, not dropped.
//! - No entry is ever claimed (read or taken over) without a free slot to
//!   run it, and a running entry's lease is renewed for as long as it runs.
//! - A request id runs at most once to a final result (the jobs ledger);
//!   repeats are answered with the stored result.
//! - At most one job per server address runs at a time, across workers;
//!   a lock's session closes with its job, even one cancelled mid-wait.
//! - No process of a playbook run outlives it: its group, its descendants
//!   in other sessions and its ControlMasters (the SSH probe's among them,
//!   closed with the workspace if no playbook ran) are stopped and reaped.
//! - No payload reference is resolved before the policy has checked it,
//!   and no job may name the worker's own credentials, whatever the
//!   policy's lists say; no deploy connects before its target is checked,
//!   and a host name checked by its addresses is connected to at the
//!   address checked, never looked up again.
//! - Only `secrets` turns a reference into a value; values live in
//!   `SecretString` and leave the process only through the playbook child's
//!   environment (and the 0600 key file in the run's private directory).
//!   Every text that leaves (output tail, failed task, progress events)
//!   passes the job's `Redactor` first; progress events carry names and a
//!   short failure message only, never task arguments or results.
//! - A CI key's private half (`ci::CiKey`) is made in memory and leaves
//!   the process only sealed for GitHub: never a file, an argument, a log
//!   line or a playbook's input. The worker's own SSH key never goes to
//!   CI, and the CI login is never root.
//! - Progress is best effort: events are dropped (and counted), never
//!   waited for, so a slow Redis cannot slow or fail a job or its result.
//! - The Vault client logs in on first use, never at start (a worker whose
//!   Vault is down runs every job that names no Vault secret); nothing of
//!   a Vault answer body is logged or kept in an error.
//! - The playbook child starts from a cleared environment plus an allowlist.
//! - The stop wins every race: every `select!` that waits on the shutdown
//!   or a job's cancel token is `biased` with the stop first; after the
//!   stop the reader claims nothing, and no command is ever sent on a
//!   connection whose blocking read was abandoned (it is closed instead).
//! - Only `store` runs SQL; only `queue` talks to Redis; `job` does no I/O;
//!   a workflow never talks to Redis.
//! - A Postgres failure costs a log line, never a job's result.
//! - Every metric is defined in `metrics`, named `infra_*`; no other module
//!   registers one. Queue depth is read from Redis at scrape time, not kept.

pub(crate) mod ansible;
pub mod ci;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod github;
pub(crate) mod heartbeat;
pub(crate) mod http;
pub mod job;
pub(crate) mod metrics;
pub mod operator;
pub(crate) mod outbound;
pub(crate) mod policy;
pub mod provider;
pub mod queue;
pub(crate) mod retry;
pub mod secrets;
pub mod shutdown;
pub(crate) mod ssh;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workflow;
