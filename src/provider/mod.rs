//! Providers rent machines. The engine records the intent in the store before calling
//! [`Provider::launch`], and forgets an instance only after [`Provider::describe`] confirms
//! it gone, so a crash can never leave a billing machine nobody knows about.

pub mod aws;
pub mod canopywave;
pub mod gpucloud;
pub mod http;
pub mod lambda;
pub mod local;
pub mod runpod;
pub mod slurm;
pub mod ssh;

pub use aws::catalog::Offer;

use crate::model::{Money, TimestampMs};
use crate::remote::Remote;
use crate::store::InstanceRecord;
use anyhow::Result;
use async_trait::async_trait;
use std::sync::Arc;

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchRequest {
    pub name: Option<String>,
    pub instance_type: Option<String>,
    pub gpus: Option<u32>,
    pub spot: bool,
    /// Trust and record the machine's host key if it has never been seen (every provider
    /// whose machines are reached over SSH).
    pub accept_new_host_key: bool,
    /// Other instance types to try, in order, when the first has no capacity anywhere
    /// (`[resources] any_of`).
    pub any_of: Vec<String>,
    /// Options only one provider understands (`hourly_usd` for `local` and `ssh`; an AMI or
    /// a bid for the clouds), `trainctl launch -o KEY=VALUE`. Each provider's `check`
    /// refuses a key it does not know, naming the ones it does.
    pub options: std::collections::BTreeMap<String, String>,
    /// Keep a machine whose launch failed after it existed (to look at it); else it is
    /// terminated, confirmed with the provider.
    pub keep_on_error: bool,
}

impl LaunchRequest {
    /// Refuse options other than `known`, for provider `provider`.
    pub fn only_options(&self, provider: &str, known: &[&str]) -> Result<()> {
        for k in self.options.keys() {
            if !known.contains(&k.as_str()) {
                anyhow::bail!(
                    "the {provider} provider has no option `{k}` (it knows: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
        }
        Ok(())
    }

    /// A dollar amount given as option `key`.
    pub fn money_option(&self, key: &str) -> Result<Option<Money>> {
        self.options
            .get(key)
            .map(|v| {
                Money::from_dollars_str(v)
                    .ok_or_else(|| anyhow::anyhow!("option {key} = `{v}` is not a dollar amount"))
            })
            .transpose()
    }
}

/// A request checked against the provider's catalog, before any side effect.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub instance_type: String,
    pub gpus: u32,
    pub spot: bool,
    /// The price expected (a spot price is sampled again at launch: [`Launched::hourly`]).
    pub hourly: Money,
    pub accept_new_host_key: bool,
    /// Where it will run, for providers with regions.
    pub region: Option<String>,
    /// The request's provider-only options, checked.
    pub options: std::collections::BTreeMap<String, String>,
    /// Types to try after `instance_type` when it has no capacity (checked like it).
    pub alternatives: Vec<String>,
}

/// What the provider answered to a launch, at once: stored before anything waits on the
/// machine, so a trainctl killed after this point finds the machine again by its ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Launched {
    /// The provider's own id of the machine (an EC2 instance id, a pod id; the sandbox or
    /// hold id for `local` and `ssh`).
    pub provider_id: String,
    pub region: Option<String>,
    /// Provider-only data kept with the instance (JSON text, opaque to the engine).
    pub backend: Option<String>,
    /// The provider's own launch time: billing starts here, never at our intent.
    pub launched_ms: Option<TimestampMs>,
    /// The price the provider charges from launch, when it differs from the plan's (the
    /// live spot price of the zone it landed in).
    pub hourly: Option<Money>,
    /// What happened on the way, one event each (a zone without capacity, a fallback).
    pub notes: Vec<String>,
    /// The type it landed as, when not the plan's (an `any_of` alternative).
    pub instance_type: Option<String>,
}

