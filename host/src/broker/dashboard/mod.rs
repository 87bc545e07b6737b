//! Each instance's dashboard: a page (its `dashboard_url`) rendered on the server with the
//! instance's state, its usage (calls and compute units per binding and per method, outcomes
//! with refusals kept apart from failures, per minute over the last hour and per hour over the
//! last 24 hours, from the store plus what this replica has not flushed yet), its latency and
//! cache hit ratio, its node's head block and sync state, and for a validator instance its keys
//! with what the beacon node says of them. The page carries its figures at first paint; its
//! script only re-fetches it.
//!
//! Owns: gathering those figures (bounded store queries, node and client requests within
//! `broker.dashboard.node_timeout_ms`), the page and its JSON feed, and the per-instance token
//! that opens them (an HMAC of the instance id under the broker's secret key, compared in
//! constant time), so the URL can be handed to the instance's users without the broker's
//! credentials. Must not: show credentials, keys' secrets or parameters other than the chain,
//! the fee recipient and the public keys; serve anything for an unknown instance or a wrong
//! token; or touch the gateway's hot path (it reads the meters by copying, under their own
//! short locks).

mod validator;
mod view;

use std::sync::Arc;
use std::time::Duration;

use super::BrokerState;
use crate::config::DriverDecl;
use crate::plugins::Call;
use crate::store::{InstanceRow, InstanceState, UsageTop};
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use view::{NodeStatus, StoredUsage, UsageView, View};

/// The plugin whose answers count as cache hits (the first-party cache, as the example
/// configurations name it; the admin listener's `ovsb_cache_hits` counts the same).
const CACHE_PLUGIN: &str = "cache";

/// Longest wait for the store's answers while a dashboard is served.
const STORE_BOUND: Duration = Duration::from_secs(5);

/// Dashboards gathered at once, all instances together: each runs a few store queries and may
/// ask a node, so a token holder who reloads in a loop (or many at once) cannot take the store's
/// connections from the broker, nor hold more than this many node requests.
const GATHERED_AT_ONCE: usize = 4;

/// How long a dashboard request waits for a turn before it gets 503 with `Retry-After`.
const TURN_WAIT: Duration = Duration::from_secs(1);

static TURNS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(GATHERED_AT_ONCE)));

/// Instances whose dashboard is being gathered now: each holds at most one of the turns, so one
/// token holder reloading in a loop leaves the other instances' dashboards their turns.
static GATHERING: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// An instance's dashboard being gathered (its entry in [`GATHERING`], removed on drop).
#[derive(Debug)]
struct Gathering(String);

impl Gathering {
    /// `None` while the instance's dashboard is already being gathered.
    fn start(id: &str) -> Option<Gathering> {
        let mut gathering = GATHERING.lock().unwrap_or_else(|p| p.into_inner());
        gathering.insert(id.to_string()).then(|| Gathering(id.to_string()))
    }
}

impl Drop for Gathering {
    fn drop(&mut self) {
        GATHERING.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// The 503 of a dashboard request that gets no turn.
fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "2"), (header::CONTENT_TYPE, "text/plain")],
        "dashboards are busy, retry in a few seconds\n",
    )
        .into_response()
}

/// A turn to gather instance `id`'s dashboard: none while that instance's is being gathered,
/// else one of the [`GATHERED_AT_ONCE`] within [`TURN_WAIT`]; otherwise the 503 to answer.
async fn turn(id: &str) -> Result<(Gathering, tokio::sync::OwnedSemaphorePermit), Response> {
    let mine = Gathering::start(id).ok_or_else(busy)?;
    match tokio::time::timeout(TURN_WAIT, TURNS.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok((mine, permit)),
        _ => Err(busy()),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// The dashboard routes (outside the broker's Basic auth: the token is the key).
pub(super) fn router(state: Arc<BrokerState>) -> Router {
    Router::new()
        .route("/dashboard/{instance_id}", get(page))
        .route("/dashboard/{instance_id}/data", get(data))
        .with_state(state)
}

/// The dashboard URL of an instance.
pub fn url(state: &BrokerState, instance_id: &str) -> String {
    let id = path_segment(instance_id);
    format!("{}/dashboard/{id}?token={}", state.config.public_broker_url(), state.secret.dashboard_token(instance_id))
}

/// An instance id as one segment of a URL's path: letters, digits, `-`, `_` and `~` as they are
/// (a GUID reads as itself), every other byte percent-encoded, `.` too (so that an id `..` is not
/// a step up the path).
fn path_segment(instance_id: &str) -> String {
    const KEPT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(instance_id, KEPT).to_string()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "no such dashboard\n").into_response()
}

/// The instance id of a dashboard request whose token opens that instance's dashboard. A wrong
/// or missing token is a 404, as an unknown instance is; a path or query that does not decode is
/// axum's rejection.
struct Authorized(String);

impl FromRequestParts<Arc<BrokerState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<BrokerState>) -> Result<Self, Response> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let Query(query) =
            Query::<TokenQuery>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        if query.token.as_deref().is_some_and(|token| state.secret.check_dashboard_token(&id, token)) {
            Ok(Authorized(id))
        } else {
            Err(not_found())
        }
    }
}

