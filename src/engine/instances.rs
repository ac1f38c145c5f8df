//! Instances: launch (intent first, the provider's answer stored before anything waits), terminate (confirmed with the provider), healing of cut-off launches, reconcile, orphans.

use super::*;

impl Engine {
    // ------------------------------------------------------------- instances

    /// Launch an instance: check the request, record the intent, then ask the provider.
    pub async fn launch(&self, provider: &str, req: &LaunchRequest) -> Result<InstanceRecord> {
        self.launch_as(provider, req, &new_id("i")).await
    }

    /// What instance `id` has cost so far (0 when unknown).
    pub fn instance_cost(&self, id: &str) -> i64 {
        self.cost_report()
            .ok()
            .and_then(|r| r.instances.into_iter().find(|c| c.id == id))
            .map_or(0, |c| c.cost_micros)
    }

    /// Launch the first offer that has capacity: the request's type on `provider`, then
    /// each `any_of` entry in order, where `provider:type` names another provider
    /// (`lambda:gpu_1x_h100_pcie`, `aws:g6e.xlarge`). A try refused for capacity or quota
    /// moves on to the next, each an event; any other error ends it. Entries without a
    /// provider stay the provider's own alternatives (it tries them itself).
    pub async fn launch_any(&self, provider: &str, req: &LaunchRequest) -> Result<InstanceRecord> {
        let offers = self.offers_of(provider, req)?;
        if offers.len() <= 1 {
            return self.launch(provider, req).await;
        }
        for (n, (p, r)) in offers.iter().enumerate() {
            match self.launch(p, r).await {
                Ok(i) => return Ok(i),
                Err(e)
                    if n + 1 < offers.len()
                        && matches!(
                            crate::remote::error_kind(&e),
                            Some(
                                crate::remote::ErrorKind::Capacity
                                    | crate::remote::ErrorKind::Quota
                            )
                        ) =>
                {
                    let (np, nr) = &offers[n + 1];
                    let msg = format!(
                        "{p}:{} refused ({e:#}); trying {np}:{}",
                        r.instance_type.as_deref().unwrap_or("default"),
                        nr.instance_type.as_deref().unwrap_or("default")
                    );
                    tracing::warn!("{msg}");
                    self.store()
                        .add_event("launch.failover", None, None, &msg)?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last offer returns")
    }

    /// The offers of a request, in order: (provider, request for that offer). Entries of
    /// the request's own provider before the next foreign one ride along as alternatives.
    fn offers_of(
        &self,
        provider: &str,
        req: &LaunchRequest,
    ) -> Result<Vec<(String, LaunchRequest)>> {
        let mut out: Vec<(String, LaunchRequest)> = vec![(
            provider.to_string(),
            LaunchRequest {
                any_of: Vec::new(),
                ..req.clone()
            },
        )];
        for a in &req.any_of {
            let (p, ty) = match a.split_once(':') {
                Some((p, t)) if self.provider(p).is_ok() => (p.to_string(), t.to_string()),
                Some((p, _)) if crate::provider::NAMES.contains(&p) => bail!(
                    "any_of names `{a}`, but the {p} provider is not configured (add [providers.{p}] to the user config)"
                ),
                _ => (provider.to_string(), a.clone()),
            };
            let last = out.last_mut().expect("one offer at least");
            if last.0 == p && !a.contains(':') {
                last.1.any_of.push(ty);
                continue;
            }
            let same = p == provider;
            out.push((
                p,
                LaunchRequest {
                    instance_type: Some(ty),
                    any_of: Vec::new(),
                    // Options are the first provider's own.
                    options: if same {
                        req.options.clone()
                    } else {
                        Default::default()
                    },
                    ..req.clone()
                },
            ));
        }
        Ok(out)
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
            name: req.name.clone().unwrap_or_else(|| id.clone()),
            spot: plan.spot,
            gpus: plan.gpus,
            min_billed_ms: p.capabilities().min_billed_seconds as i64 * 1000,
            ..InstanceRecord::intent(&id, provider, &plan.instance_type, plan.hourly)
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
                    return Err(e.context(format!("launching {id} on {provider}")));
                }
                self.store()
                    .set_instance_error(&id, Some(&format!("launch failed: {e:#}")))?;
                if req.keep_on_error {
                    return Err(e.context(format!(
                        "launching {id} on {provider} (kept, as asked: `trainctl terminate {id}` when done)"
                    )));
                }
                // The machine exists and is billing: it goes, confirmed with the provider.
                let ended = self.terminate(&id, "launch failed").await;
                return Err(e.context(match ended {
                    Ok(_) => format!(
                        "launching {id} on {provider}; the machine was terminated ({} billed)",
                        Money(self.instance_cost(&id))
                    ),
                    Err(t) => format!(
                        "launching {id} on {provider}; terminating it failed too ({t:#}): it stays in the store, `trainctl terminate {id}`"
                    ),
                }));
            }
        }
        self.store()
            .instance(&id)?
            .context("instance vanished from the store")
    }

