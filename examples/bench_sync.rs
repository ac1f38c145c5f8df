//! Code sync as a user waits for it: the release `trainctl sync --instance ID` (process
//! start to exit: connection, walk, plan, transfer, the machine's bookkeeping) against
//! `rsync -a --delete -e ssh SRC/ host:DST/` with the same exclusions, over the same test
//! sshd, in the same run, both through one loopback proxy that counts the bytes in both
//! directions (and, with `BENCH_RTT_MS`, delays each direction by half of it: a far
//! machine).
//!
//! The project is a realistic ML one: 6 000 text files of 1-20 KB in 60 packages, 200
//! files of 0.1-1 MB, four 50 MB files, 2 symlinks, a gitignored `.venv/` (2 000 files)
//! and `__pycache__/` folders. Cases, each in 5 rounds (`BENCH_ROUNDS`) alternating who
//! goes first, medians:
//! first sync (a new machine folder each round, nothing known locally; after one warm-up
//! pair not counted), unchanged, 10
//! files edited + 1 added + 1 removed, 1 MiB changed inside a 50 MB file, a 50 MB file
//! appended by 1 MiB, 1 MiB inserted in the middle of a 50 MB file (shifting the rest).
//!
//! `cargo build --release && cargo run --release --example bench_sync`
//! (`BENCH_RTT_MS=50` for the far machine; needs openssh-server, openssh-client, rsync).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use trainctl::testkit::Sshd;
use trainctl::testkit::proxy::Proxy;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// Source-like text of about `n` bytes.
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "def",
            "return",
            "self",
            "import",
            "torch",
            "x",
            "loss",
            "model",
            "batch",
            "for",
            "in",
            "range",
            "if",
            "else",
            "optimizer",
            "step",
            "lr",
            "=",
            "+",
            "(",
            ")",
            ":",
            "config",
            "data",
            "logits",
            "targets",
            "nn.Linear",
            "forward",
            "0.1",
            "None",
        ];
        let mut v = Vec::with_capacity(n + 80);
        while v.len() < n {
            let indent = self.below(3) as usize * 4;
            v.extend(std::iter::repeat_n(b' ', indent));
            for _ in 0..3 + self.below(8) {
                v.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
                v.push(b' ');
            }
            v.push(b'\n');
        }
        v
    }
}

/// The project at `dir` (made once; reused when its stamp says so).
fn make_project(dir: &Path) {
    let stamp = dir.with_extension("made");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some("v1") {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let w = |p: &str, b: &[u8]| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b).unwrap();
    };
    w(
        "trainctl.toml",
        b"name = \"bench\"\ncommand = \"python train.py\"\n",
    );
    w(".gitignore", b".venv/\n__pycache__/\n");
    for i in 0..6000 {
        let n = 1024 + r.below(19 * 1024) as usize;
        let t = r.text(n);
        w(&format!("pkg/mod{:02}/file{i:04}.py", i % 60), &t);
    }
    for i in 0..200 {
        let n = 100_000 + r.below(900_000) as usize;
        let b = r.bytes(n);
        w(&format!("assets/blob{i:03}.bin"), &b);
    }
    for i in 0..4 {
        let b = r.bytes(50 << 20);
        w(&format!("weights/w{i}.bin"), &b);
    }
    std::os::unix::fs::symlink("weights/w0.bin", dir.join("latest.bin")).unwrap();
    std::os::unix::fs::symlink("mod00/file0000.py", dir.join("pkg/main.py")).unwrap();
    for i in 0..2000 {
        let t = r.text(2048);
        w(
            &format!(".venv/lib/site-packages/p{:02}/m{i}.py", i % 40),
            &t,
        );
    }
    for i in 0..60 {
        let b = r.bytes(4096);
        w(
            &format!("pkg/mod{i:02}/__pycache__/file.cpython-311.pyc"),
            &b,
        );
    }
    std::fs::write(&stamp, "v1").unwrap();
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

