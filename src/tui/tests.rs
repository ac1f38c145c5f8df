//! Cockpit tests: key sequences through the app state machine, and snapshots of every pane
//! and popup at 80x24 and 120x40 drawn with `TestBackend`.

use super::app::{App, Command, InstanceRow, JobRow, Mode, Msg, Snapshot};
use super::keymap::{Keymap, View};
use super::theme::{ColorMode, Theme};
use crate::config::LocalProviderConfig;
use crate::cost::{CostReport, InstanceCost, JobCost};
use crate::model::{InstanceState, JobState, MetricPoint, Money, Progress};
use crate::provider::Provider;
use crate::provider::local::LocalProvider;
use crate::store::{InstanceRecord, JobRecord};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use std::sync::Arc;

const NOW: i64 = 1_795_600_000_000;

fn validator() -> super::app::Validator {
    // The real local provider's plan: no IO, no side effect.
    let p = Arc::new(LocalProvider::new(
        std::path::Path::new("/nonexistent"),
        LocalProviderConfig::default(),
        std::time::Duration::from_secs(1),
    ));
    Arc::new(
        move |provider: &str, req: &crate::provider::LaunchRequest| {
            if provider != "local" {
                return Err(format!("unknown provider {provider}"));
            }
            p.check(req).map_err(|e| e.to_string())
        },
    )
}

fn instance(id: &str, name: &str, state: InstanceState, hourly: i64) -> InstanceRow {
    InstanceRow {
        idle_deadline: None,
        rec: InstanceRecord {
            name: name.into(),
            state,
            created_ms: NOW - 3_700_000,
            launched_ms: Some(NOW - 3_600_000),
            terminated_ms: (!state.is_live()).then_some(NOW - 60_000),
            ..InstanceRecord::intent(id, "local", "local", Money(hourly))
        },
        cost: Money(hourly),
        uptime_ms: 3_600_000,
        orphan: false,
        orphan_job_on: None,
    }
}

fn job(id: &str, name: &str, inst: &str, state: JobState, epoch: f64, loss: f64) -> JobRow {
    JobRow {
        rec: JobRecord {
            state,
            created_ms: NOW - 600_000,
            started_ms: Some(NOW - 590_000),
            ended_ms: state.is_terminal().then_some(NOW - 10_000),
            exit_code: match state {
                JobState::Failed => Some(3),
                JobState::Succeeded => Some(0),
                _ => None,
            },
            reason: (state == JobState::Failed).then(|| "exited with status 3".into()),
            ..JobRecord::pending(id, name, "/p", "python3 train.py", inst)
        },
        progress: Progress {
            epoch: Some(epoch),
            epochs_total: Some(10.0),
            step: Some(120),
            steps_total: None,
            ..Default::default()
        },
        elapsed_ms: Some(580_000),
        eta_ms: (!state.is_terminal()).then_some(700_000),
        cost: Money(123_456),
        projected: Some(Money(400_000)),
        metric: Some(("loss".into(), loss)),
        trend: (0..20).map(|i| 2.0 / (i as f64 + 1.0)).collect(),
        attempt: 1,
    }
}

fn fixture(readonly: bool) -> App {
    let theme = Theme::new(ColorMode::Palette256, &Default::default()).unwrap();
    let mut app = App::new(Keymap::default(), theme, readonly, 1000, validator());
    app.project = Some("toy-train".into());
    let mut orphan = instance("i-orphan00001", "?", InstanceState::Running, 0);
    orphan.orphan = true;
    let snap = Snapshot {
        now_ms: NOW,
        instances: vec![
            orphan,
            InstanceRow {
                rec: InstanceRecord {
                    gpus: 1,
                    gpu_info: Some("1x NVIDIA A100-SXM4-80GB (81920 MiB)".into()),
                    ..instance(
                        "i-tp2k0000aaaa",
                        "gpu-box",
                        InstanceState::Running,
                        2_500_000,
                    )
                    .rec
                },
                ..instance(
                    "i-tp2k0000aaaa",
                    "gpu-box",
                    InstanceState::Running,
                    2_500_000,
                )
            },
            instance(
                "i-tp2k0000bbbb",
                "old-run",
                InstanceState::Terminated,
                500_000,
            ),
        ],
        jobs: vec![
            job(
                "j-tp2k0000cccc",
                "toy-train",
                "i-tp2k0000aaaa",
                JobState::Running,
                3.0,
                0.4321,
            ),
            job(
                "j-tp2k0000dddd",
                "bert-ft",
                "i-tp2k0000bbbb",
                JobState::Succeeded,
                10.0,
                0.1234,
            ),
            job(
                "j-tp2k0000eeee",
                "yolo",
                "i-tp2k0000bbbb",
                JobState::Failed,
                2.0,
                f64::NAN,
            ),
        ],
        cost: Some(CostReport {
            total_micros: 3_000_000,
            today_micros: 2_500_000,
            burn_rate_micros_per_hour: 2_500_000,
            instances: vec![
                InstanceCost {
                    id: "i-tp2k0000aaaa".into(),
                    name: "gpu-box".into(),
                    provider: "local".into(),
                    state: "running".into(),
                    hourly_micros: 2_500_000,
                    cost_micros: 2_500_000,
                },
                InstanceCost {
                    id: "i-tp2k0000bbbb".into(),
                    name: "old-run".into(),
                    provider: "local".into(),
                    state: "terminated".into(),
                    hourly_micros: 500_000,
                    cost_micros: 500_000,
                },
            ],
            jobs: vec![JobCost {
                id: "j-tp2k0000cccc".into(),
                name: "toy-train".into(),
                state: "running".into(),
                cost_micros: 123_456,
                gpu_seconds: 3_600,
                eta_ms: Some(700_000),
                projected_micros: Some(400_000),
            }],
            days: Default::default(),
            gpu_seconds_days: Default::default(),
        }),
        budget_day: Some(Money(10_000_000)),
        budget_job: None,
    };
    let cmds = app.update(Msg::Snapshot(Box::new(snap)));
    // The newest job is focused and its log and metrics requested.
    assert!(cmds.iter().any(|c| matches!(c, Command::LoadLog { .. })));
    let job = "j-tp2k0000cccc".to_string();
    app.update(Msg::LogAppend {
        job: job.clone(),
        attempt: 1,
        end: 100,
        lines: (1..=60)
            .map(|i| format!("step={i} loss={:.4} lr=0.1", 1.0 / i as f64))
            .collect(),
        skipped: Some(0),
    });
    app.update(Msg::MetricsAppend {
        job,
        last_rowid: 400,
        points: fixture_points(),
        more: false,
    });
    app
}

