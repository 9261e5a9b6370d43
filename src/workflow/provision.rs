//! Provisioning a server: look it up, (reinstall its OS,) reach it over
//! SSH, pin its host key, run the setup or recovery playbook, and keep its
//! status in `servers` current at every step.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{Context, Report, millis, preflight, secret_error};
use crate::ansible::{EventSink, PlaybookRun, SshTarget, Workspace};
use crate::job::{ErrorCode, JobError, ProvisionJob};
use crate::provider::time4vps::{self, PollPolicy};
use crate::secrets::Redactor;
use crate::ssh::{self, RetryPolicy};
use crate::store::{Server, ServerStatus};

/// Runs one provision job to its report; the playbook's task progress goes
/// to `events`.
#[tracing::instrument(name = "provision", skip_all, fields(server = %job.server_handle))]
pub async fn run(ctx: &Context, job: &ProvisionJob, events: Option<EventSink>) -> Report {
    let handle = job.server_handle.as_str();
    let mut flow = Flow {
        ctx,
        handle,
        status: None,
        events,
    };
    let report = flow.run(job).await;
    flow.finish(report)
}

/// What a provisioning needs before it touches the server.
struct Prepared {
    run: PlaybookRun,
    workspace: Workspace,
    /// The OpenSSH public line of `key`, for `authorized_keys`.
    public_key: String,
    key: SecretString,
}

/// One provisioning in progress; remembers the last status it wrote.
struct Flow<'a> {
    ctx: &'a Context,
    handle: &'a str,
    status: Option<ServerStatus>,
    events: Option<EventSink>,
}

