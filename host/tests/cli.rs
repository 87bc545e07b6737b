//! The `ovsb plugin` commands, run as the real binary.

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
