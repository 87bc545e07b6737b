//! # The wasm plugin runtime
//!
//! Owns everything between a plugin file and a call through a chain of plugins: the wasmtime
//! engine, compiling (once per content hash, cached in memory and on disk), the pools of warm
//! plugin copies, the host functions plugins may call, the limits every copy runs under, and
//! the chain semantics of `wit/plugin.wit`. It knows nothing of HTTP, the broker or the store:
//! the gateway hands it a [`Context`], a [`Call`] and an [`Upstream`], and gets an [`Outcome`].
//!
//! - [`PluginRuntime`]: engine, linker, compile cache, epoch ticker. One per process. The
//!   ticker advances the epoch only while wasm runs (a `Running` guard is held): an idle
//!   process, or one serving empty chains, takes no timer wake-ups.
//! - [`LoadedPlugin`]: a compiled plugin checked against the world, ready to instantiate.
//! - [`InstancePool`]: copies of one plugin with one configuration, for one instance, made on
//!   demand: an instance that serves no calls holds none. A configuration this version of the
//!   plugin already took is not configured again to make a pool (`configured`).
//! - The runtime's idle copies: warm copies kept after a call, at most `idle_budget` across all
//!   instances (least recently used dropped first), each for at most `idle_time`.
//! - [`Chain`]: runs a call through an instance's pools in order and back, skipping the
//!   plugins whose [`MethodSelection`] does not take the call.
//! - [`KvStore`]: the per-instance key-value store behind the `kv-*` host functions.
//! - [`Registry`]: the plugins the configuration makes available, by name; builds chains.

mod bindings;
mod cache;
mod chain;
mod configured;
mod errors;
mod kv;
mod methods;
mod pool;
mod registry;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use crate::call::{Call, CallContext, Context, Decision, Hooks, Level, Outcome, RpcError, Upstream};
pub use crate::config::{Isolation, PluginLimits};
pub use chain::{Chain, ChainEntry, PLUGIN_CALLS_PARAMETER, SHARE_EXHAUSTED_CODE, Share};
pub use errors::{ConfigureError, FailureKind, LoadError, PLUGIN_FAILURE_CODE, PluginFailure, RuntimeError};
pub use kv::{KvLimits, KvStore};
pub use methods::MethodSelection;
pub use pool::{Decisions, InstancePool};
pub use registry::{
    Available, ChainError, Compiled, PluginVersion, Prepared, Registry, ReloadFailure, ReloadReport, compile_all,
};
pub use state::UPSTREAM_CAP_CODE;

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
    /// Warm idle copies kept across all instances; past it the least recently used is dropped.
    pub idle_budget: u32,
    /// An idle copy unused for this long is dropped.
    pub idle_time: Duration,
    /// Longest a call waits for a free slot when every slot holds a busy copy.
    pub copy_wait: Duration,
}

impl RuntimeConfig {
    /// The runtime the `[runtime]` settings describe (`cache_dir` left unset).
    pub fn from_settings(settings: &crate::config::RuntimeSettings) -> Self {
        RuntimeConfig {
            max_memory_bytes: settings.max_memory_bytes,
            max_instances: settings.max_copies,
            idle_budget: settings.idle_copies,
            idle_time: Duration::from_millis(settings.idle_ms),
            copy_wait: Duration::from_millis(settings.copy_wait_ms),
            ..RuntimeConfig::default()
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            epoch_tick: Duration::from_millis(1),
            max_memory_bytes: 256 << 20,
            max_instances: 1000,
            idle_budget: 256,
            idle_time: Duration::from_secs(30),
            copy_wait: Duration::from_millis(500),
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
    /// Idle copies dropped for the idle budget or the idle time.
    pub evicted: AtomicU64,
    /// Copies alive now (busy or idle).
    pub alive: AtomicU64,
    /// Times the epoch advanced: only while wasm runs (see [`Running`]).
    pub epoch_ticks: Arc<AtomicU64>,
}

/// Every idle copy of the runtime, oldest use first: which pool holds it, and since when.
#[derive(Default)]
pub(crate) struct IdleCopies {
    by_seq: BTreeMap<u64, (Instant, Weak<InstancePool>)>,
}

pub(crate) struct RuntimeInner {
    engine: Engine,
    linker: Linker<StoreState>,
    max_memory_bytes: u64,
    cache: cache::CompileCache,
    stats: RuntimeStats,
    max_instances: u32,
    idle: Mutex<IdleCopies>,
    idle_seq: AtomicU64,
    idle_budget: usize,
    idle_time: Duration,
    copy_wait: Duration,
    stop_ticker: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
    /// Wasm executions: in progress (low 32 bits) and started (high 32 bits, wrapping); see
    /// [`Running`]. The ticker sleeps after a stretch with none.
    running: Arc<AtomicU64>,
    /// The ticker's thread, to wake it when the first execution starts.
    ticker_thread: OnceLock<std::thread::Thread>,
}

/// Held while wasm runs on a copy (instantiation, `configure`, a hook): the epoch advances only
/// while one is held, so an idle process (or one serving empty chains) takes no timer wakeups.
pub(crate) struct Running<'a>(&'a RuntimeInner);

impl RuntimeInner {
    /// Marks wasm as running until the guard is dropped; wakes the ticker if it slept.
    pub(crate) fn running(&self) -> Running<'_> {
        if self.running.fetch_add(RUNNING_START, Ordering::AcqRel) & RUNNING_COUNT == 0
            && let Some(ticker) = self.ticker_thread.get()
        {
            ticker.unpark();
        }
        Running(self)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
        let ticker = self.ticker.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(ticker) = &ticker {
            ticker.thread().unpark();
        }
        // The ticker may itself drop the last reference (after a sweep): it must not join itself.
        if let Some(ticker) = ticker
            && ticker.thread().id() != std::thread::current().id()
        {
            let _ = ticker.join();
        }
    }
}

