//! Shared test helpers: a real anvil node, a gateway on an OS-assigned port, JSON-RPC over HTTP,
//! and (in `broker`) a whole ovsb over SQLite or PostgreSQL with an OSB client.
#![allow(dead_code)]

pub mod broker;
pub mod cut_proxy;
pub mod ethsig;
pub mod fake_kube;
pub mod lodestar;
pub mod process;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ovsb::budget::{GatewayBudget, InstanceBudget, InstanceShares};
use ovsb::gateway::{self, GatewayConfig, InstanceRoute, Route, Routes, UpstreamPool, UpstreamSettings};
use ovsb::plugins::{Chain, ChainEntry, KvLimits, KvStore, PluginLimits, PluginRuntime, RuntimeConfig, Share};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The anvil binary: `OVSB_ANVIL`, else the one `tests/run-all.sh` installs with npm.
pub fn anvil_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OVSB_ANVIL") {
        return path.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(path.exists(), "anvil is not installed at {}: run tests/run-all.sh (npm ci in tests/node)", path.display());
    path
}

/// A real anvil process on an OS-assigned loopback port, killed (by PID) on drop.
pub struct Anvil {
    child: Child,
    pub port: u16,
}

impl Anvil {
    /// Starts anvil with extra arguments and waits until it listens.
    pub fn start(args: &[&str]) -> Anvil {
        Anvil::start_on(0, args)
    }