/// toy-train's loss and accuracy, 200 steps.
fn fixture_points() -> Vec<MetricPoint> {
    (1..=200)
        .flat_map(|i| {
            [
                MetricPoint {
                    name: "loss".into(),
                    value: 2.0 / (i as f64).sqrt(),
                    step: Some(i),
                    epoch: None,
                    line: i as u64,
                },
                MetricPoint {
                    name: "accuracy".into(),
                    value: 1.0 - 1.0 / i as f64,
                    step: Some(i),
                    epoch: None,
                    line: i as u64,
                },
            ]
        })
        .collect()
}

fn key(app: &mut App, code: KeyCode) -> Vec<Command> {
    let cmds = app.update(Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)));
    checked(app, cmds)
}

fn ctrl(app: &mut App, c: char) -> Vec<Command> {
    let cmds = app.update(Msg::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::CONTROL,
    )));
    checked(app, cmds)
}

/// The runtime's part for the launch form: its checks run (here at once) and answer;
/// the other commands are returned.
fn checked(app: &mut App, cmds: Vec<Command>) -> Vec<Command> {
    let mut out = Vec::new();
    for c in cmds {
        match c {
            Command::CheckLaunch {
                seq,
                values,
                checker,
            } => {
                let verdict = Box::new(checker.0.check(&values));
                app.update(Msg::LaunchChecked { seq, verdict });
            }
            c => out.push(c),
        }
    }
    out
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn screen(app: &mut App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| super::ui::draw(f, app)).unwrap();
    format!("{}", t.backend())
}

// ------------------------------------------------------------------ key sequences

#[test]
fn launch_form_validates_as_you_type_and_submits_only_when_valid() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('L'));
    assert!(matches!(app.mode, Mode::Launch(_)));
    // Down to the instance type, replace it with an unknown one.
    key(&mut app, KeyCode::Down);
    for _ in 0..5 {
        key(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "p5.48xlarge");
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(f.errors[1].as_deref().unwrap().contains("unknown"), "{f:?}");
    assert!(f.plan.is_none());
    // Enter refuses; nothing is launched.
    assert!(key(&mut app, KeyCode::Enter).is_empty());
    assert!(matches!(app.mode, Mode::Launch(_)));
    // Clear it, complete with tab, give a bad price, then a good one.
    for _ in 0..11 {
        key(&mut app, KeyCode::Backspace);
    }
    key(&mut app, KeyCode::Tab);
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert_eq!(f.values()[1], "local");
    assert!(f.errors[1].is_none());
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    typed(&mut app, "abc");
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(f.errors[3].is_some());
    for _ in 0..3 {
        key(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "1.50");
    key(&mut app, KeyCode::Down);
    typed(&mut app, "my-box");
    let cmds = key(&mut app, KeyCode::Enter);
    assert_eq!(
        cmds,
        vec![Command::Launch {
            provider: "local".into(),
            req: crate::provider::LaunchRequest {
                name: Some("my-box".into()),
                instance_type: Some("local".into()),
                gpus: None,
                spot: false,
                accept_new_host_key: false,
                ..Default::default()
            }
        }]
    );
    assert!(matches!(app.mode, Mode::Normal));
}

#[test]
fn spot_on_the_local_provider_is_refused_in_the_form() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('L'));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    typed(&mut app, "yes");
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(f.errors[1].as_deref().unwrap().contains("spot"), "{f:?}");
    assert!(key(&mut app, KeyCode::Enter).is_empty());
    key(&mut app, KeyCode::Esc);
    assert!(matches!(app.mode, Mode::Normal));
}

