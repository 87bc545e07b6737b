//! The two paths of a single call over HTTP (issue #30): the gateway's lean path and jsonrpsee's
//! server answer alike. Two gateways, one with the lean path and one without, get the same
//! requests on twin instances (same node, chain, plan rules and allowlist); every answer must be
//! the same, byte for byte, with the same HTTP status, `Content-Type` and CORS header, and each
//! call counted alike in `ovsb_rpc_calls_total`. (Every other test that sends single calls
//! through [`support::TestGateway::url`] also compares each with the same call in a batch of one:
//! see [`support::both`].)

use std::sync::Arc;
use std::time::Duration;

use ovsb::gateway::GatewayConfig;
use ovsb::gateway::allowlist::{Allowlist, MethodRules};
use serde_json::{Value, json};

use crate::support::{self, Anvil, TestGateway};

const SECOND: Duration = Duration::from_secs(1);

/// What a client sees of an answer.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    content_type: Option<String>,
    cors: Option<String>,
    body: String,
}

async fn send(url: &str, body: &str, origin: Option<&str>) -> Seen {
    let mut request =
        reqwest::Client::new().post(url).header("content-type", "application/json").body(body.to_string());
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (content_type, cors) = (header("content-type"), header("access-control-allow-origin"));
    Seen { status: response.status().as_u16(), content_type, cors, body: response.text().await.unwrap() }
}

/// One side: a gateway and its endpoints.
struct Side {
    gw: TestGateway,
    /// Chain `pass`, binding restricted by an allowlist.
    restricted: String,
    /// Empty chain, plan rules denying `evm_*`.
    planned: String,
    /// A node that never answers, deadline 300 ms.
    hung: String,
    /// `hostile` test plugin (its `test_huge` answers as big as asked).
    hostile: String,
}

