//! The headless front end: `trainctl <command>`. Listings take `--json`; progress bars
//! appear only on a TTY.
//!
//! Exit codes: 0 success; 1 error in trainctl itself (provider, store, IO);
//! 2 bad usage or config; 3 the job failed; 4 the job was cancelled (budget included);
//! 5 the job was lost with its machine.

use crate::config::{ConfigError, Project, UserConfig};
use crate::engine::Engine;
use crate::metrics::LogParser;
use crate::model::{JobState, Money, now_ms};
use crate::provider::LaunchRequest;
use crate::store::JobRecord;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// Every `println!` here goes through [`write_stdout`]: a reader that went away (`| head`)
/// ends the process quietly, as Unix tools do, instead of a panic.
macro_rules! println {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Write to stdout; a closed pipe ends the process with success (whatever the command
/// did is recorded before it prints), any other error is reported once.
pub fn write_stdout(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        stdout_failed(&e);
    }
}

/// A write to stdout failed: a closed pipe ends the process quietly, anything else is said.
fn stdout_failed(e: &std::io::Error) {
    quit_on_closed_pipe(e);
    eprintln!("error: writing to stdout: {e}");
}

/// A reader that went away: exit quietly.
fn quit_on_closed_pipe(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(EXIT_OK);
    }
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_JOB_FAILED: i32 = 3;
pub const EXIT_JOB_CANCELLED: i32 = 4;
pub const EXIT_JOB_LOST: i32 = 5;

#[derive(Parser, Debug)]
#[command(
    name = "trainctl",
    version,
    about = "Run ML training on rented machines, headless"
)]
pub struct Cli {
    /// User config file (default: confy's place, or $TRAINCTL_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Machine-readable output: one JSON document (listings: an array).
    #[arg(long, global = true)]
    pub json: bool,
    /// The AWS profile for this command (over `profile` in [providers.aws] and
    /// AWS_PROFILE).
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Launch an instance.
    Launch {
        #[arg(long)]
        provider: Option<String>,
        /// Instance type (the local provider has `local`).
        #[arg(long = "type")]
        instance_type: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        gpus: Option<u32>,
        #[arg(long)]
        spot: bool,
        /// Override the hourly price in dollars (local provider's pretend price); the same
        /// as `-o hourly_usd=USD`.
        #[arg(long, value_name = "USD")]
        hourly_usd: Option<String>,
        /// A provider-only option, KEY=VALUE (repeatable); the provider refuses keys it
        /// does not know.
        #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
        option: Vec<String>,
        /// Trust and record the machine's SSH host key if it was never seen before
        /// (check the fingerprint it prints). A changed key is refused regardless.
        #[arg(long)]
        accept_new_host_key: bool,
        /// Another offer to try when the first has no capacity (repeatable, in order):
        /// a type of the same provider, or `PROVIDER:TYPE` (`lambda:gpu_1x_a10`).
        #[arg(long = "any-of", value_name = "[PROVIDER:]TYPE")]
        any_of: Vec<String>,
        /// Keep the machine when the launch fails after it exists (default: terminate it,
        /// confirmed with the provider).
        #[arg(long)]
        keep_on_error: bool,
    },
    /// List instances (live ones; `--all` for every one ever).
    Ls {
        #[arg(long)]
        all: bool,
    },
    /// The container images trainctl's jobs used on a machine and the disk they take;
    /// `--prune` removes those no container uses.
    Images {
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        prune: bool,
    },
    /// List jobs.
    Jobs,
    /// Launch if needed, sync, start, follow until done, pull artifacts.
    Run {
        /// Project directory or trainctl.toml (default: walk up from the current directory).
        #[arg(long)]
        project: Option<PathBuf>,
        /// Run on this instance instead of launching one.
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        /// Submit to this Slurm cluster (`[providers.slurm]`): its instance when one is
        /// held, else taken now.
        #[arg(long, conflicts_with_all = ["instance", "provider"])]
        cluster: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Terminate the instance when the job ends (after pulling artifacts).
        #[arg(long)]
        terminate_after: bool,
        /// Start the job and return; follow later with `trainctl logs -f`.
        #[arg(long)]
        detach: bool,
        /// Do not pull artifacts at the end.
        #[arg(long)]
        no_pull: bool,
        /// Keep a machine this run launched when the launch, setup or start fails
        /// (default: terminate it, confirmed with the provider, and say what it cost).
        #[arg(long)]
        keep_on_error: bool,
    },
    /// Print a job's log (`-f` follows it until it ends).
    Logs {
        job: String,
        #[arg(short, long)]
        follow: bool,
        /// Another rank's output (a job of several ranks on a Slurm cluster; rank 0's is
        /// the job's log), read from the cluster.
        #[arg(long)]
        rank: Option<u32>,
    },
    /// Print the metric points parsed from a job's log.
    Metrics {
        job: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Cost per instance, per job, per day, total.
    Cost,
    /// Stop a job (SIGTERM, grace, SIGKILL) and wait for it to end.
    Cancel {
        job: String,
        /// Return right after recording the request.
        #[arg(long)]
        no_wait: bool,
    },
    /// Pull a job's artifacts.
    Pull {
        job: String,
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Terminate an instance (stops its jobs first) and confirm with the provider; also
    /// an orphan (a machine the provider holds for this store that the store lost).
    Terminate { instance: String },
    /// Take an orphan into the store (`trainctl ls` lists them): reached, then used and
    /// billed like an instance trainctl launched.
    Adopt { instance: String },
    /// Stop a machine, keeping its disk (aws on demand): compute stops billing, the disk
    /// does not. Refused while a job runs there.
    Stop { instance: String },
    /// Start a stopped machine again and reach it.
    Start { instance: String },
    /// Sync the project's code to an instance.
    Sync {
        #[arg(long)]
        project: Option<PathBuf>,
        #[arg(long)]
        instance: Option<String>,
        /// List what would move and what is excluded, move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Place the project's datasets (`[[data]]`) on an instance ahead of a run: sent
    /// only when the machine does not hold that content yet.
    Data {
        #[arg(long)]
        project: Option<PathBuf>,
        #[arg(long)]
        instance: Option<String>,
    },
    /// Move a running job to another machine (resumed from its newest checkpoint).
    ///
    /// The job is stopped with the grace to save, its newest checkpoint kept, and it
    /// resumes as the next attempt on a new machine like its own (or of `--type`, or on
    /// `--instance`). Waits until it runs there.
    Migrate {
        job: String,
        /// Resume on this (running) instance.
        #[arg(long, conflicts_with = "instance_type")]
        instance: Option<String>,
        /// Resume on a new machine of this type (same provider).
        #[arg(long = "type")]
        instance_type: Option<String>,
        /// Return right after the job was told to move.
        #[arg(long)]
        no_wait: bool,
    },
    /// Supervise every live job until none is left (for tmux, cron or systemd).
    ///
    /// Follows logs, ships checkpoints, recovers interrupted jobs, honours budgets and
    /// what `run` was asked to do at the end, as the cockpit and `run` do; samples spot
    /// prices and ends machines idle past their provider's limit (and waits for those).
    Watch,
    /// A job's checkpoints kept off the machine, newest first.
    Checkpoints { job: String },
    /// Print the metric points trainctl finds in a log file.
    ParseLog { file: PathBuf },
    /// The cheapest AWS GPU machines that fit, from trainctl's catalog (offline).
    ///
    /// On-demand price per region and the cheapest spot price of the region's zones at
    /// catalog time (a launch reads the live spot price of the zone it lands in).
    /// `--refresh` first reads the types, zones, spot and on-demand prices of `--region`
    /// (else the configured regions) again from AWS (EC2 and the Price List API: needs
    /// credentials allowed `ec2:Describe*` and `pricing:GetProducts`) and keeps them in the
    /// data directory, where launches and `gpus` read them from then on.
    Gpus {
        /// Read the catalog's rows for the region(s) again from AWS first.
        #[arg(long)]
        refresh: bool,
        #[arg(long)]
        region: Option<String>,
        /// Least memory per GPU, GiB.
        #[arg(long, value_name = "GIB")]
        min_gpu_mem: Option<f64>,
        /// Least GPUs per machine (0 also lists fractional GPU slices such as g6f).
        #[arg(long, default_value_t = 1)]
        gpus: u32,
        /// Rows shown (0: all).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only this provider's offers (default: every configured provider, and AWS's
        /// catalog).
        #[arg(long)]
        provider: Option<String>,
    },
    /// The event history (state changes, budget, sync...), optionally of one job.
    Events { job: Option<String> },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the user config and the project's trainctl.toml.
    Check {
        #[arg(long)]
        project: Option<PathBuf>,
    },
    /// Print the path of the user config in effect.
    Path,
}

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// Run the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {ce}");
                return EXIT_USAGE;
            }
            if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
                quit_on_closed_pipe(io);
            }
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    }
}

