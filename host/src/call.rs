//! The call vocabulary: what a JSON-RPC call, its outcome and its error are, who may answer one
//! ([`Upstream`]), every error code ovsb answers with ([`codes`]), and who is to blame when a
//! call fails ([`Blame`]).
//!
//! A leaf: it depends on no other module of the crate, and the plugin runtime, the upstream
//! pools, the gateway, the budgets and the drivers all speak it. The types are the ones the
//! plugin contract (`wit/plugin.wit`, interface `types`) defines, generated here once; the plugin
//! runtime's bindings reuse them (`with` in `plugins/bindings.rs`), so a call crosses from the
//! gateway into a plugin and back without conversion.
//!
//! **Blame.** Whoever fails a call says so where it fails it, with [`blame`]: the upstream pool
//! (the node is unreachable or too slow), a budget (a limit of the plan or the gateway), a
//! plugin's refusal or failure, an allowlist or a plan rule. The gateway reads the verdict once
//! the call is over ([`verdict`]) and counts it by class; it never guesses from the code, so a
//! node's own -32003 ("transaction rejected", the node's answer to a bad call) is the client's,
//! and a rate-limit plugin's -32005 is a rule the customer set, not a limit of ovsb's.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;

mod wit {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        interfaces: "import ovsb:plugin/types@0.1.0;",
        additional_derives: [PartialEq, Eq],
    });
}

/// The bindings of the plugin contract's `types` interface (the plugin runtime's bindings map
/// the interface here).
pub use wit::ovsb::plugin::types as contract;
pub use wit::ovsb::plugin::types::{Call, Context, Decision, Hooks, Level, Outcome, RpcError};

/// Who is calling, for the plugins of one call: the contract's [`Context`] with its fields
/// shared, not copied (the instance's id, the binding's and the plan's are the route's own, the
/// request id is the call's scope's), so that a call costs no copies of them. A plugin that asks
/// (`host.call-context`) gets the contract's [`Context`], made then ([`CallContext::contract`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// The service instance whose endpoint was called.
    pub instance_id: std::sync::Arc<str>,
    /// The binding whose credentials were used, if any.
    pub binding_id: Option<std::sync::Arc<str>>,
    /// The plan id of the instance.
    pub plan: std::sync::Arc<str>,
    /// The call's id.
    pub request_id: std::sync::Arc<str>,
}

impl CallContext {
    /// The contract's [`Context`], as a plugin gets it.
    pub fn contract(&self) -> Context {
        Context {
            instance_id: self.instance_id.to_string(),
            binding_id: self.binding_id.as_deref().map(str::to_string),
            plan: self.plan.to_string(),
            request_id: self.request_id.to_string(),
        }
    }
}

impl From<Context> for CallContext {
    fn from(context: Context) -> Self {
        CallContext {
            instance_id: context.instance_id.into(),
            binding_id: context.binding_id.map(Into::into),
            plan: context.plan.into(),
            request_id: context.request_id.into(),
        }
    }
}

/// Where a call goes to be answered by the node: the instance's upstream pool, or a guard in
/// front of it that checks the call first.
///
/// Implementations must bound the call by a deadline of their own.
pub trait Upstream: Send + Sync + 'static {
    /// Sends one call to the node and returns its outcome; node errors pass through unchanged.
    fn call<'a>(&'a self, call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
}

/// Every JSON-RPC error code ovsb answers with, and which [`Blame`] it normally carries. The
/// README's table of codes lists exactly these (a unit test checks it).
pub mod codes {
    use super::Blame;

