//! Metrics from plain logs, no instrumentation.
//!
//! [`LogParser`] reads log bytes as they arrive and calls back with one point per value it
//! recognises. It splits on `\n` and `\r` (so tqdm's carriage-return updates count), keeps
//! context across lines (the current epoch and step, a YOLO table header) and never
//! allocates per line once warm. Families understood:
//!
//! * JSON and Python-dict lines: `{"loss": 0.5}`, `{"type": "progress", "data": {...}}`,
//!   Hugging Face Trainer `{'loss': 2.3, 'learning_rate': 4.9e-05, 'epoch': 0.05}`;
//! * `key=value` and `key: value` pairs anywhere in a line (Keras `- loss: 0.29`,
//!   tqdm / Lightning postfixes `[..., loss=0.32]`, PyTorch `Loss: 2.289124`);
//! * `Epoch 3/10`, `Epoch 3:`; progress counters `450/1000` in tqdm and Keras bars;
//! * nanoGPT `iter 100: loss 2.4512, time 35.21ms`;
//! * Ultralytics/YOLO tables whose header row names the columns.
//!
//! Names are lowercased as printed. `step`, `epoch`, `iter` and their totals are context,
//! not points. NaN and infinities are kept.

use crate::model::Progress;

/// One recognised value, borrowed from the parser's buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointRef<'a> {
    pub name: &'a str,
    pub value: f64,
    pub step: Option<i64>,
    pub epoch: Option<f64>,
    /// 1-based number of the `\n`-terminated line the value was on.
    pub line: u64,
}

impl PointRef<'_> {
    pub fn to_owned_point(&self) -> crate::model::MetricPoint {
        crate::model::MetricPoint {
            name: self.name.to_string(),
            value: self.value,
            step: self.step,
            epoch: self.epoch,
            line: self.line,
        }
    }
}

