//! Cost: per-second accrual of each instance's hourly price from launch to confirmed
//! termination; per job (over all its attempts), per UTC day, total; projection from the
//! ETA. Everything in integer micro-dollars.

use crate::model::{JobState, Money, Progress, TimestampMs};
use crate::store::{AttemptRecord, InstanceRecord, JobRecord, LogOffset};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

const DAY_MS: i64 = 86_400_000;

/// The billed interval of an instance: from the provider's confirmation (or the recorded
/// intent while a launch is in flight) to confirmed termination, or `now`.
pub fn billed_interval(i: &InstanceRecord, now: TimestampMs) -> Option<(TimestampMs, TimestampMs)> {
    // Billing starts at the provider's own launch time, never at our intent: a launch the
    // provider never answered bills nothing.
    let start = i.launched_ms?;
    // A provider's minimum (EC2's 60 s) is owed from the first moment.
    let end = i
        .terminated_ms
        .unwrap_or(now)
        .max(start + i.min_billed_ms.max(0));
    Some((start, end))
}

/// Cost accrued by instance `i` between `start` and `t`, counted in whole seconds from
/// `start`, at its price over time: each price segment's share in exact integer
/// arithmetic, floored once to the micro-dollar.
fn accrued(i: &InstanceRecord, start: TimestampMs, t: TimestampMs) -> Money {
    let secs = (t - start).max(0) / 1000;
    if i.price_segments.is_empty() {
        return i.hourly.accrue_hourly(secs * 1000);
    }
    let end = start + secs * 1000;
    let mut micro_ms: i128 = 0;
    for (k, &(from, price)) in i.price_segments.iter().enumerate() {
        // The first segment also covers any time before it.
        let seg_start = if k == 0 { i64::MIN } else { from };
        let seg_end = i
            .price_segments
            .get(k + 1)
            .map_or(i64::MAX, |&(next, _)| next);
        let (a, b) = (start.max(seg_start), end.min(seg_end));
        if b > a {
            micro_ms += price.0 as i128 * (b - a) as i128;
        }
    }
    Money((micro_ms / 3_600_000) as i64)
}

pub fn instance_cost(i: &InstanceRecord, now: TimestampMs) -> Money {
    billed_interval(i, now).map_or(Money::ZERO, |(s, e)| accrued(i, s, e))
}

/// When an attempt's GPUs were in use: from when it began to run to its end (or `now`).
pub fn attempt_run(a: &AttemptRecord, now: TimestampMs) -> Option<(TimestampMs, TimestampMs)> {
    let s = a.running_ms?;
    Some((s, a.ended_ms.unwrap_or(now).max(s)))
}

/// GPU-seconds of an attempt between `from` and `to` (inside its run).
fn gpu_seconds(a: &AttemptRecord, from: TimestampMs, to: TimestampMs) -> i64 {
    a.gpus as i64 * ((to - from).max(0) / 1000)
}

/// What an attempt billed per job (a cluster's GPU-hour price) cost from its run's start
/// to `t`: whole seconds, floored once to the micro-dollar.
fn billed_to(a: &AttemptRecord, start: TimestampMs, t: TimestampMs) -> Money {
    let micro = a.gpu_hour_micros as i128 * gpu_seconds(a, start, t) as i128 / 3600;
    Money(micro as i64)
}

/// An attempt's GPU time over its whole run, in GPU-seconds.
pub fn attempt_gpu_seconds(a: &AttemptRecord, now: TimestampMs) -> i64 {
    attempt_run(a, now).map_or(0, |(s, e)| gpu_seconds(a, s, e))
}

/// A job's cost: for each attempt, its instance's price over the attempt's time on it,
/// or (billed per job, on a cluster) its GPU-hours at the cluster's price.
pub fn job_cost(
    attempts: &[AttemptRecord],
    instances: &HashMap<&str, &InstanceRecord>,
    now: TimestampMs,
) -> Money {
    attempts
        .iter()
        .filter_map(|a| {
            if a.gpu_hour_micros > 0 {
                let (s, e) = attempt_run(a, now)?;
                return Some(billed_to(a, s, e));
            }
            let inst = instances.get(a.instance_id.as_str())?;
            let (s, e) = billed_interval(inst, now)?;
            let start = a.started_ms.max(s);
            let end = a.ended_ms.unwrap_or(now).min(e);
            Some(accrued(inst, start, end.max(start)))
        })
        .sum()
}

/// GPU-seconds as GPU-hours for a column: `12.50`, `0.03`, or `-` for none.
pub fn fmt_gpu_hours(gpu_seconds: i64) -> String {
    if gpu_seconds <= 0 {
        return "-".into();
    }
    // Hundredths, rounded half up in integers.
    let h = (gpu_seconds * 100 + 1800) / 3600;
    format!("{}.{:02}", h / 100, h % 100)
}