impl RuntimeInner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, IdleCopies> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a copy that `pool` just put back as idle (called under the pool's lock), and
    /// returns the least recently used idle copies past the budget, for the caller to drop
    /// with [`drop_idle`](Self::drop_idle) once it released that lock.
    pub(crate) fn remember_idle(&self, pool: Weak<InstancePool>, seq: u64) -> Vec<(u64, Weak<InstancePool>)> {
        let mut idle = self.lock_idle();
        idle.by_seq.insert(seq, (Instant::now(), pool));
        let mut victims = Vec::new();
        while idle.by_seq.len() > self.idle_budget {
            match idle.by_seq.pop_first() {
                Some((seq, (_, pool))) => victims.push((seq, pool)),
                None => break,
            }
        }
        victims
    }

    /// A new sequence number for an idle copy.
    pub(crate) fn next_idle_seq(&self) -> u64 {
        self.idle_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets an idle copy that its pool took back for a call.
    pub(crate) fn forget_idle(&self, seq: u64) {
        self.lock_idle().by_seq.remove(&seq);
    }

    /// Drops the least recently used idle copy of any pool, to free a slot. Whether one was.
    pub(crate) fn evict_one(&self) -> bool {
        loop {
            let Some((seq, (_, pool))) = self.lock_idle().by_seq.pop_first() else { return false };
            if self.drop_idle(vec![(seq, pool)]) > 0 {
                return true;
            }
        }
    }

    /// Drops idle copies unused for longer than `age`.
    fn evict_older_than(&self, age: Duration) {
        let Some(cutoff) = Instant::now().checked_sub(age) else { return };
        let victims: Vec<(u64, Weak<InstancePool>)> = {
            let mut idle = self.lock_idle();
            let (old, young): (BTreeMap<_, _>, BTreeMap<_, _>) =
                std::mem::take(&mut idle.by_seq).into_iter().partition(|(_, (at, _))| *at <= cutoff);
            idle.by_seq = young;
            old.into_iter().map(|(seq, (_, pool))| (seq, pool)).collect()
        };
        self.drop_idle(victims);
    }

    /// Takes these copies out of their pools and drops them (outside the runtime's lock; never
    /// with a pool's lock held).
    pub(crate) fn drop_idle(&self, victims: Vec<(u64, Weak<InstancePool>)>) -> usize {
        let mut dropped = 0;
        for (seq, pool) in victims {
            if let Some(pool) = pool.upgrade()
                && pool.drop_idle(seq)
            {
                dropped += 1;
            }
        }
        self.stats.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        crate::telemetry::metrics().plugin_copy_evictions.inc_by(dropped as u64);
        dropped
    }
}

/// How often the ticker drops idle copies past their idle time.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Ticks in a row with no wasm run after which the ticker sleeps until wasm runs again.
const PARK_AFTER_IDLE_TICKS: u32 = 100;

/// [`RuntimeInner::running`]: one execution in progress, and one more started.
const RUNNING_START: u64 = 1 + (1 << 32);
const RUNNING_COUNT: u64 = u32::MAX as u64;

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
    /// Its `on_call` and `on_result` series of the hook-duration histogram, made at first use.
    hook_timers: [OnceLock<prometheus_client::metrics::histogram::Histogram>; 2],
    /// What its `configure` answered for the configurations it took (see [`configured`]).
    configured: configured::ConfiguredCache,
}

