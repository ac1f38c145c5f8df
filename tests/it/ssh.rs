//! SSH against a real OpenSSH sshd on 127.0.0.1: keys, host keys, ProxyCommand, quoting,
//! files, the example job end to end, and log follow across killed connections.

use crate::common::{Env, pseudo_random};
use std::path::Path;
use trainctl::remote::Remote;
use trainctl::ssh::config::SshConfig;
use trainctl::ssh::remote::{SshRemote, SshTarget};
use trainctl::testkit::Sshd;

fn target(sshd: &Sshd, known: &Path, accept_new: bool, cfg: &SshConfig, alias: &str) -> SshTarget {
    SshTarget::resolve(
        alias,
        Some("root"),
        Some(sshd.port),
        Some(&sshd.client_key),
        cfg,
        known,
        accept_new,
    )
}

/// A connection to the fixture's sshd as root (its key trusted on first sight, recorded in
/// `work/kh`), with trainctl's directory on the machine at `root`.
pub async fn connect_trusting(sshd: &Sshd, work: &Path, root: &Path) -> SshRemote {
    SshRemote::connect(
        target(
            sshd,
            &work.join("kh"),
            true,
            &SshConfig::default(),
            "127.0.0.1",
        ),
        Some(root.to_str().unwrap()),
    )
    .await
    .unwrap()
}

/// `n` small Python files spread over `dirs` folders under `src`.
fn small_tree(src: &Path, n: usize, dirs: usize) {
    for i in 0..n {
        let d = src.join(format!("d{}", i % dirs));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}.py")), format!("x = {i}\n")).unwrap();
    }
}

#[tokio::test]
async fn ssh_remote_runs_quoted_commands_and_moves_files_with_checks() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let known = work.path().join("known_hosts");
    let root = work.path().join("remote/.trainctl");
    let r = SshRemote::connect(
        target(&sshd, &known, true, &SshConfig::default(), "127.0.0.1"),
        Some(root.to_str().unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(r.root(), root.to_str().unwrap());
    // Arguments with spaces, quotes, `$`, backticks and newlines round-trip.
    for s in [
        "plain",
        "with space",
        "it's",
        "$HOME `id` $(id)",
        "new\nline",
        "ünïcödé ✓",
    ] {
        let out = r
            .exec(&format!("printf %s {}", trainctl::remote::sh_quote(s)))
            .await
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
    }
    let out = r.exec("echo err >&2; exit 3").await.unwrap();
    // (The login shell's own start-up may write to stderr first: root's .bashrc here runs
    // `pyenv rehash`, which complains when many sessions start at once.)
    assert_eq!(out.status, 3);
    assert!(
        out.stderr.ends_with(b"err\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Files: one tar stream in, permissions kept; ranges; checked download.
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("dir with space")).unwrap();
    std::fs::write(src.join("dir with space/ünï 'q'.py"), b"print('hi')\n").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho ok\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = format!("{}/code/p", r.root());
    let rels: Vec<String> = ["dir with space/ünï 'q'.py", "empty", "run.sh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sent = r.put_files(&src, &rels, &dest).await.unwrap();
    assert_eq!(sent.iter().map(|f| f.size).sum::<u64>(), 30);
    assert_eq!(
        sent[2].blake3,
        blake3::hash(b"#!/bin/sh\necho ok\n").to_hex().to_string()
    );
    let out = r
        .exec(&format!(
            "cd {} && ./run.sh",
            trainctl::remote::sh_quote(&dest)
        ))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "ok\n");
    let got = r
        .read_range(&format!("{dest}/dir with space/ünï 'q'.py"), 5, 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"('hi");
    assert!(
        r.read_range(&format!("{dest}/nope"), 0, 10)
            .await
            .unwrap()
            .is_none()
    );
    let local = work.path().join("back/model.py");
    let f = r
        .get(&format!("{dest}/dir with space/ünï 'q'.py"), &local)
        .await
        .unwrap();
    assert_eq!(
        f.blake3,
        blake3::hash(b"print('hi')\n").to_hex().to_string()
    );
    assert_eq!(std::fs::read(&local).unwrap(), b"print('hi')\n");
    r.write_file(&format!("{dest}/w/x.txt"), b"abc", 0o600)
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("code/p/w/x.txt")).unwrap(), b"abc");
    // A streamed command delivers its output as it comes.
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let status = r.exec_stream("echo a; echo b; exit 5", tx).await.unwrap();
    let mut all = Vec::new();
    while let Some(c) = rx.recv().await {
        all.extend(c);
    }
    assert_eq!((status, all.as_slice()), (5, &b"a\nb\n"[..]));
    // A streamed file, from an offset, and whether another file (a job's exit code) was
    // there before the read began: told by the same command.
    use trainctl::remote::Streamed;
    let log = format!("{dest}/w/log 'q'.txt");
    let ended = format!("{dest}/w/exit code");
    r.write_file(&log, b"line 1\nline 2\nlast", 0o644)
        .await
        .unwrap();
    let stream = |from: u64, marker: Option<&str>| {
        let (r, log, marker) = (&r, log.clone(), marker.map(str::to_string));
        async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let found = r
                .stream_file(&log, from, marker.as_deref(), tx)
                .await
                .unwrap();
            let mut all = Vec::new();
            while let Some(c) = rx.recv().await {
                all.extend(c);
            }
            (found, String::from_utf8(all).unwrap())
        }
    };
    let open = Streamed::Read { complete: false };
    assert_eq!(stream(7, None).await, (open, "line 2\nlast".into()));
    assert_eq!(stream(7, Some(&ended)).await, (open, "line 2\nlast".into()));
    r.write_file(&ended, b"0\n", 0o644).await.unwrap();
    let whole = Streamed::Read { complete: true };
    assert_eq!(stream(0, Some(&ended)).await.0, whole);
    assert_eq!(stream(0, None).await.0, open);
    let missing = format!("{dest}/w/nope");
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let found = r.stream_file(&missing, 0, Some(&ended), tx).await.unwrap();
    assert_eq!(found, Streamed::Missing);
    // A script, then the file, in one command: the script's output and status apart from
    // the file's bytes, whatever the script prints or however it exits.
    let script = "echo a=1; echo 'b=--trainctl-end- 7' ; echo oops >&2; exit 3";
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let (out, found) = r.exec_then_stream(script, &log, 7, tx).await.unwrap();
    let mut all = Vec::new();
    while let Some(c) = rx.recv().await {
        all.extend(c);
    }
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout_str(), "a=1\nb=--trainctl-end- 7\noops\n");
    assert_eq!((found, all.as_slice()), (open, &b"line 2\nlast"[..]));
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let (out, found) = r
        .exec_then_stream(
            "cd /nowhere 2>/dev/null || { echo gone=1; exit 0; }",
            &missing,
            0,
            tx,
        )
        .await
        .unwrap();
    assert_eq!((out.status, out.stdout_str().as_str()), (0, "gone=1\n"));
    assert_eq!(found, Streamed::Missing);
}

