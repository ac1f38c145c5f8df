//! The `aws` provider against a real `moto_server`: launches (on demand, spot, the
//! ClientToken and tags), the catalog's refusals before any call, missing credentials, a
//! launch cut off and healed, orphans, and a whole run whose machine is a real sshd that
//! booted from the instance's user-data (host key pinned, no trust on first use).

use crate::common::*;
use trainctl::testkit::{Ec2Machines, Moto};

const REGION: &str = "us-east-1";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// An image moto knows, published at an SSM parameter of the test's own (the real
/// `/aws/service/...` names are reserved).
fn publish_ami(moto: &Moto) -> String {
    block_on(async {
        let sdk = moto.sdk(REGION);
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let images = ec2.describe_images().owners("amazon").send().await.unwrap();
        let ami = images
            .images()
            .iter()
            .find(|i| {
                i.name()
                    .is_some_and(|n| n.to_lowercase().contains("ubuntu"))
            })
            .or(images.images().first())
            .and_then(|i| i.image_id())
            .unwrap()
            .to_string();
        aws_sdk_ssm::Client::new(&sdk)
            .put_parameter()
            .name("/trainctl-test/ami")
            .value(&ami)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap();
        ami
    })
}

fn aws_env(endpoint: &str, extra: &str) -> Env {
    let mut env = Env::new(
        &format!(
            "[providers.aws]\nregions = [\"{REGION}\"]\nendpoint_url = \"{endpoint}\"\n\
             ssh_cidr = \"127.0.0.1/32\"\nami_parameter = \"/trainctl-test/ami\"\nssh_user = \"root\"\n\
             api_max_attempts = 1\nreach_timeout_seconds = 60\n{extra}"
        ),
        "0.005",
    );
    env.vars = Moto::client_env(&env.dir.path().join("no-aws-files"));
    env
}

/// Machines for `env`'s instances: each running instance in moto becomes a real sshd,
/// reached through the proxy (added to `env`'s `[providers.aws]`, its last table).
fn boot_machines(moto: &Moto, env: &Env) -> Ec2Machines {
    let m = Ec2Machines::start(moto, REGION, env.data().join("aws/id_ed25519.pub"));
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{cfg}\nproxy_command = {:?}\n", m.proxy_command()),
    )
    .unwrap();
    m
}

/// Every instance moto holds: (instance id, state, tags).
fn moto_instances(moto: &Moto) -> Vec<aws_sdk_ec2::types::Instance> {
    block_on(async {
        moto.ec2(REGION)
            .describe_instances()
            .send()
            .await
            .unwrap()
            .reservations()
            .iter()
            .flat_map(|r| r.instances().to_vec())
            .collect()
    })
}

fn tag(i: &aws_sdk_ec2::types::Instance, k: &str) -> Option<String> {
    trainctl::provider::aws::ec2::tag(i, k).map(str::to_string)
}

fn state(i: &aws_sdk_ec2::types::Instance) -> String {
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default()
}

/// moto with an image published, a test env on it (`extra` in `[providers.aws]`), and
/// machines that boot for its instances.
fn on_moto(extra: &str) -> (Moto, Env, Ec2Machines) {
    let moto = Moto::start();
    publish_ami(&moto);
    let env = aws_env(&moto.endpoint(), extra);
    let machines = boot_machines(&moto, &env);
    (moto, env, machines)
}

const G5_SPOT: [&str; 6] = [
    "launch",
    "--provider",
    "aws",
    "--type",
    "g5.xlarge",
    "--spot",
];

/// Launch a g5.xlarge (on spot or not); its trainctl id.
fn launch_g5(env: &Env, spot: bool) -> String {
    env.json(&G5_SPOT[..if spot { 6 } else { 5 }])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `id`'s row in `trainctl ls --json` (live instances).
fn ls_row(env: &Env, id: &str) -> serde_json::Value {
    let rows = env.json(&["ls"]);
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {rows}"))
        .clone()
}

/// The `trainctl-ssh` security group in moto.
fn trainctl_group(moto: &Moto) -> aws_sdk_ec2::types::SecurityGroup {
    block_on(async {
        moto.ec2(REGION)
            .describe_security_groups()
            .group_names("trainctl-ssh")
            .send()
            .await
            .unwrap()
            .security_groups()[0]
            .clone()
    })
}

/// A bucket in moto.
fn create_bucket(moto: &Moto, name: &str) {
    block_on(async {
        s3_client(moto)
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap();
    });
}

fn s3_client(moto: &Moto) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&moto.sdk(REGION))
            .force_path_style(true)
            .build(),
    )
}

/// Put `[resources]` (TOML lines) into the project, before `[env]` (the last table).
/// EC2 takes a machine (as at a spot deadline).
fn ec2_terminate(moto: &Moto, id: &str) {
    block_on(async {
        moto.ec2(REGION)
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
    });
}

/// EC2 no longer bills it.
fn assert_ended(i: &aws_sdk_ec2::types::Instance) {
    assert!(
        ["shutting-down", "terminated"].contains(&state(i).as_str()),
        "{:?} is {}",
        i.instance_id(),
        state(i)
    );
}

#[test]
fn spot_launch_is_tagged_pinned_and_terminated_with_confirmation() {
    let moto = Moto::start();
    let ami = publish_ami(&moto);
    let env = aws_env(&moto.endpoint(), "");
    let _machines = boot_machines(&moto, &env);

    let inst = env.json(&[
        "launch",
        "--provider",
        "aws",
        "--type",
        "g5.xlarge",
        "--spot",
        "--name",
        "spotty",
    ]);
    let id = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["state"], "running", "{inst}");
    assert_eq!(inst["spot"], true);
    assert_eq!(inst["region"], REGION);
    let pid = inst["provider_id"].as_str().unwrap().to_string();
    assert!(pid.starts_with("i-"), "{inst}");

    // What EC2 holds: one spot instance with our tags, the image from SSM, our key pair,
    // and the ClientToken derived from the id, zone, type and market.
    let all = moto_instances(&moto);
    assert_eq!(all.len(), 1);
    let i = &all[0];
    assert_eq!(i.instance_id(), Some(pid.as_str()));
    assert_eq!(tag(i, "trainctl:id").as_deref(), Some(id.as_str()));
    let owner = std::fs::read_to_string(env.data().join("aws/owner")).unwrap();
    assert_eq!(tag(i, "trainctl:owner").as_deref(), Some(owner.trim()));
    assert_eq!(i.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
    assert_eq!(i.image_id(), Some(ami.as_str()));
    assert_eq!(
        i.key_name(),
        Some(format!("trainctl-{}", owner.trim()).as_str())
    );
    let zone = i.placement().and_then(|p| p.availability_zone()).unwrap();
    assert_eq!(
        i.client_token(),
        Some(trainctl::provider::aws::client_token(&id, Some(zone), "g5.xlarge", true).as_str())
    );
    // The login key stays private; the host key the machine presented is the one made
    // for it, pinned before the first connection.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.data().join("aws/id_ed25519"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let host_key = tag(i, "trainctl:hostkey").unwrap();
    let host_key = host_key.split(' ').take(2).collect::<Vec<_>>().join(" ");
    let known = std::fs::read_to_string(env.data().join("aws/known_hosts")).unwrap();
    let ip = i.public_ip_address().unwrap();
    assert!(
        known.contains(&format!("{ip} {host_key}")),
        "{known}\n{host_key}"
    );
    // The security group lets SSH in from ssh_cidr only.
    let g = trainctl_group(&moto);
    let rules: Vec<(i32, String)> = g
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            p.ip_ranges().iter().map(move |r| {
                (
                    p.from_port().unwrap_or(-1),
                    r.cidr_ip().unwrap_or("").to_string(),
                )
            })
        })
        .collect();
    assert_eq!(rules, vec![(22, "127.0.0.1/32".to_string())]);
    // The machine runs commands (it is the sshd that booted from the user-data).
    let facts = inst["gpu_info"].as_str().unwrap_or_default().to_string();
    assert_eq!(facts, "no GPU", "{inst}");
    // The launch's steps are events.
    assert!(
        env.event_kinds(None)
            .contains(&"instance.launch_try".to_string())
    );

    // Terminate: confirmed with EC2 before the store forgets it.
    env.ok(&["terminate", &id]);
    let after = moto_instances(&moto);
    assert_ended(&after[0]);
    let rec = env.json(&["ls", "--all"]);
    let rec = rec
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(rec["state"], "terminated");
    assert!(rec["terminated_ms"].as_i64().unwrap() >= rec["launched_ms"].as_i64().unwrap());
}

