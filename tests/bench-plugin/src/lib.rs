//! The Rust side of the per-language plugin benchmark (`cargo bench -p ovsb --bench polyglot`):
//! the same two behaviours as `tests/polyglot/python-bench` and `tests/polyglot/js-bench`, so
//! that the three languages are compared doing the same work.
//!
//! - `{"mode": "pass"}`: `on_call` forwards the call unchanged (it is really called: the hook is
//!   not declined), `on_result` is not declared.
//! - `{"mode": "rewrite"}`: the same `on_call`, and `on_result` wraps a successful result as
//!   `{"wrapped": <result>}` (parsed and serialized again).

use ovsb_plugin_sdk::{Call, Config, Context, Decision, Hooks, Outcome, Plugin};

/// See the module docs.
pub struct BenchPlugin {
    rewrite: bool,
}

impl Plugin for BenchPlugin {
    fn configure(config: Config) -> Result<Self, String> {
        let object = config.object(r#"{"mode": "pass"}"#, &["mode"])?;
        match object.get("mode").and_then(|m| m.as_str()).unwrap_or("pass") {
            "pass" => Ok(BenchPlugin { rewrite: false }),
            "rewrite" => Ok(BenchPlugin { rewrite: true }),
            other => Err(format!("invalid configuration: mode must be \"pass\" or \"rewrite\", got {other:?}")),
        }
    }

    fn hooks(&self) -> Hooks {
        if self.rewrite { Hooks::ON_CALL | Hooks::ON_RESULT } else { Hooks::ON_CALL }
    }

    fn on_call(&mut self, _ctx: &Context, call: Call) -> Decision {
        Decision::Forward(call)
    }

    fn on_result(&mut self, _ctx: &Context, _call: &Call, outcome: Outcome) -> Outcome {
        let Ok(result) = outcome else { return outcome };
        match serde_json::from_str::<serde_json::Value>(&result) {
            Ok(value) => Ok(serde_json::json!({ "wrapped": value }).to_string()),
            Err(_) => Ok(result),
        }
    }
}

ovsb_plugin_sdk::export_plugin!(BenchPlugin);
