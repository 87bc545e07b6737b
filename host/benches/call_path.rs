//! The in-process cost of one JSON-RPC call through the gateway (issue #30), and the heap
//! allocations it makes: the lean path's work for a single call over HTTP ([`InProcess`]: parse,
//! route and allowlist, the request's budget, plan rules, the chain under its deadline, metrics,
//! the answer), without the sockets, against a node on another thread that answers at once.
//!
//!   cargo bench -p ovsb --bench call_path
//!
//! Cases: the empty chain (`eth_blockNumber`, to the node); method-filter + rate-limit + cache,
//! the first-party chain, on `eth_blockNumber` (through all three to the node) and on
//! `eth_chainId` (answered from the cache). Before the timings, each case prints its allocations
//! per call, counted on the calling thread (the node's thread is not counted; the gateway's
//! client to it runs on the calling thread and is). A change that costs more than 10% here is
//! explained in its commit (README, "The data plane").
#![allow(missing_docs)]
// criterion_group! generates undocumented items
// The counting allocator: a `GlobalAlloc` is unsafe to implement; it only passes calls on.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ovsb::budget::{InstanceBudget, InstanceShares};
use ovsb::gateway::{self, GatewayConfig, InProcess, InstanceRoute, Route, Routes, UpstreamPool, UpstreamSettings};
use ovsb::plugins::{Chain, ChainEntry, KvLimits, KvStore, PluginLimits, PluginRuntime, RuntimeConfig};

/// mimalloc (what the binary uses), counting the allocations of each thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed on to mimalloc unchanged; counting touches a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A node on its own thread that answers every request at once with a fixed result.
fn static_node() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        let body = r#"{"jsonrpc":"2.0","id":1,"result":"0x7a69"}"#;
                        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                        response
                            .headers_mut()
                            .insert("content-type", http::HeaderValue::from_static("application/json"));
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let io = hyper_util::rt::TokioIo::new(socket);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
    });
    url
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let node = static_node();
    let routes = Arc::new(Routes::default());
    let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
    let kv = Arc::new(KvStore::new(KvLimits::default()));
    let plugin = |path: &str, config: &str, instance: &str| {
        let plugin = runtime.load_file("p", path.as_ref()).unwrap();
        let pool = rt.block_on(runtime.pool(&plugin, config, PluginLimits::default(), instance, kv.clone())).unwrap();
        ChainEntry { pool, fail_open: false }
    };
    let bind = |instance: &str, chain: Chain| {
        let upstream = UpstreamPool::new(UpstreamSettings {
            http: vec![node.parse().unwrap()],
            ws: vec![],
            deadline: Duration::from_secs(10),
            max_response_bytes: 16 << 20,
            max_sockets_per_node: ovsb::upstream::DEFAULT_SOCKETS_PER_NODE,
        });
        let instance = Arc::new(InstanceRoute {
            instance_id: instance.into(),
            plan: "shared".into(),
            chain,
            policy: None,
            upstream: Arc::new(upstream),
            validator: None,
            budget: InstanceBudget::new(InstanceShares::default()),
            usage: ovsb::usage::InstanceUsage::unmetered("shared"),
        });
        let key = gateway::new_key();
        routes.update(|table| {
            let route = Route {
                instance: instance.clone(),
                binding_id: "b".into(),
                expires_ms: None,
                meter: ovsb::usage::BindingMeter::detached(&instance.instance_id, "b"),
            };
            table.insert(gateway::key_digest(&key), route);
        });
        key
    };
    let empty = bind("0b9d3bc4-2d5e-4d56-9d7c-6f1f4d1a2b3c", Chain::default());
    let three_id = "5f0c2f63-1c7e-4a8e-9f61-3c1d2e4f5a6b";
    let three = bind(
        three_id,
        Chain::new(vec![
            plugin(ovsb_test_artifacts::METHOD_FILTER_PLUGIN, r#"{"deny":["debug_*","eth_send*"]}"#, three_id),
            plugin(
                ovsb_test_artifacts::RATE_LIMIT_PLUGIN,
                r#"{"requests_per_second":1000000,"burst":1000000}"#,
                three_id,
            ),
            plugin(ovsb_test_artifacts::CACHE_PLUGIN, "null", three_id),
        ]),
    );
    let gateway = InProcess::new(routes.clone(), &GatewayConfig::default());
    let block_number = br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#;
    let chain_id = br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let cases: [(&str, &str, &[u8]); 3] = [
        ("empty chain, eth_blockNumber (node)", &empty, block_number),
        ("method-filter + rate-limit + cache, eth_blockNumber (node)", &three, block_number),
        ("method-filter + rate-limit + cache, eth_chainId (cache hit)", &three, chain_id),
    ];
    for (name, key, body) in cases {
        let call = || rt.block_on(gateway.call(key, body)).expect("an answer");
        for _ in 0..200 {
            assert!(call().contains(r#""result":"0x7a69""#), "{name}: {}", call());
        }
        const CALLS: u64 = 2000;
        let before = ALLOCATIONS.with(Cell::get);
        for _ in 0..CALLS {
            std::hint::black_box(call());
        }
        let per_call = (ALLOCATIONS.with(Cell::get) - before) as f64 / CALLS as f64;
        println!("call_path/{name}: {per_call:.1} allocations per call");
    }
    let mut group = c.benchmark_group("call_path");
    for (name, key, body) in cases {
        group.bench_function(name, |b| b.iter(|| rt.block_on(gateway.call(key, body)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
