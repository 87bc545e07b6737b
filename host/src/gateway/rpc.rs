//! The jsonrpsee RPC middleware that runs every call through its instance's plugin chain, and
//! the WebSocket subscription proxy.
//!
//! jsonrpsee parses requests, splits batches, keeps ids, and enforces body and batch limits; this
//! middleware then handles every call itself, registered method or not: it finds the caller's
//! route in the current snapshot (so a revoked key stops working for the next call, even on an
//! open WebSocket), runs the chain under the per-call deadline, and turns the outcome into the
//! response. Every request (a call, or a whole batch) carries a [`RequestBudget`] in the
//! task-local [`REQUEST_BUDGET`]: the nodes' answers are counted against the response limit as
//! they arrive, and against the answer bytes the gateway and the instance may hold at once. Batch
//! entries run at most `batch_concurrency` at a time and are answered in order, appended to the
//! batch's answer as they complete; once the answers pass the limit, the batch is cut short with
//! -32011 (`data.reason = "response_bytes"`), holding about the limit. Notifications over HTTP
//! run the chain and get no answer (over WebSocket they are refused, see `notify`). Over
//! WebSocket, `eth_subscribe` is the one registered method: plugins see its `on-call` (they may
//! refuse or rewrite it), then it takes a slot and is relayed from the node by
//! [`super::subscriptions`], which also says how it ends. Over HTTP it is a call like any other
//! (the node answers).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jsonrpsee::core::middleware::{Batch, BatchEntry, Notification, RpcServiceT};
use jsonrpsee::core::server::{BatchResponseBuilder, MethodResponse, ResponsePayload};
use jsonrpsee::server::{IdProvider, RpcModule};
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned, Id, Request, SubscriptionId};
use serde_json::value::RawValue;

use super::allowlist::{Allowlist, Refusal};
use super::errors;
use super::guard::Guard;
use super::revocable::RevocationWatch;
use super::routes::{KeyDigest, Route, Routes};
use super::subscriptions::{self, NodeSockets, SubscriptionSlots};
use crate::budget::{GatewayBudget, REQUEST_BUDGET};
use crate::call::{Blame, Call, CallContext, Outcome, Upstream};

/// Put into request extensions by the front service: the caller's key, by digest, whether the
/// calls come over a WebSocket, and the binding's allowlist.
#[derive(Clone)]
pub(crate) struct Caller {
    pub digest: KeyDigest,
    pub websocket: bool,
    pub allowlist: Option<Arc<Allowlist>>,
    /// Over WebSocket: the socket's watch, through which a subscription closes it with a code
    /// and a reason.
    pub watch: Option<Arc<RevocationWatch>>,
    /// Over HTTP: whether every call of the request was refused for its quota (then the answer
    /// is HTTP 429 with `Retry-After`).
    pub quota: Option<Arc<QuotaSignal>>,
}

/// What the calls of one HTTP request tell its answer about quotas: how many ran, how many
/// were refused for a quota, and the longest wait until a quota resets.
#[derive(Default)]
pub(crate) struct QuotaSignal {
    calls: AtomicU64,
    refused: AtomicU64,
    retry_after_ms: AtomicU64,
}

impl QuotaSignal {
    /// Milliseconds until the quota resets when every call of the request was refused for it.
    pub fn all_refused(&self) -> Option<u64> {
        let refused = self.refused.load(Ordering::Acquire);
        (refused > 0 && refused == self.calls.load(Ordering::Acquire))
            .then(|| self.retry_after_ms.load(Ordering::Acquire))
    }
}

/// What the middleware needs besides the request.
pub(crate) struct RpcState {
    pub routes: Arc<Routes>,
    /// Subscription slots: in all, per instance, per key.
    pub subscription_slots: Arc<SubscriptionSlots>,
    /// The sockets to nodes that carry the subscriptions.
    pub node_sockets: NodeSockets,
    pub max_response_bytes: usize,
    /// What requests may hold, in all and per instance.
    pub budget: Arc<GatewayBudget>,
    /// Entries of one batch running at once.
    pub batch_concurrency: usize,
    pub request_ids: AtomicU64,
    pub id_prefix: String,
}

