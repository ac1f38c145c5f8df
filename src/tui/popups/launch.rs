//! The launch form: provider, type, market, max price and name, validated and priced as you type.

use crate::model::Money;
use crate::provider::{LaunchRequest, Plan};
use crate::tui::app::*;
use crate::tui::ui::*;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui_textarea::TextArea;
use std::sync::Arc;

/// Checks a launch request (provider, request) and prices it, with no side effect.
pub type Validator = Arc<dyn Fn(&str, &LaunchRequest) -> Result<Plan, String> + Send + Sync>;

/// The launch form's provider that means "the cheapest offer of any provider".
pub const CHEAPEST: &str = "cheapest";

pub const FORM_FIELDS: [&str; 5] = [
    "provider (or cheapest)",
    "instance type",
    "spot (yes/no)",
    "max $/h",
    "name",
];

pub struct LaunchForm {
    pub fields: Vec<TextArea<'static>>,
    pub focus: usize,
    /// Per-field error, as you type.
    pub errors: Vec<Option<String>>,
    /// The priced plan when everything is valid.
    pub plan: Option<Plan>,
    /// Completions for the instance type field.
    pub completions: Vec<String>,
    /// With provider `cheapest`: the offers that fit, cheapest first (provider, type,
    /// hourly); the first is launched, the others tried in order when it has no capacity.
    pub cheapest: Vec<(String, String, Money)>,
    /// The newest check asked for (answers to older ones are dropped), and whether its
    /// answer is still to come.
    pub seq: u64,
    pub checking: bool,
}

/// What checking the form's values found: per-field errors, the priced plan, the type
/// completions, and for `cheapest` the fitting offers.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub errors: Vec<Option<String>>,
    pub plan: Option<Plan>,
    pub completions: Vec<String>,
    pub cheapest: Vec<(String, String, Money)>,
}

/// Everything the form is checked against (providers, their types and offers, their own
/// `check`), handed to a worker: pricing never runs on the UI task.
pub struct FormChecker {
    pub providers: Vec<String>,
    pub catalog: Vec<(String, Vec<String>)>,
    pub offers: Vec<crate::provider::Offer>,
    pub validator: Validator,
}

/// A shared [`FormChecker`] inside a command (equal when it is the same one).
#[derive(Clone)]
pub struct CheckerRef(pub Arc<FormChecker>);

impl PartialEq for CheckerRef {
    fn eq(&self, o: &CheckerRef) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}

impl std::fmt::Debug for CheckerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FormChecker")
    }
}

impl std::fmt::Debug for LaunchForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchForm")
            .field("values", &self.values())
            .field("focus", &self.focus)
            .field("errors", &self.errors)
            .finish()
    }
}

impl LaunchForm {
    pub(crate) fn new(provider: &str, instance_type: &str) -> LaunchForm {
        let mut fields: Vec<TextArea<'static>> =
            FORM_FIELDS.iter().map(|_| TextArea::default()).collect();
        fields[0].insert_str(provider);
        fields[1].insert_str(instance_type);
        fields[2].insert_str("no");
        for f in &mut fields {
            f.set_cursor_line_style(ratatui::style::Style::default());
        }
        LaunchForm {
            fields,
            focus: 0,
            errors: vec![None; FORM_FIELDS.len()],
            cheapest: Vec::new(),
            plan: None,
            completions: Vec::new(),
            seq: 0,
            checking: false,
        }
    }

    fn apply(&mut self, v: Verdict) {
        self.errors = v.errors;
        self.plan = v.plan;
        self.completions = v.completions;
        self.cheapest = v.cheapest;
        self.checking = false;
    }

    pub fn values(&self) -> Vec<String> {
        self.fields
            .iter()
            .map(|f| f.lines().join("").trim().to_string())
            .collect()
    }
}

pub(crate) fn common_prefix(v: &[String]) -> String {
    let Some(first) = v.first() else {
        return String::new();
    };
    let mut len = first.len();
    for s in &v[1..] {
        len = first
            .chars()
            .zip(s.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a.len_utf8())
            .sum::<usize>()
            .min(len);
    }
    first[..len].to_string()
}

