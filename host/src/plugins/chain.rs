//! An instance's chain of plugins, and the semantics of running a call through it.
//!
//! `on-call` runs in order (for the plugins that declared the hook); `forward` hands the (possibly rewritten) call to the next plugin and,
//! after the last, to the upstream; `respond` ends the way in. `on-result` then runs in reverse
//! for exactly the plugins that forwarded the call and declared the hook, each seeing the call
//! as it forwarded it.
//!
//! When a plugin fails (trap, limit): fail-closed (the default) turns the call's outcome into
//! the failure's JSON-RPC error, which the plugins before it still see in `on-result`;
//! fail-open skips that plugin for this call, as if it were not in the chain.

use std::sync::Arc;

use super::errors::PluginFailure;
use super::pool::InstancePool;
use super::state::Upstream;
use super::{Call, Context, Decision, Hooks, Outcome};

/// One plugin of a chain.
#[derive(Clone)]
pub struct ChainEntry {
    /// The plugin's warm copies, configured for this instance.
    pub pool: Arc<InstancePool>,
    /// Skip the plugin for a call it fails on, instead of failing the call.
    pub fail_open: bool,
}

/// The ordered plugins of one instance. Cheap to clone.
#[derive(Clone, Default)]
pub struct Chain {
    entries: Arc<[ChainEntry]>,
}

impl Chain {
    /// A chain of these plugins, in this order.
    pub fn new(entries: Vec<ChainEntry>) -> Self {
        Chain { entries: entries.into() }
    }

    /// The plugins, in order.
    pub fn entries(&self) -> &[ChainEntry] {
        &self.entries
    }

    /// Runs one call through the chain and, unless a plugin answers it, the upstream.
    pub async fn run(&self, ctx: &Arc<Context>, call: Call, upstream: &Arc<dyn Upstream>) -> Outcome {
        // The call as each plugin with an `on-result` hook passed it on, with its index.
        let mut forwarded: Vec<(usize, Call)> = Vec::with_capacity(self.entries.len());
        // The call as the last plugin passed it on, when that plugin has no `on-result` hook.
        let mut rewritten: Option<Call> = None;
        let mut answer: Option<Outcome> = None;
        for (index, entry) in self.entries.iter().enumerate() {
            let hooks = entry.pool.hooks();
            let current = rewritten.as_ref().or(forwarded.last().map(|(_, call)| call)).unwrap_or(&call);
            if !hooks.contains(Hooks::ON_CALL) {
                if hooks.contains(Hooks::ON_RESULT) {
                    let same = current.clone();
                    rewritten = None;
                    forwarded.push((index, same));
                }
                continue;
            }
            match entry.pool.on_call(ctx, current, upstream).await {
                Ok(Decision::Forward(next)) if hooks.contains(Hooks::ON_RESULT) => {
                    rewritten = None;
                    forwarded.push((index, next));
                }
                Ok(Decision::Forward(next)) => rewritten = Some(next),
                Ok(Decision::Respond(outcome)) => {
                    answer = Some(outcome);
                    break;
                }
                Err(failure) if entry.fail_open => log_skipped(&failure, ctx),
                Err(failure) => {
                    answer = Some(Err(failure.to_rpc_error()));
                    break;
                }
            }
        }
        let mut outcome = match answer {
            Some(outcome) => outcome,
            None => {
                let last = rewritten.as_ref().or(forwarded.last().map(|(_, call)| call)).unwrap_or(&call);
                upstream.call(last).await
            }
        };
        for (index, call) in forwarded.iter().rev() {
            let entry = &self.entries[*index];
            match entry.pool.on_result(ctx, call, &outcome, upstream).await {
                Ok(next) => outcome = next,
                Err(failure) if entry.fail_open => log_skipped(&failure, ctx),
                Err(failure) => outcome = Err(failure.to_rpc_error()),
            }
        }
        outcome
    }
}

fn log_skipped(failure: &PluginFailure, ctx: &Context) {
    tracing::debug!(instance = %ctx.instance_id, request = %ctx.request_id, "fail-open plugin skipped: {failure}");
}