impl RpcState {
    /// The state of a gateway with `config`, whose requests hold `budget`.
    pub fn new(
        routes: Arc<Routes>,
        config: &super::GatewayConfig,
        budget: Arc<GatewayBudget>,
        tracker: tokio_util::task::TaskTracker,
    ) -> Arc<RpcState> {
        Arc::new(RpcState {
            routes,
            subscription_slots: SubscriptionSlots::new(config.subscriptions),
            node_sockets: NodeSockets::new(config.subscriptions.buffer, config.max_response_bytes, tracker),
            max_response_bytes: config.max_response_bytes as usize,
            budget,
            batch_concurrency: config.batch_concurrency as usize,
            request_ids: AtomicU64::new(1),
            id_prefix: format!("{:x}", std::process::id()),
        })
    }

    fn route(&self, extensions: &http::Extensions) -> Option<Arc<Route>> {
        let caller = extensions.get::<Caller>()?;
        self.routes.lookup_digest(&caller.digest)
    }

    /// A new request id: `<process id in hex>-<counter in hex>`, formatted once, in place.
    fn request_id(&self) -> Arc<str> {
        use std::io::Write as _;
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        // The prefix is at most 8 hex digits, the counter 16.
        let mut text = [0u8; 32];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = write!(cursor, "{}-{n:x}", self.id_prefix);
        let len = cursor.position() as usize;
        std::str::from_utf8(&text[..len]).unwrap_or_default().into()
    }

    /// The plugins' context of a call on `route`: the route's own ids and the call's, shared.
    fn context(&self, route: &Route) -> CallContext {
        CallContext {
            instance_id: route.instance.instance_id.clone(),
            binding_id: Some(route.binding_id.clone()),
            plan: route.instance.plan.clone(),
            request_id: crate::call::request_id().unwrap_or_else(|| self.request_id()),
        }
    }
}

/// The middleware layer.
#[derive(Clone)]
pub(crate) struct ChainLayer(pub Arc<RpcState>);

impl<S> tower::Layer<S> for ChainLayer {
    type Service = ChainRpc<S>;
    fn layer(&self, inner: S) -> ChainRpc<S> {
        ChainRpc { inner, state: self.0.clone() }
    }
}

/// What the middleware wraps: jsonrpsee's own RPC service (used for the subscription methods).
pub(crate) trait InnerService:
    RpcServiceT<MethodResponse = MethodResponse, NotificationResponse = MethodResponse, BatchResponse = MethodResponse>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> InnerService for S where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            NotificationResponse = MethodResponse,
            BatchResponse = MethodResponse,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The middleware service.
#[derive(Clone)]
pub(crate) struct ChainRpc<S> {
    inner: S,
    state: Arc<RpcState>,
}

