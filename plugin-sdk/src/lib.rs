//! # ovsb-plugin-sdk
//!
//! Write plugins for ovsb's JSON-RPC endpoints in Rust (see "Write a plugin" in ovsb's README). A plugin
//! sees every call to an instance's endpoint and may pass it on (possibly rewritten), answer it
//! itself, or post-process the node's answer. The contract is the WIT package `ovsb:plugin` in
//! the repository's `wit/` folder; this crate wraps it in plain Rust.
//!
//! ```
//! use ovsb_plugin_sdk::{Call, Config, Context, Decision, Plugin, RpcError};
//!
//! /// Refuses `eth_sendTransaction`: the node's accounts are not for dApps.
//! struct NoServerSigning;
//!
//! impl Plugin for NoServerSigning {
//!     fn configure(_config: Config) -> Result<Self, String> {
//!         Ok(NoServerSigning)
//!     }
//!
//!     fn on_call(&mut self, _ctx: &Context, call: Call) -> Decision {
//!         if call.method == "eth_sendTransaction" {
//!             return Decision::Respond(Err(RpcError::new(
//!                 ovsb_plugin_sdk::codes::METHOD_NOT_FOUND,
//!                 "eth_sendTransaction is disabled on this endpoint",
//!             )));
//!         }
//!         Decision::Forward(call)
//!     }
//! }
//!
//! ovsb_plugin_sdk::export_plugin!(NoServerSigning);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! resulting `.wasm` file is a component that ovsb loads. Test it natively with plain
//! `cargo test`: on targets other than wasm (where the `testing` module exists) the host
//! functions ([`upstream`], [`kv`], [`log`], [`now_ms`], the [`Context`]) are served by the
//! [`testing::MockHost`] of the current thread.
//!
//! ## Layout
//! - the crate root: the [`Plugin`] trait, the contract's types with helpers, [`Methods`] and
//!   [`glob_matches`] (which calls a plugin sees), [`export_plugin!`];
//! - [`kv`], [`log`], [`upstream`], [`now_ms`]: the host functions, the only capabilities a
//!   plugin has;
//! - [`testing`]: the mock host, a harness that runs a plugin the way ovsb does, and
//!   [`testing::check_schema_fields`], which holds a `schema.json` to the fields a plugin reads;
//! - `bindings`: generated from the WIT file (not for direct use).

// The generated bindings and the export macro name this crate by its absolute path.
extern crate self as ovsb_plugin_sdk;

#[doc(hidden)]
pub mod bindings;
mod glob;
mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

pub use glob::glob_matches;
pub use host::{kv, log, now_ms, upstream};
pub use types::{Config, Context, codes, json_kind, ok, ok_raw};

/// One JSON-RPC call: `method` and the JSON text of `params` (see [`Call::params_as`]).
pub use bindings::ovsb::plugin::types::Call;
/// Who is calling, as the host reports it (see [`Context`], which fetches it on first use).
pub use bindings::ovsb::plugin::types::Context as CallContext;
/// What [`Plugin::on_call`] decided: forward the call or respond to it.
pub use bindings::ovsb::plugin::types::Decision;
/// The hooks a plugin implements (see [`Plugin::hooks`]).
pub use bindings::ovsb::plugin::types::Hooks;
/// Severity of a log line.
pub use bindings::ovsb::plugin::types::Level;
/// The answer to a call: `Ok` holds the JSON text of `result`, `Err` a JSON-RPC error.
pub use bindings::ovsb::plugin::types::Outcome;
/// A JSON-RPC error object.
pub use bindings::ovsb::plugin::types::RpcError;

/// A plugin. Every method but [`configure`](Plugin::configure) has a pass-through default.
///
/// ovsb runs several copies of a plugin side by side (each in its own sandbox) and reuses a copy
/// for many calls, so `self` may carry state between calls of that one copy; state that every
/// copy must see goes in the [`kv`] store.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its configuration in the instance's chain. Runs for every new copy
    /// of the plugin, first when the operator provisions an instance with it: an `Err` there is
    /// shown to the operator as a 400, so say what is wrong and how to fix it.
    /// [`Config::parse`] turns serde's errors into such messages.
    fn configure(config: Config) -> Result<Self, String>;

    /// The hooks this plugin implements; ovsb skips the others. The default is both; the
    /// pass-through defaults of `on_call` / `on_result` also tell ovsb on their first run, so a
    /// plugin that overrides only one hook costs one wasm call per request without overriding
    /// this.
    fn hooks(&self) -> Hooks {
        Hooks::ON_CALL | Hooks::ON_RESULT
    }

    /// The calls this plugin sees, by method; ovsb passes every other call by as if the plugin
    /// were not in the chain, without calling into wasm at all. The default is every call.
    /// Asked once, after [`configure`](Plugin::configure), so it may depend on the
    /// configuration; it must take every call the plugin would act on.
    ///
    /// ```
    /// # use ovsb_plugin_sdk::Methods;
    /// // A cache of answers to these methods only:
    /// let methods = Methods::matching(["eth_chainId", "eth_getBlockBy*"]);
    /// assert!(methods.sees("eth_getBlockByHash") && !methods.sees("eth_blockNumber"));
    /// // A filter that refuses everything outside an allowlist, and `debug_*` within it:
    /// let methods = Methods::not_matching(["eth_*"]).or(Methods::matching(["debug_*"]));
    /// assert!(methods.sees("debug_traceCall") && methods.sees("net_version") && !methods.sees("eth_call"));
    /// ```
    fn methods(&self) -> Methods {
        Methods::all()
    }

    /// Sees a call on its way to the node, in chain order. Return [`Decision::Forward`] with the
    /// call (rewritten or not) to pass it on, or [`Decision::Respond`] to answer it yourself: the
    /// rest of the chain and the node are then skipped, and so is this plugin's `on_result`.
    fn on_call(&mut self, ctx: &Context, call: Call) -> Decision {
        let _ = ctx;
        host::decline_hook(Hooks::ON_CALL);
        Decision::Forward(call)
    }

    /// Sees the outcome of a call this plugin forwarded (`call` is the call as it forwarded it),
    /// in reverse chain order. Return it unchanged to pass it through.
    fn on_result(&mut self, ctx: &Context, call: &Call, outcome: Outcome) -> Outcome {
        let _ = (ctx, call);
        host::decline_hook(Hooks::ON_RESULT);
        outcome
    }
}

