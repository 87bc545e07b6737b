//! # rate-limit: a token bucket per binding
//!
//! Limits how many calls each binding (each set of credentials) of a service instance may make.
//! Calls over the limit are answered with an error and never reach the node or later plugins.
//!
//! ## Configuration
//!
//! ```json
//! {"requests_per_second": 10, "burst": 20}
//! ```
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `requests_per_second` | number, required | — | the rate at which the bucket refills: 0.000001 to 1000000, fractions allowed (`0.5` is one call every two seconds) |
//! | `burst` | integer | `requests_per_second` rounded up | the size of the bucket: how many calls may arrive at once after a quiet period; 1 to 1000000 |
//!
//! Unknown fields are rejected, and so is a missing configuration (`null`).
//!
//! ## Errors
//!
//! | code | when | `data` |
//! |---|---|---|
//! | -32005 (limit exceeded) | the caller's bucket is empty | `{"retry_after_ms": N}`: milliseconds until a token is available |
//! | -32005 (limit exceeded) | 16 attempts to update the bucket lost to concurrent calls | `{"retry_after_ms": N}`: one token's time, at least 50 ms (`CONTENDED_RETRY_MS`) |
//! | -32005 (limit exceeded) | the bucket could not be updated (the key-value store, or this plugin's share of it, is full or refused the write) | `{"retry_after_ms": N}`: one token's time, at least 1000 ms (`STORE_RETRY_MS`): room comes back as idle buckets expire, not within milliseconds, so clients must not retry at once |
//!
//! The limiter fails closed: a call it cannot account for is refused, not let through. The
//! refused call never reaches the node.
//!
//! ## Behaviour
//!
//! There is one bucket per binding (the `binding-id` of the call context), and one for the
//! instance's calls without a binding (for example the operator's health checks). A bucket holds
//! at most `burst` tokens and starts full; every call takes one token, and tokens come back at
//! `requests_per_second`. A refused call takes nothing.
//!
//! The buckets live in the host's key-value store (keys `bucket:binding:<binding id>` and
//! `bucket:instance`), so every copy of the plugin serving the instance shares them. A bucket
//! is stored as one number, the time at which it will be full again (the "theoretical arrival
//! time" of the GCRA formulation of a token bucket, in nanoseconds since the Unix epoch), and
//! updated with compare-and-swap: a copy reads it, decides, and writes the new value only if
//! nobody changed it in between, else reads again (at most 16 attempts). So under concurrency no
//! more calls get through than the bucket allows. An entry expires when its bucket is full again,
//! so idle bindings cost no space. Time comes from the host's clock (`now-ms`); if the clock
//! steps back, a bucket is stored as empty (its next token one token's time away) rather than
//! blocked until the clock catches up.
//!
//! Only the `on-call` hook is declared.

use ovsb_plugin_sdk::{Call, Config, Context, Decision, Hooks, Plugin, RpcError, codes, json_kind, kv, log, now_ms};
use serde_json::{Map, Value, json};

/// Most compare-and-swap attempts per call before the call is refused.
pub const MAX_ATTEMPTS: usize = 16;
/// Highest `requests_per_second`.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Lowest `requests_per_second` (about one call every 11.6 days).
pub const MIN_RATE: f64 = 0.000_001;
/// Largest `burst`.
pub const MAX_BURST: u64 = 1_000_000;
/// Least `retry_after_ms` of a call refused because the bucket could not be updated (the
/// key-value store is full or refused the write).
pub const STORE_RETRY_MS: u64 = 1000;
/// Least `retry_after_ms` of a call refused because every attempt lost to concurrent calls.
pub const CONTENDED_RETRY_MS: u64 = 50;

const NANOS_PER_SECOND: f64 = 1e9;
const NANOS_PER_MS: u128 = 1_000_000;
const FIELDS: [&str; 2] = ["requests_per_second", "burst"];

/// Where buckets live: the host's key-value store ([`HostKv`]), or a stand-in in tests.
pub trait BucketStore {
    /// The value at `key`, if any.
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Replaces the value at `key` with `new` if it is `expected` (`None`: absent).
    fn compare_and_swap(&mut self, key: &str, expected: Option<&[u8]>, new: &[u8], ttl_ms: u64)
    -> Result<bool, String>;
}

/// The host's key-value store, shared by every copy of the plugin.
pub struct HostKv;

