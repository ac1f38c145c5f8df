//! A job inside a container (`image` in `trainctl.toml`). The container is a property of
//! the attempt's command, not of how the attempt runs: `cmd.sh` creates the container and
//! runs it attached, so the runner (or a Slurm batch job) runs it like any command: the
//! log is the container's output, the exit code the container's, the runner's stop and
//! interruption notices (SIGTERM to its process group) become `docker stop` with the
//! grace, and SIGTERM reaches every process of the job inside the container.
//!
//! Inside, the code, the job's data and checkpoints are where they are on the machine
//! (trainctl's directory is mounted at its own path, so every `TRAINCTL_*` path holds),
//! the job's environment is passed, the command runs as the machine's user in the workdir
//! with the host's network and IPC, under Docker's init (which reaps), and a small shell
//! that passes SIGTERM to every process of the container and waits for them all before
//! the container ends (a training process saving its checkpoint is not cut short).

use crate::remote::{Remote, sh_quote};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;

/// The container of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub image: String,
    /// `trainctl-<job>-<attempt>`.
    pub name: String,
    pub job_id: String,
    pub attempt: i64,
    /// Mounted at its own path (trainctl's directory on the machine).
    pub mount: String,
    pub workdir: String,
    /// `DOCKER_HOST` on the machine.
    pub host: Option<String>,
    pub gpus: Option<u32>,
    /// `--shm-size` (and then a private IPC namespace); none: the host's IPC.
    pub shm_size: Option<String>,
    /// Where the attempt's files are (the container's name is kept there).
    pub job_dir: String,
    /// More mounts, `/machine:/container[:ro]` (checked: [`valid_volume`]).
    pub volumes: Vec<String>,
    /// `--pull never`: the image is one trainctl built on the machine (no registry has it).
    pub pull_never: bool,
}

/// `/machine/path:/container/path` or `…:ro`: absolute paths, nothing Docker could read
/// as another option.
pub fn valid_volume(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    let paths_ok = |p: &[&str]| {
        p.iter()
            .all(|x| x.starts_with('/') && !x.contains(',') && !x.chars().any(char::is_control))
    };
    match parts.as_slice() {
        [a, b] => paths_ok(&[a, b]),
        [a, b, "ro"] | [a, b, "rw"] => paths_ok(&[a, b]),
        _ => false,
    }
}

/// A reference `docker` takes (`registry:5000/team/name:tag`, `name@sha256:…`), with
/// nothing a shell or Docker could read as another argument.
pub fn valid_image(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with('-')
        && r.len() <= 512
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
}

/// The `docker create` arguments (each to be shell-quoted) for `env_keys` passed in.
pub fn create_args(c: &Container, env_keys: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "create".into(),
        "--init".into(),
        "--name".into(),
        c.name.clone(),
        "--label".into(),
        format!("trainctl.job={}", c.job_id),
        "--label".into(),
        format!("trainctl.attempt={}", c.attempt),
        "--network".into(),
        "host".into(),
    ];
    if c.pull_never {
        a.extend(["--pull".into(), "never".into()]);
    }
    match &c.shm_size {
        Some(s) => a.extend(["--shm-size".into(), s.clone()]),
        None => a.extend(["--ipc".into(), "host".into()]),
    }
    for v in &c.volumes {
        a.extend(["-v".into(), v.clone()]);
    }
    a.extend([
        "-v".into(),
        format!("{0}:{0}", c.mount),
        "-w".into(),
        c.workdir.clone(),
    ]);
    if let Some(n) = c.gpus.filter(|&n| n > 0) {
        // `--gpus 2` is read as a count.
        a.extend(["--gpus".into(), n.to_string()]);
    }
    for k in env_keys {
        a.extend(["-e".into(), k.to_string()]);
    }
    a.extend([
        "-e".into(),
        "TRAINCTL_CMD".into(),
        c.image.clone(),
        "sh".into(),
        "-c".into(),
        INNER.into(),
    ]);
    a
}

/// The container's first process under Docker's init: the command in a shell of its own;
/// SIGTERM (from `docker stop`) goes to every other process of the container; the
/// container ends once they all have, with the command's exit status.
const INNER: &str = "sh -c \"$TRAINCTL_CMD\" & c=$!; \
    trap 'kill -TERM -1 2>/dev/null' TERM INT; \
    while :; do wait $c; s=$?; kill -0 $c 2>/dev/null || break; done; \
    while kill -0 -1 2>/dev/null; do sleep 0.1; done; exit $s";

