//! # An instance's share of its node's time
//!
//! A call's cost to the node is unknown until the node has run it: an `eth_call` that loops or
//! returns megabytes (a state override makes either easy) keeps a node's core busy for tens of
//! milliseconds, where `eth_chainId` takes a fraction of one. Counting calls in flight cannot
//! tell them apart, so one tenant's handful of heavy calls slows every other tenant of the node.
//!
//! [`NodePace`] learns the cost from the answers, as a congestion window does: a call whose turn
//! at the node took longer than `slow` above the fastest turn any call had at that node lately
//! ([`RoundTrip`]: the node's own round trip, so a remote node is not slow for being far, and a
//! tenant whose every call is heavy is measured against the others') is a *slow* call.
//! - An instance runs at most `limit` calls at its nodes at once: at first its whole share of
//!   upstream calls (the semaphore of [`super::InstanceBudget`]).
//! - A slow answer sets the limit back to `floor`, where it stays for `hold`; and the instance
//!   keeps its node busy at most `duty` of the time: after a slow call of `d`, its next call
//!   starts no sooner than `d × (1 − duty) / duty` later. After the hold, each quick answer
//!   widens the limit by one, up to the share.
//!
//! Off when `slow` is zero (the default: a legitimately slow tenant, an indexer's wide
//! `eth_getLogs` on a real node, is paced too, so a provider turns it on knowingly).
//!
//! A node that is slow for everyone paces every instance alike, which is fair too. Waiting is
//! bounded by the request's queue time; past it the call gets -32005 `node_time`.
//!
//! Must not: lock (atomics and one `Notify`), or wait past a deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The fastest turn is remembered for about this long (two windows).
const FLOOR_WINDOW: Duration = Duration::from_secs(10);

/// How slow calls are paced (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceSettings {
    /// A turn this much longer than the node's fastest recent one is slow.
    pub slow: Duration,
    /// Calls at once while paced (at least 1).
    pub floor: usize,
    /// Share of the time, in percent (1..=100), a paced instance may keep the node busy.
    pub duty_percent: u32,
    /// How long the limit stays at its floor after the last slow call.
    pub hold: Duration,
}

impl Default for PaceSettings {
    fn default() -> Self {
        PaceSettings { slow: Duration::ZERO, floor: 1, duty_percent: 50, hold: Duration::from_millis(500) }
    }
}

/// One instance's pacing state.
#[derive(Debug)]
pub struct NodePace {
    settings: PaceSettings,
    /// The instance's share of upstream calls: the limit grows no further.
    ceiling: usize,
    origin: Instant,
    in_flight: AtomicUsize,
    /// Calls allowed at once now.
    limit: AtomicUsize,
    /// Microseconds since `origin` at the end of the last slow call, plus one (0: never).
    last_slow: AtomicU64,
    /// Microseconds since `origin` before which no paced call starts.
    next_start: AtomicU64,
    waiting: AtomicUsize,
    changed: Notify,
}

/// A call's turn at its node: ends (and is measured against the node's round trip) when dropped.
#[derive(Debug)]
pub struct PaceTurn {
    pace: Arc<NodePace>,
    node: Arc<RoundTrip>,
    started: Instant,
    /// Whether the node answered whole (only then is the turn a round-trip sample).
    pub answered: bool,
}

/// The fastest turn any call had at one node lately (two windows of `FLOOR_WINDOW / 2`): the
/// node's round trip, against which a call is slow.
#[derive(Debug)]
pub struct RoundTrip {
    origin: Instant,
    fastest: [AtomicU64; 2],
    window: AtomicU64,
}

impl Default for RoundTrip {
    fn default() -> Self {
        RoundTrip {
            origin: Instant::now(),
            fastest: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            window: AtomicU64::new(0),
        }
    }
}

impl RoundTrip {
    /// The round trip of the node at `url`, shared by every pool that calls it (the pools of a
    /// shared plan's instances are each their own, and their calls all tell the node's speed).
    pub fn of(url: &str) -> Arc<RoundTrip> {
        static NODES: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Weak<RoundTrip>>>> =
            std::sync::LazyLock::new(Default::default);
        let mut nodes = NODES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(live) = nodes.get(url).and_then(Weak::upgrade) {
            return live;
        }
        // Forgotten nodes are swept whenever the map doubles.
        if nodes.len() >= 64 && nodes.len().is_power_of_two() {
            nodes.retain(|_, node| node.strong_count() > 0);
        }
        let node = Arc::new(RoundTrip::default());
        nodes.insert(url.to_string(), Arc::downgrade(&node));
        node
    }

    /// The fastest turn lately (µs), `u64::MAX` before the first.
    pub fn fastest(&self) -> u64 {
        self.fastest[0].load(Ordering::Relaxed).min(self.fastest[1].load(Ordering::Relaxed))
    }

