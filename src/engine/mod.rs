//! The engine: launches and terminates instances, drives jobs through their state machine,
//! follows logs into the store, accounts cost and enforces the budget. Both front ends
//! (the headless CLI and the cockpit) use it, and every step is safe to run from several
//! trainctl processes at once: state lives in the store, log offsets advance by
//! compare-and-swap, and a stop request is honoured by whichever process polls next.
//!
//! A running job is watched by a job actor ([`Engine::spawn_job_actor`]): a task that polls
//! the machine ([`Engine::poll_job`]), pumps new log bytes into the store and a local copy,
//! and broadcasts [`EngineEvent`]s to subscribers.

use crate::config::{Project, ProjectConfig, UserConfig};
use crate::cost;
use crate::job::{self, RemoteStatus, artifacts, sync};
use crate::metrics::{LogParser, complete_prefix_len};
use crate::model::{InstanceState, JobState, MetricPoint, Money, Progress, new_id, now_ms};
use crate::provider::{LaunchRequest, Observed, Provider};
use crate::remote::Remote;
use crate::store::{AttemptRecord, InstanceRecord, JobRecord, LogOffset, Store};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

mod recovery;
pub use recovery::MigrateTarget;

/// Bytes read from a job's log per round trip.
const LOG_CHUNK: usize = 4 << 20;

/// What a job was created from, stored with it so any process can re-attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub project: ProjectConfig,
    pub project_name: String,
    pub root: String,
}

/// What subscribers (the cockpit, `run`) hear about.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    JobState {
        job_id: String,
        state: JobState,
        reason: String,
    },
    /// Complete log lines, sanitised, in order.
    LogLines {
        job_id: String,
        lines: Vec<String>,
    },
    Metrics {
        job_id: String,
        points: Vec<MetricPoint>,
        progress: Progress,
    },
    Instance {
        id: String,
        state: InstanceState,
    },
    Notice {
        job_id: Option<String>,
        message: String,
    },
}

/// Messages to a job actor.
#[derive(Debug)]
pub enum JobCommand {
    Cancel { reason: String },
}

/// A handle on a job actor: cancel it, or await its end.
pub struct JobHandle {
    pub job_id: String,
    commands: mpsc::Sender<JobCommand>,
    pub done: tokio::task::JoinHandle<Result<JobState>>,
}

impl JobHandle {
    pub async fn cancel(&self, reason: &str) {
        let _ = self
            .commands
            .send(JobCommand::Cancel {
                reason: reason.to_string(),
            })
            .await;
    }
}