#[test]
fn terminate_confirmation_defaults_to_no() {
    let mut app = fixture(false);
    // The first snapshot selected the live machine (gpu-box), not the orphan above it.
    assert_eq!(app.selected_instance().unwrap().rec.name, "gpu-box");
    // The machine is asked first what it holds that was never pulled.
    let ask = |app: &mut App, unpulled: Result<Vec<(String, String, u64)>, String>| {
        let cmds = ctrl(app, 'd');
        assert_eq!(
            cmds,
            vec![Command::CheckArtifacts {
                instance: "i-tp2k0000aaaa".into()
            }]
        );
        app.update(Msg::TerminateCheck {
            instance: "i-tp2k0000aaaa".into(),
            unpulled,
        });
    };
    ask(&mut app, Ok(Vec::new()));
    let Mode::Confirm(c) = &app.mode else {
        panic!("no confirmation")
    };
    assert!(c.is_no());
    assert!(
        c.lines
            .iter()
            .any(|l| l.contains("gpu-box") && l.contains("i-tp2k0000aaaa"))
    );
    assert!(c.lines.iter().any(|l| l.contains("cost so far $2.50")));
    // Enter on the default does nothing.
    assert!(key(&mut app, KeyCode::Enter).is_empty());
    assert!(matches!(app.mode, Mode::Normal));
    // Explicit yes terminates that instance.
    ask(&mut app, Ok(Vec::new()));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')),
        vec![Command::Terminate {
            instance: "i-tp2k0000aaaa".into()
        }]
    );
    // Moving to Yes, then Enter, too.
    ask(&mut app, Ok(Vec::new()));
    key(&mut app, KeyCode::Right);
    assert_eq!(key(&mut app, KeyCode::Enter).len(), 1);
    // Artifacts never pulled: counted and sized, "pull, then terminate" first, No still
    // the default.
    let files = vec![
        (
            "j-tp2k0000cccc".to_string(),
            "out/model.pt".to_string(),
            2_500_000u64,
        ),
        (
            "j-tp2k0000cccc".to_string(),
            "out/metrics.json".to_string(),
            1_000u64,
        ),
    ];
    ask(&mut app, Ok(files.clone()));
    let Mode::Confirm(c) = &app.mode else {
        panic!("no confirmation")
    };
    assert!(c.is_no());
    assert!(
        c.lines
            .iter()
            .any(|l| l.contains("2 artifact file(s), 2.5 MB, never pulled")),
        "{:?}",
        c.lines
    );
    assert_eq!(c.choices[0].label, "Pull, then terminate");
    assert!(
        key(&mut app, KeyCode::Enter).is_empty(),
        "enter on the default is No"
    );
    ask(&mut app, Ok(files.clone()));
    assert_eq!(
        key(&mut app, KeyCode::Char('p')),
        vec![Command::PullThenTerminate {
            instance: "i-tp2k0000aaaa".into(),
            jobs: vec!["j-tp2k0000cccc".into()],
        }]
    );
    // The machine could not be asked: said, and the question still comes.
    ask(&mut app, Err("connection refused".into()));
    let Mode::Confirm(c) = &app.mode else {
        panic!("no confirmation")
    };
    assert!(c.lines.iter().any(|l| l.contains("connection refused")));
    key(&mut app, KeyCode::Esc);
    // A terminated instance offers nothing to confirm.
    key(&mut app, KeyCode::Char('G'));
    ctrl(&mut app, 'd');
    assert!(matches!(app.mode, Mode::Normal));
    // An orphan asks too, saying it is unknown to the store, and is terminated by its id.
    key(&mut app, KeyCode::Char('g'));
    ctrl(&mut app, 'd');
    let Mode::Confirm(c) = &app.mode else {
        panic!("no confirmation for the orphan")
    };
    assert_eq!(c.title, "Terminate orphan?");
    assert!(c.lines.iter().any(|l| l.contains("unknown to the store")));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')),
        vec![Command::Terminate {
            instance: "i-orphan00001".into()
        }]
    );
    // `a` adopts it; on a known instance it only explains.
    assert_eq!(
        key(&mut app, KeyCode::Char('a')),
        vec![Command::Adopt {
            instance: "i-orphan00001".into()
        }]
    );
    key(&mut app, KeyCode::Down);
    assert!(key(&mut app, KeyCode::Char('a')).is_empty());
}

/// A job ending elsewhere does not hide the answer to what the user just did: the answer
/// stays (saying there is more), the end goes to the messages; with no fresh answer, the
/// end is the status line.
#[test]
fn a_jobs_end_does_not_hide_the_answer_to_the_users_action() {
    let ended = |app: &App| {
        let mut snap = app.snap.clone();
        for j in &mut snap.jobs {
            if j.rec.id == "j-tp2k0000cccc" {
                j.rec.state = JobState::Succeeded;
            }
        }
        snap
    };
    let mut app = fixture(false);
    app.say("terminated i-tp2k0000bbbb", false);
    let snap = ended(&app);
    app.update(Msg::Snapshot(Box::new(snap)));
    let st = app.status.clone().unwrap();
    assert!(st.text.starts_with("terminated i-tp2k0000bbbb"), "{st:?}");
    assert!(st.text.contains("! shows it"), "{st:?}");
    assert!(
        app.messages
            .iter()
            .any(|m| m.text.contains("job toy-train (j-tp2k0000cccc) succeeded"))
    );
    let mut app = fixture(false);
    let snap = ended(&app);
    app.update(Msg::Snapshot(Box::new(snap)));
    let st = app.status.clone().unwrap();
    assert!(
        st.text
            .starts_with("job toy-train (j-tp2k0000cccc) succeeded"),
        "{st:?}"
    );
}

/// A batch job a cluster runs for this store with no job behind it shows as an orphan job;
/// terminate asks to cancel it (by its `slurm:ID`), adopt says why it cannot.
#[test]
fn an_orphan_batch_job_is_cancelled_not_adopted() {
    let mut app = fixture(false);
    let mut snap = app.snap.clone();
    let mut stray = instance("slurm:77", "trainctl-ab12-j-x-1", InstanceState::Running, 0);
    stray.orphan = true;
    stray.orphan_job_on = Some("i-cluster0001".into());
    stray.rec.provider_id = Some("trainctl-ab12-j-x-1".into());
    snap.instances.insert(0, stray);
    app.update(Msg::Snapshot(Box::new(snap)));
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Char('g'));
    let shown = screen(&mut app, 120, 40);
    assert!(shown.contains("ORPHAN JOB"), "{shown}");
    assert!(key(&mut app, KeyCode::Char('a')).is_empty());
    let said = app.status.clone().unwrap();
    assert!(said.text.contains("batch job, not a machine"), "{said:?}");
    ctrl(&mut app, 'd');
    let Mode::Confirm(c) = &app.mode else {
        panic!("no confirmation for the batch job")
    };
    assert_eq!(c.title, "Cancel orphan batch job?");
    assert!(c.lines.iter().any(|l| l.contains("i-cluster0001")));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')),
        vec![Command::Terminate {
            instance: "slurm:77".into()
        }]
    );
}

#[test]
fn migrate_asks_first_defaults_to_no_and_only_moves_running_jobs() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('2'));
    assert!(key(&mut app, KeyCode::Char('m')).is_empty());
    let Mode::Confirm(c) = &app.mode else {
        panic!("no confirmation")
    };
    assert!(c.is_no());
    assert!(c.lines.iter().any(|l| l.contains("j-tp2k0000cccc")));
    assert!(key(&mut app, KeyCode::Enter).is_empty());
    key(&mut app, KeyCode::Char('m'));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')),
        vec![Command::Migrate {
            job: "j-tp2k0000cccc".into()
        }]
    );
    // A finished job has nothing to move.
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('m'));
    assert!(matches!(app.mode, Mode::Normal));
    // Read-only cockpits never move a job.
    let mut ro = fixture(true);
    key(&mut ro, KeyCode::Char('2'));
    key(&mut ro, KeyCode::Char('m'));
    assert!(matches!(ro.mode, Mode::Normal));
}

