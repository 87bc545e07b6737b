//! The routing snapshot: which binding key opens which instance's endpoint.
//!
//! The control plane builds the whole [`RouteTable`] at start ([`Routes::replace`]) and then
//! changes one instance's routes at a time ([`Routes::update`], O(log n) on persistent maps),
//! swapping each new snapshot in atomically; the data plane only reads the current snapshot,
//! without locks and without touching the store. A key is known here only
//! by its SHA-256, as in the store, so a memory dump does not reveal working keys.
//!
//! A route may carry its binding's expiry (a plan's `binding_ttl`): every lookup compares it with
//! the clock and finds an expired key no more than a revoked one, so expiry needs no store query
//! and no sweep. Only routes that expire read the clock, and the clock is the kernel's coarse
//! realtime clock (read through the vDSO: no system call). It lags real time by up to a tick (a
//! few milliseconds), so a key may still open its route for those few milliseconds past its
//! expiry, never before.
//!
//! Each key also has a revocation token ([`Routes::revocation`]): what a key opened that outlives
//! one call (a WebSocket, its subscriptions) waits on it. The token is fired when a change drops
//! the key from the table (unbind, deprovision, and another replica's change applied here) and
//! carried over when a change rebuilds a key's route, so revocation reaches live connections at
//! once, without a query per message.

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::allowlist::{Allowlist, MethodRules};
use crate::plugins::Chain;
use crate::upstream::UpstreamPool;

/// SHA-256 of a binding key.
pub type KeyDigest = [u8; 32];

/// What every binding of one instance shares.
pub struct InstanceRoute {
    /// The service instance id.
    pub instance_id: Arc<str>,
    /// The plan id.
    pub plan: Arc<str>,
    /// The instance's plugin chain (the plan's policy plugins included).
    pub chain: Chain,
    /// The plan's method rules (its `policy`), checked in the host before any plugin and on
    /// every call to the node; `None` when the plan has none.
    pub policy: Option<Arc<MethodRules>>,
    /// The instance's node(s).
    pub upstream: Arc<UpstreamPool>,
    /// The instance's validator client, for validator plans.
    pub validator: Option<ValidatorRoute>,
    /// The instance's shares of answer bytes in flight and of upstream calls.
    pub budget: Arc<crate::budget::InstanceBudget>,
    /// The plan's compute-unit weights and quota (and the instance's quota counter).
    pub usage: Arc<crate::usage::InstanceUsage>,
}

/// How the gateway reaches a validator instance's client.
pub struct ValidatorRoute {
    /// Where the client is now (asks its driver; `None` while the client is not up).
    pub access: Arc<dyn Fn() -> Option<crate::upstream::ValidatorAccess> + Send + Sync>,
    /// The instance's keys (`0x` + lowercase hex).
    pub pubkeys: std::collections::HashSet<String>,
}

/// One binding's way in.
pub struct Route {
    /// The instance the key opens.
    pub instance: Arc<InstanceRoute>,
    /// The binding the key belongs to.
    pub binding_id: Arc<str>,
    /// When the binding's credentials stop working (ms since the Unix epoch), if they expire.
    pub expires_ms: Option<i64>,
    /// The binding's usage meter (and its quota counter).
    pub meter: Arc<crate::usage::BindingMeter>,
}

impl Route {
    /// Whether the route still opens its instance at `now_ms` (it has no expiry, or it is later).
    pub fn live_at(&self, now_ms: i64) -> bool {
        self.expires_ms.is_none_or(|expires| now_ms < expires)
    }

    fn live(&self) -> bool {
        self.expires_ms.is_none() || self.live_at(coarse_now_ms())
    }
}

/// Milliseconds since the Unix epoch, from the coarse realtime clock on Linux.
#[cfg(target_os = "linux")]
fn coarse_now_ms() -> i64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    now.tv_sec.saturating_mul(1000).saturating_add(now.tv_nsec as i64 / 1_000_000)
}

/// Milliseconds since the Unix epoch.
#[cfg(not(target_os = "linux"))]
fn coarse_now_ms() -> i64 {
    crate::store::now_ms()
}

