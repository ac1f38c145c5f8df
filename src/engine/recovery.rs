//! Jobs that outlive their machine.
//!
//! - Checkpoints are shipped off the machine while the job runs ([`Engine::ship_checkpoints`]).
//! - An interruption notice (written by `migrate`, an admin, or on EC2 the spot notice) is
//!   acted on by the watcher on the machine; the engine then sees an attempt that exited
//!   under a notice, and a machine that vanished or stayed unreachable is lost: both move
//!   the job to `Interrupted` ([`Engine::interrupted`]), not to an end.
//! - A supervisor (`run`, `watch`, `logs -f`, the cockpit) calls [`Engine::recover`]: the
//!   replacement machine is recorded in the store before it is launched, so a trainctl
//!   killed at any step resumes the same recovery with the same machine; code is synced,
//!   the newest good checkpoint restored, and attempt n+1 started with
//!   `TRAINCTL_RESUME_FROM`. `max_attempts` reached -> `Failed`, machines released.

use super::{Engine, EngineEvent, JobSpec};
use crate::config::RecoverOn;
use crate::job::checkpoint;
use crate::model::{InstanceState, JobState, new_id, now_ms};
use crate::provider::LaunchRequest;
use crate::remote::Remote;
use crate::store::{AttemptRecord, CheckpointRecord, InstanceRecord, JobRecord};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// How long a supervisor's lease on a job lasts without renewal (a dead holder's lease is
/// free at once).
const LEASE_MS: i64 = 10 * 60 * 1000;

/// Checkpoint directories are scanned at most this often per job while it runs.
const SHIP_EVERY: Duration = Duration::from_secs(1);

/// Where `trainctl migrate` sends a job.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrateTarget {
    /// A new machine like the current one.
    Same,
    /// An instance the user already has.
    Instance(String),
    /// A new machine of this type, from the same provider.
    Type(String),
}

/// A checkpoint chosen for restore: its record and a local file verified against it.
pub struct Restore {
    pub rec: CheckpointRecord,
    pub local: PathBuf,
}

