//! The first-party plugins and the example plugin, loaded from their real `.wasm` files, doing
//! their job on a live endpoint in front of a real anvil.

use crate::support;

mod state;

use std::path::PathBuf;

use ovsb::config::{Config, PluginDecl};
use reqwest::Method;
use serde_json::{Value, json};
use support::broker::*;
use support::{Anvil, post, rpc};

fn plugin(name: &str, path: &str, schema: Option<&str>) -> PluginDecl {
    PluginDecl {
        name: name.into(),
        path: PathBuf::from(path),
        sha256: None,
        schema: schema.map(|s| PathBuf::from(format!("{}/../plugins/{s}/schema.json", env!("CARGO_MANIFEST_DIR")))),
        limits: Default::default(),
    }
}

fn with_plugins(config: &mut Config) {
    use ovsb_test_artifacts::*;
    config.plugins.push(plugin("method-filter", METHOD_FILTER_PLUGIN, Some("method-filter")));
    config.plugins.push(plugin("rate-limit", RATE_LIMIT_PLUGIN, Some("rate-limit")));
    config.plugins.push(plugin("cache", CACHE_PLUGIN, Some("cache")));
    config.plugins.push(plugin("eth-extras", ETH_EXTRAS_PLUGIN, Some("eth-extras")));
    config.plugins.push(plugin("hello", HELLO_PLUGIN, None));
}

/// Provisions `id` with `chain` and returns the binding's endpoint.
async fn endpoint(broker: &TestBroker, id: &str, chain: Value) -> String {
    broker.osb.ready_instance(id, PLAN_SHARED, Some(json!({ "plugins": chain }))).await;
    let bound = broker.osb.bind(id, "b", PLAN_SHARED).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    bound.body["credentials"]["uri"].as_str().unwrap().to_string()
}

async fn start() -> (Anvil, TestBroker) {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), with_plugins).await;
    (anvil, broker)
}

