//! Machine-level supervision, run every few seconds by the cockpit and `watch`: a spot
//! machine's live price sampled hourly into its price segments, and the idle guard (a
//! machine with no job for its provider's idle limit is warned about, then terminated, or
//! stopped when its provider is told to and it can).

use super::*;

/// How often a spot machine's price is read again: hourly (`TRAINCTL_SPOT_PRICE_EVERY`
/// seconds instead, for tests).
fn price_every() -> Duration {
    std::env::var("TRAINCTL_SPOT_PRICE_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs)
}
/// How long before an idle machine is ended the warning comes.
const IDLE_WARNING: i64 = 5 * 60_000;

impl Engine {
    /// When `inst` will be ended for idling, if it idles until then: None while a job runs
    /// there or when its provider never ends idle machines.
    pub fn idle_deadline(&self, inst: &InstanceRecord) -> Option<TimestampMs> {
        let store = self.store();
        self.idle_deadline_in(&store, inst)
    }

    /// [`Engine::idle_deadline`] with the store already in hand.
    pub fn idle_deadline_in(&self, store: &Store, inst: &InstanceRecord) -> Option<TimestampMs> {
        if inst.state != InstanceState::Running {
            return None;
        }
        let limit = self.provider(&inst.provider).ok()?.idle_limit()?;
        let last = store.last_work_on(&inst.id).ok()??;
        // Idle since its last job ended, or since it last came up (launched, or started
        // again after a stop), whichever is later.
        let up = store
            .last_instance_event_ms(&inst.id, "instance.running")
            .ok()?
            .or(inst.launched_ms)
            .unwrap_or(inst.created_ms);
        let since = last.map_or(up, |l| l.max(up));
        Some(since + limit.as_millis() as i64)
    }

    /// One pass over the live machines: prices, rebalance notes, then the idle guard.
    pub async fn tend_machines(&self) -> Result<()> {
        let live = self.store().instances(false)?;
        let now = now_ms();
        for inst in live.iter().filter(|i| i.state == InstanceState::Running) {
            self.sample_price(inst).await;
            if let Err(e) = self.note_rebalance(inst).await {
                tracing::debug!("rebalance check on {}: {e:#}", inst.id);
            }
            let Some(deadline) = self.idle_deadline(inst) else {
                continue;
            };
            let warned = self.idle_warned(&inst.id, deadline)?;
            let stops = !inst.spot
                && self
                    .provider(&inst.provider)
                    .is_ok_and(|p| p.idle_stops() && p.capabilities().stop_start);
            if now >= deadline {
                let why = "idle: no job ran there for the provider's idle limit";
                let ended = if stops {
                    self.store()
                        .add_event("instance.idle", Some(&inst.id), None, why)?;
                    self.stop_instance(&inst.id).await.map(|_| ())
                } else {
                    self.terminate(&inst.id, why).await.map(|_| ())
                };
                if let Err(e) = ended {
                    tracing::warn!("ending idle {}: {e:#}", inst.id);
                }
            } else if now >= deadline - IDLE_WARNING && !warned {
                self.store().add_event(
                    "instance.idle",
                    Some(&inst.id),
                    None,
                    &format!(
                        "no job: {} at {} unless one starts",
                        if stops { "stopped" } else { "terminated" },
                        crate::cost::utc_time(deadline)
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// A machine whose provider recommends moving off it (EC2's rebalance recommendation,
    /// which the machine's watcher records in ROOT/rebalance): said once, as an event
    /// naming the jobs to migrate.
    async fn note_rebalance(&self, inst: &InstanceRecord) -> Result<()> {
        let p = self.provider(&inst.provider)?;
        if !inst.spot || !p.capabilities().interruption_notices {
            return Ok(());
        }
        let said = self
            .store()
            .last_instance_event_ms(&inst.id, "instance.rebalance")?;
        if said.is_some() {
            return Ok(());
        }
        let remote = self.remote_for(inst).await?;
        let path = format!("{}/rebalance", remote.root());
        let Some(text) = remote.read_range(&path, 0, 512).await? else {
            return Ok(());
        };
        let jobs = self.live_jobs_on(&inst.id)?;
        // Jobs whose project asked for it (`[recovery] on` has "rebalance") move now.
        let mut moving = Vec::new();
        for id in &jobs {
            let Some(job) = self.store().job(id)? else {
                continue;
            };
            let wants = super::recovery::job_spec(&job).is_ok_and(|s| {
                s.project
                    .recovery
                    .on
                    .contains(&crate::config::RecoverOn::Rebalance)
            });
            if wants && job.state.is_started() && job.migrate_to.is_none() {
                match self.migrate(id, super::MigrateTarget::Same).await {
                    Ok(_) => moving.push(id.clone()),
                    Err(e) => tracing::warn!("moving {id} off {} on a rebalance: {e:#}", inst.id),
                }
            }
        }
        let when = crate::sanitize::sanitize_line(text.trim_ascii());
        self.store().add_event(
            "instance.rebalance",
            Some(&inst.id),
            None,
            &format!(
                "the provider recommends moving off this spot machine ({when}): an interruption is more likely; {}",
                if jobs.is_empty() {
                    "no job runs there".to_string()
                } else if !moving.is_empty() {
                    format!("moving {} to a new machine now ([recovery] on has \"rebalance\")", moving.join(", "))
                } else {
                    format!("`trainctl migrate {}` moves its job now", jobs.join(" / "))
                }
            ),
        )?;
        Ok(())
    }

    /// Whether the idle warning for the idle stretch ending at `deadline` was given.
    fn idle_warned(&self, id: &str, deadline: TimestampMs) -> Result<bool> {
        let last = self.store().last_instance_event_ms(id, "instance.idle")?;
        Ok(last.is_some_and(|t| t >= deadline - IDLE_WARNING - 60_000))
    }

    async fn sample_price(&self, inst: &InstanceRecord) {
        if !inst.spot {
            return;
        }
        let due = super::due(&self.inner.last_price, &inst.id, price_every());
        // The launch sampled the price: the first check comes an hour after it.
        let launched_recently = inst
            .launched_ms
            .is_some_and(|l| now_ms() - l < price_every().as_millis() as i64);
        if !due || launched_recently && inst.price_segments.is_empty() {
            return;
        }
        let Ok(p) = self.provider(&inst.provider) else {
            return;
        };
        match p.price_now(inst).await {
            Ok(Some(price)) if price != inst.hourly => {
                if let Err(e) = self.store().set_price(&inst.id, now_ms(), price) {
                    tracing::warn!("recording the price of {}: {e:#}", inst.id);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading the price of {}: {e:#}", inst.id),
        }
    }
}
