//! The key-value store that plugins share per service instance (`kv-*` host functions).
//!
//! One [`KvStore`] belongs to one service instance; each plugin sees its own namespace in it
//! (keys `<plugin>/…`, prefixed by the host). Everything is bounded: key and value sizes, the
//! number of entries and the bytes held, in all and **per plugin**, so that one plugin (a cache
//! that fills up) cannot take the space another one needs (a rate limiter's buckets): a plugin at
//! its share gets an error naming it, and the others keep writing. Expired entries are dropped
//! when touched and swept when the store or a share is full. Every "full" refusal says `is full`
//! (the plugin SDK's `kv::is_full` reads it), so that a plugin can tell it from a value over the
//! size limit and make room from its own entries. The store lives in memory:
//! it is a cache for counters, buckets and answers, not a database.
//!
//! An idle tenant's store costs little: its shards are made at its first write, and
//! [`KvStore::sweep_expired`] (run when the instance's last plugin copy is dropped) drops the
//! expired entries and gives back the tables that empties.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Shards of one instance's store: enough that one instance's concurrent calls rarely wait for
/// one another (each holds a shard for a map operation), few enough that a tenant's store stays
/// small (each is a lock and a map).
const SHARDS: usize = 4;

pub use crate::config::KvLimits;

/// A namespace's usage: entries and bytes.
#[derive(Default, Clone, Copy)]
struct Usage {
    entries: usize,
    bytes: usize,
}

/// The namespace of a key: up to and including its first `/` (the host's `<plugin>/` prefix).
fn namespace(key: &str) -> &str {
    key.find('/').map_or("", |slash| &key[..=slash])
}

struct Entry {
    value: Vec<u8>,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
    fn size(key: &str, value: &[u8]) -> usize {
        key.len() + value.len()
    }
}

/// A bounded in-memory key-value store with TTLs and atomic updates.
pub struct KvStore {
    /// Made at the first write (an instance that never stores anything holds none).
    shards: OnceLock<Box<[Mutex<Shard>]>>,
    hasher: RandomState,
    limits: KvLimits,
    entries: AtomicUsize,
    bytes: AtomicUsize,
    /// Usage per namespace. Taken inside a shard's lock, never the other way round.
    namespaces: Mutex<HashMap<Box<str>, Usage>>,
}

type Shard = HashMap<String, Entry>;

