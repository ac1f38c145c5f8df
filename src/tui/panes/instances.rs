//! The Instances pane: machines, their state, market, uptime and cost.

use crate::cli::fmt_duration;
use crate::model::Money;
use crate::tui::app::*;
use crate::tui::keymap::Action;
use crate::tui::keymap::View;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Table, TableState};

pub(crate) fn draw_instances(f: &mut Frame, app: &mut App, area: Rect) {
    let title = filter_title(
        "Instances",
        &app.inst_filter,
        app.inst_visible.len(),
        app.snap.instances.len(),
    );
    let Some((inner, height)) = list_frame(
        f,
        app,
        View::Instances,
        area,
        title,
        app.inst_visible.len(),
        |app| {
            if app.snap.instances.is_empty() {
                format!(
                    "No instances. Press {} to launch one on the local provider (free, no credentials).",
                    app.keymap.first_key(crate::tui::keymap::Action::Launch)
                )
            } else {
                "Nothing matches the filter (esc clears it).".to_string()
            }
        },
    ) else {
        return;
    };
    let (start, end) = window(app.inst_visible.len(), app.inst_sel, height);
    let rows: Vec<&InstanceRow> = app.inst_visible[start..end]
        .iter()
        .map(|&i| &app.snap.instances[i])
        .collect();
    let hourly = money_column(rows.iter().map(|r| Some(r.rec.hourly)));
    let cost = money_column(rows.iter().map(|r| Some(r.cost)));
    let states: Vec<String> = rows.iter().map(|r| state_text(r)).collect();
    let types: Vec<String> = rows.iter().map(|r| r.rec.instance_type.clone()).collect();
    // What the machine says of its GPUs (a cluster: its partitions' free GPUs; sanitized
    // when it was stored), else the count.
    let gpus: Vec<String> = rows
        .iter()
        .map(|r| match &r.rec.gpu_info {
            Some(g) if !g.is_empty() => g.clone(),
            _ => r.rec.gpus.to_string(),
        })
        .collect();
    let uptimes: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.rec.state.is_live() {
                fmt_duration(r.uptime_ms)
            } else {
                "-".into()
            }
        })
        .collect();
    let cols = [
        Col::fill("NAME", 10, 0),
        Col::fixed("ID", 14, 0),
        Col::fixed("STATE", widest(states.iter(), 7), 0),
        Col::fixed("$/H", widest(hourly.iter(), 4), 1),
        Col::fixed("COST", widest(cost.iter(), 4), 1),
        Col::fixed("TYPE", widest(types.iter(), 4).min(24), 2),
        Col::fixed("GPUS", widest(gpus.iter(), 4).min(40), 3),
        Col::fixed("UPTIME", widest(uptimes.iter(), 6), 3),
        Col::fixed("MARKET", 9, 4),
        Col::fixed("PROVIDER", 8, 4),
    ];
    let (keep, widths) = fit_columns(&cols, inner.width);
    let table_rows: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let i = &r.rec;
            let all = [
                // An orphan's name is its provider id: what the provider's console shows.
                Cell::from(if r.orphan {
                    i.provider_id.clone().unwrap_or_default()
                } else {
                    i.name.clone()
                }),
                Cell::from(i.id.clone()),
                Cell::from(Span::styled(states[k].clone(), state_style_of(app, r))),
                Cell::from(hourly[k].clone()),
                Cell::from(cost[k].clone()),
                Cell::from(types[k].clone()),
                Cell::from(gpus[k].clone()),
                Cell::from(uptimes[k].clone()),
                Cell::from(if i.spot { "spot" } else { "on-demand" }),
                Cell::from(i.provider.clone()),
            ];
            Row::new(keep.iter().map(|&c| all[c].clone()).collect::<Vec<_>>())
        })
        .collect();
    let header: Vec<&str> = keep.iter().map(|&i| cols[i].header).collect();
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(app.theme.header()))
        .row_highlight_style(app.theme.selected())
        .column_spacing(1);
    let mut state = TableState::default().with_selected(Some(app.inst_sel - start));
    f.render_stateful_widget(table, inner, &mut state);
}

