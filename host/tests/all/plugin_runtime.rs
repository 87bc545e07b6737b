//! The plugin runtime against a real wasm guest (`tests/test-plugin`, built by build.rs):
//! chain semantics, hostile plugins, configuration errors, bad files, the compile cache, the
//! key-value store, upstream calls and the WASI lockdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ovsb::plugins::{
    Call, Chain, ChainEntry, ConfigureError, Context, InstancePool, Isolation, KvLimits, KvStore, LoadError,
    LoadedPlugin, Outcome, PLUGIN_FAILURE_CODE, PluginLimits, PluginRuntime, RuntimeConfig, UPSTREAM_CAP_CODE,
    Upstream,
};
use ovsb_test_artifacts::TEST_PLUGIN;
use serde_json::{Value, json};

/// An upstream that answers `{"trail": [], "method": ..., "params": ...}` and counts its calls.
#[derive(Default)]
struct EchoUpstream {
    calls: AtomicUsize,
    delay: Option<Duration>,
    seen: Mutex<Vec<Call>>,
}

impl Upstream for EchoUpstream {
    fn call<'a>(&'a self, call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(call.clone());
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            let params: Value = call.params.as_deref().map_or(Value::Null, |p| serde_json::from_str(p).unwrap());
            Ok(json!({"trail": [], "method": call.method, "params": params}).to_string())
        })
    }
}

struct Fixture {
    runtime: PluginRuntime,
    plugin: Arc<LoadedPlugin>,
    kv: Arc<KvStore>,
    upstream: Arc<EchoUpstream>,
}

impl Fixture {
    fn new() -> Self {
        Self::with_upstream(EchoUpstream::default())
    }

    fn with_upstream(upstream: EchoUpstream) -> Self {
        let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
        let plugin = runtime.load_file("test", TEST_PLUGIN.as_ref()).unwrap();
        Fixture { runtime, plugin, kv: Arc::new(KvStore::new(KvLimits::default())), upstream: Arc::new(upstream) }
    }

    async fn pool(&self, config: Value) -> Arc<InstancePool> {
        self.pool_with(config, PluginLimits::default()).await
    }

    async fn pool_with(&self, config: Value, limits: PluginLimits) -> Arc<InstancePool> {
        self.runtime.pool(&self.plugin, &config.to_string(), limits, "inst-1", self.kv.clone()).await.unwrap()
    }

    async fn chain(&self, configs: &[Value]) -> Chain {
        let mut entries = Vec::new();
        for config in configs {
            entries.push(ChainEntry { pool: self.pool(config.clone()).await, fail_open: false });
        }
        Chain::new(entries)
    }

    fn upstream(&self) -> Arc<dyn Upstream> {
        self.upstream.clone()
    }

    async fn run(&self, chain: &Chain, method: &str, params: Option<&str>) -> Outcome {
        chain
            .run(
                &context().into(),
                Call { method: method.into(), params: params.map(str::to_string) },
                &self.upstream(),
            )
            .await
    }
}

fn context() -> Context {
    Context {
        instance_id: "inst-1".into(),
        binding_id: Some("bind-1".into()),
        plan: "devnet".into(),
        request_id: "req-1".into(),
    }
}

fn json_of(outcome: Outcome) -> Value {
    serde_json::from_str(&outcome.expect("a successful outcome")).unwrap()
}

/// The failure class (`data.reason`) of a plugin failure outcome.
fn failure_reason(outcome: &Outcome) -> String {
    let err = outcome.as_ref().expect_err("a failed outcome");
    assert_eq!(err.code, PLUGIN_FAILURE_CODE, "{err:?}");
    let data: Value = serde_json::from_str(err.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["plugin"], "test");
    data["reason"].as_str().unwrap().to_string()
}

fn tracer(tag: &str) -> Value {
    json!({"mode": "tracer", "tag": tag})
}