async fn side(lean: bool, name: &str, node: &str, hole: &str) -> Side {
    let config = GatewayConfig { lean_single_calls: lean, max_response_bytes: 64 << 10, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let pass = json!({"mode": "pass"});
    let node = [node.to_string()];
    let chained = gw.instance(&format!("{name}-chain"), &node, &[], &[pass], 10 * SECOND).await;
    let restricted = gw.bind(&chained, "r");
    let allowlist = Allowlist::from_parameters(
        &json!({"allowed_methods": ["eth_*", "net_*"], "denied_methods": ["eth_sendTransaction"], "allowed_origins": ["https://app.example"]}),
    )
    .unwrap();
    let digest = ovsb::gateway::key_digest(&restricted);
    let allowlist = Arc::new(allowlist);
    gw.routes.update(|table| table.restrict(digest, allowlist.clone()));
    let planned = gw.instance(&format!("{name}-plan"), &node, &[], &[], 10 * SECOND).await;
    let mut planned = Arc::try_unwrap(planned).ok().expect("held once");
    planned.policy = Some(Arc::new(MethodRules::new(vec![], vec!["evm_*".into()])));
    let planned = gw.bind(&Arc::new(planned), "p");
    let hung = gw.instance(&format!("{name}-hung"), &[hole.to_string()], &[], &[], SECOND / 3).await;
    let hung = gw.bind(&hung, "h");
    let hostile = gw.instance(&format!("{name}-hostile"), &node, &[], &[json!({"mode": "hostile"})], 10 * SECOND).await;
    let hostile = gw.bind(&hostile, "x");
    let url = |key: &str| gw.url_once(key);
    let (restricted, planned, hung, hostile) = (url(&restricted), url(&planned), url(&hung), url(&hostile));
    Side { gw, restricted, planned, hung, hostile }
}

fn call(id: &str, method: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":[]}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_call_gets_the_same_answer_on_the_lean_path_and_through_jsonrpsee() {
    let anvil = Anvil::start(&[]);
    let node = anvil.http_url();
    let (hole, _) = super::black_hole().await;
    let (lean, full) = (side(true, "lean", &node, &hole).await, side(false, "full", &node, &hole).await);

    let mut bodies: Vec<(String, &str)> = Vec::new();
    // Ids: every kind jsonrpsee carries, and those it does not (the id scan's path on both sides).
    for id in ["1", "0", "18446744073709551615", r#""abc""#, r#""a\"b \u00e9""#, "null", "-1", "1.5", "true", "[1]"] {
        bodies.push((call(id, "eth_chainId"), "restricted"));
    }
    for (body, endpoint) in [
        // Not JSON, not a request, not JSON-RPC 2.0, no method: jsonrpsee's own answers.
        ("{\"jsonrpc\":\"2.0\",\"id\":1,", "restricted"),
        (r#"{"id":1,"method":"eth_chainId"}"#, "restricted"),
        (r#"{"jsonrpc":"1.0","id":1,"method":"eth_chainId"}"#, "restricted"),
        (r#"{"jsonrpc":"2.0","id":1}"#, "restricted"),
        (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, "restricted"),
        ("\"just a string\"", "restricted"),
        ("[]", "restricted"),
        // A notification: 204 on both.
        (r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#, "restricted"),
        // Params of every shape, passed on as sent.
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBalance","params":["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","latest"]}"#,
            "restricted",
        ),
        (r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBalance","params":5}"#, "restricted"),
        (r#"  {"method":"eth_blockNumber","id":"x","jsonrpc":"2.0","extra":{"a":[1]}}"#, "restricted"),
        // The binding's allowlist and the plan's method rules.
        (r#"{"jsonrpc":"2.0","id":2,"method":"web3_clientVersion"}"#, "restricted"),
        (r#"{"jsonrpc":"2.0","id":2,"method":"eth_sendTransaction","params":[{}]}"#, "restricted"),
        (r#"{"jsonrpc":"2.0","id":3,"method":"evm_mine"}"#, "planned"),
        // The node's own errors: an unknown method, bad params.
        (r#"{"jsonrpc":"2.0","id":4,"method":"eth_noSuchMethod"}"#, "planned"),
        (r#"{"jsonrpc":"2.0","id":4,"method":"eth_getBalance","params":["nope"]}"#, "planned"),
        // Subscription methods over HTTP go to jsonrpsee on both sides.
        (r#"{"jsonrpc":"2.0","id":5,"method":"eth_subscribe","params":["newHeads"]}"#, "planned"),
        // The deadline, a response over the limit, a plugin that fails.
        (r#"{"jsonrpc":"2.0","id":6,"method":"eth_blockNumber"}"#, "hung"),
        (r#"{"jsonrpc":"2.0","id":8,"method":"test_huge","params":[100000]}"#, "hostile"),
        (r#"{"jsonrpc":"2.0","id":9,"method":"test_huge","params":[100]}"#, "hostile"),
        (r#"{"jsonrpc":"2.0","id":10,"method":"test_panic"}"#, "hostile"),
    ] {
        bodies.push((body.to_string(), endpoint));
    }
    let url = |side: &Side, endpoint: &str| match endpoint {
        "restricted" => side.restricted.clone(),
        "planned" => side.planned.clone(),
        "hung" => side.hung.clone(),
        _ => side.hostile.clone(),
    };
    for (body, endpoint) in &bodies {
        for origin in [None, Some("https://app.example"), Some("https://evil.example")] {
            let (lean_url, full_url) = (url(&lean, endpoint), url(&full, endpoint));
            let (a, b) = tokio::join!(send(&lean_url, body, origin), send(&full_url, body, origin));
            assert_eq!(a, b, "{endpoint} {origin:?}: {body}");
        }
    }
    // A revoked key: both refuse it alike.
    support::TestGateway::revoke(&lean.gw, lean.restricted.rsplit('/').next().unwrap());
    support::TestGateway::revoke(&full.gw, full.restricted.rsplit('/').next().unwrap());
    let body = call("1", "eth_chainId");
    assert_eq!(send(&lean.restricted, &body, None).await, send(&full.restricted, &body, None).await);

    // Every call was counted alike, by method and outcome.
    let text = ovsb::telemetry::metrics().encode();
    let series = |side: &str| -> Vec<String> {
        let prefix = format!(r#"ovsb_rpc_calls_total{{instance="{side}-"#);
        let mut lines: Vec<String> = text.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert!(!series("lean").is_empty(), "{text}");
    assert_eq!(series("lean"), series("full"), "{text}");
    drop(anvil);
}

/// A single call whose answer is a success, and the same call as a batch of one, through the
/// lean path: the one entry of the batch is the single call's answer (the helper behind
/// [`support::both`] on a few calls of each kind, including an error of each source).
#[tokio::test]
async fn a_single_call_and_a_batch_of_one_get_the_same_answer() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("both", &[anvil.http_url()], &[], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b"));
    assert!(url.ends_with("#both"), "{url}");
    for (method, params) in [
        ("eth_chainId", json!([])),
        ("eth_getBalance", json!(["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "latest"])),
        ("eth_getBalance", json!(["nope"])),
        ("eth_noSuchMethod", json!([])),
    ] {
        let answer = support::rpc(&url, method, params).await;
        assert!(answer.get("result").is_some() || answer.get("error").is_some(), "{answer}");
    }
    let _: Value = support::post(&url, &json!({"jsonrpc": "2.0", "id": "s", "method": "eth_chainId"})).await.1;
}