/// An orphan (held by the provider, unknown to the store: ctrl-d terminates, `a` adopts),
/// the idle guard's countdown in its last five minutes, or the state.
fn state_text(r: &InstanceRow) -> String {
    match r.idle_deadline {
        _ if r.orphan_job_on.is_some() => "ORPHAN JOB".into(),
        _ if r.orphan => "ORPHAN".into(),
        Some(d) if d - crate::model::now_ms() < 5 * 60_000 => format!(
            "idle, ends in {}",
            fmt_duration((d - crate::model::now_ms()).max(0))
        ),
        _ => r.rec.state.to_string(),
    }
}

fn state_style_of(app: &App, r: &InstanceRow) -> ratatui::style::Style {
    match r.idle_deadline {
        _ if r.orphan => app.theme.error(),
        Some(d) if d - crate::model::now_ms() < 5 * 60_000 => app.theme.warn(),
        _ => state_style(app, r.rec.state.as_str()),
    }
}

impl App {
    /// The instances pane's actions: launch, run, sync, terminate, adopt.
    pub(crate) fn on_instances_action(&mut self, action: Action) -> Option<Vec<Command>> {
        Some(match action {
            Action::Launch => self.open_launch_form(),
            Action::RunJob => {
                let inst = match self.view {
                    View::Jobs => self
                        .selected_job()
                        .and_then(|j| j.rec.instance_id.clone())
                        .filter(|id| {
                            self.snap
                                .instances
                                .iter()
                                .any(|i| &i.rec.id == id && i.rec.state.is_live())
                        }),
                    _ => self
                        .selected_instance()
                        .filter(|i| i.rec.state.is_live() && !i.orphan)
                        .map(|i| i.rec.id.clone()),
                };
                match (inst, &self.project) {
                    (_, None) => {
                        self.say("no trainctl.toml here: start the cockpit in a project (or --project DIR)", true);
                        Vec::new()
                    }
                    (None, _) => {
                        self.say("select a running instance first (launch one with L)", true);
                        Vec::new()
                    }
                    (Some(instance), Some(p)) => {
                        self.say(format!("starting {p} on {instance}…"), false);
                        vec![Command::RunJob { instance }]
                    }
                }
            }
            Action::Sync => match self.selected_instance().filter(|i| i.rec.state.is_live()) {
                Some(i) if self.project.is_some() => vec![Command::Sync {
                    instance: i.rec.id.clone(),
                }],
                Some(_) => {
                    self.say("no trainctl.toml here to sync", true);
                    Vec::new()
                }
                None => {
                    self.say("select a running instance to sync to", true);
                    Vec::new()
                }
            },
            Action::Terminate => {
                if let Some(i) = self.selected_instance().filter(|i| i.orphan)
                    && let Some(on) = &i.orphan_job_on
                {
                    // A batch job the scheduler runs for this store with no job behind it.
                    self.mode = Mode::Confirm(Confirm::yes_no(
                        "Cancel orphan batch job?",
                        vec![
                            format!(
                                "{} ({}) on {} ({})",
                                i.rec.id,
                                i.rec.provider_id.clone().unwrap_or_default(),
                                on,
                                i.rec.instance_type
                            ),
                            "no job of the store accounts for it; it holds the cluster's GPUs"
                                .into(),
                        ],
                        Command::Terminate {
                            instance: i.rec.id.clone(),
                        },
                    ));
                    Vec::new()
                } else if let Some(i) = self.selected_instance().filter(|i| i.orphan) {
                    // A machine the provider holds that the store lost: it may be billing.
                    let m = Money::column(&[i.cost, i.rec.hourly]);
                    self.mode = Mode::Confirm(Confirm::yes_no(
                        "Terminate orphan?",
                        vec![
                            format!(
                                "{} ({}, {}) on {}",
                                i.rec.id,
                                i.rec.provider_id.clone().unwrap_or_default(),
                                i.rec.instance_type,
                                i.rec.provider
                            ),
                            format!("unknown to the store; cost so far {} at {}/h", m[0], m[1]),
                        ],
                        Command::Terminate {
                            instance: i.rec.id.clone(),
                        },
                    ));
                    Vec::new()
                } else if let Some(i) = self
                    .selected_instance()
                    .filter(|i| i.rec.state.is_live() && !i.orphan)
                {
                    // What the machine holds that was never pulled is asked of it first
                    // (off the UI task); the question comes when the answer does.
                    let id = i.rec.id.clone();
                    self.say(
                        format!("checking {id} for artifacts not pulled yet…"),
                        false,
                    );
                    vec![Command::CheckArtifacts { instance: id }]
                } else {
                    match self.selected_instance() {
                        Some(i) => self.say(
                            format!("{} is {}: nothing to terminate", i.rec.id, i.rec.state),
                            true,
                        ),
                        None => self.say("no instance selected", true),
                    }
                    Vec::new()
                }
            }
            Action::Adopt => match self.selected_instance().filter(|i| i.orphan) {
                Some(i) if i.orphan_job_on.is_some() => {
                    let cancel = self.keymap.first_key(Action::Terminate);
                    self.say(
                        format!(
                            "{} is a batch job, not a machine: {cancel} cancels it",
                            i.rec.id
                        ),
                        true,
                    );
                    Vec::new()
                }
                Some(i) => vec![Command::Adopt {
                    instance: i.rec.id.clone(),
                }],
                None => {
                    self.say(
                        "adopt takes an orphan (a machine the store does not know)",
                        true,
                    );
                    Vec::new()
                }
            },
            _ => return None,
        })
    }
}