impl App {
    pub fn open_launch_form(&mut self) -> Vec<Command> {
        if self.readonly {
            return Vec::new();
        }
        let ty = self
            .catalog
            .iter()
            .find(|(p, _)| *p == self.default_provider)
            .and_then(|(_, t)| t.first().cloned())
            .unwrap_or_default();
        let mut form = LaunchForm::new(&self.default_provider, &ty);
        let ask = self.check_form(&mut form);
        self.mode = Mode::Launch(Box::new(form));
        vec![ask]
    }

    /// What the form is checked against, shared with the worker that checks it.
    fn form_checker(&mut self) -> CheckerRef {
        if let Some(c) = &self.checker {
            return c.clone();
        }
        let c = CheckerRef(Arc::new(FormChecker {
            providers: self.providers.clone(),
            catalog: self.catalog.clone(),
            offers: self.offers.clone(),
            validator: self.validator.clone(),
        }));
        self.checker = Some(c.clone());
        c
    }

    /// Ask for the form's values to be checked off the UI task; the answer
    /// (`Msg::LaunchChecked`) is applied if it is still the newest.
    pub(crate) fn check_form(&mut self, f: &mut LaunchForm) -> Command {
        f.seq += 1;
        f.checking = true;
        Command::CheckLaunch {
            seq: f.seq,
            values: f.values(),
            checker: self.form_checker(),
        }
    }

    /// A check's answer, if it is the newest for the open form.
    pub(crate) fn launch_checked(&mut self, seq: u64, v: Verdict) {
        if let Mode::Launch(f) = &mut self.mode
            && f.seq == seq
        {
            f.apply(v);
            self.dirty = true;
        }
    }
}

impl FormChecker {
    /// Check every field; price the request with its provider's own `check` (for
    /// `cheapest`, every fitting offer's).
    pub fn check(&self, v: &[String]) -> Verdict {
        let mut f = Verdict {
            errors: vec![None; FORM_FIELDS.len()],
            ..Default::default()
        };
        if v[0] == CHEAPEST {
            self.check_cheapest(&mut f, v);
            return f;
        }
        let provider_ok = self.providers.contains(&v[0]);
        if !provider_ok {
            f.errors[0] = Some(format!(
                "unknown provider (known: {}, or {CHEAPEST})",
                self.providers.join(", ")
            ));
        }
        let types: Vec<String> = self
            .catalog
            .iter()
            .find(|(p, _)| *p == v[0])
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        f.completions = types
            .iter()
            .filter(|t| t.starts_with(&v[1]))
            .cloned()
            .collect();
        let spot = match v[2].to_lowercase().as_str() {
            "yes" | "y" | "true" | "spot" => Some(true),
            "no" | "n" | "false" | "" | "on-demand" => Some(false),
            _ => {
                f.errors[2] = Some("yes or no".into());
                None
            }
        };
        let max_price = if v[3].is_empty() {
            None
        } else {
            match Money::from_dollars_str(&v[3]) {
                Some(m) if m.0 > 0 => Some(m),
                _ => {
                    f.errors[3] = Some("a dollar amount, e.g. 2.50".into());
                    None
                }
            }
        };
        if !v[4].is_empty()
            && !v[4]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            f.errors[4] = Some("letters, digits, - _ . only".into());
        }
        if !provider_ok || f.errors.iter().any(Option::is_some) {
            return f;
        }
        let req = form_request(v, spot.unwrap_or(false));
        match (self.validator)(&v[0], &req) {
            Ok(plan) => {
                if let Some(max) = max_price
                    && plan.hourly > max
                {
                    f.errors[3] = Some(format!(
                        "{} costs {}/h, above your max",
                        plan.instance_type, plan.hourly
                    ));
                    return f;
                }
                f.plan = Some(plan);
            }
            Err(e) => f.errors[1] = Some(e),
        }
        f
    }

    /// Provider `cheapest`: the instance type field filters offers of every provider by
    /// GPU or type name (`H100`, `a100`); those that pass their provider's check and the
    /// max price are kept, cheapest first (spot prices when spot is asked).
    fn check_cheapest(&self, f: &mut Verdict, v: &[String]) {
        let spot = matches!(v[2].to_lowercase().as_str(), "yes" | "y" | "true" | "spot");
        let max = Money::from_dollars_str(&v[3]).filter(|m| m.0 > 0);
        if !v[3].is_empty() && max.is_none() {
            f.errors[3] = Some("a dollar amount, e.g. 2.50".into());
            return;
        }
        let want = v[1].to_lowercase();
        // Each (provider, type) once, priced by its provider's own check (its region, its
        // market): the catalog rows only say which offers exist.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        let mut fits: Vec<(String, String, Plan)> = Vec::new();
        for o in &self.offers {
            let name_fits = o.accelerator.to_lowercase().contains(&want)
                || o.instance_type.to_lowercase().contains(&want);
            let market = if spot {
                o.spot_micros
            } else {
                o.on_demand_micros
            };
            if !name_fits || market.is_none() || o.gpus < 1.0 {
                continue;
            }
            if seen.contains(&(o.provider.as_str(), o.instance_type.as_str())) {
                continue;
            }
            seen.push((&o.provider, &o.instance_type));
            let req = LaunchRequest {
                instance_type: Some(o.instance_type.clone()),
                ..form_request(v, spot)
            };
            // Only offers their provider would take (a bid it needs, a type it knows).
            if let Ok(plan) = (self.validator)(&o.provider, &req)
                && max.is_none_or(|m| plan.hourly <= m)
            {
                fits.push((o.provider.clone(), o.instance_type.clone(), plan));
            }
        }
        fits.sort_by_key(|(p, t, plan)| (plan.hourly, p.clone(), t.clone()));
        fits.truncate(8);
        let first_plan = fits.first().map(|(_, _, plan)| plan.clone());
        f.cheapest = fits
            .into_iter()
            .map(|(p, t, plan)| (p, t, plan.hourly))
            .collect();
        f.completions.clear();
        match first_plan {
            Some(plan) => f.plan = Some(plan),
            None => {
                f.errors[1] = Some(format!(
                    "no {}offer fits `{}`{}",
                    if spot { "spot " } else { "" },
                    v[1],
                    if max.is_some() { " under your max" } else { "" }
                ))
            }
        }
    }
}

