//! An instance's chain of plugins, and the semantics of running a call through it.
//!
//! A plugin that did not select a call's method (`select-methods`) is passed by for that call,
//! as if it were not in the chain: no wasm call, no turn of the share.
//!
//! `on-call` runs in order (for the plugins that declared the hook); `forward` hands the (possibly rewritten) call to the next plugin and,
//! after the last, to the upstream; `respond` ends the way in. `on-result` then runs in reverse
//! for exactly the plugins that forwarded the call and declared the hook, each seeing the call
//! as it forwarded it.
//!
//! When a plugin fails (trap, limit): fail-closed (the default) turns the call's outcome into
//! the failure's JSON-RPC error, which the plugins before it still see in `on-result`;
//! fail-open skips that plugin for this call, as if it were not in the chain.
//!
//! Each instance has a [`Share`] of the runtime: at most `calls` of its plugin calls (exports)
//! run at once, across all its plugins and connections. A call that finds the share taken waits
//! up to `wait` for a turn, then gets [`SHARE_EXHAUSTED_CODE`] with `data.reason =
//! "instance_plugin_calls"`. So a tenant whose plugins are slow, or loop until their budget, can
//! keep at most `calls` slices runnable: with the one-tick slices of the epoch callback, another
//! tenant's call waits at most `calls` ticks (1 ms each by default) per busy tenant on its thread.
//! A share refusal is not a plugin failure: fail-open does not skip it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::errors::PluginFailure;
use super::pool::InstancePool;
use super::state::Upstream;
use super::{Call, CallContext, Decision, Hooks, Outcome, RpcError};
use crate::call::Blame;

/// JSON-RPC code of a call refused because its instance's share of plugin calls is taken.
pub const SHARE_EXHAUSTED_CODE: i32 = crate::call::codes::LIMIT_EXCEEDED;

/// An instance's share of the plugin runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Plugin calls (exports) of the instance running at once.
    pub calls: u32,
    /// Longest a call waits for a turn before it is refused.
    pub wait: Duration,
}

impl Share {
    /// The share the gateway's settings give each instance.
    pub fn from_settings(gateway: &crate::config::GatewaySettings) -> Self {
        Share { calls: gateway.plugin_calls_per_instance, wait: Duration::from_millis(gateway.plugin_queue_ms) }
    }

    /// The share of one instance: its plan's bound (else the gateway's), or less when the
    /// instance's `plugin_calls` parameter asks for less.
    pub fn for_instance(
        gateway: &crate::config::GatewaySettings,
        plan: Option<&crate::config::PlanDecl>,
        parameters: Option<&serde_json::Value>,
    ) -> Self {
        let mut share = Share::from_settings(gateway);
        if let Some(bound) = plan.and_then(|p| p.plugin_calls_per_instance) {
            share.calls = bound;
        }
        if let Some(asked) = parameters.and_then(|p| p.get(PLUGIN_CALLS_PARAMETER)).and_then(|v| v.as_u64()) {
            share.calls = share.calls.min(u32::try_from(asked).unwrap_or(u32::MAX)).max(1);
        }
        share
    }
}

/// The instance parameter that lowers an instance's share below its plan's bound.
pub const PLUGIN_CALLS_PARAMETER: &str = "plugin_calls";

impl Default for Share {
    fn default() -> Self {
        Share { calls: 4, wait: Duration::from_millis(1000) }
    }
}

/// One plugin of a chain.
#[derive(Clone)]
pub struct ChainEntry {
    /// The plugin's warm copies, configured for this instance.
    pub pool: Arc<InstancePool>,
    /// Skip the plugin for a call it fails on, instead of failing the call.
    pub fail_open: bool,
}

/// The ordered plugins of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Chain {
    entries: Arc<[ChainEntry]>,
    share: Share,
    turns: Arc<Semaphore>,
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new(Vec::new())
    }
}

impl Chain {
    /// A chain of these plugins, in this order, with the default [`Share`].
    pub fn new(entries: Vec<ChainEntry>) -> Self {
        Chain::with_share(entries, Share::default())
    }

    /// A chain of these plugins, in this order, with this share of the runtime.
    pub fn with_share(entries: Vec<ChainEntry>, share: Share) -> Self {
        let turns = Arc::new(Semaphore::new(share.calls.max(1) as usize));
        Chain { entries: entries.into(), share, turns }
    }

    /// The instance's share of the runtime.
    pub fn share(&self) -> Share {
        self.share
    }

