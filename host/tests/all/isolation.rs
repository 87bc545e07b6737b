//! One gateway, many tenants, and strangers with no key: what a hostile client can do to the
//! others. Connection floods (WebSocket, idle, per address), slow and oversize bodies, and a
//! tenant whose plugin loops, each against a quiet tenant that must keep being served.
//! Real anvil behind a real gateway; the attackers are raw sockets on other loopback addresses.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use ovsb::budget::PaceSettings;
use ovsb::gateway::GatewayConfig;
use ovsb::plugins::Share;
use serde_json::{Value, json};
use support::{Anvil, TestGateway, rpc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECOND: Duration = Duration::from_secs(1);

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all loopback).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads what the server sends until it closes (or `limit` passes): the text, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_status(url: &str) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("websocket handshake failed without an HTTP answer: {other}"),
    }
}

#[tokio::test]
async fn websocket_connections_hold_their_slot_for_their_whole_life_and_the_flood_gets_429() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { max_connections: 4, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");

    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(ws_status(&gw.ws_url(&key)).await.expect("within the cap"));
    }
    assert_eq!(ws_status(&gw.ws_url(&key)).await.err(), Some(429), "a fifth WebSocket is past the cap");
    let (status, answer) =
        support::post(&gw.url(&key), &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})).await;
    assert_eq!(status, 429, "HTTP shares the cap: {answer}");
    assert_eq!(answer["error"]["code"], -32005, "{answer}");
    assert!(answer["error"]["data"]["reason"].as_str().unwrap().starts_with("connections"), "{answer}");

    // Closing one WebSocket gives its slot back.
    drop(open.pop());
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) = ws_status(&gw.ws_url(&key)).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot of a closed WebSocket is free again");
}

#[tokio::test]
async fn idle_anonymous_connections_do_not_lock_out_a_keyed_client() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { max_connections: 8, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b1"));

    // Twice the cap of connections that never send a byte, from as many other addresses.
    let mut idle = Vec::new();
    for i in 0..16 {
        idle.push(connect_from([127, 0, 1, 2 + i], gw.addr).await);
    }
    for _ in 0..5 {
        let answer = rpc(&url, "eth_chainId", json!([])).await;
        assert_eq!(answer["result"], "0x7a69", "{answer}");
    }
    // The keyed client's connection took an anonymous one's slot: some idle ones were closed.
    let mut closed = 0;
    for stream in &mut idle {
        if read_until_closed(stream, Duration::from_millis(200)).await.1 {
            closed += 1;
        }
    }
    assert!(closed >= 8, "at most the cap of idle connections stay open ({closed} of 16 closed)");
}

#[tokio::test]
async fn a_connection_without_a_valid_key_is_closed_after_the_anonymous_timeout() {
    let config = GatewayConfig { anonymous_timeout: Duration::from_millis(300), ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let mut silent = connect_from([127, 0, 0, 3], gw.addr).await;
    let (_, closed) = read_until_closed(&mut silent, 10 * SECOND).await;
    assert!(closed, "an idle connection with no key is closed");

    // One that only ever sends requests with a bad key is closed too, after its 401s.
    let mut unkeyed = connect_from([127, 0, 0, 3], gw.addr).await;
    unkeyed
        .write_all(
            b"POST /v1/not-a-key HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    let (seen, closed) = read_until_closed(&mut unkeyed, 10 * SECOND).await;
    assert!(seen.starts_with("HTTP/1.1 401"), "{seen}");
    assert!(closed, "a keep-alive connection that never shows a valid key does not stay");
}

#[tokio::test]
async fn one_source_address_cannot_take_every_connection() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { max_connections: 64, max_connections_per_source: 3, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let request = format!(
        "POST /v1/{key} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    // Three keyed keep-alive connections fill the source's share.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from([127, 0, 0, 4], gw.addr).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        read_response(&mut stream).await;
        held.push(stream);
    }
    let mut fourth = connect_from([127, 0, 0, 4], gw.addr).await;
    fourth.write_all(request.as_bytes()).await.unwrap();
    let (seen, _) = read_until_closed(&mut fourth, 5 * SECOND).await;
    assert!(seen.starts_with("HTTP/1.1 429"), "{seen}");
    assert!(seen.contains("connections_per_source"), "{seen}");
    assert_eq!(rpc(&gw.url(&key), "eth_chainId", json!([])).await["result"], "0x7a69", "other addresses are served");
}

/// Behind one address (a NAT, a proxy), idle strangers fill the source's share: a keyed client
/// from the same address is still served, in place of the oldest of them.
#[tokio::test]
async fn anonymous_connections_yield_to_a_keyed_client_of_the_same_source() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { max_connections: 64, max_connections_per_source: 3, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(connect_from([127, 0, 0, 6], gw.addr).await);
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}).to_string();
    let request = format!(
        "POST /v1/{key} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut keyed = connect_from([127, 0, 0, 6], gw.addr).await;
    keyed.write_all(request.as_bytes()).await.unwrap();
    let answer = read_response(&mut keyed).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("0x7a69"), "{answer}");
}

