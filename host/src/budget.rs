//! # Budgets a request takes from as it is served
//!
//! Owns the accounting of what one request may hold while the gateway serves it, checked as each
//! thing is taken, never after:
//! - **answer bytes per request**: the bytes of the nodes' answers a request (a single call or a
//!   whole batch) has read, counted as they arrive against the response limit. The charge that
//!   passes the limit is refused, so a batch over the limit is cut holding about the limit;
//! - **answer bytes in flight**: one budget for the whole gateway, and a share of it per
//!   instance, so many requests at once cannot exhaust memory. Past either, the read waits up to
//!   `queue` for bytes to be given back, then is refused;
//! - **upstream calls in flight per instance**: an instance's share of the sockets to its nodes
//!   (each node's own cap is the upstream pool's);
//! - **upstream calls in flight in all**: what the descriptor budget leaves for node sockets;
//! - **node time per instance** ([`pace`]): an instance whose calls keep its node busy (slow
//!   answers) runs fewer of them at once, and keeps the node busy at most a share of the time.
//!
//! The gateway lends each request a [`RequestBudget`] through the task-local [`REQUEST_BUDGET`];
//! the upstream pool charges it while it reads a node's answer. Calls made outside a request
//! (health checks, readiness probes, the CLI) have none and are bounded by the pool's own limits
//! only. Bytes are given back when the request's budget is dropped: once its response is built.
//!
//! A refusal is a JSON-RPC error naming the limit ([`LIMIT_EXCEEDED`] with `data.reason`, or
//! [`OVERSIZED_RESPONSE`] for the request's own limit).
//!
//! Must not: lock or allocate on a call that fits (atomics only), or wait without a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::call::RpcError;
/// A budget ran out (-32005, `data.reason` names the limit), or the response is over the
/// request's limit (-32008): codes of the call vocabulary.
pub use crate::call::codes::{LIMIT_EXCEEDED, OVERSIZED_RESPONSE};
use crate::config::GatewaySettings;

pub mod pace;
pub use pace::{NodePace, PaceSettings, RoundTrip};

tokio::task_local! {
    /// The budget of the request being served (set by the gateway around a call or a batch).
    pub static REQUEST_BUDGET: RequestBudget;
}

/// A count with a ceiling.
#[derive(Debug)]
struct Tally {
    limit: usize,
    used: AtomicUsize,
}

impl Tally {
    fn new(limit: usize) -> Self {
        Tally { limit, used: AtomicUsize::new(0) }
    }

    /// Takes `n` if it fits; the new total.
    fn try_take(&self, n: usize) -> Option<usize> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let after = used.checked_add(n).filter(|after| *after <= self.limit)?;
            match self.used.compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(after),
                Err(now) => used = now,
            }
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// The limits of [`GatewayBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayLimits {
    /// Answer bytes one request may hold.
    pub response_bytes: usize,
    /// Answer bytes all requests may hold at once.
    pub answer_bytes_in_flight: usize,
    /// Calls to nodes in flight at once, across every node (what the descriptor budget leaves).
    pub upstream_calls: usize,
    /// Longest a request waits for bytes in flight or an upstream turn before it is refused.
    pub queue: Duration,
}

/// What all requests of one gateway share.
#[derive(Debug)]
pub struct GatewayBudget {
    limits: GatewayLimits,
    answers: Tally,
    /// Woken when bytes are given back while someone waits.
    released: Notify,
    waiting: AtomicUsize,
    upstream_calls: Arc<Semaphore>,
    /// Most answer bytes held at once since start.
    peak: AtomicUsize,
}

impl GatewayBudget {
    /// A budget with these limits.
    pub fn new(limits: GatewayLimits) -> Arc<Self> {
        Arc::new(GatewayBudget {
            limits,
            answers: Tally::new(limits.answer_bytes_in_flight),
            released: Notify::new(),
            waiting: AtomicUsize::new(0),
            upstream_calls: Arc::new(Semaphore::new(limits.upstream_calls.clamp(1, Semaphore::MAX_PERMITS))),
            peak: AtomicUsize::new(0),
        })
    }

    /// The limits.
    pub fn limits(&self) -> GatewayLimits {
        self.limits
    }