/// `cmd.sh` of an attempt in a container: `env` exported (and passed in), the container
/// created (the image pulled if missing: its output is the log's first lines), its name
/// kept in the job's folder (`container`: what terminate removes), run attached in a
/// session of its own (the runner's signals do not cut its output), stopped on SIGTERM
/// with the runner's grace less two seconds (so the container's own exit status is the
/// one recorded), removed at the end.
pub fn script(c: &Container, command: &str, env: &BTreeMap<String, String>) -> String {
    let mut s = String::from("# written by trainctl: the command in a container\n");
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    s.push_str(&format!("export TRAINCTL_CMD={}\n", sh_quote(command)));
    if let Some(h) = &c.host {
        s.push_str(&format!("export DOCKER_HOST={}\n", sh_quote(h)));
    }
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    let args: Vec<String> = create_args(c, &keys).iter().map(|a| sh_quote(a)).collect();
    let user = "--user \"$(id -u):$(id -g)\"";
    // `docker create ARGS… --user`: the user goes before the image, after `create`.
    let (head, tail) = args.split_at(1);
    s.push_str(&format!(
        "n={n}\n\
         g=${{TRAINCTL_GRACE:-30}}; [ \"$g\" -gt 3 ] && g=$((g - 2))\n\
         docker rm -f \"$n\" >/dev/null 2>&1\n\
         printf '%s\\n%s\\n' \"${{DOCKER_HOST:-}}\" \"$n\" > {jd}/container\n\
         docker {head} {user} {tail} >/dev/null || exit 125\n\
         trap 'docker stop -t \"$g\" \"$n\" >/dev/null 2>&1' TERM INT\n\
         setsid -w docker start -a \"$n\" < /dev/null &\n\
         p=$!\n\
         while :; do wait $p; s=$?; kill -0 $p 2>/dev/null || break; done\n\
         docker rm \"$n\" >/dev/null 2>&1\n\
         exit $s\n",
        n = sh_quote(&c.name),
        jd = sh_quote(&c.job_dir),
        head = head.join(" "),
        tail = tail.join(" "),
    ));
    s
}

fn docker_env(host: Option<&str>) -> String {
    host.map(|h| format!("DOCKER_HOST={} ", sh_quote(h)))
        .unwrap_or_default()
}

/// Before anything runs: Docker answers on the machine, and a job asking for GPUs has an
/// NVIDIA runtime there.
pub async fn check(remote: &dyn Remote, host: Option<&str>, gpus: Option<u32>) -> Result<()> {
    let out = remote
        .exec(&format!(
            "{}docker info --format '{{{{json .Runtimes}}}}' 2>&1",
            docker_env(host)
        ))
        .await?;
    let text = crate::sanitize::sanitize_line(out.stdout.trim_ascii());
    if out.status != 0 {
        bail!(
            "the job runs in a container, but Docker does not answer on the machine{}: {text}",
            host.map(|h| format!(" at {h}")).unwrap_or_default()
        );
    }
    if let Some(n) = gpus.filter(|&n| n > 0)
        && !text.contains("nvidia")
    {
        bail!(
            "the job asks for {n} GPU(s) in its container, but the machine's Docker has no \
             NVIDIA runtime (install the NVIDIA Container Toolkit there); runtimes: {text}"
        );
    }
    Ok(())
}

/// Remove every container trainctl's attempts on this machine left (each attempt's
/// folder names its container): what terminating or releasing a machine does first. One
/// round trip whatever the number of attempts; nothing when Docker is not there.
pub async fn remove_all_left(remote: &dyn Remote) -> Result<()> {
    let jobs = sh_quote(&format!("{}/jobs", remote.root()));
    let out = remote
        .exec(&format!(
            "command -v docker >/dev/null 2>&1 || exit 0; \
             for f in {jobs}/*/container; do [ -f \"$f\" ] || continue; \
             h=$(sed -n 1p \"$f\"); n=$(sed -n 2p \"$f\"); [ -n \"$n\" ] || continue; \
             if [ -n \"$h\" ]; then DOCKER_HOST=\"$h\" docker rm -f \"$n\"; else docker rm -f \"$n\"; fi \
             >/dev/null 2>&1 && echo \"$n\"; done; true"
        ))
        .await?;
    let removed = String::from_utf8_lossy(&out.stdout);
    if !removed.trim().is_empty() {
        tracing::info!("removed containers: {}", removed.trim());
    }
    Ok(())
}