#[test]
fn unknown_host_key_asks_with_the_fingerprint_and_defaults_to_no() {
    let mut app = fixture(false);
    let req = crate::provider::LaunchRequest {
        instance_type: Some("lab1".into()),
        ..Default::default()
    };
    app.update(Msg::UnknownHostKey {
        provider: "ssh".into(),
        req: req.clone(),
        message: "ssh host `lab1` (10.0.0.5): unknown host key for 10.0.0.5:22 (SHA256:abcDEF123). Check it".into(),
    });
    let Mode::Confirm(c) = &app.mode else {
        panic!("no prompt")
    };
    assert!(c.is_no());
    assert!(c.lines.iter().any(|l| l == "SHA256:abcDEF123"), "{c:?}");
    assert!(c.lines[0].starts_with("10.0.0.5:22"), "{c:?}");
    // Enter on the default (No) trusts nothing.
    assert!(key(&mut app, KeyCode::Enter).is_empty());
    app.update(Msg::UnknownHostKey {
        provider: "ssh".into(),
        req: req.clone(),
        message: "unknown host key for h:22 (SHA256:x)".into(),
    });
    let cmds = key(&mut app, KeyCode::Char('y'));
    assert_eq!(
        cmds,
        vec![Command::Launch {
            provider: "ssh".into(),
            req: crate::provider::LaunchRequest {
                accept_new_host_key: true,
                ..req
            }
        }]
    );
}

#[test]
fn passphrase_popup_masks_input_and_answers_the_connection() {
    let mut app = fixture(false);
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    app.update(Msg::Passphrase(crate::ssh::remote::PassphraseRequest {
        asked: crate::ssh::remote::Asked::KeyPassphrase("/home/me/.ssh/id_ed25519".into()),
        reply,
    }));
    assert!(matches!(app.mode, Mode::Passphrase(_)));
    typed(&mut app, "s3cret");
    let s = screen(&mut app, 80, 24);
    assert!(
        s.contains("SSH key passphrase") && s.contains("••••••") && !s.contains("s3cret"),
        "{s}"
    );
    key(&mut app, KeyCode::Enter);
    assert_eq!(answer.try_recv().unwrap(), Some("s3cret".to_string()));
    assert!(matches!(app.mode, Mode::Normal));
    // Esc declines.
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    app.update(Msg::Passphrase(crate::ssh::remote::PassphraseRequest {
        asked: crate::ssh::remote::Asked::KeyPassphrase("/k".into()),
        reply,
    }));
    key(&mut app, KeyCode::Esc);
    assert_eq!(answer.try_recv().unwrap(), None);
    // A login password is asked the same way, naming the login.
    let (reply, mut answer) = tokio::sync::oneshot::channel();
    app.update(Msg::Passphrase(crate::ssh::remote::PassphraseRequest {
        asked: crate::ssh::remote::Asked::Password("me@lab-gpu:22".into()),
        reply,
    }));
    typed(&mut app, "pw-42");
    let s = screen(&mut app, 80, 24);
    assert!(
        s.contains("SSH password") && s.contains("me@lab-gpu:22") && !s.contains("pw-42"),
        "{s}"
    );
    key(&mut app, KeyCode::Enter);
    assert_eq!(answer.try_recv().unwrap(), Some("pw-42".to_string()));
}

#[test]
fn readonly_hides_every_destructive_action() {
    let mut app = fixture(true);
    key(&mut app, KeyCode::Down);
    ctrl(&mut app, 'd');
    assert!(matches!(app.mode, Mode::Normal));
    key(&mut app, KeyCode::Char('L'));
    assert!(matches!(app.mode, Mode::Normal));
    assert!(key(&mut app, KeyCode::Char('r')).is_empty());
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "launch");
    key(&mut app, KeyCode::Enter);
    assert!(!matches!(app.mode, Mode::Launch(_)));
    key(&mut app, KeyCode::Char('2'));
    ctrl(&mut app, 'k');
    assert!(matches!(app.mode, Mode::Normal));
    // A hidden key says why it does nothing.
    let said = app.status.clone().unwrap();
    assert!(said.text.starts_with("read-only: ctrl-k"), "{said:?}");
    app.status = None;
    // Nor are they advertised.
    let s = screen(&mut app, 120, 40);
    let hints = s.lines().last().unwrap_or_default();
    assert!(
        !hints.contains("terminate")
            && !hints.contains("cancel job")
            && !hints.contains("run job")
            && !hints.contains("migrate"),
        "{s}"
    );
    assert!(s.contains("[readonly]"));
    // Pulling artifacts is not destructive.
    assert_eq!(key(&mut app, KeyCode::Char('p')).len(), 1);
}

#[test]
fn filter_narrows_lists_inverts_and_clears() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "yolo");
    assert_eq!(app.job_visible.len(), 1);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.job_filter, "yolo");
    assert_eq!(app.selected_job().unwrap().rec.name, "yolo");
    // esc in normal mode clears the filter.
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.job_visible.len(), 3);
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "!toy");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.job_visible.len(), 2);
    assert!(
        app.job_visible
            .iter()
            .all(|&i| app.snap.jobs[i].rec.name != "toy-train")
    );
    // Filtering instances by state.
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "terminated");
    assert_eq!(app.inst_visible.len(), 1);
}

#[test]
fn command_line_switches_panes_refuses_unknowns_and_quits() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "cost");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Cost);
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "frobnicate");
    key(&mut app, KeyCode::Enter);
    assert!(
        app.status
            .as_ref()
            .is_some_and(|s| s.error && s.text.contains("frobnicate"))
    );
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "launch");
    key(&mut app, KeyCode::Enter);
    assert!(matches!(app.mode, Mode::Launch(_)));
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "q");
    key(&mut app, KeyCode::Enter);
    assert!(app.quit);
}

#[test]
fn logs_search_scroll_and_toggles() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('3'));
    let _ = screen(&mut app, 80, 24);
    assert!(app.logs.autoscroll);
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "step=7 ");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.logs.current_match, Some(6));
    assert!(!app.logs.autoscroll);
    assert!(screen(&mut app, 80, 24).contains("step=7 loss"));
    key(&mut app, KeyCode::Char('G'));
    assert!(app.logs.autoscroll);
    key(&mut app, KeyCode::Char('w'));
    key(&mut app, KeyCode::Char('t'));
    key(&mut app, KeyCode::Char('f'));
    assert!(app.logs.wrap && app.logs.timestamps && app.logs.fullscreen);
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("step=60 loss"), "{s}");
    // esc leaves fullscreen before anything else.
    key(&mut app, KeyCode::Esc);
    assert!(!app.logs.fullscreen);
    assert_eq!(app.view, View::Logs);
}