#[test]
fn an_unknown_type_is_refused_before_any_aws_call() {
    // Nothing listens here: any API call would fail with a connection error instead.
    let closed = format!("http://127.0.0.1:{}", trainctl::testkit::free_port());
    let env = aws_env(&closed, "");
    let out = env.run(&["launch", "--provider", "aws", "--type", "g5.xlarg"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown instance type `g5.xlarg`"), "{err}");
    assert!(err.contains("nearest: g5.xlarge"), "{err}");
    // A type sold only as Capacity Blocks is refused on demand, from the catalog too.
    let out = env.run(&[
        "launch",
        "--provider",
        "aws",
        "--type",
        "p5e.48xlarge",
        "-o",
        "region=us-east-2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no on-demand price"), "{err}");
    // Nothing was recorded.
    assert!(env.json(&["ls", "--all"]).as_array().unwrap().is_empty());
}

#[test]
fn missing_credentials_name_what_was_looked_for() {
    let moto = Moto::start();
    let mut env = aws_env(&moto.endpoint(), "");
    env.vars
        .retain(|(k, _)| !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET"));
    env.vars.push(("AWS_ACCESS_KEY_ID".into(), String::new()));
    env.vars
        .push(("AWS_SECRET_ACCESS_KEY".into(), String::new()));
    let out = env.run(&["launch", "--provider", "aws", "--type", "g5.xlarge"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no AWS credentials"), "{err}");
    for looked in ["AWS_ACCESS_KEY_ID", "profile `default`", "instance role"] {
        assert!(err.contains(looked), "{looked}: {err}");
    }
    // --profile names the profile looked at.
    let out = env.run(&[
        "--profile",
        "work",
        "launch",
        "--provider",
        "aws",
        "--type",
        "g5.xlarge",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("profile `work`"), "{err}");
    assert!(moto_instances(&moto).is_empty());
    assert!(env.json(&["ls", "--all"]).as_array().unwrap().is_empty());
}

#[test]
fn no_capacity_in_a_zone_tries_the_next_then_on_demand() {
    use trainctl::testkit::{HttpFaults, ec2_error};
    let moto = Moto::start();
    publish_ami(&moto);
    // Zone a has no capacity at all; no zone has spot capacity.
    let faults = HttpFaults::start(moto.port, |body| {
        let run = body.contains("Action=RunInstances");
        let zone_a = body.contains("Placement.AvailabilityZone=us-east-1a");
        let spot = body.contains("InstanceMarketOptions.MarketType=spot");
        (run && (zone_a || spot)).then(|| {
            (
                500,
                ec2_error(
                    "InsufficientInstanceCapacity",
                    "We currently do not have sufficient capacity in the Availability Zone you requested.",
                ),
            )
        })
    });
    let env = aws_env(&faults.endpoint(), "");
    let _machines = boot_machines(&moto, &env);
    // On demand: zone a refuses, zone b takes it.
    let inst = env.json(&G5_SPOT[..5]);
    assert_eq!(inst["state"], "running", "{inst}");
    let all = moto_instances(&moto);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].placement().and_then(|p| p.availability_zone()),
        Some("us-east-1b")
    );
    let id = inst["id"].as_str().unwrap();
    let tries: Vec<String> = env
        .json(&["events"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "instance.launch_try" && e["instance_id"] == id)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        tries[0].contains("us-east-1a: InsufficientInstanceCapacity"),
        "{tries:?}"
    );
    assert!(
        tries
            .last()
            .unwrap()
            .contains("launched g5.xlarge on-demand in us-east-1b"),
        "{tries:?}"
    );
    // Spot without fallback: every zone refuses, nothing is left running or billed.
    let out = env.run(&[
        "launch",
        "--provider",
        "aws",
        "--type",
        "g5.xlarge",
        "--spot",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no capacity for g5.xlarge in us-east-1"),
        "{err}"
    );
    assert_eq!(moto_instances(&moto).len(), 1);
    let failed = env.json(&["ls", "--all"]);
    let failed = failed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] != id)
        .unwrap()
        .clone();
    assert_eq!(failed["state"], "terminated", "{failed}");
    // With spot_fallback, the same request lands on demand, priced on demand.
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{cfg}spot_fallback = true\n")).unwrap();
    let inst = env.json(&G5_SPOT);
    assert_eq!(inst["state"], "running", "{inst}");
    let all = moto_instances(&moto);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|i| i.instance_lifecycle().is_none()));
    assert_eq!(inst["hourly"], 1_006_000, "{inst}");
    assert!(
        faults
            .actions()
            .iter()
            .filter(|a| *a == "RunInstances")
            .count()
            >= 6
    );
}

#[test]
fn a_launch_cut_off_on_either_side_of_ec2s_answer_is_healed() {
    let (moto, env, _machines) = on_moto("");
    // Killed after EC2 answered, before the store heard: the machine is found by its tag.
    let out = env
        .cmd(&[
            "launch",
            "--provider",
            "aws",
            "--type",
            "g5.xlarge",
            "--spot",
        ])
        .env("TRAINCTL_FAILPOINT", "launch.answered")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = moto_instances(&moto);
    assert_eq!(all.len(), 1);
    let id = tag(&all[0], "trainctl:id").unwrap();
    let row = ls_row(&env, &id);
    assert_eq!(row["state"], "running", "{row}");
    assert_eq!(row["provider_id"], all[0].instance_id().unwrap());
    assert!(
        env.event_kinds(None)
            .contains(&"instance.healed".to_string())
    );
    // Killed after the intent, before any call: EC2 holds nothing, the row closes at $0.
    let out = env
        .cmd(&["launch", "--provider", "aws", "--type", "g5.xlarge"])
        .env("TRAINCTL_FAILPOINT", "launch.intent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let rows = env.json(&["ls", "--all"]);
    let closed = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] != id.as_str())
        .unwrap();
    assert_eq!(closed["state"], "terminated", "{closed}");
    assert_eq!(moto_instances(&moto).len(), 1);
}

