//! Usage per binding: what every call costs (compute units from the plan's weight table), how it
//! ended (its outcome class), and the plan's quota.
//!
//! Owns: the in-memory meters, one per binding, each behind its own small mutex (held by the
//! binding's route: no lock is shared across tenants on the hot path), aggregated per method and
//! minute; the quota counters (atomics, per binding or per instance); the background flush to
//! the store in bounded batches (so that writes grow with active bindings, not with calls), and
//! the seeding of quota counters from the store at start. Must not: query the store on the hot
//! path, or label a metric per binding (Prometheus gets per-plan sums, counted at flush).
//!
//! Durability: a graceful stop flushes everything (the server flushes once the gateway has
//! stopped); a crash loses at most what was metered since the last flush
//! (`usage.flush_interval_ms`). A failed flush keeps its rows (up to [`MAX_UNWRITTEN_ROWS`]) for
//! the next one.
//!
//! Charging: every call counts, by its outcome class; a call refused by a rule or a limit
//! (quota included) costs no compute units, every other call costs its method's weight. A batch
//! costs the sum of its calls. A binding's distinct methods per minute are capped at
//! [`MAX_METHODS_PER_MINUTE`] (names over [`MAX_METHOD_BYTES`] too): the rest count as
//! `(other)`, so a client cannot grow the store with made-up method names.

mod quota;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use quota::{QuotaCounter, QuotaRefusal, civil_from_days, days_from_civil, window_bounds};

use crate::config::{Config, PlanDecl, QuotaDecl, QuotaScope, UsageSettings};
use crate::store::{Store, StoreError, UsageCounts, UsageRow};

/// Distinct methods metered per binding and minute; more count as [`OTHER_METHOD`].
pub const MAX_METHODS_PER_MINUTE: usize = 64;
/// Longest method name metered as itself.
pub const MAX_METHOD_BYTES: usize = 64;
/// What methods past the caps are metered as.
pub const OTHER_METHOD: &str = "(other)";
/// Rows a failing store may leave waiting in memory; past this the oldest are dropped (and
/// logged).
pub const MAX_UNWRITTEN_ROWS: usize = 200_000;

/// Milliseconds since the Unix epoch, from the coarse realtime clock on Linux (vDSO, no
/// system call; lags by up to a tick).
#[cfg(target_os = "linux")]
pub fn now_ms() -> i64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    now.tv_sec.saturating_mul(1000).saturating_add(now.tv_nsec as i64 / 1_000_000)
}

/// Milliseconds since the Unix epoch.
#[cfg(not(target_os = "linux"))]
pub fn now_ms() -> i64 {
    crate::store::now_ms()
}

/// A plan's weights and quota.
#[derive(Debug)]
pub struct PlanUsage {
    /// The plan id (the label of the per-plan metrics).
    pub plan: Arc<str>,
    weights: HashMap<Box<str>, u32>,
    unknown: u32,
    /// The plan's quota.
    pub quota: Option<QuotaDecl>,
}

impl PlanUsage {
    /// The weights of `plan` (`None`: the defaults and `[usage]`'s only, no quota).
    pub fn new(settings: &UsageSettings, plan_id: &str, plan: Option<&PlanDecl>) -> PlanUsage {
        let mut weights: HashMap<Box<str>, u32> =
            crate::config::DEFAULT_WEIGHTS.iter().map(|(m, w)| (Box::from(*m), *w)).collect();
        for (method, weight) in &settings.weights {
            weights.insert(method.as_str().into(), *weight);
        }
        let mut unknown = settings.unknown_method_weight;
        let mut quota = None;
        if let Some(plan) = plan {
            for (method, weight) in &plan.usage.weights {
                weights.insert(method.as_str().into(), *weight);
            }
            unknown = plan.usage.unknown_method_weight.unwrap_or(unknown);
            quota = plan.usage.quota.clone();
        }
        PlanUsage { plan: plan_id.into(), weights, unknown, quota }
    }

    /// The compute units of one call of `method`.
    pub fn weight(&self, method: &str) -> u32 {
        self.weights.get(method).copied().unwrap_or(self.unknown)
    }
}

