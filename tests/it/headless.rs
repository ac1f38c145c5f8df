//! The headless output path: output to a file or pipe in blocks, a reader that goes away
//! ends trainctl quietly, no colour codes off a terminal.

use crate::common::*;

/// A project whose job prints `n` metric lines (`step=i loss=0.5`) at once.
fn chatty(n: u32) -> Env {
    let env = Env::new("", "0");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "command = \"python3 train.py --epochs 5\"",
        &format!("command = \"seq 1 {n} | sed 's/.*/step=& loss=0.5/'\""),
    );
    std::fs::write(&toml, text).unwrap();
    env
}

fn run_chatty(env: &Env) -> String {
    let out = env.json(&["run", "--provider", "local", "--no-pull"]);
    assert_eq!(out["state"], "succeeded", "{out}");
    out["job_id"].as_str().unwrap().to_string()
}

/// `write(2)` calls to fd 1 by `trainctl args` with stdout to a file; and the output.
fn writes_to_stdout(env: &Env, args: &[&str]) -> (usize, String) {
    let trace = env.dir.path().join("trace");
    let out = env.dir.path().join("out");
    let mut cmd = std::process::Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=write,writev",
        "-e",
        "signal=none",
        "-o",
    ])
    .arg(&trace)
    .arg(bin())
    .args(args)
    .env("TRAINCTL_CONFIG", &env.config)
    .current_dir(&env.project)
    .stdout(std::fs::File::create(&out).unwrap());
    let status = cmd.status().expect("strace (the CI installs it)");
    assert!(status.success());
    let n = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("write(1,") || l.contains("writev(1,"))
        .count();
    (n, std::fs::read_to_string(&out).unwrap())
}

#[test]
fn logs_to_a_file_are_written_in_blocks_not_a_line_at_a_time() {
    let env = chatty(20_000);
    let job = run_chatty(&env);
    for args in [vec!["logs", job.as_str()], vec!["logs", "-f", job.as_str()]] {
        let (writes, text) = writes_to_stdout(&env, &args);
        assert_eq!(text.lines().count(), 20_000, "{args:?}");
        assert!(text.ends_with("step=20000 loss=0.5\n"), "{args:?}");
        assert!(writes <= 50, "{args:?}: {writes} writes for 20 000 lines");
    }
}

