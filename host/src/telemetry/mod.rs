//! Metrics: every metric ovsb exports, their names and labels in one place, and the
//! Prometheus (OpenMetrics) text the admin listener serves at `/metrics`.
//!
//! Owns: the process-wide registry. Recording is cheap enough for the data path (an atomic add
//! after a read-locked map lookup; label values are shared `Arc<str>`s, no allocation per call).
//! Must not: let a client choose unbounded label values, or let one tenant's choices change
//! another's: each instance counts method names as given only for its own first
//! [`MAX_METHOD_LABELS`] distinct well-formed names, then as `other`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

mod logs;
mod traffic;

pub use logs::{LogThrottle, OneLine, OneLineStderr, escape_line};
pub use traffic::{TRAFFIC_SECONDS, Traffic};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Distinct method names given their own label value, per instance.
pub const MAX_METHOD_LABELS: usize = 128;

/// A label value that comes from outside (an instance id a platform chose): written escaped as
/// the exposition format requires (`\\`, `\"`, `\n`), so no value can break a scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Escaped(pub Arc<str>);

impl From<&str> for Escaped {
    fn from(value: &str) -> Self {
        Escaped(value.into())
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        let mut rest: &str = &self.0;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..at])?;
            encoder.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[at + 1..];
        }
        encoder.write_str(rest)
    }
}

/// Labels of a JSON-RPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The service instance.
    pub instance: Escaped,
    /// The method (or `other`).
    pub method: Arc<str>,
    /// `ok`, `error` (an answer with a JSON-RPC error), `plugin_failure`, `upstream_error`,
    /// `limit` (refused by a limit, such as the instance's share of plugin calls).
    pub outcome: &'static str,
}

/// Labels keyed by instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The service instance.
    pub instance: Escaped,
}

/// Labels of a plugin's decisions in one instance's chain.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The service instance.
    pub instance: Escaped,
    /// The plugin's configured name.
    pub plugin: Arc<str>,
    /// `answered` (a result of its own, the node not asked), `refused` (an error of its own),
    /// `forwarded` (passed on).
    pub decision: &'static str,
}

/// Labels keyed by plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's configured name.
    pub plugin: Arc<str>,
    /// `on_call` or `on_result`.
    pub hook: &'static str,
}

/// Labels of an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The outcome.
    pub outcome: &'static str,
}

/// Labels of where something came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The source.
    pub source: &'static str,
}

/// Labels of a loaded plugin version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginVersionLabels {
    /// The plugin's configured name.
    pub plugin: String,
    /// SHA-256 of the component served now, hex.
    pub sha256: String,
}

/// Labels of a refused gateway connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The limit: `connections`, `connections_per_source`, `connections_per_key`;
    /// `instance_plugin_calls`, `runtime_copies`.
    pub reason: &'static str,
}

/// Labels of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `connect`, `failed`, `timeout`, `unavailable`.
    pub kind: &'static str,
}

/// Labels of a broker request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    /// The route template, e.g. `/v2/service_instances/{instance_id}`.
    pub endpoint: String,
    /// The HTTP method.
    pub method: String,
    /// The HTTP status.
    pub status: u16,
}

/// Labels of a per-plan figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    /// The plan id.
    pub plan: Arc<str>,
}

/// Labels of a per-plan count by outcome class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanOutcomeLabels {
    /// The plan id.
    pub plan: Arc<str>,
    /// The outcome class (`call::OUTCOME_CLASSES`).
    pub outcome: &'static str,
}

/// Labels of the corrupt-row counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// The store's table (`slashing_protection`).
    pub table: &'static str,
}

/// Labels of the instance-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: String,
}