impl BucketStore for HostKv {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        kv::get(key)
    }

    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, String> {
        kv::compare_and_swap(key, expected, new, Some(ttl_ms))
    }
}

/// What the limiter decided for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A token was taken: the call may pass.
    Admitted,
    /// The bucket is empty; a token will be there in `retry_after_ms`.
    Limited {
        /// Milliseconds until a token is available (at least 1).
        retry_after_ms: u64,
    },
    /// Every attempt to update the bucket lost to another call.
    Contended,
    /// The store refused the update.
    StoreFailed(String),
}

/// The limits: a bucket of `burst` tokens refilled at `requests_per_second`, in GCRA terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limiter {
    /// Time for one token to come back, in nanoseconds.
    interval_ns: u128,
    /// How far ahead of now the bucket's "full again" time may be while a token is left:
    /// `(burst - 1) × interval`.
    tolerance_ns: u128,
}

impl Limiter {
    /// A limiter for `rate` tokens per second and a bucket of `burst` (both already validated).
    pub fn new(rate: f64, burst: u64) -> Self {
        let interval_ns = ((NANOS_PER_SECOND / rate).round() as u128).max(1);
        Limiter { interval_ns, tolerance_ns: interval_ns * u128::from(burst - 1) }
    }

    /// Takes a token from the bucket at `key`, if there is one, at `now_ms`.
    pub fn admit(&self, store: &mut impl BucketStore, key: &str, now_ms: u64) -> Verdict {
        let now = u128::from(now_ms) * NANOS_PER_MS;
        for _ in 0..MAX_ATTEMPTS {
            let current = store.get(key);
            // Absent, expired or unreadable: a full bucket (the write below replaces a bad value).
            let full_at = current
                .as_deref()
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .and_then(|text| text.parse::<u128>().ok())
                .unwrap_or(now)
                .max(now);
            // No admitted call leaves the bucket further ahead than this. A value beyond it means
            // the clock stepped back (or the limits changed): store the bucket as empty rather
            // than blocked for however long the step was, then decide again.
            let latest = now + self.tolerance_ns + self.interval_ns;
            if full_at > latest {
                let ttl_ms = u64::try_from((latest - now).div_ceil(NANOS_PER_MS)).unwrap_or(u64::MAX);
                match store.compare_and_swap(key, current.as_deref(), latest.to_string().as_bytes(), ttl_ms) {
                    Ok(_) => continue,
                    Err(err) => return Verdict::StoreFailed(err),
                }
            }
            let ahead = full_at - now;
            if ahead > self.tolerance_ns {
                let wait_ns = ahead - self.tolerance_ns;
                return Verdict::Limited { retry_after_ms: wait_ns.div_ceil(NANOS_PER_MS).max(1) as u64 };
            }
            let next = full_at + self.interval_ns;
            let ttl_ms = u64::try_from((next - now).div_ceil(NANOS_PER_MS)).unwrap_or(u64::MAX).max(1);
            match store.compare_and_swap(key, current.as_deref(), next.to_string().as_bytes(), ttl_ms) {
                Ok(true) => return Verdict::Admitted,
                Ok(false) => continue,
                Err(err) => return Verdict::StoreFailed(err),
            }
        }
        Verdict::Contended
    }

    /// One token's time in milliseconds (at least 1): the retry hint when the bucket's state is
    /// unknown.
    pub fn interval_ms(&self) -> u64 {
        u64::try_from(self.interval_ns.div_ceil(NANOS_PER_MS)).unwrap_or(u64::MAX).max(1)
    }
}

/// The key of the bucket for calls with this binding (or without one).
pub fn bucket_key(binding_id: Option<&str>) -> String {
    match binding_id {
        Some(binding) => format!("bucket:binding:{binding}"),
        None => "bucket:instance".to_string(),
    }
}

/// The plugin: see the module docs.
pub struct RateLimit {
    limiter: Limiter,
}

impl RateLimit {
    /// The limiter built from the configuration.
    pub fn limiter(&self) -> Limiter {
        self.limiter
    }
}

fn limit_error(message: &str, retry_after_ms: u64) -> Decision {
    Decision::respond_err(
        RpcError::new(codes::LIMIT_EXCEEDED, message).with_data(&json!({"retry_after_ms": retry_after_ms})),
    )
}

