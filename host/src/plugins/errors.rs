//! What can go wrong loading, configuring and running plugins, and how a failure becomes the
//! JSON-RPC error a client sees.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::call::RpcError;

/// JSON-RPC code of every plugin failure (trap, limit, overload). The class is in `data.reason`.
pub const PLUGIN_FAILURE_CODE: i32 = crate::call::codes::INTERNAL_ERROR;

/// A plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin `{name}`: cannot read {}: {source}", path.display())]
    Read {
        /// The plugin's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly component (a core module, another format, corrupt).
    #[error("plugin `{name}` is not a valid WebAssembly component: {reason}")]
    NotAComponent {
        /// The plugin's name.
        name: String,
        /// What the compiler said.
        reason: String,
    },
    /// The plugin's configuration schema file is missing or not a JSON Schema object.
    #[error("plugin `{name}`: schema {path}: {reason}")]
    Schema {
        /// The plugin's name.
        name: String,
        /// The schema file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is not the one the configuration pinned.
    #[error("plugin `{name}`: sha256 is {actual}, the configuration expects {expected}")]
    Digest {
        /// The plugin's name.
        name: String,
        /// The configured digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The component does not implement the `ovsb:plugin/plugin@0.1.0` world (wrong exports, or
    /// imports the host does not provide).
    #[error("plugin `{name}` does not implement the world ovsb:plugin/plugin@0.1.0: {reason}")]
    WrongWorld {
        /// The plugin's name.
        name: String,
        /// What is missing or extra.
        reason: String,
    },
}

/// A plugin refused its configuration, or the first copy could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    /// The plugin's `configure` returned an error: the message is the plugin's own, meant for
    /// the operator (the broker answers 400 with it).
    #[error("plugin `{plugin}` rejected its configuration: {message}")]
    Rejected {
        /// The plugin's name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin failed while configuring (trap, limit) or could not be instantiated.
    #[error("plugin `{plugin}` failed while configuring: {reason}")]
    Failed {
        /// The plugin's name.
        plugin: String,
        /// What happened.
        reason: String,
    },
    /// Every slot of the runtime holds a busy copy: a capacity problem of the server, not of the
    /// configuration (the broker answers 422, naming the setting).
    #[error("the plugin runtime has no free slot for a copy of `{plugin}`: all {limit} (runtime.max_copies) are busy")]
    Capacity {
        /// The plugin's name.
        plugin: String,
        /// `runtime.max_copies`.
        limit: u32,
    },
}

/// The class of a plugin failure during a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The plugin trapped (a Rust panic is a trap); the text says where.
    Trap(String),
    /// The plugin ran longer than its time budget.
    Timeout(Duration),
    /// The plugin tried to grow its memory past its cap.
    Memory(u64),
    /// The plugin returned a string longer than the output limit.
    Oversize(usize),
    /// Every copy of the plugin was busy for longer than the call's budget.
    Overloaded,
    /// A new copy could not be instantiated or configured.
    Unavailable(String),
    /// Every slot of the runtime (`runtime.max_copies`, the number) held a busy copy for longer
    /// than the runtime's `copy_wait`.
    Capacity(u32),
}

impl FailureKind {
    /// A stable, short name for metrics and `data.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            FailureKind::Trap(_) => "trap",
            FailureKind::Timeout(_) => "timeout",
            FailureKind::Memory(_) => "memory",
            FailureKind::Oversize(_) => "oversize",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Unavailable(_) => "unavailable",
            FailureKind::Capacity(_) => "runtime_copies",
        }
    }
}

/// One plugin failed one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin `{plugin}` failed: {}", describe(kind))]
pub struct PluginFailure {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// What happened.
    pub kind: FailureKind,
}

fn describe(kind: &FailureKind) -> String {
    match kind {
        FailureKind::Trap(detail) => format!("trapped ({detail})"),
        FailureKind::Timeout(budget) => {
            format!("exceeded its time budget of {} ms", budget.as_millis())
        }
        FailureKind::Memory(cap) => format!("exceeded its memory cap of {} MiB", cap >> 20),
        FailureKind::Oversize(limit) => {
            format!("returned more than the output limit of {limit} bytes")
        }
        FailureKind::Overloaded => "all copies busy; try again".to_string(),
        FailureKind::Unavailable(detail) => format!("could not start a copy ({detail})"),
        FailureKind::Capacity(limit) => format!("no free slot among the runtime's {limit} copies; retry later"),
    }
}

impl PluginFailure {
    /// The JSON-RPC error for the client: a stable code, the class in `data.reason`, and no
    /// internals beyond the plugin's name.
    pub fn to_rpc_error(&self) -> RpcError {
        let mut data = serde_json::json!({ "plugin": &*self.plugin, "reason": self.kind.reason() });
        if let FailureKind::Unavailable(cause) = &self.kind {
            // Why no copy could start: the plugin's own configure error, or the runtime's limit.
            let first = cause.lines().next().unwrap_or_default();
            data["cause"] = first.chars().take(300).collect::<String>().into();
        }
        let message = match &self.kind {
            // The trap text may contain guest backtraces; clients get the class, logs the detail.
            FailureKind::Trap(_) => format!("plugin `{}` failed: trapped", self.plugin),
            FailureKind::Unavailable(_) => format!("plugin `{}` failed: unavailable", self.plugin),
            _ => self.to_string(),
        };
        if let FailureKind::Capacity(limit) = self.kind {
            // Not the plugin's fault: the server's capacity, a limit like the others (-32005).
            data["limit"] = limit.into();
            return RpcError { code: super::chain::SHARE_EXHAUSTED_CODE, message, data: Some(data.to_string()) };
        }
        RpcError { code: PLUGIN_FAILURE_CODE, message, data: Some(data.to_string()) }
    }

    /// [`Self::to_rpc_error`], blamed on the plugin (or, for the runtime's capacity, on a limit)
    /// for the call running now.
    pub fn to_blamed_rpc_error(&self) -> RpcError {
        let blame = match self.kind {
            FailureKind::Capacity(_) => crate::call::Blame::Limit,
            _ => crate::call::Blame::Plugin,
        };
        crate::call::blamed(self.to_rpc_error(), blame)
    }
}

/// The runtime itself could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine rejected the configuration.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    /// The on-disk cache directory could not be created.
    #[error("cannot create the plugin cache directory {}: {source}", path.display())]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A limit is out of range.
    #[error("invalid plugin limits: {0}")]
    Limits(String),
}