/// Every metric.
pub struct Metrics {
    registry: Registry,
    /// `ovsb_rpc_calls_total{instance, method, outcome}`.
    pub rpc_calls: Family<CallLabels, Counter>,
    /// `ovsb_rpc_call_duration_seconds{instance}`.
    pub rpc_duration: Family<InstanceLabels, Histogram>,
    /// `ovsb_plugin_call_duration_seconds{plugin, hook}`.
    pub plugin_duration: Family<PluginLabels, Histogram>,
    /// `ovsb_upstream_errors_total{kind}`.
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    /// `ovsb_broker_requests_total{endpoint, method, status}`.
    pub broker_requests: Family<BrokerLabels, Counter>,
    /// `ovsb_instances{state}`, set at scrape time from the store.
    pub instances: Family<StateLabels, Gauge>,
    /// `ovsb_plugin_decisions{instance, plugin, decision}`: what each plugin's `on-call` decided,
    /// counted by the host, set at scrape time.
    pub plugin_decisions: Family<DecisionLabels, Gauge>,
    /// `ovsb_cache_hits{instance}` / `ovsb_cache_misses{instance}`: the decisions of the plugin
    /// named `cache` (answered, forwarded), counted by the host and set at scrape time.
    pub cache_hits: Family<InstanceLabels, Gauge>,
    /// See `cache_hits`.
    pub cache_misses: Family<InstanceLabels, Gauge>,
    /// `ovsb_gateway_connections_refused_total{reason}`.
    pub connections_refused: Family<RefusalLabels, Counter>,
    /// `ovsb_gateway_subscriptions_refused_total{reason}`: `eth_subscribe` refused a slot
    /// (`subscriptions`, `subscriptions_per_instance`, `subscriptions_per_key`).
    pub subscriptions_refused: Family<RefusalLabels, Counter>,
    /// `ovsb_gateway_subscriptions_ended_total{reason}`: subscriptions the gateway ended with a
    /// close code (`lagged`: 4008, `node_gone`: 1012).
    pub subscriptions_ended: Family<RefusalLabels, Counter>,
    /// `ovsb_gateway_node_subscriptions{instance}`: subscriptions held at the instance's nodes
    /// (identical client subscriptions share one).
    pub node_subscriptions: Family<InstanceLabels, Gauge>,
    /// `ovsb_call_refusals_total{reason}`: calls refused or cut by a gateway budget.
    pub call_refusals: Family<RefusalLabels, Counter>,
    /// `ovsb_broker_auth_refusals_total{outcome}`: `failed` or `throttled`.
    pub broker_auth: Family<OutcomeLabels, Counter>,
    /// `ovsb_log_lines_suppressed_total`: repeated warnings not written.
    pub log_lines_suppressed: Counter,
    /// `ovsb_plugin_copies`: plugin copies alive (busy or idle).
    pub plugin_copies: Gauge,
    /// `ovsb_heap_live_bytes` (only with the `heap-stats` feature): see [`HEAP_LIVE_BYTES`].
    heap_live: Gauge,
    /// `ovsb_plugin_copy_evictions_total`: idle copies dropped (idle budget or idle time).
    pub plugin_copy_evictions: Counter,
    /// `ovsb_plugin_refusals_total{reason}`: calls refused for capacity (`instance_plugin_calls`,
    /// `runtime_copies`).
    pub plugin_refusals: Family<RefusalLabels, Counter>,
    /// `ovsb_plugin_loaded{plugin, sha256}`: 1 for the version of each plugin served now (set
    /// at scrape time from the registry; a reload changes it).
    pub plugin_loaded: Family<PluginVersionLabels, Gauge>,
    /// `ovsb_plugin_instances{plugin, sha256}`: instances whose routes run that version (set at
    /// scrape time; after a reload, those that kept the previous version show under it).
    pub plugin_instances: Family<PluginVersionLabels, Gauge>,
    /// `ovsb_plugin_loads{source}`: plugin files loaded since start, by where the compiled code
    /// came from (`compiled`, `disk_cache`, `memory_cache`; set at scrape time).
    pub plugin_loads: Family<SourceLabels, Gauge>,
    /// `ovsb_plugin_reloads_total{outcome}`: plugin reloads (SIGHUP, `POST /reload`) by outcome
    /// (`changed`, `unchanged`, `failed`), one count per plugin.
    pub plugin_reloads: Family<OutcomeLabels, Counter>,
    /// `ovsb_store_corrupt_rows_total{table}`: rows read from the store that did not decode
    /// (each failed what read it, loudly; none is skipped).
    pub store_corrupt_rows: Family<TableLabels, Counter>,
    /// `ovsb_store_commits_total`: store transactions committed for state changes (a group of
    /// changes that waited together commits once: see `store::group`).
    pub store_commits: Counter,
    /// `ovsb_store_changes_total`: state changes committed (instance and binding transitions,
    /// ends of operations); over `store_commits`, how many share a commit.
    pub store_changes: Counter,
    /// `ovsb_usage_calls_total{plan, outcome}`: metered calls per plan (never per binding),
    /// counted as the meters are flushed.
    pub usage_calls: Family<PlanOutcomeLabels, Counter>,
    /// `ovsb_usage_compute_units_total{plan}`: compute units per plan, counted at flush.
    pub usage_compute_units: Family<PlanLabels, Counter>,
    /// `ovsb_usage_quota_refusals_total{plan}`: calls refused for a quota, per plan.
    pub usage_quota_refusals: Family<PlanLabels, Counter>,
    /// `ovsb_usage_flush_failures_total`: flushes of usage to the store that failed (kept and retried).
    pub usage_flush_failures: Counter,
    other: Arc<str>,
    per_instance: RwLock<HashMap<Arc<str>, Arc<InstanceMetrics>>>,
}

