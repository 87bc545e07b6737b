//! Metrics: every metric ovsb exports, their names and labels in one place, and the
//! Prometheus (OpenMetrics) text the admin listener serves at `/metrics`.
//!
//! Owns: the process-wide registry. Recording is cheap enough for the data path (an atomic add
//! after a read-locked map lookup; label values are shared `Arc<str>`s, no allocation per call).
//! Must not: let a client choose unbounded label values: method names are counted as given only
//! for the first [`MAX_METHOD_LABELS`] distinct well-formed names, then as `other`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Distinct method names given their own label value.
pub const MAX_METHOD_LABELS: usize = 512;

/// Labels of a JSON-RPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The service instance.
    pub instance: Arc<str>,
    /// The method (or `other`).
    pub method: Arc<str>,
    /// `ok`, `error` (an answer with a JSON-RPC error), `plugin_failure`, `upstream_error`.
    pub outcome: &'static str,
}

/// Labels keyed by instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The service instance.
    pub instance: Arc<str>,
}

/// Labels keyed by plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's configured name.
    pub plugin: Arc<str>,
    /// `on_call` or `on_result`.
    pub hook: &'static str,
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
    /// `ovsb_cache_hits{instance}` / `ovsb_cache_misses{instance}`: the `cache` plugin's
    /// counters, read at scrape time from the instance's key-value store.
    pub cache_hits: Family<InstanceLabels, Gauge>,
    /// See `cache_hits`.
    pub cache_misses: Family<InstanceLabels, Gauge>,
    methods: RwLock<HashMap<String, Arc<str>>>,
    other: Arc<str>,
    traffic: RwLock<HashMap<Arc<str>, Arc<Traffic>>>,
}

/// Seconds of traffic history kept per instance (for its dashboard).
pub const TRAFFIC_SECONDS: u64 = 300;

