//! Plain data shared by every layer: ids, money, instance and job states. No IO here.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC). All stored times use this unit.
pub type TimestampMs = i64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> TimestampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lower-case hex of `bytes` (digests).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Replace the local file `path` whole with `bytes` (its folder made if needed): written
/// to a temporary name beside it (this process's own), then renamed over it, so a reader
/// sees the old content or the new, never half of one.
pub fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let wrote = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if wrote.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    wrote
}

/// The first 16 characters of a hex digest, for display (sums are kept whole).
pub fn short_hash(hex: &str) -> &str {
    &hex[..16.min(hex.len())]
}

/// A new id with a readable prefix, sortable by creation time: `j-<time>-<random>`.
pub fn new_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    h.update(&c.to_le_bytes());
    let rand = h.finalize().to_hex();
    // Base-36 seconds keep ids short and sortable for ~100 years.
    let secs = (nanos / 1_000_000_000) as u64;
    format!("{prefix}-{}{}", to_base36(secs), &rand[..6])
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    if out.is_empty() {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Money in integer micro-dollars. Sums never touch floating point.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(pub i64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// Parse a dollar amount written by a human ("0.5", "12", "1.234567"), exact to the micro-dollar.
    pub fn from_dollars_str(s: &str) -> Option<Money> {
        let s = s.trim().trim_start_matches('$');
        let (neg, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if frac.len() > 6 {
            return None;
        }
        let int_v: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut frac_v: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        for _ in frac.len()..6 {
            frac_v *= 10;
        }
        let v = int_v.checked_mul(1_000_000)?.checked_add(frac_v)?;
        Some(Money(if neg { -v } else { v }))
    }

    /// Dollars from a float given in config; rounded to the nearest micro-dollar once, at the edge.
    pub fn from_dollars_f64(d: f64) -> Money {
        Money((d * 1_000_000.0).round() as i64)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// Cost of running at `self` dollars per hour for `ms` milliseconds (floored to the micro-dollar).
    pub fn accrue_hourly(self, ms: i64) -> Money {
        if ms <= 0 {
            return Money::ZERO;
        }
        Money(((self.0 as i128 * ms as i128) / 3_600_000) as i64)
    }

    /// How many decimals amounts shown together use (a table column, a sentence): cents
    /// when each is a whole number of cents, else four, so `$0.01` and
    /// `$0.0150` never sit together. The one rule for every amount a person reads; JSON
    /// carries exact micro-dollars.
    pub fn decimals_for(values: &[Money]) -> usize {
        if values.iter().all(|m| m.0 % 10_000 == 0) {
            2
        } else {
            4
        }
    }

    /// `$12.34` with `decimals` (2 or 4) places, rounded half away from zero.
    pub fn with_decimals(self, decimals: usize) -> String {
        let d = decimals.min(6) as u32;
        let unit = 10u64.pow(6 - d);
        let r = (self.0.unsigned_abs() + unit / 2) / unit;
        let scale = 10u64.pow(d);
        let sign = if self.0 < 0 && r > 0 { "-" } else { "" };
        if d == 0 {
            return format!("{sign}${r}");
        }
        format!("{sign}${}.{:0w$}", r / scale, r % scale, w = d as usize)
    }

    /// Amounts of one column, all with the same decimals.
    pub fn column(values: &[Money]) -> Vec<String> {
        let d = Money::decimals_for(values);
        values.iter().map(|m| m.with_decimals(d)).collect()
    }

    pub fn saturating_add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        self.saturating_add(o)
    }
}

impl std::ops::AddAssign for Money {
    fn add_assign(&mut self, o: Money) {
        *self = self.saturating_add(o);
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Money {
    /// One amount alone: [`Money::decimals_for`] of itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_decimals(Money::decimals_for(&[*self])))
    }
}

/// Lifecycle of a machine as trainctl knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// The intent is recorded; the provider has not confirmed the machine yet.
    Pending,
    Running,
    Terminating,
    /// The provider confirmed it is gone; cost accrual stops here.
    Terminated,
    /// The provider no longer knows it although we never terminated it.
    Lost,
    /// Stopped at the provider (compute not billing; may be started again).
    Stopped,
    /// Taken back by the provider (a spot reclaim, a preemption); cost accrual stops.
    Preempted,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Terminating => "terminating",
            Self::Terminated => "terminated",
            Self::Lost => "lost",
            Self::Stopped => "stopped",
            Self::Preempted => "preempted",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "terminating" => Self::Terminating,
            "terminated" => Self::Terminated,
            "lost" => Self::Lost,
            "stopped" => Self::Stopped,
            "preempted" => Self::Preempted,
            _ => return None,
        })
    }
    /// True while the machine may still be billing.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Running | Self::Terminating | Self::Stopped
        )
    }
}