/// An immutable snapshot of every route. Persistent maps (HAMTs): a clone is O(1) and shares
/// everything, an insert or removal copies O(log n) nodes, so a change to one instance costs the
/// same with ten routes or a hundred thousand.
#[derive(Clone, Default)]
pub struct RouteTable {
    by_key: imbl::HashMap<KeyDigest, Arc<Route>>,
    by_keymanager_token: imbl::HashMap<KeyDigest, Arc<Route>>,
    /// Each instance's keys and keymanager tokens, so that its routes can go without a scan.
    by_instance: imbl::HashMap<Arc<str>, imbl::Vector<Entry>>,
    /// Each key's revocation token, fired when the key leaves the table.
    revocations: imbl::HashMap<KeyDigest, CancellationToken>,
    /// The keys whose bindings restrict them (see [`Allowlist`]).
    allowlists: imbl::HashMap<KeyDigest, Arc<Allowlist>>,
    /// Tokens of keys removed by the change being made: fired once the change is swapped in,
    /// unless the change put the key back. Empty in every published snapshot.
    dropped: std::collections::HashMap<KeyDigest, CancellationToken>,
}

/// One key (or keymanager token) of an instance.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    Key(KeyDigest),
    KeymanagerToken(KeyDigest),
}

impl RouteTable {
    /// Adds the route of binding key `key` (by digest).
    pub fn insert(&mut self, key: KeyDigest, route: Route) -> Arc<Route> {
        let route = Arc::new(route);
        self.by_key.insert(key, route.clone());
        self.index(&route, Entry::Key(key));
        if !self.revocations.contains_key(&key) {
            let token = self.dropped.remove(&key).unwrap_or_default();
            self.revocations.insert(key, token);
        }
        route
    }

    /// Restricts key `key` (already inserted) to its binding's allowlist.
    pub fn restrict(&mut self, key: KeyDigest, allowlist: Arc<Allowlist>) {
        self.allowlists.insert(key, allowlist);
    }

    fn drop_revocation(&mut self, key: &KeyDigest) {
        self.allowlists.remove(key);
        if let Some(token) = self.revocations.remove(key) {
            self.dropped.insert(*key, token);
        }
    }

    /// Adds a validator binding's keymanager token (by digest) for `route`. The token has a
    /// revocation token of its own, as keys do: the keep-alive connections it keyed close when
    /// it goes.
    pub fn insert_keymanager_token(&mut self, token: KeyDigest, route: Arc<Route>) {
        self.index(&route, Entry::KeymanagerToken(token));
        self.by_keymanager_token.insert(token, route);
        if !self.revocations.contains_key(&token) {
            let revoked = self.dropped.remove(&token).unwrap_or_default();
            self.revocations.insert(token, revoked);
        }
    }

    fn index(&mut self, route: &Route, entry: Entry) {
        self.by_instance.entry(route.instance.instance_id.clone()).or_default().push_back(entry);
    }

    /// Removes a key's route (and the keymanager tokens of the same binding). Whether it was there.
    pub fn remove(&mut self, key: &KeyDigest) -> bool {
        let Some(route) = self.by_key.remove(key) else { return false };
        self.drop_revocation(key);
        let id = route.instance.instance_id.clone();
        let Some(entries) = self.by_instance.get(&id).cloned() else { return true };
        let mut kept = imbl::Vector::new();
        for entry in entries {
            match entry {
                Entry::Key(k) if k == *key => {}
                Entry::KeymanagerToken(t)
                    if self.by_keymanager_token.get(&t).is_some_and(|r| Arc::ptr_eq(r, &route)) =>
                {
                    self.by_keymanager_token.remove(&t);
                    self.drop_revocation(&t);
                }
                other => kept.push_back(other),
            }
        }
        if kept.is_empty() {
            self.by_instance.remove(&id);
        } else {
            self.by_instance.insert(id, kept);
        }
        true
    }

    /// Removes every route of an instance.
    pub fn remove_instance(&mut self, instance_id: &str) {
        let Some(entries) = self.by_instance.remove(instance_id) else { return };
        let ours = |route: Option<&Arc<Route>>| route.is_some_and(|r| &*r.instance.instance_id == instance_id);
        for entry in entries {
            match entry {
                Entry::Key(key) if ours(self.by_key.get(&key)) => {
                    self.by_key.remove(&key);
                    self.drop_revocation(&key);
                }
                Entry::KeymanagerToken(token) if ours(self.by_keymanager_token.get(&token)) => {
                    self.by_keymanager_token.remove(&token);
                    self.drop_revocation(&token);
                }
                _ => {}
            }
        }
    }

