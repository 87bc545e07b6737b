//! # Subscriptions: who may hold one, the node socket that carries them, and how each ends
//!
//! Owns everything between a WebSocket client's `eth_subscribe` (once the plugins have let it
//! through, see `rpc`) and the node:
//! - **slots** ([`SubscriptionSlots`]): every subscription holds one, counted in all, per
//!   instance and per key, for its whole life; a refusal is -32005 with `data.reason`
//!   `subscriptions`, `subscriptions_per_instance` or `subscriptions_per_key` (and `data.limit`);
//! - **node sockets** ([`NodeSockets`]): the subscriptions of one instance share one WebSocket to
//!   its node (the first WebSocket URL of its pool that answers), opened by the first
//!   subscription and closed with the last; identical subscriptions of the instance (the same
//!   params) share one subscription at the node, fanned out to each subscriber (see `fanout`),
//!   and each subscriber has its own bounded queue ([`SubscriptionLimits::buffer`]
//!   notifications): a slow one never holds up the others;
//! - **the relay** ([`relay`]): notifications go to the client with backpressure (jsonrpsee's
//!   sink waits for room), in order, never skipped. A subscription ends *quietly* only when the
//!   client unsubscribes or leaves. Every other end closes the client's WebSocket with a code and
//!   reason (through [`RevocationWatch::end`], after what was already queued):
//!   - [`LAGGED_CLOSE_CODE`]: the client fell behind by more than its buffer (the node's
//!     notifications cannot wait: the socket and the node's subscription are shared);
//!   - [`NODE_GONE_CLOSE_CODE`] (1012, "service restart"): the node's side ended (the node
//!     restarted, the socket to it dropped); clients reconnect and resubscribe. Subscriptions are
//!     not re-established behind the client's back: a node that restarts may have lost blocks or
//!     logs, which only the client can re-read;
//!   - a revoked or expired key: 4001, by the socket itself (see `revocable`).
//!
//! Must not: drop a notification and go on, hold a lock across an await, or keep a node socket
//! open with no subscription on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jsonrpsee::core::client::SubscriptionClientT;
use jsonrpsee::core::server::TrySendError;
use jsonrpsee::core::traits::ToRpcParams;
use jsonrpsee::server::{PendingSubscriptionSink, SubscriptionMessage, SubscriptionSink};
use jsonrpsee::types::ErrorObject;
use jsonrpsee::ws_client::{PingConfig, WsClient, WsClientBuilder};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::errors;
use super::fanout::{FeedEnd, Feeds, Subscriber, params_key};
use super::revocable::{Ending, RevocationWatch};
use super::routes::{KeyDigest, Route};

/// Close code when a client falls behind its subscription buffer (private-use range; 4008 after
/// HTTP's 408: the client did not take what it was sent in time).
pub const LAGGED_CLOSE_CODE: u16 = 4008;
/// Close code when the node's side of a subscription ends: 1012, "service restart".
pub const NODE_GONE_CLOSE_CODE: u16 = 1012;
/// How long a socket ended by a subscription has to get its close frame out (behind what was
/// queued before it) and to close.
pub const ENDING_GRACE: Duration = Duration::from_secs(10);

/// Limits on subscriptions. Every one is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Subscriptions in all, across the gateway.
    pub total: u32,
    /// Subscriptions of one instance (all its keys).
    pub per_instance: u32,
    /// Subscriptions opened with one key (all its connections).
    pub per_key: u32,
    /// Notifications one subscription may have waiting for its client at the node socket.
    pub buffer: u32,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        SubscriptionLimits { total: 8192, per_instance: 2048, per_key: 512, buffer: 4096 }
    }
}

/// Why a subscription was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// The gateway holds `total` subscriptions.
    Full,
    /// The instance holds its share.
    Instance,
    /// The key holds its share.
    Key,
}

impl SlotRefused {
    /// The error's message.
    pub fn message(self) -> &'static str {
        match self {
            SlotRefused::Full => "the gateway holds as many subscriptions as it may; retry later",
            SlotRefused::Instance => "this instance holds as many subscriptions as it may; retry later",
            SlotRefused::Key => "this key holds as many subscriptions as it may; retry later",
        }
    }

    /// A stable name for `data.reason` and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            SlotRefused::Full => "subscriptions",
            SlotRefused::Instance => "subscriptions_per_instance",
            SlotRefused::Key => "subscriptions_per_key",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: u32,
    by_instance: HashMap<Arc<str>, u32>,
    by_key: HashMap<KeyDigest, u32>,
}