/// The calls a plugin sees (see [`Plugin::methods`]): every call, or those whose method a set
/// of globs ([`glob_matches`]) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods {
    /// `None`: every call. Else a call is seen if any rule takes it: a rule `(patterns, false)`
    /// takes the methods that match one of its patterns, `(patterns, true)` those that match none.
    rules: Option<Vec<(Vec<String>, bool)>>,
}

impl Methods {
    /// Every call (the default).
    pub fn all() -> Self {
        Methods { rules: None }
    }

    /// The calls whose method matches one of `patterns` (none, if `patterns` is empty).
    pub fn matching<S: Into<String>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Methods { rules: Some(vec![(patterns.into_iter().map(Into::into).collect(), false)]) }
    }

    /// The calls whose method matches none of `patterns`.
    pub fn not_matching<S: Into<String>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Methods { rules: Some(vec![(patterns.into_iter().map(Into::into).collect(), true)]) }
    }

    /// The calls that either takes.
    pub fn or(self, other: Methods) -> Self {
        match (self.rules, other.rules) {
            (Some(mut mine), Some(theirs)) => {
                mine.extend(theirs);
                Methods { rules: Some(mine) }
            }
            _ => Methods::all(),
        }
    }

    /// Whether a call of `method` is seen.
    pub fn sees(&self, method: &str) -> bool {
        self.rules.as_ref().is_none_or(|rules| {
            rules.iter().any(|(patterns, except)| patterns.iter().any(|p| glob_matches(p, method)) != *except)
        })
    }

    /// Tells the host (`select-methods`); nothing for every call.
    pub(crate) fn declare(&self) {
        for (patterns, except) in self.rules.iter().flatten() {
            host::select_methods(patterns, *except);
        }
    }
}

/// Exports a [`Plugin`] type as the component's implementation of the `ovsb:plugin/plugin`
/// world. Use it once, at the root of a `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __OvsbPluginExport;

        impl $crate::bindings::Guest for __OvsbPluginExport {
            fn configure(config: ::std::string::String) -> ::std::result::Result<$crate::Hooks, ::std::string::String> {
                $crate::__private::configure::<$plugin>(config)
            }
            fn on_call(call: $crate::Call) -> $crate::Decision {
                $crate::__private::on_call::<$plugin>(call)
            }
            fn on_result(call: $crate::Call, outcome: $crate::Outcome) -> $crate::Outcome {
                $crate::__private::on_result::<$plugin>(call, outcome)
            }
        }

        $crate::bindings::__ovsb_export_world!(__OvsbPluginExport with_types_in $crate::bindings);
    };
}

/// Glue used by [`export_plugin!`]; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    pub use wit_bindgen;

    use crate::{Call, Config, Context, Decision, Hooks, Outcome, Plugin, RpcError, codes};

    thread_local! {
        /// The configured plugin of this component instance (wasm is single-threaded).
        static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn configure<P: Plugin>(config: String) -> Result<Hooks, String> {
        install_panic_hook();
        let plugin = P::configure(Config::new(config))?;
        let hooks = plugin.hooks();
        plugin.methods().declare();
        PLUGIN.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
        Ok(hooks)
    }

    pub fn on_call<P: Plugin>(call: Call) -> Decision {
        with_plugin::<P, _>(|plugin| plugin.on_call(&Context::from_host(), call))
            .unwrap_or_else(|err| Decision::Respond(Err(err)))
    }

    pub fn on_result<P: Plugin>(call: Call, outcome: Outcome) -> Outcome {
        with_plugin::<P, _>(|plugin| plugin.on_result(&Context::from_host(), &call, outcome)).unwrap_or_else(Err)
    }

    fn with_plugin<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> Result<R, RpcError> {
        PLUGIN.with(|slot| {
            let mut slot = slot.borrow_mut();
            match slot.as_mut().and_then(|any| any.downcast_mut::<P>()) {
                Some(plugin) => Ok(f(plugin)),
                None => Err(RpcError::new(codes::INTERNAL_ERROR, "plugin called before `configure` succeeded")),
            }
        })
    }

    /// Sends panic messages to the host's log: a plugin has no stderr.
    fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            use std::sync::Once;
            static HOOK: Once = Once::new();
            HOOK.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    crate::log::error(&format!("plugin panicked: {info}"));
                }));
            });
        }
    }
}