    /// Terminate an instance: stop trainctl's jobs there, release it, confirm with the
    /// provider, and only then record it terminated.
    pub async fn terminate(&self, key: &str, why: &str) -> Result<InstanceRecord> {
        // Bound first: the store's guard must not live across the awaits below.
        let found = self.store().find_instance(key);
        let inst = match found {
            Ok(i) => i,
            Err(unknown) => {
                // Not the store's: maybe a machine the provider holds that the store lost.
                let Some((provider, l)) = self.orphan(key).await? else {
                    return Err(unknown);
                };
                self.terminate_orphan(&provider, &l).await?;
                return Ok(InstanceRecord {
                    state: InstanceState::Terminated,
                    terminated_ms: Some(now_ms()),
                    ..self.orphan_record(&provider, &l)
                });
            }
        };
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
        // Containers its jobs left (a host outlives its hold; a cloud machine goes anyway,
        // so one that cannot be reached is not waited for).
        let ran_jobs = !matches!(self.store().last_work_on(&inst.id)?, Some(None));
        if ran_jobs && (inst.state.is_live() || inst.state == InstanceState::Terminating) {
            let swept = async {
                let r = p.remote(&inst).await?;
                job::container::remove_all_left(r.as_ref()).await
            };
            match tokio::time::timeout(Duration::from_secs(10), swept).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("removing {}'s containers: {e:#}", inst.id),
                Err(_) => tracing::warn!("removing {}'s containers: no answer in 10 s", inst.id),
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

    /// The container images trainctl's jobs used on instance `key`, with their size there.
    pub async fn machine_images(
        &self,
        key: &str,
    ) -> Result<(InstanceRecord, Vec<job::container::MachineImage>)> {
        let inst = self.store().find_instance(key)?;
        let r = self.remote_for(&inst).await?;
        let images = job::container::machine_images(r.as_ref()).await?;
        Ok((inst, images))
    }

    /// Remove the images trainctl's jobs used on instance `key` that no container uses.
    pub async fn prune_images(&self, key: &str) -> Result<Vec<job::container::MachineImage>> {
        let inst = self.store().find_instance(key)?;
        let r = self.remote_for(&inst).await?;
        let removed = job::container::prune_images(r.as_ref()).await?;
        if !removed.is_empty() {
            let freed: u64 = removed.iter().filter_map(|i| i.bytes).sum();
            self.store().add_event(
                "images.pruned",
                Some(&inst.id),
                None,
                &format!(
                    "{} image(s) removed ({freed} bytes): {}",
                    removed.len(),
                    removed
                        .iter()
                        .map(|i| i.image.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )?;
        }
        Ok(removed)
    }

    /// What the machine says about its GPUs: `2x NVIDIA A100-SXM4-80GB (81920 MiB)`,
    /// `no GPU`, or why it could not be asked.
    pub async fn gpu_facts(&self, inst: &InstanceRecord) -> String {
        let script = "if command -v nvidia-smi >/dev/null 2>&1; then \
                      nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -n 64; \
                      else echo 'no GPU'; fi";
        let x = self.executor(inst);
        let asked = async {
            let r = self.remote_for(inst).await?;
            // A cluster: what its scheduler has free (the login node's own GPUs are not
            // what a job gets).
            if let Some(room) = x.capacity(r.as_ref()).await? {
                return Ok(Err(room));
            }
            r.exec(script).await.map(Ok)
        };
        match tokio::time::timeout(Duration::from_secs(15), asked).await {
            Ok(Ok(Err(room))) => crate::sanitize::sanitize_line(room.as_bytes()),
            Ok(Ok(Ok(out))) if out.success() => summarize_gpus(&out.stdout_str()),
            Ok(Ok(Ok(out))) => format!(
                "nvidia-smi failed: {}",
                crate::sanitize::sanitize_line(out.stderr.trim_ascii())
            ),
            Ok(Err(e)) => format!("unknown ({e:#})"),
            Err(_) => "unknown (timed out)".into(),
        }
    }

    /// Machines the providers hold for this store that the store does not know (or thinks
    /// are gone), with their provider: each one may be billing.
    pub async fn orphans(&self) -> Result<Vec<(String, Listed)>> {
        let known: HashMap<String, InstanceState> = self
            .store()
            .instances(true)?
            .into_iter()
            .map(|i| (i.id, i.state))
            .collect();
        let mut out = self.batch_orphans().await?;
        for (name, p) in &self.inner.providers {
            // One provider that cannot be asked (no credentials, no network) must not hide
            // the others' orphans nor the store's own instances: said, and skipped.
            let listed = match p.list().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("cannot look for orphans on {name}: {e:#}");
                    continue;
                }
            };
            for l in listed {
                match known.get(&l.id) {
                    // A lost machine a host pool still holds is known: `terminate` frees it.
                    Some(s) if s.is_live() || *s == InstanceState::Lost => {}
                    _ => out.push((name.clone(), l)),
                }
            }
        }
        Ok(out)
    }

    /// Jobs the schedulers of held clusters run for this store that no attempt accounts
    /// for: its attempt unknown to the store, or ended over a minute ago (a batch job
    /// may take a moment to end after its runner), as orphans of their provider.
    async fn batch_orphans(&self) -> Result<Vec<(String, Listed)>> {
        let live: Vec<InstanceRecord> = self
            .store()
            .instances(false)?
            .into_iter()
            .filter(|i| i.state == InstanceState::Running)
            .collect();
        let attempts = self.store().all_attempts()?;
        let now = now_ms();
        let mut out = Vec::new();
        for inst in live {
            let Ok(p) = self.provider(&inst.provider) else {
                continue;
            };
            let Some(x) = p.executor(&inst) else {
                continue;
            };
            let asked = async {
                let r = self.remote_for(&inst).await?;
                x.batch_jobs(r.as_ref()).await
            };
            let jobs = match tokio::time::timeout(Duration::from_secs(20), asked).await {
                Ok(Ok(j)) => j,
                Ok(Err(e)) => {
                    tracing::warn!("cannot list the batch jobs on {}: {e:#}", inst.id);
                    continue;
                }
                Err(_) => {
                    tracing::warn!("listing the batch jobs on {}: no answer in 20 s", inst.id);
                    continue;
                }
            };
            for b in jobs {
                let accounted = attempts.iter().any(|a| {
                    a.instance_id == inst.id
                        && a.remote_dir.rsplit('/').next() == Some(b.attempt_dir.as_str())
                        && a.ended_ms.is_none_or(|e| now - e < 60_000)
                });
                if !accounted {
                    out.push((
                        inst.provider.clone(),
                        Listed {
                            id: format!("{}:{}", inst.provider, b.id),
                            provider_id: b.name,
                            instance_type: Some(inst.instance_type.clone()),
                            batch_on: Some(inst.id.clone()),
                            ..Listed::default()
                        },
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The orphan `key` names (trainctl's id or the provider's).
    async fn orphan(&self, key: &str) -> Result<Option<(String, Listed)>> {
        Ok(self
            .orphans()
            .await?
            .into_iter()
            .find(|(_, l)| l.id == key || l.provider_id == key))
    }

    /// An orphan as an instance record (what terminating or adopting it starts from, and
    /// what its cost so far is computed on).
    pub fn orphan_record(&self, provider: &str, l: &Listed) -> InstanceRecord {
        InstanceRecord {
            min_billed_ms: self
                .provider(provider)
                .map_or(0, |p| p.capabilities().min_billed_seconds as i64 * 1000),
            spot: l.spot,
            provider_id: Some(l.provider_id.clone()),
            region: l.region.clone(),
            launched_ms: l.launched_ms,
            ..InstanceRecord::intent(
                &l.id,
                provider,
                l.instance_type.as_deref().unwrap_or("?"),
                l.hourly.unwrap_or(Money::ZERO),
            )
        }
    }

    /// Terminate a machine the store does not know, confirmed with its provider.
    async fn terminate_orphan(&self, provider: &str, l: &Listed) -> Result<()> {
        let p = self.provider(provider)?;
        if let Some(on) = &l.batch_on {
            // A scheduler's job: cancelled there, and gone from its queue before it is
            // said so.
            let inst = self.store().find_instance(on)?;
            let x = p
                .executor(&inst)
                .with_context(|| format!("{on} has no scheduler"))?;
            let r = self.remote_for(&inst).await?;
            let id = l.id.rsplit(':').next().unwrap_or(&l.id);
            x.cancel_batch_job(r.as_ref(), id)
                .await
                .with_context(|| format!("cancelling orphan batch job {}", l.id))?;
            self.store().add_event(
                "orphan.cancelled",
                Some(on),
                None,
                &format!(
                    "batch job {} ({}) on {on}, which no job in the store accounted for, cancelled",
                    l.id, l.provider_id
                ),
            )?;
            return Ok(());
        }
        let rec = self.orphan_record(provider, l);
        p.terminate(&rec)
            .await
            .with_context(|| format!("terminating orphan {} ({})", l.id, l.provider_id))?;
        match p.describe(&rec).await? {
            Observed::Gone => {}
            other => bail!(
                "orphan {} ({}) still reported as {other:?} after terminate",
                l.id,
                l.provider_id
            ),
        }
        self.store().add_event(
            "orphan.terminated",
            None,
            None,
            &format!(
                "{} ({}) on {provider}, which the store did not know, terminated",
                l.id, l.provider_id
            ),
        )?;
        Ok(())
    }

    /// Take a machine the store does not know into it (its cost counted from the
    /// provider's launch time), reached and running like one trainctl launched.
    pub async fn adopt(&self, key: &str) -> Result<InstanceRecord> {
        let (provider, l) = self
            .orphan(key)
            .await?
            .with_context(|| format!("no orphan `{key}` (see `trainctl ls`)"))?;
        if l.batch_on.is_some() {
            bail!(
                "{key} is a batch job, not a machine: its attempt is not the store's to follow; \
                 `trainctl terminate {key}` cancels it"
            );
        }
        let rec = self.orphan_record(&provider, &l);
        self.store().insert_instance(&InstanceRecord {
            provider_id: None,
            region: None,
            launched_ms: None,
            ..rec.clone()
        })?;
        let p = self.provider(&provider)?;
        let launched = p
            .find(&l.id)
            .await?
            .with_context(|| format!("{} vanished while being adopted", l.id))?;
        self.take_over(
            &rec.id,
            &launched,
            "adopted: the provider held it, the store did not know it",
        )
        .await?;
        self.store().instance(&rec.id)?.context("instance vanished")
    }

    /// A machine the provider holds under `id` becomes the store's running instance:
    /// its answer recorded, reached, marked running.
    async fn take_over(&self, id: &str, l: &Launched, why: &str) -> Result<()> {
        let inst = self.store().instance(id)?.context("instance vanished")?;
        let p = self.provider(&inst.provider)?;
        self.store()
            .record_launched(id, l, l.launched_ms.unwrap_or_else(now_ms))?;
        // Reached as the store now knows it (the provider's id, region, keys).
        let known = self.store().instance(id)?.unwrap_or(inst);
        let address = p.reach(&known).await?;
        self.store().mark_instance_running(id, &address, now_ms())?;
        self.store()
            .add_event("instance.healed", Some(id), None, why)?;
        Ok(())
    }

    /// The provider took `inst` back: it is recorded preempted (its cost stops), and what is
    /// left of it is released, confirmed (a reclaimed RunPod spot pod keeps its disk, which
    /// bills until the pod is terminated; for EC2 the instance is already gone).
    pub(crate) async fn note_preempted(&self, inst: &InstanceRecord, reason: &str) -> Result<()> {
        self.store().set_instance_state(
            &inst.id,
            InstanceState::Preempted,
            &format!("taken back by the provider: {reason}"),
        )?;
        let p = self.provider(&inst.provider)?;
        match p.terminate(inst).await {
            Ok(()) => self.store().add_event(
                "instance.released",
                Some(&inst.id),
                None,
                "what the provider left of it (a disk) was released",
            )?,
            Err(e) => {
                tracing::warn!("releasing preempted {}: {e:#}", inst.id);
                self.store().add_event(
                    "instance.release_failed",
                    Some(&inst.id),
                    None,
                    &format!("releasing what is left of it failed ({e:#}): `trainctl orphans` shows it if it still bills"),
                )?;
            }
        }
        Ok(())
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
            let change = match (p.describe(&inst).await, inst.state) {
                (Ok(Observed::Stopped), InstanceState::Running) => {
                    self.note_stopped(&inst, "the provider reports it stopped")?;
                    None
                }
                (Ok(Observed::Running), InstanceState::Stopped) => {
                    self.note_running_again(&inst, "the provider reports it running again")?;
                    None
                }
                (Ok(Observed::Interrupted { reason, .. }), _) => {
                    self.note_preempted(&inst, &reason).await?;
                    None
                }
                (Ok(Observed::Gone), InstanceState::Terminating) => Some((
                    InstanceState::Terminated,
                    "provider confirms it is gone".to_string(),
                )),
                (Ok(Observed::Gone), _) => Some((
                    InstanceState::Lost,
                    "the provider no longer has this machine".to_string(),
                )),
                _ => None,
            };
            if let Some((to, why)) = change {
                self.store().set_instance_state(&inst.id, to, &why)?;
            }
        }
        Ok(())
    }

    /// Stop a running machine, keeping its disk: its compute stops billing (its disk does
    /// not). Refused while a job runs there (cancel or migrate it first).
    pub async fn stop_instance(&self, key: &str) -> Result<InstanceRecord> {
        let inst = self.store().find_instance(key)?;
        if inst.state != InstanceState::Running {
            bail!("{} is {}, not running", inst.id, inst.state);
        }
        let p = self.provider(&inst.provider)?;
        if !p.capabilities().stop_start {
            bail!(
                "{} machines cannot be stopped; terminate it instead",
                inst.provider
            );
        }
        let busy = self.live_jobs_on(&inst.id)?;
        if !busy.is_empty() {
            bail!(
                "{} runs {}: cancel or migrate first (a stop would kill it)",
                inst.id,
                busy.join(", ")
            );
        }
        p.stop(&inst).await?;
        let mut wait = Duration::from_millis(250);
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            match p.describe(&inst).await? {
                Observed::Stopped => break,
                Observed::Gone | Observed::Interrupted { .. } => {
                    bail!("{} ended while stopping", inst.id)
                }
                _ if std::time::Instant::now() > deadline => {
                    bail!("{} still not stopped after 10 minutes", inst.id)
                }
                _ => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.note_stopped(&inst, "stopped by the user")?;
        self.store()
            .instance(&inst.id)?
            .context("instance vanished")
    }

    /// Ids of the jobs not yet ended whose current machine is `instance_id`.
    pub(crate) fn live_jobs_on(&self, instance_id: &str) -> Result<Vec<String>> {
        Ok(self
            .store()
            .jobs()?
            .into_iter()
            .filter(|j| !j.state.is_terminal() && j.instance_id.as_deref() == Some(instance_id))
            .map(|j| j.id)
            .collect())
    }

    /// Start a stopped machine and reach it again (a new address, the same host key).
    pub async fn start_instance(&self, key: &str) -> Result<InstanceRecord> {
        let inst = self.store().find_instance(key)?;
        if inst.state != InstanceState::Stopped {
            bail!("{} is {}, not stopped", inst.id, inst.state);
        }
        let p = self.provider(&inst.provider)?;
        p.start(&inst).await?;
        let address = p.reach(&inst).await?;
        self.note_running_again(&inst, "started by the user")?;
        self.store()
            .mark_instance_running(&inst.id, &address, now_ms())?;
        self.store()
            .instance(&inst.id)?
            .context("instance vanished")
    }

    /// A machine now stopped: no compute billed from now (a zero-price segment).
    fn note_stopped(&self, inst: &InstanceRecord, why: &str) -> Result<()> {
        let mut s = self.store();
        s.set_instance_state(
            &inst.id,
            InstanceState::Stopped,
            &format!("{why}; compute no longer billed (its disk still is)"),
        )?;
        s.set_price(&inst.id, now_ms(), Money::ZERO)
    }

    /// A stopped machine running again: billed at its running price from now.
    fn note_running_again(&self, inst: &InstanceRecord, why: &str) -> Result<()> {
        let price = inst
            .price_segments
            .iter()
            .rev()
            .map(|(_, p)| *p)
            .find(|p| *p > Money::ZERO)
            .unwrap_or(inst.hourly);
        let mut s = self.store();
        s.set_instance_state(&inst.id, InstanceState::Running, why)?;
        s.set_price(&inst.id, now_ms(), price)
    }

    /// A `Pending` intent whose launching process is gone: ask the provider by trainctl's
    /// id. Held -> its answer is recorded, the machine reached and marked running (billed
    /// from the provider's launch time). Not held -> closed; it never billed.
    pub(super) async fn heal_pending(&self, inst: &InstanceRecord) -> Result<()> {
        if self.store().launch_pid(&inst.id)?.is_some_and(pid_alive) {
            return Ok(()); // in flight
        }
        let p = self.provider(&inst.provider)?;
        match p.find(&inst.id).await? {
            Some(l) => {
                self.take_over(
                    &inst.id,
                    &l,
                    "the launch was cut off after the provider answered; found by its id",
                )
                .await?;
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

    /// Ask every running machine, all at once, whether it answers (one `true` over its
    /// remote, at most `limit` each); record why one cannot be reached, clear it when it
    /// answers again. `ls` shows the result, so a dead machine never shows a stale
    /// healthy row.
    pub async fn probe_live(&self, limit: Duration) -> Result<()> {
        let running: Vec<InstanceRecord> = self
            .store()
            .instances(false)?
            .into_iter()
            .filter(|i| i.state == InstanceState::Running)
            .collect();
        let probes = running.iter().map(|inst| async move {
            let asked = async {
                let r = self.remote_for(inst).await?;
                r.exec("true").await?.check("a liveness check")?;
                // A cluster's room changes from one look to the next: asked again.
                let room = self.executor(inst).capacity(r.as_ref()).await?;
                if let Some(room) = room {
                    let room = crate::sanitize::sanitize_line(room.as_bytes());
                    if inst.gpu_info.as_deref() != Some(room.as_str()) {
                        self.store().set_gpu_info(&inst.id, &room)?;
                    }
                }
                Ok::<(), anyhow::Error>(())
            };
            let outcome = match tokio::time::timeout(limit, asked).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("unreachable: {e:#}")),
                Err(_) => Some(format!(
                    "unreachable: no answer within {} s",
                    limit.as_secs_f64()
                )),
            };
            (inst, outcome)
        });
        for (inst, outcome) in futures_util::future::join_all(probes).await {
            // What a job's supervisor saw through a side channel (SSM) says more than
            // "unreachable": kept while the machine stays unreachable.
            let seen_aside = inst
                .error
                .as_deref()
                .is_some_and(super::poll::seen_through_side_channel);
            if inst.error != outcome && !(outcome.is_some() && seen_aside) {
                self.store()
                    .set_instance_error(&inst.id, outcome.as_deref())?;
            }
        }
        Ok(())
    }
}
