//! Validator instances against real Lodestar 1.5.1 clients (`lodestar dev`, interop validators
//! 0..2 running; the tests import interop key 3, the chain's fourth validator): keys in through
//! the keymanager API, the keymanager behind per-binding tokens, the slashing-protection history
//! exported into the store before a client stops, and a restart of ovsb in the middle of a
//! provision.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::broker::{Db, OsbClient, SERVICE, TestBroker, TestDb};
use support::lodestar::{KEYSTORE_PASSWORD, PLAN_VALIDATOR, keystore, process_config, pubkey, validator_plan};
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

async fn history(osb: &OsbClient, key: &str) -> (u16, Value) {
    let resp = osb.call(Method::GET, &format!("/ovsb/v1/slashing-protection/{key}"), None).await;
    (resp.status, resp.body)
}

/// Lodestar's server-sent event stream of heads, through the beacon proxy: the first event
/// arrives while the stream stays open (a proxy that waits for the end of the body shows nothing).
/// The stream, still open.
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
    for text in [fetched.body.to_string(), stored.parameters.clone().unwrap(), operation.request.clone()] {
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

    // Unbind revokes the keymanager token and the beacon URL at once; the successor's stays.
    assert_eq!(osb.unbind("v1", "b1", PLAN_VALIDATOR).await.status, 200);
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
    assert!(latest.instance_id == "v3" && latest.interchange.contains("99999"), "{latest:?}");

    // Provisioned once more WITHOUT a history: ovsb imports the one it kept, so the client's
    // export at the end still holds the block signed "elsewhere".
    let params = keys_params(&[&key3], &[KEYSTORE_PASSWORD], FEE_1);
    assert_eq!(osb.provision("v4", PLAN_VALIDATOR, Some(params)).await.status, 202);
    assert_eq!(osb.finished("v4").await["state"], "succeeded");
    assert_eq!(osb.deprovision("v4", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(osb.finished("v4").await["state"], "succeeded");
    let latest = broker.store().history(&pk3).await.unwrap().pop().unwrap();
    assert!(latest.instance_id == "v4" && latest.interchange.contains("99999"), "{latest:?}");

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
