//! The `lambda` provider: Lambda Cloud machines over its v1 REST API (Bearer key), reached
//! over SSH with trainctl's key (registered once as `trainctl-<owner tag>`).
//!
//! - `check` prices a type from the shipped catalog (`assets/catalog/lambda.csv`, no IO);
//!   `plan` asks `GET /instance-types` which regions have capacity now and what Lambda
//!   charges, and refuses (as `Capacity`, so the next offer is tried) when none has.
//! - `launch` is idempotent by name: machines are named `tc-<owner tag>-<trainctl id>`, and
//!   a launch first looks for that name; an answer lost to a 5xx or a timeout is looked
//!   for again, never launched twice. Launches are spaced (`launch_interval_seconds`).
//! - Statuses: booting → Pending; active, unhealthy → Running; terminating, terminated →
//!   Gone once gone from the listing; preempted → Interrupted. `terminate` waits until
//!   Lambda says the machine is terminated (or no longer knows it).

use super::gpucloud::{CloudSsh, Step, owner_tag};
use super::http::{ApiClient, Repeat};
use super::{Capabilities, LaunchRequest, Launched, Listed, Observed, Plan, Provider};
use crate::config::LambdaProviderConfig;
use crate::model::Money;
use crate::remote::{ErrorKind, Remote, classified, error_kind};
use crate::ssh::remote::PromptSlot;
use crate::store::InstanceRecord;
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CATALOG: &str = include_str!("../../../assets/catalog/lambda.csv");
const OPTIONS: &[&str] = &["region"];

/// One row of the shipped catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub instance_type: String,
    pub gpu: String,
    pub gpus: u32,
    pub gpu_memory_gib: f64,
    pub vcpus: u32,
    pub memory_gib: f64,
    pub hourly: Money,
}

/// The shipped catalog, cheapest first.
pub fn catalog() -> Vec<Row> {
    parse(CATALOG)
}

/// The catalog `gpus --refresh` kept in `data_dir`, else the shipped one.
pub fn catalog_in(data_dir: &Path) -> Vec<Row> {
    super::kept_catalog(data_dir, "lambda.csv", CATALOG, parse)
}

fn parse(text: &str) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some(Row {
                instance_type: f.first()?.to_string(),
                gpu: f.get(1)?.to_string(),
                gpus: f.get(2)?.parse().ok()?,
                gpu_memory_gib: f.get(3)?.parse().ok()?,
                vcpus: f.get(4)?.parse().ok()?,
                memory_gib: f.get(5)?.parse().ok()?,
                hourly: Money::from_dollars_str(f.get(6)?)?,
            })
        })
        .collect()
}

/// Lambda's error envelope: `{"error": {"code", "message", "suggestion"}}`.
pub fn read_error(status: u16, body: &Value) -> (Option<ErrorKind>, String) {
    let e = &body["error"];
    let code = e["code"].as_str().unwrap_or_default();
    let mut msg = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            body.as_str()
                .map_or_else(|| body.to_string(), str::to_string)
        });
    if let Some(s) = e["suggestion"].as_str().filter(|s| !s.is_empty()) {
        msg.push_str(&format!(" ({s})"));
    }
    if !code.is_empty() {
        msg = format!("{code}: {msg}");
    }
    let kind = match code {
        "global/invalid-api-key" | "global/account-inactive" | "global/unauthorized" => {
            Some(ErrorKind::Auth)
        }
        "instance-operations/launch/insufficient-capacity" => Some(ErrorKind::Capacity),
        "global/quota-exceeded" | "instance-operations/launch/quota-exceeded" => {
            Some(ErrorKind::Quota)
        }
        "global/object-does-not-exist" => Some(ErrorKind::NotFound),
        "global/invalid-parameters" | "global/invalid-address" => Some(ErrorKind::BadRequest),
        _ if status == 404 => Some(ErrorKind::NotFound),
        _ => None,
    };
    (kind, msg)
}

pub struct LambdaProvider {
    cfg: LambdaProviderConfig,
    dir: std::path::PathBuf,
    api: tokio::sync::OnceCell<ApiClient>,
    ssh: CloudSsh,
    last_launch: tokio::sync::Mutex<Option<Instant>>,
}

