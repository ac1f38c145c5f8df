//! Jobs in containers, against a real Docker engine of the test's own
//! (`testkit::docker`: its own dockerd, a python image imported from this machine).

use crate::common::Env;
use trainctl::testkit::docker::{Docker, PYTHON_IMAGE};

/// The toy project with `image` and `[docker]` (the test's engine; `extra` more lines),
/// its command first saying whether it runs in a container.
fn in_container(env: &Env, docker: &Docker, extra: &str) {
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "command = \"python3 train.py --epochs 5\"",
        &format!(
            "image = \"{PYTHON_IMAGE}\"\n\
             command = \"test -f /.dockerenv && echo in-a-container-as-$(id -u); python3 train.py --epochs 5\""
        ),
    );
    std::fs::write(&toml, text).unwrap();
    crate::common::set_table(
        env,
        "docker",
        &format!(
            "host = \"{}\"\nvolumes = [\"{1}:{1}\"]\n{extra}",
            docker.host(),
            env.dir.path().display()
        ),
    );
}

/// The toy project built from a Dockerfile (`FROM` the test image, then `lines`) instead
/// of `image`, with `extra` `[docker]` lines.
fn dockerfile_project(env: &Env, docker: &Docker, extra: &str, lines: &str) {
    in_container(
        env,
        docker,
        &format!("dockerfile = \"Dockerfile\"\n{extra}"),
    );
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace(&format!("image = \"{PYTHON_IMAGE}\"\n"), "");
    std::fs::write(&toml, text).unwrap();
    std::fs::write(
        env.project.join("Dockerfile"),
        format!("FROM {PYTHON_IMAGE}\n{lines}"),
    )
    .unwrap();
}

/// The kinds of a job's image events (`image.build`, `image.cached`, `image.pull`).
/// The image a job built, as its log names it (`building image TAG`).
fn built_tag(env: &Env, job: &str) -> String {
    env.ok(&["logs", job])
        .lines()
        .find_map(|l| l.strip_prefix("building image ").map(str::to_string))
        .unwrap()
}

