//! Broken config files are refused with file:line:col, and lose nothing.

use crate::common::Env;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_key_in_user_config_names_file_line_and_column() {
    let env = Env::new("[budget]\nper_jb_usd = 1.0\n", "0");
    let out = env.run(&["ls"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    let expected = format!("{}:5:1:", env.config.display());
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("per_jb_usd"), "{err}");
}

#[test]
fn type_error_in_user_config_is_located() {
    let env = Env::new("[providers.local]\nhourly_usd = \"cheap\"\n", "0");
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("{}:5:14:", env.config.display())),
        "{err}"
    );
}

#[test]
fn negative_budget_is_refused_with_its_location() {
    let env = Env::new("[budget]\nper_day_usd = -3.0\n", "0");
    let out = env.run(&["cost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains(":5:1:"), "{}", stderr_of(&out));
}

#[test]
fn broken_project_file_is_located_and_valid_one_passes() {
    let env = Env::new("", "0");
    env.ok(&["config", "check"]);
    let toml = env.project.join("trainctl.toml");
    let good = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{good}\n[resources]\ngpus = \"two\"\n")).unwrap();
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let lines = good.lines().count() + 3;
    let err = stderr_of(&out);
    assert!(err.contains(&format!("trainctl.toml:{lines}:8:")), "{err}");
    std::fs::write(&toml, format!("comand = \"x\"\n{good}")).unwrap();
    let out = env.run(&["config", "check"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("trainctl.toml:1:1:") && err.contains("comand"),
        "{err}"
    );
    // A run with a broken project starts nothing.
    let out = env.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(env.json(&["ls", "--all"]).as_array().unwrap().is_empty());
}

#[test]
fn path_escaping_workdir_is_refused() {
    let env = Env::new("", "0");
    let toml = env.project.join("trainctl.toml");
    let good = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("workdir = \"../..\"\n{good}")).unwrap();
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("trainctl.toml:1:1:"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn unknown_instance_type_is_refused_before_anything_is_recorded() {
    let env = Env::new("", "0");
    let out = env.run(&["launch", "--type", "p5.48xlarge"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("`p5.48xlarge` is unknown"),
        "{}",
        stderr_of(&out)
    );
    assert!(env.json(&["ls", "--all"]).as_array().unwrap().is_empty());
}

#[test]
fn bad_key_binding_or_colour_is_located() {
    let env = Env::new("[tui.keys]\nterminate = \"hyper-q\"\n", "0");
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.contains(":5:1:") && err.contains("hyper-q"), "{err}");
    let env = Env::new("[tui.theme]\naccent = \"blue\"\n", "0");
    let out = env.run(&["config", "check"]);
    assert!(stderr_of(&out).contains(":5:1:"), "{}", stderr_of(&out));
    // The cockpit refuses it the same way, before touching the terminal.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainctl-tui"))
        .env("TRAINCTL_CONFIG", &env.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains(":5:1:"), "{}", stderr_of(&out));
}

#[test]
fn a_key_bound_to_two_actions_is_refused_with_both_places() {
    // Both in the file: both located.
    let env = Env::new(
        "[tui.keys]\nterminate = \"ctrl-x\"\nquit = [\"ctrl-c\", \"ctrl-x\"]\n",
        "0",
    );
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    let file = env.config.display().to_string();
    assert!(
        err.contains(&format!("{file}:5:1"))
            && err.contains(&format!("{file}:6:1"))
            && err.contains("ctrl-x")
            && err.contains("terminate")
            && err.contains("quit"),
        "{err}"
    );
    // Against a default binding: the user's line, and which default it meets.
    let env = Env::new("[tui.keys]\nterminate = \"ctrl-c\"\n", "0");
    let out = env.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains(":5:1:") && err.contains("`quit` (its default binding)"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainctl-tui"))
        .env("TRAINCTL_CONFIG", &env.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A key moved to a free one is fine.
    let env = Env::new("[tui.keys]\nterminate = \"ctrl-x\"\n", "0");
    assert_eq!(env.run(&["config", "check"]).status.code(), Some(0));
}