impl Flow<'_> {
    async fn run(&mut self, job: &ProvisionJob) -> Report {
        let started = Instant::now();
        let server = match self.find_server().await {
            Ok(server) => server,
            Err(report) => return report,
        };
        let lock = self.ctx.lock_server(&server.public_ip).await;
        // Read again under the lock: the job that held it may have pinned
        // the host key meanwhile, and that pin must be the one checked.
        let report = match self.find_server().await {
            Ok(server) => self.run_locked(job, server, started).await,
            Err(report) => report,
        };
        lock.release().await;
        report
    }

    /// The job's server row, or the failed report that says why not.
    async fn find_server(&self) -> Result<Server, Report> {
        match self.ctx.store.server(self.handle).await {
            Ok(Some(server)) => Ok(server),
            Ok(None) => Err(Report::failed(JobError::new(
                ErrorCode::ServerNotFound,
                format!("no server with handle `{}` in servers", self.handle),
            ))),
            Err(e) => Err(Report::failed(JobError::new(
                ErrorCode::Internal,
                format!("looking up the server failed: {e}"),
            ))),
        }
    }

    /// The part of a provisioning that touches the server, under its lock.
    async fn run_locked(
        &mut self,
        job: &ProvisionJob,
        mut server: Server,
        started: Instant,
    ) -> Report {
        if job.force_reinstall {
            // A new OS has a new host key: the old pin is obsolete.
            server.host_key = None;
        }
        let Prepared {
            run,
            workspace,
            public_key,
            key,
        } = match self.prepare(job, &server).await {
            Ok(prepared) => prepared,
            Err(report) => return report,
        };
        let mut redact_values = vec![key];
        let mut policy = preflight::retry_policy(self.ctx);
        if job.force_reinstall {
            match self.reinstall_os(&server, &public_key).await {
                Ok(password) => redact_values.extend(password),
                Err(report) => return report,
            }
            policy = self.after_reinstall(policy);
        }
        let working = if job.is_recovery {
            ServerStatus::Recovering
        } else {
            ServerStatus::Provisioning
        };
        self.set_status(working, None).await;

        // After a reinstall the probe is the wait for the new system to boot:
        // it runs whatever `ssh.preflight` says.
        let probe = self.ctx.settings.ssh.preflight || job.force_reinstall;
        if probe && let Err(report) = self.reach(&workspace, &run, &server, policy).await {
            return report;
        }
        let redactor = Redactor::new(redact_values.iter());
        let preflight_ms = millis(started.elapsed());
        let report = self.play(&workspace, run, &server, probe, &redactor).await;
        let report = Report {
            preflight_ms,
            ..report
        };
        let error = report.error.as_ref().map(|error| error.message.as_str());
        let status = match error {
            None => ServerStatus::Ready,
            Some(_) => ServerStatus::Failed,
        };
        self.set_status(status, error).await;
        report
    }

    /// The reinstall step: status `reinstalling`, the provider's rebuild,
    /// and the old host key forgotten (we caused its change).
    async fn reinstall_os(
        &mut self,
        server: &Server,
        public_key: &str,
    ) -> Result<Option<SecretString>, Report> {
        self.set_status(ServerStatus::Reinstalling, None).await;
        match self.reinstall(server, public_key).await {
            Ok(password) => {
                self.forget_host_key().await;
                Ok(password)
            }
            Err(error) => Err(self.fail(ServerStatus::Failed, error).await),
        }
    }

    /// The deploy key, the run's private directory with its extra vars, and
    /// the public half of the key that the server is to trust.
    async fn prepare(&mut self, job: &ProvisionJob, server: &Server) -> Result<Prepared, Report> {
        let key = match self.resolve(&server.ssh_key_ref).await {
            Ok(key) => key,
            Err(error) => return Err(self.fail(ServerStatus::Failed, error).await),
        };
        let mut run = self.playbook_run(job, server, key.clone());
        let workspace = self.ctx.runner.workspace(&run).map_err(internal)?;
        let public_key = match self.public_key(&workspace, server).await {
            Ok(public_key) => public_key,
            Err(error) => return Err(self.fail(ServerStatus::Failed, error).await),
        };
        // The run writes its vars into the directory when it starts.
        run.extra_vars["deploy_authorized_key"] = json!(public_key);
        Ok(Prepared {
            run,
            workspace,
            public_key,
            key,
        })
    }

    /// The SSH probe, with the retries of `policy`; pins the host key of a
    /// first contact. An unreachable server is marked `unreachable`.
    async fn reach(
        &mut self,
        workspace: &Workspace,
        run: &PlaybookRun,
        server: &Server,
        policy: RetryPolicy,
    ) -> Result<(), Report> {
        if let Err(error) = preflight::reach(self.ctx, workspace, &run.target, policy).await {
            let status = match error.code {
                ErrorCode::SshUnreachable => ServerStatus::Unreachable,
                _ => ServerStatus::Failed,
            };
            return Err(self.fail(status, error).await);
        }
        if server.host_key.is_none() {
            self.pin_host_key(workspace).await;
        }
        Ok(())
    }

    /// The playbook itself. Without the probe, the playbook made the first
    /// contact: a success pins the host key it met.
    async fn play(
        &self,
        workspace: &Workspace,
        run: PlaybookRun,
        server: &Server,
        probed: bool,
        redactor: &Redactor,
    ) -> Report {
        let timeout = self.ctx.job_timeout();
        match self.ctx.runner.run_in(workspace, run, redactor).await {
            Ok(outcome) => {
                if !probed && server.host_key.is_none() && outcome.succeeded() {
                    self.pin_host_key(workspace).await;
                }
                Report::default().with_playbook(outcome, timeout)
            }
            Err(e) => internal(e),
        }
    }

    fn playbook_run(&self, job: &ProvisionJob, server: &Server, key: SecretString) -> PlaybookRun {
        let ansible = &self.ctx.settings.ansible;
        let playbook = if job.is_recovery {
            ansible.recovery_playbook.clone()
        } else {
            ansible.provision_playbook.clone()
        };
        PlaybookRun {
            playbook,
            target: SshTarget {
                name: server.handle.clone(),
                address: server.public_ip.clone(),
                port: u16::try_from(server.ssh_port).unwrap_or(22),
                user: server.ssh_user.clone(),
                private_key: Some(key),
                known_hosts: server.host_key.clone(),
            },
            extra_vars: json!({
                "request_id": job.request_id.as_str(),
                "server_handle": server.handle,
                "public_ip": server.public_ip,
                "ssh_port": server.ssh_port,
                "ssh_user": server.ssh_user,
                "provider": server.provider,
                "force_reinstall": job.force_reinstall,
                "is_recovery": job.is_recovery,
            }),
            secret_env: Vec::new(),
            timeout: self.ctx.job_timeout(),
            events: self.events.clone(),
        }
    }

    async fn resolve(&self, reference: &str) -> Result<SecretString, JobError> {
        self.ctx
            .resolver
            .resolve_str(reference)
            .await
            .map_err(|e| secret_error(&e))
    }

    /// Rebuilds the OS through Time4VPS and waits for the task; returns the
    /// API password so it can be redacted from anything later printed.
    async fn reinstall(
        &self,
        server: &Server,
        public_key: &str,
    ) -> Result<Option<SecretString>, JobError> {
        let provider_error = |message: String| JobError::new(ErrorCode::ProviderError, message);
        if server.provider != "time4vps" {
            return Err(JobError::new(
                ErrorCode::InvalidPayload,
                format!(
                    "force_reinstall needs a time4vps server; `{}` is managed by `{}`",
                    server.handle, server.provider
                ),
            ));
        }
        let server_id: u64 = server
            .provider_server_id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| {
                provider_error(format!(
                    "server `{}` has no numeric provider_server_id",
                    server.handle
                ))
            })?;
        let settings = &self.ctx.settings.time4vps;
        let (Some(user_ref), Some(password_ref)) = (&settings.username_ref, &settings.password_ref)
        else {
            return Err(provider_error(
                "time4vps.username_ref and time4vps.password_ref are not configured".to_owned(),
            ));
        };
        let username = self.resolve(user_ref).await?;
        let password = self.resolve(password_ref).await?;
        let client = time4vps::Client::new(
            settings.base_url.clone(),
            username,
            password.clone(),
            Duration::from_secs(settings.request_timeout_secs),
        )
        .map_err(|e| provider_error(e.message()))?;
        let poll = PollPolicy {
            interval: Duration::from_secs(settings.poll_interval_secs),
            deadline: Duration::from_secs(settings.reinstall_deadline_secs),
        };
        tracing::info!(server_id, os = %settings.os, "reinstalling through Time4VPS");
        client
            .reinstall_and_wait(server_id, &settings.os, public_key, poll)
            .await
            .map_err(|e| provider_error(e.message()).with_detail("provider", "time4vps"))?;
        tracing::info!(server_id, "reinstall finished");
        Ok(Some(password).filter(|p| !p.expose_secret().is_empty()))
    }

    /// After a reinstall the server boots for a while (the probe is the
    /// wait for it): keep the backoff but
    /// try long enough to cover `provision.reinstall_ssh_wait_secs`.
    fn after_reinstall(&self, policy: RetryPolicy) -> RetryPolicy {
        let wait = Duration::from_secs(self.ctx.settings.provision.reinstall_ssh_wait_secs);
        let mut attempts = policy.attempts;
        let mut total = Duration::ZERO;
        while total < wait && attempts < 1000 {
            attempts += 1;
            total += policy.delay_before(attempts);
        }
        RetryPolicy { attempts, ..policy }
    }

    /// Records `status` with the error as `last_error`, and reports it.
    async fn fail(&mut self, status: ServerStatus, error: JobError) -> Report {
        self.set_status(status, Some(&error.message)).await;
        Report::failed(error)
    }

    async fn public_key(&self, workspace: &Workspace, server: &Server) -> Result<String, JobError> {
        let key_file = workspace.key_file().unwrap_or_default();
        ssh::public_key_of(&key_file).await.map_err(|problem| {
            JobError::new(
                ErrorCode::SecretUnresolved,
                format!("secret reference `{}`: {problem}", server.ssh_key_ref),
            )
            .with_detail("reference", server.ssh_key_ref.as_str())
        })
    }

    /// Writes a status; a database error is logged and does not stop the
    /// job (its result matters more than the row).
    async fn set_status(&mut self, status: ServerStatus, last_error: Option<&str>) {
        self.status = Some(status);
        if let Err(e) = self
            .ctx
            .store
            .set_server_status(self.handle, status, last_error)
            .await
        {
            crate::metrics::status_write_failed(crate::metrics::StatusWrite::ServerStatus);
            tracing::error!(error.message = %e, status = status.as_str(), "recording the server status failed");
        }
    }

    async fn pin_host_key(&self, workspace: &Workspace) {
        let Some(lines) = workspace.known_hosts() else {
            return;
        };
        if let Err(e) = self
            .ctx
            .store
            .pin_server_host_key(self.handle, &lines)
            .await
        {
            tracing::error!(error.message = %e, "pinning the host key failed");
        } else {
            tracing::info!("host key pinned");
        }
    }

    async fn forget_host_key(&self) {
        if let Err(e) = self.ctx.store.reset_server_host_key(self.handle).await {
            tracing::error!(error.message = %e, "forgetting the old host key failed");
        }
    }

    /// Adds the provision-only result fields.
    fn finish(self, mut report: Report) -> Report {
        report
            .extra
            .insert("server_handle".to_owned(), json!(self.handle));
        report.extra.insert(
            "server_status".to_owned(),
            json!(self.status.map(ServerStatus::as_str)),
        );
        report
    }
}

/// A failure of ours, not the server's: the run could not be set up.
fn internal(e: impl std::fmt::Display) -> Report {
    Report::failed(JobError::new(ErrorCode::Internal, e.to_string()))
}
