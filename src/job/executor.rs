//! How a job's attempt runs on a machine: started detached, its status read, signalled,
//! told of an interruption. The engine goes through [`Executor`] only; the detached runner
//! ([`DetachedRunner`], `assets/remote/runner.sh`) is the first implementation, a Slurm
//! `sbatch` executor the next.

use super::RemoteStatus;
use crate::remote::Remote;
use anyhow::Result;
use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::mpsc;

#[async_trait]
pub trait Executor: Send + Sync {
    fn name(&self) -> &'static str;

    /// Start the attempt whose files live in `job_dir`, running `script` in `workdir`,
    /// detached from trainctl; `grace` is the time to save given on an interruption notice.
    /// Starting twice starts it once. Returns the executor's handle (a process group id).
    async fn start(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        workdir: &str,
        script: &str,
        grace: Duration,
    ) -> Result<String>;

    async fn status(&self, remote: &dyn Remote, job_dir: &str) -> Result<RemoteStatus>;

    /// The attempt's status and its log from `offset` streamed into `sink`, side by side.
    /// `Streamed::Read { complete: true }` when the read took the whole log: the job had
    /// ended (its exit code was on the machine) before the read began.
    async fn status_then_log(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        offset: u64,
        sink: mpsc::Sender<Vec<u8>>,
    ) -> Result<super::Polled> {
        let (log, ended_if) = (super::log_path(job_dir), super::exit_code_path(job_dir));
        let (status, streamed) = tokio::join!(
            self.status(remote, job_dir),
            remote.stream_file(&log, offset, Some(&ended_if), sink)
        );
        Ok(super::Polled {
            status: status?,
            log: streamed?,
            gpu_bytes: None,
        })
    }

    /// Send `signal` ("TERM", "KILL") to the whole attempt.
    async fn signal(&self, remote: &dyn Remote, job_dir: &str, signal: &str) -> Result<()>;

    /// SIGTERM, up to `grace`, then SIGKILL; returns the status after.
    async fn stop(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        grace: Duration,
    ) -> Result<RemoteStatus>;

    /// An interruption notice for this attempt: the machine stops it with the grace to save
    /// and records the interruption, with or without trainctl.
    async fn notify(&self, remote: &dyn Remote, job_dir: &str, reason: &str) -> Result<()>;

    /// What a scheduler has free for the next job (`debug 1/2 GPUs free · gpu 0/8 GPUs
    /// free`), shown where a machine shows its GPUs; none for a machine of its own.
    async fn capacity(&self, _remote: &dyn Remote) -> Result<Option<String>> {
        Ok(None)
    }

    /// The scheduler's jobs this store submitted that have not ended, each with the name
    /// of the attempt's directory it runs (the last part of `job_dir`): what the store
    /// does not know among them is an orphan. None on a machine of its own (its attempts
    /// are processes the runner's files account for).
    async fn batch_jobs(&self, _remote: &dyn Remote) -> Result<Vec<BatchJob>> {
        Ok(Vec::new())
    }

    /// Cancel one of [`Executor::batch_jobs`] (an orphan) and wait until it is gone.
    async fn cancel_batch_job(&self, _remote: &dyn Remote, id: &str) -> Result<()> {
        anyhow::bail!("no scheduler here to cancel batch job {id}")
    }
}

/// A scheduler's job of this store's (see [`Executor::batch_jobs`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BatchJob {
    /// The scheduler's id (`12345`).
    pub id: String,
    /// Its name at the scheduler.
    pub name: String,
    /// The attempt directory's name it runs (`j-…-1`).
    pub attempt_dir: String,
    /// The scheduler's word for its state (`PENDING`, `RUNNING`).
    pub state: String,
}

/// The detached runner: `setsid sh runner.sh` with every stream redirected, its own
/// process group, a notice watcher beside it.
pub struct DetachedRunner;

#[async_trait]
impl Executor for DetachedRunner {
    fn name(&self) -> &'static str {
        "runner"
    }

    async fn start(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        workdir: &str,
        script: &str,
        grace: Duration,
    ) -> Result<String> {
        let pid = super::start_detached(remote, job_dir, workdir, script, grace).await?;
        Ok(pid.to_string())
    }

    async fn status(&self, remote: &dyn Remote, job_dir: &str) -> Result<RemoteStatus> {
        super::status(remote, job_dir).await
    }

    async fn status_then_log(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        offset: u64,
        sink: mpsc::Sender<Vec<u8>>,
    ) -> Result<super::Polled> {
        super::status_then_log(remote, job_dir, offset, sink).await
    }

    async fn signal(&self, remote: &dyn Remote, job_dir: &str, signal: &str) -> Result<()> {
        super::signal(remote, job_dir, signal).await
    }

    async fn stop(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        grace: Duration,
    ) -> Result<RemoteStatus> {
        super::stop(remote, job_dir, grace).await
    }

    async fn notify(&self, remote: &dyn Remote, job_dir: &str, reason: &str) -> Result<()> {
        super::notify(remote, job_dir, reason).await
    }
}
