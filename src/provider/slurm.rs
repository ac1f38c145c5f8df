//! The `slurm` provider: clusters reached through their login node. A cluster is not
//! rented: `launch` takes it like an instance of the `ssh` pool (the login node reachable,
//! its host key trusted, authenticated: then it is held), nothing bills unless the
//! cluster's GPU-hours have a price, and each job attempt runs as one batch job there
//! ([`crate::job::slurm::SbatchExecutor`]): code synced once to the shared filesystem
//! through the login node, the runner's files on it, the state asked of Slurm.

use super::ssh::SshProvider;
use super::{Capabilities, LaunchRequest, Launched, Listed, Observed, Plan, Provider};
use crate::config::{SlurmClusterConfig, SlurmProviderConfig, SshHostConfig, SshProviderConfig};
use crate::job::executor::Executor;
use crate::job::slurm::{Batch, Cluster, SbatchExecutor};
use crate::model::Money;
use crate::remote::Remote;
use crate::ssh::remote::PromptSlot;
use crate::store::InstanceRecord;
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;

pub struct SlurmProvider {
    cfg: SlurmProviderConfig,
    /// The login nodes, as a host pool (one hold per `launch`; many at once).
    logins: SshProvider,
    /// Where this store's tag is kept (made on first use, not at every start).
    dir: std::path::PathBuf,
    /// This store's tag in its batch jobs' names (`trainctl-<tag>-…`).
    owner: std::sync::OnceLock<String>,
}

impl SlurmProvider {
    pub fn new(data_dir: &Path, cfg: SlurmProviderConfig, prompt: PromptSlot) -> SlurmProvider {
        let hosts = cfg
            .clusters
            .iter()
            .map(|c| SshHostConfig {
                name: c.name.clone(),
                address: c.login.clone(),
                user: c.user.clone(),
                port: c.port,
                identity_file: c.identity_file.clone(),
                gpus: c.gpus,
                hourly_usd: 0.0,
                max_jobs: 1000,
                remote_dir: c.remote_dir.clone(),
            })
            .collect();
        let pool = SshProviderConfig {
            accept_new_host_keys: cfg.accept_new_host_keys,
            known_hosts: cfg.known_hosts.clone(),
            ssh_config: cfg.ssh_config.clone(),
            hosts,
        };
        SlurmProvider {
            logins: SshProvider::with_holds(data_dir, pool, prompt, "slurm-holds"),
            dir: data_dir.join("slurm"),
            owner: std::sync::OnceLock::new(),
            cfg,
        }
    }

    /// This store's tag, made (and kept in the data directory) on first use.
    fn owner(&self) -> &str {
        self.owner.get_or_init(|| {
            let owner = super::gpucloud::owner(&self.dir, None)
                .unwrap_or_else(|_| self.dir.display().to_string());
            super::gpucloud::owner_tag(&owner)
        })
    }

    fn cluster(&self, name: &str) -> Result<&SlurmClusterConfig> {
        self.cfg
            .clusters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no Slurm cluster `{name}` in [providers.slurm]"))
    }
}

#[async_trait]
impl Provider for SlurmProvider {
    fn name(&self) -> &'static str {
        "slurm"
    }

    /// The login nodes' pool's: the hold is ours, a cluster is known by reaching it.
    fn capabilities(&self) -> Capabilities {
        self.logins.capabilities()
    }

    fn check(&self, req: &LaunchRequest) -> Result<Plan> {
        req.only_options("slurm", &[])?;
        if req.spot {
            bail!("a Slurm cluster has no spot market (preemption is the cluster's own)");
        }
        let names: Vec<&str> = self.cfg.clusters.iter().map(|c| c.name.as_str()).collect();
        let c = match req.instance_type.as_deref() {
            Some(t) => self.cluster(t).with_context(|| {
                format!(
                    "clusters: {}",
                    if names.is_empty() {
                        "none configured".into()
                    } else {
                        names.join(", ")
                    }
                )
            })?,
            None => self
                .cfg
                .clusters
                .first()
                .context("no cluster in [providers.slurm]")?,
        };
        if req.gpus.is_some_and(|g| g > c.gpus) {
            bail!(
                "cluster `{}` gives a job {} GPU(s) (gpus in its [[providers.slurm.clusters]])",
                c.name,
                c.gpus
            );
        }
        Ok(Plan {
            instance_type: c.name.clone(),
            gpus: c.gpus,
            spot: false,
            // The hold bills nothing: each job's GPU time does (`gpu_hour_price`).
            hourly: Money::ZERO,
            accept_new_host_key: req.accept_new_host_key,
            ..Plan::default()
        })
    }

    fn instance_types(&self) -> Vec<String> {
        self.cfg.clusters.iter().map(|c| c.name.clone()).collect()
    }

    async fn launch(&self, id: &str, plan: &Plan) -> Result<Launched> {
        self.logins.launch(id, plan).await
    }

    async fn reach(&self, inst: &InstanceRecord) -> Result<String> {
        self.logins.reach(inst).await
    }

    async fn find(&self, id: &str) -> Result<Option<Launched>> {
        self.logins.find(id).await
    }

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed> {
        self.logins.describe(inst).await
    }

    async fn terminate(&self, inst: &InstanceRecord) -> Result<()> {
        self.logins.terminate(inst).await
    }

    async fn list(&self) -> Result<Vec<Listed>> {
        self.logins.list().await
    }

    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>> {
        self.logins.remote(inst).await
    }

    fn gpu_hour_price(&self, inst: &InstanceRecord) -> Option<Money> {
        Some(self.cluster(&inst.instance_type).map_or(Money::ZERO, |c| {
            Money::from_dollars_f64(c.hourly_usd_per_gpu)
        }))
    }

    fn executor(&self, inst: &InstanceRecord) -> Option<Arc<dyn Executor>> {
        let c = self.cluster(&inst.instance_type).ok()?;
        Some(Arc::new(SbatchExecutor {
            cluster: Cluster {
                env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
            owner: format!("{}-", self.owner()),
            template: Batch {
                constraint: c.constraint.clone(),
                partition: c.partition.clone(),
                account: c.account.clone(),
                qos: c.qos.clone(),
                gpus_per_node: c.gpus,
                nodes: 1,
                ntasks_per_node: 1,
                time_limit: c.time_limit.clone(),
                ..Batch::default()
            },
        }))
    }
}
