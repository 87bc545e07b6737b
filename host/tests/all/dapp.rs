//! The endpoint as dApps use it (issue #17), against real anvil and real clients: request ids
//! of every kind, `eth_subscribe` over HTTP, batches of 1000 from viem, revocation that ends
//! live subscriptions (close code and reason, node-side subscription gone), CORS for pages
//! in headless Chromium (plain `fetch` and ethers' `JsonRpcProvider`), and streams through viem
//! (issue #29: a burst of 3000 logs whole, `watchBlocks` across a node restart).

use crate::support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use ovsb::gateway::GatewayConfig;
use ovsb::gateway::allowlist::Allowlist;
use ovsb::gateway::revocable::{
    GOING_AWAY_CLOSE_CODE, GOING_AWAY_CLOSE_REASON, REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON,
};
use serde_json::{Value, json};
use support::{Anvil, TestGateway, rpc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const SECOND: Duration = Duration::from_secs(1);

/// POSTs `body` as it is; the status and the answer's text.
async fn post_text(url: &str, body: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn block_number(url: &str) -> String {
    rpc(url, "eth_blockNumber", json!([])).await["result"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_valid_id_is_answered_and_echoed_exactly_and_invalid_ids_run_nothing() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b1"));

    for id in ["-1", "1.5", "123456789012345678901234567890", "0", "7", r#""abc""#, "-0.25e3"] {
        let (status, text) = post_text(&url, &format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#)).await;
        assert_eq!(status, 200, "{id}: {text}");
        assert!(text.contains(&format!(r#""id":{id},"#)), "id {id} echoed as sent: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["result"], "0x7a69", "{id}: {text}");
    }

    // A valid id jsonrpsee cannot hold: the call runs once and is answered.
    let before = block_number(&url).await;
    let (_, text) = post_text(&url, r#"{"jsonrpc":"2.0","id":-1,"method":"evm_mine"}"#).await;
    assert!(text.contains(r#""id":-1,"result":"0x0""#), "{text}");
    let mined = block_number(&url).await;
    assert_ne!(mined, before, "evm_mine with id -1 mined");

    // Invalid ids: -32600, and nothing runs.
    for id in [r#"{"a":1}"#, "[1]", "true", "false"] {
        let (status, text) = post_text(&url, &format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"evm_mine"}}"#)).await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["error"]["code"], -32600, "{id}: {text}");
        assert_eq!(answer["id"], Value::Null, "{text}");
    }
    assert_eq!(block_number(&url).await, mined, "no evm_mine with an invalid id mined");

    // The same in a batch: every call with an id is answered, in order; a notification is not.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},
        {"jsonrpc":"2.0","id":-1,"method":"eth_chainId"},
        {"jsonrpc":"2.0","id":true,"method":"evm_mine"},
        {"jsonrpc":"2.0","method":"eth_chainId"},
        {"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"eth_blockNumber"}]"#;
    let (_, text) = post_text(&url, batch).await;
    let answers: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(answers.len(), 4, "{text}");
    assert_eq!((answers[0]["id"].clone(), answers[0]["result"].clone()), (json!(1), json!("0x7a69")));
    assert!(text.contains(r#""id":-1,"result":"0x7a69""#), "{text}");
    assert_eq!((answers[2]["id"].clone(), answers[2]["error"]["code"].clone()), (Value::Null, json!(-32600)));
    assert!(text.contains(r#""id":123456789012345678901234567890,"result":"#), "{text}");
    assert_eq!(block_number(&url).await, mined, "the batch's evm_mine with id true did not run");
}

#[tokio::test]
async fn websocket_messages_without_a_usable_id_are_answered_and_not_run() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let before = block_number(&gw.url(&key)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(&key)).await.unwrap();
    for id in ["-1", "true"] {
        ws.send(Message::text(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"evm_mine"}}"#))).await.unwrap();
        let frame = tokio::time::timeout(5 * SECOND, ws.next()).await.expect("an answer").unwrap().unwrap();
        let answer: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(answer["error"]["code"], -32600, "{id}: {answer}");
    }
    assert_eq!(block_number(&gw.url(&key)).await, before, "nothing was mined");
}

#[tokio::test]
async fn eth_subscribe_over_http_gets_the_nodes_own_answer() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance =
        gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b1"));
    for (method, params) in [("eth_subscribe", json!(["newHeads"])), ("eth_unsubscribe", json!(["0x1"]))] {
        let through = rpc(&url, method, params.clone()).await;
        let direct = rpc(&anvil.http_url(), method, params).await;
        assert_ne!(through["error"]["code"], -32603, "{method}: {through}");
        assert_eq!(through, direct, "{method}");
    }
}

#[tokio::test]
async fn a_batch_of_1000_is_accepted_by_default() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b1"));
    let batch: Vec<Value> = (0..1000).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_chainId"})).collect();
    let (_, text) = post_text(&url, &Value::Array(batch).to_string()).await;
    let answers: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(answers.len(), 1000);
    assert!(answers.iter().enumerate().all(|(i, a)| a["id"] == i && a["result"] == "0x7a69"));
    let batch: Vec<Value> = (0..1001).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_chainId"})).collect();
    let (_, text) = post_text(&url, &Value::Array(batch).to_string()).await;
    assert!(text.contains("-32010"), "1001 is over the default: {text}");
}

fn dapp_clients() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/dapp");
    assert!(
        dir.join("node_modules/viem").is_dir() && dir.join("node_modules/ethers").is_dir(),
        "viem and ethers are not installed: tests/run-all.sh installs them (npm ci in tests/dapp)"
    );
    dir.canonicalize().unwrap()
}

#[tokio::test]
async fn viem_with_batching_gets_1000_correct_answers_to_1000_concurrent_calls() {
    let dir = dapp_clients();
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b1"));
    let output = tokio::process::Command::new("node")
        .current_dir(&dir)
        .args(["viem-batch.mjs", &url, "1000"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let balances: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(balances.len(), 1000);
    assert_eq!(balances[0], "10000000000000000000000", "anvil's first account");
    assert!(balances[1..].iter().all(|b| b == "0"), "{:?}", balances.iter().find(|b| *b != "0"));
}

/// A TCP relay in front of the node's WebSocket that counts the connections open through it:
/// the gateway's node sockets (one per instance, carrying all its subscriptions).
async fn counting_relay(node: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    let target = node.trim_start_matches("ws://").to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else { continue };
            let counter = counter.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (format!("ws://{addr}"), open)
}

/// Opens `ws_url`, subscribes to new heads and waits for the first one.
async fn subscribed(
    ws_url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("WebSocket upgrade");
    let subscribe = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let mut heads = 0;
    while heads < 1 {
        let frame = tokio::time::timeout(10 * SECOND, ws.next()).await.expect("a head").unwrap().unwrap();
        let message: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        if message["method"] == "eth_subscription" {
            heads += 1;
        } else {
            assert!(message["result"].is_string(), "subscribed: {message}");
        }
    }
    ws
}

/// Waits (bounded) for the close frame; what it said.
async fn close_within(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    limit: Duration,
) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, ws.next()).await.expect("the socket closes in time") {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code.into(), frame.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("closed without a code"),
            // Heads that were already on their way.
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

async fn wait_for_zero(open: &AtomicUsize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open.load(Ordering::SeqCst)
}

#[tokio::test]
async fn an_unbind_ends_the_keys_subscriptions_within_a_second_with_a_close_code_and_reason() {
    let anvil = Anvil::start(&["--block-time", "1"]);
    let (relay, open) = counting_relay(anvil.ws_url()).await;
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[relay], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let (key, other) = (gw.bind(&instance, "b1"), gw.bind(&instance, "b2"));
    let (mut first, mut second) = (subscribed(&gw.ws_url(&key)).await, subscribed(&gw.ws_url(&key)).await);
    let mut others = subscribed(&gw.ws_url(&other)).await;
    assert_eq!(open.load(Ordering::SeqCst), 1, "the instance's three subscriptions share one node socket");

    gw.revoke(&key);
    let closed = (close_within(&mut first, SECOND).await, close_within(&mut second, SECOND).await);
    let expected = (REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON.to_string());
    assert_eq!(closed, (expected.clone(), expected));

    let frame = tokio::time::timeout(5 * SECOND, others.next()).await.expect("heads go on").unwrap().unwrap();
    assert!(frame.to_text().unwrap().contains("eth_subscription"), "{frame:?}");
    assert_eq!(open.load(Ordering::SeqCst), 1, "the other key's subscription keeps the node socket");
    drop(others);
    assert_eq!(wait_for_zero(&open, SECOND).await, 0, "the node socket closes with the last subscription");
}

#[tokio::test]
async fn a_deprovision_ends_the_instances_subscriptions_within_a_second() {
    let anvil = Anvil::start(&["--block-time", "1"]);
    let (relay, open) = counting_relay(anvil.ws_url()).await;
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[relay], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let mut ws = subscribed(&gw.ws_url(&key)).await;
    assert_eq!(open.load(Ordering::SeqCst), 1);

    gw.routes.update(|table| table.remove_instance("i1"));
    assert_eq!(close_within(&mut ws, SECOND).await, (REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON.to_string()));
    assert_eq!(wait_for_zero(&open, SECOND).await, 0, "the node-side subscription is gone");
}

/// At shutdown every open WebSocket is closed with 1001 "going away" and a reason, so that
/// clients know to reconnect (jsonrpsee alone closes with 1000 and no reason).
#[tokio::test]
async fn a_shutdown_closes_websockets_with_going_away_and_a_reason() {
    let anvil = Anvil::start(&["--block-time", "1"]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let mut ws = subscribed(&gw.ws_url(&key)).await;
    gw.shut_down();
    assert_eq!(close_within(&mut ws, 2 * SECOND).await, (GOING_AWAY_CLOSE_CODE, GOING_AWAY_CLOSE_REASON.to_string()));
}

#[tokio::test]
async fn a_preflight_is_answered_and_answers_allow_any_origin() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b1"));
    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://127.0.0.1:9")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert_eq!(headers["access-control-allow-headers"], "content-type, authorization");
    assert_eq!(headers["access-control-max-age"], "86400");
    let answer = client
        .post(&url)
        .header("origin", "http://127.0.0.1:9")
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    // A preflight whose path holds no key (or an unknown one) is answered alike: it carries no
    // credentials, and the browser sends the call itself only after it.
    for path in [gw.url_once("").trim_end_matches('/').to_string(), gw.url_once("nope")] {
        let keyless = client
            .request(reqwest::Method::OPTIONS, &path)
            .header("origin", "http://127.0.0.1:9")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(
            (keyless.status().as_u16(), &keyless.headers()["access-control-allow-origin"]),
            (204, &"*".parse().unwrap()),
            "{path}"
        );
    }
    let unknown = client.post(gw.url("nope")).header("origin", "http://x").send().await.unwrap();
    assert_eq!(
        (unknown.status().as_u16(), &unknown.headers()["access-control-allow-origin"]),
        (401, &"*".parse().unwrap())
    );
}

/// Serves `page` at `/` and ethers' browser build at `/ethers.js`, on 127.0.0.1.
async fn serve_page(page: String, ethers: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (page, ethers) = (Arc::new(page), Arc::new(ethers));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (page, ethers) = (page.clone(), ethers.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let (kind, body): (&str, &[u8]) = if head.starts_with(b"GET /ethers.js") {
                    ("application/javascript", &ethers)
                } else if head.starts_with(b"GET / ") {
                    ("text/html", page.as_bytes())
                } else {
                    ("text/plain", b"")
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.write_all(body).await;
            });
        }
    });
    format!("http://{addr}/")
}

fn chromium() -> String {
    ["chromium", "chromium-browser"]
        .iter()
        .find(|name| Command::new("which").arg(name).output().is_ok_and(|o| o.status.success()))
        .expect("Chromium is not installed: tests/run-all.sh installs Debian's chromium")
        .to_string()
}

/// Opens a page served on 127.0.0.1 in headless Chromium that calls `url` with a plain `fetch`
/// and with ethers' `JsonRpcProvider`; the page's DOM once both are done.
async fn page_in_chromium(dir: &std::path::Path, url: &str) -> String {
    let page = format!(
        r#"<!doctype html><html><body><div id="out">waiting</div>
<script src="/ethers.js"></script>
<script>
const url = {url:?};
const out = {{}};
(async () => {{
  try {{
    const r = await fetch(url, {{ method: "POST", headers: {{ "content-type": "application/json" }},
      body: JSON.stringify({{ jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] }}) }});
    out.fetch = (await r.json()).result;
  }} catch (e) {{ out.fetch = "refused: " + e; }}
  try {{
    const provider = new ethers.JsonRpcProvider(url, ethers.Network.from(31337), {{ staticNetwork: true }});
    out.ethers = "balance " + (await provider.getBalance("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266")).toString();
    provider.destroy();
  }} catch (e) {{ out.ethers = "refused: " + e.shortMessage; }}
  document.getElementById("out").textContent = JSON.stringify(out);
}})();
</script></body></html>"#
    );
    let ethers = std::fs::read(dir.join("node_modules/ethers/dist/ethers.umd.min.js")).unwrap();
    let page_url = serve_page(page, ethers).await;
    let profile = tempfile::tempdir().unwrap();
    let chromium = chromium();
    let dom = tokio::task::spawn_blocking(move || {
        Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--virtual-time-budget=10000", "--dump-dom", &page_url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_in_headless_chromium_calls_the_endpoint_with_fetch_and_ethers() {
    let dir = dapp_clients();
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b1"));
    let dom = page_in_chromium(&dir, &url).await;
    assert!(dom.contains(r#""fetch":"0x7a69""#), "fetch got an answer: {dom}");
    assert!(dom.contains(r#""ethers":"balance 10000000000000000000000""#), "ethers got an answer: {dom}");
}

/// A binding restricted by these bind parameters, live at once.
fn bind_restricted(gw: &TestGateway, instance: &Arc<ovsb::gateway::InstanceRoute>, parameters: Value) -> String {
    let key = gw.bind(instance, "restricted");
    let digest = ovsb::gateway::key_digest(&key);
    let allowlist = Arc::new(Allowlist::from_parameters(&parameters).expect("restrictions"));
    gw.routes.update(|table| table.restrict(digest, allowlist.clone()));
    key
}

async fn ws_call(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    request: Value,
) -> Value {
    ws.send(Message::text(request.to_string())).await.unwrap();
    let frame = tokio::time::timeout(5 * SECOND, ws.next()).await.expect("an answer").unwrap().unwrap();
    serde_json::from_str(frame.to_text().unwrap()).unwrap()
}

fn call(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test]
async fn method_allowlists_refuse_before_the_chain_on_http_websocket_and_in_batches() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance =
        gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let key =
        bind_restricted(&gw, &instance, json!({"allowed_methods": ["eth_*", "evm_*"], "denied_methods": ["evm_mine"]}));
    let url = gw.url(&key);
    let before = block_number(&url).await;

    let refused = rpc(&url, "evm_mine", json!([])).await;
    assert_eq!(refused["error"]["code"], -32052, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("denied_methods"), "{refused}");
    let refused = rpc(&url, "net_version", json!([])).await;
    assert_eq!(refused["error"]["code"], -32052, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("allowed_methods"), "{refused}");

    let batch = json!([
        call(1, "eth_chainId", json!([])),
        call(2, "evm_mine", json!([])),
        call(3, "net_version", json!([])),
        call(4, "eth_blockNumber", json!([]))
    ]);
    let (_, text) = post_text(&url, &batch.to_string()).await;
    let answers: Vec<Value> = serde_json::from_str(&text).unwrap();
    let codes: Vec<Value> = answers.iter().map(|a| a["error"]["code"].clone()).collect();
    assert_eq!(codes, vec![Value::Null, json!(-32052), json!(-32052), Value::Null], "{text}");
    assert_eq!(answers[0]["result"], "0x7a69");

    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(&key)).await.unwrap();
    assert_eq!(ws_call(&mut ws, call(1, "evm_mine", json!([]))).await["error"]["code"], -32052);
    assert_eq!(ws_call(&mut ws, call(2, "eth_chainId", json!([]))).await["result"], "0x7a69");
    assert_eq!(block_number(&url).await, before, "no refused evm_mine reached the node");
}

#[tokio::test]
async fn contract_allowlists_cover_calls_logs_and_decoded_raw_transactions() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let (allowed, other) = ("0x5fbdb2315678afecb367f032d93f642f64180aa3", "0x70997970c51812dc3a010c7d01b50e0d17dc79c8");
    let key = bind_restricted(&gw, &instance, json!({"allowed_contracts": [allowed]}));
    let url = gw.url(&key);
    let sender = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    assert_eq!(rpc(&url, "eth_call", json!([{"to": allowed, "data": "0x"}, "latest"])).await["result"], "0x");
    for (method, params) in [
        ("eth_call", json!([{"to": other, "data": "0x"}, "latest"])),
        ("eth_estimateGas", json!([{"from": sender, "to": other}])),
        ("eth_getLogs", json!([{"address": other}])),
        ("eth_getLogs", json!([{"fromBlock": "0x0"}])),
    ] {
        let answer = rpc(&url, method, params).await;
        assert_eq!(answer["error"]["code"], -32053, "{method}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("allowed_contracts"));
    }
    assert!(rpc(&url, "eth_getLogs", json!([{"address": allowed}])).await["result"].is_array());

    // Transactions signed by anvil (legacy and EIP-1559), sent raw through the gateway.
    let nonce = || async {
        rpc(&anvil.http_url(), "eth_getTransactionCount", json!([sender, "latest"])).await["result"].clone()
    };
    let sign = |to: &str, legacy: bool| {
        let mut tx =
            json!({"from": sender, "to": to, "value": "0x1", "gas": "0x5208", "nonce": "0x0", "chainId": "0x7a69"});
        if legacy {
            tx["gasPrice"] = json!("0x3b9aca00");
        } else {
            tx["maxFeePerGas"] = json!("0x77359400");
            tx["maxPriorityFeePerGas"] = json!("0x1");
        }
        let url = anvil.http_url();
        async move { rpc(&url, "eth_signTransaction", json!([tx])).await["result"].as_str().unwrap().to_string() }
    };
    let start = nonce().await;
    for legacy in [true, false] {
        let raw = sign(other, legacy).await;
        let answer = rpc(&url, "eth_sendRawTransaction", json!([raw])).await;
        assert_eq!(answer["error"]["code"], -32053, "legacy {legacy}: {answer}");
    }
    assert_eq!(nonce().await, start, "no refused transaction reached anvil");
    let raw = sign(allowed, false).await;
    let answer = rpc(&url, "eth_sendRawTransaction", json!([raw])).await;
    assert!(answer["result"].is_string(), "a transaction to the allowed address goes through: {answer}");

    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(&key)).await.unwrap();
    let answer = ws_call(&mut ws, call(1, "eth_call", json!([{"to": other, "data": "0x"}, "latest"]))).await;
    assert_eq!(answer["error"]["code"], -32053, "{answer}");
    let answer = ws_call(&mut ws, call(2, "eth_call", json!([{"to": allowed, "data": "0x"}, "latest"]))).await;
    assert_eq!(answer["result"], "0x", "{answer}");
}

#[tokio::test]
async fn origin_allowlists_refuse_other_origins_on_http_and_websocket() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let key = bind_restricted(&gw, &instance, json!({"allowed_origins": ["https://app.example.com", "*.dapp.io"]}));
    let url = gw.url(&key);
    let body = call(1, "eth_chainId", json!([])).to_string();
    let post_from = |origin: Option<&'static str>| {
        let mut request =
            reqwest::Client::new().post(&url).header("content-type", "application/json").body(body.clone());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move {
            let response = request.send().await.unwrap();
            let cors = response.headers().get("access-control-allow-origin").is_some();
            (response.status().as_u16(), cors, response.json::<Value>().await.unwrap())
        }
    };
    let (status, cors, answer) = post_from(Some("https://evil.example")).await;
    assert_eq!((status, cors, answer["error"]["code"].clone()), (403, false, json!(-32051)), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("allowed_origins"));
    for origin in [Some("https://app.example.com"), Some("https://x.dapp.io"), None] {
        let (status, _, answer) = post_from(origin).await;
        assert_eq!((status, answer["result"].clone()), (200, json!("0x7a69")), "{origin:?}");
    }

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = gw.ws_url(&key).into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("the upgrade from another origin is refused: {other:?}"),
    }
    let mut request = gw.ws_url(&key).into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://app.example.com".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("an allowed origin opens it");
    assert_eq!(ws_call(&mut ws, call(1, "eth_chainId", json!([]))).await["result"], "0x7a69");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_from_an_origin_not_allowed_is_refused_in_headless_chromium() {
    let dir = dapp_clients();
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let url = gw.url(&bind_restricted(&gw, &instance, json!({"allowed_origins": ["https://app.example.com"]})));
    let dom = page_in_chromium(&dir, &url).await;
    assert!(dom.contains(r#""fetch":"refused"#), "fetch was refused: {dom}");
    assert!(dom.contains(r#""ethers":"refused"#), "ethers was refused: {dom}");
}

#[tokio::test]
async fn through_the_broker_bind_parameters_restrict_the_key_and_unbind_and_deprovision_close_its_websockets() {
    use support::broker::{Db, PLAN_SHARED, SERVICE, TestBroker};
    let anvil = Anvil::start(&["--block-time", "1"]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |_| {}).await;
    let osb = &broker.osb;
    osb.ready_instance("d1", PLAN_SHARED, None).await;
    let bind = |binding: &'static str, parameters: Value| {
        let body = json!({"service_id": SERVICE, "plan_id": PLAN_SHARED, "parameters": parameters});
        let path = format!("/v2/service_instances/d1/service_bindings/{binding}");
        async move { osb.call(reqwest::Method::PUT, &path, Some(body)).await }
    };
    for (field, value) in [
        ("allowed_contracts", json!(["0x12"])),
        ("allowed_origins", json!(["not an origin"])),
        ("allowed_methods", json!([""])),
        ("denied_methods", json!("eth_*")),
    ] {
        let refused = bind("kx", json!({ field: value })).await;
        refused.assert_error(400, Some("BadRequest"));
        assert!(refused.body["description"].as_str().unwrap().contains(field), "{field}: {refused:?}");
    }

    let parameters = json!({"denied_methods": ["evm_*"], "allowed_origins": ["*.example.com"]});
    let created = bind("k1", parameters.clone()).await;
    assert_eq!(created.status, 201, "{created:?}");
    let fetched = osb.call(reqwest::Method::GET, "/v2/service_instances/d1/service_bindings/k1", None).await;
    assert_eq!(fetched.body["parameters"], parameters, "fetch-binding returns the parameters");
    let uri = created.body["credentials"]["uri"].as_str().unwrap();
    assert_eq!(rpc(uri, "evm_mine", json!([])).await["error"]["code"], -32052);
    assert_eq!(rpc(uri, "eth_chainId", json!([])).await["result"], "0x7a69");

    let mut ws = subscribed(created.body["credentials"]["ws_uri"].as_str().unwrap()).await;
    let unbound = osb
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/service_instances/d1/service_bindings/k1?service_id={SERVICE}&plan_id={PLAN_SHARED}"),
            None,
        )
        .await;
    assert_eq!(unbound.status, 200);
    assert_eq!(close_within(&mut ws, SECOND).await, (REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON.to_string()));

    // Deprovision: the instance's sockets close too.
    let other = bind("k2", json!({})).await;
    let mut ws = subscribed(other.body["credentials"]["ws_uri"].as_str().unwrap()).await;
    assert_eq!(osb.deprovision("d1", PLAN_SHARED).await.status, 202);
    assert_eq!(close_within(&mut ws, SECOND).await, (REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON.to_string()));

    // No CORS on the broker and admin listeners.
    let server = broker.server.as_ref().unwrap();
    for url in [format!("http://{}/v2/catalog", server.broker_addr), format!("http://{}/healthz", server.admin_addr)] {
        for method in [reqwest::Method::OPTIONS, reqwest::Method::GET] {
            let response = reqwest::Client::new()
                .request(method.clone(), &url)
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "POST")
                .send()
                .await
                .unwrap();
            assert!(response.headers().get("access-control-allow-origin").is_none(), "{method} {url}");
        }
    }
}

#[tokio::test]
async fn a_plans_allowed_origins_apply_to_its_bindings_unless_a_binding_names_its_own() {
    use support::broker::{Db, PLAN_SHARED, SERVICE, TestBroker};
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |config| {
        let plan = config.services.iter_mut().flat_map(|s| &mut s.plans).find(|p| p.id == PLAN_SHARED).unwrap();
        plan.allowed_origins = vec!["https://plan.example".into()];
    })
    .await;
    let osb = &broker.osb;
    osb.ready_instance("p1", PLAN_SHARED, None).await;
    let plain = osb.bind("p1", "k1", PLAN_SHARED).await;
    let body = json!({"service_id": SERVICE, "plan_id": PLAN_SHARED, "parameters": {"allowed_origins": ["https://own.example"]}});
    let own = osb.call(reqwest::Method::PUT, "/v2/service_instances/p1/service_bindings/k2", Some(body)).await;
    assert_eq!((plain.status, own.status), (201, 201));
    let from = |created: &Value, origin: Option<&'static str>| {
        let uri = created["credentials"]["uri"].as_str().unwrap().to_string();
        async move {
            let mut request = reqwest::Client::new()
                .post(uri)
                .header("content-type", "application/json")
                .body(call(1, "eth_chainId", json!([])).to_string());
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(from(&plain.body, Some("https://plan.example")).await, 200);
    assert_eq!(from(&plain.body, Some("https://own.example")).await, 403);
    assert_eq!(from(&own.body, Some("https://own.example")).await, 200);
    assert_eq!(from(&own.body, Some("https://plan.example")).await, 403, "the binding's own list replaces the plan's");
    assert_eq!((from(&plain.body, None).await, from(&own.body, None).await), (200, 200), "not from a page");
}

/// Two replicas on one PostgreSQL database: a WebSocket open on B closes when A unbinds its key,
/// once B has applied A's change (B polls the change log every 200 ms in the tests).
/// An expired key ends what it opened, as a revoked one does: its WebSocket closes with the
/// revocation code at the binding's expiry (here a plan's `binding_ttl` of 3 s), and a call on a
/// new connection is refused.
#[tokio::test]
async fn an_expiring_keys_websocket_closes_at_its_expiry() {
    use support::broker::{Db, PLAN_SHARED, TestBroker};
    let anvil = Anvil::start(&["--block-time", "1"]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |c| {
        for plan in c.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            plan.binding_ttl = Some(3);
        }
    })
    .await;
    broker.osb.ready_instance("e1", PLAN_SHARED, None).await;
    let asked = ovsb::store::now_ms();
    let bound = broker.osb.bind("e1", "k", PLAN_SHARED).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let mut ws = subscribed(bound.body["credentials"]["ws_uri"].as_str().unwrap()).await;
    // Open until the expiry (3 s after the bind), then closed with the revocation code.
    assert_eq!(close_within(&mut ws, 6 * SECOND).await, (REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON.to_string()));
    assert!(ovsb::store::now_ms() >= asked + 3000, "not closed before the expiry");
    let uri = bound.body["credentials"]["uri"].as_str().unwrap();
    let answer = rpc(uri, "eth_chainId", json!([])).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbind_on_another_replica_closes_the_keys_websockets_here() {
    use support::broker::{PLAN_SHARED, TestBroker};
    let anvil = Anvil::start(&["--block-time", "1"]);
    let (a, b) = TestBroker::pair_on_postgres(&anvil.http_url(), |_| {}).await;
    a.osb.ready_instance("r1", PLAN_SHARED, None).await;
    let bound = a.osb.bind("r1", "k", PLAN_SHARED).await;
    let on_b = bound.body["credentials"]["ws_uri"]
        .as_str()
        .unwrap()
        .replace(&a.gateway.replace("http://", "ws://"), &b.gateway.replace("http://", "ws://"));
    let deadline = Instant::now() + 10 * SECOND;
    let mut ws = loop {
        // B serves the key once it has followed A's bind.
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&on_b).await {
            drop(ws);
            break subscribed(&on_b).await;
        }
        assert!(Instant::now() < deadline, "B never served A's binding");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a.osb.unbind("r1", "k", PLAN_SHARED).await.status, 200);
    assert_eq!(close_within(&mut ws, 3 * SECOND).await, (REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON.to_string()));
}

/// Each call of a batch counts against a rate limit as its own call: a batch of 1000 through the
/// rate-limit plugin (a bucket of 5, 1 per second) gets about 5 answers and 995 refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_of_a_1000_call_batch_counts_against_the_rate_limit() {
    use support::broker::{Db, PLAN_SHARED, TestBroker};
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |config| {
        config.plugins.push(ovsb::config::PluginDecl {
            name: "rate-limit".into(),
            path: PathBuf::from(ovsb_test_artifacts::RATE_LIMIT_PLUGIN),
            sha256: None,
            schema: None,
            limits: Default::default(),
        });
    })
    .await;
    let chain = json!({"plugins": [{"name": "rate-limit", "config": {"requests_per_second": 1, "burst": 5}}]});
    broker.osb.ready_instance("rl", PLAN_SHARED, Some(chain)).await;
    let uri = broker.osb.bind("rl", "b", PLAN_SHARED).await.body["credentials"]["uri"].as_str().unwrap().to_string();
    let started = Instant::now();
    let batch: Vec<Value> = (0..1000).map(|i| call(i, "eth_chainId", json!([]))).collect();
    let (_, text) = post_text(&uri, &Value::Array(batch).to_string()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let answers: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(answers.len(), 1000);
    let passed = answers.iter().filter(|a| a["result"] == "0x7a69").count();
    let limited = answers.iter().filter(|a| a["error"]["code"] == -32005).count();
    assert_eq!(passed + limited, 1000, "{text}");
    assert!(passed >= 5 && passed as f64 <= 5.0 + elapsed.ceil(), "{passed} passed in {elapsed:.2} s");
}

/// `node viem-watch.mjs <args>` in tests/dapp, with its stdout as JSON lines.
fn viem_watch(
    args: &[&str],
) -> (tokio::process::Child, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("node")
        .current_dir(dapp_clients())
        .arg("viem-watch.mjs")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    limit: Duration,
) -> Value {
    let line = tokio::time::timeout(limit, lines.next_line()).await.expect("a line in time").unwrap().expect("a line");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn viem_receives_a_burst_of_3000_logs_of_one_transaction_whole_and_in_order() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance =
        gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let contract = support::deploy_emitter(&anvil.http_url()).await;

    let (_viem, mut lines) = viem_watch(&[&gw.ws_url(&key), "logs", &contract, "3000"]);
    assert_eq!(next_line(&mut lines, 20 * SECOND).await, json!({"ready": true}));
    support::emit(&anvil.http_url(), &contract, 3000).await;
    let seen = next_line(&mut lines, 60 * SECOND).await;
    let expected: Vec<u64> = (0..3000).collect();
    assert_eq!(seen, json!(expected), "all 3000, in order");
}

#[tokio::test]
async fn viem_watch_blocks_gets_heads_again_after_the_node_restarts() {
    let mut anvil = Anvil::start(&["--block-time", "1"]);
    let port = anvil.port;
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");

    let (_viem, mut lines) = viem_watch(&[&gw.ws_url(&key), "heads"]);
    let first = next_line(&mut lines, 20 * SECOND).await;
    assert!(first["head"].is_number(), "{first}");

    // The node restarts (as its supervisor would restart it): a fresh chain on the same port.
    anvil.kill();
    let _anvil = Anvil::start_on(port, &["--block-time", "1"]);
    // viem is told (the socket closes with 1012: SocketClosedError), reconnects, resubscribes,
    // and heads come again. Heads already on their way before the kill may come first.
    let mut told = false;
    for _ in 0..30 {
        let line = next_line(&mut lines, 30 * SECOND).await;
        if line["error"] == "SocketClosedError" {
            told = true;
        } else if told && line["head"].is_number() {
            return;
        }
    }
    panic!("no head after the restart (told: {told})");
}

// ---- Issue #28: allowed_contracts sound by construction, plan policies ----

/// The contract a key may use, and the one it may not (both hold the code below; slot 0 holds
/// their last 20 bits of address, so that an answer carrying SECRET's value is recognisable).
const ALLOWED: &str = "0x00000000000000000000000000000000000a11ed";
const SECRET: &str = "0x000000000000000000000000000000005ec12e70";
const SECRET_WORD: &str = "5ec12e70";
/// On any call: LOG0 of storage slot 0, then return it.
const CONTRACT_CODE: &str = "0x60005460005260206000a060206000f3";
const DEV: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

/// Puts ALLOWED and SECRET on the node, and gives SECRET a log (a transaction sent to it
/// directly, as another tenant would).
async fn two_contracts(node: &str) {
    for (address, word) in [(ALLOWED, "a11ed"), (SECRET, SECRET_WORD)] {
        assert!(rpc(node, "anvil_setCode", json!([address, CONTRACT_CODE])).await["error"].is_null());
        let value = format!("0x{word:0>64}");
        assert_eq!(rpc(node, "anvil_setStorageAt", json!([address, "0x0", value])).await["result"], true);
    }
    let sent = rpc(node, "eth_sendTransaction", json!([{"from": DEV, "to": SECRET}])).await;
    assert!(sent["result"].is_string(), "{sent}");
}

async fn nonce_at(node: &str) -> Value {
    rpc(node, "eth_getTransactionCount", json!([DEV, "latest"])).await["result"].clone()
}

/// A transaction signed by the node's dev account (the node does not send it).
async fn signed(node: &str, mut tx: Value) -> String {
    tx["from"] = json!(DEV);
    tx["chainId"] = json!("0x7a69");
    tx["gas"] = json!("0x30000");
    if tx.get("gasPrice").is_none() {
        tx["maxFeePerGas"] = json!("0x77359400");
        tx["maxPriorityFeePerGas"] = json!("0x1");
    }
    if tx.get("nonce").is_none() {
        tx["nonce"] = nonce_at(node).await;
    }
    let answer = rpc(node, "eth_signTransaction", json!([tx])).await;
    answer["result"].as_str().unwrap_or_else(|| panic!("signed: {answer}")).to_string()
}

/// A type-3 (blob) transaction to `to`, with a made-up signature: it must be refused before it
/// reaches the node, whatever the node would say of it.
fn blob_transaction(to: &str) -> String {
    fn item(data: &[u8]) -> Vec<u8> {
        match data {
            [b] if *b < 0x80 => vec![*b],
            _ => [vec![0x80 + data.len() as u8], data.to_vec()].concat(),
        }
    }
    fn list(items: &[Vec<u8>]) -> Vec<u8> {
        let payload = items.concat();
        assert!(payload.len() < 256);
        let head = if payload.len() < 56 { vec![0xc0 + payload.len() as u8] } else { vec![0xf8, payload.len() as u8] };
        [head, payload].concat()
    }
    let to = hex::decode(&to[2..]).unwrap();
    let fields = [
        item(&[0x7a, 0x69]),
        item(&[]),
        item(&[1]),
        item(&[0x77, 0x35, 0x94, 0x00]),
        item(&[0x52, 0x08]),
        item(&to),
        item(&[]),
        item(&[]),
        list(&[]),
        item(&[1]),
        list(&[item(&[1; 32])]),
        item(&[1]),
        item(&[1]),
        item(&[1]),
    ];
    format!("0x03{}", hex::encode(list(&fields)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_contracts_hold_against_every_known_bypass_and_still_serve_the_listed_contract() {
    let anvil = Anvil::start(&[]);
    let node = anvil.http_url();
    two_contracts(&node).await;
    let foreign_filter =
        rpc(&node, "eth_newFilter", json!([{"address": SECRET, "fromBlock": "0x0"}])).await["result"].clone();
    let proxy = format!("0x6020600060006000600073{}5af160206000f3", &SECRET[2..]);
    let swap_code = json!({ALLOWED: {"code": proxy}});
    // Proof that the override is a real way to SECRET: anvil itself answers with SECRET's value.
    let direct = rpc(&node, "eth_call", json!([{"to": ALLOWED}, "latest", swap_code])).await;
    assert!(direct["result"].as_str().unwrap().ends_with(SECRET_WORD), "{direct}");

    let to_secret = signed(&node, json!({"to": SECRET})).await;
    let legacy_to_secret = signed(&node, json!({"to": SECRET, "gasPrice": "0x77359400"})).await;
    let creation = signed(&node, json!({"data": CONTRACT_CODE})).await;
    let authorization =
        json!({"chainId": "0x7a69", "address": SECRET, "nonce": "0x9", "yParity": "0x0", "r": "0x1", "s": "0x1"});
    let set_code = signed(&node, json!({"to": ALLOWED, "authorizationList": [authorization]})).await;
    assert!(set_code.starts_with("0x04"), "anvil signed an EIP-7702 transaction: {set_code}");
    let blob = blob_transaction(SECRET);
    let call_secret = json!({"from": DEV, "to": SECRET, "data": "0x"});

    let bypasses: Vec<(&str, &str, Value)> = vec![
        (
            "a state override swaps the allowed contract's code",
            "eth_call",
            json!([{"to": ALLOWED}, "latest", swap_code]),
        ),
        ("a block override", "eth_call", json!([{"to": ALLOWED}, "latest", null, {"number": "0x1"}])),
        ("estimateGas with a state override", "eth_estimateGas", json!([{"to": ALLOWED}, "latest", swap_code])),
        ("eth_call to SECRET", "eth_call", json!([call_secret, "latest"])),
        ("debug_traceCall", "debug_traceCall", json!([call_secret, "latest", {}])),
        ("trace_call", "trace_call", json!([call_secret, ["trace"], "latest"])),
        (
            "eth_simulateV1 to SECRET",
            "eth_simulateV1",
            json!([{"blockStateCalls": [{"calls": [call_secret]}]}, "latest"]),
        ),
        (
            "eth_simulateV1 with a state override",
            "eth_simulateV1",
            json!([{"blockStateCalls": [{"stateOverrides": swap_code, "calls": [{"to": ALLOWED}]}]}, "latest"]),
        ),
        ("eth_createAccessList", "eth_createAccessList", json!([call_secret, "latest"])),
        ("eth_getStorageAt", "eth_getStorageAt", json!([SECRET, "0x0", "latest"])),
        ("eth_getCode", "eth_getCode", json!([SECRET, "latest"])),
        ("eth_getProof", "eth_getProof", json!([SECRET, [format!("0x{:0>64}", 0)], "latest"])),
        ("eth_sendRawTransaction", "eth_sendRawTransaction", json!([to_secret])),
        ("eth_sendRawTransaction, legacy", "eth_sendRawTransaction", json!([legacy_to_secret])),
        ("eth_sendRawTransactionSync", "eth_sendRawTransactionSync", json!([to_secret])),
        ("eth_sendRawTransactionConditional", "eth_sendRawTransactionConditional", json!([to_secret, {}])),
        ("a raw contract creation", "eth_sendRawTransaction", json!([creation])),
        ("an EIP-7702 authorization", "eth_sendRawTransaction", json!([set_code])),
        ("a blob transaction to SECRET", "eth_sendRawTransaction", json!([blob])),
        ("eth_sendTransaction to SECRET", "eth_sendTransaction", json!([call_secret])),
        ("eth_sendTransactionSync to SECRET", "eth_sendTransactionSync", json!([call_secret])),
        (
            "eth_sendTransaction creating a contract",
            "eth_sendTransaction",
            json!([{"from": DEV, "data": CONTRACT_CODE}]),
        ),
        ("eth_newFilter of SECRET", "eth_newFilter", json!([{"address": SECRET, "fromBlock": "0x0"}])),
        ("eth_newFilter of every address", "eth_newFilter", json!([{"fromBlock": "0x0"}])),
        ("eth_getLogs of every address", "eth_getLogs", json!([{"fromBlock": "0x0"}])),
        (
            "eth_getLogs with SECRET in the list",
            "eth_getLogs",
            json!([{"address": [ALLOWED, SECRET], "fromBlock": "0x0"}]),
        ),
        ("logs of a filter made by someone else", "eth_getFilterLogs", json!([foreign_filter])),
        ("a method the host does not know", "anvil_setBalance", json!([DEV, "0xdead"])),
        ("a signing method the host does not check", "eth_signTransaction", json!([call_secret])),
    ];

    let gw = TestGateway::start(GatewayConfig::default()).await;
    let plain = gw.instance("plain", std::slice::from_ref(&node), &[anvil.ws_url()], &[], 10 * SECOND).await;
    let chained = gw
        .instance("chained", std::slice::from_ref(&node), &[anvil.ws_url()], &[json!({"mode": "pass"})], 10 * SECOND)
        .await;
    for instance in [&plain, &chained] {
        let which = instance.instance_id.to_string();
        let key = bind_restricted(&gw, instance, json!({"allowed_contracts": [ALLOWED]}));
        let url = gw.url(&key);
        let start = nonce_at(&node).await;
        let mut through = Vec::new();
        for (what, method, params) in &bypasses {
            let answer = rpc(&url, method, params.clone()).await;
            let refused = answer["error"]["code"] == -32053
                && answer["error"]["message"].as_str().is_some_and(|m| m.contains("allowed_contracts"))
                && !answer.to_string().contains(SECRET_WORD);
            if !refused {
                through.push(format!("{what}: {answer}"));
            }
        }
        assert!(through.is_empty(), "{which}: {} bypasses were not refused:\n{}", through.len(), through.join("\n"));
        // The same in one batch: each entry refused on its own, the legitimate one answered.
        let mut batch: Vec<Value> =
            bypasses.iter().enumerate().map(|(i, (_, m, p))| call(i as u64 + 1, m, p.clone())).collect();
        batch.push(call(1000, "eth_call", json!([{"to": ALLOWED}, "latest"])));
        let (_, text) = post_text(&url, &Value::Array(batch).to_string()).await;
        let answers: Vec<Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(answers.len(), bypasses.len() + 1);
        for answer in &answers[..bypasses.len()] {
            assert_eq!(answer["error"]["code"], -32053, "{which}: batch: {answer}");
        }
        assert!(answers[bypasses.len()]["result"].as_str().unwrap().ends_with("a11ed"), "{text}");
        assert!(!text.contains(SECRET_WORD), "the batch answered nothing of SECRET's");
        assert_eq!(nonce_at(&node).await, start, "{which}: no refused send reached anvil");

        // The legitimate forms still work: calls, reads, transactions and logs of ALLOWED.
        let word = |answer: &Value| answer["result"].as_str().unwrap_or_default().ends_with("a11ed");
        assert!(word(&rpc(&url, "eth_call", json!([{"to": ALLOWED}, "latest"])).await));
        assert!(word(&rpc(&url, "eth_call", json!([{"to": ALLOWED}, "latest", {}, null])).await), "empty overrides");
        assert!(word(&rpc(&url, "eth_getStorageAt", json!([ALLOWED, "0x0", "latest"])).await));
        assert_eq!(rpc(&url, "eth_getCode", json!([ALLOWED, "latest"])).await["result"], CONTRACT_CODE);
        let call_allowed = json!({"from": DEV, "to": ALLOWED});
        for (method, params) in [
            ("eth_estimateGas", json!([call_allowed])),
            ("eth_createAccessList", json!([call_allowed, "latest"])),
            ("eth_simulateV1", json!([{"blockStateCalls": [{"calls": [call_allowed]}]}, "latest"])),
            ("eth_getProof", json!([ALLOWED, [format!("0x{:0>64}", 0)], "latest"])),
            ("eth_getBalance", json!([DEV, "latest"])),
            ("eth_blockNumber", json!([])),
        ] {
            let answer = rpc(&url, method, params).await;
            assert!(answer["error"].is_null() && !answer["result"].is_null(), "{which}: {method}: {answer}");
        }
        let filter =
            rpc(&url, "eth_newFilter", json!([{"address": ALLOWED, "fromBlock": "0x0"}])).await["result"].clone();
        assert!(filter.is_string());
        let sent = rpc(&url, "eth_sendRawTransaction", json!([signed(&node, json!({"to": ALLOWED})).await])).await;
        assert!(sent["result"].is_string(), "{which}: {sent}");
        let receipt =
            rpc(&url, "eth_sendRawTransactionSync", json!([signed(&node, json!({"to": ALLOWED})).await])).await;
        assert_eq!(receipt["result"]["status"], "0x1", "{which}: {receipt}");
        let sent = rpc(&url, "eth_sendTransaction", json!([call_allowed])).await;
        assert!(sent["result"].is_string(), "{which}: {sent}");
        let logs = rpc(&url, "eth_getLogs", json!([{"address": ALLOWED, "fromBlock": "0x0"}])).await;
        assert!(logs["result"].as_array().is_some_and(|l| l.len() >= 3), "{which}: {logs}");
        let changes = rpc(&url, "eth_getFilterChanges", json!([filter])).await;
        assert!(changes["result"].as_array().is_some_and(|l| !l.is_empty()), "{which}: {changes}");
        assert!(!changes.to_string().contains(SECRET_WORD));
        assert_eq!(
            nonce_at(&node).await.as_str().map(|n| u64::from_str_radix(&n[2..], 16).unwrap()),
            start.as_str().map(|n| u64::from_str_radix(&n[2..], 16).unwrap() + 3),
            "the three sends went through"
        );

        // WebSocket: subscriptions to logs name listed addresses only.
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(&key)).await.unwrap();
        for (id, params) in [(1, json!(["logs", {"address": SECRET}])), (2, json!(["logs", {}])), (3, json!(["logs"]))]
        {
            let answer = ws_call(&mut ws, call(id, "eth_subscribe", params)).await;
            assert_eq!(answer["error"]["code"], -32053, "{which}: {answer}");
        }
        let answer = ws_call(&mut ws, call(4, "eth_call", json!([{"to": ALLOWED}, "latest", swap_code]))).await;
        assert_eq!(answer["error"]["code"], -32053, "{answer}");
        let answer = ws_call(&mut ws, call(5, "eth_subscribe", json!(["logs", {"address": ALLOWED}]))).await;
        assert!(answer["result"].is_string(), "{which}: {answer}");
        rpc(&node, "eth_sendTransaction", json!([{"from": DEV, "to": SECRET}])).await;
        rpc(&node, "eth_sendTransaction", json!([{"from": DEV, "to": ALLOWED}])).await;
        let frame = tokio::time::timeout(10 * SECOND, ws.next()).await.expect("a log").unwrap().unwrap();
        let log: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(log["params"]["result"]["address"], ALLOWED, "{which}: only ALLOWED's logs: {log}");
    }
}

#[tokio::test]
async fn a_plugin_cannot_take_a_restricted_call_past_the_allowlist() {
    let anvil = Anvil::start(&[]);
    let node = anvil.http_url();
    two_contracts(&node).await;
    let gw = TestGateway::start(GatewayConfig::default()).await;
    // A tenant plugin that rewrites eth_chainId into evm_mine on its way to the node, and one
    // that answers `my_read` by asking the node itself (host `upstream` import).
    let renamer = json!({"mode": "tracer", "tag": "t", "rename": "evm_mine", "methods": ["eth_chainId"]});
    let fanout = json!({"mode": "fanout", "count": 1, "methods": ["my_read"]});
    let instance = gw.instance("i1", std::slice::from_ref(&node), &[], &[renamer.clone(), fanout], 10 * SECOND).await;
    let key = bind_restricted(&gw, &instance, json!({"allowed_contracts": [ALLOWED]}));
    let url = gw.url(&key);
    let before = block_number(&node).await;
    let answer = rpc(&url, "eth_chainId", json!([])).await;
    assert_eq!(answer["error"]["code"], -32053, "the rewritten call is checked at the node: {answer}");
    assert_eq!(block_number(&node).await, before, "nothing was mined");
    let answer = rpc(&url, "my_read", json!([])).await;
    assert_eq!(answer["result"][0]["error"], -32053, "the plugin's own upstream call is checked: {answer}");

    // Plan method rules hold for the same plugins, with no binding restriction at all.
    let planned = gw.instance("i2", std::slice::from_ref(&node), &[], &[renamer], 10 * SECOND).await;
    let mut planned = Arc::try_unwrap(planned).ok().expect("held once");
    planned.policy = Some(Arc::new(ovsb::gateway::allowlist::MethodRules::new(vec![], vec!["evm_*".into()])));
    let planned = Arc::new(planned);
    let url = gw.url(&gw.bind(&planned, "b"));
    let answer = rpc(&url, "eth_chainId", json!([])).await;
    assert_eq!(answer["error"]["code"], -32052, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("plan's denied_methods"), "{answer}");
    assert_eq!(rpc(&url, "evm_mine", json!([])).await["error"]["code"], -32052);
    assert_eq!(block_number(&node).await, before, "nothing was mined");
}

/// The `shared` plan's policy in the quick-start configuration.
fn quick_start_shared_policy() -> ovsb::config::PlanPolicy {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/quick-start.toml");
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let services = config["services"].as_array().unwrap();
    let plans = services.iter().flat_map(|s| s["plans"].as_array().unwrap());
    let shared = plans.into_iter().find(|p| p["name"].as_str() == Some("shared")).expect("a shared plan");
    shared["policy"].clone().try_into().expect("the shared plan's policy")
}

#[tokio::test]
async fn a_plans_policy_binds_every_instance_and_parameters_cannot_drop_or_reorder_it() {
    use ovsb::config::{ChainElement, PlanPolicy};
    use support::broker::{Db, PLAN_SHARED, SERVICE, TestBroker};
    let anvil = Anvil::start(&[]);
    let node = anvil.http_url();
    let broker = TestBroker::start(Db::Sqlite, &node, |config| {
        config.services[0].plans[0].policy = PlanPolicy {
            denied_methods: vec!["anvil_*".into(), "hardhat_*".into(), "evm_*".into(), "debug_*".into()],
            plugins_before: vec![ChainElement { name: "pass".into(), config: json!({}), fail_open: false }],
            ..Default::default()
        };
    })
    .await;
    let osb = &broker.osb;

    let catalog = osb.call(reqwest::Method::GET, "/v2/catalog", None).await;
    let plan =
        catalog.body["services"][0]["plans"].as_array().unwrap().iter().find(|p| p["id"] == PLAN_SHARED).unwrap();
    assert_eq!(plan["metadata"]["policy"]["denied_methods"][0], "anvil_*", "{plan}");
    assert_eq!(plan["metadata"]["policy"]["plugins_before"], json!(["pass"]), "{plan}");

    let tenant = json!({"name": "test", "config": {"mode": "tracer", "tag": "t", "rename": "anvil_setBalance", "methods": ["eth_chainId"]}});
    for (id, chain) in [
        ("dropped", json!([])),
        ("reordered", json!([tenant, {"name": "pass"}])),
        ("fail-open", json!([{"name": "pass", "fail_open": true}])),
    ] {
        let refused = osb.provision(id, PLAN_SHARED, Some(json!({ "plugins": chain }))).await;
        refused.assert_error(400, Some("BadRequest"));
        let description = refused.body["description"].as_str().unwrap();
        assert!(description.contains("parameters.plugins") && description.contains("policy"), "{id}: {refused:?}");
        let fetched = osb.call(reqwest::Method::GET, &format!("/v2/service_instances/{id}"), None).await;
        assert_eq!(fetched.status, 404, "{id}: nothing was created");
    }
    // The policy's plugin kept in front, then the tenant's own (which rewrites eth_chainId into
    // a denied method); and an instance with the plan's default chain.
    osb.ready_instance("kept", PLAN_SHARED, Some(json!({"plugins": [{"name": "pass"}, tenant]}))).await;
    osb.ready_instance("default", PLAN_SHARED, None).await;
    let update = osb
        .call(
            reqwest::Method::PATCH,
            "/v2/service_instances/default?accepts_incomplete=true",
            Some(json!({"service_id": SERVICE, "parameters": {"plugins": []}})),
        )
        .await;
    update.assert_error(400, Some("BadRequest"));
    assert!(update.body["description"].as_str().unwrap().contains("parameters.plugins"), "{update:?}");

    let victim = "0x000000000000000000000000000000000000dead";
    for id in ["kept", "default"] {
        let bound = osb.bind(id, "b", PLAN_SHARED).await;
        let url = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
        for method in ["anvil_setBalance", "hardhat_setBalance", "evm_mine"] {
            let refused = rpc(&url, method, json!([victim, "0xdead"])).await;
            assert_eq!(refused["error"]["code"], -32052, "{id}: {method}: {refused}");
            assert!(refused["error"]["message"].as_str().unwrap().contains("plan's denied_methods"), "{refused}");
        }
        assert_eq!(rpc(&url, "eth_getBalance", json!([victim, "latest"])).await["result"], "0x0", "{id}");
    }
    let bound = osb.bind("kept", "b2", PLAN_SHARED).await;
    let url = bound.body["credentials"]["uri"].as_str().unwrap();
    let refused = rpc(url, "eth_chainId", json!([])).await;
    assert_eq!(refused["error"]["code"], -32052, "the tenant plugin's rewrite is checked too: {refused}");
    assert_eq!(rpc(&node, "eth_getBalance", json!([victim, "latest"])).await["result"], "0x0", "the node is unchanged");
}

#[tokio::test]
async fn the_quick_start_shared_plan_serves_standard_methods_and_refuses_the_rest() {
    use support::broker::{Db, PLAN_SHARED, TestBroker};
    let policy = quick_start_shared_policy();
    assert!(policy.allowed_methods.contains(&"eth_call".to_string()));
    let anvil = Anvil::start(&[]);
    let node = anvil.http_url();
    let broker = TestBroker::start(Db::Sqlite, &node, |config| config.services[0].plans[0].policy = policy).await;
    let osb = &broker.osb;
    // Even an instance that asks for no plugins at all.
    osb.ready_instance("s1", PLAN_SHARED, Some(json!({"plugins": []}))).await;
    let bound = osb.bind("s1", "b", PLAN_SHARED).await;
    let url = bound.body["credentials"]["uri"].as_str().unwrap();
    let victim = "0x000000000000000000000000000000000000dead";
    for (method, params) in [
        ("anvil_setBalance", json!([victim, "0xdead"])),
        ("hardhat_setBalance", json!([victim, "0xdead"])),
        ("debug_traceCall", json!([{"to": victim}, "latest", {}])),
        ("admin_peers", json!([])),
        ("trace_block", json!(["latest"])),
        ("txpool_content", json!([])),
        ("personal_listAccounts", json!([])),
        ("miner_start", json!([])),
        ("evm_mine", json!([])),
        ("eth_sendTransaction", json!([{"from": DEV, "to": victim, "value": "0x1"}])),
        ("eth_sign", json!([DEV, "0x00"])),
    ] {
        let refused = rpc(url, method, params).await;
        assert_eq!(refused["error"]["code"], -32052, "{method}: {refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains("plan's allowed_methods"), "{refused}");
    }
    assert_eq!(rpc(&node, "eth_getBalance", json!([victim, "latest"])).await["result"], "0x0");
    for (method, params) in [
        ("eth_chainId", json!([])),
        ("eth_blockNumber", json!([])),
        ("eth_getBalance", json!([DEV, "latest"])),
        ("eth_call", json!([{"to": victim}, "latest"])),
        ("eth_getLogs", json!([{"fromBlock": "0x0"}])),
        ("net_version", json!([])),
        ("web3_clientVersion", json!([])),
        ("eth_feeHistory", json!(["0x1", "latest", []])),
    ] {
        let answer = rpc(url, method, params).await;
        assert!(answer["error"].is_null(), "{method}: {answer}");
    }
}