/// What the bindings of one instance share: the plan's weights and quota, and the instance's
/// quota counter when the quota is per instance.
#[derive(Debug)]
pub struct InstanceUsage {
    /// The plan's weights and quota.
    pub plan: Arc<PlanUsage>,
    instance_quota: Option<Arc<QuotaCounter>>,
}

impl InstanceUsage {
    /// The usage of an instance of `plan`, with `instance_quota` when its quota is per instance.
    pub fn for_plan(plan: Arc<PlanUsage>, instance_quota: Option<Arc<QuotaCounter>>) -> InstanceUsage {
        InstanceUsage { plan, instance_quota }
    }

    /// Usage with the default weights and no quota, for routes built outside a server (the
    /// `ovsb plugin` tools, tests).
    pub fn unmetered(plan: &str) -> Arc<InstanceUsage> {
        Arc::new(InstanceUsage {
            plan: Arc::new(PlanUsage::new(&UsageSettings::default(), plan, None)),
            instance_quota: None,
        })
    }
}

/// One entry of a meter: a method in a minute.
#[derive(Debug)]
struct Pending {
    minute: i64,
    method: Box<str>,
    plan: Arc<str>,
    counts: UsageCounts,
}

/// One binding's meter: what it used since the last flush, and its quota counter.
#[derive(Debug)]
pub struct BindingMeter {
    instance_id: Arc<str>,
    binding_id: Arc<str>,
    quota: QuotaCounter,
    pending: Mutex<Vec<Pending>>,
}

impl BindingMeter {
    /// A meter nobody flushes (routes built outside a server).
    pub fn detached(instance_id: &str, binding_id: &str) -> Arc<BindingMeter> {
        Arc::new(BindingMeter {
            instance_id: instance_id.into(),
            binding_id: binding_id.into(),
            quota: QuotaCounter::default(),
            pending: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds one call to the entry of (`minute`, `method`).
    fn add(&self, minute: i64, method: &str, plan: &Arc<str>, class: usize, units: u64, bytes: u64) {
        let mut pending = self.lock();
        let mut seen = 0;
        let mut at = None;
        let mut other = None;
        for (i, entry) in pending.iter().enumerate().rev() {
            if entry.minute != minute {
                break;
            }
            if &*entry.method == method {
                at = Some(i);
                break;
            }
            if &*entry.method == OTHER_METHOD {
                other = Some(i);
            }
            seen += 1;
        }
        let at = match at {
            Some(i) => i,
            None if method.len() > MAX_METHOD_BYTES || seen >= MAX_METHODS_PER_MINUTE => match other {
                Some(i) => i,
                None => {
                    pending.push(Pending {
                        minute,
                        method: OTHER_METHOD.into(),
                        plan: plan.clone(),
                        counts: UsageCounts::default(),
                    });
                    pending.len() - 1
                }
            },
            None => {
                pending.push(Pending {
                    minute,
                    method: method.into(),
                    plan: plan.clone(),
                    counts: UsageCounts::default(),
                });
                pending.len() - 1
            }
        };
        let counts = &mut pending[at].counts;
        counts.calls += 1;
        counts.compute_units += units;
        counts.bytes_out += bytes;
        if let Some(n) = counts.outcomes.get_mut(class) {
            *n += 1;
        }
    }

    fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *self.lock())
    }
}

/// The index of an outcome class in [`crate::call::OUTCOME_CLASSES`] (unknown: `internal`).
pub fn class_index(class: &str) -> usize {
    crate::call::OUTCOME_CLASSES.iter().position(|known| *known == class).unwrap_or(6)
}

/// The quota counter a call of `meter`'s binding counts against, with the quota.
fn quota_of<'a>(instance: &'a InstanceUsage, meter: &'a BindingMeter) -> Option<(&'a QuotaDecl, &'a QuotaCounter)> {
    let quota = instance.plan.quota.as_ref()?;
    match quota.per {
        QuotaScope::Binding => Some((quota, &meter.quota)),
        QuotaScope::Instance => Some((quota, instance.instance_quota.as_deref()?)),
    }
}

