//! The admin listener (`admin.listen`, `OVSB_ADMIN_LISTEN`): liveness and readiness for
//! orchestrators and load balancers.
//!
//! Owns: `/metrics` (Prometheus / OpenMetrics text, see [`crate::telemetry`]), `/healthz` (the
//! process answers), `/readyz` (the store answers and the routes have been loaded from it, so
//! the gateway serves every instance; the configured plugins were compiled before that) and
//! `POST /reload` with the header `X-Ovsb-Reload: 1` (the plugins again from their files, see
//! [`crate::reload`]: 200 with the report when everything was taken, 422 with it when something
//! kept its running version, 409 when the configuration file is refused as a whole, 400 without
//! the header). Must not: expose anything a
//! platform or dApp could use; it carries no credentials and listens on loopback by default.
//!
//! Every request's `Host` must name the listener itself: an IP address (what a DNS-rebinding
//! page cannot send, since it reaches the listener under its own name), `localhost`, or one of
//! `admin.allowed_hosts`; others get 421, so a page that rebinds its name to 127.0.0.1 can
//! neither reload plugins nor read `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::routing::RouteSync;
use crate::store::Store;

/// What readiness depends on; filled in once start-up has got that far.
#[derive(Default)]
pub struct AdminState {
    parts: std::sync::OnceLock<Parts>,
}

struct Parts {
    store: Store,
    routing: Arc<RouteSync>,
    reloader: Arc<crate::reload::Reloader>,
}

impl AdminState {
    /// Start-up has opened the store and loaded the routes.
    pub fn ready(&self, store: Store, routing: Arc<RouteSync>, reloader: Arc<crate::reload::Reloader>) {
        let _ = self.parts.set(Parts { store, routing, reloader });
    }
}

/// The admin router, answering requests whose `Host` is an IP address, `localhost` or one of
/// `allowed_hosts` (names, matched without case, with or without a port).
pub fn router(state: Arc<AdminState>, allowed_hosts: &[String]) -> Router {
    let allowed: Arc<[String]> = allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/reload", post(reload))
        .with_state(state)
        .layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            let allowed = allowed.clone();
            async move {
                use axum::response::IntoResponse;
                let host = request.headers().get(axum::http::header::HOST).and_then(|h| h.to_str().ok());
                if !host.is_some_and(|host| host_allowed(host, &allowed)) {
                    let message = "421: this Host is not the admin listener's (see admin.allowed_hosts)\n";
                    return (StatusCode::MISDIRECTED_REQUEST, message).into_response();
                }
                next.run(request).await
            }
        }))
}

/// Whether `host` (a `Host` header: name or address, maybe a port) names the admin listener.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        // [v6]:port or [v6]
        Some(rest) => return rest.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            host.rsplit_once(':').map_or(host, |(name, port)| if port.parse::<u16>().is_ok() { name } else { host })
        }
    };
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || allowed.iter().any(|a| a.trim_end_matches('.') == name)
}

async fn metrics(State(admin): State<Arc<AdminState>>) -> impl axum::response::IntoResponse {
    let m = crate::telemetry::metrics();
    if let Some(state) = admin.parts.get() {
        gauges(state, m).await;
    }
    ([(axum::http::header::CONTENT_TYPE, crate::telemetry::CONTENT_TYPE)], m.encode())
}