    /// Answer bytes held now.
    pub fn answer_bytes_in_flight(&self) -> usize {
        self.answers.used()
    }

    /// The most answer bytes held at once since start.
    pub fn peak_answer_bytes(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// A budget for one request of an instance.
    pub fn request(self: &Arc<Self>, instance: &Arc<InstanceBudget>) -> RequestBudget {
        RequestBudget {
            limit: self.limits.response_bytes,
            read: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            over: AtomicBool::new(false),
            gateway: self.clone(),
            instance: instance.clone(),
        }
    }
}

/// An instance's shares of what the gateway shares.
#[derive(Debug)]
pub struct InstanceBudget {
    answers: Tally,
    upstream_calls: Arc<Semaphore>,
    pace: Arc<NodePace>,
}

/// The shares an instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceShares {
    /// Answer bytes the instance's requests may hold at once.
    pub answer_bytes_in_flight: usize,
    /// Calls of the instance to its nodes in flight at once.
    pub upstream_calls: usize,
    /// How the instance is paced when its calls are slow.
    pub pace: PaceSettings,
}

impl From<&GatewaySettings> for InstanceShares {
    /// The shares each instance gets of what the gateway shares.
    fn from(gateway: &GatewaySettings) -> Self {
        InstanceShares {
            answer_bytes_in_flight: usize::try_from(gateway.answer_bytes_in_flight_per_instance).unwrap_or(usize::MAX),
            upstream_calls: gateway.upstream_calls_per_instance as usize,
            pace: PaceSettings {
                slow: Duration::from_millis(gateway.slow_call_ms),
                floor: gateway.slow_calls_per_instance as usize,
                duty_percent: gateway.slow_call_duty_percent,
                ..PaceSettings::default()
            },
        }
    }
}

impl InstanceShares {
    /// The shares of an instance of `plan`: the gateway's, or the plan's own where it sets them.
    pub fn for_plan(gateway: &GatewaySettings, plan: Option<&crate::config::PlanDecl>) -> Self {
        let mut shares = InstanceShares::from(gateway);
        if let Some(calls) = plan.and_then(|p| p.upstream_calls_per_instance) {
            shares.upstream_calls = calls as usize;
        }
        if let Some(calls) = plan.and_then(|p| p.slow_calls_per_instance) {
            shares.pace.floor = calls as usize;
        }
        shares
    }
}

impl Default for InstanceShares {
    fn default() -> Self {
        InstanceShares { answer_bytes_in_flight: 64 << 20, upstream_calls: 32, pace: PaceSettings::default() }
    }
}

impl InstanceBudget {
    /// An instance's budget with these shares.
    pub fn new(shares: InstanceShares) -> Arc<Self> {
        let calls = shares.upstream_calls.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(InstanceBudget {
            answers: Tally::new(shares.answer_bytes_in_flight),
            upstream_calls: Arc::new(Semaphore::new(calls)),
            pace: Arc::new(NodePace::new(shares.pace, calls)),
        })
    }

    /// Answer bytes the instance's requests hold now.
    pub fn answer_bytes_in_flight(&self) -> usize {
        self.answers.used()
    }

    /// Whether the instance is paced now for slow calls.
    pub fn is_paced(&self) -> bool {
        self.pace.is_paced()
    }

    /// Calls the instance may have at its nodes at once now (see [`pace`]).
    pub fn node_calls_limit(&self) -> usize {
        self.pace.limit()
    }
}

