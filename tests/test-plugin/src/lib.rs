//! The plugin the host's tests load: one component, its behaviour chosen by `{"mode": ...}` in
//! its configuration, so that each test case runs a real wasm guest.
//!
//! | mode | does |
//! |---|---|
//! | `pass` | the SDK's pass-through defaults |
//! | `tracer` | appends `"call:<tag>"` to the params array on the way in (optionally renames the method to `rename`), and `"result:<tag>"` to the result's `trail` array on the way out |
//! | `respond` | answers `{"trail": ["respond:<tag>"], "params": <params>}` itself |
//! | `reject` | refuses its configuration with `message` |
//! | `hostile` | misbehaves when the method asks: `test_loop` spins forever, `test_bomb` allocates until memory runs out, `test_panic` panics, `test_huge` answers with a string of `params[0]` bytes (default 8 MiB), `test_panic_on_result` panics in `on_result`; other methods pass through |
//! | `fanout` | calls the upstream `count` times and answers with the results as an array |
//! | `counter` | increments kv key `hits` and answers with the new value |
//! | `log-spam` | writes `lines` log lines and answers `null` |
//! | `log-method` | writes the log line `saw <method>` (the client's method name, as it came) and passes the call on |
//! | `wasi-probe` | tries WASI environment, filesystem and clock and answers what it saw |
//! | `whoami` | answers the call's context |
//!
//! Every mode honours `"log_at_configure": "<value>"` (writes the log line `configured with
//! <value>` in `configure`, as a plugin that quotes its settings would), `"hooks": ["on-call", "on-result"]` (default both) to declare fewer hooks,
//! and `"methods": [patterns]` / `"except_methods": [patterns]` to select the calls it sees
//! (`Plugin::methods`; both given: their union).

use ovsb_plugin_sdk::{Call, Config, Context, Decision, Hooks, Methods, Outcome, Plugin, RpcError, codes, kv, log};
use serde_json::{Value, json};

/// See the module docs.
pub struct TestPlugin {
    config: Value,
}

impl TestPlugin {
    fn mode(&self) -> &str {
        self.config["mode"].as_str().unwrap_or("pass")
    }
    fn tag(&self) -> &str {
        self.config["tag"].as_str().unwrap_or("?")
    }
    fn number(&self, key: &str, default: u64) -> u64 {
        self.config[key].as_u64().unwrap_or(default)
    }
}

impl Plugin for TestPlugin {
    fn configure(config: Config) -> Result<Self, String> {
        let config: Value = config.parse()?;
        if let Some(line) = config["log_at_configure"].as_str() {
            log::warn(&format!("configured with {line}"));
        }
        if config["mode"] == "reject" {
            return Err(config["message"].as_str().unwrap_or("rejected").to_string());
        }
        Ok(TestPlugin { config })
    }

    fn hooks(&self) -> Hooks {
        match self.config["hooks"].as_array() {
            None => Hooks::ON_CALL | Hooks::ON_RESULT,
            Some(names) => names.iter().fold(Hooks::empty(), |hooks, name| match name.as_str() {
                Some("on-call") => hooks | Hooks::ON_CALL,
                Some("on-result") => hooks | Hooks::ON_RESULT,
                _ => hooks,
            }),
        }
    }

    fn methods(&self) -> Methods {
        let patterns = |key: &str| -> Option<Vec<String>> {
            let items = self.config[key].as_array()?;
            Some(items.iter().filter_map(|item| item.as_str().map(str::to_string)).collect())
        };
        match (patterns("methods"), patterns("except_methods")) {
            (None, None) => Methods::all(),
            (Some(only), None) => Methods::matching(only),
            (None, Some(except)) => Methods::not_matching(except),
            (Some(only), Some(except)) => Methods::matching(only).or(Methods::not_matching(except)),
        }
    }