#[test]
fn log_buffer_is_bounded_and_reads_older_lines_back() {
    let mut app = fixture(false);
    let job = app.logs.job.clone().unwrap();
    app.update(Msg::LogAppend {
        job: job.clone(),
        attempt: 1,
        end: 200,
        lines: (0..5000).map(|i| format!("line {i}")).collect(),
        skipped: None,
    });
    assert_eq!(app.logs.lines.len(), 1000);
    assert_eq!(app.logs.first_line, 4060);
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('g'));
    let cmds = key(&mut app, KeyCode::Up);
    assert!(
        matches!(&cmds[..], [Command::LoadOlderLog { before: 4060, .. }]),
        "{cmds:?}"
    );
    app.update(Msg::LogOlder {
        job,
        first_line: 3960,
        lines: (3960..4060).map(|i| format!("older {i}")).collect(),
    });
    assert_eq!(app.logs.lines.len(), 1000);
    assert_eq!(app.logs.lines[0].text, "older 3960");
}

#[test]
fn metrics_pane_cycles_metrics() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('4'));
    assert_eq!(app.metrics.series.len(), 2);
    assert_eq!(app.metrics.selected, 0);
    key(&mut app, KeyCode::Char('l'));
    assert_eq!(app.metrics.selected, 1);
    key(&mut app, KeyCode::Char('l'));
    assert_eq!(app.metrics.selected, 0);
    key(&mut app, KeyCode::Left);
    assert_eq!(app.metrics.selected, 1);
}

#[test]
fn idle_snapshots_do_not_redraw() {
    let mut app = fixture(false);
    // Nothing live: the same data a second later changes nothing on screen.
    let mut snap = app.snap.clone();
    snap.instances.retain(|i| !i.rec.state.is_live());
    snap.jobs.retain(|j| j.rec.state.is_terminal());
    app.update(Msg::Snapshot(Box::new(snap.clone())));
    app.dirty = false;
    snap.now_ms += 5000;
    app.update(Msg::Snapshot(Box::new(snap)));
    assert!(!app.dirty);
}

// ---------------------------------------------------------------------- snapshots

