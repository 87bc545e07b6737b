//! Lodestar 1.5.1 (installed by tests/run-all.sh into tests/lodestar from the pinned files): the
//! validator plan of the tests, and EIP-2335 keystores of its interop keys.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const PLAN_VALIDATOR: &str = "plan-validator";
/// The password `mkkeystore.mjs` encrypts with.
pub const KEYSTORE_PASSWORD: &str = "testpassword1234";

/// tests/lodestar, where `npm ci` installed Lodestar.
pub fn lodestar_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lodestar").canonicalize().unwrap();
    assert!(
        dir.join("node_modules/.bin/lodestar").exists(),
        "Lodestar is not installed in {}: run tests/run-all.sh (it runs npm ci there)",
        dir.display()
    );
    dir
}

/// A validator plan (TOML, a `[[services.plans]]` table of the test service) whose instances
/// run `lodestar dev` with interop validators 0..2 and forward JSON-RPC to `node`.
pub fn validator_plan(node: &str) -> String {
    let lodestar = lodestar_dir().join("node_modules/.bin/lodestar");
    format!(
        r#"
[[services.plans]]
id = "{PLAN_VALIDATOR}"
name = "validator"
description = "a Lodestar dev chain per instance"
maximum_polling_duration = 180

[services.plans.driver]
kind = "validator"
token_file = "validator-db/api-token.txt"
rpc_http = ["{node}"]

[services.plans.driver.client]
command = [{command}]
extra_ports = ["keymanager_port", "p2p_port"]
ports = [31000, 31999]
stop_grace_ms = 10000
"#,
        command = lodestar_command(&lodestar.display().to_string())
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The configuration of an `ovsb serve` process (see `support::process`): the test catalog plus
/// the validator plan over `node`, its store a SQLite file in `dir`, its data in `dir/data`.
pub fn process_config(dir: &Path, node: &str) -> String {
    crate::support::broker::test_config_toml_with(node, crate::support::free_port(), &validator_plan(node)).replacen(
        "[broker]",
        &format!(
            "data_dir = \"{}\"\ndatabase_url = \"sqlite://{}\"\n\n[broker]",
            dir.join("data").display(),
            dir.join("ovsb.db").display()
        ),
        1,
    )
}

/// The client command of the validator plans (as in examples/quick-start.toml).
pub fn lodestar_command(program: &str) -> Vec<String> {
    [
        program,
        "dev",
        "--genesisValidators",
        "4",
        "--startValidators",
        "0..2",
        "--dataDir",
        "{data_dir}",
        "--rest.address",
        "127.0.0.1",
        "--rest.port",
        "{port}",
        "--beaconNodes",
        "http://127.0.0.1:{port}",
        "--keymanager",
        "--keymanager.address",
        "127.0.0.1",
        "--keymanager.port",
        "{keymanager_port}",
        "--discv5",
        "false",
        "--listenAddress",
        "127.0.0.1",
        "--port",
        "{p2p_port}",
        "--enr.ip",
        "127.0.0.1",
        "--eth1",
        "false",
        "--suggestedFeeRecipient",
        "0x00000000000000000000000000000000000000aa",
        "--graffiti={graffiti}",
        "--doppelgangerProtectionEnabled={doppelganger_protection}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The EIP-2335 keystore of interop key `index` (password [`KEYSTORE_PASSWORD`]), made by
/// the pinned `mkkeystore.mjs` in `dir`.
pub fn keystore(index: u32, dir: &Path) -> Value {
    let script = lodestar_dir().join("mkkeystore.mjs");
    let status = Command::new("node").arg(script).arg(index.to_string()).current_dir(dir).status().expect("node runs");
    assert!(status.success(), "mkkeystore.mjs {index} failed");
    let text = std::fs::read_to_string(dir.join(format!("keystore-{index}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `0x` + the keystore's public key.
pub fn pubkey(keystore: &Value) -> String {
    format!("0x{}", keystore["pubkey"].as_str().unwrap().trim_start_matches("0x").to_ascii_lowercase())
}

/// The `genesis_validators_root` of the chain `lodestar dev --genesisValidators 4` makes (the
/// interop validators; the same for every instance of the test plan).
pub const DEV_GENESIS_VALIDATORS_ROOT: &str = "0xacac7566fdf384a1ada45c01dcf9030d7eb0e1e5f5302659101d0b2a5bb59092";

/// What a fresh Lodestar 1.5.1 slashing-protection database does with `interchange` imported
/// (for the chain `root`): whether the import went through, and its verdict on each signing
/// (`allowed` or `refused: <code>`), judged in order. `signings` are as `slashing-check.mjs`
/// reads them: `{"pubkey", "block": {"slot", "signing_root"}}` or `{"pubkey", "attestation":
/// {"source", "target", "signing_root"}}`.
pub fn judge_signings(root: &str, interchange: &Value, signings: &[Value]) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case.json");
    let input = serde_json::json!({"genesis_validators_root": root, "interchange": interchange, "signings": signings});
    std::fs::write(&case, input.to_string()).unwrap();
    let output = Command::new("node")
        .arg(lodestar_dir().join("slashing-check.mjs"))
        .arg(&case)
        .current_dir(lodestar_dir())
        .output()
        .expect("node runs");
    assert!(output.status.success(), "slashing-check.mjs failed: {}", String::from_utf8_lossy(&output.stderr));
    let verdict: Value = serde_json::from_slice(&output.stdout).expect("slashing-check.mjs prints JSON");
    let verdicts = verdict["verdicts"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    (verdict["import"].as_str().unwrap().to_string(), verdicts)
}
