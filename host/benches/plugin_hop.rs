//! Cost of one plugin hop (`on-call` + `on-result` of one plugin) on an `eth_call`-sized
//! request, on a warm pool and with a fresh copy per call, against an upstream that answers at
//! once. Run: `cargo bench -p ovsb --bench plugin_hop`; the hop cost is the difference between
//! a one-plugin chain and the empty chain. `plugin_hop/cold_and_warm` compares a call served by
//! a warm idle copy with one whose copy was evicted (the instance had been idle).
//! `plugin_hop/allowlist` is what a restricted binding's checks add to a call (issue #28).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ovsb::plugins::{
    Call, CallContext, Chain, ChainEntry, Context, Isolation, KvLimits, KvStore, Outcome, PluginLimits, PluginRuntime,
    RuntimeConfig, Upstream,
};

/// The answer of a `balanceOf` call: 32 bytes of hex.
const RESULT: &str = "\"0x00000000000000000000000000000000000000000000000000000000000f4240\"";
const PARAMS: &str = r#"[{"to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x70a08231000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266"},"latest"]"#;

struct Immediate;

impl Upstream for Immediate {
    fn call<'a>(&'a self, _call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async { Ok(RESULT.to_string()) })
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
    let plugin = runtime.load_file("test", ovsb_test_artifacts::TEST_PLUGIN.as_ref()).unwrap();
    let kv = Arc::new(KvStore::new(KvLimits::default()));
    let chain = |config: &str, isolation: Isolation| {
        let limits = PluginLimits { isolation, ..PluginLimits::default() };
        let pool = rt.block_on(runtime.pool(&plugin, config, limits, "bench", kv.clone())).unwrap();
        Chain::new(vec![ChainEntry { pool, fail_open: false }])
    };
    let upstream: Arc<dyn Upstream> = Arc::new(Immediate);
    let ctx = CallContext::from(Context {
        instance_id: "0b9d3bc4-2d5e-4d56-9d7c-6f1f4d1a2b3c".into(),
        binding_id: Some("5f0c2f63-1c7e-4a8e-9f61-3c1d2e4f5a6b".into()),
        plan: "devnet".into(),
        request_id: "01JD8ZQ4M6X2K9V7T3N5R1P0AB".into(),
    });
    let call = Call { method: "eth_call".into(), params: Some(PARAMS.into()) };

    let cases = [
        ("empty chain", Chain::default()),
        ("1 hop, pass-through, pooled", chain(r#"{"mode":"pass"}"#, Isolation::Pooled)),
        ("1 hop, parses and rewrites params, pooled", chain(r#"{"mode":"tracer","tag":"a"}"#, Isolation::Pooled)),
        ("1 hop, pass-through, fresh copy per call", chain(r#"{"mode":"pass"}"#, Isolation::PerCall)),
        ("1 hop, on-call only (filter-style)", chain(r#"{"mode":"pass","hooks":["on-call"]}"#, Isolation::Pooled)),
        ("1 hop, SDK defaults (declined after first call)", {
            let defaults = runtime.load_file("pass", ovsb_test_artifacts::PASS_PLUGIN.as_ref()).unwrap();
            let pool =
                rt.block_on(runtime.pool(&defaults, "null", PluginLimits::default(), "bench", kv.clone())).unwrap();
            Chain::new(vec![ChainEntry { pool, fail_open: false }])
        }),
    ];
    let mut group = c.benchmark_group("plugin_hop/eth_call");
    for (name, chain) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| rt.block_on(chain.run(&ctx, call.clone(), &upstream)).unwrap());
        });
    }
    // The parts of a hop: one export call each.
    let pass = &cases[1].1.entries()[0].pool;
    group.bench_function("on_call alone, pass-through", |b| {
        b.iter(|| rt.block_on(pass.on_call(&ctx, &call, &upstream)).unwrap());
    });
    let outcome: Outcome = Ok(RESULT.to_string());
    group.bench_function("on_result alone, pass-through", |b| {
        b.iter(|| rt.block_on(pass.on_result(&ctx, &call, &outcome, &upstream)).unwrap());
    });
    group.finish();

    // Cold and warm: the same one-plugin chain when its instance holds a warm idle copy, and
    // when the copy was evicted (the instance was idle), so that the call instantiates one
    // (pooling allocator, InstancePre, copy-on-write memory image) and runs `configure` first.
    let mut group = c.benchmark_group("plugin_hop/cold_and_warm");
    let pooled = &cases[1].1;
    group.bench_function("warm call (an idle copy is there)", |b| {
        b.iter(|| rt.block_on(pooled.run(&ctx, call.clone(), &upstream)).unwrap());
    });
    group.bench_function("cold call (the copy was evicted)", |b| {
        b.iter(|| {
            runtime.evict_idle_older_than(std::time::Duration::ZERO);
            rt.block_on(pooled.run(&ctx, call.clone(), &upstream)).unwrap()
        });
    });
    group.finish();

    // The checks a restricted binding adds to each call (issue #28): on the way in and again at
    // the node boundary, as the gateway runs them. A binding without restrictions runs neither.
    use ovsb::gateway::allowlist::{Allowlist, MethodRules};
    let mut group = c.benchmark_group("plugin_hop/allowlist");
    let contracts = Allowlist::from_parameters(
        &serde_json::json!({"allowed_contracts": ["0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"]}),
    )
    .unwrap();
    let methods =
        Allowlist::from_parameters(&serde_json::json!({"allowed_methods": ["eth_*", "net_version"]})).unwrap();
    // The quick-start `shared` plan's allowlist: 46 names and one glob.
    let quick_start = ovsb::config::Config::quick_start();
    let shared = quick_start.services[0].plans.iter().find(|p| p.name == "shared").unwrap();
    let plan = MethodRules::new(shared.policy.allowed_methods.clone(), shared.policy.denied_methods.clone());
    // An EIP-1559 transaction to that address (112 bytes; the signature is made up).
    let raw = concat!(
        r#"["0x02f86d827a6901847735940084773594008303000094a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"#,
        r#"8080c001a0d384a38fe8a0ba3ce6de83d5d4b145a36f32c8724de9e454de3001c8916b2f9e"#,
        r#"a02fe1abfd94d23817397f0f945301ed851b99a0cd9dbb75c0357f882074d20e7e"]"#
    );
    let check = |list: &Allowlist, method: &str, params: &str| {
        list.check_entry(method, Some(params)).unwrap();
        list.check_node_call(method, Some(params)).unwrap();
    };
    group.bench_function("eth_call, allowed_contracts (entry + node)", |b| {
        b.iter(|| check(&contracts, "eth_call", std::hint::black_box(PARAMS)));
    });
    group.bench_function("eth_call, allowed_contracts (node only: an empty chain)", |b| {
        b.iter(|| contracts.check_node_call("eth_call", Some(std::hint::black_box(PARAMS))).unwrap());
    });
    group.bench_function("eth_sendRawTransaction, allowed_contracts (entry + node)", |b| {
        b.iter(|| check(&contracts, "eth_sendRawTransaction", std::hint::black_box(raw)));
    });
    group.bench_function("eth_call, allowed_methods (entry + node)", |b| {
        b.iter(|| check(&methods, "eth_call", std::hint::black_box(PARAMS)));
    });
    group.bench_function("eth_call, the quick-start shared plan's method rules (entry + node)", |b| {
        b.iter(|| {
            plan.check_plan(std::hint::black_box("eth_call")).unwrap();
            plan.check_plan(std::hint::black_box("eth_call")).unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