impl Default for InstanceBudget {
    fn default() -> Self {
        let shares = InstanceShares::default();
        InstanceBudget {
            answers: Tally::new(shares.answer_bytes_in_flight),
            upstream_calls: Arc::new(Semaphore::new(shares.upstream_calls)),
            pace: Arc::new(NodePace::new(shares.pace, shares.upstream_calls)),
        }
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request's answers passed the response limit.
    Response(usize),
    /// The gateway's answer bytes in flight stayed taken.
    InFlight,
    /// The instance's share of answer bytes in flight stayed taken.
    InstanceInFlight,
    /// The instance's share of upstream calls stayed taken.
    InstanceUpstream,
    /// The instance is paced for slow calls, and no turn came in time.
    NodeTime,
    /// The gateway's upstream calls stayed taken.
    Upstream,
    /// The node's cap of sockets stayed taken.
    NodeSockets,
    /// The process is out of descriptors.
    Descriptors,
}

impl Refusal {
    /// A stable name for `data.reason` and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Response(_) => "response_bytes",
            Refusal::InFlight => "answer_bytes_in_flight",
            Refusal::InstanceInFlight => "instance_answer_bytes_in_flight",
            Refusal::InstanceUpstream => "instance_upstream_calls",
            Refusal::NodeTime => "node_time",
            Refusal::Upstream => "upstream_calls",
            Refusal::NodeSockets => "node_sockets",
            Refusal::Descriptors => "descriptors",
        }
    }

    /// The JSON-RPC error the call gets.
    pub fn error(self) -> RpcError {
        let (code, message) = match self {
            Refusal::Response(limit) => {
                (OVERSIZED_RESPONSE, format!("the response is over the limit of {limit} bytes"))
            }
            Refusal::InFlight => {
                (LIMIT_EXCEEDED, "the gateway holds as many answer bytes as it may; retry later".into())
            }
            Refusal::InstanceInFlight => {
                (LIMIT_EXCEEDED, "this instance holds as many answer bytes as it may; retry later".into())
            }
            Refusal::InstanceUpstream => {
                (LIMIT_EXCEEDED, "this instance has as many calls at its node as it may; retry later".into())
            }
            Refusal::NodeTime => {
                (LIMIT_EXCEEDED, "this instance's calls keep its node busy: they are paced; retry later".into())
            }
            Refusal::Upstream => {
                (LIMIT_EXCEEDED, "the gateway has as many calls at nodes as it may; retry later".into())
            }
            Refusal::NodeSockets => {
                (LIMIT_EXCEEDED, "the node has as many calls from the gateway as it may; retry later".into())
            }
            Refusal::Descriptors => (LIMIT_EXCEEDED, "the gateway is out of sockets; retry later".into()),
        };
        crate::telemetry::metrics().record_call_refusal(self.reason());
        let error = RpcError { code, message, data: Some(format!(r#"{{"reason":"{}"}}"#, self.reason())) };
        crate::call::blamed(error, crate::call::Blame::Limit)
    }
}

/// What one request (a call, or a whole batch) holds.
#[derive(Debug)]
pub struct RequestBudget {
    limit: usize,
    /// Answer bytes read (or announced) so far.
    read: AtomicUsize,
    /// Of which taken from the shared budgets (given back on drop).
    held: AtomicUsize,
    over: AtomicBool,
    gateway: Arc<GatewayBudget>,
    instance: Arc<InstanceBudget>,
}

/// The outcome of [`RequestBudget::try_charge`].
enum Charge {
    Taken,
    Refused(Refusal),
    /// A shared budget is full: wait for bytes to come back.
    Full(Refusal),
}

impl RequestBudget {
    /// Whether the request's answers passed its limit (a batch is then cut short).
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// The response limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn try_charge(&self, n: usize) -> Charge {
        let read = self.read.fetch_add(n, Ordering::AcqRel).saturating_add(n);
        if read > self.limit {
            self.over.store(true, Ordering::Relaxed);
            return Charge::Refused(Refusal::Response(self.limit));
        }
        if self.instance.answers.try_take(n).is_none() {
            self.read.fetch_sub(n, Ordering::AcqRel);
            return Charge::Full(Refusal::InstanceInFlight);
        }
        let Some(total) = self.gateway.answers.try_take(n) else {
            self.instance.answers.give(n);
            self.read.fetch_sub(n, Ordering::AcqRel);
            return Charge::Full(Refusal::InFlight);
        };
        if total > self.gateway.peak.load(Ordering::Relaxed) {
            self.gateway.peak.fetch_max(total, Ordering::Relaxed);
        }
        self.held.fetch_add(n, Ordering::AcqRel);
        Charge::Taken
    }
}

impl Drop for RequestBudget {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        if held == 0 {
            return;
        }
        self.instance.answers.give(held);
        self.gateway.answers.give(held);
        if self.gateway.waiting.load(Ordering::Acquire) > 0 {
            self.gateway.released.notify_waiters();
        }
    }
}