/// Byte length of the prefix of `buf` that ends with a line terminator (`\n` or `\r`).
/// A follower feeds exactly this much and keeps the rest for the next read.
pub fn complete_prefix_len(buf: &[u8]) -> usize {
    memchr::memrchr2(b'\n', b'\r', buf).map_or(0, |p| p + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Metric,
    Step,
    Epoch,
    StepsTotal,
    EpochsTotal,
    Ignore,
}

fn role_of(name: &[u8]) -> Role {
    // First byte first: this runs for every pair, and most names are plain metrics.
    if !matches!(
        name.first(),
        Some(b's' | b'g' | b'i' | b'e' | b't' | b'm' | b'n' | b'v')
    ) {
        return Role::Metric;
    }
    match name {
        b"step" | b"global_step" | b"iter" | b"iteration" | b"steps" => Role::Step,
        b"epoch" => Role::Epoch,
        b"total_steps" | b"max_steps" | b"max_iters" | b"num_steps" | b"num_training_steps" => {
            Role::StepsTotal
        }
        b"epochs" | b"total_epochs" | b"num_epochs" | b"max_epochs" | b"num_train_epochs" => {
            Role::EpochsTotal
        }
        b"v_num" | b"type" => Role::Ignore,
        _ => Role::Metric,
    }
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    name_start: u32,
    name_len: u32,
    value: f64,
    /// The value was `a/b`; `total` is b.
    total: Option<f64>,
    role: Role,
}

/// Whether a pair's name follows a preposition (`for fraction=1.0 at imgsz=64`, `with
/// nc=1`): a setting told in a sentence.
fn after_preposition(before: &[u8]) -> bool {
    let Some(b) = before.strip_suffix(b" ") else {
        return false;
    };
    let start = b
        .iter()
        .rposition(|c| !c.is_ascii_alphabetic())
        .map_or(0, |p| p + 1);
    matches!(
        &b[start..],
        b"with" | b"at" | b"for" | b"of" | b"to" | b"from" | b"in" | b"by" | b"using"
    ) && (start == 0 || b[start - 1] == b' ')
}

/// Whether the text before a pair leaves it inside the parentheses of a call
/// (`AdamW(lr=…, momentum=…`): an open `(` right after a name, not closed since.
fn in_call(before: &[u8]) -> bool {
    let Some(open) = memchr::memrchr(b'(', before) else {
        return false;
    };
    open > 0 && is_ident(before[open - 1]) && memchr::memchr(b')', &before[open..]).is_none()
}

/// Whether what follows a number (` TPU cores`, `ms preprocess, 10.4ms inference`) is
/// prose: a plain word that does not name the next pair (`val loss: 0.4` does).
fn words_follow(after: &[u8]) -> bool {
    // Byte by byte: this runs for most pairs (`loss=0.5 lr=…` stops at the `=`).
    let mut i = after
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let start = i;
    while i < after.len() && after[i].is_ascii_alphabetic() {
        i += 1;
    }
    if i == start {
        return false;
    }
    match after.get(i) {
        None => true,
        Some(b',' | b';' | b')') => true,
        Some(b' ' | b'\t') => {
            // `train loss: 0.5 val loss: 0.4`: the word begins the next pair's name.
            let rest = &after[i..];
            let b = rest
                .iter()
                .skip_while(|c| **c == b' ' || **c == b'\t')
                .take_while(|c| **c != b' ' && **c != b'\t')
                .last();
            b != Some(&b':')
        }
        Some(_) => false,
    }
}

/// `s` after the terminal escape sequence it starts with (CSI `ESC [ ... final`, or a
/// two-byte `ESC x`).
fn skip_escape(s: &[u8]) -> &[u8] {
    match s.get(1) {
        Some(b'[') => {
            let end = s[2..]
                .iter()
                .position(|b| (0x40..=0x7e).contains(b))
                .map_or(s.len(), |p| p + 3);
            &s[end..]
        }
        Some(_) => &s[2..],
        None => &s[1..],
    }
}

/// The cells of a table line: between pipes (the outer ones dropped), or separated by
/// whitespace.
fn table_cells(s: &[u8], pipe: bool) -> Vec<&[u8]> {
    if pipe {
        let inner = s.strip_prefix(b"|").unwrap_or(s);
        let inner = trim(inner);
        let inner = inner.strip_suffix(b"|").unwrap_or(inner);
        inner.split(|&b| b == b'|').map(trim).collect()
    } else {
        s.split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// `train` in `train's auc` when the name starting at `a` follows `<ident>'s `.
fn owner_before(s: &[u8], a: usize) -> Option<&[u8]> {
    if a < 4 || &s[a - 3..a] != b"'s " {
        return None;
    }
    let end = a - 3;
    let mut o = end;
    while o > 0 && is_ident(s[o - 1]) {
        o -= 1;
    }
    (o < end && s[o].is_ascii_alphabetic()).then(|| &s[o..end])
}

/// A metric value as people read it: up to `decimals` decimals without trailing zeros,
/// scientific notation (`decimals - 1` digits) outside `10^-(decimals-1) .. 10^(decimals+1)`;
/// NaN and infinities as Rust writes them.
pub fn fmt_metric(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    let (lo, hi) = (
        10f64.powi(1 - decimals as i32),
        10f64.powi(decimals as i32 + 1),
    );
    if a != 0.0 && !(lo..hi).contains(&a) {
        format!("{v:.*e}", decimals - 1)
    } else {
        let s = format!("{v:.decimals$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The runner's marker lines around a job's setup output (`assets/remote/runner.sh`).
pub const SETUP_MARK: &str = "── trainctl: setup";
pub const SETUP_ENDED_MARK: &str = "── trainctl: setup ended";
pub const SETUP_SKIPPED_MARK: &str = "── trainctl: setup skipped";

/// Streaming log parser. Feed it bytes; it calls back with points.
#[derive(Debug, Default)]
pub struct LogParser {
    progress: Progress,
    line: u64,
    /// Partial segment carried between [`LogParser::feed`] calls.
    partial: Vec<u8>,
    /// Column names of the last YOLO training header (`Epoch GPU_mem box_loss ...`).
    yolo_train: Vec<String>,
    /// Column names of the last YOLO validation header (`Class Images ... mAP50-95`).
    yolo_val: Vec<String>,
    /// `name=False`/`True`/`None` values on the current line: two make it a settings dump.
    setting_words: u8,
    /// Column names of the table whose header came last (`iter loss acc`, or between
    /// pipes), while its rows follow.
    table: Vec<String>,
    pairs: Vec<Pair>,
    /// Lowercased names for the pairs of the current segment, concatenated (ASCII only).
    names: String,
    saw_progress: bool,
}

impl LogParser {
    pub fn new() -> Self {
        LogParser {
            line: 1,
            ..Default::default()
        }
    }

    /// Resume with context saved from an earlier run (line number and progress).
    pub fn resume(line: u64, progress: Progress) -> Self {
        LogParser {
            line: line.max(1),
            progress,
            ..Default::default()
        }
    }

    /// Current progress as the log has told it so far.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// True once any progress counter (epoch or step) was seen.
    pub fn saw_progress(&self) -> bool {
        self.saw_progress
    }

    /// The 1-based number of the line being read.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Feed any bytes; complete segments are parsed now, a trailing partial one is kept.
    pub fn feed(&mut self, bytes: &[u8], out: &mut impl FnMut(PointRef<'_>)) {
        let mut rest = bytes;
        if !self.partial.is_empty() {
            match memchr::memchr2(b'\n', b'\r', rest) {
                None => {
                    self.partial.extend_from_slice(rest);
                    return;
                }
                Some(p) => {
                    let mut seg = std::mem::take(&mut self.partial);
                    seg.extend_from_slice(&rest[..p]);
                    self.segment(&seg, out);
                    if rest[p] == b'\n' {
                        self.line += 1;
                    }
                    seg.clear();
                    self.partial = seg;
                    rest = &rest[p + 1..];
                }
            }
        }
        let done = complete_prefix_len(rest);
        self.feed_complete(&rest[..done], out);
        self.partial.extend_from_slice(&rest[done..]);
    }

    /// Parse bytes that end at a segment boundary (or at the end of the input).
    pub fn feed_complete(&mut self, bytes: &[u8], out: &mut impl FnMut(PointRef<'_>)) {
        let mut start = 0;
        while let Some(p) = find_line_end(&bytes[start..]).map(|p| start + p) {
            self.segment(&bytes[start..p], out);
            if bytes[p] == b'\n' {
                self.line += 1;
            }
            start = p + 1;
        }
        if start < bytes.len() {
            self.segment(&bytes[start..], out);
        }
    }

    /// Parse whatever partial segment is left (end of file).
    pub fn finish(&mut self, out: &mut impl FnMut(PointRef<'_>)) {
        if !self.partial.is_empty() {
            let seg = std::mem::take(&mut self.partial);
            self.segment(&seg, out);
        }
    }

    fn segment(&mut self, raw: &[u8], out: &mut impl FnMut(PointRef<'_>)) {
        let mut s = trim_start(raw);
        // Cursor moves before the text (`\x1b[A{'eval_loss': ...}`: tqdm's nested bars).
        while s.first() == Some(&0x1b) {
            s = trim_start(skip_escape(s));
        }
        if s.len() < 3 {
            return;
        }
        // trainctl's setup section (pip's output, apt's) holds no training metric.
        if s[0] == SETUP_MARK.as_bytes()[0] && s.starts_with(SETUP_MARK.as_bytes()) {
            self.progress.in_setup = !(s.starts_with(SETUP_ENDED_MARK.as_bytes())
                || s.starts_with(SETUP_SKIPPED_MARK.as_bytes()));
            return;
        }
        if self.progress.in_setup {
            return;
        }
        self.pairs.clear();
        self.names.clear();
        self.setting_words = 0;
        // A YOLO training header names its columns and holds no number.
        if s.starts_with(b"Epoch ") && !s.iter().any(u8::is_ascii_digit) {
            self.maybe_yolo_header(s);
            return;
        }
        if s[0] == b'{' && self.parse_dict_line(s) {
            // Parsed as a dict: pairs are filled.
        } else if let Some(k) = dict_after_bar(s)
            && self.bar_then_dict(s, k)
        {
            // Parsed: the bar's pairs and the dict's are filled.
        } else if self.table_line(s) {
            // A table's header or row: its counters and columns are filled.
        } else if !self.yolo_row(s) {
            self.epoch_prefix(s);
            self.iteration_prefix(s);
            self.bracket_step(s);
            if !self.nanogpt(s) {
                let last_bar = self.scan_pairs(s);
                self.progress_counter(s, last_bar);
                // A settings dump (`lr0=0.01, amp=False, cache=None, ...`) is not a
                // measurement, whatever its numbers.
                if self.setting_words >= 2 {
                    self.pairs.clear();
                }
            }
        }
        self.apply_context();
        self.emit(out);
    }

    // ------------------------------------------------------------ pair storage

    fn push_name_bytes(&mut self, name: &[u8]) {
        // Non-ASCII bytes become `?` so a name is always valid UTF-8.
        self.names.extend(name.iter().map(|&b| {
            if b.is_ascii() {
                char::from(b.to_ascii_lowercase())
            } else {
                '?'
            }
        }));
    }

    /// A dict leaf: `outer/inner/key`.
    fn push_pair_parts(&mut self, prefix: &[&[u8]], key: &[u8], value: f64) {
        let start = self.names.len();
        for part in prefix {
            self.push_name_bytes(part);
            self.names.push('/');
        }
        self.push_name_bytes(key);
        self.finish_pair(start, value, None);
    }

    /// `name_unit` (`time_ms`, `throughput_it_per_s`): a number with a unit is not stored
    /// bare under the metric's name.
    fn push_pair_unit(&mut self, name: &[u8], unit: &[u8], value: f64) {
        let start = self.names.len();
        self.push_name_bytes(name);
        self.names.push('_');
        for (i, part) in unit.split(|&b| b == b'/').enumerate() {
            if i > 0 {
                self.names.push_str("_per_");
            }
            self.push_name_bytes(part);
        }
        self.finish_pair(start, value, None);
    }

    fn push_pair(&mut self, name: &[u8], value: f64, total: Option<f64>) {
        let start = self.names.len();
        self.push_name_bytes(name);
        self.finish_pair(start, value, total);
    }

    fn finish_pair(&mut self, start: usize, value: f64, total: Option<f64>) {
        let name_len = self.names.len() - start;
        if name_len == 0 {
            return;
        }
        let role = role_of(&self.names.as_bytes()[start..]);
        self.pairs.push(Pair {
            name_start: start as u32,
            name_len: name_len as u32,
            value,
            total,
            role,
        });
    }

    /// Move step/epoch pairs into the progress context; they are not points.
    fn apply_context(&mut self) {
        for i in 0..self.pairs.len() {
            let p = self.pairs[i];
            match p.role {
                Role::Step if p.value.is_finite() => {
                    self.progress.step = Some(p.value as i64);
                    if let Some(t) = p.total {
                        self.progress.steps_total = Some(t as i64);
                    }
                    self.saw_progress = true;
                }
                Role::Epoch if p.value.is_finite() => {
                    self.progress.epoch = Some(p.value);
                    if let Some(t) = p.total {
                        self.progress.epochs_total = Some(t);
                    }
                    self.saw_progress = true;
                }
                Role::StepsTotal if p.value.is_finite() && p.value > 0.0 => {
                    self.progress.steps_total = Some(p.value as i64)
                }
                Role::EpochsTotal if p.value.is_finite() && p.value > 0.0 => {
                    self.progress.epochs_total = Some(p.value)
                }
                _ => {}
            }
        }
    }

    fn emit(&mut self, out: &mut impl FnMut(PointRef<'_>)) {
        for p in &self.pairs {
            if p.role != Role::Metric || p.total.is_some() {
                continue;
            }
            let name = name_str(&self.names, p);
            out(PointRef {
                name,
                value: p.value,
                step: self.progress.step,
                epoch: self.progress.epoch,
                line: self.line,
            });
        }
    }

    // ---------------------------------------------------------------- families

    /// `Epoch 3/10 ...`, `Epoch 3: 100%|...` (Keras, Lightning).
    fn epoch_prefix(&mut self, s: &[u8]) {
        // `-- Epoch 5`, `=== Epoch 5 ===`, `[Epoch 5]`: decoration before the word.
        let s = match s[0] {
            b'-' | b'=' | b'*' | b'#' | b'>' | b'[' => {
                let k = s
                    .iter()
                    .take_while(|b| matches!(b, b'-' | b'=' | b'*' | b'#' | b'>' | b'[' | b' '))
                    .count();
                &s[k..]
            }
            _ => s,
        };
        if s.len() < 7 || !s[..5].eq_ignore_ascii_case(b"epoch") || s[5] != b' ' {
            return;
        }
        let rest = &s[6..];
        let Some((n, used)) = parse_uint(rest) else {
            return;
        };
        let after = &rest[used..];
        let total = if after.first() == Some(&b'/') {
            parse_uint(&after[1..]).map(|(t, _)| t as f64)
        } else if matches!(
            after.first(),
            None | Some(b':' | b' ' | b',' | b']' | b'-' | b'=' | b'*')
        ) {
            None
        } else {
            return;
        };
        self.progress.epoch = Some(n as f64);
        if total.is_some() {
            self.progress.epochs_total = total;
        }
        self.saw_progress = true;
    }

    /// A Trainer dict printed after a tqdm bar's last update, as it lands in a log file
    /// (`50%|█████| 5/10 [00:01<00:01]{'loss': 1.2}`): the bar's counter is the step, the
    /// dict the metrics. Nothing is kept when the dict does not parse.
    fn bar_then_dict(&mut self, s: &[u8], k: usize) -> bool {
        let step = self.progress.step;
        let last_bar = self.scan_pairs(&s[..k]);
        self.progress_counter(&s[..k], last_bar);
        if self.parse_dict_line(&s[k..]) {
            return true;
        }
        self.pairs.clear();
        self.names.clear();
        self.progress.step = step;
        false
    }

    /// `Iteration 7, loss = 0.4391` (scikit-learn's MLP), `Iteration 7:`: the step.
    /// Also `Iter 7 loss=...`, `Step 7/100:`.
    fn iteration_prefix(&mut self, s: &[u8]) {
        // First byte first: this runs on every line.
        let word = match s[0] | 0x20 {
            b'i' if s.len() > 10 && s[..10].eq_ignore_ascii_case(b"iteration ") => 10,
            b'i' if s.len() > 5 && s[..5].eq_ignore_ascii_case(b"iter ") => 5,
            b's' if s.len() > 5 && s[..5].eq_ignore_ascii_case(b"step ") => 5,
            _ => return,
        };
        let Some((n, used)) = parse_uint(&s[word..]) else {
            return;
        };
        let after = s.get(word + used);
        if matches!(after, None | Some(b',' | b':' | b' ' | b'/')) {
            self.progress.step = Some(n as i64);
            if after == Some(&b'/')
                && let Some((t, _)) = parse_uint(&s[word + used + 1..])
            {
                self.progress.steps_total = Some(t as i64);
            }
            self.saw_progress = true;
        }
    }

    /// A leading `[N]` then whitespace is the round the line reports (XGBoost's
    /// `[0]\tvalidation_0-logloss:0.52`, LightGBM's `[1]\ttrain's auc: 0.94`).
    /// Also a leading `N:` then whitespace (`5: loss=0.5`; not a time of day).
    fn bracket_step(&mut self, s: &[u8]) {
        // First byte first: this runs on every line.
        let (n, next) = if s[0] == b'[' {
            match parse_uint(&s[1..]) {
                Some((n, used)) if s.get(1 + used) == Some(&b']') => (n, 2 + used),
                _ => return,
            }
        } else if s[0].is_ascii_digit() {
            match parse_uint(s) {
                Some((n, used)) if s.get(used) == Some(&b':') => (n, used + 1),
                _ => return,
            }
        } else {
            return;
        };
        if matches!(s.get(next), Some(b' ' | b'\t')) {
            self.progress.step = Some(n as i64);
            self.saw_progress = true;
        }
    }

    /// nanoGPT: `iter 100: loss 2.4512, time 35.21ms, mfu 12.34%` and
    /// `step 500: train loss 2.1234, val loss 2.2345`.
    fn nanogpt(&mut self, s: &[u8]) -> bool {
        if s.len() < 6
            || !matches!(s[0] | 0x20, b'i' | b's')
            || !(s[..5].eq_ignore_ascii_case(b"iter ") || s[..5].eq_ignore_ascii_case(b"step "))
        {
            return false;
        }
        let rest = &s[5..];
        let Some((n, used)) = parse_uint(rest) else {
            return false;
        };
        if rest.get(used) != Some(&b':') {
            return false;
        }
        self.progress.step = Some(n as i64);
        self.saw_progress = true;
        for part in rest[used + 1..].split(|&b| b == b',') {
            let part = trim(part);
            // `<words> <number>[unit]`: the value is the last word.
            let Some(sp) = part.iter().rposition(|&b| b == b' ') else {
                continue;
            };
            let (name, val) = (trim(&part[..sp]), &part[sp + 1..]);
            if name.is_empty() || !name[0].is_ascii_alphabetic() {
                continue;
            }
            if let Some((v, used)) = parse_number(val)
                && is_unit_tail(&val[used..])
            {
                match unit_of(&val[used..]) {
                    Some(unit) => self.push_pair_unit(name, unit, v),
                    None => self.push_pair(name, v, None),
                }
            }
        }
        true
    }

    /// `450/1000 [` (tqdm) or `938/938 ━━` / `1875/1875 [===` (Keras): a step counter.
    /// `last_bar` is the position of the line's last `|`, found by [`Self::scan_pairs`].
    fn progress_counter(&mut self, s: &[u8], last_bar: Option<usize>) {
        // tqdm: `...%|<bar>| N/M [`; the counter follows the last `| `.
        let candidate = if let Some(p) = last_bar {
            trim_start(&s[p + 1..])
        } else {
            s
        };
        let Some((n, used)) = parse_uint(candidate) else {
            return;
        };
        if candidate.get(used) != Some(&b'/') {
            return;
        }
        let Some((m, used2)) = parse_uint(&candidate[used + 1..]) else {
            return;
        };
        let tail = trim_start(&candidate[used + 1 + used2..]);
        let bar_follows = tail.is_empty()
            || tail[0] == b'['
            || tail.starts_with("━".as_bytes())
            || tail.starts_with("─".as_bytes());
        if bar_follows && m > 0 {
            self.progress.step = Some(n as i64);
            self.progress.steps_total = Some(m as i64);
            self.saw_progress = true;
        }
    }

    /// `key=value`, `key: value` anywhere in the line. Returns where the last `|` is (one
    /// pass serves both).
    fn scan_pairs(&mut self, s: &[u8]) -> Option<usize> {
        // Whether the line has a `(` at all: looked for at the first pair only.
        let mut has_paren: Option<bool> = None;
        let mut from = 0;
        let mut last_bar = None;
        while let Some(off) = find_separator(&s[from..]) {
            let sep = from + off;
            from = sep + 1;
            if s[sep] == b'|' {
                last_bar = Some(sep);
                continue;
            }
            let mut v = sep + 1;
            while v < s.len() && s[v] == b' ' {
                v += 1;
            }
            if v >= s.len() {
                break;
            }
            // The value's first byte before the name (it tells most lines apart: prose
            // after a colon), which is read back only then.
            let value_may_follow =
                starts_number(s[v]) || (s[sep] == b'=' && starts_setting_word(s[v]));
            let Some((a, end)) = value_may_follow.then(|| name_before(s, sep)).flatten() else {
                // A bar like `[=====>....]`: skip the run rather than stop at every `=`.
                while from < s.len() && s[from] == s[sep] {
                    from += 1;
                }
                continue;
            };
            let Some((value, used)) = parse_number(&s[v..]) else {
                // `amp=False`, `cfg=None`: a settings dump (counted, see `segment`).
                if s[sep] == b'=' && starts_setting_word(s[v]) {
                    self.setting_words = self.setting_words.saturating_add(1);
                }
                continue;
            };
            let after = &s[v + used..];
            // `epoch: 3/10`, `step=5/100`: a counter of a total.
            if after.first() == Some(&b'/') {
                if let Some((t, u2)) = parse_number(&after[1..])
                    && is_unit_tail(&after[1 + u2..])
                {
                    let name = &s[a..end];
                    self.push_pair(name, value, Some(t));
                }
                from = v + used;
                continue;
            }
            if !is_unit_tail(after) {
                continue;
            }
            // `using: 0 TPU cores`, `Speed: 0.0ms preprocess, ...`: a count in a sentence,
            // not a metric; `corrupt: 100% ━━━━`: a progress bar's percentage.
            let unit = unit_of(after);
            let rest = &after[unit.map_or(0, <[u8]>::len)..];
            if (rest.first() == Some(&b' ') && words_follow(rest))
                || (rest.first() == Some(&b'%') && trim_start(&rest[1..]).first() == Some(&0xe2))
            {
                from = v + used;
                continue;
            }
            // `'lr0=0.01'` quoted in a sentence; `AdamW(lr=0.002, momentum=0.9)` and
            // `weight(decay=0.0)`: arguments of a call, settings rather than measurements.
            if a > 0
                && (s[a - 1] == b'\''
                    || (*has_paren.get_or_insert_with(|| memchr::memchr(b'(', s).is_some())
                        && in_call(&s[..a]))
                    || after_preposition(&s[..a]))
            {
                from = v + used;
                continue;
            }
            let name = &s[a..end];
            match (owner_before(s, a), unit) {
                // LightGBM's `valid's auc: 0.93`: the split is part of the name.
                (Some(owner), _) => self.push_pair_parts(&[owner], name, value),
                // `time=47.1ms`: the unit is part of the name (`time_ms`).
                (None, Some(unit)) => self.push_pair_unit(name, unit, value),
                (None, None) => self.push_pair(name, value, None),
            }
            from = v + used;
        }
        last_bar
    }

    // ------------------------------------------------------------------- dicts

    /// `{...}` as JSON or a Python dict literal. Returns false when it is neither.
    fn parse_dict_line(&mut self, s: &[u8]) -> bool {
        let mut p = DictParser { s, i: 0 };
        let before = self.pairs.len();
        let ok = p.dict(
            &mut |prefix: &[&[u8]], key: &[u8], v: f64| self.push_pair_parts(prefix, key, v),
            &mut Vec::new(),
        );
        if !ok {
            self.pairs.truncate(before);
            self.names.clear();
        }
        ok
    }

    // ------------------------------------------------------------------ tables

    /// A table with a header row, whitespace- or pipe-separated (`iter  loss  acc`, then
    /// `10  0.51  0.80`; `| step | loss |`): one series per numeric column, each row's
    /// counter column (iter, step, epoch, round) its step or epoch. A header is taken only
    /// when it starts with a counter word or names a metric; the table ends at the first
    /// line that is not one of its rows.
    fn table_line(&mut self, s: &[u8]) -> bool {
        let pipe = s[0] == b'|';
        if !self.table.is_empty() {
            if pipe
                && s.iter()
                    .all(|b| matches!(b, b'|' | b'-' | b':' | b'+' | b' '))
            {
                return true; // `|------|------|`
            }
            if (pipe || s[0].is_ascii_digit()) && self.table_row(s, pipe) {
                return true;
            }
            self.table.clear();
        }
        // Header candidates: a pipe, or a counter word first (first byte first: this
        // runs on every line).
        if !pipe && !matches!(s[0] | 0x20, b'i' | b's' | b'e' | b'r' | b'b') {
            return false;
        }
        // The first word is at most 9 letters (`iteration`), then whitespace.
        let first_end = if pipe {
            0
        } else {
            match s.iter().take(10).position(|&b| b == b' ' || b == b'\t') {
                Some(e) => e,
                None => return false,
            }
        };
        let word = &s[..first_end];
        let counter_first = [
            &b"iter"[..],
            b"iteration",
            b"step",
            b"epoch",
            b"round",
            b"it",
            b"batch",
        ]
        .iter()
        .any(|c| word.eq_ignore_ascii_case(c));
        if !pipe && !counter_first {
            return false;
        }
        if s.iter().any(u8::is_ascii_digit) && !pipe {
            return false;
        }
        let cells = table_cells(s, pipe);
        let names_ok = cells.len() >= 2
            && cells.iter().all(|c| {
                c.first().is_some_and(u8::is_ascii_alphabetic)
                    && c.iter().all(|&b| is_ident(b) || b == b'/' || b == b'%')
            });
        let metricish = |c: &[u8]| {
            let c = c.to_ascii_lowercase();
            ["loss", "acc", "err", "lr", "auc", "f1", "score", "reward"]
                .iter()
                .any(|w| memchr::memmem::find(&c, w.as_bytes()).is_some())
        };
        if !names_ok || !(counter_first || cells.iter().any(|c| metricish(c))) {
            return false;
        }
        self.table = cells
            .iter()
            .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
            .collect();
        true
    }

    /// A row of the current table: as many cells as it has columns, every one a number.
    fn table_row(&mut self, s: &[u8], pipe: bool) -> bool {
        let cells = table_cells(s, pipe);
        if cells.len() != self.table.len() {
            return false;
        }
        let mut values = Vec::with_capacity(cells.len());
        for c in &cells {
            match parse_number(c) {
                Some((v, used)) if used == c.len() => values.push(v),
                _ => return false,
            }
        }
        let cols = std::mem::take(&mut self.table);
        for (col, v) in cols.iter().zip(values) {
            match role_of(col.as_bytes()) {
                Role::Step | Role::Epoch => {}
                _ if col == "round" || col == "it" || col == "batch" => {
                    self.progress.step = Some(v as i64);
                    self.saw_progress = true;
                    continue;
                }
                _ => {}
            }
            self.push_pair(col.as_bytes(), v, None);
        }
        self.table = cols;
        true
    }

    // -------------------------------------------------------------------- YOLO

    fn maybe_yolo_header(&mut self, s: &[u8]) {
        // Cheap test first: a header names a loss column or mAP50.
        if memchr::memmem::find(s, b"_loss").is_none()
            && memchr::memmem::find(s, b"mAP50").is_none()
        {
            return;
        }
        let mut toks = s
            .split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty());
        let Some(first) = toks.next() else { return };
        if first == b"Epoch" {
            let cols: Vec<String> = s
                .split(|b| b.is_ascii_whitespace())
                .filter(|t| !t.is_empty())
                .map(yolo_name)
                .collect();
            if cols.len() >= 3 && cols.iter().any(|c| c.ends_with("_loss")) {
                self.yolo_train = cols;
            }
        } else if first == b"Class" {
            let cols: Vec<String> = s
                .split(|b| b.is_ascii_whitespace())
                .filter(|t| !t.is_empty())
                .map(yolo_name)
                .collect();
            if cols.iter().any(|c| c.starts_with("map50")) {
                self.yolo_val = cols;
            }
        }
    }

    /// A row under a YOLO header: `1/100 2.61G 1.215 ...` or `all 4 17 0.613 ...`.
    /// A header row with digits in it (`mAP50`) is recognised here too.
    fn yolo_row(&mut self, s: &[u8]) -> bool {
        if self.yolo_train.is_empty() && self.yolo_val.is_empty() && !s.starts_with(b"Class") {
            return false;
        }
        let first_end = s
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(s.len());
        let first = &s[..first_end];
        // A training header (`Epoch GPU_mem box_loss ...`) has no digits and was seen by
        // the caller; a validation header (`Class ... mAP50-95`) has some.
        if first == b"Class" {
            self.maybe_yolo_header(s);
            return true;
        }
        let is_train_row =
            !self.yolo_train.is_empty() && first.contains(&b'/') && first[0].is_ascii_digit();
        let is_val_row = !self.yolo_val.is_empty() && first == b"all";
        if !is_train_row && !is_val_row {
            return false;
        }
        let cols = if is_train_row {
            std::mem::take(&mut self.yolo_train)
        } else {
            std::mem::take(&mut self.yolo_val)
        };
        let mut matched = false;
        let toks = s
            .split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty());
        for (i, tok) in toks.enumerate() {
            if i >= cols.len() {
                break;
            }
            // Trailing `640:` before a tqdm bar.
            let tok = tok.strip_suffix(b":").unwrap_or(tok);
            if i == 0 {
                if is_train_row {
                    if let Some((n, used)) = parse_uint(tok)
                        && tok.get(used) == Some(&b'/')
                        && let Some((m, _)) = parse_uint(&tok[used + 1..])
                    {
                        self.progress.epoch = Some(n as f64);
                        self.progress.epochs_total = Some(m as f64);
                        self.saw_progress = true;
                        matched = true;
                    }
                } else {
                    matched = true;
                }
                continue;
            }
            // Counts and sizes beside the losses and scores are not metrics (GPU memory is
            // sampled as its own series).
            if matches!(
                cols[i].as_str(),
                "instances" | "size" | "images" | "gpu_mem"
            ) {
                continue;
            }
            if let Some((v, used)) = parse_number(tok)
                && tok[used..].iter().all(|b| b.is_ascii_alphabetic())
            {
                let name = cols[i].clone();
                self.push_pair(name.as_bytes(), v, None);
            }
        }
        if is_train_row {
            self.yolo_train = cols;
        } else {
            self.yolo_val = cols;
        }
        matched
    }
}

/// The separators [`LogParser::scan_pairs`] looks for, searched by a searcher built once
/// (the generic `memchr3` picks its routine and builds its vectors on every call, most of
/// the search's time on a short line).
#[cfg(target_arch = "x86_64")]
static SEPARATORS: std::sync::LazyLock<Option<memchr::arch::x86_64::avx2::memchr::Three>> =
    std::sync::LazyLock::new(|| memchr::arch::x86_64::avx2::memchr::Three::new(b'=', b':', b'|'));

#[cfg(target_arch = "x86_64")]
static LINE_ENDS: std::sync::LazyLock<Option<memchr::arch::x86_64::avx2::memchr::Two>> =
    std::sync::LazyLock::new(|| memchr::arch::x86_64::avx2::memchr::Two::new(b'\n', b'\r'));

/// The first `\n` or `\r` in `s`.
#[inline]
fn find_line_end(s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(ends) = LINE_ENDS.as_ref() {
        return ends.find(s);
    }
    memchr::memchr2(b'\n', b'\r', s)
}

/// The first `=`, `:` or `|` in `s`.
#[inline]
fn find_separator(s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(seps) = SEPARATORS.as_ref() {
        return seps.find(s);
    }
    memchr::memchr3(b'=', b':', b'|', s)
}

fn name_str<'n>(names: &'n str, p: &Pair) -> &'n str {
    // Names hold only ASCII (see `push_name_bytes`): any byte index is a char boundary.
    &names[p.name_start as usize..(p.name_start + p.name_len) as usize]
}

/// `Box(P` → `p`, `mAP50-95):` → `map50-95`, `GPU_mem` → `gpu_mem`.
fn yolo_name(tok: &[u8]) -> String {
    let t = String::from_utf8_lossy(tok).to_ascii_lowercase();
    let t = t.rsplit('(').next().unwrap_or(&t).to_string();
    t.trim_end_matches([')', ':']).to_string()
}

#[inline]
fn is_ident(b: u8) -> bool {
    IDENT[b as usize]
}

/// [`is_ident`] as a table: one load where the test is a handful of compares (it runs
/// on every byte of every name the pair scan reads back).
static IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-');
        i += 1;
    }
    t
};

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

fn trim(s: &[u8]) -> &[u8] {
    let s = trim_start(s);
    let n = s
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    &s[..s.len() - n]
}

/// What may follow a number for it to count: the end, a separator, or a unit
/// (`ms`, `s`, `%`, `G`, `it/s`) followed by those.
fn is_unit_tail(after: &[u8]) -> bool {
    let mut i = 0;
    while i < after.len() && (after[i].is_ascii_alphabetic() || after[i] == b'%') {
        i += 1;
    }
    match after.get(i) {
        None => true,
        Some(b) => {
            matches!(
                b,
                b' ' | b'\t' | b',' | b';' | b')' | b']' | b'}' | b'|' | b'\'' | b'"'
            ) || (i > 0 && *b == b'/')
        }
    }
}

/// The unit right after a number (`ms`, `s`, `GB`, `it/s`), when there is one; a percent
/// sign is not one (a percentage is a bare number).
fn unit_of(after: &[u8]) -> Option<&[u8]> {
    let a = after.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    if a == 0 || a > 6 {
        return None;
    }
    let mut end = a;
    if after.get(a) == Some(&b'/') {
        let b = after[a + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        if b > 0 && b <= 6 {
            end = a + 1 + b;
        }
    }
    Some(&after[..end])
}

/// A decimal unsigned integer at the start of `s`: (value, bytes used).
fn parse_uint(s: &[u8]) -> Option<(u64, usize)> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 18 {
        return None;
    }
    let mut v = 0u64;
    for &b in &s[..n] {
        v = v * 10 + (b - b'0') as u64;
    }
    Some((v, n))
}

const WORDS: [(&[u8], f64); 3] = [
    (b"infinity", f64::INFINITY),
    (b"inf", f64::INFINITY),
    (b"nan", f64::NAN),
];

/// The powers of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The name of a pair whose separator is at `sep`: where the identifier ending right
/// before it starts and ends (for `=`, spaces may stand between: `loss = 0.43`), when
/// there is one and it starts with a letter.
#[inline]
fn name_before(s: &[u8], sep: usize) -> Option<(usize, usize)> {
    let mut end = sep;
    if s[sep] == b'=' {
        while end > 0 && sep - end < 2 && s[end - 1] == b' ' {
            end -= 1;
        }
    }
    let mut a = end;
    while a > 0 && is_ident(s[a - 1]) {
        a -= 1;
    }
    (a < end && s[a].is_ascii_alphabetic()).then_some((a, end))
}

/// Whether a number [`parse_number`] reads may start with `b`: a digit, a sign, a point,
/// or the first letter of `nan`, `inf` or `infinity`.
#[inline]
fn starts_number(b: u8) -> bool {
    matches!(
        b,
        b'0'..=b'9' | b'-' | b'+' | b'.' | b'n' | b'N' | b'i' | b'I'
    )
}

/// Whether a setting's word (`False`, `True`, `None`) may start with `b`.
#[inline]
fn starts_setting_word(b: u8) -> bool {
    matches!(b, b'F' | b'T' | b'N')
}

/// A number at the start of `s`: `-1.5e-3`, `.5`, `nan`, `NaN`, `inf`, `-Infinity`.
pub fn parse_number(s: &[u8]) -> Option<(f64, usize)> {
    let (neg, start_digits) = match s.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    // The digits, their value gathered as they are read (one pass; it is used only when
    // there are at most 15 of them, so wrapping past 19 does no harm).
    let (mut m, mut i) = gather_digits(s, start_digits, 0);
    let int_digits = i - start_digits;
    let mut frac_digits = 0;
    if s.get(i) == Some(&b'.') {
        let (f, k) = gather_digits(s, i + 1, m);
        frac_digits = k - i - 1;
        if frac_digits > 0 || int_digits > 0 {
            i = k;
            m = f;
        }
    }
    if int_digits == 0 && frac_digits == 0 {
        return parse_word(s, neg, start_digits);
    }
    // A dotted version or address (`1.2.3`, `10.0.0.1`) is not a number.
    if s.get(i) == Some(&b'.') && s.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    // The exponent, when it has at most 3 digits (a longer one takes the slow path).
    let mut exp: i32 = 0;
    let mut exp_ok = true;
    if matches!(s.get(i), Some(b'e' | b'E')) {
        let mut k = i + 1;
        let exp_neg = s.get(k) == Some(&b'-');
        if matches!(s.get(k), Some(b'-' | b'+')) {
            k += 1;
        }
        let d0 = k;
        while let Some(&b) = s.get(k) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            if k - d0 < 3 {
                exp = exp * 10 + d as i32;
            } else {
                exp_ok = false;
            }
            k += 1;
        }
        if k > d0 {
            i = k;
            if exp_neg {
                exp = -exp;
            }
        } else {
            exp = 0;
        }
    }
    // Fast path (Clinger): up to 15 significant digits times or divided by a power of ten
    // a double holds exactly is one correctly rounded operation, the same result as
    // `str::parse`.
    let scale = exp - frac_digits as i32;
    if exp_ok && int_digits + frac_digits <= 15 && (-22..=22).contains(&scale) {
        // Below 10^15, so through i64: one instruction (u64 to f64 takes several).
        let m = m as i64 as f64;
        let v = if scale >= 0 {
            m * POW10[scale as usize]
        } else {
            m / POW10[(-scale) as usize]
        };
        return Some((if neg { -v } else { v }, i));
    }
    let text = std::str::from_utf8(&s[..i]).ok()?;
    text.parse::<f64>().ok().map(|v| (v, i))
}

/// The decimal digits of `s` from `at` appended to `m` (wrapping: the caller uses the
/// value only when there were few enough digits), and where they end.
#[inline]
fn gather_digits(s: &[u8], mut at: usize, mut m: u64) -> (u64, usize) {
    while let Some(&b) = s.get(at) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        m = m.wrapping_mul(10).wrapping_add(d as u64);
        at += 1;
    }
    (m, at)
}

/// `nan`, `inf`, `infinity` (any case) at `s[at..]`, a sign before it already read.
fn parse_word(s: &[u8], neg: bool, at: usize) -> Option<(f64, usize)> {
    let rest = &s[at..];
    for (word, val) in WORDS {
        if rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word) {
            let end = at + word.len();
            // `info`, `nano`: a word, not a number.
            if s.get(end).is_some_and(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            return Some((if neg { -val } else { val }, end));
        }
    }
    None
}

/// Where a dict (`{'` or `{"`) starts after a progress bar on the same line (`... 4.5it/s]{'loss': ...}`).
fn dict_after_bar(s: &[u8]) -> Option<usize> {
    // The hot path (every line that is not a dict) pays one byte compare.
    if s.last() != Some(&b'}') {
        return None;
    }
    let k = memchr::memchr(b'{', s)?;
    (k > 0 && matches!(s.get(k + 1), Some(b'\'' | b'"')) && memchr::memchr(b'|', &s[..k]).is_some())
        .then_some(k)
}

/// A tolerant reader of JSON objects and Python dict literals (single quotes, `True`,
/// `None`, `nan`, `inf`). Calls back with every numeric leaf.
struct DictParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> DictParser<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A quoted string; returns the raw bytes between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let q = *self.s.get(self.i)?;
        if q != b'"' && q != b'\'' {
            return None;
        }
        let start = self.i + 1;
        let mut k = start;
        while k < self.s.len() {
            match self.s[k] {
                b'\\' => k += 2,
                c if c == q => {
                    self.i = k + 1;
                    return Some(&self.s[start..k]);
                }
                _ => k += 1,
            }
        }
        None
    }

    /// Parse `{ key: value, ... }`. Nested dicts under `data` or `metrics` are flattened
    /// without a prefix; other nested dicts as `outer/inner`.
    fn dict(
        &mut self,
        out: &mut impl FnMut(&[&[u8]], &[u8], f64),
        prefix: &mut Vec<&'a [u8]>,
    ) -> bool {
        if prefix.len() > 16 || !self.eat(b'{') {
            return false;
        }
        if self.eat(b'}') {
            return true;
        }
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            if !self.eat(b':') {
                return false;
            }
            self.ws();
            match self.s.get(self.i) {
                Some(b'{') => {
                    let flatten = key == b"data" || key == b"metrics";
                    if !flatten {
                        prefix.push(key);
                    }
                    let ok = self.dict(out, prefix);
                    if !flatten {
                        prefix.pop();
                    }
                    if !ok {
                        return false;
                    }
                }
                Some(b'"') | Some(b'\'') => {
                    let Some(text) = self.string() else {
                        return false;
                    };
                    // A number quoted whole (`'loss': '1.2043'`, recent Trainer logs).
                    if let Some((v, used)) = parse_number(text)
                        && used == text.len()
                    {
                        out(prefix, key, v);
                    }
                }
                Some(b'[') | Some(b'(') => {
                    if !self.skip_list() {
                        return false;
                    }
                }
                Some(_) => {
                    let rest = &self.s[self.i..];
                    if let Some((v, used)) = parse_number(rest) {
                        self.i += used;
                        out(prefix, key, v);
                    } else {
                        // true / false / null / None / True / False
                        let n = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
                        if n == 0 {
                            return false;
                        }
                        self.i += n;
                    }
                }
                None => return false,
            }
            if self.eat(b',') {
                if self.eat(b'}') {
                    return true;
                }
                continue;
            }
            return self.eat(b'}');
        }
    }

    fn skip_list(&mut self) -> bool {
        let mut depth = 0usize;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'[' | b'(' | b'{' => depth += 1,
                b']' | b')' | b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.i += 1;
                        return true;
                    }
                }
                b'"' | b'\'' => {
                    if self.string().is_none() {
                        return false;
                    }
                    continue;
                }
                _ => {}
            }
            self.i += 1;
        }
        false
    }
}

