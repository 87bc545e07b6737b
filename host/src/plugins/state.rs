//! What each plugin copy's `Store` holds, and the host functions (`ovsb:plugin/host`) it serves.
//!
//! A `StoreState` belongs to one copy of one plugin in one service instance's chain; it is never
//! shared between instances, so a plugin's memory never carries one customer's data to another.
//! Per-call state (the upstream, the time budget bookkeeping) is set by the pool before each call
//! and cleared after it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::ovsb::plugin::host::Host;
use super::kv::KvStore;
use super::methods::MethodSelection;
use crate::call::{Call, CallContext, Context, Hooks, Level, Outcome, RpcError};

/// Longest log line a plugin may write; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;
/// JSON-RPC code of an upstream call a plugin may not make (cap reached).
pub const UPSTREAM_CAP_CODE: i32 = crate::call::codes::LIMIT_EXCEEDED;

pub use crate::call::Upstream;

/// The plugin grew its memory past its cap (the error behind the trap).
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded")]
pub(crate) struct MemoryCapExceeded {
    pub cap: u64,
}

/// The plugin ran past its time budget (the error behind the trap).
#[derive(Debug, thiserror::Error)]
#[error("time budget of {budget:?} exceeded")]
pub(crate) struct BudgetExceeded {
    pub budget: Duration,
}

/// Caps linear memory and tables; remembers the largest memory the plugin reached.
pub(crate) struct MemoryCap {
    cap: u64,
    pub high_water: u64,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            return Err(wasmtime::Error::new(MemoryCapExceeded { cap: self.cap }));
        }
        self.high_water = self.high_water.max(desired as u64);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Token bucket for a plugin copy's log lines.
struct LogLimiter {
    per_second: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl LogLimiter {
    fn new(per_second: u32) -> Self {
        LogLimiter { per_second: per_second as f64, tokens: per_second as f64, last: Instant::now(), dropped: 0 }
    }

    /// Whether a line may be written now.
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// Bookkeeping of the call in progress.
///
/// The budget counts the plugin's own running time only: the call runs in slices between
/// epoch deadlines, and after each slice it yields to the executor (so other tenants' tasks
/// run on this thread). A slice's running time is from its start (the call's start, or the
/// moment the executor resumed it) to the deadline, less time spent waiting in host calls.
pub(crate) struct CallState {
    context: Option<CallContext>,
    upstream: Option<Arc<dyn Upstream>>,
    upstream_left: u32,
    /// Running time of the finished slices.
    spent: Duration,
    /// When the current slice started.
    slice_start: Instant,
    /// `host_wait` when the current slice started.
    slice_host_wait: Duration,
    /// Time spent waiting in host calls during this call.
    host_wait: Duration,
    /// Set by the yield future when the executor resumes the call: the next slice's start.
    resumed: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl CallState {
    fn new(
        context: Option<CallContext>,
        upstream: Option<Arc<dyn Upstream>>,
        upstream_left: u32,
        resumed: Arc<std::sync::Mutex<Option<Instant>>>,
    ) -> Self {
        CallState {
            context,
            upstream,
            upstream_left,
            spent: Duration::ZERO,
            slice_start: Instant::now(),
            slice_host_wait: Duration::ZERO,
            host_wait: Duration::ZERO,
            resumed,
        }
    }
}

/// The fixed identity and limits of a plugin copy.
pub(crate) struct CopySettings {
    /// Sealed values opened for the plugin's configuration: never in its log lines.
    pub sealed: Arc<[String]>,
    pub plugin: Arc<str>,
    pub instance_id: Arc<str>,
    pub kv: Arc<KvStore>,
    pub memory_cap: u64,
    pub budget: Duration,
    pub max_upstream_calls: u32,
    pub log_lines_per_second: u32,
}

/// The data of one plugin copy's `Store`.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub memory: MemoryCap,
    plugin: Arc<str>,
    instance_id: Arc<str>,
    /// See [`CopySettings::sealed`].
    sealed: Arc<[String]>,
    kv: Arc<KvStore>,
    /// `<plugin name>/`: every key this plugin uses is prefixed with it.
    kv_prefix: String,
    /// The last full key a host call used (its room is reused).
    kv_key: String,
    log: LogLimiter,
    budget: Duration,
    max_upstream_calls: u32,
    call: CallState,
    /// Hooks the plugin said only pass things through (`decline-hook`).
    pub declined: Hooks,
    /// Whether `configure` is running (the only time `select-methods` counts).
    pub configuring: bool,
    /// The calls the plugin selected during `configure` (`select-methods`), or why the
    /// selection is refused.
    pub selection: Result<MethodSelection, String>,
}

impl StoreState {
    pub fn new(settings: &CopySettings) -> Self {
        StoreState {
            wasi: locked_down_wasi(),
            table: ResourceTable::new(),
            memory: MemoryCap { cap: settings.memory_cap, high_water: 0 },
            plugin: settings.plugin.clone(),
            instance_id: settings.instance_id.clone(),
            sealed: settings.sealed.clone(),
            kv: settings.kv.clone(),
            kv_prefix: format!("{}/", settings.plugin),
            kv_key: String::new(),
            log: LogLimiter::new(settings.log_lines_per_second),
            budget: settings.budget,
            max_upstream_calls: settings.max_upstream_calls,
            declined: Hooks::empty(),
            configuring: false,
            selection: Ok(MethodSelection::default()),
            call: CallState::new(None, None, 0, Arc::default()),
        }
    }

    /// Starts the bookkeeping of a call (or of `configure`, with no upstream). The copy's
    /// `resumed` cell is reused (no allocation per call): no yield of an earlier call is
    /// pending, since a call's yields end before it does (or are dropped with it).
    pub fn begin_call(&mut self, context: Option<CallContext>, upstream: Option<Arc<dyn Upstream>>) {
        let resumed = self.call.resumed.clone();
        *resumed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.call = CallState::new(context, upstream, self.max_upstream_calls, resumed);
    }

    /// Ends the call: the copy keeps no reference to the caller's upstream.
    pub fn end_call(&mut self) {
        self.call.context = None;
        self.call.upstream = None;
    }

    /// The epoch-deadline callback: traps once the plugin's own running time (see [`CallState`])
    /// passes the budget; else yields to the executor for one turn and sets the next deadline
    /// one tick ahead. So a plugin that computes for long holds its thread for at most one tick
    /// at a time, and tenants that share the thread wait at most that long for each such slice.
    pub fn on_epoch_deadline(mut ctx: StoreContextMut<'_, Self>) -> wasmtime::Result<UpdateDeadline> {
        let state = ctx.data_mut();
        let call = &mut state.call;
        let now = Instant::now();
        if let Some(resumed) = call.resumed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            call.slice_start = resumed;
        }
        let slice =
            now.saturating_duration_since(call.slice_start).saturating_sub(call.host_wait - call.slice_host_wait);
        call.spent += slice;
        call.slice_start = now;
        call.slice_host_wait = call.host_wait;
        if call.spent >= state.budget {
            return Err(wasmtime::Error::new(BudgetExceeded { budget: state.budget }));
        }
        let resumed = call.resumed.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                tokio::task::yield_now().await;
                *resumed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }),
        ))
    }

    /// `f` of the store and the full key of `key` (`<plugin name>/<key>`), built in a buffer
    /// the copy keeps (no allocation per host call).
    fn with_key<R>(&mut self, key: &str, f: impl FnOnce(&KvStore, &str) -> R) -> R {
        let mut full = std::mem::take(&mut self.kv_key);
        full.clear();
        full.push_str(&self.kv_prefix);
        full.push_str(key);
        let result = f(&self.kv, &full);
        self.kv_key = full;
        result
    }
}