/// Whether a call of `meter`'s binding may start now: refused once its quota is used up. No
/// lock, no store query.
pub fn admit(instance: &InstanceUsage, meter: &BindingMeter) -> Result<(), QuotaRefusal> {
    let Some((quota, counter)) = quota_of(instance, meter) else { return Ok(()) };
    counter.check(quota, now_ms()).inspect_err(|_| {
        crate::telemetry::metrics()
            .usage_quota_refusals
            .get_or_create(&crate::telemetry::PlanLabels { plan: instance.plan.plan.clone() })
            .inc();
    })
}

/// Meters one finished call of `meter`'s binding: its method, outcome class (see
/// [`crate::call::Blame::class`]) and answer bytes. A refusal (`refused`, `limit`) costs no
/// compute units.
pub fn meter(instance: &InstanceUsage, meter: &BindingMeter, method: &str, class: &str, bytes: usize) {
    let class = class_index(class);
    let refused = matches!(class, 2 | 3);
    let units = if refused { 0 } else { u64::from(instance.plan.weight(method)) };
    let now = now_ms();
    meter.add(now.div_euclid(60_000), method, &instance.plan.plan, class, units, bytes as u64);
    if let Some((quota, counter)) = quota_of(instance, meter) {
        counter.add(quota, units, now);
    }
}

/// A binding by (instance id, binding id).
type BindingKey = (Arc<str>, Arc<str>);

/// One row's key while a flush merges: (instance, binding, minute, method).
type RowKey = (Arc<str>, Arc<str>, i64, Box<str>);

/// Every meter of the process, the plans' weights, and the flush.
pub struct Usage {
    replica_id: String,
    settings: UsageSettings,
    plans: HashMap<String, Arc<PlanUsage>>,
    meters: Mutex<HashMap<BindingKey, Arc<BindingMeter>>>,
    instance_quotas: Mutex<HashMap<Arc<str>, Arc<QuotaCounter>>>,
    /// Rows a failed flush left, written first by the next; the lock serializes flushes.
    unwritten: tokio::sync::Mutex<Vec<UsageRow>>,
}

impl Usage {
    /// The meters of replica `replica_id`, with the weights and quotas of `config`'s plans.
    pub fn new(config: &Config, replica_id: &str) -> Arc<Usage> {
        let plans = config
            .services
            .iter()
            .flat_map(|s| &s.plans)
            .map(|p| (p.id.clone(), Arc::new(PlanUsage::new(&config.usage, &p.id, Some(p)))))
            .collect();
        Arc::new(Usage {
            replica_id: replica_id.to_string(),
            settings: config.usage.clone(),
            plans,
            meters: Mutex::default(),
            instance_quotas: Mutex::default(),
            unwritten: tokio::sync::Mutex::default(),
        })
    }

