//! The `ovsb` command line: argument parsing and the commands that are not long-running
//! services. `main.rs` only calls [`main`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::plugins::{
    Call, CallContext, Chain, ChainEntry, KvLimits, KvStore, Outcome, PluginLimits, PluginRuntime, RuntimeConfig,
    Upstream,
};

/// Open Validator Service Broker.
#[derive(Debug, Parser)]
#[command(name = "ovsb", version, about)]
pub struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for log pipelines. The level
    /// comes from OVSB_LOG (default `info`, e.g. `ovsb=debug`).
    #[arg(long, global = true, env = "OVSB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker and the gateway (the quick-start configuration when no --config is given).
    /// OVSB_* environment variables override the file. Stops on Ctrl-C or SIGTERM.
    Serve {
        /// The TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask the running `ovsb serve` of a data directory to reload its plugins (as SIGHUP does):
    /// `POST /reload` on its admin listener; prints its report; exits non-zero when something
    /// was not taken.
    Reload {
        /// The TOML configuration file the server runs (for `data_dir`); the built-in one when
        /// not given.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print ovsb's public identifier (the base64 X25519 encryption public key published in the
    /// catalog, as `eth_getEncryptionPublicKey` returns a wallet's), creating the key pair in the
    /// data directory if needed; `rotate` adds a new current key (older ones still open what was
    /// sealed to them; a running ovsb publishes it after a restart).
    Identity {
        /// The TOML configuration file (for `data_dir` and `broker.identity_keys`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// `show` (the default) or `rotate`.
        #[arg(default_value = "show", value_parser = ["show", "rotate"])]
        action: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file (syntax, keys, values, plugin files) without starting
    /// anything; exits non-zero naming the line and key of the first problem.
    Check {
        /// The TOML configuration file; the built-in one (what `ovsb serve` runs without
        /// --config) when not given.
        file: Option<PathBuf>,
    },
    /// Print the configuration `ovsb serve` would run: the file, or the built-in one when no
    /// file is given, with relative plugin paths made absolute, so that the output can be saved,
    /// edited and used with `--config` from anywhere. The OVSB_* variables set now that override
    /// it are named (not their values) at the top.
    Show {
        /// The TOML configuration file.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Create a new plugin project NAME (in --dir), in Rust, Python or JavaScript, that builds
    /// with one command and passes its own tests as it is; the commands are printed.
    New {
        /// The project name (lowercase letters, digits, '-', '_').
        name: String,
        /// The plugin's language.
        #[arg(long, default_value = "rust", value_parser = ["rust", "python", "js"])]
        lang: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin-sdk directory of an ovsb clone. Default: the plugin-sdk of the ovsb clone
        /// that --dir lies in (the project then names it by a relative path).
        #[arg(long, env = "OVSB_PLUGIN_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Compile the plugins a configuration declares into the compile cache `ovsb serve` reads
    /// (`runtime.cache_dir`, or `plugin-cache` in the data directory), checking each `sha256`
    /// pin, so that a start or an `ovsb reload` that adds them does not wait for compiling.
    Compile {
        /// The TOML configuration file; the built-in one when not given.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load a plugin, check that it implements ovsb:plugin@0.1.0, and run its `configure`.
    Check {
        /// The plugin's `.wasm` component.
        file: PathBuf,
        /// The plugin's configuration, as JSON.
        #[arg(long, default_value = "null")]
        config: String,
    },
    /// Run one JSON-RPC call through a plugin, with a stand-in node that answers every call
    /// with `--upstream-result`; prints the JSON-RPC response.
    Call {
        /// The plugin's `.wasm` component.
        file: PathBuf,
        /// The plugin's configuration, as JSON.
        #[arg(long, default_value = "null")]
        config: String,
        /// The method to call.
        #[arg(long)]
        method: String,
        /// The params, as JSON.
        #[arg(long)]
        params: Option<String>,
        /// What the stand-in node answers, as JSON.
        #[arg(long, default_value = "null")]
        upstream_result: String,
        /// The plugin's time budget per call (and for `configure`), in milliseconds: the
        /// gateway's default unless given (raise it to try a plugin on a busy machine).
        #[arg(long, default_value_t = PluginLimits::default().call_budget_ms)]
        budget_ms: u64,
    },
    /// Serve one JSON-RPC endpoint in front of a real node, with a chain of plugins, to try
    /// plugins by hand or measure them. Prints the endpoint URL; stops on Ctrl-C or SIGTERM.
    Serve {
        /// A plugin of the chain, in order; repeat for several.
        #[arg(long = "plugin")]
        plugins: Vec<PathBuf>,
        /// The configuration (JSON) of the plugin at the same position; `null` when missing.
        #[arg(long = "config")]
        configs: Vec<String>,
        /// The node's HTTP JSON-RPC URL; repeat for failover.
        #[arg(long = "upstream", required = true)]
        upstreams: Vec<String>,
        /// The node's WebSocket URL, for subscriptions.
        #[arg(long)]
        upstream_ws: Option<String>,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8645")]
        listen: std::net::SocketAddr,
        /// The key of the endpoint; a random one when not given.
        #[arg(long)]
        key: Option<String>,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("OVSB_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_format == "json" {
        logs.with_writer(std::io::stderr).json().init();
    } else {
        // One line per event, whatever a client or plugin put in a field (see OneLineStderr);
        // no colours, so that every escape byte in the log is one that was escaped.
        logs.with_writer(crate::telemetry::OneLineStderr).with_ansi(false).init();
    }
    // On one CPU (taskset, a cgroup quota of one core) the work-stealing scheduler brings no
    // parallelism and costs 10–17% of the gateway's calls/s (tests/load/gateway-load.sh): a
    // current-thread runtime serves there.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    // A worker about to sleep gives back what other threads freed of its memory (plugin copies
    // dropped by the sweeper after the calls stopped): see `crate::memory`.
    let runtime = match builder.enable_all().on_thread_park(crate::memory::collect_before_sleep).build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            if !output.is_empty() {
                // A closed stdout (a pipe whose reader left) is not an error worth failing for.
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "{output}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            // Each cause once: typed errors often already quote their source in their message.
            let mut message = String::new();
            for cause in err.chain().map(|c| c.to_string()) {
                if !message.contains(&cause) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&cause);
                }
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Config(ConfigCommand::Check { file: Some(file) }) => Ok(crate::config::Config::check_file(&file)?),
        Command::Config(ConfigCommand::Check { file: None }) => Ok(crate::config::Config::check_built_in()?),
        Command::Config(ConfigCommand::Show { file }) => config_show(file.as_deref()),
        Command::Reload { config } => reload(config).await,
        Command::Identity { config, action } => identity(config, &action),
        Command::Plugin(PluginCommand::New { name, lang, dir, sdk }) => {
            let lang: crate::scaffold::Lang = lang.parse()?;
            let made = crate::scaffold::new_project(&name, lang, &dir, sdk.as_deref())?;
            let (build, test) = lang.commands();
            let mut said = format!(
                "created {0} (SDK: {1})\n  build: cd {0} && {build}\n  test:  cd {0} && {test}",
                made.root.display(),
                made.sdk
            );
            if let Some(note) = made.note {
                said.push_str(&format!("\nnote: {note}"));
            }
            Ok(said)
        }
        Command::Plugin(PluginCommand::Compile { config }) => {
            let mut config = match &config {
                Some(file) => crate::config::Config::load(file)?,
                None => crate::config::Config::quick_start(),
            };
            config.apply_env(&crate::server::process_env())?;
            config.validate()?;
            let runtime = tokio::task::spawn_blocking(move || crate::server::compile_plugins(&config));
            Ok(runtime.await??)
        }
        Command::Plugin(PluginCommand::Serve { plugins, configs, upstreams, upstream_ws, listen, key }) => {
            serve_endpoint(plugins, configs, upstreams, upstream_ws, listen, key).await
        }
        Command::Plugin(PluginCommand::Check { file, config }) => {
            let chain = load_chain(&file, &config, PluginLimits::default()).await?;
            let pool = &chain.entries()[0].pool;
            Ok(format!("ok: plugin `{}` loaded and accepted its configuration", pool.plugin_name()))
        }
        Command::Plugin(PluginCommand::Call { file, config, method, params, upstream_result, budget_ms }) => {
            serde_json::from_str::<serde_json::Value>(&upstream_result).context("--upstream-result is not JSON")?;
            if let Some(params) = &params {
                serde_json::from_str::<serde_json::Value>(params).context("--params is not JSON")?;
            }
            anyhow::ensure!((1..=60_000).contains(&budget_ms), "--budget-ms must be between 1 and 60000");
            let limits = PluginLimits { call_budget_ms: budget_ms, ..PluginLimits::default() };
            let chain = load_chain(&file, &config, limits).await?;
            let ctx = CallContext {
                instance_id: "cli".into(),
                binding_id: None,
                plan: "cli".into(),
                request_id: "cli-1".into(),
            };
            let upstream: Arc<dyn Upstream> = Arc::new(Fixed(upstream_result));
            let outcome = chain.run(&ctx, Call { method, params }, &upstream).await;
            Ok(response_json(outcome))
        }
    }
}

/// `ovsb identity [show|rotate]`.
fn identity(file: Option<PathBuf>, action: &str) -> anyhow::Result<String> {
    let mut config = match &file {
        Some(file) => crate::config::Config::load(file)?,
        None => crate::config::Config::quick_start(),
    };
    config.apply_env(&crate::server::process_env())?;
    let keys = config.data_dir.join("identity.keys");
    if action == "rotate" {
        anyhow::ensure!(
            config.broker.identity_keys.is_empty(),
            "the identity keys come from broker.identity_keys / OVSB_IDENTITY_KEYS: put a new key first there"
        );
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
        return Ok(crate::identity::Identity::rotate(&keys)?);
    }
    let identity = crate::identity::Identity::load_or_create(&config.broker.identity_keys, &keys)?;
    Ok(identity.public_key())
}

/// `ovsb serve`: runs until Ctrl-C or SIGTERM, then drains and exits.
fn config_show(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let (text, source, dir) = match file {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            crate::config::Config::from_toml(&text, &file.display().to_string())?;
            let dir = file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            (text, file.display().to_string(), dir)
        }
        None => (
            crate::config::QUICK_START.to_string(),
            "the built-in configuration (examples/quick-start.toml, compiled into ovsb)".to_string(),
            crate::config::built_in_dir(),
        ),
    };
    let mut out = format!("# The configuration of `ovsb serve`: {source}.\n");
    let env = crate::server::process_env();
    let overrides: Vec<&str> = crate::config::Config::ENV_OVERRIDES
        .iter()
        .copied()
        .filter(|name| env.get(*name).is_some_and(|v| !v.is_empty()))
        .collect();
    if !overrides.is_empty() {
        out.push_str(&format!("# Overridden now by the environment: {}.\n", overrides.join(", ")));
    }
    out.push_str(&crate::config::absolute_paths(&text, &dir));
    Ok(out.trim_end().to_string())
}

async fn reload(file: Option<PathBuf>) -> anyhow::Result<String> {
    let mut config = match &file {
        Some(file) => crate::config::Config::load(file)?,
        None => crate::config::Config::quick_start(),
    };
    config.apply_env(&crate::server::process_env())?;
    let pid_file = config.data_dir.join(crate::server::PID_FILE);
    let pid = std::fs::read_to_string(&pid_file).with_context(|| {
        format!("no ovsb serve runs on {} ({} is missing)", config.data_dir.display(), pid_file.display())
    })?;
    // Where the server's admin listener is bound (its configured address may be port 0).
    let addr = std::fs::read_to_string(config.data_dir.join(crate::server::ADMIN_ADDR_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<std::net::SocketAddr>().ok())
        .unwrap_or(config.admin.listen);
    let host =
        if addr.ip().is_unspecified() { std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let response = reqwest::Client::new()
        .post(format!("http://{host}/reload"))
        .header(crate::admin::RELOAD_HEADER, "1")
        .timeout(std::time::Duration::from_secs(300))
        .send()
        .await
        .with_context(|| format!("ovsb serve (pid {}) does not answer at {host}", pid.trim()))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() { Ok(body) } else { anyhow::bail!("the reload answered {status}: {}", body.trim()) }
}

async fn serve(file: Option<PathBuf>) -> anyhow::Result<String> {
    let mut config = match &file {
        Some(file) => crate::config::Config::load(file)?,
        None => crate::config::Config::quick_start(),
    };
    config.apply_env(&crate::server::process_env())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = crate::server::Server::start(config, shutdown.clone()).await?;
    eprintln!("ovsb: broker on http://{}, gateway on http://{}", server.broker_addr, server.gateway_addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop();
    server.wait(std::time::Duration::from_secs(30)).await;
    Ok(String::new())
}

async fn serve_endpoint(
    plugins: Vec<PathBuf>,
    configs: Vec<String>,
    upstreams: Vec<String>,
    upstream_ws: Option<String>,
    listen: std::net::SocketAddr,
    key: Option<String>,
) -> anyhow::Result<String> {
    use crate::gateway::{
        self, GatewayConfig, InstanceRoute, Route, RouteTable, Routes, UpstreamPool, UpstreamSettings,
    };

    let runtime = PluginRuntime::new(RuntimeConfig::default())?;
    let kv = Arc::new(KvStore::new(KvLimits::default()));
    let mut entries = Vec::new();
    for (index, file) in plugins.iter().enumerate() {
        let name = file.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
        let plugin = runtime.load_file(&name, file)?;
        let config = configs.get(index).map_or("null", String::as_str);
        let pool = runtime.pool(&plugin, config, PluginLimits::default(), "local", kv.clone()).await?;
        entries.push(ChainEntry { pool, fail_open: false });
    }
    let http = upstreams
        .iter()
        .map(|u| u.parse::<http::Uri>().with_context(|| format!("--upstream {u} is not a URL")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let upstream = UpstreamPool::new(UpstreamSettings {
        http,
        ws: upstream_ws.into_iter().collect(),
        deadline: std::time::Duration::from_secs(30),
        max_response_bytes: 32 << 20,
        max_sockets_per_node: crate::upstream::DEFAULT_SOCKETS_PER_NODE,
    });
    let instance = Arc::new(InstanceRoute {
        instance_id: "local".into(),
        plan: "local".into(),
        chain: Chain::new(entries),
        policy: None,
        upstream: Arc::new(upstream),
        validator: None,
        budget: Default::default(),
        usage: crate::usage::InstanceUsage::unmetered("local"),
    });
    let key = key.unwrap_or_else(gateway::new_key);
    let mut table = RouteTable::default();
    table.insert(
        gateway::key_digest(&key),
        Route {
            instance,
            binding_id: "local".into(),
            expires_ms: None,
            meter: crate::usage::BindingMeter::detached("local", "local"),
        },
    );
    let routes = Arc::new(Routes::default());
    routes.replace(table);

    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "endpoint: http://{addr}/v1/{key}  (WebSocket: ws://{addr}/v1/{key})");
        let _ = out.flush();
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    gateway::serve(listener, GatewayConfig::default(), routes, shutdown).await?;
    tracing::info!("stopped");
    Ok(String::new())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn load_chain(file: &std::path::Path, config: &str, limits: PluginLimits) -> anyhow::Result<Chain> {
    let runtime = PluginRuntime::new(RuntimeConfig::default())?;
    let name = file.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let plugin = {
        let (runtime, file, name) = (runtime.clone(), file.to_path_buf(), name.clone());
        tokio::task::spawn_blocking(move || runtime.load_file(&name, &file)).await??
    };
    let kv = Arc::new(KvStore::new(KvLimits::default()));
    let pool = runtime.pool(&plugin, config, limits, "cli", kv).await?;
    Ok(Chain::new(vec![ChainEntry { pool, fail_open: false }]))
}

/// A JSON-RPC 2.0 response object for `outcome` (id 1).
fn response_json(outcome: Outcome) -> String {
    let raw = |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap_or(serde_json::Value::Null);
    let body = match outcome {
        Ok(result) => serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": raw(&result)}),
        Err(err) => {
            let mut error = serde_json::json!({"code": err.code, "message": err.message});
            if let Some(data) = err.data {
                error["data"] = raw(&data);
            }
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "error": error})
        }
    };
    body.to_string()
}

struct Fixed(String);

impl Upstream for Fixed {
    fn call<'a>(&'a self, _call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async { Ok(self.0.clone()) })
    }
}