fn snap_all(size: (u16, u16)) {
    let (w, h) = size;
    let suffix = format!("{w}x{h}");
    let mut app = fixture(false);
    insta::assert_snapshot!(format!("instances_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Char('2'));
    insta::assert_snapshot!(format!("jobs_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Char('3'));
    insta::assert_snapshot!(format!("logs_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Char('4'));
    insta::assert_snapshot!(format!("metrics_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Char('5'));
    insta::assert_snapshot!(format!("cost_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!(format!("help_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Char('1'));
    key(&mut app, KeyCode::Char('L'));
    insta::assert_snapshot!(format!("launch_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Esc);
    ctrl(&mut app, 'd');
    app.update(Msg::TerminateCheck {
        instance: "i-tp2k0000aaaa".into(),
        unpulled: Ok(vec![(
            "j-tp2k0000cccc".into(),
            "out/model.pt".into(),
            2_500_000,
        )]),
    });
    insta::assert_snapshot!(format!("confirm_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Esc);
    // The failed job highlighted: its exit code and last lines.
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Char('G'));
    app.update(Msg::LogAppend {
        job: "j-tp2k0000eeee".into(),
        attempt: 1,
        end: 80,
        lines: vec![
            "epoch 2 step 120 loss nan".into(),
            "Traceback (most recent call last):".into(),
            "  File \"train.py\", line 40, in <module>".into(),
            "RuntimeError: loss is NaN".into(),
        ],
        skipped: Some(0),
    });
    let s = screen(&mut app, w, h);
    if h >= 16 {
        assert!(
            s.contains("failed: exit 3") && s.contains("RuntimeError: loss is NaN"),
            "{s}"
        );
    }
    insta::assert_snapshot!(format!("failed_{suffix}"), s);
    // Runs compared: bert-ft marked, then toy-train highlighted: once toy-train's metrics
    // are in, bert-ft's curve of the same metric is asked for and overlaid with a legend.
    key(&mut app, KeyCode::Char('g'));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char(' '));
    assert_eq!(app.marked, vec!["j-tp2k0000dddd".to_string()]);
    let cmds = key(&mut app, KeyCode::Up);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::LoadMetrics { .. }))
    );
    let cmds = app.update(Msg::MetricsAppend {
        job: "j-tp2k0000cccc".into(),
        last_rowid: 400,
        points: fixture_points(),
        more: false,
    });
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::LoadCurve { job, name, .. } if job == "j-tp2k0000dddd" && name == "loss")),
        "{cmds:?}"
    );
    app.update(Msg::Curve {
        job: "j-tp2k0000dddd".into(),
        curve: Box::new(compared_curve()),
    });
    key(&mut app, KeyCode::Char('4'));
    // Smoothing reads the points again; the old curves stay until they come.
    let cmds = key(&mut app, KeyCode::Char('s'));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::LoadMetrics { after_rowid: 0, .. }))
    );
    assert_eq!(app.metrics.series.len(), 2);
    let cmds = app.update(Msg::MetricsAppend {
        job: "j-tp2k0000cccc".into(),
        last_rowid: 400,
        points: fixture_points(),
        more: false,
    });
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::LoadCurve { smoothing, .. } if *smoothing == 0.6))
    );
    app.update(Msg::Curve {
        job: "j-tp2k0000dddd".into(),
        curve: Box::new(compared_curve()),
    });
    insta::assert_snapshot!(format!("compare_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Char('!'));
    insta::assert_snapshot!(format!("messages_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Esc);
    // The passphrase popup, masked.
    let (reply, _answer) = tokio::sync::oneshot::channel();
    app.update(Msg::Passphrase(crate::ssh::remote::PassphraseRequest {
        asked: crate::ssh::remote::Asked::KeyPassphrase("/home/me/.ssh/id_ed25519".into()),
        reply,
    }));
    typed(&mut app, "s3cret");
    insta::assert_snapshot!(format!("passphrase_{suffix}"), screen(&mut app, w, h));
    key(&mut app, KeyCode::Esc);
    // Quitting while a command has not answered asks first.
    key(&mut app, KeyCode::Char('1'));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')).len(),
        1,
        "a sync goes out"
    );
    key(&mut app, KeyCode::Char('q'));
    insta::assert_snapshot!(format!("quit_{suffix}"), screen(&mut app, w, h));
}

/// bert-ft's loss, as a marked job's curve.
fn compared_curve() -> super::panes::metrics::Curve {
    let mut c = super::panes::metrics::Curve::new("loss", super::panes::metrics::XAxis::Step, 0.0);
    for i in 1..=200 {
        c.push(i as f64, 1.5 / (i as f64).sqrt());
    }
    c
}

#[test]
fn snapshots_60x16() {
    snap_all((60, 16));
}

#[test]
fn snapshots_80x24() {
    snap_all((80, 24));
}

#[test]
fn snapshots_120x40() {
    snap_all((120, 40));
}

#[test]
fn snapshots_160x48() {
    snap_all((160, 48));
}

#[test]
fn too_small_terminal_says_so() {
    let mut app = fixture(false);
    let s = screen(&mut app, 50, 10);
    assert!(s.contains("terminal too small: 50x10"), "{s}");
    insta::assert_snapshot!("too_small_50x10", s);
}

#[test]
fn a_metrics_load_in_several_batches_is_never_started_twice() {
    let mut app = fixture(false);
    let job = "j-tp2k0000cccc".to_string();
    let again = |app: &mut App| {
        app.update(Msg::Engine(crate::engine::EngineEvent::Metrics {
            job_id: job.clone(),
            points: Vec::new(),
            progress: Default::default(),
        }))
        .into_iter()
        .any(|c| matches!(c, Command::LoadMetrics { .. }))
    };
    // A load under way: its first batch came, more follow; new points must not start
    // another load from the same place (it would read the same chunks again).
    app.update(Msg::MetricsAppend {
        job: job.clone(),
        last_rowid: 500,
        points: Vec::new(),
        more: true,
    });
    app.metrics.loading = true;
    app.update(Msg::MetricsAppend {
        job: job.clone(),
        last_rowid: 600,
        points: Vec::new(),
        more: true,
    });
    assert!(!again(&mut app));
    app.update(Msg::MetricsAppend {
        job: job.clone(),
        last_rowid: 700,
        points: Vec::new(),
        more: false,
    });
    assert!(again(&mut app));
}

#[test]
fn cheapest_launches_the_cheapest_fitting_offer_of_any_provider_with_the_rest_as_fallbacks() {
    use crate::provider::Provider;
    let dir = std::path::Path::new("/nonexistent");
    let lambda = Arc::new(crate::provider::lambda::LambdaProvider::new(
        dir,
        Default::default(),
        Default::default(),
    ));
    let runpod = Arc::new(crate::provider::runpod::RunPodProvider::new(
        dir,
        Default::default(),
        Default::default(),
    ));
    let (l2, r2) = (lambda.clone(), runpod.clone());
    let theme = Theme::new(ColorMode::Palette256, &Default::default()).unwrap();
    let mut app = App::new(
        Keymap::default(),
        theme,
        false,
        1000,
        Arc::new(move |p: &str, req: &crate::provider::LaunchRequest| {
            match p {
                "lambda" => l2.check(req),
                "runpod" => r2.check(req),
                _ => Err(anyhow::anyhow!("unknown provider {p}")),
            }
            .map_err(|e| e.to_string())
        }),
    );
    app.providers = vec!["lambda".into(), "runpod".into()];
    app.offers = lambda.offers().into_iter().chain(runpod.offers()).collect();
    key(&mut app, KeyCode::Char('L'));
    for _ in 0..5 {
        key(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "cheapest");
    key(&mut app, KeyCode::Down);
    for _ in 0..5 {
        key(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "h100");
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(f.errors.iter().all(Option::is_none), "{f:?}");
    let order: Vec<String> = f
        .cheapest
        .iter()
        .map(|(p, t, _)| format!("{p}:{t}"))
        .collect();
    assert_eq!(order[0], "runpod:H100", "{order:?}");
    assert!(f.cheapest.windows(2).all(|w| w[0].2 <= w[1].2), "{order:?}");
    assert!(
        order.contains(&"lambda:gpu_1x_h100_pcie".to_string()),
        "{order:?}"
    );
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("→ runpod:H100 on-demand at $2.39/h"), "{s}");
    // A max price keeps only what fits under it.
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    typed(&mut app, "2.80");
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(
        f.cheapest.iter().all(|(_, _, m)| m.0 <= 2_800_000),
        "{:?}",
        f.cheapest
    );
    let cmds = key(&mut app, KeyCode::Enter);
    let [Command::Launch { provider, req }] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!(provider, "runpod");
    assert_eq!(req.instance_type.as_deref(), Some("H100"));
    assert_eq!(req.any_of, vec!["runpod:H100-NVL".to_string()]);
}

/// A job's end is announced once, with its reason, as an error when it did not succeed,
/// and rings the bell only when configured; other moves say nothing.
#[test]
fn a_jobs_end_is_announced_with_its_reason_and_rings_the_bell_when_asked() {
    use crate::engine::EngineEvent;
    let mut app = fixture(false);
    let moved = |app: &mut App, job: &str, state: JobState, reason: &str| {
        app.update(Msg::Engine(EngineEvent::JobState {
            job_id: job.into(),
            state,
            reason: reason.into(),
        }))
    };
    moved(
        &mut app,
        "j-tp2k0000cccc",
        JobState::Running,
        "setup done; running",
    );
    assert_eq!(app.status, None);
    let cmds = moved(
        &mut app,
        "j-tp2k0000cccc",
        JobState::Failed,
        "exited with status 3\x1b[31m",
    );
    assert!(matches!(cmds.as_slice(), [Command::Refresh]));
    let said = app.status.clone().unwrap();
    assert_eq!(
        (said.text.as_str(), said.error),
        (
            "job toy-train (j-tp2k0000cccc) failed: exited with status 3",
            true
        )
    );
    assert!(!app.ring, "the bell is off unless configured");
    // Said once: the same end seen again (another event, the next snapshot) is not.
    app.status = None;
    moved(&mut app, "j-tp2k0000cccc", JobState::Failed, "again");
    assert_eq!(app.status, None);
    app.bell = true;
    moved(
        &mut app,
        "j-tp2k0000dddd",
        JobState::Succeeded,
        "exited with status 0",
    );
    assert_eq!(app.status.as_ref().map(|s| s.error), Some(false));
    assert!(app.ring);
    assert_eq!(app.messages.len(), 2, "the messages log keeps both");
}

// ------------------------------------------------------------- the defects

#[test]
fn the_command_line_completes_matches_prefixes_and_remembers() {
    let mut app = fixture(false);
    // Tab completes a unique prefix; a prefix alone runs its command.
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "co");
    key(&mut app, KeyCode::Tab);
    assert!(
        matches!(&app.mode, Mode::Command(l) if l == "cost"),
        "{:?}",
        app.mode
    );
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "co");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view, View::Cost);
    // An ambiguous prefix says which commands it could be.
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "me");
    key(&mut app, KeyCode::Enter);
    let said = app.status.clone().unwrap().text;
    assert!(
        said.contains("could be") && said.contains("messages") && said.contains("metrics"),
        "{said}"
    );
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "mes");
    key(&mut app, KeyCode::Enter);
    assert!(matches!(app.mode, Mode::Messages(_)));
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "l");
    key(&mut app, KeyCode::Tab);
    assert!(app.status.as_ref().unwrap().text.contains("launch"));
    assert!(app.status.as_ref().unwrap().text.contains("logs"));
    key(&mut app, KeyCode::Esc);
    // History: ↑ brings back the lines run, newest first; ↓ goes forward to empty.
    key(&mut app, KeyCode::Char(':'));
    key(&mut app, KeyCode::Up);
    assert!(
        matches!(&app.mode, Mode::Command(l) if l == "mes"),
        "{:?}",
        app.mode
    );
    key(&mut app, KeyCode::Up);
    assert!(matches!(&app.mode, Mode::Command(l) if l == "me"));
    key(&mut app, KeyCode::Up);
    assert!(matches!(&app.mode, Mode::Command(l) if l == "co"));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    assert!(matches!(&app.mode, Mode::Command(l) if l.is_empty()));
    // ctrl-u clears the line.
    typed(&mut app, "jobs");
    ctrl(&mut app, 'u');
    assert!(matches!(&app.mode, Mode::Command(l) if l.is_empty()));
    key(&mut app, KeyCode::Esc);
    // --readonly: hidden commands are not offered, and are unknown.
    let mut ro = fixture(true);
    key(&mut ro, KeyCode::Char(':'));
    typed(&mut ro, "la");
    key(&mut ro, KeyCode::Enter);
    assert!(!matches!(ro.mode, Mode::Launch(_)));
    let said = ro.status.clone().unwrap();
    assert!(said.error && !said.text.contains("launch"), "{said:?}");
}