impl<S> ChainRpc<S>
where
    S: InnerService,
{
    async fn handle(self, req: Request<'_>) -> MethodResponse {
        // Over HTTP there are no subscriptions: the calls go to the node like any other, and get
        // the node's own answer.
        let websocket = req.extensions.get::<Caller>().is_some_and(|caller| caller.websocket);
        if websocket && matches!(req.method.as_ref(), "eth_subscribe" | "eth_unsubscribe") {
            // Boxed: this rare path's state would otherwise sit in every call's future.
            return Box::pin(self.subscription_call(req)).await;
        }
        answer(&self.state, req).await
    }

    /// `eth_subscribe` or `eth_unsubscribe` over WebSocket.
    async fn subscription_call(self, req: Request<'_>) -> MethodResponse {
        let Some(route) = self.state.route(&req.extensions) else {
            return MethodResponse::error(req.id, error(errors::UNAUTHORIZED, "the key was revoked"));
        };
        let caller = req.extensions.get::<Caller>();
        let allowlist = caller.and_then(|caller| caller.allowlist.as_ref());
        if let Err(refusal) = check_entry(&route, allowlist, &req.method, req.params.as_deref()) {
            let answer = MethodResponse::error(req.id, error(refusal.code, refusal.message));
            record(&route, &req.method, Some(Blame::Rule), std::time::Instant::now(), &answer);
            return answer;
        }
        if req.method == "eth_unsubscribe" {
            return self.inner.call(req).await;
        }
        if let Some(refused) = over_quota(&route, caller, &req.method, Some(&req.id)) {
            return refused;
        }
        let guard = Guard::new(&route.instance.upstream, route.instance.policy.as_ref(), allowlist);
        let call = Call { method: req.method.to_string(), params: req.params.as_ref().map(|p| p.get().to_string()) };
        self.subscribe(req, route, call, guard).await
    }

    /// `eth_subscribe` over WebSocket: plugins may refuse or rewrite a subscription; the
    /// subscription itself is proxied, once the call as the chain passes it on is checked as any
    /// call to the node.
    async fn subscribe(self, req: Request<'_>, route: Arc<Route>, call: Call, guard: Option<Guard>) -> MethodResponse {
        let ctx = self.state.context(&route);
        let guard = guard.map(Arc::new);
        let upstream = guard_or_pool(&route, guard.as_ref());
        match route.instance.chain.admit(&ctx, call, &upstream).await {
            Ok(call) => {
                if let Some(guard) = &guard
                    && let Err(refusal) = guard.check(&call)
                {
                    return MethodResponse::error(req.id, error(refusal.code, refusal.message));
                }
                let params = call.params.and_then(|p| RawValue::from_string(p).ok());
                let req = Request { method: call.method.into(), params: params.map(std::borrow::Cow::Owned), ..req };
                self.inner.call(req).await
            }
            Err(outcome) => response(req.id, outcome, self.state.max_response_bytes),
        }
    }

    /// A notification: run without an answer over HTTP (the front service has made sure it
    /// carried no id). Over WebSocket jsonrpsee also takes a call whose id it cannot hold (`-1`,
    /// `1.5`, `true`) for a notification; since a call with an id must never run unanswered, it
    /// is answered -32600 (id null) and not run.
    async fn notify(self, n: Notification<'_>) -> Option<MethodResponse> {
        let caller = n.extensions.get::<Caller>();
        if caller.is_some_and(|caller| caller.websocket) {
            return Some(MethodResponse::error(Id::Null, error(errors::INVALID_REQUEST, WS_NOTIFICATION)));
        }
        let allowlist = caller.and_then(|caller| caller.allowlist.as_ref());
        if let Some(route) = self.state.route(&n.extensions) {
            if check_entry(&route, allowlist, &n.method, n.params.as_deref()).is_err()
                || over_quota(&route, caller, &n.method, None).is_some()
            {
                return None;
            }
            let guard = Guard::new(&route.instance.upstream, route.instance.policy.as_ref(), allowlist);
            let call = Call { method: n.method.to_string(), params: n.params.as_ref().map(|p| p.get().to_string()) };
            let state = &self.state;
            let work = async {
                let started = std::time::Instant::now();
                let (_, blame) = run(state, &route, call, guard).await;
                record_bytes(&route, &n.method, blame, started, 0);
            };
            if REQUEST_BUDGET.try_with(|_| ()).is_ok() {
                work.await
            } else {
                REQUEST_BUDGET.scope(state.budget.request(&route.instance.budget), work).await
            }
        }
        None
    }
}

