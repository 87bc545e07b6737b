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
    Call, Chain, ChainEntry, Context, KvLimits, KvStore, Outcome, PluginLimits, PluginRuntime, RuntimeConfig, Upstream,
};

/// Open Validator Service Broker.
#[derive(Debug, Parser)]
#[command(name = "ovsb", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
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
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OVSB_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::Plugin(PluginCommand::Check { file, config }) => {
            let chain = load_chain(&file, &config).await?;
            let pool = &chain.entries()[0].pool;
            Ok(format!("ok: plugin `{}` loaded and accepted its configuration", pool.plugin_name()))
        }
        Command::Plugin(PluginCommand::Call { file, config, method, params, upstream_result }) => {
            serde_json::from_str::<serde_json::Value>(&upstream_result).context("--upstream-result is not JSON")?;
            if let Some(params) = &params {
                serde_json::from_str::<serde_json::Value>(params).context("--params is not JSON")?;
            }
            let chain = load_chain(&file, &config).await?;
            let ctx = Arc::new(Context {
                instance_id: "cli".into(),
                binding_id: None,
                plan: "cli".into(),
                request_id: "cli-1".into(),
            });
            let upstream: Arc<dyn Upstream> = Arc::new(Fixed(upstream_result));
            let outcome = chain.run(&ctx, Call { method, params }, &upstream).await;
            Ok(response_json(outcome))
        }
    }
}

async fn load_chain(file: &std::path::Path, config: &str) -> anyhow::Result<Chain> {
    let runtime = PluginRuntime::new(RuntimeConfig::default())?;
    let name = file.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let plugin = {
        let (runtime, file, name) = (runtime.clone(), file.to_path_buf(), name.clone());
        tokio::task::spawn_blocking(move || runtime.load_file(&name, &file)).await??
    };
    let kv = Arc::new(KvStore::new(KvLimits::default()));
    let pool = runtime.pool(&plugin, config, PluginLimits::default(), "cli", kv).await?;
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