/// The job state machine. See [`JobState::can_transition_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Syncing,
    Starting,
    /// The attempt runs the project's `setup` before its command (once per machine).
    #[serde(rename = "setting_up")]
    SettingUp,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The machine disappeared under the job and it is not recovered (terminal).
    Lost,
    /// Stopped by an interruption notice, or its machine was lost: waiting to be resumed
    /// on another machine (not terminal).
    Interrupted,
    /// A replacement machine is being readied (launch, sync, checkpoint restore).
    Recovering,
}

impl JobState {
    pub const ALL: [JobState; 11] = [
        Self::Pending,
        Self::Syncing,
        Self::Starting,
        Self::SettingUp,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Lost,
        Self::Interrupted,
        Self::Recovering,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Syncing => "syncing",
            Self::Starting => "starting",
            Self::SettingUp => "setting_up",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
            Self::Interrupted => "interrupted",
            Self::Recovering => "recovering",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Lost
        )
    }

    /// The attempt was started on its machine and has not ended (setting up or running).
    pub fn is_started(self) -> bool {
        matches!(self, Self::Starting | Self::SettingUp | Self::Running)
    }

    /// Waiting for, or in, a recovery onto another machine.
    pub fn is_recovering(self) -> bool {
        matches!(self, Self::Interrupted | Self::Recovering)
    }

    /// The only legal moves. Forward through the pipeline; a started job may be
    /// interrupted, and an interrupted one recovers through a new attempt (Recovering ->
    /// Syncing); any live state may end in Failed, Cancelled or Lost; terminal states
    /// never move again.
    pub fn can_transition_to(self, to: JobState) -> bool {
        use JobState::*;
        if self.is_terminal() {
            return false;
        }
        match (self, to) {
            (Pending, Syncing) | (Syncing, Starting) | (Starting, Running) => true,
            (Starting, SettingUp) | (SettingUp, Running) => true,
            // Re-attaching may learn that a job finished while nobody watched.
            (Starting | SettingUp | Running, Succeeded) => true,
            (Syncing | Starting | SettingUp | Running, Interrupted) => true,
            (Interrupted, Recovering) | (Recovering, Syncing) => true,
            (_, Failed | Cancelled | Lost) => true,
            _ => false,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed metric value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub name: String,
    pub value: f64,
    pub step: Option<i64>,
    pub epoch: Option<f64>,
    /// 1-based line number in the job's log (newline-terminated lines).
    pub line: u64,
}

/// Progress as the log tells it: epoch i of N, step i of N.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: Option<f64>,
    pub epochs_total: Option<f64>,
    pub step: Option<i64>,
    pub steps_total: Option<i64>,
    /// The log is inside trainctl's setup section (between its `setup` and `setup ended`
    /// markers): its lines are the setup's, not the training's, and are not parsed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_setup: bool,
}