/// The gateway's subscription accounting.
pub struct SubscriptionSlots {
    limits: SubscriptionLimits,
    counts: Mutex<Counts>,
}

/// One subscription's slot; dropping it gives the slot back.
pub struct Slot {
    slots: Arc<SubscriptionSlots>,
    instance: Arc<str>,
    key: KeyDigest,
}

impl SubscriptionSlots {
    /// Accounting under these limits.
    pub fn new(limits: SubscriptionLimits) -> Arc<Self> {
        Arc::new(SubscriptionSlots { limits, counts: Mutex::new(Counts::default()) })
    }

    /// The limit a refusal names.
    pub fn limit(&self, refused: SlotRefused) -> u32 {
        match refused {
            SlotRefused::Full => self.limits.total,
            SlotRefused::Instance => self.limits.per_instance,
            SlotRefused::Key => self.limits.per_key,
        }
    }

    /// Takes a slot for a subscription of `instance` opened with `key`: the key's share is
    /// checked first (the narrowest), then the instance's, then the whole.
    pub fn take(self: &Arc<Self>, instance: &Arc<str>, key: &KeyDigest) -> Result<Slot, SlotRefused> {
        let mut counts = self.lock();
        if counts.by_key.get(key).copied().unwrap_or(0) >= self.limits.per_key {
            return Err(SlotRefused::Key);
        }
        if counts.by_instance.get(instance).copied().unwrap_or(0) >= self.limits.per_instance {
            return Err(SlotRefused::Instance);
        }
        if counts.total >= self.limits.total {
            return Err(SlotRefused::Full);
        }
        counts.total += 1;
        *counts.by_instance.entry(instance.clone()).or_insert(0) += 1;
        *counts.by_key.entry(*key).or_insert(0) += 1;
        Ok(Slot { slots: self.clone(), instance: instance.clone(), key: *key })
    }

    /// Subscriptions held now.
    pub fn held(&self) -> u32 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.lock();
        counts.total -= 1;
        if let Some(n) = counts.by_instance.get_mut(&self.instance) {
            *n -= 1;
            if *n == 0 {
                counts.by_instance.remove(&self.instance);
            }
        }
        if let Some(n) = counts.by_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.by_key.remove(&self.key);
            }
        }
    }
}

/// A node socket's key: the instance, and the node's URL.
type SocketKey = (Arc<str>, String);
/// The node sockets open now, by key; weak, so that the last subscription closes its socket.
type Sockets = HashMap<SocketKey, Weak<WsClient>>;

/// The WebSocket to each instance's node that carries the instance's subscriptions. An entry
/// holds only a weak reference: the socket closes with the last subscription on it.
pub struct NodeSockets {
    buffer: usize,
    max_response_bytes: u32,
    clients: Mutex<Sockets>,
    /// The subscriptions at the nodes, each shared by identical client subscriptions.
    feeds: Feeds,
}

impl NodeSockets {
    /// Sockets whose subscribers each queue `buffer` notifications; the node subscriptions'
    /// pumps run in `tasks`.
    pub fn new(buffer: u32, max_response_bytes: u32, tasks: tokio_util::task::TaskTracker) -> Self {
        let buffer = buffer.max(1) as usize;
        NodeSockets {
            buffer,
            max_response_bytes,
            clients: Mutex::new(HashMap::new()),
            feeds: Feeds::new(buffer, tasks),
        }
    }

    /// The open socket of `instance` to `url`, or a new one whose calls (`eth_subscribe`,
    /// `eth_unsubscribe`) time out after `deadline`.
    async fn client(
        &self,
        instance: &Arc<str>,
        url: &str,
        deadline: Duration,
    ) -> Result<Arc<WsClient>, jsonrpsee::core::client::Error> {
        let key = (instance.clone(), url.to_string());
        if let Some(client) = self.live(&key) {
            return Ok(client);
        }
        let client = Arc::new(
            WsClientBuilder::default()
                .connection_timeout(Duration::from_secs(5))
                .request_timeout(deadline)
                .max_buffer_capacity_per_subscription(self.buffer)
                .max_response_size(self.max_response_bytes)
                // A node that vanishes without closing is noticed within about a minute.
                .enable_ws_ping(
                    PingConfig::new().ping_interval(Duration::from_secs(30)).inactive_limit(Duration::from_secs(60)),
                )
                .build(url)
                .await?,
        );
        let mut clients = self.lock();
        // Another subscription may have opened one meanwhile: use it, and drop this one.
        if let Some(open) = clients.get(&key).and_then(Weak::upgrade).filter(|c| c.is_connected()) {
            return Ok(open);
        }
        clients.retain(|_, client| client.strong_count() > 0);
        clients.insert(key, Arc::downgrade(&client));
        Ok(client)
    }