fn project_at(p: Option<&Path>) -> Result<Project> {
    let start = match p {
        Some(p) => p.to_path_buf(),
        None => std::env::current_dir()?,
    };
    Ok(Project::discover(&start)?)
}

fn exit_for(state: JobState) -> i32 {
    match state {
        JobState::Succeeded => EXIT_OK,
        JobState::Cancelled => EXIT_JOB_CANCELLED,
        JobState::Lost => EXIT_JOB_LOST,
        _ => EXIT_JOB_FAILED,
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Bytes for people: `512 B`, `12.3 KB`, `812.0 MB`, `2.0 GB` (decimal units).
pub fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} KB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// `1h02m`, `3m05s`, `12s`.
pub fn fmt_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A JSON number, or a string for NaN and infinities (which JSON cannot hold).
pub fn json_value(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

/// A metric point as `metrics --json` writes it.
fn point_json(p: &crate::model::MetricPoint) -> serde_json::Value {
    json!({"name": p.name, "value": json_value(p.value), "step": p.step, "epoch": p.epoch, "line": p.line})
}

/// [`point_json`] written straight out, byte for byte the same (its keys in the same
/// order): a series of millions of points builds no JSON tree per point.
fn write_point_json(out: &mut impl Write, p: &crate::model::MetricPoint) -> std::io::Result<()> {
    out.write_all(b"{\"epoch\":")?;
    serde_json::to_writer(&mut *out, &p.epoch)?;
    write!(out, ",\"line\":{},\"name\":", p.line)?;
    serde_json::to_writer(&mut *out, &p.name)?;
    out.write_all(b",\"step\":")?;
    serde_json::to_writer(&mut *out, &p.step)?;
    out.write_all(b",\"value\":")?;
    serde_json::to_writer(&mut *out, &json_value(p.value))?;
    out.write_all(b"}")
}

/// Print rows as aligned columns.
fn gpus_list(
    cfg: &crate::config::UserConfig,
    region: Option<&str>,
    provider: Option<&str>,
    min_gpu_mem: Option<f64>,
    gpus: Option<u32>,
    limit: usize,
    json: bool,
) -> Result<i32> {
    use crate::provider::aws::catalog::Catalog;
    let data_dir = &cfg.data_dir();
    let cat = Catalog::for_data_dir(data_dir)?;
    if let Some(r) = region
        && !cat.prices.keys().any(|(_, cr)| cr == r)
    {
        let mut regions: Vec<&str> = cat.prices.keys().map(|(_, r)| r.as_str()).collect();
        regions.sort();
        regions.dedup();
        bail!(
            "the catalog has no region `{r}` (it has: {})",
            regions.join(", ")
        );
    }
    // AWS's catalog always (the refreshed one when there is one), then every other
    // configured provider's offers, side by side.
    let mut offers = cat.offers(region, min_gpu_mem, gpus);
    let providers = crate::provider::registry(cfg, data_dir, Default::default());
    if let Some(p) = provider
        && p != "aws"
        && !providers.contains_key(p)
    {
        bail!(
            "no provider `{p}` is configured (configured: {})",
            providers.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for (name, p) in &providers {
        if name == "aws" {
            continue;
        }
        offers.extend(p.offers().into_iter().filter(|o| {
            region.is_none_or(|r| o.region == r || o.region == "*")
                && min_gpu_mem.is_none_or(|m| o.gpu_memory_gib.unwrap_or(0.0) + 1e-9 >= m)
                && gpus.is_none_or(|g| o.gpus >= g as f64)
        }));
    }
    offers.retain(|o| provider.is_none_or(|p| o.provider == p));
    offers.sort_by(|a, b| {
        a.best()
            .cmp(&b.best())
            .then_with(|| a.provider.cmp(&b.provider))
            .then_with(|| a.instance_type.cmp(&b.instance_type))
    });
    if limit > 0 {
        offers.truncate(limit);
    }
    if json {
        print_json(&serde_json::to_value(&offers)?);
        return Ok(EXIT_OK);
    }
    let price = |m: Option<i64>| m.map_or_else(|| "-".to_string(), |m| Money(m).to_string());
    let rows: Vec<Vec<String>> = offers
        .iter()
        .map(|o| {
            vec![
                o.provider.clone(),
                o.instance_type.clone(),
                o.region.clone(),
                format!("{}x {}", o.gpus, o.accelerator),
                o.gpu_memory_gib
                    .map_or_else(|| "-".into(), |g| format!("{g:.0} GiB")),
                if o.vcpus == 0 {
                    "-".into()
                } else {
                    o.vcpus.to_string()
                },
                if o.memory_gib == 0.0 {
                    "-".into()
                } else {
                    format!("{:.0} GiB", o.memory_gib)
                },
                price(o.on_demand_micros),
                price(o.spot_micros),
                Money((o.best() as f64 / o.gpus.max(0.125)) as i64).to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PROVIDER",
            "TYPE",
            "REGION",
            "GPUS",
            "MEM/GPU",
            "VCPU",
            "RAM",
            "ON-DEMAND/H",
            "SPOT/H",
            "BEST/GPU-H",
        ],
        &rows,
    );
    if rows.is_empty() {
        eprintln!("no GPU type fits");
    }
    let refreshed = crate::provider::aws::refresh::refreshed_at(data_dir);
    if !refreshed.is_empty() {
        let when: Vec<String> = refreshed.iter().map(|(r, t)| format!("{r} {t}")).collect();
        eprintln!(
            "prices read from AWS for {}; other regions from the catalog shipped with trainctl",
            when.join(", ")
        );
    }
    Ok(EXIT_OK)
}

/// A money column printed with one precision ([`Money::column`]): a column whose cells
/// are all amounts (or `-`/`?`) is written again with the decimals they share.
fn money_columns(rows: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut rows = rows.to_vec();
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    for c in 0..ncols {
        let cells: Vec<Option<Option<Money>>> = rows
            .iter()
            .map(|r| match r.get(c).map(String::as_str) {
                Some("-") | Some("?") => Some(None),
                Some(t) if t.starts_with('$') || t.starts_with("-$") => {
                    Money::from_dollars_str(&t.replacen("-$", "-", 1)).map(Some)
                }
                _ => None,
            })
            .collect();
        if cells.is_empty() || cells.iter().any(Option::is_none) {
            continue;
        }
        let amounts: Vec<Money> = cells.iter().flatten().flatten().copied().collect();
        let d = Money::decimals_for(&amounts);
        for (r, cell) in rows.iter_mut().zip(&cells) {
            if let Some(Some(m)) = cell {
                r[c] = m.with_decimals(d);
            }
        }
    }
    rows
}

fn table(header: &[&str], rows: &[Vec<String>]) {
    let rows = &money_columns(rows)[..];
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

async fn run(cli: Cli) -> Result<i32> {
    // Commands that need no engine first.
    match &cli.command {
        Command::ParseLog { file } => return parse_log(file, cli.json),
        Command::Config {
            command: ConfigCommand::Path,
        } => {
            println!(
                "{}",
                UserConfig::resolve_path(cli.config.as_deref())?.display()
            );
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    let (mut cfg, cfg_path) = UserConfig::load(cli.config.as_deref())?;
    if let Some(p) = &cli.profile {
        match cfg.providers.aws.as_mut() {
            Some(aws) => aws.profile = Some(p.clone()),
            None => bail!(
                "--profile is for the aws provider, which is off: add [providers.aws] to the config"
            ),
        }
    }
    if let Command::Gpus {
        region,
        min_gpu_mem,
        gpus,
        limit,
        refresh,
        provider,
    } = &cli.command
    {
        let data = cfg.data_dir();
        if *refresh {
            // AWS when configured (or asked for by name), then every other configured
            // provider that has a listing to read.
            let wants = |p: &str| provider.as_deref().is_none_or(|w| w == p);
            if wants("aws") && (cfg.providers.aws.is_some() || provider.as_deref() == Some("aws")) {
                let aws = crate::provider::aws::AwsProvider::new(
                    &data,
                    cfg.providers.aws.clone().unwrap_or_default(),
                    Default::default(),
                );
                for r in aws.refresh_catalog(region.as_deref()).await? {
                    eprintln!(
                        "{}: {} accelerated types offered, {} priced on demand, {} spot prices ({} AWS calls)",
                        r.region, r.types, r.on_demand, r.spot_prices, r.calls
                    );
                }
            }
            for (name, p) in crate::provider::registry(&cfg, &data, Default::default()) {
                if name == "aws" || !wants(&name) {
                    continue;
                }
                if let Some(what) = p.refresh_offers().await? {
                    eprintln!("{name}: {what}");
                }
            }
        }
        return gpus_list(
            &cfg,
            region.as_deref(),
            provider.as_deref(),
            *min_gpu_mem,
            (*gpus > 0).then_some(*gpus),
            *limit,
            cli.json,
        );
    }
    if let Command::Config {
        command: ConfigCommand::Check { project },
    } = &cli.command
    {
        crate::tui::settings::check(&cfg, &cfg_path)?;
        let project = project_at(project.as_deref())?;
        if cli.json {
            print_json(&json!({"user_config": cfg_path, "project": project.file, "ok": true}));
        } else {
            println!("ok  {}", cfg_path.display());
            println!("ok  {}", project.file.display());
        }
        return Ok(EXIT_OK);
    }
    let engine = Engine::open(cfg)?;
    let json = cli.json;
    match cli.command {
        Command::Launch {
            provider,
            instance_type,
            name,
            gpus,
            spot,
            hourly_usd,
            accept_new_host_key,
            option,
            any_of,
            keep_on_error,
        } => {
            let mut options = std::collections::BTreeMap::new();
            for o in option {
                let Some((k, v)) = o.split_once('=') else {
                    eprintln!("error: -o `{o}`: expected KEY=VALUE");
                    return Ok(EXIT_USAGE);
                };
                options.insert(k.trim().to_string(), v.trim().to_string());
            }
            if let Some(s) = hourly_usd {
                options.insert("hourly_usd".to_string(), s);
            }
            let provider = provider.unwrap_or_else(|| engine.config().default_provider.clone());
            let req = LaunchRequest {
                name,
                instance_type,
                gpus,
                spot,
                accept_new_host_key,
                options,
                any_of,
                keep_on_error,
            };
            let inst = engine.launch_any(&provider, &req).await?;
            if json {
                print_json(&serde_json::to_value(&inst)?);
            } else {
                println!("{}", inst.id);
            }
            Ok(EXIT_OK)
        }
        Command::Ls { all } => ls(&engine, all, json).await,
        Command::Images { instance, prune } => {
            let key = one_instance(&engine, instance.as_deref())?;
            if prune {
                let removed = engine.prune_images(&key).await?;
                let freed: u64 = removed.iter().filter_map(|i| i.bytes).sum();
                if json {
                    print_json(&json!({"removed": removed, "freed_bytes": freed}));
                } else {
                    for i in &removed {
                        println!("removed {}", i.image);
                    }
                    println!(
                        "{} image(s) removed, {} freed",
                        removed.len(),
                        fmt_bytes(freed)
                    );
                }
                return Ok(EXIT_OK);
            }
            let (inst, images) = engine.machine_images(&key).await?;
            if json {
                print_json(&serde_json::to_value(&images)?);
                return Ok(EXIT_OK);
            }
            table(
                &["IMAGE", "SIZE", "DOCKER_HOST"],
                &images
                    .iter()
                    .map(|i| {
                        vec![
                            i.image.clone(),
                            i.bytes.map_or("gone".into(), fmt_bytes),
                            i.host.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            let total: u64 = images.iter().filter_map(|i| i.bytes).sum();
            println!(
                "{} on {} (`trainctl images --instance {} --prune` removes what no container uses)",
                fmt_bytes(total),
                inst.id,
                inst.id
            );
            Ok(EXIT_OK)
        }
        Command::Jobs => jobs(&engine, json).await,
        Command::Run {
            project,
            instance,
            provider,
            cluster,
            name,
            terminate_after,
            detach,
            no_pull,
            keep_on_error,
        } => {
            // A cluster already held is used again (a hold per run would pile up).
            let instance = match (&cluster, instance) {
                (Some(c), None) => engine
                    .store()
                    .instances(false)?
                    .into_iter()
                    .find(|i| i.provider == "slurm" && i.instance_type == *c && i.state.is_live())
                    .map(|i| i.id),
                (_, i) => i,
            };
            let opts = RunOpts {
                project,
                instance,
                provider: if cluster.is_some() {
                    Some("slurm".into())
                } else {
                    provider
                },
                cluster,
                name,
                terminate_after,
                detach,
                no_pull,
                keep_on_error,
            };
            run_job(&engine, opts, json).await
        }
        Command::Logs {
            job,
            follow,
            rank: Some(rank),
        } => rank_logs(&engine, &job, rank, follow).await,
        Command::Logs { job, follow, .. } => logs(&engine, &job, follow).await,
        Command::Metrics { job, name } => metrics(&engine, &job, name.as_deref(), json).await,
        Command::Cost => cost(&engine, json).await,
        Command::Cancel { job, no_wait } => {
            let j = engine.cancel(&job, "cancelled by the user").await?;
            if j.state.is_terminal() {
                eprintln!("{} already {}", j.id, j.state);
                return Ok(exit_for(j.state));
            }
            if no_wait {
                println!("{} cancel requested", j.id);
                return Ok(EXIT_OK);
            }
            let state = engine.follow_job(&j.id, |_| {}).await?;
            println!("{} {}", j.id, state);
            Ok(if state == JobState::Cancelled {
                EXIT_OK
            } else {
                exit_for(state)
            })
        }
        Command::Pull { job, to } => {
            let report = engine.pull(&job, to.as_deref()).await?;
            print_pull(&report, json);
            Ok(if report.failed.is_empty() {
                EXIT_OK
            } else {
                EXIT_ERROR
            })
        }
        Command::Terminate { instance } => {
            let inst = engine
                .terminate(&instance, "terminated by the user")
                .await?;
            let c = crate::cost::instance_cost(&inst, now_ms());
            if json {
                print_json(&json!({"id": inst.id, "state": inst.state, "cost_micros": c.0}));
            } else {
                println!("{} {} (cost {c})", inst.id, inst.state);
            }
            Ok(EXIT_OK)
        }
        Command::Stop { instance } => {
            let inst = engine.stop_instance(&instance).await?;
            print_instance(&inst, json, "compute no longer billed; its disk still is")
        }
        Command::Start { instance } => {
            let inst = engine.start_instance(&instance).await?;
            print_instance(&inst, json, inst.address.as_deref().unwrap_or_default())
        }
        Command::Adopt { instance } => {
            let inst = engine.adopt(&instance).await?;
            print_instance(&inst, json, inst.address.as_deref().unwrap_or_default())
        }
        Command::Data { project, instance } => {
            let project = project_at(project.as_deref())?;
            let inst = one_instance(&engine, instance.as_deref())?;
            let progress = transfer_progress(&engine, None);
            let dir = engine.place_project_data(&project, &inst).await?;
            drop(progress);
            match dir {
                None => eprintln!("no [[data]] in {}", project.file.display()),
                Some(d) if json => print_json(&json!({"instance_id": inst, "data_dir": d})),
                Some(d) => println!("TRAINCTL_DATA_DIR={d} on {inst}"),
            }
            Ok(EXIT_OK)
        }
        Command::Sync {
            project,
            instance,
            dry_run,
        } => {
            sync(
                &engine,
                project.as_deref(),
                instance.as_deref(),
                dry_run,
                json,
            )
            .await
        }
        Command::Events { job } => {
            let job_id = match job {
                Some(k) => Some(engine.store().find_job(&k)?.id),
                None => None,
            };
            let events = engine.store().events(job_id.as_deref(), None)?;
            if json {
                print_json(&serde_json::to_value(&events)?);
            } else {
                for e in events {
                    println!(
                        "{}  {:<22} {:<14} {:<14} {}",
                        e.ts_ms,
                        e.kind,
                        e.instance_id.unwrap_or_default(),
                        e.job_id.unwrap_or_default(),
                        e.message
                    );
                }
            }
            Ok(EXIT_OK)
        }
        Command::Migrate {
            job,
            instance,
            instance_type,
            no_wait,
        } => migrate(&engine, &job, instance, instance_type, no_wait, json).await,
        Command::Watch => watch(&engine, json).await,
        Command::Checkpoints { job } => {
            let j = engine.store().find_job(&job)?;
            let cks = engine.store().checkpoints(&j.id)?;
            if json {
                print_json(&serde_json::to_value(&cks)?);
            } else {
                for c in cks {
                    println!(
                        "{}  {:>12} bytes  attempt {}  blake3 {}  {}",
                        c.name,
                        c.size,
                        c.attempt,
                        crate::model::short_hash(&c.blake3),
                        c.local_path
                    );
                }
            }
            Ok(EXIT_OK)
        }
        Command::ParseLog { .. } | Command::Config { .. } | Command::Gpus { .. } => Ok(EXIT_OK),
    }
}

async fn migrate(
    engine: &Engine,
    job: &str,
    instance: Option<String>,
    instance_type: Option<String>,
    no_wait: bool,
    json: bool,
) -> Result<i32> {
    let to = match (instance, instance_type) {
        (Some(i), _) => crate::engine::MigrateTarget::Instance(i),
        (None, Some(t)) => crate::engine::MigrateTarget::Type(t),
        (None, None) => crate::engine::MigrateTarget::Same,
    };
    let j = engine.migrate(job, to).await?;
    let before = engine.store().attempts(&j.id)?.len();
    eprintln!(
        "{}: told to stop and move; waiting for it to run elsewhere",
        j.id
    );
    if no_wait {
        return Ok(EXIT_OK);
    }
    // Supervise until the next attempt runs (or the job ends).
    loop {
        let state = engine.supervise_step(&j.id).await?;
        let attempts = engine.store().attempts(&j.id)?;
        if state.is_terminal()
            || (state.is_started() && state != JobState::Starting && attempts.len() > before)
        {
            let now = engine.store().job(&j.id)?.context("job vanished")?;
            if json {
                print_json(&json!({
                    "job_id": now.id, "state": now.state, "attempt": attempts.len(),
                    "instance_id": now.instance_id, "reason": now.reason,
                }));
            } else {
                println!(
                    "{} {} (attempt {} on {})",
                    now.id,
                    now.state,
                    attempts.len(),
                    now.instance_id.unwrap_or_default()
                );
            }
            return Ok(if state.is_terminal() {
                exit_for(state)
            } else {
                EXIT_OK
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(
            engine.config().poll_interval_ms.max(10),
        ))
        .await;
    }
}

/// Supervise every live job until none is left: one job actor each (the same as the
/// cockpit's), new jobs picked up as they appear.
async fn watch(engine: &Engine, json: bool) -> Result<i32> {
    let mut actors: std::collections::HashMap<String, crate::engine::JobHandle> =
        std::collections::HashMap::new();
    let mut ended = Vec::new();
    let mut last_tend = None;
    let mut last_orphans = None;
    let mut warned = std::collections::HashSet::new();
    loop {
        let live = engine.live_job_ids()?;
        for id in &live {
            if let Some(h) = engine.supervise(id, false) {
                eprintln!("watching {id}");
                actors.insert(id.clone(), h);
            }
        }
        let done: Vec<String> = actors
            .iter()
            .filter(|(_, h)| h.done.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            if let Some(h) = actors.remove(&id) {
                match h.done.await {
                    Ok(Ok(state)) => {
                        eprintln!("{id} {state}");
                        ended.push(json!({"job_id": id, "state": state}));
                    }
                    Ok(Err(e)) => eprintln!("{id}: {e:#}"),
                    Err(e) => eprintln!("{id}: {e}"),
                }
            }
        }
        if last_tend
            .is_none_or(|t: std::time::Instant| t.elapsed() >= std::time::Duration::from_secs(5))
        {
            if let Err(e) = engine.tend_machines().await {
                eprintln!("warning: tending machines: {e:#}");
            }
            last_tend = Some(std::time::Instant::now());
        }
        // Machines billing that the store does not know: looked for at start and every
        // five minutes, each said once.
        if last_orphans
            .is_none_or(|t: std::time::Instant| t.elapsed() >= std::time::Duration::from_secs(300))
        {
            for (p, l) in engine.orphans().await.unwrap_or_default() {
                if warned.insert(l.provider_id.clone()) {
                    let msg = format!(
                        "{} ({}) on {p} is held for this store but unknown to it, {} so far: `trainctl terminate {}` or `trainctl adopt {}`",
                        l.id,
                        l.provider_id,
                        orphan_cost(engine, &p, &l, now_ms()),
                        l.id,
                        l.id
                    );
                    eprintln!("warning: {msg}");
                    engine.store().add_event("orphan.found", None, None, &msg)?;
                }
            }
            last_orphans = Some(std::time::Instant::now());
        }
        // Machines the idle guard will end keep `watch` going until they are ended.
        // Bound first: the store's guard must be gone before idle_deadline takes it.
        let machines = engine.store().instances(false)?;
        let idle_pending = machines
            .iter()
            .filter(|i| engine.idle_deadline(i).is_some())
            .count();
        if live.is_empty() && actors.is_empty() && idle_pending == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(
                engine.config().poll_interval_ms.clamp(50, 1000),
            )) => {}
            _ = tokio::signal::ctrl_c() => {
                eprintln!("watch stopped; the jobs keep running");
                return Ok(EXIT_OK);
            }
        }
    }
    if json {
        print_json(&serde_json::Value::Array(ended));
    }
    Ok(EXIT_OK)
}

/// An instance as JSON, or `ID STATE (note)`.
fn print_instance(inst: &crate::store::InstanceRecord, json: bool, note: &str) -> Result<i32> {
    if json {
        print_json(&serde_json::to_value(inst)?);
    } else {
        println!("{} {} ({note})", inst.id, inst.state);
    }
    Ok(EXIT_OK)
}

/// What an orphan has cost so far, from its provider's launch time at its estimated price
/// (the provider's minimum included).
fn orphan_cost(engine: &Engine, provider: &str, l: &crate::provider::Listed, now: i64) -> Money {
    crate::cost::instance_cost(&engine.orphan_record(provider, l), now)
}

async fn ls(engine: &Engine, all: bool, json: bool) -> Result<i32> {
    engine.reconcile_instances().await?;
    engine.probe_live(std::time::Duration::from_secs(3)).await?;
    let insts = engine.store().instances(all)?;
    let orphans = engine.orphans().await?;
    let now = now_ms();
    // What the jobs' container images take on each live machine (asked at once, 3 s each).
    let images: std::collections::HashMap<String, u64> = futures_util::future::join_all(
        insts
            .iter()
            // Reachable a moment ago (the probe above said so).
            .filter(|i| i.state == crate::model::InstanceState::Running && i.error.is_none())
            .map(|i| async move {
                let asked = tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    engine.machine_images(&i.id),
                )
                .await;
                let bytes: u64 = match asked {
                    Ok(Ok((_, imgs))) => imgs.iter().filter_map(|m| m.bytes).sum(),
                    _ => 0,
                };
                (i.id.clone(), bytes)
            }),
    )
    .await
    .into_iter()
    .filter(|(_, b)| *b > 0)
    .collect();
    if json {
        let mut v: Vec<serde_json::Value> = insts
            .iter()
            .map(|i| {
                let mut o = serde_json::to_value(i).unwrap_or_default();
                o["cost_micros"] = json!(crate::cost::instance_cost(i, now).0);
                o["orphan"] = json!(false);
                o["images_bytes"] = json!(images.get(&i.id).copied().unwrap_or(0));
                o
            })
            .collect();
        for (p, l) in &orphans {
            let mut o = serde_json::to_value(l).unwrap_or_default();
            o["provider"] = json!(p);
            o["orphan"] = json!(true);
            o["cost_micros"] = json!(orphan_cost(engine, p, l, now).0);
            v.push(o);
        }
        print_json(&json!(v));
        return Ok(EXIT_OK);
    }
    let mut rows: Vec<Vec<String>> = insts
        .iter()
        .map(|i| {
            let up = crate::cost::billed_interval(i, now).map_or(0, |(s, e)| e - s);
            vec![
                i.id.clone(),
                i.name.clone(),
                i.provider.clone(),
                i.instance_type.clone(),
                i.state.to_string(),
                if i.spot { "spot" } else { "on-demand" }.into(),
                fmt_duration(up),
                i.hourly.to_string(),
                crate::cost::instance_cost(i, now).to_string(),
                match (&i.error, i.state.is_live()) {
                    (Some(e), true) => format!("ERROR: {e}"),
                    _ => i.gpu_info.clone().unwrap_or_else(|| "-".into()),
                },
            ]
        })
        .collect();
    for (p, l) in &orphans {
        if let Some(on) = &l.batch_on {
            rows.push(vec![
                l.id.clone(),
                l.provider_id.clone(),
                p.clone(),
                l.instance_type.clone().unwrap_or_else(|| "?".into()),
                "ORPHAN JOB".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!(
                    "a batch job on {on} no job of the store accounts for: `trainctl terminate {}` cancels it",
                    l.id
                ),
            ]);
            continue;
        }
        rows.push(vec![
            l.id.clone(),
            l.provider_id.clone(),
            p.clone(),
            l.instance_type.clone().unwrap_or_else(|| "?".into()),
            "ORPHAN".into(),
            if l.spot { "spot" } else { "on-demand" }.into(),
            fmt_duration(l.launched_ms.map_or(0, |s| now - s)),
            l.hourly.map_or_else(|| "?".into(), |h| h.to_string()),
            orphan_cost(engine, p, l, now).to_string(),
            "unknown to the store: `trainctl terminate ID` or `trainctl adopt ID`".into(),
        ]);
    }
    table(
        &[
            "ID",
            "NAME",
            "PROVIDER",
            "TYPE",
            "STATE",
            "MARKET",
            "UPTIME",
            "$/H",
            "COST",
            "GPUS / HEALTH",
        ],
        &rows,
    );
    for (id, bytes) in &images {
        println!(
            "{id}: the jobs' container images take {} (`trainctl images --instance {id} --prune` removes what no container uses)",
            fmt_bytes(*bytes)
        );
    }
    let batch = orphans.iter().filter(|(_, l)| l.batch_on.is_some()).count();
    if orphans.len() > batch {
        eprintln!(
            "warning: {} machine(s) the providers hold for this store are unknown to it and may be billing",
            orphans.len() - batch
        );
    }
    if batch > 0 {
        eprintln!(
            "warning: {batch} batch job(s) of this store's are queued or running on a cluster with no job of the store behind them"
        );
    }
    Ok(EXIT_OK)
}

async fn jobs(engine: &Engine, json: bool) -> Result<i32> {
    engine.reconcile_jobs().await?;
    let report = engine.cost_report()?;
    let jobs = engine.store().jobs()?;
    let now = now_ms();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for j in &jobs {
        let jc = report.jobs.iter().find(|c| c.id == j.id);
        let att = engine.store().attempts(&j.id)?.pop();
        let off = match &att {
            Some(a) => Some(engine.store().log_offset(&j.id, a.attempt)?),
            None => None,
        };
        let progress = off.as_ref().map(|o| o.progress).unwrap_or_default();
        let elapsed = j.started_ms.map(|s| j.ended_ms.unwrap_or(now) - s);
        // Every GPU of a running job idle for minutes: its input pipeline starves them,
        // or it does not use them at all, and the machine bills anyway.
        let idle = match &att {
            Some(a) => engine.gpu_idle_ms(j, a.attempt)?,
            None => None,
        };
        let idle_limit = (engine.config().gpu_idle_minutes * 60_000.0) as i64;
        let flagged = idle.filter(|&ms| idle_limit > 0 && ms >= idle_limit);
        if json {
            out.push(json!({
                "gpu_idle_ms": idle, "gpu_idle_flag": flagged.is_some(),
                "id": j.id, "name": j.name, "state": j.state, "instance_id": j.instance_id,
                "exit_code": j.exit_code, "reason": j.reason, "progress": progress,
                "elapsed_ms": elapsed, "cost_micros": jc.map(|c| c.cost_micros),
                "eta_ms": jc.and_then(|c| c.eta_ms),
                "gpu_seconds": jc.map(|c| c.gpu_seconds),
                "started_ms": j.started_ms, "ended_ms": j.ended_ms,
                "projected_micros": jc.and_then(|c| c.projected_micros),
            }));
        } else {
            rows.push(vec![
                j.id.clone(),
                j.name.clone(),
                j.instance_id.clone().unwrap_or_default(),
                match flagged {
                    Some(ms) => format!("{} (GPUs idle {})", j.state, fmt_duration(ms)),
                    None => j.state_label(),
                },
                progress_text(&progress),
                elapsed.map_or("-".into(), fmt_duration),
                jc.and_then(|c| c.eta_ms).map_or("-".into(), fmt_duration),
                jc.map_or("-".into(), |c| Money(c.cost_micros).to_string()),
            ]);
        }
    }
    if json {
        print_json(&json!(out));
    } else {
        table(
            &[
                "ID", "NAME", "INSTANCE", "STATE", "PROGRESS", "ELAPSED", "ETA", "COST",
            ],
            &rows,
        );
    }
    Ok(EXIT_OK)
}

fn progress_text(p: &crate::model::Progress) -> String {
    let mut parts = Vec::new();
    if let Some(e) = p.epoch {
        parts.push(match p.epochs_total {
            Some(t) => format!("epoch {e}/{t}"),
            None => format!("epoch {e}"),
        });
    }
    if let Some(s) = p.step {
        parts.push(match p.steps_total {
            Some(t) => format!("step {s}/{t}"),
            None => format!("step {s}"),
        });
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

struct RunOpts {
    project: Option<PathBuf>,
    instance: Option<String>,
    provider: Option<String>,
    /// A Slurm cluster's name: the type to take when launching.
    cluster: Option<String>,
    name: Option<String>,
    terminate_after: bool,
    detach: bool,
    no_pull: bool,
    keep_on_error: bool,
}

/// Prints a job's stored log as it grows, from where it last stopped.
#[derive(Clone)]
struct LogPrinter {
    job_id: String,
    attempt: i64,
    printed: u64,
    /// The bytes from `printed` on that came in committed pieces and are not printed:
    /// a line not ended yet (a piece may end at a `\r`, and a line is printed whole,
    /// as [`Engine::log_text_since`] prints it).
    held: Vec<u8>,
}

impl LogPrinter {
    fn new(job_id: &str) -> Self {
        LogPrinter {
            job_id: job_id.into(),
            attempt: 1,
            printed: 0,
            held: Vec::new(),
        }
    }

    /// New complete lines since the last call (every attempt, in order), a few MiB at
    /// most: call again while it returns lines.
    fn take_new(&mut self, engine: &Engine) -> Result<Vec<String>> {
        let (attempt, printed, lines) =
            engine.log_lines_since(&self.job_id, self.attempt, self.printed, PRINT_BYTES)?;
        self.attempt = attempt;
        self.printed = printed;
        Ok(lines)
    }

    /// [`LogPrinter::take_new`] as one text to print as is.
    fn take_text(&mut self, engine: &Engine) -> Result<String> {
        // Read again from the local copy.
        self.held.clear();
        let (attempt, printed, text) =
            engine.log_text_since(&self.job_id, self.attempt, self.printed, PRINT_BYTES)?;
        self.attempt = attempt;
        self.printed = printed;
        Ok(text)
    }

    /// Print the next block of the stored log (read from the local copy, as
    /// [`LogPrinter::take_text`] does); false when there was nothing new.
    fn print_stored_block(&mut self, engine: &Engine, to_stderr: bool) -> Result<bool> {
        let text = self.take_text(engine)?;
        print_block(&text, to_stderr);
        Ok(!text.is_empty())
    }

    /// Print a piece of the log as this process committed it (on stderr with
    /// `to_stderr`): what of it is not printed yet, after whatever before it is not
    /// printed yet (read from the local copy, as [`LogPrinter::take_text`] does).
    fn print_committed(
        &mut self,
        engine: &Engine,
        piece: &crate::engine::CommittedLog,
        to_stderr: bool,
    ) -> Result<()> {
        loop {
            let taken = self.printed + self.held.len() as u64;
            let unprinted = unprinted(
                (self.attempt, taken),
                piece.attempt,
                piece.offset,
                piece.bytes.len(),
            );
            match unprinted {
                Unprinted::None => return Ok(()),
                Unprinted::From(at) => {
                    let mut rest = &piece.bytes[at..];
                    // The line held, ended by this piece's first newline.
                    if !self.held.is_empty() {
                        let Some(end) = memchr::memchr(b'\n', rest) else {
                            if self.held.len() + rest.len() > PRINT_BYTES {
                                // A line longer than a block: shown in blocks, as read.
                                self.print_stored_block(engine, to_stderr)?;
                                continue;
                            }
                            self.held.extend_from_slice(rest);
                            return Ok(());
                        };
                        self.held.extend_from_slice(&rest[..=end]);
                        rest = &rest[end + 1..];
                        let line = std::mem::take(&mut self.held);
                        print_bytes(&crate::engine::display_bytes(&line), to_stderr);
                        self.printed += line.len() as u64;
                    }
                    let whole = memchr::memrchr(b'\n', rest).map_or(0, |p| p + 1);
                    print_bytes(&crate::engine::display_bytes(&rest[..whole]), to_stderr);
                    self.printed += whole as u64;
                    self.held.extend_from_slice(&rest[whole..]);
                    return Ok(());
                }
                Unprinted::AfterMore => {
                    if !self.print_stored_block(engine, to_stderr)? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What a printer that printed a log to (attempt, byte) `printed` has to print of a
/// piece of it (`len` bytes from `offset` of attempt `attempt`).
#[derive(Debug, PartialEq)]
enum Unprinted {
    /// Nothing: it is printed already.
    None,
    /// The piece from this byte of it on. (What is printed ends at a line's end, and so
    /// does what is left of the piece.)
    From(usize),
    /// All of it, after bytes before it that are not printed yet.
    AfterMore,
}

fn unprinted(printed: (i64, u64), attempt: i64, offset: u64, len: usize) -> Unprinted {
    let (at, to) = printed;
    let end = offset + len as u64;
    if attempt < at || (attempt == at && end <= to) {
        Unprinted::None
    } else if attempt == at && offset <= to {
        Unprinted::From((to - offset) as usize)
    } else {
        Unprinted::AfterMore
    }
}

/// Prints a job's log as this process commits it, on a thread of its own, from the
/// pieces in memory (nothing is read back); what another process committed, or a piece
/// it was too slow to be sent, from the local copy. Stops when dropped.
struct TapPrinter {
    stop: std::sync::Arc<std::sync::atomic::AtomicU8>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

const TAP_RUN: u8 = 0;
const TAP_FINISH: u8 = 1;
const TAP_ABORT: u8 = 2;

impl TapPrinter {
    fn start(engine: &Engine, job_id: &str, to_stderr: bool) -> TapPrinter {
        use std::sync::atomic::Ordering;
        let pieces = engine.tap_log(job_id, 4);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(TAP_RUN));
        let (engine, mut printer, state) = (engine.clone(), LogPrinter::new(job_id), stop.clone());
        let thread = std::thread::spawn(move || {
            loop {
                let tick = std::time::Duration::from_millis(20);
                match pieces.recv_timeout(tick) {
                    Ok(piece) => {
                        printer.print_committed(&engine, &piece, to_stderr)?;
                        crate::bufpool::give(piece.bytes);
                    }
                    Err(e) => {
                        // No tap any more (another printer of the job took it): the
                        // local copy, read every tick as a terminal's printer reads it.
                        if e == std::sync::mpsc::RecvTimeoutError::Disconnected {
                            std::thread::sleep(tick);
                        }
                        // Nothing came: what else is committed. Once told to finish,
                        // every commit is done, so this reaches the end.
                        let finishing = state.load(Ordering::Acquire);
                        while printer.print_stored_block(&engine, to_stderr)? {
                            if state.load(Ordering::Acquire) == TAP_ABORT {
                                return Ok(());
                            }
                        }
                        if finishing == TAP_FINISH {
                            return Ok(());
                        }
                    }
                }
                if state.load(Ordering::Acquire) == TAP_ABORT {
                    return Ok(());
                }
            }
        });
        TapPrinter {
            stop,
            thread: Some(thread),
        }
    }

    /// Print the log to its end (the follow is over), then stop.
    async fn finish(mut self) -> Result<()> {
        self.stop
            .store(TAP_FINISH, std::sync::atomic::Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the log printer panicked")))
    }
}

impl Drop for TapPrinter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop
                .store(TAP_ABORT, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The most of a log read into memory at once for printing.
const PRINT_BYTES: usize = 1 << 20;

/// Print `block` on stdout in one write (or on stderr when stdout carries JSON).
fn print_block(block: &str, to_stderr: bool) {
    print_bytes(block.as_bytes(), to_stderr);
}

/// [`print_block`] of bytes.
fn print_bytes(block: &[u8], to_stderr: bool) {
    if block.is_empty() {
        return;
    }
    if to_stderr {
        let _ = std::io::stderr().lock().write_all(block);
    } else {
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(block).and_then(|_| out.flush()) {
            stdout_failed(&e);
        }
    }
}

fn status_line(engine: &Engine, job_id: &str) -> String {
    let store = engine.store();
    let Ok(Some(j)) = store.job(job_id) else {
        return String::new();
    };
    let mut s = format!("{} {}", j.id, j.state);
    if let Ok(Some(a)) = store.attempts(job_id).map(|mut v| v.pop())
        && let Ok(off) = store.log_offset(job_id, a.attempt)
    {
        let p = progress_text(&off.progress);
        if p != "-" {
            s.push_str(&format!("  {p}"));
        }
        if let Some(eta) = crate::cost::job_eta(&j, &off, now_ms()) {
            s.push_str(&format!("  eta {}", fmt_duration(eta)));
        }
    }
    drop(store);
    if let Ok(r) = engine.cost_report()
        && let Some(c) = r.jobs.iter().find(|c| c.id == job_id)
    {
        s.push_str(&format!("  {}", Money(c.cost_micros)));
    }
    s
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// On a TTY, a progress bar (bytes, rate, ETA) for each transfer the engine makes for
/// `job` (its datasets), until the returned guard is dropped.
fn transfer_progress(engine: &Engine, job: Option<&str>) -> Option<AbortOnDrop> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let mut events = engine.subscribe();
    let job = job.map(str::to_string);
    let task = tokio::spawn(async move {
        let mut bar: Option<(String, indicatif::ProgressBar)> = None;
        while let Ok(ev) = events.recv().await {
            let crate::engine::EngineEvent::Transfer {
                job_id,
                what,
                done,
                total,
                ..
            } = ev
            else {
                continue;
            };
            if job.is_some() && job_id != job {
                continue;
            }
            if bar.as_ref().is_none_or(|(w, _)| *w != what) {
                if let Some((_, b)) = bar.take() {
                    b.finish();
                }
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.set_message(format!("placing {what}:"));
                b.set_position(done);
                // The rate counts what is sent now, not what an earlier transfer left.
                b.reset_elapsed();
                bar = Some((what.clone(), b));
            }
            if let Some((_, b)) = &bar {
                b.set_position(done);
                if done >= total {
                    b.finish();
                }
            }
        }
    });
    Some(AbortOnDrop(task))
}

/// Follow a job, printing its log (to stderr when stdout carries JSON); a progress
/// spinner on a TTY.
async fn follow_printing(engine: &Engine, job: &JobRecord, json: bool) -> Result<JobState> {
    let printer = std::sync::Arc::new(tokio::sync::Mutex::new(LogPrinter::new(&job.id)));
    let bar = if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        Some(pb)
    } else {
        None
    };
    let job_id = job.id.clone();
    // The machines' own supervision (spot prices, rebalance notes, idle machines) goes on
    // while this process follows the job, as in the cockpit and `watch`.
    let tender = tokio::spawn({
        let engine = engine.clone();
        async move {
            loop {
                if let Err(e) = engine.tend_machines().await {
                    tracing::warn!("tending machines: {e:#}");
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    });
    let _stop_tending = AbortOnDrop(tender);
    // The log is printed as it is committed, beside the follow (a large log is printed
    // while it is still being read, never all in memory). On a terminal, lines above the
    // spinner, read back from the local copy.
    let bar = bar.map(std::sync::Arc::new);
    let print_some = bar.clone().map(|pb| {
        let (engine, printer) = (engine.clone(), printer.clone());
        move || {
            let (engine, printer, pb) = (engine.clone(), printer.clone(), pb.clone());
            async move {
                let mut p = printer.lock().await;
                let mut any = false;
                loop {
                    // On a copy: a task stopped while it reads leaves the printer as it
                    // was, so the final drain prints those lines.
                    let (e2, mut next) = (engine.clone(), p.clone());
                    let Ok((next, lines)) = tokio::task::spawn_blocking(move || {
                        let l = next.take_new(&e2).unwrap_or_default();
                        (next, l)
                    })
                    .await
                    else {
                        return any;
                    };
                    *p = next;
                    if lines.is_empty() {
                        return any;
                    }
                    any = true;
                    for l in lines {
                        pb.println(l);
                    }
                }
            }
        }
    });
    // Not a terminal: the pieces this process commits are printed from memory as they
    // are committed.
    let tapped = print_some
        .is_none()
        .then(|| TapPrinter::start(engine, &job.id, json));
    let printing = print_some.clone().map(|print_some| {
        AbortOnDrop(tokio::spawn(async move {
            loop {
                if !print_some().await {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }))
    });
    let follow = engine.follow_job(&job.id, |e| {
        if let Some(pb) = bar.as_deref() {
            pb.set_message(status_line(e, &job_id));
        }
    });
    tokio::pin!(follow);
    let state = tokio::select! {
        r = &mut follow => r?,
        _ = tokio::signal::ctrl_c() => {
            if let Some(pb) = bar.as_deref() { pb.finish_and_clear(); }
            eprintln!("detached; {} keeps running. Follow it with `trainctl logs -f {}`, stop it with `trainctl cancel {}`", job.id, job.id, job.id);
            return Err(Exit(EXIT_OK).into());
        }
    };
    // Everything the job wrote, to the end, before returning.
    drop(printing);
    match (tapped, print_some) {
        (Some(printer), _) => printer.finish().await?,
        (None, Some(print_some)) => while print_some().await {},
        (None, None) => {}
    }
    if let Some(pb) = bar.as_deref() {
        pb.finish_and_clear();
    }
    Ok(state)
}

async fn run_job(engine: &Engine, o: RunOpts, json: bool) -> Result<i32> {
    let project = project_at(o.project.as_deref())?;
    let inst = match &o.instance {
        Some(key) => {
            let i = engine.store().find_instance(key)?;
            if !i.state.is_live() {
                bail!("instance {} is {}", i.id, i.state);
            }
            i
        }
        None => {
            let provider = o
                .provider
                .clone()
                .unwrap_or_else(|| engine.config().default_provider.clone());
            let r = &project.config.resources;
            let req = LaunchRequest {
                name: Some(format!(
                    "{}-{}",
                    project.name(),
                    &crate::model::new_id("x")[2..]
                )),
                instance_type: o.cluster.clone().or_else(|| r.instance_type.clone()),
                gpus: r.gpus,
                spot: r.spot.unwrap_or(false),
                accept_new_host_key: false,
                any_of: r.any_of.clone(),
                keep_on_error: o.keep_on_error,
                ..Default::default()
            };
            let i = engine.launch_any(&provider, &req).await?;
            eprintln!("launched {} on {}", i.id, i.provider);
            i
        }
    };
    let launched_here = o.instance.is_none();
    let job = engine.create_job(&project, &inst.id, o.name.as_deref())?;
    // Stored with the job: whichever trainctl sees it end (this one, `watch`, the
    // cockpit) pulls and terminates, even if this process is killed.
    engine
        .store()
        .set_end_intent(&job.id, o.terminate_after, !o.no_pull)?;
    eprintln!("job {} on {}", job.id, inst.id);
    let progress = transfer_progress(engine, Some(&job.id));
    let started = engine.start_job(&job.id).await;
    drop(progress);
    if let Err(e) = started {
        // A machine this run launched goes with the failed start (unless asked to keep
        // it), confirmed with the provider, and what it cost is said.
        if o.terminate_after || (launched_here && !o.keep_on_error) {
            match engine.terminate(&inst.id, "run failed to start").await {
                Ok(_) => eprintln!(
                    "terminated {} after the failed start ({} billed)",
                    inst.id,
                    Money(engine.instance_cost(&inst.id))
                ),
                Err(t) => eprintln!(
                    "error: terminating {} failed too: {t:#}; `trainctl terminate {}`",
                    inst.id, inst.id
                ),
            }
        } else if launched_here {
            eprintln!(
                "kept {} as asked (--keep-on-error): `trainctl terminate {}` when done",
                inst.id, inst.id
            );
        }
        return Err(e);
    }
    if o.detach {
        if json {
            print_json(&json!({"job_id": job.id, "instance_id": inst.id}));
        } else {
            println!("{}", job.id);
        }
        return Ok(EXIT_OK);
    }
    let state = match follow_printing(engine, &job, json).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return Ok(*code);
            }
            return Err(e);
        }
    };
    let mut report = None;
    let mut pull_failed = false;
    // The job may have moved machines (recovery, migrate): its end is on the current one.
    let current = engine
        .store()
        .job(&job.id)?
        .and_then(|j| j.instance_id)
        .unwrap_or_else(|| inst.id.clone());
    let inst_now = engine.store().instance(&current)?;
    let inst_live = inst_now.as_ref().is_some_and(|i| i.state.is_live());
    if !o.no_pull && !project.config.artifacts.is_empty() && inst_live {
        match engine.pull(&job.id, None).await {
            Ok(r) => {
                if !json {
                    print_pull(&r, false);
                }
                pull_failed = !r.failed.is_empty();
                report = Some(r);
            }
            Err(e) => {
                eprintln!("error: pulling artifacts failed: {e:#}");
                pull_failed = true;
            }
        }
    } else if o.terminate_after && !o.no_pull {
        // Pulled by whichever supervisor saw the end (the stored end intent).
        let pulled: Vec<crate::job::artifacts::Pulled> = engine
            .store()
            .artifacts(&job.id)?
            .into_iter()
            .map(|a| crate::job::artifacts::Pulled {
                path: a.path,
                size: a.size,
                blake3: a.blake3,
                local_path: a.local_path,
            })
            .collect();
        let r = crate::job::artifacts::PullReport {
            pulled,
            ..Default::default()
        };
        if !json {
            print_pull(&r, false);
        }
        report = Some(r);
    }
    if o.terminate_after {
        if inst_live && pull_failed {
            // What the job made is still only there: the machine is kept.
            eprintln!(
                "kept {current} running: artifacts failed to pull (`trainctl pull {}` again, then `trainctl terminate {current}`)",
                job.id
            );
        } else if inst_live {
            engine.terminate(&current, "run --terminate-after").await?;
        }
        if let Some(i) = engine.store().instance(&current)? {
            eprintln!("{} {}", i.id, i.state);
        }
    }
    let final_job = engine.store().job(&job.id)?.context("job vanished")?;
    let summary = engine.job_summary(&job.id)?;
    let cost = summary.cost_micros;
    if json {
        print_json(&json!({
            "job_id": job.id, "instance_id": inst.id, "state": state,
            "exit_code": final_job.exit_code, "reason": final_job.reason,
            "cost_micros": cost, "artifacts": report.as_ref().map(|r| &r.pulled),
            "artifacts_failed": report.as_ref().map(|r| &r.failed),
            "summary": summary,
        }));
    } else {
        eprintln!(
            "job {} {} ({}), cost {}",
            job.id,
            state,
            final_job.reason.unwrap_or_default(),
            Money(cost)
        );
        eprint!(
            "{}",
            summary_text(&summary, report.as_ref().map(|r| r.pulled.len()))
        );
    }
    if pull_failed && state == JobState::Succeeded {
        return Ok(EXIT_ERROR);
    }
    Ok(exit_for(state))
}

/// The end of `run`: how long, how many attempts, what came back, and each main metric's
/// last and best value.
fn summary_text(s: &crate::engine::summary::JobSummary, pulled: Option<usize>) -> String {
    let mut out = format!(
        "  {} in {}, {} attempt{}",
        s.state,
        fmt_duration(s.duration_ms),
        s.attempts,
        if s.attempts == 1 { "" } else { "s" }
    );
    if let Some(n) = pulled {
        out.push_str(&format!(
            ", {n} artifact{} pulled",
            if n == 1 { "" } else { "s" }
        ));
    }
    out.push('\n');
    let width = s
        .metrics
        .iter()
        .map(|m| m.name.chars().count())
        .max()
        .unwrap_or(0);
    let at = |step: Option<i64>| step.map_or(String::new(), |s| format!(" (step {s})"));
    for m in &s.metrics {
        let last = format!(
            "{}{}",
            crate::metrics::fmt_metric(m.last, 6),
            at(m.last_step)
        );
        out.push_str(&format!(
            "  {:width$}  last {last:<24} best {}{} ({} is better)\n",
            m.name,
            crate::metrics::fmt_metric(m.best, 6),
            at(m.best_step),
            if m.lower_is_better { "lower" } else { "higher" },
        ));
    }
    out
}

fn print_pull(report: &crate::job::artifacts::PullReport, json: bool) {
    if json {
        print_json(&serde_json::to_value(report).unwrap_or_default());
        return;
    }
    for p in &report.pulled {
        println!(
            "pulled {} ({} bytes, blake3 {}) -> {}",
            p.path,
            p.size,
            crate::model::short_hash(&p.blake3),
            p.local_path
        );
    }
    for u in &report.unmatched {
        eprintln!("warning: no artifact matched {u}");
    }
    for f in &report.failed {
        eprintln!("error: {} not pulled: {}", f.path, f.error);
    }
}

async fn logs(engine: &Engine, key: &str, follow: bool) -> Result<i32> {
    let job = engine.store().find_job(key)?;
    if !follow {
        // Catch up once so the log is current, then print what is stored.
        if !job.state.is_terminal()
            && let Err(e) = engine.poll_job(&job.id).await
        {
            eprintln!("warning: could not reach the job's machine: {e:#}");
        }
        // Every attempt in order, with a marker line where the job moved machines, a few
        // MiB at a time, each in one write.
        let mut printer = LogPrinter::new(&job.id);
        while printer.print_stored_block(engine, false)? {}
        return Ok(EXIT_OK);
    }
    match follow_printing(engine, &job, false).await {
        Ok(state) => Ok(exit_for(state)),
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(c)) => Ok(*c),
            None => Err(e),
        },
    }
}

/// `logs --rank N`: that rank's output, from the cluster, its complete lines sanitized as
/// the job's log is; with `-f`, until the job ends.
async fn rank_logs(engine: &Engine, key: &str, rank: u32, follow: bool) -> Result<i32> {
    const CHUNK: usize = 1 << 20;
    let mut off = 0u64;
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let (bytes, live) = engine.rank_log(key, rank, off, CHUNK).await?;
        let got = bytes.as_ref().map_or(0, Vec::len);
        if let Some(b) = bytes {
            partial.extend_from_slice(&b);
            off += b.len() as u64;
            // Whole lines only while more may come.
            let cut = partial
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |i| i + 1);
            if cut > 0 {
                let mut text = String::new();
                crate::engine::display_text(&partial[..cut], &mut text);
                print_block(&text, false);
                partial.drain(..cut);
            }
        } else if off == 0 && !(follow && live) {
            bail!("no output of rank {rank} (is it a job of more than {rank} rank(s)?)");
        }
        if got == CHUNK {
            continue;
        }
        if !(follow && live) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // The store's guard goes before the await.
        let id = engine.store().find_job(key)?.id;
        let _ = engine.poll_job(&id).await;
    }
    if !partial.is_empty() {
        let mut text = String::new();
        crate::engine::display_text(&partial, &mut text);
        print_block(&text, false);
    }
    Ok(EXIT_OK)
}

async fn metrics(engine: &Engine, key: &str, name: Option<&str>, json: bool) -> Result<i32> {
    let job = engine.store().find_job(key)?;
    if !job.state.is_terminal() {
        let _ = engine.poll_job(&job.id).await;
    }
    if json && let Some(name) = name {
        // One series, streamed as it is unpacked: the first point is out at once.
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        let mut first = true;
        let mut err: Option<std::io::Error> = None;
        engine.store().for_each_metric(&job.id, name, |p| {
            if err.is_some() {
                return;
            }
            let r = out
                .write_all(if first { b"[\n" } else { b",\n" })
                .and_then(|()| write_point_json(&mut out, p));
            first = false;
            if let Err(e) = r {
                err = Some(e);
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        writeln!(out, "{}", if first { "[]" } else { "\n]" })?;
        out.flush()?;
        return Ok(EXIT_OK);
    }
    let points = engine.store().metrics(&job.id, name)?;
    if json {
        let v: Vec<_> = points.iter().map(point_json).collect();
        print_json(&json!(v));
    } else {
        let rows: Vec<Vec<String>> = points
            .iter()
            .map(|p| {
                vec![
                    p.line.to_string(),
                    p.step.map_or("-".into(), |s| s.to_string()),
                    p.epoch.map_or("-".into(), |e| e.to_string()),
                    p.name.clone(),
                    p.value.to_string(),
                ]
            })
            .collect();
        table(&["LINE", "STEP", "EPOCH", "NAME", "VALUE"], &rows);
    }
    Ok(EXIT_OK)
}

async fn cost(engine: &Engine, json: bool) -> Result<i32> {
    engine.reconcile_instances().await?;
    let r = engine.cost_report()?;
    if json {
        print_json(&serde_json::to_value(&r)?);
        return Ok(EXIT_OK);
    }
    println!(
        "total {}   today {}   burn {}/h",
        Money(r.total_micros),
        Money(r.today_micros),
        Money(r.burn_rate_micros_per_hour)
    );
    let b = &engine.config().budget;
    if let Some(l) = b.per_day() {
        println!(
            "budget per day {l}, left today {}",
            Money(l.0 - r.today_micros)
        );
    }
    if let Some(l) = b.per_job() {
        println!("budget per job {l}");
    }
    println!();
    table(
        &["INSTANCE", "NAME", "STATE", "$/H", "COST"],
        &r.instances
            .iter()
            .map(|i| {
                vec![
                    i.id.clone(),
                    i.name.clone(),
                    i.state.clone(),
                    Money(i.hourly_micros).to_string(),
                    Money(i.cost_micros).to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!();
    table(
        &["JOB", "NAME", "STATE", "GPU-H", "COST", "ETA", "PROJECTED"],
        &r.jobs
            .iter()
            .map(|j| {
                vec![
                    j.id.clone(),
                    j.name.clone(),
                    j.state.clone(),
                    crate::cost::fmt_gpu_hours(j.gpu_seconds),
                    Money(j.cost_micros).to_string(),
                    j.eta_ms.map_or("-".into(), fmt_duration),
                    j.projected_micros
                        .map_or("-".into(), |m| Money(m).to_string()),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!();
    // Every day with a cost or GPU time (a free cluster's days cost nothing).
    let days: std::collections::BTreeSet<&String> =
        r.days.keys().chain(r.gpu_seconds_days.keys()).collect();
    table(
        &["DAY (UTC)", "GPU-H", "COST"],
        &days
            .into_iter()
            .map(|d| {
                vec![
                    d.clone(),
                    crate::cost::fmt_gpu_hours(r.gpu_seconds_days.get(d).copied().unwrap_or(0)),
                    Money(r.days.get(d).copied().unwrap_or(0)).to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(EXIT_OK)
}

/// The instance a command names, else the only live one.
fn one_instance(engine: &Engine, instance: Option<&str>) -> Result<String> {
    Ok(match instance {
        Some(k) => k.to_string(),
        None => {
            let live = engine.store().instances(false)?;
            match live.as_slice() {
                [one] => one.id.clone(),
                [] => bail!("no live instance; `trainctl launch` one or give --instance"),
                _ => bail!("{} live instances; choose one with --instance", live.len()),
            }
        }
    })
}

async fn sync(
    engine: &Engine,
    project: Option<&Path>,
    instance: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<i32> {
    let project = project_at(project)?;
    let inst_key = one_instance(engine, instance)?;
    let root = project.root.clone();
    let excludes = crate::engine::data::sync_excludes(&project.config, &project.root);
    // A dry run lists what is left out (walked while it plans); a sync does not walk the
    // excluded folders at all (it says where to look instead).
    let excluded = dry_run
        .then(|| tokio::task::spawn_blocking(move || crate::job::sync::excluded(&root, &excludes)));
    let plan = engine.sync_project(&project, &inst_key, dry_run).await?;
    let excluded = match excluded {
        Some(listing) => Some(listing.await??),
        None => None,
    };
    if json {
        let mut doc = json!({
            "dry_run": dry_run, "upload": plan.upload, "links": plan.links, "delete": plan.delete,
            "unchanged": plan.unchanged, "upload_bytes": plan.upload_bytes,
        });
        if let Some(ex) = &excluded {
            doc["excluded"] = json!(ex);
        }
        print_json(&doc);
        return Ok(EXIT_OK);
    }
    let verb = if dry_run { "would copy" } else { "copied" };
    for p in &plan.upload {
        println!("{verb:<12} {p}");
    }
    for (p, t) in &plan.links {
        println!(
            "{:<12} {p} -> {t}",
            if dry_run { "would link" } else { "linked" }
        );
    }
    for p in &plan.delete {
        println!(
            "{:<12} {p}",
            if dry_run { "would delete" } else { "deleted" }
        );
    }
    for e in excluded.iter().flatten() {
        println!("{:<12} {} ({})", "excluded", e.path, e.reason);
    }
    let left_out = match &excluded {
        Some(ex) => format!("{} excluded", ex.len()),
        None => "excluded paths: `trainctl sync --dry-run`".into(),
    };
    println!(
        "{} to copy ({} bytes), {} to delete, {} unchanged; {left_out}",
        plan.upload.len() + plan.links.len(),
        plan.upload_bytes,
        plan.delete.len(),
        plan.unchanged,
    );
    Ok(EXIT_OK)
}

fn parse_log(file: &Path, json: bool) -> Result<i32> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut parser = LogParser::new();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut buf = vec![0u8; 1 << 20];
    let emit = |p: crate::metrics::PointRef<'_>, out: &mut dyn Write| {
        let _ = if json {
            writeln!(
                out,
                "{}",
                json!({"name": p.name, "value": json_value(p.value), "step": p.step, "epoch": p.epoch, "line": p.line})
            )
        } else {
            writeln!(
                out,
                "{:>7}  {:<24} {:>14}  step={} epoch={}",
                p.line,
                p.name,
                p.value,
                p.step.map_or("-".into(), |s| s.to_string()),
                p.epoch.map_or("-".into(), |e| e.to_string())
            )
        };
    };
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], &mut |p| emit(p, &mut out));
    }
    parser.finish(&mut |p| emit(p, &mut out));
    out.flush()?;
    if !json {
        let p = parser.progress();
        eprintln!("progress: {}", progress_text(&p));
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_piece_prints_what_of_it_is_not_printed() {
        // Printed to byte 100 of attempt 2.
        let p = (2, 100);
        assert_eq!(unprinted(p, 2, 100, 50), Unprinted::From(0), "next in line");
        assert_eq!(
            unprinted(p, 2, 60, 50),
            Unprinted::From(40),
            "partly printed"
        );
        assert_eq!(
            unprinted(p, 2, 50, 50),
            Unprinted::None,
            "ends where printed"
        );
        assert_eq!(unprinted(p, 2, 0, 10), Unprinted::None);
        assert_eq!(
            unprinted(p, 1, 500, 50),
            Unprinted::None,
            "an earlier attempt"
        );
        assert_eq!(
            unprinted(p, 2, 101, 50),
            Unprinted::AfterMore,
            "a gap before it"
        );
        assert_eq!(
            unprinted(p, 3, 0, 50),
            Unprinted::AfterMore,
            "the next attempt"
        );
        assert_eq!(unprinted((1, 0), 1, 0, 0), Unprinted::None, "empty");
    }

    #[test]
    fn a_point_written_straight_out_is_the_json_tree_written() {
        let names = ["loss", "val \"q\"/acc\\x", "é\u{1}"];
        let values = [
            0.5,
            1.0,
            -2.5e-7,
            3e300,
            0.0,
            f64::NAN,
            f64::INFINITY,
            -1e22,
        ];
        for (i, v) in values.iter().enumerate() {
            let p = crate::model::MetricPoint {
                name: names[i % names.len()].into(),
                value: *v,
                step: (i % 2 == 0).then_some(i as i64 - 3),
                epoch: (i % 3 == 0).then_some(i as f64 / 4.0),
                line: i as u64 * 1000,
            };
            let mut out = Vec::new();
            write_point_json(&mut out, &p).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), point_json(&p).to_string());
        }
    }
}