    /// Number of binding keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there is no route at all.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// What a key opens: its route, the token fired when it is revoked, its binding's allowlist.
pub struct Access {
    /// The route.
    pub route: Arc<Route>,
    /// Fired when the key leaves the table.
    pub revoked: CancellationToken,
    /// The binding's restrictions, if it has any.
    pub allowlist: Option<Arc<Allowlist>>,
}

/// The current snapshot, swapped atomically.
#[derive(Default)]
pub struct Routes {
    current: ArcSwap<RouteTable>,
}

impl Routes {
    /// The route a key opens, if any.
    pub fn lookup(&self, key: &str) -> Option<Arc<Route>> {
        self.lookup_digest(&key_digest(key))
    }

    /// The route of a key given by its digest, if it is still there and has not expired.
    pub fn lookup_digest(&self, digest: &KeyDigest) -> Option<Arc<Route>> {
        self.current.load().by_key.get(digest).filter(|route| route.live()).cloned()
    }

    /// The route a keymanager token (given by its digest) opens, if it is still there and its
    /// binding has not expired.
    pub fn lookup_keymanager(&self, digest: &KeyDigest) -> Option<Arc<Route>> {
        self.current.load().by_keymanager_token.get(digest).filter(|route| route.live()).cloned()
    }

    /// The revocation token of a key given by its digest, if the key is there now: fired when
    /// the key leaves the table.
    pub fn revocation(&self, digest: &KeyDigest) -> Option<CancellationToken> {
        self.current.load().revocations.get(digest).cloned()
    }

    /// Whether a key given by its digest is there, and if so its binding's allowlist (`None` for
    /// most keys): what the front service needs for every request.
    pub fn lookup_allowlist(&self, digest: &KeyDigest) -> Option<Option<Arc<Allowlist>>> {
        let table = self.current.load();
        table.by_key.get(digest).filter(|route| route.live()).map(|_| table.allowlists.get(digest).cloned())
    }

    /// What a key given by its digest opens, from one snapshot.
    pub fn access(&self, digest: &KeyDigest) -> Option<Access> {
        let table = self.current.load();
        Some(Access {
            route: table.by_key.get(digest).filter(|route| route.live())?.clone(),
            revoked: table.revocations.get(digest)?.clone(),
            allowlist: table.allowlists.get(digest).cloned(),
        })
    }

    /// Replaces the whole table. Keys that stay keep their revocation tokens; the tokens of keys
    /// that go are fired.
    pub fn replace(&self, mut table: RouteTable) {
        let previous = self.current.load_full();
        for (key, token) in previous.revocations.iter() {
            if table.revocations.contains_key(key) {
                table.revocations.insert(*key, token.clone());
            } else {
                table.dropped.insert(*key, token.clone());
            }
        }
        let dropped = std::mem::take(&mut table.dropped);
        self.current.store(Arc::new(table));
        dropped.values().for_each(CancellationToken::cancel);
    }

    /// Applies a change to a copy of the table and swaps the copy in; concurrent updates are
    /// retried, none is lost. The keys the change removed (and did not put back) are revoked.
    pub fn update(&self, change: impl Fn(&mut RouteTable)) {
        let mut dropped = std::collections::HashMap::new();
        self.current.rcu(|table| {
            let mut next = RouteTable::clone(table);
            change(&mut next);
            dropped = std::mem::take(&mut next.dropped);
            next
        });
        dropped.values().for_each(CancellationToken::cancel);
    }

    /// Number of keys in the current snapshot.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether the current snapshot has no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 of a key.
pub fn key_digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// A new binding key: 32 random bytes (256 bits), base64url without padding (43 characters,
/// safe in a URL path).
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Arc<InstanceRoute> {
        Arc::new(InstanceRoute {
            instance_id: id.into(),
            plan: "p".into(),
            chain: Chain::new(Vec::new()),
            policy: None,
            upstream: Arc::new(UpstreamPool::new(crate::upstream::UpstreamSettings {
                http: Vec::new(),
                ws: Vec::new(),
                deadline: std::time::Duration::from_secs(1),
                max_response_bytes: 1024,
                max_sockets_per_node: 4,
            })),
            validator: None,
            budget: Default::default(),
            usage: crate::usage::InstanceUsage::unmetered("p"),
        })
    }