#[test]
fn prompts_start_empty_and_ctrl_u_clears_the_filter() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "bert");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.job_visible.len(), 1);
    // Opening the filter again starts empty (the one in force is in the title).
    key(&mut app, KeyCode::Char('/'));
    assert!(matches!(&app.mode, Mode::Filter(l) if l.is_empty()));
    typed(&mut app, "yo");
    assert_eq!(app.selected_job().unwrap().rec.name, "yolo");
    ctrl(&mut app, 'u');
    assert_eq!(app.job_visible.len(), 3, "ctrl-u cleared the filter");
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('/'));
    assert!(matches!(&app.mode, Mode::Search(l) if l.is_empty()));
}

#[test]
fn q_goes_back_then_quits_and_asks_first_while_work_is_out() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('q'));
    assert_eq!(app.view, View::Jobs);
    key(&mut app, KeyCode::Char('q'));
    assert_eq!(app.view, View::Instances);
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit, "q at the top quits");
    // A command out (a sync): q asks, and only y quits.
    let mut app = fixture(false);
    assert_eq!(key(&mut app, KeyCode::Char('y')).len(), 1);
    assert_eq!(app.in_flight, 1);
    key(&mut app, KeyCode::Char('q'));
    assert!(matches!(app.mode, Mode::Quit) && !app.quit);
    key(&mut app, KeyCode::Char('n'));
    assert!(!app.quit && matches!(app.mode, Mode::Normal));
    key(&mut app, KeyCode::Char('q'));
    key(&mut app, KeyCode::Char('y'));
    assert!(app.quit);
    // Once it answered, q quits at once; esc never quits.
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('y'));
    app.update(Msg::Done(Ok("synced".into())));
    key(&mut app, KeyCode::Esc);
    assert!(!app.quit);
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit);
}

#[test]
fn panes_follow_the_highlighted_job_and_the_selection_survives_a_refresh() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('2'));
    assert_eq!(app.focus_job.as_deref(), Some("j-tp2k0000cccc"));
    // Moving the highlight moves the log and the chart: no enter needed.
    let cmds = key(&mut app, KeyCode::Down);
    assert_eq!(app.focus_job.as_deref(), Some("j-tp2k0000dddd"));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::LoadLog { job, .. } if job == "j-tp2k0000dddd"))
    );
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::LoadMetrics { job, .. } if job == "j-tp2k0000dddd"))
    );
    // A new job arrives at the top: the highlight stays on bert-ft.
    let mut snap = app.snap.clone();
    let mut newer = snap.jobs[0].clone();
    newer.rec.id = "j-tp2k0000ffff".into();
    newer.rec.name = "newest".into();
    snap.jobs.insert(0, newer);
    app.update(Msg::Snapshot(Box::new(snap)));
    assert_eq!(app.selected_job().unwrap().rec.name, "bert-ft");
    assert_eq!(app.focus_job.as_deref(), Some("j-tp2k0000dddd"));
    // Every pane names the job it shows.
    let s = screen(&mut app, 160, 48);
    assert!(s.contains("Logs bert-ft · j-tp2k0000dddd"), "{s}");
    assert!(s.contains("job bert-ft (00dddd)"), "{s}");
}

