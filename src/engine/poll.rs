//! One step of a job's life (`poll_job`), stopping it, its end (pull and terminate when asked), and loss.

use super::*;

/// Between "unreachable: <why>" and what a side channel saw, in an instance's error line.
const SEEN_THROUGH: &str = "; through ";

/// Whether an instance's error line says what a side channel saw: `ls`'s own probe keeps
/// such a line while the machine stays unreachable (it says more than "unreachable").
pub(super) fn seen_through_side_channel(error: &str) -> bool {
    error.contains(SEEN_THROUGH)
}

impl Engine {
    /// Send SIGTERM once, SIGKILL after the grace; all state in the store.
    pub(super) async fn enforce_stop(
        &self,
        job: &JobRecord,
        inst: &InstanceRecord,
        remote: &dyn Remote,
        att: &AttemptRecord,
    ) -> Result<()> {
        match job.stop_sent_ms {
            None => {
                if self.store().mark_stop_sent(&job.id)? {
                    self.executor(inst)
                        .signal(remote, &att.remote_dir, "TERM")
                        .await?;
                }
            }
            Some(t) if now_ms() - t >= self.grace().as_millis() as i64 => {
                self.executor(inst)
                    .signal(remote, &att.remote_dir, "KILL")
                    .await?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// While the usual way onto a job's machine fails: the job's status through the
    /// provider's side channel (SSM for EC2), and a requested stop enforced through it.
    /// The job's end is not recorded from there: its log and checkpoints wait for the
    /// usual way. Returns the instance's error line, with what was seen.
    async fn poll_side_channel(
        &self,
        job: &JobRecord,
        att: &AttemptRecord,
        provider: &dyn Provider,
        inst: &InstanceRecord,
        unreachable: &anyhow::Error,
    ) -> String {
        let side = match provider.side_channel(inst).await {
            Ok(Some(s)) => s,
            Ok(None) => return format!("unreachable: {unreachable:#}"),
            Err(e) => {
                return format!("unreachable: {unreachable:#}; no side channel either: {e:#}");
            }
        };
        let via = side.via;
        let remote = side.remote.as_ref();
        let mut stopping = String::new();
        if job.cancel_requested {
            let first = job.stop_sent_ms.is_none();
            match self.enforce_stop(job, inst, remote, att).await {
                Ok(()) => {
                    if first {
                        let _ = self.store().add_event(
                            "job.stop_sent",
                            Some(&inst.id),
                            Some(&job.id),
                            &format!("stop sent through {via}: SSH cannot reach {}", inst.id),
                        );
                    }
                    stopping = format!("; stop sent through {via}");
                }
                Err(e) => stopping = format!("; stopping through {via} failed: {e:#}"),
            }
        }
        let seen = match self.executor(inst).status(remote, &att.remote_dir).await {
            Ok(RemoteStatus::Running { pid }) => format!("job running (pid {pid})"),
            Ok(RemoteStatus::SettingUp { pid }) => format!("job setting up (pid {pid})"),
            Ok(RemoteStatus::Starting) => "job starting".to_string(),
            Ok(RemoteStatus::Queued { reason, .. }) => format!("job queued ({reason})"),
            Ok(RemoteStatus::Exited { code, .. }) => {
                format!("job exited {code}; its log is collected when SSH answers")
            }
            Ok(RemoteStatus::Vanished) => "the job's processes died without an exit".to_string(),
            Ok(RemoteStatus::Missing) => "no job directory".to_string(),
            Err(e) => format!("{e:#}"),
        };
        format!("unreachable: {unreachable:#}{SEEN_THROUGH}{via}: {seen}{stopping}")
    }

    /// Stop a job now (SIGTERM, grace, SIGKILL) and record its end.
    pub(super) async fn stop_job_now(&self, job_id: &str) -> Result<JobState> {
        let job = self.store().job(job_id)?.context("no such job")?;
        if job.state.is_terminal() {
            return Ok(job.state);
        }
        let Some(att) = self.store().attempts(job_id)?.pop() else {
            let why = job.reason.clone().unwrap_or_else(|| "cancelled".into());
            self.transition(job_id, JobState::Cancelled, &why, None)?;
            return Ok(JobState::Cancelled);
        };
        let inst = self.job_instance(&job)?;
        let remote = self.provider(&inst.provider)?.remote(&inst).await?;
        self.store().mark_stop_sent(job_id)?;
        self.executor(&inst)
            .stop(remote.as_ref(), &att.remote_dir, self.grace())
            .await?;
        self.poll_job(job_id).await
    }

    /// One step of a job's life, safe from any process: honour a stop request, pump the
    /// log, read the machine's status, finish the job when it ended, check the budget.
    /// Returns the job's state afterwards.
    pub async fn poll_job(&self, job_id: &str) -> Result<JobState> {
        let job = self.store().job(job_id)?.context("no such job")?;
        // Recovery (a new machine, the checkpoint back, the next attempt) is the
        // supervisor's: see `Engine::recover`.
        if job.state.is_terminal() || job.state.is_recovering() {
            return Ok(job.state);
        }
        let attempts = self.store().attempts(job_id)?;
        let att = match attempts.last() {
            // Syncing: the next attempt is being prepared (after a recovery the last row
            // is the previous attempt's, on the previous machine).
            Some(a) if !matches!(job.state, JobState::Pending | JobState::Syncing) => a.clone(),
            _ => {
                // Not started yet. If the process that was starting it is gone, nobody will.
                let driver_alive = job.driver_pid.is_some_and(pid_alive);
                if job.cancel_requested && !driver_alive {
                    let why = job.reason.clone().unwrap_or_else(|| "cancelled".into());
                    self.transition(job_id, JobState::Cancelled, &why, None)?;
                } else if !driver_alive && job.state != JobState::Pending {
                    self.abandoned_start(&job, attempts.len())?;
                }
                return self.job_state(job_id);
            }
        };
        let inst = self.job_instance(&job)?;
        let provider = self.provider(&inst.provider)?;
        if !inst.state.is_live() {
            return self
                .job_lost(&job, &inst, &att, "its machine is gone")
                .await;
        }
        let remote = match provider.remote(&inst).await {
            Ok(r) => {
                if inst.error.is_some() {
                    self.store().set_instance_error(&inst.id, None)?;
                }
                r
            }
            Err(e) => {
                // Unreachable is not lost: only the provider saying it is gone makes it so.
                match provider.describe(&inst).await {
                    Ok(Observed::Gone) => {
                        return self
                            .job_lost(&job, &inst, &att, "its machine is gone")
                            .await;
                    }
                    // Taken back (a spot reclaim): interrupted, and recovered as such.
                    Ok(Observed::Interrupted { reason, .. }) => {
                        self.note_preempted(&inst, &reason).await?;
                        if let Err(e) = self.take_in_rescued_log(&job, &att).await {
                            tracing::warn!("job {job_id}: the log its machine kept: {e:#}");
                        }
                        self.store()
                            .finish_attempt(&job.id, att.attempt, None, now_ms())?;
                        return self.interrupted(
                            &job,
                            att.attempt,
                            crate::config::RecoverOn::Interrupted,
                            &format!("interrupted: {reason}"),
                        );
                    }
                    _ => {}
                }
                let msg = self
                    .poll_side_channel(&job, &att, provider.as_ref(), &inst, &e)
                    .await;
                if inst.error.as_deref() != Some(msg.as_str()) {
                    self.store().set_instance_error(&inst.id, Some(&msg))?;
                }
                return Err(e.context(format!("reaching {} for job {job_id}", inst.id)));
            }
        };
        if job.cancel_requested {
            self.enforce_stop(&job, &inst, remote.as_ref(), &att)
                .await?;
        }
        // The status and the log in one command where the executor can (the runner's: the
        // status first, then the log): one round trip to the machine, not one after
        // another (each costs a busy sshd ~100 ms and a login shell there). The read says
        // whether the job had ended before it began: then it took all of its log, its last
        // line (without a newline) included; a job that ended while it was read has its
        // log read once more, to the end: nothing written before the exit is missed. The
        // status tells the GPU samples' size: they are read (when due, or the job exited)
        // only when they grew.
        let executor = self.executor(&inst);
        let (machine, dir) = (remote.as_ref(), att.remote_dir.as_str());
        let read = |from, sink| -> follow::LogRead<'_, (RemoteStatus, Option<u64>)> {
            Box::pin(async move {
                let polled = executor.status_then_log(machine, dir, from, sink).await?;
                Ok((polled.log, (polled.status, polled.gpu_bytes)))
            })
        };
        let (_, whole_log, (status, gpu_bytes)) = self.pump_log_read(&att, false, read).await?;
        let exited = matches!(status, RemoteStatus::Exited { .. });
        let ended = exited || matches!(status, RemoteStatus::Vanished);
        let (log, gpu) = tokio::join!(
            async {
                if !ended || whole_log {
                    return Ok(0);
                }
                self.pump_log(remote.as_ref(), &att, true).await
            },
            async {
                // Samples exist only once the runner runs (not queued, not gone).
                let sampled = matches!(
                    status,
                    RemoteStatus::Running { .. }
                        | RemoteStatus::SettingUp { .. }
                        | RemoteStatus::Exited { .. }
                );
                if !sampled {
                    return Ok(());
                }
                self.pump_gpu(remote.as_ref(), &att, exited, gpu_bytes)
                    .await
            }
        );
        log?;
        if let Err(e) = gpu {
            tracing::warn!("job {job_id}: GPU samples: {e:#}");
        }
        if att.running_ms.is_none()
            && matches!(
                status,
                RemoteStatus::Running { .. } | RemoteStatus::Exited { .. }
            )
        {
            // Out of a scheduler's queue (seen running, or already ended): its GPU time
            // counts from when the runner started the command, as the runner wrote it.
            let started = remote
                .read_range(&format!("{}/started_at", att.remote_dir), 0, 32)
                .await
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<i64>().ok())
                .map(|s| (s * 1000).clamp(att.started_ms, now_ms()));
            let started = match status {
                RemoteStatus::Running { .. } => Some(started.unwrap_or_else(now_ms)),
                _ => started,
            };
            if let Some(ms) = started {
                self.store().set_attempt_running(job_id, att.attempt, ms)?;
            }
        }
        match status {
            RemoteStatus::Running { .. } | RemoteStatus::SettingUp { .. } => {
                let (now, why) = if matches!(status, RemoteStatus::SettingUp { .. }) {
                    (JobState::SettingUp, "setting up")
                } else if job.state == JobState::SettingUp {
                    (JobState::Running, "setup done; running")
                } else {
                    (JobState::Running, "running (re-attached)")
                };
                // Forward only: a job seen Running stays so.
                if job.state != now && job.state.can_transition_to(now) {
                    self.transition(job_id, now, why, None)?;
                } else if job
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("queued:"))
                {
                    // Out of the scheduler's queue.
                    self.store().set_job_reason(job_id, why)?;
                    self.store().add_event(
                        "job.running",
                        job.instance_id.as_deref(),
                        Some(job_id),
                        "out of the queue: running",
                    )?;
                }
                // A recovery whose driver died after the start: its earlier machines were
                // not released yet.
                if job.state == JobState::Starting && attempts.len() > 1 {
                    Box::pin(self.release_machines(&job, &attempts, Some(&att.instance_id))).await;
                }
                if let Err(e) = self
                    .ship_checkpoints(remote.as_ref(), &job, &att, false)
                    .await
                {
                    tracing::warn!("job {job_id}: shipping checkpoints: {e:#}");
                }
                if !job.cancel_requested
                    && let Some(why) = self.check_budget(&job)?
                {
                    self.store().request_stop_and_terminate(job_id, &why)?;
                    self.emit(EngineEvent::Notice {
                        job_id: Some(job_id.to_string()),
                        message: why,
                    });
                }
                self.job_state(job_id)
            }
            RemoteStatus::Starting => Ok(job.state),
            RemoteStatus::Queued { reason, start } => {
                // Said once per reason: `queued: Resources, start ~2026-11-26T21:40:00`.
                let why = format!(
                    "queued: {}{}",
                    crate::sanitize::sanitize_line(reason.as_bytes()),
                    start
                        .map(|s| format!(
                            ", start ~{}",
                            crate::sanitize::sanitize_line(s.as_bytes())
                        ))
                        .unwrap_or_default()
                );
                if job.reason.as_deref() != Some(why.as_str()) {
                    self.store().set_job_reason(&job.id, &why)?;
                    self.store().add_event(
                        "job.queued",
                        job.instance_id.as_deref(),
                        Some(&job.id),
                        &why,
                    )?;
                }
                Ok(job.state)
            }
            RemoteStatus::Exited {
                code,
                interrupted: Some(notice),
                ..
            } if code != 0 && !job.cancel_requested => {
                self.ship_checkpoints(remote.as_ref(), &job, &att, true)
                    .await
                    .context("shipping the interrupted job's checkpoints")?;
                self.store()
                    .finish_attempt(&job.id, att.attempt, Some(code), now_ms())?;
                self.interrupted(
                    &job,
                    att.attempt,
                    crate::config::RecoverOn::Interrupted,
                    &format!(
                        "interrupted ({notice}); attempt {} exited {code}",
                        att.attempt
                    ),
                )
            }
            RemoteStatus::Exited {
                code, setup_failed, ..
            } => {
                let why = (setup_failed && code != 0).then(|| self.setup_failure(&att, code));
                self.finish_as(&job, &att, Some(code), why).await
            }
            RemoteStatus::Vanished => {
                // The runner died without recording an exit: the machine rebooted, or its
                // processes were killed. That is a lost machine, not a failed job.
                if self.recovers(&job, crate::config::RecoverOn::Lost) {
                    // The runner is gone but the job's processes may not be: only files
                    // that are still are taken.
                    let _ = self
                        .ship_checkpoints(remote.as_ref(), &job, &att, false)
                        .await;
                    self.store()
                        .finish_attempt(&job.id, att.attempt, None, now_ms())?;
                    return self.interrupted(
                        &job,
                        att.attempt,
                        crate::config::RecoverOn::Lost,
                        "the job's processes died without recording an exit (machine rebooted or killed)",
                    );
                }
                self.finish(&job, &att, None).await
            }
            // The attempt is recorded before its directory exists on the machine: while the
            // process starting it lives, a missing directory means "not there yet".
            RemoteStatus::Missing if job.state == JobState::Starting => {
                if job.driver_pid.is_some_and(pid_alive) {
                    return Ok(JobState::Starting);
                }
                self.store()
                    .finish_attempt(&job.id, att.attempt, None, now_ms())?;
                self.abandoned_start(&job, attempts.len() - 1)?;
                self.job_state(job_id)
            }
            RemoteStatus::Missing => {
                if matches!(provider.describe(&inst).await, Ok(Observed::Gone)) {
                    self.job_lost(&job, &inst, &att, "its machine is gone")
                        .await
                } else {
                    self.job_lost(&job, &inst, &att, "its directory on the machine is gone")
                        .await
                }
            }
        }
    }

