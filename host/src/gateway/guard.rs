//! # The checks at the node boundary
//!
//! Owns the one place where a call is checked against its plan's method rules and its binding's
//! allowlist on its way to the node: [`Guard`] is an [`Upstream`] that wraps the instance's pool.
//! Every call that reaches the node on a binding's behalf goes through it: the call of an empty
//! chain, the chain's forward (after every plugin may have rewritten it), and each plugin's
//! `upstream` import (a plugin answering a method of its own cannot read what the key may not).
//! Answers that may carry logs of filters made elsewhere are checked on their way back.
//!
//! The decisions themselves are in [`super::allowlist`]; this module only applies them. A call
//! whose binding and plan restrict nothing never meets a `Guard` (no allocation, no check).
//!
//! Must not: do anything but check and pass on; a refusal is the JSON-RPC error of the rule.

use std::pin::Pin;
use std::sync::Arc;

use super::allowlist::{Allowlist, MethodRules, Refusal};
use crate::call::{Call, Outcome, RpcError, Upstream};
use crate::upstream::UpstreamPool;

/// An instance's upstream, behind its plan's method rules and one binding's allowlist.
pub(crate) struct Guard {
    pub upstream: Arc<UpstreamPool>,
    /// The plan's method rules (`None`: the plan has none).
    pub plan: Option<Arc<MethodRules>>,
    /// The binding's allowlist (`None`: it restricts no call).
    pub binding: Option<Arc<Allowlist>>,
}

impl Guard {
    /// A guard for these rules; `None` when neither restricts a call.
    pub fn new(
        upstream: &Arc<UpstreamPool>,
        plan: Option<&Arc<MethodRules>>,
        binding: Option<&Arc<Allowlist>>,
    ) -> Option<Guard> {
        let binding = binding.filter(|b| b.restricts_calls());
        if plan.is_none() && binding.is_none() {
            return None;
        }
        Some(Guard { upstream: upstream.clone(), plan: plan.cloned(), binding: binding.cloned() })
    }

    /// Whether `call` may reach the node.
    pub fn check(&self, call: &Call) -> Result<(), Refusal> {
        if let Some(plan) = &self.plan {
            plan.check_plan(&call.method)?;
        }
        if let Some(binding) = &self.binding {
            binding.check_node_call(&call.method, call.params.as_deref())?;
        }
        Ok(())
    }

    /// Checks, sends, and checks the answer.
    pub async fn send(&self, call: &Call) -> Outcome {
        self.check(call).map_err(refused)?;
        let outcome = self.upstream.send(call).await;
        if let (Ok(result), Some(binding)) = (&outcome, &self.binding) {
            binding.check_answer(&call.method, result).map_err(refused)?;
        }
        outcome
    }
}

/// The JSON-RPC error of a refusal.
pub(crate) fn refused(refusal: Refusal) -> RpcError {
    crate::call::blamed(
        RpcError { code: refusal.code, message: refusal.message.to_string(), data: None },
        crate::call::Blame::Rule,
    )
}

impl Upstream for Guard {
    fn call<'a>(&'a self, call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.send(call))
    }
}
