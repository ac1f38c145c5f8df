//! The SSH transport alone against a real sshd on loopback: trainctl's log follower (one
//! stream from the stored offset, in process, parsing and the store left out) vs
//! `ssh host cat FILE`, and the same with metric parsing on top. The end-to-end figures,
//! as a user waits for them, are `bench_follow` (logs) and `bench_sync` (code sync).
//!
//! `cargo run --release --example bench_ssh [-- LOG_MB]` (needs openssh-server and
//! openssh-client).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let log_mb: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(256);
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

    // ---- 1. log follow
    std::fs::create_dir_all(&root)?;
    {
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
            r.stream_file(path, 0, None, tx).await?;
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
            r.stream_file(path, 0, None, tx).await?;
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
    Ok(())
}