#[tokio::test]
async fn one_key_cannot_take_every_connection() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { max_connections: 64, max_connections_per_key: 2, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let (hog, quiet) = (gw.bind(&instance, "hog"), gw.bind(&instance, "quiet"));
    let _a = ws_status(&gw.ws_url(&hog)).await.unwrap();
    let _b = ws_status(&gw.ws_url(&hog)).await.unwrap();
    assert_eq!(ws_status(&gw.ws_url(&hog)).await.err(), Some(429), "the key's share is taken");
    assert!(ws_status(&gw.ws_url(&quiet)).await.is_ok(), "another key is not affected");
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_from_the_headers() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { max_request_bytes: 4096, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/{key} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Not one byte of the body is sent: the answer must come from the headers alone.
    let (seen, closed) = read_until_closed(&mut stream, 5 * SECOND).await;
    assert!(seen.starts_with("HTTP/1.1 413"), "{seen:?}");
    assert!(seen.contains("-32007"), "{seen}");
    assert!(closed, "the connection is closed rather than reading 100 MB");
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_off() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { body_timeout: Duration::from_millis(500), ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("i1", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let key = gw.bind(&instance, "b1");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}).to_string();
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/{key} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // One byte every 200 ms: the whole body would take about 10 s.
    let mut sent = 0;
    for byte in body.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 1024];
        // EOF, a reset, or an error answer: the gateway gave up on the body.
        if tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await.is_ok() {
            break;
        }
    }
    assert!(sent < body.len(), "the gateway waited for a whole body sent at 5 bytes a second");
}

fn looping_batch(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "test_loop", "params": []})).collect())
}

