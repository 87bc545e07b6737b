//! `hello-plugin`: an ovsb plugin.
//!
//! It answers a new method, `hello_world`, itself, and passes every other call on untouched.
//! Configuration (optional): `{"greeting": "text"}` (default `"hello"`).
//!
//! Build: `cargo build --release --target wasm32-wasip2` → `target/wasm32-wasip2/release/*.wasm`.
//! Test: `cargo test` (natively, with the SDK's mock host).
//! Try: `ovsb plugin call target/wasm32-wasip2/release/<crate>.wasm --method hello_world`.

use ovsb_plugin_sdk::{Call, Config, Context, Decision, Hooks, Methods, Plugin};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello".to_string()
}

/// The plugin: one copy per warm instance, configured once.
pub struct HelloPlugin {
    greeting: String,
}

impl Plugin for HelloPlugin {
    fn configure(config: Config) -> Result<Self, String> {
        let settings = if config.as_json() == "null" {
            Settings { greeting: default_greeting() }
        } else {
            config.parse::<Settings>()?
        };
        if settings.greeting.is_empty() {
            return Err("invalid configuration: greeting must not be empty".to_string());
        }
        Ok(HelloPlugin { greeting: settings.greeting })
    }

    /// Only `on_call`: ovsb then never calls `on_result` for this plugin.
    fn hooks(&self) -> Hooks {
        Hooks::ON_CALL
    }

    /// Only `hello_world`: every other call passes the plugin by, without a wasm call.
    fn methods(&self) -> Methods {
        Methods::matching(["hello_world"])
    }

    fn on_call(&mut self, ctx: &Context, call: Call) -> Decision {
        if call.method == "hello_world" {
            return Decision::respond_ok(&format!("{} from {}", self.greeting, ctx.instance_id()));
        }
        Decision::Forward(call)
    }
}

ovsb_plugin_sdk::export_plugin!(HelloPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::testing::{Harness, MockHost};

    #[test]
    fn hello_world_is_answered_by_the_plugin() {
        let host = MockHost::current();
        let mut harness = Harness::<HelloPlugin>::new(r#"{"greeting": "hi"}"#).unwrap();
        assert_eq!(harness.call("hello_world", None), Ok(r#""hi from test-instance""#.to_string()));
        assert!(host.upstream_calls().is_empty(), "answered without the node");
    }

    #[test]
    fn other_calls_go_to_the_node() {
        let host = MockHost::current();
        host.set_upstream(|_| Ok("\"0x1\"".to_string()));
        let mut harness = Harness::<HelloPlugin>::new("null").unwrap();
        assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        assert_eq!(host.upstream_calls()[0].method, "eth_chainId");
    }

    #[test]
    fn a_bad_configuration_is_refused_with_a_message() {
        let err = Harness::<HelloPlugin>::new(r#"{"greeting": ""}"#).err().unwrap();
        assert!(err.contains("greeting"), "{err}");
        let err = Harness::<HelloPlugin>::new(r#"{"greting": "x"}"#).err().unwrap();
        assert!(err.contains("unknown field"), "{err}");
    }
}