    pub(super) async fn job_lost(
        &self,
        job: &JobRecord,
        inst: &InstanceRecord,
        att: &AttemptRecord,
        why: &str,
    ) -> Result<JobState> {
        if let Err(e) = self.take_in_rescued_log(job, att).await {
            tracing::warn!("job {}: the log its machine kept: {e:#}", job.id);
        }
        self.store()
            .finish_attempt(&job.id, att.attempt, None, now_ms())?;
        if inst.state.is_live() {
            let p = self.provider(&inst.provider)?;
            if matches!(p.describe(inst).await, Ok(Observed::Gone)) {
                self.store().set_instance_state(
                    &inst.id,
                    InstanceState::Lost,
                    "the provider no longer has this machine",
                )?;
            }
        }
        if self.recovers(job, crate::config::RecoverOn::Lost) {
            return self.interrupted(
                job,
                att.attempt,
                crate::config::RecoverOn::Lost,
                &format!("lost: {why}"),
            );
        }
        self.transition(&job.id, JobState::Lost, why, None)?;
        Ok(JobState::Lost)
    }

    pub(super) async fn finish(
        &self,
        job: &JobRecord,
        att: &AttemptRecord,
        code: Option<i32>,
    ) -> Result<JobState> {
        self.finish_as(job, att, code, None).await
    }