/// Calls and errors per second of one instance over the last [`TRAFFIC_SECONDS`]: a ring of
/// per-second slots, each stamped with its second (approximate at a slot's turnover, by design:
/// it feeds a chart).
pub struct Traffic {
    second: [AtomicU64; TRAFFIC_SECONDS as usize],
    calls: [AtomicU64; TRAFFIC_SECONDS as usize],
    errors: [AtomicU64; TRAFFIC_SECONDS as usize],
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            second: std::array::from_fn(|_| AtomicU64::new(0)),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, now: u64, error: bool) {
        let slot = (now % TRAFFIC_SECONDS) as usize;
        let stamped = self.second[slot].load(Ordering::Relaxed);
        if stamped != now
            && self.second[slot].compare_exchange(stamped, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.calls[slot].store(0, Ordering::Relaxed);
            self.errors[slot].store(0, Ordering::Relaxed);
        }
        self.calls[slot].fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(unix second, calls, errors)` for each second with traffic in the window, oldest first.
    pub fn points(&self, now: u64) -> Vec<(u64, u64, u64)> {
        let mut points: Vec<(u64, u64, u64)> = (0..TRAFFIC_SECONDS as usize)
            .filter_map(|slot| {
                let second = self.second[slot].load(Ordering::Relaxed);
                (second + TRAFFIC_SECONDS > now && second <= now).then(|| {
                    (second, self.calls[slot].load(Ordering::Relaxed), self.errors[slot].load(Ordering::Relaxed))
                })
            })
            .collect();
        points.sort_unstable();
        points
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
        registry.register("cache_hits", "Answers the cache plugin served, by instance", cache_hits.clone());
        registry.register("cache_misses", "Calls the cache plugin passed on, by instance", cache_misses.clone());
        Metrics {
            registry,
            rpc_calls,
            rpc_duration,
            plugin_duration,
            upstream_errors,
            broker_requests,
            instances,
            cache_hits,
            cache_misses,
            methods: RwLock::new(HashMap::new()),
            other: Arc::from("other"),
            traffic: RwLock::new(HashMap::new()),
        }
    }

    /// The label value for a method name (shared; bounded, see the module docs).
    pub fn method_label(&self, method: &str) -> Arc<str> {
        let well_formed =
            !method.is_empty() && method.len() <= 64 && method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !well_formed {
            return self.other.clone();
        }
        if let Some(label) = self.methods.read().unwrap_or_else(|p| p.into_inner()).get(method) {
            return label.clone();
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        if methods.len() >= MAX_METHOD_LABELS {
            return self.other.clone();
        }
        methods.entry(method.to_string()).or_insert_with(|| Arc::from(method)).clone()
    }

    /// Records one answered call.
    pub fn record_call(&self, instance: &Arc<str>, method: &str, outcome: &'static str, elapsed: Duration) {
        let labels = CallLabels { instance: instance.clone(), method: self.method_label(method), outcome };
        self.rpc_calls.get_or_create(&labels).inc();
        self.rpc_duration.get_or_create(&InstanceLabels { instance: instance.clone() }).observe(elapsed.as_secs_f64());
        let traffic = self.traffic.read().unwrap_or_else(|p| p.into_inner()).get(instance).cloned();
        let traffic = match traffic {
            Some(traffic) => traffic,
            None => {
                let mut all = self.traffic.write().unwrap_or_else(|p| p.into_inner());
                all.entry(instance.clone()).or_insert_with(|| Arc::new(Traffic::new())).clone()
            }
        };
        traffic.record(unix_seconds(), outcome != "ok");
    }

    /// The recent traffic of an instance (see [`Traffic::points`]).
    pub fn traffic_of(&self, instance: &str) -> Vec<(u64, u64, u64)> {
        let traffic = self.traffic.read().unwrap_or_else(|p| p.into_inner()).get(instance).cloned();
        traffic.map_or_else(Vec::new, |t| t.points(unix_seconds()))
    }

    /// Drops what is kept about instances that are gone.
    pub fn retain_instances(&self, live: impl Fn(&str) -> bool) {
        self.traffic.write().unwrap_or_else(|p| p.into_inner()).retain(|id, _| live(id));
    }

    /// Records the time of one plugin hook.
    pub fn record_plugin(&self, plugin: &Arc<str>, hook: &'static str, elapsed: Duration) {
        self.plugin_duration
            .get_or_create(&PluginLabels { plugin: plugin.clone(), hook })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one failed attempt to reach a node.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&UpstreamLabels { kind }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

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

    #[test]
    fn method_labels_are_bounded_and_shared() {
        let m = Metrics::new();
        assert_eq!(&*m.method_label("eth_call"), "eth_call");
        assert!(Arc::ptr_eq(&m.method_label("eth_call"), &m.method_label("eth_call")));
        assert_eq!(&*m.method_label("eth call; drop"), "other");
        assert_eq!(&*m.method_label(&"x".repeat(65)), "other");
        for i in 0..MAX_METHOD_LABELS {
            m.method_label(&format!("m_{i}"));
        }
        assert_eq!(&*m.method_label("one_more"), "other");
        let instance: Arc<str> = Arc::from("i-1");
        m.record_call(&instance, "eth_call", "ok", Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains(r#"ovsb_rpc_calls_total{instance="i-1",method="eth_call",outcome="ok"} 1"#), "{text}");
        assert!(text.contains("ovsb_rpc_call_duration_seconds_bucket"), "{text}");
    }

    #[test]
    fn traffic_keeps_five_minutes_of_calls_and_errors_per_second() {
        let traffic = Traffic::new();
        traffic.record(1000, false);
        traffic.record(1000, true);
        traffic.record(1001, false);
        traffic.record(1000 + TRAFFIC_SECONDS, false); // same slot as 1000, a new second
        assert_eq!(traffic.points(1000 + TRAFFIC_SECONDS), vec![(1001, 1, 0), (1300, 1, 0)]);
        assert_eq!(traffic.points(1001), vec![(1001, 1, 0)], "nothing from the future");
    }
}
