//! The cockpit's runtime: one `tokio::select!` loop over terminal input, engine events,
//! finished work and a once-a-second store refresh. The UI task never awaits IO: every
//! [`Command`] runs in its own task and reports back as a [`Msg`]. A frame is drawn only
//! when the state changed, at most `fps` times a second.

use super::app::{App, Command, InstanceRow, JobRow, Msg, Snapshot};
use super::ui;
use crate::config::Project;
use crate::engine::Engine;
use crate::model::{Money, now_ms};
use anyhow::Result;
use crossterm::event::Event;
use futures_util::{Stream, StreamExt};
use ratatui::Terminal;
use ratatui::backend::Backend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the runtime needs besides the app state.
#[derive(Clone)]
pub struct Context {
    pub engine: Engine,
    pub project: Option<Project>,
    tx: mpsc::UnboundedSender<Msg>,
    /// Jobs this process follows with an actor.
    cache: Arc<Mutex<SnapshotCache>>,
    refreshing: Arc<std::sync::atomic::AtomicBool>,
}

/// A job's loss-like metric: its name once known, the latest value, the whole run's
/// trend, and where reading continues.
#[derive(Default, Clone)]
struct JobMetricMemo {
    name: Option<String>,
    last: Option<(String, f64)>,
    trend: super::series::Trend,
    after_rowid: i64,
}

/// Per-job memo so a refresh only re-reads metrics of jobs whose log moved.
#[derive(Default)]
pub struct SnapshotCache {
    seen_offset: HashMap<String, u64>,
    metric: HashMap<String, JobMetricMemo>,
    orphans: Vec<(String, crate::provider::Listed)>,
    last_slow: Option<std::time::Instant>,
}

/// The name of the loss-like metric to show for a job: `loss`, else any `*loss*`, else the first.
fn loss_like(names: &[String]) -> Option<String> {
    names
        .iter()
        .find(|n| *n == "loss" || *n == "train_loss")
        .or_else(|| names.iter().find(|n| n.contains("loss")))
        .or_else(|| names.first())
        .cloned()
}

