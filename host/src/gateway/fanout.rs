//! Identical subscriptions of an instance share one subscription at the node.
//!
//! Owns: the node-side subscriptions ([`Feeds`]), one per instance, node URL and params (as
//! canonical JSON); each one's pump, which hands every notification to the bounded queue of
//! each of its subscribers ([`SubscriptionLimits::buffer`](super::SubscriptionLimits)
//! notifications each) without waiting on any of them; and the gauge of node-side
//! subscriptions (`ovsb_gateway_node_subscriptions{instance}`).
//!
//! Must not: wait on a subscriber (one whose queue is full is dropped from the feed, and ends
//! with 4008 once it has read what was queued; the others go on), or keep a node subscription
//! with no subscriber (the last one to leave unsubscribes it at the node).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use jsonrpsee::core::client::{Subscription, SubscriptionCloseReason};
use jsonrpsee::ws_client::WsClient;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a subscriber's feed ended for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEnd {
    /// Its queue was full: it fell behind.
    Lagged,
    /// The node's side ended (the socket dropped, the node restarted).
    NodeGone,
}

/// A feed's key: the instance, the node's URL, the params as canonical JSON.
pub type FeedKey = (Arc<str>, String, String);

/// The params of `eth_subscribe` as a key: canonical JSON (object members sorted), so that the
/// same subscription written with other whitespace or member order shares the feed.
pub fn params_key(params: Option<&RawValue>) -> String {
    match params.map(|raw| serde_json::from_str::<serde_json::Value>(raw.get())) {
        None => String::new(),
        Some(Ok(value)) => value.to_string(),
        Some(Err(_)) => params.map_or_else(String::new, |raw| raw.get().to_string()),
    }
}

struct FeedState {
    next_id: u64,
    subscribers: HashMap<u64, mpsc::Sender<Arc<RawValue>>>,
    /// Subscribers dropped from the feed, and why (read once by each).
    ended: HashMap<u64, FeedEnd>,
    /// Set when the feed ended for everyone.
    over: Option<FeedEnd>,
}

/// One subscription at the node and its subscribers.
struct Feed {
    state: Mutex<FeedState>,
    /// Cancelled when the last subscriber leaves: the pump unsubscribes at the node.
    stop: CancellationToken,
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a subscriber with a queue of `buffer`, unless the feed is over or stopping.
    fn join(self: &Arc<Self>, buffer: usize) -> Option<Subscriber> {
        let mut state = self.lock();
        if state.over.is_some() || self.stop.is_cancelled() {
            return None;
        }
        let (sender, receiver) = mpsc::channel(buffer);
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.insert(id, sender);
        Some(Subscriber { feed: self.clone(), id, receiver })
    }

    /// Hands `notification` to every subscriber that has room; drops the others (lagged).
    fn broadcast(&self, notification: Arc<RawValue>) {
        let mut state = self.lock();
        let mut lagged = Vec::new();
        for (id, sender) in &state.subscribers {
            if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(notification.clone()) {
                lagged.push(*id);
            }
        }
        for id in lagged {
            state.subscribers.remove(&id);
            state.ended.insert(id, FeedEnd::Lagged);
        }
    }

    /// The node's side ended: every subscriber ends with `end` after what it has queued.
    fn finish(&self, end: FeedEnd) {
        let mut state = self.lock();
        state.over = Some(end);
        state.subscribers.clear();
    }
}

/// A client subscription's place in a feed. Dropping it leaves the feed.
pub struct Subscriber {
    feed: Arc<Feed>,
    id: u64,
    receiver: mpsc::Receiver<Arc<RawValue>>,
}

impl Subscriber {
    /// Whether the feed dropped this subscriber (its queue was full) or ended.
    pub fn dropped(&self) -> bool {
        let state = self.feed.lock();
        state.over.is_some() || state.ended.contains_key(&self.id)
    }