    /// Starts anvil on `port` (0: the OS chooses) and waits until it listens.
    pub fn start_on(port: u16, args: &[&str]) -> Anvil {
        let port = port.to_string();
        let mut child = Command::new(anvil_binary())
            .args(["--host", "127.0.0.1", "--port", &port])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start anvil");
        let stdout = child.stdout.take().expect("anvil stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("Listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("anvil did not start listening");
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("anvil's port");
        Anvil { child, port }
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway on an OS-assigned loopback port, stopped on drop.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub routes: Arc<Routes>,
    pub runtime: PluginRuntime,
    /// What the gateway's requests hold (its figures: answer bytes in flight, their peak).
    pub budget: Arc<GatewayBudget>,
    /// Calls in flight to each node, for the instances made from now on.
    pub node_sockets: usize,
    /// The shares of the instances made from now on.
    pub shares: InstanceShares,
    shutdown: CancellationToken,
}

impl TestGateway {
    pub async fn start(config: GatewayConfig) -> TestGateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(Routes::default());
        let shutdown = CancellationToken::new();
        let budget = GatewayBudget::new(config.budget_limits(4096));
        tokio::spawn(gateway::serve_with_budget(listener, config, routes.clone(), budget.clone(), shutdown.clone()));
        TestGateway {
            addr,
            routes,
            runtime: PluginRuntime::new(RuntimeConfig::default()).unwrap(),
            budget,
            node_sockets: ovsb::upstream::DEFAULT_SOCKETS_PER_NODE,
            shares: InstanceShares::default(),
            shutdown,
        }
    }

    /// An instance over these upstreams with these test-plugin configs as its chain.
    pub async fn instance(
        &self,
        id: &str,
        http: &[String],
        ws: &[String],
        chain: &[Value],
        deadline: Duration,
    ) -> Arc<InstanceRoute> {
        self.instance_with_share(id, http, ws, chain, deadline, Share::default()).await
    }

    /// [`instance`](Self::instance) with this share of the plugin runtime.
    pub async fn instance_with_share(
        &self,
        id: &str,
        http: &[String],
        ws: &[String],
        chain: &[Value],
        deadline: Duration,
        share: Share,
    ) -> Arc<InstanceRoute> {
        let plugin = self.runtime.load_file("test", ovsb_test_artifacts::TEST_PLUGIN.as_ref()).unwrap();
        let kv = Arc::new(KvStore::new(KvLimits::default()));
        let mut entries = Vec::new();
        for config in chain {
            let pool =
                self.runtime.pool(&plugin, &config.to_string(), PluginLimits::default(), id, kv.clone()).await.unwrap();
            entries.push(ChainEntry { pool, fail_open: false });
        }
        let upstream = UpstreamPool::new(UpstreamSettings {
            http: http.iter().map(|u| u.parse().unwrap()).collect(),
            ws: ws.to_vec(),
            deadline,
            max_response_bytes: 16 << 20,
            max_sockets_per_node: self.node_sockets,
        });
        Arc::new(InstanceRoute {
            instance_id: id.into(),
            plan: "devnet".into(),
            chain: Chain::with_share(entries, share),
            policy: None,
            upstream: Arc::new(upstream),
            validator: None,
            budget: InstanceBudget::new(self.shares),
            usage: ovsb::usage::InstanceUsage::unmetered("devnet"),
        })
    }

    /// A new binding key for an instance, live at once.
    pub fn bind(&self, instance: &Arc<InstanceRoute>, binding_id: &str) -> String {
        let key = gateway::new_key();
        let digest = gateway::key_digest(&key);
        let route_instance = instance.clone();
        let binding: Arc<str> = binding_id.into();
        self.routes.update(|table| {
            table.insert(
                digest,
                Route {
                    instance: route_instance.clone(),
                    binding_id: binding.clone(),
                    expires_ms: None,
                    meter: ovsb::usage::BindingMeter::detached(&route_instance.instance_id, binding_id),
                },
            );
        });
        key
    }

    pub fn revoke(&self, key: &str) {
        let digest = gateway::key_digest(key);
        self.routes.update(|table| {
            table.remove(&digest);
        });
    }

    /// The endpoint of `key`, marked for [`both`]: every side-effect-free single call a test
    /// sends there is also sent as a batch of one, and the answers compared.
    pub fn url(&self, key: &str) -> String {
        both(&format!("http://{}/v1/{key}", self.addr))
    }

    /// The endpoint of `key`, each call sent once (for tests that count calls: rate limits,
    /// metrics).
    pub fn url_once(&self, key: &str) -> String {
        format!("http://{}/v1/{key}", self.addr)
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!("ws://{}/v1/{key}", self.addr)
    }

    /// Shuts the gateway down (as `ovsb serve` does on SIGTERM).
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// POSTs a JSON body; returns the status and the JSON answer (Null if none).
pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    post_raw(url, body.to_string(), None).await
}

/// `url` marked so that [`post_raw`] (and so [`post`] and [`rpc`]) sends each single call with an
/// id and a side-effect-free method twice: as it is, and as a batch of one, and asserts that both
/// get the same answer (HTTP status, and the call's answer alone or as the batch's one entry).
/// A single call is answered by the gateway's lean path, a batch by jsonrpsee: tests that use
/// such a URL check both paths. (A URL fragment: never sent.)
pub fn both(url: &str) -> String {
    format!("{}{BOTH}", url.trim_end_matches(BOTH))
}

const BOTH: &str = "#both";

/// `url` without the mark of [`both`]: each call sent once.
pub fn once(url: &str) -> String {
    url.trim_end_matches(BOTH).to_string()
}

/// Methods that change the node or a plugin's state, or whose answer changes by itself (a receipt
/// that appears, a filter's changes since the last poll): never sent twice.
fn has_effects(method: &str) -> bool {
    const EFFECTS: [&str; 14] = [
        "eth_getFilterChanges",
        "eth_getTransactionReceipt",
        "eth_send",
        "eth_sign",
        "evm_",
        "anvil_",
        "hardhat_",
        "miner_",
        "personal_",
        "debug_",
        "eth_subscribe",
        "eth_unsubscribe",
        "eth_newFilter",
        "eth_uninstallFilter",
    ];
    EFFECTS.iter().any(|prefix| method.starts_with(prefix))
}

pub async fn post_raw(url: &str, body: String, bearer: Option<&str>) -> (u16, Value) {
    let Some(url) = url.strip_suffix(BOTH) else { return post_once(url, body, bearer).await };
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mirrored = parsed.get("id").is_some()
        && parsed.get("method").and_then(Value::as_str).is_some_and(|method| !has_effects(method));
    let single = post_once(url, body.clone(), bearer).await;
    if mirrored {
        let (status, batch) = post_once(url, format!("[{body}]"), bearer).await;
        let entry = match &batch {
            Value::Array(entries) if entries.len() == 1 && status == 200 => entries[0].clone(),
            other => other.clone(),
        };
        assert_eq!(
            (single.0, &single.1),
            (status, &entry),
            "a single call and the same call in a batch of one: {body}"
        );
    }
    single
}

/// POSTs a JSON body once, whatever the URL's mark.
pub async fn post_once(url: &str, body: String, bearer: Option<&str>) -> (u16, Value) {
    let url = url.strip_suffix(BOTH).unwrap_or(url);
    let client = reqwest::Client::new();
    let mut request = client.post(url).header("content-type", "application/json").body(body);
    if let Some(key) = bearer {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One JSON-RPC call; returns the whole response object.
pub async fn rpc(url: &str, method: &str, params: Value) -> Value {
    post(url, &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})).await.1
}

/// anvil's first unlocked account.
pub const ANVIL_ACCOUNT_0: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

/// A contract whose fallback emits `n` events (`n`: the first calldata word) in one transaction:
/// `LOG1(topic 0x2a, data = i)` for i in 0..n. Hand-assembled; the init code returns the 32
/// bytes of runtime code after it.
pub const EMITTER: &str = "0x602080600b6000396000f360003560005b81811015601e5780600052602a60206000a16001016005565b00";

/// Deploys [`EMITTER`] on `node` (anvil's unlocked account 0); its address.
pub async fn deploy_emitter(node: &str) -> String {
    let hash =
        rpc(node, "eth_sendTransaction", json!([{"from": ANVIL_ACCOUNT_0, "data": EMITTER}])).await["result"].clone();
    let receipt = receipt(node, &hash).await;
    receipt["contractAddress"].as_str().expect("a deployed contract").to_string()
}

/// Has the emitter at `contract` emit `n` events in one transaction; its receipt.
pub async fn emit(node: &str, contract: &str, n: u64) -> Value {
    let tx = json!([{"from": ANVIL_ACCOUNT_0, "to": contract, "data": format!("0x{n:064x}"), "gas": format!("0x{:x}", 100_000 + n * 1_200)}]);
    let hash = rpc(node, "eth_sendTransaction", tx).await["result"].clone();
    let receipt = receipt(node, &hash).await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    assert_eq!(receipt["logs"].as_array().map(Vec::len), Some(n as usize));
    receipt
}

pub async fn receipt(node: &str, hash: &Value) -> Value {
    for _ in 0..100 {
        let answer = rpc(node, "eth_getTransactionReceipt", json!([hash])).await;
        if !answer["result"].is_null() {
            return answer["result"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no receipt for {hash}");
}

/// A loopback port that was free a moment ago (for processes that must be told their port).
/// Taken from 21000-29999: outside Linux's ephemeral range (32768-60999), where the OS picks the
/// ports of outgoing connections and of `:0` listeners, which would otherwise race with a port a
/// test holds for later; and never twice in one test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 21000 + (seed.wrapping_add(n) % 9000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Node processes (marked `OVSB_NODE`) whose working directory is under `dir`, by pid.
pub fn nodes_under(dir: &std::path::Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if !environ.split(|b| *b == 0).any(|v| v.starts_with(b"OVSB_NODE=")) {
            continue;
        }
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if !zombie && std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// Kills (SIGKILL) every node process under `dir`: nodes outlive ovsb by design, tests clean up.
pub fn kill_nodes_under(dir: &std::path::Path) {
    for pid in nodes_under(dir) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// Kills the node processes under a directory when dropped, also when a test panics.
pub struct NodeReaper(pub std::path::PathBuf);

impl Drop for NodeReaper {
    fn drop(&mut self) {
        kill_nodes_under(&self.0);
    }
}

/// A request the stand-in node got: the head (request line and headers) and the body.
pub struct StandInRequest {
    pub head: String,
    pub body: String,
}

/// A stand-in for a node, for what no real node shows or does on demand (the headers it got, a
/// slow answer): an HTTP/1.1 keep-alive server on a loopback port that hands each request to
/// `answer` and sends back the JSON-RPC `result` it returns (JSON text). Returns its URL.
pub async fn stand_in_node<F, Fut>(answer: F) -> String
where
    F: Fn(StandInRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    let Some(end) = text.find("\r\n\r\n") else { continue };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    let request = StandInRequest {
                        head: text[..end].to_string(),
                        body: text[end + 4..end + 4 + length].to_string(),
                    };
                    buffer.drain(..end + 4 + length);
                    let result = answer(request).await;
                    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}
