//! The `aws` provider: EC2 machines on demand or on spot, reached over SSH.
//!
//! - `check` prices a type from the shipped catalog (no IO); `plan` asks EC2 which zones of
//!   the region offer it, still without side effects.
//! - `launch` is idempotent by trainctl's id: the instance carries `trainctl:id` and
//!   `trainctl:owner` tags and a ClientToken derived from the id, the zone, the type and the
//!   market, so a launch repeated after a crash finds the first machine. No capacity in a
//!   zone (or a spot refusal) tries the region's next zone, then on demand when
//!   `spot_fallback` is set; each try is an event.
//! - Every machine gets an SSH host key made here and handed over in its user-data; it is
//!   pinned in `<data>/aws/known_hosts` before the first connection (and kept in the
//!   `trainctl:hostkey` tag), so no connection ever trusts a key on first use.
//! - `describe` maps EC2's state; a spot machine EC2 took back is `Interrupted`.

pub mod catalog;
pub mod ec2;
pub mod ecr;
pub mod refresh;
pub mod s3;
pub mod ssm;

use super::{Capabilities, LaunchRequest, Launched, Listed, Observed, Plan, Provider};
use crate::config::AwsProviderConfig;
use crate::model::Money;
use crate::remote::{ErrorKind, Remote, classified, error_kind};
use crate::ssh::config::{SshConfig, expand};
use crate::ssh::remote::{PromptSlot, SshRemote, SshTarget, proxy_jump_command};
use crate::store::InstanceRecord;
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceType, IpPermission,
    IpRange, MarketType, Placement, ResourceType, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification, VolumeType,
};
use catalog::Catalog;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TAG_OWNER: &str = "trainctl:owner";
pub const TAG_ID: &str = "trainctl:id";
pub const TAG_HOST_KEY: &str = "trainctl:hostkey";
pub const TAG_JOB: &str = "trainctl:job";
const GROUP_NAME: &str = "trainctl-ssh";
const USER_DATA: &str = include_str!("../../../assets/aws/user-data.yaml");
const OPTIONS: &[&str] = &["region", "ami", "zone"];

/// What trainctl keeps about an EC2 machine (the instance's `backend` column).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Backend {
    pub zone: Option<String>,
    pub ami: Option<String>,
    /// The machine's SSH host key (public), pinned before the first connection.
    pub host_key: Option<String>,
    pub market: String,
}

/// What a launch checked or made once per region (`<data>/aws/setup-<region>.json`),
/// so later launches skip those calls; forgotten when EC2 says it is gone.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Setup {
    key_name: Option<String>,
    groups: Vec<String>,
    /// The `ssh_cidr` the groups were opened to.
    cidr: Option<String>,
    /// AMI id → its root device name.
    root_devices: std::collections::BTreeMap<String, String>,
}

const STALE_SETUP: &str = "remembered setup is stale";

pub struct AwsProvider {
    cfg: AwsProviderConfig,
    dir: PathBuf,
    sdk: Arc<tokio::sync::OnceCell<SdkConfig>>,
    checkpoints: Option<Arc<dyn crate::job::checkpoint::CheckpointStore>>,
    /// The embedded catalog, or the one `gpus --refresh` wrote to the data directory;
    /// read on first use (a command that prices nothing never parses it).
    catalog: std::sync::OnceLock<Arc<Catalog>>,
    ssh_config: SshConfig,
    conns: tokio::sync::Mutex<HashMap<String, Arc<SshRemote>>>,
    /// Machines reached through SSM while SSH cannot, by trainctl id.
    side: tokio::sync::Mutex<HashMap<String, Arc<ssm::SsmRemote>>>,
    prompt: PromptSlot,
}

/// `a.b.c.d/n`, IPv4.
pub fn valid_cidr(c: &str) -> bool {
    let Some((ip, bits)) = c.split_once('/') else {
        return false;
    };
    ip.parse::<std::net::Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
}

impl AwsProvider {
    pub fn new(data_dir: &Path, cfg: AwsProviderConfig, prompt: PromptSlot) -> AwsProvider {
        let sdk = Arc::new(tokio::sync::OnceCell::new());
        // The config check refused a bad address already.
        let checkpoints = cfg.checkpoints_s3.as_deref().and_then(|url| {
            s3::S3Store::new(sdk.clone(), cfg.clone(), url, data_dir)
                .ok()
                .map(|s| Arc::new(s) as Arc<dyn crate::job::checkpoint::CheckpointStore>)
        });
        AwsProvider {
            catalog: std::sync::OnceLock::new(),
            ssh_config: SshConfig::load_default(),
            dir: data_dir.join("aws"),
            cfg,
            sdk,
            checkpoints,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            side: tokio::sync::Mutex::new(HashMap::new()),
            prompt,
        }
    }

    /// A provider on a given SDK configuration (tests: static credentials, an emulator).
    pub fn with_sdk(
        data_dir: &Path,
        cfg: AwsProviderConfig,
        prompt: PromptSlot,
        sdk: SdkConfig,
    ) -> AwsProvider {
        let p = AwsProvider::new(data_dir, cfg, prompt);
        let _ = p.sdk.set(sdk);
        p
    }

    /// The SDK configuration, loaded (and credentials checked) on first use only: a
    /// command that never talks to AWS never waits for the credential chain.
    async fn sdk(&self) -> Result<&SdkConfig> {
        self.sdk.get_or_try_init(|| ec2::load_sdk(&self.cfg)).await
    }

    fn catalog(&self) -> &Catalog {
        self.catalog.get_or_init(|| {
            Catalog::for_data_dir(self.dir.parent().unwrap_or(&self.dir)).unwrap_or_else(|e| {
                tracing::warn!("{e:#}; using the catalog built into trainctl");
                Catalog::embedded()
            })
        })
    }

    async fn ec2(&self, region: &str) -> Result<aws_sdk_ec2::Client> {
        Ok(ec2::client(self.sdk().await?, &self.cfg, region))
    }