    fn live(&self, key: &SocketKey) -> Option<Arc<WsClient>> {
        self.lock().get(key).and_then(Weak::upgrade).filter(|client| client.is_connected())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Params passed on as they are.
struct RawParams(Option<Box<RawValue>>);

impl ToRpcParams for RawParams {
    fn to_rpc_params(self) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        Ok(self.0)
    }
}

/// The -32005 error of a refused slot.
pub fn refusal(slots: &SubscriptionSlots, refused: SlotRefused) -> ErrorObject<'static> {
    crate::telemetry::metrics().record_subscription_refused(refused.reason());
    let data = serde_json::json!({"reason": refused.reason(), "limit": slots.limit(refused)});
    ErrorObject::owned(errors::LIMIT_EXCEEDED, refused.message(), Some(data))
}

fn error(code: i32, message: &str) -> ErrorObject<'static> {
    ErrorObject::owned(code, message.to_string(), None::<()>)
}

/// How a relayed subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client unsubscribed or left, or the key was revoked (the socket closes itself).
    Quiet,
    /// The client fell behind the buffer.
    Lagged,
    /// The node's side ended.
    NodeGone,
}

/// Opens the subscription on the instance's node socket and relays its notifications until it
/// ends (see the module doc for how); then unsubscribes at the node. `watch` is the client
/// socket's, through which an end with a reason closes it.
pub async fn relay(
    sockets: &NodeSockets,
    route: Arc<Route>,
    revoked: CancellationToken,
    watch: Option<Arc<RevocationWatch>>,
    params: Option<Box<RawValue>>,
    pending: PendingSubscriptionSink,
) {
    let instance = &route.instance.instance_id;
    let urls = route.instance.upstream.ws_urls();
    if urls.is_empty() {
        pending.reject(error(errors::UPSTREAM_UNAVAILABLE, "this instance has no WebSocket upstream")).await;
        return;
    }
    // An identical subscription of this instance at one of its nodes: share it.
    let key = params_key(params.as_deref());
    let joined = urls.iter().find_map(|url| sockets.feeds.join(&(instance.clone(), url.to_string(), key.clone())));
    let mut subscriber = match joined {
        Some(subscriber) => subscriber,
        None => match subscribe(sockets, &route, params, key).await {
            Ok(subscriber) => subscriber,
            Err(err) => {
                pending.reject(err).await;
                return;
            }
        },
    };
    let Ok(mut sink) = pending.accept().await else {
        return;
    };
    let end = forward(&mut subscriber, &mut sink, &revoked).await;
    let ending = match end {
        End::Quiet => None,
        End::Lagged => Some(Ending {
            code: LAGGED_CLOSE_CODE,
            reason: format!("subscription {} fell behind by over {} notifications", id_of(&sink), sockets.buffer),
            grace: ENDING_GRACE,
        }),
        End::NodeGone => Some(Ending {
            code: NODE_GONE_CLOSE_CODE,
            reason: "the node's side of the subscription ended; reconnect and resubscribe".to_string(),
            grace: ENDING_GRACE,
        }),
    };
    if let Some(ending) = ending {
        tracing::info!(%instance, code = ending.code, "subscription ended: {}", ending.reason);
        crate::telemetry::metrics().record_subscription_ended(if end == End::Lagged { "lagged" } else { "node_gone" });
        match &watch {
            Some(watch) => watch.end(ending),
            // Not over a watched socket (cannot happen: subscriptions are WebSocket only).
            None => drop(sink),
        }
    }
    // Leaving the feed (dropping `subscriber`) unsubscribes at the node if it was the last.
}

/// Opens a subscription at the first node of the instance's pool that answers (a pool's nodes
/// are equivalent) and starts its feed, of which the caller is the first subscriber.
async fn subscribe(
    sockets: &NodeSockets,
    route: &Route,
    params: Option<Box<RawValue>>,
    key: String,
) -> Result<Subscriber, ErrorObject<'static>> {
    let instance = &route.instance.instance_id;
    for url in route.instance.upstream.ws_urls() {
        let client = match sockets.client(instance, url, route.instance.upstream.deadline()).await {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(%instance, "cannot reach a node's WebSocket: {err}");
                continue;
            }
        };
        return match client.subscribe::<Box<RawValue>, _>("eth_subscribe", RawParams(params), "eth_unsubscribe").await {
            Ok(upstream) => Ok(sockets.feeds.start((instance.clone(), url.to_string(), key), client, upstream)),
            Err(jsonrpsee::core::client::Error::Call(err)) => Err(err),
            Err(err) => {
                tracing::warn!(%instance, "subscription at the node failed: {err}");
                Err(error(errors::UPSTREAM_UNAVAILABLE, "the node refused the subscription"))
            }
        };
    }
    Err(error(errors::UPSTREAM_UNAVAILABLE, "the node's WebSocket is unreachable"))
}

