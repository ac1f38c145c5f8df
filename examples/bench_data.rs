//! Placing a dataset, as a user waits for it: the release `trainctl data --instance ID`
//! (process start to exit: connection, listing, transfer, the machine's bookkeeping)
//! against `rsync -a --delete -e ssh SRC/ host:DST/` of the same folder over the same test
//! sshd, in the same run, both through one loopback proxy that counts the bytes in both
//! directions.
//! First placements (every byte moves; a fresh machine folder and, for trainctl, no local
//! hash cache: the first time ever) in alternating rounds, medians; then a second
//! placement of the unchanged dataset (trainctl: one round trip; rsync: its unchanged run).
//!
//! `cargo build --release && cargo run --release --example bench_data [-- TOTAL_MB FILES]`
//! (default 2048 MB in 20 000 files; needs openssh-server, openssh-client and rsync).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use trainctl::testkit::Sshd;
use trainctl::testkit::proxy::Proxy;

fn xorshift(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// `files` files of random bytes, `total_mb` MiB in all (sizes 0.5x to 1.5x the mean), in
/// 100 folders; reused when already there.
fn make_dataset(dir: &Path, total_mb: u64, files: u64) {
    let stamp = dir.with_extension("made");
    let want = format!("{total_mb} {files}");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let mean = (total_mb << 20) / files;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = Vec::new();
    for i in 0..files {
        let d = dir.join(format!("shard-{:03}", i % 100));
        std::fs::create_dir_all(&d).unwrap();
        let size = mean / 2 + (i * 7919 % 1000) * mean / 1000;
        buf.resize(size as usize, 0);
        xorshift(&mut x, &mut buf);
        std::fs::write(d.join(format!("img-{i:06}.bin")), &buf).unwrap();
    }
    std::fs::write(&stamp, want).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn run(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total_mb: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2048);
    let files: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/release/trainctl")
        .canonicalize()
        .ok()
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release/trainctl"))
        })
        .expect("build the release binary first: cargo build --release");
    let tmp = std::env::temp_dir().join("trainctl-bench-data");
    std::fs::create_dir_all(&tmp).unwrap();
    let src = tmp.join("dataset");
    eprintln!("making the dataset ({total_mb} MiB in {files} files)...");
    make_dataset(&src, total_mb, files);

    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port, std::time::Duration::ZERO);
    let (port, counter) = (proxy.port, proxy.counter.clone());
    let remote = tmp.join("remote");
    let rsync_dst = tmp.join("rsync-dst");
    let data = tmp.join("data");
    let project = tmp.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("trainctl.toml"),
        format!(
            "name = \"bench\"\ncommand = \"true\"\n[[data]]\nsrc = \"{}\"\ndst = \"ds\"\n",
            src.display()
        ),
    )
    .unwrap();
    let cfg = tmp.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[providers.ssh]\n[[providers.ssh.hosts]]\nname = \"lab1\"\naddress = \"127.0.0.1\"\nuser = \"root\"\nport = {port}\nidentity_file = \"{}\"\ngpus = 0\nremote_dir = \"{}/.trainctl\"\n",
            data.display(),
            sshd.client_key.display(),
            remote.display()
        ),
    )
    .unwrap();
    let tc = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .env("TRAINCTL_CONFIG", &cfg)
            .current_dir(&project);
        c
    };
    let _ = std::fs::remove_dir_all(&data);
    let out = tc(&[
        "launch",
        "--provider",
        "ssh",
        "--accept-new-host-key",
        "--json",
    ])
    .output()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let inst = v["id"].as_str().unwrap().to_string();
    // rsync's ssh trusts the same host key, pinned.
    let ssh = sshd.openssh_command(port, &tmp);
    let rsync = || {
        let mut c = Command::new("rsync");
        c.args(["-a", "--delete", "-e", &ssh])
            .arg(format!("{}/", src.display()))
            .arg(format!("root@127.0.0.1:{}/", rsync_dst.display()));
        c
    };

    let (mut ours, mut theirs, mut ours_b, mut theirs_b) = (vec![], vec![], vec![], vec![]);
    for round in 0..3 {
        // A first placement: nothing on the machine, nothing known here.
        let _ = std::fs::remove_dir_all(remote.join(".trainctl/data"));
        let _ = std::fs::remove_dir_all(remote.join(".trainctl/datasets"));
        let _ = std::fs::remove_dir_all(data.join("datasets"));
        let _ = std::fs::remove_dir_all(&rsync_dst);
        counter.take();
        let t = run(&mut tc(&["data", "--instance", &inst]));
        let b = counter.take();
        let r = run(&mut rsync());
        let rb = counter.take();
        eprintln!(
            "round {round}: trainctl data {t:.2} s {:.1} MB; rsync -a --delete {r:.2} s {:.1} MB",
            b as f64 / 1e6,
            rb as f64 / 1e6
        );
        ours.push(t);
        theirs.push(r);
        ours_b.push(b as f64);
        theirs_b.push(rb as f64);
    }
    // Second placement, unchanged.
    counter.take();
    let t2 = run(&mut tc(&["data", "--instance", &inst]));
    let b2 = counter.take();
    let r2 = run(&mut rsync());
    let rb2 = counter.take();
    let (t, r) = (median(ours), median(theirs));
    let (b, rb) = (median(ours_b), median(theirs_b));
    println!(
        "first placement, {total_mb} MiB in {files} files (median of 3): trainctl {t:.2} s, rsync -a --delete {r:.2} s: {:.2}x rsync's time; bytes {:.1} MB vs {:.1} MB: {:.3}x",
        t / r,
        b / 1e6,
        rb / 1e6,
        b / rb
    );
    println!(
        "second placement (unchanged): trainctl {t2:.3} s {:.1} KB, rsync -a --delete {r2:.3} s {:.1} KB",
        b2 as f64 / 1e3,
        rb2 as f64 / 1e3
    );
    let _ = Command::new(&bin)
        .args(["terminate", &inst])
        .env("TRAINCTL_CONFIG", &cfg)
        .output();
}