/// The entry of a method on an instance: its own while the method name is well formed and the
/// instance has fewer than [`MAX_METHOD_LABELS`], else the instance's `other`.
fn method_in(metrics: &InstanceMetrics, method: &str) -> Arc<MethodMetrics> {
    let well_formed =
        !method.is_empty() && method.len() <= 64 && method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !well_formed {
        return metrics.other.clone();
    }
    if let Some(entry) = metrics.methods.read().unwrap_or_else(|p| p.into_inner()).get(method) {
        return entry.clone();
    }
    let mut methods = metrics.methods.write().unwrap_or_else(|p| p.into_inner());
    if methods.len() >= MAX_METHOD_LABELS && !methods.contains_key(method) {
        return metrics.other.clone();
    }
    methods.entry(method.into()).or_insert_with(|| MethodMetrics::new(Arc::from(method))).clone()
}

/// What is kept per instance: its traffic history, its own method labels, and handles to its
/// series (so that counting a call hashes no label set).
struct InstanceMetrics {
    traffic: Traffic,
    methods: RwLock<HashMap<Box<str>, Arc<MethodMetrics>>>,
    /// Every call whose method gets no label of its own.
    other: Arc<MethodMetrics>,
    duration: std::sync::OnceLock<Histogram>,
}

/// The outcome classes of `ovsb_rpc_calls_total`, in the order of [`MethodMetrics::calls`]:
/// `ok` and the class of each blame (see [`crate::call::Blame::class`]).
const OUTCOMES: [&str; 7] = crate::call::OUTCOME_CLASSES;

/// One method label of one instance, and its `ovsb_rpc_calls_total` series by outcome (made at
/// its first count: a series shows once it has counted).
struct MethodMetrics {
    label: Arc<str>,
    calls: [std::sync::OnceLock<Counter>; OUTCOMES.len()],
}

