//! The `canopywave` provider: CanopyWave machines over its REST API (`/api/v1`, Bearer key,
//! `{"data": ...}` / `{"error": "..."}` envelopes; projects, instances, launch and
//! terminate under `instance-operations`), logged into with a password trainctl makes for
//! each machine, then with trainctl's key (installed after the first password login).
//!
//! - CanopyWave's API says no prices: the flavors trainctl may launch and what they cost
//!   are `flavors = { "H100-1" = 2.25 }` in `[providers.canopywave]`; any other flavor is
//!   refused before any call (cost must be true, never guessed).
//! - Machines are named `tc-<owner tag>-<trainctl id>`; a launch first looks for that name
//!   and an answer lost on the way is looked for again, never launched twice.
//! - Statuses (any case): BUILD → Pending; ACTIVE → Running; SHUTOFF → Stopped; ERROR →
//!   Pending (it exists, and is terminated if it was a launch of ours); DELETED or no longer
//!   known → Gone. The address may come under several names (`publicIp`, `public_ip`,
//!   `floating_ip`, `ip`, `ipAddress`, or an OpenStack `addresses` map), as uni-trainer found.

use super::gpucloud::{CloudSsh, Step};
use super::http::{ApiClient, Repeat};
use super::{Capabilities, LaunchRequest, Launched, Listed, Observed, Plan, Provider};
use crate::config::CanopyWaveProviderConfig;
use crate::model::Money;
use crate::remote::{ErrorKind, Remote, error_kind};
use crate::ssh::remote::PromptSlot;
use crate::store::InstanceRecord;
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const OPTIONS: &[&str] = &["region", "image"];

/// CanopyWave's error envelope, `{"error": "<message>"}`: it has no codes, so the kind is
/// read here, at the border, from the status and the words of the message.
pub fn read_error(status: u16, body: &Value) -> (Option<ErrorKind>, String) {
    let msg = body["error"]
        .as_str()
        .map(str::to_string)
        .or_else(|| body["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            body.as_str()
                .map_or_else(|| body.to_string(), str::to_string)
        });
    let lower = msg.to_lowercase();
    let kind = match status {
        401 | 403 => Some(ErrorKind::Auth),
        404 => Some(ErrorKind::NotFound),
        _ if [
            "capacity",
            "insufficient",
            "not enough",
            "sold out",
            "no available",
            "unavailable",
        ]
        .iter()
        .any(|w| lower.contains(w)) =>
        {
            Some(ErrorKind::Capacity)
        }
        _ if lower.contains("quota") || lower.contains("limit exceeded") => Some(ErrorKind::Quota),
        400 | 422 => Some(ErrorKind::BadRequest),
        _ => None,
    };
    (kind, msg)
}

/// The machine's public address, under whichever name the API used.
pub fn ip_of(i: &Value) -> Option<String> {
    for k in [
        "publicIp",
        "public_ip",
        "floating_ip",
        "floatingIp",
        "ip",
        "ipAddress",
        "ip_address",
        "accessIPv4",
    ] {
        if let Some(s) = i[k].as_str().filter(|s| !s.is_empty()) {
            return Some(s.to_string());
        }
    }
    // OpenStack's `addresses: {"net": [{"addr": ..., "OS-EXT-IPS:type": "floating"}]}`:
    // a floating address first.
    let mut fixed = None;
    for list in i["addresses"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        for a in list.as_array().into_iter().flatten() {
            let Some(addr) = a["addr"].as_str() else {
                continue;
            };
            if a["OS-EXT-IPS:type"].as_str() == Some("floating") {
                return Some(addr.to_string());
            }
            fixed.get_or_insert_with(|| addr.to_string());
        }
    }
    fixed
}

/// What CanopyWave's status says about a machine.
pub fn observed(status: &str) -> Observed {
    match status.to_ascii_lowercase().as_str() {
        "active" | "running" => Observed::Running,
        "shutoff" | "stopped" => Observed::Stopped,
        "deleted" | "terminated" => Observed::Gone,
        // BUILD, ERROR, DELETING...: it exists and is not usable.
        _ => Observed::Pending,
    }
}