impl LoadedPlugin {
    /// Records how long one of its hooks (`on_call`, `on_result`) ran.
    pub(crate) fn record_hook(&self, hook: &'static str, elapsed: Duration) {
        let index = usize::from(hook != "on_call");
        self.hook_timers[index]
            .get_or_init(|| crate::telemetry::metrics().plugin_hook_timer(&self.name, hook))
            .observe(elapsed.as_secs_f64());
    }

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
        let running = Arc::new(AtomicU64::new(0));
        let stats = RuntimeStats::default();
        let ticks = stats.epoch_ticks.clone();
        let inner = Arc::new(RuntimeInner {
            engine: engine.clone(),
            linker,
            max_memory_bytes: config.max_memory_bytes,
            cache,
            stats,
            max_instances: config.max_instances,
            idle: Mutex::default(),
            idle_seq: AtomicU64::new(0),
            idle_budget: config.idle_budget as usize,
            idle_time: config.idle_time,
            copy_wait: config.copy_wait,
            stop_ticker: stop_ticker.clone(),
            ticker: Mutex::new(None),
            running: running.clone(),
            ticker_thread: OnceLock::new(),
        });
        // One thread advances the epoch every tick while wasm runs, sleeps while none does, and
        // about once a second drops idle copies past their idle time.
        let ticker = {
            let (weak, stop, tick) = (Arc::downgrade(&inner), stop_ticker, config.epoch_tick);
            std::thread::Builder::new()
                .name("ovsb-epoch".into())
                .spawn(move || {
                    let (mut last_sweep, mut idle_ticks, mut seen) = (Instant::now(), 0u32, 0u64);
                    // Whether wasm runs now or ran since the last look.
                    let mut active = || {
                        let now = running.load(Ordering::Acquire);
                        let active = now & RUNNING_COUNT > 0 || now >> 32 != seen >> 32;
                        seen = now;
                        active
                    };
                    while !stop.load(Ordering::Relaxed) {
                        if active() {
                            idle_ticks = 0;
                        }
                        // Under load, wasm stops and starts between hooks all the time: the
                        // ticker sleeps only after a stretch with nothing running, so a busy
                        // gateway does not wake it once per hook.
                        if idle_ticks >= PARK_AFTER_IDLE_TICKS {
                            // `Running` unparks: a wake-up that comes before this park is kept.
                            let next_sweep = last_sweep + SWEEP_EVERY;
                            std::thread::park_timeout(next_sweep.saturating_duration_since(Instant::now()));
                        } else {
                            std::thread::sleep(tick);
                            engine.increment_epoch();
                            ticks.fetch_add(1, Ordering::Relaxed);
                            idle_ticks += 1;
                        }
                        if last_sweep.elapsed() >= SWEEP_EVERY {
                            last_sweep = Instant::now();
                            if let Some(inner) = weak.upgrade() {
                                inner.evict_older_than(inner.idle_time);
                            }
                        }
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?
        };
        let _ = inner.ticker_thread.set(ticker.thread().clone());
        *inner.ticker.lock().unwrap_or_else(|p| p.into_inner()) = Some(ticker);
        Ok(PluginRuntime { inner })
    }

    /// The largest memory cap a plugin copy may be given (`runtime.max_memory_bytes`).
    pub fn max_memory_bytes(&self) -> u64 {
        self.inner.max_memory_bytes
    }

    /// The runtime's counters.
    pub fn stats(&self) -> &RuntimeStats {
        &self.inner.stats
    }

    /// Idle copies kept now, across all instances.
    pub fn idle_copies(&self) -> usize {
        self.inner.lock_idle().by_seq.len()
    }

    /// Drops every idle copy unused for longer than `age` now (the ticker does this with the
    /// configured idle time about once a second).
    pub fn evict_idle_older_than(&self, age: Duration) {
        self.inner.evict_older_than(age);
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
        Ok(Arc::new(LoadedPlugin {
            name: name.into(),
            digest,
            pre,
            hook_timers: Default::default(),
            configured: Default::default(),
        }))
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
        self.pool_sealed(plugin, config, limits, instance_id, kv, Arc::from([])).await
    }

    /// [`pool`](Self::pool) for a configuration that holds the opened `sealed` values: every
    /// one is replaced by `[sealed]` in what the plugin logs, at `configure` and at every call.
    pub async fn pool_sealed(
        &self,
        plugin: &Arc<LoadedPlugin>,
        config: &str,
        limits: PluginLimits,
        instance_id: impl Into<Arc<str>>,
        kv: Arc<KvStore>,
        sealed: Arc<[String]>,
    ) -> Result<Arc<InstancePool>, ConfigureError> {
        limits
            .validate(self.inner.max_memory_bytes)
            .map_err(|reason| ConfigureError::Failed { plugin: plugin.name.to_string(), reason })?;
        InstancePool::create(self.inner.clone(), plugin.clone(), config, limits, instance_id.into(), kv, sealed).await
    }
}