/// The machine loses an image.
fn remove_image(docker: &Docker, tag: &str) {
    let out = docker.run(&["image", "rm", tag]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image_events(env: &Env, job: &str) -> Vec<String> {
    env.event_kinds(Some(job))
        .into_iter()
        .filter(|k| k.starts_with("image."))
        .collect()
}

/// An `image` job runs in its container to success: its output is the job's log (metrics
/// followed), its artifacts pulled, the model the one a bare run makes; the container is
/// gone after.
#[test]
fn an_image_job_runs_in_its_container_with_metrics_and_artifacts() {
    let docker = Docker::start();
    docker.import_python();
    let env = Env::new("", "0");
    let expected = crate::common::reference_model(&env);
    in_container(&env, &docker, "");
    let run = env.json(&["run"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap();
    let log = env.ok(&["logs", job]);
    assert!(log.contains("in-a-container-as-0"), "{log}");
    assert!(env.has_metrics(job));
    let model = std::fs::read(
        env.project
            .join("trainctl-out")
            .join(job)
            .join("model.json"),
    )
    .unwrap();
    assert_eq!(model, expected, "the same model as without the container");
    assert!(docker.containers().is_empty(), "{:?}", docker.containers());
}

/// A job cancelled mid-run: SIGTERM reaches the training process inside the container,
/// which says so and saves, and its last lines land; no container is left. Then terminate
/// removes a container an attempt left behind (here made by hand under that attempt's
/// name).
#[test]
fn a_cancel_reaches_the_process_in_the_container_and_terminate_leaves_none() {
    let docker = Docker::start();
    docker.import_python();
    let env = Env::new("", "0.02");
    let _gate = env.hold_at(30);
    in_container(&env, &docker, "");
    let run = env.json(&["run", "--detach"]);
    let job = run["job_id"].as_str().unwrap().to_string();
    let inst = run["instance_id"].as_str().unwrap().to_string();
    env.wait_for(60, "the job running with metrics", || env.has_metrics(&job));
    assert_eq!(docker.containers().len(), 1, "{:?}", docker.containers());
    env.ok(&["cancel", &job]);
    assert_eq!(env.job(&job)["state"], "cancelled");
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    env.wait_for(30, "the container gone", || docker.containers().is_empty());
    // A container its attempt left (as if the machine lost the wrapper): terminate
    // removes it.
    let name = format!("trainctl-{job}-1");
    let out = docker.run(&["create", "--name", &name, PYTHON_IMAGE, "sleep", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(docker.containers(), vec![name]);
    env.ok(&["terminate", &inst]);
    assert!(docker.containers().is_empty(), "{:?}", docker.containers());
}

/// Refused before anything runs, with the reason: Docker not answering where the job says,
/// and a GPU job on a machine without GPUs.
#[test]
fn a_container_job_is_refused_clearly_when_docker_or_the_gpus_are_not_there() {
    let docker = Docker::start();
    let env = Env::new("", "0");
    in_container(&env, &docker, "");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(&docker.host(), "unix:///nonexistent/docker.sock"),
    )
    .unwrap();
    let out = env.run(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Docker does not answer"), "{err}");
    std::fs::write(&toml, text).unwrap();
    crate::common::set_resources(&env, "gpus = 1");
    let out = env.run(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GPU"), "{err}");
    assert!(docker.containers().is_empty());
    // A bad image reference is refused where it is written.
    std::fs::write(
        &toml,
        std::fs::read_to_string(&toml)
            .unwrap()
            .replace(PYTHON_IMAGE, "--privileged"),
    )
    .unwrap();
    let out = env.run(&["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trainctl.toml:") && err.contains("image reference"),
        "{err}"
    );
}

/// A Dockerfile job: the image is built on the machine (its output in the job's log, the
/// job setting up meanwhile), named by the hash of what the build uses; a second job on
/// the same machine does not build again (its event says so), nor does a code change the
/// Dockerfile does not copy; a change to what it copies builds a new image.
#[test]
fn a_dockerfile_is_built_once_per_content_on_a_machine() {
    let docker = Docker::start();
    docker.import_python();
    let env = Env::new("", "0");
    dockerfile_project(
        &env,
        &docker,
        "build_args = { GREETING = \"hi\" }",
        "ARG GREETING\nCOPY requirements.txt /opt/req.txt\n\
             RUN echo \"$GREETING from the image\" > /opt/built\n",
    );
    std::fs::write(env.project.join("requirements.txt"), "numpy\n").unwrap();
    let built = |job: &str| image_events(&env, job);
    let first = env.json(&["run"]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let j1 = first["job_id"].as_str().unwrap();
    assert_eq!(built(j1), vec!["image.build"]);
    let log = env.ok(&["logs", j1]);
    assert!(log.contains("building image trainctl/toy-train:"), "{log}");
    assert!(log.contains("in-a-container-as-0"), "{log}");
    assert!(env.has_metrics(j1));
    // Built with its argument.
    let said = env
        .events(j1)
        .iter()
        .find(|e| e["kind"] == "image.build")
        .and_then(|e| e["message"].as_str().map(str::to_string))
        .unwrap();
    let tag = said.split_whitespace().nth(2).unwrap().to_string();
    let out = docker.run(&[
        "run",
        "--rm",
        "--network",
        "host",
        &tag,
        "cat",
        "/opt/built",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi from the image\n",
        "{said}"
    );
    // The same machine, a code change the Dockerfile does not copy: not built again.
    let inst = first["instance_id"].as_str().unwrap();
    std::fs::write(env.project.join("notes.txt"), "changed\n").unwrap();
    let second = env.json(&["run", "--instance", inst]);
    assert_eq!(second["state"], "succeeded", "{second}");
    let j2 = second["job_id"].as_str().unwrap();
    assert_eq!(built(j2), vec!["image.cached"]);
    assert!(!env.ok(&["logs", j2]).contains("building image"));
    // What it copies changed: a new image.
    std::fs::write(env.project.join("requirements.txt"), "numpy\ntorch\n").unwrap();
    let third = env.json(&["run", "--instance", inst]);
    assert_eq!(third["state"], "succeeded", "{third}");
    assert_eq!(
        built(third["job_id"].as_str().unwrap()),
        vec!["image.build"]
    );
    let images = String::from_utf8_lossy(
        &docker
            .run(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .stdout,
    )
    .into_owned();
    assert_eq!(
        images
            .lines()
            .filter(|l| l.starts_with("trainctl/toy-train:"))
            .count(),
        2,
        "{images}"
    );
    // `ls` tells what they take; `images --prune` removes them (no container uses them).
    let table = env.ok(&["ls"]);
    assert!(
        table.contains(&format!("{inst}: the jobs' container images take")),
        "{table}"
    );
    let listed = env.json(&["images", "--instance", inst]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["bytes"].as_u64().unwrap() > 0)
    );
    let pruned = env.json(&["images", "--instance", inst, "--prune"]);
    assert_eq!(pruned["removed"].as_array().unwrap().len(), 2, "{pruned}");
    assert!(pruned["freed_bytes"].as_u64().unwrap() > 0);
    let images = String::from_utf8_lossy(
        &docker
            .run(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .stdout,
    )
    .into_owned();
    assert!(!images.contains("trainctl/toy-train"), "{images}");
    assert!(
        images.contains(PYTHON_IMAGE),
        "the base is not trainctl's: {images}"
    );
    assert!(!env.ok(&["ls"]).contains("container images take"));
    // Pruned: the next job builds it again (the machine's record of the setup does not
    // skip the build), never looking for it on a public registry.
    let again = env.json(&["run", "--instance", inst]);
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(
        built(again["job_id"].as_str().unwrap()),
        vec!["image.build"]
    );
}

/// A container job moved to a new machine (`migrate`) stops in its container (SIGTERM
/// reaching the training process there), and resumes in a container on the new machine
/// from its checkpoint, to the model an uninterrupted run makes; no container is left.
#[test]
fn a_migrated_container_job_resumes_from_its_checkpoint() {
    use crate::common::{finish_resumed_run, reference_model, run_until_epoch_2_is_kept};
    let docker = Docker::start();
    docker.import_python();
    let env = Env::new("", "0.005");
    let expected = reference_model(&env);
    let gate = env.hold_at(2 * 16 + 5);
    in_container(&env, &docker, "");
    let (run, job) = run_until_epoch_2_is_kept(&env, "local");
    let first = env.job(&job)["instance_id"].as_str().unwrap().to_string();
    let moved = env.json(&["migrate", &job]);
    assert_eq!(moved["attempt"], 2, "{moved}");
    assert_ne!(moved["instance_id"].as_str().unwrap(), first);
    finish_resumed_run(&env, &gate, run, &job, &expected);
    let log = env.ok(&["logs", &job]);
    assert_eq!(log.matches("in-a-container-as-0").count(), 2, "{log}");
    env.wait_for(30, "no container left", || docker.containers().is_empty());
}

/// On an SSH host (the test sshd, this machine's Docker behind it): a container job runs
/// to success over SSH; releasing the host while a container job runs there stops the job
/// and leaves no container.
#[test]
fn a_container_job_on_an_ssh_host_runs_and_releasing_the_host_leaves_no_container() {
    let docker = Docker::start();
    docker.import_python();
    let sshd = trainctl::testkit::Sshd::start();
    let env = crate::ssh::ssh_env(&sshd, "", "0.02");
    // Held only once the gate is gone (the second run).
    let gate = env.hold_at(20);
    std::fs::write(&gate, "").unwrap();
    in_container(&env, &docker, "");
    let inst = crate::ssh::launch_ssh(&env);
    let run = env.json(&["run", "--instance", &inst]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap();
    assert!(env.ok(&["logs", job]).contains("in-a-container-as-0"));
    assert!(docker.containers().is_empty());
    std::fs::remove_file(&gate).unwrap();
    let held = env.json(&["run", "--instance", &inst, "--detach"]);
    let held = held["job_id"].as_str().unwrap().to_string();
    env.wait_for(60, "the held job running with metrics", || {
        env.has_metrics(&held)
    });
    assert_eq!(docker.containers().len(), 1);
    env.ok(&["terminate", &inst]);
    assert_eq!(env.job(&held)["state"], "cancelled");
    assert!(docker.containers().is_empty(), "{:?}", docker.containers());
}

/// With `[docker] registry`, the machine that builds the image pushes it; a machine
/// without it (here: the same engine with the image removed, as a replacement machine
/// after an interruption would be) pulls it from the registry instead of building.
#[test]
fn a_built_image_is_pushed_and_a_machine_without_it_pulls_instead_of_building() {
    let docker = Docker::start();
    docker.import_python();
    let registry = trainctl::testkit::docker::Registry::start();
    let env = Env::new("", "0");
    dockerfile_project(
        &env,
        &docker,
        &format!("registry = \"{}/team\"", registry.address()),
        "RUN echo built > /tmp/built\n",
    );
    let kinds = |job: &str| image_events(&env, job);
    let first = env.json(&["run"]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let j1 = first["job_id"].as_str().unwrap();
    assert_eq!(kinds(j1), vec!["image.build"]);
    let tag = built_tag(&env, j1);
    assert!(
        tag.starts_with(&format!("{}/team/toy-train:", registry.address())),
        "{tag}"
    );
    // The machine loses the image: the next job pulls it, and builds nothing.
    remove_image(&docker, &tag);
    let second = env.json(&["run", "--instance", first["instance_id"].as_str().unwrap()]);
    assert_eq!(second["state"], "succeeded", "{second}");
    let j2 = second["job_id"].as_str().unwrap();
    assert_eq!(kinds(j2), vec!["image.pull"]);
    let log = env.ok(&["logs", j2]);
    assert!(log.contains("from its registry: not built"), "{log}");
    assert!(!log.contains("building image"), "{log}");
}

/// `[docker] registry = "ecr"`: the repository is made in ECR (moto's API) when missing,
/// the machine's Docker logged in with `GetAuthorizationToken`'s password on its standard
/// input (the password is nowhere in trainctl's store, logs or output), the image pushed to
/// the registry the setting names (here a registry of the test's own) and pulled by a
/// machine without it instead of building.
#[test]
fn ecr_makes_the_repository_logs_in_and_a_machine_without_the_image_pulls_it() {
    use trainctl::testkit::Moto;
    let moto = Moto::start();
    let docker = Docker::start();
    docker.import_python();
    let registry = trainctl::testkit::docker::Registry::start();
    let mut env = Env::new(
        &format!(
            "[providers.aws]\nregions = [\"us-east-1\"]\nendpoint_url = \"{}\"\necr_registry = \"{}\"\n",
            moto.endpoint(),
            registry.address()
        ),
        "0",
    );
    env.vars = Moto::client_env(&env.dir.path().join("no-aws-files"));
    dockerfile_project(
        &env,
        &docker,
        "registry = \"ecr\"",
        "RUN echo built > /tmp/built\n",
    );
    let first = env.json(&["run"]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let j1 = first["job_id"].as_str().unwrap();
    let kinds = env.event_kinds(Some(j1));
    assert!(
        kinds.contains(&"registry.login".to_string()) && kinds.contains(&"image.build".to_string()),
        "{kinds:?}"
    );
    let tag = built_tag(&env, j1);
    assert!(
        tag.starts_with(&format!("{}/trainctl/toy-train:", registry.address())),
        "{tag}"
    );
    // The repository is in ECR; the token's password is nowhere trainctl writes.
    let ecr = aws_sdk_ecr::Client::new(&moto.sdk("us-east-1"));
    let (repos, token) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let repos = ecr.describe_repositories().send().await.unwrap();
        let token = ecr.get_authorization_token().send().await.unwrap();
        (repos, token)
    });
    assert!(
        repos
            .repositories()
            .iter()
            .any(|r| r.repository_name() == Some("trainctl/toy-train")),
        "{repos:?}"
    );
    let token = token.authorization_data()[0]
        .authorization_token()
        .unwrap()
        .to_string();
    let decoded = aws_smithy_types::base64::decode(&token).unwrap();
    let password = String::from_utf8(decoded)
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .to_string();
    assert!(password.len() > 4);
    // (The machine's own Docker keeps its login in its `.docker`, as `docker login` does.)
    let mut stack = vec![env.dir.path().to_path_buf()];
    let mut docker_kept = false;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == ".docker") {
                    docker_kept = true;
                    continue;
                }
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                for secret in [&password, &token] {
                    assert!(
                        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                        "ECR's token in {}",
                        p.display()
                    );
                }
            }
        }
    }
    assert!(docker_kept, "the login was the machine's Docker's");
    // The machine loses the image: the next job pulls it from the registry.
    remove_image(&docker, &tag);
    let second = env.json(&["run", "--instance", first["instance_id"].as_str().unwrap()]);
    assert_eq!(second["state"], "succeeded", "{second}");
    let kinds = env.event_kinds(Some(second["job_id"].as_str().unwrap()));
    assert!(kinds.contains(&"image.pull".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"image.build".to_string()), "{kinds:?}");
}

/// `[docker] build = "local"`: trainctl's own Docker (here one engine) builds the image and
/// pushes it to the registry; the machine's Docker (another engine) pulls it, building
/// nothing.
#[test]
fn a_local_build_is_pushed_and_the_machine_pulls_it() {
    let here = Docker::start();
    here.import_python();
    let machine = Docker::start();
    let registry = trainctl::testkit::docker::Registry::start();
    let mut env = Env::new("", "0");
    env.vars.push(("DOCKER_HOST".into(), here.host()));
    dockerfile_project(
        &env,
        &machine,
        &format!(
            "registry = \"{}/team\"\nbuild = \"local\"",
            registry.address()
        ),
        "RUN echo built > /tmp/built\n",
    );
    let run = env.json(&["run"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap();
    let events = env.events(job);
    let said = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .and_then(|e| e["message"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        said("image.build").contains("built image") && said("image.build").contains("here"),
        "{events:?}"
    );
    assert!(
        said("image.pull").contains("from its registry"),
        "{events:?}"
    );
    let log = env.ok(&["logs", job]);
    assert!(log.contains("in-a-container-as-0"), "{log}");
    assert!(
        !log.contains("building image"),
        "the machine built nothing: {log}"
    );
    let on_machine = String::from_utf8_lossy(
        &machine
            .run(&["images", "--format", "{{.Repository}}"])
            .stdout,
    )
    .into_owned();
    assert!(
        on_machine.contains(&format!("{}/team/toy-train", registry.address())),
        "{on_machine}"
    );
    assert!(
        !on_machine.contains(PYTHON_IMAGE.split(':').next().unwrap()),
        "{on_machine}"
    );
}
