//! The `ssh` provider: a pool of machines the user already has (a lab's GPU boxes, a rented
//! server), treated like instances. `launch` takes a free host that fits (GPUs, a named
//! host) and records a hold on it; `terminate` releases the hold (trainctl's jobs there are
//! stopped by the engine first). It never powers a host off.

use super::{Capabilities, LaunchRequest, Launched, Listed, Observed, Plan, Provider};
use crate::config::{SshHostConfig, SshProviderConfig};
use crate::model::Money;
use crate::remote::Remote;
use crate::ssh::config::SshConfig;
use crate::ssh::remote::{PromptSlot, SshRemote, SshTarget};
use crate::store::InstanceRecord;
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct SshProvider {
    cfg: SshProviderConfig,
    holds: PathBuf,
    known_hosts: PathBuf,
    ssh_config: SshConfig,
    conns: tokio::sync::Mutex<HashMap<String, Arc<SshRemote>>>,
    prompt: PromptSlot,
}

impl SshProvider {
    pub fn new(data_dir: &Path, cfg: SshProviderConfig, prompt: PromptSlot) -> SshProvider {
        SshProvider::with_holds(data_dir, cfg, prompt, "ssh-holds")
    }

    /// A host pool whose holds are kept in `<data>/<holds>` (the Slurm provider's login
    /// nodes keep theirs apart from the ssh pool's).
    pub fn with_holds(
        data_dir: &Path,
        cfg: SshProviderConfig,
        prompt: PromptSlot,
        holds: &str,
    ) -> SshProvider {
        let ssh_config = match &cfg.ssh_config {
            Some(p) => SshConfig::load(p),
            None => SshConfig::load_default(),
        };
        SshProvider {
            known_hosts: cfg
                .known_hosts
                .clone()
                .unwrap_or_else(|| data_dir.join("known_hosts")),
            holds: data_dir.join(holds),
            cfg,
            ssh_config,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            prompt,
        }
    }

    fn host(&self, name: &str) -> Result<&SshHostConfig> {
        self.cfg
            .hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no ssh host `{name}` in [providers.ssh]"))
    }

    /// Instance ids holding `host` now.
    fn holders(&self, host: &str) -> Vec<String> {
        std::fs::read_dir(self.holds.join(host))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn target(&self, h: &SshHostConfig, accept_new: bool) -> SshTarget {
        let mut t = SshTarget::resolve(
            &h.address,
            h.user.as_deref(),
            h.port,
            h.identity_file.as_deref(),
            &self.ssh_config,
            &self.known_hosts,
            accept_new || self.cfg.accept_new_host_keys,
        );
        t.prompt = Some(self.prompt.clone());
        t
    }

    async fn connect(&self, h: &SshHostConfig, accept_new: bool) -> Result<Arc<SshRemote>> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&h.name) {
            return Ok(c.clone());
        }
        let r = SshRemote::connect(self.target(h, accept_new), h.remote_dir.as_deref())
            .await
            .with_context(|| format!("ssh host `{}` ({})", h.name, h.address))?;
        let r = Arc::new(r);
        conns.insert(h.name.clone(), r.clone());
        Ok(r)
    }
}

#[async_trait]
impl Provider for SshProvider {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // The hold is ours: the host's own state is only known by reaching it.
            vouches: false,
            types_are_hosts: true,
            ..Capabilities::default()
        }
    }

    fn check(&self, req: &LaunchRequest) -> Result<Plan> {
        req.only_options("ssh", &["hourly_usd"])?;
        if req.spot {
            bail!("ssh hosts have no spot market");
        }
        let need = req.gpus.unwrap_or(0);
        let mut fits: Vec<&SshHostConfig> = self
            .cfg
            .hosts
            .iter()
            .filter(|h| req.instance_type.as_deref().is_none_or(|t| t == h.name))
            .filter(|h| h.gpus >= need)
            .collect();
        if fits.is_empty() {
            let known: Vec<String> = self
                .cfg
                .hosts
                .iter()
                .map(|h| format!("{} ({} GPU)", h.name, h.gpus))
                .collect();
            bail!(
                "no ssh host fits (type {:?}, {need} GPU); hosts: {}",
                req.instance_type.as_deref().unwrap_or("any"),
                if known.is_empty() {
                    "none configured".into()
                } else {
                    known.join(", ")
                }
            );
        }
        fits.sort_by(|a, b| a.hourly_usd.total_cmp(&b.hourly_usd));
        let free = fits
            .iter()
            .find(|h| self.holders(&h.name).len() < h.max_jobs as usize)
            .with_context(|| {
                format!(
                    "every fitting ssh host is busy ({}); terminate an instance on one",
                    fits.iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        Ok(Plan {
            instance_type: free.name.clone(),
            gpus: free.gpus,
            spot: false,
            hourly: req
                .money_option("hourly_usd")?
                .unwrap_or_else(|| Money::from_dollars_f64(free.hourly_usd)),
            accept_new_host_key: req.accept_new_host_key,
            ..Plan::default()
        })
    }

    fn instance_types(&self) -> Vec<String> {
        self.cfg.hosts.iter().map(|h| h.name.clone()).collect()
    }

    async fn launch(&self, id: &str, plan: &Plan) -> Result<Launched> {
        if let Some(l) = self.find(id).await? {
            return Ok(l);
        }
        let h = self.host(&plan.instance_type)?.clone();
        // Reachable, host key trusted, authenticated: only then is it held.
        self.connect(&h, plan.accept_new_host_key).await?;
        let dir = self.holds.join(&h.name);
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join(id), id).await?;
        Ok(Launched {
            provider_id: format!("{}/{id}", h.name),
            region: None,
            backend: None,
            launched_ms: Some(crate::model::now_ms()),
            ..Launched::default()
        })
    }

    async fn reach(&self, inst: &InstanceRecord) -> Result<String> {
        let h = self.host(&inst.instance_type)?.clone();
        let r = self.connect(&h, false).await?;
        let t = r.target();
        Ok(format!("{}@{}:{}", t.user, t.hostname, t.port))
    }

    async fn find(&self, id: &str) -> Result<Option<Launched>> {
        for h in &self.cfg.hosts {
            let hold = self.holds.join(&h.name).join(id);
            if let Ok(meta) = tokio::fs::metadata(&hold).await {
                let at = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64);
                return Ok(Some(Launched {
                    provider_id: format!("{}/{id}", h.name),
                    region: None,
                    backend: None,
                    launched_ms: at,
                    ..Launched::default()
                }));
            }
        }
        Ok(None)
    }

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed> {
        Ok(
            if self.holds.join(&inst.instance_type).join(&inst.id).exists() {
                Observed::Running
            } else {
                Observed::Gone
            },
        )
    }

    async fn terminate(&self, inst: &InstanceRecord) -> Result<()> {
        let hold = self.holds.join(&inst.instance_type).join(&inst.id);
        match tokio::fs::remove_file(&hold).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if self.holders(&inst.instance_type).is_empty() {
            self.conns.lock().await.remove(&inst.instance_type);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Listed>> {
        let mut ids = Vec::new();
        for h in &self.cfg.hosts {
            ids.extend(self.holders(&h.name).into_iter().map(|id| Listed {
                provider_id: format!("{}/{id}", h.name),
                id,
                instance_type: Some(h.name.clone()),
                ..Listed::default()
            }));
        }
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ids)
    }

    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>> {
        let h = self.host(&inst.instance_type)?.clone();
        let r: Arc<dyn Remote> = self.connect(&h, false).await?;
        Ok(r)
    }
}
