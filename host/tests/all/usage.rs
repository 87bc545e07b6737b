//! Usage and quotas, end to end: real `ovsb serve` processes, real anvil, SQLite and
//! PostgreSQL. Two bindings make known calls (a batch among them); the usage API answers the
//! exact calls and compute units per binding and method, as JSON and as CSV, and the same after
//! a graceful restart; two replicas on one PostgreSQL database are added up; a quota lets calls
//! through up to its compute units, then refuses them (-32005, HTTP 429) until its window resets.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::broker::{Db, OsbClient, PASSWORD, SERVICE, TestDb, USER, test_config_toml_with};
use support::process::Ovsb;
use support::{Anvil, free_port, rpc};

const PLAN_METERED: &str = "plan-metered";
const PLAN_QUOTA: &str = "plan-quota";
const PLAN_QUOTA_INSTANCE: &str = "plan-quota-instance";
/// The quotas' window, in seconds.
const WINDOW_S: u64 = 10;

/// The test catalog with a metered plan (eth_getBalance weighs 5 there), a plan with a quota of
/// 50 units per binding per 10 s, and one with 50 units per instance. Flushes only at stop or
/// when a report is asked for (the interval is an hour).
fn usage_config(data_dir: &Path, database_url: Option<&str>, node: &str) -> String {
    let plans = format!(
        r#"
[[services.plans]]
id = "{PLAN_METERED}"
name = "metered"
description = "metered"
driver = {{ kind = "upstream", http = ["{node}"] }}
[services.plans.usage]
weights = {{ eth_getBalance = 5 }}

[[services.plans]]
id = "{PLAN_QUOTA}"
name = "quota"
description = "50 units per binding per 10 s"
driver = {{ kind = "upstream", http = ["{node}"] }}
[services.plans.usage]
quota = {{ compute_units = 50, window = "{WINDOW_S}s" }}

[[services.plans]]
id = "{PLAN_QUOTA_INSTANCE}"
name = "quota-instance"
description = "50 units per instance per 10 s"
driver = {{ kind = "upstream", http = ["{node}"] }}
[services.plans.usage]
quota = {{ compute_units = 50, window = "{WINDOW_S}s", per = "instance" }}
"#
    );
    let config = test_config_toml_with(node, free_port(), &plans);
    let mut head = format!("data_dir = \"{}\"\n", data_dir.display());
    if let Some(url) = database_url {
        head.push_str(&format!("database_url = \"{url}\"\n"));
    }
    head.push_str("[usage]\nflush_interval_ms = 3600000\n");
    format!("{head}{config}")
}

async fn bind(osb: &OsbClient, instance: &str, binding: &str, plan: &str) -> String {
    let resp = osb
        .call(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{instance}/service_bindings/{binding}"),
            Some(json!({"service_id": SERVICE, "plan_id": plan})),
        )
        .await;
    assert!(resp.status == 201 || resp.status == 200, "{resp:?}");
    resp.body["credentials"]["uri"].as_str().unwrap().to_string()
}