impl<S> RpcServiceT for ChainRpc<S>
where
    S: InnerService,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, req: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.clone().handle(req)
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        use futures::StreamExt as _;
        let this = self.clone();
        // Every entry carries the request's extensions: the first says whose batch it is.
        let route = batch.iter().find_map(|entry| entry.as_ref().ok()).and_then(|e| this.state.route(e.extensions()));
        async move {
            let limit = this.state.max_response_bytes;
            let concurrency = this.state.batch_concurrency.max(1);
            let answer = async {
                // Collected first: the stream then holds the entries' futures, not the closure.
                let entries: Vec<_> = batch
                    .into_iter()
                    .map(|entry| {
                        let this = this.clone();
                        async move {
                            match entry {
                                Ok(BatchEntry::Call(req)) => Some(this.handle(req).await),
                                Ok(BatchEntry::Notification(n)) => this.notify(n).await,
                                Err(err) => {
                                    let (err, id) = err.into_parts();
                                    Some(MethodResponse::error(id, err))
                                }
                            }
                        }
                    })
                    .collect();
                // In order, a bounded number at a time, each appended as it completes.
                let mut answers = futures::stream::iter(entries).buffered(concurrency);
                let mut builder = BatchResponseBuilder::new_with_limit(limit);
                let mut answered = false;
                while let Some(response) = answers.next().await {
                    if REQUEST_BUDGET.try_with(|budget| budget.is_over()).unwrap_or(false) {
                        // Dropping the stream cancels the entries still running.
                        return batch_too_large(limit);
                    }
                    if let Some(response) = response {
                        answered = true;
                        if builder.append(response).is_err() {
                            return batch_too_large(limit);
                        }
                    }
                }
                if answered { MethodResponse::from_batch(builder.finish()) } else { MethodResponse::notification() }
            };
            match route {
                Some(route) => REQUEST_BUDGET.scope(this.state.budget.request(&route.instance.budget), answer).await,
                // A revoked key: each entry is refused on its own.
                None => answer.await,
            }
        }
    }

    fn notification<'a>(&self, n: Notification<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let this = self.clone();
        async move { this.notify(n).await.unwrap_or_else(MethodResponse::notification) }
    }
}

/// The work of one call that is not a WebSocket subscription, wherever it came from (jsonrpsee's
/// middleware above, or the lean path of a single call over HTTP in `post`): the route re-checked
/// (revocation), the plan's method rules and the binding's allowlist, the chain under the
/// deadline, the metrics, the answer within the response limit; all within the request's budget
/// (a batch's, when the call is one of its entries; else its own).
pub(crate) async fn answer(state: &RpcState, req: Request<'_>) -> MethodResponse {
    let Some(route) = state.route(&req.extensions) else {
        return MethodResponse::error(req.id, error(errors::UNAUTHORIZED, "the key was revoked"));
    };
    let caller = req.extensions.get::<Caller>();
    let allowlist = caller.and_then(|caller| caller.allowlist.as_ref());
    // With an empty chain the guard checks the call just before the node, with the same
    // rules and the same answers: checking it here too would read its params twice.
    if !route.instance.chain.entries().is_empty()
        && let Err(refusal) = check_entry(&route, allowlist, &req.method, req.params.as_deref())
    {
        let answer = MethodResponse::error(req.id, error(refusal.code, refusal.message));
        record(&route, &req.method, Some(Blame::Rule), std::time::Instant::now(), &answer);
        return answer;
    }
    if let Some(refused) = over_quota(&route, caller, &req.method, Some(&req.id)) {
        return refused;
    }
    let guard = Guard::new(&route.instance.upstream, route.instance.policy.as_ref(), allowlist);
    let call = Call { method: req.method.to_string(), params: req.params.as_ref().map(|p| p.get().to_string()) };
    let answer = async {
        let started = std::time::Instant::now();
        let (outcome, blame) = run(state, &route, call, guard).await;
        let answer = response(req.id, outcome, state.max_response_bytes);
        record(&route, &req.method, blame, started, &answer);
        answer
    };
    if REQUEST_BUDGET.try_with(|_| ()).is_ok() {
        answer.await
    } else {
        REQUEST_BUDGET.scope(state.budget.request(&route.instance.budget), answer).await
    }
}