impl MethodMetrics {
    fn new(label: Arc<str>) -> Arc<Self> {
        Arc::new(MethodMetrics { label, calls: Default::default() })
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn plugin_histogram() -> Histogram {
    // 1 µs … ~0.5 s.
    Histogram::new(exponential_buckets(0.000_001, 2.0, 20))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ovsb");
        let rpc_calls = Family::<CallLabels, Counter>::default();
        let rpc_duration = Family::<InstanceLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let plugin_duration = Family::<PluginLabels, Histogram>::new_with_constructor(plugin_histogram as fn() -> _);
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let broker_requests = Family::<BrokerLabels, Counter>::default();
        let instances = Family::<StateLabels, Gauge>::default();
        let cache_hits = Family::<InstanceLabels, Gauge>::default();
        let cache_misses = Family::<InstanceLabels, Gauge>::default();
        registry.register("rpc_calls", "JSON-RPC calls by instance, method and outcome", rpc_calls.clone());
        registry.register_with_unit(
            "rpc_call_duration",
            "Time to answer a JSON-RPC call, chain and node included",
            prometheus_client::registry::Unit::Seconds,
            rpc_duration.clone(),
        );
        registry.register_with_unit(
            "plugin_call_duration",
            "Time spent in one plugin hook (waiting for the node excluded only for hooks that call it)",
            prometheus_client::registry::Unit::Seconds,
            plugin_duration.clone(),
        );
        registry.register("upstream_errors", "Failed attempts to reach a node, by kind", upstream_errors.clone());
        registry.register("broker_requests", "OSB requests by endpoint, method and status", broker_requests.clone());
        registry.register("instances", "Service instances by state", instances.clone());
        let plugin_decisions = Family::<DecisionLabels, Gauge>::default();
        registry.register(
            "plugin_decisions",
            "What each plugin's on-call decided (answered, refused, forwarded), by instance and plugin",
            plugin_decisions.clone(),
        );
        registry.register("cache_hits", "Answers the cache plugin served, by instance", cache_hits.clone());
        registry.register("cache_misses", "Calls the cache plugin passed on, by instance", cache_misses.clone());
        let connections_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "gateway_connections_refused",
            "Gateway connections or first keyed requests refused, by the limit that refused them",
            connections_refused.clone(),
        );
        let subscriptions_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "gateway_subscriptions_refused",
            "eth_subscribe calls refused a slot, by the share that ran out",
            subscriptions_refused.clone(),
        );
        let subscriptions_ended = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "gateway_subscriptions_ended",
            "Subscriptions the gateway ended with a close code, by reason (lagged: 4008, node_gone: 1012)",
            subscriptions_ended.clone(),
        );
        let node_subscriptions = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "gateway_node_subscriptions",
            "Subscriptions held at the nodes, by instance (identical client subscriptions share one)",
            node_subscriptions.clone(),
        );
        let plugin_copies = Gauge::default();
        let plugin_copy_evictions = Counter::default();
        let plugin_refusals = Family::<RefusalLabels, Counter>::default();
        let plugin_loaded = Family::<PluginVersionLabels, Gauge>::default();
        let plugin_reloads = Family::<OutcomeLabels, Counter>::default();
        let plugin_instances = Family::<PluginVersionLabels, Gauge>::default();
        let plugin_loads = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "plugin_loads",
            "Plugin files loaded since start, by where their compiled code came from",
            plugin_loads.clone(),
        );
        registry.register(
            "plugin_instances",
            "Instances whose routes run each plugin version",
            plugin_instances.clone(),
        );
        registry.register("plugin_loaded", "The version of each plugin served now, by digest", plugin_loaded.clone());
        registry.register("plugin_reloads", "Plugin reloads, one count per plugin, by outcome", plugin_reloads.clone());
        registry.register("plugin_copies", "Plugin copies alive, busy or idle", plugin_copies.clone());
        let heap_live = Gauge::default();
        if cfg!(feature = "heap-stats") {
            registry.register("heap_live_bytes", "Heap bytes allocated and not freed", heap_live.clone());
        }
        let store_corrupt_rows = Family::<TableLabels, Counter>::default();
        // Present from the start (at 0): an alert on it needs the series before the first event.
        drop(store_corrupt_rows.get_or_create(&TableLabels { table: "slashing_protection" }));
        registry.register(
            "store_corrupt_rows",
            "Rows read from the store that did not decode (each failed what read it), by table",
            store_corrupt_rows.clone(),
        );
        let store_commits = Counter::default();
        registry.register(
            "store_commits",
            "Store transactions committed for state changes (changes that waited together commit once)",
            store_commits.clone(),
        );
        let store_changes = Counter::default();
        registry.register(
            "store_changes",
            "State changes committed: instance and binding transitions, ends of operations",
            store_changes.clone(),
        );
        registry.register(
            "plugin_copy_evictions",
            "Idle plugin copies dropped for the idle budget or the idle time",
            plugin_copy_evictions.clone(),
        );
        registry.register("plugin_refusals", "Calls refused for plugin capacity, by limit", plugin_refusals.clone());
        let call_refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "call_refusals",
            "Calls refused or cut by a gateway budget (answer bytes, node sockets, upstream calls), by limit",
            call_refusals.clone(),
        );
        let broker_auth = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "broker_auth_refusals",
            "Broker requests refused for authentication: `failed` (wrong or missing credentials, 401), `throttled` (429)",
            broker_auth.clone(),
        );
        let usage_calls = Family::<PlanOutcomeLabels, Counter>::default();
        registry.register("usage_calls", "Metered calls per plan and outcome class", usage_calls.clone());
        let usage_compute_units = Family::<PlanLabels, Counter>::default();
        registry.register("usage_compute_units", "Metered compute units per plan", usage_compute_units.clone());
        let usage_quota_refusals = Family::<PlanLabels, Counter>::default();
        registry.register("usage_quota_refusals", "Calls refused for a quota, per plan", usage_quota_refusals.clone());
        let usage_flush_failures = Counter::default();
        registry.register(
            "usage_flush_failures",
            "Flushes of usage to the store that failed (the rows are kept and retried)",
            usage_flush_failures.clone(),
        );
        let log_lines_suppressed = Counter::default();
        registry.register(
            "log_lines_suppressed",
            "Repeated warnings not written (rate-limited); each written one says how many it stands for",
            log_lines_suppressed.clone(),
        );
        // Series with a finite set of labels are present from the start, at 0: a dashboard or
        // an alert (a rate, an absence) needs them before their first event.
        for (family, reasons) in [
            (&connections_refused, CONNECTION_REFUSALS),
            (&subscriptions_refused, SUBSCRIPTION_REFUSALS),
            (&subscriptions_ended, SUBSCRIPTION_ENDINGS),
            (&plugin_refusals, PLUGIN_REFUSALS),
            (&call_refusals, CALL_REFUSALS),
        ] {
            for &reason in reasons {
                drop(family.get_or_create(&RefusalLabels { reason }));
            }
        }
        for &kind in UPSTREAM_ERROR_KINDS {
            drop(upstream_errors.get_or_create(&UpstreamLabels { kind }));
        }
        for &outcome in AUTH_REFUSALS {
            drop(broker_auth.get_or_create(&OutcomeLabels { outcome }));
        }
        for &outcome in RELOAD_OUTCOMES {
            drop(plugin_reloads.get_or_create(&OutcomeLabels { outcome }));
        }
        Metrics {
            registry,
            plugin_copies,
            heap_live,
            plugin_copy_evictions,
            plugin_refusals,
            call_refusals,
            broker_auth,
            log_lines_suppressed,
            plugin_loaded,
            plugin_instances,
            plugin_loads,
            plugin_reloads,
            store_corrupt_rows,
            store_commits,
            store_changes,
            usage_calls,
            usage_compute_units,
            usage_quota_refusals,
            usage_flush_failures,
            rpc_calls,
            rpc_duration,
            plugin_duration,
            upstream_errors,
            broker_requests,
            instances,
            plugin_decisions,
            cache_hits,
            cache_misses,
            connections_refused,
            subscriptions_refused,
            subscriptions_ended,
            node_subscriptions,
            other: Arc::from("other"),
            per_instance: RwLock::new(HashMap::new()),
        }
    }

    fn instance(&self, instance: &Arc<str>) -> Arc<InstanceMetrics> {
        if let Some(found) = self.per_instance.read().unwrap_or_else(|p| p.into_inner()).get(instance) {
            return found.clone();
        }
        let mut all = self.per_instance.write().unwrap_or_else(|p| p.into_inner());
        all.entry(instance.clone())
            .or_insert_with(|| {
                Arc::new(InstanceMetrics {
                    traffic: Traffic::new(),
                    methods: RwLock::default(),
                    other: MethodMetrics::new(self.other.clone()),
                    duration: std::sync::OnceLock::new(),
                })
            })
            .clone()
    }

    /// Counts a call refused for plugin capacity.
    pub fn record_plugin_refusal(&self, reason: &'static str) {
        self.plugin_refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts a call refused or cut by a gateway budget.
    pub fn record_call_refusal(&self, reason: &'static str) {
        self.call_refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts a broker request refused for authentication (`failed` or `throttled`).
    pub fn record_broker_auth(&self, outcome: &'static str) {
        self.broker_auth.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts warnings a [`LogThrottle`] kept out of the log.
    pub fn record_suppressed_lines(&self, n: u64) {
        self.log_lines_suppressed.inc_by(n);
    }

    /// Counts a refused gateway connection.
    pub fn record_connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts an `eth_subscribe` refused a slot.
    pub fn record_subscription_refused(&self, reason: &'static str) {
        self.subscriptions_refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts a subscription opened (`1`) or ended (`-1`) at one of `instance`'s nodes.
    pub fn record_node_subscription(&self, instance: &Arc<str>, delta: i64) {
        self.node_subscriptions.get_or_create(&InstanceLabels { instance: Escaped(instance.clone()) }).inc_by(delta);
    }

    /// Counts a subscription the gateway ended with a close code.
    pub fn record_subscription_ended(&self, reason: &'static str) {
        self.subscriptions_ended.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// The label value for a method name on `instance` (shared; bounded, see the module docs).
    pub fn method_label(&self, instance: &Arc<str>, method: &str) -> Arc<str> {
        method_in(&self.instance(instance), method).label.clone()
    }

    /// Records one answered call. `outcome` is one of `ok`, `plugin_failure`, `upstream_error`,
    /// `limit` and `error`.
    pub fn record_call(&self, instance: &Arc<str>, method: &str, outcome: &'static str, elapsed: Duration) {
        let metrics = self.instance(instance);
        let index = OUTCOMES.iter().position(|known| *known == outcome).unwrap_or(OUTCOMES.len() - 1);
        let entry = method_in(&metrics, method);
        entry.calls[index]
            .get_or_init(|| {
                let labels = CallLabels {
                    instance: Escaped(instance.clone()),
                    method: entry.label.clone(),
                    outcome: OUTCOMES[index],
                };
                self.rpc_calls.get_or_create(&labels).clone()
            })
            .inc();
        metrics
            .duration
            .get_or_init(|| {
                self.rpc_duration.get_or_create(&InstanceLabels { instance: Escaped(instance.clone()) }).clone()
            })
            .observe(elapsed.as_secs_f64());
        metrics.traffic.record(unix_seconds(), outcome != "ok");
    }

    /// The recent traffic of an instance (see [`Traffic::points`]).
    pub fn traffic_of(&self, instance: &str) -> Vec<(u64, u64, u64)> {
        let metrics = self.per_instance.read().unwrap_or_else(|p| p.into_inner()).get(instance).cloned();
        metrics.map_or_else(Vec::new, |m| m.traffic.points(unix_seconds()))
    }

    /// The latency of an instance's calls since this process started counting them (the
    /// `ovsb_rpc_duration_seconds` histogram), `None` before its first call.
    pub fn latency_of(&self, instance: &str) -> Option<Latency> {
        let metrics = self.per_instance.read().unwrap_or_else(|p| p.into_inner()).get(instance).cloned()?;
        let histogram = metrics.duration.get()?.clone();
        // prometheus-client shows a histogram's buckets only through an encoder: one instance's
        // histogram, in a registry of its own, read back as text.
        let mut registry = Registry::default();
        registry.register("d", "", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).ok()?;
        Latency::from_buckets(&buckets_of(&text))
    }

    /// Drops what is kept about one instance that is gone, its exported series included.
    pub fn forget_instance(&self, instance: &str) {
        let gone = self.per_instance.write().unwrap_or_else(|p| p.into_inner()).remove_entry(instance);
        if let Some((id, metrics)) = gone {
            self.remove_series(&id, &metrics);
        }
    }

    /// Drops what is kept about instances that are gone, their exported series included.
    pub fn retain_instances(&self, live: impl Fn(&str) -> bool) {
        let mut gone = Vec::new();
        self.per_instance.write().unwrap_or_else(|p| p.into_inner()).retain(|id, metrics| {
            let keep = live(id);
            if !keep {
                gone.push((id.clone(), metrics.clone()));
            }
            keep
        });
        for (id, metrics) in gone {
            self.remove_series(&id, &metrics);
        }
    }

    /// Removes every series labelled with `instance`: a deprovisioned instance's series go, and
    /// one provisioned again under the same id starts from none.
    fn remove_series(&self, instance: &Arc<str>, metrics: &InstanceMetrics) {
        let escaped = Escaped(instance.clone());
        let methods: Vec<Arc<MethodMetrics>> =
            metrics.methods.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for method in methods.iter().chain(std::iter::once(&metrics.other)) {
            for (index, outcome) in OUTCOMES.iter().enumerate() {
                if method.calls[index].get().is_some() {
                    let labels = CallLabels { instance: escaped.clone(), method: method.label.clone(), outcome };
                    self.rpc_calls.remove(&labels);
                }
            }
        }
        let labels = InstanceLabels { instance: escaped };
        self.rpc_duration.remove(&labels);
        self.cache_hits.remove(&labels);
        self.cache_misses.remove(&labels);
    }

    /// The series of `ovsb_plugin_hook_duration_seconds` for one plugin's hook: kept by the
    /// plugin, so that timing a hook hashes no label set.
    pub fn plugin_hook_timer(&self, plugin: &Arc<str>, hook: &'static str) -> Histogram {
        self.plugin_duration.get_or_create(&PluginLabels { plugin: plugin.clone(), hook }).clone()
    }

    /// Counts one failed attempt to reach a node.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&UpstreamLabels { kind }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        self.heap_live.set(HEAP_LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// `(upper bound in seconds, cumulative count)` of each `d_bucket` line of an encoded histogram.
fn buckets_of(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("d_bucket{le=\"")?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Latency quantiles of an instance's calls, estimated from its histogram's buckets as
/// Prometheus' `histogram_quantile` does (linear within a bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Calls counted.
    pub calls: u64,
    /// The median, in seconds.
    pub p50: f64,
    /// The 99th percentile, in seconds.
    pub p99: f64,
}

impl Latency {
    /// From `(upper bound, cumulative count)` buckets in increasing order; `None` when empty.
    pub fn from_buckets(buckets: &[(f64, u64)]) -> Option<Latency> {
        let calls = buckets.last()?.1;
        if calls == 0 {
            return None;
        }
        let quantile = |q: f64| -> f64 {
            let rank = q * calls as f64;
            let mut lower = (0.0, 0u64);
            for &(bound, count) in buckets {
                if count as f64 >= rank {
                    if bound.is_infinite() {
                        return lower.0;
                    }
                    let inside = count.saturating_sub(lower.1) as f64;
                    let fraction = if inside > 0.0 { (rank - lower.1 as f64) / inside } else { 1.0 };
                    return lower.0 + (bound - lower.0) * fraction.clamp(0.0, 1.0);
                }
                lower = (bound, count);
            }
            lower.0
        };
        Some(Latency { calls, p50: quantile(0.5), p99: quantile(0.99) })
    }
}

/// `ovsb_gateway_connections_refused_total`'s reasons.
pub const CONNECTION_REFUSALS: &[&str] =
    &["connections", "connections_per_source", "connections_per_key", "connections_per_instance"];
/// `ovsb_gateway_subscriptions_refused_total`'s reasons.
pub const SUBSCRIPTION_REFUSALS: &[&str] = &["subscriptions", "subscriptions_per_instance", "subscriptions_per_key"];
/// `ovsb_gateway_subscriptions_ended_total`'s reasons.
pub const SUBSCRIPTION_ENDINGS: &[&str] = &["lagged", "node_gone"];
/// `ovsb_plugin_refusals_total`'s reasons.
pub const PLUGIN_REFUSALS: &[&str] = &["instance_plugin_calls", "runtime_copies"];
/// `ovsb_call_refusals_total`'s reasons.
pub const CALL_REFUSALS: &[&str] = &[
    "response_bytes",
    "answer_bytes_in_flight",
    "instance_answer_bytes_in_flight",
    "instance_upstream_calls",
    "upstream_calls",
    "node_sockets",
    "descriptors",
    "node_time",
];
/// `ovsb_upstream_errors_total`'s kinds.
pub const UPSTREAM_ERROR_KINDS: &[&str] = &["connect", "failed", "timeout"];
/// `ovsb_broker_auth_refusals_total`'s outcomes.
pub const AUTH_REFUSALS: &[&str] = &["failed", "throttled"];
/// `ovsb_plugin_reloads_total`'s outcomes.
pub const RELOAD_OUTCOMES: &[&str] = &["added", "removed", "changed", "unchanged", "failed"];

/// Bytes allocated and not yet freed, kept by the `ovsb` binary's counting allocator when it is
/// built with the `heap-stats` feature (a heap profile for `tests/load/tenants.sh`: what is held,
/// as against the RSS the allocator keeps); 0 otherwise.
pub static HEAP_LIVE_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard's p50 and p99 come from the instance's own histogram: 98 calls of ~1 ms
    /// and 2 of ~1 s put the median near 1 ms and the 99th percentile near 1 s.
    #[test]
    fn latency_quantiles_are_read_from_an_instance_s_histogram() {
        let metrics = Metrics::new();
        let instance: Arc<str> = "latency-test".into();
        assert_eq!(metrics.latency_of("latency-test"), None, "no call yet");
        for _ in 0..98 {
            metrics.record_call(&instance, "eth_call", "ok", Duration::from_micros(1000));
        }
        for _ in 0..2 {
            metrics.record_call(&instance, "eth_call", "upstream_error", Duration::from_millis(1000));
        }
        let latency = metrics.latency_of("latency-test").unwrap();
        assert_eq!(latency.calls, 100);
        assert!((0.0008..=0.0016).contains(&latency.p50), "{latency:?}");
        assert!((0.4..=1.7).contains(&latency.p99), "{latency:?}");
        assert_eq!(Latency::from_buckets(&[(1.0, 0), (f64::INFINITY, 0)]), None);
        let all_past_the_last = Latency::from_buckets(&[(1.0, 0), (f64::INFINITY, 4)]).unwrap();
        assert_eq!(all_past_the_last.p99, 1.0, "at least the last finite bound");
    }

    #[test]
    fn series_with_a_finite_label_set_are_there_at_zero_before_any_event() {
        let text = Metrics::new().encode();
        for line in [
            r#"ovsb_gateway_connections_refused_total{reason="connections_per_key"} 0"#,
            r#"ovsb_gateway_subscriptions_refused_total{reason="subscriptions"} 0"#,
            r#"ovsb_gateway_subscriptions_ended_total{reason="lagged"} 0"#,
            r#"ovsb_plugin_refusals_total{reason="runtime_copies"} 0"#,
            r#"ovsb_call_refusals_total{reason="descriptors"} 0"#,
            r#"ovsb_upstream_errors_total{kind="timeout"} 0"#,
            r#"ovsb_broker_auth_refusals_total{outcome="throttled"} 0"#,
            r#"ovsb_plugin_reloads_total{outcome="added"} 0"#,
            r#"ovsb_store_corrupt_rows_total{table="slashing_protection"} 0"#,
            "ovsb_plugin_copy_evictions_total 0",
            "ovsb_log_lines_suppressed_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn instance_ids_are_escaped_and_a_forgotten_instance_leaves_no_series() {
        let m = Metrics::new();
        let odd: Arc<str> = Arc::from("rt\"q\\\nx");
        m.record_call(&odd, "eth_chainId", "ok", Duration::from_millis(1));
        m.record_call(&Arc::from("plain"), "eth_chainId", "ok", Duration::from_millis(1));
        let text = m.encode();
        assert!(text.contains(r#"instance="rt\"q\\\nx""#), "{text}");
        assert!(text.lines().all(|line| !line.starts_with("x\"")), "no label value breaks a line: {text}");
        m.forget_instance(&odd);
        let text = m.encode();
        assert!(!text.contains("rt\\\"q"), "the instance's series are gone: {text}");
        assert!(text.contains(r#"instance="plain""#), "{text}");
        m.retain_instances(|_| false);
        assert!(!m.encode().contains("instance="), "{}", m.encode());
    }

    #[test]
    fn method_labels_are_bounded_per_instance_and_shared() {
        let m = Metrics::new();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert_eq!(&*m.method_label(&a, "eth_call"), "eth_call");
        assert!(Arc::ptr_eq(&m.method_label(&a, "eth_call"), &m.method_label(&a, "eth_call")));
        assert_eq!(&*m.method_label(&a, "eth call; drop"), "other");
        assert_eq!(&*m.method_label(&a, &"x".repeat(65)), "other");
        for i in 0..MAX_METHOD_LABELS {
            m.method_label(&a, &format!("m_{i}"));
        }
        assert_eq!(&*m.method_label(&a, "one_more"), "other");
        assert_eq!(&*m.method_label(&b, "eth_gasPrice"), "eth_gasPrice", "a's junk does not relabel b's calls");
        let instance: Arc<str> = Arc::from("i-1");
        m.record_call(&instance, "eth_call", "ok", Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains(r#"ovsb_rpc_calls_total{instance="i-1",method="eth_call",outcome="ok"} 1"#), "{text}");
        assert!(text.contains("ovsb_rpc_call_duration_seconds_bucket"), "{text}");
    }
}