fn id_of(sink: &SubscriptionSink) -> String {
    match sink.subscription_id() {
        jsonrpsee::types::SubscriptionId::Num(n) => n.to_string(),
        jsonrpsee::types::SubscriptionId::Str(s) => s.to_string(),
    }
}

/// Relays until the subscription ends; how it ended.
async fn forward(subscriber: &mut Subscriber, sink: &mut SubscriptionSink, revoked: &CancellationToken) -> End {
    loop {
        let item = tokio::select! {
            biased;
            _ = revoked.cancelled() => return End::Quiet,
            _ = sink.closed() => return End::Quiet,
            item = subscriber.next() => item,
        };
        let notification = match item {
            Ok(notification) => notification,
            Err(FeedEnd::Lagged) => return End::Lagged,
            Err(FeedEnd::NodeGone) => return End::NodeGone,
        };
        let message = SubscriptionMessage::from(notification);
        // Room at the client: on at once (the usual case: no timer, no wait).
        let message = match sink.try_send(message) {
            Ok(()) => continue,
            Err(TrySendError::Closed(_)) => return End::Quiet,
            Err(TrySendError::Full(message)) => message,
        };
        // Else wait for room; meanwhile the node's notifications pile up in this subscriber's
        // queue, and past it the subscriber is dropped from the feed: end it then rather than
        // wait on a client that does not read.
        let send = sink.send(message);
        tokio::pin!(send);
        let mut check = tokio::time::interval(Duration::from_millis(100));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                sent = &mut send => {
                    if sent.is_err() {
                        return End::Quiet;
                    }
                    break;
                }
                _ = revoked.cancelled() => return End::Quiet,
                _ = check.tick() => {
                    if subscriber.dropped() {
                        return End::Lagged;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(total: u32, per_instance: u32, per_key: u32) -> Arc<SubscriptionSlots> {
        SubscriptionSlots::new(SubscriptionLimits { total, per_instance, per_key, buffer: 16 })
    }

    #[test]
    fn a_key_stops_at_its_share_while_another_key_of_the_instance_still_subscribes() {
        let slots = slots(10, 5, 2);
        let (i1, i2): (Arc<str>, Arc<str>) = ("i1".into(), "i2".into());
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let held: Vec<Slot> = (0..2).map(|_| slots.take(&i1, &a).unwrap()).collect();
        assert_eq!(slots.take(&i1, &a).err(), Some(SlotRefused::Key));
        let more: Vec<Slot> = (0..2).map(|_| slots.take(&i1, &b).unwrap()).collect();
        let fifth = slots.take(&i1, &c).unwrap();
        assert_eq!(slots.take(&i1, &c).err(), Some(SlotRefused::Instance), "the instance holds its share");
        let other: Vec<Slot> = (0..2).map(|k| slots.take(&i2, &[10 + k; 32]).unwrap()).collect();
        assert_eq!(slots.held(), 7);
        drop(fifth);
        slots.take(&i1, &c).map(drop).unwrap();
        drop((held, more, other));
        assert_eq!(slots.held(), 0);
        let counts = slots.lock();
        assert!(counts.by_instance.is_empty() && counts.by_key.is_empty(), "no entry outlives its count");
    }

    #[test]
    fn the_whole_gateway_has_a_bound_too() {
        let slots = slots(3, 3, 3);
        let held: Vec<Slot> = (0..3).map(|n| slots.take(&Arc::from(format!("i{n}")), &[n; 32]).unwrap()).collect();
        let refused = slots.take(&"i9".into(), &[9; 32]).err().unwrap();
        assert_eq!(refused, SlotRefused::Full);
        let error = refusal(&slots, refused);
        assert_eq!(error.code(), errors::LIMIT_EXCEEDED);
        let data: serde_json::Value = serde_json::from_str(error.data().unwrap().get()).unwrap();
        assert_eq!(data, serde_json::json!({"reason": "subscriptions", "limit": 3}));
        drop(held);
    }
}