/// The answer to a batch whose answers passed the response limit.
pub(crate) fn batch_too_large(limit: usize) -> MethodResponse {
    crate::telemetry::metrics().record_call_refusal("response_bytes");
    let data = serde_json::json!({"reason": "response_bytes", "limit": limit});
    let message = format!("the batch response is over the limit of {limit} bytes");
    MethodResponse::error(Id::Null, ErrorObject::owned(errors::OVERSIZED_BATCH_RESPONSE, message, Some(data)))
}

/// The message of the answer to a WebSocket message jsonrpsee took for a notification.
const WS_NOTIFICATION: &str =
    "Invalid request: over WebSocket every call needs an id that is a string, an unsigned integer or null";

/// Counts a finished call in the metrics and in its binding's usage (method, compute units,
/// outcome class, answer bytes), by the blame its failer attached (`None`: it succeeded); see
/// [`crate::call::Blame`]. Every path that answers a call ends here.
fn record(route: &Route, method: &str, blame: Option<Blame>, started: std::time::Instant, answer: &MethodResponse) {
    record_bytes(route, method, blame, started, answer.as_json().get().len());
}

/// [`record`], for a call answered with `bytes` (a notification: none).
fn record_bytes(route: &Route, method: &str, blame: Option<Blame>, started: std::time::Instant, bytes: usize) {
    let class = blame.map_or("ok", Blame::class);
    crate::telemetry::metrics().record_call(&route.instance.instance_id, method, class, started.elapsed());
    crate::usage::meter(&route.instance.usage, &route.meter, method, class, bytes);
}

/// The answer to a call over its binding's or instance's quota (-32005, `data.reason =
/// "quota"`), metered as refused by a limit; `None` when the call may run. Tells the HTTP
/// request whether its calls were refused for a quota (for its 429). No lock, no store query.
fn over_quota(route: &Route, caller: Option<&Caller>, method: &str, id: Option<&Id<'_>>) -> Option<MethodResponse> {
    let signal = caller.and_then(|caller| caller.quota.as_deref());
    if let Some(signal) = signal {
        signal.calls.fetch_add(1, Ordering::AcqRel);
    }
    let refusal = crate::usage::admit(&route.instance.usage, &route.meter).err()?;
    if let Some(signal) = signal {
        signal.refused.fetch_add(1, Ordering::AcqRel);
        signal.retry_after_ms.fetch_max(refusal.retry_after_ms, Ordering::AcqRel);
    }
    let error = ErrorObject::owned(errors::LIMIT_EXCEEDED, refusal.message(), Some(refusal.data()));
    let answer = MethodResponse::error(id.cloned().unwrap_or(Id::Null), error);
    let bytes = if id.is_some() { answer.as_json().get().len() } else { 0 };
    record_bytes(route, method, Some(Blame::Limit), std::time::Instant::now(), bytes);
    Some(answer)
}

/// The plan's method rules and the binding's checks of a call on its way in (see
/// [`Allowlist::check_entry`]): before any plugin, without a store query.
fn check_entry(
    route: &Route,
    allowlist: Option<&Arc<Allowlist>>,
    method: &str,
    params: Option<&RawValue>,
) -> Result<(), Refusal> {
    if let Some(plan) = route.instance.policy.as_deref() {
        plan.check_plan(method)?;
    }
    if let Some(allowlist) = allowlist {
        allowlist.check_entry(method, params.map(RawValue::get))?;
    }
    Ok(())
}

/// What the chain calls the node through: the guard of the call's rules, else the pool itself.
fn guard_or_pool(route: &Route, guard: Option<&Arc<Guard>>) -> Arc<dyn Upstream> {
    match guard {
        Some(guard) => guard.clone(),
        None => route.instance.upstream.clone(),
    }
}