/// What the provider says about a machine right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Running,
    /// Still coming up.
    Pending,
    /// Stopped (not billing for compute; its disk may still bill).
    Stopped,
    /// Reclaimed or interrupted by the provider (a spot reclaim, a preemption).
    Interrupted {
        reason: String,
        at: Option<TimestampMs>,
    },
    /// The provider no longer has it (terminated, or never existed).
    Gone,
}

/// What a provider can do; the engine asks instead of knowing providers by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Capabilities {
    pub spot: bool,
    pub stop_start: bool,
    /// The provider warns before it takes a machine (EC2's two-minute spot notice).
    pub interruption_notices: bool,
    pub regions: Vec<String>,
    /// `describe` reflects the machine's real state. When false (a host pool: the hold is
    /// ours, not the host's), a machine unreachable past `lost_after_seconds` is lost.
    pub vouches: bool,
    /// Instance types name fixed hosts: a replacement may be any host that fits.
    pub types_are_hosts: bool,
    /// The least time a machine is billed for (EC2: 60 s), in seconds.
    pub min_billed_seconds: u32,
}

/// A machine the provider holds for trainctl.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Listed {
    /// trainctl's id (the provider keeps it as a tag or name).
    pub id: String,
    pub provider_id: String,
    pub region: Option<String>,
    pub instance_type: Option<String>,
    pub spot: bool,
    /// The provider's launch time (an orphan's cost runs from here).
    pub launched_ms: Option<TimestampMs>,
    /// What it costs per hour, when the provider can say.
    pub hourly: Option<Money>,
    /// Not a machine: a scheduler's job of this store's on the held cluster instance
    /// named here, which no live attempt in the store accounts for (`id` is
    /// `<provider>:<the scheduler's id>`, `provider_id` its name there).
    pub batch_on: Option<String>,
}

/// Where built images go at a provider's registry, and how to log in to it.
#[derive(Debug, Clone)]
pub struct RegistryLogin {
    /// `host[:port]/trainctl/<project>`: images are `<this>:<hash>`.
    pub repository: String,
    /// The host `docker login` takes.
    pub host: String,
    pub username: String,
    pub password: crate::ssh::Secret,
}

