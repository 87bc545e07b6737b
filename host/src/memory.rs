//! Giving freed memory back to the operating system.
//!
//! Owns: asking mimalloc (the `ovsb` binary's global allocator) to collect what other threads
//! freed and to return empty pages. mimalloc hands memory freed by another thread back to the
//! page's owner only when that owner allocates or collects, and returns empty pages to the
//! system only when an allocation or a collection runs past its purge delay. A plugin copy
//! is made on a runtime worker and dropped by the runtime's sweeper thread, so after a burst of
//! calls followed by quiet (an idle tenant's life), workers that no longer allocate would keep
//! every dropped copy's memory resident. Must not: run on a hot path, or more than once a
//! second per thread.

use std::cell::Cell;
use std::time::{Duration, Instant};

// Linked for `mi_collect`: the binary's global allocator is mimalloc; in test binaries (the
// system allocator) the call only tidies mimalloc's own, unused, heap.
use mimalloc as _;

/// Least time between two collections on one thread.
const EVERY: Duration = Duration::from_secs(1);

#[allow(unsafe_code)]
mod ffi {
    unsafe extern "C" {
        /// mimalloc: collects the calling thread's heap (frees from other threads, empty
        /// pages, purges past their delay); `force` also purges at once.
        pub fn mi_collect(force: bool);
    }

    pub fn collect() {
        // SAFETY: takes no pointers; mimalloc serializes what it touches across threads.
        unsafe { mi_collect(false) }
    }
}

/// Collects the calling thread's heap, at most once a second per thread: for a thread about to
/// sleep (a runtime worker that found no work: `on_thread_park`).
pub fn collect_before_sleep() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    if LAST.get().is_some_and(|last| now.duration_since(last) < EVERY) {
        return;
    }
    LAST.set(Some(now));
    ffi::collect();
    let took = now.elapsed();
    if took >= Duration::from_millis(1) {
        tracing::debug!(took_us = took.as_micros(), "collected this thread's freed memory");
    }
}