/// Rewrite `len` bytes of `path` at `at` with new random bytes.
fn overwrite(path: &Path, at: u64, len: usize, r: &mut Rng) {
    use std::io::{Seek, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(std::io::SeekFrom::Start(at)).unwrap();
    f.write_all(&r.bytes(len)).unwrap();
}

fn main() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/release/trainctl")
        .canonicalize()
        .ok()
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("release/trainctl"))
        })
        .expect("build the release binary first: cargo build --release");
    let rtt_ms: u64 = std::env::var("BENCH_RTT_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let tmp = std::env::temp_dir().join("trainctl-bench-sync");
    std::fs::create_dir_all(&tmp).unwrap();
    let src = tmp.join("project");
    eprintln!("making the project...");
    make_project(&src);

    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port, Duration::from_millis(rtt_ms / 2));
    let (port, counter) = (proxy.port, proxy.counter.clone());
    let run_dir = tmp.join(format!("run-{}", std::process::id()));
    let data = run_dir.join("data");
    let cfg = run_dir.join("config.toml");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut hosts = String::new();
    // One machine folder per first-sync round, and one for a warm-up pair not counted (the
    // project was just written: the disk is still flushing it).
    for k in 0..=rounds {
        hosts.push_str(&format!(
            "[[providers.ssh.hosts]]\nname = \"m{k}\"\naddress = \"127.0.0.1\"\nuser = \"root\"\nport = {port}\nidentity_file = \"{}\"\ngpus = 0\nremote_dir = \"{}/remote-{k}/.trainctl\"\n",
            sshd.client_key.display(),
            run_dir.display()
        ));
    }
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[providers.ssh]\n{hosts}",
            data.display()
        ),
    )
    .unwrap();
    let tc = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args).env("TRAINCTL_CONFIG", &cfg).current_dir(&src);
        c
    };
    let mut instances = Vec::new();
    for _ in 0..=rounds {
        let out = tc(&[
            "launch",
            "--provider",
            "ssh",
            "--accept-new-host-key",
            "--json",
        ])
        .output()
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("launch: {}", String::from_utf8_lossy(&out.stderr)));
        instances.push(v["id"].as_str().unwrap().to_string());
    }
    // rsync's ssh trusts the same host key, pinned.
    let ssh = sshd.openssh_command(port, &run_dir);
    let rsync = |k: usize| {
        let mut c = Command::new("rsync");
        c.args(["-a", "--delete", "-e", &ssh])
            .args([
                "--exclude=/.git/",
                "--exclude=/trainctl-out/",
                "--exclude=/.venv/",
                "--exclude=__pycache__/",
            ])
            .arg(format!("{}/", src.display()))
            .arg(format!("root@127.0.0.1:{}/rsync-{k}/", run_dir.display()));
        c
    };
    let settle = || {
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_millis(500));
    };
    // One measured pair: (trainctl s, bytes, rsync s, bytes), order alternating by round.
    let pair = |k: usize, round: usize| {
        settle();
        let ours = |counter: &trainctl::testkit::proxy::Counter| {
            counter.take();
            let t = run(&mut tc(&["sync", "--instance", &instances[k]]));
            (t, counter.take() as f64)
        };
        let theirs = |counter: &trainctl::testkit::proxy::Counter| {
            counter.take();
            let t = run(&mut rsync(k));
            (t, counter.take() as f64)
        };
        if round.is_multiple_of(2) {
            let a = ours(&counter);
            settle();
            let b = theirs(&counter);
            (a, b)
        } else {
            let b = theirs(&counter);
            settle();
            let a = ours(&counter);
            (a, b)
        }
    };
    let mut table: Vec<(String, f64, f64, f64, f64)> = Vec::new();
    let mut record = |label: &str, runs: Vec<((f64, f64), (f64, f64))>| {
        let t = median(runs.iter().map(|r| r.0.0).collect());
        let b = median(runs.iter().map(|r| r.0.1).collect());
        let rt = median(runs.iter().map(|r| r.1.0).collect());
        let rb = median(runs.iter().map(|r| r.1.1).collect());
        for (i, r) in runs.iter().enumerate() {
            eprintln!(
                "  {label} round {i}: trainctl {:.3} s {:.1} KB | rsync {:.3} s {:.1} KB",
                r.0.0,
                r.0.1 / 1e3,
                r.1.0,
                r.1.1 / 1e3
            );
        }
        table.push((label.to_string(), t, b, rt, rb));
    };

    // First sync: a new machine folder each round (nothing deleted while measuring).
    let _warm_up = pair(rounds, 0);
    let firsts: Vec<_> = (0..rounds).map(|k| pair(k, k)).collect();
    record("first sync", firsts);
    if let Some(secs) = std::env::var("BENCH_PAUSE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Time to try things by hand: the same config, instance and project.
        eprintln!(
            "paused {secs} s: TRAINCTL_CONFIG={} trainctl sync --instance {} (in {}); rsync -e '{ssh}'",
            cfg.display(),
            instances[0],
            src.display()
        );
        std::thread::sleep(Duration::from_secs(secs));
    }
    let unchanged: Vec<_> = (0..rounds).map(|k| pair(0, k)).collect();
    record("unchanged", unchanged);

    let mut r = Rng(0x1234_5678_9abc_def1);
    let mut edits = Vec::new();
    for round in 0..rounds {
        for j in 0..10 {
            let i = (round * 10 + j) * 97 % 6000;
            let p = src.join(format!("pkg/mod{:02}/file{i:04}.py", i % 60));
            let mut t = std::fs::read(&p).unwrap();
            let at = t.len() / 2;
            t.splice(at..at, r.text(40));
            std::fs::write(&p, t).unwrap();
        }
        std::fs::write(src.join(format!("pkg/new_{round}.py")), r.text(3000)).unwrap();
        let gone = 5000 + round;
        let _ = std::fs::remove_file(src.join(format!("pkg/mod{:02}/file{gone:04}.py", gone % 60)));
        edits.push(pair(0, round));
    }
    record("10 edited, 1 added, 1 removed", edits);

    let w = |i: usize| src.join(format!("weights/w{i}.bin"));
    let mut inside = Vec::new();
    for round in 0..rounds {
        overwrite(&w(1), (10 + 10 * round as u64) << 20, 1 << 20, &mut r);
        inside.push(pair(0, round));
    }
    record("1 MiB changed inside 50 MB", inside);
    let mut appended = Vec::new();
    for round in 0..rounds {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(w(2)).unwrap();
        f.write_all(&r.bytes(1 << 20)).unwrap();
        drop(f);
        appended.push(pair(0, round));
    }
    record("50 MB appended by 1 MiB", appended);
    let mut inserted = Vec::new();
    for round in 0..rounds {
        let mut b = std::fs::read(w(3)).unwrap();
        let at = (20 + round) << 20;
        b.splice(at..at, r.bytes((1 << 20) + 123));
        std::fs::write(w(3), b).unwrap();
        inserted.push(pair(0, round));
    }
    record("1 MiB inserted mid 50 MB", inserted);

    // The machine's copies are the same as the local tree.
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", ".venv", "-x", "__pycache__"])
        .arg(&src)
        .arg(run_dir.join("remote-0/.trainctl/code/bench"))
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "the machine's tree differs: {}",
        String::from_utf8_lossy(&diff.stdout)
    );

    println!(
        "code sync, release CLI vs rsync -a --delete over ssh, round trip {} ms, medians of {rounds}:",
        rtt_ms
    );
    println!("| case | trainctl | rsync -a --delete | time | bytes |");
    println!("|---|---|---|---|---|");
    for (label, t, b, rt, rb) in &table {
        println!(
            "| {label} | {t:.3} s, {} | {rt:.3} s, {} | **{:.2}x** | **{:.2}x** |",
            human(*b),
            human(*rb),
            t / rt,
            b / rb
        );
    }
    for inst in &instances {
        let _ = tc(&["terminate", inst]).output();
    }
    // Restore the project's 50 MB files for the next run.
    let _ = std::fs::remove_file(tmp.join("project.made"));
    let _ = std::fs::remove_dir_all(&run_dir);
}

fn human(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} KB", b / 1e3)
    }
}