/// `YYYY-MM-DD` (UTC) of a timestamp.
pub fn utc_date(ms: TimestampMs) -> String {
    // Howard Hinnant's civil-from-days.
    let z = ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM UTC` of a timestamp.
pub fn utc_time(ms: TimestampMs) -> String {
    let in_day = ms.rem_euclid(DAY_MS) / 60_000;
    format!("{} {:02}:{:02} UTC", utc_date(ms), in_day / 60, in_day % 60)
}

/// Splits `[s, e)` at UTC midnights: `(day, from, to)` for each day it touches.
fn days_of(s: TimestampMs, e: TimestampMs) -> Vec<(String, TimestampMs, TimestampMs)> {
    let mut out = Vec::new();
    let mut t = s;
    while t < e {
        let seg_end = ((t.div_euclid(DAY_MS) + 1) * DAY_MS).min(e);
        out.push((utc_date(t), t, seg_end));
        t = seg_end;
    }
    out
}

/// GPU-seconds per UTC day over every attempt's run.
pub fn gpu_seconds_per_day(attempts: &[AttemptRecord], now: TimestampMs) -> BTreeMap<String, i64> {
    let mut days: BTreeMap<String, i64> = BTreeMap::new();
    for a in attempts {
        let Some((s, e)) = attempt_run(a, now) else {
            continue;
        };
        for (day, from, to) in days_of(s, e) {
            // Cumulative, so one attempt's days sum to its whole.
            *days.entry(day).or_default() += gpu_seconds(a, s, to) - gpu_seconds(a, s, from);
        }
    }
    days
}

/// Cost per UTC day: machines' time, and the GPU time of attempts billed per job. Days
/// of one instance (or attempt) sum exactly to its total (cumulative split).
pub fn per_day(
    instances: &[InstanceRecord],
    attempts: &[AttemptRecord],
    now: TimestampMs,
) -> BTreeMap<String, Money> {
    let mut days: BTreeMap<String, Money> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.gpu_hour_micros > 0) {
        let Some((s, e)) = attempt_run(a, now) else {
            continue;
        };
        for (day, from, to) in days_of(s, e) {
            *days.entry(day).or_default() += Money(billed_to(a, s, to).0 - billed_to(a, s, from).0);
        }
    }
    for i in instances {
        let Some((s, e)) = billed_interval(i, now) else {
            continue;
        };
        for (day, from, to) in days_of(s, e) {
            *days.entry(day).or_default() += Money(accrued(i, s, to).0 - accrued(i, s, from).0);
        }
    }
    days
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceCost {
    pub id: String,
    pub name: String,
    pub provider: String,
    pub state: String,
    pub hourly_micros: i64,
    pub cost_micros: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobCost {
    pub id: String,
    pub name: String,
    pub state: String,
    pub cost_micros: i64,
    /// GPU time over all its attempts (GPUs × the time each ran; a cluster's queue
    /// time not counted).
    pub gpu_seconds: i64,
    /// Milliseconds left, from the log's progress.
    pub eta_ms: Option<i64>,
    /// Cost so far plus the current instance's price over the ETA.
    pub projected_micros: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostReport {
    pub total_micros: i64,
    pub today_micros: i64,
    /// Sum of the hourly prices of instances that are billing now.
    pub burn_rate_micros_per_hour: i64,
    pub instances: Vec<InstanceCost>,
    pub jobs: Vec<JobCost>,
    pub days: BTreeMap<String, i64>,
    /// GPU-seconds per UTC day, over every job.
    pub gpu_seconds_days: BTreeMap<String, i64>,
}

/// Time left, from progress `p` reached `elapsed_ms` after the job started.
pub fn eta_ms(p: &Progress, elapsed_ms: i64) -> Option<i64> {
    let f = p.fraction()?;
    if f <= 0.0 || elapsed_ms <= 0 {
        return None;
    }
    if f >= 1.0 {
        return Some(0);
    }
    Some((elapsed_ms as f64 * (1.0 - f) / f) as i64)
}

/// ETA of a live job from its stored progress.
pub fn job_eta(job: &JobRecord, off: &LogOffset, now: TimestampMs) -> Option<i64> {
    if job.state.is_terminal() {
        return None;
    }
    let started = job.started_ms?;
    let at = off.progress_ms.unwrap_or(now);
    let left = eta_ms(&off.progress, at - started)?;
    // Time since the last progress report already counts against what is left.
    Some((left - (now - at)).max(0))
}

pub fn report(
    instances: &[InstanceRecord],
    jobs: &[JobRecord],
    attempts: &[AttemptRecord],
    offsets: &HashMap<String, LogOffset>,
    now: TimestampMs,
) -> CostReport {
    let by_id: HashMap<&str, &InstanceRecord> =
        instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let inst_costs: Vec<InstanceCost> = instances
        .iter()
        .map(|i| InstanceCost {
            id: i.id.clone(),
            name: i.name.clone(),
            provider: i.provider.clone(),
            state: i.state.as_str().into(),
            hourly_micros: i.hourly.0,
            cost_micros: instance_cost(i, now).0,
        })
        .collect();
    let mut job_costs = Vec::new();
    for j in jobs {
        let mine: Vec<AttemptRecord> = attempts
            .iter()
            .filter(|a| a.job_id == j.id)
            .cloned()
            .collect();
        let cost = job_cost(&mine, &by_id, now);
        let gpu_secs: i64 = mine.iter().map(|a| attempt_gpu_seconds(a, now)).sum();
        let eta = offsets.get(&j.id).and_then(|o| job_eta(j, o, now));
        // What its time costs now: its live attempt's own GPU price, else its machine's.
        let hourly = match mine.last().filter(|a| a.ended_ms.is_none()) {
            Some(a) if a.gpu_hour_micros > 0 => Money(a.gpu_hour_micros * a.gpus as i64),
            _ => j
                .instance_id
                .as_deref()
                .and_then(|id| by_id.get(id))
                .filter(|i| i.state.is_live())
                .map_or(Money::ZERO, |i| i.hourly),
        };
        let projected = match (j.state, eta) {
            (s, _) if s.is_terminal() => Some(cost),
            (JobState::Running, Some(e)) => Some(cost + hourly.accrue_hourly(e)),
            _ => None,
        };
        job_costs.push(JobCost {
            id: j.id.clone(),
            name: j.name.clone(),
            state: j.state.as_str().into(),
            cost_micros: cost.0,
            gpu_seconds: gpu_secs,
            eta_ms: eta,
            projected_micros: projected.map(|m| m.0),
        });
    }
    let days = per_day(instances, attempts, now);
    let today = days.get(&utc_date(now)).copied().unwrap_or_default();
    let per_job: Vec<&AttemptRecord> = attempts.iter().filter(|a| a.gpu_hour_micros > 0).collect();
    CostReport {
        total_micros: inst_costs.iter().map(|c| c.cost_micros).sum::<i64>()
            + per_job
                .iter()
                .filter_map(|a| attempt_run(a, now).map(|(s, e)| billed_to(a, s, e).0))
                .sum::<i64>(),
        today_micros: today.0,
        burn_rate_micros_per_hour: instances
            .iter()
            .filter(|i| i.state.is_live())
            .map(|i| i.hourly.0)
            .sum::<i64>()
            + per_job
                .iter()
                .filter(|a| a.running_ms.is_some() && a.ended_ms.is_none())
                .map(|a| a.gpu_hour_micros * a.gpus as i64)
                .sum::<i64>(),
        instances: inst_costs,
        jobs: job_costs,
        days: days.into_iter().map(|(k, v)| (k, v.0)).collect(),
        gpu_seconds_days: gpu_seconds_per_day(attempts, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceState;

    fn inst(launched: i64, terminated: Option<i64>, hourly: i64) -> InstanceRecord {
        InstanceRecord {
            name: "i".into(),
            state: if terminated.is_some() {
                InstanceState::Terminated
            } else {
                InstanceState::Running
            },
            created_ms: launched - 500,
            launched_ms: Some(launched),
            terminated_ms: terminated,
            ..InstanceRecord::intent("i", "local", "local", Money(hourly))
        }
    }

    #[test]
    fn a_provider_minimum_is_owed_from_the_first_moment() {
        // $3.60/h is $0.001/s; EC2 bills at least 60 s.
        let mut i = inst(1_000, Some(1_000 + 10_000), 3_600_000);
        assert_eq!(instance_cost(&i, 0), Money(10_000));
        i.min_billed_ms = 60_000;
        assert_eq!(instance_cost(&i, 0), Money(60_000));
        i.terminated_ms = Some(1_000 + 90_000);
        assert_eq!(instance_cost(&i, 0), Money(90_000));
        // Still running 5 s in: the minute is owed already.
        i.terminated_ms = None;
        assert_eq!(instance_cost(&i, 6_000), Money(60_000));
    }

    #[test]
    fn a_moving_price_sums_its_segments_exactly() {
        // $3.60/h for 100 s, then $7.20/h for 50 s, then $0.36/h: launched at t=1000.
        let mut i = inst(1_000, Some(1_000 + 200_000), 3_600_000);
        i.price_segments = vec![
            (1_000, Money(3_600_000)),
            (101_000, Money(7_200_000)),
            (151_000, Money(360_000)),
        ];
        // 100 s x $0.001/s + 50 s x $0.002/s + 50 s x $0.0001/s = $0.205
        assert_eq!(instance_cost(&i, 0), Money(205_000));
        // Days still sum to the total, and one segment equals the flat price.
        assert_eq!(
            per_day(std::slice::from_ref(&i), &[], 0)
                .values()
                .copied()
                .sum::<Money>(),
            Money(205_000)
        );
        let mut flat = inst(1_000, Some(1_000 + 200_000), 3_600_000);
        assert_eq!(instance_cost(&flat, 0), Money(200_000));
        flat.price_segments = vec![(1_000, Money(3_600_000))];
        assert_eq!(instance_cost(&flat, 0), Money(200_000));
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_700_000_000_000), "2023-11-14");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn per_second_accrual_stops_at_termination() {
        // $3.60/h for 10.9 s bills 10 whole seconds = $0.01.
        let i = inst(1_000_000, Some(1_010_900), 3_600_000);
        assert_eq!(instance_cost(&i, 9_999_999_999), Money(10_000));
    }

    #[test]
    fn days_split_at_midnight_and_sum_to_total() {
        let midnight = 20_000 * DAY_MS;
        let i = inst(midnight - 3_600_000, Some(midnight + 7_200_000), 1_000_001);
        let days = per_day(std::slice::from_ref(&i), &[], 0);
        assert_eq!(days.len(), 2);
        let sum: Money = days.values().copied().sum();
        assert_eq!(sum, instance_cost(&i, 0));
        assert_eq!(days[&utc_date(midnight)], Money(2_000_002));
    }

    /// A cluster bills each job's GPU time: only while it runs (not while queued), GPUs
    /// times seconds at the GPU-hour price, split at midnight exactly; the hold bills
    /// nothing.
    #[test]
    fn a_cluster_job_costs_its_gpu_hours_from_when_it_ran() {
        let midnight = 20_000 * DAY_MS;
        let hold = inst(midnight - 10 * 3_600_000, None, 0);
        let a = AttemptRecord {
            job_id: "j".into(),
            attempt: 1,
            instance_id: hold.id.clone(),
            started_ms: midnight - 3 * 3_600_000,
            // Queued two hours, then ran 1 h 30 on 4 GPUs at $2.50 per GPU-hour.
            running_ms: Some(midnight - 3_600_000),
            ended_ms: Some(midnight + 1_800_000),
            gpus: 4,
            gpu_hour_micros: 2_500_000,
            ..Default::default()
        };
        let by_id: HashMap<&str, &InstanceRecord> = [(hold.id.as_str(), &hold)].into();
        let now = midnight + 7_200_000;
        assert_eq!(
            job_cost(std::slice::from_ref(&a), &by_id, now),
            Money(15_000_000)
        );
        assert_eq!(attempt_gpu_seconds(&a, now), 6 * 3600);
        assert_eq!(fmt_gpu_hours(attempt_gpu_seconds(&a, now)), "6.00");
        let days = per_day(std::slice::from_ref(&hold), std::slice::from_ref(&a), now);
        assert_eq!(days[&utc_date(midnight - 1)], Money(10_000_000));
        assert_eq!(days[&utc_date(midnight)], Money(5_000_000));
        let gpu = gpu_seconds_per_day(std::slice::from_ref(&a), now);
        assert_eq!(gpu[&utc_date(midnight - 1)], 4 * 3600);
        assert_eq!(gpu[&utc_date(midnight)], 2 * 3600);
        let r = report(
            std::slice::from_ref(&hold),
            &[],
            std::slice::from_ref(&a),
            &HashMap::new(),
            now,
        );
        assert_eq!(r.total_micros, 15_000_000);
        assert_eq!(r.burn_rate_micros_per_hour, 0, "it ended");
        // Still queued: no GPU time, no cost; running: it burns 4 × $2.50 an hour.
        let queued = AttemptRecord {
            running_ms: None,
            ended_ms: None,
            ..a.clone()
        };
        assert_eq!(
            job_cost(std::slice::from_ref(&queued), &by_id, now),
            Money::ZERO
        );
        assert_eq!(attempt_gpu_seconds(&queued, now), 0);
        let running = AttemptRecord {
            ended_ms: None,
            ..a
        };
        let r = report(
            std::slice::from_ref(&hold),
            &[],
            std::slice::from_ref(&running),
            &HashMap::new(),
            now,
        );
        assert_eq!(r.burn_rate_micros_per_hour, 10_000_000);
    }

    #[test]
    fn gpu_hours_read_in_hundredths() {
        assert_eq!(fmt_gpu_hours(0), "-");
        assert_eq!(fmt_gpu_hours(18), "0.01");
        assert_eq!(fmt_gpu_hours(17), "0.00");
        assert_eq!(fmt_gpu_hours(45_000), "12.50");
    }

    #[test]
    fn eta_from_progress() {
        let p = Progress {
            epoch: Some(1.5),
            epochs_total: Some(3.0),
            ..Default::default()
        };
        assert_eq!(eta_ms(&p, 60_000), Some(60_000));
    }
}