#[test]
fn the_same_launch_twice_is_one_machine() {
    use trainctl::provider::{LaunchRequest, Provider, aws::AwsProvider};
    let moto = Moto::start();
    publish_ami(&moto);
    let dir = tempfile::tempdir().unwrap();
    let cfg = trainctl::config::AwsProviderConfig {
        regions: vec![REGION.into()],
        ssh_cidr: Some("127.0.0.1/32".into()),
        ami_parameter: "/trainctl-test/ami".into(),
        ..Default::default()
    };
    let p = AwsProvider::with_sdk(dir.path(), cfg, Default::default(), moto.sdk(REGION));
    block_on(async {
        let req = LaunchRequest {
            instance_type: Some("g5.xlarge".into()),
            spot: true,
            ..Default::default()
        };
        let plan = p.plan(&req).await.unwrap();
        let a = p.launch("i-twice", &plan).await.unwrap();
        let b = p.launch("i-twice", &plan).await.unwrap();
        assert_eq!(a.provider_id, b.provider_id);
        assert_eq!(p.list().await.unwrap().len(), 1);
    });
    assert_eq!(moto_instances(&moto).len(), 1);
}

#[test]
fn orphans_are_listed_with_their_cost_adopted_or_terminated() {
    let moto = Moto::start();
    let ami = publish_ami(&moto);
    let env = aws_env(&moto.endpoint(), "");
    let _machines = boot_machines(&moto, &env);
    // A machine trainctl launched, then lost from its store (a deleted data dir, a
    // restored backup): EC2 still holds it under this store's owner tag.
    let id = launch_g5(&env, false);
    {
        let db = rusqlite::Connection::open(env.data().join("trainctl.db")).unwrap();
        db.execute("DELETE FROM instances WHERE id = ?1", [&id])
            .unwrap();
    }
    // And one made by hand with the owner tag and nothing else.
    let owner = std::fs::read_to_string(env.data().join("aws/owner")).unwrap();
    let stray = block_on(async {
        let tags = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("trainctl:owner")
                    .value(owner.trim())
                    .build(),
            )
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("trainctl:id")
                    .value("i-stray")
                    .build(),
            )
            .build();
        moto.ec2(REGION)
            .run_instances()
            .image_id(&ami)
            .instance_type(aws_sdk_ec2::types::InstanceType::G4dnXlarge)
            .min_count(1)
            .max_count(1)
            .tag_specifications(tags)
            .send()
            .await
            .unwrap()
            .instances()[0]
            .instance_id()
            .unwrap()
            .to_string()
    });
    let rows = env.json(&["ls"]);
    let orphans: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["orphan"] == true)
        .collect();
    assert_eq!(orphans.len(), 2, "{rows}");
    let o = orphans.iter().find(|o| o["id"] == "i-stray").unwrap();
    assert_eq!(o["provider_id"], stray.as_str());
    assert_eq!(o["instance_type"], "g4dn.xlarge");
    assert_eq!(o["hourly"], 526_000, "the catalog's on-demand price: {o}");
    // At least EC2's first minute at $0.526/h.
    assert!(o["cost_micros"].as_i64().unwrap() >= 8_766, "{o}");
    // The table says so too, with what to do.
    let table = env.ok(&["ls"]);
    assert!(
        table.contains("ORPHAN") && table.contains("trainctl adopt"),
        "{table}"
    );

    // `watch` looks for them too, and says each once, as an event.
    let out = env.run(&["watch"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("trainctl adopt {id}")), "{err}");
    let found = env
        .json(&["events"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "orphan.found")
        .count();
    assert_eq!(found, 2);
    // The lost machine is adopted: reached (its pinned host key is in its tag) and known.
    let adopted = env.json(&["adopt", &id]);
    assert_eq!(adopted["state"], "running", "{adopted}");
    assert!(adopted["launched_ms"].as_i64().is_some());
    // The stray one is terminated by its provider id, confirmed with EC2.
    env.ok(&["terminate", &stray]);
    let gone = moto_instances(&moto)
        .into_iter()
        .find(|i| i.instance_id() == Some(stray.as_str()))
        .unwrap();
    assert_ended(&gone);
    assert!(
        env.event_kinds(None)
            .contains(&"orphan.terminated".to_string())
    );
    let rows = env.json(&["ls"]);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["orphan"] == false),
        "{rows}"
    );
    env.ok(&["terminate", &id]);
}