const DEV_ACCOUNT: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_filter_refuses_methods_before_they_reach_the_node() {
    let (anvil, broker) = start().await;
    let uri =
        endpoint(&broker, "mf", json!([{"name": "method-filter", "config": {"deny": ["eth_send*", "debug_*"]}}])).await;
    let tx = json!([{"from": DEV_ACCOUNT, "to": DEV_ACCOUNT, "value": "0x1"}]);
    let refused = rpc(&uri, "eth_sendTransaction", tx.clone()).await;
    assert_eq!(refused["error"]["code"], -32601, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("eth_sendTransaction"));
    // The node never saw it: no transaction, no block.
    assert_eq!(
        rpc(&anvil.http_url(), "eth_getTransactionCount", json!([DEV_ACCOUNT, "latest"])).await["result"],
        "0x0"
    );
    assert_eq!(rpc(&anvil.http_url(), "eth_blockNumber", json!([])).await["result"], "0x0");
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69", "other methods pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_under_a_concurrent_burst() {
    let (_anvil, broker) = start().await;
    let uri =
        endpoint(&broker, "rl", json!([{"name": "rate-limit", "config": {"requests_per_second": 1, "burst": 5}}]))
            .await;
    let started = std::time::Instant::now();
    let calls = (0..40).map(|i| {
        let uri = uri.clone();
        async move { post(&uri, &json!({"jsonrpc": "2.0", "id": i, "method": "eth_chainId"})).await.1 }
    });
    let answers = futures::future::join_all(calls).await;
    let elapsed = started.elapsed().as_secs_f64();
    let passed = answers.iter().filter(|a| a.get("result").is_some()).count();
    let refused: Vec<&Value> = answers.iter().filter(|a| a["error"]["code"] == -32005).collect();
    assert_eq!(passed + refused.len(), 40, "{answers:?}");
    // The bucket holds 5, and refills at 1 per second while the burst runs.
    assert!(passed >= 5 && passed as f64 <= 5.0 + elapsed.ceil(), "{passed} passed in {elapsed:.2} s");
    assert!(refused[0]["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0, "{}", refused[0]);
}

/// `ovsb_rpc_calls_total` counts a failed call under the class of whoever failed it, never
/// guessed from the code: the node's own -32003 (a transaction it rejects) is the caller's
/// `error`, not an `upstream_error`; the rate-limit plugin's -32005 is a rule the customer set
/// (`refused`), not one of ovsb's limits; a node that is gone is an `upstream_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_metrics_blame_whoever_failed_the_call_not_its_code() {
    let (anvil, broker) = start().await;
    let limited =
        endpoint(&broker, "blame", json!([{"name": "rate-limit", "config": {"requests_per_second": 1, "burst": 1}}]))
            .await;
    let plain = endpoint(&broker, "blame2", json!([{"name": "hello"}])).await;
    assert_eq!(rpc(&limited, "eth_chainId", json!([])).await["result"], "0x7a69");
    let refused = rpc(&limited, "eth_chainId", json!([])).await;
    assert_eq!(refused["error"]["code"], -32005, "{refused}");
    let tx = json!([{"from": DEV_ACCOUNT, "to": "0x0000000000000000000000000000000000000002", "value": "0xffffffffffffffffffffffffffffffffffffffffffff"}]);
    let rejected = rpc(&plain, "eth_sendTransaction", tx).await;
    assert_eq!(rejected["error"]["code"], -32003, "the node's own 'insufficient funds': {rejected}");
    // The node goes away: now the failure is the node's.
    drop(anvil);
    let gone = rpc(&plain, "eth_blockNumber", json!([])).await;
    assert_eq!(gone["error"]["code"], -32002, "{gone}");

    let admin = broker.server.as_ref().unwrap().admin_addr;
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    let count = |instance: &str, method: &str, outcome: &str| -> u64 {
        let series = format!(r#"ovsb_rpc_calls_total{{instance="{instance}",method="{method}",outcome="{outcome}"}} "#);
        text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
    };
    assert_eq!(count("blame", "eth_chainId", "ok"), 1, "{text}");
    assert_eq!(count("blame", "eth_chainId", "refused"), 1, "the plugin's -32005 is its rule: {text}");
    assert_eq!(count("blame", "eth_chainId", "limit"), 0, "{text}");
    assert_eq!(count("blame2", "eth_sendTransaction", "error"), 1, "the node's -32003 is its answer: {text}");
    assert_eq!(count("blame2", "eth_sendTransaction", "upstream_error"), 0, "{text}");
    assert_eq!(count("blame2", "eth_blockNumber", "upstream_error"), 1, "{text}");
    // What the rate limit decided, as the host counted it: one call passed on, one refused.
    let decided = |decision: &str| {
        let series = format!(r#"ovsb_plugin_decisions{{instance="blame",plugin="rate-limit",decision="{decision}"}} "#);
        text.lines().find_map(|l| l.strip_prefix(&series)).map(|n| n.trim().to_string())
    };
    assert_eq!(decided("forwarded").as_deref(), Some("1"), "{text}");
    assert_eq!(decided("refused").as_deref(), Some("1"), "{text}");
    assert_eq!(decided("answered").as_deref(), Some("0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_do_not_reach_the_node_and_latest_is_never_stale() {
    let (anvil, broker) = start().await;
    let uri = endpoint(&broker, "cache", json!([{"name": "cache", "config": {"ttl_seconds": 60}}])).await;
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69");
    // The node's chain id changes; the cached answer is served without asking it.
    rpc(&anvil.http_url(), "anvil_setChainId", json!([4242])).await;
    assert_eq!(rpc(&anvil.http_url(), "eth_chainId", json!([])).await["result"], "0x1092");
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69", "a hit, not the node");
    // `latest` is never cached.
    let before = rpc(&uri, "eth_getBlockByNumber", json!(["latest", false])).await;
    rpc(&anvil.http_url(), "anvil_mine", json!(["0x1"])).await;
    let after = rpc(&uri, "eth_getBlockByNumber", json!(["latest", false])).await;
    assert_ne!(before["result"]["number"], after["result"]["number"], "latest moved");
    assert_eq!(rpc(&uri, "eth_blockNumber", json!([])).await["result"], "0x1");
    // Hits and misses are visible in the metrics.
    let admin = broker.server.as_ref().unwrap().admin_addr;
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"ovsb_cache_hits{instance="cache"} 1"#), "{text}");
    let answered = r#"ovsb_plugin_decisions{instance="cache",plugin="cache",decision="answered"} 1"#;
    assert!(text.lines().any(|l| l == answered), "the host counted the hit: {text}");
    assert!(text.contains(r#"ovsb_cache_misses{instance="cache"}"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eth_extras_methods_equal_the_standard_calls() {
    let (anvil, broker) = start().await;
    let node = anvil.http_url();
    let uri = endpoint(&broker, "extras", json!([{"name": "eth-extras"}])).await;
    let addresses =
        [DEV_ACCOUNT, "0x70997970c51812dc3a010c7d01b50e0d17dc79c8", "0x000000000000000000000000000000000000dead"];
    rpc(&node, "anvil_setBalance", json!([addresses[2], "0x1234"])).await;
    let balances = rpc(&uri, "ovsb_getBalances", json!([addresses, "latest"])).await;
    for (i, address) in addresses.iter().enumerate() {
        let one = rpc(&node, "eth_getBalance", json!([address, "latest"])).await;
        assert_eq!(balances["result"][i], one["result"], "{address}: {balances}");
    }
    // Two "tokens": one whose balanceOf returns the owner's address as the balance, one that reverts.
    let (token, broken) = ("0x1000000000000000000000000000000000000001", "0x1000000000000000000000000000000000000002");
    rpc(&node, "anvil_setCode", json!([token, "0x60043560005260206000f3"])).await;
    rpc(&node, "anvil_setCode", json!([broken, "0x60006000fd"])).await;
    let owner = addresses[1];
    let got = rpc(&uri, "ovsb_getTokenBalances", json!([owner, [token, broken]])).await;
    let data = format!("0x70a08231{:0>64}", owner.trim_start_matches("0x"));
    let direct = rpc(&node, "eth_call", json!([{"to": token, "data": data}, "latest"])).await;
    let word = direct["result"].as_str().unwrap().trim_start_matches("0x").trim_start_matches('0');
    assert_eq!(got["result"][0], format!("0x{word}"), "{got}");
    assert_eq!(got["result"][1], Value::Null, "a reverting token gives null: {got}");
    let bad = rpc(&uri, "ovsb_getBalances", json!([["0x1234"], "latest"])).await;
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eth_extras_cannot_read_a_token_outside_the_keys_allowed_contracts() {
    let (anvil, broker) = start().await;
    let node = anvil.http_url();
    let open = endpoint(&broker, "extras", json!([{"name": "eth-extras"}])).await;
    // Two "tokens" whose balanceOf returns the owner's address as the balance.
    let (listed, secret) = ("0x1000000000000000000000000000000000000001", "0x1000000000000000000000000000000000000002");
    for token in [listed, secret] {
        rpc(&node, "anvil_setCode", json!([token, "0x60043560005260206000f3"])).await;
    }
    let owner = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
    let balance = format!("0x{}", owner.trim_start_matches("0x"));
    let everything = rpc(&open, "ovsb_getTokenBalances", json!([owner, [listed, secret]])).await;
    assert_eq!(everything["result"], json!([balance, balance]), "an unrestricted key reads both: {everything}");

    let body = json!({"service_id": SERVICE, "plan_id": PLAN_SHARED, "parameters": {"allowed_contracts": [listed]}});
    let bound =
        broker.osb.call(Method::PUT, "/v2/service_instances/extras/service_bindings/restricted", Some(body)).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let restricted = bound.body["credentials"]["uri"].as_str().unwrap();
    let got = rpc(restricted, "ovsb_getTokenBalances", json!([owner, [listed, secret]])).await;
    assert_eq!(got["result"], json!([balance, null]), "the plugin's call to the other token is refused: {got}");
    let direct = rpc(restricted, "eth_call", json!([{"to": secret, "data": "0x70a08231"}, "latest"])).await;
    assert_eq!(direct["error"]["code"], -32053, "{direct}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_all_four_serves_and_bad_configs_are_refused_with_the_plugins_message() {
    let (_anvil, broker) = start().await;
    let chain = json!([
        {"name": "method-filter", "config": {"deny": ["debug_*"]}},
        {"name": "rate-limit", "config": {"requests_per_second": 1000}},
        {"name": "eth-extras"},
        {"name": "cache"},
    ]);
    let uri = endpoint(&broker, "all", chain).await;
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69");
    assert_eq!(rpc(&uri, "ovsb_getBalances", json!([[DEV_ACCOUNT]])).await["result"].as_array().unwrap().len(), 1);
    assert_eq!(rpc(&uri, "debug_traceCall", json!([])).await["error"]["code"], -32601);
    let before = broker.fingerprint().await;
    for (plugin, config, field) in [
        ("rate-limit", json!({"requests_per_second": 0}), "requests_per_second"),
        ("method-filter", json!({"alow": ["eth_*"]}), "alow"),
        ("cache", json!({"ttl_seconds": -1}), "ttl_seconds"),
        ("eth-extras", json!({"max_items": 1000}), "max_items"),
    ] {
        let resp = broker
            .osb
            .provision("bad", PLAN_SHARED, Some(json!({"plugins": [{"name": plugin, "config": config}]})))
            .await;
        resp.assert_error(400, Some("BadRequest"));
        let description = resp.body["description"].as_str().unwrap();
        assert!(description.contains(plugin) && description.contains(field), "{description}");
    }
    assert_eq!(broker.fingerprint().await, before);
    // The catalog publishes each plugin's configuration schema.
    let catalog = broker.osb.call(Method::GET, "/v2/catalog", None).await;
    let items = &catalog.body["services"][0]["plans"][0]["schemas"]["service_instance"]["create"]["parameters"]["properties"]
        ["plugins"]["items"];
    let rate =
        items["anyOf"].as_array().unwrap().iter().find(|s| s["properties"]["name"]["enum"][0] == "rate-limit").unwrap();
    assert!(rate["properties"]["config"]["properties"]["requests_per_second"].is_object(), "{rate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugin_registered_by_path_and_digest_changes_what_the_endpoint_answers() {
    let anvil = Anvil::start(&[]);
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(ovsb_test_artifacts::HELLO_PLUGIN).unwrap()))
    };
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |config| {
        with_plugins(config);
        config.plugins.last_mut().unwrap().sha256 = Some(digest.clone());
    })
    .await;
    let uri = endpoint(&broker, "hello-instance", json!([{"name": "hello", "config": {"greeting": "gm"}}])).await;
    assert_eq!(rpc(&uri, "hello_world", json!([])).await["result"], "gm from hello-instance");
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69");
    drop(broker);
    // A digest that does not match refuses to start, naming the plugin.
    let mut config = Config::from_toml(&test_config_toml(&anvil.http_url(), support::free_port()), "t").unwrap();
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = dir.path().to_path_buf();
    with_plugins(&mut config);
    config.plugins.last_mut().unwrap().sha256 = Some("0".repeat(64));
    let err = ovsb::server::Server::start(config, tokio_util::sync::CancellationToken::new()).await.err().unwrap();
    assert!(err.to_string().contains("plugin `hello`: sha256 is"), "{err}");
}

/// `ovsb plugin new` makes exactly the example plugin (which the test artifacts build and the
/// test above runs), so the scaffold is what is tested end to end.
#[test]
fn the_scaffold_makes_the_example_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-plugin");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["plugin", "new", "hello-plugin", "--dir"])
        .arg(dir.path())
        .arg("--sdk")
        .arg(example.join("../../plugin-sdk"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made = dir.path().join("hello-plugin");
    assert_eq!(
        std::fs::read_to_string(made.join("src/lib.rs")).unwrap(),
        std::fs::read_to_string(example.join("src/lib.rs")).unwrap()
    );
    let manifest = std::fs::read_to_string(made.join("Cargo.toml")).unwrap();
    let sdk = example.join("../../plugin-sdk").canonicalize().unwrap();
    assert_eq!(
        manifest.replace(&sdk.display().to_string(), "../../plugin-sdk"),
        std::fs::read_to_string(example.join("Cargo.toml")).unwrap()
    );
    // The lock file too: the versions the repository locks, trimmed to the plugin.
    assert_eq!(
        std::fs::read_to_string(made.join("Cargo.lock")).unwrap(),
        std::fs::read_to_string(example.join("Cargo.lock")).unwrap()
    );
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["plugin", "new", "hello-plugin", "--dir"])
        .arg(dir.path())
        .arg("--sdk")
        .arg(example.join("../../plugin-sdk"))
        .output()
        .unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad =
        std::process::Command::new(env!("CARGO_BIN_EXE_ovsb")).args(["plugin", "new", "Bad Name"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("must be lowercase"));
}
