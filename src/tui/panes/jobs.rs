//! The Jobs pane: every job with its state, progress, main metric trend, time and cost.

use crate::cli::fmt_duration;
use crate::model::JobState;
use crate::tui::app::*;
use crate::tui::keymap::Action;
use crate::tui::keymap::View;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::text::Span;
use ratatui::widgets::Paragraph;
use ratatui::widgets::{Cell, Row, Table, TableState};

/// `▁▂▅▇` of the finite values, resampled to `width` (the whole run, not its end).
pub fn sparkline_text(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let v = &crate::tui::series::resample(&v, width)[..];
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    v.iter()
        .map(|&x| {
            if hi > lo {
                BARS[(((x - lo) / (hi - lo)) * 7.0).round().clamp(0.0, 7.0) as usize]
            } else {
                BARS[3]
            }
        })
        .collect()
}

pub fn progress_text(p: &crate::model::Progress) -> String {
    match (p.epoch, p.epochs_total, p.step, p.steps_total) {
        (Some(e), Some(t), _, _) => format!("ep {e}/{t}"),
        (_, _, Some(s), Some(t)) => format!("{s}/{t}"),
        (Some(e), None, _, _) => format!("ep {e}"),
        (_, _, Some(s), None) => format!("step {s}"),
        _ => "-".into(),
    }
}

pub(crate) fn draw_jobs(f: &mut Frame, app: &mut App, area: Rect) {
    // A failed job, highlighted: its exit code and last lines under the list.
    let failed = app
        .selected_job()
        .filter(|j| j.rec.state == JobState::Failed)
        .map(|j| j.rec.clone());
    let (area, detail) = match &failed {
        Some(_) if area.height >= 12 => {
            let [a, d] = Layout::vertical([Constraint::Fill(1), Constraint::Length(7)]).areas(area);
            (a, Some(d))
        }
        _ => (area, None),
    };
    if let (Some(j), Some(d)) = (&failed, detail) {
        draw_failure(f, app, j, d);
    }
    let title = filter_title(
        "Jobs",
        &app.job_filter,
        app.job_visible.len(),
        app.snap.jobs.len(),
    );
    let Some((inner, height)) = list_frame(
        f,
        app,
        View::Jobs,
        area,
        title,
        app.job_visible.len(),
        |app| {
            if !app.snap.jobs.is_empty() {
                return "Nothing matches the filter (esc clears it).".into();
            }
            match &app.project {
                Some(p) => {
                    format!("No jobs yet. Select a running instance and press r to run {p}.")
                }
                None => "No jobs yet, and no trainctl.toml here to run.".into(),
            }
        },
    ) else {
        return;
    };
    let (start, end) = window(app.job_visible.len(), app.job_sel, height);
    let rows: Vec<&JobRow> = app.job_visible[start..end]
        .iter()
        .map(|&i| &app.snap.jobs[i])
        .collect();
    let texts: Vec<JobTexts> = rows.iter().map(|r| JobTexts::of(r)).collect();
    // One precision per money column.
    let costs = money_column(rows.iter().map(|r| Some(r.cost)));
    let projs = money_column(rows.iter().map(|r| r.projected));
    let trend_w: u16 = if inner.width >= 150 { 24 } else { 12 };
    let cols = [
        Col::fill("NAME", 12, 0),
        Col::fixed("ID", 6, 0),
        Col::fixed("STATE", 10, 0),
        Col::fixed("TRY", 3, 3),
        Col::fixed("PROGRESS", widest(texts.iter().map(|t| &t.progress), 4), 1),
        Col::fixed("METRIC", widest(texts.iter().map(|t| &t.metric), 6), 1),
        Col::fixed("TREND", trend_w, 2),
        Col::fixed("TIME", widest(texts.iter().map(|t| &t.time), 4), 2),
        Col::fixed("COST", widest(costs.iter(), 4), 1),
        Col::fixed("INSTANCE", 14, 3),
        Col::fixed("ETA", widest(texts.iter().map(|t| &t.eta), 3), 4),
        Col::fixed("PROJ", widest(projs.iter(), 4), 4),
    ];
    let (keep, widths) = fit_columns(&cols, inner.width);
    let table_rows: Vec<Row> = rows
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(k, (r, t))| {
            let all = [
                Cell::from(r.rec.name.clone()),
                Cell::from(short_id(&r.rec.id).to_string()),
                Cell::from(Span::styled(
                    state_text(&r.rec),
                    state_style(app, r.rec.state.as_str()),
                )),
                // A recovered or migrated job's attempt stands out.
                Cell::from(Span::styled(
                    r.attempt.to_string(),
                    if r.attempt > 1 {
                        app.theme.warn()
                    } else {
                        app.theme.dim()
                    },
                )),
                Cell::from(t.progress.clone()),
                Cell::from(t.metric.clone()),
                Cell::from(Span::styled(
                    sparkline_text(&r.trend, trend_w as usize),
                    app.theme.accent(),
                )),
                Cell::from(t.time.clone()),
                Cell::from(costs[k].clone()),
                Cell::from(r.rec.instance_id.clone().unwrap_or_default()),
                Cell::from(t.eta.clone()),
                Cell::from(projs[k].clone()),
            ];
            let marked = app.marked.contains(&r.rec.id);
            let row = Row::new(keep.iter().map(|&i| all[i].clone()).collect::<Vec<_>>());
            if marked {
                row.style(app.theme.accent())
            } else {
                row
            }
        })
        .collect();
    let header: Vec<&str> = keep.iter().map(|&i| cols[i].header).collect();
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(app.theme.header()))
        .row_highlight_style(app.theme.selected())
        .column_spacing(1);
    let mut state = TableState::default().with_selected(Some(app.job_sel - start));
    f.render_stateful_widget(table, inner, &mut state);
}

