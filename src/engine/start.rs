//! Starting a job: create it, take it out of Pending, sync its code, restore a checkpoint when resuming, start the attempt through the executor.

use super::*;

impl Engine {
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

    pub(super) fn cancelled_before_start(&self, job_id: &str) -> Result<bool> {
        let job = self.store().job(job_id)?.context("job vanished")?;
        if job.cancel_requested {
            let why = job.reason.clone().unwrap_or_else(|| "cancelled".into());
            self.transition(job_id, JobState::Cancelled, &why, None)?;
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) async fn start_job_inner(&self, job_id: &str) -> Result<JobState> {
        let job = self.store().job(job_id)?.context("no such job")?;
        if job.state != JobState::Pending {
            return Ok(job.state);
        }
        let spec: JobSpec = serde_json::from_str(&job.spec_json).context("reading the job spec")?;
        let inst = self.job_instance(&job)?;
        // A checkpoint store the job cannot write to is said now, not at the first
        // checkpoint (or at an interruption, when it is too late).
        if spec.project.checkpoints.is_some() {
            self.checkpoint_store_for(&job)?
                .check(job_id)
                .await
                .context("the checkpoint store")?;
        }
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
    pub(super) async fn sync_and_start(
        &self,
        job_id: &str,
        spec: &JobSpec,
        inst: &InstanceRecord,
        remote: &dyn Remote,
        restore: Option<&recovery::Restore>,
    ) -> Result<JobState> {
        // A machine without the GPUs the job asks for is refused before anything is sent.
        let res = &spec.project.resources;
        let visible = crate::remote::retry_lost(4, "checking the machine's GPUs", || {
            job::gpu::check(remote, res.gpus, res.gpu_memory_gib)
        })
        .await
        .with_context(|| format!("{} cannot run this job", inst.id))?;
        // A job in a container: Docker must answer there (with an NVIDIA runtime when it
        // asks for GPUs), before anything is sent.
        if spec.project.in_container() {
            crate::remote::retry_lost(4, "asking the machine's Docker", || {
                job::container::check(remote, spec.project.docker.host.as_deref(), res.gpus)
            })
            .await
            .with_context(|| format!("{} cannot run this job", inst.id))?;
        }
        let (uploaded, bytes, deleted) = self.sync_code(remote, &inst.id, spec).await?;
        self.store().add_event(
            "sync.done",
            Some(&inst.id),
            Some(job_id),
            &format!("{uploaded} files ({bytes} bytes) copied, {deleted} deleted"),
        )?;
        if self.cancelled_before_start(job_id)? {
            return Ok(JobState::Cancelled);
        }
        let data_dir = self.place_data(Some(job_id), remote, inst, spec).await?;
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
        // Its GPUs: the machine's, or on a cluster what each of its nodes asks for. A
        // cluster counts GPU time from when its scheduler says the job runs.
        let billed_per_job = self
            .provider(&inst.provider)
            .ok()
            .and_then(|p| p.gpu_hour_price(inst));
        let started_ms = now_ms();
        let res = &spec.project.resources;
        self.store().add_attempt(&AttemptRecord {
            job_id: job_id.to_string(),
            attempt,
            instance_id: inst.id.clone(),
            remote_dir: jd.clone(),
            workdir: workdir.clone(),
            started_ms,
            ended_ms: None,
            exit_code: None,
            gpus: match billed_per_job {
                Some(_) => res.gpus.unwrap_or(inst.gpus) * res.nodes.unwrap_or(1).max(1),
                None => inst.gpus,
            },
            running_ms: billed_per_job.is_none().then_some(started_ms),
            gpu_hour_micros: billed_per_job.map_or(0, |m| m.0),
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
        // A store the machine can reach itself (S3) gets what the machine's watcher needs
        // to put the newest checkpoint and the log's tail there on a notice when no
        // trainctl watches.
        if let Some(vars) = self
            .checkpoint_store_of(Some(&inst.provider))
            .rescue_env(job_id, inst)
        {
            let mut text = String::new();
            if let Some(dir) = env.get("TRAINCTL_CHECKPOINT_DIR") {
                text.push_str(&format!(
                    "TRAINCTL_RESCUE_DIR={}\n",
                    crate::remote::sh_quote(dir)
                ));
            }
            text.push_str(&format!(
                "TRAINCTL_RESCUE_LOG={}\n",
                crate::remote::sh_quote(&crate::job::checkpoint::rescued_log_name(attempt))
            ));
            for (k, v) in vars {
                text.push_str(&format!("export {k}={}\n", crate::remote::sh_quote(&v)));
            }
            remote
                .write_file(&format!("{jd}/rescue.env"), text.as_bytes(), 0o600)
                .await
                .context("writing the rescue settings")?;
        }
        if let Some(v) = visible {
            env.insert("CUDA_VISIBLE_DEVICES".to_string(), v);
        }
        if let Some(d) = data_dir {
            env.insert("TRAINCTL_DATA_DIR".to_string(), d);
        }
        env.extend(spec.project.env.clone());
        // The job's image: named, or built from its Dockerfile on the machine (as the
        // first part of its setup, so its output is the log's and the job says "setting
        // up" meanwhile), once per content: a machine that has it builds nothing.
        let docker = &spec.project.docker;
        let (image, build) = self.job_image(job_id, spec, inst, remote, &code).await?;
        // The project's setup (after the image's build): the runner runs it first unless
        // this machine ran the same one (its hash) already.
        let setup_text = match (&build, &spec.project.setup) {
            (None, None) => None,
            (b, s) => Some(format!(
                "{}{}",
                b.clone().unwrap_or_default(),
                s.as_ref().map(|s| s.script()).unwrap_or_default()
            )),
        };
        if let Some(text) = &setup_text {
            let hash = job::setup::setup_hash(
                Path::new(&spec.root),
                text,
                &workdir,
                &spec.project.setup_inputs,
            )?;
            if build.is_some() {
                // The image is not on the machine (pruned, or never built here): the
                // machine's record of having run this setup must not skip its build.
                let forget = format!(
                    "rm -f {}",
                    crate::remote::sh_quote(&format!("{root}/setup/{hash}.done"))
                );
                crate::remote::retry_lost(4, "forgetting a setup whose image is gone", || {
                    remote.exec(&forget)
                })
                .await?;
            }
            let body = job::setup::setup_script(&hash, text, &env);
            let path = format!("{jd}/setup.sh");
            crate::remote::retry_lost(4, "uploading the setup", || {
                remote.write_file(&path, body.as_bytes(), 0o644)
            })
            .await?;
        }
        // The runner reads its settings from the script's head: the machine samples its
        // GPUs this often while the job runs (when it has nvidia-smi).
        // A scheduler's executor reads the attempt's shape there too (Slurm: nodes and
        // tasks per node); a machine of ours runs one task.
        let r = &spec.project.resources;
        let executor = self.executor(inst);
        if (r.nodes.unwrap_or(1) > 1 || r.tasks_per_node.unwrap_or(1) > 1)
            && executor.name() != "sbatch"
        {
            anyhow::bail!(
                "resources.nodes / tasks_per_node ask for several ranks: that takes a scheduler \
                 that places them (the slurm provider); {} runs one task",
                inst.provider
            );
        }
        // And what the job asks a scheduler for (`[slurm]`, the GPUs per node), checked
        // when the project was read (no newline can end the head early).
        let mut asks = String::new();
        if let Some(g) = r.gpus {
            asks.push_str(&format!("# gpus={g}\n"));
        }
        for (k, v) in spec.project.slurm.pairs() {
            asks.push_str(&format!("# slurm.{k}={v}\n"));
        }
        // In a container: the command runs there (see `job::container`).
        if let Some(image) = &image {
            // `ls` tells what the jobs' images take on the machine; `images --prune` frees it.
            if let Err(e) = job::container::note_image(remote, docker.host.as_deref(), image).await
            {
                tracing::warn!("{}: noting image {image}: {e:#}", inst.id);
            }
        }
        let command = match &image {
            Some(image) => job::container::script(
                &job::container::Container {
                    image: image.clone(),
                    name: format!("trainctl-{}", jd.rsplit('/').next().unwrap_or(job_id)),
                    job_id: job_id.to_string(),
                    attempt,
                    mount: root.clone(),
                    workdir: workdir.clone(),
                    host: spec.project.docker.host.clone(),
                    gpus: r.gpus,
                    shm_size: spec.project.docker.shm_size.clone(),
                    job_dir: jd.clone(),
                    volumes: spec.project.docker.volumes.clone(),
                    // An image trainctl built here is never looked for on Docker Hub.
                    pull_never: spec.project.docker.dockerfile.is_some()
                        && spec.project.docker.registry.is_none(),
                },
                &spec.project.command,
                &env,
            ),
            None => job::command_script(&spec.project.command, &env),
        };
        let script = format!(
            "# gpu_every={}\n# nodes={}\n# tasks_per_node={}\n{asks}{command}",
            self.inner.cfg.gpu_sample_seconds,
            r.nodes.unwrap_or(1).max(1),
            r.tasks_per_node.unwrap_or(1).max(1),
        );
        let pid = executor
            .start(remote, &jd, &workdir, &script, self.grace())
            .await?;
        if restore.is_some() {
            recovery::failpoint("recovery.start");
        }
        if let Ok(p) = self.provider(&inst.provider)
            && let Err(e) = p.label_job(inst, job_id).await
        {
            tracing::warn!("labelling {} with job {job_id}: {e:#}", inst.id);
        }
        // With a setup, the runner says whether it runs it (or this machine had it).
        let setting_up = setup_text.is_some()
            && matches!(
                executor.status(remote, &jd).await,
                Ok(job::RemoteStatus::SettingUp { .. })
            );
        let state = if setting_up {
            JobState::SettingUp
        } else {
            JobState::Running
        };
        let doing = if setting_up { "setting up" } else { "running" };
        let what = match pid.split_once(':') {
            // A scheduler's handle (`slurm:123`): submitted; it may wait in the queue.
            Some((sched, id)) => {
                format!("attempt {attempt} submitted as {sched} job {id} to run in {workdir}")
            }
            None => format!("attempt {attempt} {doing} as process group {pid} in {workdir}"),
        };
        self.transition(job_id, state, &what, None)?;
        Ok(state)
    }

    /// The job's image and, when it must be made on the machine, the setup text that makes
    /// it: a named image as is; a Dockerfile's `trainctl/<project>:<hash>` (or its
    /// registry's name): on the machine already (nothing to do), in its registry (pulled),
    /// built here and pushed (`build = "local"`, then pulled), or built there. Each way is
    /// said in an event.
    async fn job_image(
        &self,
        job_id: &str,
        spec: &JobSpec,
        inst: &InstanceRecord,
        remote: &dyn Remote,
        code: &str,
    ) -> Result<(Option<String>, Option<String>)> {
        let docker = &spec.project.docker;
        Ok(match (&spec.project.image, &docker.dockerfile) {
            (Some(i), _) => (Some(i.clone()), None),
            (None, Some(df)) => {
                let root_dir = Path::new(&spec.root);
                let context = root_dir.join(docker.context.as_deref().unwrap_or("."));
                let text = std::fs::read_to_string(root_dir.join(df))
                    .with_context(|| format!("reading {df}"))?;
                let hash = job::container::build_hash(&context, &text, &docker.build_args)?;
                let repo: String = spec
                    .project_name
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || "._-".contains(c) {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                let host = docker.host.as_deref();
                let mut ecr_login = None;
                let tag = match docker.registry.as_deref() {
                    // The provider's registry: the repository made when missing, the
                    // machine's Docker logged in with a token that trainctl never keeps.
                    Some("ecr") => {
                        let login = self
                            .provider("aws")
                            .context("[docker] registry = \"ecr\" takes [providers.aws]")?
                            .image_registry(&repo)
                            .await?
                            .context("the aws provider gave no registry")?;
                        job::container::login(
                            remote,
                            host,
                            &login.host,
                            &login.username,
                            &login.password,
                        )
                        .await?;
                        self.store().add_event(
                            "registry.login",
                            Some(&inst.id),
                            Some(job_id),
                            &format!("{}'s Docker logged in to {} (ECR)", inst.id, login.host),
                        )?;
                        let t = format!("{}:{hash}", login.repository);
                        ecr_login = Some(login);
                        t
                    }
                    Some(r) => format!("{r}/{repo}:{hash}"),
                    None => format!("trainctl/{repo}:{hash}"),
                };
                let have = crate::remote::retry_lost(4, "asking for the image", || {
                    job::container::has_image(remote, host, &tag)
                })
                .await?;
                let mut pulled = !have
                    && docker.registry.is_some()
                    && job::container::registry_has(remote, host, &tag).await?;
                let local = docker.build.as_deref() == Some("local");
                if local && !have && !pulled {
                    // Built here with trainctl's own Docker and pushed; the machine pulls.
                    if let Some(l) = &ecr_login {
                        job::container::login_here(&l.host, &l.username, &l.password).await?;
                    }
                    let t0 = std::time::Instant::now();
                    job::container::build_here(
                        &tag,
                        &root_dir.join(df),
                        &context,
                        &docker.build_args,
                    )
                    .await
                    .with_context(|| format!("building image {tag} here"))?;
                    self.store().add_event(
                        "image.build",
                        Some(&inst.id),
                        Some(job_id),
                        &format!(
                            "built image {tag} here in {} s and pushed it for {} to pull",
                            t0.elapsed().as_secs(),
                            inst.id
                        ),
                    )?;
                    pulled = true;
                }
                let (kind, what) = if have {
                    (
                        "image.cached",
                        format!("image {tag} is on {} already: not built again", inst.id),
                    )
                } else if pulled {
                    (
                        "image.pull",
                        format!(
                            "pulling image {tag} to {} from its registry: not built",
                            inst.id
                        ),
                    )
                } else {
                    (
                        "image.build",
                        format!("building image {tag} on {} from {df}", inst.id),
                    )
                };
                self.store()
                    .add_event(kind, Some(&inst.id), Some(job_id), &what)?;
                let on_machine = |rel: &str| match rel {
                    "." | "" => code.to_string(),
                    r => format!("{code}/{r}"),
                };
                let text = (!have).then(|| {
                    job::container::build_text(
                        &tag,
                        &on_machine(df),
                        &on_machine(docker.context.as_deref().unwrap_or(".")),
                        &docker.build_args,
                        docker.host.as_deref(),
                        docker.registry.is_some(),
                    )
                });
                (Some(tag), text)
            }
            (None, None) => (None, None),
        })
    }

    /// Where the manifest last written to `instance` for `project` is remembered locally.
    pub(super) fn sync_cache(&self, instance: &str, project: &str) -> PathBuf {
        self.inner
            .data_dir
            .join("sync-cache")
            .join(instance)
            .join(format!("{project}.json"))
    }

    pub(super) async fn sync_code(
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
                &data::sync_excludes(&spec.project, Path::new(&spec.root)),
                false,
                None,
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
        let name = project.name();
        let excludes = data::sync_excludes(&project.config, &project.root);
        // The local tree is compared with the cached manifest while the connection is made.
        let cache = self.sync_cache(&inst.id, &name);
        let (remote, pre) = tokio::join!(
            self.remote_for(&inst),
            sync::prescan_async(&project.root, &excludes, Some(&cache))
        );
        let pre = Some(pre?);
        self.sync_tree(
            remote?.as_ref(),
            &inst.id,
            &name,
            &project.root,
            &excludes,
            dry_run,
            pre,
        )
        .await
    }

    /// Plan the sync of `root` as `project` on `instance` (from the manifest on the machine,
    /// with the local cache of it) and apply it unless `dry_run`. A sync cut short by a lost
    /// connection is planned again from what the machine's manifest then says: files
    /// already in place are not sent twice, half-written ones are.
    /// `pre`: the local tree already compared with the cached manifest (used by the first
    /// attempt).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn sync_tree(
        &self,
        remote: &dyn Remote,
        instance: &str,
        project: &str,
        root: &Path,
        excludes: &[String],
        dry_run: bool,
        pre: Option<sync::Prescan>,
    ) -> Result<sync::SyncPlan> {
        let cache = self.sync_cache(instance, project);
        let pre = std::sync::Mutex::new(pre);
        crate::remote::retry_lost(4, "code sync", async || {
            let first = pre.lock().unwrap_or_else(|p| p.into_inner()).take();
            let (plan, _) = sync::sync_once(
                remote,
                project,
                root,
                excludes,
                Some(&cache),
                first,
                dry_run,
            )
            .await?;
            Ok(plan)
        })
        .await
    }
}