impl Progress {
    /// Fraction done in [0, 1], when the log says enough to know it.
    pub fn fraction(&self) -> Option<f64> {
        let step_frac = match (self.step, self.steps_total) {
            (Some(s), Some(t)) if t > 0 => Some((s as f64 / t as f64).clamp(0.0, 1.0)),
            _ => None,
        };
        match (self.epoch, self.epochs_total) {
            (Some(e), Some(t)) if t > 0.0 => {
                // "Epoch 3/10" means the third epoch is under way: 2 done plus the
                // step fraction of the third, when a per-epoch step counter is known.
                let f = if e.fract() != 0.0 {
                    e / t
                } else {
                    match step_frac {
                        Some(sf) => ((e - 1.0).max(0.0) + sf) / t,
                        None => (e - 1.0).max(0.0) / t,
                    }
                };
                Some(f.clamp(0.0, 1.0))
            }
            _ => step_frac,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_and_prints_exactly() {
        assert_eq!(Money::from_dollars_str("1.5"), Some(Money(1_500_000)));
        assert_eq!(Money::from_dollars_str("$0.000001"), Some(Money(1)));
        assert_eq!(Money::from_dollars_str("0.0000001"), None);
        assert_eq!(Money::from_dollars_str("abc"), None);
        assert_eq!(Money(1_500_000).to_string(), "$1.50");
        assert_eq!(Money(1_234_567).to_string(), "$1.2346");
        assert_eq!(Money(-10_000).to_string(), "-$0.01");
        assert_eq!(Money(15_000).to_string(), "$0.0150");
    }

    #[test]
    fn a_column_of_amounts_shares_one_precision() {
        assert_eq!(
            Money::column(&[Money(10_000), Money(15_000)]),
            vec!["$0.0100", "$0.0150"]
        );
        assert_eq!(
            Money::column(&[Money(10_000), Money(2_500_000)]),
            vec!["$0.01", "$2.50"]
        );
        assert_eq!(
            Money::column(&[Money(1_006_000), Money(2_500_000)]),
            vec!["$1.0060", "$2.5000"]
        );
        assert_eq!(
            Money::column(&[Money(1_234_567), Money(49)]),
            vec!["$1.2346", "$0.0000"]
        );
        assert_eq!(Money(1_005_000).with_decimals(2), "$1.01");
        assert_eq!(Money(-49).with_decimals(4), "$0.0000");
    }

    #[test]
    fn accrual_is_integer_and_floors() {
        // $3.60/h for one second is exactly $0.001.
        assert_eq!(Money(3_600_000).accrue_hourly(1000), Money(1000));
        // 10 000 one-second accruals equal one 10 000-second accrual (no drift).
        let per: Money = (0..10_000)
            .map(|_| Money(3_600_000).accrue_hourly(1000))
            .sum();
        assert_eq!(per, Money(3_600_000).accrue_hourly(10_000_000));
        assert_eq!(Money(1).accrue_hourly(1), Money::ZERO);
    }

    #[test]
    fn state_machine_moves_only_forward() {
        use JobState::*;
        assert!(Pending.can_transition_to(Syncing));
        assert!(Running.can_transition_to(Succeeded));
        assert!(!Pending.can_transition_to(Running));
        assert!(!Succeeded.can_transition_to(Failed));
        assert!(!Cancelled.can_transition_to(Running));
        assert!(Running.can_transition_to(Interrupted));
        assert!(Interrupted.can_transition_to(Recovering));
        assert!(Recovering.can_transition_to(Syncing));
        assert!(!Interrupted.can_transition_to(Running));
        assert!(!Pending.can_transition_to(Interrupted));
        assert!(!Lost.can_transition_to(Recovering));
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            if !s.is_terminal() {
                assert!(s.can_transition_to(Lost));
            }
        }
    }

    #[test]
    fn progress_fraction() {
        let p = Progress {
            epoch: Some(3.0),
            epochs_total: Some(10.0),
            step: Some(50),
            steps_total: Some(100),
            ..Default::default()
        };
        assert!((p.fraction().unwrap() - 0.25).abs() < 1e-9);
        let hf = Progress {
            epoch: Some(1.5),
            epochs_total: Some(3.0),
            ..Default::default()
        };
        assert!((hf.fraction().unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn ids_are_unique() {
        let a = new_id("j");
        let b = new_id("j");
        assert_ne!(a, b);
        assert!(a.starts_with("j-"));
    }
}