    /// Why a setup failed, for the job's reason: its status and the last lines it printed
    /// (from the local log copy, between the setup's markers).
    fn setup_failure(&self, att: &AttemptRecord, code: i32) -> String {
        let end = self
            .store()
            .log_offset(&att.job_id, att.attempt)
            .map_or(0, |o| o.byte_offset);
        let bytes = self
            .read_local_log(&att.job_id, att.attempt, end.saturating_sub(8192), end)
            .unwrap_or_default();
        // Each line as a terminal shows it: what follows its last carriage return.
        let lines: Vec<String> = bytes
            .split(|&b| b == b'\n')
            .map(|l| l.rsplit(|&b| b == b'\r').next().unwrap_or(l))
            .map(crate::sanitize::sanitize_line)
            .collect();
        let mut tail: Vec<&str> = Vec::new();
        for line in lines.iter().rev() {
            if line.starts_with(crate::metrics::SETUP_MARK) {
                if line.starts_with(crate::metrics::SETUP_ENDED_MARK) {
                    continue;
                }
                break;
            }
            if !line.trim().is_empty() {
                tail.push(line.trim_end());
            }
            if tail.len() == 5 {
                break;
            }
        }
        tail.reverse();
        let mut why = format!("setup failed with status {code}");
        if !tail.is_empty() {
            why.push_str(": ");
            why.push_str(&tail.join(" | "));
        }
        why
    }

