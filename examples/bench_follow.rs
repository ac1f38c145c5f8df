//! End-to-end log follow, as a user waits for it: the release `trainctl logs -f JOB >
//! FILE` of a finished job whose log nobody read yet (transport, parsing, the store, the
//! local copy and printing), from process start to exit, against the baseline a user would
//! run in the same run: `grep -c loss` of the same file on `local`, `ssh host cat FILE`
//! over the same test sshd. Also the peak RSS of `trainctl logs -f` and how much the store
//! grew, per byte of log. Mixed log (metrics on most lines, as `bench_parse` writes) and
//! a plain one (no metric). On `local`, after the mixed follow, reading a series back:
//! `trainctl metrics JOB --json --name loss` to its first byte and to its exit.
//!
//! `BENCH_FOLLOW_CASES="ssh mixed"` runs only the cases whose names hold every word;
//! `BENCH_FOLLOW_WRAP="perf record -o F -F 999"` runs each follow under the given command;
//! `BENCH_FOLLOW_ROUNDS=N` sets the rounds per case (default 5; medians are reported);
//! `BENCH_FOLLOW_AGAINST=PATH` also follows with another `trainctl` binary (an older
//! build) in every round, between the baseline and this one, and reports it on a line of
//! its own against the same baseline: on a noisy machine, an A/B measured minutes apart
//! compares two periods rather than two builds.
//!
//! `cargo build --release && cargo run --release --example bench_follow [-- SIZE_MB]`
//! (default 1024; needs openssh-server and openssh-client).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use trainctl::testkit::Sshd;

const MIXED: &[&str] = trainctl::testkit::MIXED_LOG_LINES;

const PLAIN: &[&str] = &[
    "2024-05-01 12:00:01,123 INFO data.py:41 opened shard 00017 of the training corpus\n",
    "warning: this is a plain line of prose without any metric in it at all\n",
];

/// A log of `mb` MiB of `lines` repeated, with a step counter that moves (so the values
/// are not all the same), written once and reused.
fn make_log(path: &Path, mb: u64, lines: &[&str]) {
    let want = mb << 20;
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == want {
        return;
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut written = 0u64;
    let mut i = 0usize;
    while written < want {
        let step = (i / lines.len()).to_string();
        let l = lines[i % lines.len()].replace("1234", &step);
        let b = l.as_bytes();
        let b = &b[..b.len().min((want - written) as usize)];
        f.write_all(b).unwrap();
        written += b.len() as u64;
        i += 1;
    }
    f.flush().unwrap();
}

/// Run `cmd` with stdout to `out`: seconds from spawn to exit, its own peak RSS (MiB) and
/// the CPU seconds (user + system) it and the children it waited for used. On a busy
/// two-core machine wall time swings with the kernel's writeback; CPU time much less.
/// Both sides start the same way: with nothing left to write back (`sync` first), so
/// neither pays for the GiBs the other side or a job's setup wrote just before it.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
fn timed(cmd: &mut Command, out: &Path) -> (f64, f64, f64) {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let t = Instant::now();
    let child = cmd
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills the structs given.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let secs = t.elapsed().as_secs_f64();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?}"
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs,
        ru.ru_maxrss as f64 / 1024.0,
        tv(ru.ru_utime) + tv(ru.ru_stime),
    )
}

/// Lines of a file, a last one without its newline included (read in pieces: this
/// process's own size would show in its children's peak RSS).
fn newlines(p: &Path) -> usize {
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut n, mut last) = (0, b'\n');
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count();
        last = buf[k - 1];
    }
    n + usize::from(last != b'\n')
}

/// A baseline round's seconds and CPU seconds.
fn secs_cpu((secs, _, cpu): (f64, f64, f64)) -> (f64, f64) {
    (secs, cpu)
}

fn bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("trainctl")
}