#[test]
fn a_reader_that_goes_away_ends_trainctl_quietly() {
    let env = chatty(20_000);
    let job = run_chatty(&env);
    // Each prints far more than a pipe holds, so the writes meet the closed pipe.
    for args in [
        format!("metrics {job} --json"),
        format!("logs {job}"),
        format!("metrics {job}"),
    ] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; \"$0\" {args} | head -c 1 >/dev/null"
            ))
            .arg(bin())
            .env("TRAINCTL_CONFIG", &env.config)
            .current_dir(&env.project)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn log_lines_to_a_file_carry_no_colour_codes() {
    let env = Env::new("", "0");
    let out = env
        .cmd(&["jobs"])
        .env("TRAINCTL_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TRACE"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn every_artifact_is_pulled_whatever_its_name_and_a_failed_pull_keeps_the_machine() {
    let env = Env::new("", "0");
    std::fs::write(
        env.project.join("mk.sh"),
        "mkdir -p out/.trainctl-partial\n\
         printf A > \"$(printf 'out/a\\377.bin')\"\n\
         printf B > out/b.bin\n\
         printf P > out/.b.bin.trainctl-part\n\
         printf X > out/.trainctl-partial/x\n",
    )
    .unwrap();
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace(
            "command = \"python3 train.py --epochs 5\"",
            "command = \"sh mk.sh\"",
        )
        .replace(
            "artifacts = [\"model.json\", [\"checkpoints/best.json\", \"checkpoints/epoch-*.json\"]]",
            "artifacts = [\"out/*\", \"out/.trainctl-partial/*\"]",
        );
    std::fs::write(&toml, text).unwrap();
    let out = env.run(&["run", "--provider", "local", "--terminate-after", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    let job = r["job_id"].as_str().unwrap();
    // The name that is not UTF-8 came back as the bytes it is, beside the others, and a
    // job's file named like an old partial download is its own file.
    use std::os::unix::ffi::OsStrExt;
    let dest = env.project.join("trainctl-out").join(job).join("out");
    let odd = dest.join(std::ffi::OsStr::from_bytes(b"a\xff.bin"));
    assert_eq!(std::fs::read(&odd).unwrap(), b"A");
    assert_eq!(std::fs::read(dest.join("b.bin")).unwrap(), b"B");
    assert_eq!(
        std::fs::read(dest.join(".b.bin.trainctl-part")).unwrap(),
        b"P"
    );
    // The one under trainctl's partial folder name is refused, said, and the machine kept.
    let failed = r["artifacts_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert!(
        failed[0]["path"]
            .as_str()
            .unwrap()
            .contains(".trainctl-partial/x")
    );
    assert!(err.contains("kept"), "{err}");
    let inst = r["instance_id"].as_str().unwrap();
    let live = env.json(&["ls"]);
    assert!(
        live.as_array().unwrap().iter().any(|i| i["id"] == inst),
        "{live}"
    );
    assert!(
        env.event_kinds(Some(job))
            .contains(&"artifact.error".to_string())
    );
    env.ok(&["terminate", inst]);
}

/// A job whose log is every kind of text a terminal must not be handed as is (escape
/// sequences, `\r` rewrites, C1 controls, bytes that are not UTF-8, lines of spaces),
/// in bursts of some MiB (pieces of several commits) each left in the middle of a bar
/// redrawn in place, its last line without a newline.
const NOISY: &str = r#"
import sys, time
out = sys.stdout.buffer
kinds = [
    b"step=%d loss=0.5 plain line\n",
    b"\x1b[31mred %d\x1b[0m and \x1b]0;title\x07after\n",
    b" 10%% |##  | %d/100\r 20%% |####| %d/100\n",
    b"c1 \xc2\x9b%d here\n",
    b"not utf8 \xff\xfe %d\n",
    b"    \n",
    b"tab\tand bell\x07 %d\n",
    b"\n",
]
n = 0
for burst in range(3):
    for i in range(60000):
        k = kinds[n % len(kinds)]
        out.write(k % ((n,) * k.count(b"%d")))
        n += 1
    # A bar redrawn in place, its line ended by the next burst: a piece ends at `\r`.
    out.write(b" 50%% |### | %d/100\r" % n)
    out.flush()
    time.sleep(0.3)
out.write(b"the last line, without a newline")
"#;

#[test]
fn a_followed_log_prints_what_logs_prints_of_it() {
    let env = Env::new("", "0");
    std::fs::write(env.project.join("noisy.py"), NOISY).unwrap();
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "command = \"python3 train.py --epochs 5\"",
        "command = \"python3 noisy.py\"",
    );
    std::fs::write(&toml, text).unwrap();
    let job = env
        .ok(&["run", "--provider", "local", "--no-pull", "--detach"])
        .trim()
        .to_string();
    // This process reads the log from its first byte as the job writes it: what it
    // prints are the pieces it commits (not read back).
    let followed = env.run(&["logs", "-f", &job]);
    assert!(followed.status.success());
    // Read back from the local copy by a later process.
    let stored = env.run(&["logs", &job]);
    assert!(stored.status.success());
    let (followed, stored) = (followed.stdout, stored.stdout);
    assert!(stored.len() > 2 << 20, "{} bytes", stored.len());
    assert!(
        followed == stored,
        "logs -f printed {} bytes, logs {}; first difference at byte {:?}",
        followed.len(),
        stored.len(),
        followed.iter().zip(&stored).position(|(a, b)| a != b)
    );
    let text = String::from_utf8(stored).expect("what is printed is UTF-8");
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'));
    assert!(!text.contains('\u{9b}'));
    assert!(text.contains("step=179992 loss=0.5 plain line\n"));
    assert!(text.contains("red 1 and after\n"), "{}", &text[..400]);
    assert!(text.contains(" 20% |####| 2/100\n"));
    // The bar's line shows what was drawn last on it.
    assert!(!text.contains(" 50% |###"));
    assert!(text.contains("\nstep=60000 loss=0.5 plain line\n"));
    assert!(text.ends_with("the last line, without a newline\n"));
    env.ok(&["terminate", env.job(&job)["instance_id"].as_str().unwrap()]);
}