    /// The region a request runs in, offline: its `region` option, the first configured
    /// region, else the environment's.
    fn region_for(&self, req_region: Option<&str>) -> Result<String> {
        req_region
            .map(str::to_string)
            .or_else(|| self.cfg.regions.first().cloned())
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|r| !r.is_empty())
            })
            .context(
                "no AWS region: set `regions` in [providers.aws], AWS_REGION, or -o region=...",
            )
    }

    /// Read the catalog's rows for `region` (else every configured region) again from
    /// AWS and keep them in the data directory (`gpus --refresh`).
    pub async fn refresh_catalog(
        &self,
        region: Option<&str>,
    ) -> Result<Vec<refresh::RegionRefresh>> {
        let regions = match region {
            Some(r) => vec![r.to_string()],
            None => self.regions().await?,
        };
        let data = self.dir.parent().context("data directory")?;
        refresh::refresh(self.sdk().await?, &self.cfg, &regions, data).await
    }

    /// Regions watched for this store's machines.
    async fn regions(&self) -> Result<Vec<String>> {
        if !self.cfg.regions.is_empty() {
            return Ok(self.cfg.regions.clone());
        }
        Ok(vec![
            self.sdk()
                .await?
                .region()
                .map(|r| r.to_string())
                .context("no AWS region")?,
        ])
    }

    /// This store's `trainctl:owner`: configured, or made once per data directory.
    pub fn owner(&self) -> Result<String> {
        super::gpucloud::owner(&self.dir, self.cfg.owner.as_deref())
    }

    /// The key pair machines are launched with, and the private key file that logs in.
    fn login_key(&self) -> Result<(String, PathBuf, Option<String>)> {
        if let Some(name) = &self.cfg.key_name {
            let file = self.cfg.identity_file.clone().with_context(|| {
                format!(
                    "key_name `{name}` needs identity_file (its private key) in [providers.aws]"
                )
            })?;
            return Ok((name.clone(), file, None));
        }
        let file = self
            .cfg
            .identity_file
            .clone()
            .unwrap_or_else(|| self.dir.join("id_ed25519"));
        let pub_file = PathBuf::from(format!("{}.pub", file.display()));
        if !file.exists() {
            std::fs::create_dir_all(file.parent().unwrap_or(Path::new(".")))?;
            let (private, public) = new_ed25519("trainctl")?;
            write_private(&file, private.as_bytes())?;
            std::fs::write(&pub_file, format!("{public}\n"))?;
        }
        let public = std::fs::read_to_string(&pub_file)
            .with_context(|| format!("reading {}", pub_file.display()))?;
        let name = format!("trainctl-{}", self.owner()?);
        Ok((name, file, Some(public.trim().to_string())))
    }

    async fn ensure_key_pair(&self, ec2: &aws_sdk_ec2::Client) -> Result<String> {
        let (name, _, public) = self.login_key()?;
        let Some(public) = public else {
            return Ok(name);
        };
        match ec2.describe_key_pairs().key_names(&name).send().await {
            Ok(_) => return Ok(name),
            Err(e) if e.code() == Some("InvalidKeyPair.NotFound") => {}
            Err(e) => return Err(ec2::sdk_error("looking for the key pair", e)),
        }
        match ec2
            .import_key_pair()
            .key_name(&name)
            .public_key_material(aws_smithy_types::Blob::new(public.into_bytes()))
            .send()
            .await
        {
            Ok(_) => Ok(name),
            Err(e) if e.code() == Some("InvalidKeyPair.Duplicate") => Ok(name),
            Err(e) => Err(ec2::sdk_error("importing trainctl's key pair", e)),
        }
    }

    /// The security groups a machine gets: configured, or `trainctl-ssh` in the VPC (made
    /// once), open on port 22 to `ssh_cidr` only.
    async fn security_groups(&self, ec2: &aws_sdk_ec2::Client, cidr: &str) -> Result<Vec<String>> {
        let vpc = match &self.cfg.subnet_id {
            Some(s) => ec2
                .describe_subnets()
                .subnet_ids(s)
                .send()
                .await
                .map_err(|e| ec2::sdk_error("describing the subnet", e))?
                .subnets()
                .first()
                .and_then(|s| s.vpc_id())
                .map(str::to_string)
                .with_context(|| format!("subnet {s} not found"))?,
            None => ec2
                .describe_vpcs()
                .filters(Filter::builder().name("is-default").values("true").build())
                .send()
                .await
                .map_err(|e| ec2::sdk_error("looking for the default VPC", e))?
                .vpcs()
                .first()
                .and_then(|v| v.vpc_id())
                .map(str::to_string)
                .context("this region has no default VPC: set subnet_id (and security_group_ids) in [providers.aws]")?,
        };
        let found = ec2
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values(GROUP_NAME)
                    .build(),
            )
            .filters(Filter::builder().name("vpc-id").values(&vpc).build())
            .send()
            .await
            .map_err(|e| ec2::sdk_error("looking for the trainctl-ssh security group", e))?;
        let group = match found.security_groups().first().and_then(|g| g.group_id()) {
            Some(g) => g.to_string(),
            None => {
                let made = ec2
                    .create_security_group()
                    .group_name(GROUP_NAME)
                    .description("trainctl: SSH to training machines")
                    .vpc_id(&vpc)
                    .send()
                    .await;
                match made {
                    Ok(m) => m.group_id().context("no group id")?.to_string(),
                    // Made by another trainctl meanwhile.
                    Err(e) if e.code() == Some("InvalidGroup.Duplicate") => {
                        Box::pin(self.security_groups(ec2, cidr)).await?[0].clone()
                    }
                    Err(e) => return Err(ec2::sdk_error("making the security group", e)),
                }
            }
        };
        let rule = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .ip_ranges(
                IpRange::builder()
                    .cidr_ip(cidr)
                    .description("trainctl")
                    .build(),
            )
            .build();
        match ec2
            .authorize_security_group_ingress()
            .group_id(&group)
            .ip_permissions(rule)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("InvalidPermission.Duplicate") => {}
            Err(e) => return Err(ec2::sdk_error("opening port 22 in the security group", e)),
        }
        Ok(vec![group])
    }

    async fn resolve_ami(&self, region: &str, plan: &Plan) -> Result<String> {
        if let Some(a) = plan.options.get("ami").or(self.cfg.ami.as_ref()) {
            return Ok(a.clone());
        }
        let ssm = ec2::ssm_client(self.sdk().await?, &self.cfg, region);
        let p = &self.cfg.ami_parameter;
        let out = ssm.get_parameter().name(p).send().await.map_err(|e| {
            anyhow::anyhow!(
                "resolving the image from SSM parameter {p} in {region}: {}; set `ami` in [providers.aws] or -o ami=...",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )
        })?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .with_context(|| format!("SSM parameter {p} has no value"))
    }

    /// Zone names of `region` that offer `ty`, in EC2's order.
    async fn zones_offering(&self, ec2: &aws_sdk_ec2::Client, ty: &str) -> Result<Vec<String>> {
        let out = ec2
            .describe_instance_type_offerings()
            .location_type(aws_sdk_ec2::types::LocationType::AvailabilityZone)
            .filters(Filter::builder().name("instance-type").values(ty).build())
            .send()
            .await
            .map_err(|e| ec2::sdk_error("asking which zones offer the type", e))?;
        let mut zones: Vec<String> = out
            .instance_type_offerings()
            .iter()
            .filter_map(|o| o.location().map(str::to_string))
            .collect();
        zones.sort();
        zones.dedup();
        Ok(zones)
    }

    /// The live spot price of `ty` in `zone` now.
    async fn spot_price(&self, ec2: &aws_sdk_ec2::Client, ty: &str, zone: &str) -> Result<Money> {
        let out = ec2
            .describe_spot_price_history()
            .instance_types(InstanceType::from(ty))
            .availability_zone(zone)
            .product_descriptions("Linux/UNIX")
            .start_time(aws_smithy_types::DateTime::from_millis(
                crate::model::now_ms(),
            ))
            .send()
            .await
            .map_err(|e| ec2::sdk_error("reading the spot price", e))?;
        let newest = out
            .spot_price_history()
            .iter()
            .max_by_key(|p| p.timestamp().map(|t| t.to_millis().unwrap_or(0)))
            .and_then(|p| p.spot_price())
            .context("no spot price")?;
        Money::from_dollars_str(newest).with_context(|| format!("spot price `{newest}`"))
    }

    fn launched_from(&self, i: &aws_sdk_ec2::types::Instance, region: &str) -> Launched {
        let backend = Backend {
            zone: i
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_string),
            ami: i.image_id().map(str::to_string),
            host_key: ec2::tag(i, TAG_HOST_KEY).map(str::to_string),
            market: if i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot") {
                "spot".into()
            } else {
                "on-demand".into()
            },
        };
        Launched {
            provider_id: i.instance_id().unwrap_or_default().to_string(),
            region: Some(region.to_string()),
            backend: serde_json::to_string(&backend).ok(),
            launched_ms: i.launch_time().and_then(|t| t.to_millis().ok()),
            ..Launched::default()
        }
    }

    async fn instance(
        &self,
        inst: &InstanceRecord,
    ) -> Result<Option<aws_sdk_ec2::types::Instance>> {
        let (Some(pid), Some(region)) = (&inst.provider_id, &inst.region) else {
            return Ok(None);
        };
        let ec2 = self.ec2(region).await?;
        match ec2.describe_instances().instance_ids(pid).send().await {
            Ok(out) => Ok(out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .next()
                .cloned()),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(None),
            Err(e) => Err(ec2::sdk_error(&format!("describing {pid}"), e)),
        }
    }

    /// RunInstances for trainctl's `id`, zone after zone, type after type, market after
    /// market. The per-region setup (key pair, group, the image's root device) is taken
    /// from what an earlier launch remembered when `remembered`, else checked (made when
    /// missing) and remembered.
    async fn launch_new(&self, id: &str, plan: &Plan, remembered: bool) -> Result<Launched> {
        let region = plan.region.clone().context("a plan without a region")?;
        let ec2 = self.ec2(&region).await?;
        let owner = self.owner()?;
        let ami = self.resolve_ami(&region, plan).await?;
        let mut setup = if remembered {
            self.load_setup(&region)
        } else {
            Setup::default()
        };
        let (want_key, _, _) = self.login_key()?;
        let key_name = if setup.key_name.as_deref() == Some(want_key.as_str()) {
            want_key
        } else {
            let k = self.ensure_key_pair(&ec2).await?;
            setup.key_name = Some(k.clone());
            k
        };
        let groups = if !self.cfg.security_group_ids.is_empty() {
            self.cfg.security_group_ids.clone()
        } else {
            let cidr = match &self.cfg.ssh_cidr {
                Some(c) => c.clone(),
                None => format!("{}/32", public_ip().await?),
            };
            if setup.cidr.as_deref() == Some(cidr.as_str()) && !setup.groups.is_empty() {
                setup.groups.clone()
            } else {
                let g = self.security_groups(&ec2, &cidr).await?;
                setup.groups = g.clone();
                setup.cidr = Some(cidr);
                g
            }
        };
        let root_device = match setup.root_devices.get(&ami) {
            Some(d) => d.clone(),
            None => {
                let d = ec2
                    .describe_images()
                    .image_ids(&ami)
                    .send()
                    .await
                    .map_err(|e| ec2::sdk_error(&format!("describing image {ami}"), e))?
                    .images()
                    .first()
                    .with_context(|| format!("image {ami} not found in {region}"))?
                    .root_device_name()
                    .unwrap_or("/dev/sda1")
                    .to_string();
                setup.root_devices.insert(ami.clone(), d.clone());
                d
            }
        };
        self.save_setup(&region, &setup);
        let (host_private, host_public) = new_ed25519(&format!("trainctl {id}"))?;
        let user_data = USER_DATA
            .replace(
                "@HOST_KEY_PRIVATE@",
                &host_private
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
            .replace("@HOST_KEY_PUBLIC@", &host_public);
        // The plan's type first, then its alternatives (`any_of`), each in its zones.
        let mut types: Vec<(String, Vec<Option<String>>)> = Vec::new();
        for ty in std::iter::once(&plan.instance_type).chain(&plan.alternatives) {
            let zones: Vec<Option<String>> = if self.cfg.subnet_id.is_some() {
                vec![None]
            } else if let Some(z) = plan.options.get("zone") {
                vec![Some(z.clone())]
            } else {
                self.zones_offering(&ec2, ty)
                    .await?
                    .into_iter()
                    .map(Some)
                    .collect()
            };
            types.push((ty.clone(), zones));
        }
        let markets: Vec<bool> = match (plan.spot, self.cfg.spot_fallback) {
            (true, true) => vec![true, false],
            (spot, _) => vec![spot],
        };
        let tags = |rt: ResourceType| {
            TagSpecification::builder()
                .resource_type(rt)
                .tags(
                    Tag::builder()
                        .key("Name")
                        .value(format!("trainctl {id}"))
                        .build(),
                )
                .tags(Tag::builder().key(TAG_OWNER).value(&owner).build())
                .tags(Tag::builder().key(TAG_ID).value(id).build())
                .tags(Tag::builder().key(TAG_HOST_KEY).value(&host_public).build())
                .build()
        };
        let mut notes = Vec::new();
        // Every try in order: market, then type, then zone.
        let mut tries: Vec<(bool, &String, &Option<String>)> = Vec::new();
        for &spot in &markets {
            for (ty, zones) in &types {
                for zone in zones {
                    tries.push((spot, ty, zone));
                }
            }
        }
        for (spot, ty, zone) in tries {
            {
                let market = if spot { "spot" } else { "on-demand" };
                let token = client_token(id, zone.as_deref(), ty, spot);
                let mut run = ec2
                    .run_instances()
                    .image_id(&ami)
                    .instance_type(InstanceType::from(ty.as_str()))
                    .min_count(1)
                    .max_count(1)
                    .client_token(&token)
                    .key_name(&key_name)
                    .set_security_group_ids(Some(groups.clone()))
                    .set_subnet_id(self.cfg.subnet_id.clone())
                    .user_data(aws_smithy_types::base64::encode(&user_data))
                    .tag_specifications(tags(ResourceType::Instance))
                    .tag_specifications(tags(ResourceType::Volume))
                    .block_device_mappings(
                        BlockDeviceMapping::builder()
                            .device_name(&root_device)
                            .ebs(
                                EbsBlockDevice::builder()
                                    .volume_size(self.cfg.root_volume_gb as i32)
                                    .volume_type(VolumeType::Gp3)
                                    .delete_on_termination(true)
                                    .build(),
                            )
                            .build(),
                    );
                if let Some(z) = zone {
                    run = run.placement(Placement::builder().availability_zone(z).build());
                }
                if let Some(p) = &self.cfg.instance_profile {
                    let spec = if p.starts_with("arn:") {
                        IamInstanceProfileSpecification::builder().arn(p)
                    } else {
                        IamInstanceProfileSpecification::builder().name(p)
                    };
                    run = run.iam_instance_profile(spec.build());
                }
                if spot {
                    let mut so = SpotMarketOptions::builder()
                        .spot_instance_type(SpotInstanceType::OneTime)
                        .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate);
                    // Default bid: the on-demand price (EC2's own default, said explicitly).
                    let bid = self
                        .cfg
                        .spot_max_usd
                        .map(Money::from_dollars_f64)
                        .or_else(|| self.catalog().prices(ty, &region).and_then(|p| p.on_demand));
                    if let Some(b) = bid {
                        so = so.max_price(b.to_string().trim_start_matches('$'));
                    }
                    run = run.instance_market_options(
                        InstanceMarketOptionsRequest::builder()
                            .market_type(MarketType::Spot)
                            .spot_options(so.build())
                            .build(),
                    );
                }
                let where_ = format!(
                    "{ty} {market} in {}",
                    zone.as_deref().unwrap_or("the subnet's zone")
                );
                match send_retrying(run).await {
                    Ok(out) => {
                        let i = out
                            .instances()
                            .first()
                            .context("RunInstances returned no instance")?;
                        let mut l = self.launched_from(i, &region);
                        // The tag is on the instance; the answer may not echo it.
                        let mut b: Backend =
                            serde_json::from_str(l.backend.as_deref().unwrap_or("{}"))?;
                        b.host_key = Some(host_public.clone());
                        b.market = market.into();
                        l.backend = serde_json::to_string(&b).ok();
                        let prices = self.catalog().prices(ty, &region);
                        if spot {
                            let z = b.zone.clone().or(zone.clone()).unwrap_or_default();
                            match self.spot_price(&ec2, ty, &z).await {
                                Ok(p) => l.hourly = Some(p),
                                Err(e) => {
                                    l.hourly = prices.and_then(|p| p.cheapest_spot());
                                    notes.push(format!(
                                        "spot price of {z} unknown ({e:#}); the catalog's stays"
                                    ))
                                }
                            }
                        } else if plan.spot || *ty != plan.instance_type {
                            // On demand after all, or another type: its on-demand price.
                            l.hourly = prices.and_then(|p| p.on_demand);
                        }
                        if *ty != plan.instance_type {
                            l.instance_type = Some(ty.clone());
                        }
                        notes.push(format!("launched {where_} as {}", l.provider_id));
                        l.notes = notes;
                        return Ok(l);
                    }
                    Err(e) => {
                        let (f, code) = ec2::failure(&e);
                        if remembered
                            && matches!(
                                code.as_str(),
                                "InvalidKeyPair.NotFound"
                                    | "InvalidGroup.NotFound"
                                    | "InvalidGroupId.NotFound"
                            )
                        {
                            let _ = std::fs::remove_file(self.setup_path(&region));
                            bail!("{STALE_SETUP}: {code}");
                        }
                        if matches!(f, ec2::Failure::Capacity | ec2::Failure::Unsupported) {
                            notes.push(format!("{where_}: {code}, trying the next"));
                            continue;
                        }
                        return Err(ec2::sdk_error(&format!("launching {where_}"), e));
                    }
                }
            }
        }
        Err(classified(
            ErrorKind::Capacity,
            format!(
                "no capacity for {} in {region}: {}",
                plan.instance_type,
                notes.join("; ")
            ),
        ))
    }

    fn setup_path(&self, region: &str) -> PathBuf {
        self.dir.join(format!("setup-{region}.json"))
    }

    fn load_setup(&self, region: &str) -> Setup {
        std::fs::read(self.setup_path(region))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Best effort: a setup not remembered is checked again next time.
    fn save_setup(&self, region: &str, setup: &Setup) {
        let path = self.setup_path(region);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let saved = std::fs::create_dir_all(&self.dir)
            .and_then(|_| std::fs::write(&tmp, serde_json::to_vec(setup).unwrap_or_default()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = saved {
            tracing::warn!("remembering the {region} setup: {e}");
        }
    }

    /// `inst`'s EC2 id and a client for its region, its SSH connection dropped (a stop or
    /// start gives it a new address).
    async fn ec2_of(&self, inst: &InstanceRecord) -> Result<(String, aws_sdk_ec2::Client)> {
        let pid = inst.provider_id.clone().context("no EC2 id yet")?;
        let ec2 = self.ec2(&self.region_for(inst.region.as_deref())?).await?;
        self.conns.lock().await.remove(&inst.id);
        Ok((pid, ec2))
    }

    fn target(&self, host: &str, key: &Path) -> Result<SshTarget> {
        let mut t = SshTarget::resolve(
            host,
            Some(&self.cfg.ssh_user),
            Some(22),
            Some(key),
            &self.ssh_config,
            &self.dir.join("known_hosts"),
            false,
        );
        if let Some(c) = &self.cfg.proxy_command {
            t.proxy_command = Some(expand(c, &t.hostname, t.port, &t.user));
        } else if let Some(j) = &self.cfg.proxy_jump {
            t.proxy_command = Some(proxy_jump_command(
                j,
                &t.hostname,
                t.port,
                self.ssh_config.source(),
            ));
        }
        t.prompt = Some(self.prompt.clone());
        Ok(t)
    }

    async fn connect(&self, inst: &InstanceRecord, host: &str) -> Result<Arc<SshRemote>> {
        let mut conns = self.conns.lock().await;
        // A cached connection that dropped is made again (a machine gone is found now).
        if let Some(c) = conns.get(&inst.id) {
            if c.is_open().await {
                return Ok(c.clone());
            }
            conns.remove(&inst.id);
        }
        let backend: Backend = inst
            .backend
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        let key = backend.host_key.with_context(|| {
            format!(
                "{} has no recorded host key: trainctl will not trust one on first use",
                inst.id
            )
        })?;
        pin_host_key(&self.dir.join("known_hosts"), host, &key)?;
        let (_, login, _) = self.login_key()?;
        let r = SshRemote::connect(self.target(host, &login)?, None).await?;
        // The runner's watcher asks this endpoint for spot notices while a job runs.
        let imds = format!("{}/imds", r.root());
        r.write_file(
            &imds,
            format!("{}\n", self.cfg.imds_endpoint).as_bytes(),
            0o644,
        )
        .await
        .context("telling the machine where its instance metadata is")?;
        let r = Arc::new(r);
        conns.insert(inst.id.clone(), r.clone());
        Ok(r)
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            spot: true,
            // On-demand machines only: a one-time spot request cannot be stopped.
            stop_start: true,
            interruption_notices: true,
            regions: self.cfg.regions.clone(),
            vouches: true,
            types_are_hosts: false,
            // Linux on EC2 is billed per second with a one-minute minimum.
            min_billed_seconds: 60,
        }
    }

    fn check(&self, req: &LaunchRequest) -> Result<Plan> {
        req.only_options("aws", OPTIONS)?;
        let region = self.region_for(req.options.get("region").map(String::as_str))?;
        let cat = self.catalog();
        let ty = match &req.instance_type {
            Some(t) => t.clone(),
            None => {
                let want = req.gpus.unwrap_or(1).max(1);
                let offers = cat.offers(Some(&region), None, Some(want));
                let pick = offers
                    .iter()
                    .find(|o| {
                        if req.spot {
                            o.spot_micros.is_some()
                        } else {
                            o.on_demand_micros.is_some()
                        }
                    })
                    .with_context(|| format!("no type with {want} GPU in {region}"))?;
                pick.instance_type.clone()
            }
        };
        let Some(spec) = cat.spec(&ty) else {
            bail!(
                "unknown instance type `{ty}` (not a GPU type in trainctl's AWS catalog); nearest: {}",
                cat.nearest(&ty, 4).join(", ")
            );
        };
        if let Some(g) = req.gpus
            && spec.count < g as f64
        {
            bail!(
                "{ty} has {} {} GPU, {g} asked",
                spec.count,
                spec.accelerator
            );
        }
        let Some(prices) = cat.prices(&ty, &region) else {
            bail!(
                "{ty} is not sold in {region} (the catalog lists it in: {})",
                cat.regions_of(&ty).join(", ")
            );
        };
        let on_demand = prices.on_demand;
        let hourly = if req.spot {
            let bid = self
                .cfg
                .spot_max_usd
                .map(Money::from_dollars_f64)
                .or(on_demand);
            let spot = prices
                .cheapest_spot()
                .with_context(|| format!("{ty} has no spot market in {region}"))?;
            if let Some(b) = bid
                && spot > b
            {
                bail!("{ty} spot in {region} is {spot}/h, above the bid {b}/h (spot_max_usd)");
            }
            spot
        } else {
            on_demand.with_context(|| {
                format!("{ty} has no on-demand price in {region} (sold as Capacity Blocks only)")
            })?
        };
        // Alternatives are checked like the first choice, before anything is asked of AWS.
        for alt in &req.any_of {
            if cat.spec(alt).is_none() {
                bail!(
                    "unknown instance type `{alt}` in any_of; nearest: {}",
                    cat.nearest(alt, 4).join(", ")
                );
            }
            if cat.prices(alt, &region).is_none() {
                bail!("{alt} (any_of) is not sold in {region}");
            }
        }
        Ok(Plan {
            instance_type: ty.clone(),
            gpus: spec.gpus(),
            spot: req.spot,
            hourly,
            accept_new_host_key: false,
            region: Some(region),
            options: req.options.clone(),
            alternatives: req.any_of.iter().filter(|a| **a != ty).cloned().collect(),
        })
    }

    async fn plan(&self, req: &LaunchRequest) -> Result<Plan> {
        let plan = self.check(req)?;
        let region = plan.region.clone().unwrap_or_default();
        let ec2 = self.ec2(&region).await?;
        let zones = self.zones_offering(&ec2, &plan.instance_type).await?;
        if zones.is_empty() {
            bail!(
                "EC2 offers {} in no zone of {region} now",
                plan.instance_type
            );
        }
        if let Some(z) = plan.options.get("zone")
            && !zones.contains(z)
        {
            bail!(
                "zone {z} does not offer {} (zones that do: {})",
                plan.instance_type,
                zones.join(", ")
            );
        }
        Ok(plan)
    }

    fn instance_types(&self) -> Vec<String> {
        let region = self.region_for(None).ok();
        let mut seen = std::collections::BTreeSet::new();
        self.catalog()
            .offers(region.as_deref(), None, None)
            .into_iter()
            .filter(|o| seen.insert(o.instance_type.clone()))
            .map(|o| o.instance_type)
            .collect()
    }

    fn offers(&self) -> Vec<super::Offer> {
        self.catalog().offers(None, None, None)
    }

    async fn launch(&self, id: &str, plan: &Plan) -> Result<Launched> {
        if let Some(l) = self.find(id).await? {
            return Ok(l);
        }
        match self.launch_new(id, plan, true).await {
            // The remembered key pair or group is gone: made again, once.
            Err(e) if format!("{e}").starts_with(STALE_SETUP) => {
                self.launch_new(id, plan, false).await
            }
            r => r,
        }
    }
    async fn reach(&self, inst: &InstanceRecord) -> Result<String> {
        let started = Instant::now();
        let limit = Duration::from_secs(self.cfg.reach_timeout_seconds);
        let mut wait = Duration::from_millis(500);
        let mut waiting_for = "EC2 to report it running".to_string();
        // Said when it changes (shown headless by default), not at every poll.
        let mut said = String::new();
        loop {
            let step = async {
                let Some(i) = self.instance(inst).await? else {
                    bail!("EC2 no longer knows {}", inst.id);
                };
                match ec2::observed(&i) {
                    Observed::Running => {}
                    Observed::Pending => return Ok(None),
                    other => bail!("the machine ended before it could be reached ({other:?})"),
                }
                let host = if self.cfg.use_private_ip {
                    i.private_ip_address()
                } else {
                    i.public_ip_address().or(i.private_ip_address())
                };
                let Some(host) = host else {
                    return Ok(Some(Err("an address".to_string())));
                };
                match self.connect(inst, host).await {
                    Ok(_) => Ok(Some(Ok(format!("{}@{host}:22", self.cfg.ssh_user)))),
                    // A key refused while the machine boots may be one cloud-init has not
                    // installed yet: waited for like a closed port. A host key that is not
                    // the one trainctl gave the machine is never waited out.
                    Err(e)
                        if error_kind(&e).is_some_and(|k| {
                            !matches!(k, ErrorKind::LostConnection | ErrorKind::Auth)
                        }) =>
                    {
                        Err(e)
                    }
                    Err(e) => Ok(Some(Err(format!("SSH on {host} ({e:#})")))),
                }
            };
            match step.await? {
                Some(Ok(address)) => return Ok(address),
                Some(Err(what)) => waiting_for = what,
                None => {}
            }
            if started.elapsed() > limit {
                bail!(
                    "{} not reachable after {}s: still waiting for {waiting_for}",
                    inst.id,
                    limit.as_secs()
                );
            }
            if waiting_for != said {
                tracing::info!("{}: waiting for {waiting_for}", inst.id);
                said = waiting_for.clone();
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    async fn find(&self, id: &str) -> Result<Option<Launched>> {
        let owner = self.owner()?;
        for region in self.regions().await? {
            let ec2 = self.ec2(&region).await?;
            let out = ec2
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{TAG_ID}"))
                        .values(id)
                        .build(),
                )
                .filters(
                    Filter::builder()
                        .name(format!("tag:{TAG_OWNER}"))
                        .values(&owner)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| ec2::sdk_error("looking for the instance by its tags", e))?;
            let mut all: Vec<&aws_sdk_ec2::types::Instance> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .collect();
            // A live one first.
            all.sort_by_key(|i| matches!(ec2::observed(i), Observed::Gone));
            if let Some(i) = all.first() {
                return Ok(Some(self.launched_from(i, &region)));
            }
        }
        Ok(None)
    }

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed> {
        if inst.provider_id.is_none() {
            // The launch never answered: EC2 may still hold it under our tag.
            return Ok(match self.find(&inst.id).await? {
                Some(_) => Observed::Pending,
                None => Observed::Gone,
            });
        }
        Ok(match self.instance(inst).await? {
            Some(i) => ec2::observed(&i),
            None => Observed::Gone,
        })
    }

    async fn terminate(&self, inst: &InstanceRecord) -> Result<()> {
        self.conns.lock().await.remove(&inst.id);
        self.side.lock().await.remove(&inst.id);
        let pid = match &inst.provider_id {
            Some(p) => p.clone(),
            None => match self.find(&inst.id).await? {
                Some(l) => l.provider_id,
                None => return Ok(()),
            },
        };
        let region = self.region_for(inst.region.as_deref())?;
        let ec2 = self.ec2(&region).await?;
        match ec2.terminate_instances().instance_ids(&pid).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(e) => Err(ec2::sdk_error(&format!("terminating {pid}"), e)),
        }
    }

    async fn list(&self) -> Result<Vec<Listed>> {
        let owner = self.owner()?;
        let mut out = Vec::new();
        for region in self.regions().await? {
            let ec2 = self.ec2(&region).await?;
            let mut next: Option<String> = None;
            loop {
                let page = ec2
                    .describe_instances()
                    .filters(
                        Filter::builder()
                            .name(format!("tag:{TAG_OWNER}"))
                            .values(&owner)
                            .build(),
                    )
                    .filters(
                        Filter::builder()
                            .name("instance-state-name")
                            .values("pending")
                            .values("running")
                            .values("stopping")
                            .values("stopped")
                            .build(),
                    )
                    .set_next_token(next.take())
                    .send()
                    .await
                    .map_err(|e| {
                        ec2::sdk_error(&format!("listing trainctl's machines in {region}"), e)
                    })?;
                for i in page.reservations().iter().flat_map(|r| r.instances()) {
                    let ty = i.instance_type().map(|t| t.as_str().to_string());
                    let spot = i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot");
                    let prices = ty
                        .as_deref()
                        .and_then(|t| self.catalog().prices(t, &region));
                    out.push(Listed {
                        id: ec2::tag(i, TAG_ID).unwrap_or("?").to_string(),
                        provider_id: i.instance_id().unwrap_or_default().to_string(),
                        region: Some(region.clone()),
                        instance_type: ty.clone(),
                        spot,
                        launched_ms: i.launch_time().and_then(|t| t.to_millis().ok()),
                        // An estimate from the catalog (its spot prices are per zone id).
                        hourly: prices.and_then(
                            |p| {
                                if spot { p.cheapest_spot() } else { p.on_demand }
                            },
                        ),
                        batch_on: None,
                    });
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => next = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn checkpoint_store(&self) -> Option<Arc<dyn crate::job::checkpoint::CheckpointStore>> {
        self.checkpoints.clone()
    }

    async fn data_source(&self, url: &str) -> Result<Option<crate::provider::ObjectListing>> {
        if !url.starts_with("s3://") {
            return Ok(None);
        }
        let (bucket, prefix) = s3::parse_url(url)?;
        let prefix = if prefix.is_empty() {
            prefix
        } else {
            format!("{prefix}/")
        };
        let client = s3::client(self.sdk().await?, &self.cfg);
        let objects = s3::list_dataset(&client, &bucket, &prefix).await?;
        // The machine fetches with its own credentials; region and (for emulators and
        // private endpoints) the endpoint come from here.
        let mut env = Vec::new();
        if let Some(r) = self.cfg.regions.first() {
            env.push(("AWS_DEFAULT_REGION".to_string(), r.clone()));
        }
        if let Some(u) = self
            .cfg
            .endpoints
            .get("s3")
            .or(self.cfg.endpoint_url.as_ref())
        {
            env.push(("AWS_ENDPOINT_URL_S3".to_string(), u.clone()));
        }
        Ok(Some(crate::provider::ObjectListing {
            bucket,
            prefix,
            objects,
            env,
        }))
    }

    async fn image_registry(
        &self,
        project: &str,
    ) -> Result<Option<crate::provider::RegistryLogin>> {
        let region = self.region_for(None)?;
        let client = ecr::client(self.sdk().await?, &self.cfg, &region);
        let repo = format!("trainctl/{project}");
        ecr::ensure_repository(&client, &repo).await?;
        let (host, username, password) = ecr::login(&client).await?;
        let host = self.cfg.ecr_registry.clone().unwrap_or(host);
        Ok(Some(crate::provider::RegistryLogin {
            repository: format!("{host}/{repo}"),
            host,
            username,
            password,
        }))
    }

    async fn label_job(&self, inst: &InstanceRecord, job_id: &str) -> Result<()> {
        let Some(pid) = inst.provider_id.as_deref() else {
            return Ok(());
        };
        let ec2 = self.ec2(&self.region_for(inst.region.as_deref())?).await?;
        ec2.create_tags()
            .resources(pid)
            .tags(Tag::builder().key(TAG_JOB).value(job_id).build())
            .send()
            .await
            .map_err(|e| ec2::sdk_error(&format!("tagging {pid}"), e))?;
        Ok(())
    }

    async fn stop(&self, inst: &InstanceRecord) -> Result<()> {
        if inst.spot {
            bail!(
                "{} is a spot machine: EC2 cannot stop a one-time spot instance (terminate it; its job's checkpoints resume elsewhere)",
                inst.id
            );
        }
        let (pid, ec2) = self.ec2_of(inst).await?;
        ec2.stop_instances()
            .instance_ids(&pid)
            .send()
            .await
            .map_err(|e| ec2::sdk_error(&format!("stopping {pid}"), e))?;
        Ok(())
    }

    async fn start(&self, inst: &InstanceRecord) -> Result<()> {
        let (pid, ec2) = self.ec2_of(inst).await?;
        ec2.start_instances()
            .instance_ids(&pid)
            .send()
            .await
            .map_err(|e| ec2::sdk_error(&format!("starting {pid}"), e))?;
        Ok(())
    }

    async fn price_now(&self, inst: &InstanceRecord) -> Result<Option<Money>> {
        if !inst.spot {
            return Ok(None);
        }
        let backend: Backend = inst
            .backend
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        let (Some(zone), Some(region)) = (backend.zone, &inst.region) else {
            return Ok(None);
        };
        let ec2 = self.ec2(region).await?;
        Ok(Some(
            self.spot_price(&ec2, &inst.instance_type, &zone).await?,
        ))
    }

    fn idle_limit(&self) -> Option<Duration> {
        (self.cfg.idle_minutes > 0.0).then(|| Duration::from_secs_f64(self.cfg.idle_minutes * 60.0))
    }

    fn idle_stops(&self) -> bool {
        self.cfg.idle_action == crate::config::IdleAction::Stop
    }

    async fn side_channel(
        &self,
        inst: &InstanceRecord,
    ) -> Result<Option<crate::provider::SideChannel>> {
        if !self.cfg.ssm_fallback {
            return Ok(None);
        }
        let Some(pid) = inst.provider_id.clone() else {
            return Ok(None);
        };
        let mut side = self.side.lock().await;
        let r = match side.get(&inst.id) {
            Some(r) => r.clone(),
            None => {
                let region = self.region_for(inst.region.as_deref())?;
                let client = ec2::ssm_client(self.sdk().await?, &self.cfg, &region);
                let r = Arc::new(
                    ssm::SsmRemote::open(client, &pid, &self.cfg.ssh_user, Duration::from_secs(60))
                        .await?,
                );
                side.insert(inst.id.clone(), r.clone());
                r
            }
        };
        Ok(Some(crate::provider::SideChannel {
            via: "SSM",
            remote: r,
        }))
    }

    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>> {
        let host = inst
            .address
            .as_deref()
            .and_then(|a| a.rsplit_once('@').map(|(_, h)| h).or(Some(a)))
            .map(|h| h.rsplit_once(':').map_or(h, |(h, _)| h))
            .with_context(|| format!("{} has no address yet", inst.id))?
            .to_string();
        let r: Arc<dyn Remote> = self.connect(inst, &host).await?;
        Ok(r)
    }
}

/// RunInstances, retried here (not by the SDK) when EC2 throttles or the answer was lost:
/// the ClientToken makes a repeat safe. A capacity error is not retried in the same zone;
/// the caller moves on at once.
async fn send_retrying(
    run: aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder,
) -> Result<
    aws_sdk_ec2::operation::run_instances::RunInstancesOutput,
    aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::run_instances::RunInstancesError>,
> {
    use aws_sdk_ec2::error::SdkError;
    let mut attempt = 0u32;
    loop {
        let once = run
            .clone()
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default()
                    .retry_config(aws_config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        let again = match &once {
            Err(
                SdkError::DispatchFailure(_)
                | SdkError::TimeoutError(_)
                | SdkError::ResponseError(_),
            ) => true,
            Err(e) => matches!(
                e.code(),
                Some(
                    "RequestLimitExceeded"
                        | "Throttling"
                        | "ThrottlingException"
                        | "InternalError"
                        | "ServiceUnavailable"
                        | "Unavailable"
                )
            ),
            Ok(_) => false,
        };
        if !again || attempt >= 6 {
            return once;
        }
        attempt += 1;
        tokio::time::sleep(jittered(Duration::from_millis(250) * 2u32.pow(attempt))).await;
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jittered(d: Duration) -> Duration {
    let r = u16::from_le_bytes(random_bytes::<2>()) as f64 / 65536.0;
    d.mul_f64(0.5 + r)
}

/// A ClientToken for one try: the same id, zone, type and market always give the same
/// token (a retried call after a crash is answered with the first machine); another
/// zone or market is a new request.
pub fn client_token(id: &str, zone: Option<&str>, ty: &str, spot: bool) -> String {
    let h = blake3::hash(format!("{id}|{}|{ty}|{spot}", zone.unwrap_or("")).as_bytes()).to_hex();
    let mut t = format!("{id}-{}", &h[..16]);
    t.truncate(64);
    t
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b
}

/// A new ed25519 key pair: (private key in OpenSSH format, public key line).
pub fn new_ed25519(comment: &str) -> Result<(String, String)> {
    use russh::keys::ssh_key::{LineEnding, private::Ed25519Keypair};
    let kp = Ed25519Keypair::from_seed(&random_bytes::<32>());
    let mut key = russh::keys::PrivateKey::from(kp);
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF)?.to_string();
    let public = key.public_key().to_openssh()?;
    Ok((private, public))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Record `key` as the only key of `host` (port 22) in trainctl's known_hosts: an address
/// EC2 gave an earlier machine must not carry that machine's key.
pub fn pin_host_key(known_hosts: &Path, host: &str, key: &str) -> Result<()> {
    let key = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let line = format!("{host} {key}");
    if let Some(d) = known_hosts.parent() {
        std::fs::create_dir_all(d)?;
    }
    // Two trainctl processes pinning at once must not lose each other's line.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(known_hosts.with_extension("lock"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a file descriptor we own; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let old = std::fs::read_to_string(known_hosts).unwrap_or_default();
    if old.lines().any(|l| l == line) {
        return Ok(());
    }
    let mut kept: Vec<&str> = old
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(host))
        .collect();
    kept.push(&line);
    let tmp = known_hosts.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, kept.join("\n") + "\n")?;
    std::fs::rename(&tmp, known_hosts)?;
    Ok(())
}

/// This machine's public IPv4 address as AWS sees it (`checkip.amazonaws.com`), for the
/// default `ssh_cidr`.
async fn public_ip() -> Result<std::net::Ipv4Addr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect("checkip.amazonaws.com:80").await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: checkip.amazonaws.com\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        let ip = body
            .rsplit("\r\n\r\n")
            .next()
            .unwrap_or("")
            .trim()
            .parse::<std::net::Ipv4Addr>()?;
        anyhow::Ok(ip)
    };
    tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .context("finding this machine's public address for ssh_cidr (checkip.amazonaws.com); set ssh_cidr in [providers.aws]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_address_keeps_only_its_newest_key() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("aws/known_hosts");
        pin_host_key(&kh, "54.1.2.3", "ssh-ed25519 AAAA1 trainctl i-1").unwrap();
        pin_host_key(&kh, "54.9.9.9", "ssh-ed25519 BBBB").unwrap();
        // EC2 gave the first address to a new machine: its key replaces the old one.
        pin_host_key(&kh, "54.1.2.3", "ssh-ed25519 CCCC").unwrap();
        pin_host_key(&kh, "54.1.2.3", "ssh-ed25519 CCCC").unwrap();
        let text = std::fs::read_to_string(&kh).unwrap();
        assert_eq!(
            text,
            "54.9.9.9 ssh-ed25519 BBBB\n54.1.2.3 ssh-ed25519 CCCC\n"
        );
    }

    #[test]
    fn client_tokens_differ_by_zone_and_market_and_fit_ec2s_limit() {
        let a = client_token("i-abc", Some("us-east-1a"), "g5.xlarge", true);
        assert_eq!(
            a,
            client_token("i-abc", Some("us-east-1a"), "g5.xlarge", true)
        );
        assert_ne!(
            a,
            client_token("i-abc", Some("us-east-1b"), "g5.xlarge", true)
        );
        assert_ne!(
            a,
            client_token("i-abc", Some("us-east-1a"), "g5.xlarge", false)
        );
        assert!(client_token(&"x".repeat(100), None, "g5.xlarge", true).len() <= 64);
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(valid_cidr("203.0.113.7/32"));
        assert!(!valid_cidr("203.0.113.7"));
        assert!(!valid_cidr("203.0.113.7/33"));
        assert!(!valid_cidr("::1/128"));
    }
}