    /// A turn to run one plugin call, or the error that refuses the call.
    async fn turn(&self, ctx: &CallContext) -> Result<SemaphorePermit<'_>, RpcError> {
        if let Ok(permit) = self.turns.try_acquire() {
            return Ok(permit);
        }
        match tokio::time::timeout(self.share.wait, self.turns.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                crate::telemetry::metrics().record_plugin_refusal("instance_plugin_calls");
                tracing::debug!(instance = %ctx.instance_id, limit = self.share.calls, "plugin call refused: the instance's share is taken");
                Err(crate::call::blamed(
                    RpcError {
                        code: SHARE_EXHAUSTED_CODE,
                        message: format!(
                            "this instance already runs {} plugin calls at once (its share); retry later",
                            self.share.calls
                        ),
                        data: Some(
                            serde_json::json!({"reason": "instance_plugin_calls", "limit": self.share.calls})
                                .to_string(),
                        ),
                    },
                    Blame::Limit,
                ))
            }
        }
    }

    /// The plugins, in order.
    pub fn entries(&self) -> &[ChainEntry] {
        &self.entries
    }

    /// Runs one call through the chain and, unless a plugin answers it, the upstream.
    pub async fn run(&self, ctx: &CallContext, call: Call, upstream: &Arc<dyn Upstream>) -> Outcome {
        let inbound = self.inbound(ctx, &call, upstream).await;
        let mut outcome = match inbound.answer {
            Some(outcome) => outcome,
            None => upstream.call(inbound.last().unwrap_or(&call)).await,
        };
        for (index, call) in inbound.forwarded.iter().rev() {
            let entry = &self.entries[*index];
            // The node has answered (a transaction may be in): the outcome must not be replaced
            // by a "retry later", so on-result waits for its turn, within the call's deadline.
            let Ok(turn) = self.turns.acquire().await else { return outcome };
            let started = std::time::Instant::now();
            let result = entry.pool.on_result(ctx, call, &outcome, upstream).await;
            drop(turn);
            entry.pool.record_hook("on_result", started.elapsed());
            match result {
                Ok(next) => {
                    if let Err(error) = &next {
                        crate::call::claim(error, Blame::Rule);
                    }
                    outcome = next
                }
                Err(failure) if entry.fail_open => log_skipped(&failure, ctx),
                Err(failure) => outcome = Err(failure.to_blamed_rpc_error()),
            }
        }
        outcome
    }

    /// Runs only the way in: the call as the chain would pass it to the node, or the answer of
    /// the plugin that responded (or failed). `on-result` hooks are not called. Used for
    /// `eth_subscribe`, whose answer is a stream rather than an outcome.
    pub async fn admit(&self, ctx: &CallContext, call: Call, upstream: &Arc<dyn Upstream>) -> Result<Call, Outcome> {
        let mut inbound = self.inbound(ctx, &call, upstream).await;
        if let Some(answer) = inbound.answer {
            return Err(answer);
        }
        Ok(inbound.rewritten.take().or_else(|| inbound.forwarded.pop().map(|(_, call)| call)).unwrap_or(call))
    }

    async fn inbound(&self, ctx: &CallContext, call: &Call, upstream: &Arc<dyn Upstream>) -> Inbound {
        // No room until a plugin with an `on-result` hook forwards the call (most calls: none).
        let mut inbound = Inbound { forwarded: Vec::new(), rewritten: None, answer: None };
        for (index, entry) in self.entries.iter().enumerate() {
            let hooks = entry.pool.hooks();
            let current = inbound.last().unwrap_or(call);
            if !entry.pool.sees(&current.method) {
                // Not selected: the plugin is passed by as if it were not in the chain.
                continue;
            }
            if !hooks.contains(Hooks::ON_CALL) {
                if hooks.contains(Hooks::ON_RESULT) {
                    let same = current.clone();
                    inbound.rewritten = None;
                    inbound.forwarded.push((index, same));
                }
                continue;
            }
            let turn = match self.turn(ctx).await {
                Ok(turn) => turn,
                Err(refused) => {
                    inbound.answer = Some(Err(refused));
                    break;
                }
            };
            let started = std::time::Instant::now();
            let result = entry.pool.on_call(ctx, current, upstream).await;
            drop(turn);
            entry.pool.record_hook("on_call", started.elapsed());
            let decisions = entry.pool.decisions();
            match result {
                Ok(Decision::Forward(next)) => {
                    decisions.forwarded.fetch_add(1, Ordering::Relaxed);
                    if hooks.contains(Hooks::ON_RESULT) {
                        inbound.rewritten = None;
                        inbound.forwarded.push((index, next));
                    } else {
                        inbound.rewritten = Some(next);
                    }
                }
                Ok(Decision::Respond(outcome)) => {
                    match &outcome {
                        Ok(_) => decisions.answered.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            crate::call::claim(error, Blame::Rule);
                            decisions.refused.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    inbound.answer = Some(outcome);
                    break;
                }
                Err(failure) if entry.fail_open => log_skipped(&failure, ctx),
                Err(failure) => {
                    inbound.answer = Some(Err(failure.to_blamed_rpc_error()));
                    break;
                }
            }
        }
        inbound
    }
}

/// The state of a call after the way in.
struct Inbound {
    /// The call as each plugin with an `on-result` hook passed it on, with its index.
    forwarded: Vec<(usize, Call)>,
    /// The call as the latest plugin passed it on, when that plugin has no `on-result` hook.
    rewritten: Option<Call>,
    /// The answer of a plugin that responded or failed.
    answer: Option<Outcome>,
}

impl Inbound {
    /// The call as the last forwarding plugin passed it on (`None`: unchanged).
    fn last(&self) -> Option<&Call> {
        self.rewritten.as_ref().or(self.forwarded.last().map(|(_, call)| call))
    }
}

fn log_skipped(failure: &PluginFailure, ctx: &CallContext) {
    tracing::debug!(instance = %ctx.instance_id, request = %ctx.request_id, "fail-open plugin skipped: {failure}");
}
