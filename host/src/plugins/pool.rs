//! Copies of one plugin with one configuration, for one service instance, made on demand.
//!
//! A call takes an idle copy out of the pool, or instantiates one from the `InstancePre`
//! (pooling allocator, copy-on-write memory image) and runs `configure` on it; it runs one
//! export under the copy's memory cap and time budget, and puts the copy back as idle. Idle
//! copies are the runtime's to drop (least recently used past the runtime's idle budget, or
//! unused for its idle time), so an instance that serves no calls holds none. A copy that
//! failed, or whose memory grew past three quarters of its cap, is dropped instead. When every
//! slot of the runtime holds a busy copy, a call waits up to the runtime's `copy_wait` for one
//! and then fails with [`FailureKind::Capacity`].

use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::{
    self,
    ovsb::plugin::types::{Call, Decision, Hooks, Outcome, RpcError},
};
use super::errors::{ConfigureError, FailureKind, PluginFailure};
use super::kv::KvStore;
use super::methods::MethodSelection;
use super::state::{BudgetExceeded, CopySettings, MemoryCapExceeded, StoreState, Upstream};
use super::{LoadedPlugin, RuntimeInner};
use crate::config::{Isolation, PluginLimits};

struct PluginCopy {
    store: Store<StoreState>,
    exports: bindings::Plugin,
    _alive: Alive,
}

/// Counts a copy as alive until it is dropped.
struct Alive(Arc<RuntimeInner>);

impl Alive {
    fn new(runtime: &Arc<RuntimeInner>) -> Self {
        runtime.stats.alive.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics().plugin_copies.inc();
        Alive(runtime.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.stats.alive.fetch_sub(1, Ordering::Relaxed);
        crate::telemetry::metrics().plugin_copies.dec();
    }
}

/// Warm copies of one plugin with one configuration, for one service instance.
pub struct InstancePool {
    runtime: Arc<RuntimeInner>,
    plugin: Arc<LoadedPlugin>,
    /// Shared with the other pools that run the same configuration (see `super::configured`).
    config: Arc<str>,
    limits: PluginLimits,
    settings: CopySettings,
    /// Idle copies with their sequence numbers in the runtime's idle set, newest last.
    idle: Mutex<Vec<(u64, PluginCopy)>>,
    me: Weak<InstancePool>,
    permits: tokio::sync::Semaphore,
    /// The hooks to call: what `configure` declared, less those a copy declined since.
    hooks: AtomicU8,
    /// The calls the plugin selected in `configure` (`None`: every call); set by the first copy.
    selection: OnceLock<Option<Arc<MethodSelection>>>,
    /// What its `on-call` decided for this instance, counted by the host (a cache's hits and
    /// misses, a filter's refusals), never read from the plugin's own keys.
    decisions: Decisions,
}

/// The decisions of one plugin's `on-call` for one instance, counted by the chain.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Answered with a result itself: the node was not asked (a cache hit).
    pub answered: std::sync::atomic::AtomicU64,
    /// Answered with an error of its own (a refusal).
    pub refused: std::sync::atomic::AtomicU64,
    /// Passed on, possibly rewritten (a cache miss).
    pub forwarded: std::sync::atomic::AtomicU64,
}