struct Inner {
    cfg: UserConfig,
    data_dir: PathBuf,
    store: Mutex<Store>,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    events: broadcast::Sender<EngineEvent>,
    /// Where SSH key passphrases are asked (the cockpit fills it).
    prompt: crate::ssh::remote::PromptSlot,
    /// Where shipped checkpoints are kept.
    checkpoints: Arc<dyn crate::job::checkpoint::CheckpointStore>,
    /// When each job's checkpoint directory was last scanned (scans are rate-limited).
    last_ship: Mutex<HashMap<String, std::time::Instant>>,
    /// Jobs a job actor of this process supervises now (one actor per job).
    supervised: Mutex<std::collections::HashSet<String>>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn open(cfg: UserConfig) -> Result<Engine> {
        let data_dir = cfg.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let store = Store::open(&data_dir.join("trainctl.db"))?;
        let prompt: crate::ssh::remote::PromptSlot = Arc::default();
        let providers = crate::provider::registry(&cfg, &data_dir, prompt.clone());
        let (events, _) = broadcast::channel(4096);
        let checkpoints_dir = data_dir.clone();
        Ok(Engine {
            inner: Arc::new(Inner {
                cfg,
                data_dir,
                store: Mutex::new(store),
                providers,
                events,
                prompt,
                checkpoints: Arc::new(crate::job::checkpoint::LocalDirStore::new(&checkpoints_dir)),
                last_ship: Mutex::default(),
                supervised: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &UserConfig {
        &self.inner.cfg
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The store, for short synchronous work. Never hold it across an await.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Route SSH key passphrase questions to `tx` (the cockpit asks the person).
    pub fn set_passphrase_prompter(&self, tx: mpsc::Sender<crate::ssh::remote::PassphraseRequest>) {
        *self.inner.prompt.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, e: EngineEvent) {
        let _ = self.inner.events.send(e);
    }

    pub fn provider(&self, name: &str) -> Result<Arc<dyn Provider>> {
        self.inner.providers.get(name).cloned().ok_or_else(|| {
            anyhow!(
                "unknown provider `{name}` (known: {})",
                self.inner
                    .providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    pub fn provider_names(&self) -> Vec<String> {
        self.inner.providers.keys().cloned().collect()
    }

    /// How attempts run on machines (the detached runner; Slurm's `sbatch` will be chosen
    /// per provider here).
    pub(crate) fn executor(&self) -> &dyn crate::job::executor::Executor {
        &crate::job::executor::DetachedRunner
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.stop_grace_seconds)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.inner.cfg.poll_interval_ms.max(10))
    }

    /// Where the local copy of an attempt's log lives.
    pub fn local_log_path(&self, job_id: &str, attempt: i64) -> PathBuf {
        self.inner
            .data_dir
            .join("logs")
            .join(job_id)
            .join(format!("{attempt}.log"))
    }

    // ------------------------------------------------------------- instances

    /// Launch an instance: check the request, record the intent, then ask the provider.
    pub async fn launch(&self, provider: &str, req: &LaunchRequest) -> Result<InstanceRecord> {
        self.launch_as(provider, req, &new_id("i")).await
    }

    /// [`Engine::launch`] with the id chosen by the caller (a recovery records it first).
    /// An intent row already there (a launch cut off and resumed) is launched again under
    /// the same id, which providers answer idempotently.
    pub(crate) async fn launch_as(
        &self,
        provider: &str,
        req: &LaunchRequest,
        id: &str,
    ) -> Result<InstanceRecord> {
        let p = self.provider(provider)?;
        let plan = p.plan(req).await?;
        let id = id.to_string();
        let rec = InstanceRecord {
            id: id.clone(),
            provider: provider.to_string(),
            name: req.name.clone().unwrap_or_else(|| id.clone()),
            instance_type: plan.instance_type.clone(),
            spot: plan.spot,
            gpus: plan.gpus,
            gpu_info: None,
            state: InstanceState::Pending,
            hourly: plan.hourly,
            created_ms: now_ms(),
            launched_ms: None,
            terminated_ms: None,
            address: None,
            error: None,
            provider_id: None,
            region: None,
            backend: None,
        };
        // Bound first: a guard held by the match's scrutinee would dead-lock the arms.
        let existing = self.store().instance(&id)?;
        match existing {
            None => self.store().insert_instance(&rec)?,
            Some(i) if i.state == InstanceState::Pending => {}
            Some(i) => bail!("instance {id} is already {}", i.state),
        }
        recovery::failpoint("launch.intent");
        let launched = async {
            let l = p.launch(&id, &plan).await?;
            recovery::failpoint("launch.answered");
            // Kept before anything waits on the machine.
            self.store()
                .record_launched(&id, &l, l.launched_ms.unwrap_or_else(now_ms))?;
            let inst = self.store().instance(&id)?.context("instance vanished")?;
            p.reach(&inst).await
        };
        match launched.await {
            Ok(address) => {
                self.store()
                    .mark_instance_running(&id, &address, now_ms())?;
                let inst = self.store().instance(&id)?;
                if let Some(inst) = inst {
                    let info = self.gpu_facts(&inst).await;
                    self.store().set_gpu_info(&id, &info)?;
                }
                self.emit(EngineEvent::Instance {
                    id: id.clone(),
                    state: InstanceState::Running,
                });
            }
            Err(e) => {
                // Only forget it if the provider confirms there is nothing there.
                let observed = p.describe(&rec).await;
                if matches!(observed, Ok(Observed::Gone)) {
                    self.store().set_instance_state(
                        &id,
                        InstanceState::Terminated,
                        &format!("launch failed: {e:#}"),
                    )?;
                } else {
                    self.store()
                        .set_instance_error(&id, Some(&format!("launch failed: {e:#}")))?;
                }
                return Err(e.context(format!("launching {id} on {provider}")));
            }
        }
        self.store()
            .instance(&id)?
            .context("instance vanished from the store")
    }

    /// Terminate an instance: stop trainctl's jobs there, release it, confirm with the
    /// provider, and only then record it terminated.
    pub async fn terminate(&self, key: &str, why: &str) -> Result<InstanceRecord> {
        let inst = self.store().find_instance(key)?;
        if inst.state == InstanceState::Terminated {
            return Ok(inst);
        }
        let p = self.provider(&inst.provider)?;
        self.store()
            .set_instance_state(&inst.id, InstanceState::Terminating, why)?;
        // Jobs still live there end as cancelled, with their logs caught up first.
        let live_jobs: Vec<JobRecord> = self
            .store()
            .jobs()?
            .into_iter()
            .filter(|j| {
                !j.state.is_terminal() && j.instance_id.as_deref() == Some(inst.id.as_str())
            })
            .collect();
        for j in live_jobs {
            self.store()
                .request_cancel(&j.id, &format!("instance {} terminated", inst.id))?;
            if let Err(e) = self.stop_job_now(&j.id).await {
                tracing::warn!("stopping job {} before terminate: {e:#}", j.id);
            }
        }
        p.terminate(&inst)
            .await
            .with_context(|| format!("terminating {}", inst.id))?;
        match p.describe(&inst).await? {
            Observed::Gone => {
                self.store()
                    .set_instance_state(&inst.id, InstanceState::Terminated, why)?;
                self.emit(EngineEvent::Instance {
                    id: inst.id.clone(),
                    state: InstanceState::Terminated,
                });
            }
            other => bail!(
                "{} still reported as {other:?} after terminate; it stays in the store as terminating",
                inst.id
            ),
        }
        self.store()
            .instance(&inst.id)?
            .context("instance vanished")
    }

    pub async fn remote_for(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>> {
        if !inst.state.is_live() {
            bail!("instance {} is {}", inst.id, inst.state);
        }
        self.provider(&inst.provider)?.remote(inst).await
    }

    /// What the machine says about its GPUs: `2x NVIDIA A100-SXM4-80GB (81920 MiB)`,
    /// `no GPU`, or why it could not be asked.
    pub async fn gpu_facts(&self, inst: &InstanceRecord) -> String {
        let script = "if command -v nvidia-smi >/dev/null 2>&1; then \
                      nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -n 64; \
                      else echo 'no GPU'; fi";
        let asked = async {
            let r = self.remote_for(inst).await?;
            r.exec(script).await
        };
        match tokio::time::timeout(Duration::from_secs(15), asked).await {
            Ok(Ok(out)) if out.success() => summarize_gpus(&out.stdout_str()),
            Ok(Ok(out)) => format!(
                "nvidia-smi failed: {}",
                crate::sanitize::sanitize_line(out.stderr.trim_ascii())
            ),
            Ok(Err(e)) => format!("unknown ({e:#})"),
            Err(_) => "unknown (timed out)".into(),
        }
    }

    /// Ids the providers hold that the store does not know (or thinks are gone).
    pub async fn orphans(&self) -> Result<Vec<(String, String)>> {
        let known: HashMap<String, InstanceState> = self
            .store()
            .instances(true)?
            .into_iter()
            .map(|i| (i.id, i.state))
            .collect();
        let mut out = Vec::new();
        for (name, p) in &self.inner.providers {
            for l in p.list().await? {
                match known.get(&l.id) {
                    // A lost machine a host pool still holds is known: `terminate` frees it.
                    Some(s) if s.is_live() || *s == InstanceState::Lost => {}
                    _ => out.push((name.clone(), l.id)),
                }
            }
        }
        Ok(out)
    }

    /// Check live instances with their providers: one the provider no longer has is Lost.
    pub async fn reconcile_instances(&self) -> Result<()> {
        let live = self.store().instances(false)?;
        for inst in live {
            if inst.state == InstanceState::Pending {
                if let Err(e) = self.heal_pending(&inst).await {
                    tracing::warn!("healing the launch of {}: {e:#}", inst.id);
                }
                continue;
            }
            let p = self.provider(&inst.provider)?;
            let observed = p.describe(&inst).await;
            match &observed {
                Ok(Observed::Stopped) if inst.state == InstanceState::Running => {
                    self.store().set_instance_state(
                        &inst.id,
                        InstanceState::Stopped,
                        "the provider reports it stopped",
                    )?;
                }
                Ok(Observed::Running) if inst.state == InstanceState::Stopped => {
                    self.store().set_instance_state(
                        &inst.id,
                        InstanceState::Running,
                        "the provider reports it running again",
                    )?;
                }
                Ok(Observed::Interrupted { reason, .. }) => {
                    self.store().set_instance_state(
                        &inst.id,
                        InstanceState::Preempted,
                        &format!("taken back by the provider: {reason}"),
                    )?;
                }
                _ => {}
            }
            if let Ok(Observed::Gone) = observed {
                let why = if inst.state == InstanceState::Terminating {
                    "provider confirms it is gone"
                } else {
                    "the provider no longer has this machine"
                };
                let to = if inst.state == InstanceState::Terminating {
                    InstanceState::Terminated
                } else {
                    InstanceState::Lost
                };
                self.store().set_instance_state(&inst.id, to, why)?;
            }
        }
        Ok(())
    }

    /// A `Pending` intent whose launching process is gone: ask the provider by trainctl's
    /// id. Held -> its answer is recorded, the machine reached and marked running (billed
    /// from the provider's launch time). Not held -> closed; it never billed.
    async fn heal_pending(&self, inst: &InstanceRecord) -> Result<()> {
        if self.store().launch_pid(&inst.id)?.is_some_and(pid_alive) {
            return Ok(()); // in flight
        }
        let p = self.provider(&inst.provider)?;
        match p.find(&inst.id).await? {
            Some(l) => {
                self.store()
                    .record_launched(&inst.id, &l, l.launched_ms.unwrap_or_else(now_ms))?;
                let address = p.reach(inst).await?;
                self.store()
                    .mark_instance_running(&inst.id, &address, now_ms())?;
                self.store().add_event(
                    "instance.healed",
                    Some(&inst.id),
                    None,
                    "the launch was cut off after the provider answered; found by its id",
                )?;
            }
            None => {
                self.store().set_instance_state(
                    &inst.id,
                    InstanceState::Terminated,
                    "the launch never reached the provider (it holds nothing under this id); closed, $0",
                )?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ jobs

    /// Record a job for `project` on `instance`, in Pending.
    pub fn create_job(
        &self,
        project: &Project,
        instance_id: &str,
        name: Option<&str>,
    ) -> Result<JobRecord> {
        let spec = JobSpec {
            project: project.config.clone(),
            project_name: project.name(),
            root: project.root.to_string_lossy().into_owned(),
        };
        let j = JobRecord {
            name: name.map_or_else(|| project.name(), str::to_string),
            spec_json: serde_json::to_string(&spec)?,
            driver_pid: Some(std::process::id() as i64),
            ..JobRecord::pending(
                &new_id("j"),
                &project.name(),
                &project.root.to_string_lossy(),
                &project.config.command,
                instance_id,
            )
        };
        self.store().insert_job(&j)?;
        Ok(j)
    }

    fn transition(&self, job_id: &str, to: JobState, why: &str, code: Option<i32>) -> Result<()> {
        let from = self.store().transition_job_with(job_id, to, why, code)?;
        if from != to {
            self.emit(EngineEvent::JobState {
                job_id: job_id.to_string(),
                state: to,
                reason: why.to_string(),
            });
        }
        Ok(())
    }

    /// The process starting `job` exited before the job started: nobody will start it. A
    /// first start fails; a recovery (earlier attempts exist) goes back to Interrupted, so
    /// the next supervisor resumes it.
    fn abandoned_start(&self, job: &JobRecord, attempts: usize) -> Result<()> {
        let why = "the trainctl process starting it exited before the job started";
        if attempts > 0 && job.state != JobState::Pending {
            // A recovery cut off while readying its replacement: resume it on the same
            // replacement (it is fine; only the process driving it died).
            if let Some(id) = job.instance_id.as_deref()
                && self
                    .store()
                    .instance(id)?
                    .is_some_and(|i| i.state == InstanceState::Running)
            {
                self.store()
                    .set_migrate_to(&job.id, &format!("instance:{id}"))?;
            }
            self.transition(&job.id, JobState::Interrupted, why, None)
        } else {
            self.transition(&job.id, JobState::Failed, why, None)
        }
    }

    fn job_instance(&self, job: &JobRecord) -> Result<InstanceRecord> {
        let id = job.instance_id.as_deref().context("job has no instance")?;
        self.store()
            .instance(id)?
            .context("job's instance is not in the store")
    }

    /// Sync the job's code, start it detached, and leave it Running. Honours a cancel
    /// request at every step. Returns the state the job is in afterwards.
    pub async fn start_job(&self, job_id: &str) -> Result<JobState> {
        match self.start_job_inner(job_id).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let state = self.store().job(job_id)?.map(|j| j.state);
                if state.is_some_and(|s| !s.is_terminal()) {
                    self.transition(
                        job_id,
                        JobState::Failed,
                        &format!("start failed: {e:#}"),
                        None,
                    )?;
                }
                Err(e)
            }
        }
    }

    fn cancelled_before_start(&self, job_id: &str) -> Result<bool> {
        let job = self.store().job(job_id)?.context("job vanished")?;
        if job.cancel_requested {
            let why = job.reason.clone().unwrap_or_else(|| "cancelled".into());
            self.transition(job_id, JobState::Cancelled, &why, None)?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn start_job_inner(&self, job_id: &str) -> Result<JobState> {
        let job = self.store().job(job_id)?.context("no such job")?;
        if job.state != JobState::Pending {
            return Ok(job.state);
        }
        let spec: JobSpec = serde_json::from_str(&job.spec_json).context("reading the job spec")?;
        let inst = self.job_instance(&job)?;
        let remote = self.remote_for(&inst).await?;
        if self.cancelled_before_start(job_id)? {
            return Ok(JobState::Cancelled);
        }
        // Only one process may take a job out of Pending: the move is checked in the store.
        let from = self
            .store()
            .transition_job(job_id, JobState::Syncing, "syncing code")?;
        if from != JobState::Pending {
            // Another process took it first; it is theirs to start.
            return Ok(from);
        }
        self.emit(EngineEvent::JobState {
            job_id: job_id.to_string(),
            state: JobState::Syncing,
            reason: "syncing code".into(),
        });
        self.sync_and_start(job_id, &spec, &inst, remote.as_ref(), None)
            .await
    }

    /// From Syncing: sync the code to `inst`, restore `restore` (a shipped checkpoint) when
    /// given, and start the next attempt detached. Honours a cancel request between steps.
    async fn sync_and_start(
        &self,
        job_id: &str,
        spec: &JobSpec,
        inst: &InstanceRecord,
        remote: &dyn Remote,
        restore: Option<&recovery::Restore>,
    ) -> Result<JobState> {
        let (uploaded, bytes, deleted) = self.sync_code(remote, &inst.id, spec).await?;
        self.store().add_event(
            "sync.done",
            Some(&inst.id),
            Some(job_id),
            &format!("{uploaded} files ({bytes} bytes) copied, {deleted} deleted"),
        )?;
        if restore.is_some() {
            recovery::failpoint("recovery.sync");
        }
        if self.cancelled_before_start(job_id)? {
            return Ok(JobState::Cancelled);
        }
        self.transition(job_id, JobState::Starting, "starting the runner", None)?;
        let attempt = self.store().attempts(job_id)?.len() as i64 + 1;
        let root = remote.root().to_string();
        let jd = job::job_dir(&root, job_id, attempt);
        let code = sync::code_dir(&root, &spec.project_name);
        let workdir = match spec.project.workdir.as_deref() {
            None | Some(".") => code.clone(),
            Some(w) => format!("{code}/{w}"),
        };
        self.store().add_attempt(&AttemptRecord {
            job_id: job_id.to_string(),
            attempt,
            instance_id: inst.id.clone(),
            remote_dir: jd.clone(),
            workdir: workdir.clone(),
            started_ms: now_ms(),
            ended_ms: None,
            exit_code: None,
        })?;
        let mut env = BTreeMap::new();
        env.insert("PYTHONUNBUFFERED".to_string(), "1".to_string());
        env.insert("TRAINCTL_JOB_ID".to_string(), job_id.to_string());
        env.insert("TRAINCTL_ATTEMPT".to_string(), attempt.to_string());
        if let Some(ck) = &spec.project.checkpoints {
            let dir = format!("{workdir}/{ck}");
            if let Some(c) = restore {
                let at = self.restore_checkpoint(job_id, remote, &dir, c).await?;
                recovery::failpoint("recovery.restore");
                env.insert("TRAINCTL_RESUME_FROM".to_string(), at);
            }
            env.insert("TRAINCTL_CHECKPOINT_DIR".to_string(), dir);
        }
        env.extend(spec.project.env.clone());
        let script = job::command_script(&spec.project.command, &env);
        let pid = self
            .executor()
            .start(remote, &jd, &workdir, &script, self.grace())
            .await?;
        if restore.is_some() {
            recovery::failpoint("recovery.start");
        }
        self.transition(
            job_id,
            JobState::Running,
            &format!("attempt {attempt} running as process group {pid} in {workdir}"),
            None,
        )?;
        Ok(JobState::Running)
    }

    /// Where the manifest last written to `instance` for `project` is remembered locally.
    fn sync_cache(&self, instance: &str, project: &str) -> PathBuf {
        self.inner
            .data_dir
            .join("sync-cache")
            .join(instance)
            .join(format!("{project}.json"))
    }

    async fn sync_code(
        &self,
        remote: &dyn Remote,
        instance: &str,
        spec: &JobSpec,
    ) -> Result<(usize, u64, usize)> {
        let plan = self
            .sync_tree(
                remote,
                instance,
                &spec.project_name,
                Path::new(&spec.root),
                &spec.project.sync.exclude,
                false,
            )
            .await?;
        Ok((
            plan.upload.len() + plan.links.len(),
            plan.upload_bytes,
            plan.delete.len(),
        ))
    }

    /// A sync plan for `project` on `instance` (for `trainctl sync`), applied unless `dry_run`.
    pub async fn sync_project(
        &self,
        project: &Project,
        instance_key: &str,
        dry_run: bool,
    ) -> Result<sync::SyncPlan> {
        let inst = self.store().find_instance(instance_key)?;
        let remote = self.remote_for(&inst).await?;
        self.sync_tree(
            remote.as_ref(),
            &inst.id,
            &project.name(),
            &project.root,
            &project.config.sync.exclude,
            dry_run,
        )
        .await
    }

    /// Plan the sync of `root` as `project` on `instance` (from the manifest on the machine,
    /// with the local cache of it) and apply it unless `dry_run`. A sync cut short by a lost
    /// connection is planned again from what the machine's manifest then says: files
    /// already in place are not sent twice, half-written ones are.
    async fn sync_tree(
        &self,
        remote: &dyn Remote,
        instance: &str,
        project: &str,
        root: &Path,
        excludes: &[String],
        dry_run: bool,
    ) -> Result<sync::SyncPlan> {
        let cache = self.sync_cache(instance, project);
        crate::remote::retry_lost(4, "code sync", async || {
            let plan = sync::prepare_with(remote, project, root, excludes, Some(&cache)).await?;
            if !dry_run {
                sync::apply_with(remote, project, root, &plan, Some(&cache)).await?;
            }
            Ok(plan)
        })
        .await
    }

    /// Read every new byte of an attempt's log into the store and the local copy: one
    /// streamed read (one round trip), committed in pieces of complete lines as they
    /// arrive, so memory stays bounded whatever the backlog. With `final_read`, a last line
    /// without a newline is taken too (the job has ended). Returns the bytes consumed.
    async fn pump_log(
        &self,
        remote: &dyn Remote,
        att: &AttemptRecord,
        final_read: bool,
    ) -> Result<usize> {
        let start = self.store().log_offset(&att.job_id, att.attempt)?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(32);
        let path = job::log_path(&att.remote_dir);
        let reader = remote.stream_file(&path, start.byte_offset, tx);
        let consume = async {
            let mut cur = start.clone();
            let mut pending: Vec<u8> = Vec::new();
            let mut total = 0usize;
            let mut open = true;
            while open {
                match rx.recv().await {
                    Some(chunk) => pending.extend_from_slice(&chunk),
                    None => open = false,
                }
                // Take whatever else already arrived, up to a piece's size.
                while pending.len() < LOG_CHUNK {
                    match rx.try_recv() {
                        Ok(c) => pending.extend_from_slice(&c),
                        Err(_) => break,
                    }
                }
                let mut take = complete_prefix_len(&pending);
                if (!open && final_read) || (take == 0 && pending.len() >= LOG_CHUNK) {
                    take = pending.len();
                }
                if take == 0 {
                    continue;
                }
                match self.commit_log_piece(att, &cur, &pending[..take]).await? {
                    Some(next) => {
                        cur = next;
                        total += take;
                        pending.drain(..take);
                    }
                    // Another process advanced this log first: it owns these bytes.
                    None => break,
                }
            }
            Ok::<usize, anyhow::Error>(total)
        };
        let (read, consumed) = tokio::join!(reader, consume);
        read?;
        consumed
    }

    /// Parse `chunk` (which starts at `old`), write it to the local copy at its offset, and
    /// advance the stored offset by compare-and-swap. `None` when another process won.
    async fn commit_log_piece(
        &self,
        att: &AttemptRecord,
        old: &LogOffset,
        chunk: &[u8],
    ) -> Result<Option<LogOffset>> {
        let mut parser = LogParser::resume(old.line, old.progress);
        let mut points = Vec::new();
        parser.feed_complete(chunk, &mut |p| points.push(p.to_owned_point()));
        let progress = parser.progress();
        let new = LogOffset {
            byte_offset: old.byte_offset + chunk.len() as u64,
            line: parser.line(),
            progress,
            progress_ms: if progress != old.progress {
                Some(now_ms())
            } else {
                old.progress_ms
            },
        };
        // The local copy is written at the remote offset, so a retry rewrites the same bytes.
        let local = self.local_log_path(&att.job_id, att.attempt);
        let data = chunk.to_vec();
        let at = old.byte_offset;
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::os::unix::fs::FileExt;
            if let Some(dir) = local.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&local)?;
            f.write_all_at(&data, at)?;
            Ok(())
        })
        .await??;
        if !self
            .store()
            .commit_log_chunk(&att.job_id, att.attempt, old, &new, &points)?
        {
            return Ok(None);
        }
        let lines = display_lines(chunk);
        if !lines.is_empty() {
            self.emit(EngineEvent::LogLines {
                job_id: att.job_id.clone(),
                lines,
            });
        }
        if !points.is_empty() || progress != old.progress {
            self.emit(EngineEvent::Metrics {
                job_id: att.job_id.clone(),
                points,
                progress,
            });
        }
        Ok(Some(new))
    }

    /// Send SIGTERM once, SIGKILL after the grace; all state in the store.
    async fn enforce_stop(
        &self,
        job: &JobRecord,
        remote: &dyn Remote,
        att: &AttemptRecord,
    ) -> Result<()> {
        match job.stop_sent_ms {
            None => {
                if self.store().mark_stop_sent(&job.id)? {
                    self.executor()
                        .signal(remote, &att.remote_dir, "TERM")
                        .await?;
                }
            }
            Some(t) if now_ms() - t >= self.grace().as_millis() as i64 => {
                self.executor()
                    .signal(remote, &att.remote_dir, "KILL")
                    .await?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Stop a job now (SIGTERM, grace, SIGKILL) and record its end.
    async fn stop_job_now(&self, job_id: &str) -> Result<JobState> {
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
        self.executor()
            .stop(remote.as_ref(), &att.remote_dir, self.grace())
            .await?;
        self.poll_job(job_id).await
    }

    fn check_budget(&self, job: &JobRecord) -> Result<Option<String>> {
        let budget = &self.inner.cfg.budget;
        let (per_job, per_day) = (budget.per_job(), budget.per_day());
        if per_job.is_none() && per_day.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let store = self.store();
        let instances = store.instances(true)?;
        if let Some(limit) = per_job {
            let by_id: HashMap<&str, &InstanceRecord> =
                instances.iter().map(|i| (i.id.as_str(), i)).collect();
            let spent = cost::job_cost(&store.attempts(&job.id)?, &by_id, now);
            if spent > limit {
                return Ok(Some(format!(
                    "budget: job cost {spent} passed the per-job budget {limit}"
                )));
            }
        }
        if let Some(limit) = per_day {
            let today = cost::per_day(&instances, now)
                .get(&cost::utc_date(now))
                .copied()
                .unwrap_or(Money::ZERO);
            if today > limit {
                return Ok(Some(format!(
                    "budget: today's spend {today} passed the per-day budget {limit}"
                )));
            }
        }
        Ok(None)
    }

    /// One step of a job's life, safe from any process: honour a stop request, pump the
    /// log, read the machine's status, finish the job when it ended, check the budget.
    /// Returns the job's state afterwards.
    pub async fn poll_job(&self, job_id: &str) -> Result<JobState> {
        let job = self.store().job(job_id)?.context("no such job")?;
        if job.state.is_terminal() {
            return Ok(job.state);
        }
        // Recovery (a new machine, the checkpoint back, the next attempt) is the
        // supervisor's: see `Engine::recover`.
        if matches!(job.state, JobState::Interrupted | JobState::Recovering) {
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
                return Ok(self
                    .store()
                    .job(job_id)?
                    .map_or(JobState::Lost, |j| j.state));
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
                if matches!(provider.describe(&inst).await, Ok(Observed::Gone)) {
                    return self
                        .job_lost(&job, &inst, &att, "its machine is gone")
                        .await;
                }
                self.store()
                    .set_instance_error(&inst.id, Some(&format!("unreachable: {e:#}")))?;
                return Err(e.context(format!("reaching {} for job {job_id}", inst.id)));
            }
        };
        if job.cancel_requested {
            self.enforce_stop(&job, remote.as_ref(), &att).await?;
        }
        // Pump before reading the status, then drain after: nothing written before the
        // exit is missed.
        self.pump_log(remote.as_ref(), &att, false).await?;
        let status = self
            .executor()
            .status(remote.as_ref(), &att.remote_dir)
            .await?;
        match status {
            RemoteStatus::Running { .. } => {
                if job.state == JobState::Starting {
                    self.transition(job_id, JobState::Running, "running (re-attached)", None)?;
                    // A recovery whose driver died after the start: its earlier machines
                    // were not released yet.
                    if attempts.len() > 1 {
                        Box::pin(self.release_machines(&job, &attempts, Some(&att.instance_id)))
                            .await;
                    }
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
                Ok(JobState::Running)
            }
            RemoteStatus::Starting => Ok(job.state),
            RemoteStatus::Exited {
                code,
                interrupted: Some(notice),
                ..
            } if code != 0 && !job.cancel_requested => {
                self.pump_log(remote.as_ref(), &att, true).await?;
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
            RemoteStatus::Exited { code, .. } => {
                self.pump_log(remote.as_ref(), &att, true).await?;
                self.finish(&job, &att, Some(code)).await
            }
            RemoteStatus::Vanished => {
                // The runner died without recording an exit: the machine rebooted, or its
                // processes were killed. That is a lost machine, not a failed job.
                self.pump_log(remote.as_ref(), &att, true).await?;
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
                Ok(self
                    .store()
                    .job(job_id)?
                    .map_or(JobState::Lost, |j| j.state))
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

    async fn job_lost(
        &self,
        job: &JobRecord,
        inst: &InstanceRecord,
        att: &AttemptRecord,
        why: &str,
    ) -> Result<JobState> {
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

    async fn finish(
        &self,
        job: &JobRecord,
        att: &AttemptRecord,
        code: Option<i32>,
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
                Some(c) => (JobState::Failed, format!("exited with status {c}")),
                None => (
                    JobState::Failed,
                    "the runner died without recording an exit status".to_string(),
                ),
            }
        };
        self.transition(&job.id, state, &why, code)?;
        if job.terminate_on_end
            && let Some(inst_id) = job.instance_id.as_deref()
        {
            // Keep what the job produced before the machine goes.
            let pulled = if job.pull_on_end {
                self.pull(&job.id, None).await.map(|_| ())
            } else {
                Ok(())
            };
            if let Err(e) = pulled {
                self.store().add_event(
                    "artifact.error",
                    Some(inst_id),
                    Some(&job.id),
                    &format!("{e:#}"),
                )?;
            }
            // Boxed: terminate stops live jobs, which polls them, which may finish them.
            Box::pin(self.terminate(inst_id, &why)).await?;
        }
        // Machines of earlier attempts that the job owns and that are still up (the
        // last one stays unless the job was to terminate it: its files may be wanted).
        let attempts = self.store().attempts(&job.id)?;
        if attempts.len() > 1 {
            Box::pin(self.release_machines(&job, &attempts, job.instance_id.as_deref())).await;
        }
        Ok(state)
    }

    /// Poll every job that is not finished (re-attach after a restart). Errors on one job
    /// are recorded and do not stop the others.
    pub async fn reconcile_jobs(&self) -> Result<()> {
        let live: Vec<String> = self
            .store()
            .jobs()?
            .into_iter()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id)
            .collect();
        for id in live {
            if let Err(e) = self.poll_job(&id).await {
                tracing::warn!("re-attaching to job {id}: {e:#}");
            }
        }
        Ok(())
    }

    /// Follow a job until it ends, calling `on_tick` after every poll.
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
    async fn provider_vouches_running(&self, job: &JobRecord) -> bool {
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
        if matches!(state, JobState::Interrupted | JobState::Recovering) {
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

    /// Supervise every live job of the store not supervised here yet; the new actors.
    pub fn supervise_live(&self) -> Result<Vec<JobHandle>> {
        let live: Vec<String> = self
            .store()
            .jobs()?
            .into_iter()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id)
            .collect();
        Ok(live
            .iter()
            .filter_map(|id| self.supervise(id, false))
            .collect())
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

    /// The cost report as of now.
    pub fn cost_report(&self) -> Result<cost::CostReport> {
        let store = self.store();
        let instances = store.instances(true)?;
        let jobs = store.jobs()?;
        let attempts = store.all_attempts()?;
        let mut offsets = HashMap::new();
        for j in &jobs {
            if let Some(a) = attempts.iter().rev().find(|a| a.job_id == j.id) {
                offsets.insert(j.id.clone(), store.log_offset(&j.id, a.attempt)?);
            }
        }
        Ok(cost::report(
            &instances,
            &jobs,
            &attempts,
            &offsets,
            now_ms(),
        ))
    }

    /// Display lines of a job's stored log from (attempt, byte offset) up to what is
    /// committed, every attempt in order: complete lines only in the live attempt, all of
    /// it once the job ended. Returns where the next read starts (attempt, offset).
    pub fn log_lines_since(
        &self,
        job_id: &str,
        attempt: i64,
        from: u64,
    ) -> Result<(i64, u64, Vec<String>)> {
        let attempts = self.store().attempts(job_id)?;
        let ended = self
            .store()
            .job(job_id)?
            .is_some_and(|j| j.state.is_terminal());
        let mut lines = Vec::new();
        let (mut at, mut end) = (attempt, from);
        for a in attempts.iter().filter(|a| a.attempt >= attempt) {
            if a.attempt > at {
                at = a.attempt;
                end = 0;
                // One marker line between attempts: the log goes on across machines.
                if a.attempt > 1 {
                    lines.push(format!(
                        "── trainctl: attempt {} on {} ──",
                        a.attempt, a.instance_id
                    ));
                }
            }
            let off = self.store().log_offset(job_id, a.attempt)?;
            let bytes = self.read_local_log(job_id, a.attempt, end, off.byte_offset)?;
            let live = !ended && Some(a.attempt) == attempts.last().map(|l| l.attempt);
            let take = if live {
                bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1)
            } else {
                bytes.len()
            };
            lines.extend(display_lines(&bytes[..take]));
            end += take as u64;
        }
        Ok((at, end, lines))
    }

    /// The stored log of a job (all attempts), raw bytes up to what was committed.
    pub fn stored_log(&self, job_id: &str) -> Result<Vec<u8>> {
        let attempts = self.store().attempts(job_id)?;
        let mut out = Vec::new();
        for a in attempts {
            let off = self.store().log_offset(job_id, a.attempt)?;
            out.extend(self.read_local_log(job_id, a.attempt, 0, off.byte_offset)?);
        }
        Ok(out)
    }

    /// Bytes `[from, to)` of an attempt's local log copy.
    pub fn read_local_log(
        &self,
        job_id: &str,
        attempt: i64,
        from: u64,
        to: u64,
    ) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        if to <= from {
            return Ok(Vec::new());
        }
        let path = self.local_log_path(job_id, attempt);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; (to - from) as usize];
        let mut got = 0;
        while got < buf.len() {
            let n = f.read_at(&mut buf[got..], from + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }
}

/// `2x NVIDIA A100 (81920 MiB), 1x T4 (15360 MiB)` from nvidia-smi CSV lines.
pub fn summarize_gpus(csv: &str) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in csv
        .lines()
        .map(|l| crate::sanitize::sanitize_line(l.as_bytes()))
    {
        let line = line.trim().to_string();
        if line.is_empty() {
            continue;
        }
        if line == "no GPU" {
            return line;
        }
        let desc = match line.split_once(',') {
            Some((name, mem)) => format!("{} ({})", name.trim(), mem.trim()),
            None => line,
        };
        match counts.iter_mut().find(|(d, _)| *d == desc) {
            Some((_, n)) => *n += 1,
            None => counts.push((desc, 1)),
        }
    }
    if counts.is_empty() {
        return "no GPU".into();
    }
    counts
        .iter()
        .map(|(d, n)| format!("{n}x {d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lines as a terminal would show them: split on `\n`, a `\r` rewrite keeps only its last
/// non-empty part, control sequences stripped.
pub fn display_lines(chunk: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    if body.is_empty() && chunk.len() <= 1 {
        return out;
    }
    for line in body.split(|&b| b == b'\n') {
        let seg = line
            .split(|&b| b == b'\r')
            .rfind(|s| !s.iter().all(u8::is_ascii_whitespace))
            .unwrap_or(b"");
        out.push(crate::sanitize::sanitize_line(seg));
    }
    out
}

/// Whether a process with this pid exists on this machine.
pub fn pid_alive(pid: i64) -> bool {
    if pid <= 0 || pid > i32::MAX as i64 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_summary() {
        assert_eq!(
            summarize_gpus(
                "NVIDIA A100-SXM4-80GB, 81920 MiB\nNVIDIA A100-SXM4-80GB, 81920 MiB\nTesla T4, 15360 MiB\n"
            ),
            "2x NVIDIA A100-SXM4-80GB (81920 MiB), 1x Tesla T4 (15360 MiB)"
        );
        assert_eq!(summarize_gpus("no GPU\n"), "no GPU");
        assert_eq!(summarize_gpus("\x1b[31mX\x1b[0m, 1 MiB"), "1x X (1 MiB)");
    }

    #[test]
    fn display_lines_shows_what_a_terminal_shows() {
        assert_eq!(display_lines(b"a\nb\n"), vec!["a", "b"]);
        assert_eq!(display_lines(b" 10%\r 50%\r100% done\n"), vec!["100% done"]);
        assert_eq!(display_lines(b"\x1b[31merr\x1b[0m\n"), vec!["err"]);
        assert!(display_lines(b"\n").len() <= 1);
    }

    /// The attempt row is written before the job's directory exists on the machine; a
    /// second process polling in between must not call the job lost.
    #[tokio::test]
    async fn a_starting_job_without_its_directory_yet_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = UserConfig {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        };
        let engine = Engine::open(cfg).unwrap();
        let inst = engine
            .launch("local", &LaunchRequest::default())
            .await
            .unwrap();
        let starting = |id: &str, driver: i64| {
            let j = JobRecord {
                driver_pid: Some(driver),
                ..JobRecord::pending(id, "t", "/nowhere", "true", &inst.id)
            };
            let mut st = engine.store();
            st.insert_job(&j).unwrap();
            st.transition_job(id, JobState::Syncing, "t").unwrap();
            st.transition_job(id, JobState::Starting, "t").unwrap();
            st.add_attempt(&AttemptRecord {
                job_id: id.into(),
                attempt: 1,
                instance_id: inst.id.clone(),
                remote_dir: dir.path().join("not-yet").to_string_lossy().into_owned(),
                workdir: "/nowhere".into(),
                started_ms: now_ms(),
                ended_ms: None,
                exit_code: None,
            })
            .unwrap();
        };
        // Its starter is alive (this process): still starting.
        starting("j-alive", std::process::id() as i64);
        assert_eq!(
            engine.poll_job("j-alive").await.unwrap(),
            JobState::Starting
        );
        // Its starter is gone: it failed to start; it was never lost on the machine.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let pid = dead.id() as i64;
        dead.wait().unwrap();
        starting("j-orphan", pid);
        assert_eq!(engine.poll_job("j-orphan").await.unwrap(), JobState::Failed);
        engine.terminate(&inst.id, "test over").await.unwrap();
    }
}
