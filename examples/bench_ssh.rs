//! SSH benchmarks against a real sshd on loopback, each against OpenSSH tools in the same run:
//!
//! 1. log follow throughput: trainctl's follower reads (4 MiB per round trip, memory bounded
//!    by that) vs `ssh host cat FILE`, and the same with metric parsing on top;
//! 2. sync of a 10 000-file / 500 MB tree, first time, after changing 10 files, and
//!    unchanged, vs `rsync -a` over the same sshd: bytes moved, time, round trips.
//!
//! `cargo run --release --example bench_ssh [-- LOG_MB TREE_MB]` (needs openssh-server,
//! openssh-client and rsync).

use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use trainctl::job::sync;
use trainctl::remote::Remote;
use trainctl::ssh::config::SshConfig;
use trainctl::ssh::remote::{SshRemote, SshTarget};
use trainctl::testkit::{Sshd, TempDir};

fn ssh_opts(sshd: &Sshd, kh: &Path) -> Vec<String> {
    vec![
        "-i".into(),
        sshd.client_key.display().to_string(),
        "-p".into(),
        sshd.port.to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", kh.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
    ]
}

/// Flush dirty pages (and the discards of deleted trees) so neither side pays for the
/// other's writes.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_millis(1500));
}

/// CPU seconds spent by the whole machine (user + system, all cores) so far: a figure
/// the disk's noisy wall-clock times do not swing as much.
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| ![3, 4].contains(i) && *i < 8)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / 100.0
}

/// rsync -a of `src` into `dst` over the fixture's sshd: seconds and bytes sent.
fn rsync(sshd: &Sshd, kh: &Path, src: &Path, dst: &Path) -> (f64, u64) {
    let e = format!("ssh {}", ssh_opts(sshd, kh).join(" "));
    let t = Instant::now();
    let out = Command::new("rsync")
        .args(["-a", "--stats", "-e", &e])
        .arg(format!("{}/", src.display()))
        .arg(format!("root@127.0.0.1:{}/", dst.display()))
        .output()
        .expect("rsync is needed");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let sent = text
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|n| n.replace(',', "").trim().parse::<u64>().unwrap_or(0))
        .unwrap_or(0);
    (secs, sent)
}

/// One measured sync.
#[derive(Clone, Copy)]
struct Measured {
    secs: f64,
    bytes: u64,
    /// Commands run on the machine (trainctl only).
    trips: u64,
    /// CPU seconds of the whole machine.
    cpu: f64,
}

/// The run of median wall time.
fn median_run(runs: impl Iterator<Item = Measured>) -> Measured {
    let mut v: Vec<Measured> = runs.collect();
    v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    v[v.len() / 2]
}