/// WASI with nothing in it: no preopened directories, no environment, no arguments, no
/// network, empty stdin, discarded stdout/stderr, and clocks frozen at the epoch. Rust's std
/// for wasm32-wasip2 links against WASI, so the interfaces exist, but they give nothing away.
fn locked_down_wasi() -> WasiCtx {
    WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .build()
}

/// A clock that always reads zero: plugins tell time through `now-ms` only.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl crate::call::contract::Host for StoreState {}

impl Host for StoreState {
    fn log(&mut self, level: Level, message: String) {
        if !self.log.admit() {
            return;
        }
        let dropped = std::mem::take(&mut self.log.dropped);
        let mut message = message;
        // Before the cut: a sealed value cut in half would no longer be found.
        if !self.sealed.is_empty() {
            message = crate::identity::redact(&message, &self.sealed);
        }
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }

        let (plugin, instance) = (&*self.plugin, &*self.instance_id);
        match level {
            Level::Trace => {
                tracing::trace!(target: "ovsb::plugin", plugin, instance, dropped, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "ovsb::plugin", plugin, instance, dropped, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "ovsb::plugin", plugin, instance, dropped, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "ovsb::plugin", plugin, instance, dropped, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "ovsb::plugin", plugin, instance, dropped, "{message}")
            }
        }
    }

    async fn upstream(&mut self, call: Call) -> Outcome {
        let Some(upstream) = self.call.upstream.clone() else {
            return Err(RpcError {
                code: UPSTREAM_CAP_CODE,
                message: "upstream calls are not available during configure".to_string(),
                data: None,
            });
        };
        if self.call.upstream_left == 0 {
            return Err(crate::call::blamed(
                RpcError {
                    code: UPSTREAM_CAP_CODE,
                    message: format!(
                        "plugin `{}` exceeded its {} upstream calls per call",
                        self.plugin, self.max_upstream_calls
                    ),
                    data: None,
                },
                crate::call::Blame::Limit,
            ));
        }
        self.call.upstream_left -= 1;
        let waited = Instant::now();
        let outcome = upstream.call(&call).await;
        self.call.host_wait += waited.elapsed();
        outcome
    }

    fn call_context(&mut self) -> Context {
        match &self.call.context {
            Some(context) => context.contract(),
            // During configure: only the instance is known.
            None => Context {
                instance_id: self.instance_id.to_string(),
                binding_id: None,
                plan: String::new(),
                request_id: String::new(),
            },
        }
    }

    fn decline_hook(&mut self, hook: Hooks) {
        self.declined |= hook;
    }

    fn select_methods(&mut self, patterns: Vec<String>, except: bool) {
        if !self.configuring {
            return;
        }
        if let Ok(selection) = &mut self.selection
            && let Err(refused) = selection.add(patterns, except)
        {
            self.selection = Err(refused);
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.with_key(&key, |kv, key| kv.get(key))
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), String> {
        self.with_key(&key, |kv, key| kv.set(key, value, ttl_ms.map(Duration::from_millis)))
    }

    fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
        self.with_key(&key, |kv, key| kv.incr(key, delta, ttl_ms.map(Duration::from_millis)))
    }

    fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        self.with_key(&key, |kv, key| {
            kv.compare_and_swap(key, expected.as_deref(), new, ttl_ms.map(Duration::from_millis))
        })
    }

    fn kv_delete(&mut self, key: String) -> bool {
        self.with_key(&key, |kv, key| kv.delete(key))
    }
}