    /// The next notification, in order; or how the feed ended for this subscriber (after every
    /// notification queued before the end).
    pub async fn next(&mut self) -> Result<Box<RawValue>, FeedEnd> {
        match self.receiver.recv().await {
            Some(notification) => Ok(RawValue::to_owned(&notification)),
            None => {
                let mut state = self.feed.lock();
                Err(state.ended.remove(&self.id).or(state.over).unwrap_or(FeedEnd::NodeGone))
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut state = self.feed.lock();
        state.subscribers.remove(&self.id);
        state.ended.remove(&self.id);
        if state.subscribers.is_empty() {
            self.feed.stop.cancel();
        }
    }
}

/// The feeds of the gateway, by key.
pub struct Feeds {
    feeds: Mutex<HashMap<FeedKey, Weak<Feed>>>,
    buffer: usize,
    tasks: TaskTracker,
}

impl Feeds {
    /// Feeds whose subscribers queue up to `buffer` notifications each; pumps run in `tasks`.
    pub fn new(buffer: usize, tasks: TaskTracker) -> Self {
        Feeds { feeds: Mutex::new(HashMap::new()), buffer: buffer.max(1), tasks }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FeedKey, Weak<Feed>>> {
        self.feeds.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place in the live feed of `key`, if there is one.
    pub fn join(&self, key: &FeedKey) -> Option<Subscriber> {
        self.lock().get(key).and_then(Weak::upgrade).and_then(|feed| feed.join(self.buffer))
    }

    /// Starts the feed of `key` on `upstream` (a subscription the caller just made at the node
    /// over `client`) and returns its first subscriber. If another feed of `key` started
    /// meanwhile, it is joined instead and `upstream` is unsubscribed.
    pub fn start(&self, key: FeedKey, client: Arc<WsClient>, upstream: Subscription<Box<RawValue>>) -> Subscriber {
        let mut feeds = self.lock();
        if let Some(subscriber) = feeds.get(&key).and_then(Weak::upgrade).and_then(|feed| feed.join(self.buffer)) {
            drop(feeds);
            self.tasks.spawn(async move {
                let _ = upstream.unsubscribe().await;
                drop(client);
            });
            return subscriber;
        }
        let feed = Arc::new(Feed {
            state: Mutex::new(FeedState { next_id: 0, subscribers: HashMap::new(), ended: HashMap::new(), over: None }),
            stop: CancellationToken::new(),
        });
        let first = feed.join(self.buffer).expect("a new feed takes subscribers");
        let instance = key.0.clone();
        feeds.retain(|_, feed| feed.strong_count() > 0);
        feeds.insert(key, Arc::downgrade(&feed));
        drop(feeds);
        crate::telemetry::metrics().record_node_subscription(&instance, 1);
        self.tasks.spawn(pump(instance, feed, client, upstream));
        first
    }
}

/// Reads the node's notifications and hands them to the feed's subscribers until the last one
/// leaves (then unsubscribes at the node) or the node's side ends.
async fn pump(instance: Arc<str>, feed: Arc<Feed>, client: Arc<WsClient>, mut upstream: Subscription<Box<RawValue>>) {
    loop {
        let item = tokio::select! {
            biased;
            _ = feed.stop.cancelled() => {
                let _ = upstream.unsubscribe().await;
                break;
            }
            item = upstream.next() => item,
        };
        match item {
            Some(Ok(notification)) => feed.broadcast(Arc::from(notification)),
            // A notification that is not JSON cannot be skipped silently either.
            Some(Err(_)) => {
                feed.finish(FeedEnd::NodeGone);
                break;
            }
            None => {
                let end = match upstream.close_reason() {
                    // The pump fell behind at the node socket: every subscriber missed it.
                    Some(SubscriptionCloseReason::Lagged) => FeedEnd::Lagged,
                    _ => FeedEnd::NodeGone,
                };
                feed.finish(end);
                break;
            }
        }
    }
    crate::telemetry::metrics().record_node_subscription(&instance, -1);
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(text.to_string()).unwrap())
    }

    fn feed() -> Arc<Feed> {
        Arc::new(Feed {
            state: Mutex::new(FeedState { next_id: 0, subscribers: HashMap::new(), ended: HashMap::new(), over: None }),
            stop: CancellationToken::new(),
        })
    }

    #[tokio::test]
    async fn a_full_subscriber_is_dropped_after_its_queue_while_the_others_get_everything() {
        let feed = feed();
        let mut slow = feed.join(2).unwrap();
        let mut fast = feed.join(2).unwrap();
        for n in 0..5 {
            feed.broadcast(raw(&n.to_string()));
            assert_eq!(fast.next().await.unwrap().get(), n.to_string());
        }
        assert_eq!(slow.next().await.unwrap().get(), "0");
        assert_eq!(slow.next().await.unwrap().get(), "1");
        assert_eq!(slow.next().await.err(), Some(FeedEnd::Lagged), "then it ends: no gap");
        feed.broadcast(raw("5"));
        assert_eq!(fast.next().await.unwrap().get(), "5");
        drop(slow);
        assert!(!feed.stop.is_cancelled(), "one subscriber is left");
        drop(fast);
        assert!(feed.stop.is_cancelled(), "the last one stops the feed");
        assert!(feed.join(2).is_none(), "a stopping feed takes no one");
    }

    #[tokio::test]
    async fn the_nodes_end_reaches_every_subscriber_after_what_it_queued() {
        let feed = feed();
        let (mut a, mut b) = (feed.join(4).unwrap(), feed.join(4).unwrap());
        feed.broadcast(raw("1"));
        feed.finish(FeedEnd::NodeGone);
        for subscriber in [&mut a, &mut b] {
            assert_eq!(subscriber.next().await.unwrap().get(), "1");
            assert_eq!(subscriber.next().await.err(), Some(FeedEnd::NodeGone));
        }
        assert!(feed.join(4).is_none());
    }

    #[test]
    fn the_same_params_written_differently_are_one_key() {
        let key = |text: &str| params_key(Some(&RawValue::from_string(text.to_string()).unwrap()));
        assert_eq!(
            key(r#"["logs", {"topics": [], "address": "0xa"}]"#),
            key(r#"["logs",{"address":"0xa","topics":[]}]"#)
        );
        assert_ne!(key(r#"["newHeads"]"#), key(r#"["logs",{"address":"0xa"}]"#));
        assert_eq!(params_key(None), "");
    }
}