#[test]
fn a_cancel_says_stopping_until_the_job_ends_and_then_its_end_once() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('2'));
    ctrl(&mut app, 'k');
    let cmds = key(&mut app, KeyCode::Char('y'));
    assert_eq!(
        cmds,
        vec![Command::Cancel {
            job: "j-tp2k0000cccc".into()
        }]
    );
    app.update(Msg::Underway {
        job: "j-tp2k0000cccc".into(),
        text: "stopping toy-train (j-tp2k0000cccc)…".into(),
    });
    // Keys do not clear it: it belongs to the cancel.
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Up);
    assert!(app.status.as_ref().unwrap().text.starts_with("stopping"));
    // The job ends (seen by the next refresh): the stopping line goes, the end is said.
    let mut snap = app.snap.clone();
    snap.jobs[0].rec.state = JobState::Cancelled;
    snap.jobs[0].rec.reason = Some("cancelled from the cockpit".into());
    app.update(Msg::Snapshot(Box::new(snap.clone())));
    let said = app.status.clone().unwrap();
    assert!(
        said.text.contains("toy-train") && said.text.contains("cancelled"),
        "{said:?}"
    );
    // Not again on the next refresh.
    app.status = None;
    app.update(Msg::Snapshot(Box::new(snap)));
    assert_eq!(app.status, None);
}

#[test]
fn keys_that_do_nothing_say_why() {
    let mut app = fixture(false);
    // Bound in another pane: which one.
    key(&mut app, KeyCode::Char('p'));
    let said = app.status.clone().unwrap();
    assert!(
        said.text.contains("pull artifacts") && said.text.contains("Jobs (2)"),
        "{said:?}"
    );
    // Bound nowhere.
    key(&mut app, KeyCode::Char('x'));
    assert!(app.status.as_ref().unwrap().text.contains("no such key"));
    // A terminated machine: nothing to terminate, and it says so.
    key(&mut app, KeyCode::Char('G'));
    ctrl(&mut app, 'd');
    assert!(
        app.status
            .as_ref()
            .unwrap()
            .text
            .contains("nothing to terminate")
    );
    // A long error is cut in the bar with where to read it whole.
    app.update(Msg::Done(Err(format!(
        "launch failed: {}",
        "x".repeat(200)
    ))));
    let s = screen(&mut app, 80, 24);
    assert!(
        s.lines().last().unwrap().contains("(! shows it all)"),
        "{s}"
    );
    key(&mut app, KeyCode::Char('!'));
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("Messages") && s.contains("launch failed"), "{s}");
}

#[test]
fn the_dashboard_zooms_and_resizes_its_panes() {
    let mut app = fixture(false);
    let _ = screen(&mut app, 160, 48);
    assert!(app.dash.on);
    key(&mut app, KeyCode::Char('2'));
    let before = app.dash.jobs_pct;
    key(&mut app, KeyCode::Char('+'));
    assert_eq!(app.dash.jobs_pct, before + 5);
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('-'));
    assert_eq!(app.dash.log_pct, 50);
    key(&mut app, KeyCode::Char('z'));
    let s = screen(&mut app, 160, 48);
    assert!(
        !s.contains("Jobs (3)") && s.contains("Logs toy-train"),
        "{s}"
    );
    key(&mut app, KeyCode::Esc);
    assert!(!app.dash.zoom);
    // Tabs at 80x24: zoom and resize say where they work.
    let _ = screen(&mut app, 80, 24);
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Char('+'));
    assert!(app.status.as_ref().unwrap().text.contains("dashboard"));
}

#[test]
fn the_chart_toggles_log_scale_zooms_and_smooths() {
    let mut app = fixture(false);
    key(&mut app, KeyCode::Char('4'));
    key(&mut app, KeyCode::Char('v'));
    key(&mut app, KeyCode::Char(']'));
    let s = screen(&mut app, 80, 24);
    assert!(s.contains("[log last "), "{s}");
    key(&mut app, KeyCode::Char('v'));
    key(&mut app, KeyCode::Char('['));
    assert!(!app.metrics.log_y && app.metrics.zoom == 0);
    // Smoothing cycles through its weights and back to off.
    for _ in 0..super::panes::metrics::SMOOTHING.len() {
        key(&mut app, KeyCode::Char('s'));
        app.update(Msg::MetricsAppend {
            job: "j-tp2k0000cccc".into(),
            last_rowid: 400,
            points: fixture_points(),
            more: false,
        });
    }
    assert_eq!(app.metrics.smoothing, 0.0);
    assert_eq!(
        app.metrics.series[0].raw.len, 200,
        "read once per setting, not piled up"
    );
}

#[test]
fn the_launch_form_is_priced_off_the_ui_task_and_only_the_newest_answer_counts() {
    let mut app = fixture(false);
    let cmds = app.update(Msg::Key(KeyEvent::new(
        KeyCode::Char('L'),
        KeyModifiers::NONE,
    )));
    let Some(Command::CheckLaunch {
        seq,
        values,
        checker,
    }) = cmds.first().cloned()
    else {
        panic!("the form asks for its check: {cmds:?}")
    };
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(
        f.checking && f.plan.is_none(),
        "nothing priced on the UI task"
    );
    // Enter before the answer: said, nothing launched.
    let none = app.update(Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)));
    assert!(none.is_empty());
    assert!(app.status.as_ref().unwrap().text.contains("still pricing"));
    // A key typed meanwhile asks again; the older answer is dropped when it comes.
    let newer = app.update(Msg::Key(KeyEvent::new(
        KeyCode::Char('x'),
        KeyModifiers::NONE,
    )));
    let old = Box::new(checker.0.check(&values));
    app.update(Msg::LaunchChecked { seq, verdict: old });
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(f.checking && f.plan.is_none());
    checked(&mut app, newer);
    let Mode::Launch(f) = &app.mode else { panic!() };
    assert!(!f.checking);
    assert!(f.errors[0].is_some(), "localx is no provider: {f:?}");
}