#[tokio::test]
async fn unknown_host_key_is_refused_then_accepted_on_request_and_remembered() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let known = work.path().join("known_hosts");
    let cfg = SshConfig::default();
    let err = SshRemote::connect(target(&sshd, &known, false, &cfg, "127.0.0.1"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown host key") && err.contains("SHA256:"),
        "{err}"
    );
    assert!(!known.exists(), "nothing may be recorded without consent");
    SshRemote::connect(target(&sshd, &known, true, &cfg, "127.0.0.1"), None)
        .await
        .unwrap();
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{}", sshd.port)),
        "{recorded}"
    );
    // Known now: no flag needed.
    SshRemote::connect(target(&sshd, &known, false, &cfg, "127.0.0.1"), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn changed_host_key_is_refused_even_with_accept_new() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let known = work.path().join("known_hosts");
    // Record another key for this host:port, as if the machine had been replaced.
    let other = std::fs::read_to_string(sshd.dir.path().join("client_key.pub")).unwrap();
    std::fs::write(&known, format!("[127.0.0.1]:{} {}", sshd.port, other)).unwrap();
    let err = SshRemote::connect(
        target(&sshd, &known, true, &SshConfig::default(), "127.0.0.1"),
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("HOST KEY CHANGED") && err.contains("line 1"),
        "{err}"
    );
}

#[tokio::test]
async fn ssh_config_alias_with_proxy_command_reaches_the_host() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let known = work.path().join("known_hosts");
    let cfg = SshConfig::parse(&format!(
        "Host lab-*\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
         ProxyCommand bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & cat >&3'\n",
        sshd.port,
        sshd.client_key.display()
    ));
    let t = SshTarget::resolve("lab-gpu", None, None, None, &cfg, &known, true);
    assert!(
        t.proxy_command
            .as_deref()
            .unwrap()
            .contains(&format!("/dev/tcp/127.0.0.1/{}", sshd.port))
    );
    let r = SshRemote::connect(t, None).await.unwrap();
    assert_eq!(
        r.exec("echo via-proxy").await.unwrap().stdout_str(),
        "via-proxy\n"
    );
}

#[tokio::test]
async fn proxy_jump_goes_through_the_bastion_and_checks_its_key() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let known = work.path().join("known_hosts");
    // OpenSSH makes the hop and checks the bastion's key against the user's known_hosts.
    let hop_known = work.path().join("hop_known_hosts");
    let host_pub = std::fs::read_to_string(sshd.dir.path().join("host_key.pub")).unwrap();
    let mut f = host_pub.split_whitespace();
    let (kind, key) = (f.next().unwrap(), f.next().unwrap());
    let cfg_path = work.path().join("ssh config");
    let write_cfg = |hop_key: &str| {
        std::fs::write(
            &hop_known,
            format!("[127.0.0.1]:{} {kind} {hop_key}\n", sshd.port),
        )
        .unwrap();
        std::fs::write(
            &cfg_path,
            format!(
                "Host bastion\n  HostName 127.0.0.1\n  Port {p}\n  User root\n  IdentityFile {k}\n  \
                 IdentitiesOnly yes\n  UserKnownHostsFile {hk}\n  StrictHostKeyChecking yes\n\
                 Host inner\n  HostName 127.0.0.1\n  Port {p}\n  User root\n  IdentityFile {k}\n  \
                 ProxyJump bastion\n",
                p = sshd.port,
                k = sshd.client_key.display(),
                hk = hop_known.display()
            ),
        )
        .unwrap();
    };
    write_cfg(key);
    let cfg = SshConfig::load(&cfg_path);
    let t = SshTarget::resolve("inner", None, None, None, &cfg, &known, true);
    let cmd = t.proxy_command.clone().unwrap();
    assert!(
        cmd.contains(&format!("-W 127.0.0.1:{} bastion", sshd.port)) && cmd.contains("-F '"),
        "{cmd}"
    );
    let r = SshRemote::connect(t, None).await.unwrap();
    assert_eq!(
        r.exec("echo via-jump").await.unwrap().stdout_str(),
        "via-jump\n"
    );
    // The bastion presenting a key the user's known_hosts does not have: no connection.
    let other = trainctl::testkit::Sshd::start();
    let other_pub = std::fs::read_to_string(other.dir.path().join("host_key.pub")).unwrap();
    write_cfg(other_pub.split_whitespace().nth(1).unwrap());
    let cfg = SshConfig::load(&cfg_path);
    let t = SshTarget::resolve("inner", None, None, None, &cfg, &known, true);
    let err = format!("{:#}", SshRemote::connect(t, None).await.unwrap_err());
    assert!(
        err.contains("the proxy said") && err.contains("Host key verification failed"),
        "{err}"
    );
}

pub(crate) fn ssh_env(sshd: &Sshd, extra: &str, step_sleep: &str) -> Env {
    let remote_dir = tempfile::tempdir().unwrap().keep();
    Env::new(
        &format!(
            "[providers.ssh]\n\
             [[providers.ssh.hosts]]\nname = \"lab1\"\naddress = \"127.0.0.1\"\nuser = \"root\"\nport = {}\n\
             identity_file = \"{}\"\ngpus = 0\nhourly_usd = 36.0\nremote_dir = \"{}/.trainctl\"\n{extra}",
            sshd.port,
            sshd.client_key.display(),
            remote_dir.display()
        ),
        step_sleep,
    )
}