/// GPUs of a flavor from its name (`H100-8`, `4x-H100-80-GB-SXM5`, `8x H100`); 1 when
/// the name does not say.
pub fn gpus_of(flavor: &str) -> u32 {
    let f = flavor.to_ascii_lowercase();
    if let Some((n, _)) = f.split_once('x')
        && let Ok(n) = n.trim().parse::<u32>()
    {
        return n;
    }
    f.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

pub struct CanopyWaveProvider {
    cfg: CanopyWaveProviderConfig,
    dir: std::path::PathBuf,
    api: tokio::sync::OnceCell<ApiClient>,
    project: tokio::sync::OnceCell<String>,
    ssh: CloudSsh,
}

impl CanopyWaveProvider {
    pub fn new(
        data_dir: &Path,
        cfg: CanopyWaveProviderConfig,
        prompt: PromptSlot,
    ) -> CanopyWaveProvider {
        CanopyWaveProvider {
            ssh: CloudSsh::new(
                "canopywave",
                data_dir,
                &cfg.ssh_user,
                cfg.proxy_command.clone(),
                prompt,
            ),
            dir: data_dir.join("canopywave"),
            cfg,
            api: tokio::sync::OnceCell::new(),
            project: tokio::sync::OnceCell::new(),
        }
    }

    async fn api(&self) -> Result<&ApiClient> {
        self.api
            .get_or_try_init(|| async {
                ApiClient::for_provider(
                    "canopywave",
                    "CANOPYWAVE_API_KEY",
                    self.cfg.credentials_file.as_deref(),
                    &self.cfg.api_url,
                    self.cfg.request_interval_ms,
                    self.cfg.api_max_attempts,
                    read_error,
                )
            })
            .await
    }

    /// The project: configured, else the first the key may use.
    async fn project(&self) -> Result<&str> {
        self.project
            .get_or_try_init(|| async {
                if let Some(p) = &self.cfg.project {
                    return Ok(p.clone());
                }
                let v = self.api().await?.get("/projects", &[]).await?;
                v["data"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|p| p.as_str().map(str::to_string).or_else(|| p["name"].as_str().map(str::to_string)))
                    .context("CanopyWave lists no project for this key: set `project` in [providers.canopywave]")
            })
            .await
            .map(String::as_str)
    }

    fn name_prefix(&self) -> Result<String> {
        super::gpucloud::name_prefix(&self.dir)
    }

    fn region_of(&self, inst: &InstanceRecord) -> Result<String> {
        inst.region
            .clone()
            .or_else(|| self.cfg.regions.first().cloned())
            .context("no CanopyWave region: set `regions` in [providers.canopywave]")
    }

    async fn instances(&self) -> Result<Vec<Value>> {
        let project = self.project().await?.to_string();
        let v = self
            .api()
            .await?
            .get("/instances", &[("project", &project)])
            .await?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    async fn instance(&self, inst: &InstanceRecord, pid: &str) -> Result<Option<Value>> {
        let project = self.project().await?.to_string();
        let region = self.region_of(inst)?;
        match self
            .api()
            .await?
            .get(
                &format!("/instances/{pid}"),
                &[("project", &project), ("region", &region)],
            )
            .await
        {
            Ok(v) => Ok(Some(v["data"].clone())),
            Err(e) if error_kind(&e) == Some(ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn launched_from(&self, i: &Value) -> Launched {
        let flavor = i["flavor"].as_str().map(str::to_string);
        Launched {
            provider_id: i["id"].as_str().unwrap_or_default().to_string(),
            region: i["region"].as_str().map(str::to_string),
            hourly: flavor
                .as_deref()
                .and_then(|f| self.cfg.flavors.get(f))
                .map(|d| Money::from_dollars_f64(*d)),
            instance_type: flavor,
            ..Default::default()
        }
    }
}

#[async_trait]
impl Provider for CanopyWaveProvider {
    fn name(&self) -> &'static str {
        "canopywave"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            regions: self.cfg.regions.clone(),
            vouches: true,
            ..Default::default()
        }
    }

    fn check(&self, req: &LaunchRequest) -> Result<Plan> {
        req.only_options("canopywave", OPTIONS)?;
        if req.spot {
            bail!("CanopyWave has no spot market: launch on demand (drop --spot)");
        }
        let known = || {
            if self.cfg.flavors.is_empty() {
                "none yet: add `flavors = { \"FLAVOR\" = PRICE_USD_PER_HOUR }` to [providers.canopywave]".to_string()
            } else {
                self.cfg
                    .flavors
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let ty = match &req.instance_type {
            Some(t) => t.clone(),
            None => {
                let want = req.gpus.unwrap_or(1);
                let mut fits: Vec<(&String, &f64)> = self
                    .cfg
                    .flavors
                    .iter()
                    .filter(|(f, _)| gpus_of(f) >= want)
                    .collect();
                fits.sort_by(|a, b| a.1.total_cmp(b.1));
                fits.first().map(|(f, _)| f.to_string()).with_context(|| {
                    format!(
                        "no CanopyWave flavor with {want} GPUs is configured (known: {})",
                        known()
                    )
                })?
            }
        };
        let Some(price) = self.cfg.flavors.get(&ty) else {
            bail!("unknown CanopyWave flavor `{ty}` (known: {})", known());
        };
        if !price.is_finite() || *price < 0.0 {
            bail!(
                "the price of {ty} ({price}) in [providers.canopywave] flavors is not a dollar amount"
            );
        }
        let hourly = Money::from_dollars_f64(*price);
        let region = req
            .options
            .get("region")
            .cloned()
            .or_else(|| self.cfg.regions.first().cloned())
            .context(
                "no CanopyWave region: set `regions` in [providers.canopywave] or -o region=...",
            )?;
        let mut alternatives = Vec::new();
        for a in &req.any_of {
            if !self.cfg.flavors.contains_key(a) {
                bail!(
                    "unknown CanopyWave flavor `{a}` in any_of (known: {})",
                    known()
                );
            }
            alternatives.push(a.clone());
        }
        Ok(Plan {
            gpus: gpus_of(&ty),
            instance_type: ty,
            spot: false,
            hourly,
            accept_new_host_key: req.accept_new_host_key,
            region: Some(region),
            options: req.options.clone(),
            alternatives,
        })
    }

    fn instance_types(&self) -> Vec<String> {
        let mut f: Vec<(&String, &f64)> = self.cfg.flavors.iter().collect();
        f.sort_by(|a, b| a.1.total_cmp(b.1));
        f.into_iter().map(|(k, _)| k.clone()).collect()
    }

    fn offers(&self) -> Vec<super::Offer> {
        self.cfg
            .flavors
            .iter()
            .map(|(f, usd)| super::Offer {
                provider: "canopywave".into(),
                instance_type: f.clone(),
                region: self
                    .cfg
                    .regions
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "*".into()),
                accelerator: f.clone(),
                gpus: gpus_of(f) as f64,
                gpu_memory_gib: None,
                vcpus: 0,
                memory_gib: 0.0,
                on_demand_micros: Some(Money::from_dollars_f64(*usd).micros()),
                spot_micros: None,
            })
            .collect()
    }

    async fn launch(&self, id: &str, plan: &Plan) -> Result<Launched> {
        if let Some(l) = self.find(id).await? {
            return Ok(l);
        }
        let project = self.project().await?.to_string();
        let region = plan.region.clone().context("no region planned")?;
        let name = format!("{}{id}", self.name_prefix()?);
        // Kept 0600 before the API sees it: a crash after the launch can still log in.
        let password = self.ssh.new_password(id)?;
        let image = plan
            .options
            .get("image")
            .cloned()
            .unwrap_or_else(|| self.cfg.image.clone());
        let mut flavors = vec![plan.instance_type.clone()];
        flavors.extend(plan.alternatives.iter().cloned());
        let mut last = None;
        for flavor in &flavors {
            let body = json!({
                "region": region,
                "project": project,
                "name": name,
                "flavor": flavor,
                "image": image,
                "password": password.expose(),
                "is_monitoring": false,
            });
            let answer = self
                .api()
                .await?
                .post("/instance-operations/launch", &body, Repeat::OnlyIfRefused)
                .await;
            let v = match answer {
                Ok(v) => v,
                Err(e) if error_kind(&e) == Some(ErrorKind::Capacity) => {
                    last = Some(e);
                    continue;
                }
                Err(e) if error_kind(&e).is_some() => return Err(e),
                Err(e) => match self.find(id).await? {
                    Some(l) => return Ok(l),
                    None => return Err(e),
                },
            };
            let d = &v["data"];
            let pid = d
                .as_str()
                .or_else(|| d["id"].as_str())
                .or_else(|| d["instance_id"].as_str())
                .or_else(|| d["ids"][0].as_str())
                .ok_or_else(|| anyhow!("CanopyWave's launch answer has no instance id"))?;
            let hourly = self
                .cfg
                .flavors
                .get(flavor)
                .map(|p| Money::from_dollars_f64(*p));
            return Ok(Launched {
                provider_id: pid.to_string(),
                region: Some(region.clone()),
                backend: Some(
                    json!({"name": name, "project": project, "image": image}).to_string(),
                ),
                launched_ms: Some(crate::model::now_ms()),
                hourly,
                notes: if flavor != &plan.instance_type {
                    vec![format!(
                        "{} had no capacity; launched {flavor}",
                        plan.instance_type
                    )]
                } else {
                    Vec::new()
                },
                instance_type: Some(flavor.clone()),
            });
        }
        Err(last.unwrap_or_else(|| anyhow!("nothing to launch")))
    }

    async fn reach(&self, inst: &InstanceRecord) -> Result<String> {
        let pid = inst.provider_id.clone().context("no CanopyWave id yet")?;
        let port = self.cfg.ssh_port;
        self.ssh
            .reach(
                &inst.id,
                Duration::from_secs(self.cfg.reach_timeout_seconds),
                || async {
                    let Some(i) = self.instance(inst, &pid).await? else {
                        return Ok(Step::Ended("CanopyWave no longer knows it".into()));
                    };
                    let status = i["status"].as_str().unwrap_or_default().to_string();
                    if status.eq_ignore_ascii_case("error") {
                        return Ok(Step::Ended("CanopyWave reports it in ERROR".into()));
                    }
                    Ok(match (observed(&status), ip_of(&i)) {
                        (Observed::Running, Some(ip)) => Step::Ready { host: ip, port },
                        (Observed::Running, None) => {
                            Step::Wait("CanopyWave to give it a public address".into())
                        }
                        (Observed::Pending, _) => {
                            Step::Wait(format!("CanopyWave to report it ACTIVE (now {status})"))
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
        mine.sort_by_key(|i| observed(i["status"].as_str().unwrap_or_default()) == Observed::Gone);
        Ok(mine.first().map(|i| self.launched_from(i)))
    }

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed> {
        let Some(pid) = &inst.provider_id else {
            return Ok(super::gpucloud::unanswered(self.find(&inst.id).await?));
        };
        Ok(match self.instance(inst, pid).await? {
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
        let project = self.project().await?.to_string();
        let region = self.region_of(inst)?;
        match self
            .api()
            .await?
            .post(
                "/instance-operations/terminate",
                &json!({"region": region, "project": project, "id": pid}),
                Repeat::Safe,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if error_kind(&e) == Some(ErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
        super::gpucloud::confirm_gone(
            "CanopyWave",
            &pid,
            Duration::from_secs(self.cfg.terminate_timeout_seconds),
            || async {
                Ok(self.instance(inst, &pid).await?.and_then(|i| {
                    let s = i["status"].as_str().unwrap_or("?").to_string();
                    (observed(&s) != Observed::Gone).then_some(s)
                }))
            },
        )
        .await?;
        // Its password and pinned key go with it.
        self.ssh.forget(&inst.id).await;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Listed>> {
        let prefix = self.name_prefix()?;
        Ok(self
            .instances()
            .await?
            .iter()
            .filter(|i| observed(i["status"].as_str().unwrap_or_default()) != Observed::Gone)
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
    fn the_address_is_found_under_any_of_its_names() {
        assert_eq!(
            ip_of(&json!({"publicIp": "1.2.3.4"})).as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(
            ip_of(&json!({"publicIp": null, "floating_ip": "5.6.7.8"})).as_deref(),
            Some("5.6.7.8")
        );
        assert_eq!(
            ip_of(&json!({"addresses": {"net": [{"addr": "10.0.0.5"},
                {"addr": "9.9.9.9", "OS-EXT-IPS:type": "floating"}]}}))
            .as_deref(),
            Some("9.9.9.9")
        );
        assert_eq!(ip_of(&json!({"publicIp": ""})), None);
    }

    #[test]
    fn flavors_say_their_gpus_and_errors_their_kind() {
        assert_eq!(gpus_of("H100-8"), 8);
        assert_eq!(gpus_of("4x-H100-80-GB-SXM5"), 4);
        assert_eq!(gpus_of("2x H100 (80 GB SXM5)"), 2);
        assert_eq!(gpus_of("A100"), 1);
        assert_eq!(
            read_error(400, &json!({"error": "Insufficient capacity for flavor"})).0,
            Some(ErrorKind::Capacity)
        );
        assert_eq!(
            read_error(401, &json!({"error": "Unauthorized"})).0,
            Some(ErrorKind::Auth)
        );
        assert_eq!(
            read_error(400, &json!({"error": "image is required"})).0,
            Some(ErrorKind::BadRequest)
        );
        assert_eq!(observed("BUILD"), Observed::Pending);
        assert_eq!(observed("ACTIVE"), Observed::Running);
    }
}