/// Runs a call through the route's chain under the instance's deadline, every call to the node
/// through the guard when there is one. An empty chain goes straight to the upstream (which
/// applies the deadline itself), without building the plugins' context. Gives the outcome and,
/// when it failed, who is to blame.
async fn run(state: &RpcState, route: &Route, call: Call, guard: Option<Guard>) -> (Outcome, Option<Blame>) {
    use tracing::Instrument as _;
    let id = state.request_id();
    let span =
        tracing::debug_span!("rpc", request_id = %id, instance = %route.instance.instance_id, method = %call.method);
    crate::call::judged(id, run_call(state, route, call, guard)).instrument(span).await
}

async fn run_call(state: &RpcState, route: &Route, call: Call, guard: Option<Guard>) -> Outcome {
    let chain = &route.instance.chain;
    if chain.entries().is_empty() {
        return match guard {
            Some(guard) => guard.send(&call).await,
            None => route.instance.upstream.send(&call).await,
        };
    }
    let upstream = guard_or_pool(route, guard.map(Arc::new).as_ref());
    let deadline = route.instance.upstream.deadline();
    let outcome = tokio::time::timeout(deadline, chain.run(&state.context(route), call, &upstream)).await;
    match outcome {
        Ok(outcome) => outcome,
        Err(_) => Err(crate::call::blamed(
            crate::call::RpcError {
                code: errors::DEADLINE_EXCEEDED,
                message: format!("the call did not finish within {} ms", deadline.as_millis()),
                data: None,
            },
            Blame::Node,
        )),
    }
}

fn error(code: i32, message: &str) -> ErrorObjectOwned {
    ErrorObject::owned(code, message.to_string(), None::<()>)
}

/// The JSON-RPC response for an outcome. A plugin's result that is not valid JSON is an error.
fn response(id: Id<'_>, outcome: Outcome, max_response_bytes: usize) -> MethodResponse {
    match outcome {
        Ok(json) => match RawValue::from_string(json) {
            Ok(raw) => MethodResponse::response(id, ResponsePayload::success(raw), max_response_bytes),
            Err(_) => {
                MethodResponse::error(id, error(errors::INTERNAL_ERROR, "a plugin returned a result that is not JSON"))
            }
        },
        Err(err) => {
            let data = err.data.and_then(|d| RawValue::from_string(d).ok());
            MethodResponse::error(id, ErrorObject::owned(err.code, err.message, data))
        }
    }
}

/// The module of registered methods: only the subscription proxy.
pub(crate) fn subscription_module(state: Arc<RpcState>) -> RpcModule<()> {
    let mut module = RpcModule::new(());
    module
        .register_subscription(
            "eth_subscribe",
            "eth_subscription",
            "eth_unsubscribe",
            move |params, pending, _, ext| {
                let state = state.clone();
                let params = params.as_str().and_then(|p| RawValue::from_string(p.to_string()).ok());
                async move {
                    let Some((caller, super::Access { route, revoked, .. })) =
                        ext.get::<Caller>().and_then(|caller| Some((caller, state.routes.access(&caller.digest)?)))
                    else {
                        pending.reject(error(errors::UNAUTHORIZED, "the key was revoked")).await;
                        return;
                    };
                    let slot = match state.subscription_slots.take(&route.instance.instance_id, &caller.digest) {
                        Ok(slot) => slot,
                        Err(refused) => {
                            pending.reject(subscriptions::refusal(&state.subscription_slots, refused)).await;
                            return;
                        }
                    };
                    let watch = caller.watch.clone();
                    subscriptions::relay(&state.node_sockets, route, revoked, watch, params, pending).await;
                    drop(slot);
                }
            },
        )
        .expect("eth_subscribe is registered once");
    module
}

/// Subscription ids in the form Ethereum clients use: `0x` and 32 hex digits.
#[derive(Debug)]
pub(crate) struct HexIdProvider;

impl IdProvider for HexIdProvider {
    fn next_id(&self) -> SubscriptionId<'static> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        SubscriptionId::Str(format!("0x{}", hex::encode(bytes)).into())
    }
}
