//! Secrets the platform never sees, with the real `@metamask/eth-sig-util` on the other side:
//! ovsb's identity in the catalog and from `ovsb identity`, validator passwords and plugin
//! settings sealed to it, credentials sealed to an application's wallet key; malformed or
//! wrongly addressed sealed objects refused; and no plaintext secret in the store's files or
//! in ovsb's (debug) log.

use crate::support;

use reqwest::Method;
use serde_json::{Value, json};
use support::broker::{PLAN_SHARED, SERVICE};
use support::lodestar::{KEYSTORE_PASSWORD, PLAN_VALIDATOR, keystore, process_config};
use support::process::Ovsb;
use support::{Anvil, NodeReaper, ethsig, free_port, rpc};

/// Every file under `dir` (the store's files, logs) as bytes, by path.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sealed_by_a_wallet_open_only_inside_ovsb() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = NodeReaper(dir.path().to_path_buf());
    let keys = tempfile::tempdir().unwrap();
    let key3 = keystore(3, keys.path());
    let node = anvil.http_url();
    let data = dir.path().join("data");
    let config = process_config(dir.path(), &node);
    let ovsb = Ovsb::start_logging(dir.path(), "ovsb", &config, (free_port(), free_port()), "debug");
    let osb = &ovsb.osb;

    // ovsb's identity: in every service's catalog metadata, and from `ovsb identity`.
    let catalog = osb.call(Method::GET, "/v2/catalog", None).await.body;
    let published = catalog["services"][0]["metadata"]["encryptionPublicKey"].as_str().unwrap().to_string();
    assert_eq!(catalog["services"][1]["metadata"]["encryptionPublicKey"], published.as_str());
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["identity", "--config"])
        .arg(dir.path().join("ovsb.toml"))
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(String::from_utf8(cli.stdout).unwrap().trim(), published);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("identity.keys")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key file is the owner's only");
    }

    // Malformed or wrongly addressed sealed passwords: 400 with the reason, nothing created.
    let (_, stranger) = ethsig::keypair();
    let mut params = json!({"keystores": [key3], "fee_recipient": "0x00000000000000000000000000000000000000bb"});
    let mut truncated = ethsig::seal(&published, KEYSTORE_PASSWORD);
    truncated["nonce"] = json!("AAAA");
    for (password, reason) in [
        (ethsig::seal(&stranger, KEYSTORE_PASSWORD), "not sealed to ovsb's key"),
        (truncated, "nonce must be 24 bytes"),
        (json!({"version": "x25519-xsalsa20-poly1305", "ciphertext": "!!"}), "passwords/0"),
    ] {
        params["passwords"] = json!([password]);
        let resp = osb.provision("sealed-bad", PLAN_VALIDATOR, Some(params.clone())).await;
        resp.assert_error(400, None);
        assert!(resp.body["description"].as_str().unwrap().contains(reason), "{reason}: {resp:?}");
        assert_eq!(osb.last_operation("sealed-bad").await.status, 404, "nothing was created");
    }

    // A password sealed by eth-sig-util to ovsb's key imports the keystore.
    params["passwords"] = json!([ethsig::seal(&published, KEYSTORE_PASSWORD)]);
    assert_eq!(osb.provision("sealed-v", PLAN_VALIDATOR, Some(params)).await.status, 202);
    let done = osb.finished("sealed-v").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["description"].as_str().unwrap().contains("imported"), "{done}");

    // Credentials sealed to a wallet key made by eth-sig-util: opened there, the uri serves.
    let (wallet_private, wallet_public) = ethsig::keypair();
    let resp = osb
        .call(
            Method::PUT,
            "/v2/service_instances/sealed-v/service_bindings/app",
            Some(json!({"service_id": SERVICE, "plan_id": PLAN_VALIDATOR,
                "parameters": {"encryption_public_key": wallet_public}})),
        )
        .await;
    assert_eq!(resp.status, 201, "{resp:?}");
    let sealed = &resp.body["credentials"];
    assert_eq!(sealed["version"], "x25519-xsalsa20-poly1305", "{sealed}");
    assert!(sealed.get("uri").is_none() && sealed.get("token").is_none(), "nothing in clear: {sealed}");
    let credentials: Value = serde_json::from_str(&ethsig::open(&wallet_private, sealed)).unwrap();
    let uri = credentials["uri"].as_str().unwrap();
    let answer = rpc(uri, "eth_chainId", json!([])).await;
    assert_eq!(answer["result"], rpc(&node, "eth_chainId", json!([])).await["result"], "{answer}");
    let fetched = osb.call(Method::GET, "/v2/service_instances/sealed-v/service_bindings/app", None).await;
    assert_eq!(fetched.status, 200);
    let refetched: Value = serde_json::from_str(&ethsig::open(&wallet_private, &fetched.body["credentials"])).unwrap();
    assert_eq!(refetched, credentials, "fetch returns the same credentials, sealed");
    let resp = osb
        .call(
            Method::PUT,
            "/v2/service_instances/sealed-v/service_bindings/bad-key",
            Some(json!({"service_id": SERVICE, "plan_id": PLAN_VALIDATOR,
                "parameters": {"encryption_public_key": "bm90IGEga2V5"}})),
        )
        .await;
    resp.assert_error(400, None);
    assert!(resp.body["description"].as_str().unwrap().contains("encryption_public_key"), "{resp:?}");

    // A plugin's secret setting, sealed: the plugin gets the opened value, the store keeps it sealed.
    let secret_tag = "tag-only-the-plugin-sees-7f3a";
    let plugins = json!([{"name": "test", "config": {"mode": "respond", "tag": ethsig::seal(&published, secret_tag)}}]);
    osb.ready_instance("sealed-rpc", PLAN_SHARED, Some(json!({ "plugins": plugins }))).await;
    let bound = osb.bind("sealed-rpc", "b", PLAN_SHARED).await;
    let answer = rpc(bound.body["credentials"]["uri"].as_str().unwrap(), "anything", json!([])).await;
    assert_eq!(answer["result"]["trail"], json!([format!("respond:{secret_tag}")]), "{answer}");
    let misaddressed = json!([{"name": "test", "config": {"mode": "respond", "tag": ethsig::seal(&stranger, "x")}}]);
    let resp = osb.provision("sealed-rpc-2", PLAN_SHARED, Some(json!({ "plugins": misaddressed }))).await;
    resp.assert_error(400, None);
    assert!(resp.body["description"].as_str().unwrap().contains("parameters.plugins[0].config.tag"), "{resp:?}");

    // No plaintext secret in the store's files (database, WAL), the data directory, or the log.
    let binding_key = credentials["token"].as_str().unwrap();
    let keymanager_token = credentials["keymanager_token"].as_str().unwrap();
    let rpc_key = bound.body["credentials"]["token"].as_str().unwrap();
    let ciphertext = key3["crypto"]["cipher"]["message"].as_str().unwrap();
    let mut searched = 0;
    for (path, bytes) in files_under(dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        let shown = path.to_string_lossy();
        if shown.contains("/validators/") && (shown.contains("/secrets/") || shown.contains("/keystores/")) {
            continue; // the validator client's own key store: where the keys must be, for it to sign
        }
        searched += 1;
        for secret in [KEYSTORE_PASSWORD, secret_tag, binding_key, keymanager_token, rpc_key, ciphertext] {
            assert!(!text.contains(secret), "a secret ({}…) in {}", &secret[..6], path.display());
        }
    }
    assert!(searched >= 3, "the database, its WAL and the log were searched");
    assert!(dir.path().join("ovsb.log").exists());
    assert_eq!(osb.deprovision("sealed-v", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(osb.finished("sealed-v").await["state"], "succeeded");
}

/// Rotation with sealed credentials: a rotation (naming only its predecessor) gets its new
/// credentials sealed to the predecessor's wallet key (nothing in clear); they open, with the
/// real wallet library, to a key that serves beside the predecessor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_credentials_rotate_sealed() {
    use support::broker::{Db, TestBroker};
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |config| {
        for plan in config.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            plan.binding_rotatable = plan.id == PLAN_SHARED;
        }
    })
    .await;
    let osb = &broker.osb;
    let (wallet_private, wallet_public) = ethsig::keypair();
    osb.ready_instance("sealed-rot", PLAN_SHARED, None).await;
    let body = json!({"service_id": SERVICE, "plan_id": PLAN_SHARED,
        "parameters": {"encryption_public_key": wallet_public}});
    let path = |binding: &str| format!("/v2/service_instances/sealed-rot/service_bindings/{binding}");
    let first = osb.call(Method::PUT, &path("v1"), Some(body.clone())).await;
    assert_eq!(first.status, 201, "{first:?}");
    // The spec's rotation request names only the predecessor: the wallet key is the predecessor's.
    let second = osb.call(Method::PUT, &path("v2"), Some(json!({"predecessor_binding_id": "v1"}))).await;
    assert_eq!(second.status, 201, "{second:?}");
    let mut tokens = Vec::new();
    for sealed in [&first.body["credentials"], &second.body["credentials"]] {
        assert_eq!(sealed["version"], "x25519-xsalsa20-poly1305", "{sealed}");
        assert!(sealed.get("token").is_none(), "nothing in clear: {sealed}");
        let credentials: Value = serde_json::from_str(&ethsig::open(&wallet_private, sealed)).unwrap();
        let answer = rpc(credentials["uri"].as_str().unwrap(), "eth_chainId", json!([])).await;
        assert_eq!(answer["result"], "0x7a69", "{answer}");
        tokens.push(credentials["token"].as_str().unwrap().to_string());
    }
    assert_ne!(tokens[0], tokens[1], "the rotation has new credentials");
}