/// The hostile tenant's plugin spins until its 50 ms budget ends, in batches that keep many
/// such calls in flight. The quiet tenant's calls (through a plugin of its own) are all
/// answered while the hostile batches are still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_plugin_loops_does_not_stall_a_quiet_tenant() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    // A long queue: the hostile calls wait for their turn rather than being refused, so the
    // batches stay busy for 4 × 50 × 50 ms / 8 = 1.25 s of plugin time.
    let share = Share { calls: 8, wait: 60 * SECOND };
    let hostile = gw
        .instance_with_share("hostile", &[anvil.http_url()], &[], &[json!({"mode": "hostile"})], 60 * SECOND, share)
        .await;
    let quiet = gw.instance("quiet", &[anvil.http_url()], &[], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let hostile_url = gw.url(&gw.bind(&hostile, "h"));
    let quiet_url = gw.url(&gw.bind(&quiet, "q"));

    let mut batches = Vec::new();
    for _ in 0..4 {
        let url = hostile_url.clone();
        batches.push(tokio::spawn(async move { support::post(&url, &looping_batch(50)).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        let answer = rpc(&quiet_url, "eth_chainId", json!([])).await;
        assert_eq!(answer["result"], "0x7a69", "{answer}");
    }
    let finished = batches.iter().filter(|b| b.is_finished()).count();
    assert_eq!(finished, 0, "the quiet tenant was answered only after hostile batches ended");
    for batch in batches {
        let (status, answers) = batch.await.unwrap();
        assert_eq!(status, 200);
        for answer in answers.as_array().unwrap() {
            assert_eq!(answer["error"]["data"]["reason"], "timeout", "each looping call ends at its budget: {answer}");
        }
    }
}

/// A tenant at its share of plugin calls gets -32005 naming the limit after the queue time; a
/// quiet tenant's calls all succeed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_share_of_plugin_calls_gets_32005_and_nobody_else_notices() {
    let anvil = Anvil::start(&[]);
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let share = Share { calls: 2, wait: Duration::from_millis(100) };
    let hog = gw
        .instance_with_share("hog", &[anvil.http_url()], &[], &[json!({"mode": "hostile"})], 60 * SECOND, share)
        .await;
    let quiet = gw.instance("quiet", &[anvil.http_url()], &[], &[json!({"mode": "pass"})], 10 * SECOND).await;
    let hog_url = gw.url(&gw.bind(&hog, "h"));
    let quiet_url = gw.url(&gw.bind(&quiet, "q"));

    let batch = tokio::spawn(async move { support::post(&hog_url, &looping_batch(10)).await });
    for _ in 0..10 {
        assert_eq!(rpc(&quiet_url, "eth_chainId", json!([])).await["result"], "0x7a69");
    }
    let (_, answers) = batch.await.unwrap();
    let answers = answers.as_array().unwrap().clone();
    let refused: Vec<&Value> = answers.iter().filter(|a| a["error"]["code"] == -32005).collect();
    assert!(!refused.is_empty(), "10 calls of 50 ms on a share of 2 with a 100 ms queue: {answers:?}");
    for answer in &refused {
        assert_eq!(answer["error"]["data"]["reason"], "instance_plugin_calls", "{answer}");
        assert_eq!(answer["error"]["data"]["limit"], 2, "{answer}");
    }
    assert!(
        answers.iter().all(|a| a["error"]["code"] == -32005 || a["error"]["data"]["reason"] == "timeout"),
        "the others ran to their budget: {answers:?}"
    );
}

// ---- The whole `ovsb serve` process: descriptors, children's environment, logs. ----

use support::broker::{PASSWORD, PLAN_SHARED, SECRET_KEY, test_config_toml_with};
use support::process::{Launch, Ovsb};

const PLAN_NODE: &str = "plan-node-env";
const PLAN_BROKEN: &str = "plan-broken";

/// The test configuration with a data directory, the admin listener on `admin`, and two more
/// plans: an anvil per instance with a declared environment, and one whose program is missing.
fn process_config(dir: &std::path::Path, node: &str, admin: u16) -> String {
    let anvil = support::anvil_binary();
    let extra = format!(
        r#"
[[services.plans]]
id = "{PLAN_NODE}"
name = "node-env"
description = "an anvil per instance, with an environment of its own"
maximum_polling_duration = 60
[services.plans.driver]
kind = "process"
command = ["{anvil}", "--host", "127.0.0.1", "--port", "{{port}}"]
ports = [32000, 32700]
restart_backoff_ms = [100, 1000]
env = {{ NODE_GREETING = "hello from the plan" }}

[[services.plans]]
id = "{PLAN_BROKEN}"
name = "broken"
description = "a program that does not exist"
maximum_polling_duration = 5
[services.plans.driver]
kind = "process"
command = ["/nonexistent/ovsb-test-node", "{{port}}"]
ports = [32701, 32799]
"#,
        anvil = anvil.display()
    );
    let mut config = test_config_toml_with(node, support::free_port(), &extra);
    // The third `127.0.0.1:0` is the admin listener (the first two: broker, gateway).
    let at = config.match_indices("listen = \"127.0.0.1:0\"").nth(2).map(|(i, _)| i).unwrap();
    config.replace_range(at..at + "listen = \"127.0.0.1:0\"".len(), &format!("listen = \"127.0.0.1:{admin}\""));
    format!("data_dir = \"{}\"\n{config}", dir.join("data").display())
}

async fn bind_shared(ovsb: &Ovsb, id: &str, parameters: Option<Value>) -> Value {
    ovsb.osb.ready_instance(id, PLAN_SHARED, parameters).await;
    let bound = ovsb.osb.bind(id, "b", PLAN_SHARED).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    bound.body["credentials"].clone()
}

/// Under a descriptor limit of 330, a WebSocket flood on one key gets 429 past the gateway's
/// budget, and the broker and admin listeners answer throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_flood_under_a_low_descriptor_limit_gets_429_and_the_broker_and_admin_stay_up() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = support::free_port();
    let config = process_config(dir.path(), &anvil.http_url(), admin);
    let ports = (support::free_port(), support::free_port());
    let launch = Launch { wrap: &["prlimit", "--nofile=330:330", "--"], ..Launch::default() };
    let ovsb = Ovsb::start_with(dir.path(), "low-fd", &config, ports, launch);
    let credentials = bind_shared(&ovsb, "ws-flood", None).await;
    let ws_uri = credentials["ws_uri"].as_str().unwrap().to_string();

    let (mut open, mut refused) = (Vec::new(), 0);
    for _ in 0..300 {
        match ws_status(&ws_uri).await {
            Ok(ws) => open.push(ws),
            Err(429) => refused += 1,
            Err(status) => panic!("a WebSocket handshake got HTTP {status}"),
        }
    }
    // (330 - 256 reserved) / 3 = 24 connections: the budget the gateway keeps to.
    assert!(open.len() <= 24, "{} WebSockets were accepted under a descriptor limit of 330", open.len());
    assert!(refused >= 276, "the rest get 429 ({refused})");
    let catalog = ovsb.osb.call(reqwest::Method::GET, "/v2/catalog", None).await;
    assert_eq!(catalog.status, 200, "the broker answers during the flood");
    let health = reqwest::get(format!("http://127.0.0.1:{admin}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "the admin listener answers during the flood");
    let (status, _) = support::post(
        credentials["uri"].as_str().unwrap(),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}),
    )
    .await;
    assert_eq!(status, 429, "the gateway itself is full, and says so");
    drop(open);
}

/// Under a descriptor limit of 330, three connections send batches of 1000 to one shared node
/// at once: the calls are answered (or refused with -32005 naming a limit), the node never sees
/// more sockets than the plan's `max_sockets_per_node`, the broker and admin listeners
/// answer, and the log grows by a bounded number of lines. ovsb used to open a socket per entry,
/// run out of descriptors, and write a warning per failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_1000_under_a_low_descriptor_limit_hold_few_node_sockets_and_the_broker_stays_up() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = support::free_port();
    // The shared plan (the first) caps its node at 8 sockets.
    let config = process_config(dir.path(), &anvil.http_url(), admin).replacen(
        r#"driver = { kind = "upstream", http = ["#,
        r#"driver = { kind = "upstream", max_sockets_per_node = 8, http = ["#,
        1,
    );
    assert!(config.contains("max_sockets_per_node = 8"));
    let ports = (support::free_port(), support::free_port());
    let launch = Launch { wrap: &["prlimit", "--nofile=330:330", "--"], ..Launch::default() };
    let ovsb = Ovsb::start_with(dir.path(), "fan-out", &config, ports, launch);
    let credentials = bind_shared(&ovsb, "fan-out", None).await;
    let uri = credentials["uri"].as_str().unwrap().to_string();
    let log_before = std::fs::read_to_string(dir.path().join("fan-out.log")).unwrap().lines().count();
    let baseline = sockets_of(anvil.pid());

    let batch = Value::Array(
        (0..1000).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []})).collect(),
    );
    let mut batches = Vec::new();
    for _ in 0..3 {
        let (uri, batch) = (uri.clone(), batch.clone());
        batches.push(tokio::spawn(async move { support::post(&uri, &batch).await }));
    }
    let mut peak = 0;
    let mut rounds = 0;
    while batches.iter().any(|b| !b.is_finished()) && rounds < 30_000 {
        peak = peak.max(sockets_of(anvil.pid()).saturating_sub(baseline));
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let catalog = ovsb.osb.call(reqwest::Method::GET, "/v2/catalog", None).await;
    assert_eq!(catalog.status, 200, "the broker answers");
    let health = reqwest::get(format!("http://127.0.0.1:{admin}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "the admin listener answers");
    let (mut answered, mut refused) = (0, 0);
    for batch in batches {
        let (status, answers) = batch.await.unwrap();
        assert_eq!(status, 200, "{answers}");
        for answer in answers.as_array().expect("a batch answer") {
            if answer["result"].is_string() {
                answered += 1;
            } else {
                assert_eq!(answer["error"]["code"], -32005, "{answer}");
                refused += 1;
            }
        }
    }
    assert_eq!(answered + refused, 3000);
    assert!(answered > 0, "calls are answered");
    assert!(peak <= 8, "the node saw {peak} sockets from ovsb under a cap of 8");
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69", "the node is in rotation");
    let log_after = std::fs::read_to_string(dir.path().join("fan-out.log")).unwrap().lines().count();
    assert!(log_after - log_before < 50, "the log grew by {} lines", log_after - log_before);
}

/// The series in `/metrics` text as a real exposition-format parser (Python's prometheus_client)
/// reads it: one `name<TAB>labels as JSON` line each; the parser's error if it refuses the text.
fn parse_metrics(text: &str) -> Result<Vec<(String, Value)>, String> {
    use std::io::Write as _;
    let script = "import json, sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  for family in text_string_to_metric_families(sys.stdin.read()):\n\
                  \x20   for s in family.samples:\n\
                  \x20       print(s.name + '\\t' + json.dumps(s.labels))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with prometheus_client, see tests/run-all.sh)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, labels)| (name.to_string(), serde_json::from_str(labels).unwrap()))
        .collect())
}

/// An instance id holding `"` and `\` (as a platform may choose) keeps `/metrics` parsable by a
/// real Prometheus parser, with the id as its label; a deprovisioned instance leaves no series.
/// The admin listener answers only a `Host` that names it: a DNS-rebinding page gets 421.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_parsable_whatever_the_instance_ids_and_forget_gone_instances() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let admin = support::free_port();
    let config = process_config(dir.path(), &anvil.http_url(), admin);
    let ovsb = Ovsb::start(dir.path(), "metrics", &config);
    // `rt"q\` in the path, percent-encoded.
    let odd = bind_shared(&ovsb, "rt%22q%5C", None).await;
    let plain = bind_shared(&ovsb, "plain", None).await;
    for credentials in [&odd, &plain] {
        assert_eq!(rpc(credentials["uri"].as_str().unwrap(), "eth_chainId", json!([])).await["result"], "0x7a69");
    }
    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    let scrape = || async { reqwest::get(&metrics_url).await.unwrap().text().await.unwrap() };
    let series = parse_metrics(&scrape().await).expect("a scrape Prometheus can parse");
    let of = |series: &[(String, Value)], id: &str| {
        series.iter().filter(|(name, labels)| name.starts_with("ovsb_rpc_calls") && labels["instance"] == id).count()
    };
    assert!(of(&series, "rt\"q\\") > 0, "the odd id is a label as it is: {series:?}");
    assert!(of(&series, "plain") > 0);

    assert_eq!(ovsb.osb.deprovision("rt%22q%5C", PLAN_SHARED).await.status, 202);
    assert_eq!(ovsb.osb.wait("rt%22q%5C").await["state"], "succeeded");
    let series = parse_metrics(&scrape().await).expect("parsable");
    assert!(series.iter().all(|(_, labels)| labels["instance"] != "rt\"q\\"), "no series of a gone instance");
    assert!(of(&series, "plain") > 0, "the others stay");

    let client = reqwest::Client::new();
    let rebound = |method: reqwest::Method, path: &str| {
        let request = client.request(method, format!("http://127.0.0.1:{admin}{path}"));
        request.header("host", format!("attacker.example:{admin}")).header("x-ovsb-reload", "1").send()
    };
    assert_eq!(rebound(reqwest::Method::GET, "/metrics").await.unwrap().status(), 421);
    assert_eq!(rebound(reqwest::Method::POST, "/reload").await.unwrap().status(), 421);
    let health = client.get(format!("http://localhost:{admin}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "localhost is the listener's own name");
}

fn environ(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    bytes.split(|b| *b == 0).filter(|v| !v.is_empty()).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

/// ovsb runs with its secrets in its environment; the node it starts sees only the plan's
/// declared `env` (and PATH, and the marker by which ovsb knows its own nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_processes_get_only_the_environment_their_plan_declares() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = support::NodeReaper(dir.path().to_path_buf());
    let config = process_config(dir.path(), &anvil.http_url(), support::free_port());
    let database_url = format!("sqlite://{}/data/ovsb.db", dir.path().display());
    let secrets = [
        ("OVSB_SECRET_KEY", SECRET_KEY),
        ("OVSB_BROKER_PASSWORD", PASSWORD),
        ("OVSB_DATABASE_URL", database_url.as_str()),
    ];
    let ports = (support::free_port(), support::free_port());
    let ovsb = Ovsb::start_with(dir.path(), "env", &config, ports, Launch { env: &secrets, ..Launch::default() });
    assert!(environ(ovsb.pid()).iter().any(|v| v.starts_with("OVSB_SECRET_KEY=")), "the test gives ovsb its secrets");

    ovsb.osb.ready_instance("node-1", PLAN_NODE, None).await;
    let nodes = support::nodes_under(dir.path());
    assert_eq!(nodes.len(), 1, "one node for the instance");
    let env = environ(nodes[0]);
    assert!(env.contains(&"NODE_GREETING=hello from the plan".to_string()), "{env:?}");
    let ours: Vec<&String> = env.iter().filter(|v| v.starts_with("OVSB_")).collect();
    assert!(ours.iter().all(|v| v.starts_with("OVSB_NODE=")), "only the node marker: {ours:?}");
    for (name, secret) in secrets {
        assert!(!env.iter().any(|v| v.contains(secret)), "{name}'s value reached the node");
    }
    let names: Vec<&str> = env.iter().filter_map(|v| v.split('=').next()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["GIT_CEILING_DIRECTORIES", "NODE_GREETING", "OVSB_NODE", "PATH"], "nothing else: {env:?}");
}

/// A method name with a newline and a forged log line, and ANSI escapes, reaches a plugin that
/// logs it: the log keeps one line per event, escaped. A failed provision is a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_escape_what_clients_and_plugins_put_in_them() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = support::NodeReaper(dir.path().to_path_buf());
    let config = process_config(dir.path(), &anvil.http_url(), support::free_port());
    let ports = (support::free_port(), support::free_port());
    let launch = Launch { level: "info,ovsb=debug", ..Launch::default() };
    let ovsb = Ovsb::start_with(dir.path(), "logs", &config, ports, launch);
    let chain = json!({"plugins": [{"name": "test", "config": {"mode": "log-method"}}]});
    let credentials = bind_shared(&ovsb, "logged", Some(chain)).await;
    let forged = "eth_chainId\n2026-12-01T00:00:00.000000Z  INFO ovsb: FORGED admin login\u{1b}[2J\u{9b}";
    let answer = rpc(credentials["uri"].as_str().unwrap(), forged, json!([])).await;
    assert!(answer["error"].is_object(), "anvil does not know the method: {answer}");

    assert_eq!(ovsb.osb.provision("broken-1", PLAN_BROKEN, None).await.status, 202);
    let failed = ovsb.osb.wait("broken-1").await;
    assert_eq!(failed["state"], "failed", "{failed}");

    let log = std::fs::read(dir.path().join("logs.log")).unwrap();
    assert!(!log.contains(&0x1b), "no raw escape byte in the log");
    let log = String::from_utf8_lossy(&log);
    assert!(log.lines().all(|line| !line.starts_with("2026-12-01T00:00:00")), "a forged line stands alone:\n{log}");
    let logged = log.lines().find(|l| l.contains("saw eth_chainId")).expect("the plugin's line is in the log");
    assert!(
        logged.contains(r"saw eth_chainId\n2026-12-01T00:00:00.000000Z  INFO ovsb: FORGED admin login\x1b[2J\u{9b}"),
        "{logged}"
    );
    assert!(logged.contains(r"method=eth_chainId\n2026"), "the call's span names the method, escaped: {logged}");
    let failure = log.lines().find(|l| l.contains("provisioning failed")).expect("the failure is logged");
    assert!(failure.contains(" WARN "), "a failed provision is a warning: {failure}");
}

// ---- Budgets taken as they are taken: answer bytes, node sockets, revoked keys' slots. ----

/// An `eth_call` whose answer is `bytes` zero bytes (hex: twice as many characters): a state
/// override gives the called address code that returns that much memory.
fn big_answer_call(id: usize, bytes: u32) -> Value {
    let to = "0x00000000000000000000000000000000000b16a5";
    let size = bytes.to_be_bytes();
    // PUSH3 size, PUSH1 0, RETURN.
    let code = format!("0x62{:02x}{:02x}{:02x}6000f3", size[1], size[2], size[3]);
    json!({"jsonrpc": "2.0", "id": id, "method": "eth_call",
           "params": [{"to": to, "data": "0x"}, "latest", {to: {"code": code}}]})
}

/// A batch of 40 answers of 200 KB each against a response limit of 1 MiB: refused with -32011
/// naming the limit, and the gateway never held more than the limit of answers (its peak of
/// answer bytes in flight), where it used to hold all 8 MB first. The node stays in rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answers_pass_the_response_limit_is_cut_short_holding_at_most_the_limit() {
    let anvil = Anvil::start(&[]);
    let limit = 1 << 20;
    let config = GatewayConfig { max_response_bytes: limit, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("big", &[anvil.http_url()], &[], &[], 30 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b"));

    let one = support::post(&url, &big_answer_call(1, 100_000)).await.1;
    assert_eq!(one["result"].as_str().map(str::len), Some(200_002), "one answer fits: {}", &one.to_string()[..200]);
    let batch = Value::Array((0..40).map(|i| big_answer_call(i, 100_000)).collect());
    let (status, answer) = support::post(&url, &batch).await;
    assert_eq!(status, 200);
    assert_eq!(answer["error"]["code"], -32011, "{}", &answer.to_string()[..answer.to_string().len().min(300)]);
    assert_eq!(answer["error"]["data"]["reason"], "response_bytes", "{answer}");
    assert_eq!(answer["error"]["data"]["limit"], limit, "{answer}");
    let peak = gw.budget.peak_answer_bytes();
    assert!(peak <= limit as usize, "the gateway held {peak} bytes of answers for a request limited to {limit}");
    assert_eq!(gw.budget.answer_bytes_in_flight(), 0, "everything was given back");

    // One answer over the limit alone: -32008, and the node is not blamed for it.
    // (Once: as a batch of one it would be the batch's -32011.)
    let (_, alone) = support::post(&support::once(&url), &big_answer_call(2, 600_000)).await;
    assert_eq!(alone["error"]["code"], -32008, "{alone}");
    assert_eq!(alone["error"]["data"]["reason"], "response_bytes", "{alone}");
    assert_eq!(rpc(&url, "eth_chainId", json!([])).await["result"], "0x7a69", "the node is still in rotation");
}

/// Answers held at once across requests have a budget of their own: a request that finds it
/// taken waits, then gets -32005 naming it, while small answers are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_flight_past_the_gateway_budget_get_32005_naming_it() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig {
        max_response_bytes: 1 << 20,
        answer_bytes_in_flight: 1 << 20,
        queue: Duration::from_millis(50),
        ..GatewayConfig::default()
    };
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("big", &[anvil.http_url()], &[], &[], 30 * SECOND).await;
    let url = gw.url(&gw.bind(&instance, "b"));
    // Eight requests of 400 KB answers at once against 1 MiB in flight: some wait, some may be
    // refused; none holds more than the budget, and every answer is whole or a -32005.
    let mut requests = Vec::new();
    for i in 0..8 {
        let url = url.clone();
        requests.push(tokio::spawn(async move { support::post(&url, &big_answer_call(i, 200_000)).await.1 }));
    }
    for request in requests {
        let answer = request.await.unwrap();
        if answer["error"].is_object() {
            assert_eq!(answer["error"]["code"], -32005, "{answer}");
            assert_eq!(answer["error"]["data"]["reason"], "answer_bytes_in_flight", "{answer}");
        } else {
            assert_eq!(answer["result"].as_str().map(str::len), Some(400_002));
        }
    }
    assert!(gw.budget.peak_answer_bytes() <= 1 << 20, "peak {}", gw.budget.peak_answer_bytes());
    assert_eq!(rpc(&url, "eth_chainId", json!([])).await["result"], "0x7a69");
}

