//! When a job ends: its summary (final and best value of each main metric, duration,
//! cost, attempts, artifacts), and the user's `on_end` command run with it.

use super::*;

/// One main metric of a job: its last value and its best (lower or higher, by its name).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricSummary {
    pub name: String,
    pub last: f64,
    pub last_step: Option<i64>,
    pub best: f64,
    pub best_step: Option<i64>,
    pub lower_is_better: bool,
    pub points: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobSummary {
    pub job_id: String,
    pub name: String,
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// From the first attempt's start (or the job's creation) to its end (or now).
    pub duration_ms: i64,
    pub cost_micros: i64,
    pub attempts: usize,
    pub artifacts: usize,
    pub artifact_bytes: u64,
    pub metrics: Vec<MetricSummary>,
}

/// Words that make a metric a main one (what a run is judged by), each with whether it
/// is better low. GPU samples and learning rates are not main metrics.
const MAIN: &[(&str, bool)] = &[
    ("loss", true),
    ("perplexity", true),
    ("ppl", true),
    ("err", true),
    ("wer", true),
    ("cer", true),
    ("mae", true),
    ("mse", true),
    ("nll", true),
    ("acc", false),
    ("f1", false),
    ("auc", false),
    ("map", false),
    ("bleu", false),
    ("rouge", false),
    ("iou", false),
    ("dice", false),
    ("score", false),
    ("precision", false),
    ("recall", false),
    ("reward", false),
    ("return", false),
    ("top1", false),
    ("top5", false),
];

/// Whether `name` is a main metric, and whether it is better low.
pub fn main_metric(name: &str) -> Option<bool> {
    let n = name.to_ascii_lowercase();
    if n.starts_with("gpu") && n.contains('.') {
        return None;
    }
    let mut found = None;
    for (w, lower) in MAIN {
        if n.contains(w) {
            // A loss-like word wins over a score-like one (`err` in `error_rate_score`).
            found = Some(found.unwrap_or(false) || *lower);
        }
    }
    found
}

/// Main metrics summed up at most (the first ones the log printed).
const MAX_MAIN: usize = 12;

impl Engine {
    /// The summary of a job as the store has it now.
    pub fn job_summary(&self, job_id: &str) -> Result<JobSummary> {
        let job = self.store().job(job_id)?.context("no such job")?;
        let attempts = self.store().attempts(job_id)?;
        let start = attempts.first().map_or(job.created_ms, |a| a.started_ms);
        let duration_ms = (job.ended_ms.unwrap_or_else(now_ms) - start).max(0);
        let cost_micros = self
            .cost_report()?
            .jobs
            .into_iter()
            .find(|c| c.id == job.id)
            .map_or(0, |c| c.cost_micros);
        let artifacts = self.store().artifacts(job_id)?;
        let names = self.store().metric_names(job_id)?;
        let mut metrics = Vec::new();
        for name in names {
            let Some(lower) = main_metric(&name) else {
                continue;
            };
            let mut m: Option<MetricSummary> = None;
            self.store().for_each_metric(job_id, &name, |p| {
                if !p.value.is_finite() {
                    return;
                }
                let s = m.get_or_insert_with(|| MetricSummary {
                    name: name.clone(),
                    last: p.value,
                    last_step: p.step,
                    best: p.value,
                    best_step: p.step,
                    lower_is_better: lower,
                    points: 0,
                });
                s.points += 1;
                s.last = p.value;
                s.last_step = p.step;
                let better = if lower {
                    p.value < s.best
                } else {
                    p.value > s.best
                };
                if better {
                    s.best = p.value;
                    s.best_step = p.step;
                }
            })?;
            metrics.extend(m);
            if metrics.len() == MAX_MAIN {
                break;
            }
        }
        Ok(JobSummary {
            job_id: job.id.clone(),
            name: job.name.clone(),
            state: job.state,
            exit_code: job.exit_code,
            reason: job.reason.clone(),
            duration_ms,
            cost_micros,
            attempts: attempts.len(),
            artifacts: artifacts.len(),
            artifact_bytes: artifacts.iter().map(|a| a.size).sum(),
            metrics,
        })
    }

    /// A job just ended, moved there by this process (a state moves once, checked in the
    /// store, so this runs once per job whichever process saw the end): run the user's
    /// `on_end` command (the project's, else the user config's) on this side, detached,
    /// with the job's summary in its environment; its output goes to
    /// `<data>/hooks/<job>.log`. A failure to start it is an event, never an error.
    pub(super) fn job_ended(&self, job_id: &str) {
        if let Err(e) = self.run_on_end(job_id) {
            let _ = self.store().add_event(
                "job.on_end_error",
                None,
                Some(job_id),
                &format!("on_end: {e:#}"),
            );
        }
    }

    fn run_on_end(&self, job_id: &str) -> Result<()> {
        let job = self.store().job(job_id)?.context("no such job")?;
        let spec: Option<JobSpec> = serde_json::from_str(&job.spec_json).ok();
        let command = spec
            .as_ref()
            .and_then(|s| s.project.on_end.clone())
            .or_else(|| self.inner.cfg.on_end.clone());
        let Some(command) = command.filter(|c| !c.trim().is_empty()) else {
            return Ok(());
        };
        let summary = self.job_summary(job_id)?;
        let dir = self.inner.data_dir.join("hooks");
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{job_id}.log")))?;
        let cwd = spec
            .as_ref()
            .map(|s| PathBuf::from(&s.root))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| self.inner.data_dir.clone());
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("TRAINCTL_JOB_ID", &summary.job_id)
            .env("TRAINCTL_JOB_NAME", &summary.name)
            .env("TRAINCTL_JOB_STATE", summary.state.as_str())
            .env(
                "TRAINCTL_EXIT_CODE",
                summary.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            )
            .env(
                "TRAINCTL_REASON",
                summary.reason.clone().unwrap_or_default(),
            )
            .env(
                "TRAINCTL_COST_USD",
                format!(
                    "{}.{:06}",
                    summary.cost_micros / 1_000_000,
                    summary.cost_micros % 1_000_000
                ),
            )
            .env("TRAINCTL_SUMMARY", serde_json::to_string(&summary)?);
        // Its own process group: a Ctrl-C meant for trainctl does not cut a notification.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{command}`"))?;
        let pid = child.id();
        // Reaped off the caller's thread; the command outlives a trainctl that exits.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        self.store().add_event(
            "job.on_end",
            None,
            Some(job_id),
            &format!("on_end started (pid {pid}): {command}"),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_metrics_and_their_direction_come_from_their_names() {
        assert_eq!(main_metric("loss"), Some(true));
        assert_eq!(main_metric("val_loss"), Some(true));
        assert_eq!(main_metric("eval/accuracy"), Some(false));
        assert_eq!(main_metric("mAP50-95"), Some(false));
        assert_eq!(main_metric("wer"), Some(true));
        assert_eq!(main_metric("lr"), None);
        assert_eq!(main_metric("gpu0.util"), None);
        assert_eq!(main_metric("epoch_time"), None);
    }
}