/// Parse a whole buffer (a log file) into owned points.
pub fn parse_all(bytes: &[u8]) -> (Vec<crate::model::MetricPoint>, Progress) {
    let mut parser = LogParser::new();
    let mut points = Vec::new();
    parser.feed(bytes, &mut |p| points.push(p.to_owned_point()));
    parser.finish(&mut |p| points.push(p.to_owned_point()));
    (points, parser.progress())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pair scan lets a value go on its first byte ([`starts_number`]): every byte a
    /// number [`parse_number`] reads can start with passes.
    #[test]
    fn every_byte_a_number_starts_with_is_let_through() {
        for b in 0..=255u8 {
            for rest in [
                &b"5"[..],
                b".5",
                b"5e3",
                b"an",
                b"nf",
                b"nfinity",
                b"nan",
                b"inf",
                b"",
            ] {
                let text = [&[b][..], rest].concat();
                if parse_number(&text).is_some() {
                    assert!(starts_number(b), "{:?}", String::from_utf8_lossy(&text));
                }
            }
        }
    }

    fn pts(log: &str) -> Vec<(String, f64, Option<i64>, Option<f64>)> {
        parse_all(log.as_bytes())
            .0
            .into_iter()
            .map(|p| (p.name, p.value, p.step, p.epoch))
            .collect()
    }

    /// The setup's output (between the runner's markers) is not parsed, even when the
    /// section spans a resumed parser (the flag travels in the saved progress).
    #[test]
    fn the_setup_section_is_skipped_across_resumes() {
        let log = "── trainctl: setup 0123 ──\nGet:1 http://deb 42\nloss=9\n";
        let mut p = LogParser::new();
        let mut n = 0;
        p.feed_complete(log.as_bytes(), &mut |_| n += 1);
        assert_eq!(n, 0);
        assert!(p.progress().in_setup);
        let mut p = LogParser::resume(p.line(), p.progress());
        let rest = "loss=8\n── trainctl: setup ended: done in 3 s ──\nloss=0.5\n";
        let mut got = Vec::new();
        p.feed_complete(rest.as_bytes(), &mut |pt| got.push(pt.value));
        assert_eq!(got, vec![0.5]);
        assert!(!p.progress().in_setup);
        let skipped =
            "── trainctl: setup skipped: this machine ran setup 0123 already ──\nloss=1\n";
        assert_eq!(val(skipped, "loss"), Some(1.0));
    }

    /// Counters a line carries, tables with a header, units in names.
    #[test]
    fn counters_tables_and_units() {
        let log = "5: loss=0.5\nIter 7 loss=0.4\n-- Epoch 3 --\nacc=0.9\n\
                   time=47.1ms loss=0.2 mfu=12%\nthroughput: 5.5it/s\n\
                   | iter | loss | val_acc |\n|------|------|------|\n| 10 | 0.51 | 0.80 |\n| 20 | 0.42 | 0.85 |\n\
                   round  train_loss  valid_loss\n1  0.7  0.8\n2  0.6  0.7\nthe end 3 4 5\n1 2 3\n";
        let p = pts(log);
        let want: &[(&str, f64, Option<i64>, Option<f64>)] = &[
            ("loss", 0.5, Some(5), None),
            ("loss", 0.4, Some(7), None),
            ("acc", 0.9, Some(7), Some(3.0)),
            ("time_ms", 47.1, Some(7), Some(3.0)),
            ("mfu", 12.0, Some(7), Some(3.0)),
            ("throughput_it_per_s", 5.5, Some(7), Some(3.0)),
            ("loss", 0.51, Some(10), Some(3.0)),
            ("val_acc", 0.85, Some(20), Some(3.0)),
            ("train_loss", 0.7, Some(1), Some(3.0)),
            ("valid_loss", 0.7, Some(2), Some(3.0)),
        ];
        for w in want {
            assert!(
                p.iter().any(|x| (x.0.as_str(), x.1, x.2, x.3) == *w),
                "{w:?} not in {p:?}"
            );
        }
        // A row after the table ended is nothing; counters are never points.
        assert_eq!(p.len(), want.len() + 5, "{p:?}");
        assert!(
            !p.iter()
                .any(|x| ["iter", "round", "time"].contains(&x.0.as_str()))
        );
    }

    /// Settings and counts told in sentences are not metrics; the metrics beside them are.
    #[test]
    fn sentences_and_settings_make_no_points() {
        let log = "Overriding model.yaml nc=80 with nc=1\n\
                   optimizer: AdamW(lr=0.002, momentum=0.9) with parameter groups 57 weight(decay=0.0)\n\
                   optimizer: ignoring 'lr0=0.01' and determining best\n\
                   Speed: 0.0ms preprocess, 10.4ms inference, 0.2ms postprocess per image\n\
                   train: 4 images, 0 backgrounds, 0 corrupt: 100% \u{2501}\u{2501}\u{2501} 4/4\n\
                   val: Fast image access (ping: 0.0 ms, size: 3.0 KB)\n\
                   TPU available: False, using: 0 TPU cores\n\
                   engine: agnostic_nms=False, amp=False, batch=4, box=7.5, cache=False, cfg=None, epochs=2, lr0=0.01\n\
                   iter 3 loss=0.5 (lr=0.1) acc: 0.9 val loss: 0.4\n";
        let names: Vec<String> = pts(log).into_iter().map(|p| p.0).collect();
        assert_eq!(names, vec!["loss", "lr", "acc", "loss"], "{names:?}");
    }

    fn val(log: &str, name: &str) -> Option<f64> {
        pts(log)
            .into_iter()
            .rev()
            .find(|p| p.0 == name)
            .map(|p| p.1)
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"1.5e-3 "), Some((1.5e-3, 6)));
        assert_eq!(parse_number(b"-2"), Some((-2.0, 2)));
        assert!(parse_number(b"NaN").unwrap().0.is_nan());
        assert_eq!(parse_number(b"-Infinity"), Some((f64::NEG_INFINITY, 9)));
        assert_eq!(parse_number(b"info"), None);
        assert_eq!(parse_number(b"10.0.0.1"), None);
        assert_eq!(parse_number(b"."), None);
        assert_eq!(parse_number(b"-."), None);
        assert_eq!(parse_number(b"+inf,"), Some((f64::INFINITY, 4)));
        assert_eq!(parse_number(b"-5."), Some((-5.0, 3)));
        assert_eq!(parse_number(b".5e2x"), Some((50.0, 4)));
        assert_eq!(parse_number(b"7e"), Some((7.0, 1)));
        assert_eq!(
            parse_number(b"12345678901234567890"),
            Some((12345678901234567890.0, 20))
        );
    }

    #[test]
    fn fast_number_path_matches_std_parse() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let int = seed % 1_000_000;
            let frac_len = (seed >> 20) % 10;
            let frac = (seed >> 24) % 10u64.pow(frac_len as u32);
            let mut text = if frac_len == 0 {
                format!("{int}")
            } else {
                format!("{int}.{frac:0width$}", width = frac_len as usize)
            };
            // An exponent on a third of them (`3e-4`, `4.9E+05`, `1e-0300`), from the
            // fast path's range and past it.
            match (seed >> 40) % 6 {
                0 => text.push_str(&format!("e-{}", (seed >> 44) % 30)),
                1 => text.push_str(&format!("E+{}", (seed >> 44) % 30)),
                2 if seed & 1 == 0 => text.push_str(&format!("e-0{}", (seed >> 44) % 400)),
                _ => {}
            }
            let (v, used) = parse_number(text.as_bytes()).unwrap();
            assert_eq!(used, text.len());
            assert_eq!(
                v.to_bits(),
                text.parse::<f64>().unwrap().to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn json_lines_and_progress_records() {
        let p = pts("{\"step\": 10, \"loss\": 0.5, \"acc\": NaN}\n");
        assert_eq!(p[0], ("loss".into(), 0.5, Some(10), None));
        assert!(p[1].1.is_nan());
        let p = pts(
            "{\"type\": \"progress\", \"data\": {\"epoch\": 2, \"total_epochs\": 5, \"train_loss\": 0.25}}\n",
        );
        assert_eq!(p, vec![("train_loss".into(), 0.25, None, Some(2.0))]);
        let (_, prog) =
            parse_all(b"{\"type\": \"progress\", \"data\": {\"epoch\": 2, \"total_epochs\": 5}}\n");
        assert_eq!(prog.epochs_total, Some(5.0));
    }

    #[test]
    fn key_value_and_colon_pairs() {
        let p = pts("step=100 loss=0.25 lr=3e-4\n");
        assert_eq!(p[0], ("loss".into(), 0.25, Some(100), None));
        assert_eq!(p[1].1, 3e-4);
        // Step after the metric still applies to the whole line.
        let p = pts("loss: 1.5, step: 7\n");
        assert_eq!(p, vec![("loss".into(), 1.5, Some(7), None)]);
        // Times, dates and URLs are not metrics.
        assert!(pts("2024-01-01 12:00:00,123 INFO: started at http://x:8080/\n").is_empty());
        assert!(pts("eta=0:12:00 version=1.2.3\n").is_empty());
    }

    #[test]
    fn epoch_of_n() {
        let (_, prog) = parse_all(b"Epoch 3/10\n");
        assert_eq!((prog.epoch, prog.epochs_total), (Some(3.0), Some(10.0)));
    }

    #[test]
    fn keras_old_and_new() {
        let log = "Epoch 1/5\n1875/1875 [==============================] - 5s 2ms/step - loss: 0.2950 - accuracy: 0.9146 - val_loss: 0.1400\n";
        let p = pts(log);
        assert_eq!(p[0], ("loss".into(), 0.295, Some(1875), Some(1.0)));
        assert_eq!(val(log, "accuracy"), Some(0.9146));
        assert_eq!(val(log, "val_loss"), Some(0.14));
        let k3 = "Epoch 2/10\n\u{1b}[1m938/938\u{1b}[0m \u{1b}[32m━━━━━━━━━━━━━━━━━━━━\u{1b}[0m\u{1b}[37m\u{1b}[0m \u{1b}[1m3s\u{1b}[0m 3ms/step - accuracy: 0.8681 - loss: 0.4468\n";
        // Keras 3 colours its bar: the parser sees sanitized text in the engine; raw here.
        let clean = crate::sanitize::sanitize_line(k3.as_bytes());
        let p = pts(&clean.replace("Epoch 2/10", "Epoch 2/10\n"));
        assert!(
            p.contains(&("accuracy".into(), 0.8681, Some(938), Some(2.0))),
            "{p:?}"
        );
        assert!(
            p.contains(&("loss".into(), 0.4468, Some(938), Some(2.0))),
            "{p:?}"
        );
    }

    #[test]
    fn hugging_face_trainer_dicts() {
        let log = "{'loss': 2.3, 'grad_norm': 1.25, 'learning_rate': 4.9e-05, 'epoch': 0.05}\n{'eval_loss': 1.9, 'eval_runtime': 3.2, 'epoch': 1.0}\n";
        let p = pts(log);
        assert_eq!(p[0], ("loss".into(), 2.3, None, Some(0.05)));
        assert_eq!(p[2], ("learning_rate".into(), 4.9e-05, None, Some(0.05)));
        assert_eq!(p[3], ("eval_loss".into(), 1.9, None, Some(1.0)));
        assert_eq!(
            val(
                "{'train_runtime': 10.5, 'train_loss': nan}\n",
                "train_runtime"
            ),
            Some(10.5)
        );
        assert!(val("{'train_loss': nan}\n", "train_loss").unwrap().is_nan());
    }

    #[test]
    fn a_trainer_dict_after_a_tqdm_bar_on_the_same_line_and_quoted_values() {
        // tqdm's last update, then the Trainer's dict, with no newline between them.
        let log = " 40%|████      | 4/10 [00:01<00:01,  4.50it/s]\r 50%|█████     | 5/10 [00:01<00:01,  4.50it/s]{'loss': 1.2043, 'grad_norm': 0.51, 'learning_rate': 4e-05, 'epoch': 0.5}\n";
        let p = pts(log);
        assert!(
            p.contains(&("loss".into(), 1.2043, Some(5), Some(0.5))),
            "{p:?}"
        );
        assert!(
            p.contains(&("grad_norm".into(), 0.51, Some(5), Some(0.5))),
            "{p:?}"
        );
        // Recent transformers versions quote the numbers.
        let p = pts("{'loss': '1.2043', 'grad_norm': '0.51', 'epoch': '0.5', 'note': 'warmup'}\n");
        assert_eq!(
            p,
            vec![
                ("loss".into(), 1.2043, None, Some(0.5)),
                ("grad_norm".into(), 0.51, None, Some(0.5)),
            ]
        );
    }

    #[test]
    fn scikit_learn_iterations_with_spaces_around_the_equals_sign() {
        let log = "Iteration 6, loss = 0.51230000\nIteration 7, loss = 0.43910000\n";
        let p = pts(log);
        assert_eq!(
            p,
            vec![
                ("loss".into(), 0.5123, Some(6), None),
                ("loss".into(), 0.4391, Some(7), None),
            ]
        );
        // Still no name from a bar or a word far from its `=`.
        assert!(pts("[=====>     ] 50%\n").is_empty());
    }

    #[test]
    fn tqdm_carriage_return_updates() {
        let log = "  0%|          | 0/100 [00:00<?, ?it/s]\r 45%|████▌     | 45/100 [00:10<00:12,  4.45it/s, loss=0.32]\r100%|██████████| 100/100 [00:22<00:00,  4.50it/s, loss=0.12]\n";
        let p = pts(log);
        assert_eq!(
            p,
            vec![
                ("loss".into(), 0.32, Some(45), None),
                ("loss".into(), 0.12, Some(100), None)
            ]
        );
        let (_, prog) = parse_all(log.as_bytes());
        assert_eq!(prog.steps_total, Some(100));
        // All three \r updates share line 1.
        assert!(parse_all(log.as_bytes()).0.iter().all(|p| p.line == 1));
    }

    #[test]
    fn lightning_postfix() {
        let log = "Epoch 3: 100%|██████████| 938/938 [00:15<00:00, 60.12it/s, v_num=0, train_loss=0.123, val_acc=0.950]\n";
        let p = pts(log);
        assert_eq!(
            p,
            vec![
                ("train_loss".into(), 0.123, Some(938), Some(3.0)),
                ("val_acc".into(), 0.95, Some(938), Some(3.0))
            ]
        );
    }

    #[test]
    fn pytorch_mnist_example() {
        let log = "Train Epoch: 1 [640/60000 (1%)]\tLoss: 2.289124\nTrain Epoch: 2 [0/60000 (0%)]\tLoss: 0.155\n";
        let p = pts(log);
        assert_eq!(p[0], ("loss".into(), 2.289124, None, Some(1.0)));
        assert_eq!(p[1], ("loss".into(), 0.155, None, Some(2.0)));
    }

    #[test]
    fn nanogpt_lines() {
        let log = "step 500: train loss 2.1234, val loss 2.2345\niter 510: loss 2.4512, time 35.21ms, mfu 12.34%\n";
        let p = pts(log);
        assert_eq!(p[0], ("train loss".into(), 2.1234, Some(500), None));
        assert_eq!(p[1], ("val loss".into(), 2.2345, Some(500), None));
        assert_eq!(p[2], ("loss".into(), 2.4512, Some(510), None));
        assert_eq!(p[3], ("time_ms".into(), 35.21, Some(510), None));
        assert_eq!(p[4], ("mfu".into(), 12.34, Some(510), None));
    }

    #[test]
    fn yolo_tables() {
        let log = "      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances       Size\n\
                   \x20     1/100      2.61G      1.215      1.424      1.227         29        640: 100%|██████████| 8/8 [00:02<00:00,  3.21it/s]\n\
                   \x20                Class     Images  Instances      Box(P          R      mAP50  mAP50-95): 100%|██████████| 1/1 [00:00<00:00,  5.12it/s]\n\
                   \x20                  all          4         17      0.613      0.883      0.849      0.624\n";
        let p = pts(log);
        assert!(
            p.contains(&("box_loss".into(), 1.215, None, Some(1.0))),
            "{p:?}"
        );
        // Counts and sizes beside the losses are not metrics (GPU memory is sampled).
        assert!(
            !p.iter()
                .any(|x| ["gpu_mem", "size", "instances", "images"].contains(&x.0.as_str())),
            "{p:?}"
        );
        assert!(
            p.contains(&("map50-95".into(), 0.624, None, Some(1.0))),
            "{p:?}"
        );
        assert!(p.contains(&("p".into(), 0.613, None, Some(1.0))), "{p:?}");
        let (_, prog) = parse_all(log.as_bytes());
        assert_eq!(prog.epochs_total, Some(100.0));
    }

    #[test]
    fn split_feeds_equal_one_feed() {
        let log = b"step=1 loss=0.5\nstep=2 loss=0.4\r\nEpoch 2/3\nacc: 0.9\n";
        let whole = parse_all(log).0;
        for cut in 0..log.len() {
            let mut p = LogParser::new();
            let mut got = Vec::new();
            p.feed(&log[..cut], &mut |x| got.push(x.to_owned_point()));
            p.feed(&log[cut..], &mut |x| got.push(x.to_owned_point()));
            p.finish(&mut |x| got.push(x.to_owned_point()));
            assert_eq!(got, whole, "cut at {cut}");
        }
    }
}
