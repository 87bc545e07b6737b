//! Validator instances against real Lodestar 1.5.1 clients (`lodestar dev`, interop validators
//! 0..2 running; the tests import interop key 3, the chain's fourth validator): keys in through
//! the keymanager API, the keymanager behind per-binding tokens, the slashing-protection history
//! exported into the store before a client stops, and a restart of ovsb in the middle of a
//! provision.

use crate::support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::broker::{Db, OsbClient, SERVICE, TestBroker, TestDb};
use support::lodestar::{
    DEV_GENESIS_VALIDATORS_ROOT, KEYSTORE_PASSWORD, PLAN_VALIDATOR, judge_signings, keystore, process_config, pubkey,
    validator_plan,
};
use support::process::Ovsb;
use support::{Anvil, NodeReaper, free_port, nodes_under, rpc};

const FEE_1: &str = "0x00000000000000000000000000000000000000bb";
const FEE_2: &str = "0x00000000000000000000000000000000000000cc";

/// ovsb in this process with the test catalog plus the validator plan (bindings rotatable),
/// over `anvil`.
async fn with_validators(dir: tempfile::TempDir, db: TestDb, anvil: &Anvil) -> TestBroker {
    TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &validator_plan(&anvil.http_url()), |c| {
        for plan in c.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            plan.binding_rotatable = plan.id == PLAN_VALIDATOR;
        }
    })
    .await
}

fn keys_params(keystores: &[&Value], passwords: &[&str], fee: &str) -> Value {
    json!({"keystores": keystores, "passwords": passwords, "fee_recipient": fee, "graffiti": "ovsb-test"})
}

async fn keymanager(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("HTTP request to the gateway");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Makes `dir` a git work tree with one commit; returns the commit.
fn git_work_tree(dir: &std::path::Path) -> String {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=ovsb-test", "-c", "user.email=test@ovsb.invalid", "-C"])
            .arg(dir)
            .args(args)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "a checkout"]);
    git(&["rev-parse", "HEAD"])
}

async fn history(osb: &OsbClient, key: &str) -> (u16, Value) {
    let resp = osb.call(Method::GET, &format!("/ovsb/v1/slashing-protection/{key}"), None).await;
    (resp.status, resp.body)
}

/// Lodestar's server-sent event stream of heads, through the beacon proxy: the first event
/// arrives while the stream stays open (a proxy that waits for the end of the body shows nothing).
/// The stream, still open.
/// A keep-alive connection that has had one `GET url` answered with `token` (200).
async fn keep_alive_get(url: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(url).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let request = format!("GET {} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n", url.path());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before the answer");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("a Content-Length");
            if body.len() >= length {
                return stream;
            }
        }
    }
}