/// The sources of a Dockerfile's `COPY` and `ADD` instructions (not `--from` another
/// stage), as written: what of the context a build uses. Continuation lines are joined;
/// the JSON form is read.
pub fn copied_sources(dockerfile: &str) -> Vec<String> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        joined.push(cur);
    }
    let mut out = Vec::new();
    for ins in joined {
        let mut words = ins.splitn(2, char::is_whitespace);
        let op = words.next().unwrap_or("").to_ascii_uppercase();
        if op != "COPY" && op != "ADD" {
            continue;
        }
        let rest = words.next().unwrap_or("").trim();
        let args: Vec<String> = if rest.starts_with('[') {
            serde_json::from_str::<Vec<String>>(rest).unwrap_or_default()
        } else {
            rest.split_whitespace().map(str::to_string).collect()
        };
        let (flags, paths): (Vec<String>, Vec<String>) =
            args.into_iter().partition(|a| a.starts_with("--"));
        if flags.iter().any(|f| f.starts_with("--from")) || paths.len() < 2 {
            continue;
        }
        out.extend(paths[..paths.len() - 1].iter().cloned());
    }
    out
}

/// The hash that names a Dockerfile's image (`trainctl/<project>:<hash>`): the
/// Dockerfile, its build arguments, and the content of every context file its `COPY` and
/// `ADD` use (a glob, a folder: every file under it). Code the Dockerfile does not copy
/// does not make it differ. 16 hex digits of BLAKE3.
pub fn build_hash(
    context: &std::path::Path,
    dockerfile_text: &str,
    args: &BTreeMap<String, String>,
) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(b"trainctl-image-1\0");
    h.update(dockerfile_text.as_bytes());
    for (k, v) in args {
        h.update(format!("\0{k}={v}").as_bytes());
    }
    let mut files = std::collections::BTreeSet::new();
    for src in copied_sources(dockerfile_text) {
        if src.contains("://") {
            // A URL: what it serves is the build's business.
            h.update(format!("\0url {src}").as_bytes());
            continue;
        }
        let rel = src.trim_start_matches("./");
        let pattern = if rel.is_empty() || rel == "." {
            "**"
        } else {
            rel
        };
        let glob = globset::Glob::new(pattern)
            .with_context(|| format!("COPY source `{src}`"))?
            .compile_matcher();
        let under = format!("{}/", rel.trim_end_matches('/'));
        for path in files_under(context) {
            let Ok(p) = path.strip_prefix(context) else {
                continue;
            };
            let ps = p.to_string_lossy();
            if pattern == "**" || glob.is_match(p) || ps.starts_with(&under) {
                files.insert(p.to_path_buf());
            }
        }
    }
    for f in files {
        h.update(b"\0");
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(b"\0");
        let mut fh = blake3::Hasher::new();
        std::fs::File::open(context.join(&f))
            .and_then(|mut file| std::io::copy(&mut file, &mut fh))
            .with_context(|| format!("reading {}", f.display()))?;
        h.update(fh.finalize().as_bytes());
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// Every file under `dir` (links not followed).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// The build on the machine, as setup text: nothing when the image is there already (said
/// in the log); with a registry (`pushed`: `tag` names it), pulled from there when another
/// machine built it; else `docker build` of `dockerfile` in `context` (paths on the
/// machine), its output the log's, then pushed when `pushed`.
pub fn build_text(
    tag: &str,
    dockerfile: &str,
    context: &str,
    args: &BTreeMap<String, String>,
    host: Option<&str>,
    pushed: bool,
) -> String {
    let mut b = format!(
        "docker build --label trainctl.image=1 -t {} -f {}",
        sh_quote(tag),
        sh_quote(dockerfile)
    );
    for (k, v) in args {
        b.push_str(&format!(" --build-arg {}", sh_quote(&format!("{k}={v}"))));
    }
    b.push_str(&format!(" {}", sh_quote(context)));
    let t = sh_quote(tag);
    let (pull, push) = if pushed {
        (
            format!(
                "elif docker pull {t}; then echo \"pulled image {tag} from its registry: not built\"; "
            ),
            format!("; docker push {t}"),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "{}if docker image inspect {t} >/dev/null 2>&1; then echo \"image {tag} is on this machine already: not built again\"; \
         {pull}else echo \"building image {tag}\"; {b}{push}; fi\n",
        host.map(|h| format!("export DOCKER_HOST={}\n", sh_quote(h)))
            .unwrap_or_default(),
    )
}

/// Log the machine's Docker in to `registry` (the password on `docker login`'s standard
/// input: never on a command line, never in trainctl's output).
pub async fn login(
    remote: &dyn Remote,
    host: Option<&str>,
    registry: &str,
    user: &str,
    password: &crate::ssh::Secret,
) -> Result<()> {
    let out = remote
        .exec_with_stdin(
            &format!(
                "{}docker login --username {} --password-stdin {} 2>&1",
                docker_env(host),
                sh_quote(user),
                sh_quote(registry)
            ),
            password.expose().as_bytes(),
        )
        .await?;
    if out.status != 0 {
        let said = crate::sanitize::sanitize_line(out.stdout.trim_ascii())
            .replace(password.expose(), "[redacted]");
        bail!("docker login to {registry} on the machine: {said}");
    }
    Ok(())
}

/// Log trainctl's own Docker in to `registry` (for a local build's push).
pub async fn login_here(registry: &str, user: &str, password: &crate::ssh::Secret) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("docker")
        .args(["login", "--username", user, "--password-stdin", registry])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("docker (trainctl's own, for a local build)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(password.expose().as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        let said = crate::sanitize::sanitize_line(out.stderr.trim_ascii())
            .replace(password.expose(), "[redacted]");
        bail!("docker login to {registry} here: {said}");
    }
    Ok(())
}

/// Build `tag` with trainctl's own Docker from `dockerfile` in `context` and push it;
/// a failure says the build's last lines.
pub async fn build_here(
    tag: &str,
    dockerfile: &std::path::Path,
    context: &std::path::Path,
    args: &BTreeMap<String, String>,
) -> Result<()> {
    let run = |argv: Vec<String>| async move {
        let out = tokio::process::Command::new("docker")
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("docker (trainctl's own, for a local build)")?;
        if !out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
            bail!(
                "docker {}: {}",
                argv.first().map(String::as_str).unwrap_or(""),
                crate::sanitize::sanitize_line(tail.as_bytes())
            );
        }
        Ok(())
    };
    let mut argv = vec![
        "build".to_string(),
        "--label".into(),
        "trainctl.image=1".into(),
        "-t".into(),
        tag.into(),
        "-f".into(),
        dockerfile.display().to_string(),
    ];
    for (k, v) in args {
        argv.extend(["--build-arg".into(), format!("{k}={v}")]);
    }
    argv.push(context.display().to_string());
    run(argv).await?;
    run(vec!["push".into(), tag.into()]).await
}