#[test]
fn the_example_job_runs_end_to_end_on_an_ec2_machine() {
    let (moto, env, _machines) = on_moto("");
    set_resources(&env, "instance_type = \"g5.xlarge\"");
    let out = env.run(&["run", "--provider", "aws", "--terminate-after"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = env.json(&["jobs"]);
    let job = &jobs.as_array().unwrap()[0];
    assert_eq!(job["state"], "succeeded", "{job}");
    // The model came back, the machine is gone from EC2, and what it cost is recorded.
    let model: serde_json::Value =
        serde_json::from_slice(&model_of(&env, job["id"].as_str().unwrap())).unwrap();
    assert!(model.is_object(), "{model}");
    let all = moto_instances(&moto);
    assert_eq!(all.len(), 1);
    assert_ended(&all[0]);
    // The console says what the machine was for.
    assert_eq!(tag(&all[0], "trainctl:job").as_deref(), job["id"].as_str());
    let cost = env.json(&["cost"]);
    let inst = job["instance_id"].as_str().unwrap();
    let c = cost_of(&cost, "instances", inst);
    // On demand at $1.006/h, and EC2 bills at least a minute: $0.016766 at least.
    assert!(c >= 16_766, "{cost}");
    assert!(cost_of(&cost, "jobs", job["id"].as_str().unwrap()) <= c);
}

#[test]
fn checkpoints_round_trip_through_s3_and_a_cut_upload_resumes() {
    use trainctl::job::checkpoint::CheckpointStore;
    use trainctl::provider::aws::s3::S3Store;
    use trainctl::testkit::HttpFaults;
    let moto = Moto::start();
    let faults = HttpFaults::start(moto.port, |_| None);
    create_bucket(&moto, "ckpts");
    let cfg = trainctl::config::AwsProviderConfig {
        regions: vec![REGION.into()],
        endpoint_url: Some(faults.endpoint()),
        s3_force_path_style: true,
        ..Default::default()
    };
    let mut sdk_cfg = moto.sdk(REGION).into_builder();
    sdk_cfg.set_endpoint_url(Some(faults.endpoint()));
    let sdk = std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(sdk_cfg.build())));
    let store = |dir: &std::path::Path, stop: Option<usize>| {
        S3Store::new(sdk.clone(), cfg.clone(), "s3://ckpts/runs", dir)
            .unwrap()
            .with_part_size(5 << 20)
            .stop_after_parts(stop)
    };
    let laptop = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut seed = 7u64;
    let small = pseudo_random(&mut seed, 100_000);
    let big = pseudo_random(&mut seed, 12 << 20); // three parts of 5 MiB
    block_on(async {
        // Small: one PUT, its BLAKE3 in the object's metadata.
        std::fs::write(src.path().join("a.pt"), &small).unwrap();
        let s = store(laptop.path(), None);
        let at = s
            .put("j-1", "epoch-1.pt", &src.path().join("a.pt"))
            .await
            .unwrap();
        assert_eq!(at, "s3://ckpts/runs/j-1/epoch-1.pt");
        // Big, cut after one part (as a killed process would leave it), then resumed.
        std::fs::write(src.path().join("b.pt"), &big).unwrap();
        let cut = store(laptop.path(), Some(1));
        let e = cut
            .put("j-1", "epoch-2.pt", &src.path().join("b.pt"))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("stopped after 1 parts"), "{e:#}");
        let parts_before = faults
            .request_lines()
            .iter()
            .filter(|l| l.contains("partNumber="))
            .count();
        assert_eq!(parts_before, 1);
        s.put("j-1", "epoch-2.pt", &src.path().join("b.pt"))
            .await
            .unwrap();
        let parts: Vec<String> = faults
            .request_lines()
            .into_iter()
            .filter(|l| l.starts_with("PUT") && l.contains("partNumber="))
            .collect();
        assert_eq!(parts.len(), 3, "part 1 is not sent again: {parts:?}");
        let mut resumed: Vec<&str> = parts[1..]
            .iter()
            .filter_map(|l| l.split("partNumber=").nth(1)?.split('&').next())
            .collect();
        resumed.sort();
        assert_eq!(resumed, ["2", "3"], "{parts:?}");
        assert_eq!(
            s.list("j-1").await.unwrap(),
            vec!["epoch-1.pt", "epoch-2.pt"]
        );

        // Another laptop (no local cache) downloads and checks the BLAKE3.
        let elsewhere = tempfile::tempdir().unwrap();
        let s2 = store(elsewhere.path(), None);
        let want = blake3::hash(&big).to_hex().to_string();
        let got = s2.get("j-1", "epoch-2.pt", &want).await.unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), big);
        // What S3 holds is not what was shipped: refused.
        let e = store(tempfile::tempdir().unwrap().path(), None)
            .get("j-1", "epoch-1.pt", &want)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("refused"), "{e:#}");
        s.delete("j-1", "epoch-1.pt").await.unwrap();
        assert_eq!(s.list("j-1").await.unwrap(), vec!["epoch-2.pt"]);
    });
}

/// Steps per epoch of the toy job.
const SPE: u32 = 16;

/// A spot job on moto with checkpoints in S3 and an IMDS emulator, held inside epoch 3
/// (until `gate` exists), and the model an uninterrupted run makes.
struct SpotS3 {
    moto: Moto,
    imds: trainctl::testkit::Imds,
    env: Env,
    machines: Ec2Machines,
    expected: Vec<u8>,
    gate: std::path::PathBuf,
}

fn spot_s3() -> SpotS3 {
    let moto = Moto::start();
    publish_ami(&moto);
    let imds = trainctl::testkit::Imds::start();
    create_bucket(&moto, "ckpts");
    let env = aws_env(
        &moto.endpoint(),
        &format!(
            "imds_endpoint = \"{}\"\ncheckpoints_s3 = \"s3://ckpts/runs\"\ns3_force_path_style = true\n",
            imds.endpoint()
        ),
    );
    let machines = boot_machines(&moto, &env);
    let expected = reference_model(&env);
    set_resources(&env, "instance_type = \"g5.xlarge\"\nspot = true");
    let gate = env.hold_at(2 * SPE + 5);
    SpotS3 {
        moto,
        imds,
        env,
        machines,
        expected,
        gate,
    }
}

/// Release the held job and let `run` end: it succeeded after a resume from a kept
/// checkpoint, with the model an uninterrupted run makes, on a second machine; both of
/// its machines are gone from EC2.
fn finish_resumed(
    moto: &Moto,
    env: &Env,
    gate: &std::path::Path,
    run: std::process::Child,
    job: &str,
    expected: &[u8],
) {
    finish_resumed_run(env, gate, run, job, expected);
    let all = moto_instances(moto);
    assert_eq!(all.len(), 2);
    all.iter().for_each(assert_ended);
}

#[test]
fn a_spot_interruption_is_survived_with_the_checkpoint_in_s3() {
    // On spot, held inside epoch 3 with epoch 2's checkpoint shipped to S3.
    let SpotS3 {
        moto,
        imds,
        env,
        machines: _machines,
        expected,
        gate,
    } = spot_s3();
    let (run, job) = run_until_epoch_2_is_kept(&env, "aws");
    let first = env.job(&job)["instance_id"].as_str().unwrap().to_string();
    let first_ec2 = moto_instances(&moto)[0].instance_id().unwrap().to_string();
    // First EC2 recommends moving off (rebalance): `run` says so, naming the job.
    imds.rebalance();
    env.wait_for(30, "the rebalance recommendation", || {
        env.json(&["events"]).as_array().unwrap().iter().any(|e| {
            e["kind"] == "instance.rebalance"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("trainctl migrate {job}"))
        })
    });
    // Then EC2 gives the two-minute notice; the machine sees it in IMDS by itself.
    imds.interrupt(120);
    env.wait_for(60, "the job to be interrupted", || {
        env.event_kinds(Some(&job))
            .iter()
            .any(|k| k == "job.interrupted")
    });
    // The notice was that machine's: the next one's metadata has none.
    imds.clear();
    let in_s3 = block_on(async {
        s3_client(&moto)
            .list_objects_v2()
            .bucket("ckpts")
            .prefix(format!("runs/{job}/"))
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect::<Vec<_>>()
    });
    assert!(
        in_s3.contains(&format!("runs/{job}/epoch-0002.json")),
        "{in_s3:?}"
    );
    // EC2 takes the machine; the job goes on elsewhere.
    ec2_terminate(&moto, &first_ec2);
    // Two machines, both gone from EC2, both billed in the store.
    finish_resumed(&moto, &env, &gate, run, &job, &expected);
    let second = env.job(&job)["instance_id"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    // Both attempts' logs are kept beside the checkpoints, as the laptop has them.
    for attempt in [1, 2] {
        let key = format!("runs/{job}/logs/{attempt}.log");
        let body = block_on(async {
            s3_client(&moto)
                .get_object()
                .bucket("ckpts")
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{key}: {e:?}"))
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes()
        });
        let local = std::fs::read(env.data().join(format!("logs/{job}/{attempt}.log"))).unwrap();
        assert_eq!(body.as_ref(), local.as_slice(), "{key}");
    }
    let rows = env.json(&["ls", "--all"]);
    for id in [&first, &second] {
        let r = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap();
        assert!(r["terminated_ms"].as_i64().is_some(), "{r}");
        assert!(r["launched_ms"].as_i64().is_some(), "{r}");
    }
}

