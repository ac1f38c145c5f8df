//! User config (confy's place, `--config` / `TRAINCTL_CONFIG` override) and the per-project
//! `trainctl.toml`. Both refuse unknown keys and type errors with `file:line:col: message`.

use crate::model::Money;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub const APP: &str = "trainctl";
pub const PROJECT_FILE: &str = "trainctl.toml";

/// A config error a user can act on: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; 0 when the error is about the whole file (unreadable, missing).
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.col,
                self.message
            )
        } else {
            write!(f, "{}: {}", self.path.display(), self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error at the first `key` in `text` (after the `[section]` header when given; the
    /// file's start when neither is found).
    pub fn at(
        path: &Path,
        text: &str,
        section: Option<&str>,
        key: &str,
        message: String,
    ) -> ConfigError {
        let from = section
            .and_then(|s| text.find(&format!("[{s}]")))
            .unwrap_or(0);
        let (line, col) = text[from..]
            .find(key)
            .map_or((1, 1), |off| line_col(text, from + off));
        ConfigError {
            path: path.to_path_buf(),
            line,
            col,
            message,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parse TOML text into `T`, mapping any error to a precise location in `path`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str::<T>(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        ConfigError {
            path: path.to_path_buf(),
            line,
            col,
            message: e.message().trim().to_string(),
        }
    })
}

pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        col: 0,
        message: format!("cannot read: {e}"),
    })
}

// ---------------------------------------------------------------- user config

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    /// Provider used when a command does not name one.
    pub default_provider: String,
    /// Where the store, logs and sandboxes live. Default: `$XDG_DATA_HOME/trainctl`.
    pub data_dir: Option<PathBuf>,
    pub budget: BudgetConfig,
    pub providers: ProvidersConfig,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace_seconds: u64,
    /// How often a followed job's log and status are polled, in milliseconds.
    pub poll_interval_ms: u64,
    /// How often a job's machine samples its GPUs (utilisation, memory) while the job
    /// runs, in seconds; 0: never. Machines without `nvidia-smi` never do.
    pub gpu_sample_seconds: u64,
    /// A running job whose GPUs all sat idle (under 5 %) this long is flagged (`jobs`,
    /// the cockpit), in minutes.
    pub gpu_idle_minutes: f64,
    /// Run on this side when a job ends (a webhook, a desktop notification); a project's
    /// own `on_end` wins. See the project config's `on_end` for its environment.
    pub on_end: Option<String>,
    /// The cockpit.
    pub tui: TuiConfig,
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig {
            default_provider: "local".into(),
            data_dir: None,
            budget: BudgetConfig::default(),
            providers: ProvidersConfig::default(),
            stop_grace_seconds: 10,
            poll_interval_ms: 250,
            gpu_sample_seconds: 10,
            gpu_idle_minutes: 5.0,
            on_end: None,
            tui: TuiConfig::default(),
        }
    }
}

/// `[tui]`: the cockpit's frame cap, key bindings and colours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TuiConfig {
    /// Most frames per second (frames are drawn only when something changed).
    pub fps: u32,
    /// Lines of log kept in memory per job view (older lines are read back from disk).
    pub log_scrollback: usize,
    /// Mouse capture (off: the terminal keeps its own selection and copy).
    pub mouse: bool,
    /// Ring the terminal's bell when a job ends.
    pub bell: bool,
    /// Key overrides: action name to keys, e.g. `terminate = "ctrl-d"`, `quit = ["ctrl-c", "ctrl-q"]`.
    pub keys: BTreeMap<String, KeyList>,
    /// Colour overrides as `#rrggbb`: accent, ok, warn, error, dim, selection.
    pub theme: BTreeMap<String, String>,
}

