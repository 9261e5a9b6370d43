//! The integration suite: one binary, one harness (`helpers`), one module per
//! capability. Each test brings its own Redis key prefix, sshd and worker;
//! see `helpers` for what is shared and what is not.

mod github_fake;
mod helpers;
mod time4vps_fake;
mod vault_fake;

mod ansible_content;
mod ci_access;
mod ci_setup;
mod cli;
mod console;
mod console_http;
mod dead;
mod delivery;
mod deploy;
mod deploy_lifecycle;
mod drain;
mod exfiltration;
mod github;
mod handle_step;
mod harness_selftest;
mod observability;
mod outages;
mod postgres_tls;
mod progress;
mod provider;
mod provision;
mod python_client;
mod redis_tls;
mod sentinel;
mod server_lock;
mod vault;
mod vault_jobs;
mod warm;
