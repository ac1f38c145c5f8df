//! The embedded `local` provider: an "instance" is a sandbox directory on this machine,
//! `<data>/sandboxes/<id>/home`. No credentials, no network; a configurable pretend price
//! makes cost accounting real. Terminate stops every process that carries the sandbox's
//! marker (see [`crate::remote::local::SANDBOX_ENV`]) and removes the directory.

use super::{Capabilities, LaunchRequest, Launched, Listed, Observed, Plan, Provider};
use crate::config::LocalProviderConfig;
use crate::model::Money;
use crate::remote::Remote;
use crate::remote::local::{LocalRemote, SANDBOX_ENV};
use crate::store::InstanceRecord;
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const INSTANCE_TYPE: &str = "local";

pub struct LocalProvider {
    root: PathBuf,
    cfg: LocalProviderConfig,
    grace: Duration,
}

impl LocalProvider {
    pub fn new(data_dir: &Path, cfg: LocalProviderConfig, grace: Duration) -> LocalProvider {
        LocalProvider {
            root: data_dir.join("sandboxes"),
            cfg,
            grace,
        }
    }

    fn sandbox(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn home(&self, id: &str) -> PathBuf {
        self.sandbox(id).join("home")
    }
}

/// Pids of every live process whose environment carries `TRAINCTL_SANDBOX=<id>`.
pub fn sandbox_processes(id: &str) -> Vec<i32> {
    let needle = format!("{SANDBOX_ENV}={id}");
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            // A zombie has no environment left, so this is a live process.
            pids.push(pid);
        }
    }
    pids
}

fn signal_all(pids: &[i32], sig: i32) {
    for &pid in pids {
        // SAFETY: kill(2) with a pid we just read from /proc; no memory is touched.
        unsafe {
            let pgid = libc::getpgid(pid);
            if pgid > 1 && pgid != libc::getpgrp() {
                libc::kill(-pgid, sig);
            }
            libc::kill(pid, sig);
        }
    }
}

/// SIGTERM everything in the sandbox, wait up to `grace`, then SIGKILL what is left.
/// Returns the pids still alive at the end (empty on success).
pub async fn stop_sandbox_processes(id: &str, grace: Duration) -> Vec<i32> {
    let pids = sandbox_processes(id);
    if pids.is_empty() {
        return pids;
    }
    signal_all(&pids, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if sandbox_processes(id).is_empty() {
            return Vec::new();
        }
    }
    for _ in 0..50 {
        let left = sandbox_processes(id);
        if left.is_empty() {
            return left;
        }
        signal_all(&left, libc::SIGKILL);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sandbox_processes(id)
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vouches: true,
            ..Capabilities::default()
        }
    }

    fn check(&self, req: &LaunchRequest) -> Result<Plan> {
        req.only_options("local", &["hourly_usd"])?;
        let ty = req.instance_type.as_deref().unwrap_or(INSTANCE_TYPE);
        if ty != INSTANCE_TYPE {
            bail!("the local provider has one instance type, `{INSTANCE_TYPE}`; `{ty}` is unknown");
        }
        // This computer's GPUs (if any) are checked on it when a job starts
        // (`job::gpu::check`), with what it has in the error.
        if req.spot {
            bail!("the local provider has no spot market");
        }
        Ok(Plan {
            instance_type: ty.to_string(),
            gpus: 0,
            spot: false,
            accept_new_host_key: false,
            hourly: req
                .money_option("hourly_usd")?
                .unwrap_or_else(|| Money::from_dollars_f64(self.cfg.hourly_usd)),
            ..Plan::default()
        })
    }

    fn instance_types(&self) -> Vec<String> {
        vec![INSTANCE_TYPE.to_string()]
    }

    async fn launch(&self, id: &str, _plan: &Plan) -> Result<Launched> {
        // Launching the same id again (a launch cut off and resumed) finds its sandbox.
        if let Some(l) = self.find(id).await? {
            return Ok(l);
        }
        let live = self.list().await?.len();
        if live >= self.cfg.max_instances as usize {
            bail!(
                "the local provider already holds {live} sandboxes (max_instances = {}); terminate one first",
                self.cfg.max_instances
            );
        }
        let home = self.home(id);
        tokio::fs::create_dir_all(home.join(".trainctl"))
            .await
            .with_context(|| format!("creating sandbox {}", home.display()))?;
        self.find(id)
            .await?
            .with_context(|| format!("sandbox {id} vanished as it was made"))
    }

    async fn reach(&self, inst: &InstanceRecord) -> Result<String> {
        let home = self.home(&inst.id);
        if !home.is_dir() {
            bail!("sandbox {} is gone", inst.id);
        }
        Ok(home.to_string_lossy().into_owned())
    }

    async fn find(&self, id: &str) -> Result<Option<Launched>> {
        let home = self.home(id);
        let Ok(meta) = tokio::fs::metadata(home.join(".trainctl")).await else {
            return Ok(None);
        };
        // The sandbox's own birth is the provider's launch time.
        let at = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        Ok(Some(Launched {
            provider_id: id.to_string(),
            region: None,
            backend: None,
            launched_ms: at,
            ..Launched::default()
        }))
    }

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed> {
        Ok(if self.sandbox(&inst.id).is_dir() {
            Observed::Running
        } else {
            Observed::Gone
        })
    }

    async fn terminate(&self, inst: &InstanceRecord) -> Result<()> {
        let left = stop_sandbox_processes(&inst.id, self.grace).await;
        if !left.is_empty() {
            bail!(
                "processes {left:?} of sandbox {} would not die; the sandbox is kept",
                inst.id
            );
        }
        let dir = self.sandbox(&inst.id);
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir)
                .await
                .with_context(|| format!("removing sandbox {}", dir.display()))?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Listed>> {
        let mut ids = Vec::new();
        let mut rd = match tokio::fs::read_dir(&self.root).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e.into()),
        };
        while let Some(e) = rd.next_entry().await? {
            if e.file_type().await?.is_dir() {
                let id = e.file_name().to_string_lossy().into_owned();
                ids.push(Listed {
                    provider_id: id.clone(),
                    id,
                    ..Listed::default()
                });
            }
        }
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ids)
    }

    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>> {
        let home = self.home(&inst.id);
        if !home.is_dir() {
            bail!("sandbox {} is gone", inst.id);
        }
        Ok(Arc::new(LocalRemote::new(&home, &inst.id)))
    }
}