impl Plugin for RateLimit {
    fn configure(config: Config) -> Result<Self, String> {
        let settings = settings(&config)?;
        let rate = match settings.get("requests_per_second") {
            None => {
                return Err("invalid configuration: requests_per_second is required, for example \
                     {\"requests_per_second\": 10, \"burst\": 20}"
                    .to_string());
            }
            Some(value) => value.as_f64().ok_or_else(|| {
                format!("invalid configuration: requests_per_second must be a number, got {}", json_kind(value))
            })?,
        };
        if rate.is_nan() || rate <= 0.0 {
            return Err("invalid configuration: requests_per_second must be above 0".to_string());
        }
        if rate < MIN_RATE {
            return Err(format!("invalid configuration: requests_per_second must be at least {MIN_RATE:.6}"));
        }
        if rate > MAX_RATE {
            return Err(format!("invalid configuration: requests_per_second must be at most {MAX_RATE}"));
        }
        let burst = match settings.get("burst") {
            None => (rate.ceil() as u64).max(1),
            Some(value) => {
                let burst = value.as_u64().ok_or_else(|| {
                    format!("invalid configuration: burst must be a whole number of at least 1, got {value}")
                })?;
                if burst == 0 {
                    return Err("invalid configuration: burst must be at least 1".to_string());
                }
                if burst > MAX_BURST {
                    return Err(format!("invalid configuration: burst must be at most {MAX_BURST}"));
                }
                burst
            }
        };
        Ok(RateLimit { limiter: Limiter::new(rate, burst) })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_CALL
    }

    fn on_call(&mut self, ctx: &Context, call: Call) -> Decision {
        let key = bucket_key(ctx.binding_id());
        match self.limiter.admit(&mut HostKv, &key, now_ms()) {
            Verdict::Admitted => Decision::Forward(call),
            Verdict::Limited { retry_after_ms } => {
                limit_error(&format!("limit exceeded: too many requests, retry in {retry_after_ms} ms"), retry_after_ms)
            }
            Verdict::Contended => {
                log::warn(&format!("refused a call: {MAX_ATTEMPTS} attempts to update {key} lost to concurrent calls"));
                let retry_after_ms = self.limiter.interval_ms().max(CONTENDED_RETRY_MS);
                limit_error("limit exceeded: too many concurrent requests, retry later", retry_after_ms)
            }
            Verdict::StoreFailed(err) => {
                log::warn(&format!("refused a call: cannot update {key} in the key-value store: {err}"));
                let retry_after_ms = self.limiter.interval_ms().max(STORE_RETRY_MS);
                limit_error(
                    &format!("limit exceeded: the rate limit could not be checked, retry in {retry_after_ms} ms"),
                    retry_after_ms,
                )
            }
        }
    }
}