async fn first_head_event(beacon: &str) -> reqwest::Response {
    let mut events = reqwest::Client::new()
        .get(format!("{beacon}/eth/v1/events?topics=head"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("the event stream opens");
    assert_eq!(events.status(), 200);
    let content_type = events.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("event: head") {
        match tokio::time::timeout_at(deadline, events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no head event through the proxy ({other:?}); seen: {seen:?}"),
        }
    }
    assert!(seen.contains("\"slot\""), "a head event carries its slot: {seen}");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validator_keys_move_in_and_out_with_their_history_on_sqlite() {
    keys_move_in_and_out(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validator_keys_move_in_and_out_with_their_history_on_postgres() {
    keys_move_in_and_out(Db::Postgres).await;
}

async fn keys_move_in_and_out(db: Db) {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let head = git_work_tree(dir.path());
    let _reaper = NodeReaper(dir.path().to_path_buf());
    let keys = tempfile::tempdir().unwrap();
    let key3 = keystore(3, keys.path());
    let pk3 = pubkey(&key3);
    let db = TestDb::new(db, dir.path()).await;
    let broker = with_validators(dir, db, &anvil).await;
    let osb = &broker.osb;

    // The catalog publishes the validator parameters.
    let catalog = osb.call(Method::GET, "/v2/catalog", None).await.body;
    let plan = catalog["services"][0]["plans"].as_array().unwrap().iter().find(|p| p["id"] == PLAN_VALIDATOR).unwrap();
    let props = &plan["schemas"]["service_instance"]["create"]["parameters"]["properties"];
    for name in ["keystores", "passwords", "slashing_protection", "fee_recipient", "graffiti", "gas_limit"] {
        assert!(props.get(name).is_some(), "{name} in {props}");
    }

    // Bad input: 400 naming the field, nothing stored.
    let before = broker.fingerprint().await;
    for (params, field) in [
        (json!({"keystores": [key3], "passwords": [KEYSTORE_PASSWORD]}), "fee_recipient"),
        (keys_params(&[&key3], &[KEYSTORE_PASSWORD], "0x0000000000000000000000000000000000000000"), "zero address"),
        (keys_params(&[&key3], &[], FEE_1), "passwords"),
        (keys_params(&[&json!({"version": 4})], &["x"], FEE_1), "keystores[0]"),
        (
            json!({"keystores": [key3], "passwords": [KEYSTORE_PASSWORD], "fee_recipient": FEE_1, "slashing_protection": "{}"}),
            "slashing_protection",
        ),
    ] {
        let resp = osb.provision("v-bad", PLAN_VALIDATOR, Some(params)).await;
        resp.assert_error(400, None);
        assert!(resp.body["description"].as_str().unwrap().contains(field), "{field}: {resp:?}");
    }
    assert_eq!(broker.fingerprint().await, before, "refused requests change nothing");

    // Provision with key 3: imported through the keymanager API once the client is ready.
    let resp = osb.provision("v1", PLAN_VALIDATOR, Some(keys_params(&[&key3], &[KEYSTORE_PASSWORD], FEE_1))).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let done = osb.finished("v1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["description"].as_str().unwrap().contains("imported"), "each key's status is reported: {done}");

    // Neither fetch nor the store shows keystores or passwords.
    let fetched = osb.call(Method::GET, "/v2/service_instances/v1", None).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body["parameters"]["pubkeys"], json!([pk3]));
    assert_eq!(fetched.body["parameters"]["fee_recipient"], FEE_1);
    let stored = broker.store().instance("v1").await.unwrap().unwrap();
    let operation = broker.store().operation(&stored.operation_id).await.unwrap().unwrap();
    let ciphertext = key3["crypto"]["cipher"]["message"].as_str().unwrap();
    for text in [fetched.body.to_string(), stored.parameters.clone().unwrap().to_string(), operation.request.to_text()]
    {
        assert!(!text.contains(KEYSTORE_PASSWORD) && !text.contains(ciphertext), "a secret in {text}");
    }

    // The binding's credentials: RPC as for other instances, plus keymanager and beacon.
    let bound = osb.bind("v1", "b1", PLAN_VALIDATOR).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let credentials = &bound.body["credentials"];
    let km = credentials["keymanager_uri"].as_str().unwrap().to_string();
    let token = credentials["keymanager_token"].as_str().unwrap().to_string();
    let beacon = credentials["beacon_uri"].as_str().unwrap().to_string();
    let uri = credentials["uri"].as_str().unwrap().to_string();
    assert_ne!(token, credentials["token"].as_str().unwrap());

    let (status, list) = keymanager(Method::GET, &format!("{km}/eth/v1/keystores"), Some(&token), None).await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|k| k["validating_pubkey"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![pk3.as_str()], "the instance's key, and only it");
    let fee_url = format!("{km}/eth/v1/validator/{pk3}/feerecipient");
    let (status, fee) = keymanager(Method::GET, &fee_url, Some(&token), None).await;
    assert_eq!((status, fee["data"]["ethaddress"].as_str()), (200, Some(FEE_1)), "{fee}");

    let (status, version) = keymanager(Method::GET, &format!("{beacon}/eth/v1/node/version"), None, None).await;
    assert_eq!(status, 200, "{version}");
    assert!(version["data"]["version"].as_str().unwrap().contains("Lodestar"), "{version}");
    // The client runs in a directory under ovsb's data directory, here inside a git work tree
    // (as in a checkout): it must not find and publish that tree's commit as its version.
    assert_eq!(head.len(), 40, "{head}");
    assert!(!version.to_string().contains(&head[..7]), "the data directory's git commit {head} shows in {version}");
    let chain_id = rpc(&uri, "eth_chainId", json!([])).await;
    assert_eq!(chain_id["result"], rpc(&anvil.http_url(), "eth_chainId", json!([])).await["result"]);
    let mut events = first_head_event(&beacon).await;

    // A fee-recipient update goes through the keymanager API and shows there.
    let resp = osb
        .call(
            Method::PATCH,
            "/v2/service_instances/v1?accepts_incomplete=true",
            Some(json!({"service_id": SERVICE, "parameters": {"fee_recipient": FEE_2, "gas_limit": 31000000}})),
        )
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(osb.finished("v1").await["state"], "succeeded");
    let (_, fee) = keymanager(Method::GET, &fee_url, Some(&token), None).await;
    assert_eq!(fee["data"]["ethaddress"], FEE_2);
    let (_, gas) = keymanager(Method::GET, &format!("{km}/eth/v1/validator/{pk3}/gas_limit"), Some(&token), None).await;
    assert_eq!(gas["data"]["gas_limit"], "31000000", "{gas}");

    // An update adds a key (and its identical replay is a no-op), another removes one.
    let key5 = keystore(5, keys.path());
    let pk5 = pubkey(&key5);
    let add = json!({"service_id": SERVICE, "parameters": {"keystores": [key5], "passwords": [KEYSTORE_PASSWORD]}});
    let update_url = "/v2/service_instances/v1?accepts_incomplete=true";
    assert_eq!(osb.call(Method::PATCH, update_url, Some(add.clone())).await.status, 202);
    let added = osb.finished("v1").await;
    assert_eq!(added["state"], "succeeded", "{added}");
    assert!(added["description"].as_str().unwrap().contains("added"), "{added}");
    let listed = |list: &Value| -> Vec<String> {
        let mut keys: Vec<String> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["validating_pubkey"].as_str().unwrap().to_string())
            .collect();
        keys.sort();
        keys
    };
    let (_, list) = keymanager(Method::GET, &format!("{km}/eth/v1/keystores"), Some(&token), None).await;
    let mut both = vec![pk3.clone(), pk5.clone()];
    both.sort();
    assert_eq!(listed(&list), both);
    assert_eq!(osb.call(Method::PATCH, update_url, Some(add)).await.status, 200, "a replayed update is a no-op");
    let remove = json!({"service_id": SERVICE, "parameters": {"remove_keys": [pk5]}});
    assert_eq!(osb.call(Method::PATCH, update_url, Some(remove)).await.status, 202);
    assert_eq!(osb.finished("v1").await["state"], "succeeded");
    let (_, list) = keymanager(Method::GET, &format!("{km}/eth/v1/keystores"), Some(&token), None).await;
    assert_eq!(listed(&list), vec![pk3.clone()]);
    assert_eq!(history(osb, &pk5).await.0, 200, "the removed key's history is kept");
    assert_eq!(broker.store().validator_key_holder(&pk5).await.unwrap(), None);

    // Keymanager auth: missing 401, wrong 403, the RPC key is not a keymanager token; keys come
    // and go only through the broker; other keys are out of reach.
    let list_url = format!("{km}/eth/v1/keystores");
    assert_eq!(keymanager(Method::GET, &list_url, None, None).await.0, 401);
    assert_eq!(keymanager(Method::GET, &list_url, Some("not-a-token"), None).await.0, 403);
    assert_eq!(keymanager(Method::GET, &list_url, Some(credentials["token"].as_str().unwrap()), None).await.0, 403);
    let (status, refused) = keymanager(Method::DELETE, &list_url, Some(&token), Some(json!({"pubkeys": [pk3]}))).await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("broker"), "{refused}");
    let other = keystore(0, keys.path());
    let other_fee = format!("{km}/eth/v1/validator/{}/feerecipient", pubkey(&other));
    assert_eq!(keymanager(Method::GET, &other_fee, Some(&token), None).await.0, 403);
    assert_eq!(keymanager(Method::DELETE, &fee_url, Some(&token), None).await.0, 405, "read and set only");

    // A key is never in two clients: another instance cannot take key 3.
    let resp = osb.provision("v2", PLAN_VALIDATOR, Some(keys_params(&[&key3], &[KEYSTORE_PASSWORD], FEE_1))).await;
    assert_eq!(resp.status, 202);
    let taken = osb.finished("v2").await;
    assert_eq!(taken["state"], "failed", "{taken}");
    assert!(taken["description"].as_str().unwrap().contains("loaded in instance v1"), "{taken}");
    assert_eq!(broker.store().validator_key_holder(&pk3).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(osb.deprovision("v2", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(osb.finished("v2").await["state"], "succeeded");

    // Rotation (OSB 2.17): the successor has its own keymanager token; both tokens work until
    // the predecessor is unbound.
    let rotated = osb
        .call(
            Method::PUT,
            "/v2/service_instances/v1/service_bindings/b2",
            Some(json!({"service_id": SERVICE, "plan_id": PLAN_VALIDATOR, "predecessor_binding_id": "b1"})),
        )
        .await;
    assert_eq!(rotated.status, 201, "{rotated:?}");
    let token2 = rotated.body["credentials"]["keymanager_token"].as_str().unwrap().to_string();
    assert_ne!(token2, token, "a new keymanager token");
    for token in [&token, &token2] {
        assert_eq!(keymanager(Method::GET, &list_url, Some(token), None).await.0, 200);
    }

    // A keep-alive connection keyed by b1's keymanager token.
    let mut kept = keep_alive_get(&list_url, &token).await;

    // Unbind revokes the keymanager token and the beacon URL at once; the successor's stays.
    assert_eq!(osb.unbind("v1", "b1", PLAN_VALIDATOR).await.status, 200);
    // The keep-alive connection the revoked token keyed is closed, and its slot comes back.
    let mut rest = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(3), tokio::io::AsyncReadExt::read(&mut kept, &mut rest)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected bytes on the revoked connection: {:?}", String::from_utf8_lossy(&rest[..n])),
        Err(_) => panic!("the keymanager connection outlived its token's unbind by 3 s"),
    }
    // The event stream opened with the key ends with it (heads already on their way may come).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match tokio::time::timeout_at(deadline, events.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(_) => break,
            Err(_) => panic!("the beacon event stream outlived its key's unbind by a second"),
        }
    }
    assert_eq!(keymanager(Method::GET, &list_url, Some(&token), None).await.0, 403);
    assert_eq!(keymanager(Method::GET, &list_url, Some(&token2), None).await.0, 200, "the successor's token works");
    assert_eq!(keymanager(Method::GET, &format!("{beacon}/eth/v1/node/version"), None, None).await.0, 401);

    // Deprovision: the keys leave the client, their history is stored before it stops.
    assert_eq!(history(osb, &pk3).await.0, 404, "nothing exported yet");
    assert_eq!(osb.deprovision("v1", PLAN_VALIDATOR).await.status, 202);
    let gone = osb.finished("v1").await;
    assert_eq!(gone["state"], "succeeded", "{gone}");
    let (status, exported) = history(osb, &pk3).await;
    assert_eq!(status, 200, "{exported}");
    assert_eq!(exported["metadata"]["interchange_format_version"], "5");
    assert!(exported["data"].as_array().unwrap().iter().any(|e| e["pubkey"].as_str() == Some(&pk3)), "{exported}");
    assert_eq!(broker.store().validator_key_holder(&pk3).await.unwrap(), None, "the key is free again");

    // A history of another chain (the plan fixes none): the client's beacon node tells, the
    // operation fails before any key is imported, and the key stays free.
    let mut elsewhere = exported.clone();
    elsewhere["metadata"]["genesis_validators_root"] = json!(format!("0x{}", "22".repeat(32)));
    let mut params = keys_params(&[&key3], &[KEYSTORE_PASSWORD], FEE_1);
    params["slashing_protection"] = elsewhere;
    assert_eq!(osb.provision("v-chain", PLAN_VALIDATOR, Some(params)).await.status, 202);
    let wrong = osb.finished("v-chain").await;
    assert_eq!(wrong["state"], "failed", "{wrong}");
    let description = wrong["description"].as_str().unwrap();
    assert!(
        description.contains("genesis_validators_root") && description.contains("not the chain's"),
        "{description}"
    );
    assert_eq!(broker.store().validator_key_holder(&pk3).await.unwrap(), None, "the key stays free");
    assert_eq!(osb.deprovision("v-chain", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(osb.finished("v-chain").await["state"], "succeeded");

    // The same key, provisioned again with that history (plus a signed block and attestation far
    // ahead, as if it had signed elsewhere), is imported; the client's next export has them.
    let mut seeded = exported.clone();
    seeded["data"][0]["signed_blocks"] = json!([{"slot": "99999"}]);
    seeded["data"][0]["signed_attestations"] = json!([{"source_epoch": "9000", "target_epoch": "9001"}]);
    let mut params = keys_params(&[&key3], &[KEYSTORE_PASSWORD], FEE_1);
    params["slashing_protection"] = seeded;
    assert_eq!(osb.provision("v3", PLAN_VALIDATOR, Some(params)).await.status, 202);
    let again = osb.finished("v3").await;
    assert_eq!(again["state"], "succeeded", "{again}");
    let bound = osb.bind("v3", "b3", PLAN_VALIDATOR).await;
    let token3 = bound.body["credentials"]["keymanager_token"].as_str().unwrap().to_string();
    let (_, list) = keymanager(Method::GET, &list_url, Some(&token3), None).await;
    assert_eq!(list["data"][0]["validating_pubkey"], pk3.as_str(), "{list}");
    assert_eq!(osb.deprovision("v3", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(osb.finished("v3").await["state"], "succeeded");
    let latest = broker.store().history(&pk3).await.unwrap().pop().unwrap();
    assert!(latest.instance_id == "v3" && latest.interchange.to_json().to_string().contains("99999"), "{latest:?}");

    // Provisioned once more WITHOUT a history: ovsb imports the one it kept, so the client's
    // export at the end still holds the block signed "elsewhere".
    let params = keys_params(&[&key3], &[KEYSTORE_PASSWORD], FEE_1);
    assert_eq!(osb.provision("v4", PLAN_VALIDATOR, Some(params)).await.status, 202);
    assert_eq!(osb.finished("v4").await["state"], "succeeded");
    assert_eq!(osb.deprovision("v4", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(osb.finished("v4").await["state"], "succeeded");
    let latest = broker.store().history(&pk3).await.unwrap().pop().unwrap();
    assert!(latest.instance_id == "v4" && latest.interchange.to_json().to_string().contains("99999"), "{latest:?}");

    // A keystore whose pubkey field names another key than its secret key: caught, nothing kept.
    let mut liar = keystore(6, keys.path());
    let claimed = pubkey(&keystore(7, keys.path()));
    liar["pubkey"] = json!(claimed.trim_start_matches("0x"));
    let params = keys_params(&[&liar], &[KEYSTORE_PASSWORD], FEE_1);
    assert_eq!(osb.provision("v5", PLAN_VALIDATOR, Some(params)).await.status, 202);
    let caught = osb.finished("v5").await;
    assert_eq!(caught["state"], "failed", "{caught}");
    assert!(caught["description"].as_str().unwrap().contains("does not match"), "{caught}");
    assert_eq!(broker.store().validator_key_holder(&claimed).await.unwrap(), None);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_keystore_password_fails_cleanly_and_loads_no_key() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = NodeReaper(dir.path().to_path_buf());
    let root = dir.path().to_path_buf();
    let keys = tempfile::tempdir().unwrap();
    let (key3, key5) = (keystore(3, keys.path()), keystore(5, keys.path()));
    let db = TestDb::new(Db::Postgres, dir.path()).await;
    let broker = with_validators(dir, db, &anvil).await;
    let osb = &broker.osb;

    // Key 5 has the right password, key 3 a wrong one: neither stays loaded.
    let params = keys_params(&[&key5, &key3], &[KEYSTORE_PASSWORD, "not-the-password"], FEE_1);
    assert_eq!(osb.provision("w1", PLAN_VALIDATOR, Some(params)).await.status, 202);
    let failed = osb.finished("w1").await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let description = failed["description"].as_str().unwrap();
    assert!(description.contains("none is kept") && description.contains("error"), "{description}");
    for key in [pubkey(&key3), pubkey(&key5)] {
        assert_eq!(broker.store().validator_key_holder(&key).await.unwrap(), None, "{key} released");
    }
    assert!(nodes_under(&root).is_empty(), "the failed instance's client was stopped");
    assert!(!description.contains(KEYSTORE_PASSWORD) && !description.contains("not-the-password"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovsb_killed_during_a_validator_provision_resumes_with_one_client_and_the_keys() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = NodeReaper(dir.path().to_path_buf());
    let keys = tempfile::tempdir().unwrap();
    let key3 = keystore(3, keys.path());
    let node = anvil.http_url();
    let config = process_config(dir.path(), &node);
    let ports = (free_port(), free_port());
    let mut first = Ovsb::start_on(dir.path(), "first", &config, ports);
    let resp =
        first.osb.provision("r1", PLAN_VALIDATOR, Some(keys_params(&[&key3], &[KEYSTORE_PASSWORD], FEE_1))).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    // Kill ovsb once the client process runs, before the keys are in.
    let started = Instant::now();
    while nodes_under(dir.path()).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "the client did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = nodes_under(dir.path());
    first.kill_9();

    let second = Ovsb::start_on(dir.path(), "second", &config, ports);
    let done = second.osb.finished("r1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(nodes_under(dir.path()), client, "the running client was adopted, no second one started");
    let bound = second.osb.bind("r1", "b1", PLAN_VALIDATOR).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let credentials = &bound.body["credentials"];
    let (status, list) = keymanager(
        Method::GET,
        &format!("{}/eth/v1/keystores", credentials["keymanager_uri"].as_str().unwrap()),
        credentials["keymanager_token"].as_str(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"][0]["validating_pubkey"], pubkey(&key3).as_str(), "{list}");
    assert_eq!(second.osb.deprovision("r1", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(second.osb.finished("r1").await["state"], "succeeded");
    assert!(nodes_under(dir.path()).is_empty(), "deprovision stopped the client");
    assert_eq!(history(&second.osb, &pubkey(&key3)).await.0, 200, "its history is kept");
}

/// `0x` and 32 bytes of `byte`: a root for histories (0 = no root).
fn root_of(byte: u8) -> String {
    format!("0x{}", format!("{byte:02x}").repeat(32))
}

/// An EIP-3076 entry: blocks as (slot, root byte), attestations as (source, target, root byte).
fn entry(pubkey: &str, blocks: &[(u64, u8)], attestations: &[(u64, u64, u8)]) -> Value {
    let root = |byte: u8| if byte == 0 { Value::Null } else { json!(root_of(byte)) };
    json!({
        "pubkey": pubkey,
        "signed_blocks": blocks.iter().map(|&(slot, r)| json!({"slot": slot.to_string(), "signing_root": root(r)})).collect::<Vec<_>>(),
        "signed_attestations": attestations.iter().map(|&(s, t, r)| json!({"source_epoch": s.to_string(), "target_epoch": t.to_string(), "signing_root": root(r)})).collect::<Vec<_>>(),
    })
}

fn interchange(root: &str, data: Vec<Value>) -> Value {
    json!({"metadata": {"interchange_format_version": "5", "genesis_validators_root": root}, "data": data})
}

fn block(pubkey: &str, slot: u64) -> Value {
    json!({"pubkey": pubkey, "block": {"slot": slot, "signing_root": root_of(0x99)}})
}

fn attestation(pubkey: &str, source: u64, target: u64) -> Value {
    json!({"pubkey": pubkey, "attestation": {"source": source, "target": target, "signing_root": root_of(0x99)}})
}

/// Each record of a key's history in a GET answer, as text, sorted.
fn records(doc: &Value) -> Vec<String> {
    let mut out: Vec<String> = doc["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            let blocks =
                e["signed_blocks"].as_array().unwrap().iter().map(|b| format!("block {}", b["slot"].as_str().unwrap()));
            let atts = e["signed_attestations"].as_array().unwrap().iter().map(|a| {
                format!("att {}->{}", a["source_epoch"].as_str().unwrap(), a["target_epoch"].as_str().unwrap())
            });
            blocks.chain(atts).collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

/// Provisions `id` with `keys` (and `history`), waits, deprovisions, waits: one move of the keys.
async fn move_through(osb: &OsbClient, id: &str, keys: &[&Value], history: Option<Value>) {
    let passwords = vec![KEYSTORE_PASSWORD; keys.len()];
    let mut params = keys_params(keys, &passwords, FEE_1);
    if let Some(history) = history {
        params["slashing_protection"] = history;
    }
    assert_eq!(osb.provision(id, PLAN_VALIDATOR, Some(params)).await.status, 202);
    let done = osb.finished(id).await;
    assert_eq!(done["state"], "succeeded", "{id}: {done}");
    assert_eq!(osb.deprovision(id, PLAN_VALIDATOR).await.status, 202);
    let gone = osb.finished(id).await;
    assert_eq!(gone["state"], "succeeded", "{id}: {gone}");
}

/// EIP-3076 as the test vectors exercise it, through the broker and real Lodestar clients: what
/// ovsb accepts is checked field by field; what it hands back is the whole history, each
/// distinct record once, and a fresh client importing it refuses what it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slashing_protection_histories_are_checked_kept_whole_and_protect_a_fresh_client() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = NodeReaper(dir.path().to_path_buf());
    let keys = tempfile::tempdir().unwrap();
    let ks: Vec<Value> = (3..=7).map(|i| keystore(i, keys.path())).collect();
    let pks: Vec<String> = ks.iter().map(pubkey).collect();
    let db = TestDb::new(Db::Sqlite, dir.path()).await;
    let db_url = db.url.clone();
    let root = DEV_GENESIS_VALIDATORS_ROOT;
    // The plan fixes its chain, so a history of another chain is refused at once.
    let broker = TestBroker::start_with_plans(
        dir,
        db,
        &anvil.http_url(),
        free_port(),
        &validator_plan(&anvil.http_url()),
        |c| {
            for plan in c.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
                if let ovsb::config::DriverDecl::Validator(decl) = &mut plan.driver {
                    decl.genesis_validators_root = Some(root.to_string());
                }
            }
        },
    )
    .await;
    let osb = &broker.osb;
    let (k3, k4, k5, k6, k7) = (&pks[0], &pks[1], &pks[2], &pks[3], &pks[4]);

    // Refused with a 400 naming the field, before anything is created: what a client would
    // misread (hex text instead of bytes, hex numbers), what is missing, slashable data, and
    // another chain.
    let before = broker.fingerprint().await;
    let one = |data: Value| interchange(root, vec![data]);
    let mut no_blocks = entry(k3, &[], &[]);
    no_blocks.as_object_mut().unwrap().remove("signed_blocks");
    let mut hex_slot = entry(k3, &[(100, 0x11)], &[]);
    hex_slot["signed_blocks"][0]["slot"] = json!("0x64");
    for (history, field) in [
        (one(entry(k3.trim_start_matches("0x"), &[(100, 0x11)], &[(50, 51, 0x11)])), "at /data/0/pubkey"),
        (
            interchange(root.trim_start_matches("0x"), vec![entry(k3, &[(100, 0x11)], &[])]),
            "at /metadata/genesis_validators_root",
        ),
        (one(hex_slot), "at /data/0/signed_blocks/0/slot"),
        (one(no_blocks), "at /data/0/signed_blocks: required"),
        (one(entry(k3, &[], &[(10, 20, 0x11), (12, 15, 0x11)])), "surround vote"),
        (interchange(&root_of(0x22), vec![entry(k3, &[(100, 0x11)], &[])]), "is not the chain of plan"),
    ] {
        let mut params = keys_params(&[&ks[0]], &[KEYSTORE_PASSWORD], FEE_1);
        params["slashing_protection"] = history;
        let resp = osb.provision("refused", PLAN_VALIDATOR, Some(params)).await;
        resp.assert_error(400, None);
        let description = resp.body["description"].as_str().unwrap();
        assert!(description.starts_with("parameters.slashing_protection"), "{description}");
        assert!(description.contains(field), "{field}: {description}");
    }
    assert_eq!(broker.fingerprint().await, before, "refused requests change nothing");

    // One document, three keys: one key written twice (once in upper-case hex: the same bytes),
    // another twice with two blocks at one slot and attestations out of order, a third with a
    // wide attestation to be surrounded or surround.
    let upper = format!("0x{}", k3[2..].to_ascii_uppercase());
    let given = interchange(
        root,
        vec![
            entry(k3, &[(100, 0x11)], &[(50, 51, 0x11)]),
            entry(&upper, &[(90, 0x12)], &[]),
            entry(k4, &[(10, 0x11), (10, 0x12)], &[(5, 6, 0x11), (1, 2, 0x11)]),
            entry(k4, &[], &[(3, 4, 0x11)]),
            entry(k5, &[], &[(10, 20, 0x11)]),
        ],
    );
    move_through(osb, "a1", &[&ks[0], &ks[1], &ks[2]], Some(given)).await;
    let mut kept = Vec::new();
    for key in [k3, k4, k5] {
        let (status, doc) = history(osb, key).await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["metadata"]["genesis_validators_root"], root);
        assert_eq!(doc["data"].as_array().unwrap().len(), 1, "one entry for the key: {doc}");
        assert_eq!(doc["data"][0]["pubkey"], key.as_str());
        kept.push(doc);
    }
    assert_eq!(records(&kept[0]), ["att 50->51", "block 100", "block 90"], "both entries of k3 kept");
    assert_eq!(
        records(&kept[1]),
        ["att 1->2", "att 3->4", "att 5->6", "block 10", "block 10"],
        "two blocks at one slot stay two"
    );
    assert_eq!(records(&kept[2]), ["att 10->20"]);

    // What ovsb hands back protects a fresh client.
    let cases: [(&Value, Vec<Value>, Vec<bool>); 3] = [
        (
            &kept[0],
            vec![block(k3, 100), block(k3, 90), block(k3, 101), attestation(k3, 50, 51), attestation(k3, 51, 52)],
            vec![false, false, true, false, true],
        ),
        (
            &kept[1],
            vec![
                block(k4, 10),
                attestation(k4, 1, 2),
                attestation(k4, 0, 7),
                attestation(k4, 3, 4),
                attestation(k4, 6, 7),
            ],
            vec![false, false, false, false, true],
        ),
        (
            &kept[2],
            vec![attestation(k5, 11, 19), attestation(k5, 9, 21), attestation(k5, 20, 21)],
            vec![false, false, true],
        ),
    ];
    for (doc, signings, allowed) in cases {
        let (import, verdicts) = judge_signings(root, doc, &signings);
        assert_eq!(import, "ok", "a fresh Lodestar imports what ovsb hands back: {doc}");
        let seen: Vec<bool> = verdicts.iter().map(|v| v == "allowed").collect();
        assert_eq!(seen, allowed, "{signings:?} -> {verdicts:?} with {doc}");
    }

    // Five moves of one key, the platform giving back what it has (plus one new block) on
    // every other move and nothing on the others: every record comes back once.
    let mut platform = interchange(root, vec![entry(k6, &[], &[])]);
    for i in 1..=5u64 {
        let given = (i % 2 == 1).then(|| {
            let mut doc = platform.clone();
            doc["data"][0]["signed_blocks"]
                .as_array_mut()
                .unwrap()
                .push(json!({"slot": (1000 + i).to_string(), "signing_root": root_of(0x11)}));
            doc
        });
        move_through(osb, &format!("m{i}"), &[&ks[3]], given).await;
        platform = history(osb, k6).await.1;
    }
    assert_eq!(records(&platform), ["block 1001", "block 1003", "block 1005"], "each distinct record once: {platform}");
    let stored = broker.store().history(k6).await.unwrap();
    assert_eq!(stored.len(), 1, "the store keeps one row per key and chain, not one per move");
    let (import, verdicts) =
        judge_signings(root, &platform, &[block(k6, 1001), block(k6, 1005), block(k6, 1000), block(k6, 1006)]);
    assert_eq!(import, "ok");
    assert_eq!(
        verdicts.iter().map(|v| v == "allowed").collect::<Vec<_>>(),
        [false, false, false, true],
        "{verdicts:?}"
    );

    // A stored row that does not decode: the provision fails loudly, no key is imported, and
    // the history is not handed back narrowed.
    move_through(osb, "c0", &[&ks[4]], Some(interchange(root, vec![entry(k7, &[(7, 0x11)], &[])]))).await;
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
        let changed = sqlx::query("UPDATE slashing_protection SET interchange = '{\"metadata\": 5}' WHERE pubkey = $1")
            .bind(k7)
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(changed.rows_affected(), 1);
        conn.close().await.unwrap();
    }
    let corrupt_before = corrupt_rows();
    assert_eq!(
        osb.provision("c1", PLAN_VALIDATOR, Some(keys_params(&[&ks[4]], &[KEYSTORE_PASSWORD], FEE_1))).await.status,
        202
    );
    let failed = osb.finished("c1").await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let description = failed["description"].as_str().unwrap();
    assert!(description.contains("cannot be read") && description.contains("no key was imported"), "{description}");
    assert_eq!(broker.store().validator_key_holder(k7).await.unwrap(), None, "the claim was released");
    assert!(corrupt_rows() > corrupt_before, "ovsb_store_corrupt_rows_total counts it");
    let (status, answer) = history(osb, k7).await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer["description"].as_str().unwrap().contains("not an EIP-3076 interchange"), "{answer}");
    assert_eq!(osb.deprovision("c1", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(osb.finished("c1").await["state"], "succeeded");
    broker.stop().await;
}

fn corrupt_rows() -> u64 {
    ovsb::telemetry::metrics()
        .store_corrupt_rows
        .get_or_create(&ovsb::telemetry::TableLabels { table: "slashing_protection" })
        .get()
}