fn db_size(data: &Path) -> u64 {
    ["trainctl.db", "trainctl.db-wal"]
        .iter()
        .map(|f| {
            std::fs::metadata(data.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

struct Case {
    secs: f64,
    rss_mib: f64,
    cpu: f64,
    store_growth: f64,
    out_lines: usize,
    /// `metrics JOB --json --name loss` after the follow: seconds to its first byte, to
    /// its exit, and the points it printed.
    read_back: Option<(f64, f64, usize)>,
}

/// The release `trainctl metrics JOB --json --name NAME` (a series streamed as it is
/// unpacked), from spawn: seconds to the first byte on its stdout, seconds to its exit,
/// and how many points it printed (one per line between `[` and `]`).
fn read_back(mut cmd: Command) -> (f64, f64, usize) {
    use std::io::Read;
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    let first_byte = t.elapsed().as_secs_f64();
    let (mut lines, mut buf) = (0usize, vec![0u8; 1 << 20]);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    assert!(child.wait().unwrap().success());
    (
        first_byte,
        t.elapsed().as_secs_f64(),
        lines.saturating_sub(1),
    )
}

/// A finished job whose log is `log` (the command `cat`s it), on `provider`; then
/// `trainctl logs -f` of it, timed.
fn follow(
    bin: &Path,
    work: &Path,
    log: &Path,
    provider_cfg: &str,
    provider: &str,
    launch: &[&str],
) -> Case {
    let data = work.join("data");
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work.join("proj")).unwrap();
    let cfg = work.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\npoll_interval_ms = 50\n{provider_cfg}",
            data.display()
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("proj/trainctl.toml"),
        format!("name = \"follow\"\ncommand = \"cat {}\"\n", log.display()),
    )
    .unwrap();
    let tc = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .env("TRAINCTL_CONFIG", &cfg)
            .current_dir(work.join("proj"));
        c
    };
    let mut args = vec!["launch", "--provider", provider, "--json"];
    args.extend(launch);
    let out = tc(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let inst = launched["id"].as_str().unwrap().to_string();
    let out = tc(&["run", "--instance", &inst, "--detach", "--no-pull"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Let the job finish (cat of a file in the page cache).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = db_size(&data);
    let printed = work.join("printed");
    // BENCH_FOLLOW_WRAP="perf record -o F -F 999" profiles the follow itself.
    let mut cmd = match std::env::var("BENCH_FOLLOW_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let mut w = wrap.split_whitespace();
            let mut c = Command::new(w.next().unwrap());
            c.args(w)
                .arg(bin)
                .env("TRAINCTL_CONFIG", &cfg)
                .current_dir(work.join("proj"));
            c
        }
        _ => tc(&[]),
    };
    cmd.args(["logs", "-f", &job]);
    let (secs, rss_mib, cpu) = timed(&mut cmd, &printed);
    let grown = db_size(&data).saturating_sub(before);
    let read_back = (provider == "local" && log.to_string_lossy().contains("mixed"))
        .then(|| read_back(tc(&["metrics", &job, "--json", "--name", "loss"])));
    let _ = tc(&["terminate", &inst]).output();
    Case {
        secs,
        rss_mib,
        cpu,
        store_growth: grown as f64 / std::fs::metadata(log).unwrap().len() as f64,
        out_lines: newlines(&printed),
        read_back,
    }
}

/// Rounds (`BENCH_FOLLOW_ROUNDS`, default 5), alternating which side goes first: the
/// median baseline round (seconds, CPU seconds) and, for each follower (this build, then
/// the one `BENCH_FOLLOW_AGAINST` names), its round of median time and how its row is
/// labelled (this build's plainly, the other's by its path).
fn rounds(
    mut base: impl FnMut() -> (f64, f64),
    mut ours: impl FnMut(&Path) -> Case,
) -> ((f64, f64), Vec<(String, Case)>) {
    let n: usize = std::env::var("BENCH_FOLLOW_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let bins = followers();
    let mut b = Vec::new();
    let mut o: Vec<Vec<Case>> = bins.iter().map(|_| Vec::new()).collect();
    for r in 0..n {
        if r % 2 == 0 {
            b.push(base());
            for (i, bin) in bins.iter().enumerate().rev() {
                o[i].push(ours(bin));
            }
        } else {
            for (i, bin) in bins.iter().enumerate() {
                o[i].push(ours(bin));
            }
            b.push(base());
        }
    }
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let cases = o
        .into_iter()
        .zip(&bins)
        .enumerate()
        .map(|(i, (mut o, bin))| {
            o.sort_by(|x, y| x.secs.total_cmp(&y.secs));
            let label = match i {
                0 => String::new(),
                _ => format!(" [{}]", bin.display()),
            };
            (label, o.swap_remove(n / 2))
        })
        .collect();
    (b[n / 2], cases)
}

/// The binaries that follow: this build's, then the one to compare it with, if any.
fn followers() -> Vec<PathBuf> {
    let mut bins = vec![bin()];
    if let Some(other) = std::env::var_os("BENCH_FOLLOW_AGAINST").filter(|v| !v.is_empty()) {
        let other = PathBuf::from(other);
        assert!(
            other.exists(),
            "BENCH_FOLLOW_AGAINST: no {}",
            other.display()
        );
        bins.push(other);
    }
    bins
}

/// A case's row: the baseline's seconds, the follow's, their ratio, the follow's peak RSS,
/// the store's growth, and the follow's CPU seconds against the baseline's.
fn print_row(name: &str, baseline: &str, base: (f64, f64), c: &Case, whose: &str) {
    println!(
        "{name}: {baseline} {:.2} s; logs -f {:.2} s; {:.3}x; {:.0} MiB RSS; store +{:.1} %; CPU {:.2} s vs {whose} {:.2} s",
        base.0,
        c.secs,
        base.0 / c.secs,
        c.rss_mib,
        c.store_growth * 100.0,
        c.cpu,
        base.1
    );
}

fn main() {
    let mb: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    assert!(
        bin().exists(),
        "build the release binary first: cargo build --release"
    );
    let tmp = std::env::temp_dir();
    let mixed = tmp.join(format!("trainctl-follow-mixed-{mb}mb.log"));
    let plain = tmp.join(format!("trainctl-follow-plain-{mb}mb.log"));
    make_log(&mixed, mb, MIXED);
    make_log(&plain, mb, PLAIN);
    let work = tmp.join("trainctl-bench-follow");
    println!(
        "log size: {mb} MiB; each row (medians of alternating rounds, each after a sync): baseline, trainctl logs -f, ratio (baseline/trainctl), peak RSS, store growth"
    );

    // BENCH_FOLLOW_CASES="ssh mixed" runs the cases whose names have every word given.
    let cases = std::env::var("BENCH_FOLLOW_CASES").unwrap_or_default();
    let wanted = |name: &str| cases.split_whitespace().all(|w| name.contains(w));

    // local: the baseline is grep -c loss of the same file.
    for (kind, log) in [("mixed", &mixed), ("plain", &plain)] {
        if !wanted(&format!("local {kind}")) {
            continue;
        }
        let sink = work.with_extension("grep");
        // grep exits 1 when nothing matches (the plain log): not a failure here.
        let (base, cases) = rounds(
            || {
                secs_cpu(timed(
                    Command::new("sh")
                        .arg("-c")
                        .arg("grep -c loss \"$0\"; true")
                        .arg(log),
                    &sink,
                ))
            },
            |bin| follow(bin, &work, log, "", "local", &[]),
        );
        for (l, c) in &cases {
            assert_eq!(c.out_lines, newlines(log), "every line printed");
            print_row(
                &format!("local {kind}{l}"),
                "grep -c loss",
                base,
                c,
                "grep's",
            );
            if let Some((first, all, points)) = c.read_back {
                println!(
                    "local {kind}{l}: metrics --json --name loss: first byte {:.0} ms, all {points} points in {all:.2} s",
                    first * 1000.0
                );
            }
        }
    }

    // ssh: the baseline is `ssh host cat FILE` over the same sshd.
    let sshd = Sshd::start();
    let kh = work.with_extension("known_hosts");
    let remote_dir = tmp.join("trainctl-bench-follow-remote");
    let _ = std::fs::remove_dir_all(&remote_dir);
    let cfg = format!(
        "[providers.ssh]\naccept_new_host_keys = true\n[[providers.ssh.hosts]]\nname = \"lab1\"\naddress = \"127.0.0.1\"\nuser = \"root\"\nport = {}\nidentity_file = \"{}\"\ngpus = 0\nremote_dir = \"{}/.trainctl\"\n",
        sshd.port,
        sshd.client_key.display(),
        remote_dir.display()
    );
    for (kind, log) in [("mixed", &mixed), ("plain", &plain)] {
        if !wanted(&format!("ssh {kind}")) {
            continue;
        }
        let sink = work.with_extension("cat");
        let ssh_cat = || {
            let _ = std::fs::remove_file(&kh);
            secs_cpu(timed(
                Command::new("ssh")
                    .args([
                        "-i",
                        &sshd.client_key.display().to_string(),
                        "-p",
                        &sshd.port.to_string(),
                        "-o",
                        &format!("UserKnownHostsFile={}", kh.display()),
                        "-o",
                        "StrictHostKeyChecking=accept-new",
                        "-o",
                        "BatchMode=yes",
                        "root@127.0.0.1",
                        "cat",
                    ])
                    .arg(log),
                &sink,
            ))
        };
        let (base, cases) = rounds(ssh_cat, |bin| {
            let c = follow(bin, &work, log, &cfg, "ssh", &["--accept-new-host-key"]);
            // Each round's job left its log on the "machine": a GiB each.
            let _ = std::fs::remove_dir_all(remote_dir.join(".trainctl/jobs"));
            c
        });
        for (l, c) in &cases {
            assert_eq!(c.out_lines, newlines(log), "every line printed");
            print_row(
                &format!("ssh {kind}{l}"),
                "ssh host cat",
                base,
                c,
                "the ssh client's",
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&remote_dir);
}