/// `GET /ovsb/v1/usage?<query>` with the broker's credentials: status, content type, body.
async fn usage(osb: &OsbClient, query: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut request =
        reqwest::Client::new().get(format!("{}/ovsb/v1/usage?{query}", osb.base)).basic_auth(USER, Some(PASSWORD));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

/// A JSON report's rows.
async fn rows(osb: &OsbClient, query: &str) -> Vec<Value> {
    let (status, kind, body) = usage(osb, query, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kind, "application/json");
    serde_json::from_str::<Value>(&body).unwrap()["rows"].as_array().unwrap().clone()
}

/// A CSV report parsed by Python's `csv` module (an independent reader): every field as text.
async fn csv_rows(osb: &OsbClient, query: &str, accept: Option<&str>) -> Vec<BTreeMap<String, String>> {
    use std::io::Write as _;
    let (status, kind, body) = usage(osb, query, accept).await;
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("text/csv"), "{kind}");
    let mut python = std::process::Command::new("python3")
        .args(["-c", "import csv, json, sys; print(json.dumps(list(csv.DictReader(sys.stdin))))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    python.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// (binding, method) → (calls, compute units) of a by-method report of one instance.
fn by_method(rows: &[Value]) -> BTreeMap<(String, String), (u64, u64)> {
    rows.iter()
        .map(|row| {
            let key = (row["binding_id"].as_str().unwrap().to_string(), row["method"].as_str().unwrap().to_string());
            (key, (row["calls"].as_u64().unwrap(), row["compute_units"].as_u64().unwrap()))
        })
        .collect()
}

fn expected(entries: &[(&str, &str, u64, u64)]) -> BTreeMap<(String, String), (u64, u64)> {
    entries.iter().map(|(b, m, calls, units)| ((b.to_string(), m.to_string()), (*calls, *units))).collect()
}

fn ok(answer: &Value) {
    assert!(answer.get("result").is_some(), "{answer}");
}

/// Two bindings of one instance make known calls (a batch among them, an unknown method, a
/// method the plan weighs otherwise); the usage API answers exactly, per binding and method,
/// as JSON and as CSV; calls made after that survive a SIGTERM (flushed at stop, not by the
/// hourly flush) and the figures are the same after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_per_binding_and_method_is_exact_as_json_and_csv_and_survives_a_graceful_restart() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = usage_config(&dir.path().join("data"), None, &anvil.http_url());
    let mut first = Ovsb::start(dir.path(), "first", &config);
    first.osb.ready_instance("u1", PLAN_METERED, None).await;
    let a = bind(&first.osb, "u1", "ba", PLAN_METERED).await;
    let b = bind(&first.osb, "u1", "bb", PLAN_METERED).await;

    let call = json!([{"to": "0x0000000000000000000000000000000000000001", "data": "0x"}, "latest"]);
    for _ in 0..3 {
        ok(&rpc(&a, "eth_blockNumber", json!([])).await);
    }
    ok(&rpc(&a, "eth_getBalance", json!([support::ANVIL_ACCOUNT_0, "latest"])).await);
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_call", "params": call},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_chainId", "params": []},
    ]);
    let (status, answers) = support::post(&a, &batch).await;
    assert_eq!(status, 200);
    assert!(answers.as_array().unwrap().iter().all(|a| a.get("result").is_some()), "{answers}");
    let unknown = rpc(&a, "made_up_method", json!([])).await;
    assert!(unknown.get("error").is_some(), "{unknown}");
    for _ in 0..2 {
        ok(&rpc(&b, "eth_call", call.clone()).await);
    }
    ok(&rpc(&b, "eth_blockNumber", json!([])).await);

    let want = expected(&[
        ("ba", "eth_blockNumber", 4, 40),
        ("ba", "eth_getBalance", 1, 5),
        ("ba", "eth_call", 1, 26),
        ("ba", "eth_chainId", 1, 0),
        ("ba", "made_up_method", 1, 20),
        ("bb", "eth_call", 2, 52),
        ("bb", "eth_blockNumber", 1, 10),
    ]);
    let report = rows(&first.osb, "instance_id=u1&by=method").await;
    assert_eq!(by_method(&report), want);
    let unknown_row = report.iter().find(|r| r["method"] == "made_up_method").unwrap();
    assert_eq!((unknown_row["error"].as_u64(), unknown_row["ok"].as_u64()), (Some(1), Some(0)), "{unknown_row}");
    assert!(report.iter().all(|r| r["instance_id"] == "u1" && r["bytes_out"].as_u64().unwrap() > 0));

    // Per binding, as JSON and as CSV (asked by Accept, and by format=csv).
    let totals = rows(&first.osb, "instance_id=u1").await;
    let totals: Vec<(String, u64, u64, u64)> = totals
        .iter()
        .map(|r| {
            let id = r["binding_id"].as_str().unwrap().to_string();
            (id, r["calls"].as_u64().unwrap(), r["compute_units"].as_u64().unwrap(), r["ok"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(totals, vec![("ba".to_string(), 8, 91, 7), ("bb".to_string(), 3, 62, 3)]);
    let csv = csv_rows(&first.osb, "instance_id=u1&by=method", Some("text/csv")).await;
    let from_csv: BTreeMap<(String, String), (u64, u64)> = csv
        .iter()
        .map(|r| {
            assert_eq!(r["instance_id"], "u1");
            (
                (r["binding_id"].clone(), r["method"].clone()),
                (r["calls"].parse().unwrap(), r["compute_units"].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(from_csv, want);
    let csv = csv_rows(&first.osb, "instance_id=u1&binding_id=bb&format=csv", None).await;
    assert_eq!(csv.len(), 1);
    assert_eq!((csv[0]["calls"].as_str(), csv[0]["compute_units"].as_str()), ("3", "62"));

    // Bad parameters: a 400 naming the parameter; no credentials: 401.
    let (status, _, body) = usage(&first.osb, "by=week", None).await;
    assert_eq!(status, 400);
    assert!(body.contains("by"), "{body}");
    let (status, _, body) = usage(&first.osb, "from=yesterday", None).await;
    assert_eq!(status, 400);
    assert!(body.contains("from"), "{body}");
    let anonymous = reqwest::get(format!("{}/ovsb/v1/usage", first.osb.base)).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // One more call, then SIGTERM before any flush: the stop flushes it.
    ok(&rpc(&a, "eth_blockNumber", json!([])).await);
    assert!(first.terminate(Duration::from_secs(30)).success());
    let second = Ovsb::start(dir.path(), "second", &config);
    let mut want = want;
    want.insert(("ba".into(), "eth_blockNumber".into()), (5, 50));
    assert_eq!(by_method(&rows(&second.osb, "instance_id=u1&by=method").await), want);
    let by_hour = rows(&second.osb, "instance_id=u1&binding_id=ba&by=hour").await;
    let calls: u64 = by_hour.iter().map(|r| r["calls"].as_u64().unwrap()).sum();
    assert_eq!(calls, 9);
    assert!(by_hour.iter().all(|r| r["hour"].as_str().unwrap().ends_with(":00:00Z")), "{by_hour:?}");
}

/// Two replicas on one PostgreSQL database: calls through both gateways with one key are added
/// up in one answer (each replica writes its own rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_add_up_in_one_answer() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Postgres, dir.path()).await;
    let a = Ovsb::start(dir.path(), "a", &usage_config(&dir.path().join("a"), Some(&db.url), &anvil.http_url()));
    let b = Ovsb::start(dir.path(), "b", &usage_config(&dir.path().join("b"), Some(&db.url), &anvil.http_url()));
    a.osb.ready_instance("r1", PLAN_METERED, None).await;
    let on_a = bind(&a.osb, "r1", "app", PLAN_METERED).await;
    let on_b = bind(&b.osb, "r1", "app", PLAN_METERED).await;
    assert_ne!(on_a, on_b);
    let started = Instant::now();
    // Until B has the route (an unknown key is not metered).
    while rpc(&on_b, "eth_chainId", json!([])).await.get("result").is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "B never served the key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        ok(&rpc(&on_a, "eth_blockNumber", json!([])).await);
    }
    for _ in 0..2 {
        ok(&rpc(&on_b, "eth_blockNumber", json!([])).await);
    }
    // A report through B flushes B; one through A flushes A and adds up both.
    let through_b = by_method(&rows(&b.osb, "instance_id=r1&by=method").await);
    assert_eq!(through_b[&("app".to_string(), "eth_blockNumber".to_string())], (2, 20));
    let through_a = by_method(&rows(&a.osb, "instance_id=r1&by=method").await);
    assert_eq!(through_a[&("app".to_string(), "eth_blockNumber".to_string())], (5, 50));
    let replicas: i64 =
        sqlx::query_scalar("SELECT COUNT(DISTINCT replica_id) FROM usage_minutes WHERE instance_id = 'r1'")
            .fetch_one(&sqlx::PgPool::connect(&db.url).await.unwrap())
            .await
            .unwrap();
    assert_eq!(replicas, 2, "each replica wrote its own rows");
}

/// Waits until the next quota window has just started.
async fn start_of_a_window() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let into = now % (WINDOW_S * 1000);
    tokio::time::sleep(Duration::from_millis(WINDOW_S * 1000 - into + 100)).await;
}

/// A call with its HTTP status, `Retry-After` and JSON answer.
async fn call(uri: &str, method: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(uri)
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": []}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, response.json().await.unwrap())
}

fn assert_quota_refusal((status, retry, answer): &(u16, Option<String>, Value), per: &str) -> u64 {
    assert_eq!(*status, 429, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], -32005, "{answer}");
    assert_eq!(answer["id"], 7);
    let data = &error["data"];
    assert_eq!((data["reason"].as_str(), data["limit"].as_u64()), (Some("quota"), Some(50)), "{answer}");
    assert_eq!((data["window"].as_str(), data["per"].as_str()), (Some("10s"), Some(per)), "{answer}");
    let retry_after_ms = data["retry_after_ms"].as_u64().unwrap();
    assert!((1..=WINDOW_S * 1000).contains(&retry_after_ms), "{answer}");
    let seconds: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
    assert_eq!(seconds, retry_after_ms.div_ceil(1000));
    retry_after_ms
}

/// A quota of 50 units (eth_blockNumber: 10) lets five calls through, then refuses with -32005
/// `reason: quota`, HTTP 429 and `Retry-After`, until the window resets; another binding (per
/// binding) or another instance (per instance) is unaffected. Refused calls cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refuses_past_its_units_until_the_window_resets_and_spares_the_others() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ovsb = Ovsb::start(dir.path(), "q", &usage_config(&dir.path().join("data"), None, &anvil.http_url()));
    ovsb.osb.ready_instance("q1", PLAN_QUOTA, None).await;
    ovsb.osb.ready_instance("q2", PLAN_QUOTA_INSTANCE, None).await;
    ovsb.osb.ready_instance("q3", PLAN_QUOTA_INSTANCE, None).await;
    let qa = bind(&ovsb.osb, "q1", "qa", PLAN_QUOTA).await;
    let qb = bind(&ovsb.osb, "q1", "qb", PLAN_QUOTA).await;
    let ia = bind(&ovsb.osb, "q2", "ia", PLAN_QUOTA_INSTANCE).await;
    let ib = bind(&ovsb.osb, "q2", "ib", PLAN_QUOTA_INSTANCE).await;
    let ic = bind(&ovsb.osb, "q3", "ic", PLAN_QUOTA_INSTANCE).await;

    start_of_a_window().await;
    // Per binding: five calls of 10 units, then refusals (again and again: they cost nothing).
    for _ in 0..5 {
        let (status, _, answer) = call(&qa, "eth_blockNumber").await;
        assert_eq!(status, 200, "{answer}");
        ok(&answer);
    }
    let retry_after_ms = assert_quota_refusal(&call(&qa, "eth_blockNumber").await, "binding");
    assert_quota_refusal(&call(&qa, "eth_chainId").await, "binding");
    let (status, batch) = support::post(
        &qa,
        &json!([
            {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
            {"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber", "params": []},
        ]),
    )
    .await;
    assert_eq!(status, 429, "{batch}");
    assert!(batch.as_array().unwrap().iter().all(|a| a["error"]["data"]["reason"] == "quota"), "{batch}");
    // The other binding of the instance has its own quota.
    ok(&call(&qb, "eth_blockNumber").await.2);

    // Per instance: the bindings share 50 units; another instance is unaffected.
    for uri in [&ia, &ib, &ia, &ib, &ia] {
        ok(&call(uri, "eth_blockNumber").await.2);
    }
    assert_quota_refusal(&call(&ib, "eth_blockNumber").await, "instance");
    assert_quota_refusal(&call(&ia, "eth_blockNumber").await, "instance");
    ok(&call(&ic, "eth_blockNumber").await.2);

    // Once the window resets, calls go through again.
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 200)).await;
    let (status, _, answer) = call(&qa, "eth_blockNumber").await;
    assert_eq!(status, 200, "{answer}");
    ok(&answer);
    ok(&call(&ib, "eth_blockNumber").await.2);

    // The refusals are in the usage, in the `limit` class, at no cost.
    let report = rows(&ovsb.osb, "instance_id=q1&binding_id=qa").await;
    assert_eq!(report.len(), 1);
    let row = &report[0];
    assert_eq!((row["calls"].as_u64(), row["limit"].as_u64(), row["ok"].as_u64()), (Some(10), Some(4), Some(6)));
    assert_eq!(row["compute_units"].as_u64(), Some(60));
}