async fn gauges(state: &Parts, m: &crate::telemetry::Metrics) {
    use crate::telemetry::{InstanceLabels, StateLabels};
    match state.store.instances_by_state().await {
        Ok(counts) => {
            for (state, n) in counts {
                m.instances.get_or_create(&StateLabels { state }).set(n);
            }
        }
        Err(err) => tracing::warn!("metrics: cannot count instances: {err}"),
    }
    m.plugin_loaded.clear();
    for (name, available) in state.routing.registry().available().iter() {
        let labels = crate::telemetry::PluginVersionLabels { plugin: name.clone(), sha256: available.plugin.sha256() };
        m.plugin_loaded.get_or_create(&labels).set(1);
    }
    let stats = state.routing.registry().runtime().stats();
    for (source, counter) in [
        ("compiled", &stats.compilations),
        ("disk_cache", &stats.disk_cache_hits),
        ("memory_cache", &stats.memory_cache_hits),
    ] {
        let n = counter.load(std::sync::atomic::Ordering::Relaxed);
        m.plugin_loads.get_or_create(&crate::telemetry::SourceLabels { source }).set(n as i64);
    }
    m.plugin_instances.clear();
    for ((plugin, sha256), n) in state.routing.plugin_versions_in_use().await {
        m.plugin_instances.get_or_create(&crate::telemetry::PluginVersionLabels { plugin, sha256 }).set(n);
    }
    // What the plugins decided, as the host counted it (never read from a plugin's own keys).
    m.plugin_decisions.clear();
    let mut cache: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for (instance, plugin, [answered, refused, forwarded]) in state.routing.plugin_decisions().await {
        let escaped = crate::telemetry::Escaped(instance.as_str().into());
        let plugin: std::sync::Arc<str> = plugin.into();
        for (decision, n) in [("answered", answered), ("refused", refused), ("forwarded", forwarded)] {
            let labels =
                crate::telemetry::DecisionLabels { instance: escaped.clone(), plugin: plugin.clone(), decision };
            m.plugin_decisions.get_or_create(&labels).set(n as i64);
        }
        if &*plugin == CACHE_PLUGIN {
            let counts = cache.entry(instance).or_default();
            counts.0 += answered as i64;
            counts.1 += forwarded as i64;
        }
    }
    for (instance, (hits, misses)) in cache {
        let labels = InstanceLabels { instance: crate::telemetry::Escaped(instance.as_str().into()) };
        m.cache_hits.get_or_create(&labels).set(hits);
        m.cache_misses.get_or_create(&labels).set(misses);
    }
}

/// The name under which a plugin's answers and passes count as `ovsb_cache_hits` and
/// `ovsb_cache_misses` (the first-party cache, as the example configurations name it).
const CACHE_PLUGIN: &str = "cache";

/// The header `POST /reload` must carry: a web page the operator's browser shows cannot send it
/// to the loopback admin listener without a CORS preflight, which is never answered.
pub const RELOAD_HEADER: &str = "x-ovsb-reload";

async fn reload(State(admin): State<Arc<AdminState>>, headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !headers.contains_key(RELOAD_HEADER) {
        let error = "POST /reload needs the header `X-Ovsb-Reload: 1` (so that no web page can trigger it)";
        return (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "error": error }))).into_response();
    }
    let Some(state) = admin.parts.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting: nothing to reload yet\n").into_response();
    };
    // `reload` logs what it did, in the fields answered here.
    match state.reloader.reload().await {
        Ok(reloaded) => {
            let status = if reloaded.complete() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            (status, axum::Json(reloaded)).into_response()
        }
        Err(refused) => {
            let status = StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::CONFLICT);
            (status, axum::Json(refused.body())).into_response()
        }
    }
}

async fn ready(State(admin): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    let Some(state) = admin.parts.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting: waiting for the store\n");
    };
    if !state.routing.loaded() {
        return (StatusCode::SERVICE_UNAVAILABLE, "routes not loaded yet\n");
    }
    match state.store.generation().await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(err) => {
            tracing::warn!("readiness: the store does not answer: {err}");
            (StatusCode::SERVICE_UNAVAILABLE, "the store does not answer\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_addresses_localhost_and_configured_names_may_be_the_host() {
        let allowed = ["ovsb-admin.internal".to_string()];
        for host in
            ["127.0.0.1:9090", "127.0.0.1", "[::1]:9090", "[::1]", "10.0.0.5:9090", "localhost:9090", "LocalHost"]
        {
            assert!(host_allowed(host, &allowed), "{host}");
        }
        assert!(host_allowed("OVSB-admin.internal:9090", &allowed));
        for host in [
            "attacker.example:9090",
            "attacker.example",
            "localhost.attacker.example",
            "",
            "[evil]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
    }
}