    /// Malformed JSON (jsonrpsee).
    pub const PARSE_ERROR: i32 = -32700;
    /// Invalid request: JSON-RPC's own code.
    pub const INVALID_REQUEST: i32 = -32600;
    /// Internal error (a bug), and a plugin failure (with `data.reason`): JSON-RPC's own code.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// The request carried no key, or a key that is unknown or revoked (HTTP 401).
    pub const UNAUTHORIZED: i32 = -32001;
    /// No upstream node could be reached; `data.cause` says what the last try met.
    pub const UPSTREAM_UNAVAILABLE: i32 = -32002;
    /// The call did not finish within the instance's deadline.
    pub const DEADLINE_EXCEEDED: i32 = -32003;
    /// A limit was exceeded; retry later. `data.reason` names the limit.
    pub const LIMIT_EXCEEDED: i32 = -32005;
    /// Too many subscriptions on one WebSocket (jsonrpsee's).
    pub const TOO_MANY_SUBSCRIPTIONS: i32 = jsonrpsee::types::error::TOO_MANY_SUBSCRIPTIONS_CODE;
    /// The request body is over the limit (jsonrpsee's code, also used by ovsb).
    pub const OVERSIZED_REQUEST: i32 = jsonrpsee::types::error::OVERSIZED_REQUEST_CODE;
    /// The response is over the limit (jsonrpsee's code, also used by ovsb).
    pub const OVERSIZED_RESPONSE: i32 = jsonrpsee::types::error::OVERSIZED_RESPONSE_CODE;
    /// A batch with too many calls (jsonrpsee's).
    pub const BATCH_TOO_LARGE: i32 = jsonrpsee::types::error::TOO_BIG_BATCH_REQUEST_CODE;
    /// A batch's answers passed the response limit; the batch was cut short (jsonrpsee's code).
    pub const OVERSIZED_BATCH_RESPONSE: i32 = jsonrpsee::types::error::TOO_BIG_BATCH_RESPONSE_CODE;
    /// A transaction was sent but the node's answer was lost: it may or may not be in.
    pub const SEND_OUTCOME_UNKNOWN: i32 = -32020;
    /// The request's `Origin` is not allowed (HTTP 403).
    pub const ORIGIN_NOT_ALLOWED: i32 = -32051;
    /// The method is not allowed by the binding's or the plan's rules.
    pub const METHOD_NOT_ALLOWED: i32 = -32052;
    /// The call touches a contract the binding may not touch, or one ovsb cannot name.
    pub const CONTRACT_NOT_ALLOWED: i32 = -32053;

    /// One code ovsb answers with: its number, its constant's name, and who is normally to
    /// blame (a call's verdict is what its failer said, see [`super::blame`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Code {
        /// The JSON-RPC error code.
        pub code: i32,
        /// The constant's name.
        pub name: &'static str,
        /// Who is normally to blame.
        pub blame: Blame,
    }

    /// Every code, in the order of the README's table.
    pub const ALL: &[Code] = &[
        Code { code: PARSE_ERROR, name: "PARSE_ERROR", blame: Blame::Client },
        Code { code: INVALID_REQUEST, name: "INVALID_REQUEST", blame: Blame::Client },
        Code { code: INTERNAL_ERROR, name: "INTERNAL_ERROR", blame: Blame::Ovsb },
        Code { code: UNAUTHORIZED, name: "UNAUTHORIZED", blame: Blame::Client },
        Code { code: UPSTREAM_UNAVAILABLE, name: "UPSTREAM_UNAVAILABLE", blame: Blame::Node },
        Code { code: DEADLINE_EXCEEDED, name: "DEADLINE_EXCEEDED", blame: Blame::Node },
        Code { code: LIMIT_EXCEEDED, name: "LIMIT_EXCEEDED", blame: Blame::Limit },
        Code { code: TOO_MANY_SUBSCRIPTIONS, name: "TOO_MANY_SUBSCRIPTIONS", blame: Blame::Limit },
        Code { code: OVERSIZED_REQUEST, name: "OVERSIZED_REQUEST", blame: Blame::Limit },
        Code { code: OVERSIZED_RESPONSE, name: "OVERSIZED_RESPONSE", blame: Blame::Limit },
        Code { code: BATCH_TOO_LARGE, name: "BATCH_TOO_LARGE", blame: Blame::Limit },
        Code { code: OVERSIZED_BATCH_RESPONSE, name: "OVERSIZED_BATCH_RESPONSE", blame: Blame::Limit },
        Code { code: SEND_OUTCOME_UNKNOWN, name: "SEND_OUTCOME_UNKNOWN", blame: Blame::Node },
        Code { code: ORIGIN_NOT_ALLOWED, name: "ORIGIN_NOT_ALLOWED", blame: Blame::Rule },
        Code { code: METHOD_NOT_ALLOWED, name: "METHOD_NOT_ALLOWED", blame: Blame::Rule },
        Code { code: CONTRACT_NOT_ALLOWED, name: "CONTRACT_NOT_ALLOWED", blame: Blame::Rule },
    ];
}