/// A plugin that quotes a setting in its `configure` error never hands the platform the
/// plaintext of a sealed one: the broker's 400 reads `[sealed]` where the plugin put it (the
/// plugin itself got the opened value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_error_quoting_a_sealed_setting_reaches_the_platform_redacted() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // Its own data directory: without one, ovsb would use `.ovsb` in the test's working directory.
    let config = format!(
        "data_dir = \"{}\"\n{}",
        dir.path().join("data").display(),
        support::broker::test_config_toml_with(&anvil.http_url(), free_port(), "")
    );
    let ovsb = Ovsb::start(dir.path(), "redact", &config);
    let osb = &ovsb.osb;
    let catalog = osb.call(Method::GET, "/v2/catalog", None).await.body;
    let published = catalog["services"][0]["metadata"]["encryptionPublicKey"].as_str().unwrap().to_string();
    let secret = "api-key-5ec7e7-d0-not-share";
    let chain = json!({"plugins": [{"name": "test", "config": {
        "mode": "reject",
        "message": ethsig::seal(&published, &format!("the upstream refused api key {secret}")),
    }}]});
    let resp = osb.provision("redacted", PLAN_SHARED, Some(chain)).await;
    assert_eq!(resp.status, 400, "{resp:?}");
    let description = resp.body["description"].as_str().unwrap();
    assert!(!description.contains(secret), "the sealed value reached the platform: {description}");
    assert!(description.contains("[sealed]"), "{description}");

    // A plugin that writes a sealed setting in its log, at `configure`: the log line reads
    // `[sealed]`, for the broker's check and for the route's chain alike.
    let chain = json!({"plugins": [{"name": "test", "config": {
        "mode": "pass",
        "log_at_configure": ethsig::seal(&published, secret),
    }}]});
    let resp = osb.provision("logged", PLAN_SHARED, Some(chain)).await;
    assert!((200..300).contains(&resp.status), "{resp:?}");
    let mut log = String::new();
    for _ in 0..300 {
        log = std::fs::read_to_string(dir.path().join("redact.log")).unwrap_or_default();
        if log.contains("configured with") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(log.contains("configured with [sealed]"), "{log}");
    assert!(!log.contains(secret), "the sealed value reached the log");
}
