//! The host functions: the only capabilities a plugin has.
//!
//! Compiled to wasm they call ovsb through the `ovsb:plugin/host` imports. Compiled natively
//! (for `cargo test`) they call the [`MockHost`](crate::testing::MockHost) of the current thread.

use crate::{Call, CallContext, Outcome};

#[cfg(target_arch = "wasm32")]
use crate::bindings::ovsb::plugin::host as imports;

/// Calls the instance's node directly, bypassing the rest of the chain, and waits for its answer.
/// The host caps how many upstream calls one chain call may make; past the cap, and when the node
/// fails or times out, the outcome is an error.
pub fn upstream(call: &Call) -> Outcome {
    #[cfg(target_arch = "wasm32")]
    {
        imports::upstream(call)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::with_mock_host(|host| host.upstream(call))
    }
}

/// The context of the call being processed (use [`Context`](crate::Context), which calls this
/// lazily).
pub(crate) fn call_context() -> CallContext {
    #[cfg(target_arch = "wasm32")]
    {
        imports::call_context()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::with_mock_host(|host| host.call_context())
    }
}

/// Tells the host that `hook` is a pass-through default (see [`Plugin::hooks`](crate::Plugin::hooks)).
pub(crate) fn decline_hook(hook: crate::Hooks) {
    #[cfg(target_arch = "wasm32")]
    {
        imports::decline_hook(hook)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::with_mock_host(|host| host.decline_hook(hook))
    }
}

/// Tells the host which calls the plugin sees (see [`Methods`](crate::Methods)); counts only
/// during `configure`.
pub(crate) fn select_methods(patterns: &[String], except: bool) {
    #[cfg(target_arch = "wasm32")]
    {
        imports::select_methods(patterns, except)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::with_mock_host(|host| host.select_methods(patterns, except))
    }
}

/// Milliseconds since the Unix epoch, from the host's wall clock (the mock host's clock in
/// native tests, which tests may move forward).
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        imports::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::with_mock_host(|host| host.now_ms())
    }
}

/// Log lines, tagged by the host with the plugin's name and the instance id. The host
/// rate-limits them per plugin copy and truncates each to 4 KiB.
pub mod log {
    use crate::Level;

    /// Writes a line at `level`.
    pub fn write(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        {
            super::imports::log(level, message)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::with_mock_host(|host| host.log(level, message))
        }
    }

    /// Writes a line at level `debug`.
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }

    /// Writes a line at level `info`.
    pub fn info(message: &str) {
        write(Level::Info, message)
    }

    /// Writes a line at level `warn`.
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }

    /// Writes a line at level `error`.
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// The key-value store of the service instance, shared by every copy of this plugin serving it
/// (other plugins and other instances have their own). Entries may carry a time to live.
pub mod kv {
    /// Reads a value; `None` if absent or expired.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        #[cfg(target_arch = "wasm32")]
        {
            super::imports::kv_get(key)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::with_mock_host(|host| host.kv_get(key))
        }
    }

    /// Stores a value, replacing any previous one; with `ttl_ms` it expires after that long.
    /// Fails when the key or value is too large, or the store (or this plugin's share of it) is
    /// full: [`is_full`] tells that error apart, so that a plugin can make room (delete some of
    /// its own entries) and try again.
    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        {
            super::imports::kv_set(key, value, ttl_ms)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::with_mock_host(|host| host.kv_set(key, value, ttl_ms))
        }
    }

    /// Atomically adds `delta` to the integer at `key` (absent counts as 0) and returns the sum.
    /// `ttl_ms` applies when the key is created.
    pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
        #[cfg(target_arch = "wasm32")]
        {
            super::imports::kv_incr(key, delta, ttl_ms)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::with_mock_host(|host| host.kv_incr(key, delta, ttl_ms))
        }
    }

    /// Atomically replaces the value at `key` with `new` if the present value is `expected`
    /// (`None`: absent). Returns whether it did.
    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        #[cfg(target_arch = "wasm32")]
        {
            super::imports::kv_compare_and_swap(key, expected, new, ttl_ms)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::with_mock_host(|host| host.kv_compare_and_swap(key, expected, new, ttl_ms))
        }
    }

    /// Whether `error`, returned by [`set`], [`incr`] or [`compare_and_swap`], says that the
    /// store or this plugin's share of it is full (the host's message then contains `is full`),
    /// rather than that the key or value is too large or the value is not an integer. Room
    /// comes back when entries expire or are deleted.
    pub fn is_full(error: &str) -> bool {
        error.contains(FULL)
    }

    /// What the host's error says when the store, or a plugin's share of it, is full.
    pub const FULL: &str = "is full";

    /// Removes a key; returns whether it was present.
    pub fn delete(key: &str) -> bool {
        #[cfg(target_arch = "wasm32")]
        {
            super::imports::kv_delete(key)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::with_mock_host(|host| host.kv_delete(key))
        }
    }
}