/// The Content-Security-Policy of the page: nothing but its own inline style and script, its
/// own feed, and images from the configured logo's origin.
fn content_security_policy(state: &BrokerState) -> String {
    let images = state.config.broker.dashboard.logo_origin().map_or("'none'".to_string(), |origin| origin);
    format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
         img-src {images}; base-uri 'none'; form-action 'none'"
    )
}

async fn page(State(state): State<Arc<BrokerState>>, Authorized(id): Authorized) -> Response {
    let view = match gather(&state, &id).await {
        Ok(view) => view,
        Err(response) => return response,
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (header::CONTENT_SECURITY_POLICY, content_security_policy(&state)),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        view.render(),
    )
        .into_response()
}

async fn data(State(state): State<Arc<BrokerState>>, Authorized(id): Authorized) -> Response {
    let view = match gather(&state, &id).await {
        Ok(view) => view,
        Err(response) => return response,
    };
    let traffic = crate::telemetry::metrics().traffic_of(&id);
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")],
        view.to_json(&traffic).to_string(),
    )
        .into_response()
}

/// Everything the dashboard of instance `id` shows; the answer to send instead when the
/// instance is unknown (404) or the store cannot say (503).
async fn gather(state: &BrokerState, id: &str) -> Result<View, Response> {
    let _turn = turn(id).await?;
    let instance = match tokio::time::timeout(STORE_BOUND, state.store.instance(id)).await {
        Ok(Ok(Some(instance))) if instance.state != InstanceState::Deleted => instance,
        Ok(Ok(_)) => return Err(not_found()),
        Ok(Err(err)) => return Err(super::ApiError::from(err).into_response()),
        Err(_) => {
            return Err((StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "the store did not answer\n")
                .into_response());
        }
    };
    let settings = &state.config.broker.dashboard;
    let bound = Duration::from_millis(settings.node_timeout_ms);
    let plan_decl = state.config.plan_by_id(&instance.plan_id);
    let is_validator =
        plan_decl.is_some_and(|p| matches!(p.driver, DriverDecl::Validator(_) | DriverDecl::KubernetesValidator(_)));
    let chain: Vec<(String, bool)> = crate::chain_policy::chain_of(plan_decl, instance.parameters.as_ref())
        .iter()
        .map(|e| (e.name.clone(), e.fail_open))
        .collect();
    let plan =
        state.catalog.load().plan_by_id(&instance.plan_id).map_or(instance.plan_id.clone(), |p| p.plan.name.clone());
    let now_ms = crate::usage::now_ms();
    let route = tokio::time::timeout(bound, state.routing.instance_route(id)).await.ok().flatten();
    let (usage, node, validator) = tokio::join!(
        usage_of(state, id, now_ms),
        node_of(route.as_deref(), bound),
        validator_of(route.as_deref(), &instance, is_validator, bound),
    );
    let cache = route.as_deref().and_then(cache_of);
    Ok(View {
        provider_name: settings.provider_name.trim().to_string(),
        logo_url: (!settings.logo_url.is_empty()).then(|| settings.logo_url.clone()),
        instance_id: instance.id.clone(),
        plan,
        state: instance.state.as_str().to_string(),
        chain,
        now_ms,
        usage,
        latency: crate::telemetry::metrics().latency_of(id),
        cache,
        node,
        validator,
    })
}

/// The instance's usage over the dashboard's windows: four bounded queries (the buckets of the
/// last hour and of the last 24 hours, the top bindings and methods), plus this replica's
/// unflushed meters. `None` when the store does not answer.
async fn usage_of(state: &BrokerState, id: &str, now_ms: i64) -> Option<UsageView> {
    let now_minute = now_ms.div_euclid(60_000);
    let (minute_from, hour_from, end) = view::windows(now_minute);
    let store = &state.store;
    let read = async {
        let per_minute = store.instance_usage_series(id, minute_from, end, 1, view::MINUTES + 1).await?;
        let per_hour = store.instance_usage_series(id, hour_from, end, 60, view::HOURS + 1).await?;
        let bindings = store.instance_usage_top(id, hour_from, end, UsageTop::Binding, view::TOP + 1).await?;
        let methods = store.instance_usage_top(id, hour_from, end, UsageTop::Method, view::TOP + 1).await?;
        Ok::<_, crate::store::StoreError>(StoredUsage { per_minute, per_hour, bindings, methods })
    };
    let stored = match tokio::time::timeout(STORE_BOUND, read).await {
        Ok(Ok(stored)) => stored,
        Ok(Err(err)) => {
            tracing::warn!(instance = %id, "dashboard: cannot read the instance's usage: {err}");
            return None;
        }
        Err(_) => {
            tracing::warn!(instance = %id, "dashboard: the store did not answer within {STORE_BOUND:?}");
            return None;
        }
    };
    Some(UsageView::assemble(now_minute, stored, &state.usage.pending_of(id)))
}