impl InstancePool {
    pub(crate) async fn create(
        runtime: Arc<RuntimeInner>,
        plugin: Arc<LoadedPlugin>,
        config: &str,
        limits: PluginLimits,
        instance_id: Arc<str>,
        kv: Arc<KvStore>,
        sealed: Arc<[String]>,
    ) -> Result<Arc<Self>, ConfigureError> {
        let settings = CopySettings {
            sealed,
            plugin: plugin.name.clone(),
            instance_id,
            kv,
            memory_cap: limits.memory_bytes,
            budget: limits.call_budget(),
            max_upstream_calls: limits.max_upstream_calls,
            log_lines_per_second: limits.log_lines_per_second,
        };
        let known = plugin.configured.get(config, &limits);
        let text = known.as_ref().map_or_else(|| Arc::from(config), |(text, _)| text.clone());
        let pool = Arc::new_cyclic(|me| InstancePool {
            runtime,
            plugin,
            config: text,
            limits,
            settings,
            idle: Mutex::new(Vec::new()),
            me: me.clone(),
            permits: tokio::sync::Semaphore::new(limits.max_concurrency),
            hooks: AtomicU8::new(hook_bits(Hooks::all())),
            selection: OnceLock::new(),
            decisions: Decisions::default(),
        });
        // `configure` runs now, so that a bad configuration is refused at provision time; the
        // copy is then released: calls make their own. A configuration this version of the
        // plugin already took is not asked again (see `super::configured`).
        if let Some((_, known)) = known {
            pool.hooks.store(known.hooks, Ordering::Relaxed);
            let _ = pool.selection.set(known.selection);
            return Ok(pool);
        }
        drop(pool.instantiate().await?);
        let answer = super::configured::Configured {
            hooks: pool.hooks.load(Ordering::Relaxed),
            selection: pool.selection.get().cloned().flatten(),
        };
        pool.plugin.configured.insert(pool.config.clone(), limits, answer);
        Ok(pool)
    }

    /// What the plugin's `on-call` decided for this instance so far.
    pub fn decisions(&self) -> &Decisions {
        &self.decisions
    }

    /// The plugin's name.
    pub fn plugin_name(&self) -> &str {
        self.plugin.name()
    }

    /// Records how long one of the plugin's hooks (`on_call`, `on_result`) ran.
    pub fn record_hook(&self, hook: &'static str, elapsed: Duration) {
        self.plugin.record_hook(hook, elapsed);
    }

    /// The configuration (JSON text) every copy was configured with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The hooks the plugin declared for this configuration.
    pub fn hooks(&self) -> Hooks {
        hooks_from_bits(self.hooks.load(Ordering::Relaxed))
    }

    /// Whether the plugin sees a call of `method` (its `select-methods` declarations); the
    /// chain passes the others by without a wasm call.
    pub fn sees(&self, method: &str) -> bool {
        self.selection.get().and_then(Option::as_ref).is_none_or(|selection| selection.sees(method))
    }

    /// Copies idle in the pool now.
    pub fn idle_copies(&self) -> usize {
        self.lock_idle().len()
    }

    /// Runs the plugin's `on-call`.
    pub async fn on_call(
        &self,
        ctx: &super::CallContext,
        call: &Call,
        upstream: &Arc<dyn Upstream>,
    ) -> Result<Decision, PluginFailure> {
        let _permit = self.permit().await?;
        let _running = self.runtime.running();
        let mut copy = self.checkout(ctx, upstream).await?;
        let result = copy.exports.call_on_call(&mut copy.store, call).await;
        let decision = self.settle(copy, result)?;
        let size = match &decision {
            Decision::Forward(call) => call.method.len() + call.params.as_ref().map_or(0, String::len),
            Decision::Respond(outcome) => outcome_size(outcome),
        };
        self.check_size(size)?;
        Ok(decision)
    }

    /// Runs the plugin's `on-result`.
    pub async fn on_result(
        &self,
        ctx: &super::CallContext,
        call: &Call,
        outcome: &Outcome,
        upstream: &Arc<dyn Upstream>,
    ) -> Result<Outcome, PluginFailure> {
        let _permit = self.permit().await?;
        let _running = self.runtime.running();
        let mut copy = self.checkout(ctx, upstream).await?;
        let result = copy.exports.call_on_result(&mut copy.store, call, outcome).await;
        let outcome = self.settle(copy, result)?;
        self.check_size(outcome_size(&outcome))?;
        Ok(outcome)
    }