/// Charges `n` answer bytes to the current request's budget, waiting up to the queue time for
/// shared bytes to come back. Without a request budget (health checks), nothing to charge.
pub async fn charge_answer(n: usize) -> Result<(), Refusal> {
    let first = REQUEST_BUDGET.try_with(|budget| match budget.try_charge(n) {
        Charge::Taken => Ok(()),
        Charge::Refused(refusal) => Err(Ok(refusal)),
        Charge::Full(refusal) => Err(Err((refusal, budget.gateway.clone()))),
    });
    let gateway = match first {
        Err(_) | Ok(Ok(())) => return Ok(()),
        Ok(Err(Ok(refusal))) => return Err(refusal),
        Ok(Err(Err((_, gateway)))) => gateway,
    };
    let deadline = tokio::time::Instant::now() + gateway.limits.queue;
    gateway.waiting.fetch_add(1, Ordering::AcqRel);
    let result = loop {
        let released = gateway.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        match REQUEST_BUDGET.try_with(|budget| budget.try_charge(n)) {
            Ok(Charge::Taken) | Err(_) => break Ok(()),
            Ok(Charge::Refused(refused)) => break Err(refused),
            Ok(Charge::Full(full)) => {
                if tokio::time::timeout_at(deadline, released).await.is_err() {
                    break Err(full);
                }
            }
        }
    };
    gateway.waiting.fetch_sub(1, Ordering::AcqRel);
    result
}

/// Turns the current request holds at the upstream: its instance's pace and share, and the
/// gateway's. The pace turn measures the call's time at the node when dropped.
pub struct UpstreamTurn {
    _instance: Option<OwnedSemaphorePermit>,
    _gateway: Option<OwnedSemaphorePermit>,
    _pace: Option<pace::PaceTurn>,
}

/// Takes a turn for one call to the node whose round trip is `node`, within the current
/// request's instance pace and share and the gateway's upstream calls, waiting up to the queue
/// time. Without a request budget, a turn that holds nothing.
pub async fn upstream_turn(node: &Arc<RoundTrip>) -> Result<UpstreamTurn, Refusal> {
    let Ok((gateway, instance, pace, queue)) = REQUEST_BUDGET.try_with(|b| {
        (
            b.gateway.upstream_calls.clone(),
            b.instance.upstream_calls.clone(),
            // Off (the default), the pace takes no turn: nothing is counted or measured per call.
            b.instance.pace.is_on().then(|| b.instance.pace.clone()),
            b.gateway.limits.queue,
        )
    }) else {
        return Ok(UpstreamTurn { _instance: None, _gateway: None, _pace: None });
    };
    let deadline = tokio::time::Instant::now() + queue;
    let instance = acquire(instance, deadline).await.ok_or(Refusal::InstanceUpstream)?;
    let pace = match pace {
        Some(pace) => Some(pace.turn(node, deadline).await.ok_or(Refusal::NodeTime)?),
        None => None,
    };
    let gateway = acquire(gateway, deadline).await.ok_or(Refusal::Upstream)?;
    Ok(UpstreamTurn { _instance: Some(instance), _gateway: Some(gateway), _pace: pace })
}

impl UpstreamTurn {
    /// The call is sent now: its time at the node counts from here, not from the waits before.
    pub fn sent(&mut self) {
        if let Some(pace) = &mut self._pace {
            pace.restart();
        }
    }

    /// The node's whole answer is read: the turn's time is also a sample of the node's round
    /// trip (a failed or cancelled call's is not), taken when the turn ends. `false` when the
    /// turn holds no pace (pacing off, or no request): the caller samples the round trip itself.
    pub fn answered(&mut self) -> bool {
        match &mut self._pace {
            Some(pace) => {
                pace.answered = true;
                true
            }
            None => false,
        }
    }
}