    fn on_call(&mut self, ctx: &Context, mut call: Call) -> Decision {
        match self.mode() {
            "tracer" => {
                let mut params = match call.params_as::<Option<Vec<Value>>>() {
                    Ok(params) => params.unwrap_or_default(),
                    Err(err) => return Decision::respond_err(err),
                };
                params.push(json!(format!("call:{}", self.tag())));
                call.set_params(&params);
                if let Some(rename) = self.config["rename"].as_str() {
                    call.method = rename.to_string();
                }
                Decision::Forward(call)
            }
            "respond" => {
                let params: Value = call.params_as().unwrap_or(Value::Null);
                Decision::respond_ok(&json!({"trail": [format!("respond:{}", self.tag())], "params": params}))
            }
            "hostile" => match call.method.as_str() {
                "test_loop" => {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "test_bomb" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![0xAB; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "test_panic" => panic!("test plugin panicked on purpose"),
                "test_huge" => {
                    let bytes = call.params_as::<Option<Vec<usize>>>().ok().flatten().and_then(|p| p.first().copied());
                    Decision::Respond(Ok(format!("\"{}\"", "x".repeat(bytes.unwrap_or(8 << 20)))))
                }
                _ => Decision::Forward(call),
            },
            "fanout" => {
                let results: Vec<Value> = (0..self.number("count", 2))
                    .map(|_| match ovsb_plugin_sdk::upstream(&call) {
                        Ok(json) => serde_json::from_str(&json).unwrap_or(Value::Null),
                        Err(err) => json!({"error": err.code, "message": err.message}),
                    })
                    .collect();
                Decision::respond_ok(&results)
            }
            "counter" => match kv::incr("hits", 1, None) {
                Ok(n) => Decision::respond_ok(&n),
                Err(message) => Decision::respond_err(RpcError::new(codes::INTERNAL_ERROR, message)),
            },
            "log-method" => {
                log::warn(&format!("saw {}", call.method));
                Decision::Forward(call)
            }
            "log-spam" => {
                for i in 0..self.number("lines", 1000) {
                    log::info(&format!("line {i}"));
                }
                Decision::respond_ok(&Value::Null)
            }
            "wasi-probe" => {
                let env_vars = std::env::vars().count();
                let fs = std::fs::read_dir("/").map(|_| "readable").unwrap_or("denied");
                let unix_secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Decision::respond_ok(&json!({"env_vars": env_vars, "fs": fs, "unix_secs": unix_secs}))
            }
            "whoami" => Decision::respond_ok(&json!({
                "instance_id": ctx.instance_id(),
                "binding_id": ctx.binding_id(),
                "plan": ctx.plan(),
                "request_id": ctx.request_id(),
            })),
            _ => Decision::Forward(call),
        }
    }

    fn on_result(&mut self, _ctx: &Context, call: &Call, outcome: Outcome) -> Outcome {
        if self.mode() == "hostile" && call.method == "test_panic_on_result" {
            panic!("test plugin panicked in on_result on purpose");
        }
        if self.mode() != "tracer" {
            return outcome;
        }
        let json = outcome?;
        let mut result: Value = serde_json::from_str(&json)
            .map_err(|err| RpcError::new(codes::INTERNAL_ERROR, format!("result is not JSON: {err}")))?;
        if let Some(trail) = result.get_mut("trail").and_then(Value::as_array_mut) {
            trail.push(json!(format!("result:{}", self.tag())));
        }
        ovsb_plugin_sdk::ok(&result)
    }
}

ovsb_plugin_sdk::export_plugin!(TestPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::testing::{Harness, MockHost};

    #[test]
    fn tracer_marks_the_call_on_the_way_in_and_the_result_on_the_way_out() {
        let host = MockHost::current();
        host.set_upstream(|call| Ok(json!({"trail": [], "seen": call.params_as::<Value>().unwrap()}).to_string()));
        let mut harness = Harness::<TestPlugin>::new(r#"{"mode":"tracer","tag":"a","rename":"eth_x"}"#).unwrap();

        let outcome = harness.call("eth_chainId", Some("[1]")).unwrap();

        let upstream = host.upstream_calls();
        assert_eq!(upstream[0].method, "eth_x");
        assert_eq!(upstream[0].params.as_deref(), Some(r#"[1,"call:a"]"#));
        assert_eq!(
            serde_json::from_str::<Value>(&outcome).unwrap(),
            json!({"trail": ["result:a"], "seen": [1, "call:a"]})
        );
    }

    #[test]
    fn respond_answers_without_the_upstream() {
        let host = MockHost::current();
        let mut harness = Harness::<TestPlugin>::new(r#"{"mode":"respond","tag":"b"}"#).unwrap();
        let outcome = harness.call("eth_chainId", None).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&outcome).unwrap(), json!({"trail": ["respond:b"], "params": null}));
        assert!(host.upstream_calls().is_empty());
    }

    #[test]
    fn counter_counts_in_the_host_kv_store() {
        let mut harness = Harness::<TestPlugin>::new(r#"{"mode":"counter"}"#).unwrap();
        assert_eq!(harness.call("x", None), Ok("1".to_string()));
        assert_eq!(harness.call("x", None), Ok("2".to_string()));
        assert_eq!(kv::get("hits"), Some(b"2".to_vec()));
    }

    #[test]
    fn reject_refuses_its_configuration_with_the_given_message() {
        let err = Harness::<TestPlugin>::new(r#"{"mode":"reject","message":"allow must not be empty"}"#).err();
        assert_eq!(err.as_deref(), Some("allow must not be empty"));
    }
}