/// The head block and sync state of the instance's node (`eth_blockNumber`, `eth_syncing` to
/// its first node in rotation), within `bound`.
async fn node_of(route: Option<&crate::gateway::InstanceRoute>, bound: Duration) -> NodeStatus {
    let Some(route) = route else { return NodeStatus::NotServed };
    let pool = &route.upstream;
    let Some(index) = (0..pool.len()).find(|i| pool.is_healthy(*i)).or((!pool.is_empty()).then_some(0)) else {
        return NodeStatus::Unreachable;
    };
    match tokio::time::timeout(bound, head_of(pool, index)).await {
        Ok(Some(status)) => status,
        Ok(None) => NodeStatus::Unreachable,
        Err(_) => NodeStatus::TimedOut { ms: bound.as_millis() as u64 },
    }
}

/// The head block and sync progress of node `index` of `pool`; `None` when it does not say.
async fn head_of(pool: &crate::upstream::UpstreamPool, index: usize) -> Option<NodeStatus> {
    use serde_json::Value;
    let (block_call, syncing_call) =
        (Call { method: "eth_blockNumber".into(), params: None }, Call { method: "eth_syncing".into(), params: None });
    let (block, syncing) = tokio::join!(pool.probe(index, &block_call), pool.probe(index, &syncing_call));
    let block: Value = serde_json::from_str(&block.ok()?).ok()?;
    let block = quantity(block.as_str()?)?;
    let syncing = match serde_json::from_str::<Value>(&syncing.ok()?).ok()? {
        Value::Bool(false) => None,
        progress => Some((
            progress["currentBlock"].as_str().and_then(quantity).unwrap_or(block),
            progress["highestBlock"].as_str().and_then(quantity).unwrap_or(block),
        )),
    };
    Some(NodeStatus::Head { block, syncing })
}

/// A JSON-RPC quantity (`0x1a`).
fn quantity(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// A validator instance's keys with what its client says (`None` for other instances).
async fn validator_of(
    route: Option<&crate::gateway::InstanceRoute>,
    instance: &InstanceRow,
    is_validator: bool,
    bound: Duration,
) -> Option<view::ValidatorView> {
    if !is_validator {
        return None;
    }
    let parameters = instance.parameters.clone().unwrap_or_default();
    let pubkeys = crate::validator_params::pubkeys_of(&parameters);
    let fee_recipient = parameters.get("fee_recipient").and_then(|v| v.as_str()).map(str::to_string);
    let access = route.and_then(|r| r.validator.as_ref()).and_then(|v| (v.access)());
    Some(validator::view(access, pubkeys, fee_recipient, bound).await)
}

/// (answered, forwarded) of the instance's plugin named `cache`, as the host counted them;
/// `None` when its chain has none.
fn cache_of(route: &crate::gateway::InstanceRoute) -> Option<(u64, u64)> {
    use std::sync::atomic::Ordering::Relaxed;
    let cache = route.chain.entries().iter().find(|e| e.pool.plugin_name() == CACHE_PLUGIN)?;
    let decisions = cache.pool.decisions();
    Some((decisions.answered.load(Relaxed), decisions.forwarded.load(Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests of the turns, one at a time: the turns are the process's.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// While every turn is taken, a dashboard request waits a bounded time, then gets 503 with
    /// `Retry-After`; a turn given back serves the next one.
    #[tokio::test]
    async fn dashboards_gathered_at_once_are_bounded_and_the_rest_are_told_to_retry() {
        let _serial = SERIAL.lock().await;
        let all = TURNS.clone().acquire_many_owned(GATHERED_AT_ONCE as u32).await.unwrap();
        let refused = turn("turns-a").await.expect_err("every turn is taken");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "2");
        drop(all);
        assert!(turn("turns-a").await.is_ok());
    }

    /// An instance's dashboard gathered twice at once takes one turn: the second request is told
    /// to retry at once, and another instance's dashboard is served meanwhile.
    #[tokio::test]
    async fn one_instance_holds_at_most_one_turn() {
        let _serial = SERIAL.lock().await;
        let first = turn("share-a").await.expect("a turn");
        let again = turn("share-a").await.expect_err("the instance's dashboard is being gathered");
        assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(turn("share-b").await.is_ok(), "another instance is served");
        drop(first);
        assert!(turn("share-a").await.is_ok(), "the turn is given back");
    }

    #[test]
    fn an_instance_id_keeps_its_unreserved_characters_in_the_dashboard_path() {
        assert_eq!(path_segment("6f1c2a3e-6d3b-4a7e_x~y"), "6f1c2a3e-6d3b-4a7e_x~y");
        assert_eq!(path_segment("my-node"), "my-node");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("a/b?c#d e\"é"), "a%2Fb%3Fc%23d%20e%22%C3%A9");
    }
}