/// A second way onto a machine when its usual one (SSH) cannot reach it: enough to read a
/// job's status and stop it (SSM Run Command for EC2). Files wait for the usual way.
pub struct SideChannel {
    /// What it goes through, for the user ("SSM").
    pub via: &'static str,
    pub remote: Arc<dyn Remote>,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Validate a request and price it from what the provider knows offline (its
    /// catalog, its config): no IO, so the cockpit's launch form runs it as you type. An
    /// unknown instance type is refused here.
    fn check(&self, req: &LaunchRequest) -> Result<Plan>;

    /// [`Provider::check`], then whatever needs the network (the region's offerings,
    /// quotas), still without side effects. Runs as a command, never on the UI task.
    async fn plan(&self, req: &LaunchRequest) -> Result<Plan> {
        self.check(req)
    }

    /// Instance types this provider offers (for completion), cheapest first.
    fn instance_types(&self) -> Vec<String>;

    /// What this provider offers with prices, from what it knows offline (`trainctl gpus`).
    fn offers(&self) -> Vec<Offer> {
        Vec::new()
    }

    /// Read the provider's own type and price listing and keep it in the data directory,
    /// so offline prices (`gpus`, `check`) are today's (`gpus --refresh`). Returns what was
    /// read, for the user; None: the provider has no listing to read.
    async fn refresh_offers(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Create the machine whose intent row `id` is already in the store, idempotently by
    /// `id` (a launch repeated after a crash finds the first one). Returns what the
    /// provider answered at once; reaching the machine is [`Provider::reach`].
    async fn launch(&self, id: &str, plan: &Plan) -> Result<Launched>;

    /// Wait until a launched machine can be reached; returns its address. Resumable.
    async fn reach(&self, inst: &InstanceRecord) -> Result<String>;

    /// Ask the provider by trainctl's id whether it holds a machine (heals a launch whose
    /// answer never reached the store).
    async fn find(&self, id: &str) -> Result<Option<Launched>>;

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed>;

    /// Stop every process trainctl started there and release the machine.
    async fn terminate(&self, inst: &InstanceRecord) -> Result<()>;

    /// Every machine this provider holds for trainctl (to find orphans).
    async fn list(&self) -> Result<Vec<Listed>>;

    /// A remote for a running instance (connecting if the provider needs to).
    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>>;

    /// The machine through a [`SideChannel`], for when [`Provider::remote`] fails and the
    /// provider still says it runs. None: the provider has no other way.
    async fn side_channel(&self, _inst: &InstanceRecord) -> Result<Option<SideChannel>> {
        Ok(None)
    }

    /// Mark the machine as running `job_id` where the provider shows it (a tag), so its
    /// console says what it is for. Best effort.
    async fn label_job(&self, _inst: &InstanceRecord, _job_id: &str) -> Result<()> {
        Ok(())
    }

    /// Stop a machine, keeping its disk (providers with `stop_start`).
    async fn stop(&self, inst: &InstanceRecord) -> Result<()> {
        anyhow::bail!("{} machines cannot be stopped ({})", self.name(), inst.id)
    }

    /// Start a stopped machine again; [`Provider::reach`] then finds its new address.
    async fn start(&self, inst: &InstanceRecord) -> Result<()> {
        anyhow::bail!("{} machines cannot be started ({})", self.name(), inst.id)
    }

    /// The price the provider charges for `inst` now, when it moves (a spot price);
    /// None when it does not or cannot say.
    async fn price_now(&self, _inst: &InstanceRecord) -> Result<Option<Money>> {
        Ok(None)
    }

    /// How long a machine may sit without a job before trainctl ends it (None: never).
    fn idle_limit(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether an idle machine is stopped (its disk kept) rather than terminated; only
    /// asked for machines that can stop.
    fn idle_stops(&self) -> bool {
        false
    }

    /// How attempts run on this instance, when not trainctl's detached runner (Slurm:
    /// a batch job per attempt).
    fn executor(&self, _inst: &InstanceRecord) -> Option<Arc<dyn crate::job::executor::Executor>> {
        None
    }

    /// A registry of the provider's for built images (ECR on AWS): repository
    /// `trainctl/<project>` made when missing, and a login for it. None: it has none.
    async fn image_registry(&self, _project: &str) -> Result<Option<RegistryLogin>> {
        Ok(None)
    }

    /// When the provider bills each job's GPU time rather than a machine (a cluster):
    /// the price of a GPU-hour there (zero when the cluster's time has no price). An
    /// attempt on such an instance counts GPU time only while it runs (not while it waits
    /// in a queue) and costs this per GPU-hour; the instance itself bills nothing.
    fn gpu_hour_price(&self, _inst: &InstanceRecord) -> Option<Money> {
        None
    }

    /// Where checkpoints of jobs on this provider's machines are kept, when not in the
    /// local data directory (S3 for `aws` when configured).
    fn checkpoint_store(&self) -> Option<Arc<dyn crate::job::checkpoint::CheckpointStore>> {
        None
    }

    /// A dataset in this provider's object store (`s3://BUCKET/PREFIX` for `aws`): its
    /// objects and what a machine needs to fetch them itself. `None`: not this
    /// provider's kind of URL.
    async fn data_source(&self, _url: &str) -> Result<Option<ObjectListing>> {
        Ok(None)
    }
}

/// The objects under a prefix of an object store, for a dataset the machine fetches
/// itself with its own credentials (an EC2 instance role; elsewhere its env or files).
#[derive(Debug, Clone)]
pub struct ObjectListing {
    pub bucket: String,
    /// Ends with `/` unless empty.
    pub prefix: String,
    /// Name under the prefix, size, ETag (the store's own content tag).
    pub objects: Vec<(String, u64, String)>,
    /// Environment for the machine's fetch (region; an endpoint for emulators).
    pub env: Vec<(String, String)>,
}

/// Write `text` to `<data>/catalog/<name>` whole (a temporary file renamed over it).
pub fn keep_catalog(data_dir: &std::path::Path, name: &str, text: &str) -> Result<()> {
    crate::model::write_whole(&data_dir.join("catalog").join(name), text.as_bytes())?;
    Ok(())
}

/// The catalog `<data>/catalog/<name>` a refresh kept, else `embedded`.
pub fn catalog_text(
    data_dir: &std::path::Path,
    name: &str,
    embedded: &'static str,
) -> std::borrow::Cow<'static, str> {
    match std::fs::read_to_string(data_dir.join("catalog").join(name)) {
        Ok(t) if t.lines().count() > 1 => std::borrow::Cow::Owned(t),
        _ => std::borrow::Cow::Borrowed(embedded),
    }
}

/// A catalog `gpus --refresh` kept in `data_dir` as `name`, parsed, else the shipped one
/// (also when the kept file holds no row `parse` accepts).
pub fn kept_catalog<T>(
    data_dir: &std::path::Path,
    name: &str,
    shipped: &'static str,
    parse: impl Fn(&str) -> Vec<T>,
) -> Vec<T> {
    let rows = parse(&catalog_text(data_dir, name, shipped));
    if rows.is_empty() {
        parse(shipped)
    } else {
        rows
    }
}

/// Every provider trainctl has, configured or not.
pub const NAMES: &[&str] = &["local", "ssh", "aws", "lambda", "canopywave", "runpod"];

/// Every provider the config enables, by name: a new provider is one folder under
/// `provider/`, its lines here and its name in [`NAMES`].
pub fn registry(
    cfg: &crate::config::UserConfig,
    data_dir: &std::path::Path,
    prompt: crate::ssh::remote::PromptSlot,
) -> std::collections::BTreeMap<String, Arc<dyn Provider>> {
    let mut out: std::collections::BTreeMap<String, Arc<dyn Provider>> = Default::default();
    let grace = std::time::Duration::from_secs(cfg.stop_grace_seconds);
    out.insert(
        "local".into(),
        Arc::new(local::LocalProvider::new(
            data_dir,
            cfg.providers.local.clone(),
            grace,
        )),
    );
    if !cfg.providers.ssh.hosts.is_empty() {
        out.insert(
            "ssh".into(),
            Arc::new(ssh::SshProvider::new(
                data_dir,
                cfg.providers.ssh.clone(),
                prompt.clone(),
            )),
        );
    }
    if let Some(sl) = &cfg.providers.slurm {
        out.insert(
            "slurm".into(),
            Arc::new(slurm::SlurmProvider::new(
                data_dir,
                sl.clone(),
                prompt.clone(),
            )),
        );
    }
    if let Some(aws) = &cfg.providers.aws {
        out.insert(
            "aws".into(),
            Arc::new(aws::AwsProvider::new(data_dir, aws.clone(), prompt.clone())),
        );
    }
    if let Some(l) = &cfg.providers.lambda {
        out.insert(
            "lambda".into(),
            Arc::new(lambda::LambdaProvider::new(
                data_dir,
                l.clone(),
                prompt.clone(),
            )),
        );
    }
    if let Some(c) = &cfg.providers.canopywave {
        out.insert(
            "canopywave".into(),
            Arc::new(canopywave::CanopyWaveProvider::new(
                data_dir,
                c.clone(),
                prompt.clone(),
            )),
        );
    }
    if let Some(r) = &cfg.providers.runpod {
        out.insert(
            "runpod".into(),
            Arc::new(runpod::RunPodProvider::new(data_dir, r.clone(), prompt)),
        );
    }
    out
}
