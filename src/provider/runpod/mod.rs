//! The `runpod` provider: RunPod pods over its **GraphQL API** (`api.runpod.io/graphql`,
//! `Authorization: Bearer`; REST v1 is retired and v2 is new: GraphQL is the API RunPod's
//! own SDK and CLI have long used, with pods on demand (`podFindAndDeployOnDemand`) and
//! interruptible (`podRentInterruptable`, a bid per GPU), `podStop`, `podResume` /
//! `podBidResume`, `podTerminate`, `pod`, `myself { pods }` and `gpuTypes`).
//!
//! - Instance types are GPU names from the shipped catalog (`A100-80GB`, `H100-SXM`); a pod
//!   has `--gpus` of them (1 by default) and costs that many times the price of one.
//!   `plan` asks `gpuTypes` for what RunPod charges now.
//! - Pods are named `tc-<owner tag>-<trainctl id>` (found again by name after a lost
//!   answer); trainctl's key goes in as the `PUBLIC_KEY` the images install, port 22/tcp
//!   is exposed, and the SSH address is the pod's public mapping of port 22.
//! - A spot pod RunPod took back (EXITED without trainctl stopping it) is `Interrupted`:
//!   the engine's recovery moves the job to a new pod and resumes it.
//! - GraphQL answers errors with HTTP 200 and an `errors` list: read here into kinds.

use super::gpucloud::{CloudSsh, Step};
use super::http::{ApiClient, Repeat};
use super::{Capabilities, LaunchRequest, Launched, Listed, Observed, Plan, Provider};
use crate::config::RunPodProviderConfig;
use crate::model::{InstanceState, Money};
use crate::remote::{ErrorKind, Remote, classified, error_kind};
use crate::ssh::remote::PromptSlot;
use crate::store::InstanceRecord;
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const CATALOG: &str = include_str!("../../../assets/catalog/runpod.csv");
const OPTIONS: &[&str] = &["bid_usd", "image", "cloud_type"];

/// One GPU of the shipped catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub name: String,
    pub gpu_type_id: String,
    pub memory_gib: f64,
    pub vcpus_per_gpu: u32,
    pub price: Money,
    pub spot_price: Option<Money>,
    pub max_gpus: u32,
}

pub fn catalog() -> Vec<Gpu> {
    parse(CATALOG)
}

/// The catalog `gpus --refresh` kept in `data_dir`, else the shipped one.
pub fn catalog_in(data_dir: &Path) -> Vec<Gpu> {
    super::kept_catalog(data_dir, "runpod.csv", CATALOG, parse)
}