impl Default for TuiConfig {
    fn default() -> Self {
        TuiConfig {
            fps: 20,
            log_scrollback: 100_000,
            mouse: false,
            bell: true,
            keys: BTreeMap::new(),
            theme: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum KeyList {
    One(String),
    Many(Vec<String>),
}

impl KeyList {
    pub fn keys(&self) -> Vec<&str> {
        match self {
            KeyList::One(k) => vec![k.as_str()],
            KeyList::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Stop a job whose cost (all attempts) passes this many dollars.
    pub per_job_usd: Option<f64>,
    /// Stop jobs when today's (UTC) spend across all instances passes this many dollars.
    pub per_day_usd: Option<f64>,
}

impl BudgetConfig {
    pub fn per_job(&self) -> Option<Money> {
        self.per_job_usd.map(Money::from_dollars_f64)
    }
    pub fn per_day(&self) -> Option<Money> {
        self.per_day_usd.map(Money::from_dollars_f64)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub local: LocalProviderConfig,
    pub ssh: SshProviderConfig,
    /// Present (even empty: `[providers.aws]`) turns the `aws` provider on.
    pub aws: Option<AwsProviderConfig>,
    /// Present turns the `lambda` provider on (Lambda Cloud, v1 REST API).
    pub lambda: Option<LambdaProviderConfig>,
    /// Present turns the `canopywave` provider on.
    pub canopywave: Option<CanopyWaveProviderConfig>,
    /// Present turns the `runpod` provider on (RunPod's GraphQL API).
    pub runpod: Option<RunPodProviderConfig>,
    /// Present turns the `slurm` provider on (clusters reached through a login node).
    pub slurm: Option<SlurmProviderConfig>,
}

/// `[providers.slurm]`: Slurm clusters, each reached through its login node over SSH (the
/// same ssh_config, keys and host-key rules as `[providers.ssh]`). A cluster is not
/// rented: `launch --provider slurm --type NAME` takes it like an instance (nothing
/// bills), and each job attempt runs as one batch job on it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmProviderConfig {
    pub accept_new_host_keys: bool,
    pub known_hosts: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
    pub clusters: Vec<SlurmClusterConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmClusterConfig {
    /// The name trainctl shows and `--type` picks.
    pub name: String,
    /// The login node: an address or ssh_config alias.
    pub login: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// trainctl's directory on the cluster's shared filesystem (default `$HOME/.trainctl`).
    #[serde(default)]
    pub remote_dir: Option<String>,
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub qos: Option<String>,
    /// `--constraint` for every job (node features).
    #[serde(default)]
    pub constraint: Option<String>,
    /// GPUs a job asks for per node (`--gres=gpu:N`), unless its `[resources] gpus` says.
    #[serde(default)]
    pub gpus: u32,
    /// `--time` for every job (`04:00:00`).
    #[serde(default)]
    pub time_limit: Option<String>,
    /// Environment of the Slurm commands on the login node (`SLURM_CONF`, `PATH`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Dollars per GPU-hour, when the cluster's time has a price (default 0).
    #[serde(default)]
    pub hourly_usd_per_gpu: f64,
}

/// `[providers.runpod]`: RunPod pods, on demand or interruptible (spot, a bid per GPU),
/// reached over SSH at the pod's public port for 22 (the image must run sshd, as
/// RunPod's own images do; trainctl's key goes in as `PUBLIC_KEY`). The API key comes from
/// `RUNPOD_API_KEY` or the credentials file (`[runpod] api_key`, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunPodProviderConfig {
    pub api_url: String,
    /// The pod's container image.
    pub image: String,
    /// `SECURE`, `COMMUNITY` or `ALL`.
    pub cloud_type: String,
    pub container_disk_gb: u32,
    /// The pod's volume (kept while a pod is stopped, billed then too), at /workspace.
    pub volume_gb: u32,
    /// Spot bid per GPU in dollars per hour (default: RunPod's current spot price).
    pub bid_usd: Option<f64>,
    pub ssh_user: String,
    pub proxy_command: Option<String>,
    pub reach_timeout_seconds: u64,
    pub request_interval_ms: u64,
    pub api_max_attempts: u32,
    pub credentials_file: Option<PathBuf>,
    pub terminate_timeout_seconds: u64,
}

impl Default for RunPodProviderConfig {
    fn default() -> Self {
        RunPodProviderConfig {
            api_url: "https://api.runpod.io/graphql".into(),
            image: "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04".into(),
            cloud_type: "SECURE".into(),
            container_disk_gb: 50,
            volume_gb: 0,
            bid_usd: None,
            ssh_user: "root".into(),
            proxy_command: None,
            reach_timeout_seconds: 900,
            request_interval_ms: 100,
            api_max_attempts: 5,
            credentials_file: None,
            terminate_timeout_seconds: 300,
        }
    }
}

/// `[providers.lambda]`: Lambda Cloud machines. The API key comes from `LAMBDA_API_KEY` or
/// the credentials file (`[lambda] api_key`, mode 0600), never from this file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LambdaProviderConfig {
    pub api_url: String,
    /// Regions to launch in, in order of preference (empty: any with capacity).
    pub regions: Vec<String>,
    pub ssh_user: String,
    /// The machines' SSH port (22; another only for tests or port-forwarding setups).
    pub ssh_port: u16,
    pub proxy_command: Option<String>,
    /// Seconds to wait for a machine to boot and answer SSH.
    pub reach_timeout_seconds: u64,
    /// Least milliseconds between two API requests (Lambda asks for one per second).
    pub request_interval_ms: u64,
    /// Least seconds between two launches (Lambda allows about one per 12 s).
    pub launch_interval_seconds: u64,
    /// Tries per API request (429 and 5xx are retried with backoff, `Retry-After` honoured).
    pub api_max_attempts: u32,
    /// The credentials file (default `~/.config/trainctl/credentials.toml`).
    pub credentials_file: Option<PathBuf>,
    /// Seconds to wait for Lambda to confirm a machine terminated.
    pub terminate_timeout_seconds: u64,
}

impl Default for LambdaProviderConfig {
    fn default() -> Self {
        LambdaProviderConfig {
            api_url: "https://cloud.lambda.ai/api/v1".into(),
            regions: Vec::new(),
            ssh_user: "ubuntu".into(),
            ssh_port: 22,
            proxy_command: None,
            reach_timeout_seconds: 900,
            request_interval_ms: 1000,
            launch_interval_seconds: 12,
            api_max_attempts: 5,
            credentials_file: None,
            terminate_timeout_seconds: 600,
        }
    }
}

/// `[providers.canopywave]`: CanopyWave machines, logged into with a password trainctl
/// makes for each machine (then with trainctl's key). The API key comes from
/// `CANOPYWAVE_API_KEY` or the credentials file (`[canopywave] api_key`, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CanopyWaveProviderConfig {
    pub api_url: String,
    /// The project machines are launched in (default: the first the key may use).
    pub project: Option<String>,
    /// Regions in order of preference; the first is the default.
    pub regions: Vec<String>,
    /// The machine image (an image name the region offers).
    pub image: String,
    /// Flavors trainctl may launch, with their price in dollars per hour (CanopyWave's
    /// API does not say prices): `flavors = { "H100-1" = 2.25 }`.
    pub flavors: BTreeMap<String, f64>,
    pub ssh_user: String,
    pub ssh_port: u16,
    pub proxy_command: Option<String>,
    pub reach_timeout_seconds: u64,
    pub request_interval_ms: u64,
    pub api_max_attempts: u32,
    pub credentials_file: Option<PathBuf>,
    pub terminate_timeout_seconds: u64,
}

impl Default for CanopyWaveProviderConfig {
    fn default() -> Self {
        CanopyWaveProviderConfig {
            api_url: "https://cloud-api.canopywave.io/api/v1".into(),
            project: None,
            regions: Vec::new(),
            image: "GPU-Ubuntu.22.04".into(),
            flavors: BTreeMap::new(),
            ssh_user: "ubuntu".into(),
            ssh_port: 22,
            proxy_command: None,
            reach_timeout_seconds: 900,
            request_interval_ms: 200,
            api_max_attempts: 5,
            credentials_file: None,
            terminate_timeout_seconds: 600,
        }
    }
}

/// `[providers.aws]`: EC2 machines (on-demand or spot), S3 checkpoints. Credentials and
/// region come from the standard AWS chain (env, `~/.aws` profile, SSO, instance role);
/// nothing secret is ever read from or written to this file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AwsProviderConfig {
    /// Regions trainctl launches in and watches for orphans; the first is the default.
    /// Empty: the region of the AWS chain (`AWS_REGION`, the profile's `region`).
    pub regions: Vec<String>,
    /// The AWS profile (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// One endpoint for every service (an emulator, a private endpoint).
    pub endpoint_url: Option<String>,
    /// Per-service endpoints (`ec2`, `s3`, `ssm`, `pricing`, `ecr`), over `endpoint_url`.
    pub endpoints: BTreeMap<String, String>,
    /// The registry host built images are pushed to and pulled from (`host[:port]`), when
    /// not ECR's own (`<account>.dkr.ecr.<region>.amazonaws.com`, from its token): a
    /// pull-through proxy, a private endpoint.
    pub ecr_registry: Option<String>,
    /// S3 path-style addressing (emulators, some private endpoints).
    pub s3_force_path_style: bool,
    /// The `trainctl:owner` tag of this store's machines (default: made once per data
    /// directory, `<user>@<host>-<random>`, kept in `<data>/aws/owner`).
    pub owner: Option<String>,
    /// The machine image; else resolved from `ami_parameter` (an SSM public parameter).
    pub ami: Option<String>,
    pub ami_parameter: String,
    /// The login user of the image.
    pub ssh_user: String,
    /// An existing EC2 key pair whose private key is `identity_file`. Default: a key made
    /// on this machine once (`<data>/aws/id_ed25519`, 0600) and imported as `trainctl-<owner>`.
    pub key_name: Option<String>,
    pub identity_file: Option<PathBuf>,
    /// Who may reach port 22 (CIDR). Default: this machine's public address, as
    /// `checkip.amazonaws.com` sees it, `/32`.
    pub ssh_cidr: Option<String>,
    /// Security groups to use instead of the one trainctl makes (`trainctl-ssh`).
    pub security_group_ids: Vec<String>,
    pub subnet_id: Option<String>,
    pub root_volume_gb: u32,
    /// An IAM instance profile for the machines (S3 rights for checkpoints).
    pub instance_profile: Option<String>,
    /// Spot capacity gone in every zone and type: launch on demand instead.
    pub spot_fallback: bool,
    /// Spot bid in dollars per hour (default: the on-demand price).
    pub spot_max_usd: Option<f64>,
    /// Reach machines through a bastion, as in ssh_config.
    pub proxy_jump: Option<String>,
    pub proxy_command: Option<String>,
    /// Connect to the private address (a VPN, a bastion) instead of the public one.
    pub use_private_ip: bool,
    /// End a machine that ran no job for this many minutes (0: never); a warning event
    /// (and the cockpit's countdown) comes 5 minutes before.
    pub idle_minutes: f64,
    /// How an idle machine ends: `terminate`, or `stop` (on-demand machines keep their
    /// disk and stop billing compute; spot machines are terminated).
    pub idle_action: IdleAction,
    /// Seconds to wait for a machine to run and answer SSH.
    pub reach_timeout_seconds: u64,
    /// Tries per AWS API call (throttling and 5xx are retried with jittered backoff).
    pub api_max_attempts: u32,
    /// The instance metadata service the machines ask for spot notices (EC2's own by
    /// default; another address only for tests or unusual networks).
    pub imds_endpoint: String,
    /// Where checkpoints of jobs on AWS machines are kept: `s3://BUCKET/PREFIX` (else the
    /// local data directory, like every other provider).
    pub checkpoints_s3: Option<String>,
    /// When SSH cannot reach a running machine, read its job's status and stop it through
    /// SSM Run Command (the machine must be a managed instance: SSM agent and an instance
    /// profile with AmazonSSMManagedInstanceCore).
    pub ssm_fallback: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdleAction {
    Terminate,
    Stop,
}

impl Default for AwsProviderConfig {
    fn default() -> Self {
        AwsProviderConfig {
            regions: Vec::new(),
            profile: None,
            endpoint_url: None,
            endpoints: BTreeMap::new(),
            s3_force_path_style: false,
            ecr_registry: None,
            owner: None,
            ami: None,
            ami_parameter:
                "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
                    .into(),
            ssh_user: "ubuntu".into(),
            key_name: None,
            identity_file: None,
            ssh_cidr: None,
            security_group_ids: Vec::new(),
            subnet_id: None,
            root_volume_gb: 100,
            instance_profile: None,
            spot_fallback: false,
            spot_max_usd: None,
            proxy_jump: None,
            proxy_command: None,
            use_private_ip: false,
            idle_minutes: 30.0,
            idle_action: IdleAction::Terminate,
            reach_timeout_seconds: 600,
            api_max_attempts: 5,
            imds_endpoint: "http://169.254.169.254".into(),
            checkpoints_s3: None,
            ssm_fallback: true,
        }
    }
}

/// `[providers.ssh]`: machines you already have, reached over SSH.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SshProviderConfig {
    /// Trust and record host keys never seen before (for freshly built machines).
    pub accept_new_host_keys: bool,
    /// trainctl's own known_hosts (default `<data dir>/known_hosts`); `~/.ssh/known_hosts`
    /// is always read too.
    pub known_hosts: Option<PathBuf>,
    /// The ssh_config to honour (default `~/.ssh/config`).
    pub ssh_config: Option<PathBuf>,
    pub hosts: Vec<SshHostConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SshHostConfig {
    /// The name trainctl shows and `--type` picks.
    pub name: String,
    /// Address or ssh_config alias.
    pub address: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub hourly_usd: f64,
    /// Jobs (instances) it takes at once.
    #[serde(default = "one")]
    pub max_jobs: u32,
    /// trainctl's directory there (default `$HOME/.trainctl`).
    #[serde(default)]
    pub remote_dir: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LocalProviderConfig {
    /// Price the local sandbox pretends to cost, so cost accounting can be exercised.
    pub hourly_usd: f64,
    /// How many sandboxes may exist at once.
    pub max_instances: u32,
}

impl Default for LocalProviderConfig {
    fn default() -> Self {
        LocalProviderConfig {
            hourly_usd: 0.0,
            max_instances: 16,
        }
    }
}

impl UserConfig {
    /// The config file in effect: `--config`, then `TRAINCTL_CONFIG`, then confy's default place.
    pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("TRAINCTL_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        confy::get_configuration_file_path(APP, "config").map_err(|e| ConfigError {
            path: PathBuf::from("<config>"),
            line: 0,
            col: 0,
            message: format!("cannot find the user config directory: {e}"),
        })
    }

    /// Load the user config. A missing file at confy's default place is created with the
    /// defaults (confy's behaviour); a missing explicit file is an error.
    pub fn load(explicit: Option<&Path>) -> Result<(UserConfig, PathBuf), ConfigError> {
        let path = Self::resolve_path(explicit)?;
        let is_explicit = explicit.is_some() || std::env::var_os("TRAINCTL_CONFIG").is_some();
        if !path.exists() {
            if is_explicit {
                return Err(ConfigError {
                    path,
                    line: 0,
                    col: 0,
                    message: "no such config file".into(),
                });
            }
            let cfg = UserConfig::default();
            // Creating the default file is a convenience; a read-only home is not an error.
            let _ = confy::store_path(&path, &cfg);
            return Ok((cfg, path));
        }
        let text = read_file(&path)?;
        let cfg: UserConfig = parse_toml(&path, &text)?;
        cfg.validate(&path, &text)?;
        Ok((cfg, path))
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |key: &str, message: String| ConfigError::at(path, text, None, key, message);
        let ssh_on = !self.providers.ssh.hosts.is_empty();
        let aws_on = self.providers.aws.is_some();
        let slurm_on = self.providers.slurm.is_some();
        if !(self.default_provider == "local"
            || (self.default_provider == "ssh" && ssh_on)
            || (self.default_provider == "aws" && aws_on)
            || (self.default_provider == "slurm" && slurm_on))
        {
            return Err(at(
                "default_provider",
                format!(
                    "unknown provider `{}` (known: local{}{}{})",
                    self.default_provider,
                    if ssh_on { ", ssh" } else { "" },
                    if aws_on { ", aws" } else { "" },
                    if slurm_on { ", slurm" } else { "" }
                ),
            ));
        }
        if let Some(aws) = &self.providers.aws {
            for r in &aws.regions {
                let ok = r.split('-').count() >= 3
                    && r.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    return Err(at(
                        r,
                        format!("`{r}` is not an AWS region name (like us-east-1)"),
                    ));
                }
            }
            if let Some(c) = &aws.ssh_cidr
                && !crate::provider::aws::valid_cidr(c)
            {
                return Err(at(
                    c,
                    format!("ssh_cidr `{c}` is not an IPv4 CIDR like 203.0.113.7/32"),
                ));
            }
            if !aws.idle_minutes.is_finite() || aws.idle_minutes < 0.0 {
                return Err(at(
                    "idle_minutes",
                    "`idle_minutes` must be >= 0 (0: never)".into(),
                ));
            }
            if aws.spot_max_usd.is_some_and(|v| !v.is_finite() || v <= 0.0) {
                return Err(at(
                    "spot_max_usd",
                    "`spot_max_usd` must be a positive number of dollars".into(),
                ));
            }
            if let Some(u) = &aws.checkpoints_s3
                && let Err(e) = crate::provider::aws::s3::parse_url(u)
            {
                return Err(at(u, format!("checkpoints_s3: {e}")));
            }
            for k in aws.endpoints.keys() {
                if !["ec2", "s3", "ssm", "pricing", "ecr"].contains(&k.as_str()) {
                    return Err(at(
                        k,
                        format!(
                            "no AWS service `{k}` here (endpoints for: ec2, s3, ssm, pricing, ecr)"
                        ),
                    ));
                }
            }
        }
        if let Some(slurm) = &self.providers.slurm {
            for c in &slurm.clusters {
                let job = SlurmJobConfig {
                    partition: c.partition.clone(),
                    account: c.account.clone(),
                    qos: c.qos.clone(),
                    constraint: c.constraint.clone(),
                    time_limit: c.time_limit.clone(),
                    ..SlurmJobConfig::default()
                };
                if let Err((v, why)) = job.check() {
                    return Err(at(&v, format!("cluster `{}`: {why}", c.name)));
                }
                if !c.hourly_usd_per_gpu.is_finite() || c.hourly_usd_per_gpu < 0.0 {
                    return Err(at(
                        "hourly_usd_per_gpu",
                        format!("cluster `{}`: hourly_usd_per_gpu must be >= 0", c.name),
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for h in &self.providers.ssh.hosts {
            let ok = !h.name.is_empty()
                && h.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok || !names.insert(h.name.clone()) {
                return Err(at(
                    &h.name,
                    format!(
                        "ssh host name `{}` must be unique and use letters, digits, - _ .",
                        h.name
                    ),
                ));
            }
            if !h.hourly_usd.is_finite() || h.hourly_usd < 0.0 || h.max_jobs == 0 {
                return Err(at(
                    &h.name,
                    format!("ssh host `{}`: hourly_usd >= 0 and max_jobs >= 1", h.name),
                ));
            }
        }
        for (key, v) in [
            ("per_job_usd", self.budget.per_job_usd),
            ("per_day_usd", self.budget.per_day_usd),
            ("hourly_usd", Some(self.providers.local.hourly_usd)),
        ] {
            if let Some(v) = v
                && (!v.is_finite() || v < 0.0)
            {
                return Err(at(
                    key,
                    format!("`{key}` must be a non-negative number of dollars"),
                ));
            }
        }
        // Key bindings and colours are the cockpit's to check (`tui::settings::check`).
        if !self.gpu_idle_minutes.is_finite() || self.gpu_idle_minutes < 0.0 {
            return Err(at(
                "gpu_idle_minutes",
                "`gpu_idle_minutes` must be >= 0 (0: never flag)".into(),
            ));
        }
        if self.tui.fps == 0 || self.tui.fps > 120 {
            return Err(at("fps", "`fps` must be between 1 and 120".into()));
        }
        Ok(())
    }

    /// The data directory: config, then `$XDG_DATA_HOME/trainctl`, then `~/.local/share/trainctl`.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join(APP);
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/share").join(APP)
    }
}

// ------------------------------------------------------------- project config

/// `trainctl.toml`: what to run and what to move.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Project name; defaults to the directory holding `trainctl.toml`.
    pub name: Option<String>,
    /// The training command, run by `sh -c` in `workdir`.
    pub command: String,
    /// Where the command runs, relative to the project root. Default `.`.
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub sync: SyncConfig,
    /// Files to pull after the run. Each entry is a glob, or a list of globs tried in order
    /// (the first that matches anything wins): `[["best.pt", "last.pt"], "logs/*.csv"]`.
    #[serde(default)]
    pub artifacts: Vec<ArtifactRule>,
    /// Checkpoint directory relative to the workdir; exported as `TRAINCTL_CHECKPOINT_DIR`.
    #[serde(default)]
    pub checkpoints: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// What happens when the job's machine is interrupted or lost.
    #[serde(default)]
    pub recovery: RecoveryConfig,
    /// Run before the job, once per machine for a given hash of this text, the workdir
    /// and the files `setup_inputs` names (`pip install -r requirements.txt`, or a list
    /// run in order). Runs in the workdir with the job's environment, under `set -e`.
    #[serde(default)]
    pub setup: Option<SetupCommands>,
    /// Files (or folders) of the project whose content makes a setup differ: a changed
    /// `requirements.txt` runs the setup again.
    #[serde(default)]
    pub setup_inputs: Vec<String>,
    /// Run on trainctl's side when a job ends (`sh -c`, in the project's root), with
    /// `TRAINCTL_JOB_ID`, `_JOB_NAME`, `_JOB_STATE`, `_EXIT_CODE`, `_REASON`, `_COST_USD`
    /// and `TRAINCTL_SUMMARY` (JSON) set; overrides the user config's `on_end`.
    #[serde(default)]
    pub on_end: Option<String>,
    /// Datasets placed on the machine apart from the code, once per machine and content
    /// (`[[data]] src = "data/coco" dst = "coco"`): under `TRAINCTL_DATA_DIR`.
    #[serde(default)]
    pub data: Vec<DataConfig>,
    /// What each job asks a Slurm cluster for, over the cluster's own defaults (ignored
    /// on machines of other providers).
    #[serde(default)]
    pub slurm: SlurmJobConfig,
    /// Run the command inside this container image (pulled on the machine when missing):
    /// `nvcr.io/nvidia/pytorch:24.10-py3`. See `[docker]`.
    #[serde(default)]
    pub image: Option<String>,
    /// How the job's container runs (with `image`).
    #[serde(default)]
    pub docker: DockerConfig,
}

/// `[docker]`: the job's container. The code, the job's data and checkpoints are mounted
/// at the same paths as on the machine (so every `TRAINCTL_*` path holds inside), the
/// job's environment is passed, the command runs as the machine user in the workdir with
/// the host's network and IPC (PyTorch's data loaders); `--gpus N` when the job asks for
/// GPUs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `DOCKER_HOST` on the machine (default: Docker's own, `/var/run/docker.sock`).
    pub host: Option<String>,
    /// `--shm-size` (`16g`), when not sharing the host's IPC is wanted: then IPC is
    /// private with this much shared memory.
    pub shm_size: Option<String>,
    /// More of the machine in the container: `"/mnt/datasets:/data:ro"` (absolute paths;
    /// `:ro` for read-only).
    pub volumes: Vec<String>,
    /// Build the job's image from this Dockerfile (relative to the project root) instead
    /// of `image`: on the machine, once per content (`trainctl/<project>:<hash>` of the
    /// Dockerfile, the build arguments and the files its COPY/ADD use).
    pub dockerfile: Option<String>,
    /// The build's context, relative to the project root (default: the project root, as
    /// synced to the machine).
    pub context: Option<String>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// Where built images are pushed and pulled from (`registry.example.com:5000/team`):
    /// a machine that lacks the image pulls it from there instead of building (a
    /// replacement after an interruption), and one that builds it pushes it. The machine's
    /// Docker must be logged in to it.
    pub registry: Option<String>,
    /// Where the image is built: `machine` (default: no registry needed, the machine's
    /// bandwidth) or `local` (trainctl's own Docker builds and pushes it to `registry`;
    /// the machine pulls it).
    pub build: Option<String>,
}

impl ProjectConfig {
    /// Whether the job runs in a container (`image`, or a Dockerfile to build one).
    pub fn in_container(&self) -> bool {
        self.image.is_some() || self.docker.dockerfile.is_some()
    }
}

/// `[slurm]` in `trainctl.toml`: one job's partition, account, QoS, constraint, time
/// limit, CPUs per task and memory on a Slurm cluster. Each is passed to `sbatch` as is,
/// so each is checked here (no quotes, `$`, backslashes or newlines; a time limit Slurm
/// reads).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmJobConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// `--constraint` (node features: `a100&ib`).
    pub constraint: Option<String>,
    /// `--time` as Slurm reads it: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
    /// `D-HH:MM:SS`. With `[recovery]` on, the job saves before it and continues in a new
    /// batch job.
    pub time_limit: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// `--mem` per node as Slurm reads it (`64G`).
    pub mem: Option<String>,
}

impl SlurmJobConfig {
    /// The settings as `(key, value)`, those set only.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("partition", self.partition.clone()),
            ("account", self.account.clone()),
            ("qos", self.qos.clone()),
            ("constraint", self.constraint.clone()),
            ("time_limit", self.time_limit.clone()),
            ("cpus_per_task", self.cpus_per_task.map(|c| c.to_string())),
            ("mem", self.mem.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    /// Each value as sbatch must get it (no quotes, `$`, backslashes or newlines) and a
    /// time limit Slurm reads; else the value at fault (to point at) and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (key, v) in self.pairs() {
            if let Err(e) = crate::job::slurm::directive_value(&v) {
                return Err((v, format!("{key}: {e:#}")));
            }
        }
        if let Some(t) = &self.time_limit
            && slurm_time_seconds(t).is_none_or(|s| s == 0)
        {
            return Err((
                t.clone(),
                format!(
                    "time_limit `{t}` is not a time Slurm reads (minutes, MM:SS, HH:MM:SS, \
                     D-HH, D-HH:MM or D-HH:MM:SS)"
                ),
            ));
        }
        Ok(())
    }
}

/// Seconds of a Slurm time limit (`--time`): `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`,
/// `D-H:M:S`; `None` when Slurm would not read it (or it is `UNLIMITED`/`INFINITE`).
pub fn slurm_time_seconds(t: &str) -> Option<u64> {
    let num = |x: &str| -> Option<u64> {
        (!x.is_empty() && x.chars().all(|c| c.is_ascii_digit())).then(|| x.parse().ok())?
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Option<_>>()?;
    let s = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86_400 + h * 3600,
        (Some(d), [h, m]) => d * 86_400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86_400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(s)
}

/// `[[data]]`: a local folder or file, placed at `dst` under `TRAINCTL_DATA_DIR`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A folder or file, relative to the project root or absolute.
    pub src: String,
    /// Where the job finds it, relative to `TRAINCTL_DATA_DIR`.
    pub dst: String,
}

/// `setup`: one shell text, or a list of commands run in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SetupCommands {
    One(String),
    Many(Vec<String>),
}