/// Hold `ssh_env`'s host (trusting its key on first sight); the instance id.
pub(crate) fn launch_ssh(env: &Env) -> String {
    env.json(&["launch", "--provider", "ssh", "--accept-new-host-key"])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Where `ssh_env`'s host keeps the toy project's code.
pub(crate) fn remote_code_dir(env: &Env) -> std::path::PathBuf {
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let remote_dir = cfg
        .lines()
        .find_map(|l| l.strip_prefix("remote_dir = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    Path::new(&remote_dir).join("code/toy-train")
}

#[test]
fn example_job_end_to_end_over_ssh() {
    let sshd = Sshd::start();
    let env = ssh_env(&sshd, "", "0.005");
    // Unknown host: refused, nothing held.
    let out = env.run(&["launch", "--provider", "ssh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown host key"));
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
    let inst = env.json(&["launch", "--provider", "ssh", "--accept-new-host-key"]);
    let id = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["instance_type"], "lab1");
    // The host is held: a second launch finds no free host.
    let busy = env.run(&["launch", "--provider", "ssh"]);
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("busy"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );

    let run = env.json(&["run", "--instance", &id]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap();
    let local_model = env
        .project
        .join("trainctl-out")
        .join(job)
        .join("model.json");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&local_model).unwrap()).unwrap();
    let art = run["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"] == "model.json")
        .unwrap();
    assert_eq!(
        art["blake3"].as_str().unwrap(),
        blake3::hash(&std::fs::read(&local_model).unwrap())
            .to_hex()
            .to_string()
    );
    let fl = env.json(&["metrics", job, "--name", "final_loss"]);
    assert_eq!(fl[0]["value"].as_f64(), model["final_loss"].as_f64());
    assert_eq!(
        env.json(&["metrics", job, "--name", "lr"])
            .as_array()
            .unwrap()
            .len(),
        80
    );
    // An unchanged tree syncs nothing the second time.
    let again = env.json(&["sync", "--instance", &id]);
    assert!(again["upload"].as_array().unwrap().is_empty(), "{again}");
    env.ok(&["terminate", &id]);
    let all = env.json(&["ls", "--all"]);
    assert_eq!(all[0]["state"], "terminated");
    // Released: the host can be taken again.
    let again = env.json(&["launch", "--provider", "ssh"]);
    env.ok(&["terminate", again["id"].as_str().unwrap()]);
}

#[test]
fn follow_survives_killed_connections_with_no_line_lost_or_repeated() {
    let sshd = Sshd::start();
    let env = ssh_env(&sshd, "", "0.04");
    let id = launch_ssh(&env);
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("--epochs 5", "--epochs 6");
    std::fs::write(&toml, text).unwrap();
    let job = env
        .ok(&["run", "--instance", &id, "--detach"])
        .trim()
        .to_string();
    let follower = env
        .cmd(&["logs", "-f", &job])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill every server-side connection, again and again, while the job runs (and the
    // follower is mid-read), then let it finish.
    let mut kills = 0;
    for _ in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(350));
        sshd.kill_sessions();
        kills += 1;
    }
    let out = follower.wait_with_output().unwrap();
    assert!(kills >= 3, "the connection was killed only {kills} times");
    env.assert_followed_completely(&out, &job, 96);
    env.ok(&["terminate", &id]);
}