#[test]
fn gpus_lists_the_cheapest_fitting_types_offline() {
    let env = Env::new("", "0.005");
    let rows = env.json(&[
        "gpus",
        "--region",
        "us-east-1",
        "--min-gpu-mem",
        "40",
        "--limit",
        "0",
    ]);
    let rows = rows.as_array().unwrap();
    assert!(rows.len() > 5, "{rows:?}");
    assert!(
        rows.windows(2)
            .all(|w| best_price(&w[0]) <= best_price(&w[1]))
    );
    assert!(
        rows.iter()
            .all(|r| r["region"] == "us-east-1" && r["gpu_memory_gib"].as_f64().unwrap() >= 40.0)
    );
    assert!(rows.iter().any(|r| r["instance_type"] == "p4d.24xlarge"));
    // Whole GPUs by default; `--gpus 0` lists the fractional slices too.
    let whole = env.json(&["gpus", "--limit", "0"]);
    assert!(
        whole
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["gpus"].as_f64().unwrap() >= 1.0)
    );
    let all = env.json(&["gpus", "--gpus", "0", "--limit", "0"]);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|r| r["gpus"].as_f64().unwrap() < 1.0)
    );
    let out = env.run(&["gpus", "--region", "mars-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it has: ap-northeast-1"));
}

#[test]
fn an_idle_machine_is_warned_about_then_ended_by_watch() {
    // Six seconds of idling allowed: the warning (5 minutes ahead) comes at once.
    let (moto, env, _machines) = on_moto("idle_minutes = 0.1\n");
    let id = launch_g5(&env, false);
    let t = std::time::Instant::now();
    env.ok(&["watch"]);
    assert!(t.elapsed() < std::time::Duration::from_secs(40));
    let evs = env.json(&["events"]);
    let kinds: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["instance_id"] == id.as_str())
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let warned = kinds
        .iter()
        .position(|k| *k == "instance.idle")
        .expect("warned");
    let ended = kinds
        .iter()
        .rposition(|k| *k == "instance.terminated")
        .expect("ended");
    assert!(warned < ended, "{kinds:?}");
    let all = moto_instances(&moto);
    assert_ended(&all[0]);
    // Told to stop instead: an on-demand machine keeps its disk, stopped.
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{cfg}idle_action = \"stop\"\n")).unwrap();
    let id = launch_g5(&env, false);
    env.ok(&["watch"]);
    let row = ls_row(&env, &id);
    assert_eq!(row["state"], "stopped", "{row}");
}

