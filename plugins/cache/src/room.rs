//! Room for new answers: the oldest answers make way when the key-value store is full.
//!
//! Owns: the queue of stored answers, in the order they were stored (`cache:fifo`, and a slot
//! `cache:fifo:<n>` per answer naming its key), and eviction from its far end.
//! Must not: decide what is cached (that is `lib.rs`).
//!
//! Every answer the cache stores takes the next slot of the queue. When a write fails because
//! the store, or the cache's share of it, is full ([`kv::is_full`]), the oldest answers are
//! deleted, [`EVICT_BATCH`] at a time, and the write is tried again, up to [`MAX_ATTEMPTS`]
//! times. So a cache at its share keeps caching (the oldest answer first out), never takes the
//! room another plugin of the chain has, and gives back room when the whole store is full.
//! Oldest-first rather than least recently used: a hit then costs no write. Slots expire with
//! their answers, and eviction skips slots that already have.
//!
//! The queue's two ends are one value of fixed width (`<head> <tail>`, 20 digits each), updated
//! with compare-and-swap: copies of the plugin running side by side take distinct slots, and
//! replacing the value never needs more room.

use ovsb_plugin_sdk::{kv, log};

/// Key of the queue's ends: `<head> <tail>`, slots `tail + 1 ..= head` may hold answers.
pub const QUEUE_KEY: &str = "cache:fifo";
/// Answers evicted per attempt when the store is full.
pub const EVICT_BATCH: usize = 16;
/// Writes attempted (the first, then one after each eviction) before the cache gives up.
pub const MAX_ATTEMPTS: usize = 3;
/// Compare-and-swap attempts on the queue's ends before a push or a pop gives up.
const MAX_SWAPS: usize = 16;

/// The key of slot `n`.
pub fn slot_key(n: u64) -> String {
    format!("{QUEUE_KEY}:{n}")
}

fn ends_text(head: u64, tail: u64) -> String {
    format!("{head:020} {tail:020}")
}

/// The queue's ends as stored, and parsed (`(0, 0)` when absent or unreadable).
fn ends() -> (Option<Vec<u8>>, u64, u64) {
    let stored = kv::get(QUEUE_KEY);
    let parsed = stored
        .as_deref()
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.split_once(' '))
        .and_then(|(head, tail)| Some((head.parse().ok()?, tail.parse().ok()?)));
    let (head, tail) = parsed.unwrap_or((0, 0));
    (stored, head, tail)
}

/// Moves one end of the queue: `step` gives the new ends, or `None` to stop. Returns the new ends.
fn swap_ends(step: impl Fn(u64, u64) -> Option<(u64, u64)>) -> Result<Option<(u64, u64)>, String> {
    for _ in 0..MAX_SWAPS {
        let (stored, head, tail) = ends();
        let Some((new_head, new_tail)) = step(head, tail) else {
            return Ok(None);
        };
        if kv::compare_and_swap(QUEUE_KEY, stored.as_deref(), ends_text(new_head, new_tail).as_bytes(), None)? {
            return Ok(Some((new_head, new_tail)));
        }
    }
    Err(format!("{MAX_SWAPS} attempts to update {QUEUE_KEY} lost to concurrent calls"))
}

/// Stores the answer `value` at `key` for `ttl_ms`, making room by evicting the oldest answers
/// when the store is full.
pub fn keep(key: &str, value: &[u8], ttl_ms: u64) -> Result<(), String> {
    // The slot first: an answer is never stored without the slot that can evict it.
    let head = with_room(|| swap_ends(|head, tail| Some((head + 1, tail))))?.map_or(0, |(head, _)| head);
    with_room(|| kv::set(&slot_key(head), key.as_bytes(), Some(ttl_ms)))?;
    with_room(|| kv::set(key, value, Some(ttl_ms)))
}

/// Runs `write`; while it fails because the store is full, evicts the oldest answers and runs
/// it again (at most [`MAX_ATTEMPTS`] runs in all).
pub fn with_room<T>(mut write: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut result = write();
    for _ in 1..MAX_ATTEMPTS {
        match &result {
            Err(err) if kv::is_full(err) => {}
            _ => return result,
        }
        if evict(EVICT_BATCH) == 0 {
            return result;
        }
        result = write();
    }
    result
}

/// Deletes up to `count` of the oldest answers still stored; returns how many it deleted.
/// Slots whose answer already expired are skipped (at most `4 × count` slots are looked at).
pub fn evict(count: usize) -> usize {
    let mut deleted = 0;
    for _ in 0..count * 4 {
        if deleted == count {
            break;
        }
        let popped = match swap_ends(|head, tail| (tail < head).then_some((head, tail + 1))) {
            Ok(Some((_, tail))) => tail,
            Ok(None) => break,
            Err(err) => {
                log::debug(&format!("cannot evict: {err}"));
                break;
            }
        };
        let slot = slot_key(popped);
        if let Some(key) = kv::get(&slot).and_then(|bytes| String::from_utf8(bytes).ok())
            && kv::delete(&key)
        {
            deleted += 1;
        }
        kv::delete(&slot);
    }
    if deleted > 0 {
        log::debug(&format!("evicted the {deleted} oldest answers to make room"));
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::testing::MockHost;

    fn stored(n: usize) -> bool {
        kv::get(&format!("entry:{n}")).is_some()
    }

    #[test]
    fn a_full_store_evicts_the_oldest_answers_and_keeps_the_new_one() {
        let host = MockHost::current();
        host.set_kv_max_entries(Some(101));
        // 50 answers take 100 entries (answer and slot) plus the queue's ends.
        for n in 0..50 {
            keep(&format!("entry:{n}"), b"answer", 60_000).unwrap();
        }
        assert!((0..50).all(stored));
        keep("entry:50", b"answer", 60_000).expect("room is made");
        assert!(stored(50));
        assert!(!stored(0) && !stored(EVICT_BATCH - 1), "the oldest went first");
        assert!((EVICT_BATCH..50).all(stored), "only a batch went");
        for n in 51..500 {
            keep(&format!("entry:{n}"), b"answer", 60_000).unwrap();
        }
        assert!(stored(499) && host.kv_len() <= 101);
    }

    #[test]
    fn expired_slots_are_skipped_and_an_empty_queue_evicts_nothing() {
        let host = MockHost::current();
        assert_eq!(evict(4), 0);
        keep("old", b"1", 10).unwrap();
        keep("new", b"1", 60_000).unwrap();
        host.advance_ms(10);
        assert_eq!(evict(4), 1, "the expired answer's slot is skipped, the live one evicted");
        assert!(kv::get("new").is_none());
        assert_eq!(evict(4), 0);
        let (_, head, tail) = ends();
        assert_eq!((head, tail), (2, 2), "head and tail met");
    }

    #[test]
    fn a_store_full_of_other_things_gives_up_after_a_few_attempts() {
        let host = MockHost::current();
        host.set_kv_max_entries(Some(2));
        kv::set("a", b"1", None).unwrap();
        kv::set("b", b"1", None).unwrap();
        let err = keep("entry", b"answer", 60_000).unwrap_err();
        assert!(kv::is_full(&err), "{err}");
        let err = with_room(|| kv::set("c", b"1", None)).unwrap_err();
        assert!(kv::is_full(&err), "{err}");
        let other = with_room(|| Err::<(), _>("value at `x` is not an integer".to_string()));
        assert_eq!(other.unwrap_err(), "value at `x` is not an integer", "other errors are not retried");
    }
}