impl LambdaProvider {
    pub fn new(data_dir: &Path, cfg: LambdaProviderConfig, prompt: PromptSlot) -> LambdaProvider {
        LambdaProvider {
            ssh: CloudSsh::new(
                "lambda",
                data_dir,
                &cfg.ssh_user,
                cfg.proxy_command.clone(),
                prompt,
            ),
            dir: data_dir.join("lambda"),
            cfg,
            api: tokio::sync::OnceCell::new(),
            last_launch: tokio::sync::Mutex::new(None),
        }
    }

    /// The API client; the key is read on first use (a command that never calls Lambda
    /// never needs it).
    async fn api(&self) -> Result<&ApiClient> {
        self.api
            .get_or_try_init(|| async {
                ApiClient::for_provider(
                    "lambda",
                    "LAMBDA_API_KEY",
                    self.cfg.credentials_file.as_deref(),
                    &self.cfg.api_url,
                    self.cfg.request_interval_ms,
                    self.cfg.api_max_attempts,
                    read_error,
                )
            })
            .await
    }

    fn catalog(&self) -> Vec<Row> {
        catalog_in(self.dir.parent().unwrap_or(&self.dir))
    }

    fn name_prefix(&self) -> Result<String> {
        super::gpucloud::name_prefix(&self.dir)
    }

    fn launched_from(&self, i: &Value) -> Launched {
        Launched {
            provider_id: i["id"].as_str().unwrap_or_default().to_string(),
            region: i["region"]["name"].as_str().map(str::to_string),
            hourly: i["instance_type"]["price_cents_per_hour"]
                .as_i64()
                .map(|c| Money(c * 10_000)),
            instance_type: i["instance_type"]["name"].as_str().map(str::to_string),
            ..Default::default()
        }
    }