/// Who is to blame for a call's failure: it picks the metric's outcome class (and, for usage,
/// whose account a refusal goes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The call itself: malformed, unauthorized, or answered with an error by the node (a
    /// revert, a rejected transaction).
    Client,
    /// A rule the customer or the operator set refused it: an allowlist, a plan's method rule,
    /// a plugin's own refusal (a rate limit, a method filter).
    Rule,
    /// A limit of the plan or the gateway (connections, shares, answer bytes, node sockets).
    Limit,
    /// A plugin failed (trap, time or memory budget).
    Plugin,
    /// The node: unreachable, failed mid-answer, or too slow for the deadline.
    Node,
    /// ovsb itself (a bug).
    Ovsb,
}

impl Blame {
    /// The `outcome` label of `ovsb_rpc_calls_total` for a call failed with this blame.
    pub fn class(self) -> &'static str {
        match self {
            Blame::Client => "error",
            Blame::Rule => "refused",
            Blame::Limit => "limit",
            Blame::Plugin => "plugin_failure",
            Blame::Node => "upstream_error",
            Blame::Ovsb => "internal",
        }
    }
}

/// Every `outcome` label of `ovsb_rpc_calls_total`: `ok`, then the class of each [`Blame`].
pub const OUTCOME_CLASSES: [&str; 7] =
    ["ok", "error", "refused", "limit", "plugin_failure", "upstream_error", "internal"];

/// What is kept about the call running in a scope: one task-local for the two, since each
/// scope costs a swap of a thread-local at every poll of the call's future.
struct CallScope {
    /// The call's id: plugins see it in their context, the node gets it as `X-Request-Id`.
    request_id: std::sync::Arc<str>,
    /// The verdict on the call: the code of the error it was failed with, and by whom.
    verdict: Cell<Option<(i32, Blame)>>,
}

tokio::task_local! {
    static CALL: CallScope;
}

/// `f` of the id of the call running in this scope (`None` out of a call's scope).
pub fn with_request_id<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    CALL.try_with(|call| f(&call.request_id)).ok()
}

/// The id of the call running in this scope, shared (`None` out of a call's scope).
pub fn request_id() -> Option<std::sync::Arc<str>> {
    CALL.try_with(|call| call.request_id.clone()).ok()
}

/// Says who failed the call running in this scope, and with which error. The last word
/// counts: a plugin that answers with its own error after the node failed takes the blame. Out
/// of a call's scope (a health check, a test) it does nothing.
pub fn blame(error: &RpcError, who: Blame) {
    let _ = CALL.try_with(|call| call.verdict.set(Some((error.code, who))));
}

/// Blames `who` for `error` unless someone already claimed an error with its code: a plugin that
/// passes on the node's failure (the same code) leaves the node to blame, one that answers with
/// its own error takes it.
pub fn claim(error: &RpcError, who: Blame) {
    let _ = CALL.try_with(|call| {
        if call.verdict.get().is_none_or(|(code, _)| code != error.code) {
            call.verdict.set(Some((error.code, who)));
        }
    });
}

/// [`blame`], passing the error on: `return Err(blamed(error, Blame::Node))`.
pub fn blamed(error: RpcError, who: Blame) -> RpcError {
    blame(&error, who);
    error
}

/// Runs one call's work in a scope of its own, under its request id, and gives its outcome with
/// who is to blame when it failed ([`verdict`]).
pub async fn judged<F: Future<Output = Outcome>>(request_id: std::sync::Arc<str>, work: F) -> (Outcome, Option<Blame>) {
    let scope = CallScope { request_id, verdict: Cell::new(None) };
    let (outcome, said) = CALL
        .scope(scope, async {
            let outcome = work.await;
            (outcome, CALL.with(|call| call.verdict.get()))
        })
        .await;
    let blame = verdict(&outcome, said);
    (outcome, blame)
}