/// The texts of a job's row whose width decides their column's.
struct JobTexts {
    progress: String,
    metric: String,
    time: String,
    eta: String,
}

impl JobTexts {
    fn of(r: &JobRow) -> JobTexts {
        JobTexts {
            progress: progress_text(&r.progress),
            metric: match &r.metric {
                Some((name, v)) => {
                    let name: String = name.chars().take(10).collect();
                    format!("{name} {}", fmt_value(*v))
                }
                None => "-".into(),
            },
            time: r.elapsed_ms.map_or("-".into(), fmt_duration),
            eta: r.eta_ms.map_or("-".into(), fmt_duration),
        }
    }
}

/// A job state whole in the 10 columns the jobs list gives it (the longer names shortened
/// the same at every width: a word is never cut); a failed job with its exit code.
fn state_text(j: &crate::store::JobRecord) -> String {
    use crate::model::JobState::*;
    match (j.state, j.exit_code) {
        (Failed, Some(c)) => format!("failed {c}"),
        (SettingUp, _) => "setup".into(),
        (Interrupted, _) => "interrupt".into(),
        (Recovering, _) => "recover".into(),
        (Starting | Running, _) => j.state_label(),
        (s, _) => s.as_str().into(),
    }
}

/// Why the highlighted job failed: exit code, reason, and its log's last lines.
fn draw_failure(f: &mut Frame, app: &App, j: &crate::store::JobRecord, area: Rect) {
    let t = &app.theme;
    let code = j
        .exit_code
        .map_or_else(|| "no exit code".to_string(), |c| format!("exit {c}"));
    let reason = crate::sanitize::sanitize_line(j.reason.clone().unwrap_or_default().as_bytes());
    let title = format!(
        " {} failed: {code}{} ",
        crate::tui::panes::metrics::job_label(j),
        if reason.is_empty() {
            String::new()
        } else {
            format!(" · {reason}")
        }
    );
    let b = block(app, title).border_style(t.error());
    let inner = b.inner(area);
    f.render_widget(b, area);
    let shown = inner.height as usize;
    let lines: Vec<Line> = if app.logs.job.as_deref() == Some(j.id.as_str()) {
        let n = app.logs.lines.len();
        app.logs
            .lines
            .iter()
            .skip(n.saturating_sub(shown))
            .map(|l| Line::from(l.text.clone()))
            .collect()
    } else {
        vec![Line::from(Span::styled("reading its log…", t.dim()))]
    };
    f.render_widget(Paragraph::new(lines), inner);
}

impl App {
    /// The jobs pane's actions: mark to compare, cancel, migrate, pull.
    pub(crate) fn on_jobs_action(&mut self, action: Action) -> Option<Vec<Command>> {
        Some(match action {
            Action::Mark => {
                match self.selected_job().map(|j| j.rec.id.clone()) {
                    Some(id) => {
                        if let Some(k) = self.marked.iter().position(|m| *m == id) {
                            self.marked.remove(k);
                        } else {
                            self.marked.push(id);
                        }
                        let n = self.marked.len();
                        self.say(
                        if n == 0 {
                            "no job marked: the chart shows the highlighted job alone".to_string()
                        } else {
                            format!("{n} job(s) marked: their curves overlay the chart (space unmarks)")
                        },
                        false,
                    );
                        self.load_compared()
                    }
                    None => {
                        self.say("no job to mark", true);
                        Vec::new()
                    }
                }
            }
            Action::CancelJob => {
                let asked = self.job_confirm("Cancel job?", |j| {
                    (!j.rec.state.is_terminal()).then(|| {
                        (
                            vec![
                                format!("cost so far {}", j.cost),
                                "SIGTERM now, SIGKILL after the grace period".into(),
                            ],
                            Command::Cancel {
                                job: j.rec.id.clone(),
                            },
                        )
                    })
                });
                if !asked {
                    self.say("select a job still running to cancel", true);
                }
                Vec::new()
            }
            Action::Migrate => {
                let asked = self.job_confirm("Migrate job?", |j| {
                    (matches!(j.rec.state, JobState::Running | JobState::SettingUp)).then(|| {
                        (
                            vec![
                                "stopped with the grace to save, then resumed from its".into(),
                                "newest checkpoint on a new machine like this one".into(),
                            ],
                            Command::Migrate {
                                job: j.rec.id.clone(),
                            },
                        )
                    })
                });
                if !asked {
                    self.say("select a running job to migrate", true);
                }
                Vec::new()
            }
            Action::Pull => match self.selected_job() {
                Some(j) => vec![Command::Pull {
                    job: j.rec.id.clone(),
                }],
                None => {
                    self.say("no job selected to pull artifacts from", true);
                    Vec::new()
                }
            },
            _ => return None,
        })
    }
}