fn parse(text: &str) -> Vec<Gpu> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some(Gpu {
                name: f.first()?.to_string(),
                gpu_type_id: f.get(1)?.to_string(),
                memory_gib: f.get(2)?.parse().ok()?,
                vcpus_per_gpu: f.get(3)?.parse().ok()?,
                price: Money::from_dollars_str(f.get(4)?)?,
                spot_price: f.get(5).and_then(|s| Money::from_dollars_str(s)),
                max_gpus: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

/// GraphQL errors (HTTP 200, `{"errors": [{"message"}]}`) or an HTTP error body, typed.
/// RunPod's messages carry no codes: the kind is read from their words, here at the border.
pub fn read_error(status: u16, body: &Value) -> (Option<ErrorKind>, String) {
    let msg = body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|x| x["message"].as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|m| !m.is_empty())
        .or_else(|| body["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            body.as_str()
                .map_or_else(|| body.to_string(), str::to_string)
        });
    let lower = msg.to_lowercase();
    let kind = if status == 404 || lower.contains("not found") {
        Some(ErrorKind::NotFound)
    } else if status == 401
        || status == 403
        || lower.contains("unauthorized")
        || lower.contains("api key")
    {
        Some(ErrorKind::Auth)
    } else if lower.contains("no longer any instances available")
        || lower.contains("no instances available")
        || lower.contains("not enough free")
        || lower.contains("capacity")
    {
        Some(ErrorKind::Capacity)
    } else if lower.contains("quota") || lower.contains("spend limit") || lower.contains("balance")
    {
        Some(ErrorKind::Quota)
    } else if status == 400 || lower.contains("invalid") || lower.contains("graphql_validation") {
        Some(ErrorKind::BadRequest)
    } else {
        None
    };
    (kind, msg)
}

const POD_FIELDS: &str = "id name desiredStatus lastStatusChange costPerHr gpuCount \
    runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }";

pub struct RunPodProvider {
    cfg: RunPodProviderConfig,
    dir: std::path::PathBuf,
    api: tokio::sync::OnceCell<ApiClient>,
    ssh: CloudSsh,
}

/// The pod's public SSH address: the public mapping of its port 22.
pub fn ssh_address(pod: &Value) -> Option<(String, u16)> {
    pod["runtime"]["ports"].as_array()?.iter().find_map(|p| {
        (p["privatePort"].as_u64() == Some(22) && p["isIpPublic"].as_bool() == Some(true))
            .then(|| {
                Some((
                    p["ip"].as_str()?.to_string(),
                    p["publicPort"].as_u64()? as u16,
                ))
            })
            .flatten()
    })
}

impl RunPodProvider {
    pub fn new(data_dir: &Path, cfg: RunPodProviderConfig, prompt: PromptSlot) -> RunPodProvider {
        RunPodProvider {
            ssh: CloudSsh::new(
                "runpod",
                data_dir,
                &cfg.ssh_user,
                cfg.proxy_command.clone(),
                prompt,
            ),
            dir: data_dir.join("runpod"),
            cfg,
            api: tokio::sync::OnceCell::new(),
        }
    }

    async fn api(&self) -> Result<&ApiClient> {
        self.api
            .get_or_try_init(|| async {
                ApiClient::for_provider(
                    "runpod",
                    "RUNPOD_API_KEY",
                    self.cfg.credentials_file.as_deref(),
                    &self.cfg.api_url,
                    self.cfg.request_interval_ms,
                    self.cfg.api_max_attempts,
                    read_error,
                )
            })
            .await
    }

    /// One GraphQL operation; its `data`, or its `errors` as a typed error.
    async fn gql(&self, query: &str, variables: Value, repeat: Repeat) -> Result<Value> {
        let v = self
            .api()
            .await?
            .post("", &json!({"query": query, "variables": variables}), repeat)
            .await?;
        if v["errors"].as_array().is_some_and(|e| !e.is_empty()) {
            let (kind, msg) = read_error(200, &v);
            let msg = format!("runpod: {msg}");
            return Err(match kind {
                Some(k) => classified(k, msg),
                None => anyhow!(msg),
            });
        }
        Ok(v["data"].clone())
    }

    fn catalog(&self) -> Vec<Gpu> {
        catalog_in(self.dir.parent().unwrap_or(&self.dir))
    }

    /// RunPod's GPU listing with today's prices.
    async fn gpu_types(&self) -> Result<Value> {
        let d = self
            .gql(
                "query GpuTypes { gpuTypes { id displayName memoryInGb securePrice communityPrice secureSpotPrice communitySpotPrice } }",
                json!({}),
                Repeat::Safe,
            )
            .await?;
        Ok(d["gpuTypes"].clone())
    }

    fn name_prefix(&self) -> Result<String> {
        super::gpucloud::name_prefix(&self.dir)
    }

    async fn pods(&self) -> Result<Vec<Value>> {
        let d = self
            .gql(
                &format!("query Pods {{ myself {{ pods {{ {POD_FIELDS} }} }} }}"),
                json!({}),
                Repeat::Safe,
            )
            .await?;
        Ok(d["myself"]["pods"].as_array().cloned().unwrap_or_default())
    }

    async fn pod(&self, pid: &str) -> Result<Option<Value>> {
        let d = self
            .gql(
                &format!(
                    "query Pod($input: PodFilter) {{ pod(input: $input) {{ {POD_FIELDS} }} }}"
                ),
                json!({"input": {"podId": pid}}),
                Repeat::Safe,
            )
            .await;
        match d {
            Ok(d) if d["pod"].is_null() => Ok(None),
            Ok(d) => Ok(Some(d["pod"].clone())),
            Err(e) if error_kind(&e) == Some(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn launched_from(&self, p: &Value) -> Launched {
        Launched {
            provider_id: p["id"].as_str().unwrap_or_default().to_string(),
            hourly: p["costPerHr"]
                .as_f64()
                .and_then(|c| Money::from_dollars_str(&format!("{c:.6}"))),
            ..Default::default()
        }
    }

    fn observe(&self, inst: &InstanceRecord, p: &Value) -> Observed {
        match p["desiredStatus"].as_str().unwrap_or_default() {
            "RUNNING" if ssh_address(p).is_some() => Observed::Running,
            "RUNNING" | "CREATED" => Observed::Pending,
            "EXITED" if inst.spot && inst.state != InstanceState::Stopped => {
                Observed::Interrupted {
                    reason: format!(
                        "RunPod took the spot pod back ({})",
                        crate::sanitize::sanitize_line(
                            p["lastStatusChange"]
                                .as_str()
                                .unwrap_or("exited")
                                .as_bytes()
                        )
                    ),
                    at: None,
                }
            }
            "EXITED" => Observed::Stopped,
            "TERMINATED" => Observed::Gone,
            _ => Observed::Pending,
        }
    }
}

#[async_trait]
impl Provider for RunPodProvider {
    fn name(&self) -> &'static str {
        "runpod"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            spot: true,
            stop_start: true,
            vouches: true,
            ..Default::default()
        }
    }

    fn check(&self, req: &LaunchRequest) -> Result<Plan> {
        req.only_options("runpod", OPTIONS)?;
        let cat = self.catalog();
        let find = |t: &str| cat.iter().find(|g| g.name.eq_ignore_ascii_case(t)).cloned();
        let ty = match &req.instance_type {
            Some(t) => t.clone(),
            None => cat
                .first()
                .map(|g| g.name.clone())
                .context("the RunPod catalog is empty")?,
        };
        let Some(gpu) = find(&ty) else {
            bail!(
                "unknown RunPod GPU `{ty}` (known: {})",
                cat.iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let n = req.gpus.unwrap_or(1).max(1);
        if n > gpu.max_gpus {
            bail!(
                "a RunPod pod has at most {} {} GPUs, {n} asked",
                gpu.max_gpus,
                gpu.name
            );
        }
        let per_gpu = if req.spot {
            match req.money_option("bid_usd")? {
                Some(b) => b,
                None => match self.cfg.bid_usd {
                    Some(b) => Money::from_dollars_f64(b),
                    None => gpu.spot_price.with_context(|| {
                        format!("RunPod's catalog has no spot price for {}: give a bid (-o bid_usd=...)", gpu.name)
                    })?,
                },
            }
        } else {
            gpu.price
        };
        for a in &req.any_of {
            if find(a).is_none() {
                bail!("unknown RunPod GPU `{a}` in any_of");
            }
        }
        Ok(Plan {
            instance_type: gpu.name.clone(),
            gpus: n,
            spot: req.spot,
            hourly: Money(per_gpu.0 * n as i64),
            accept_new_host_key: req.accept_new_host_key,
            region: None,
            options: req.options.clone(),
            alternatives: req.any_of.clone(),
        })
    }

    async fn plan(&self, req: &LaunchRequest) -> Result<Plan> {
        let mut plan = self.check(req)?;
        let gpu = self
            .catalog()
            .into_iter()
            .find(|g| g.name == plan.instance_type)
            .context("catalog")?;
        let d = self.gpu_types().await?;
        let Some(t) = d
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["id"].as_str() == Some(&gpu.gpu_type_id))
        else {
            bail!("RunPod no longer offers {} ({})", gpu.name, gpu.gpu_type_id);
        };
        // What RunPod charges now wins over the shipped catalog (a bid is the user's).
        let now = if plan.spot {
            t["secureSpotPrice"].as_f64()
        } else {
            t["securePrice"].as_f64()
        };
        let bid_given = req.options.contains_key("bid_usd") || self.cfg.bid_usd.is_some();
        if let Some(p) = now.filter(|p| *p > 0.0)
            && !(plan.spot && bid_given)
            && let Some(m) = Money::from_dollars_str(&format!("{p:.6}"))
        {
            plan.hourly = Money(m.0 * plan.gpus as i64);
        }
        Ok(plan)
    }

    fn instance_types(&self) -> Vec<String> {
        self.catalog().into_iter().map(|g| g.name).collect()
    }

    async fn refresh_offers(&self) -> Result<Option<String>> {
        let d = self.gpu_types().await?;
        let listed = d.as_array().cloned().unwrap_or_default();
        let mut rows = self.catalog();
        let mut priced = 0;
        for g in rows.iter_mut() {
            let Some(t) = listed
                .iter()
                .find(|t| t["id"].as_str() == Some(&g.gpu_type_id))
            else {
                continue;
            };
            if let Some(p) = t["securePrice"].as_f64().filter(|p| *p > 0.0) {
                g.price = Money::from_dollars_f64(p);
                priced += 1;
            }
            g.spot_price = t["secureSpotPrice"]
                .as_f64()
                .filter(|p| *p > 0.0)
                .map(Money::from_dollars_f64);
            if let Some(m) = t["memoryInGb"].as_f64() {
                g.memory_gib = m;
            }
        }
        rows.sort_by_key(|g| (g.price, g.name.clone()));
        let usd = |m: Money| m.to_string().trim_start_matches('$').to_string();
        let mut text = String::from(
            "gpu,gpu_type_id,gpu_memory_gib,vcpus_per_gpu,price_per_gpu,spot_price_per_gpu,max_gpus\n",
        );
        for g in &rows {
            text.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                g.name,
                g.gpu_type_id,
                g.memory_gib,
                g.vcpus_per_gpu,
                usd(g.price),
                g.spot_price.map(usd).unwrap_or_default(),
                g.max_gpus
            ));
        }
        super::keep_catalog(
            self.dir.parent().context("data directory")?,
            "runpod.csv",
            &text,
        )?;
        Ok(Some(format!(
            "{priced} of {} GPUs priced from RunPod's gpuTypes ({} types listed)",
            rows.len(),
            listed.len()
        )))
    }

    fn offers(&self) -> Vec<super::Offer> {
        let mut out = Vec::new();
        for g in self.catalog() {
            for n in [1u32, 2, 4, 8].into_iter().filter(|n| *n <= g.max_gpus) {
                out.push(super::Offer {
                    provider: "runpod".into(),
                    instance_type: g.name.clone(),
                    region: "*".into(),
                    accelerator: g.name.clone(),
                    gpus: n as f64,
                    gpu_memory_gib: Some(g.memory_gib),
                    vcpus: g.vcpus_per_gpu * n,
                    memory_gib: 0.0,
                    on_demand_micros: Some(g.price.micros() * n as i64),
                    spot_micros: g.spot_price.map(|s| s.micros() * n as i64),
                });
            }
        }
        out
    }

    async fn launch(&self, id: &str, plan: &Plan) -> Result<Launched> {
        if let Some(l) = self.find(id).await? {
            return Ok(l);
        }
        let gpu = self
            .catalog()
            .into_iter()
            .find(|g| g.name == plan.instance_type)
            .context("catalog")?;
        let (_, public) = self.ssh.login_key()?;
        let name = format!("{}{id}", self.name_prefix()?);
        let mut input = json!({
            "cloudType": plan.options.get("cloud_type").cloned().unwrap_or_else(|| self.cfg.cloud_type.clone()),
            "gpuCount": plan.gpus,
            "gpuTypeId": gpu.gpu_type_id,
            "name": name,
            "imageName": plan.options.get("image").cloned().unwrap_or_else(|| self.cfg.image.clone()),
            "containerDiskInGb": self.cfg.container_disk_gb,
            "volumeInGb": self.cfg.volume_gb,
            "volumeMountPath": "/workspace",
            "minVcpuCount": gpu.vcpus_per_gpu.min(8) * plan.gpus,
            "dockerArgs": "",
            "ports": "22/tcp",
            "startSsh": true,
            "supportPublicIp": true,
            "env": [{"key": "PUBLIC_KEY", "value": public}],
        });
        let (mutation, field) = if plan.spot {
            input["bidPerGpu"] = json!(plan.hourly.0 as f64 / 1e6 / plan.gpus.max(1) as f64);
            (
                "mutation Rent($input: PodRentInterruptableInput!) { podRentInterruptable(input: $input) { id costPerHr } }",
                "podRentInterruptable",
            )
        } else {
            (
                "mutation Deploy($input: PodFindAndDeployOnDemandInput) { podFindAndDeployOnDemand(input: $input) { id costPerHr } }",
                "podFindAndDeployOnDemand",
            )
        };
        let d = match self
            .gql(mutation, json!({"input": input}), Repeat::OnlyIfRefused)
            .await
        {
            Ok(d) => d,
            Err(e) if error_kind(&e).is_some() => return Err(e),
            Err(e) => match self.find(id).await? {
                Some(l) => return Ok(l),
                None => return Err(e),
            },
        };
        let pod = &d[field];
        let pid = pod["id"]
            .as_str()
            .ok_or_else(|| anyhow!("RunPod's answer has no pod id"))?;
        Ok(Launched {
            provider_id: pid.to_string(),
            region: None,
            backend: Some(json!({"name": name, "gpu_type_id": gpu.gpu_type_id}).to_string()),
            launched_ms: Some(crate::model::now_ms()),
            hourly: pod["costPerHr"]
                .as_f64()
                .filter(|c| *c > 0.0)
                .and_then(|c| Money::from_dollars_str(&format!("{c:.6}")))
                .or(Some(plan.hourly)),
            notes: Vec::new(),
            instance_type: Some(plan.instance_type.clone()),
        })
    }

    async fn reach(&self, inst: &InstanceRecord) -> Result<String> {
        let pid = inst.provider_id.clone().context("no RunPod id yet")?;
        self.ssh
            .reach(
                &inst.id,
                Duration::from_secs(self.cfg.reach_timeout_seconds),
                || async {
                    let Some(p) = self.pod(&pid).await? else {
                        return Ok(Step::Ended("RunPod no longer knows it".into()));
                    };
                    let status = p["desiredStatus"].as_str().unwrap_or_default().to_string();
                    Ok(match (status.as_str(), ssh_address(&p)) {
                        ("RUNNING", Some((host, port))) => Step::Ready { host, port },
                        ("RUNNING" | "CREATED", _) => {
                            Step::Wait("RunPod to start the pod and map its port 22".into())
                        }
                        _ => Step::Ended(format!("the pod is {status}")),
                    })
                },
            )
            .await
    }

    async fn find(&self, id: &str) -> Result<Option<Launched>> {
        let name = format!("{}{id}", self.name_prefix()?);
        let pods = self.pods().await?;
        Ok(pods
            .iter()
            .find(|p| p["name"].as_str() == Some(&name) && p["desiredStatus"] != "TERMINATED")
            .map(|p| self.launched_from(p)))
    }

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed> {
        let Some(pid) = &inst.provider_id else {
            return Ok(super::gpucloud::unanswered(self.find(&inst.id).await?));
        };
        Ok(match self.pod(pid).await? {
            Some(p) => self.observe(inst, &p),
            None => Observed::Gone,
        })
    }

    async fn terminate(&self, inst: &InstanceRecord) -> Result<()> {
        let Some(pid) = self
            .ssh
            .provider_id_to_end(inst, self.find(&inst.id))
            .await?
        else {
            return Ok(());
        };
        if self.pod(&pid).await?.is_some() {
            self.gql(
                "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }",
                json!({"input": {"podId": pid}}),
                Repeat::Safe,
            )
            .await?;
        }
        super::gpucloud::confirm_gone(
            "RunPod",
            &pid,
            Duration::from_secs(self.cfg.terminate_timeout_seconds),
            || async {
                Ok(self.pod(&pid).await?.and_then(|p| {
                    let s = p["desiredStatus"].as_str().unwrap_or("?").to_string();
                    (s != "TERMINATED").then_some(s)
                }))
            },
        )
        .await?;
        self.ssh.forget(&inst.id).await;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Listed>> {
        let prefix = self.name_prefix()?;
        Ok(self
            .pods()
            .await?
            .iter()
            .filter(|p| p["desiredStatus"] != "TERMINATED")
            .filter_map(|p| {
                super::gpucloud::listed(&prefix, p["name"].as_str(), self.launched_from(p))
            })
            .collect())
    }

    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>> {
        self.ssh.remote(&inst.id, inst.address.as_deref()).await
    }

    async fn stop(&self, inst: &InstanceRecord) -> Result<()> {
        let pid = inst.provider_id.clone().context("no RunPod id")?;
        self.ssh.drop_connection(&inst.id).await;
        self.gql(
            "mutation Stop($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }",
            json!({"input": {"podId": pid}}),
            Repeat::Safe,
        )
        .await?;
        Ok(())
    }

    async fn start(&self, inst: &InstanceRecord) -> Result<()> {
        let pid = inst.provider_id.clone().context("no RunPod id")?;
        let (q, input) = if inst.spot {
            (
                "mutation Resume($input: PodBidResumeInput!) { podBidResume(input: $input) { id desiredStatus } }",
                json!({"podId": pid, "gpuCount": inst.gpus.max(1),
                       "bidPerGpu": inst.hourly.0 as f64 / 1e6 / inst.gpus.max(1) as f64}),
            )
        } else {
            (
                "mutation Resume($input: PodResumeInput!) { podResume(input: $input) { id desiredStatus } }",
                json!({"podId": pid, "gpuCount": inst.gpus.max(1)}),
            )
        };
        self.gql(q, json!({"input": input}), Repeat::Safe).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_reads_and_errors_are_typed() {
        let c = catalog();
        let a = c.iter().find(|g| g.name == "A100-80GB").unwrap();
        assert_eq!(a.gpu_type_id, "NVIDIA A100 80GB PCIe");
        assert!(a.spot_price.is_some());
        let e = json!({"errors": [{"message": "There are no longer any instances available with the requested specifications. Please refresh and try again."}]});
        assert_eq!(read_error(200, &e).0, Some(ErrorKind::Capacity));
        assert_eq!(
            read_error(401, &json!("Unauthorized")).0,
            Some(ErrorKind::Auth)
        );
    }

    #[test]
    fn the_ssh_address_is_the_public_mapping_of_port_22() {
        let p = json!({"runtime": {"ports": [
            {"ip": "100.65.0.2", "isIpPublic": false, "privatePort": 22, "publicPort": 22, "type": "tcp"},
            {"ip": "203.0.113.7", "isIpPublic": true, "privatePort": 22, "publicPort": 40122, "type": "tcp"},
            {"ip": "203.0.113.7", "isIpPublic": true, "privatePort": 8888, "publicPort": 40123, "type": "http"}]}});
        assert_eq!(ssh_address(&p), Some(("203.0.113.7".into(), 40122)));
        assert_eq!(ssh_address(&json!({"runtime": null})), None);
    }
}