/// Who is to blame for `outcome`, given what its failer said: `None` when it succeeded. An
/// error nobody claimed, or one whose code is not the claimed one (a plugin rewrote it), is the
/// node's answer passed on, or a plugin's: the client's, unless a plugin said otherwise.
pub fn verdict(outcome: &Outcome, said: Option<(i32, Blame)>) -> Option<Blame> {
    match (outcome, said) {
        (Ok(_), _) => None,
        (Err(error), Some((code, who))) if code == error.code => Some(who),
        (Err(_), _) => Some(Blame::Client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: i32) -> RpcError {
        RpcError { code, message: "m".into(), data: None }
    }

    #[test]
    fn the_verdict_is_what_the_failer_said_and_never_guessed_from_the_code() {
        // A node's own -32003 ("transaction rejected") is the client's, not a deadline.
        assert_eq!(verdict(&Err(err(codes::DEADLINE_EXCEEDED)), None), Some(Blame::Client));
        // The pool's own -32003 is the node's.
        let said = Some((codes::DEADLINE_EXCEEDED, Blame::Node));
        assert_eq!(verdict(&Err(err(codes::DEADLINE_EXCEEDED)), said), Some(Blame::Node));
        // A rate-limit plugin's -32005 is a rule; the gateway's own -32005 a limit.
        let rule = Some((codes::LIMIT_EXCEEDED, Blame::Rule));
        assert_eq!(verdict(&Err(err(codes::LIMIT_EXCEEDED)), rule), Some(Blame::Rule));
        // A plugin that rewrote the node's failure into its own error: not the node's.
        assert_eq!(verdict(&Err(err(3)), said), Some(Blame::Client));
        assert_eq!(verdict(&Ok("1".into()), said), None);
    }

    #[tokio::test]
    async fn blame_is_scoped_to_one_call_and_the_last_word_counts() {
        let (outcome, blame_of) = judged("a".into(), async {
            super::blame(&err(codes::UPSTREAM_UNAVAILABLE), Blame::Node);
            super::blame(&err(codes::LIMIT_EXCEEDED), Blame::Rule);
            Err(err(codes::LIMIT_EXCEEDED))
        })
        .await;
        assert_eq!((outcome.unwrap_err().code, blame_of), (codes::LIMIT_EXCEEDED, Some(Blame::Rule)));
        // Two calls side by side in one task (a batch) keep their own verdicts.
        let one = judged("b".into(), async {
            tokio::task::yield_now().await;
            Err(err(codes::UPSTREAM_UNAVAILABLE))
        });
        let two = judged("c".into(), async {
            super::blame(&err(codes::UPSTREAM_UNAVAILABLE), Blame::Node);
            tokio::task::yield_now().await;
            Err(err(codes::UPSTREAM_UNAVAILABLE))
        });
        let ((_, first), (_, second)) = tokio::join!(one, two);
        assert_eq!((first, second), (Some(Blame::Client), Some(Blame::Node)));
        // Out of scope, blaming does nothing (and does not panic).
        super::blame(&err(1), Blame::Ovsb);
    }

    #[test]
    fn every_code_is_listed_once_and_every_class_is_a_label() {
        let mut seen = std::collections::HashSet::new();
        for code in codes::ALL {
            assert!(seen.insert(code.code), "{} listed twice", code.code);
            assert!(OUTCOME_CLASSES.contains(&code.blame.class()));
        }
    }

    /// The README's table of codes ("Every error code the endpoint answers with") lists exactly
    /// the codes of [`codes::ALL`], in the same order.
    #[test]
    fn the_readme_lists_exactly_these_codes() {
        let readme = include_str!("../../README.md");
        let start = readme.find("Every error code the endpoint answers with:").expect("the README's table of codes");
        let listed: Vec<i32> = readme[start..]
            .lines()
            .skip(1)
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| line.split('|').nth(1)?.trim().parse().ok())
            .collect();
        let ours: Vec<i32> = codes::ALL.iter().map(|c| c.code).collect();
        assert_eq!(listed, ours, "README table of codes vs call::codes::ALL");
    }
}