    #[test]
    fn an_expired_key_or_keymanager_token_is_found_no_more_than_a_revoked_one() {
        let routes = Routes::default();
        let now = crate::store::now_ms();
        let (lasting, live, expired) = (new_key(), new_key(), new_key());
        let (live_token, expired_token) = (key_digest("live token"), key_digest("expired token"));
        let inst = instance("i");
        routes.update(|table| {
            table.insert(
                key_digest(&lasting),
                Route {
                    instance: inst.clone(),
                    binding_id: "a".into(),
                    expires_ms: None,
                    meter: crate::usage::BindingMeter::detached("i", "a"),
                },
            );
            let route = Route {
                instance: inst.clone(),
                binding_id: "b".into(),
                expires_ms: Some(now + 600_000),
                meter: crate::usage::BindingMeter::detached("i", "b"),
            };
            let route = table.insert(key_digest(&live), route);
            table.insert_keymanager_token(live_token, route);
            // A second ago: past any lag of the coarse clock.
            let route = Route {
                instance: inst.clone(),
                binding_id: "c".into(),
                expires_ms: Some(now - 1000),
                meter: crate::usage::BindingMeter::detached("i", "c"),
            };
            let route = table.insert(key_digest(&expired), route);
            table.insert_keymanager_token(expired_token, route);
        });
        assert!(routes.lookup(&lasting).is_some());
        assert_eq!(routes.lookup(&live).map(|r| r.binding_id.to_string()).as_deref(), Some("b"));
        assert!(routes.lookup_keymanager(&live_token).is_some());
        assert!(routes.lookup(&expired).is_none(), "an expired key opens nothing");
        assert!(routes.lookup_digest(&key_digest(&expired)).is_none());
        assert!(routes.lookup_keymanager(&expired_token).is_none(), "nor does its keymanager token");
        assert_eq!(routes.len(), 3, "no sweep: the expired route is still in the table until the unbind");
    }

    #[test]
    fn the_coarse_clock_is_the_realtime_clock_within_a_tick() {
        let before = crate::store::now_ms();
        let coarse = coarse_now_ms();
        let after = crate::store::now_ms();
        // The coarse clock is updated once per kernel tick (at most 10 ms at HZ=100).
        assert!(before - 20 <= coarse && coarse <= after, "{before} {coarse} {after}");
    }

    fn route(instance: &Arc<InstanceRoute>, binding: &str) -> Route {
        Route {
            instance: instance.clone(),
            binding_id: binding.into(),
            expires_ms: None,
            meter: crate::usage::BindingMeter::detached("i", binding),
        }
    }

    #[test]
    fn a_key_is_revoked_when_it_leaves_the_table_and_only_then() {
        let routes = Routes::default();
        let (i1, i2) = (instance("i1"), instance("i2"));
        routes.update(|t| {
            t.insert([1; 32], route(&i1, "a"));
            t.insert([2; 32], route(&i1, "b"));
            t.insert([3; 32], route(&i2, "c"));
        });
        let [a, b, c] = [1u8, 2, 3].map(|n| routes.revocation(&[n; 32]).unwrap());

        // An instance's routes rebuilt with the same keys: nothing is revoked.
        routes.update(|t| {
            t.remove_instance("i1");
            t.insert([1; 32], route(&i1, "a"));
            t.insert([2; 32], route(&i1, "b"));
        });
        assert!(!a.is_cancelled() && !b.is_cancelled());

        // Unbind.
        routes.update(|t| {
            t.remove(&[2; 32]);
        });
        assert!(b.is_cancelled() && !a.is_cancelled());
        assert!(routes.revocation(&[2; 32]).is_none());

        // A full reload that keeps `a` and drops `c` (another replica deprovisioned i2).
        let mut table = RouteTable::default();
        table.insert([1; 32], route(&i1, "a"));
        routes.replace(table);
        assert!(!a.is_cancelled() && c.is_cancelled());
        routes.update(|t| {
            t.remove(&[1; 32]);
        });
        assert!(a.is_cancelled(), "the token carried over by the reload is the one fired");

        // Deprovision.
        routes.update(|t| {
            t.insert([4; 32], route(&i2, "d"));
        });
        let d = routes.revocation(&[4; 32]).unwrap();
        routes.update(|t| t.remove_instance("i2"));
        assert!(d.is_cancelled());
    }

    #[test]
    fn new_keys_are_long_url_safe_and_distinct() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 43);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
        assert_ne!(a, b);
    }
}
