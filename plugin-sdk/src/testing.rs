//! Unit-test a plugin natively, with plain `cargo test`.
//!
//! On native targets the host functions go to the [`MockHost`] of the current thread (each test
//! runs on its own thread, so tests do not see each other's state). Configure it, then drive the
//! plugin with a [`Harness`], which runs `configure`, `on_call`, the mock upstream and
//! `on_result` in the order ovsb does:
//!
//! ```
//! use ovsb_plugin_sdk::testing::{Harness, MockHost};
//! use ovsb_plugin_sdk::{Call, Config, Plugin};
//!
//! struct PassThrough;
//! impl Plugin for PassThrough {
//!     fn configure(_: Config) -> Result<Self, String> { Ok(PassThrough) }
//! }
//!
//! let host = MockHost::current();
//! host.set_upstream(|call| Ok(format!("\"{} answered\"", call.method)));
//! let mut harness = Harness::<PassThrough>::new("null").unwrap();
//! assert_eq!(harness.call("eth_chainId", None), Ok("\"eth_chainId answered\"".to_string()));
//! assert_eq!(host.upstream_calls().len(), 1);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::{Call, CallContext, Config, Context, Decision, Hooks, Level, Outcome, Plugin, RpcError, codes};

type UpstreamFn = Box<dyn FnMut(&Call) -> Outcome>;

struct Entry {
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
}

struct State {
    context: CallContext,
    declined: Hooks,
    selected: Vec<(Vec<String>, bool)>,
    now_ms: u64,
    upstream: Option<UpstreamFn>,
    upstream_calls: Vec<Call>,
    logs: Vec<(Level, String)>,
    kv: HashMap<String, Entry>,
    kv_max_entries: Option<usize>,
}

/// A stand-in for ovsb on native targets: a settable clock, a scripted upstream, an in-memory
/// key-value store with TTLs, and a record of log lines and upstream calls.
///
/// Cloning gives another handle to the same state.
#[derive(Clone)]
pub struct MockHost {
    state: Rc<RefCell<State>>,
}

thread_local! {
    static CURRENT: MockHost = MockHost::fresh();
}

/// Runs `f` with the current thread's mock host (used by the host functions).
pub(crate) fn with_mock_host<R>(f: impl FnOnce(&MockHost) -> R) -> R {
    CURRENT.with(|host| f(host))
}

impl MockHost {
    fn fresh() -> Self {
        MockHost {
            state: Rc::new(RefCell::new(State {
                context: context(),
                declined: Hooks::empty(),
                selected: Vec::new(),
                now_ms: 1_700_000_000_000,
                upstream: None,
                upstream_calls: Vec::new(),
                logs: Vec::new(),
                kv: HashMap::new(),
                kv_max_entries: None,
            })),
        }
    }

    /// The mock host that the host functions use on this thread.
    pub fn current() -> Self {
        with_mock_host(MockHost::clone)
    }

    /// Sets the context that [`Context`] reports (by default [`context()`]).
    pub fn set_context(&self, context: CallContext) {
        self.state.borrow_mut().context = context;
    }

    /// The hooks the plugin declared pass-through so far (its default `on_call` / `on_result`).
    pub fn declined_hooks(&self) -> Hooks {
        self.state.borrow().declined
    }

    pub(crate) fn decline_hook(&self, hook: Hooks) {
        self.state.borrow_mut().declined |= hook;
    }

    /// What the plugin told the host with `select-methods`, in order: `(patterns, except)`.
    pub fn selected_methods(&self) -> Vec<(Vec<String>, bool)> {
        self.state.borrow().selected.clone()
    }

    pub(crate) fn select_methods(&self, patterns: &[String], except: bool) {
        self.state.borrow_mut().selected.push((patterns.to_vec(), except));
    }

    pub(crate) fn call_context(&self) -> CallContext {
        self.state.borrow().context.clone()
    }

    /// Answers upstream calls with `f` (by default they fail with "no upstream in MockHost").
    pub fn set_upstream(&self, f: impl FnMut(&Call) -> Outcome + 'static) {
        self.state.borrow_mut().upstream = Some(Box::new(f));
    }

    /// The calls that reached the upstream so far, in order.
    pub fn upstream_calls(&self) -> Vec<Call> {
        self.state.borrow().upstream_calls.clone()
    }

    /// The log lines written so far, in order.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }

