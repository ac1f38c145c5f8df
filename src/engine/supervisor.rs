//! Supervision: job actors (one per job per process, registered here), retries with backoff, unreachable machines declared lost, recovery driven from the same loop.

use super::*;

impl Engine {
    /// One poll, retried with jittered backoff while the machine cannot be reached: a
    /// dropped connection delays the follow, it never ends it. Errors about the job itself
    /// (it vanished from the store) still return.
    pub async fn poll_job_retrying(&self, job_id: &str) -> Result<JobState> {
        let mut failures = 0u32;
        let first_failure = std::time::Instant::now();
        loop {
            match self.poll_job(job_id).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    let Some(job) = self.store().job(job_id)? else {
                        return Err(e);
                    };
                    // A changed host key, refused credentials: waiting cannot fix them.
                    if crate::remote::is_final(&e) {
                        return Err(e);
                    }
                    // Unreachable past the limit, and the provider could not say it is gone
                    // (then poll_job would have): the machine is lost.
                    let limit = recovery::job_spec(&job)
                        .map_or(120, |s| s.project.recovery.lost_after_seconds);
                    if failures > 0
                        && first_failure.elapsed() >= Duration::from_secs(limit)
                        && !self.provider_vouches_running(&job).await
                    {
                        return self
                            .declare_unreachable(
                                job_id,
                                &format!("unreachable for {limit} s: {e:#}"),
                            )
                            .await;
                    }
                    failures += 1;
                    let base = (250u64 << failures.min(6)).min(10_000);
                    let jitter = (now_ms() as u64).wrapping_mul(2_654_435_761) % (base / 2 + 1);
                    let wait = (base + jitter).min(limit.max(1) * 1000 / 2);
                    tracing::warn!("job {job_id}: {e:#}; retrying in {wait} ms");
                    self.emit(EngineEvent::Notice {
                        job_id: Some(job_id.to_string()),
                        message: format!("retrying: {e:#}"),
                    });
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    /// Whether the job's provider can vouch that its machine is running (then an
    /// unreachable machine is waited for, not declared lost).
    pub(super) async fn provider_vouches_running(&self, job: &JobRecord) -> bool {
        let Ok(inst) = self.job_instance(job) else {
            return false;
        };
        let Ok(p) = self.provider(&inst.provider) else {
            return false;
        };
        p.capabilities().vouches && matches!(p.describe(&inst).await, Ok(Observed::Running))
    }

    /// Supervise a job one step: poll it, or drive its recovery when it is interrupted.
    pub async fn supervise_step(&self, job_id: &str) -> Result<JobState> {
        let state = self.poll_job_retrying(job_id).await?;
        if state.is_recovering() {
            return self.recover_retrying(job_id).await;
        }
        Ok(state)
    }

    /// Follow a job until it ends, across its attempts (recovering it when interrupted),
    /// calling `on_tick` after every poll.
    pub async fn follow_job(
        &self,
        job_id: &str,
        mut on_tick: impl FnMut(&Engine),
    ) -> Result<JobState> {
        loop {
            let state = self.supervise_step(job_id).await?;
            on_tick(self);
            if state.is_terminal() {
                return Ok(state);
            }
            tokio::time::sleep(self.poll_interval()).await;
        }
    }

    /// Supervise `job_id` in this process unless a job actor of this process already does
    /// (the cockpit, `run` and `watch` all start supervision here). Returns the new actor's
    /// handle, or None when one was already running.
    pub fn supervise(&self, job_id: &str, start: bool) -> Option<JobHandle> {
        if !self
            .inner
            .supervised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id.to_string())
        {
            return None;
        }
        Some(self.spawn_job_actor(job_id, start))
    }

    /// Start a job actor: it starts the job when `start` (this process created it), then
    /// polls it until it ends, broadcasting events; a Cancel message stops it gracefully.
    /// With `start = false` it only re-attaches: a job someone else is starting is left to them.
    pub fn spawn_job_actor(&self, job_id: &str, start: bool) -> JobHandle {
        let (tx, mut rx) = mpsc::channel::<JobCommand>(8);
        let engine = self.clone();
        let id = job_id.to_string();
        let done = tokio::spawn(async move {
            // However the actor ends, this process no longer supervises the job.
            struct Unregister(Engine, String);
            impl Drop for Unregister {
                fn drop(&mut self) {
                    self.0
                        .inner
                        .supervised
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&self.1);
                }
            }
            let _unregister = Unregister(engine.clone(), id.clone());
            let pending = engine
                .store()
                .job(&id)?
                .is_some_and(|j| j.state == JobState::Pending);
            if start && pending {
                engine.start_job(&id).await?;
            }
            loop {
                let state = engine.supervise_step(&id).await?;
                if state.is_terminal() {
                    return Ok(state);
                }
                tokio::select! {
                    cmd = rx.recv() => {
                        if let Some(JobCommand::Cancel { reason }) = cmd {
                            engine.store().request_cancel(&id, &reason)?;
                        }
                    }
                    _ = tokio::time::sleep(engine.poll_interval()) => {}
                }
            }
        });
        JobHandle {
            job_id: job_id.to_string(),
            commands: tx,
            done,
        }
    }
}