/// trainctl's sync and rsync's, trainctl first in even rounds.
async fn both(
    round: usize,
    ours: impl AsyncFnOnce() -> anyhow::Result<Measured>,
    theirs: impl FnOnce() -> Measured,
) -> anyhow::Result<(Measured, Measured)> {
    if round.is_multiple_of(2) {
        let o = ours().await?;
        Ok((o, theirs()))
    } else {
        let t = theirs();
        Ok((ours().await?, t))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let log_mb: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(256);
    let tree_mb: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(500);
    let sshd = Sshd::start();
    let work = TempDir::new("trainctl-bench-ssh");
    let kh = work.path().join("known_hosts");
    let root = work.path().join("remote/.trainctl");
    let target = SshTarget::resolve(
        "127.0.0.1",
        Some("root"),
        Some(sshd.port),
        Some(&sshd.client_key),
        &SshConfig::default(),
        &kh,
        true,
    );
    let r = SshRemote::connect(target, Some(root.to_str().unwrap())).await?;
    let log_only = std::env::var_os("BENCH_LOG_ONLY").is_some();
    let sync_only = std::env::var_os("BENCH_SYNC_ONLY").is_some();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);

    // ---- 1. log follow
    std::fs::create_dir_all(&root)?;
    if !sync_only {
        let log = root.join("bench.log");
        {
            let lines = [
                "step=1234 loss=0.4567 lr=3e-4 grad_norm=1.25\n",
                "{'loss': 2.3051, 'learning_rate': 4.9e-05, 'epoch': 0.05}\n",
                "1875/1875 [==============================] - 5s 2ms/step - loss: 0.2950 - accuracy: 0.9146\n",
                "2024-05-01 12:00:01,123 INFO trainer.py:88 saving checkpoint to /ckpt/step_1234.pt\n",
            ];
            let mut f = std::io::BufWriter::new(std::fs::File::create(&log)?);
            let mut n = 0;
            let mut i = 0;
            while n < log_mb << 20 {
                f.write_all(lines[i % 4].as_bytes())?;
                n += lines[i % 4].len();
                i += 1;
            }
            f.flush()?;
        }
        let size = std::fs::metadata(&log)?.len();
        let mut best_cat = f64::MAX;
        let mut best_follow = f64::MAX;
        let mut best_parse = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let out = Command::new("ssh")
                .args(ssh_opts(&sshd, &kh))
                .arg("root@127.0.0.1")
                .arg(format!("cat {}", log.display()))
                .stdout(std::process::Stdio::piped())
                .output()?;
            assert_eq!(out.stdout.len() as u64, size);
            best_cat = best_cat.min(t.elapsed().as_secs_f64());

            // The follower's read: one streamed command from the stored offset, chunks
            // through a bounded channel (32 chunks in flight at most).
            let path = log.to_str().unwrap();
            let t = Instant::now();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
            let count = tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(c) = rx.recv().await {
                    n += c.len() as u64;
                }
                n
            });
            r.stream_file(path, 0, tx).await?;
            assert_eq!(count.await?, size);
            best_follow = best_follow.min(t.elapsed().as_secs_f64());

            // The same with metric parsing on the receiving side.
            let t = Instant::now();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
            let parse = tokio::spawn(async move {
                let mut parser = trainctl::metrics::LogParser::new();
                let mut points = 0u64;
                while let Some(c) = rx.recv().await {
                    parser.feed(&c, &mut |_| points += 1);
                }
                points
            });
            r.stream_file(path, 0, tx).await?;
            let points = parse.await?;
            assert!(points > 0);
            best_parse = best_parse.min(t.elapsed().as_secs_f64());
        }
        let mbs = |s: f64| size as f64 / 1e6 / s;
        println!("log follow over ssh, {} MB (best of 3)", size >> 20);
        println!(
            "  ssh host cat             {:.2} s  {:.0} MB/s",
            best_cat,
            mbs(best_cat)
        );
        println!(
            "  trainctl follow          {:.2} s  {:.0} MB/s  = {:.0}% of ssh cat (target >= 80%), one round trip, <= 32 chunks in memory",
            best_follow,
            mbs(best_follow),
            100.0 * best_cat / best_follow
        );
        println!(
            "  trainctl follow + parse  {:.2} s  {:.0} MB/s  = {:.0}% of ssh cat",
            best_parse,
            mbs(best_parse),
            100.0 * best_cat / best_parse
        );
        std::fs::remove_file(&log)?;
    }
    if log_only {
        return Ok(());
    }

    // ---- 2. sync vs rsync
    let files = 10_000usize;
    let per = (tree_mb << 20) / files;
    let src = work.path().join("tree");
    eprintln!("writing the {tree_mb} MB tree…");
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut buf = vec![0u8; per];
    for i in 0..files {
        let d = src.join(format!("pkg{:03}", i % 100));
        std::fs::create_dir_all(&d)?;
        for b in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let bytes = seed.to_le_bytes();
            b.copy_from_slice(&bytes[..b.len()]);
        }
        std::fs::write(d.join(format!("f{i:05}.bin")), &buf)?;
    }
    // One measured sync by trainctl into `project` (with its local manifest cache), and one
    // by rsync into `dst`; each starts from flushed dirty pages and counts the whole
    // machine's CPU (both ends run here).
    let ours = async |project: &str, cache: &Path, expect: Option<usize>| {
        settle();
        let (b0, e0, c0) = (r.bytes_sent(), r.exec_count(), machine_cpu());
        let t = Instant::now();
        let plan = sync::prepare_with(&r, project, &src, &[], Some(cache))
            .await
            .context("prepare")?;
        sync::apply_with(&r, project, &src, &plan, Some(cache))
            .await
            .context("apply")?;
        let m = Measured {
            secs: t.elapsed().as_secs_f64(),
            bytes: r.bytes_sent() - b0,
            trips: r.exec_count() - e0,
            cpu: machine_cpu() - c0,
        };
        if let Some(n) = expect {
            assert_eq!(plan.upload.len(), n);
        }
        anyhow::Ok(m)
    };
    let theirs = |dst: &Path| {
        std::fs::create_dir_all(dst).expect("rsync destination");
        settle();
        let c0 = machine_cpu();
        let (secs, bytes) = rsync(&sshd, &kh, &src, dst);
        Measured {
            secs,
            bytes,
            trips: 0,
            cpu: machine_cpu() - c0,
        }
    };

    // First sync: `rounds` rounds (BENCH_ROUNDS, default 5), alternating who goes first,
    // each into fresh destinations; medians are reported, of wall time and of CPU time.
    // Every round writes into new directories and nothing is deleted while measuring: ext4
    // skips the inodes of files deleted in the last seconds when it allocates new ones
    // (`recently_deleted`, seen in `perf`), which made whoever followed a deletion pay for
    // it, at random.
    let dest = |k: usize| {
        (
            format!("bench{k}"),
            work.path().join(format!("sync-cache-{k}.json")),
            work.path().join(format!("rsync-dst-{k}")),
        )
    };
    let mut first_runs = Vec::new();
    for k in 0..rounds {
        let (project, cache, rs_dst) = dest(k);
        let (o, t) = both(
            k,
            async || ours(&project, &cache, None).await,
            || theirs(&rs_dst),
        )
        .await?;
        eprintln!(
            "  first sync round {k}: trainctl {:.2} s ({:.2} CPU s), rsync {:.2} s ({:.2} CPU s)",
            o.secs, o.cpu, t.secs, t.cpu
        );
        first_runs.push((o, t));
    }

    // Then `rounds` times, continuing from the last round's destinations: change 10 files
    // (one byte each, different files each time) and sync; then sync the unchanged tree.
    let (project, cache, rs_dst) = dest(rounds - 1);
    let mut changed_runs = Vec::new();
    let mut unchanged_runs = Vec::new();
    for k in 0..rounds {
        for i in 0..10 {
            let n = (i * 997 + k * 131) % files;
            let f = src.join(format!("pkg{:03}/f{n:05}.bin", n % 100));
            let mut data = std::fs::read(&f)?;
            data[per / 2] ^= 0xff;
            std::fs::write(&f, data)?;
        }
        changed_runs.push(
            both(
                k,
                async || ours(&project, &cache, Some(10)).await,
                || theirs(&rs_dst),
            )
            .await?,
        );
        unchanged_runs.push(
            both(
                k,
                async || ours(&project, &cache, Some(0)).await,
                || theirs(&rs_dst),
            )
            .await?,
        );
    }

    println!("sync over ssh, {files} files, {} MB", (per * files) >> 20);
    for (label, runs) in [
        ("first (median)", &first_runs),
        ("10 changed (median)", &changed_runs),
        ("unchanged (median)", &unchanged_runs),
    ] {
        let ours = median_run(runs.iter().map(|r| r.0));
        let theirs = median_run(runs.iter().map(|r| r.1));
        println!(
            "  {label:<19} trainctl {:.2} s, {} bytes, {} round trips | rsync -a {:.2} s, {} bytes | time {:.2}x rsync's, bytes {:.2}x rsync's",
            ours.secs,
            ours.bytes,
            ours.trips,
            theirs.secs,
            theirs.bytes,
            ours.secs / theirs.secs,
            if theirs.bytes > 0 {
                ours.bytes as f64 / theirs.bytes as f64
            } else {
                0.0
            }
        );
    }
    let cpu = |pick: fn(&(Measured, Measured)) -> f64| {
        let mut x: Vec<f64> = first_runs.iter().map(pick).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (cpu_ours, cpu_theirs) = (cpu(|r| r.0.cpu), cpu(|r| r.1.cpu));
    println!(
        "  first sync CPU (whole machine, median of {rounds}): trainctl {cpu_ours:.2} s, rsync {cpu_theirs:.2} s = {:.2}x",
        cpu_ours / cpu_theirs
    );
    Ok(())
}
