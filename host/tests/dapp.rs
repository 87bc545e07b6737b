//! The endpoint as dApps use it (issue #17), against real anvil and real clients: request ids
//! of every kind, `eth_subscribe` over HTTP, batches of 1000 from viem, revocation that ends
//! live subscriptions (close code and reason, node-side subscription gone), CORS for pages
//! in headless Chromium (plain `fetch` and ethers' `JsonRpcProvider`), and streams through viem
//! (issue #29: a burst of 3000 logs whole, `watchBlocks` across a node restart).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use ovsb::gateway::GatewayConfig;
use ovsb::gateway::allowlist::Allowlist;
use ovsb::gateway::revocable::{REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON};
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
    for path in [gw.url("").trim_end_matches('/').to_string(), gw.url("nope")] {
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