    /// Sets the clock (milliseconds since the Unix epoch).
    pub fn set_now_ms(&self, now_ms: u64) {
        self.state.borrow_mut().now_ms = now_ms;
    }

    /// Moves the clock forward; entries whose TTL runs out expire.
    pub fn advance_ms(&self, ms: u64) {
        self.state.borrow_mut().now_ms += ms;
    }

    /// Caps the key-value store at `max_entries` live entries (`None`: no cap, the default):
    /// past it, creating a key fails with the host's "this plugin's share of the key-value
    /// store is full" error ([`crate::kv::is_full`]), while replacing or deleting one works.
    pub fn set_kv_max_entries(&self, max_entries: Option<usize>) {
        self.state.borrow_mut().kv_max_entries = max_entries;
    }

    /// The number of live entries in the key-value store.
    pub fn kv_len(&self) -> usize {
        let state = self.state.borrow();
        let now = state.now_ms;
        state.kv.values().filter(|e| e.expires_at_ms.is_none_or(|t| t > now)).count()
    }

    /// Refuses to create `key` when the store is at its cap (expired entries are dropped first).
    fn room_for(state: &mut State, key: &str) -> Result<(), String> {
        let Some(max) = state.kv_max_entries else {
            return Ok(());
        };
        if Self::live(state, key).is_some() {
            return Ok(());
        }
        let now = state.now_ms;
        state.kv.retain(|_, e| e.expires_at_ms.is_none_or(|t| t > now));
        if state.kv.len() >= max {
            return Err(format!("this plugin's share of the key-value store {} ({max} entries)", crate::kv::FULL));
        }
        Ok(())
    }

    /// Forgets the key-value store, the recorded calls and logs; keeps clock and upstream.
    pub fn reset(&self) {
        let mut state = self.state.borrow_mut();
        state.kv.clear();
        state.upstream_calls.clear();
        state.logs.clear();
    }

    pub(crate) fn upstream(&self, call: &Call) -> Outcome {
        // Take the closure out while it runs so that it may itself use the mock host.
        let taken = {
            let mut state = self.state.borrow_mut();
            state.upstream_calls.push(call.clone());
            state.upstream.take()
        };
        let Some(mut f) = taken else {
            return Err(RpcError::new(codes::INTERNAL_ERROR, "no upstream in MockHost: call MockHost::set_upstream"));
        };
        let outcome = f(call);
        let mut state = self.state.borrow_mut();
        if state.upstream.is_none() {
            state.upstream = Some(f);
        }
        outcome
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.state.borrow().now_ms
    }

    pub(crate) fn log(&self, level: Level, message: &str) {
        self.state.borrow_mut().logs.push((level, message.to_string()));
    }

    fn live<'s>(state: &'s mut State, key: &str) -> Option<&'s mut Entry> {
        let now = state.now_ms;
        let expired = state.kv.get(key).is_some_and(|e| e.expires_at_ms.is_some_and(|t| t <= now));
        if expired {
            state.kv.remove(key);
        }
        state.kv.get_mut(key)
    }

    pub(crate) fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut state = self.state.borrow_mut();
        Self::live(&mut state, key).map(|e| e.value.clone())
    }

    pub(crate) fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        let mut state = self.state.borrow_mut();
        Self::room_for(&mut state, key)?;
        let expires_at_ms = ttl_ms.map(|ttl| state.now_ms.saturating_add(ttl));
        state.kv.insert(key.to_string(), Entry { value: value.to_vec(), expires_at_ms });
        Ok(())
    }

    pub(crate) fn kv_incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
        let mut state = self.state.borrow_mut();
        let now = state.now_ms;
        let current = match Self::live(&mut state, key) {
            Some(entry) => std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("value at `{key}` is not an integer"))?,
            None => 0,
        };
        let next = current.checked_add(delta).ok_or_else(|| format!("integer overflow at `{key}`"))?;
        let value = next.to_string().into_bytes();
        match Self::live(&mut state, key) {
            Some(entry) => entry.value = value,
            None => {
                Self::room_for(&mut state, key)?;
                let expires_at_ms = ttl_ms.map(|ttl| now.saturating_add(ttl));
                state.kv.insert(key.to_string(), Entry { value, expires_at_ms });
            }
        }
        Ok(next)
    }

    pub(crate) fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        let mut state = self.state.borrow_mut();
        let current = Self::live(&mut state, key).map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        Self::room_for(&mut state, key)?;
        let expires_at_ms = ttl_ms.map(|ttl| state.now_ms.saturating_add(ttl));
        state.kv.insert(key.to_string(), Entry { value: new.to_vec(), expires_at_ms });
        Ok(true)
    }

    pub(crate) fn kv_delete(&self, key: &str) -> bool {
        let mut state = self.state.borrow_mut();
        let present = Self::live(&mut state, key).is_some();
        state.kv.remove(key);
        present
    }
}