    /// How often the meters are flushed.
    pub fn flush_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.settings.flush_interval_ms)
    }

    /// What the bindings of instance `instance_id` of plan `plan_id` share (its quota counter
    /// is kept across route rebuilds).
    pub fn instance(&self, instance_id: &str, plan_id: &str) -> Arc<InstanceUsage> {
        let plan =
            self.plans.get(plan_id).cloned().unwrap_or_else(|| Arc::new(PlanUsage::new(&self.settings, plan_id, None)));
        let instance_quota = plan.quota.as_ref().filter(|q| q.per == QuotaScope::Instance).map(|_| {
            let mut all = self.instance_quotas.lock().unwrap_or_else(|p| p.into_inner());
            all.entry(instance_id.into()).or_default().clone()
        });
        Arc::new(InstanceUsage { plan, instance_quota })
    }

    /// The meter of binding `binding_id` of instance `instance_id`: the same one for as long as
    /// a route holds it or it has something to flush.
    pub fn binding(&self, instance_id: &str, binding_id: &str) -> Arc<BindingMeter> {
        let mut meters = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        meters
            .entry((instance_id.into(), binding_id.into()))
            .or_insert_with(|| BindingMeter::detached(instance_id, binding_id))
            .clone()
    }

    /// Adds what the store holds for the current window of each quota to its counter, so a
    /// restart does not hand a binding a fresh quota. Windows that do not start on a minute
    /// (short windows of seconds) start from what this process counts.
    pub async fn seed(&self, store: &Store) -> Result<(), StoreError> {
        let now = now_ms();
        let mut starts: Vec<i64> = Vec::new();
        for plan in self.plans.values() {
            if let Some(quota) = &plan.quota {
                let (start, _) = window_bounds(quota.window, now);
                if start % 60_000 == 0 && !starts.contains(&start) {
                    starts.push(start);
                }
            }
        }
        for start in starts {
            let used = store.compute_units_since(start / 60_000).await?;
            let meters: Vec<Arc<BindingMeter>> =
                self.meters.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
            let quotas = self.instance_quotas.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let by_binding: HashMap<(&str, &str), &Arc<BindingMeter>> =
                meters.iter().map(|m| ((&*m.instance_id, &*m.binding_id), m)).collect();
            let mut per_instance: HashMap<&str, u64> = HashMap::new();
            for (instance, binding, units) in &used {
                *per_instance.entry(instance.as_str()).or_default() += units;
                if let Some(meter) = by_binding.get(&(instance.as_str(), binding.as_str())) {
                    meter.quota.seed(start, *units);
                }
            }
            for (instance, counter) in &quotas {
                if let Some(units) = per_instance.get(&**instance) {
                    counter.seed(start, *units);
                }
            }
        }
        Ok(())
    }

    /// Writes everything metered so far to the store, in batches of `usage.flush_batch_rows`;
    /// gives the number of rows written. On a store error the rows not written are kept for the
    /// next flush.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let mut unwritten = self.unwritten.lock().await;
        let meters: Vec<Arc<BindingMeter>> =
            self.meters.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut merged: HashMap<RowKey, UsageCounts> = HashMap::new();
        let metrics = crate::telemetry::metrics();
        for meter in &meters {
            for entry in meter.take() {
                for (class, n) in entry.counts.outcomes.iter().enumerate().filter(|(_, n)| **n > 0) {
                    let labels = crate::telemetry::PlanOutcomeLabels {
                        plan: entry.plan.clone(),
                        outcome: crate::call::OUTCOME_CLASSES[class],
                    };
                    metrics.usage_calls.get_or_create(&labels).inc_by(*n);
                }
                metrics
                    .usage_compute_units
                    .get_or_create(&crate::telemetry::PlanLabels { plan: entry.plan.clone() })
                    .inc_by(entry.counts.compute_units);
                let key = (meter.instance_id.clone(), meter.binding_id.clone(), entry.minute, entry.method);
                merged.entry(key).or_default().add(&entry.counts);
            }
        }
        drop(meters);
        self.forget_idle();
        let mut rows = std::mem::take(&mut *unwritten);
        // Earlier rows of the same key merge into one, since a statement must not repeat a key.
        let mut index: HashMap<(String, String, i64, String), usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            index.insert((row.instance_id.clone(), row.binding_id.clone(), row.minute, row.method.clone()), i);
        }
        for ((instance, binding, minute, method), counts) in merged {
            let key = (instance.to_string(), binding.to_string(), minute, method.to_string());
            match index.get(&key) {
                Some(&i) => rows[i].counts.add(&counts),
                None => {
                    index.insert(key.clone(), rows.len());
                    rows.push(UsageRow { instance_id: key.0, binding_id: key.1, minute, method: key.3, counts });
                }
            }
        }
        let total = rows.len();
        let batch = self.settings.flush_batch_rows.max(1);
        let mut written = 0;
        while written < total {
            let end = (written + batch).min(total);
            if let Err(err) = store.add_usage(&self.replica_id, &rows[written..end]).await {
                metrics.usage_flush_failures.inc();
                let mut kept = rows.split_off(written);
                if kept.len() > MAX_UNWRITTEN_ROWS {
                    let dropped = kept.len() - MAX_UNWRITTEN_ROWS;
                    tracing::error!("usage: the store has failed for long; {dropped} metered rows are dropped");
                    kept.drain(..dropped);
                }
                *unwritten = kept;
                return Err(err);
            }
            written = end;
        }
        Ok(total)
    }

    /// What this replica metered for instance `instance_id` and has not flushed yet, one row
    /// per (binding, minute, method), for its dashboard (which adds them to what the store
    /// holds). Locks the meters' map once and each of the instance's meters briefly; copies
    /// nothing of other instances.
    pub fn pending_of(&self, instance_id: &str) -> Vec<UsageRow> {
        let meters: Vec<Arc<BindingMeter>> = self
            .meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((instance, _), _)| &**instance == instance_id)
            .map(|(_, meter)| meter.clone())
            .collect();
        let mut rows = Vec::new();
        for meter in meters {
            for entry in meter.lock().iter() {
                rows.push(UsageRow {
                    instance_id: instance_id.to_string(),
                    binding_id: meter.binding_id.to_string(),
                    minute: entry.minute,
                    method: entry.method.to_string(),
                    counts: entry.counts,
                });
            }
        }
        rows
    }

    /// Drops meters and counters no route holds any more once they have nothing to flush.
    fn forget_idle(&self) {
        self.meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, meter| Arc::strong_count(meter) > 1 || !meter.lock().is_empty());
        self.instance_quotas.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, c| Arc::strong_count(c) > 1);
    }

    /// Flushes every `usage.flush_interval_ms` until `shutdown` (the last flush is the
    /// server's, once the gateway has stopped).
    pub async fn flush_periodically(self: Arc<Self>, store: Store, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.flush_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(err) = self.flush(&store).await {
                tracing::warn!("usage: cannot write to the store (kept for the next flush): {err}");
            }
        }
    }

    /// The number of meters held (bindings with a route or with something to flush).
    pub fn meters(&self) -> usize {
        self.meters.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> InstanceUsage {
        InstanceUsage { plan: Arc::new(PlanUsage::new(&UsageSettings::default(), "p", None)), instance_quota: None }
    }

    #[test]
    fn default_weights_follow_the_public_tables_and_refusals_cost_nothing() {
        let instance = instance();
        assert_eq!(instance.plan.weight("eth_blockNumber"), 10);
        assert_eq!(instance.plan.weight("eth_call"), 26);
        assert_eq!(instance.plan.weight("eth_getLogs"), 60);
        assert_eq!(instance.plan.weight("eth_sendRawTransaction"), 40);
        assert_eq!(instance.plan.weight("made_up"), 20);
        let m = BindingMeter::detached("i", "b");
        meter(&instance, &m, "eth_call", "ok", 10);
        meter(&instance, &m, "eth_call", "error", 5);
        meter(&instance, &m, "eth_call", "refused", 5);
        meter(&instance, &m, "eth_call", "limit", 5);
        let entries = m.take();
        assert_eq!(entries.len(), 1);
        let c = entries[0].counts;
        assert_eq!((c.calls, c.compute_units, c.bytes_out), (4, 52, 25));
        assert_eq!(c.outcomes, [1, 1, 1, 1, 0, 0, 0]);
    }

    /// A restart does not hand out a fresh quota: the counters start from what the store holds
    /// for the current window (a day here), and a flush writes what was metered.
    #[tokio::test]
    async fn quota_counters_are_seeded_from_the_store_and_flushes_write_the_meters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("u.db").display())).await.unwrap();
        let mut config = Config::quick_start();
        let plan = &mut config.services[0].plans[0];
        plan.usage.quota =
            Some(QuotaDecl { compute_units: 100, window: crate::config::QuotaWindow::Day, per: QuotaScope::Binding });
        let plan_id = plan.id.clone();
        let minute = now_ms() / 60_000;
        let counts = UsageCounts { calls: 4, compute_units: 100, bytes_out: 0, outcomes: [4, 0, 0, 0, 0, 0, 0] };
        let row = |binding: &str| UsageRow {
            instance_id: "i".into(),
            binding_id: binding.into(),
            minute,
            method: "eth_call".into(),
            counts,
        };
        store.add_usage("another-replica", &[row("used")]).await.unwrap();
        let usage = Usage::new(&config, "me");
        let instance = usage.instance("i", &plan_id);
        let (used, fresh) = (usage.binding("i", "used"), usage.binding("i", "fresh"));
        usage.seed(&store).await.unwrap();
        assert_eq!(admit(&instance, &used).unwrap_err().limit, 100);
        assert!(admit(&instance, &fresh).is_ok());
        meter(&instance, &fresh, "eth_call", "ok", 10);
        assert_eq!(usage.flush(&store).await.unwrap(), 1);
        let query = crate::store::UsageQuery {
            instance_id: Some("i".into()),
            binding_id: None,
            from_minute: 0,
            to_minute: minute + 10,
            by: crate::store::UsageGrouping::Binding,
            max_rows: 10,
        };
        let report = store.usage_report(&query).await.unwrap();
        let sums: Vec<(&str, u64)> = report.iter().map(|r| (r.binding_id.as_str(), r.counts.compute_units)).collect();
        assert_eq!(sums, vec![("fresh", 26), ("used", 100)]);
        // Nothing left to write: the next flush writes nothing.
        assert_eq!(usage.flush(&store).await.unwrap(), 0);
    }

    /// What a dashboard reads: one instance's buckets and its top bindings and methods from the
    /// store (summed over replicas, other instances left out), and what this replica has not
    /// flushed yet.
    #[tokio::test]
    async fn an_instance_s_usage_is_read_per_bucket_and_ranked_and_its_unflushed_rows_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("u.db").display())).await.unwrap();
        let row = |instance: &str, binding: &str, minute: i64, method: &str, calls: u64| UsageRow {
            instance_id: instance.into(),
            binding_id: binding.into(),
            minute,
            method: method.into(),
            counts: UsageCounts { calls, compute_units: 10 * calls, bytes_out: 0, outcomes: [calls, 0, 0, 0, 0, 0, 0] },
        };
        let hour = 29_000_000 / 60 * 60;
        store
            .add_usage("r1", &[row("i", "a", hour, "eth_call", 2), row("i", "b", hour + 59, "eth_blockNumber", 5)])
            .await
            .unwrap();
        store
            .add_usage("r2", &[row("i", "a", hour + 61, "eth_call", 1), row("other", "a", hour, "eth_call", 100)])
            .await
            .unwrap();
        let series = store.instance_usage_series("i", hour, hour + 120, 60, 10).await.unwrap();
        let calls: Vec<(i64, u64)> = series.iter().map(|(m, c)| (*m, c.calls)).collect();
        assert_eq!(calls, vec![(hour, 7), (hour + 60, 1)]);
        let per_minute = store.instance_usage_series("i", hour + 1, hour + 120, 1, 10).await.unwrap();
        assert_eq!(per_minute.iter().map(|(m, _)| *m).collect::<Vec<_>>(), vec![hour + 59, hour + 61]);
        let bindings = store.instance_usage_top("i", hour, hour + 120, crate::store::UsageTop::Binding, 10).await;
        let bindings: Vec<(String, u64, u64)> =
            bindings.unwrap().into_iter().map(|(b, c)| (b, c.calls, c.compute_units)).collect();
        assert_eq!(bindings, vec![("b".into(), 5, 50), ("a".into(), 3, 30)]);
        let top = store.instance_usage_top("i", hour, hour + 120, crate::store::UsageTop::Method, 1).await.unwrap();
        assert_eq!(top.len(), 1, "bounded");
        assert_eq!((top[0].0.as_str(), top[0].1.calls), ("eth_blockNumber", 5));

        let usage = Usage::new(&Config::quick_start(), "me");
        let plan = instance();
        meter(&plan, &usage.binding("i", "a"), "eth_call", "refused", 3);
        meter(&plan, &usage.binding("other", "x"), "eth_call", "ok", 3);
        let pending = usage.pending_of("i");
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].binding_id.as_str(), pending[0].counts.outcomes[2]), ("a", 1));
        assert_eq!(usage.pending_of("i").len(), 1, "seeing them does not take them");
    }

    #[test]
    fn made_up_method_names_are_capped_per_minute() {
        let instance = instance();
        let m = BindingMeter::detached("i", "b");
        for i in 0..200 {
            meter(&instance, &m, &format!("m{i}"), "ok", 0);
        }
        meter(&instance, &m, &"x".repeat(100), "ok", 0);
        let entries = m.take();
        // Entries can straddle a minute boundary: at most two minutes' worth.
        assert!(entries.len() <= 2 * (MAX_METHODS_PER_MINUTE + 1), "{}", entries.len());
        let other: u64 = entries.iter().filter(|e| &*e.method == OTHER_METHOD).map(|e| e.counts.calls).sum();
        let all: u64 = entries.iter().map(|e| e.counts.calls).sum();
        assert_eq!(all, 201);
        assert!(other >= 201 - 2 * MAX_METHODS_PER_MINUTE as u64);
    }
}