#[test]
fn a_checkpoint_bucket_that_cannot_be_written_stops_the_run_before_the_job_starts() {
    let (moto, env, _machines) =
        on_moto("checkpoints_s3 = \"s3://no-such-bucket/ck\"\ns3_force_path_style = true\n");
    set_resources(&env, "instance_type = \"g5.xlarge\"");
    let out = env.run(&["run", "--provider", "aws", "--terminate-after"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write checkpoints to s3://no-such-bucket/"),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["state"], "failed", "{jobs}");
    // Nothing ran, and the machine asked for with --terminate-after is gone.
    assert!(
        env.json(&["metrics", jobs[0]["id"].as_str().unwrap()])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let all = moto_instances(&moto);
    assert_ended(&all[0]);
}

#[test]
fn an_on_demand_machine_stops_without_billing_and_starts_again() {
    let (moto, env, _machines) = on_moto("");
    let id = launch_g5(&env, false);
    let stopped = env.json(&["stop", &id]);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(state(&moto_instances(&moto)[0]), "stopped");
    // Stopped: the cost does not move (the first minute is owed anyway: wait past it is
    // too long for a test, so compare two readings while stopped).
    let cost = |env: &Env| cost_of(&env.json(&["cost"]), "instances", &id);
    let c1 = cost(&env);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let row = ls_row(&env, &id);
    assert_eq!(
        row["state"], "stopped",
        "ls leaves a stopped machine stopped: {row}"
    );
    assert_eq!(row["hourly"], 0, "{row}");
    let c2 = cost(&env);
    assert_eq!(c1, c2, "no compute billed while stopped");
    // Started: reached again (same host key, given at launch), billed at its price.
    let started = env.json(&["start", &id]);
    assert_eq!(started["state"], "running", "{started}");
    assert_eq!(started["hourly"], 1_006_000, "{started}");
    let facts = env.ok(&["ls"]);
    assert!(facts.contains("running"), "{facts}");
    assert!(
        env.event_kinds(None)
            .contains(&"instance.stopped".to_string())
    );
    // A spot machine cannot be stopped: said, nothing changes.
    let spot = env.json(&G5_SPOT)["id"].as_str().unwrap().to_string();
    let out = env.run(&["stop", &spot]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot stop a one-time spot instance"));
}

#[test]
fn a_type_without_capacity_anywhere_gives_way_to_the_next_of_any_of() {
    use trainctl::testkit::{HttpFaults, ec2_error};
    let moto = Moto::start();
    publish_ami(&moto);
    // No g5.xlarge anywhere.
    let faults = HttpFaults::start(moto.port, |body| {
        (body.contains("Action=RunInstances") && body.contains("InstanceType=g5.xlarge")).then(
            || {
                (
                    500,
                    ec2_error("InsufficientInstanceCapacity", "no g5.xlarge capacity"),
                )
            },
        )
    });
    let env = aws_env(&faults.endpoint(), "");
    let _machines = boot_machines(&moto, &env);
    set_resources(
        &env,
        "instance_type = \"g5.xlarge\"\nany_of = [\"g6.xlarge\"]",
    );
    let run = env.json(&["run", "--provider", "aws", "--terminate-after"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let inst = run["instance_id"].as_str().unwrap();
    let rows = env.json(&["ls", "--all"]);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == inst)
        .unwrap();
    assert_eq!(row["instance_type"], "g6.xlarge", "{row}");
    assert_eq!(row["hourly"], 804_800, "g6.xlarge's on-demand price: {row}");
    let all = moto_instances(&moto);
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].instance_type().map(|t| t.as_str()),
        Some("g6.xlarge")
    );
    // An unknown alternative is refused before any call.
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("g6.xlarge", "g6.xlargee");
    std::fs::write(&toml, text).unwrap();
    let before = faults.actions().len();
    let out = env.run(&["run", "--provider", "aws"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown instance type `g6.xlargee` in any_of")
    );
    assert_eq!(
        faults.actions().len(),
        before,
        "{:?}",
        &faults.actions()[before..]
    );
}

#[test]
fn with_no_trainctl_watching_the_machine_puts_its_checkpoint_in_s3_itself() {
    let SpotS3 {
        moto,
        imds,
        env,
        machines,
        expected,
        gate,
    } = spot_s3();
    // Started, then nobody watches (the laptop closed).
    let job = env
        .ok(&["run", "--provider", "aws", "--detach", "--terminate-after"])
        .trim()
        .to_string();
    let home = machines.homes()[0].clone();
    let ckpt = home.join(".trainctl/code/toy-train/checkpoints/epoch-0002.json");
    let job_dir = home.join(format!(".trainctl/jobs/{job}-1"));
    env.wait_for(60, "epoch 2's checkpoint on the machine", || ckpt.exists());
    // The machine only acts alone once no trainctl has polled it for 15 s.
    std::thread::sleep(std::time::Duration::from_secs(16));
    imds.interrupt(120);
    env.wait_for(60, "the machine's own upload", || {
        let err = std::fs::read_to_string(job_dir.join("rescue.err")).unwrap_or_default();
        assert!(
            !err.contains("Error") && !err.contains("neither"),
            "the rescue failed: {err}"
        );
        job_dir.join("rescued").exists()
    });
    env.wait_for(30, "the machine's upload of its log", || {
        let err = std::fs::read_to_string(job_dir.join("rescue-log.err")).unwrap_or_default();
        assert!(
            !err.contains("Error") && !err.contains("neither"),
            "the log rescue failed: {err}"
        );
        job_dir.join("log_rescued").exists()
    });
    let rescued = std::fs::read_to_string(job_dir.join("rescued")).unwrap();
    assert!(rescued.contains("name=epoch-0002.json"), "{rescued}");
    // EC2 takes the machine; later a trainctl comes back and the job goes on.
    imds.clear();
    let id = moto_instances(&moto)[0].instance_id().unwrap().to_string();
    ec2_terminate(&moto, &id);
    std::fs::write(&gate, "").unwrap();
    env.ok(&["watch"]);
    let j = env.job(&job);
    assert_eq!(j["state"], "succeeded", "{j}");
    let kinds = env.event_kinds(Some(&job));
    assert!(
        kinds.contains(&"checkpoint.rescued".to_string()),
        "{kinds:?}"
    );
    // The log the first machine wrote after trainctl left came back with its tail.
    assert!(kinds.contains(&"log.rescued".to_string()), "{kinds:?}");
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(log.contains("step=1 "), "{log}");
    assert!(
        kinds.contains(&"checkpoint.restored".to_string()),
        "{kinds:?}"
    );
    let model = model_of(&env, &job);
    assert_eq!(
        model, expected,
        "resumed from the machine's own upload, same model"
    );
    moto_instances(&moto).iter().for_each(assert_ended);
}

#[test]
fn later_launches_skip_the_setup_and_redo_it_when_it_is_gone() {
    use trainctl::testkit::HttpFaults;
    let moto = Moto::start();
    publish_ami(&moto);
    let faults = HttpFaults::start(moto.port, |_| None);
    let env = aws_env(&faults.endpoint(), "");
    let _machines = boot_machines(&moto, &env);
    let calls = |f: &dyn Fn()| {
        let before = faults.actions().len();
        f();
        let mut c = faults.actions()[before..].to_vec();
        c.sort();
        c
    };
    let first = calls(&|| {
        launch_g5(&env, false);
    });
    assert!(first.contains(&"ImportKeyPair".to_string()), "{first:?}");
    assert!(
        first.contains(&"CreateSecurityGroup".to_string()),
        "{first:?}"
    );
    // The key pair, group, rule and image were remembered for the region.
    let second = calls(&|| {
        launch_g5(&env, false);
    });
    assert_eq!(
        second,
        [
            // The newest image is asked for every time (it changes).
            "AmazonSSM.GetParameter",
            "DescribeInstanceTypeOfferings",
            "DescribeInstanceTypeOfferings",
            "DescribeInstances",
            "DescribeInstances",
            "RunInstances"
        ],
        "{second:?}"
    );
    // Someone deleted the group: the launch that finds out makes it again and lands.
    let g = trainctl_group(&moto);
    let gid = g.group_id().unwrap().to_string();
    block_on(async {
        moto.ec2(REGION)
            .delete_security_group()
            .group_id(&gid)
            .send()
            .await
            .unwrap();
    });
    let third = calls(&|| {
        launch_g5(&env, false);
    });
    assert!(
        third.contains(&"CreateSecurityGroup".to_string()),
        "{third:?}"
    );
    assert_eq!(moto_instances(&moto).len(), 3);
}

#[test]
fn a_spot_machines_price_is_read_again_and_billed_from_then() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use trainctl::testkit::HttpFaults;
    let moto = Moto::start();
    publish_ami(&moto);
    // moto's spot price never moves: from `moved` on, EC2 quotes $0.50/h.
    let moved = Arc::new(AtomicBool::new(false));
    let m = moved.clone();
    let faults = HttpFaults::start(moto.port, move |body| {
        (m.load(Ordering::Relaxed) && body.contains("Action=DescribeSpotPriceHistory")).then(|| {
            (
                200,
                "<DescribeSpotPriceHistoryResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><spotPriceHistorySet><item><instanceType>g5.xlarge</instanceType><productDescription>Linux/UNIX</productDescription><spotPrice>0.500000</spotPrice><timestamp>2026-11-26T10:00:00.000Z</timestamp><availabilityZone>us-east-1a</availabilityZone></item></spotPriceHistorySet><nextToken/></DescribeSpotPriceHistoryResponse>".to_string(),
            )
        })
    });
    let mut env = aws_env(&faults.endpoint(), "");
    let _machines = boot_machines(&moto, &env);
    set_resources(&env, "instance_type = \"g5.xlarge\"\nspot = true");
    let gate = env.hold_at(20);
    env.vars
        .push(("TRAINCTL_SPOT_PRICE_EVERY".into(), "1".into()));
    let run = env
        .cmd(&["run", "--provider", "aws", "--json", "--terminate-after"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let job = env.wait_running_with_metrics();
    let inst = env.job(&job)["instance_id"].as_str().unwrap().to_string();
    let at_launch = ls_row(&env, &inst)["hourly"].as_i64().unwrap();
    assert_eq!(at_launch, 10, "moto's $0.00001/h, read at launch");
    moved.store(true, Ordering::Relaxed);
    // `run` tends its machines every 5 s and reads a spot price again after the period.
    env.wait_for(30, "the new spot price", || {
        ls_row(&env, &inst)["hourly"].as_i64() == Some(500_000)
    });
    std::fs::write(&gate, "").unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = env.json(&["ls", "--all"]);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == inst.as_str())
        .unwrap();
    let segs = row["price_segments"].as_array().unwrap();
    assert_eq!(segs.len(), 2, "{row}");
    assert_eq!(segs[0][1], 10);
    assert_eq!(segs[1][1], 500_000);
    assert!(
        env.event_kinds(None)
            .contains(&"instance.price".to_string())
    );
}

#[test]
fn when_ssh_cannot_reach_a_machine_ssm_reads_its_job_and_stops_it() {
    let moto = Moto::start();
    let ami = publish_ami(&moto);
    let env = aws_env(&moto.endpoint(), &format!("ami = {ami:?}"));
    let machines = boot_machines(&moto, &env);
    // moto runs no command: the machines' own agent does (testkit::SsmAgent).
    let agent = trainctl::testkit::SsmAgent::start(&machines);
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{cfg}endpoints = {{ ssm = {:?} }}\n", agent.endpoint()),
    )
    .unwrap();
    set_resources(&env, "instance_type = \"g5.xlarge\"");
    let _gate = env.hold_at(3);
    let job = env
        .ok(&["run", "--provider", "aws", "--detach"])
        .trim()
        .to_string();
    let home = machines.homes()[0].clone();
    let job_dir = home.join(format!(".trainctl/jobs/{job}-1"));
    env.wait_for(60, "the job to reach step 3", || {
        std::fs::read_to_string(job_dir.join("stdout.log")).is_ok_and(|l| l.contains("step=3 "))
    });
    // The machine's security group stops admitting this laptop: SSH is refused.
    let ec2_id = moto_instances(&moto)[0].instance_id().unwrap().to_string();
    machines.block_ssh(&ec2_id, true);
    let inst = env.job(&job)["instance_id"].as_str().unwrap().to_string();
    let cancel_err = env.dir.path().join("cancel.err");
    let mut cancel = env
        .cmd(&["cancel", &job])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&cancel_err).unwrap())
        .spawn()
        .unwrap();
    // Through SSM the job is seen and told to stop: it saves and exits on the machine.
    env.wait_for(60, "the job to exit on the machine", || {
        job_dir.join("exit_code").exists()
    });
    assert_eq!(
        std::fs::read_to_string(job_dir.join("exit_code"))
            .unwrap()
            .trim(),
        "143"
    );
    env.wait_for(30, "the stop recorded as sent through SSM", || {
        env.event_kinds(Some(&job))
            .contains(&"job.stop_sent".to_string())
    });
    env.wait_for(30, "ls to say what SSM sees", || {
        ls_row(&env, &inst)["error"]
            .as_str()
            .is_some_and(|e| e.contains("through SSM: job exited 143"))
    });
    let row = ls_row(&env, &inst);
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{row}"
    );
    // Every command went to the SSH user's shell through the base64 wrapper.
    assert!(agent.scripts().iter().all(|s| s.contains("base64 -d")));
    // Its end is not recorded from SSM: the log waits for SSH.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(cancel.try_wait().unwrap().is_none(), "cancel waits for SSH");
    assert_eq!(env.job(&job)["state"], "running");
    machines.block_ssh(&ec2_id, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = cancel.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "cancel never ended");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&cancel_err).unwrap()
    );
    assert_eq!(env.job(&job)["state"], "cancelled");
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(ls_row(&env, &inst)["error"].is_null(), "reachable again");
    // The SSM remote itself: any script text, any bytes, in the SSH user's home.
    let ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&moto.sdk(REGION))
            .endpoint_url(agent.endpoint())
            .build(),
    );
    let timeout = std::time::Duration::from_secs(20);
    block_on(async {
        use trainctl::provider::aws::ssm::SsmRemote;
        use trainctl::remote::Remote;
        let r = SsmRemote::open(ssm.clone(), &ec2_id, "root", timeout)
            .await
            .unwrap();
        assert_eq!(r.root(), format!("{}/.trainctl", home.display()));
        let out = r
            .exec("printf '%s|' \"it's\" '$HOME `x`'; echo; exit 3")
            .await
            .unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout_str(), "it's|$HOME `x`|\n");
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let path = format!("{}/ssm-test/bin", r.root());
        r.write_file(&path, &bytes[..30_000], 0o600).await.unwrap();
        r.append_file(&path, &bytes[30_000..]).await.unwrap();
        let mut back = Vec::new();
        while let Some(b) = r
            .read_range(&path, back.len() as u64, 1 << 20)
            .await
            .unwrap()
        {
            if b.is_empty() {
                break;
            }
            back.extend(b);
        }
        assert_eq!(back, bytes);
        assert!(
            r.read_range(&format!("{path}.no"), 0, 10)
                .await
                .unwrap()
                .is_none()
        );
        // An instance without the agent (not managed) is said to be so.
        let e = SsmRemote::open(ssm, "i-0123456789abcdef0", "root", timeout)
            .await
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("not a managed instance"), "{e:#}");
    });
    env.ok(&["terminate", &inst]);
    moto_instances(&moto).iter().for_each(assert_ended);
}