impl App {
    /// Terminate `instance`? With artifacts not pulled yet, "pull, then terminate" comes
    /// first; the answer starts at No either way.
    pub(crate) fn terminate_question(
        &mut self,
        instance: &str,
        unpulled: Result<Vec<(String, String, u64)>, String>,
    ) {
        let Some(i) = self
            .snap
            .instances
            .iter()
            .find(|i| i.rec.id == instance && i.rec.state.is_live())
        else {
            return;
        };
        let live_jobs = self
            .snap
            .jobs
            .iter()
            .filter(|j| {
                !j.rec.state.is_terminal() && j.rec.instance_id.as_deref() == Some(instance)
            })
            .count();
        let m = Money::column(&[i.cost, i.rec.hourly]);
        let mut lines = vec![
            format!("{} ({}, {})", i.rec.name, i.rec.id, i.rec.instance_type),
            format!("cost so far {} at {}/h", m[0], m[1]),
        ];
        if live_jobs > 0 {
            lines.push(format!("{live_jobs} running job(s) there will be stopped"));
        }
        let terminate = Command::Terminate {
            instance: instance.to_string(),
        };
        let mut c = Confirm::yes_no("Terminate instance?", lines, terminate.clone());
        match unpulled {
            Ok(files) if !files.is_empty() => {
                let bytes: u64 = files.iter().map(|f| f.2).sum();
                let mut jobs: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
                jobs.dedup();
                c.lines.push(format!(
                    "it holds {} artifact file(s), {}, never pulled:",
                    files.len(),
                    crate::cli::fmt_bytes(bytes)
                ));
                for f in files.iter().take(3) {
                    c.lines.push(format!(
                        "  {} ({})",
                        crate::sanitize::sanitize_line(f.1.as_bytes()),
                        short_id(&f.0)
                    ));
                }
                if files.len() > 3 {
                    c.lines.push(format!("  … and {} more", files.len() - 3));
                }
                c.choices = vec![
                    crate::tui::popups::confirm::Choice {
                        label: "Pull, then terminate".into(),
                        key: 'p',
                        cmd: Some(Command::PullThenTerminate {
                            instance: instance.to_string(),
                            jobs,
                        }),
                    },
                    crate::tui::popups::confirm::Choice {
                        label: "Terminate, lose them".into(),
                        key: 'y',
                        cmd: Some(terminate),
                    },
                    crate::tui::popups::confirm::Choice {
                        label: "No".into(),
                        key: 'n',
                        cmd: None,
                    },
                ];
                c.sel = 2;
            }
            Ok(_) => {}
            Err(e) => c.lines.push(format!(
                "could not ask it for unpulled artifacts: {}",
                crate::sanitize::sanitize_line(e.as_bytes())
            )),
        }
        self.mode = Mode::Confirm(c);
    }
}