/// A turn of a node's cap of calls (`calls`), waiting up to the current request's queue time
/// (without a request, up to the caller's own deadline).
pub async fn node_turn(calls: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Refusal> {
    if let Ok(permit) = calls.clone().try_acquire_owned() {
        return Ok(permit);
    }
    match REQUEST_BUDGET.try_with(|b| b.gateway.limits.queue) {
        Ok(queue) => acquire(calls.clone(), tokio::time::Instant::now() + queue).await.ok_or(Refusal::NodeSockets),
        Err(_) => calls.clone().acquire_owned().await.map_err(|_| Refusal::NodeSockets),
    }
}

/// A permit of `semaphore` before `deadline`.
pub(crate) async fn acquire(semaphore: Arc<Semaphore>, deadline: tokio::time::Instant) -> Option<OwnedSemaphorePermit> {
    match semaphore.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await.ok()?.ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(response: usize, in_flight: usize) -> Arc<GatewayBudget> {
        GatewayBudget::new(GatewayLimits {
            response_bytes: response,
            answer_bytes_in_flight: in_flight,
            upstream_calls: 4,
            queue: Duration::from_millis(50),
        })
    }

    #[tokio::test]
    async fn a_request_is_refused_at_the_charge_that_passes_its_limit_and_gives_back_what_it_held() {
        let gw = gateway(100, 1000);
        let instance = InstanceBudget::new(InstanceShares {
            answer_bytes_in_flight: 1000,
            upstream_calls: 2,
            pace: PaceSettings::default(),
        });
        let request = gw.request(&instance);
        let outcome = REQUEST_BUDGET
            .scope(request, async {
                assert_eq!(charge_answer(60).await, Ok(()));
                assert_eq!(gw.answer_bytes_in_flight(), 60);
                assert_eq!(charge_answer(60).await, Err(Refusal::Response(100)));
                REQUEST_BUDGET.with(|b| b.is_over())
            })
            .await;
        assert!(outcome, "the request is marked over its limit");
        assert_eq!(gw.answer_bytes_in_flight(), 0, "dropped with the request");
        assert_eq!(instance.answer_bytes_in_flight(), 0);
        assert_eq!(gw.peak_answer_bytes(), 60);
    }

    #[tokio::test]
    async fn shared_bytes_are_waited_for_then_refused_naming_the_limit() {
        let gw = gateway(100, 150);
        let (a, b) = (Arc::new(InstanceBudget::default()), Arc::new(InstanceBudget::default()));
        REQUEST_BUDGET
            .scope(gw.request(&a), async {
                charge_answer(100).await.unwrap();
                let refused = REQUEST_BUDGET.scope(gw.request(&b), charge_answer(100)).await;
                assert_eq!(refused, Err(Refusal::InFlight), "waited, then refused");
            })
            .await;
        // Bytes given back while another request waits let it through.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn(REQUEST_BUDGET.scope(gw.request(&a), async move {
            charge_answer(100).await.unwrap();
            let _ = rx.await;
        }));
        while gw.answer_bytes_in_flight() < 100 {
            tokio::task::yield_now().await;
        }
        let waiter = tokio::spawn(REQUEST_BUDGET.scope(gw.request(&b), charge_answer(100)));
        while gw.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        holder.await.unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        let small = InstanceBudget::new(InstanceShares {
            answer_bytes_in_flight: 10,
            upstream_calls: 1,
            pace: PaceSettings::default(),
        });
        let refused = REQUEST_BUDGET.scope(gw.request(&small), charge_answer(20)).await;
        assert_eq!(refused, Err(Refusal::InstanceInFlight));
    }

    #[tokio::test]
    async fn upstream_turns_are_bounded_by_the_instance_share() {
        let node = Arc::new(RoundTrip::default());
        let gw = gateway(100, 100);
        let instance = InstanceBudget::new(InstanceShares {
            answer_bytes_in_flight: 10,
            upstream_calls: 1,
            pace: PaceSettings::default(),
        });
        REQUEST_BUDGET
            .scope(gw.request(&instance), async {
                let turn = upstream_turn(&node).await.unwrap();
                assert_eq!(upstream_turn(&node).await.err(), Some(Refusal::InstanceUpstream));
                drop(turn);
                assert!(upstream_turn(&node).await.is_ok());
            })
            .await;
        assert!(upstream_turn(&node).await.is_ok(), "no request budget: nothing to take");
    }
}