    /// A copy ready for one export call: the call's context and upstream set, the time budget
    /// started. [`settle`](Self::settle) ends the call.
    async fn checkout(
        &self,
        ctx: &super::CallContext,
        upstream: &Arc<dyn Upstream>,
    ) -> Result<PluginCopy, PluginFailure> {
        let mut copy = self.take().await?;
        copy.store.data_mut().begin_call(Some(ctx.clone()), Some(upstream.clone()));
        // One tick: a long call runs in one-tick slices (see `StoreState::on_epoch_deadline`).
        copy.store.set_epoch_deadline(1);
        Ok(copy)
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PluginFailure> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        match tokio::time::timeout(self.limits.call_budget(), self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.failure(FailureKind::Overloaded)),
        }
    }

    /// An idle copy, or a new one.
    async fn take(&self) -> Result<PluginCopy, PluginFailure> {
        if self.limits.isolation == Isolation::Pooled {
            let mut idle = self.lock_idle();
            if let Some((seq, copy)) = idle.pop() {
                self.runtime.forget_idle(seq);
                return Ok(copy);
            }
        }
        self.instantiate().await.map_err(|err| {
            let detail = match err {
                ConfigureError::Rejected { message, .. } => format!("configure failed: {message}"),
                ConfigureError::Failed { reason, .. } => reason,
                ConfigureError::Capacity { limit, .. } => {
                    crate::telemetry::metrics().record_plugin_refusal("runtime_copies");
                    return self.failure(FailureKind::Capacity(limit));
                }
            };
            tracing::warn!(
                plugin = %self.plugin.name,
                instance = %self.settings.instance_id,
                "no copy of the plugin could start for a call: {detail}"
            );
            self.failure(FailureKind::Unavailable(detail))
        })
    }

    /// Instantiates a copy and runs `configure` on it. When every slot of the runtime is taken,
    /// drops the least recently used idle copy of any instance and tries again; when none is
    /// idle, waits up to `copy_wait` for a busy one to finish.
    async fn instantiate(&self) -> Result<PluginCopy, ConfigureError> {
        let deadline = Instant::now() + self.runtime.copy_wait;
        loop {
            match self.instantiate_once().await {
                Err(ConfigureError::Capacity { .. }) if self.runtime.evict_one() => {}
                Err(full @ ConfigureError::Capacity { .. }) if Instant::now() >= deadline => return Err(full),
                Err(ConfigureError::Capacity { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
                done => return done,
            }
        }
    }

    async fn instantiate_once(&self) -> Result<PluginCopy, ConfigureError> {
        let runtime = &self.runtime;
        let _running = runtime.running();
        let mut store = Store::new(&runtime.engine, StoreState::new(&self.settings));
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_callback(StoreState::on_epoch_deadline);
        store.data_mut().begin_call(None, None);
        store.set_epoch_deadline(1);
        let failed = |e: wasmtime::Error| {
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some()
                || format!("{e:#}").contains("maximum concurrent limit of")
            {
                return ConfigureError::Capacity { plugin: self.plugin.name.to_string(), limit: runtime.max_instances };
            }
            ConfigureError::Failed {
                plugin: self.plugin.name.to_string(),
                reason: PluginFailure { plugin: self.plugin.name.clone(), kind: describe_error(&e, &self.settings) }
                    .to_string(),
            }
        };
        let alive = Alive::new(runtime);
        let exports = self.plugin.pre.instantiate_async(&mut store).await.map_err(failed)?;
        runtime.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        store.data_mut().configuring = true;
        let configured = exports.call_configure(&mut store, &self.config).await.map_err(failed)?;
        store.data_mut().configuring = false;
        let selection = std::mem::replace(&mut store.data_mut().selection, Ok(MethodSelection::default()));
        match (configured, selection) {
            (Ok(hooks), Ok(selection)) => {
                store.data_mut().end_call();
                self.hooks.fetch_and(hook_bits(hooks), Ordering::Relaxed);
                // Every copy is configured alike: the first copy's selection is the pool's.
                let _ = self.selection.set((!selection.is_empty()).then(|| Arc::new(selection)));
                Ok(PluginCopy { store, exports, _alive: alive })
            }
            (Err(message), _) | (Ok(_), Err(message)) => {
                Err(ConfigureError::Rejected { plugin: self.plugin.name.to_string(), message })
            }
        }
    }

    /// Ends an export call: returns the copy to the pool after success, drops it after a failure.
    fn settle<T>(&self, mut copy: PluginCopy, result: wasmtime::Result<T>) -> Result<T, PluginFailure> {
        copy.store.data_mut().end_call();
        let declined = copy.store.data().declined;
        if declined != Hooks::empty() {
            self.hooks.fetch_and(!hook_bits(declined), Ordering::Relaxed);
        }
        match result {
            Ok(value) => {
                self.give_back(copy);
                Ok(value)
            }
            Err(err) => {
                self.runtime.stats.recycled.fetch_add(1, Ordering::Relaxed);
                let kind = describe_error(&err, &self.settings);
                tracing::warn!(
                    plugin = %self.plugin.name,
                    instance = %self.settings.instance_id,
                    reason = kind.reason(),
                    "plugin call failed; its copy is replaced: {err:#}"
                );
                Err(self.failure(kind))
            }
        }
    }

    fn give_back(&self, copy: PluginCopy) {
        let high_water = copy.store.data().memory.high_water;
        let keep = self.limits.isolation == Isolation::Pooled && high_water <= self.limits.memory_bytes / 4 * 3;
        if !keep {
            if self.limits.isolation == Isolation::Pooled {
                self.runtime.stats.recycled.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let seq = self.runtime.next_idle_seq();
        let victims = {
            let mut idle = self.lock_idle();
            if idle.len() >= self.limits.max_idle {
                return;
            }
            idle.push((seq, copy));
            // Recorded under the pool's lock, so that a `take` cannot pop the copy before it
            // is recorded (which would leave a stale entry in the runtime's idle set).
            self.runtime.remember_idle(self.me.clone(), seq)
        };
        self.runtime.drop_idle(victims);
    }

    /// Drops the idle copy `seq`, if the pool still holds it (the runtime's eviction).
    pub(crate) fn drop_idle(&self, seq: u64) -> bool {
        let copy = {
            let mut idle = self.lock_idle();
            let copy = idle.iter().position(|(s, _)| *s == seq).map(|at| idle.remove(at));
            if idle.is_empty() {
                // An idle instance holds no room for copies either (a copy's entry is a few
                // hundred bytes; pools of instances that went quiet would keep them all).
                *idle = Vec::new();
            }
            copy.map(|copy| (copy, idle.is_empty()))
        };
        let Some((copy, last)) = copy else { return false };
        drop(copy);
        if last {
            // The instance has gone quiet: its key-value store keeps its live entries only.
            self.settings.kv.sweep_expired();
        }
        true
    }

    fn check_size(&self, size: usize) -> Result<(), PluginFailure> {
        if size > self.limits.max_output_bytes {
            return Err(self.failure(FailureKind::Oversize(self.limits.max_output_bytes)));
        }
        Ok(())
    }

    fn failure(&self, kind: FailureKind) -> PluginFailure {
        PluginFailure { plugin: self.plugin.name.clone(), kind }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<(u64, PluginCopy)>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn hook_bits(hooks: Hooks) -> u8 {
    u8::from(hooks.contains(Hooks::ON_CALL)) | (u8::from(hooks.contains(Hooks::ON_RESULT)) << 1)
}

fn hooks_from_bits(bits: u8) -> Hooks {
    let mut hooks = Hooks::empty();
    if bits & 1 != 0 {
        hooks |= Hooks::ON_CALL;
    }
    if bits & 2 != 0 {
        hooks |= Hooks::ON_RESULT;
    }
    hooks
}

fn outcome_size(outcome: &Outcome) -> usize {
    match outcome {
        Ok(json) => json.len(),
        Err(RpcError { message, data, .. }) => message.len() + data.as_ref().map_or(0, String::len),
    }
}

/// Classifies a wasmtime error: our own limit errors first, then traps.
fn describe_error(err: &wasmtime::Error, settings: &CopySettings) -> FailureKind {
    if err.downcast_ref::<BudgetExceeded>().is_some() {
        return FailureKind::Timeout(settings.budget);
    }
    if err.downcast_ref::<MemoryCapExceeded>().is_some() {
        return FailureKind::Memory(settings.memory_cap);
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => FailureKind::Trap(trap.to_string()),
        None => FailureKind::Trap(format!("{err:#}").lines().next().unwrap_or_default().to_string()),
    }
}