#[test]
fn gpus_refresh_reads_types_zones_and_prices_from_aws() {
    use trainctl::testkit::{HttpFaults, PriceListApi};
    let moto = Moto::start();
    publish_ami(&moto);
    // moto's spot prices are fake: EC2 quotes these (the newest price of a zone counts,
    // not its cheapest).
    let item = |zone: &str, price: &str, at: &str| {
        format!(
            "<item><instanceType>g5.xlarge</instanceType><productDescription>Linux/UNIX</productDescription><spotPrice>{price}</spotPrice><timestamp>{at}</timestamp><availabilityZone>{zone}</availabilityZone></item>"
        )
    };
    let history = format!(
        "<DescribeSpotPriceHistoryResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><spotPriceHistorySet>{}{}{}</spotPriceHistorySet><nextToken/></DescribeSpotPriceHistoryResponse>",
        item("us-east-1a", "0.111000", "2026-11-26T08:00:00.000Z"),
        item("us-east-1a", "0.321000", "2026-11-26T10:00:00.000Z"),
        item("us-east-1b", "0.400000", "2026-11-26T10:00:00.000Z"),
    );
    let faults = HttpFaults::start(moto.port, move |body| {
        body.contains("Action=DescribeSpotPriceHistory")
            .then(|| (200, history.clone()))
    });
    let prices = PriceListApi::start(&[
        ("us-east-1", "g5.xlarge", "1.2340000000"),
        ("eu-west-1", "g5.xlarge", "9.9990000000"),
    ]);
    let env = aws_env(
        &faults.endpoint(),
        &format!("endpoints = {{ pricing = {:?} }}", prices.endpoint()),
    );
    let before = env.json(&["gpus", "--limit", "0"]);
    let row = |rows: &serde_json::Value, ty: &str, region: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["instance_type"] == ty && r["region"] == region)
            .cloned()
    };
    let out = env.run(&[
        "gpus",
        "--refresh",
        "--region",
        "us-east-1",
        "--json",
        "--limit",
        "0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("us-east-1: "), "{err}");
    assert!(err.contains("AWS calls"), "{err}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g5 = row(&rows, "g5.xlarge", "us-east-1").unwrap();
    assert_eq!(g5["on_demand_micros"], 1_234_000, "{g5}\n{err}");
    assert_eq!(g5["spot_micros"], 321_000, "{g5}");
    assert_eq!(g5["accelerator"], "A10G");
    assert_eq!(g5["gpus"], 1.0);
    // A type EC2 offers but the Price List does not price has no on-demand price (and
    // moto quotes no spot price for it here): it is not listed as buyable.
    assert!(row(&rows, "g4dn.xlarge", "us-east-1").is_none());
    // One GetProducts per offered type, none for the other regions.
    let offered: usize = err
        .split("us-east-1: ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(offered > 10, "{err}");
    assert_eq!(prices.calls(), offered);
    // The other regions are the shipped catalog's, untouched.
    let after = env.json(&["gpus", "--limit", "0"]);
    assert_eq!(
        row(&after, "g5.xlarge", "eu-west-1"),
        row(&before, "g5.xlarge", "eu-west-1")
    );
    assert!(row(&before, "g5.xlarge", "eu-west-1").is_some());
    // Later listings (no refresh) read the refreshed rows and say where prices come from.
    let out = env.run(&["gpus", "--region", "us-east-1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("aws") && l.contains(" g5.xlarge ") && l.contains("$1.234")),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prices read from AWS for us-east-1 "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a launch bills the refreshed on-demand price.
    let _machines = boot_machines(&moto, &env);
    let launched = env.json(&["launch", "--provider", "aws", "--type", "g5.xlarge"]);
    assert_eq!(launched["hourly"], 1_234_000, "{launched}");
    env.ok(&["terminate", launched["id"].as_str().unwrap()]);
}

#[test]
fn a_rebalance_recommendation_moves_a_job_that_asked_for_it() {
    let SpotS3 {
        moto,
        imds,
        env,
        machines: _machines,
        expected,
        gate,
    } = spot_s3();
    set_table(
        &env,
        "recovery",
        "on = [\"interrupted\", \"lost\", \"rebalance\"]",
    );
    let (run, job) = run_until_epoch_2_is_kept(&env, "aws");
    let first = env.job(&job)["instance_id"].as_str().unwrap().to_string();
    // EC2 recommends moving off; no notice ever comes. The job moves by itself.
    imds.rebalance();
    env.wait_for(30, "the move", || {
        env.json(&["events"]).as_array().unwrap().iter().any(|e| {
            e["kind"] == "instance.rebalance"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("moving {job}"))
        })
    });
    // The recommendation was that machine's: the next one's metadata has none.
    imds.clear();
    env.wait_for(90, "the job running on a new machine", || {
        let j = env.job(&job);
        j["state"] == "running" && j["instance_id"] != first.as_str()
    });
    // Moved once, before any notice.
    finish_resumed(&moto, &env, &gate, run, &job, &expected);
}

/// An `s3://` dataset: listed by trainctl (names, sizes, ETags), fetched by the machine
/// itself with its own credentials (here: the local machine with moto's), placed once
/// (the second run: one round trip), a changed object fetched again and only it.
#[test]
fn an_s3_dataset_is_fetched_by_the_machine_once_and_only_what_changed_again() {
    let moto = Moto::start();
    create_bucket(&moto, "datasets");
    let put = |key: &str, body: &[u8]| {
        block_on(async {
            s3_client(&moto)
                .put_object()
                .bucket("datasets")
                .key(key)
                .body(body.to_vec().into())
                .send()
                .await
                .unwrap();
        })
    };
    let mut x = 99u64;
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                format!(
                    "coco/{}img-{i:02}.bin",
                    if i % 3 == 0 { "sub/" } else { "" }
                ),
                crate::common::pseudo_random(&mut x, 20_000 + i * 100),
            )
        })
        .collect();
    for (k, b) in &files {
        put(k, b);
    }
    put("coco-other/not-this.bin", b"elsewhere");
    let env = aws_env(&moto.endpoint(), "s3_force_path_style = true\n");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        format!("{text}\n[[data]]\nsrc = \"s3://datasets/coco\"\ndst = \"coco\"\n"),
    )
    .unwrap();
    let inst = env.json(&["launch", "--provider", "local"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mount = env
        .data()
        .join("sandboxes")
        .join(&inst)
        .join("home/.trainctl/datasets/toy-train/coco");
    let check = |files: &[(String, Vec<u8>)]| {
        for (k, b) in files {
            let rel = k.strip_prefix("coco/").unwrap();
            assert!(
                std::fs::read(mount.join(rel)).unwrap() == *b,
                "{rel} differs"
            );
        }
        assert!(!mount.join("not-this.bin").exists());
    };
    let events = |job: &str| -> Vec<String> {
        env.events(job)
            .iter()
            .filter(|e| e["kind"].as_str().unwrap().starts_with("data."))
            .map(|e| {
                format!(
                    "{} {}",
                    e["kind"].as_str().unwrap(),
                    e["message"].as_str().unwrap()
                )
            })
            .collect()
    };
    let first = env.json(&["run", "--instance", &inst]);
    assert_eq!(first["state"], "succeeded", "{first}");
    check(&files);
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    let ev = events(first["job_id"].as_str().unwrap());
    assert!(
        ev.len() == 1
            && ev[0].starts_with(&format!(
                "data.sent coco: 12 objects, {total} bytes fetched by the machine"
            )),
        "{ev:?}"
    );
    let second = env.json(&["run", "--instance", &inst]);
    let ev = events(second["job_id"].as_str().unwrap());
    assert!(ev.len() == 1 && ev[0].starts_with("data.placed"), "{ev:?}");
    // One object changes, keeping its size: only it is fetched.
    let mut changed = files.clone();
    changed[4].1[0] ^= 0xff;
    put(&changed[4].0, &changed[4].1);
    let third = env.json(&["run", "--instance", &inst]);
    assert_eq!(third["state"], "succeeded", "{third}");
    let ev = events(third["job_id"].as_str().unwrap());
    assert!(
        ev.len() == 1
            && ev[0].contains(&format!("12 objects, {} bytes fetched", changed[4].1.len())),
        "{ev:?}"
    );
    check(&changed);
    env.ok(&["terminate", &inst]);
}