/// Sockets of process `pid` (from its descriptor table).
fn sockets_of(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:")))
        .count()
}

/// Four batches of 250 at once, with a cap of 4 calls per node: every call is answered, the node
/// never sees more than the cap of sockets in flight plus as many idle, and another tenant on
/// the same node is served meanwhile. Without the cap, the batches opened dozens of sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_past_the_node_socket_cap_queue_and_the_node_sees_at_most_the_cap() {
    let anvil = Anvil::start(&[]);
    let mut gw = TestGateway::start(GatewayConfig::default()).await;
    gw.node_sockets = 4;
    let hog = gw.instance("hog", &[anvil.http_url()], &[], &[], 30 * SECOND).await;
    let quiet = gw.instance("quiet", &[anvil.http_url()], &[], &[], 30 * SECOND).await;
    let (hog_url, quiet_url) = (gw.url(&gw.bind(&hog, "h")), gw.url(&gw.bind(&quiet, "q")));
    let baseline = sockets_of(anvil.pid());

    let batch = Value::Array(
        (0..250).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []})).collect(),
    );
    let mut batches = Vec::new();
    for _ in 0..4 {
        let (url, batch) = (hog_url.clone(), batch.clone());
        batches.push(tokio::spawn(async move { support::post(&url, &batch).await }));
    }
    let mut peak = 0;
    let mut rounds = 0;
    while batches.iter().any(|b| !b.is_finished()) && rounds < 10_000 {
        peak = peak.max(sockets_of(anvil.pid()).saturating_sub(baseline));
        rounds += 1;
        if rounds % 20 == 0 {
            assert_eq!(rpc(&quiet_url, "eth_chainId", json!([])).await["result"], "0x7a69");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for batch in batches {
        let (status, answers) = batch.await.unwrap();
        assert_eq!(status, 200);
        let answers = answers.as_array().expect("a batch answer").clone();
        assert_eq!(answers.len(), 250);
        assert!(answers.iter().all(|a| a["result"].is_string()), "every entry is answered");
    }
    // Each pool (hog, quiet) keeps at most 4 calls in flight and 4 idle sockets to the node.
    assert!(peak <= 16, "the node saw {peak} sockets from two pools capped at 4 calls each");
}

/// Reads one HTTP response (headers and a Content-Length body) from a keep-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(5 * SECOND, stream.read(&mut buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before answering: {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Keep-alive connections that carried a key are closed when the key is revoked (or rotated
/// and then unbound), so their slots come back: with every slot held by them, another tenant's
/// key is served once they are revoked. They used to stay, keyed, answering 401 forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_release_the_connection_slots_they_held() {
    let anvil = Anvil::start(&[]);
    let config = GatewayConfig { max_connections: 8, ..GatewayConfig::default() };
    let gw = TestGateway::start(config).await;
    let tenant = gw.instance("tenant", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let other = gw.instance("other", &[anvil.http_url()], &[], &[], 10 * SECOND).await;
    let (k0, k1) = (gw.bind(&tenant, "k0"), gw.bind(&tenant, "k1"));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}).to_string();
    let request = |key: &str| {
        format!(
            "POST /v1/{key} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut held = Vec::new();
    for (i, key) in [&k0, &k0, &k0, &k0, &k1, &k1, &k1, &k1].into_iter().enumerate() {
        let mut stream = connect_from([127, 0, 3, 1 + i as u8], gw.addr).await;
        stream.write_all(request(key).as_bytes()).await.unwrap();
        assert!(read_response(&mut stream).await.contains("0x7a69"));
        held.push(stream);
    }
    let other_key = gw.bind(&other, "o");
    let (status, _) =
        support::post(&gw.url(&other_key), &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})).await;
    assert_eq!(status, 429, "every slot is held by a keyed connection");

    gw.revoke(&k0);
    gw.revoke(&k1);
    for stream in &mut held {
        let (_, closed) = read_until_closed(stream, 5 * SECOND).await;
        assert!(closed, "a connection of a revoked key is closed");
    }
    let mut served = false;
    for _ in 0..50 {
        if rpc(&gw.url(&other_key), "eth_chainId", json!([])).await["result"] == "0x7a69" {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the revoked keys' slots came back");
}

/// A tenant whose calls keep the node busy (answers of 6 MB each, a state override away) is
/// paced: once its first calls come back slow, it runs one call at a time, and the rest of its
/// batch waits its turn, past the queue time with -32005 `node_time`. A quiet tenant of the same
/// node and a tenant making quick calls are served in full meanwhile. Without the pace, the
/// whole batch ran 16 entries at a time at the node and nothing was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_calls_keep_the_node_busy_is_paced_and_the_others_are_not() {
    let anvil = Anvil::start(&[]);
    // Room for every answer: the pace, not the response limit, is what this test meets.
    let config =
        GatewayConfig { max_response_bytes: 1 << 30, answer_bytes_in_flight: 1 << 30, ..GatewayConfig::default() };
    let mut gw = TestGateway::start(config).await;
    gw.shares.answer_bytes_in_flight = 1 << 30;
    // The hog's plan paces it, at a tenth of the node's time once its calls are slow: the
    // entries of its batch that wait past the queue time (1 s) are refused, whatever the speed
    // of the machine. The quiet tenant and the busy one are not paced (a plan without it), so a
    // hiccup of a loaded machine cannot make them wait: what they show is that the hog's pace
    // leaves them the node.
    gw.shares.pace = PaceSettings { slow: Duration::from_millis(20), duty_percent: 10, ..PaceSettings::default() };
    let hog = gw.instance("hog", &[anvil.http_url()], &[], &[], 30 * SECOND).await;
    gw.shares.pace = PaceSettings::default();
    let quiet = gw.instance("quiet", &[anvil.http_url()], &[], &[], 30 * SECOND).await;
    let busy = gw.instance("busy", &[anvil.http_url()], &[], &[], 30 * SECOND).await;
    let (hog_url, quiet_url, busy_url) =
        (gw.url(&gw.bind(&hog, "h")), gw.url(&gw.bind(&quiet, "q")), gw.url(&gw.bind(&busy, "b")));
    // The node's round trip, from quick calls.
    for _ in 0..5 {
        assert_eq!(rpc(&quiet_url, "eth_chainId", json!([])).await["result"], "0x7a69");
    }

    // 6 MB answers: tens of milliseconds of the node's time each.
    let batch = Value::Array((0..40).map(|i| big_answer_call(i, 3_000_000)).collect());
    let (status, answers) = support::post(&hog_url, &batch).await;
    assert_eq!(status, 200);
    let answers = answers.as_array().expect("a batch answer").clone();
    let answered = answers.iter().filter(|a| a["result"].is_string()).count();
    let paced: Vec<_> = answers.iter().filter(|a| a["error"]["data"]["reason"] == "node_time").collect();
    assert!(answered >= 1, "the first calls are answered");
    assert!(!paced.is_empty(), "the heavy tenant is paced: {answered} of 40 answered, none refused");
    assert!(paced.iter().all(|a| a["error"]["code"] == -32005), "{paced:?}");
    assert_eq!(answered + paced.len(), 40, "every entry is answered or paced");
    assert_eq!(hog.budget.node_calls_limit(), 1, "the hog runs one call at a time");

    // The quiet tenant and a tenant of quick calls are served in full, and never paced.
    assert_eq!(rpc(&quiet_url, "eth_chainId", json!([])).await["result"], "0x7a69");
    let quick = Value::Array(
        (0..200).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []})).collect(),
    );
    let (_, quick) = support::post(&busy_url, &quick).await;
    let quick = quick.as_array().expect("a batch answer").clone();
    let refused: Vec<_> = quick.iter().filter(|a| !a["result"].is_string()).collect();
    assert!(refused.is_empty(), "every quick call is answered: {:?}", refused.first());
}