/// The request the form's values ask for.
fn form_request(v: &[String], spot: bool) -> LaunchRequest {
    LaunchRequest {
        name: (!v[4].is_empty()).then(|| v[4].clone()),
        instance_type: (!v[1].is_empty()).then(|| v[1].clone()),
        gpus: None,
        spot,
        accept_new_host_key: false,
        ..Default::default()
    }
}

impl App {
    /// The launch of the form's values: for `cheapest`, its first offer with the others as
    /// `PROVIDER:TYPE` alternatives.
    pub(crate) fn form_launch(&self, f: &LaunchForm) -> (String, LaunchRequest) {
        let v = f.values();
        let spot = matches!(v[2].to_lowercase().as_str(), "yes" | "y" | "true" | "spot");
        let req = form_request(&v, spot);
        match f.cheapest.split_first() {
            Some(((p, t, _), rest)) if v[0] == CHEAPEST => (
                p.clone(),
                LaunchRequest {
                    instance_type: Some(t.clone()),
                    any_of: rest.iter().map(|(p, t, _)| format!("{p}:{t}")).collect(),
                    ..req
                },
            ),
            _ => (v[0].clone(), req),
        }
    }

    pub(crate) fn on_launch_key(&mut self, ev: KeyEvent, mut f: Box<LaunchForm>) -> Vec<Command> {
        let n = FORM_FIELDS.len();
        match ev.code {
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => {
                if f.checking {
                    self.say("still pricing this: enter again in a moment", true);
                } else if f.plan.is_some() {
                    let (provider, req) = self.form_launch(&f);
                    self.say(format!("launching on {provider}…"), false);
                    return vec![Command::Launch { provider, req }];
                } else {
                    self.say("fix the fields marked in red first", true);
                }
            }
            KeyCode::Down | KeyCode::BackTab | KeyCode::Up | KeyCode::Tab
                if !(ev.code == KeyCode::Tab && f.focus == 1 && !f.completions.is_empty()) =>
            {
                f.focus = match ev.code {
                    KeyCode::Up | KeyCode::BackTab => (f.focus + n - 1) % n,
                    _ => (f.focus + 1) % n,
                };
            }
            KeyCode::Tab => {
                // Complete the instance type to the longest common prefix of the candidates.
                let prefix = common_prefix(&f.completions);
                let field = &mut f.fields[1];
                field.select_all();
                field.cut();
                field.insert_str(prefix);
                let ask = self.check_form(&mut f);
                self.mode = Mode::Launch(f);
                return vec![ask];
            }
            _ => {
                let focus = f.focus;
                f.fields[focus].input(ev);
                let ask = self.check_form(&mut f);
                self.mode = Mode::Launch(f);
                return vec![ask];
            }
        }
        self.mode = Mode::Launch(f);
        Vec::new()
    }
}