/// The configuration as an object (`null` reads as `{}`), refusing unknown fields.
fn settings(config: &Config) -> Result<Map<String, Value>, String> {
    config.object(r#"{"requests_per_second": 10, "burst": 20}"#, &FIELDS)
}

ovsb_plugin_sdk::export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::testing::{self, Harness, MockHost, check_schema_fields};
    use ovsb_plugin_sdk::{CallContext, Outcome};

    fn harness(config: &str) -> Harness<RateLimit> {
        let host = MockHost::current();
        host.set_upstream(|_| Ok("\"0x1\"".to_string()));
        Harness::new(config).unwrap()
    }

    fn config_error(config: &str) -> String {
        Harness::<RateLimit>::new(config).err().expect("the configuration should be rejected")
    }

    fn retry_after(outcome: Outcome) -> u64 {
        let err = outcome.expect_err("the call should be refused");
        assert_eq!(err.code, codes::LIMIT_EXCEEDED);
        let data: Value = serde_json::from_str(err.data.as_deref().expect("data")).unwrap();
        data["retry_after_ms"].as_u64().expect("retry_after_ms")
    }

    fn as_binding(binding: Option<&str>) {
        MockHost::current().set_context(CallContext { binding_id: binding.map(str::to_string), ..testing::context() });
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_refuses_without_reaching_the_node() {
        let host = MockHost::current();
        let mut harness = harness(r#"{"requests_per_second": 2, "burst": 3}"#);
        for _ in 0..3 {
            assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        }
        let err = harness.call("eth_chainId", None).unwrap_err();
        assert_eq!(err.code, codes::LIMIT_EXCEEDED);
        assert_eq!(err.message, "limit exceeded: too many requests, retry in 500 ms");
        assert_eq!(err.data.as_deref(), Some(r#"{"retry_after_ms":500}"#));
        assert_eq!(host.upstream_calls().len(), 3, "the refused call must not reach the node");
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let host = MockHost::current();
        let mut harness = harness(r#"{"requests_per_second": 2, "burst": 2}"#);
        assert!(harness.call("m", None).is_ok());
        assert!(harness.call("m", None).is_ok());
        assert_eq!(retry_after(harness.call("m", None)), 500);

        host.advance_ms(200);
        assert_eq!(retry_after(harness.call("m", None)), 300, "a refused call takes no token");
        host.advance_ms(299);
        assert_eq!(retry_after(harness.call("m", None)), 1);
        host.advance_ms(1);
        assert!(harness.call("m", None).is_ok(), "one token is back after 500 ms");
        assert_eq!(retry_after(harness.call("m", None)), 500);

        // A long pause refills the bucket to `burst`, not beyond.
        host.advance_ms(60_000);
        assert!(harness.call("m", None).is_ok());
        assert!(harness.call("m", None).is_ok());
        assert!(harness.call("m", None).is_err());
    }

    #[test]
    fn a_steady_rate_at_the_limit_always_passes() {
        let host = MockHost::current();
        let mut harness = harness(r#"{"requests_per_second": 3, "burst": 1}"#);
        // 333.33 ms per token: calls 334 ms apart always find one.
        for _ in 0..50 {
            assert!(harness.call("m", None).is_ok());
            host.advance_ms(334);
        }
        // Immediately after a call, the next token is 333.33 ms away: the hint rounds up.
        assert!(harness.call("m", None).is_ok());
        assert_eq!(retry_after(harness.call("m", None)), 334);
    }

    #[test]
    fn fractional_rates_and_the_default_burst() {
        let host = MockHost::current();
        let mut harness = harness(r#"{"requests_per_second": 0.5}"#);
        assert!(harness.call("m", None).is_ok());
        assert_eq!(retry_after(harness.call("m", None)), 2000, "burst defaults to ceil(0.5) = 1");
        host.advance_ms(2000);
        assert!(harness.call("m", None).is_ok());

        let mut harness = self::harness(r#"{"requests_per_second": 2.5}"#);
        assert_eq!(harness.plugin().limiter(), Limiter::new(2.5, 3));
        host.reset();
        for _ in 0..3 {
            assert!(harness.call("m", None).is_ok());
        }
        assert_eq!(retry_after(harness.call("m", None)), 400);
    }

    #[test]
    fn each_binding_has_its_own_bucket_and_calls_without_one_share_the_instance_bucket() {
        let host = MockHost::current();
        let mut harness = harness(r#"{"requests_per_second": 1, "burst": 1}"#);
        as_binding(Some("alice"));
        assert!(harness.call("m", None).is_ok());
        assert!(harness.call("m", None).is_err());
        as_binding(Some("bob"));
        assert!(harness.call("m", None).is_ok(), "bob does not pay for alice");
        assert!(harness.call("m", None).is_err());
        as_binding(None);
        assert!(harness.call("m", None).is_ok());
        assert!(harness.call("m", None).is_err());
        assert!(kv::get("bucket:binding:alice").is_some());
        assert!(kv::get("bucket:binding:bob").is_some());
        assert!(kv::get("bucket:instance").is_some());
        assert_eq!(host.upstream_calls().len(), 3);
    }

    #[test]
    fn copies_share_the_bucket_through_the_key_value_store() {
        let mut first = harness(r#"{"requests_per_second": 1, "burst": 2}"#);
        let mut second = harness(r#"{"requests_per_second": 1, "burst": 2}"#);
        assert!(first.call("m", None).is_ok());
        assert!(second.call("m", None).is_ok());
        assert!(first.call("m", None).is_err());
        assert!(second.call("m", None).is_err());
    }

    #[test]
    fn a_bucket_entry_expires_once_the_bucket_is_full_again() {
        let host = MockHost::current();
        let mut harness = harness(r#"{"requests_per_second": 10, "burst": 5}"#);
        for _ in 0..3 {
            assert!(harness.call("m", None).is_ok());
        }
        host.advance_ms(299);
        assert!(kv::get("bucket:binding:test-binding").is_some());
        host.advance_ms(1);
        assert_eq!(kv::get("bucket:binding:test-binding"), None);
    }

    #[test]
    fn a_clock_stepping_back_empties_the_bucket_for_one_token_instead_of_blocking() {
        let host = MockHost::current();
        let mut harness = harness(r#"{"requests_per_second": 1, "burst": 2}"#);
        assert!(harness.call("m", None).is_ok());
        // The wall clock steps back an hour.
        host.set_now_ms(1_700_000_000_000 - 3_600_000);
        assert_eq!(retry_after(harness.call("m", None)), 1000);
        host.advance_ms(999);
        assert_eq!(retry_after(harness.call("m", None)), 1);
        host.advance_ms(1);
        assert!(harness.call("m", None).is_ok());
        assert_eq!(retry_after(harness.call("m", None)), 1000);
    }

    #[test]
    fn an_unreadable_bucket_counts_as_full_and_is_replaced() {
        let mut harness = harness(r#"{"requests_per_second": 1, "burst": 1}"#);
        kv::set("bucket:binding:test-binding", b"garbage", None).unwrap();
        assert!(harness.call("m", None).is_ok());
        assert!(harness.call("m", None).is_err());
    }

    /// The host's store, with another copy's call slipped in between this copy's read and its
    /// compare-and-swap, the first `interleave` times.
    struct Racing {
        other: Limiter,
        interleave: usize,
        other_verdicts: Vec<Verdict>,
        gets: usize,
    }

    impl BucketStore for Racing {
        fn get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.gets += 1;
            HostKv.get(key)
        }
        fn compare_and_swap(
            &mut self,
            key: &str,
            expected: Option<&[u8]>,
            new: &[u8],
            ttl: u64,
        ) -> Result<bool, String> {
            if self.interleave > 0 {
                self.interleave -= 1;
                self.other_verdicts.push(self.other.admit(&mut HostKv, key, now_ms()));
            }
            HostKv.compare_and_swap(key, expected, new, ttl)
        }
    }

    #[test]
    fn a_concurrent_update_is_noticed_and_the_bucket_is_never_overdrawn() {
        let limiter = Limiter::new(1.0, 2);
        let mut store = Racing { other: limiter, interleave: 2, other_verdicts: Vec::new(), gets: 0 };
        // Two other calls slip in while this one decides: they take both tokens, so this one,
        // on its third read, finds the bucket empty.
        let verdict = limiter.admit(&mut store, "k", now_ms());
        assert_eq!(store.other_verdicts, [Verdict::Admitted, Verdict::Admitted]);
        assert_eq!(verdict, Verdict::Limited { retry_after_ms: 1000 });
        assert_eq!(store.gets, 3);

        // With one slipped-in call, this one loses once and takes the second token on retry.
        MockHost::current().reset();
        let mut store = Racing { other: limiter, interleave: 1, other_verdicts: Vec::new(), gets: 0 };
        assert_eq!(limiter.admit(&mut store, "k", now_ms()), Verdict::Admitted);
        assert_eq!(store.gets, 2);
        assert_eq!(limiter.admit(&mut HostKv, "k", now_ms()), Verdict::Limited { retry_after_ms: 1000 });
    }

    /// A store where every compare-and-swap loses, or fails.
    struct Losing {
        attempts: usize,
        error: Option<String>,
    }

    impl BucketStore for Losing {
        fn get(&mut self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn compare_and_swap(&mut self, _: &str, _: Option<&[u8]>, _: &[u8], _: u64) -> Result<bool, String> {
            self.attempts += 1;
            match &self.error {
                Some(error) => Err(error.clone()),
                None => Ok(false),
            }
        }
    }

    #[test]
    fn the_update_is_retried_at_most_16_times_then_refused() {
        let limiter = Limiter::new(4.0, 4);
        let mut store = Losing { attempts: 0, error: None };
        assert_eq!(limiter.admit(&mut store, "k", now_ms()), Verdict::Contended);
        assert_eq!(store.attempts, MAX_ATTEMPTS);

        let mut store = Losing { attempts: 0, error: Some("the key-value store of this instance is full".into()) };
        assert_eq!(
            limiter.admit(&mut store, "k", now_ms()),
            Verdict::StoreFailed("the key-value store of this instance is full".into())
        );
        assert_eq!(store.attempts, 1);
        assert_eq!(limiter.interval_ms(), 250);
    }

    #[test]
    fn a_full_store_refuses_with_a_retry_hint_of_at_least_a_second_not_a_millisecond() {
        let host = MockHost::current();
        // 1000 calls a second: one token's time is 1 ms.
        let mut harness = harness(r#"{"requests_per_second": 1000}"#);
        host.set_kv_max_entries(Some(0));
        let err = harness.call("m", None).unwrap_err();
        assert_eq!(err.message, "limit exceeded: the rate limit could not be checked, retry in 1000 ms");
        assert_eq!(retry_after(Err(err)), STORE_RETRY_MS);
        assert!(host.upstream_calls().is_empty(), "it fails closed");
        // A slow bucket: its token's time is the longer wait.
        let mut slow = Harness::<RateLimit>::new(r#"{"requests_per_second": 0.2}"#).unwrap();
        assert_eq!(retry_after(slow.call("m", None)), 5000);
        host.set_kv_max_entries(None);
        assert!(slow.call("m", None).is_ok(), "room back, calls pass again");
    }

    #[test]
    fn only_the_on_call_hook_is_declared() {
        let mut harness = harness(r#"{"requests_per_second": 1}"#);
        assert_eq!(harness.plugin().hooks(), Hooks::ON_CALL);
    }

    #[test]
    fn good_configurations_are_accepted() {
        for config in [
            r#"{"requests_per_second": 10}"#,
            r#"{"requests_per_second": 10, "burst": 1}"#,
            r#"{"requests_per_second": 0.000001}"#,
            r#"{"requests_per_second": 1000000, "burst": 1000000}"#,
        ] {
            assert!(Harness::<RateLimit>::new(config).is_ok(), "{config}");
        }
        let mut harness = harness(r#"{"requests_per_second": 1000000, "burst": 1000000}"#);
        assert_eq!(harness.plugin().limiter(), Limiter { interval_ns: 1000, tolerance_ns: 999_999_000 });
    }

    #[test]
    fn bad_configurations_are_rejected_naming_the_field() {
        let cases = [
            ("null", "invalid configuration: requests_per_second is required"),
            ("{}", "invalid configuration: requests_per_second is required"),
            ("[1]", "invalid configuration: expected an object like"),
            (r#"{"requests_per_second": 0}"#, "invalid configuration: requests_per_second must be above 0"),
            (r#"{"requests_per_second": -3}"#, "invalid configuration: requests_per_second must be above 0"),
            (
                r#"{"requests_per_second": "10"}"#,
                "invalid configuration: requests_per_second must be a number, got a string",
            ),
            (
                r#"{"requests_per_second": 0.0000001}"#,
                "invalid configuration: requests_per_second must be at least 0.000001",
            ),
            (
                r#"{"requests_per_second": 1000001}"#,
                "invalid configuration: requests_per_second must be at most 1000000",
            ),
            (r#"{"requests_per_second": 1, "burst": 0}"#, "invalid configuration: burst must be at least 1"),
            (
                r#"{"requests_per_second": 1, "burst": 1.5}"#,
                "invalid configuration: burst must be a whole number of at least 1, got 1.5",
            ),
            (r#"{"requests_per_second": 1, "burst": -1}"#, "invalid configuration: burst must be a whole number"),
            (r#"{"requests_per_second": 1, "burst": 1000001}"#, "invalid configuration: burst must be at most 1000000"),
            (
                r#"{"requests_per_second": 1, "brust": 2}"#,
                "invalid configuration: unknown field `brust`, expected `requests_per_second` or `burst`",
            ),
        ];
        for (config, expected) in cases {
            let err = config_error(config);
            assert!(err.starts_with(expected), "{config}: {err}");
        }
    }

    #[test]
    fn the_schema_describes_the_same_fields_and_limits() {
        let schema = check_schema_fields(include_str!("../schema.json"), &FIELDS);
        assert_eq!(schema["required"], json!(["requests_per_second"]));
        assert_eq!(schema["properties"]["requests_per_second"]["minimum"].as_f64(), Some(MIN_RATE));
        assert_eq!(schema["properties"]["requests_per_second"]["maximum"].as_f64(), Some(MAX_RATE));
        assert_eq!(schema["properties"]["burst"]["maximum"], MAX_BURST);
    }
}
