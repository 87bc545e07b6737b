//! The `ovsb plugin` commands, run as the real binary.

use crate::support;

use std::process::{Command, Output};

use ovsb_test_artifacts::TEST_PLUGIN;
use serde_json::{Value, json};

fn ovsb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ovsb")).args(args).output().expect("run ovsb")
}

#[test]
fn plugin_call_runs_a_call_through_the_plugin_and_prints_the_json_rpc_response() {
    let out = ovsb(&[
        "plugin",
        "call",
        TEST_PLUGIN,
        "--config",
        r#"{"mode":"tracer","tag":"a"}"#,
        "--method",
        "eth_chainId",
        "--params",
        "[1]",
        "--upstream-result",
        r#"{"trail":[]}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response, json!({"jsonrpc": "2.0", "id": 1, "result": {"trail": ["result:a"]}}));
}

#[test]
fn plugin_call_prints_a_plugin_failure_as_a_json_rpc_error() {
    let out = ovsb(&["plugin", "call", TEST_PLUGIN, "--config", r#"{"mode":"hostile"}"#, "--method", "test_panic"]);
    assert!(out.status.success());
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["error"]["code"], -32603);
    assert_eq!(response["error"]["data"]["reason"], "trap");
}

#[test]
fn plugin_check_accepts_a_good_configuration() {
    let out = ovsb(&["plugin", "check", TEST_PLUGIN, "--config", r#"{"mode":"pass"}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: plugin `ovsb_test_plugin` loaded"));
}

#[test]
fn plugin_check_exits_non_zero_with_the_plugins_message_for_a_bad_configuration() {
    let out = ovsb(&["plugin", "check", TEST_PLUGIN, "--config", r#"{"mode":"reject","message":"rate must be > 0"}"#]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rejected its configuration: rate must be > 0"), "{stderr}");
}

#[test]
fn plugin_check_names_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.wasm");
    std::fs::write(&file, b"not wasm at all").unwrap();
    let out = ovsb(&["plugin", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plugin `broken` is not a valid WebAssembly component"), "{stderr}");
}

#[test]
fn plugin_serve_fronts_a_real_node_with_a_plugin_chain_and_stops_on_sigterm() {
    plugin_serve(Command::new(env!("CARGO_BIN_EXE_ovsb")), |_| {});
}

#[test]
fn on_one_cpu_ovsb_serves_from_a_current_thread_runtime() {
    let mut on_core_0 = Command::new("taskset");
    on_core_0.args(["-c", "0", env!("CARGO_BIN_EXE_ovsb")]);
    plugin_serve(on_core_0, |pid| {
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect();
        assert!(!threads.iter().any(|t| t == "tokio-rt-worker"), "no work-stealing workers: {threads:?}");
    });
}

/// Runs `ovsb plugin serve` (`program` is the binary, perhaps behind a wrapper that execs it)
/// with the test plugin over a real anvil, checks a call, runs `inspect` on its pid, and stops it.
fn plugin_serve(mut program: Command, inspect: impl FnOnce(u32)) {
    use std::io::{BufRead, BufReader};
    // Stopped by PID when dropped, even if an assertion below fails.
    let anvil = support::Anvil::start(&[]);
    let anvil_url = anvil.http_url();

    let mut ovsb = KillOnDrop(
        program
            .args(["plugin", "serve", "--plugin", TEST_PLUGIN, "--config", r#"{"mode":"pass"}"#])
            .args(["--upstream", &anvil_url, "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let endpoint = BufReader::new(ovsb.0.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("endpoint: ").and_then(|rest| rest.split_whitespace().next()).map(str::to_string)
        })
        .unwrap();

    let call = |url: &str| -> Value {
        let out = Command::new("curl")
            .args([
                "-s",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#,
                url,
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(call(&endpoint)["result"], call(&anvil_url)["result"]);
    inspect(ovsb.0.id());

    Command::new("kill").args(["-TERM", &ovsb.0.id().to_string()]).status().unwrap();
    let status = ovsb.0.wait().unwrap();
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
}

/// Kills (by PID) a child still running when the test ends, even on a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn config_check_names_the_line_and_key_and_suggests_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "data_dir = \"x\"\n\n[broker]\nlisten = \"127.0.0.1:1\"\npasword = \"x\"\n").unwrap();
    let out = ovsb(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 5") && stderr.contains("pasword"), "{stderr}");
    assert!(stderr.contains("did you mean `password`?"), "{stderr}");
    // A value that parses but cannot work.
    std::fs::write(&file, "[gateway]\nmax_batch = 0\n").unwrap();
    let out = ovsb(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway limits"));
    // A plugin whose file does not match its pinned digest.
    let wasm = ovsb_test_artifacts::PASS_PLUGIN;
    std::fs::write(&file, format!("[[plugins]]\nname = \"p\"\npath = \"{wasm}\"\nsha256 = \"{}\"\n", "0".repeat(64)))
        .unwrap();
    let out = ovsb(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the configuration expects 000"), "{out:?}");
}

#[test]
fn config_check_passes_the_example_configurations() {
    let examples = std::fs::read_dir(format!("{}/../examples", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut checked = 0;
    for entry in examples.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "toml")) {
        let out = ovsb(&["config", "check", entry.path().to_str().unwrap()]);
        assert!(out.status.success(), "{:?}: {}", entry.path(), String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
        checked += 1;
    }
    assert!(checked >= 1);
}

/// `ovsb config show` prints what `ovsb serve` runs without --config; saved anywhere, it checks
/// as it is, and `ovsb config check` without a file checks that same built-in configuration.
#[test]
fn config_show_prints_the_built_in_configuration_and_it_round_trips_through_config_check() {
    // Without the OVSB_* overrides of the test's environment (named in the output when set).
    let ovsb = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ovsb"));
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OVSB_")) {
            command.env_remove(name);
        }
        command.args(args).output().expect("run ovsb")
    };
    let named = Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["config", "show"])
        .env("OVSB_GATEWAY_LISTEN", "127.0.0.1:1")
        .env("OVSB_NOT_A_SETTING", "x")
        .output()
        .unwrap();
    let header = String::from_utf8_lossy(&named.stdout).lines().nth(1).unwrap_or_default().to_string();
    assert!(
        header.starts_with("# Overridden now by the environment:")
            && header.contains("OVSB_GATEWAY_LISTEN")
            && !header.contains("OVSB_NOT_A_SETTING"),
        "{header}"
    );
    let out = ovsb(&["config", "show"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.starts_with("# The configuration of `ovsb serve`: the built-in configuration"), "{shown}");
    let built_in =
        std::fs::read_to_string(format!("{}/../examples/quick-start.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(
        shown.contains("[[plugins]]") && built_in.contains("path = \"../target/"),
        "the shown file is the built-in one"
    );
    assert!(!shown.contains("path = \"../"), "relative plugin paths are made absolute: {shown}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mine.toml");
    std::fs::write(&copy, &shown).unwrap();
    let checked = ovsb(&["config", "check", copy.to_str().unwrap()]);
    assert!(
        checked.status.success(),
        "the shown configuration checks where it is saved: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let again = ovsb(&["config", "show", copy.to_str().unwrap()]);
    assert!(again.status.success());
    let again = String::from_utf8(again.stdout).unwrap();
    assert_eq!(
        again.lines().skip(1).collect::<Vec<_>>(),
        shown.lines().collect::<Vec<_>>(),
        "showing the copy adds its own header line and changes nothing else"
    );
    let built_in_check = ovsb(&["config", "check"]);
    assert!(built_in_check.status.success(), "{}", String::from_utf8_lossy(&built_in_check.stderr));
    assert!(String::from_utf8_lossy(&built_in_check.stdout).starts_with("ok: "));
    let missing = ovsb(&["config", "show", dir.path().join("nope.toml").to_str().unwrap()]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}
