//! Budgets: per job and per UTC day, checked on every poll of a running job.

use super::*;

impl Engine {
    pub(super) fn check_budget(&self, job: &JobRecord) -> Result<Option<String>> {
        let budget = &self.inner.cfg.budget;
        let (per_job, per_day) = (budget.per_job(), budget.per_day());
        if per_job.is_none() && per_day.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let store = self.store();
        let instances = store.instances(true)?;
        if let Some(limit) = per_job {
            let by_id: HashMap<&str, &InstanceRecord> =
                instances.iter().map(|i| (i.id.as_str(), i)).collect();
            let spent = cost::job_cost(&store.attempts(&job.id)?, &by_id, now);
            if spent > limit {
                return Ok(Some(format!(
                    "budget: job cost {spent} passed the per-job budget {limit}"
                )));
            }
        }
        if let Some(limit) = per_day {
            let today = cost::per_day(&instances, &store.all_attempts()?, now)
                .get(&cost::utc_date(now))
                .copied()
                .unwrap_or(Money::ZERO);
            if today > limit {
                return Ok(Some(format!(
                    "budget: today's spend {today} passed the per-day budget {limit}"
                )));
            }
        }
        Ok(None)
    }
}
