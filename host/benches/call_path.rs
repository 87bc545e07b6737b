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
//! and the bytes they asked for, per call, counted on the calling thread (the node's thread is not counted; the gateway's
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
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Counts one allocation (or reallocation) of `bytes` bytes on this thread.
fn count(bytes: usize) {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    let _ = BYTES.try_with(|n| n.set(n.get() + bytes as u64));
}

/// Allocations and bytes allocated on this thread so far.
fn counted() -> (u64, u64) {
    (ALLOCATIONS.with(Cell::get), BYTES.with(Cell::get))
}

// SAFETY: every call is passed on to mimalloc unchanged; counting touches a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
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

/// `CALL_PATH_LOOP=<case>:<calls>` (case 0, 1 or 2, in the order of [`CASES`]): after the
/// setup and a warm-up, make that many calls of the case and exit, without criterion. For an
/// instruction count that load on the machine does not move (`valgrind --tool=callgrind`, see
/// the README's "The data plane"): the calls are made in [`measured_calls`], so
/// `--toggle-collect` can count only them. The runtime then keeps compiled plugins in a cache
/// directory (the second run does not compile) and has few slots (valgrind cannot reserve the
/// default runtime's address space).
fn loop_mode() -> Option<(usize, u64)> {
    let spec = std::env::var("CALL_PATH_LOOP").ok()?;
    let (case, calls) = spec.split_once(':').expect("CALL_PATH_LOOP=<case>:<calls>");
    Some((case.parse().expect("a case number"), calls.parse().expect("a number of calls")))
}

/// The cases, by name.
const CASES: [&str; 3] = [
    "empty chain, eth_blockNumber (node)",
    "method-filter + rate-limit + cache, eth_blockNumber (node)",
    "method-filter + rate-limit + cache, eth_chainId (cache hit)",
];

/// Makes `calls` calls; its own function, for `valgrind --toggle-collect=*measured_calls*`.
#[inline(never)]
fn measured_calls(calls: u64, call: &dyn Fn() -> String) {
    for _ in 0..calls {
        std::hint::black_box(call());
    }
}

fn bench(c: &mut Criterion) {
    let looping = loop_mode();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let node = static_node();
    let routes = Arc::new(Routes::default());
    let runtime_config = match looping {
        Some(_) => RuntimeConfig {
            cache_dir: Some(std::env::temp_dir().join("ovsb-call-path-bench-cache")),
            max_instances: 8,
            ..RuntimeConfig::default()
        },
        None => RuntimeConfig::default(),
    };
    let runtime = PluginRuntime::new(runtime_config).unwrap();
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
    let cases: [(&str, &str, &[u8]); 3] =
        [(CASES[0], &empty, block_number), (CASES[1], &three, block_number), (CASES[2], &three, chain_id)];
    if let Some((case, calls)) = looping {
        let (name, key, body) = cases[case];
        let call = || rt.block_on(gateway.call(key, body)).expect("an answer");
        for _ in 0..200 {
            assert!(call().contains(r#""result":"0x7a69""#), "{name}: {}", call());
        }
        let before = counted();
        measured_calls(calls, &call);
        let after = counted();
        println!("call_path/{name}: {calls} calls, {} allocations, {} bytes", after.0 - before.0, after.1 - before.1);
        std::process::exit(0);
    }
    for (name, key, body) in cases {
        let call = || rt.block_on(gateway.call(key, body)).expect("an answer");
        for _ in 0..200 {
            assert!(call().contains(r#""result":"0x7a69""#), "{name}: {}", call());
        }
        const CALLS: u64 = 2000;
        let before = counted();
        measured_calls(CALLS, &call);
        let after = counted();
        let per_call = |n: u64| n as f64 / CALLS as f64;
        println!(
            "call_path/{name}: {:.1} allocations, {:.0} bytes allocated per call",
            per_call(after.0 - before.0),
            per_call(after.1 - before.1)
        );
    }
    let mut group = c.benchmark_group("call_path");
    for (name, key, body) in cases {
        group.bench_function(name, |b| b.iter(|| rt.block_on(gateway.call(key, body)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