    /// Every machine of this account (Lambda has no server-side filter).
    async fn instances(&self) -> Result<Vec<Value>> {
        let v = self.api().await?.get("/instances", &[]).await?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    async fn instance(&self, pid: &str) -> Result<Option<Value>> {
        match self
            .api()
            .await?
            .get(&format!("/instances/{pid}"), &[])
            .await
        {
            Ok(v) => Ok(Some(v["data"].clone())),
            Err(e) if error_kind(&e) == Some(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// trainctl's SSH key registered with Lambda, by name (added when missing).
    async fn ssh_key_name(&self) -> Result<String> {
        let (_, public) = self.ssh.login_key()?;
        let name = format!(
            "trainctl-{}",
            owner_tag(&super::gpucloud::owner(&self.dir, None)?)
        );
        let api = self.api().await?;
        let keys = api.get("/ssh-keys", &[]).await?;
        let same = |k: &str| {
            k.split_whitespace().take(2).collect::<Vec<_>>()
                == public.split_whitespace().take(2).collect::<Vec<_>>()
        };
        for k in keys["data"].as_array().into_iter().flatten() {
            if k["name"].as_str() == Some(&name) {
                if same(k["public_key"].as_str().unwrap_or_default()) {
                    return Ok(name);
                }
                bail!(
                    "Lambda has an SSH key named {name} that is not this machine's ({}): delete it in Lambda's console, or set another data directory",
                    self.dir.join("..").display()
                );
            }
        }
        api.post(
            "/ssh-keys",
            &json!({"name": name, "public_key": public}),
            Repeat::OnlyIfRefused,
        )
        .await
        .context("registering trainctl's SSH key with Lambda")?;
        Ok(name)
    }

    /// Wait out the launch spacing Lambda asks for.
    async fn space_launches(&self) {
        let mut last = self.last_launch.lock().await;
        if let Some(t) = *last {
            let next = t + Duration::from_secs(self.cfg.launch_interval_seconds);
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
        }
        *last = Some(Instant::now());
    }
}

/// What Lambda's status says about a machine.
pub fn observed(status: &str) -> Observed {
    match status {
        "booting" => Observed::Pending,
        "active" | "unhealthy" => Observed::Running,
        "preempted" => Observed::Interrupted {
            reason: "Lambda preempted the machine".into(),
            at: None,
        },
        "terminated" => Observed::Gone,
        // Still billing until it is gone.
        "terminating" => Observed::Running,
        _ => Observed::Pending,
    }
}

#[async_trait]
impl Provider for LambdaProvider {
    fn name(&self) -> &'static str {
        "lambda"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            spot: false,
            stop_start: false,
            interruption_notices: false,
            regions: self.cfg.regions.clone(),
            vouches: true,
            types_are_hosts: false,
            min_billed_seconds: 0,
        }
    }

    fn check(&self, req: &LaunchRequest) -> Result<Plan> {
        req.only_options("lambda", OPTIONS)?;
        if req.spot {
            bail!("Lambda has no spot market: launch on demand (drop --spot)");
        }
        let cat = self.catalog();
        let find = |t: &str| cat.iter().find(|o| o.instance_type == t).cloned();
        let ty = match &req.instance_type {
            Some(t) => t.clone(),
            None => {
                let want = req.gpus.unwrap_or(1);
                cat.iter()
                    .find(|o| o.gpus >= want)
                    .map(|o| o.instance_type.clone())
                    .with_context(|| format!("Lambda has no type with {want} GPUs"))?
            }
        };
        let Some(offer) = find(&ty) else {
            let near: Vec<&str> = cat
                .iter()
                .filter(|o| {
                    let g = ty.to_lowercase();
                    g.contains(&o.gpu.to_lowercase()) || o.instance_type.starts_with(&g)
                })
                .map(|o| o.instance_type.as_str())
                .take(6)
                .collect();
            bail!(
                "unknown Lambda instance type `{ty}`{} (`trainctl gpus` lists them)",
                if near.is_empty() {
                    String::new()
                } else {
                    format!("; did you mean {}?", near.join(", "))
                }
            );
        };
        if let Some(g) = req.gpus
            && g > offer.gpus
        {
            bail!("{ty} has {} GPUs, {g} asked", offer.gpus);
        }
        let mut alternatives = Vec::new();
        for a in &req.any_of {
            if find(a).is_none() {
                bail!("unknown Lambda instance type `{a}` in any_of");
            }
            alternatives.push(a.clone());
        }
        Ok(Plan {
            instance_type: ty,
            gpus: offer.gpus,
            spot: false,
            hourly: offer.hourly,
            accept_new_host_key: req.accept_new_host_key,
            region: req.options.get("region").cloned(),
            options: req.options.clone(),
            alternatives,
        })
    }

    async fn plan(&self, req: &LaunchRequest) -> Result<Plan> {
        let mut plan = self.check(req)?;
        let types = self.api().await?.get("/instance-types", &[]).await?;
        let mut asked = vec![plan.instance_type.clone()];
        asked.extend(plan.alternatives.iter().cloned());
        for ty in &asked {
            let Some(t) = types["data"].get(ty) else {
                continue;
            };
            let with_capacity: Vec<String> = t["regions_with_capacity_available"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect();
            let preferred: Vec<String> = match &plan.region {
                Some(r) => vec![r.clone()],
                None if !self.cfg.regions.is_empty() => self.cfg.regions.clone(),
                None => with_capacity.clone(),
            };
            if let Some(region) = preferred.iter().find(|r| with_capacity.contains(r)) {
                // What Lambda charges now wins over the shipped catalog.
                if let Some(c) = t["instance_type"]["price_cents_per_hour"].as_i64() {
                    plan.hourly = Money(c * 10_000);
                }
                if let Some(g) = t["instance_type"]["specs"]["gpus"].as_u64() {
                    plan.gpus = g as u32;
                }
                plan.instance_type = ty.clone();
                plan.region = Some(region.clone());
                return Ok(plan);
            }
        }
        Err(classified(
            ErrorKind::Capacity,
            format!(
                "Lambda has no capacity for {} in {} now",
                asked.join(" or "),
                match &plan.region {
                    Some(r) => r.clone(),
                    None if !self.cfg.regions.is_empty() => self.cfg.regions.join(", "),
                    None => "any region".into(),
                }
            ),
        ))
    }

    fn instance_types(&self) -> Vec<String> {
        self.catalog()
            .into_iter()
            .map(|o| o.instance_type)
            .collect()
    }

    async fn refresh_offers(&self) -> Result<Option<String>> {
        let v = self.api().await?.get("/instance-types", &[]).await?;
        let known = self.catalog();
        let mut rows: Vec<Row> = v["data"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|t| {
                let it = &t["instance_type"];
                let name = it["name"].as_str()?.to_string();
                let old = known.iter().find(|o| o.instance_type == name);
                Some(Row {
                    gpu: old
                        .map(|o| o.gpu.clone())
                        .or_else(|| it["gpu_description"].as_str().map(|g| g.replace(',', " ")))?,
                    gpus: it["specs"]["gpus"].as_u64()? as u32,
                    gpu_memory_gib: old.map_or(0.0, |o| o.gpu_memory_gib),
                    vcpus: it["specs"]["vcpus"].as_u64().unwrap_or(0) as u32,
                    memory_gib: it["specs"]["memory_gib"].as_f64().unwrap_or(0.0),
                    hourly: Money(it["price_cents_per_hour"].as_i64()? * 10_000),
                    instance_type: name,
                })
            })
            .collect();
        if rows.is_empty() {
            bail!("Lambda's /instance-types listed nothing");
        }
        rows.sort_by_key(|r| (r.hourly, r.instance_type.clone()));
        let mut text = String::from(
            "instance_type,accelerator_name,accelerator_count,gpu_memory_gib,vcpus,memory_gib,price\n",
        );
        for r in &rows {
            text.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                r.instance_type,
                r.gpu,
                r.gpus,
                r.gpu_memory_gib,
                r.vcpus,
                r.memory_gib,
                r.hourly.to_string().trim_start_matches('$')
            ));
        }
        super::keep_catalog(
            self.dir.parent().context("data directory")?,
            "lambda.csv",
            &text,
        )?;
        Ok(Some(format!(
            "{} types priced from Lambda's /instance-types",
            rows.len()
        )))
    }

    fn offers(&self) -> Vec<super::Offer> {
        self.catalog()
            .into_iter()
            .map(|o| super::Offer {
                provider: "lambda".into(),
                instance_type: o.instance_type,
                // Every region at one price; capacity is asked at launch.
                region: "*".into(),
                accelerator: o.gpu,
                gpus: o.gpus as f64,
                gpu_memory_gib: Some(o.gpu_memory_gib),
                vcpus: o.vcpus,
                memory_gib: o.memory_gib,
                on_demand_micros: Some(o.hourly.micros()),
                spot_micros: None,
            })
            .collect()
    }

    async fn launch(&self, id: &str, plan: &Plan) -> Result<Launched> {
        if let Some(l) = self.find(id).await? {
            return Ok(l);
        }
        let region = plan
            .region
            .clone()
            .context("no region planned (plan() picks one with capacity)")?;
        let key = self.ssh_key_name().await?;
        let name = format!("{}{id}", self.name_prefix()?);
        self.space_launches().await;
        let body = json!({
            "region_name": region,
            "instance_type_name": plan.instance_type,
            "ssh_key_names": [key],
            "file_system_names": [],
            "quantity": 1,
            "name": name,
        });
        let answer = self
            .api()
            .await?
            .post("/instance-operations/launch", &body, Repeat::OnlyIfRefused)
            .await;
        let v = match answer {
            Ok(v) => v,
            // A refusal Lambda explained is final; an answer lost on the way may hide a
            // machine made all the same: look for it by name before saying it failed.
            Err(e) if error_kind(&e).is_some() => return Err(e),
            Err(e) => match self.find(id).await? {
                Some(l) => return Ok(l),
                None => return Err(e),
            },
        };
        let pid = v["data"]["instance_ids"][0]
            .as_str()
            .ok_or_else(|| anyhow!("Lambda's launch answer has no instance id: {v}"))?;
        Ok(Launched {
            provider_id: pid.to_string(),
            region: Some(region),
            backend: Some(json!({"ssh_key": key, "name": name}).to_string()),
            launched_ms: Some(crate::model::now_ms()),
            hourly: Some(plan.hourly),
            notes: Vec::new(),
            instance_type: Some(plan.instance_type.clone()),
        })
    }

    async fn reach(&self, inst: &InstanceRecord) -> Result<String> {
        let pid = inst.provider_id.clone().context("no Lambda id yet")?;
        let port = self.cfg.ssh_port;
        self.ssh
            .reach(
                &inst.id,
                Duration::from_secs(self.cfg.reach_timeout_seconds),
                || async {
                    let Some(i) = self.instance(&pid).await? else {
                        return Ok(Step::Ended("Lambda no longer knows it".into()));
                    };
                    let status = i["status"].as_str().unwrap_or_default().to_string();
                    Ok(match (observed(&status), i["ip"].as_str()) {
                        (Observed::Running, Some(ip)) if status == "active" => Step::Ready {
                            host: ip.to_string(),
                            port,
                        },
                        _ if status == "terminating" => {
                            Step::Ended("Lambda is terminating it".into())
                        }
                        (Observed::Running | Observed::Pending, _) => {
                            Step::Wait(format!("Lambda to report it active (now {status})"))
                        }
                        (other, _) => Step::Ended(format!("{status} ({other:?})")),
                    })
                },
            )
            .await
    }

    async fn find(&self, id: &str) -> Result<Option<Launched>> {
        let name = format!("{}{id}", self.name_prefix()?);
        let all = self.instances().await?;
        let mut mine: Vec<&Value> = all
            .iter()
            .filter(|i| i["name"].as_str() == Some(&name))
            .collect();
        mine.sort_by_key(|i| i["status"].as_str() == Some("terminated"));
        Ok(mine.first().map(|i| self.launched_from(i)))
    }

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed> {
        let Some(pid) = &inst.provider_id else {
            return Ok(super::gpucloud::unanswered(self.find(&inst.id).await?));
        };
        Ok(match self.instance(pid).await? {
            Some(i) => observed(i["status"].as_str().unwrap_or_default()),
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
        let api = self.api().await?;
        match api
            .post(
                "/instance-operations/terminate",
                &json!({"instance_ids": [pid]}),
                Repeat::Safe,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if error_kind(&e) == Some(ErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
        // Confirmed with Lambda before anything is forgotten.
        super::gpucloud::confirm_gone(
            "Lambda",
            &pid,
            Duration::from_secs(self.cfg.terminate_timeout_seconds),
            || async {
                Ok(self.instance(&pid).await?.and_then(|i| {
                    let s = i["status"].as_str().unwrap_or("?").to_string();
                    (s != "terminated").then_some(s)
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
            .instances()
            .await?
            .iter()
            .filter(|i| {
                !matches!(
                    observed(i["status"].as_str().unwrap_or_default()),
                    Observed::Gone
                )
            })
            .filter_map(|i| {
                super::gpucloud::listed(&prefix, i["name"].as_str(), self.launched_from(i))
            })
            .collect())
    }

    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>> {
        self.ssh.remote(&inst.id, inst.address.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_reads_and_is_cheapest_first() {
        let c = catalog();
        assert!(c.len() >= 20, "{}", c.len());
        assert!(c.windows(2).all(|w| w[0].hourly <= w[1].hourly));
        let h = c
            .iter()
            .find(|o| o.instance_type == "gpu_1x_h100_pcie")
            .unwrap();
        assert_eq!((h.gpus, h.gpu.as_str()), (1, "H100"));
    }

    #[test]
    fn lambdas_errors_are_typed() {
        let e = json!({"error": {"code": "instance-operations/launch/insufficient-capacity",
            "message": "Not enough capacity", "suggestion": "Try another region"}});
        let (k, m) = read_error(400, &e);
        assert_eq!(k, Some(ErrorKind::Capacity));
        assert!(m.contains("Not enough capacity") && m.contains("Try another region"));
        let e = json!({"error": {"code": "global/invalid-api-key", "message": "bad key"}});
        assert_eq!(read_error(401, &e).0, Some(ErrorKind::Auth));
        assert_eq!(read_error(404, &json!("gone")).0, Some(ErrorKind::NotFound));
    }
}
