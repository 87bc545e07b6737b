//! Python and JavaScript plugins, built from source by the test build with the toolchains their
//! SDKs pin (`componentize-py`, `componentize-js`): the hostile cases against the runtime, and
//! the examples in a chain with a Rust plugin in front of a real anvil, served by `ovsb serve`.

use crate::support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ovsb::plugins::{
    Call, CallContext, Chain, ChainEntry, Context, KvLimits, KvStore, Outcome, PLUGIN_FAILURE_CODE, PluginLimits,
    PluginRuntime, RuntimeConfig, Upstream,
};
use serde_json::{Value, json};
use support::broker::*;
use support::process::Ovsb;
use support::{Anvil, free_port, rpc};

/// The limits the README suggests for Python and JavaScript plugins.
fn polyglot_limits() -> PluginLimits {
    PluginLimits { memory_bytes: 128 << 20, call_budget_ms: 500, ..PluginLimits::default() }
}

/// Answers `"0x1"` to everything, counting calls.
#[derive(Default)]
struct Node {
    calls: AtomicUsize,
}

impl Upstream for Node {
    fn call<'a>(&'a self, _call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok("\"0x1\"".to_string())
        })
    }
}

fn context() -> CallContext {
    CallContext::from(Context {
        instance_id: "inst-1".into(),
        binding_id: Some("bind-1".into()),
        plan: "shared".into(),
        request_id: "req-1".into(),
    })
}

/// One plugin's chain, on a runtime of its own.
struct Hostile {
    runtime: PluginRuntime,
    chain: Chain,
    node: Arc<Node>,
}

impl Hostile {
    async fn new(name: &str, file: &str, limits: PluginLimits) -> Hostile {
        let runtime = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(ovsb_test_artifacts::COMPILE_CACHE_DIR.into()),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let plugin = runtime.load_file(name, file.as_ref()).unwrap();
        let kv = Arc::new(KvStore::new(KvLimits::default()));
        let pool = runtime.pool(&plugin, "null", limits, "inst-1", kv).await.unwrap();
        Hostile { runtime, chain: Chain::new(vec![ChainEntry { pool, fail_open: false }]), node: Arc::default() }
    }

    async fn call(&self, method: &str) -> Outcome {
        let upstream: Arc<dyn Upstream> = self.node.clone();
        self.chain.run(&context(), Call { method: method.into(), params: Some("[]".into()) }, &upstream).await
    }

    /// The failure class (`data.reason`) of a plugin failure.
    fn reason(&self, outcome: &Outcome, plugin: &str) -> String {
        let err = outcome.as_ref().expect_err("a failed call");
        assert_eq!(err.code, PLUGIN_FAILURE_CODE, "{err:?}");
        let data: Value = serde_json::from_str(err.data.as_deref().unwrap()).unwrap();
        assert_eq!(data["plugin"], plugin, "{data}");
        data["reason"].as_str().unwrap().to_string()
    }

    /// After a failure, the same pool serves a good call (on a new copy).
    async fn serves_a_good_call(&self) {
        assert_eq!(self.call("hostile_ok").await, Ok("\"ok\"".to_string()));
        assert_eq!(self.call("eth_chainId").await, Ok("\"0x1\"".to_string()), "other calls reach the node");
    }
}