/// Read everything the lists show from the store (blocking; run off the UI task).
pub fn build_snapshot(engine: &Engine, cache: &mut SnapshotCache) -> Result<Snapshot> {
    let now = now_ms();
    let report = engine.cost_report()?;
    let store = engine.store();
    let instances = store.instances(true)?;
    let jobs = store.jobs()?;
    // Latest attempt's offset per job.
    let mut offsets: HashMap<String, (i64, crate::store::LogOffset)> = HashMap::new();
    for (job, attempt, off) in store.all_log_offsets()? {
        match offsets.get(&job) {
            Some((a, _)) if *a >= attempt => {}
            _ => {
                offsets.insert(job, (attempt, off));
            }
        }
    }
    let inst_cost: HashMap<&str, i64> = report
        .instances
        .iter()
        .map(|c| (c.id.as_str(), c.cost_micros))
        .collect();
    let mut inst_rows: Vec<InstanceRow> = instances
        .into_iter()
        .map(|i| InstanceRow {
            idle_deadline: engine.idle_deadline_in(&store, &i),
            cost: Money(inst_cost.get(i.id.as_str()).copied().unwrap_or(0)),
            uptime_ms: crate::cost::billed_interval(&i, now).map_or(0, |(s, e)| e - s),
            rec: i,
            orphan: false,
            orphan_job_on: None,
        })
        .collect();
    for (provider, l) in &cache.orphans {
        if inst_rows
            .iter()
            .any(|r| r.rec.id == l.id && r.rec.state.is_live())
        {
            continue;
        }
        let rec = crate::store::InstanceRecord {
            state: crate::model::InstanceState::Running,
            name: l.provider_id.clone(),
            ..engine.orphan_record(provider, l)
        };
        inst_rows.insert(
            0,
            InstanceRow {
                cost: crate::cost::instance_cost(&rec, now),
                uptime_ms: crate::cost::billed_interval(&rec, now).map_or(0, |(s, e)| e - s),
                rec,
                orphan: true,
                orphan_job_on: l.batch_on.clone(),
                idle_deadline: None,
            },
        );
    }
    let job_cost: HashMap<&str, &crate::cost::JobCost> =
        report.jobs.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut job_rows = Vec::with_capacity(jobs.len());
    for j in jobs {
        let (attempt, progress, offset) = offsets
            .get(&j.id)
            .map_or((1, Default::default(), 0), |(a, o)| {
                (*a, o.progress, o.byte_offset)
            });
        if cache.seen_offset.get(&j.id) != Some(&offset) || !cache.metric.contains_key(&j.id) {
            cache.seen_offset.insert(j.id.clone(), offset);
            let entry = cache.metric.entry(j.id.clone()).or_default();
            if entry.name.is_none() && offset > 0 {
                entry.name = loss_like(&store.metric_names(&j.id)?);
            }
            if let Some(name) = entry.name.clone() {
                // Only what was stored since the last look: the trend grows in place.
                let mut newest = None;
                let (trend, after) = (&mut entry.trend, entry.after_rowid);
                entry.after_rowid = store.metric_values_after(&j.id, &name, after, |v| {
                    trend.push(v);
                    newest = Some(v);
                })?;
                if let Some(v) = newest {
                    entry.last = Some((name, v));
                }
            }
        }
        let memo = cache.metric.get(&j.id);
        let metric = memo.and_then(|m| m.last.clone());
        let trend = memo.map(|m| m.trend.means()).unwrap_or_default();
        let c = job_cost.get(j.id.as_str());
        job_rows.push(JobRow {
            progress,
            elapsed_ms: j.started_ms.map(|s| j.ended_ms.unwrap_or(now) - s),
            eta_ms: c.and_then(|c| c.eta_ms),
            cost: Money(c.map_or(0, |c| c.cost_micros)),
            projected: c.and_then(|c| c.projected_micros).map(Money),
            metric,
            trend,
            attempt,
            rec: j,
        });
    }
    Ok(Snapshot {
        now_ms: now,
        instances: inst_rows,
        jobs: job_rows,
        cost: Some(report),
        budget_day: engine.config().budget.per_day(),
        budget_job: engine.config().budget.per_job(),
    })
}