pub(crate) fn draw_launch(f: &mut Frame, app: &App, form: &LaunchForm, area: Rect) {
    let t = &app.theme;
    // Boxed fields (3 rows each) when they fit, else a compact form: a row per field and a
    // row for its error, so every field shows at 60x16.
    let n = FORM_FIELDS.len() as u16;
    let compact = area.height < n * 3 + 4;
    let h = if compact { n * 2 + 3 } else { n * 3 + 4 };
    let r = centered(area, 64, h);
    f.render_widget(Clear, r);
    let outer = block(app, " Launch an instance ".into());
    let inner = outer.inner(r);
    f.render_widget(outer, r);
    let mut constraints: Vec<Constraint> = FORM_FIELDS
        .iter()
        .map(|_| Constraint::Length(if compact { 2 } else { 3 }))
        .collect();
    constraints.push(Constraint::Fill(1));
    let rows = Layout::vertical(constraints).split(inner);
    for (i, label) in FORM_FIELDS.iter().enumerate() {
        if compact {
            let err = form.errors[i].as_deref();
            let label_style = if err.is_some() {
                t.error()
            } else if i == form.focus {
                t.accent()
            } else {
                t.dim()
            };
            let [line, below] =
                Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(rows[i]);
            let [l, v] =
                Layout::horizontal([Constraint::Length(24), Constraint::Fill(1)]).areas(line);
            f.render_widget(
                Paragraph::new(Span::styled(format!("{label}:"), label_style)),
                l,
            );
            let mut ta = form.fields[i].clone();
            if i != form.focus {
                ta.set_cursor_style(Style::default());
            }
            f.render_widget(&ta, v);
            let note = match err {
                Some(e) => Span::styled(format!("  {e}"), t.error()),
                None if i == 1 && !form.completions.is_empty() => {
                    Span::styled(format!("  tab: {}", form.completions.join(", ")), t.dim())
                }
                None => Span::raw(""),
            };
            f.render_widget(Paragraph::new(note), below);
            continue;
        }
        let mut title = format!(" {label} ");
        if i == 1 && !form.completions.is_empty() {
            title.push_str(&format!("(tab: {}) ", form.completions.join(", ")));
        }
        let err = form.errors[i].as_deref();
        let border = if err.is_some() {
            t.error()
        } else if i == form.focus {
            t.accent()
        } else {
            t.dim()
        };
        let mut b = Block::default()
            .borders(Borders::ALL)
            .border_style(border)
            .title(title);
        if let Some(e) = err {
            b = b.title_bottom(Span::styled(format!(" {e} "), t.error()));
        }
        let mut ta = form.fields[i].clone();
        ta.set_block(b);
        if i != form.focus {
            ta.set_cursor_style(Style::default());
        }
        f.render_widget(&ta, rows[i]);
    }
    let footer = match &form.plan {
        Some(p) if !form.cheapest.is_empty() => {
            let (first, rest) = form.cheapest.split_first().expect("not empty");
            let then: Vec<String> = rest
                .iter()
                .take(2)
                .map(|(p, ty, m)| format!("{p}:{ty} {m}"))
                .collect();
            Line::from(vec![
                Span::styled(
                    format!(
                        "→ {}:{} {} at {}/h",
                        first.0,
                        first.1,
                        if p.spot { "spot" } else { "on-demand" },
                        first.2
                    ),
                    t.ok(),
                ),
                Span::styled(
                    if then.is_empty() {
                        String::new()
                    } else {
                        format!(", then {}", then.join(", "))
                    },
                    t.dim(),
                ),
            ])
        }
        Some(p) => Line::from(vec![
            Span::styled(
                format!(
                    "→ {} {} at {}/h",
                    p.instance_type,
                    if p.spot { "spot" } else { "on-demand" },
                    p.hourly
                ),
                t.ok(),
            ),
            Span::styled("   enter launch · esc cancel · ↑/↓ field", t.dim()),
        ]),
        None => Line::from(Span::styled("esc cancel · ↑/↓ field", t.dim())),
    };
    f.render_widget(Paragraph::new(footer), rows[FORM_FIELDS.len()]);
}