async fn hostile_cases(name: &str, file: &str) {
    // Time: an infinite loop is stopped by the call budget (1 s: `configure` runs within it
    // too, and an interpreter's takes longer than 200 ms on a machine busy with other tests).
    let hostile = Hostile::new(name, file, PluginLimits { call_budget_ms: 1000, ..polyglot_limits() }).await;
    hostile.serves_a_good_call().await;
    let started = Instant::now();
    let looping = hostile.call("hostile_loop").await;
    assert_eq!(hostile.reason(&looping, name), "timeout", "{looping:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1000) && took < Duration::from_secs(10), "stopped by the budget: {took:?}");
    assert!(looping.unwrap_err().message.contains("time budget of 1000 ms"));
    hostile.serves_a_good_call().await;
    assert!(hostile.runtime.stats().recycled.load(Ordering::SeqCst) >= 1, "the looping copy was thrown away");

    // Memory: growth stops at the cap (a generous budget: this case is about memory).
    let hostile = Hostile::new(name, file, PluginLimits { call_budget_ms: 20_000, ..polyglot_limits() }).await;
    let growing = hostile.call("hostile_grow").await.unwrap_err();
    // Either the host stops the growth at the cap (a trap: "memory cap of 128 MiB"), or the
    // language's runtime sees its allocation refused first and the SDK answers with the error
    // (Python's MemoryError): the call fails, and the copy, grown past three quarters of its
    // cap, is not used again.
    assert_eq!(growing.code, PLUGIN_FAILURE_CODE, "{growing:?}");
    let said = format!("{} {}", growing.message, growing.data.clone().unwrap_or_default()).to_lowercase();
    assert!(said.contains("memory"), "the error names memory: {growing:?}");
    assert!(hostile.runtime.stats().recycled.load(Ordering::SeqCst) >= 1, "the grown copy was thrown away");
    hostile.serves_a_good_call().await;

    // An exception becomes a JSON-RPC error.
    let hostile = Hostile::new(name, file, polyglot_limits()).await;
    let raised = hostile.call("hostile_raise").await.unwrap_err();
    assert!(raised.message.contains("boom"), "the exception's message is in the error: {raised:?}");
    hostile.serves_a_good_call().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_python_plugins_are_stopped_and_the_pool_serves_the_next_call() {
    hostile_cases("py-hostile", ovsb_test_artifacts::PY_HOSTILE_PLUGIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_javascript_plugins_are_stopped_and_the_pool_serves_the_next_call() {
    hostile_cases("js-hostile", ovsb_test_artifacts::JS_HOSTILE_PLUGIN).await;
}

/// The Python example (a per-binding quota), the JavaScript example (an added method and a
/// response rewrite) and the Rust `method-filter`, in one chain in front of anvil, served by
/// `ovsb serve`: each plugin's behaviour shows in the answers, and their host calls work
/// (`upstream`, kv, a log line tagged with the plugin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_javascript_and_rust_plugins_serve_one_chain_in_front_of_anvil() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let limits = "[plugins.limits]\nmemory_bytes = 134217728\ncall_budget_ms = 500\n";
    let config = test_config_toml(&anvil.http_url(), free_port()).replacen(
        "[[plugins]]\nname = \"pass\"",
        &format!(
            "[[plugins]]\nname = \"quota\"\npath = \"{py}\"\n{limits}\n[[plugins]]\nname = \"head\"\npath = \"{js}\"\n{limits}\n\
             [[plugins]]\nname = \"method-filter\"\npath = \"{filter}\"\n\n[[plugins]]\nname = \"pass\"",
            py = ovsb_test_artifacts::PY_EXAMPLE_PLUGIN,
            js = ovsb_test_artifacts::JS_EXAMPLE_PLUGIN,
            filter = ovsb_test_artifacts::METHOD_FILTER_PLUGIN,
        ),
        1,
    );
    let admin = free_port();
    let config =
        config.replacen("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""), 1);
    let config = format!(
        "data_dir = \"{}\"\n{config}\n[runtime]\ncache_dir = \"{}\"\n",
        dir.path().join("data").display(),
        ovsb_test_artifacts::COMPILE_CACHE_DIR
    );
    let ovsb = Ovsb::start(dir.path(), "ovsb", &config);
    let chain = json!({"plugins": [
        {"name": "method-filter", "config": {"deny": ["eth_sendTransaction"]}},
        {"name": "quota", "config": {"quotas": {"eth_chainId": 3}, "window_ms": 600000}},
        {"name": "head", "config": {"cache_ms": 600000, "suffix": " (via the js example)"}},
    ]});

    // A configuration a Python plugin refuses is a 400 that names the field.
    let refused = ovsb
        .osb
        .provision(
            "bad",
            PLAN_SHARED,
            Some(json!({"plugins": [{"name": "quota", "config": {"quotas": {"eth_chainId": "three"}}}]})),
        )
        .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body["description"].as_str().unwrap().contains("eth_chainId"), "{refused:?}");

    // Every plugin was compiled (or read from the compile cache) before ovsb answered: a
    // provision with Python and JavaScript plugins never waits for a compile.
    let loads = async || {
        let page = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
        let count = |source: &str| -> u64 {
            let prefix = format!("ovsb_plugin_loads{{source=\"{source}\"}} ");
            page.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.trim().parse().unwrap())
        };
        (count("compiled"), count("disk_cache"))
    };
    let at_start = loads().await;
    assert_eq!(at_start.0 + at_start.1, 5, "the five declared plugins, each loaded once: {at_start:?}");
    ovsb.osb.ready_instance("poly", PLAN_SHARED, Some(chain)).await;
    assert_eq!(loads().await, at_start, "no plugin was compiled or read again for the provision");
    let uri = |resp: &Resp| resp.body["credentials"]["uri"].as_str().unwrap().to_string();
    let first = uri(&ovsb.osb.bind("poly", "b1", PLAN_SHARED).await);
    let second = uri(&ovsb.osb.bind("poly", "b2", PLAN_SHARED).await);

    // Rust: method-filter refuses before the others see the call.
    let denied = rpc(&first, "eth_sendTransaction", json!([{}])).await;
    assert_eq!(denied["error"]["code"], -32601, "{denied}");

    // Python: three eth_chainId per binding and window, then -32005 naming the quota.
    for _ in 0..3 {
        assert_eq!(rpc(&first, "eth_chainId", json!([])).await["result"], "0x7a69");
    }
    let over = rpc(&first, "eth_chainId", json!([])).await;
    assert_eq!(over["error"]["code"], -32005, "{over}");
    assert_eq!(over["error"]["data"]["reason"], "quota", "{over}");
    assert_eq!(over["error"]["data"]["limit"], 3, "{over}");
    assert_eq!(rpc(&second, "eth_chainId", json!([])).await["result"], "0x7a69", "the other binding has its own");
    // quota_status reads kv and calls upstream (eth_blockNumber) from Python.
    let status = rpc(&first, "quota_status", json!([])).await;
    assert!(status["result"].is_object(), "{status}");
    assert!(status["result"].to_string().contains("eth_chainId"), "{status}");
    let block = rpc(&first, "eth_blockNumber", json!([])).await["result"].clone();
    assert_eq!(status["result"]["block"], block, "{status}");

    // JavaScript: head_info from upstream, kept in kv for cache_ms; the client version rewritten.
    let head = rpc(&second, "head_info", json!([])).await;
    let number = head["result"]["number"].as_u64().expect("head_info's number");
    assert_eq!(format!("0x{number:x}"), block.as_str().unwrap(), "{head}");
    rpc(&second, "evm_mine", json!([])).await;
    let cached = rpc(&second, "head_info", json!([])).await;
    assert_eq!(cached["result"]["number"], head["result"]["number"], "served from kv within cache_ms: {cached}");
    let version = rpc(&second, "web3_clientVersion", json!([])).await;
    let version = version["result"].as_str().unwrap_or_default().to_string();
    assert!(version.starts_with("anvil") && version.ends_with(" (via the js example)"), "{version}");

    // Log lines carry the plugin's name.
    let log = dir.path().join("ovsb.log");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tagged = |plugin: &str| {
            text.lines().any(|line| line.contains("ovsb::plugin") && line.contains(&format!("plugin=\"{plugin}\"")))
        };
        // The Python example logs when a binding reaches its quota, the JavaScript one when
        // head_info asks the node.
        if tagged("quota") && tagged("head") && text.contains("reached its quota") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no log line tagged with each plugin:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