    /// [`Engine::finish`] with the reason given (a failed setup) instead of the exit's.
    pub(super) async fn finish_as(
        &self,
        job: &JobRecord,
        att: &AttemptRecord,
        code: Option<i32>,
        failure: Option<String>,
    ) -> Result<JobState> {
        self.store()
            .finish_attempt(&job.id, att.attempt, code, now_ms())?;
        // Re-read: a cancel may have come in since this poll started.
        let job = self.store().job(&job.id)?.context("job vanished")?;
        // Cancelled only when we actually stopped it: a job that finished cleanly before
        // the stop signal went out succeeded.
        let stopped = job.cancel_requested && (job.stop_sent_ms.is_some() || code != Some(0));
        let (state, why) = if stopped {
            (
                JobState::Cancelled,
                job.reason.clone().unwrap_or_else(|| "cancelled".into()),
            )
        } else {
            match code {
                Some(0) => (JobState::Succeeded, "exited with status 0".to_string()),
                Some(c) => (
                    JobState::Failed,
                    failure.unwrap_or_else(|| format!("exited with status {c}")),
                ),
                None => (
                    JobState::Failed,
                    "the runner died without recording an exit status".to_string(),
                ),
            }
        };
        let moved = self.transition_only(&job.id, state, &why, code)?;
        if moved {
            self.say_continuations(&job.id, state)?;
        }
        self.archive_logs(&job).await;
        if job.terminate_on_end
            && let Some(inst_id) = job.instance_id.as_deref()
        {
            // Keep what the job produced before the machine goes; a machine whose
            // artifacts did not all come back is kept (terminating it is the user's call).
            let pulled = if job.pull_on_end {
                match self.pull(&job.id, None).await {
                    Ok(r) if r.failed.is_empty() => Ok(()),
                    Ok(r) => Err(anyhow!(
                        "{} artifact(s) not pulled: {}",
                        r.failed.len(),
                        r.failures_text()
                    )),
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            };
            match pulled {
                Ok(()) => {
                    // Boxed: terminate stops live jobs, which polls them, which may finish them.
                    Box::pin(self.terminate(inst_id, &why)).await?;
                }
                Err(e) => {
                    self.store().add_event(
                        "artifact.error",
                        Some(inst_id),
                        Some(&job.id),
                        &format!(
                            "{e:#}; the machine is kept: `trainctl pull {}`, then `trainctl terminate {inst_id}`",
                            job.id
                        ),
                    )?;
                }
            }
        }
        // Machines of earlier attempts that the job owns and that are still up (the
        // last one stays unless the job was to terminate it: its files may be wanted).
        let attempts = self.store().attempts(&job.id)?;
        if attempts.len() > 1 {
            Box::pin(self.release_machines(&job, &attempts, job.instance_id.as_deref())).await;
        }
        // The end's hook once the end's work is done (artifacts pulled, machine released).
        if moved {
            self.job_ended(&job.id);
        }
        Ok(state)
    }

    /// Copy an ended job's logs (every attempt) to its checkpoint store when that store
    /// keeps logs (S3), with an event each; a failure is an event, not an error.
    async fn archive_logs(&self, job: &JobRecord) {
        let Ok(store) = self.checkpoint_store_for(job) else {
            return;
        };
        let attempts = self.store().attempts(&job.id).unwrap_or_default();
        for a in attempts {
            let file = self.local_log_path(&job.id, a.attempt);
            if !file.exists() {
                continue;
            }
            let (kind, msg) = match store.keep_log(&job.id, a.attempt, &file).await {
                Ok(Some(at)) => (
                    "log.archived",
                    format!("attempt {}'s log kept at {at}", a.attempt),
                ),
                Ok(None) => return,
                Err(e) => ("log.archive_error", format!("attempt {}: {e:#}", a.attempt)),
            };
            if let Err(e) = self.store().add_event(kind, None, Some(&job.id), &msg) {
                tracing::warn!("recording {kind}: {e:#}");
            }
        }
    }

    /// Poll every job that is not finished (re-attach after a restart). Errors on one job
    /// are recorded and do not stop the others.
    pub async fn reconcile_jobs(&self) -> Result<()> {
        for id in self.live_job_ids()? {
            if let Err(e) = self.poll_job(&id).await {
                tracing::warn!("re-attaching to job {id}: {e:#}");
            }
        }
        Ok(())
    }

    /// Ask a job to stop; the stop itself happens on the next poll (here or elsewhere).
    pub async fn cancel(&self, job_key: &str, why: &str) -> Result<JobRecord> {
        let job = self.store().find_job(job_key)?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        self.store().request_cancel(&job.id, why)?;
        Ok(job)
    }

    /// Pull a job's artifacts into `dest` (default `<project>/trainctl-out/<job>`).
    /// What terminating `instance_id` would lose: the files its jobs' artifact rules select
    /// that were never pulled (or changed since): (job, path, size). One listing per job
    /// that ran there and has rules; none when no job there has any.
    pub async fn unpulled_artifacts(
        &self,
        instance_id: &str,
    ) -> Result<Vec<(String, String, u64)>> {
        let inst = self
            .store()
            .instance(instance_id)?
            .context("instance not in the store")?;
        // The newest attempt of each job on this machine.
        let mut latest: Vec<crate::store::AttemptRecord> = Vec::new();
        for a in self.store().all_attempts()? {
            if a.instance_id != instance_id {
                continue;
            }
            match latest.iter_mut().find(|l| l.job_id == a.job_id) {
                Some(l) if l.attempt < a.attempt => *l = a,
                Some(_) => {}
                None => latest.push(a),
            }
        }
        let mut out = Vec::new();
        let mut remote = None;
        for att in latest {
            let Some(job) = self.store().job(&att.job_id)? else {
                continue;
            };
            let Ok(spec) = serde_json::from_str::<JobSpec>(&job.spec_json) else {
                continue;
            };
            if spec.project.artifacts.is_empty() {
                continue;
            }
            if remote.is_none() {
                remote = Some(self.remote_for(&inst).await?);
            }
            let r = remote.as_ref().context("no remote")?;
            let files = artifacts::list_sized(r.as_ref(), &att.workdir).await?;
            let names: Vec<artifacts::RemoteName> = files.iter().map(|f| f.0.clone()).collect();
            let (chosen, _) = artifacts::select(&spec.project.artifacts, &names)?;
            let pulled = self.store().artifacts(&job.id)?;
            for c in chosen {
                let size = files.iter().find(|f| f.0 == c).map_or(0, |f| f.1);
                if !pulled.iter().any(|p| p.path == c.text && p.size == size) {
                    out.push((job.id.clone(), c.text.clone(), size));
                }
            }
        }
        Ok(out)
    }

    pub async fn pull(&self, job_key: &str, dest: Option<&Path>) -> Result<artifacts::PullReport> {
        let job = self.store().find_job(job_key)?;
        let spec: JobSpec = serde_json::from_str(&job.spec_json)?;
        let att = self
            .store()
            .attempts(&job.id)?
            .pop()
            .context("the job never started, so it has no artifacts")?;
        let inst = self
            .store()
            .instance(&att.instance_id)?
            .context("instance not in the store")?;
        let remote = self.remote_for(&inst).await.with_context(|| {
            format!("artifacts of {} are on {}, which is gone", job.id, inst.id)
        })?;
        let dest = dest.map_or_else(
            || {
                Path::new(&job.project_dir)
                    .join("trainctl-out")
                    .join(&job.id)
            },
            Path::to_path_buf,
        );
        let report = artifacts::pull(
            remote.as_ref(),
            &att.workdir,
            &spec.project.artifacts,
            &dest,
        )
        .await?;
        for p in &report.pulled {
            self.store()
                .record_artifact(&crate::store::ArtifactRecord {
                    job_id: job.id.clone(),
                    path: p.path.clone(),
                    size: p.size,
                    blake3: p.blake3.clone(),
                    local_path: p.local_path.clone(),
                })?;
        }
        for u in &report.unmatched {
            self.store().add_event(
                "artifact.missing",
                Some(&inst.id),
                Some(&job.id),
                &format!("nothing matched {u}"),
            )?;
        }
        Ok(report)
    }
}
