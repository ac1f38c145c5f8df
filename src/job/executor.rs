//! How a job's attempt runs on a machine: started detached, its status read, signalled,
//! told of an interruption. The engine goes through [`Executor`] only; the detached runner
//! ([`DetachedRunner`], `assets/remote/runner.sh`) is the first implementation, a Slurm
//! `sbatch` executor the next.

use super::RemoteStatus;
use crate::remote::Remote;
use anyhow::Result;
use async_trait::async_trait;
use std::time::Duration;

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