    /// Notes a turn of `took` µs that ended at `at`.
    pub fn observe(&self, took: u64, at: Instant) {
        let half = (FLOOR_WINDOW / 2).as_micros() as u64;
        let window = u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX) / half;
        let current = self.window.load(Ordering::Relaxed);
        if window != current
            && self.window.compare_exchange(current, window, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            // A new window forgets the older of the two.
            self.fastest[(window % 2) as usize].store(u64::MAX, Ordering::Relaxed);
        }
        self.fastest[(window % 2) as usize].fetch_min(took, Ordering::Relaxed);
    }
}

impl NodePace {
    /// A pace with these settings, for an instance whose share of upstream calls is `ceiling`.
    pub fn new(settings: PaceSettings, ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        let settings = PaceSettings {
            floor: settings.floor.clamp(1, ceiling),
            duty_percent: settings.duty_percent.clamp(1, 100),
            ..settings
        };
        NodePace {
            settings,
            ceiling,
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(ceiling),
            last_slow: AtomicU64::new(0),
            next_start: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// Calls allowed at once now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Whether pacing is on (`slow` is not zero).
    pub fn is_on(&self) -> bool {
        !self.settings.slow.is_zero()
    }

    /// Whether the instance is paced now (a slow call within the hold).
    pub fn is_paced(&self) -> bool {
        let last = self.last_slow.load(Ordering::Acquire);
        last != 0 && self.micros(Instant::now()) < last - 1 + self.settings.hold.as_micros() as u64
    }

    /// Waits for a turn at the node whose round trip is `node` until `deadline`; `None` past it.
    pub async fn turn(self: &Arc<Self>, node: &Arc<RoundTrip>, deadline: Instant) -> Option<PaceTurn> {
        if let Some(turn) = self.try_turn(node) {
            return Some(turn);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let turn = loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(turn) = self.try_turn(node) {
                break Some(turn);
            }
            let now = self.micros(Instant::now());
            let mut wake = deadline;
            let next_start = self.next_start.load(Ordering::Acquire);
            if next_start > now {
                wake = wake.min(self.origin + Duration::from_micros(next_start));
            }
            if Instant::now() >= deadline {
                break None;
            }
            let _ = tokio::time::timeout_at(wake, changed).await;
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        turn
    }

    fn try_turn(self: &Arc<Self>, node: &Arc<RoundTrip>) -> Option<PaceTurn> {
        let started = Instant::now();
        let now = self.micros(started);
        if self.next_start.load(Ordering::Acquire) > now {
            return None;
        }
        let limit = self.limit();
        let mut in_flight = self.in_flight.load(Ordering::Acquire);
        loop {
            if in_flight >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(in_flight, in_flight + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(PaceTurn { pace: self.clone(), node: node.clone(), started, answered: false }),
                Err(now) => in_flight = now,
            }
        }
    }

    fn record(&self, node: &RoundTrip, started: Instant, answered: bool) {
        let ended = Instant::now();
        let took = u64::try_from(ended.saturating_duration_since(started).as_micros()).unwrap_or(u64::MAX);
        let now = self.micros(ended);
        let fastest = node.fastest();
        if answered {
            node.observe(took, ended);
        }
        // Only an answered call tells the node's time: a node that never answered (a dead one, a
        // deadline) is the pool's failure to handle, not the instance's cost.
        let slow = self.is_on()
            && answered
            && fastest != u64::MAX
            && took > fastest.saturating_add(self.settings.slow.as_micros() as u64);
        if slow {
            self.last_slow.fetch_max(now + 1, Ordering::AcqRel);
            self.limit.store(self.settings.floor, Ordering::Release);
            let duty = u64::from(self.settings.duty_percent);
            let rest = took.saturating_mul(100 - duty) / duty;
            self.next_start.fetch_max(now.saturating_add(rest), Ordering::AcqRel);
        } else if answered && !self.is_paced() {
            let ceiling = self.ceiling;
            let _ = self.limit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| (l < ceiling).then_some(l + 1));
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.changed.notify_waiters();
        }
    }
}

impl PaceTurn {
    /// Counts the turn from now (the waits for other turns before the call is sent are not the
    /// node's time).
    pub fn restart(&mut self) {
        self.started = Instant::now();
    }
}

impl Drop for PaceTurn {
    fn drop(&mut self) {
        self.pace.record(&self.node, self.started, self.answered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Duration = Duration::from_millis(50);

    /// Ends a turn whose answer the node gave whole.
    fn done(mut turn: PaceTurn) {
        turn.answered = true;
    }

    fn settings(floor: usize, duty_percent: u32) -> PaceSettings {
        PaceSettings { slow: SLOW, floor, duty_percent, hold: Duration::from_millis(100) }
    }

    fn pace(floor: usize, duty_percent: u32) -> (Arc<NodePace>, Arc<RoundTrip>) {
        (Arc::new(NodePace::new(settings(floor, duty_percent), 32)), Arc::default())
    }

    /// `n` quick calls one after another (each grows the limit by one).
    async fn quick(pace: &Arc<NodePace>, node: &Arc<RoundTrip>, n: usize) {
        for _ in 0..n {
            done(pace.turn(node, Instant::now()).await.expect("a quick call's turn"));
        }
    }

    /// A call that keeps the node busy for `busy`.
    async fn busy(pace: &Arc<NodePace>, node: &Arc<RoundTrip>, busy: Duration) {
        let turn = pace.turn(node, Instant::now() + Duration::from_secs(5)).await.expect("a turn");
        tokio::time::sleep(busy).await;
        done(turn);
    }

    #[tokio::test]
    async fn quick_answers_widen_the_limit_up_to_the_share() {
        let (pace, node) = pace(1, 100);
        assert_eq!(pace.limit(), 32, "a new instance has its whole share");
        quick(&pace, &node, 1).await;
        busy(&pace, &node, SLOW * 3).await;
        assert_eq!(pace.limit(), 1, "a slow answer sets it back to the floor");
        tokio::time::sleep(Duration::from_millis(150)).await;
        quick(&pace, &node, 10).await;
        assert_eq!(pace.limit(), 11, "after the hold, each quick answer widens it by one");
        quick(&pace, &node, 100).await;
        assert_eq!(pace.limit(), 32, "never past the instance's share");
        let turns: Vec<_> = futures::future::join_all((0..32).map(|_| pace.turn(&node, Instant::now()))).await;
        assert!(turns.iter().all(Option::is_some), "32 quick turns at once");
        turns.into_iter().flatten().for_each(done);
        assert!(!pace.is_paced());
    }

    #[tokio::test]
    async fn a_slow_call_sets_the_limit_back_to_the_floor_for_the_hold() {
        let (pace, node) = pace(2, 100);
        quick(&pace, &node, 20).await;
        busy(&pace, &node, SLOW * 3).await;
        assert_eq!(pace.limit(), 2);
        let a = pace.turn(&node, Instant::now()).await.expect("within the floor");
        let b = pace.turn(&node, Instant::now()).await.expect("within the floor");
        assert!(
            pace.turn(&node, Instant::now() + Duration::from_millis(10)).await.is_none(),
            "a third waits, then is refused"
        );
        done(a);
        done(b);
        if pace.is_paced() {
            assert_eq!(pace.limit(), 2, "quick answers within the hold do not widen it");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!pace.is_paced());
        quick(&pace, &node, 3).await;
        assert_eq!(pace.limit(), 5, "after the hold, quick answers widen it again");
    }

    #[tokio::test]
    async fn a_paced_instance_keeps_its_node_busy_at_most_its_duty() {
        let (pace, node) = pace(1, 25);
        quick(&pace, &node, 1).await;
        let turn = pace.turn(&node, Instant::now()).await.unwrap();
        let started = Instant::now();
        tokio::time::sleep(SLOW * 2).await;
        done(turn);
        let took = started.elapsed();
        // At 25%, three times as long again before the next call starts.
        assert!(pace.turn(&node, Instant::now() + Duration::from_millis(10)).await.is_none());
        let turn = pace.turn(&node, Instant::now() + Duration::from_secs(5)).await.expect("after the rest");
        assert!(started.elapsed() >= took * 3, "the next call started {:?} after a {took:?} call", started.elapsed());
        done(turn);
    }

    #[tokio::test]
    async fn a_far_node_is_not_slow_for_its_round_trip() {
        let (pace, node) = pace(1, 100);
        for _ in 0..3 {
            busy(&pace, &node, Duration::from_millis(40)).await;
        }
        assert!(pace.limit() > 1, "40 ms every time is the node's round trip: each widened the limit");
        busy(&pace, &node, Duration::from_millis(40) + SLOW * 3).await;
        assert_eq!(pace.limit(), 1, "far over the round trip is slow");
    }

    #[tokio::test]
    async fn a_tenant_whose_every_call_is_heavy_is_measured_against_the_others() {
        let (quiet, node) = pace(1, 100);
        let heavy = Arc::new(NodePace::new(settings(1, 100), 32));
        quick(&quiet, &node, 3).await;
        busy(&heavy, &node, SLOW * 3).await;
        assert!(heavy.is_paced(), "its first call is slow next to the quiet tenant's");
        assert!(!quiet.is_paced());
        assert_eq!(quiet.limit(), 32);
    }

    #[tokio::test]
    async fn an_unanswered_call_is_neither_a_round_trip_nor_slow() {
        let (pace, node) = pace(1, 50);
        quick(&pace, &node, 1).await;
        let fastest = node.fastest();
        let turn = pace.turn(&node, Instant::now()).await.unwrap();
        tokio::time::sleep(SLOW * 2).await;
        drop(turn);
        assert_eq!(node.fastest(), fastest);
        assert!(!pace.is_paced(), "a node that did not answer is not this instance's cost");
    }

    #[tokio::test]
    async fn off_when_slow_is_zero() {
        let pace = Arc::new(NodePace::new(PaceSettings::default(), 4));
        let node = Arc::new(RoundTrip::default());
        quick(&pace, &node, 1).await;
        busy(&pace, &node, SLOW * 2).await;
        assert!(!pace.is_paced());
        assert_eq!(pace.limit(), 4);
    }
}
