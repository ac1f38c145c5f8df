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

/// Flush dirty pages so neither side pays for the other's writes.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_millis(300));
}

fn rsync(sshd: &Sshd, kh: &Path, src: &Path, dst: &Path) -> (f64, u64) {
    settle();
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

    // ---- 1. log follow
    std::fs::create_dir_all(&root)?;
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
    let cache = work.path().join("sync-cache.json");
    let rs_dst = work.path().join("rsync-dst");
    std::fs::create_dir_all(&rs_dst)?;
    let round = |before: u64| r.exec_count() - before;

    // First sync: three rounds, alternating who goes first, each into fresh destinations;
    // the medians are reported.
    let code = root.join("code/bench");
    let manifest = root.join("manifests/bench.json");
    let mut ours_runs = Vec::new();
    let mut theirs_runs = Vec::new();
    let mut first = (0.0, 0, 0);
    let mut rs_first = (0.0, 0);
    for round_no in 0..3 {
        let _ = std::fs::remove_dir_all(&code);
        let _ = std::fs::remove_file(&manifest);
        let _ = std::fs::remove_file(&cache);
        let _ = std::fs::remove_dir_all(&rs_dst);
        std::fs::create_dir_all(&rs_dst)?;
        let ours = async || -> anyhow::Result<(f64, u64, u64)> {
            settle();
            let (b0, e0) = (r.bytes_sent(), r.exec_count());
            let t = Instant::now();
            let plan = sync::prepare_with(&r, "bench", &src, &[], Some(&cache))
                .await
                .context("first prepare")?;
            sync::apply_with(&r, "bench", &src, &plan, Some(&cache))
                .await
                .context("first apply")?;
            Ok((
                t.elapsed().as_secs_f64(),
                r.bytes_sent() - b0,
                r.exec_count() - e0,
            ))
        };
        let (o, t) = if round_no % 2 == 0 {
            let o = ours().await?;
            (o, rsync(&sshd, &kh, &src, &rs_dst))
        } else {
            let t = rsync(&sshd, &kh, &src, &rs_dst);
            (ours().await?, t)
        };
        eprintln!(
            "  first sync round {round_no}: trainctl {:.2} s, rsync {:.2} s",
            o.0, t.0
        );
        ours_runs.push(o.0);
        theirs_runs.push(t.0);
        first = o;
        rs_first = t;
    }
    ours_runs.sort_by(f64::total_cmp);
    theirs_runs.sort_by(f64::total_cmp);
    first.0 = ours_runs[1];
    rs_first.0 = theirs_runs[1];

    for i in 0..10 {
        let f = src.join(format!("pkg{:03}/f{:05}.bin", (i * 7) % 100, i * 7));
        let mut data = std::fs::read(&f)?;
        data[0] ^= 0xff;
        std::fs::write(&f, data)?;
    }
    settle();
    let (b0, e0) = (r.bytes_sent(), r.exec_count());
    let t = Instant::now();
    let plan = sync::prepare_with(&r, "bench", &src, &[], Some(&cache)).await?;
    sync::apply_with(&r, "bench", &src, &plan, Some(&cache)).await?;
    assert_eq!(plan.upload.len(), 10);
    let changed = (t.elapsed().as_secs_f64(), r.bytes_sent() - b0, round(e0));
    let rs_changed = rsync(&sshd, &kh, &src, &rs_dst);

    settle();
    let (b0, e0) = (r.bytes_sent(), r.exec_count());
    let t = Instant::now();
    let plan = sync::prepare_with(&r, "bench", &src, &[], Some(&cache)).await?;
    sync::apply_with(&r, "bench", &src, &plan, Some(&cache)).await?;
    assert!(plan.is_noop());
    let unchanged = (t.elapsed().as_secs_f64(), r.bytes_sent() - b0, round(e0));
    let rs_unchanged = rsync(&sshd, &kh, &src, &rs_dst);

    println!("sync over ssh, {files} files, {} MB", (per * files) >> 20);
    for (label, ours, theirs) in [
        ("first (median of 3)", first, rs_first),
        ("10 changed", changed, rs_changed),
        ("unchanged", unchanged, rs_unchanged),
    ] {
        println!(
            "  {label:<19} trainctl {:.2} s, {} bytes, {} round trips | rsync -a {:.2} s, {} bytes | time {:.2}x rsync's, bytes {:.2}x rsync's",
            ours.0,
            ours.1,
            ours.2,
            theirs.0,
            theirs.1,
            ours.0 / theirs.0,
            if theirs.1 > 0 {
                ours.1 as f64 / theirs.1 as f64
            } else {
                0.0
            }
        );
    }
    Ok(())
}
