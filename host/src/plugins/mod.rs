//! # The wasm plugin runtime
//!
//! Owns everything between a plugin file and a call through a chain of plugins: the wasmtime
//! engine, compiling (once per content hash, cached in memory and on disk), the pools of warm
//! plugin copies, the host functions plugins may call, the limits every copy runs under, and
//! the chain semantics of `wit/plugin.wit`. It knows nothing of HTTP, the broker or the store:
//! the gateway hands it a [`Context`], a [`Call`] and an [`Upstream`], and gets an [`Outcome`].
//!
//! - [`PluginRuntime`]: engine, linker, compile cache, epoch ticker. One per process.
//! - [`LoadedPlugin`]: a compiled plugin checked against the world, ready to instantiate.
//! - [`InstancePool`]: warm copies of one plugin with one configuration, for one instance.
//! - [`Chain`]: runs a call through an instance's pools in order and back.
//! - [`KvStore`]: the per-instance key-value store behind the `kv-*` host functions.
//! - [`Registry`]: the plugins the configuration makes available, by name; builds chains.

mod bindings;
mod cache;
mod chain;
mod errors;
mod kv;
mod pool;
mod registry;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use bindings::ovsb::plugin::types::{Call, Context, Decision, Hooks, Level, Outcome, RpcError};
pub use chain::{Chain, ChainEntry, SHARE_EXHAUSTED_CODE, Share};
pub use errors::{ConfigureError, FailureKind, LoadError, PLUGIN_FAILURE_CODE, PluginFailure, RuntimeError};
pub use kv::{KvLimits, KvStore};
pub use pool::{InstancePool, Isolation, PluginLimits};
pub use registry::{ChainError, Registry};
pub use state::{UPSTREAM_CAP_CODE, Upstream};

use state::StoreState;

/// Settings of the runtime as a whole (per-plugin limits are [`PluginLimits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Where compiled plugins are kept between runs; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// How often the epoch advances; time budgets are enforced to this granularity.
    pub epoch_tick: Duration,
    /// Largest memory cap any plugin may be given (sizes the pooling allocator's slots).
    pub max_memory_bytes: u64,
    /// Plugin copies alive at once across all pools (pooling allocator slots).
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            epoch_tick: Duration::from_millis(1),
            max_memory_bytes: 256 << 20,
            max_instances: 1000,
        }
    }
}

/// Counters that tests and metrics read.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Plugins compiled from source (cache misses).
    pub compilations: AtomicU64,
    /// Plugins loaded from the on-disk cache.
    pub disk_cache_hits: AtomicU64,
    /// Plugins found already compiled in memory.
    pub memory_cache_hits: AtomicU64,
    /// Plugin copies instantiated.
    pub instantiations: AtomicU64,
    /// Plugin copies thrown away after a failure or a memory high-water mark.
    pub recycled: AtomicU64,
}

pub(crate) struct RuntimeInner {
    engine: Engine,
    linker: Linker<StoreState>,
    max_memory_bytes: u64,
    cache: cache::CompileCache,
    stats: RuntimeStats,
    stop_ticker: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// The process-wide plugin runtime. Cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

/// A plugin compiled and checked against the `ovsb:plugin/plugin` world.
pub struct LoadedPlugin {
    name: Arc<str>,
    digest: [u8; 32],
    pre: bindings::PluginPre<StoreState>,
}

impl LoadedPlugin {
    /// The name the operator gave the plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// SHA-256 of the component's bytes, hex-encoded.
    pub fn sha256(&self) -> String {
        hex::encode(self.digest)
    }
}

impl PluginRuntime {
    /// Creates the engine (pooling allocator, epoch interruption, no component-model async) and
    /// starts the epoch ticker thread, which stops when the last clone is dropped.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        if config.epoch_tick.is_zero() {
            return Err(RuntimeError::Limits("epoch_tick must be above zero".into()));
        }
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(4))
            .total_memories(config.max_instances)
            .total_tables(config.max_instances.saturating_mul(4))
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory_bytes as usize);
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .concurrency_support(false)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        bindings::Plugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |state| state)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let cache = cache::CompileCache::new(&engine, config.cache_dir.as_deref())?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop, tick) = (engine.clone(), stop_ticker.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("ovsb-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?
        };
        Ok(PluginRuntime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                max_memory_bytes: config.max_memory_bytes,
                cache,
                stats: RuntimeStats::default(),
                stop_ticker,
                ticker: Some(ticker),
            }),
        })
    }

    /// The runtime's counters.
    pub fn stats(&self) -> &RuntimeStats {
        &self.inner.stats
    }

    /// Compiles (or fetches from the cache) a component and checks that it implements the
    /// world. CPU-heavy on a cache miss (tens of milliseconds): call it off the async executor.
    pub fn load(&self, name: &str, wasm: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        let inner = &self.inner;
        let (digest, component) = inner.cache.get_or_compile(&inner.engine, name, wasm, &inner.stats)?;
        let wrong_world =
            |e: wasmtime::Error| LoadError::WrongWorld { name: name.to_string(), reason: format!("{e:#}") };
        let pre = inner.linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = bindings::PluginPre::new(pre).map_err(wrong_world)?;
        Ok(Arc::new(LoadedPlugin { name: name.into(), digest, pre }))
    }

    /// [`load`](Self::load) from a file.
    pub fn load_file(&self, name: &str, path: &Path) -> Result<Arc<LoadedPlugin>, LoadError> {
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            name: name.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        self.load(name, &wasm)
    }

    /// Creates the pool of warm copies of `plugin` with configuration `config` (JSON text) for
    /// the service instance `instance_id`, running `configure` on its first copy: a rejection
    /// comes back as [`ConfigureError::Rejected`] with the plugin's message.
    pub async fn pool(
        &self,
        plugin: &Arc<LoadedPlugin>,
        config: &str,
        limits: PluginLimits,
        instance_id: &str,
        kv: Arc<KvStore>,
    ) -> Result<Arc<InstancePool>, ConfigureError> {
        limits
            .validate(self.inner.max_memory_bytes)
            .map_err(|reason| ConfigureError::Failed { plugin: plugin.name.to_string(), reason })?;
        InstancePool::create(self.inner.clone(), plugin.clone(), config, limits, instance_id, kv).await
    }
}