/// Whether `tag`'s registry has it, asked from the machine.
pub async fn registry_has(remote: &dyn Remote, host: Option<&str>, tag: &str) -> Result<bool> {
    docker_says_yes(remote, host, "manifest inspect --insecure", tag).await
}

/// Whether `tag` is on the machine's Docker.
pub async fn has_image(remote: &dyn Remote, host: Option<&str>, tag: &str) -> Result<bool> {
    docker_says_yes(remote, host, "image inspect", tag).await
}

/// Whether `docker SUBCOMMAND TAG` succeeds on the machine (its output discarded).
async fn docker_says_yes(
    remote: &dyn Remote,
    host: Option<&str>,
    subcommand: &str,
    tag: &str,
) -> Result<bool> {
    let out = remote
        .exec(&format!(
            "{}docker {subcommand} {} >/dev/null 2>&1",
            docker_env(host),
            sh_quote(tag)
        ))
        .await?;
    Ok(out.status == 0)
}

/// An image trainctl's jobs used on a machine (kept in `<root>/images`, a line each:
/// `DOCKER_HOST<TAB>image`), with its size there when it is still there.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MachineImage {
    pub host: Option<String>,
    pub image: String,
    /// Bytes on the machine's disk; none: not there any more.
    pub bytes: Option<u64>,
}

fn images_file(remote: &dyn Remote) -> String {
    format!("{}/images", remote.root())
}

