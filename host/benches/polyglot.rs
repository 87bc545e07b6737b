//! Rust, Python and JavaScript plugins doing the same work, so that plugin authors can choose
//! knowingly. Run: `cargo bench -p ovsb --bench polyglot`.
//!
//! For each language (`tests/bench-plugin`, `tests/polyglot/python-bench`,
//! `tests/polyglot/js-bench`, built by the test build):
//! - **per-hop cost**: an `eth_call` through a one-plugin chain, `pass` (`on_call` forwards the
//!   call unchanged) and `rewrite` (also `on_result`, which parses the result and wraps it as
//!   `{"wrapped": …}`), against an upstream that answers at once; subtract `empty chain`;
//! - **cold call**: the same `pass` call when the instance's idle copy was evicted, so that the
//!   call instantiates a copy (pooling allocator, `InstancePre`, copy-on-write memory image)
//!   and runs `configure` first;
//! - printed before the timings: the component's size, its first compile (no cache), and the
//!   RSS one warm idle copy adds (20 instances of the plugin, each with one copy).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ovsb::plugins::{
    Call, CallContext, Chain, ChainEntry, Context, KvLimits, KvStore, Outcome, PluginLimits, PluginRuntime,
    RuntimeConfig, Upstream,
};

const RESULT: &str = "\"0x00000000000000000000000000000000000000000000000000000000000f4240\"";
const PARAMS: &str = r#"[{"to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x70a08231000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266"},"latest"]"#;
const COPIES_FOR_RSS: usize = 20;

struct Immediate;

impl Upstream for Immediate {
    fn call<'a>(&'a self, _call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async { Ok(RESULT.to_string()) })
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let upstream: Arc<dyn Upstream> = Arc::new(Immediate);
    let ctx = CallContext::from(Context {
        instance_id: "0b9d3bc4-2d5e-4d56-9d7c-6f1f4d1a2b3c".into(),
        binding_id: Some("5f0c2f63-1c7e-4a8e-9f61-3c1d2e4f5a6b".into()),
        plan: "shared".into(),
        request_id: "01JD8ZQ4M6X2K9V7T3N5R1P0AB".into(),
    });
    let call = Call { method: "eth_call".into(), params: Some(PARAMS.into()) };
    let languages = [
        ("rust", ovsb_test_artifacts::BENCH_PLUGIN),
        ("python", ovsb_test_artifacts::PY_BENCH_PLUGIN),
        ("js", ovsb_test_artifacts::JS_BENCH_PLUGIN),
    ];
    // The limits the README suggests for Python and JavaScript plugins, for all three.
    let limits = PluginLimits { memory_bytes: 128 << 20, call_budget_ms: 500, ..PluginLimits::default() };

    {
        let mut group = c.benchmark_group("polyglot");
        group.bench_function("empty chain", |b| {
            b.iter(|| rt.block_on(Chain::default().run(&ctx, call.clone(), &upstream)).unwrap());
        });
        group.finish();
    }
    for (lang, file) in languages {
        // A runtime of its own per language: compile cache and idle copies are not shared.
        let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        let plugin = runtime.load_file(lang, file.as_ref()).unwrap();
        let compile = started.elapsed();
        let kv = Arc::new(KvStore::new(KvLimits::default()));
        let chain = |mode: &str, instance: &str| {
            let config = format!(r#"{{"mode":"{mode}"}}"#);
            let pool = rt.block_on(runtime.pool(&plugin, &config, limits, instance, kv.clone())).unwrap();
            Chain::new(vec![ChainEntry { pool, fail_open: false }])
        };

        // RSS of warm idle copies: one per instance, made by a call each.
        let chains: Vec<Chain> = (0..COPIES_FOR_RSS).map(|i| chain("pass", &format!("rss-{i}"))).collect();
        let before = rss();
        for chain in &chains {
            rt.block_on(chain.run(&ctx, call.clone(), &upstream)).unwrap();
        }
        let per_copy = rss().saturating_sub(before) / COPIES_FOR_RSS as u64;
        println!(
            "polyglot/{lang}: component {} KiB, first compile {:.2} s, RSS per warm copy {} KiB ({COPIES_FOR_RSS} copies)",
            size / 1024,
            compile.as_secs_f64(),
            per_copy / 1024
        );
        drop(chains);
        runtime.evict_idle_older_than(Duration::ZERO);

        let pass = chain("pass", "hop");
        let rewrite = chain("rewrite", "hop");
        let mut group = c.benchmark_group(format!("polyglot/{lang}"));
        if lang != "rust" {
            group.sample_size(20).measurement_time(Duration::from_secs(8));
        }
        group.bench_function("pass (1 hop)", |b| {
            b.iter(|| rt.block_on(pass.run(&ctx, call.clone(), &upstream)).unwrap());
        });
        group.bench_function("rewrite (1 hop)", |b| {
            b.iter(|| rt.block_on(rewrite.run(&ctx, call.clone(), &upstream)).unwrap());
        });
        group.bench_function("cold call (copy evicted: instantiate + configure + call)", |b| {
            b.iter(|| {
                runtime.evict_idle_older_than(Duration::ZERO);
                rt.block_on(pass.run(&ctx, call.clone(), &upstream)).unwrap()
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