#[test]
fn agent_keys_are_used_when_no_key_file_is_given() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "ssh-agent did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let added = std::process::Command::new("ssh-add")
        .arg(&sshd.client_key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    // The host config names no key, and HOME has none: only the agent can log in.
    let env = Env::new(
        &format!(
            "[providers.ssh]\naccept_new_host_keys = true\n\
             [[providers.ssh.hosts]]\nname = \"lab1\"\naddress = \"127.0.0.1\"\nuser = \"root\"\nport = {}\n\
             remote_dir = \"{}/.trainctl\"\n",
            sshd.port,
            work.path().display()
        ),
        "0",
    );
    let fake_home = work.path().join("home");
    std::fs::create_dir_all(&fake_home).unwrap();
    let run = |with_agent: bool| {
        let mut c = env.cmd(&["launch", "--provider", "ssh", "--json"]);
        c.env("HOME", &fake_home);
        if with_agent {
            c.env("SSH_AUTH_SOCK", &sock);
        } else {
            c.env_remove("SSH_AUTH_SOCK");
        }
        c.output().unwrap()
    };
    let without = run(false);
    assert_eq!(without.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&without.stderr).contains("refused every key"));
    let with = run(true);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap();
    env.ok(&["terminate", v["id"].as_str().unwrap()]);
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn sync_over_ssh_keeps_links_modes_odd_names_and_propagates_deletions() {
    let sshd = Sshd::start();
    let env = ssh_env(&sshd, "", "0");
    let id = launch_ssh(&env);
    let p = &env.project;
    std::fs::write(p.join("with space & 'quote'.py"), "x = 1\n").unwrap();
    std::fs::write(p.join("ünïcödé.txt"), "u").unwrap();
    std::fs::write(p.join("empty"), "").unwrap();
    std::fs::write(p.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("train.py", p.join("link.py")).unwrap();
    let first = env.json(&["sync", "--instance", &id]);
    assert_eq!(first["upload"].as_array().unwrap().len(), 7, "{first}");
    let code = remote_code_dir(&env);
    assert_eq!(
        std::fs::read_to_string(code.join("with space & 'quote'.py")).unwrap(),
        "x = 1\n"
    );
    assert_eq!(std::fs::read(code.join("empty")).unwrap().len(), 0);
    assert_eq!(
        std::fs::metadata(code.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(code.join("link.py")).unwrap().to_str(),
        Some("train.py")
    );
    // Unchanged: nothing moves; then a change, a deletion and a rename.
    let again = env.json(&["sync", "--instance", &id]);
    assert!(
        again["upload"].as_array().unwrap().is_empty()
            && again["delete"].as_array().unwrap().is_empty()
    );
    std::fs::write(p.join("train.py"), "print('changed')\n").unwrap();
    std::fs::remove_file(p.join("empty")).unwrap();
    std::fs::rename(p.join("ünïcödé.txt"), p.join("renamed.txt")).unwrap();
    let third = env.json(&["sync", "--instance", &id]);
    let mut up: Vec<&str> = third["upload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    up.sort();
    assert_eq!(up, vec!["renamed.txt", "train.py"]);
    assert!(!code.join("empty").exists() && !code.join("ünïcödé.txt").exists());
    assert_eq!(
        std::fs::read_to_string(code.join("train.py")).unwrap(),
        "print('changed')\n"
    );
    env.ok(&["terminate", &id]);
}

#[test]
fn killed_trainctl_reattaches_to_the_job_over_ssh() {
    let sshd = Sshd::start();
    let env = ssh_env(&sshd, "", "0.01");
    // The job waits after step 10 until the test lets it go: it is running when trainctl dies.
    let gate = env.hold_at(10);
    let id = launch_ssh(&env);
    let mut child = env
        .cmd(&["run", "--instance", &id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let job = env.wait_running_with_metrics();
    child.kill().unwrap();
    child.wait().unwrap();
    // Its connection is gone too; the job is not.
    sshd.kill_sessions();
    assert_eq!(env.job(&job)["state"], "running");
    std::fs::write(&gate, "").unwrap();
    let out = env.run(&["logs", "-f", &job]);
    env.assert_followed_completely(&out, &job, 80);
    assert_eq!(env.job(&job)["state"], "succeeded");
    env.ok(&["terminate", &id]);
}

#[test]
fn passphrase_keys_need_the_agent_headless_and_a_prompt_in_the_cockpit() {
    let sshd = Sshd::start();
    let key = sshd.add_encrypted_key("open sesame");
    let work = tempfile::tempdir().unwrap();
    let extra = crate::common::one_ssh_host(&sshd, &key, work.path());
    let env = Env::new(&extra, "0");
    // Headless: a clear error, nothing held.
    let out = env
        .cmd(&["launch", "--provider", "ssh"])
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("protected by a passphrase") && err.contains("ssh-add"),
        "{err}"
    );
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
    // With someone to ask (the cockpit's prompter): a wrong answer, then the right one.
    let (cfg, _) = trainctl::config::UserConfig::load(Some(&env.config)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = trainctl::engine::Engine::open(cfg).unwrap();
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<trainctl::ssh::remote::PassphraseRequest>(4);
        engine.set_passphrase_prompter(tx);
        let answers = tokio::spawn(async move {
            let mut asked = 0;
            while let Some(req) = rx.recv().await {
                asked += 1;
                let a = if asked == 1 { "wrong" } else { "open sesame" };
                let _ = req.reply.send(Some(a.to_string()));
            }
            asked
        });
        let inst = engine
            .launch("ssh", &trainctl::provider::LaunchRequest::default())
            .await
            .unwrap();
        assert_eq!(inst.state, trainctl::model::InstanceState::Running);
        engine.terminate(&inst.id, "test").await.unwrap();
        drop(engine);
        let asked = tokio::time::timeout(std::time::Duration::from_secs(5), answers).await;
        // The prompter stays registered while the engine lives; it was asked at least twice.
        if let Ok(Ok(n)) = asked {
            assert!(n >= 2);
        }
    });
}

#[tokio::test]
async fn unchanged_tree_costs_one_round_trip_over_ssh() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let r = connect_trusting(&sshd, work.path(), &work.path().join("remote")).await;
    let src = work.path().join("src");
    small_tree(&src, 200, 10);
    use trainctl::job::sync;
    let plan = sync::prepare(&r, "p", &src, &[]).await.unwrap();
    let before = r.exec_count();
    sync::apply(&r, "p", &src, &plan).await.unwrap();
    // Everything in one stream: mkdir, one tar, the manifest.
    assert!(
        r.exec_count() - before <= 3,
        "{} round trips",
        r.exec_count() - before
    );
    let before = r.exec_count();
    let plan = sync::prepare(&r, "p", &src, &[]).await.unwrap();
    sync::apply(&r, "p", &src, &plan).await.unwrap();
    assert!(plan.is_noop());
    assert_eq!(
        r.exec_count() - before,
        1,
        "an unchanged tree must cost one round trip"
    );
}

#[tokio::test]
async fn a_changed_large_file_travels_as_blocks_over_ssh() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let remote_root = work.path().join("remote");
    let r = connect_trusting(&sshd, work.path(), &remote_root).await;
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
        .collect();
    std::fs::write(src.join("weights.bin"), &data).unwrap();
    use trainctl::job::sync;
    let p = sync::prepare(&r, "p", &src, &[]).await.unwrap();
    sync::apply(&r, "p", &src, &p).await.unwrap();
    data[123_456] ^= 0x55;
    std::fs::write(src.join("weights.bin"), &data).unwrap();
    let p = sync::prepare(&r, "p", &src, &[]).await.unwrap();
    let before = r.bytes_sent();
    let st = sync::apply(&r, "p", &src, &p).await.unwrap();
    assert_eq!(st.delta_files, 1, "{st:?}");
    assert!(
        r.bytes_sent() - before < 10_000,
        "{} bytes for a 1-byte change",
        r.bytes_sent() - before
    );
    assert_eq!(
        std::fs::read(remote_root.join("code/p/weights.bin")).unwrap(),
        data
    );
    assert!(sync::prepare(&r, "p", &src, &[]).await.unwrap().is_noop());

    // The file changes on the machine between the plan (block sums fetched with the
    // manifest, as `run` does with its local cache) and the patch (a job writing into its
    // code directory): the patched copy does not match, so it is sent whole instead.
    let cache = work.path().join("cache.json");
    let p0 = sync::prepare_with(&r, "p", &src, &[], Some(&cache))
        .await
        .unwrap();
    sync::apply_with(&r, "p", &src, &p0, Some(&cache))
        .await
        .unwrap();
    data[7] ^= 0x11;
    std::fs::write(src.join("weights.bin"), &data).unwrap();
    let p = sync::prepare_with(&r, "p", &src, &[], Some(&cache))
        .await
        .unwrap();
    assert!(p.block_sums.contains_key("weights.bin"));
    let on_machine = remote_root.join("code/p/weights.bin");
    let mut theirs = std::fs::read(&on_machine).unwrap();
    theirs[250_000] ^= 0x22;
    std::fs::write(&on_machine, &theirs).unwrap();
    let st = sync::apply_with(&r, "p", &src, &p, Some(&cache))
        .await
        .unwrap();
    assert_eq!((st.delta_files, st.whole_files), (0, 1), "{st:?}");
    assert!(std::fs::read(&on_machine).unwrap() == data);
    assert!(
        !remote_root
            .join("code/p/weights.bin.trainctl-part")
            .exists()
    );
    assert!(sync::prepare(&r, "p", &src, &[]).await.unwrap().is_noop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resume_survive_dropped_connections_and_reject_stale_parts() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let known = work.path().join("known_hosts");
    let r = SshRemote::connect(
        target(&sshd, &known, true, &SshConfig::default(), "127.0.0.1"),
        Some(work.path().join("remote").to_str().unwrap()),
    )
    .await
    .unwrap();
    // A 24 MiB "checkpoint" on the machine.
    let remote = work.path().join("remote/ckpt dir/model 'best'.pt");
    std::fs::create_dir_all(remote.parent().unwrap()).unwrap();
    let data = pseudo_random(&mut 0x9e37_79b9_7f4a_7c15u64, 24 << 20);
    std::fs::write(&remote, &data).unwrap();
    let path = remote.to_str().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let part = out.join(".trainctl-partial/best.pt");

    // A partial download left by an earlier attempt: only the rest travels.
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &data[..8 << 20]).unwrap();
    let before = r.bytes_received();
    let got = r.get(path, &out.join("best.pt")).await.unwrap();
    assert_eq!(r.bytes_received() - before, 16 << 20);
    assert_eq!(got.size, data.len() as u64);
    assert_eq!(got.blake3, blake3::hash(&data).to_hex().to_string());
    assert!(std::fs::read(out.join("best.pt")).unwrap() == data);
    assert!(!part.exists());
    assert!(
        !part.parent().unwrap().exists(),
        "the emptied partial folder is gone"
    );

    // A stale partial file (another version of the file): caught by the checksum and
    // downloaded again from the start.
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, vec![7u8; 8 << 20]).unwrap();
    let before = r.bytes_received();
    r.get(path, &out.join("best.pt")).await.unwrap();
    assert_eq!(r.bytes_received() - before, (16 << 20) + (24 << 20));
    assert!(std::fs::read(out.join("best.pt")).unwrap() == data);

    // Connections killed again and again while the bytes flow: resumed each time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let sshd = &sshd;
        let kills = std::sync::atomic::AtomicU32::new(0);
        let again_part = out.join(".trainctl-partial/again.pt");
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                // Each time another 2 MiB landed, kill the server side: always mid-transfer.
                let mut last = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && kills.load(std::sync::atomic::Ordering::Relaxed) < 5
                {
                    let len = std::fs::metadata(&again_part).map(|m| m.len()).unwrap_or(0);
                    if len >= last + (2 << 20) {
                        sshd.kill_sessions();
                        kills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        last = len;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
            let rt = tokio::runtime::Handle::current();
            let res =
                tokio::task::block_in_place(|| rt.block_on(r.get(path, &out.join("again.pt"))));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            h.join().unwrap();
            (res, kills.load(std::sync::atomic::Ordering::Relaxed))
        })
    };
    let (res, kills) = killer;
    let got = res.unwrap();
    assert!(kills >= 3, "only {kills} kills landed mid-transfer");
    assert_eq!(got.blake3, blake3::hash(&data).to_hex().to_string());
    assert!(std::fs::read(out.join("again.pt")).unwrap() == data);
    // Nothing is ever written outside the destination's folder.
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["again.pt", "best.pt"]);
}