/// Remember that the jobs use `image` on this machine (once).
pub async fn note_image(remote: &dyn Remote, host: Option<&str>, image: &str) -> Result<()> {
    let line = format!("{}\t{image}", host.unwrap_or(""));
    let f = sh_quote(&images_file(remote));
    remote
        .exec(&format!(
            "grep -qxF {l} {f} 2>/dev/null || printf '%s\\n' {l} >> {f}",
            l = sh_quote(&line)
        ))
        .await?
        .check("noting the job's image")?;
    Ok(())
}

/// The images trainctl's jobs used on this machine, with their sizes (one round trip).
pub async fn machine_images(remote: &dyn Remote) -> Result<Vec<MachineImage>> {
    let f = sh_quote(&images_file(remote));
    let out = remote
        .exec(&format!(
            "[ -f {f} ] || exit 0; command -v docker >/dev/null 2>&1 || exit 0; \
             while IFS=$(printf '\\t') read -r h i; do [ -n \"$i\" ] || continue; \
             if [ -n \"$h\" ]; then export DOCKER_HOST=\"$h\"; else unset DOCKER_HOST; fi; \
             b=$(docker image inspect --format '{{{{.Size}}}}' \"$i\" 2>/dev/null || echo -); \
             printf '%s\\t%s\\t%s\\n' \"$h\" \"$i\" \"$b\"; done < {f}"
        ))
        .await?
        .check("listing the jobs' images")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '\t');
            let (h, i, b) = (p.next()?, p.next()?, p.next()?);
            Some(MachineImage {
                host: (!h.is_empty()).then(|| h.to_string()),
                image: i.to_string(),
                bytes: b.trim().parse().ok(),
            })
        })
        .collect())
}