impl Context {
    pub fn new(
        engine: Engine,
        project: Option<Project>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Context {
        Context {
            engine,
            project,
            tx,
            cache: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    fn send(&self, m: Msg) {
        let _ = self.tx.send(m);
    }

    /// SSH key passphrases and login passwords are asked here: the engine's questions
    /// become the cockpit's masked popup (the answer goes straight back, never stored).
    fn ask_here(&self) {
        let (qtx, mut qrx) = mpsc::channel(4);
        self.engine.set_passphrase_prompter(qtx);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(req) = qrx.recv().await {
                if tx.send(Msg::Passphrase(req)).is_err() {
                    break;
                }
            }
        });
    }

    /// Follow `job` with an actor in this process (once).
    fn follow(&self, job: &str, start: bool) {
        // One actor per job in this process: the engine keeps the registry.
        let Some(handle) = self.engine.supervise(job, start) else {
            return;
        };
        let (id, tx) = (job.to_string(), self.tx.clone());
        tokio::spawn(async move {
            if let Ok(Err(e)) = handle.done.await {
                let _ = tx.send(Msg::Problem(format!("job {id}: {e:#}")));
            }
        });
    }

    /// As `trainctl run` does for the job it follows: when a job started here succeeds,
    /// its artifacts come back (said with where they are, or what failed).
    fn pull_when_it_succeeds(&self, job: &str) {
        let (ctx, job) = (self.clone(), job.to_string());
        // Subscribed before the job starts: its end cannot be missed.
        let mut events = self.engine.subscribe();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let end = loop {
                match events.recv().await {
                    Ok(crate::engine::EngineEvent::JobState { job_id, state, .. })
                        if job_id == job && state.is_terminal() =>
                    {
                        break state;
                    }
                    Ok(_) => {}
                    // A lagged receiver may have missed the end: the store knows.
                    Err(RecvError::Lagged(_)) => {
                        let s = ctx.engine.store().job(&job).ok().flatten().map(|j| j.state);
                        if let Some(s) = s.filter(|s| s.is_terminal()) {
                            break s;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            };
            if end != crate::model::JobState::Succeeded {
                return;
            }
            let said = match ctx.engine.pull(&job, None).await {
                Ok(r) if r.failed.is_empty() => Ok(format!(
                    "job {job}: {} artifact(s) pulled to {}",
                    r.pulled.len(),
                    r.dir()
                )),
                Ok(r) => Err(format!(
                    "job {job}: {} artifact(s) pulled, {} failed: {} (p pulls again)",
                    r.pulled.len(),
                    r.failed.len(),
                    r.failures_text()
                )),
                Err(e) => Err(format!("job {job}: pulling its artifacts failed: {e:#}")),
            };
            ctx.send(match said {
                Ok(m) => Msg::Said(m),
                Err(e) => Msg::Problem(e),
            });
        });
    }

    /// Run one command in its own task; its result comes back as a message.
    pub fn execute(&self, cmd: Command) {
        let ctx = self.clone();
        match cmd {
            Command::Refresh => {
                use std::sync::atomic::Ordering;
                if ctx.refreshing.swap(true, Ordering::AcqRel) {
                    return;
                }
                tokio::spawn(async move {
                    ctx.refresh().await;
                    ctx.refreshing.store(false, Ordering::Release);
                });
            }
            Command::Launch { provider, req } => {
                tokio::spawn(async move {
                    match ctx.engine.launch_any(&provider, &req).await {
                        Ok(i) => ctx.send(Msg::Done(Ok(format!(
                            "launched {} ({})",
                            i.id, i.instance_type
                        )))),
                        // A first-seen host key: ask, showing its fingerprint.
                        Err(e)
                            if crate::remote::error_kind(&e)
                                == Some(crate::remote::ErrorKind::HostKeyUnknown)
                                && !req.accept_new_host_key =>
                        {
                            ctx.send(Msg::UnknownHostKey {
                                provider,
                                req,
                                message: format!("{e:#}"),
                            })
                        }
                        Err(e) => ctx.send(Msg::Done(Err(format!("launch failed: {e:#}")))),
                    }
                });
            }
            Command::Terminate { instance } => {
                tokio::spawn(async move {
                    let r = ctx
                        .engine
                        .terminate(&instance, "terminated from the cockpit")
                        .await;
                    ctx.send(Msg::Done(
                        r.map(|i| format!("terminated {}", i.id))
                            .map_err(|e| format!("terminate failed: {e:#}")),
                    ));
                });
            }
            Command::CheckArtifacts { instance } => {
                tokio::spawn(async move {
                    // Bounded: an unreachable machine must not hold the question back.
                    let asked = tokio::time::timeout(
                        Duration::from_secs(20),
                        ctx.engine.unpulled_artifacts(&instance),
                    )
                    .await;
                    let unpulled = match asked {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => Err(format!("{e:#}")),
                        Err(_) => Err("no answer in 20 s".into()),
                    };
                    ctx.send(Msg::TerminateCheck { instance, unpulled });
                });
            }
            Command::PullThenTerminate { instance, jobs } => {
                tokio::spawn(async move {
                    let (mut pulled, mut failed) = (0usize, Vec::new());
                    for job in &jobs {
                        match ctx.engine.pull(job, None).await {
                            Ok(r) => {
                                pulled += r.pulled.len();
                                if !r.failed.is_empty() {
                                    failed.push(r.failures_text());
                                }
                            }
                            Err(e) => failed.push(format!("{job}: {e:#}")),
                        }
                    }
                    if !failed.is_empty() {
                        // What the jobs made is still only there: the machine stays.
                        ctx.send(Msg::Done(Err(format!(
                            "kept {instance}: not every artifact came ({}); {pulled} pulled",
                            failed.join("; ")
                        ))));
                        return;
                    }
                    let r = ctx
                        .engine
                        .terminate(
                            &instance,
                            "terminated from the cockpit after pulling its artifacts",
                        )
                        .await;
                    ctx.send(Msg::Done(
                        r.map(|i| format!("pulled {pulled} artifact file(s), terminated {}", i.id))
                            .map_err(|e| {
                                format!("pulled {pulled} file(s); terminate failed: {e:#}")
                            }),
                    ));
                });
            }
            Command::Adopt { instance } => {
                tokio::spawn(async move {
                    let r = ctx.engine.adopt(&instance).await;
                    ctx.send(Msg::Done(
                        r.map(|i| format!("adopted {} ({})", i.id, i.state))
                            .map_err(|e| format!("adopt failed: {e:#}")),
                    ));
                });
            }
            Command::RunJob { instance } => {
                let Some(project) = ctx.project.clone() else {
                    ctx.send(Msg::Done(Err("no trainctl.toml to run".into())));
                    return;
                };
                // Creating the job writes the store: off the UI task like everything else.
                tokio::spawn(async move {
                    // trainctl.toml as it is now (edited since the cockpit opened: used; broken:
                    // said with its file:line:col, nothing started).
                    let project = match Project::load(&project.file) {
                        Ok(p) => p,
                        Err(e) => {
                            ctx.send(Msg::Done(Err(format!("run refused: {e}"))));
                            return;
                        }
                    };
                    match ctx.engine.create_job(&project, &instance, None) {
                        Ok(job) => {
                            ctx.pull_when_it_succeeds(&job.id);
                            ctx.follow(&job.id, true);
                            ctx.send(Msg::JobStarted(job.id));
                        }
                        Err(e) => ctx.send(Msg::Done(Err(format!("run failed: {e:#}")))),
                    }
                });
            }
            Command::Cancel { job } => {
                tokio::spawn(async move {
                    let r = ctx.engine.cancel(&job, "cancelled from the cockpit").await;
                    if r.is_ok() {
                        ctx.follow(&job, false);
                    }
                    ctx.send(match r {
                        Ok(j) => Msg::Underway {
                            text: format!("stopping {} ({})…", j.name, j.id),
                            job: j.id,
                        },
                        Err(e) => Msg::Done(Err(format!("cancel failed: {e:#}"))),
                    });
                });
            }
            Command::Migrate { job } => {
                tokio::spawn(async move {
                    let r = ctx
                        .engine
                        .migrate(&job, crate::engine::MigrateTarget::Same)
                        .await;
                    if r.is_ok() {
                        // The job actor recovers it on the new machine.
                        ctx.follow(&job, false);
                    }
                    ctx.send(Msg::Done(
                        r.map(|j| format!("moving {} to a new machine…", j.id))
                            .map_err(|e| format!("migrate failed: {e:#}")),
                    ));
                });
            }
            Command::Pull { job } => {
                tokio::spawn(async move {
                    let r = ctx.engine.pull(&job, None).await;
                    ctx.send(Msg::Done(match r {
                        Ok(rep) if rep.failed.is_empty() => Ok(format!(
                            "pulled {} file(s) to {}",
                            rep.pulled.len(),
                            rep.dir()
                        )),
                        Ok(rep) => Err(format!(
                            "pulled {} file(s), {} failed: {}",
                            rep.pulled.len(),
                            rep.failed.len(),
                            rep.failures_text()
                        )),
                        Err(e) => Err(format!("pull failed: {e:#}")),
                    }));
                });
            }
            Command::Sync { instance } => {
                let Some(project) = ctx.project.clone() else {
                    return;
                };
                tokio::spawn(async move {
                    let r = ctx.engine.sync_project(&project, &instance, false).await;
                    ctx.send(Msg::Done(
                        r.map(|p| {
                            format!(
                                "synced {}: {} copied, {} deleted, {} unchanged",
                                project.name(),
                                p.upload.len() + p.links.len(),
                                p.delete.len(),
                                p.unchanged
                            )
                        })
                        .map_err(|e| format!("sync failed: {e:#}")),
                    ));
                });
            }
            Command::LoadLog { job, attempt, from } => {
                let cap = ctx.engine.config().tui.log_scrollback;
                tokio::task::spawn_blocking(move || {
                    let read = if attempt == 1 && from == 0 {
                        first_log_load(&ctx.engine, &job, cap)
                    } else {
                        ctx.engine
                            .log_lines_since(&job, attempt, from, usize::MAX)
                            .map(|(a, e, l)| (a, e, l, None))
                    };
                    let msg = match read {
                        Ok((attempt, end, lines, skipped)) => Msg::LogAppend {
                            job,
                            attempt,
                            end,
                            lines,
                            skipped,
                        },
                        Err(e) => Msg::Problem(format!("reading the log: {e:#}")),
                    };
                    ctx.send(msg);
                });
            }
            Command::LoadOlderLog { job, before, count } => {
                tokio::task::spawn_blocking(move || {
                    let msg = match older_log_lines(&ctx.engine, &job, before, count) {
                        Ok((first_line, lines)) => Msg::LogOlder {
                            job,
                            first_line,
                            lines,
                        },
                        Err(e) => Msg::Problem(format!("reading the log: {e:#}")),
                    };
                    ctx.send(msg);
                });
            }
            Command::CheckLaunch {
                seq,
                values,
                checker,
            } => {
                tokio::task::spawn_blocking(move || {
                    let verdict = Box::new(checker.0.check(&values));
                    ctx.send(Msg::LaunchChecked { seq, verdict });
                });
            }
            Command::LoadCurve {
                job,
                name,
                axis,
                smoothing,
            } => {
                tokio::task::spawn_blocking(move || {
                    use super::panes::metrics::{Curve, XAxis};
                    let mut curve = Curve::new(&name, axis, smoothing);
                    let r = ctx.engine.store().for_each_metric(&job, &name, |p| {
                        let (a, x) = XAxis::of(p);
                        if a == axis {
                            curve.push(x, p.value);
                        }
                    });
                    ctx.send(match r {
                        Ok(()) => Msg::Curve {
                            job,
                            curve: Box::new(curve),
                        },
                        Err(e) => Msg::Problem(format!("reading metrics of {job}: {e:#}")),
                    });
                });
            }
            Command::LoadMetrics { job, after_rowid } => {
                tokio::task::spawn_blocking(move || {
                    let mut after = after_rowid;
                    loop {
                        let batch = ctx.engine.store().metrics_after(&job, after, 100_000);
                        match batch {
                            Ok(rows) => {
                                let full = rows.len() >= 100_000;
                                if let Some((id, _)) = rows.last() {
                                    after = *id;
                                }
                                let points = rows.into_iter().map(|(_, p)| p).collect();
                                ctx.send(Msg::MetricsAppend {
                                    job: job.clone(),
                                    last_rowid: after,
                                    points,
                                    more: full,
                                });
                                if !full {
                                    break;
                                }
                            }
                            Err(e) => {
                                ctx.send(Msg::Problem(format!("reading metrics: {e:#}")));
                                break;
                            }
                        }
                    }
                });
            }
        }
    }

    async fn refresh(&self) {
        let slow_due = {
            let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            c.last_slow
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        };
        if slow_due {
            // Provider round trips: who is gone, what is orphaned, prices, idle machines.
            let _ = self.engine.reconcile_instances().await;
            if let Err(e) = self.engine.tend_machines().await {
                tracing::warn!("tending machines: {e:#}");
            }
            let orphans = self.engine.orphans().await.unwrap_or_default();
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            c.orphans = orphans;
            c.last_slow = Some(std::time::Instant::now());
        }
        let (engine, cache) = (self.engine.clone(), self.cache.clone());
        let snap = tokio::task::spawn_blocking(move || {
            let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
            build_snapshot(&engine, &mut c)
        })
        .await;
        match snap {
            Ok(Ok(s)) => {
                // Re-attach: every live job gets a follower here.
                for j in s.jobs.iter().filter(|j| !j.rec.state.is_terminal()) {
                    self.follow(&j.rec.id, false);
                }
                self.send(Msg::Snapshot(Box::new(s)));
            }
            Ok(Err(e)) => self.send(Msg::Problem(format!("reading the store: {e:#}"))),
            Err(e) => self.send(Msg::Problem(format!("refresh task: {e}"))),
        }
    }
}

/// The event loop, generic over the backend and the input stream so tests and benchmarks
/// can drive it. Returns when the app quits or the input ends.
pub async fn event_loop<B: Backend, S>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    ctx: &Context,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    mut input: S,
    fps: u32,
) -> Result<()>
where
    S: Stream<Item = std::io::Result<Event>> + Unpin,
    B::Error: Send + Sync + 'static,
{
    let mut events = ctx.engine.subscribe();
    ctx.ask_here();
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let gap = Duration::from_millis(1000 / fps.clamp(1, 120) as u64);
    let mut last_draw = Instant::now() - gap;
    while !app.quit {
        // Input is answered at once; streamed data waits for the next frame slot.
        let draw_at = if app.urgent {
            Instant::now()
        } else {
            last_draw + gap
        };
        let cmds = tokio::select! {
            ev = input.next() => match ev {
                Some(Ok(Event::Key(k))) => app.update(Msg::Key(k)),
                Some(Ok(Event::Resize(..))) => app.update(Msg::Resize),
                Some(Ok(_)) => Vec::new(),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            Some(m) = rx.recv() => app.update(m),
            ev = events.recv() => match ev {
                Ok(e) => app.update(Msg::Engine(e)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => vec![Command::Refresh],
                Err(tokio::sync::broadcast::error::RecvError::Closed) => Vec::new(),
            },
            _ = refresh.tick() => vec![Command::Refresh],
            _ = tokio::time::sleep_until(draw_at), if app.dirty => {
                terminal.draw(|f| ui::draw(f, app))?;
                app.dirty = false;
                app.urgent = false;
                last_draw = Instant::now();
                Vec::new()
            }
        };
        if app.ring {
            app.ring = false;
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x07").and_then(|()| out.flush());
        }
        for c in cmds {
            ctx.execute(c);
        }
    }
    Ok(())
}

/// Each display line of a job's log from its start, read a few MiB at a time (memory
/// holds one piece whatever the log's size), until `f` answers false; returns where the
/// reading stopped (attempt, offset).
fn each_log_line(
    engine: &crate::engine::Engine,
    job: &str,
    mut f: impl FnMut(String) -> bool,
) -> anyhow::Result<(i64, u64)> {
    let (mut at, mut end) = (1i64, 0u64);
    loop {
        let (a, e, lines) = engine.log_lines_since(job, at, end, 4 << 20)?;
        let done = lines.is_empty() && (a, e) == (at, end);
        (at, end) = (a, e);
        for l in lines {
            if !f(l) {
                return Ok((at, end));
            }
        }
        if done {
            return Ok((at, end));
        }
    }
}

/// A job's log opened for the first time, keeping its newest `cap` lines. Returns where
/// the next read starts, the lines, and how many older lines were left out.
fn first_log_load(
    engine: &crate::engine::Engine,
    job: &str,
    cap: usize,
) -> anyhow::Result<(i64, u64, Vec<String>, Option<u64>)> {
    let mut keep: std::collections::VecDeque<String> = Default::default();
    let mut skipped = 0u64;
    let (at, end) = each_log_line(engine, job, |l| {
        if keep.len() >= cap {
            skipped += 1;
            if keep.pop_front().is_none() {
                return true;
            }
        }
        keep.push_back(l);
        true
    })?;
    Ok((at, end, keep.into(), Some(skipped)))
}

/// Display lines `[before - count, before)` of a job's log (numbered from its first line,
/// attempt markers included, as [`first_log_load`] numbers them).
fn older_log_lines(
    engine: &crate::engine::Engine,
    job: &str,
    before: u64,
    count: usize,
) -> anyhow::Result<(u64, Vec<String>)> {
    let start = before.saturating_sub(count as u64);
    let mut out = Vec::new();
    let mut index = 0u64;
    each_log_line(engine, job, |l| {
        if index >= start && index < before {
            out.push(l);
        }
        index += 1;
        index < before
    })?;
    Ok((start.min(index), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptRecord, JobRecord, LogOffset};

    /// A job of two attempts whose logs (6 MiB, more than one read) are stored.
    async fn two_attempt_job() -> (tempfile::TempDir, Engine, String, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(crate::config::UserConfig {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        })
        .unwrap();
        let inst = engine
            .launch("local", &crate::provider::LaunchRequest::default())
            .await
            .unwrap();
        let job = "j-two".to_string();
        engine
            .store()
            .insert_job(&JobRecord::pending(&job, "t", "/nowhere", "true", &inst.id))
            .unwrap();
        let mut want = Vec::new();
        for attempt in 1..=2i64 {
            if attempt == 2 {
                want.push(format!("── trainctl: attempt 2 on {} ──", inst.id));
            }
            engine
                .store()
                .add_attempt(&AttemptRecord {
                    job_id: job.clone(),
                    attempt,
                    instance_id: inst.id.clone(),
                    remote_dir: "/nowhere/j".into(),
                    workdir: "/nowhere".into(),
                    started_ms: 0,
                    ended_ms: None,
                    exit_code: None,
                    ..Default::default()
                })
                .unwrap();
            let mut text = String::new();
            for i in 0..60_000 {
                let l = format!("attempt {attempt} line {i:06} {}", "x".repeat(30));
                text.push_str(&l);
                text.push('\n');
                want.push(l);
            }
            let path = engine.local_log_path(&job, attempt);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            let old = engine.store().log_offset(&job, attempt).unwrap();
            let new = LogOffset {
                byte_offset: text.len() as u64,
                ..old.clone()
            };
            assert!(
                engine
                    .store()
                    .commit_log_chunk(&job, attempt, &old, &new, &[])
                    .unwrap()
            );
        }
        (dir, engine, job, want)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_log_is_opened_and_read_back_a_piece_at_a_time() {
        let (_dir, engine, job, want) = two_attempt_job().await;
        let (attempt, _, lines, skipped) = first_log_load(&engine, &job, 1000).unwrap();
        assert_eq!(attempt, 2);
        assert_eq!(skipped, Some((want.len() - 1000) as u64));
        assert_eq!(lines, want[want.len() - 1000..]);
        // Scrolling back across the marker between the attempts.
        let before = 60_005u64;
        let (first, older) = older_log_lines(&engine, &job, before, 10).unwrap();
        assert_eq!(first, before - 10);
        assert_eq!(older, want[(before - 10) as usize..before as usize]);
        assert!(
            older
                .iter()
                .any(|l| l.starts_with("── trainctl: attempt 2"))
        );
        // Past the end: what there is.
        let total = want.len() as u64;
        let (first, older) = older_log_lines(&engine, &job, total + 50, 100).unwrap();
        assert_eq!(first, total - 50);
        assert_eq!(older, want[(total - 50) as usize..]);
    }
}