/// A context for tests: instance `test-instance`, binding `test-binding`, plan `test-plan`.
pub fn context() -> CallContext {
    CallContext {
        instance_id: "test-instance".to_string(),
        binding_id: Some("test-binding".to_string()),
        plan: "test-plan".to_string(),
        request_id: "test-request".to_string(),
    }
}

/// Checks a plugin's configuration schema (the text of its `schema.json`) against the fields its
/// configuration reads: a JSON Schema draft-04 object that allows no other property
/// (`additionalProperties: false`) and whose `properties` are exactly `fields`, in any order.
/// Returns the parsed schema, for the plugin's own checks of defaults and limits.
///
/// ```
/// let schema = ovsb_plugin_sdk::testing::check_schema_fields(
///     r#"{"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
///         "additionalProperties": false, "properties": {"ttl": {"maximum": 60}}}"#,
///     &["ttl"],
/// );
/// assert_eq!(schema["properties"]["ttl"]["maximum"], 60);
/// ```
///
/// # Panics
///
/// As a failed test assertion, when the schema is not JSON or does not match.
pub fn check_schema_fields(schema: &str, fields: &[&str]) -> serde_json::Value {
    let schema: serde_json::Value = serde_json::from_str(schema).expect("the schema is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    assert_eq!(schema["additionalProperties"], false);
    let mut properties: Vec<&str> =
        schema["properties"].as_object().expect("the schema has properties").keys().map(String::as_str).collect();
    properties.sort_unstable();
    let mut expected = fields.to_vec();
    expected.sort_unstable();
    assert_eq!(properties, expected);
    schema
}

/// Runs one plugin the way ovsb runs a one-plugin chain: `on_call`, then (when forwarded) the
/// mock host's upstream, then `on_result`.
pub struct Harness<P: Plugin> {
    plugin: P,
    /// What [`Plugin::methods`] answered after `configure`: ovsb too asks once.
    methods: crate::Methods,
}

impl<P: Plugin> Harness<P> {
    /// Configures the plugin with the JSON text `config`; the error is the plugin's message.
    pub fn new(config: &str) -> Result<Self, String> {
        let plugin = P::configure(Config::new(config))?;
        let methods = plugin.methods();
        methods.declare();
        Ok(Harness { plugin, methods })
    }

    /// The plugin, to inspect its state.
    pub fn plugin(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// Runs a call with `params` given as JSON text.
    pub fn call(&mut self, method: &str, params: Option<&str>) -> Outcome {
        self.run(Call::new(method, params.map(str::to_string)))
    }

    /// Runs a call through `on_call`, the mock upstream and `on_result`, skipping the hooks the
    /// plugin does not declare in [`Plugin::hooks`], and the whole plugin for calls that
    /// [`Plugin::methods`] does not take, as ovsb does. The context is the mock
    /// host's ([`MockHost::set_context`]).
    pub fn run(&mut self, call: Call) -> Outcome {
        if !self.methods.sees(&call.method) {
            // Not selected (`Plugin::methods`): ovsb passes the plugin by.
            return MockHost::current().upstream(&call);
        }
        let hooks = self.plugin.hooks();
        let call = if hooks.contains(Hooks::ON_CALL) {
            match self.plugin.on_call(&Context::from_host(), call) {
                Decision::Respond(outcome) => return outcome,
                Decision::Forward(call) => call,
            }
        } else {
            call
        };
        let outcome = MockHost::current().upstream(&call);
        if hooks.contains(Hooks::ON_RESULT) {
            self.plugin.on_result(&Context::from_host(), &call, outcome)
        } else {
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_hooks_tell_the_host_they_only_pass_through() {
        struct Defaults;
        impl Plugin for Defaults {
            fn configure(_: Config) -> Result<Self, String> {
                Ok(Defaults)
            }
        }
        let host = MockHost::current();
        host.set_upstream(|_| Ok("1".into()));
        let mut harness = Harness::<Defaults>::new("null").unwrap();
        assert_eq!(host.declined_hooks(), Hooks::empty());
        assert_eq!(harness.call("m", None), Ok("1".into()));
        assert_eq!(host.declined_hooks(), Hooks::ON_CALL | Hooks::ON_RESULT);
    }

    #[test]
    fn kv_entries_expire_when_the_mock_clock_passes_their_ttl() {
        let host = MockHost::current();
        crate::kv::set("k", b"v", Some(100)).unwrap();
        host.advance_ms(99);
        assert_eq!(crate::kv::get("k"), Some(b"v".to_vec()));
        host.advance_ms(1);
        assert_eq!(crate::kv::get("k"), None);
    }

    #[test]
    fn a_capped_kv_refuses_new_keys_with_the_full_error_and_accepts_replacements() {
        let host = MockHost::current();
        host.set_kv_max_entries(Some(2));
        crate::kv::set("a", b"1", Some(100)).unwrap();
        crate::kv::set("b", b"1", None).unwrap();
        let err = crate::kv::set("c", b"1", None).unwrap_err();
        assert!(crate::kv::is_full(&err), "{err}");
        assert!(crate::kv::is_full(&crate::kv::incr("n", 1, None).unwrap_err()));
        assert!(crate::kv::is_full(&crate::kv::compare_and_swap("c", None, b"1", None).unwrap_err()));
        assert!(!crate::kv::is_full("value at `s` is not an integer"));
        crate::kv::set("b", b"2", None).expect("replacing needs no room");
        assert_eq!(crate::kv::incr("b", 1, None), Ok(3));
        host.advance_ms(100);
        crate::kv::set("c", b"1", None).expect("the expired `a` made room");
        assert_eq!(host.kv_len(), 2);
        assert!(crate::kv::delete("b"));
        crate::kv::set("d", b"1", None).expect("a deletion made room");
    }

    #[test]
    fn kv_incr_counts_from_zero_and_refuses_non_integers() {
        assert_eq!(crate::kv::incr("n", 5, None), Ok(5));
        assert_eq!(crate::kv::incr("n", -2, None), Ok(3));
        assert_eq!(crate::kv::get("n"), Some(b"3".to_vec()));
        crate::kv::set("s", b"x", None).unwrap();
        assert!(crate::kv::incr("s", 1, None).unwrap_err().contains("not an integer"));
        crate::kv::set("max", i64::MAX.to_string().as_bytes(), None).unwrap();
        assert!(crate::kv::incr("max", 1, None).unwrap_err().contains("overflow"));
    }

    #[test]
    fn compare_and_swap_only_swaps_on_the_expected_value() {
        assert_eq!(crate::kv::compare_and_swap("c", None, b"1", None), Ok(true));
        assert_eq!(crate::kv::compare_and_swap("c", None, b"2", None), Ok(false));
        assert_eq!(crate::kv::compare_and_swap("c", Some(b"1"), b"2", None), Ok(true));
        assert_eq!(crate::kv::get("c"), Some(b"2".to_vec()));
        assert!(crate::kv::delete("c"));
        assert!(!crate::kv::delete("c"));
    }

    #[test]
    fn upstream_without_a_script_is_an_error_and_is_recorded() {
        let outcome = crate::upstream(&Call::new("eth_chainId", None));
        assert_eq!(outcome.unwrap_err().code, codes::INTERNAL_ERROR);
        assert_eq!(MockHost::current().upstream_calls().len(), 1);
    }

    #[test]
    fn params_as_reports_invalid_params_with_the_method_name() {
        let call = Call::new("eth_getBalance", Some("{\"not\":\"an array\"}".into()));
        let err = call.params_as::<Vec<String>>().unwrap_err();
        assert_eq!(err.code, codes::INVALID_PARAMS);
        assert!(err.message.contains("eth_getBalance"), "{}", err.message);
        let none = Call::new("eth_chainId", None);
        assert_eq!(none.params_as::<Option<Vec<String>>>(), Ok(None));
    }

    #[test]
    fn config_parse_errors_say_invalid_configuration() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Cfg {
            allow: Vec<String>,
        }
        let err = Config::new("{\"alow\": []}").parse::<Cfg>().unwrap_err();
        assert!(err.starts_with("invalid configuration: unknown field `alow`"), "{err}");
    }
}