#[test]
fn sync_cut_by_killed_connections_completes_and_matches() {
    let sshd = Sshd::start();
    let env = ssh_env(&sshd, "", "0");
    let id = launch_ssh(&env);
    // 300 files of 128 KiB (random, so nothing compresses or repeats).
    let data_dir = env.project.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..300 {
        let buf = pseudo_random(&mut x, 128 << 10);
        std::fs::write(data_dir.join(format!("shard-{i:03}.bin")), buf).unwrap();
    }
    let code = remote_code_dir(&env);
    let mut child = env
        .cmd(&["sync", "--instance", &id, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server side of the connection twice while files are being unpacked.
    let mut kills = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while kills < 2 && std::time::Instant::now() < deadline {
        let n = std::fs::read_dir(code.join("data")).map_or(0, |d| d.count());
        if (kills == 0 && n >= 20) || (kills == 1 && n >= 120) {
            sshd.kill_sessions();
            kills += 1;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // A sync stuck on a dead connection would never end: give it a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sync hung after its connection was killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(kills >= 1, "the sync ended before a kill landed");
    // Every file arrived whole, and the machine's manifest knows it: nothing left to send.
    for i in 0..300 {
        let name = format!("data/shard-{i:03}.bin");
        assert!(
            std::fs::read(code.join(&name)).unwrap()
                == std::fs::read(env.project.join(&name)).unwrap(),
            "{name} differs"
        );
    }
    let again = env.json(&["sync", "--instance", &id]);
    assert!(again["upload"].as_array().unwrap().is_empty(), "{again}");
    env.ok(&["terminate", &id]);
}

/// A host of the pool dies (its sshd and the job's processes gone, no notice): past
/// `lost_after_seconds` the job is lost there and resumed on the other host from the
/// newest shipped checkpoint.
#[test]
fn a_dead_pool_host_job_resumes_on_another_host() {
    let mut a = Some(Sshd::start());
    let b = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let host = |name: &str, sshd: &Sshd, usd: f64| {
        format!(
            "[[providers.ssh.hosts]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nuser = \"root\"\n\
             port = {}\nidentity_file = \"{}\"\nhourly_usd = {usd}\nremote_dir = \"{}/{name}/.trainctl\"\n",
            sshd.port,
            sshd.client_key.display(),
            work.path().display()
        )
    };
    let env = Env::new(
        &format!(
            "[providers.ssh]\naccept_new_host_keys = true\n{}{}",
            host("lab1", a.as_ref().unwrap(), 1.0),
            host("lab2", &b, 2.0)
        ),
        "0.01",
    );
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("\n[env]", "\n[recovery]\nlost_after_seconds = 3\n\n[env]");
    std::fs::write(&toml, text).unwrap();
    let gate = env.hold_at(2 * 16 + 5);
    let run = env
        .cmd(&["run", "--provider", "ssh", "--json", "--terminate-after"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let job = env.wait_running_with_metrics();
    env.wait_for(30, "epoch 2's checkpoint to be shipped", || {
        env.json(&["checkpoints", &job])
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "epoch-0002.json")
    });
    // lab1 dies: the job's process group, then its sshd.
    let jd = work.path().join(format!("lab1/.trainctl/jobs/{job}-1"));
    let pgid: i32 = std::fs::read_to_string(jd.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let dead = a.take().unwrap();
    dead.kill_sessions();
    drop(dead);
    std::fs::write(&gate, b"").unwrap();

    let out = run.wait_with_output().unwrap();
    let end: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(end["state"], "succeeded", "{end}");
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("epoch-0002.json at epoch 3"), "{log}");
    let all = env.json(&["ls", "--all"]);
    let by_host = |h: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance_type"] == h)
            .unwrap_or_else(|| panic!("no instance on {h}: {all}"))
            .clone()
    };
    // lab1 stays lost (out of the pool, not billing) until it is terminated.
    assert_eq!(by_host("lab1")["state"], "lost", "{all}");
    env.ok(&["terminate", by_host("lab1")["id"].as_str().unwrap()]);
    assert_eq!(by_host("lab2")["state"], "terminated", "{all}");
    let live = env.json(&["ls"]);
    assert!(live.as_array().unwrap().is_empty(), "{live}");
}

/// The machine's host key changes while `logs -f` follows a job there: retrying cannot
/// fix that (it may be an attack), so `logs -f` exits non-zero at once and says why.
#[test]
fn a_host_key_changed_mid_follow_ends_logs_follow_at_once() {
    let sshd = Sshd::start();
    let env = ssh_env(&sshd, "", "0.05");
    let gate = env.hold_at(5);
    let id = launch_ssh(&env);
    let job = env
        .ok(&["run", "--instance", &id, "--detach"])
        .trim()
        .to_string();
    let follow = env
        .cmd(&["logs", "-f", &job])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_for(30, "some metrics", || env.has_metrics(&job));
    // The machine now answers with another key than the one recorded.
    let known = env.data().join("known_hosts");
    let recorded = std::fs::read_to_string(&known).unwrap();
    let other = std::fs::read_to_string(sshd.dir.path().join("client_key.pub")).unwrap();
    std::fs::write(&known, format!("[127.0.0.1]:{} {}", sshd.port, other)).unwrap();
    let t = std::time::Instant::now();
    sshd.kill_sessions();
    let mut follow = follow;
    while follow.try_wait().unwrap().is_none() {
        if t.elapsed() > std::time::Duration::from_secs(20) {
            let _ = follow.kill();
            panic!("logs -f kept retrying a changed host key");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = follow.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HOST KEY CHANGED"), "{stderr}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        t.elapsed()
    );
    // Put the real key back and let the job go.
    std::fs::write(&known, recorded).unwrap();
    std::fs::write(&gate, b"").unwrap();
    env.ok(&["cancel", &job]);
    env.ok(&["terminate", &id]);
}

/// `ls` asks every running machine (at once, briefly) and shows why one cannot be reached,
/// instead of a stale healthy row.
#[test]
fn ls_shows_a_dead_host_as_unreachable() {
    let sshd = Sshd::start();
    let env = ssh_env(&sshd, "", "0");
    let id = launch_ssh(&env);
    assert!(env.json(&["ls"])[0]["error"].is_null());
    sshd.kill_sessions();
    drop(sshd);
    let t = std::time::Instant::now();
    let live = env.json(&["ls"]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    let err = live[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("unreachable"), "{live}");
    let shown = env.ok(&["ls"]);
    assert!(shown.contains("ERROR: unreachable"), "{shown}");
    env.ok(&["terminate", &id]);
}

/// With a local copy of the machine's manifest, an unchanged sync is one short round trip:
/// the machine only says its manifest is the one we hold (its generation token), the
/// manifest itself does not travel. A sync by someone else changes the token, and the next
/// sync plans against what is really there.
#[tokio::test]
async fn an_unchanged_sync_with_a_cached_manifest_moves_almost_nothing() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let r = connect_trusting(&sshd, work.path(), &work.path().join("remote")).await;
    let src = work.path().join("src");
    small_tree(&src, 2000, 20);
    use trainctl::job::sync;
    let cache = work.path().join("cache.json");
    let sync_once = async |cache: Option<&Path>| {
        let plan = sync::prepare_with(&r, "p", &src, &[], cache).await.unwrap();
        sync::apply_with(&r, "p", &src, &plan, cache).await.unwrap();
        plan
    };
    sync_once(Some(&cache)).await;
    // The first unchanged sync may record a generation; from then on, one short trip.
    sync_once(Some(&cache)).await;
    let (execs, out) = (r.exec_count(), r.output_bytes());
    let plan = sync_once(Some(&cache)).await;
    assert!(plan.is_noop());
    assert_eq!(r.exec_count() - execs, 1);
    assert!(
        r.output_bytes() - out < 200,
        "{} bytes came back for an unchanged sync",
        r.output_bytes() - out
    );
    // Someone else changes the tree on the machine (no cache): our copy is stale.
    std::fs::write(src.join("d0/f0.py"), "x = 'changed'\n").unwrap();
    sync_once(None).await;
    std::fs::write(src.join("d0/f0.py"), "x = 0\n").unwrap();
    let plan = sync_once(Some(&cache)).await;
    assert_eq!(plan.upload, vec!["d0/f0.py".to_string()]);
    let code = work.path().join("remote/code/p/d0/f0.py");
    assert_eq!(std::fs::read_to_string(code).unwrap(), "x = 0\n");
}

/// The password machine `sshd` as its user, with no key that works (only a password can
/// let it in), trusting its host key on first sight (recorded under `work`).
fn keyless_target(sshd: &Sshd, work: &Path) -> SshTarget {
    let mut t = SshTarget::resolve(
        "127.0.0.1",
        sshd.user.as_deref(),
        Some(sshd.port),
        Some(&work.join("no-such-key")),
        &SshConfig::default(),
        &work.join("kh"),
        true,
    );
    t.identities_only = true;
    t
}

/// A machine reached with a password (the `password` method, then `keyboard-interactive`
/// through PAM when the server takes passwords only that way); a wrong password is an
/// authentication error that never quotes it.
#[tokio::test]
async fn password_and_keyboard_interactive_logins() {
    let sshd = Sshd::start_password_machine();
    sshd.set_password("pw-Correct-123");
    let user = sshd.user.clone().unwrap();
    let work = trainctl::testkit::TempDir::new("trainctl-pw");
    let mk = |pw: &str| {
        let mut t = keyless_target(&sshd, work.path());
        t.password = Some(trainctl::ssh::Secret::new(pw));
        t
    };
    let r = SshRemote::connect(mk("pw-Correct-123"), None)
        .await
        .unwrap();
    assert_eq!(r.exec("id -un").await.unwrap().stdout_str().trim(), user);
    let err = SshRemote::connect(mk("pw-Wrong-456"), None)
        .await
        .expect_err("a wrong password is refused");
    let text = format!("{err:#}");
    assert_eq!(
        trainctl::remote::error_kind(&err),
        Some(trainctl::remote::ErrorKind::Auth),
        "{text}"
    );
    assert!(!text.contains("pw-Wrong-456"), "{text}");

    // Only keyboard-interactive left: the same password answers its prompt.
    let cfg = sshd.dir.path().join("sshd_config");
    let c = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        c.replace("PasswordAuthentication yes", "PasswordAuthentication no"),
    )
    .unwrap();
    sshd.reload();
    let r = SshRemote::connect(mk("pw-Correct-123"), None)
        .await
        .unwrap();
    assert_eq!(r.exec("id -un").await.unwrap().stdout_str().trim(), user);
}

/// No key works and no password is known: the person at the cockpit is asked (the prompt
/// slot), a wrong answer asked again, and the right one kept in memory for reconnects.
#[tokio::test]
async fn a_login_password_is_asked_through_the_prompt_and_kept_for_the_session() {
    use trainctl::ssh::remote::{Asked, PassphraseRequest};
    let sshd = Sshd::start_password_machine();
    sshd.set_password("pw-Asked-789");
    let user = sshd.user.clone().unwrap();
    let work = trainctl::testkit::TempDir::new("trainctl-pw-ask");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PassphraseRequest>(4);
    let slot: trainctl::ssh::remote::PromptSlot =
        std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let asked2 = asked.clone();
    tokio::spawn(async move {
        let mut answers = vec!["wrong-1", "pw-Asked-789"].into_iter();
        while let Some(req) = rx.recv().await {
            asked2.lock().unwrap().push(req.asked.clone());
            let _ = req.reply.send(answers.next().map(str::to_string));
        }
    });
    let mut t = keyless_target(&sshd, work.path());
    t.prompt = Some(slot);
    let r = SshRemote::connect(t.clone(), None).await.unwrap();
    assert_eq!(r.exec("id -un").await.unwrap().stdout_str().trim(), user);
    let who = format!("{user}@127.0.0.1:{}", sshd.port);
    assert_eq!(
        *asked.lock().unwrap(),
        vec![Asked::Password(who.clone()), Asked::Password(who)]
    );
    // A new connection uses the password typed before: nobody is asked again.
    let r2 = SshRemote::connect(t, None).await.unwrap();
    assert_eq!(r2.exec("echo again").await.unwrap().stdout_str(), "again\n");
    assert_eq!(asked.lock().unwrap().len(), 2);
}

/// The engine's sync is one conversation with the machine, one command whatever changed:
/// the question (manifest or "unchanged", block signatures of the changed large files)
/// and, on the same command, the work. Data inserted in the middle of a large file moves
/// only about the inserted bytes (rolling checksum), and every file keeps its mtime.
#[tokio::test]
async fn a_sync_is_one_command_and_an_insertion_moves_only_itself() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let remote_root = work.path().join("remote");
    let r = connect_trusting(&sshd, work.path(), &remote_root).await;
    let src = work.path().join("src");
    small_tree(&src, 200, 10);
    let mut big = pseudo_random(&mut 0x2545_f491_4f6c_dd1du64, 3 << 20);
    std::fs::write(src.join("weights.bin"), &big).unwrap();
    use trainctl::job::sync;
    let cache = work.path().join("cache.json");
    let once = async || {
        let (execs, sent) = (r.exec_count(), r.bytes_sent());
        let (plan, st) = sync::sync_once(&r, "p", &src, &[], Some(&cache), None, false)
            .await
            .unwrap();
        (plan, st, r.exec_count() - execs, r.bytes_sent() - sent)
    };
    let (plan, _, execs, _) = once().await;
    assert_eq!((plan.upload.len(), execs), (201, 1));
    // 64 KiB inserted at 1 MiB: the rest shifts.
    let ins = pseudo_random(&mut 7, 64 << 10);
    big.splice(1 << 20..1 << 20, ins);
    std::fs::write(src.join("weights.bin"), &big).unwrap();
    std::fs::write(src.join("d0/f0.py"), "x = 'edited'\n").unwrap();
    std::fs::remove_file(src.join("d1/f1.py")).unwrap();
    let (plan, st, execs, sent) = once().await;
    assert_eq!(execs, 1, "{plan:?}");
    assert_eq!((st.delta_files, st.whole_files), (1, 1), "{st:?}");
    assert!(
        sent < (64 << 10) + 40_000,
        "{sent} bytes sent for a 64 KiB insertion"
    );
    let code = remote_root.join("code/p");
    assert_eq!(std::fs::read(code.join("weights.bin")).unwrap(), big);
    assert!(!code.join("d1/f1.py").exists());
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    assert_eq!(
        mtime(&code.join("weights.bin")),
        mtime(&src.join("weights.bin"))
    );
    assert_eq!(mtime(&code.join("d0/f0.py")), mtime(&src.join("d0/f0.py")));
    // Unchanged: one command that ends without waiting for us.
    let (plan, _, execs, _) = once().await;
    assert!(plan.is_noop());
    assert_eq!(execs, 1);
    // The signature of what was patched is kept here: the next change of the file asks
    // the machine for nothing but "unchanged".
    big.splice(2 << 20..2 << 20, pseudo_random(&mut 9, 10_000));
    std::fs::write(src.join("weights.bin"), &big).unwrap();
    let out = r.output_bytes();
    let (_, st, execs, _) = once().await;
    assert_eq!((st.delta_files, execs), (1, 1), "{st:?}");
    assert!(r.output_bytes() - out < 1_000, "{}", r.output_bytes() - out);
    assert_eq!(std::fs::read(code.join("weights.bin")).unwrap(), big);
    // A kept signature that is stale (the file changed on the machine): sent whole.
    let mut theirs = std::fs::read(code.join("weights.bin")).unwrap();
    theirs[5] ^= 1;
    std::fs::write(code.join("weights.bin"), &theirs).unwrap();
    big.extend_from_slice(b"more");
    std::fs::write(src.join("weights.bin"), &big).unwrap();
    let (_, st, _, _) = once().await;
    assert_eq!((st.delta_files, st.whole_files), (0, 1), "{st:?}");
    assert_eq!(std::fs::read(code.join("weights.bin")).unwrap(), big);
    // A dry run plans and changes nothing.
    std::fs::write(src.join("d0/f0.py"), "x = 'again'\n").unwrap();
    let (plan, _) = sync::sync_once(&r, "p", &src, &[], Some(&cache), None, true)
        .await
        .unwrap();
    assert_eq!(plan.upload, vec!["d0/f0.py".to_string()]);
    assert_eq!(
        std::fs::read_to_string(code.join("d0/f0.py")).unwrap(),
        "x = 'edited'\n"
    );
}

/// A large upload travels on several commands at once (each SSH channel has its own flow
/// window), and the manifest is recorded once they all landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_goes_in_parallel_streams_and_lands_whole() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let remote_root = work.path().join("remote");
    let r = connect_trusting(&sshd, work.path(), &remote_root).await;
    let src = work.path().join("src");
    small_tree(&src, 50, 5);
    let mut seed = 0x5eed_u64;
    for i in 0..3 {
        let data = pseudo_random(&mut seed, 48 << 20);
        std::fs::write(src.join(format!("w{i}.bin")), &data).unwrap();
    }
    use trainctl::job::sync;
    let cache = work.path().join("cache.json");
    let execs = r.exec_count();
    let (plan, st) = sync::sync_once(&r, "p", &src, &[], Some(&cache), None, false)
        .await
        .unwrap();
    assert_eq!((plan.upload.len(), st.whole_files), (53, 53));
    // The conversation and one more stream (144 MB: two of 64 MB or more).
    assert_eq!(r.exec_count() - execs, 2);
    let code = remote_root.join("code/p");
    for i in 0..3 {
        let name = format!("w{i}.bin");
        assert!(
            std::fs::read(code.join(&name)).unwrap() == std::fs::read(src.join(&name)).unwrap(),
            "{name} differs"
        );
    }
    let (m, _) = sync::remote_manifest(&r, "p").await.unwrap();
    assert_eq!(m.len(), 53);
    assert_eq!(
        m["w2.bin"].hash,
        blake3::hash(&std::fs::read(src.join("w2.bin")).unwrap())
            .to_hex()
            .to_string()
    );
    let (plan, _) = sync::sync_once(&r, "p", &src, &[], Some(&cache), None, false)
        .await
        .unwrap();
    assert!(plan.is_noop());
}

/// A log streamed over SSH arrives whole and in order, its full chunks ended at a line
/// end (the part of a line after it carried to the next chunk), so the follow takes them
/// as pieces uncopied; a line longer than a carry and a last line without its newline
/// come through as well.
#[tokio::test]
async fn a_streamed_log_arrives_whole_in_chunks_ended_at_line_ends() {
    use trainctl::remote::Streamed;
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let r = connect_trusting(&sshd, work.path(), &work.path().join("remote")).await;
    let (data, _) = trainctl::testkit::log_with_a_long_line(6 << 20);
    let path = work.path().join("log");
    std::fs::write(&path, &data).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 10);
    let streamed = r
        .stream_file(path.to_str().unwrap(), 0, None, tx)
        .await
        .unwrap();
    assert!(matches!(streamed, Streamed::Read { .. }));
    let mut chunks = Vec::new();
    while let Some(c) = rx.recv().await {
        chunks.push(c);
    }
    assert_eq!(chunks.concat(), data, "every byte, once, in order");
    // A chunk sent because it was full ends at a line end (a chunk sent because nothing
    // more had come yet may end anywhere).
    let aligned = chunks[..chunks.len() - 1]
        .iter()
        .filter(|c| c.len() >= 512 << 10 && c.ends_with(b"\n"))
        .count();
    assert!(
        aligned >= 2,
        "{aligned} of {} chunks end at a line end",
        chunks.len()
    );
}