impl SetupCommands {
    /// The setup as one script body (a list: one command per line).
    pub fn script(&self) -> String {
        match self {
            SetupCommands::One(s) => s.trim().to_string(),
            SetupCommands::Many(v) => v
                .iter()
                .map(|c| c.trim())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// `[recovery]`: a job that outlives its machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Attempts in all, the first included; reached -> the job fails, machines released.
    pub max_attempts: u32,
    /// Which ends are recovered: `interrupted` (a notice stopped it), `lost` (the machine
    /// vanished, died, or stayed unreachable past `lost_after_seconds`); `rebalance` also
    /// moves a job off a spot machine as soon as its provider recommends it (EC2's
    /// rebalance recommendation, ahead of any notice), from its newest checkpoint.
    pub on: Vec<RecoverOn>,
    /// Newest checkpoints kept in the checkpoint store per job.
    pub keep_checkpoints: u32,
    /// A machine unreachable this long, which its provider cannot vouch for, is lost.
    pub lost_after_seconds: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            max_attempts: 3,
            on: vec![RecoverOn::Interrupted, RecoverOn::Lost],
            keep_checkpoints: 3,
            lost_after_seconds: 120,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecoverOn {
    Interrupted,
    Lost,
    Rebalance,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Gitignore-style patterns excluded on top of `.gitignore`.
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ArtifactRule {
    One(String),
    FirstOf(Vec<String>),
}

impl ArtifactRule {
    pub fn patterns(&self) -> Vec<&str> {
        match self {
            ArtifactRule::One(p) => vec![p.as_str()],
            ArtifactRule::FirstOf(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub instance_type: Option<String>,
    pub gpus: Option<u32>,
    /// Memory each GPU the job uses must have, checked on the machine before it starts.
    pub gpu_memory_gib: Option<f64>,
    pub spot: Option<bool>,
    /// Types tried in order when `instance_type` has no capacity (aws).
    pub any_of: Vec<String>,
    /// Nodes and tasks per node of one attempt, on a scheduler that places them (Slurm:
    /// one task per rank, with torchrun's environment); elsewhere refused above 1.
    pub nodes: Option<u32>,
    pub tasks_per_node: Option<u32>,
}

/// A loaded project: its config and the root directory (the one holding `trainctl.toml`).
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub file: PathBuf,
    pub config: ProjectConfig,
}

impl Project {
    /// Walk up from `start` to the first directory holding `trainctl.toml`.
    pub fn find(start: &Path) -> Option<PathBuf> {
        let start = std::fs::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
        start
            .ancestors()
            .map(|d| d.join(PROJECT_FILE))
            .find(|f| f.is_file())
    }

    pub fn load(file: &Path) -> Result<Project, ConfigError> {
        let text = read_file(file)?;
        let config: ProjectConfig = parse_toml(file, &text)?;
        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        let root = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let p = Project { root, file, config };
        p.validate(&text)?;
        Ok(p)
    }

    /// Find and load the project for `start` (a directory or a `trainctl.toml` path).
    pub fn discover(start: &Path) -> Result<Project, ConfigError> {
        if start.is_file() {
            return Self::load(start);
        }
        match Self::find(start) {
            Some(f) => Self::load(&f),
            None => Err(ConfigError {
                path: start.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("no {PROJECT_FILE} here or in any parent directory"),
            }),
        }
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let err_at = |needle: &str, message: String| {
            let (line, col) = text.find(needle).map_or((1, 1), |o| line_col(text, o));
            ConfigError {
                path: self.file.clone(),
                line,
                col,
                message,
            }
        };
        if self.config.command.trim().is_empty() {
            return Err(err_at("command", "`command` must not be empty".into()));
        }
        if let Some(img) = &self.config.image
            && !crate::job::container::valid_image(img)
        {
            return Err(err_at(
                img,
                format!("`{img}` is not an image reference (registry/name:tag or @sha256:…)"),
            ));
        }
        for (key, v) in [
            ("host", &self.config.docker.host),
            ("shm_size", &self.config.docker.shm_size),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()))
            {
                return Err(err_at(
                    v,
                    format!("[docker] {key} `{v}`: no spaces or control characters"),
                ));
            }
        }
        for v in &self.config.docker.volumes {
            if !crate::job::container::valid_volume(v) {
                return Err(err_at(
                    v,
                    format!(
                        "[docker] volume `{v}` is not `/machine/path:/container/path` (or `…:ro`)"
                    ),
                ));
            }
        }
        let docker = &self.config.docker;
        if self.config.image.is_some() && docker.dockerfile.is_some() {
            return Err(err_at(
                "dockerfile",
                "`image` or `[docker] dockerfile`, not both (a Dockerfile names its own image)"
                    .into(),
            ));
        }
        if !self.config.in_container() && *docker != DockerConfig::default() {
            return Err(err_at(
                "[docker]",
                "[docker] says how the job's container runs, but there is no `image` or `dockerfile`"
                    .into(),
            ));
        }
        for (key, rel) in [
            ("dockerfile", docker.dockerfile.as_deref()),
            ("context", docker.context.as_deref()),
        ] {
            if let Some(rel) = rel
                && !is_safe_relative(rel)
            {
                return Err(err_at(
                    rel,
                    format!(
                        "[docker] {key} must be a relative path inside the project, not `{rel}`"
                    ),
                ));
            }
        }
        if let Some(f) = &docker.dockerfile
            && !self.root.join(f).is_file()
        {
            return Err(err_at(
                f,
                format!(
                    "[docker] dockerfile `{f}` is not a file in {}",
                    self.root.display()
                ),
            ));
        }
        if let Some(r) = &docker.registry
            && (!crate::job::container::valid_image(r) || r.contains('@') || r.ends_with('/'))
        {
            return Err(err_at(
                r,
                format!("[docker] registry `{r}` is not `host[:port][/namespace]`"),
            ));
        }
        match docker.build.as_deref() {
            None | Some("machine") => {}
            Some("local") if docker.registry.is_some() => {}
            Some("local") => {
                return Err(err_at(
                    "build",
                    "[docker] build = \"local\" pushes the image for the machine to pull: it takes a `registry`".into(),
                ));
            }
            Some(other) => {
                return Err(err_at(
                    other,
                    format!("[docker] build is `machine` or `local`, not `{other}`"),
                ));
            }
        }
        if docker.registry.is_some() && docker.dockerfile.is_none() {
            return Err(err_at(
                "registry",
                "[docker] registry is where built images go: it takes a `dockerfile`".into(),
            ));
        }
        for (k, v) in &docker.build_args {
            let key_ok = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !key_ok || v.contains('\n') {
                return Err(err_at(
                    k,
                    format!("[docker] build_args: `{k}` must be a name and its value one line"),
                ));
            }
        }
        if let Err((v, why)) = self.config.slurm.check() {
            return Err(err_at(&v, format!("[slurm] {why}")));
        }
        if self.config.recovery.max_attempts == 0 {
            return Err(err_at(
                "max_attempts",
                "`recovery.max_attempts` counts the first attempt too: it must be at least 1"
                    .into(),
            ));
        }
        for (key, rel) in [
            ("workdir", self.config.workdir.as_deref()),
            ("checkpoints", self.config.checkpoints.as_deref()),
        ] {
            if let Some(rel) = rel
                && !is_safe_relative(rel)
            {
                return Err(err_at(
                    key,
                    format!("`{key}` must be a relative path inside the project, not `{rel}`"),
                ));
            }
        }
        for rule in &self.config.artifacts {
            for pat in rule.patterns() {
                if let Err(e) = globset::Glob::new(pat) {
                    return Err(err_at(pat, format!("bad artifact pattern `{pat}`: {e}")));
                }
                if !is_safe_relative(pat.trim_start_matches("**/")) {
                    return Err(err_at(
                        pat,
                        format!("artifact pattern `{pat}` leaves the workdir"),
                    ));
                }
            }
        }
        if let Some(setup) = &self.config.setup
            && setup.script().is_empty()
        {
            return Err(err_at(
                "setup",
                "`setup` is empty: give a command, or leave it out".into(),
            ));
        }
        if !self.config.setup_inputs.is_empty() && self.config.setup.is_none() {
            return Err(err_at(
                "setup_inputs",
                "`setup_inputs` names what a `setup` depends on, but there is no `setup`".into(),
            ));
        }
        for rel in &self.config.setup_inputs {
            if !is_safe_relative(rel) {
                return Err(err_at(
                    rel,
                    format!("setup input `{rel}` must be a relative path inside the project"),
                ));
            }
            if !self.root.join(rel).exists() {
                return Err(err_at(
                    rel,
                    format!(
                        "setup input `{rel}` does not exist in {}",
                        self.root.display()
                    ),
                ));
            }
        }
        let mut dsts = std::collections::BTreeSet::new();
        for d in &self.config.data {
            if d.src.starts_with("s3://") {
                if let Err(e) = crate::provider::aws::s3::parse_url(&d.src) {
                    return Err(err_at(&d.src, format!("data source: {e}")));
                }
            } else if !self.root.join(&d.src).exists() {
                return Err(err_at(
                    &d.src,
                    format!(
                        "data source `{}` does not exist (relative to {})",
                        d.src,
                        self.root.display()
                    ),
                ));
            }
            if !is_safe_relative(&d.dst) || !dsts.insert(d.dst.trim_end_matches('/')) {
                return Err(err_at(
                    &d.dst,
                    format!(
                        "data `dst = \"{}\"` must be a relative path under TRAINCTL_DATA_DIR, named once",
                        d.dst
                    ),
                ));
            }
        }
        // One dataset inside another's place would write into the machine's shared copy.
        let dsts: Vec<&str> = dsts.into_iter().collect();
        for outer in &dsts {
            if let Some(inner) = dsts.iter().find(|d| d.starts_with(&format!("{outer}/"))) {
                return Err(err_at(
                    inner,
                    format!("data `dst = \"{inner}\"` is inside `{outer}`"),
                ));
            }
        }
        if let Some(g) = self.config.resources.gpu_memory_gib
            && (!g.is_finite() || g <= 0.0)
        {
            return Err(err_at(
                "gpu_memory_gib",
                "`resources.gpu_memory_gib` must be a positive number of GiB".into(),
            ));
        }
        for key in self.config.env.keys() {
            let ok = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(err_at(
                    key,
                    format!("`{key}` is not a valid environment variable name"),
                ));
            }
        }
        Ok(())
    }

    pub fn name(&self) -> String {
        let raw = self.config.name.clone().unwrap_or_else(|| {
            self.root
                .file_name()
                .map_or_else(|| "project".into(), |n| n.to_string_lossy().into_owned())
        });
        // The name becomes a remote directory: keep it to a safe alphabet.
        let clean: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() || clean.starts_with('.') {
            format!("p{clean}")
        } else {
            clean
        }
    }

    pub fn workdir(&self) -> &str {
        self.config.workdir.as_deref().unwrap_or(".")
    }
}

/// A relative path that cannot climb out of its base: no root, no `..`.
pub fn is_safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn slurm_time_limits_read_as_slurm_reads_them() {
        assert_eq!(slurm_time_seconds("30"), Some(1800));
        assert_eq!(slurm_time_seconds("30:15"), Some(1815));
        assert_eq!(slurm_time_seconds("04:00:00"), Some(14_400));
        assert_eq!(slurm_time_seconds("2-12"), Some(216_000));
        assert_eq!(slurm_time_seconds("1-00:30"), Some(88_200));
        assert_eq!(slurm_time_seconds("1-00:00:01"), Some(86_401));
        for bad in ["", "4h", "1:2:3:4", "-1", "1-", "UNLIMITED", "1 hour"] {
            assert_eq!(slurm_time_seconds(bad), None, "{bad}");
        }
    }

    use super::*;

    fn parse_project(text: &str) -> Result<ProjectConfig, ConfigError> {
        parse_toml(Path::new("trainctl.toml"), text)
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse_project("command = \"x\"\nbogus = 1\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 1));
        assert!(e.message.contains("bogus"), "{e}");
        assert!(e.to_string().starts_with("trainctl.toml:2:1:"), "{e}");
    }

    #[test]
    fn type_error_is_located() {
        let e = parse_project("command = \"x\"\n[resources]\ngpus = \"many\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.col, 8, "{e}");
    }

    #[test]
    fn artifacts_accept_fallback_lists() {
        let c = parse_project(
            "command = \"x\"\nartifacts = [[\"best.pt\", \"last.pt\"], \"m.json\"]\n",
        )
        .unwrap();
        assert_eq!(c.artifacts[0].patterns(), vec!["best.pt", "last.pt"]);
        assert_eq!(c.artifacts[1].patterns(), vec!["m.json"]);
    }

    #[test]
    fn user_config_rejects_unknown_nested_key() {
        let e = parse_toml::<UserConfig>(Path::new("c.toml"), "[budget]\nper_jb_usd = 1.0\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
    }

    /// A `[slurm]` value sbatch would misread, or a time it cannot read, is refused when
    /// the project is read, at its line.
    #[test]
    fn a_projects_slurm_asks_are_checked_where_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("trainctl.toml");
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            Project::load(&f)
        };
        let ok =
            load("command = \"x\"\n[slurm]\npartition = \"gpu\"\ntime_limit = \"1-00:00:00\"\n")
                .unwrap();
        assert_eq!(ok.config.slurm.partition.as_deref(), Some("gpu"));
        let e = load("command = \"x\"\n[slurm]\naccount = \"lab$x\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("account"), "{e}");
        let e = load("command = \"x\"\n[slurm]\n\ntime_limit = \"4 hours\"\n").unwrap_err();
        assert_eq!((e.line, e.message.contains("time_limit")), (4, true), "{e}");
    }

    #[test]
    fn safe_relative() {
        assert!(is_safe_relative("a/b"));
        assert!(is_safe_relative("./a"));
        assert!(!is_safe_relative("../a"));
        assert!(!is_safe_relative("/etc"));
        assert!(!is_safe_relative("a/../../b"));
    }
}