#[tokio::test]
async fn each_plugin_sees_the_rewrite_of_the_one_before_and_results_come_back_in_reverse() {
    let fx = Fixture::new();
    let chain =
        fx.chain(&[json!({"mode": "tracer", "tag": "a", "rename": "eth_renamed"}), tracer("b"), tracer("c")]).await;

    let result = json_of(fx.run(&chain, "eth_chainId", Some("[1]")).await);

    assert_eq!(result["method"], "eth_renamed", "the upstream sees the method a rewrote");
    assert_eq!(result["params"], json!([1, "call:a", "call:b", "call:c"]), "b saw a's params, c saw b's");
    assert_eq!(result["trail"], json!(["result:c", "result:b", "result:a"]));
    assert_eq!(fx.upstream.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn respond_skips_later_plugins_and_the_upstream_and_only_earlier_plugins_see_the_result() {
    let fx = Fixture::new();
    let chain = fx.chain(&[tracer("a"), json!({"mode": "respond", "tag": "b"}), tracer("c")]).await;

    let result = json_of(fx.run(&chain, "eth_chainId", None).await);

    assert_eq!(result, json!({"trail": ["respond:b", "result:a"], "params": ["call:a"]}));
    assert_eq!(fx.upstream.calls.load(Ordering::SeqCst), 0, "the upstream is never called");
}

#[tokio::test]
async fn an_empty_chain_goes_straight_to_the_upstream() {
    let fx = Fixture::new();
    let result = json_of(fx.run(&Chain::default(), "eth_blockNumber", None).await);
    assert_eq!(result["method"], "eth_blockNumber");
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_time_budget_and_the_pool_serves_the_next_call() {
    let fx = Fixture::new();
    let limits = PluginLimits { call_budget_ms: 30, ..PluginLimits::default() };
    let chain =
        Chain::new(vec![ChainEntry { pool: fx.pool_with(json!({"mode": "hostile"}), limits).await, fail_open: false }]);

    let started = Instant::now();
    let outcome = fx.run(&chain, "test_loop", None).await;
    assert_eq!(failure_reason(&outcome), "timeout");
    assert!(started.elapsed() >= Duration::from_millis(30), "stopped by the budget, not by something else");
    assert!(outcome.unwrap_err().message.contains("time budget of 30 ms"));

    assert_eq!(json_of(fx.run(&chain, "eth_chainId", None).await)["method"], "eth_chainId");
    assert_eq!(fx.runtime.stats().recycled.load(Ordering::SeqCst), 1, "the looping copy was thrown away");
}

/// The epoch, which enforces time budgets, advances only while wasm runs: an idle runtime (or a
/// gateway serving only empty chains) takes no timer wake-up, and a plugin call still meets its
/// budget.
#[tokio::test]
async fn the_epoch_advances_only_while_a_plugin_runs() {
    let fx = Fixture::new();
    let limits = PluginLimits { call_budget_ms: 30, ..PluginLimits::default() };
    let chain =
        Chain::new(vec![ChainEntry { pool: fx.pool_with(json!({"mode": "hostile"}), limits).await, fail_open: false }]);
    let ticks = || fx.runtime.stats().epoch_ticks.load(Ordering::SeqCst);

    // `configure` ran wasm just now; the ticker stops once it sees nothing running. Ticking
    // every millisecond, it would never stay still for 100 ms.
    let settled = Instant::now() + Duration::from_secs(10);
    loop {
        let before = ticks();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ticks() == before {
            break;
        }
        assert!(Instant::now() < settled, "the epoch kept advancing with no plugin running");
    }
    let idle = ticks();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ticks(), idle, "no tick while idle");

    // A call wakes it: the looping call is stopped by its budget, which needs ticks.
    let outcome = fx.run(&chain, "test_loop", None).await;
    assert_eq!(failure_reason(&outcome), "timeout");
    assert!(ticks() >= idle + 2, "the epoch advanced during the call: {} -> {}", idle, ticks());
}

#[tokio::test]
async fn a_memory_bomb_hits_its_cap_and_the_pool_serves_the_next_call() {
    let fx = Fixture::new();
    // A generous budget: this test is about memory, not time.
    let limits = PluginLimits { memory_bytes: 16 << 20, call_budget_ms: 5_000, ..PluginLimits::default() };
    let chain =
        Chain::new(vec![ChainEntry { pool: fx.pool_with(json!({"mode": "hostile"}), limits).await, fail_open: false }]);

    let outcome = fx.run(&chain, "test_bomb", None).await;
    assert_eq!(failure_reason(&outcome), "memory");
    assert!(outcome.unwrap_err().message.contains("memory cap of 16 MiB"));

    assert_eq!(json_of(fx.run(&chain, "eth_chainId", None).await)["method"], "eth_chainId");
}

#[tokio::test]
async fn a_panic_is_a_json_rpc_error_and_the_pool_serves_the_next_call() {
    let fx = Fixture::new();
    let chain = fx.chain(&[json!({"mode": "hostile"})]).await;

    let outcome = fx.run(&chain, "test_panic", None).await;
    assert_eq!(failure_reason(&outcome), "trap");
    assert_eq!(outcome.unwrap_err().message, "plugin `test` failed: trapped");

    let outcome = fx.run(&chain, "test_panic_on_result", None).await;
    assert_eq!(failure_reason(&outcome), "trap", "a panic in on_result fails the call too");

    assert_eq!(json_of(fx.run(&chain, "eth_chainId", None).await)["method"], "eth_chainId");
}

#[tokio::test]
async fn an_oversized_result_is_a_json_rpc_error_and_the_pool_serves_the_next_call() {
    let fx = Fixture::new();
    // A generous budget: this test is about size, not time.
    let limits = PluginLimits { max_output_bytes: 1 << 20, call_budget_ms: 5_000, ..PluginLimits::default() };
    let chain =
        Chain::new(vec![ChainEntry { pool: fx.pool_with(json!({"mode": "hostile"}), limits).await, fail_open: false }]);

    let outcome = fx.run(&chain, "test_huge", Some("[8388608]")).await;
    assert_eq!(failure_reason(&outcome), "oversize");

    let small = fx.run(&chain, "test_huge", Some("[1000]")).await;
    assert_eq!(small.unwrap().len(), 1002, "under the limit the answer passes");
    assert_eq!(json_of(fx.run(&chain, "eth_chainId", None).await)["method"], "eth_chainId");
}

#[tokio::test]
async fn earlier_plugins_see_a_failure_as_an_error_outcome() {
    let fx = Fixture::new();
    let chain = fx.chain(&[tracer("a"), json!({"mode": "hostile"})]).await;
    let outcome = fx.run(&chain, "test_panic", None).await;
    assert_eq!(failure_reason(&outcome), "trap");
    assert_eq!(fx.upstream.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_fail_open_plugin_is_skipped_when_it_fails() {
    let fx = Fixture::new();
    let chain = Chain::new(vec![
        ChainEntry { pool: fx.pool(json!({"mode": "hostile"})).await, fail_open: true },
        ChainEntry { pool: fx.pool(tracer("b")).await, fail_open: false },
    ]);

    let result = json_of(fx.run(&chain, "test_panic", None).await);

    assert_eq!(result["params"], json!(["call:b"]));
    assert_eq!(result["trail"], json!(["result:b"]));
    assert_eq!(fx.upstream.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rejected_configuration_fails_with_the_plugins_own_message() {
    let fx = Fixture::new();
    let config = json!({"mode": "reject", "message": "`allow` must list at least one method"}).to_string();
    let err =
        fx.runtime.pool(&fx.plugin, &config, PluginLimits::default(), "inst-1", fx.kv.clone()).await.err().unwrap();
    assert_eq!(
        err,
        ConfigureError::Rejected { plugin: "test".into(), message: "`allow` must list at least one method".into() }
    );
    assert_eq!(err.to_string(), "plugin `test` rejected its configuration: `allow` must list at least one method");
}

#[tokio::test]
async fn configuration_that_is_not_json_is_rejected_by_the_sdk() {
    let fx = Fixture::new();
    let err =
        fx.runtime.pool(&fx.plugin, "{not json", PluginLimits::default(), "inst-1", fx.kv.clone()).await.err().unwrap();
    let ConfigureError::Rejected { message, .. } = err else { panic!("expected a rejection, got {err:?}") };
    assert!(message.starts_with("invalid configuration:"), "{message}");
}

#[tokio::test]
async fn out_of_range_limits_are_refused_before_anything_runs() {
    let fx = Fixture::new();
    let limits = PluginLimits { memory_bytes: 1 << 40, ..PluginLimits::default() };
    let err = fx.runtime.pool(&fx.plugin, "null", limits, "inst-1", fx.kv.clone()).await.err().unwrap();
    assert!(err.to_string().contains("memory_bytes must be between"), "{err}");
}

#[test]
fn files_that_are_not_plugins_fail_with_an_error_naming_them() {
    let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();

    let err = runtime.load("garbage", b"\0asm definitely not wasm").err().unwrap();
    assert!(matches!(err, LoadError::NotAComponent { .. }), "{err:?}");
    assert!(err.to_string().starts_with("plugin `garbage` is not a valid WebAssembly component"), "{err}");

    let core_module = wat::parse_str("(module)").unwrap();
    let err = runtime.load("core", &core_module).err().unwrap();
    assert!(matches!(err, LoadError::NotAComponent { .. }), "a core module is not a component: {err:?}");

    let empty_component = wat::parse_str("(component)").unwrap();
    let err = runtime.load("empty", &empty_component).err().unwrap();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("plugin `empty` does not implement the world ovsb:plugin/plugin@0.1.0"),
        "{err}"
    );

    let err = runtime.load_file("missing", "/nonexistent/plugin.wasm".as_ref()).err().unwrap();
    assert!(err.to_string().contains("cannot read /nonexistent/plugin.wasm"), "{err}");
}

#[test]
fn a_component_importing_something_the_host_lacks_fails_with_a_clear_error() {
    let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
    let wasm =
        wat::parse_str(r#"(component (import "evil:net/raw-socket" (instance (export "open" (func)))))"#).unwrap();
    let err = runtime.load("evil", &wasm).err().unwrap();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err:?}");
    assert!(err.to_string().contains("evil:net/raw-socket"), "the error names the import: {err}");
}

#[test]
fn an_unchanged_plugin_is_compiled_once_then_served_from_memory_and_from_disk() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() };
    let wasm = std::fs::read(TEST_PLUGIN).unwrap();

    let runtime = PluginRuntime::new(config.clone()).unwrap();
    runtime.load("a", &wasm).unwrap();
    runtime.load("b", &wasm).unwrap();
    assert_eq!(runtime.stats().compilations.load(Ordering::SeqCst), 1);
    assert_eq!(runtime.stats().memory_cache_hits.load(Ordering::SeqCst), 1);

    // A new process (a new runtime) finds the artifact on disk.
    let restarted = PluginRuntime::new(config).unwrap();
    let plugin = restarted.load("a", &wasm).unwrap();
    assert_eq!(restarted.stats().compilations.load(Ordering::SeqCst), 0);
    assert_eq!(restarted.stats().disk_cache_hits.load(Ordering::SeqCst), 1);
    assert_eq!(plugin.sha256().len(), 64);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cache.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
    }
}

#[test]
fn a_corrupt_cache_file_is_recompiled_not_trusted() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..RuntimeConfig::default() };
    let wasm = std::fs::read(TEST_PLUGIN).unwrap();
    PluginRuntime::new(config.clone()).unwrap().load("a", &wasm).unwrap();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"corrupted").unwrap();
    }
    let runtime = PluginRuntime::new(config).unwrap();
    runtime.load("a", &wasm).unwrap();
    assert_eq!(runtime.stats().compilations.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn copies_are_reused_when_pooled_and_fresh_for_every_call_in_per_call_mode() {
    let fx = Fixture::new();
    let pooled = fx.chain(&[json!({"mode": "pass"})]).await;
    let before = fx.runtime.stats().instantiations.load(Ordering::SeqCst);
    for _ in 0..5 {
        fx.run(&pooled, "eth_chainId", None).await.unwrap();
    }
    assert_eq!(
        fx.runtime.stats().instantiations.load(Ordering::SeqCst),
        before + 1,
        "the first call made a copy (configure's was released), the others reused it"
    );

    let limits = PluginLimits { isolation: Isolation::PerCall, ..PluginLimits::default() };
    let per_call = Chain::new(vec![ChainEntry { pool: fx.pool_with(tracer("a"), limits).await, fail_open: false }]);
    let before = fx.runtime.stats().instantiations.load(Ordering::SeqCst);
    for _ in 0..5 {
        fx.run(&per_call, "eth_chainId", None).await.unwrap();
    }
    // One copy for on_call and one for on_result, per call.
    assert_eq!(fx.runtime.stats().instantiations.load(Ordering::SeqCst), before + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_beyond_the_concurrency_cap_wait_and_all_succeed() {
    let fx =
        Arc::new(Fixture::with_upstream(EchoUpstream { delay: Some(Duration::from_millis(5)), ..Default::default() }));
    let limits = PluginLimits { max_concurrency: 2, max_idle: 2, ..PluginLimits::default() };
    let chain = Chain::new(vec![ChainEntry { pool: fx.pool_with(tracer("a"), limits).await, fail_open: false }]);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (fx, chain) = (fx.clone(), chain.clone());
            tokio::spawn(async move { json_of(fx.run(&chain, "m", Some(&format!("[{i}]"))).await) })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        assert_eq!(result["params"], json!([i, "call:a"]), "each caller gets its own answer");
    }
    assert!(chain.entries()[0].pool.idle_copies() <= 2);
}

#[tokio::test]
async fn kv_state_is_shared_by_copies_of_one_instance_and_separate_between_instances_and_plugins() {
    let fx = Fixture::new();
    let counter = fx.chain(&[json!({"mode": "counter"})]).await;
    assert_eq!(fx.run(&counter, "m", None).await, Ok("1".into()));
    // Another pool of the same plugin for the same instance shares the counter.
    let again = fx.chain(&[json!({"mode": "counter"})]).await;
    assert_eq!(fx.run(&again, "m", None).await, Ok("2".into()));

    // Another instance has its own store.
    let other_kv = Arc::new(KvStore::new(KvLimits::default()));
    let other = fx
        .runtime
        .pool(&fx.plugin, r#"{"mode":"counter"}"#, PluginLimits::default(), "inst-2", other_kv)
        .await
        .unwrap();
    let other = Chain::new(vec![ChainEntry { pool: other, fail_open: false }]);
    assert_eq!(fx.run(&other, "m", None).await, Ok("1".into()));

    // Another plugin (same bytes, another name) in the same instance has its own namespace.
    let renamed = fx.runtime.load_file("other-plugin", TEST_PLUGIN.as_ref()).unwrap();
    let pool = fx
        .runtime
        .pool(&renamed, r#"{"mode":"counter"}"#, PluginLimits::default(), "inst-1", fx.kv.clone())
        .await
        .unwrap();
    let renamed = Chain::new(vec![ChainEntry { pool, fail_open: false }]);
    assert_eq!(fx.run(&renamed, "m", None).await, Ok("1".into()));
}

#[tokio::test]
async fn upstream_calls_from_a_plugin_are_capped_per_call() {
    let fx = Fixture::new();
    let limits = PluginLimits { max_upstream_calls: 3, ..PluginLimits::default() };
    let chain = Chain::new(vec![ChainEntry {
        pool: fx.pool_with(json!({"mode": "fanout", "count": 5}), limits).await,
        fail_open: false,
    }]);

    let results = json_of(fx.run(&chain, "eth_getBalance", Some(r#"["0xabc"]"#)).await);

    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[..3].iter().all(|r| r["method"] == "eth_getBalance" && r["params"] == json!(["0xabc"])));
    assert!(results[3..].iter().all(|r| r["error"] == UPSTREAM_CAP_CODE));
    assert_eq!(fx.upstream.calls.load(Ordering::SeqCst), 3, "the cap is enforced before the node is contacted");
}

#[tokio::test]
async fn time_waiting_for_the_upstream_does_not_count_against_the_time_budget() {
    let fx = Fixture::with_upstream(EchoUpstream { delay: Some(Duration::from_millis(150)), ..Default::default() });
    let limits = PluginLimits { call_budget_ms: 100, ..PluginLimits::default() };
    let chain = Chain::new(vec![ChainEntry {
        pool: fx.pool_with(json!({"mode": "fanout", "count": 2}), limits).await,
        fail_open: false,
    }]);

    let results = json_of(fx.run(&chain, "eth_chainId", None).await);

    assert_eq!(results.as_array().unwrap().len(), 2, "300 ms of upstream waits under a 100 ms budget succeed");
}

#[tokio::test]
async fn plugins_get_no_environment_filesystem_or_clock_through_wasi() {
    let fx = Fixture::new();
    let chain = fx.chain(&[json!({"mode": "wasi-probe"})]).await;
    let seen = json_of(fx.run(&chain, "m", None).await);
    assert_eq!(seen, json!({"env_vars": 0, "fs": "denied", "unix_secs": 0}));
    assert!(std::env::vars().count() > 0, "the host process does have an environment");
}

#[tokio::test]
async fn a_plugin_reads_the_context_of_the_call_it_is_processing() {
    let fx = Fixture::new();
    let chain = fx.chain(&[json!({"mode": "whoami"})]).await;
    let seen = json_of(fx.run(&chain, "m", None).await);
    assert_eq!(seen, json!({"instance_id": "inst-1", "binding_id": "bind-1", "plan": "devnet", "request_id": "req-1"}));
}

#[tokio::test]
async fn hooks_a_plugin_does_not_declare_are_skipped() {
    let fx = Fixture::new();
    // b only filters (no on-result), c only post-processes (no on-call).
    let chain = fx
        .chain(&[
            tracer("a"),
            json!({"mode": "tracer", "tag": "b", "hooks": ["on-call"]}),
            json!({"mode": "tracer", "tag": "c", "hooks": ["on-result"]}),
        ])
        .await;

    let result = json_of(fx.run(&chain, "m", None).await);

    assert_eq!(result["params"], json!(["call:a", "call:b"]), "c's on-call was skipped");
    assert_eq!(result["trail"], json!(["result:c", "result:a"]), "b's on-result was skipped");
    assert_eq!(
        fx.runtime.stats().instantiations.load(Ordering::SeqCst),
        6,
        "three configured and released, then one copy per pool served everything"
    );
}

/// A provision checks its chain, and the instance's route builds it again: a configuration this
/// version of the plugin already took makes a pool without a copy made only to be dropped.
#[tokio::test]
async fn a_configuration_already_taken_makes_a_new_pool_without_a_copy_and_it_behaves_alike() {
    let fx = Fixture::new();
    let made = || fx.runtime.stats().instantiations.load(Ordering::SeqCst);
    let configs = [
        json!({"mode": "tracer", "tag": "b", "hooks": ["on-call"], "methods": ["eth_*"]}),
        json!({"mode": "tracer", "tag": "c", "hooks": ["on-result"]}),
    ];
    let first = fx.chain(&configs).await;
    assert_eq!(made(), 2, "each configuration was configured once");
    let second = fx.chain(&configs).await;
    assert_eq!(made(), 2, "the same configurations again: no copy made to ask");
    for chain in [&first, &second] {
        let result = json_of(fx.run(chain, "eth_x", None).await);
        assert_eq!(result["params"], json!(["call:b"]), "b's hook and selection, c has no on-call");
        assert_eq!(result["trail"], json!(["result:c"]), "b has no on-result");
        let result = json_of(fx.run(chain, "net_version", None).await);
        assert_eq!(result["params"], json!(null), "b selected eth_* only");
    }
    // Configurations not taken before are still configured, and a bad one refused.
    let before = made();
    fx.chain(&[json!({"mode": "tracer", "tag": "d"})]).await;
    assert_eq!(made(), before + 1);
    let bad = json!({"mode": "reject", "message": "no"}).to_string();
    for _ in 0..2 {
        let refused = fx.runtime.pool(&fx.plugin, &bad, PluginLimits::default(), "inst-2", fx.kv.clone()).await;
        assert!(matches!(refused, Err(ConfigureError::Rejected { .. })));
    }
}

#[tokio::test]
async fn a_plugin_that_did_not_select_a_method_is_passed_by_without_a_wasm_call() {
    let fx = Fixture::new();
    // b sees only eth_* calls as they reach it, c every call but net_*; a renames one method.
    let chain = fx
        .chain(&[
            json!({"mode": "tracer", "tag": "a", "rename": "eth_renamed", "methods": ["web3_*"]}),
            json!({"mode": "tracer", "tag": "b", "methods": ["eth_*"]}),
            json!({"mode": "tracer", "tag": "c", "except_methods": ["net_*"]}),
        ])
        .await;
    let made = fx.runtime.stats().instantiations.load(Ordering::SeqCst);

    let result = json_of(fx.run(&chain, "net_version", None).await);
    assert_eq!(result["method"], "net_version");
    assert_eq!(result["params"], json!(null), "no plugin saw the call");
    assert_eq!(result["trail"], json!([]), "no on-result ran either (the upstream answers an empty trail)");
    assert_eq!(fx.runtime.stats().instantiations.load(Ordering::SeqCst), made, "no copy was even made");

    let result = json_of(fx.run(&chain, "web3_clientVersion", None).await);
    assert_eq!(result["method"], "eth_renamed");
    assert_eq!(result["params"], json!(["call:a", "call:b", "call:c"]), "b sees the method as a renamed it");
    assert_eq!(result["trail"], json!(["result:c", "result:b", "result:a"]));

    let result = json_of(fx.run(&chain, "debug_x", None).await);
    assert_eq!(result["params"], json!(["call:c"]));
    assert_eq!(result["trail"], json!(["result:c"]));
}

#[tokio::test]
async fn a_method_selection_out_of_bounds_fails_configure_with_the_reason() {
    let fx = Fixture::new();
    for (selection, reason) in [
        (json!([""]), "must be 1 to 128 bytes long"),
        (json!(["x".repeat(129)]), "must be 1 to 128 bytes long"),
        (json!((0..257).map(|i| format!("m{i}")).collect::<Vec<_>>()), "over the limit of 256"),
    ] {
        let config = json!({"mode": "pass", "methods": selection}).to_string();
        let err =
            fx.runtime.pool(&fx.plugin, &config, PluginLimits::default(), "inst-1", fx.kv.clone()).await.err().unwrap();
        let ConfigureError::Rejected { message, .. } = &err else { panic!("expected a rejection, got {err:?}") };
        assert!(message.starts_with("select-methods: ") && message.contains(reason), "{message}");
    }
}

/// Captures what `tracing` writes on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn plugin_logs_are_tagged_rate_limited_and_panics_are_logged() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fx = Fixture::new();
    let limits = PluginLimits { log_lines_per_second: 5, ..PluginLimits::default() };
    let spam = Chain::new(vec![ChainEntry {
        pool: fx.pool_with(json!({"mode": "log-spam", "lines": 1000}), limits).await,
        fail_open: false,
    }]);
    fx.run(&spam, "m", None).await.unwrap();
    let hostile = fx.chain(&[json!({"mode": "hostile"})]).await;
    let _ = fx.run(&hostile, "test_panic", None).await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("line ")).collect();
    assert!(!lines.is_empty() && lines.len() <= 6, "1000 lines at 5/s: {} got through", lines.len());
    assert!(lines.iter().all(|l| l.contains("plugin=\"test\"") && l.contains("instance=\"inst-1\"")), "{lines:?}");
    assert!(
        text.contains("plugin panicked: panicked at") && text.contains("test plugin panicked on purpose"),
        "{text}"
    );
}

#[tokio::test]
async fn pass_through_defaults_are_declined_after_their_first_call_and_then_skipped() {
    let fx = Fixture::new();
    let defaults = fx.runtime.load_file("pass", ovsb_test_artifacts::PASS_PLUGIN.as_ref()).unwrap();
    let pass = fx.runtime.pool(&defaults, "null", PluginLimits::default(), "inst-1", fx.kv.clone()).await.unwrap();
    let chain = Chain::new(vec![
        ChainEntry { pool: pass.clone(), fail_open: false },
        ChainEntry { pool: fx.pool(tracer("t")).await, fail_open: false },
    ]);
    assert_eq!(pass.hooks(), ovsb::plugins::Hooks::all(), "configure declares both");

    let first = json_of(fx.run(&chain, "m", Some("[1]")).await);
    assert_eq!(pass.hooks(), ovsb::plugins::Hooks::empty(), "both defaults declined on first use");
    let second = json_of(fx.run(&chain, "m", Some("[1]")).await);

    assert_eq!(first, second, "skipping a pass-through changes nothing");
    assert_eq!(second["params"], json!([1, "call:t"]));
    assert_eq!(second["trail"], json!(["result:t"]));
    assert_eq!(chain.entries()[1].pool.hooks(), ovsb::plugins::Hooks::all(), "overridden hooks are kept");
}

/// When every slot of the runtime holds a busy copy (here its one slot), a call waits up to
/// `copy_wait` and then gets -32005 naming the limit: the server's capacity, not a plugin failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_finds_every_slot_busy_gets_32005_naming_the_limit() {
    let config = RuntimeConfig { max_instances: 1, copy_wait: Duration::from_millis(10), ..RuntimeConfig::default() };
    let runtime = PluginRuntime::new(config).unwrap();
    let plugin = runtime.load_file("test", TEST_PLUGIN.as_ref()).unwrap();
    let kv = Arc::new(KvStore::new(KvLimits::default()));
    let pool = runtime.pool(&plugin, &json!({"mode": "hostile"}).to_string(), PluginLimits::default(), "i", kv).await;
    let chain = Arc::new(Chain::new(vec![ChainEntry { pool: pool.unwrap(), fail_open: false }]));
    assert_eq!(runtime.stats().alive.load(Ordering::SeqCst), 0, "configure's copy is released");
    let upstream: Arc<dyn Upstream> = Arc::new(EchoUpstream::default());
    let call = |method: &str| Call { method: method.into(), params: Some("[]".into()) };
    let busy = {
        let (chain, upstream, call) = (chain.clone(), upstream.clone(), call("test_loop"));
        tokio::spawn(async move { chain.run(&context().into(), call, &upstream).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let refused = chain.run(&context().into(), call("eth_chainId"), &upstream).await.unwrap_err();
    assert_eq!(refused.code, -32005, "{refused:?}");
    let data: Value = serde_json::from_str(refused.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["reason"], "runtime_copies", "{data}");
    assert_eq!(data["limit"], 1, "{data}");
    assert_eq!(busy.await.unwrap().unwrap_err().code, PLUGIN_FAILURE_CODE, "the looping call ran to its budget");
    // The slot is free again: the next call gets a copy.
    assert!(chain.run(&context().into(), call("eth_chainId"), &upstream).await.is_ok());
}

/// An instance that serves no calls holds no copy; a call makes one, which stays warm until the
/// idle time passes; the first call after eviction works as the first one did.
#[tokio::test]
async fn copies_are_made_on_demand_kept_warm_and_evicted_when_idle() {
    let fx = Fixture::new();
    let chain = fx.chain(&[tracer("a"), tracer("b")]).await;
    let stats = fx.runtime.stats();
    assert_eq!(stats.alive.load(Ordering::SeqCst), 0, "a configured chain holds no copy");
    let first = json_of(fx.run(&chain, "eth_chainId", Some("[]")).await);
    assert_eq!(stats.alive.load(Ordering::SeqCst), 2, "one warm copy per plugin after a call");
    assert_eq!(fx.runtime.idle_copies(), 2);
    let made = stats.instantiations.load(Ordering::SeqCst);
    assert_eq!(json_of(fx.run(&chain, "eth_chainId", Some("[]")).await), first);
    assert_eq!(stats.instantiations.load(Ordering::SeqCst), made, "the warm copies served the second call");

    fx.runtime.evict_idle_older_than(Duration::ZERO);
    assert_eq!(stats.alive.load(Ordering::SeqCst), 0, "evicted");
    assert_eq!(stats.evicted.load(Ordering::SeqCst), 2);
    assert_eq!(json_of(fx.run(&chain, "eth_chainId", Some("[]")).await), first, "a cold call answers the same");
    assert_eq!(stats.instantiations.load(Ordering::SeqCst), made + 2);
}

/// Warm copies are kept up to the runtime's idle budget across instances, least recently used
/// dropped first.
#[tokio::test]
async fn the_idle_budget_drops_the_least_recently_used_copy_across_instances() {
    let runtime = PluginRuntime::new(RuntimeConfig { idle_budget: 2, ..RuntimeConfig::default() }).unwrap();
    let plugin = runtime.load_file("test", TEST_PLUGIN.as_ref()).unwrap();
    let upstream: Arc<dyn Upstream> = Arc::new(EchoUpstream::default());
    let mut chains = Vec::new();
    for instance in ["a", "b", "c"] {
        let kv = Arc::new(KvStore::new(KvLimits::default()));
        let pool = runtime.pool(&plugin, &tracer(instance).to_string(), PluginLimits::default(), instance, kv).await;
        chains.push(Chain::new(vec![ChainEntry { pool: pool.unwrap(), fail_open: false }]));
    }
    for chain in &chains {
        let call = Call { method: "eth_chainId".into(), params: Some("[]".into()) };
        chain.run(&context().into(), call, &upstream).await.unwrap();
    }
    assert_eq!(runtime.idle_copies(), 2, "the budget");
    assert_eq!(runtime.stats().evicted.load(Ordering::SeqCst), 1);
    assert_eq!(chains[0].entries()[0].pool.idle_copies(), 0, "the least recently used instance's copy went");
    assert_eq!(chains[2].entries()[0].pool.idle_copies(), 1);
}

/// Once the node has answered, the outcome is not thrown away for a "retry later": a call whose
/// on-result finds the instance's share taken waits for its turn (a transaction may be in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_result_waits_for_its_turn_instead_of_dropping_the_nodes_answer() {
    let fx =
        Arc::new(Fixture::with_upstream(EchoUpstream { delay: Some(Duration::from_millis(30)), ..Default::default() }));
    let pool = fx.pool(json!({"mode": "hostile"})).await;
    let share = ovsb::plugins::Share { calls: 1, wait: Duration::from_millis(10) };
    let chain = Arc::new(Chain::with_share(vec![ChainEntry { pool, fail_open: false }], share));
    let sent = {
        let (fx, chain) = (fx.clone(), chain.clone());
        tokio::spawn(async move { fx.run(&chain, "eth_sendRawTransaction", Some("[\"0x02\"]")).await })
    };
    // Wait until the transaction is at the node (a fixed sleep lost this race on a loaded machine).
    for _ in 0..2000 {
        if fx.upstream.calls.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(fx.upstream.calls.load(Ordering::SeqCst), 1, "the transaction reached the node");
    // While the transaction is at the node, a looping call takes the one turn for 50 ms.
    let looping = fx.run(&chain, "test_loop", None).await.unwrap_err();
    assert_eq!(looping.code, PLUGIN_FAILURE_CODE);
    let answer = json_of(sent.await.unwrap());
    assert_eq!(answer["method"], "eth_sendRawTransaction", "the node's answer came back: {answer}");
    assert_eq!(fx.upstream.calls.load(Ordering::SeqCst), 1, "sent once");
}