/// Crash here, as `kill -9` would, when `TRAINCTL_FAILPOINT` names this point: the tests
/// kill trainctl after each recovery step and check that the next supervisor completes
/// the recovery with one replacement and no orphan. Costs one env lookup otherwise.
pub(crate) fn failpoint(name: &str) {
    if std::env::var("TRAINCTL_FAILPOINT").is_ok_and(|v| v == name) {
        // SAFETY: signalling ourselves; SIGKILL runs no destructor, like a real crash.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

pub(crate) fn job_spec(job: &JobRecord) -> Result<JobSpec> {
    serde_json::from_str(&job.spec_json).context("reading the job spec")
}

impl Engine {
    /// Whether `job` is recovered from an end of kind `on` (a requested migration always is).
    pub(crate) fn recovers(&self, job: &JobRecord, on: RecoverOn) -> bool {
        job.migrate_to.is_some() || job_spec(job).is_ok_and(|s| s.project.recovery.on.contains(&on))
    }

    /// Attempt `attempt` of `job` ended by an interruption or a lost machine:
    /// `Interrupted` when it is recovered, else `Failed` (interrupted) or `Lost`. Nothing
    /// changes when the job has moved on since (another process recovered it already).
    pub(crate) fn interrupted(
        &self,
        job: &JobRecord,
        attempt: i64,
        on: RecoverOn,
        why: &str,
    ) -> Result<JobState> {
        let to = if self.recovers(job, on) {
            JobState::Interrupted
        } else if on == RecoverOn::Lost {
            JobState::Lost
        } else {
            JobState::Failed
        };
        if self.store().transition_attempt(&job.id, attempt, to, why)? {
            self.emit(EngineEvent::JobState {
                job_id: job.id.clone(),
                state: to,
                reason: why.to_string(),
            });
            if to.is_terminal() {
                self.job_ended(&job.id);
            }
            return Ok(to);
        }
        self.job_state(&job.id)
    }

    /// Ship the job's new complete checkpoints from the machine into the checkpoint store
    /// (newest `keep_checkpoints` kept). While the job runs, at most every second, files
    /// still for [`checkpoint::STABLE_MS`]; with `final_read` (the attempt exited: the
    /// runner saw its whole process group end) at once, every file with a final name.
    /// Returns how many were shipped.
    pub(crate) async fn ship_checkpoints(
        &self,
        remote: &dyn Remote,
        job: &JobRecord,
        att: &AttemptRecord,
        final_read: bool,
    ) -> Result<usize> {
        let spec = job_spec(job)?;
        let Some(ck) = spec.project.checkpoints.as_deref() else {
            return Ok(0);
        };
        if !final_read && !super::due(&self.inner.last_ship, &job.id, SHIP_EVERY) {
            return Ok(0);
        }
        let dir = format!("{}/{ck}", att.workdir);
        let keep = spec.project.recovery.keep_checkpoints.max(1) as usize;
        let store = self.checkpoint_store_for(job)?;
        let mut shipped = 0;
        let files = checkpoint::scan(remote, &dir, final_read).await?;
        let known: HashMap<String, (u64, i64)> = self
            .store()
            .checkpoints(&job.id)?
            .into_iter()
            .map(|c| (c.name, (c.size, c.mtime_ms)))
            .collect();
        let complete: Vec<_> = files.iter().filter(|f| f.complete).collect();
        for f in complete.iter().skip(complete.len().saturating_sub(keep)) {
            if known.get(&f.name) == Some(&(f.size, f.mtime_ms)) {
                continue;
            }
            let scratch = store.scratch(&job.id, &f.name)?;
            if let Some(d) = scratch.parent() {
                tokio::fs::create_dir_all(d).await?;
            }
            let got = remote
                .get(&format!("{dir}/{}", f.name), &scratch)
                .await
                .with_context(|| format!("downloading checkpoint {}", f.name))?;
            if got.size != f.size {
                // Rewritten since it was listed: the next scan takes the new one.
                let _ = tokio::fs::remove_file(&scratch).await;
                continue;
            }
            let kept = store.put(&job.id, &f.name, &scratch).await?;
            self.store().record_checkpoint(&CheckpointRecord {
                job_id: job.id.clone(),
                name: f.name.clone(),
                attempt: att.attempt,
                size: got.size,
                mtime_ms: f.mtime_ms,
                blake3: got.blake3,
                local_path: kept,
            })?;
            shipped += 1;
        }
        let stale: Vec<_> = self
            .store()
            .checkpoints(&job.id)?
            .into_iter()
            .skip(keep)
            .collect();
        for old in stale {
            store.delete(&job.id, &old.name).await?;
            self.store().forget_checkpoint(&job.id, &old.name)?;
        }
        Ok(shipped)
    }

    /// Where `job`'s checkpoints are kept: its provider's own store (S3 for `aws` when
    /// configured), else the local data directory.
    pub(crate) fn checkpoint_store_for(
        &self,
        job: &JobRecord,
    ) -> Result<std::sync::Arc<dyn checkpoint::CheckpointStore>> {
        let provider = match &job.instance_id {
            Some(i) => self.store().instance(i)?.map(|i| i.provider),
            None => None,
        };
        Ok(self.checkpoint_store_of(provider.as_deref()))
    }

    /// The checkpoint store of jobs on `provider`'s machines: its own, else the local one.
    pub(crate) fn checkpoint_store_of(
        &self,
        provider: Option<&str>,
    ) -> std::sync::Arc<dyn checkpoint::CheckpointStore> {
        provider
            .and_then(|p| self.inner.providers.get(p))
            .and_then(|p| p.checkpoint_store())
            .unwrap_or_else(|| self.inner.checkpoints.clone())
    }

    /// The newest shipped checkpoint whose file still matches its BLAKE3; damaged ones are
    /// refused (with an event) and the next older one is tried.
    pub(crate) async fn newest_good_checkpoint(&self, job_id: &str) -> Result<Option<Restore>> {
        let job = self.store().job(job_id)?.context("no such job")?;
        let store = self.checkpoint_store_for(&job)?;
        if let Err(e) = self.take_in_rescued(&job, store.as_ref()).await {
            tracing::warn!("looking for checkpoints the machine kept itself: {e:#}");
        }
        let recs = self.store().checkpoints(job_id)?;
        for rec in recs {
            match store.get(job_id, &rec.name, &rec.blake3).await {
                Ok(local) => return Ok(Some(Restore { rec, local })),
                Err(e) => {
                    self.store().add_event(
                        "checkpoint.refused",
                        None,
                        Some(job_id),
                        &format!("{}: {e:#}", rec.name),
                    )?;
                }
            }
        }
        Ok(None)
    }

    /// Record checkpoints a machine put in the store by itself (on a notice, with nobody
    /// watching): hashed here, then restorable like shipped ones.
    async fn take_in_rescued(
        &self,
        job: &JobRecord,
        store: &dyn checkpoint::CheckpointStore,
    ) -> Result<()> {
        let known: Vec<String> = self
            .store()
            .checkpoints(&job.id)?
            .into_iter()
            .map(|c| c.name)
            .collect();
        let attempt = self.store().attempts(&job.id)?.len() as i64;
        for u in store.unrecorded(&job.id, &known).await? {
            let (size, blake3) = checkpoint::size_and_blake3(&u.file).await?;
            self.store().record_checkpoint(&CheckpointRecord {
                job_id: job.id.clone(),
                name: u.name.clone(),
                attempt,
                size,
                mtime_ms: u.mtime_ms.unwrap_or_else(now_ms),
                blake3,
                local_path: u.location.clone(),
            })?;
            self.store().add_event(
                "checkpoint.rescued",
                None,
                Some(&job.id),
                &format!(
                    "{} ({size} bytes): the machine put it in {} itself when it was interrupted",
                    u.name, u.location
                ),
            )?;
        }
        Ok(())
    }

    /// Put a verified checkpoint back into the job's checkpoint directory `dir` on the new
    /// machine; returns its path there (for `TRAINCTL_RESUME_FROM`).
    pub(crate) async fn restore_checkpoint(
        &self,
        job_id: &str,
        remote: &dyn Remote,
        dir: &str,
        r: &Restore,
    ) -> Result<String> {
        let target = format!("{dir}/{}", r.rec.name);
        let (rdir, base) = target.rsplit_once('/').context("checkpoint path")?;
        let local_dir = r.local.parent().context("checkpoint file has no folder")?;
        if r.local.file_name().and_then(|n| n.to_str()) != Some(base) {
            bail!(
                "checkpoint store file {} is not named {base}",
                r.local.display()
            );
        }
        let rels = [base.to_string()];
        let sent = crate::remote::retry_lost(4, "restoring the checkpoint", || {
            remote.put_files(local_dir, &rels, rdir)
        })
        .await?;
        if sent.first().map(|f| f.blake3.as_str()) != Some(r.rec.blake3.as_str()) {
            bail!(
                "checkpoint {} changed while it was restored (BLAKE3 mismatch); refused",
                r.rec.name
            );
        }
        self.store().add_event(
            "checkpoint.restored",
            None,
            Some(job_id),
            &format!(
                "{} ({} bytes) restored to {target}; the job resumes from it",
                r.rec.name, r.rec.size
            ),
        )?;
        Ok(target)
    }

    /// Ask a running job to move: the watcher on its machine stops it (SIGTERM, the grace
    /// to save, SIGKILL), its checkpoints are shipped, and the supervisor resumes it on
    /// `to` as the next attempt.
    pub async fn migrate(&self, job_key: &str, to: MigrateTarget) -> Result<JobRecord> {
        let job = self.store().find_job(job_key)?;
        if !job.state.is_started() {
            bail!(
                "job {} is {}; only a running job can be migrated",
                job.id,
                job.state
            );
        }
        let current = self.job_instance(&job)?;
        let target = match &to {
            MigrateTarget::Same => "same".to_string(),
            MigrateTarget::Instance(key) => {
                let i = self.store().find_instance(key)?;
                if i.state != InstanceState::Running {
                    bail!("instance {} is {}", i.id, i.state);
                }
                if i.id == current.id {
                    bail!("job {} already runs on {}", job.id, i.id);
                }
                format!("instance:{}", i.id)
            }
            MigrateTarget::Type(t) => {
                // Refused before anything is stopped: an unknown type never strands a job.
                self.provider(&current.provider)?
                    .plan(&replacement_request(&current, Some(t), &job.name))
                    .await?;
                format!("type:{t}")
            }
        };
        let att = self
            .store()
            .attempts(&job.id)?
            .pop()
            .context("the job has no attempt to migrate")?;
        let remote = self.remote_for(&current).await?;
        self.store().set_migrate_to(&job.id, &target)?;
        self.executor(&current)
            .notify(
                remote.as_ref(),
                &att.remote_dir,
                &format!("migrate to {target}"),
            )
            .await?;
        self.store().job(&job.id)?.context("job vanished")
    }

    /// Drive an `Interrupted` or `Recovering` job one step: give up at `max_attempts`,
    /// else choose (and record) the replacement, launch or reuse it, and start the next
    /// attempt from the newest good checkpoint. Safe to call again after any failure or
    /// from another process: each step is recorded before it acts.
    pub async fn recover(&self, job_id: &str) -> Result<JobState> {
        // One supervisor at a time: whoever holds the lease drives the recovery; the
        // others wait and see the job run again.
        if !self.store().try_lease(job_id, LEASE_MS)? {
            return self.job_state(job_id);
        }
        let r = self.recover_leased(job_id).await;
        let _ = self.store().release_lease(job_id);
        r
    }

    async fn recover_leased(&self, job_id: &str) -> Result<JobState> {
        let job = self.store().job(job_id)?.context("no such job")?;
        if !job.state.is_recovering() {
            return Ok(job.state);
        }
        let spec = job_spec(&job)?;
        let attempts = self.store().attempts(job_id)?;
        if job.cancel_requested {
            let why = job.reason.clone().unwrap_or_else(|| "cancelled".into());
            self.transition(job_id, JobState::Cancelled, &why, None)?;
            self.release_machines(&job, &attempts, None).await;
            return Ok(JobState::Cancelled);
        }
        let next = attempts.len() as u32 + 1;
        if job.state == JobState::Interrupted {
            let max = spec.project.recovery.max_attempts;
            if next > max {
                let why = format!(
                    "max_attempts ({max}) reached; the last attempt: {}",
                    job.reason.as_deref().unwrap_or("interrupted")
                );
                self.transition(job_id, JobState::Failed, &why, None)?;
                self.release_machines(&job, &attempts, None).await;
                return Ok(JobState::Failed);
            }
            self.transition(
                job_id,
                JobState::Recovering,
                &format!("recovering: attempt {next} of {max}"),
                None,
            )?;
        }
        let previous = attempts
            .last()
            .and_then(|a| self.store().instance(&a.instance_id).ok().flatten());
        let inst = self.replacement(&job, previous.as_ref(), next).await?;
        failpoint("recovery.launch");
        let remote = self.remote_for(&inst).await?;
        if !self.store().begin_recovered_attempt(job_id, &inst.id)? {
            // Another process took this recovery further; it is theirs.
            return self.job_state(job_id);
        }
        self.emit(EngineEvent::JobState {
            job_id: job_id.to_string(),
            state: JobState::Syncing,
            reason: format!("attempt {next}: syncing code to {}", inst.id),
        });
        let restore = if spec.project.checkpoints.is_some() {
            self.newest_good_checkpoint(job_id).await?
        } else {
            None
        };
        if restore.is_none() {
            self.store().add_event(
                "recovery.scratch",
                Some(&inst.id),
                Some(job_id),
                &format!("no checkpoint was shipped: attempt {next} restarts from scratch"),
            )?;
        }
        let job = self.store().job(job_id)?.context("job vanished")?;
        let state = match self
            .sync_and_start(job_id, &spec, &inst, remote.as_ref(), restore.as_ref())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let why = format!("attempt {next} failed to start on {}: {e:#}", inst.id);
                self.transition(job_id, JobState::Failed, &why, None)?;
                let attempts = self.store().attempts(job_id)?;
                self.release_machines(&job, &attempts, None).await;
                return Err(e.context(why));
            }
        };
        // The machines of earlier attempts that the job owns are released now.
        self.release_machines(&job, &attempts, Some(&inst.id)).await;
        Ok(state)
    }

    /// The machine attempt `next` runs on: the one recorded for this recovery if any (a
    /// recovery cut off and resumed), else a new one recorded first, then launched.
    async fn replacement(
        &self,
        job: &JobRecord,
        previous: Option<&InstanceRecord>,
        next: u32,
    ) -> Result<InstanceRecord> {
        let (chosen, ty) = match job.migrate_to.as_deref() {
            Some(t) if t.starts_with("instance:") => (t["instance:".len()..].to_string(), None),
            Some(t) if t.starts_with("type:") => (new_id("i"), Some(&t["type:".len()..])),
            _ => (new_id("i"), None),
        };
        let id = self.store().claim_recovery_instance(&job.id, &chosen)?;
        failpoint("recovery.intent");
        let existing = self.store().instance(&id)?;
        match existing {
            Some(i) if i.state == InstanceState::Running => return Ok(i),
            Some(i) if i.state != InstanceState::Pending => {
                self.store().clear_recovery_instance(&job.id)?;
                bail!(
                    "the replacement {} is {}; another will be chosen",
                    i.id,
                    i.state
                );
            }
            // None: recorded but never launched; Pending: launched, answer unknown. Both
            // launch with the recorded id, which a provider answers idempotently.
            _ => {}
        }
        let prev = previous.context("the job has no earlier machine to replace")?;
        let mut req = replacement_request(prev, ty, &format!("{}-a{next}", job.name));
        if ty.is_none()
            && self
                .provider(&prev.provider)?
                .capabilities()
                .types_are_hosts
        {
            // A host pool: any host that fits, not the one that was lost.
            req.instance_type = None;
        }
        let inst = self
            .launch_as(&prev.provider, &req, &id)
            .await
            .with_context(|| format!("launching the replacement {id}"))?;
        Ok(inst)
    }

    /// Release the job's earlier machines that it owns — launched by a recovery, or any
    /// when the job was to terminate its machine at the end — except `keep` and machines
    /// another live job uses. Failures are recorded, never lost.
    pub(crate) async fn release_machines(
        &self,
        job: &JobRecord,
        attempts: &[AttemptRecord],
        keep: Option<&str>,
    ) {
        let mut ids: Vec<String> = attempts.iter().map(|a| a.instance_id.clone()).collect();
        if let Some(r) = &job.recovery_instance {
            ids.push(r.clone());
        }
        ids.sort();
        ids.dedup();
        let others: Vec<JobRecord> = self
            .store()
            .jobs()
            .unwrap_or_default()
            .into_iter()
            .filter(|j| j.id != job.id && !j.state.is_terminal())
            .collect();
        for id in ids {
            if Some(id.as_str()) == keep {
                continue;
            }
            let Ok(Some(inst)) = self.store().instance(&id) else {
                continue;
            };
            if !inst.state.is_live() {
                continue;
            }
            let owned = job.terminate_on_end
                || self
                    .store()
                    .recovery_launched(&job.id, &id)
                    .unwrap_or(false);
            let shared = others
                .iter()
                .any(|j| j.instance_id.as_deref() == Some(id.as_str()));
            if !owned || shared {
                // Said once per machine.
                if self
                    .store()
                    .has_event("recovery.kept", &job.id, &id)
                    .unwrap_or(false)
                {
                    continue;
                }
                let _ = self.store().add_event(
                    "recovery.kept",
                    Some(&id),
                    Some(&job.id),
                    "the job no longer runs here; the machine is kept (not launched for it)",
                );
                continue;
            }
            let why = format!("job {} moved on or ended", job.id);
            if let Err(e) = Box::pin(self.terminate(&id, &why)).await {
                let _ = self.store().add_event(
                    "instance.error",
                    Some(&id),
                    Some(&job.id),
                    &format!("releasing it failed: {e:#}"),
                );
            }
        }
    }

    /// Recover a job while it is `Interrupted`/`Recovering`, retrying with backoff while
    /// a step fails (a launch refused, a machine not reachable yet); returns the state
    /// once it left recovery.
    pub async fn recover_retrying(&self, job_id: &str) -> Result<JobState> {
        let mut failures = 0u32;
        loop {
            match self.recover(job_id).await {
                Ok(s) if !s.is_recovering() => {
                    return Ok(s);
                }
                Ok(_) => {
                    // Another supervisor holds the recovery: look again shortly.
                    failures = 0;
                    tokio::time::sleep(self.poll_interval()).await;
                }
                Err(e) if crate::remote::is_final(&e) => return Err(e),
                Err(e) => {
                    let state = self.store().job(job_id)?.map(|j| j.state);
                    if !state.is_some_and(JobState::is_recovering) {
                        return state.context("job vanished");
                    }
                    failures += 1;
                    let wait = (500u64 << failures.min(5)).min(15_000);
                    tracing::warn!("job {job_id}: recovery: {e:#}; again in {wait} ms");
                    self.emit(EngineEvent::Notice {
                        job_id: Some(job_id.to_string()),
                        message: format!("recovery: {e:#}"),
                    });
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    /// A job whose machine stayed unreachable past `lost_after_seconds`: lost.
    pub(crate) async fn declare_unreachable(&self, job_id: &str, why: &str) -> Result<JobState> {
        let job = self.store().job(job_id)?.context("no such job")?;
        if !job.state.is_started() {
            return Ok(job.state);
        }
        let Some(att) = self.store().attempts(job_id)?.pop() else {
            return Ok(job.state);
        };
        self.store()
            .finish_attempt(job_id, att.attempt, None, now_ms())?;
        let inst = self.job_instance(&job)?;
        // Its provider cannot vouch for it: it is lost (billing stops; a host pool keeps it
        // out of use until it is terminated, so a replacement goes elsewhere).
        self.store()
            .set_instance_state(&inst.id, InstanceState::Lost, &format!("lost: {why}"))?;
        self.interrupted(&job, att.attempt, RecoverOn::Lost, &format!("lost: {why}"))
    }
}

/// A launch request like `prev` (same provider, type, spot, region), or of type `ty`.
fn replacement_request(prev: &InstanceRecord, ty: Option<&str>, name: &str) -> LaunchRequest {
    // Providers with regions take the option `region`; the others have none recorded.
    let options = prev
        .region
        .iter()
        .map(|r| ("region".to_string(), r.clone()))
        .collect();
    LaunchRequest {
        name: Some(name.to_string()),
        instance_type: Some(ty.unwrap_or(&prev.instance_type).to_string()),
        gpus: if ty.is_some() { None } else { Some(prev.gpus) },
        spot: prev.spot,
        accept_new_host_key: false,
        options,
        ..Default::default()
    }
}