/// Remove the images trainctl's jobs used on this machine that no container uses (Docker
/// refuses those); forget the ones gone. Returns the removed ones.
pub async fn prune_images(remote: &dyn Remote) -> Result<Vec<MachineImage>> {
    let all = machine_images(remote).await?;
    let mut removed = Vec::new();
    let mut kept = String::new();
    for im in all {
        if im.bytes.is_none() {
            continue;
        }
        let out = remote
            .exec(&format!(
                "{}docker image rm {} 2>&1",
                docker_env(im.host.as_deref()),
                sh_quote(&im.image)
            ))
            .await?;
        if out.status == 0 {
            removed.push(im);
        } else {
            kept.push_str(&format!(
                "{}\t{}\n",
                im.host.as_deref().unwrap_or(""),
                im.image
            ));
        }
    }
    remote
        .write_file(&images_file(remote), kept.as_bytes(), 0o644)
        .await?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> Container {
        Container {
            image: "nvcr.io/nvidia/pytorch:24.10-py3".into(),
            name: "trainctl-j-1-1".into(),
            job_id: "j-1".into(),
            attempt: 1,
            mount: "/home/me/.trainctl".into(),
            workdir: "/home/me/.trainctl/code/p".into(),
            host: None,
            gpus: Some(2),
            shm_size: None,
            job_dir: "/home/me/.trainctl/jobs/j-1-1".into(),
            volumes: vec!["/mnt/data:/data:ro".into()],
            pull_never: false,
        }
    }

    #[test]
    fn the_container_gets_the_gpus_the_mount_the_env_and_the_hosts_network() {
        let a = create_args(&c(), &["TRAINCTL_JOB_ID", "PYTHONUNBUFFERED"]);
        let s = a.join(" ");
        assert!(s.starts_with("create --init --name trainctl-j-1-1 "), "{s}");
        assert!(s.contains(" --gpus 2 "), "{s}");
        assert!(s.contains(" --network host --ipc host "), "{s}");
        assert!(
            s.contains(" -v /home/me/.trainctl:/home/me/.trainctl -w /home/me/.trainctl/code/p ")
        );
        assert!(s.contains(" -e TRAINCTL_JOB_ID -e PYTHONUNBUFFERED -e TRAINCTL_CMD "));
        assert!(s.contains(" --label trainctl.job=j-1 "));
        assert!(s.contains(" -v /mnt/data:/data:ro "), "{s}");
        for (v, ok) in [
            ("/mnt/data:/data:ro", true),
            ("/a:/b", true),
            ("data:/data", false),
            ("/a:/b:z", false),
            ("/a,b:/c", false),
            ("/a", false),
        ] {
            assert_eq!(valid_volume(v), ok, "{v}");
        }
        // The image, then the shell that runs the command.
        let k = a
            .iter()
            .position(|x| x == "nvcr.io/nvidia/pytorch:24.10-py3")
            .unwrap();
        assert_eq!(&a[k + 1..k + 3], ["sh", "-c"]);
        // No GPUs asked: none given; shared memory asked: a private IPC with it.
        let cpu = Container {
            gpus: None,
            shm_size: Some("16g".into()),
            ..c()
        };
        let s = create_args(&cpu, &[]).join(" ");
        assert!(!s.contains("--gpus"), "{s}");
        assert!(
            s.contains(" --shm-size 16g ") && !s.contains("--ipc"),
            "{s}"
        );
    }

    #[test]
    fn a_dockerfiles_copies_are_what_its_image_depends_on() {
        let df = "FROM python:3.11\n# COPY not-this\nCOPY requirements.txt /r.txt\n\
                  RUN pip install -r /r.txt\nCOPY --chown=1:1 src/ \\\n  conf/*.yaml /app/\n\
                  COPY --from=builder /out /out\nADD [\"data set/x.csv\", \"/d/\"]\n";
        assert_eq!(
            copied_sources(df),
            vec!["requirements.txt", "src/", "conf/*.yaml", "data set/x.csv"]
        );
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::create_dir_all(ctx.join("src")).unwrap();
        std::fs::create_dir_all(ctx.join("conf")).unwrap();
        std::fs::write(ctx.join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(ctx.join("src/a.py"), "1").unwrap();
        std::fs::write(ctx.join("conf/x.yaml"), "a: 1").unwrap();
        std::fs::write(ctx.join("train.py"), "print(1)").unwrap();
        let args = BTreeMap::new();
        let h0 = build_hash(ctx, df, &args).unwrap();
        // Code it does not copy: the same image.
        std::fs::write(ctx.join("train.py"), "print(2)").unwrap();
        assert_eq!(build_hash(ctx, df, &args).unwrap(), h0);
        // What it copies, or its arguments: another.
        std::fs::write(ctx.join("requirements.txt"), "numpy\ntorch\n").unwrap();
        let h1 = build_hash(ctx, df, &args).unwrap();
        assert_ne!(h1, h0);
        std::fs::write(ctx.join("src/a.py"), "2").unwrap();
        let h2 = build_hash(ctx, df, &args).unwrap();
        assert_ne!(h2, h1);
        let with_arg: BTreeMap<String, String> = [("CUDA".to_string(), "12".to_string())].into();
        assert_ne!(build_hash(ctx, df, &with_arg).unwrap(), h2);
        // `COPY . /app`: everything.
        let all = "FROM x\nCOPY . /app\n";
        let a0 = build_hash(ctx, all, &args).unwrap();
        std::fs::write(ctx.join("train.py"), "print(3)").unwrap();
        assert_ne!(build_hash(ctx, all, &args).unwrap(), a0);
    }

    #[test]
    fn image_references_are_checked() {
        for ok in [
            "python:3.11",
            "nvcr.io/nvidia/pytorch:24.10-py3",
            "127.0.0.1:5000/team/img@sha256:abc",
        ] {
            assert!(valid_image(ok), "{ok}");
        }
        for bad in ["", "--privileged", "img; rm -rf /", "a b", "img$(x)"] {
            assert!(!valid_image(bad), "{bad}");
        }
    }

    #[test]
    fn the_script_quotes_the_command_and_keeps_the_containers_name() {
        let mut env = BTreeMap::new();
        env.insert("TRAINCTL_JOB_ID".to_string(), "j-1".to_string());
        let s = script(
            &Container {
                host: Some("unix:///tmp/d s/sock".into()),
                ..c()
            },
            "python3 train.py --name 'it''s'",
            &env,
        );
        // The exports read back to the command as written.
        let exports: String = s
            .lines()
            .filter(|l| l.starts_with("export "))
            .map(|l| format!("{l}\n"))
            .collect();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{exports}printf '%s|%s' \"$TRAINCTL_CMD\" \"$DOCKER_HOST\""
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "python3 train.py --name 'it''s'|unix:///tmp/d s/sock"
        );
        assert!(
            s.contains("docker create --user \"$(id -u):$(id -g)\" --init"),
            "{s}"
        );
        assert!(
            s.contains("> /home/me/.trainctl/jobs/j-1-1/container\n"),
            "{s}"
        );
        assert!(s.contains("trap 'docker stop -t \"$g\" \"$n\""), "{s}");
    }
}