impl KvStore {
    /// An empty store with these bounds.
    pub fn new(limits: KvLimits) -> Self {
        KvStore {
            shards: OnceLock::new(),
            hasher: RandomState::new(),
            limits,
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    fn namespaces(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Usage>> {
        self.namespaces.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entries and bytes a namespace (`<plugin>/`) holds.
    pub fn usage(&self, namespace: &str) -> (usize, usize) {
        self.namespaces().get(namespace).map_or((0, 0), |usage| (usage.entries, usage.bytes))
    }

    /// Takes room for `key` in its namespace's share (`old`: the size of the entry it replaces),
    /// or says why not.
    fn reserve(&self, key: &str, old: Option<usize>, new_size: usize) -> Result<(), String> {
        let name = namespace(key);
        let mut namespaces = self.namespaces();
        let usage = namespaces.get(name).copied().unwrap_or_default();
        let entries = usage.entries + usize::from(old.is_none());
        let bytes = usage.bytes.saturating_sub(old.unwrap_or(0)) + new_size;
        if entries > self.limits.max_entries_per_plugin || bytes > self.limits.max_bytes_per_plugin {
            return Err(format!(
                "this plugin's share of the key-value store is full ({} entries, {} bytes)",
                self.limits.max_entries_per_plugin, self.limits.max_bytes_per_plugin
            ));
        }
        match namespaces.get_mut(name) {
            // In place: a namespace in use keeps its name (no allocation per write).
            Some(usage) => *usage = Usage { entries, bytes },
            None => {
                namespaces.insert(name.into(), Usage { entries, bytes });
            }
        }
        Ok(())
    }

    /// Gives back the room of a removed entry of `size` bytes.
    fn release(&self, key: &str, size: usize) {
        let name = namespace(key);
        let mut namespaces = self.namespaces();
        if let Some(usage) = namespaces.get_mut(name) {
            usage.entries = usage.entries.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(size);
            if usage.entries == 0 {
                namespaces.remove(name);
            }
        }
    }

    /// Number of live or not yet swept entries.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shards(&self) -> &[Mutex<Shard>] {
        self.shards.get_or_init(|| (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect())
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere while it was held; the map itself is
        // always left consistent by the code below, so keep serving it.
        self.shards()[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops every expired entry, and the tables of shards (and of the namespaces' usage) left
    /// empty: what an idle instance keeps is its live entries. Waits for no shard in use.
    pub fn sweep_expired(&self) {
        let Some(shards) = self.shards.get() else { return };
        let now = Instant::now();
        for shard in shards.iter() {
            if let Ok(mut shard) = shard.try_lock() {
                self.sweep(&mut shard, now);
                if shard.is_empty() {
                    *shard = HashMap::new();
                }
            }
        }
        let mut namespaces = self.namespaces();
        if namespaces.is_empty() {
            *namespaces = HashMap::new();
        }
    }

    fn check_key(&self, key: &str) -> Result<(), String> {
        if key.len() > self.limits.max_key_bytes {
            return Err(format!("key is {} bytes, over the limit of {}", key.len(), self.limits.max_key_bytes));
        }
        Ok(())
    }

    /// Reads a live value.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.shards.get()?;
        let now = Instant::now();
        let mut shard = self.shard(key);
        self.live_entry(&mut shard, key, now).map(|e| e.value.clone())
    }

    /// Stores a value (a `Vec` is kept as it is, a slice copied).
    pub fn set(&self, key: &str, value: impl Into<Vec<u8>>, ttl: Option<Duration>) -> Result<(), String> {
        self.check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key);
        self.put(&mut shard, key, value.into(), ttl.map(|ttl| now + ttl), now)
    }

    /// Adds `delta` to the integer at `key`; `ttl` applies when the key is created.
    pub fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
        self.check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key);
        let (current, expires_at) = match self.live_entry(&mut shard, key, now) {
            Some(entry) => {
                let n = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| format!("value at `{key}` is not an integer"))?;
                (n, entry.expires_at)
            }
            None => (0, ttl.map(|ttl| now + ttl)),
        };
        let next = current.checked_add(delta).ok_or_else(|| format!("integer overflow at `{key}`"))?;
        self.put(&mut shard, key, next.to_string().into_bytes(), expires_at, now)?;
        Ok(next)
    }

    /// Replaces the value at `key` with `new` if the live value equals `expected` (a `Vec` is
    /// kept as it is, a slice copied).
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: impl Into<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<bool, String> {
        self.check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key);
        let current = self.live_entry(&mut shard, key, now).map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        self.put(&mut shard, key, new.into(), ttl.map(|ttl| now + ttl), now)?;
        Ok(true)
    }

    /// Removes a key; returns whether a live entry was there.
    pub fn delete(&self, key: &str) -> bool {
        if self.shards.get().is_none() {
            return false;
        }
        let now = Instant::now();
        let mut shard = self.shard(key);
        match self.remove(&mut shard, key) {
            Some(entry) => entry.live(now),
            None => false,
        }
    }

    fn live_entry<'s>(&self, shard: &'s mut Shard, key: &str, now: Instant) -> Option<&'s Entry> {
        if shard.get(key).is_some_and(|e| !e.live(now)) {
            self.remove(shard, key);
        }
        shard.get(key)
    }

    fn remove(&self, shard: &mut Shard, key: &str) -> Option<Entry> {
        let entry = shard.remove(key)?;
        let size = Entry::size(key, &entry.value);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.release(key, size);
        Some(entry)
    }

    fn sweep(&self, shard: &mut Shard, now: Instant) {
        let expired: Vec<String> = shard.iter().filter(|(_, e)| !e.live(now)).map(|(k, _)| k.clone()).collect();
        for key in expired {
            self.remove(shard, &key);
        }
    }

    /// Inserts or replaces, within the bounds; sweeps this shard's expired entries when full.
    fn put(
        &self,
        shard: &mut Shard,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<Instant>,
        now: Instant,
    ) -> Result<(), String> {
        if value.len() > self.limits.max_value_bytes {
            return Err(format!("value is {} bytes, over the limit of {}", value.len(), self.limits.max_value_bytes));
        }
        let new_size = Entry::size(key, &value);
        let old = shard.get(key).map(|e| Entry::size(key, &e.value));
        let fits = |store: &Self| {
            let entries = store.entries.load(Ordering::Relaxed) + usize::from(old.is_none());
            let bytes = store.bytes.load(Ordering::Relaxed) - old.unwrap_or(0) + new_size;
            entries <= store.limits.max_entries && bytes <= store.limits.max_total_bytes
        };
        let fits_share = |store: &Self| {
            let (entries, bytes) = store.usage(namespace(key));
            entries + usize::from(old.is_none()) <= store.limits.max_entries_per_plugin
                && bytes.saturating_sub(old.unwrap_or(0)) + new_size <= store.limits.max_bytes_per_plugin
        };
        if !fits(self) || !fits_share(self) {
            // Sweep this shard, then every other shard not busy right now (try_lock: waiting for
            // another shard while holding this one could deadlock).
            self.sweep(shard, now);
            for other in self.shards().iter() {
                if let Ok(mut other) = other.try_lock() {
                    self.sweep(&mut other, now);
                }
            }
            if !fits(self) {
                return Err("the key-value store of this instance is full".to_string());
            }
        }
        // The share is checked and taken in one step (concurrent writers of one plugin cannot
        // both take its last room).
        // (Measured again: the sweep may have removed an expired entry under this very key.)
        let old = shard.get(key).map(|e| Entry::size(key, &e.value));
        self.reserve(key, old, new_size)?;
        // A key already there is updated in place (no copy of the key per write).
        match shard.get_mut(key) {
            Some(entry) => {
                let previous = std::mem::replace(entry, Entry { value, expires_at });
                self.bytes.fetch_sub(Entry::size(key, &previous.value), Ordering::Relaxed);
            }
            None => {
                shard.insert(key.to_string(), Entry { value, expires_at });
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.bytes.fetch_add(new_size, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> KvStore {
        KvStore::new(KvLimits {
            max_key_bytes: 8,
            max_value_bytes: 16,
            max_entries: 3,
            max_total_bytes: 40,
            max_entries_per_plugin: 3,
            max_bytes_per_plugin: 40,
        })
    }

    #[test]
    fn a_plugin_at_its_share_is_refused_while_another_plugin_keeps_writing() {
        let kv = KvStore::new(KvLimits {
            max_entries: 10,
            max_entries_per_plugin: 4,
            max_bytes_per_plugin: 1000,
            ..KvLimits::default()
        });
        for n in 0..4 {
            kv.set(&format!("cache/{n}"), b"answer", None).unwrap();
        }
        let err = kv.set("cache/5", b"answer", None).unwrap_err();
        assert!(err.contains("this plugin's share") && err.contains("is full"), "{err}");
        kv.set("cache/0", b"replaced", None).expect("replacing within the share");
        for n in 0..4 {
            kv.incr(&format!("rate-limit/bucket:{n}"), 1, None).expect("the other plugin's share is untouched");
        }
        assert_eq!(kv.usage("cache/"), (4, 4 * "cache/0".len() + 6 * 3 + 8));
        assert!(kv.delete("cache/1"));
        kv.set("cache/5", b"answer", None).expect("a deletion gives room back");
        assert_eq!(kv.usage("cache/").0, 4);
        let mut bytes = 3 * "cache/0".len() + "cache/5".len() + 6 * 3;
        bytes += "replaced".len();
        assert_eq!(kv.usage("cache/").1, bytes);
    }

    #[test]
    fn expired_entries_give_their_plugin_its_room_back() {
        let kv = KvStore::new(KvLimits { max_entries_per_plugin: 2, ..KvLimits::default() });
        kv.set("cache/a", b"1", Some(Duration::from_millis(10))).unwrap();
        kv.set("cache/b", b"1", Some(Duration::from_millis(10))).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        kv.set("cache/c", b"1", None).expect("the expired entries are swept");
        assert_eq!(kv.usage("cache/"), (1, "cache/c".len() + 1));
    }

    #[test]
    fn an_idle_store_holds_its_live_entries_only() {
        let kv = KvStore::new(KvLimits::default());
        assert!(kv.shards.get().is_none(), "no shards before the first write");
        assert_eq!(kv.get("cache/a"), None);
        assert!(!kv.delete("cache/a"));
        assert!(kv.shards.get().is_none(), "reads make none");
        kv.set("cache/a", b"1", Some(Duration::from_millis(10))).unwrap();
        kv.set("rate-limit/b", b"1", Some(Duration::from_millis(10))).unwrap();
        kv.set("cache/anchor", b"1", None).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        kv.sweep_expired();
        assert_eq!(kv.len(), 1);
        assert_eq!((kv.usage("cache/"), kv.usage("rate-limit/")), ((1, "cache/anchor".len() + 1), (0, 0)));
        let tables = kv.shards.get().unwrap().iter().filter(|s| s.lock().unwrap().capacity() > 0).count();
        assert_eq!(tables, 1, "only the shard of the live entry keeps a table");
        assert_eq!(kv.get("cache/anchor"), Some(b"1".to_vec()));
    }

    #[test]
    fn values_expire_after_their_ttl() {
        let kv = small();
        kv.set("a", b"1", Some(Duration::from_millis(30))).unwrap();
        assert_eq!(kv.get("a"), Some(b"1".to_vec()));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(kv.get("a"), None);
        assert_eq!(kv.len(), 0, "an expired entry is dropped when touched");
    }

    #[test]
    fn oversized_keys_and_values_are_refused_and_change_nothing() {
        let kv = small();
        assert!(kv.set("much-too-long", b"1", None).unwrap_err().contains("key is 13 bytes"));
        assert!(kv.set("k", [0; 17], None).unwrap_err().contains("value is 17 bytes"));
        assert!(kv.is_empty());
    }

    #[test]
    fn a_full_store_refuses_new_keys_after_sweeping_expired_ones() {
        let kv = small();
        kv.set("a", b"1", Some(Duration::from_millis(10))).unwrap();
        kv.set("b", b"1", None).unwrap();
        kv.set("c", b"1", None).unwrap();
        kv.set("b", b"2", None).expect("replacing a key never needs room");
        std::thread::sleep(Duration::from_millis(20));
        kv.set("d", b"1", None).expect("the expired `a` is swept to make room");
        assert_eq!(kv.len(), 3);
        let err = kv.set("e", b"1", None).unwrap_err();
        assert!(err.contains("is full"), "the SDK's kv::is_full reads this: {err}");
        assert_eq!(kv.get("e"), None);
    }

    #[test]
    fn incr_keeps_the_ttl_of_the_entry_it_updates() {
        let kv = small();
        assert_eq!(kv.incr("n", 2, Some(Duration::from_millis(30))), Ok(2));
        assert_eq!(kv.incr("n", 2, Some(Duration::from_secs(60))), Ok(4));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(kv.get("n"), None);
    }

    #[test]
    fn concurrent_increments_are_all_counted() {
        let kv = std::sync::Arc::new(KvStore::new(KvLimits::default()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| drop(kv.incr("n", 1, None))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(kv.get("n"), Some(b"8000".to_vec()));
    }

    #[test]
    fn compare_and_swap_is_atomic_under_contention() {
        let kv = std::sync::Arc::new(KvStore::new(KvLimits::default()));
        kv.set("v", b"0", None).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 500 {
                        let cur = kv.get("v").unwrap();
                        let n: u64 = std::str::from_utf8(&cur).unwrap().parse().unwrap();
                        if kv.compare_and_swap("v", Some(&cur), (n + 1).to_string().as_bytes(), None).unwrap() {
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(kv.get("v"), Some(b"2000".to_vec()));
    }
}
