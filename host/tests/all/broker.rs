//! The OSB broker against a real anvil, every test run twice: over SQLite and over PostgreSQL.
//!
//! The tests follow the endpoint/status matrix and the idempotency table of the OSB v2.17 spec
//! (see `../shared/osb-spec-notes.md` §1.2 and §1.4); each names the rows it covers. They cover
//! every case the public conformance suites (the Node suite for 2.13, the Go suite for 2.14)
//! check, and, at the end, the v2.17 cases none of them has: binding rotation
//! (`binding_rotatable`, `predecessor_binding_id`), binding `metadata` with `expires_at` and
//! `renew_before`, published schemas that standard validators compile, `update_repeatable`,
//! `maintenance_info` on replays, and ids checked on deletes.

use crate::support;

use reqwest::Method;
use serde_json::{Value, json};
use support::broker::*;
use support::{Anvil, free_port, rpc};

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Postgres).await })*
        }
    };
}

on_both_stores!(
    catalog_lists_services_plans_schemas_and_maintenance_info,
    auth_version_and_identity_headers_are_checked_on_every_endpoint,
    provision_is_asynchronous_and_idempotent,
    provision_refuses_bad_requests_and_changes_nothing,
    provision_conflicts_and_limits,
    fetch_instance_follows_the_instance_state,
    update_changes_the_chain_and_plan_and_is_idempotent,
    update_refuses_what_it_cannot_do,
    deprovision_is_asynchronous_idempotent_and_cascades_to_bindings,
    last_operation_reports_failures_and_tombstones,
    last_operation_is_a_read_that_rebuilds_no_route,
    bind_returns_credentials_that_open_the_endpoint,
    bind_and_unbind_refuse_bad_requests,
    bad_input_gets_a_4xx_and_changes_nothing,
    odd_ids_are_percent_decoded_or_refused,
    plugin_configuration_is_checked_at_provision,
    originating_identity_is_recorded_for_audit,
    a_restart_keeps_instances_bindings_and_routes,
    the_admin_listener_reports_health_and_readiness,
    published_schemas_compile_in_standard_validators_and_are_the_ones_requests_meet,
    a_refused_plan_change_tells_the_platform_not_to_retry,
    a_put_replay_naming_another_maintenance_version_is_a_conflict,
    deprovision_and_unbind_refuse_ids_that_are_not_the_instances,
    bindings_rotate_with_a_predecessor_that_keeps_working_until_unbound,
    rotation_refusals_create_nothing,
    expiring_credentials_carry_metadata_and_stop_at_their_expiry,
    a_stored_column_that_does_not_decode_is_an_error_never_an_empty_value,
);

const INSTANCE: &str = "/v2/service_instances";

fn inst(id: &str) -> String {
    format!("{INSTANCE}/{id}")
}

async fn start(db: Db) -> (Anvil, TestBroker) {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(db, &anvil.http_url(), |_| {}).await;
    (anvil, broker)
}

/// Matrix: `GET /v2/catalog` 200.
async fn catalog_lists_services_plans_schemas_and_maintenance_info(db: Db) {
    let (_anvil, broker) = start(db).await;
    let resp = broker.osb.call(Method::GET, "/v2/catalog", None).await;
    assert_eq!(resp.status, 200);
    let services = resp.body["services"].as_array().unwrap();
    let rpc = services.iter().find(|s| s["id"] == SERVICE).unwrap();
    assert_eq!(rpc["name"], "ethereum-rpc");
    assert_eq!(rpc["bindable"], true);
    assert_eq!(rpc["instances_retrievable"], true);
    assert_eq!(rpc["bindings_retrievable"], true);
    let shared = rpc["plans"].as_array().unwrap().iter().find(|p| p["id"] == PLAN_SHARED).unwrap();
    assert_eq!(shared["name"], "shared");
    assert_eq!(shared["maintenance_info"]["version"], "1.2.0");
    assert_eq!(shared["plan_updateable"], true);
    assert!(shared["maximum_polling_duration"].as_u64().unwrap() > 0);
    let schema = &shared["schemas"]["service_instance"]["create"]["parameters"];
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    assert_eq!(schema["properties"]["plugins"]["items"]["properties"]["name"]["enum"], json!(["pass", "test"]));
    let fixed = rpc["plans"].as_array().unwrap().iter().find(|p| p["id"] == PLAN_FIXED).unwrap();
    assert_eq!(fixed["plan_updateable"], false);
    assert_eq!(shared["binding_rotatable"], json!(false), "2.17 fields for a 2.17 platform");

    // A 2.13 platform gets the catalog as 2.13 defines it: its plan and service schemas with
    // `additionalProperties: false` (as the 2.13 conformance suite's) accept it.
    let old = broker
        .osb
        .send(
            reqwest::Client::new()
                .get(format!("{}/v2/catalog", broker.osb.base))
                .basic_auth(USER, Some(PASSWORD))
                .header("X-Broker-API-Version", "2.13"),
        )
        .await;
    assert_eq!(old.status, 200);
    let plan_2_13 = json!({"type": "object", "additionalProperties": false, "required": ["id", "name", "description"],
        "properties": {"id": {}, "name": {}, "description": {}, "metadata": {}, "free": {}, "bindable": {}, "schemas": {}}});
    let service_2_13 = json!({"type": "object", "additionalProperties": false,
        "properties": {"id": {}, "name": {}, "description": {}, "tags": {}, "requires": {}, "bindable": {},
            "metadata": {}, "dashboard_client": {}, "plan_updateable": {}, "plans": {"type": "array", "items": plan_2_13}}});
    let validator = jsonschema::validator_for(&service_2_13).unwrap();
    for service in old.body["services"].as_array().unwrap() {
        let errors: Vec<String> = validator.iter_errors(service).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "a 2.13 client refuses {}: {errors:?}", service["name"]);
    }
    let old_shared =
        &old.body["services"][0]["plans"].as_array().unwrap().iter().find(|p| p["id"] == PLAN_SHARED).unwrap().clone();
    assert_eq!(old_shared["schemas"], shared["schemas"], "the schemas stay");
    for service in services {
        for name in
            std::iter::once(&service["name"]).chain(service["plans"].as_array().unwrap().iter().map(|p| &p["name"]))
        {
            let name = name.as_str().unwrap();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{name}");
        }
    }
}

/// Every endpoint: 401 (with `WWW-Authenticate`) before 412; request identity echoed.
async fn auth_version_and_identity_headers_are_checked_on_every_endpoint(db: Db) {
    let (_anvil, broker) = start(db).await;
    let client = reqwest::Client::new();
    let base = &broker.osb.base;
    let before = broker.fingerprint().await;
    let endpoints = [
        (Method::GET, "/v2/catalog".to_string()),
        (Method::PUT, format!("{}?accepts_incomplete=true", inst("i1"))),
        (Method::GET, inst("i1")),
        (Method::PATCH, inst("i1")),
        (Method::DELETE, format!("{}?service_id=a&plan_id=b", inst("i1"))),
        (Method::GET, format!("{}/last_operation", inst("i1"))),
        (Method::PUT, format!("{}/service_bindings/b1", inst("i1"))),
        (Method::GET, format!("{}/service_bindings/b1", inst("i1"))),
        (Method::DELETE, format!("{}/service_bindings/b1?service_id=a&plan_id=b", inst("i1"))),
        (Method::GET, format!("{}/service_bindings/b1/last_operation", inst("i1"))),
    ];
    for (method, path) in &endpoints {
        let url = format!("{base}{path}");
        let body = provision_body(PLAN_SHARED);
        // No credentials.
        let resp = broker
            .osb
            .send(client.request(method.clone(), &url).header("X-Broker-API-Version", "2.17").json(&body))
            .await;
        resp.assert_error(401, Some("Unauthorized"));
        assert_eq!(resp.headers["www-authenticate"], "Basic realm=\"ovsb\"", "{method} {path}");
        // Wrong password.
        let resp = broker
            .osb
            .send(
                client
                    .request(method.clone(), &url)
                    .basic_auth(USER, Some("wrong"))
                    .header("X-Broker-API-Version", "2.17"),
            )
            .await;
        resp.assert_error(401, Some("Unauthorized"));
        // Missing, empty, old, and foreign versions.
        for version in [None, Some(""), Some("2.12"), Some("1.17"), Some("3.0"), Some("two")] {
            let mut request = client.request(method.clone(), &url).basic_auth(USER, Some(PASSWORD)).json(&body);
            if let Some(version) = version {
                request = request.header("X-Broker-API-Version", version);
            }
            let resp = broker.osb.send(request.header("X-Broker-API-Request-Identity", "req-42")).await;
            resp.assert_error(412, Some("PreconditionFailed"));
            assert!(resp.body["description"].as_str().unwrap().contains("2.17"));
            assert_eq!(resp.headers["x-broker-api-request-identity"], "req-42", "echoed on errors too");
        }
    }
    assert_eq!(broker.fingerprint().await, before, "refused requests change nothing");
    // 2.13 and 2.14 are accepted; the identity is echoed on success.
    for version in ["2.13", "2.14", "2.17"] {
        let request = client
            .get(format!("{base}/v2/catalog"))
            .basic_auth(USER, Some(PASSWORD))
            .header("X-Broker-API-Version", version)
            .header("X-Broker-API-Request-Identity", "e5d6a1f0");
        let resp = broker.osb.send(request).await;
        assert_eq!(resp.status, 200, "{version}");
        assert_eq!(resp.headers["x-broker-api-request-identity"], "e5d6a1f0");
    }
}

/// Matrix: PUT 202 (async), 422 AsyncRequired; idempotency: identical PUT while in progress →
/// 202 with the same operation; identical PUT once provisioned → 200; last_operation 200 with
/// `Retry-After` while in progress.
async fn provision_is_asynchronous_and_idempotent(db: Db) {
    let (_anvil, broker) = start(db).await;
    let pending_port = broker.pending_port;
    let osb = &broker.osb;

    let resp = osb.call(Method::PUT, &inst("p1"), Some(provision_body(PLAN_PENDING))).await;
    resp.assert_error(422, Some("AsyncRequired"));
    let resp = osb
        .call(Method::PUT, &format!("{}?accepts_incomplete=false", inst("p1")), Some(provision_body(PLAN_PENDING)))
        .await;
    resp.assert_error(422, Some("AsyncRequired"));

    let first = osb.provision("p1", PLAN_PENDING, None).await;
    assert_eq!(first.status, 202, "{first:?}");
    let operation = first.body["operation"].as_str().unwrap().to_string();
    assert!(first.body.get("credentials").is_none());
    // No node yet: still in progress, with a progress description and Retry-After.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let poll = osb.last_operation("p1").await;
    assert_eq!(poll.status, 200);
    assert_eq!(poll.body["state"], "in progress");
    assert!(poll.body["description"].as_str().unwrap().contains("waiting for a node"), "{:?}", poll.body);
    assert_eq!(poll.headers["retry-after"], "1");
    // Identical PUT while in progress: 202, same operation.
    let again = osb.provision("p1", PLAN_PENDING, None).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["operation"], operation.as_str());
    // The operation hint is honoured, an unknown one falls back to the latest.
    let hinted = osb.call(Method::GET, &format!("{}/last_operation?operation={operation}", inst("p1")), None).await;
    assert_eq!(hinted.body["state"], "in progress");
    let unknown = osb.call(Method::GET, &format!("{}/last_operation?operation=provision", inst("p1")), None).await;
    assert_eq!(unknown.status, 200);
    // GET instance while provisioning: 404.
    osb.call(Method::GET, &inst("p1"), None).await.assert_error(404, None);

    // The node appears: the operation succeeds.
    let _node = Anvil::start_on(pending_port, &[]);
    let done = osb.wait("p1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // Identical PUT once provisioned: 200 (even with accepts_incomplete=true).
    let resp = osb.provision("p1", PLAN_PENDING, None).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body.is_object());
    let (instances, operations, _, _) = broker.store().counts().await.unwrap();
    assert_eq!((instances, operations), (1, 1), "replays create nothing");
}

/// Matrix: PUT 400 (malformed, missing mandatory fields, unknown ids), 422 MaintenanceInfoConflict.
async fn provision_refuses_bad_requests_and_changes_nothing(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    let before = broker.fingerprint().await;
    let url = format!("{}?accepts_incomplete=true", inst("bad"));
    let put = |body: Value| {
        let url = url.clone();
        async move { osb.call(Method::PUT, &url, Some(body)).await }
    };
    for field in ["service_id", "plan_id", "organization_guid", "space_guid"] {
        let mut body = provision_body(PLAN_SHARED);
        body.as_object_mut().unwrap().remove(field);
        let resp = put(body.clone()).await;
        resp.assert_error(400, Some("BadRequest"));
        assert!(resp.body["description"].as_str().unwrap().contains(field), "{resp:?}");
        body[field] = json!("");
        put(body).await.assert_error(400, Some("BadRequest"));
    }
    let mut body = provision_body(PLAN_SHARED);
    body["service_id"] = json!("no-such-service");
    put(body).await.assert_error(400, Some("BadRequest"));
    let mut body = provision_body(PLAN_SHARED);
    body["plan_id"] = json!("no-such-plan");
    put(body).await.assert_error(400, Some("BadRequest"));
    let mut body = provision_body(PLAN_SHARED);
    body["plan_id"] = json!(PLAN_SOLO);
    let resp = put(body).await;
    resp.assert_error(400, Some("BadRequest"));
    assert!(resp.body["description"].as_str().unwrap().contains("not a plan of service"));
    // Parameters that do not follow the plan's schema: the 400 names the field and the reason.
    let mut body = provision_body(PLAN_SHARED);
    body["parameters"] = json!({"plugins": [{"name": "nope"}]});
    let resp = put(body).await;
    resp.assert_error(400, Some("BadRequest"));
    let description = resp.body["description"].as_str().unwrap();
    assert!(description.contains("parameters/plugins/0/name") && description.contains("nope"), "{description}");
    let mut body = provision_body(PLAN_SHARED);
    body["parameters"] = json!({"colour": "blue"});
    let resp = put(body).await;
    resp.assert_error(400, Some("BadRequest"));
    assert!(resp.body["description"].as_str().unwrap().contains("colour"), "{resp:?}");
    // maintenance_info: another version is a conflict; `{}` is "not given"; the current one is fine.
    let mut body = provision_body(PLAN_SHARED);
    body["maintenance_info"] = json!({"version": "9.9.9"});
    put(body).await.assert_error(422, Some("MaintenanceInfoConflict"));
    assert_eq!(broker.fingerprint().await, before);
    let mut body = provision_body(PLAN_SHARED);
    body["maintenance_info"] = json!({});
    assert_eq!(put(body).await.status, 202);
    let mut body = provision_body(PLAN_OTHER);
    body["maintenance_info"] = json!({"version": "2.0.0"});
    assert_eq!(osb.call(Method::PUT, &format!("{}?accepts_incomplete=true", inst("mi")), Some(body)).await.status, 202);
}

/// Idempotency: PUT with different attributes → 409, while in progress and once provisioned;
/// unknown request fields are ignored; a plan's instance cap is enforced.
async fn provision_conflicts_and_limits(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    let mut body = provision_body(PLAN_SHARED);
    body["some_future_field"] = json!({"nested": [1, 2]});
    body["context"]["extra"] = json!(true);
    let url = format!("{}?accepts_incomplete=true", inst("c1"));
    assert_eq!(osb.call(Method::PUT, &url, Some(body.clone())).await.status, 202);
    for (field, value) in [
        ("plan_id", json!(PLAN_OTHER)),
        ("organization_guid", json!("org-2")),
        ("space_guid", json!("space-2")),
        ("parameters", json!({"plugins": []})),
    ] {
        let mut different = body.clone();
        different[field] = value;
        osb.call(Method::PUT, &url, Some(different)).await.assert_error(409, Some("Conflict"));
    }
    assert_eq!(osb.wait("c1").await["state"], "succeeded");
    let mut different = body.clone();
    different["plan_id"] = json!(PLAN_OTHER);
    osb.call(Method::PUT, &url, Some(different)).await.assert_error(409, Some("Conflict"));
    // A different context alone is not a different instance.
    let mut same = body.clone();
    same["context"]["extra"] = json!(false);
    assert_eq!(osb.call(Method::PUT, &url, Some(same)).await.status, 200);

    // Cap: one instance of the capped plan.
    osb.ready_instance("cap1", PLAN_CAPPED, None).await;
    osb.provision("cap2", PLAN_CAPPED, None).await.assert_error(422, Some("InstanceLimitReached"));
    assert_eq!(osb.deprovision("cap1", PLAN_CAPPED).await.status, 202);
    assert_eq!(osb.wait("cap1").await["state"], "succeeded");
    assert_eq!(osb.provision("cap2", PLAN_CAPPED, None).await.status, 202, "a deleted instance frees its place");
}

/// Matrix: GET instance 200 / 404 unknown / 422 while updating.
async fn fetch_instance_follows_the_instance_state(db: Db) {
    let (_anvil, broker) = start(db).await;
    let pending_port = broker.pending_port;
    let osb = &broker.osb;
    osb.call(Method::GET, &inst("nope"), None).await.assert_error(404, Some("NotFound"));
    let parameters = json!({"plugins": [{"name": "test", "config": {"mode": "tracer", "tag": "a"}}]});
    osb.ready_instance("f1", PLAN_SHARED, Some(parameters.clone())).await;
    let resp = osb.call(Method::GET, &inst("f1"), None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body["service_id"], SERVICE);
    assert_eq!(resp.body["plan_id"], PLAN_SHARED);
    assert_eq!(resp.body["parameters"], parameters);
    assert_eq!(resp.body["maintenance_info"]["version"], "1.2.0");
    // An update that cannot finish (its target plan's node is not there): 422 while it runs.
    osb.ready_instance("f2", PLAN_SHARED, None).await;
    let mut update = json!({"service_id": SERVICE, "plan_id": PLAN_PENDING});
    let resp = osb.call(Method::PATCH, &format!("{}?accepts_incomplete=true", inst("f2")), Some(update.clone())).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    osb.call(Method::GET, &inst("f2"), None).await.assert_error(422, Some("ConcurrencyError"));
    // The same update again: 202, same operation; another one: ConcurrencyError.
    let again = osb.call(Method::PATCH, &format!("{}?accepts_incomplete=true", inst("f2")), Some(update.clone())).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["operation"], resp.body["operation"]);
    update["parameters"] = json!({"plugins": []});
    osb.call(Method::PATCH, &format!("{}?accepts_incomplete=true", inst("f2")), Some(update))
        .await
        .assert_error(422, Some("ConcurrencyError"));
    // Deprovision and bind while updating: ConcurrencyError.
    osb.deprovision("f2", PLAN_SHARED).await.assert_error(422, Some("ConcurrencyError"));
    // The instance keeps serving its old settings while the update runs.
    let bound = osb.bind("f2", "b1", PLAN_SHARED).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let answer = rpc(bound.body["credentials"]["uri"].as_str().unwrap(), "eth_chainId", json!([])).await;
    assert_eq!(answer["result"], "0x7a69");
    let _node = Anvil::start_on(pending_port, &[]);
    assert_eq!(osb.wait("f2").await["state"], "succeeded");
    let resp = osb.call(Method::GET, &inst("f2"), None).await;
    assert_eq!(resp.body["plan_id"], PLAN_PENDING);
}

/// Matrix: PATCH 202 → succeeded, 200 for a no-op; the change reaches the endpoint without a
/// new binding; idempotency: the same PATCH again → 200.
async fn update_changes_the_chain_and_plan_and_is_idempotent(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    osb.ready_instance("u1", PLAN_SHARED, None).await;
    let bound = osb.bind("u1", "b1", PLAN_SHARED).await;
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69");

    let patch_url = format!("{}?accepts_incomplete=true", inst("u1"));
    let parameters = json!({"plugins": [{"name": "test", "config": {"mode": "respond", "tag": "updated"}}]});
    let update = json!({"service_id": SERVICE, "parameters": parameters, "context": {"platform": "cloudfoundry"}});
    let resp = osb.call(Method::PATCH, &patch_url, Some(update.clone())).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert!(resp.body["operation"].as_str().unwrap().starts_with("update-"));
    assert_eq!(osb.wait("u1").await["state"], "succeeded");
    let answer = rpc(&uri, "eth_chainId", json!([])).await;
    assert_eq!(answer["result"]["trail"], json!(["respond:updated"]), "the new chain serves the old key: {answer}");
    // The same change again: 200, nothing new.
    let (_, operations, _, _) = broker.store().counts().await.unwrap();
    let resp = osb.call(Method::PATCH, &patch_url, Some(update)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, json!({}));
    let resp = osb.call(Method::PATCH, &patch_url, Some(json!({"service_id": SERVICE}))).await;
    assert_eq!(resp.status, 200, "an update without changes is a no-op");
    assert_eq!(broker.store().counts().await.unwrap().1, operations);

    // A plan change: the other plan's default chain applies when the parameters name none…
    let resp = osb
        .call(Method::PATCH, &patch_url, Some(json!({"service_id": SERVICE, "plan_id": PLAN_OTHER, "parameters": {}})))
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(osb.wait("u1").await["state"], "succeeded");
    let fetched = osb.call(Method::GET, &inst("u1"), None).await;
    assert_eq!(fetched.body["plan_id"], PLAN_OTHER);
    assert_eq!(fetched.body["maintenance_info"]["version"], "2.0.0", "a plan change moves to the plan's version");
    let answer = rpc(&uri, "eth_chainId", json!([])).await;
    assert_eq!(answer["result"]["trail"], json!(["respond:plan-default"]), "{answer}");
}

/// Matrix: PATCH 400 (missing/unknown service_id, plan of another service, schema), 404 unknown
/// instance, 422 AsyncRequired, plan not updateable, MaintenanceInfoConflict.
async fn update_refuses_what_it_cannot_do(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    osb.ready_instance("r1", PLAN_SHARED, None).await;
    osb.ready_instance("r2", PLAN_FIXED, None).await;
    let before = broker.fingerprint().await;
    let patch = |id: &str, body: Value| {
        let url = format!("{}?accepts_incomplete=true", inst(id));
        async move { osb.call(Method::PATCH, &url, Some(body)).await }
    };
    patch("r1", json!({})).await.assert_error(400, Some("BadRequest"));
    patch("r1", json!({"service_id": ""})).await.assert_error(400, Some("BadRequest"));
    patch("r1", json!({"service_id": "nope"})).await.assert_error(400, Some("BadRequest"));
    patch("r1", json!({"service_id": SERVICE, "plan_id": PLAN_SOLO})).await.assert_error(400, Some("BadRequest"));
    patch("r1", json!({"service_id": SERVICE, "parameters": {"plugins": "all"}}))
        .await
        .assert_error(400, Some("BadRequest"));
    patch("r1", json!({"service_id": SERVICE, "parameters": [1]})).await.assert_error(400, Some("BadRequest"));
    patch("missing", json!({"service_id": SERVICE})).await.assert_error(404, Some("NotFound"));
    osb.call(Method::PATCH, &inst("r1"), Some(json!({"service_id": SERVICE, "parameters": {}})))
        .await
        .assert_error(422, Some("AsyncRequired"));
    patch("r2", json!({"service_id": SERVICE, "plan_id": PLAN_SHARED}))
        .await
        .assert_error(422, Some("PlanChangeNotSupported"));
    patch("r1", json!({"service_id": SERVICE, "plan_id": PLAN_FIXED}))
        .await
        .assert_error(422, Some("PlanChangeNotSupported"));
    patch("r1", json!({"service_id": SERVICE, "maintenance_info": {"version": "1.1.0"}}))
        .await
        .assert_error(422, Some("MaintenanceInfoConflict"));
    patch("r1", json!({"service_id": SERVICE, "parameters": {"plugins": [{"name": "test", "config": {"mode": "reject", "message": "no thanks"}}]}}))
        .await
        .assert_error(400, Some("BadRequest"));
    assert_eq!(broker.fingerprint().await, before, "refused updates change nothing");
    assert_eq!(osb.call(Method::GET, &inst("r1"), None).await.body.get("parameters"), None);
}

/// Matrix: DELETE 202 → last_operation succeeded; 400 without service_id/plan_id even for an
/// unknown instance; 410 for an unknown or deleted instance; 422 AsyncRequired; idempotency:
/// DELETE in progress → 202 same operation. Live bindings are revoked (cascade).
async fn deprovision_is_asynchronous_idempotent_and_cascades_to_bindings(db: Db) {
    let (_anvil, broker) = start(db).await;
    let pending_port = broker.pending_port;
    let osb = &broker.osb;
    for query in ["", "?service_id=x", "?plan_id=y", "?service_id=&plan_id=y", "?service_id=x&plan_id="] {
        osb.call(Method::DELETE, &format!("{}{query}", inst("unknown")), None)
            .await
            .assert_error(400, Some("BadRequest"));
    }
    osb.deprovision("unknown", PLAN_SHARED).await.assert_error(410, Some("Gone"));

    osb.ready_instance("d1", PLAN_SHARED, None).await;
    let bound = osb.bind("d1", "b1", PLAN_SHARED).await;
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x7a69");
    osb.call(Method::DELETE, &format!("{}?service_id={SERVICE}&plan_id={PLAN_SHARED}", inst("d1")), None)
        .await
        .assert_error(422, Some("AsyncRequired"));
    let resp = osb.deprovision("d1", PLAN_SHARED).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    // Cascade: the binding's key is refused from now on.
    let (status, body) = support::post(&uri, &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(osb.wait("d1").await["state"], "succeeded");
    osb.deprovision("d1", PLAN_SHARED).await.assert_error(410, Some("Gone"));
    osb.call(Method::GET, &inst("d1"), None).await.assert_error(404, None);
    osb.call(Method::GET, &format!("{}/service_bindings/b1", inst("d1")), None).await.assert_error(404, None);

    // DELETE while provisioning: ConcurrencyError; a failed provision can be deprovisioned.
    assert_eq!(osb.provision("d2", PLAN_PENDING, None).await.status, 202);
    osb.deprovision("d2", PLAN_PENDING).await.assert_error(422, Some("ConcurrencyError"));
    // DELETE in progress: 202, same operation (a node that never answers keeps it running).
    let _node = Anvil::start_on(pending_port, &[]);
    assert_eq!(osb.wait("d2").await["state"], "succeeded");
    let first = osb.deprovision("d2", PLAN_PENDING).await;
    let second = osb.deprovision("d2", PLAN_PENDING).await;
    assert_eq!(first.status, 202);
    assert!(
        second.status == 202 && second.body["operation"] == first.body["operation"] || second.status == 410,
        "{second:?}"
    );
    // A re-provision of a deleted id starts afresh.
    assert_eq!(osb.wait("d2").await["state"], "succeeded");
    assert_eq!(osb.provision("d2", PLAN_SHARED, None).await.status, 202);
    assert_eq!(osb.wait("d2").await["state"], "succeeded");
}

/// last_operation: 404 for an unknown instance; `failed` with the reason when the plan's
/// maximum_polling_duration passes; a finished deprovision reports `succeeded`, then 410 once
/// the tombstone has aged.
async fn last_operation_reports_failures_and_tombstones(db: Db) {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(db, &anvil.http_url(), |config| {
        config.operations.tombstone_hours = 0;
        for plan in config.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            if plan.id == PLAN_PENDING {
                plan.maximum_polling_duration = 2;
            }
        }
    })
    .await;
    let osb = &broker.osb;
    osb.last_operation("unknown").await.assert_error(404, Some("NotFound"));
    assert_eq!(osb.provision("l1", PLAN_PENDING, None).await.status, 202);
    let failed = osb.wait("l1").await;
    assert_eq!(failed["state"], "failed");
    let description = failed["description"].as_str().unwrap();
    assert!(description.contains("maximum_polling_duration"), "{description}");
    assert!(failed.get("instance_usable").is_none(), "not on a failed provision");
    // A failed instance cannot be bound or updated, only deprovisioned.
    osb.bind("l1", "b", PLAN_PENDING).await.assert_error(422, Some("InstanceFailed"));
    assert_eq!(osb.deprovision("l1", PLAN_PENDING).await.status, 202);
    // tombstone_hours = 0: once the deprovision is done, the tombstone has aged at once: 410.
    // (A poll racing the finish may still see 200; a few polls later the answer must be 410.)
    let mut last = osb.last_operation("l1").await;
    for _ in 0..200 {
        if last.status != 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        last = osb.last_operation("l1").await;
    }
    last.assert_error(410, Some("Gone"));
}

/// `GET last_operation` is a read: it rebuilds no route, even when the store has moved on since
/// this replica last followed its change log (a bind's change here, with the follower idle).
async fn last_operation_is_a_read_that_rebuilds_no_route(db: Db) {
    let anvil = Anvil::start(&[]);
    // The follower polls the change log once at start, then not during the test: only requests
    // could rebuild routes.
    let broker =
        TestBroker::start(db, &anvil.http_url(), |config| config.operations.sync_interval_ms = 3_600_000).await;
    let osb = &broker.osb;
    osb.ready_instance("q1", PLAN_SHARED, None).await;
    // The bind rebuilds q1's routes; the change it commits leaves the follower behind the store.
    assert_eq!(osb.bind("q1", "k", PLAN_SHARED).await.status, 201);
    let routing = &broker.server.as_ref().unwrap().routing;
    let before = routing.sync_counts();
    for _ in 0..3 {
        let polled = osb.last_operation("q1").await;
        assert_eq!((polled.status, &polled.body["state"]), (200, &json!("succeeded")), "{polled:?}");
    }
    assert_eq!(routing.sync_counts(), before, "a poll rebuilt routes (full, single-instance)");
}

/// Matrix: bind 201 with credentials (uri, ws_uri, token, endpoints); 200 for an identical
/// replay with the same credentials; GET binding 200; binding last_operation 200; the key opens
/// the endpoint by path and by Bearer; unbind 200 revokes it at once; unbind again 410.
async fn bind_returns_credentials_that_open_the_endpoint(db: Db) {
    let (anvil, broker) = start(db).await;
    let osb = &broker.osb;
    let chain = json!({"plugins": [
        {"name": "test", "config": {"mode": "pass", "tag": "one"}},
        {"name": "pass"},
    ]});
    osb.ready_instance("b1", PLAN_SHARED, Some(chain)).await;
    let created = osb.bind("b1", "k1", PLAN_SHARED).await;
    assert_eq!(created.status, 201, "{created:?}");
    let credentials = &created.body["credentials"];
    let token = credentials["token"].as_str().unwrap();
    assert_eq!(token.len(), 43);
    assert_eq!(credentials["uri"], format!("{}/v1/{token}", broker.gateway));
    assert_eq!(credentials["ws_uri"], format!("{}/v1/{token}", broker.gateway.replace("http://", "ws://")));
    let endpoint = &created.body["endpoints"][0];
    assert_eq!(endpoint["host"], "127.0.0.1");
    assert_eq!(endpoint["protocol"], "tcp");
    // The key is not in the store.
    let row = broker.store().binding("b1", "k1").await.unwrap().unwrap();
    assert_ne!(row.key_sha256, token);
    assert!(!format!("{row:?}").contains(token));

    // The endpoint, by path and by Bearer, through the chain, equals anvil.
    let uri = credentials["uri"].as_str().unwrap();
    let direct = rpc(&anvil.http_url(), "eth_chainId", json!([])).await;
    assert_eq!(rpc(uri, "eth_chainId", json!([])).await["result"], direct["result"]);
    let (status, body) = support::post_raw(
        &format!("{}/", broker.gateway),
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).to_string(),
        Some(token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"], rpc(&anvil.http_url(), "eth_blockNumber", json!([])).await["result"]);

    // Identical replay: 200 with the same credentials; different parameters: 409.
    let replay = osb.bind("b1", "k1", PLAN_SHARED).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body["credentials"], created.body["credentials"]);
    let different = osb
        .call(
            Method::PUT,
            &format!("{}/service_bindings/k1", inst("b1")),
            Some(json!({"service_id": SERVICE, "plan_id": PLAN_SHARED, "bind_resource": {"app_guid": "app-2"}})),
        )
        .await;
    different.assert_error(409, Some("Conflict"));
    // A different valid plan is a conflict too (checked before the plan-matches-instance rule).
    osb.bind("b1", "k1", PLAN_OTHER).await.assert_error(409, Some("Conflict"));

    let fetched = osb.call(Method::GET, &format!("{}/service_bindings/k1", inst("b1")), None).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body["credentials"], created.body["credentials"]);
    let op = osb.call(Method::GET, &format!("{}/service_bindings/k1/last_operation", inst("b1")), None).await;
    assert_eq!(op.status, 200);
    assert_eq!(op.body["state"], "succeeded");

    // A second binding has its own key; unbinding one leaves the other working.
    let other = osb.bind("b1", "k2", PLAN_SHARED).await;
    let other_uri = other.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_ne!(other_uri, uri);
    let resp = osb.unbind("b1", "k1", PLAN_SHARED).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, json!({}));
    let (status, body) = support::post(uri, &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})).await;
    assert_eq!(status, 401, "revoked before the 200 was sent: {body}");
    assert_eq!(rpc(&other_uri, "eth_chainId", json!([])).await["result"], direct["result"]);
    osb.unbind("b1", "k1", PLAN_SHARED).await.assert_error(410, Some("Gone"));
    osb.call(Method::GET, &format!("{}/service_bindings/k1", inst("b1")), None).await.assert_error(404, None);
    osb.call(Method::GET, &format!("{}/service_bindings/k1/last_operation", inst("b1")), None)
        .await
        .assert_error(404, None);
    // Older platforms (2.13) get no `endpoints`.
    let old = osb
        .send(
            reqwest::Client::new()
                .put(format!("{}{}/service_bindings/k3", osb.base, inst("b1")))
                .basic_auth(USER, Some(PASSWORD))
                .header("X-Broker-API-Version", "2.13")
                .json(&json!({"service_id": SERVICE, "plan_id": PLAN_SHARED})),
        )
        .await;
    assert_eq!(old.status, 201);
    assert!(old.body.get("endpoints").is_none());
}

/// Matrix: bind 400 (malformed, missing ids, unknown ids, plan not the instance's, parameters),
/// 404 unknown instance, 422 ConcurrencyError while provisioning; unbind 400 without ids.
async fn bind_and_unbind_refuse_bad_requests(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    osb.ready_instance("x1", PLAN_SHARED, None).await;
    assert_eq!(osb.provision("x2", PLAN_PENDING, None).await.status, 202);
    let before = broker.fingerprint().await;
    let bind = |instance: &str, body: Value| {
        let path = format!("{}/service_bindings/kb", inst(instance));
        async move { osb.call(Method::PUT, &path, Some(body)).await }
    };
    bind("x1", json!({"plan_id": PLAN_SHARED})).await.assert_error(400, Some("BadRequest"));
    bind("x1", json!({"service_id": SERVICE})).await.assert_error(400, Some("BadRequest"));
    bind("x1", json!({"service_id": SERVICE, "plan_id": "nope"})).await.assert_error(400, Some("BadRequest"));
    bind("x1", json!({"service_id": SERVICE2, "plan_id": PLAN_SOLO})).await.assert_error(400, Some("BadRequest"));
    bind("x1", json!({"service_id": SERVICE, "plan_id": PLAN_OTHER})).await.assert_error(400, Some("BadRequest"));
    bind("x1", json!({"service_id": SERVICE, "plan_id": PLAN_SHARED, "parameters": {"x": 1}}))
        .await
        .assert_error(400, Some("BadRequest"));
    bind("x1", json!({"service_id": SERVICE, "plan_id": PLAN_SHARED, "parameters": "x"}))
        .await
        .assert_error(400, Some("BadRequest"));
    bind("x1", json!({"service_id": SERVICE, "plan_id": PLAN_SHARED, "predecessor_binding_id": "k0"}))
        .await
        .assert_error(400, Some("BadRequest"));
    bind("missing", json!({"service_id": SERVICE, "plan_id": PLAN_SHARED})).await.assert_error(404, Some("NotFound"));
    bind("x2", json!({"service_id": SERVICE, "plan_id": PLAN_PENDING}))
        .await
        .assert_error(422, Some("ConcurrencyError"));
    for query in ["", "?service_id=a", "?plan_id=b"] {
        osb.call(Method::DELETE, &format!("{}/service_bindings/kb{query}", inst("x1")), None)
            .await
            .assert_error(400, Some("BadRequest"));
    }
    osb.unbind("x1", "never", PLAN_SHARED).await.assert_error(410, Some("Gone"));
    osb.unbind("missing", "never", PLAN_SHARED).await.assert_error(410, Some("Gone"));
    assert_eq!(broker.fingerprint().await, before, "refused binds change nothing");
}

/// Bad input: malformed JSON, wrong types, a 1 MB `parameters`, wrong content, unknown routes
/// and methods: each a 4xx with an OSB error body, and the store unchanged.
async fn bad_input_gets_a_4xx_and_changes_nothing(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    osb.ready_instance("keep", PLAN_SHARED, None).await;
    let before = broker.fingerprint().await;
    let put_url = format!("{}?accepts_incomplete=true", inst("bad"));
    let raw = |method: Method, path: String, body: &'static str| {
        let request = osb.request(method, &path).header("content-type", "application/json").body(body);
        async move { osb.send(request).await }
    };
    for body in ["", "   ", "{", "[]", "42", "null", "{\"service_id\": }", "\u{0}"] {
        raw(Method::PUT, put_url.clone(), body).await.assert_error(400, Some("BadRequest"));
        raw(Method::PATCH, put_url.clone(), body).await.assert_error(400, Some("BadRequest"));
        raw(Method::PUT, format!("{}/service_bindings/x", inst("keep")), body)
            .await
            .assert_error(400, Some("BadRequest"));
    }
    for (field, value) in [
        ("service_id", json!(5)),
        ("plan_id", json!(["a"])),
        ("organization_guid", json!({"a": 1})),
        ("space_guid", json!(true)),
        ("parameters", json!("text")),
        ("parameters", json!([1, 2])),
        ("context", json!(7)),
        ("maintenance_info", json!("1.2.0")),
        ("maintenance_info", json!({"version": 1})),
    ] {
        let mut body = provision_body(PLAN_SHARED);
        body[field] = value;
        let resp = osb.call(Method::PUT, &put_url, Some(body)).await;
        resp.assert_error(400, Some("BadRequest"));
        assert!(resp.body["description"].as_str().unwrap().contains(field), "{resp:?}");
    }
    // 1 MB of parameters.
    let mut body = provision_body(PLAN_SHARED);
    body["parameters"] = json!({"plugins": [{"name": "test", "config": {"blob": "x".repeat(1 << 20)}}]});
    osb.call(Method::PUT, &put_url, Some(body)).await.assert_error(413, Some("PayloadTooLarge"));
    // Bad query strings.
    osb.call(Method::PUT, &format!("{}?accepts_incomplete=maybe", inst("bad")), Some(provision_body(PLAN_SHARED)))
        .await
        .assert_error(400, Some("BadRequest"));
    // Unknown endpoints and methods.
    osb.call(Method::GET, "/v2/nope", None).await.assert_error(404, None);
    osb.call(Method::POST, &inst("keep"), Some(json!({}))).await.assert_error(405, None);
    osb.call(Method::POST, "/v2/catalog", None).await.assert_error(405, None);
    assert_eq!(broker.fingerprint().await, before);
    // Still serving.
    assert_eq!(osb.call(Method::GET, &inst("keep"), None).await.status, 200);
}

/// Ids are percent-decoded; empty, over-long and control-character ids are refused.
async fn odd_ids_are_percent_decoded_or_refused(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    let before = broker.fingerprint().await;
    for bad in ["%00", "a%0Ab", &"x".repeat(300)] {
        osb.provision(bad, PLAN_SHARED, None).await.assert_error(400, Some("BadRequest"));
        osb.call(Method::GET, &inst(bad), None).await.assert_error(400, Some("BadRequest"));
    }
    assert_eq!(broker.fingerprint().await, before);
    // Reserved and non-ASCII characters, percent-encoded, are ids like any other.
    osb.ready_instance("a%2Fb%20c%C3%A9", PLAN_SHARED, None).await;
    let row = broker.store().instance("a/b cé").await.unwrap().expect("stored decoded");
    assert_eq!(row.plan_id, PLAN_SHARED);
    assert_eq!(osb.call(Method::GET, &inst("a%2Fb%20c%C3%A9"), None).await.status, 200);
    let bound = osb.bind("a%2Fb%20c%C3%A9", "k%3F1", PLAN_SHARED).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    assert!(broker.store().binding("a/b cé", "k?1").await.unwrap().is_some());
    assert_eq!(
        rpc(bound.body["credentials"]["uri"].as_str().unwrap(), "eth_chainId", json!([])).await["result"],
        "0x7a69"
    );
}

/// A plugin that refuses its configuration: 400 with the plugin's own message, nothing stored.
async fn plugin_configuration_is_checked_at_provision(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    let before = broker.fingerprint().await;
    let parameters = json!({"plugins": [
        {"name": "pass"},
        {"name": "test", "config": {"mode": "reject", "message": "allow must not be empty"}},
    ]});
    let resp = osb.provision("cfg", PLAN_SHARED, Some(parameters)).await;
    resp.assert_error(400, Some("BadRequest"));
    let description = resp.body["description"].as_str().unwrap();
    assert!(description.contains("allow must not be empty") && description.contains("test"), "{description}");
    assert_eq!(broker.fingerprint().await, before);
    // Too long a chain.
    let long: Vec<Value> = (0..17).map(|_| json!({"name": "pass"})).collect();
    osb.provision("cfg", PLAN_SHARED, Some(json!({"plugins": long}))).await.assert_error(400, Some("BadRequest"));
    assert_eq!(broker.fingerprint().await, before);
}

/// `X-Broker-API-Originating-Identity` is decoded and recorded with each change; a malformed
/// one is a 400.
async fn originating_identity_is_recorded_for_audit(db: Db) {
    use base64::Engine as _;
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    let identity = json!({"user_id": "683ea748-3092-4ff4-b656-39cacc4d5360"});
    let header = format!("cloudfoundry {}", base64::engine::general_purpose::STANDARD.encode(identity.to_string()));
    let request = osb
        .request(Method::PUT, &format!("{}?accepts_incomplete=true", inst("a1")))
        .header("X-Broker-API-Originating-Identity", &header)
        .header("X-Broker-API-Request-Identity", "req-1")
        .json(&provision_body(PLAN_SHARED));
    assert_eq!(osb.send(request).await.status, 202);
    assert_eq!(osb.wait("a1").await["state"], "succeeded");
    let request = osb
        .request(Method::PUT, &format!("{}/service_bindings/k", inst("a1")))
        .header("X-Broker-API-Originating-Identity", &header)
        .json(&json!({"service_id": SERVICE, "plan_id": PLAN_SHARED}));
    assert_eq!(osb.send(request).await.status, 201);
    let audit = broker.store().audit("a1").await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].action, "provision");
    assert_eq!(audit[0].platform.as_deref(), Some("cloudfoundry"));
    assert_eq!(serde_json::from_str::<Value>(audit[0].identity.as_deref().unwrap()).unwrap(), identity);
    assert_eq!(audit[0].request_identity.as_deref(), Some("req-1"));
    assert_eq!(audit[1].action, "bind");
    assert_eq!(audit[1].binding_id.as_deref(), Some("k"));
    let before = broker.fingerprint().await;
    for bad in ["cloudfoundry", "cloudfoundry !!!notbase64", "kubernetes bm90IGpzb24="] {
        let request = osb
            .request(Method::PUT, &format!("{}?accepts_incomplete=true", inst("a2")))
            .header("X-Broker-API-Originating-Identity", bad)
            .json(&provision_body(PLAN_SHARED));
        osb.send(request).await.assert_error(400, Some("BadRequest"));
    }
    assert_eq!(broker.fingerprint().await, before);
}

/// A clean restart: instances, bindings and the same credentials serve again.
async fn a_restart_keeps_instances_bindings_and_routes(db: Db) {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(db, &anvil.http_url(), |_| {}).await;
    let chain = json!({"plugins": [{"name": "test", "config": {"mode": "pass"}}]});
    broker.osb.ready_instance("s1", PLAN_SHARED, Some(chain)).await;
    let bound = broker.osb.bind("s1", "k", PLAN_SHARED).await;
    let uri = bound.body["credentials"]["token"].as_str().unwrap().to_string();
    let (dir, test_db) = broker.stop().await;
    let broker = TestBroker::start_in(dir, test_db, &anvil.http_url(), free_port(), |_| {}).await;
    let again = broker.osb.bind("s1", "k", PLAN_SHARED).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["credentials"]["token"], uri.as_str(), "the same credentials after a restart");
    let answer = rpc(again.body["credentials"]["uri"].as_str().unwrap(), "eth_chainId", json!([])).await;
    assert_eq!(answer["result"], "0x7a69", "{answer}");
    assert_eq!(broker.osb.call(Method::GET, &inst("s1"), None).await.status, 200);
}

/// The admin listener: `/healthz` and `/readyz` (the store answers, the routes are loaded).
async fn the_admin_listener_reports_health_and_readiness(db: Db) {
    let (_anvil, broker) = start(db).await;
    let admin = broker.server.as_ref().unwrap().admin_addr;
    for path in ["/healthz", "/readyz"] {
        let resp = reqwest::get(format!("http://{admin}{path}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(reqwest::get(format!("http://{admin}/v2/catalog")).await.unwrap().status(), 404, "no broker API here");

    // /metrics: the counters move after calls.
    let id = format!("metrics-{db:?}");
    broker.osb.ready_instance(&id, PLAN_SHARED, None).await;
    let bound = broker.osb.bind(&id, "k", PLAN_SHARED).await;
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    for _ in 0..3 {
        rpc(&uri, "eth_chainId", json!([])).await;
    }
    rpc(&uri, "eth_nope", json!([])).await;
    let resp = reqwest::get(format!("http://{admin}/metrics")).await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    let line = format!(r#"ovsb_rpc_calls_total{{instance="{id}",method="eth_chainId",outcome="ok"}} 3"#);
    assert!(text.contains(&line), "{line} in\n{text}");
    let line = format!(r#"ovsb_rpc_calls_total{{instance="{id}",method="eth_nope",outcome="error"}} 1"#);
    assert!(text.contains(&line), "{line}");
    assert!(text.contains(&format!(r#"ovsb_rpc_call_duration_seconds_count{{instance="{id}"}} 4"#)), "{text}");
    assert!(
        text.contains(
            r#"ovsb_broker_requests_total{endpoint="/v2/service_instances/{instance_id}",method="PUT",status="202"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"ovsb_instances{state="ready"}"#), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

/// `/healthz` answers and `/readyz` says "not yet" while the PostgreSQL database is not there;
/// once it is, ovsb finishes starting and becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_database_that_comes_later() {
    use sqlx::Connection as _;
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let name = format!("ovsb_late_{}", ovsb::store::random_id());
    let admin_url = postgres_admin_url();
    let base = admin_url.rsplit_once('/').unwrap().0.to_string();
    let mut config = ovsb::config::Config::from_toml(&test_config_toml(&anvil.http_url(), free_port()), "t").unwrap();
    config.data_dir = dir.path().join("data");
    config.database_url = format!("{base}/{name}");
    let admin_port = free_port();
    config.admin.listen = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let starting = tokio::spawn(ovsb::server::Server::start(config, shutdown.clone()));
    let get = |path: &'static str| async move {
        for _ in 0..100 {
            if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{admin_port}{path}")).await {
                return resp.status().as_u16();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the admin listener never answered");
    };
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/readyz").await, 503, "not ready without its database");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!starting.is_finished(), "still waiting for the database");
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let server = tokio::time::timeout(std::time::Duration::from_secs(30), starting).await.unwrap().unwrap().unwrap();
    assert_eq!(get("/readyz").await, 200);
    shutdown.cancel();
    server.wait(std::time::Duration::from_secs(10)).await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// OSB v2.17 beyond the public conformance suites: published schemas that compile, `update_repeatable`,
// `maintenance_info` on replays, ids checked on deletes, binding rotation (`binding_rotatable`,
// `predecessor_binding_id`) and expiring credentials (`metadata.expires_at`, `renew_before`).

const PLAN_DEVNET: &str = "plan-devnet";

/// The README walkthrough's instance parameters (its devnet plan: a chain id and two plugins).
fn walkthrough_parameters() -> Value {
    json!({"chain_id": 1337, "plugins": [
        {"name": "method-filter", "config": {"deny": ["eth_sendTransaction"]}},
        {"name": "eth-extras"},
    ]})
}

/// The first-party plugins with their published schemas, and a process plan with the
/// walkthrough's `chain_id` parameter (never provisioned here).
async fn start_with_first_party_plugins(db: Db) -> (Anvil, TestBroker) {
    use ovsb_test_artifacts::*;
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let test_db = TestDb::new(db, dir.path()).await;
    let devnet = format!(
        r#"
[[services.plans]]
id = "{PLAN_DEVNET}"
name = "devnet"
description = "an anvil per instance"
[services.plans.driver]
kind = "process"
command = ["{anvil}", "--port", "{{port}}", "--chain-id", "{{chain_id}}"]
ports = [31000, 31999]
[services.plans.driver.parameters.chain_id]
type = "integer"
minimum = 1
default = 31337
"#,
        anvil = support::anvil_binary().display()
    ) + &support::lodestar::validator_plan(&anvil.http_url());
    let broker = TestBroker::start_with_plans(dir, test_db, &anvil.http_url(), free_port(), &devnet, |config| {
        for (name, path) in [
            ("method-filter", METHOD_FILTER_PLUGIN),
            ("rate-limit", RATE_LIMIT_PLUGIN),
            ("cache", CACHE_PLUGIN),
            ("eth-extras", ETH_EXTRAS_PLUGIN),
        ] {
            config.plugins.push(ovsb::config::PluginDecl {
                name: name.into(),
                path: path.into(),
                sha256: None,
                schema: Some(format!("{}/../plugins/{name}/schema.json", env!("CARGO_MANIFEST_DIR")).into()),
                limits: Default::default(),
            });
        }
    })
    .await;
    (anvil, broker)
}

/// Every leaf error's instance path (`anyOf` alternatives' errors included).
fn leaf_paths(err: &jsonschema::ValidationError<'_>, out: &mut Vec<String>) {
    use jsonschema::error::ValidationErrorKind;
    match &err.kind {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context.iter().flatten().for_each(|e| leaf_paths(e, out))
        }
        _ => out.push(err.instance_path.to_string()),
    }
}

/// Python's `jsonschema` (Draft4Validator, from PyPI; tests/run-all.sh installs it) on the
/// catalog's bytes: for every instance schema, whether it compiles, whether the walkthrough's
/// parameters pass, and the path of the best-matching error of `bad` (or null).
fn python_validates(catalog: &[u8], plan: &str, good: &Value, bad: &Value) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match
catalog = json.loads(sys.stdin.buffer.read())
plan_id, good, bad = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {"compiled": 0}
for service in catalog["services"]:
    for plan in service["plans"]:
        for action in ("create", "update"):
            schema = plan["schemas"]["service_instance"][action]["parameters"]
            Draft4Validator.check_schema(schema)
            validator = Draft4Validator(schema)
            validator.is_valid({})  # resolves every $ref it meets
            for error in validator.iter_errors(bad):
                pass
            out["compiled"] += 1
            if plan["id"] == plan_id and action == "create":
                out["good_errors"] = [e.message for e in validator.iter_errors(good)]
                error = best_match(validator.iter_errors(bad))
                out["bad_path"] = None if error is None else "/" + "/".join(str(p) for p in error.absolute_path)
print(json.dumps(out))
"#;
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT, plan, &good.to_string(), &bad.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(catalog).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "Python's jsonschema refused the catalog (tests/run-all.sh installs it: pip install jsonschema): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Defect 1: the published instance schemas (with the plugins' config schemas, method-filter's
/// `#/definitions/pattern` among them) compile in the `jsonschema` crate and in Python's
/// `jsonschema`, from the bytes of `GET /v2/catalog`; the README's walkthrough parameters pass
/// both; a bad setting fails in both, and at the broker, naming the same field.
async fn published_schemas_compile_in_standard_validators_and_are_the_ones_requests_meet(db: Db) {
    let (_anvil, broker) = start_with_first_party_plugins(db).await;
    let response = broker.osb.request(Method::GET, "/v2/catalog").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    let catalog: Value = serde_json::from_slice(&bytes).unwrap();
    let good = walkthrough_parameters();
    let mut bad = good.clone();
    bad["plugins"][1] = json!({"name": "cache", "config": {"ttl_seconds": 0}});
    let field = "/plugins/1/config/ttl_seconds";

    let mut compiled = 0;
    for service in catalog["services"].as_array().unwrap() {
        for plan in service["plans"].as_array().unwrap() {
            for action in ["create", "update"] {
                let schema = &plan["schemas"]["service_instance"][action]["parameters"];
                assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
                let validator = jsonschema::draft4::new(schema)
                    .unwrap_or_else(|err| panic!("plan {} {action}: the published schema compiles: {err}", plan["id"]));
                compiled += 1;
                if plan["id"] == PLAN_DEVNET && action == "create" {
                    let errors: Vec<String> = validator.iter_errors(&good).map(|e| e.to_string()).collect();
                    assert!(errors.is_empty(), "the walkthrough's parameters pass: {errors:?}");
                    let mut paths = Vec::new();
                    validator.iter_errors(&bad).for_each(|e| leaf_paths(&e, &mut paths));
                    assert!(paths.iter().any(|p| p == field), "the crate names {field}: {paths:?}");
                }
            }
            let binding = &plan["schemas"]["service_binding"]["create"]["parameters"];
            jsonschema::draft4::new(binding).expect("the binding schema compiles");
        }
    }
    assert!(compiled >= 12, "every plan's instance schemas were compiled: {compiled}");
    // method-filter's definition moved to the root, its reference with it.
    let devnet = catalog["services"][0]["plans"].as_array().unwrap().iter().find(|p| p["id"] == PLAN_DEVNET).unwrap();
    let schema = &devnet["schemas"]["service_instance"]["create"]["parameters"];
    assert!(schema["definitions"]["method-filter.pattern"].is_object(), "{schema}");
    assert!(!schema.to_string().contains("\"#/definitions/pattern\""), "no reference into nowhere: {schema}");

    // ajv 8 in strict mode (as strict platforms run it) compiles every published schema: no
    // keyword without its type, no union types.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let dapp = format!("{}/../tests/dapp", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("node")
        .arg(format!("{dapp}/ajv-strict.mjs"))
        .arg(file.path())
        .current_dir(&dapp)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "ajv-strict.mjs (tests/run-all.sh installs ajv): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ajv: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(ajv["errors"], json!([]), "ajv's strict mode refuses a published schema: {ajv}");
    assert!(ajv["compiled"].as_u64().unwrap() > compiled as u64, "instance and binding schemas: {ajv}");

    let python = python_validates(&bytes, PLAN_DEVNET, &good, &bad);
    assert_eq!(python["compiled"], compiled, "{python}");
    assert_eq!(python["good_errors"], json!([]), "{python}");
    assert_eq!(python["bad_path"], field, "Python names the same field: {python}");

    // The broker checks requests with the same schema: the walkthrough's parameters are
    // accepted, the bad setting is refused naming the field, and nothing is stored.
    let before = broker.fingerprint().await;
    let resp = broker.osb.provision("bad-cache", PLAN_DEVNET, Some(bad)).await;
    resp.assert_error(400, Some("BadRequest"));
    let description = resp.body["description"].as_str().unwrap();
    assert!(description.contains(&format!("parameters{field}")) && description.contains("cache"), "{description}");
    assert_eq!(broker.fingerprint().await, before);
    // A bad pattern (through the hoisted definition) is refused too.
    let filter = json!({"plugins": [{"name": "method-filter", "config": {"deny": ["eth send"]}}]});
    let resp = broker.osb.provision("bad-pattern", PLAN_SHARED, Some(filter)).await;
    resp.assert_error(400, Some("BadRequest"));
    assert!(resp.body["description"].as_str().unwrap().contains("/plugins/0/config/deny/0"), "{resp:?}");
    assert_eq!(broker.fingerprint().await, before);
}

/// Defect 2: an unsupported plan change is a 422 `PlanChangeNotSupported` with
/// `update_repeatable: false` (the platform must not retry it), and changes nothing.
async fn a_refused_plan_change_tells_the_platform_not_to_retry(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    osb.ready_instance("fixed", PLAN_FIXED, None).await;
    let before = broker.fingerprint().await;
    let resp = osb
        .call(
            Method::PATCH,
            &format!("{}?accepts_incomplete=true", inst("fixed")),
            Some(json!({"service_id": SERVICE, "plan_id": PLAN_SHARED})),
        )
        .await;
    resp.assert_error(422, Some("PlanChangeNotSupported"));
    assert_eq!(resp.body["update_repeatable"], false, "{resp:?}");
    assert_eq!(broker.fingerprint().await, before);
    // Other refusals of an update carry no such field (the spec's default, true, applies).
    let resp = osb
        .call(
            Method::PATCH,
            &format!("{}?accepts_incomplete=true", inst("fixed")),
            Some(json!({"service_id": SERVICE, "maintenance_info": {"version": "0.0.1"}})),
        )
        .await;
    resp.assert_error(422, Some("MaintenanceInfoConflict"));
    assert!(resp.body.get("update_repeatable").is_none(), "{resp:?}");
}

/// Defect 3: `maintenance_info` is part of a provision request. A replay naming the plan's
/// current version while the instance still runs an older one is another instance: 409; a
/// version that is not the plan's is a 422 `MaintenanceInfoConflict`; a replay without it, or
/// with the instance's version, is the identical request (200).
async fn a_put_replay_naming_another_maintenance_version_is_a_conflict(db: Db) {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(db, &anvil.http_url(), |_| {}).await;
    let mut body = provision_body(PLAN_SHARED);
    body["maintenance_info"] = json!({"version": "1.2.0"});
    let url = format!("{}?accepts_incomplete=true", inst("mi"));
    assert_eq!(broker.osb.call(Method::PUT, &url, Some(body.clone())).await.status, 202);
    assert_eq!(broker.osb.wait("mi").await["state"], "succeeded");
    assert_eq!(broker.osb.call(Method::PUT, &url, Some(body.clone())).await.status, 200, "identical replay");
    // The operator moves the plan to 1.3.0; the instance still runs 1.2.0.
    let (dir, test_db) = broker.stop().await;
    let broker = TestBroker::start_in(dir, test_db, &anvil.http_url(), free_port(), |config| {
        for plan in config.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            if plan.id == PLAN_SHARED {
                plan.maintenance_info.as_mut().unwrap().version = "1.3.0".into();
            }
        }
    })
    .await;
    let osb = &broker.osb;
    let before = broker.fingerprint().await;
    let mut upgraded = body.clone();
    upgraded["maintenance_info"] = json!({"version": "1.3.0"});
    let resp = osb.call(Method::PUT, &url, Some(upgraded)).await;
    resp.assert_error(409, Some("Conflict"));
    osb.call(Method::PUT, &url, Some(body.clone())).await.assert_error(422, Some("MaintenanceInfoConflict"));
    assert_eq!(broker.fingerprint().await, before, "refused replays change nothing");
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("maintenance_info");
    assert_eq!(osb.call(Method::PUT, &url, Some(plain)).await.status, 200, "without maintenance_info: identical");
    let fetched = osb.call(Method::GET, &inst("mi"), None).await;
    assert_eq!(fetched.body["maintenance_info"]["version"], "1.2.0");
}

/// Defect 4: deprovision and unbind check `service_id` and `plan_id` against the instance: ids
/// of another plan, or unknown ones, are a 400 and delete nothing (the instance still serves,
/// its binding still works).
async fn deprovision_and_unbind_refuse_ids_that_are_not_the_instances(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    osb.ready_instance("inst-a", PLAN_SHARED, None).await;
    osb.ready_instance("inst-b", PLAN_OTHER, None).await;
    let bound = osb.bind("inst-b", "k", PLAN_OTHER).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    let before = broker.fingerprint().await;
    for (service, plan) in [(SERVICE, PLAN_SHARED), ("nope", "nope"), (SERVICE2, PLAN_SOLO), (SERVICE, "nope")] {
        let resp = osb
            .call(
                Method::DELETE,
                &format!("{}?accepts_incomplete=true&service_id={service}&plan_id={plan}", inst("inst-b")),
                None,
            )
            .await;
        resp.assert_error(400, Some("BadRequest"));
        let resp = osb
            .call(
                Method::DELETE,
                &format!("{}/service_bindings/k?service_id={service}&plan_id={plan}", inst("inst-b")),
                None,
            )
            .await;
        resp.assert_error(400, Some("BadRequest"));
    }
    // Ids are checked first: without accepts_incomplete, unknown ids are still a 400 naming
    // them (not 422 AsyncRequired); another plan's ids on an instance still provisioning are a
    // 400 (not 422 ConcurrencyError).
    let resp = osb.call(Method::DELETE, &format!("{}?service_id=nope&plan_id=nope", inst("inst-b")), None).await;
    resp.assert_error(400, Some("BadRequest"));
    assert!(resp.body["description"].as_str().unwrap().contains("nope"), "{resp:?}");
    assert_eq!(broker.fingerprint().await, before, "nothing changed");
    assert_eq!(osb.provision("inst-p", PLAN_PENDING, None).await.status, 202);
    let before = broker.fingerprint().await;
    let resp = osb
        .call(
            Method::DELETE,
            &format!("{}?accepts_incomplete=true&service_id={SERVICE}&plan_id={PLAN_SHARED}", inst("inst-p")),
            None,
        )
        .await;
    resp.assert_error(400, Some("BadRequest"));
    assert_eq!(broker.fingerprint().await, before, "nothing changed");
    let row = broker.store().instance("inst-b").await.unwrap().unwrap();
    assert_eq!(row.state, ovsb::store::InstanceState::Ready);
    assert_eq!(osb.call(Method::GET, &inst("inst-b"), None).await.status, 200, "the instance is still there");
    let answer = rpc(&uri, "eth_chainId", json!([])).await;
    assert_eq!(answer["result"]["trail"], json!(["respond:plan-default"]), "and its binding still serves: {answer}");
    // The right ids work.
    assert_eq!(osb.unbind("inst-b", "k", PLAN_OTHER).await.status, 200);
    assert_eq!(osb.deprovision("inst-b", PLAN_OTHER).await.status, 202);
    assert_eq!(osb.wait("inst-b").await["state"], "succeeded");
    // Unknown instances are still 410, whatever the ids.
    osb.deprovision("inst-b", PLAN_SHARED).await.assert_error(410, Some("Gone"));
}

/// The test broker with `PLAN_SHARED` rotatable (and `tweak` applied after).
async fn start_rotatable(db: Db, tweak: impl FnOnce(&mut ovsb::config::Config)) -> (Anvil, TestBroker) {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(db, &anvil.http_url(), |config| {
        for plan in config.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            plan.binding_rotatable = plan.id == PLAN_SHARED;
        }
        tweak(config);
    })
    .await;
    (anvil, broker)
}

async fn rotate(osb: &OsbClient, instance: &str, binding: &str, predecessor: &str, plan: &str) -> Resp {
    osb.call(
        Method::PUT,
        &format!("{}/service_bindings/{binding}", inst(instance)),
        Some(json!({"service_id": SERVICE, "plan_id": plan, "predecessor_binding_id": predecessor})),
    )
    .await
}

/// Rotation (v2.17): the catalog says which plans rotate; a bind with a predecessor gets new
/// credentials while the predecessor's keep working; a replay returns the same credentials;
/// unbinding the predecessor leaves the successor serving.
async fn bindings_rotate_with_a_predecessor_that_keeps_working_until_unbound(db: Db) {
    let (_anvil, broker) = start_rotatable(db, |_| {}).await;
    let osb = &broker.osb;
    let catalog = osb.call(Method::GET, "/v2/catalog", None).await.body;
    for plan in catalog["services"].as_array().unwrap().iter().flat_map(|s| s["plans"].as_array().unwrap()) {
        assert_eq!(plan["binding_rotatable"], plan["id"] == PLAN_SHARED, "{plan}");
    }
    osb.ready_instance("rot", PLAN_SHARED, None).await;
    let old = osb.bind("rot", "v1", PLAN_SHARED).await;
    assert_eq!(old.status, 201);
    assert!(old.body.get("metadata").is_none(), "no expiry, no metadata: {:?}", old.body);
    let new = rotate(osb, "rot", "v2", "v1", PLAN_SHARED).await;
    assert_eq!(new.status, 201, "{new:?}");
    let (old_uri, new_uri) =
        (old.body["credentials"]["uri"].as_str().unwrap(), new.body["credentials"]["uri"].as_str().unwrap());
    assert_ne!(old.body["credentials"]["token"], new.body["credentials"]["token"], "new credentials");
    for uri in [old_uri, new_uri] {
        assert_eq!(rpc(uri, "eth_chainId", json!([])).await["result"], "0x7a69", "both keys serve");
    }
    // A replay of the rotation: 200, the same credentials; another predecessor: 409.
    let replay = rotate(osb, "rot", "v2", "v1", PLAN_SHARED).await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body["credentials"], new.body["credentials"]);
    osb.bind("rot", "v2", PLAN_SHARED).await.assert_error(409, Some("Conflict"));
    let fetched = osb.call(Method::GET, &format!("{}/service_bindings/v2", inst("rot")), None).await;
    assert_eq!(fetched.body["credentials"], new.body["credentials"]);
    // The platform deletes the predecessor: its key stops, the successor's serves.
    assert_eq!(osb.unbind("rot", "v1", PLAN_SHARED).await.status, 200);
    let (status, _) = support::post(old_uri, &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})).await;
    assert_eq!(status, 401);
    assert_eq!(rpc(new_uri, "eth_chainId", json!([])).await["result"], "0x7a69");
    // The replay still answers once the predecessor is gone.
    let replay = rotate(osb, "rot", "v2", "v1", PLAN_SHARED).await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body["credentials"], new.body["credentials"]);
    // The successor rotates in turn, with the spec's rotation request: only the predecessor
    // (the ids default to the instance's, the parameters to the predecessor's); replayed: 200.
    let path = format!("{}/service_bindings/v3", inst("rot"));
    let spec_form = json!({"predecessor_binding_id": "v2", "context": {"platform": "cloudfoundry"}});
    let third = osb.call(Method::PUT, &path, Some(spec_form.clone())).await;
    assert_eq!(third.status, 201, "{third:?}");
    assert_eq!(
        rpc(third.body["credentials"]["uri"].as_str().unwrap(), "eth_chainId", json!([])).await["result"],
        "0x7a69"
    );
    let again = osb.call(Method::PUT, &path, Some(spec_form)).await;
    assert_eq!((again.status, &again.body["credentials"]), (200, &third.body["credentials"]), "{again:?}");
    let row = broker.store().binding("rot", "v3").await.unwrap().unwrap();
    assert_eq!((row.service_id.as_str(), row.plan_id.as_str()), (SERVICE, PLAN_SHARED));
    assert_eq!(row.predecessor_id.as_deref(), Some("v2"));
    let audit = broker.store().audit("rot").await.unwrap();
    assert_eq!(audit.iter().filter(|a| a.action == "rotate").count(), 2, "{audit:?}");
}

/// Rotation refusals, each a 400 with nothing created: a plan that does not rotate, a
/// predecessor that is unknown, unbound, another instance's, expired, or the binding itself.
async fn rotation_refusals_create_nothing(db: Db) {
    let (_anvil, broker) = start_rotatable(db, |config| {
        for plan in config.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            if plan.id == PLAN_OTHER {
                plan.binding_rotatable = true;
                plan.binding_ttl = Some(1);
            }
        }
    })
    .await;
    let osb = &broker.osb;
    osb.ready_instance("mine", PLAN_SHARED, None).await;
    osb.ready_instance("theirs", PLAN_SHARED, None).await;
    osb.ready_instance("fixed", PLAN_FIXED, None).await;
    osb.ready_instance("brief", PLAN_OTHER, None).await;
    assert_eq!(osb.bind("mine", "live", PLAN_SHARED).await.status, 201);
    assert_eq!(osb.bind("mine", "gone", PLAN_SHARED).await.status, 201);
    assert_eq!(osb.unbind("mine", "gone", PLAN_SHARED).await.status, 200);
    assert_eq!(osb.bind("theirs", "their-key", PLAN_SHARED).await.status, 201);
    assert_eq!(osb.bind("fixed", "f", PLAN_FIXED).await.status, 201);
    let short = osb.bind("brief", "short", PLAN_OTHER).await;
    assert_eq!(short.status, 201);
    // Wait for the one-second binding to expire (bounded).
    let expires = parse_timestamp(short.body["metadata"]["expires_at"].as_str().unwrap());
    while ovsb::store::now_ms() <= expires {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let before = broker.fingerprint().await;
    for (instance, predecessor, plan, says) in [
        ("fixed", "f", PLAN_FIXED, "binding_rotatable"),
        ("mine", "never", PLAN_SHARED, "not a binding of this instance"),
        ("mine", "gone", PLAN_SHARED, "not a binding of this instance"),
        ("mine", "their-key", PLAN_SHARED, "not a binding of this instance"),
        ("mine", "new", PLAN_SHARED, "another binding"),
        ("brief", "short", PLAN_OTHER, "expired"),
    ] {
        let resp = rotate(osb, instance, "new", predecessor, plan).await;
        resp.assert_error(400, Some("BadRequest"));
        assert!(resp.body["description"].as_str().unwrap().contains(says), "{predecessor}: {resp:?}");
    }
    // The spec's rotation request (only the predecessor) on a plan that does not rotate, and on
    // an instance that does not exist.
    let only = json!({"predecessor_binding_id": "f"});
    let resp = osb.call(Method::PUT, &format!("{}/service_bindings/new", inst("fixed")), Some(only.clone())).await;
    resp.assert_error(400, Some("BadRequest"));
    let resp = osb.call(Method::PUT, &format!("{}/service_bindings/new", inst("nowhere")), Some(only)).await;
    resp.assert_error(404, Some("NotFound"));
    assert_eq!(broker.fingerprint().await, before, "refused rotations create nothing");
    assert!(broker.store().binding("mine", "new").await.unwrap().is_none());
}

/// Milliseconds since the Unix epoch of an OSB timestamp `yyyy-mm-ddThh:mm:ss.sZ`; panics on
/// any other form.
fn parse_timestamp(text: &str) -> i64 {
    let (date, time) = text.strip_suffix('Z').and_then(|t| t.split_once('T')).expect("yyyy-mm-ddThh:mm:ss.sZ");
    let date: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, fraction) = time.split_once('.').expect("fractional seconds");
    let hms: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    assert!(date.len() == 3 && hms.len() == 3 && !fraction.is_empty() && fraction.len() <= 9, "{text}");
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().unwrap();
    let (y, m, d) = (date[0] - i64::from(date[1] <= 2), date[1], date[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hms[0]) * 60 + hms[1]) * 60_000 + hms[2] * 1000 + millis
}

/// Expiring credentials: a plan with `binding_ttl = 2`. The binding (and its fetch) carries
/// `metadata.expires_at` / `renew_before` in the spec's format, `renew_before ≤ expires_at`; the
/// key serves, then, once expired, is refused exactly as a revoked key (-32001, HTTP 401) while
/// the binding still exists in the store. Rotation gives a fresh two seconds.
async fn expiring_credentials_carry_metadata_and_stop_at_their_expiry(db: Db) {
    let (_anvil, broker) = start_rotatable(db, |config| {
        for plan in config.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            if plan.id == PLAN_SHARED {
                plan.binding_ttl = Some(2);
            }
        }
    })
    .await;
    let osb = &broker.osb;
    osb.ready_instance("ttl", PLAN_SHARED, None).await;
    let asked = ovsb::store::now_ms();
    let bound = osb.bind("ttl", "k", PLAN_SHARED).await;
    let answered = ovsb::store::now_ms();
    assert_eq!(bound.status, 201, "{bound:?}");
    let metadata = &bound.body["metadata"];
    let expires = parse_timestamp(metadata["expires_at"].as_str().unwrap());
    let renew = parse_timestamp(metadata["renew_before"].as_str().unwrap());
    assert!(asked + 2000 <= expires && expires <= answered + 2000, "two seconds after the bind: {metadata}");
    assert!(renew <= expires && renew > asked, "{metadata}");
    let fetched = osb.call(Method::GET, &format!("{}/service_bindings/k", inst("ttl")), None).await;
    assert_eq!(fetched.body["metadata"], *metadata, "fetch returns the metadata");
    assert_eq!(osb.bind("ttl", "k", PLAN_SHARED).await.body["metadata"], *metadata, "and so does a replay");

    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"});
    let (status, body) = support::post(&uri, &call).await;
    assert_eq!((status, &body["result"]), (200, &json!("0x7a69")), "serves before it expires: {body}");
    let (status, body) = loop {
        let (status, body) = support::post(&uri, &call).await;
        if status != 200 {
            break (status, body);
        }
        assert!(ovsb::store::now_ms() < expires + 10_000, "still served 10 s after its expiry");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(ovsb::store::now_ms() >= expires, "refused only once expired");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], -32001, "as a revoked key: {body}");
    assert!(broker.store().binding("ttl", "k").await.unwrap().is_some(), "no sweep: the row is still there");
    // An expired binding cannot be rotated; a new binding is the way back.
    rotate(osb, "ttl", "k2", "k", PLAN_SHARED).await.assert_error(400, Some("BadRequest"));
    let fresh = osb.bind("ttl", "k3", PLAN_SHARED).await;
    assert_eq!(fresh.status, 201);
    assert_eq!(
        rpc(fresh.body["credentials"]["uri"].as_str().unwrap(), "eth_chainId", json!([])).await["result"],
        "0x7a69"
    );
    // Platforms speaking 2.15 get no metadata.
    let old = osb
        .send(
            reqwest::Client::new()
                .get(format!("{}{}/service_bindings/k3", osb.base, inst("ttl")))
                .basic_auth(USER, Some(PASSWORD))
                .header("X-Broker-API-Version", "2.15"),
        )
        .await;
    assert_eq!(old.status, 200);
    assert!(old.body.get("metadata").is_none(), "{old:?}");
}

/// A stranger guessing the broker's password from one address gets 429 with `Retry-After` after
/// a few failures, whatever it sends (the right password too), while the platform at another
/// address is not affected; once the wait is over, the right password works again. It used to
/// answer 401 at thousands of guesses a second. An oversized originating identity is a 400
/// naming it, before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_broker_authentication_is_throttled_per_address_and_headers_are_bounded() {
    let (_anvil, broker) = start(Db::Sqlite).await;
    let catalog = format!("{}/v2/catalog", broker.osb.base);
    let from =
        |last: u8| reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 4, last])).build().unwrap();
    let (guesser, platform) = (from(1), from(2));
    let attempt = |client: &reqwest::Client, password: &str| {
        client.get(&catalog).basic_auth(USER, Some(password)).header("X-Broker-API-Version", "2.17").send()
    };
    let mut statuses = Vec::new();
    for n in 0..8 {
        statuses.push(attempt(&guesser, &format!("guess-{n}")).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "then throttled: {statuses:?}");
    let throttled = attempt(&guesser, PASSWORD).await.unwrap();
    assert_eq!(throttled.status(), 429, "the right password from that address waits too");
    let wait: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(attempt(&platform, PASSWORD).await.unwrap().status(), 200, "another address is not affected");

    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    assert_eq!(attempt(&guesser, PASSWORD).await.unwrap().status(), 200, "after the wait, the right password works");

    let identity = format!("cloudfoundry {}", "A".repeat(200 * 1024));
    let resp = broker
        .osb
        .send(
            broker
                .osb
                .request(Method::PUT, &format!("{}?accepts_incomplete=true", inst("big-id")))
                .header("X-Broker-API-Originating-Identity", identity)
                .json(&provision_body(PLAN_SHARED)),
        )
        .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(resp.body["description"].as_str().unwrap().contains("X-Broker-API-Originating-Identity"), "{resp:?}");
    assert_eq!(broker.osb.call(Method::GET, &inst("big-id"), None).await.status, 404, "nothing was stored");
}

/// Writes `sql` (one row, `$1` = `id`) straight into the broker's database, past the store:
/// what a damaged database or a foreign writer leaves behind.
async fn write_raw(broker: &TestBroker, sql: &str, id: &str) {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let url = &broker.db.as_ref().unwrap().url;
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let changed = sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap();
    assert_eq!(changed.rows_affected(), 1, "{sql}");
    conn.close().await.unwrap();
}

fn corrupt_rows(table: &'static str) -> u64 {
    ovsb::telemetry::metrics().store_corrupt_rows.get_or_create(&ovsb::telemetry::TableLabels { table }).get()
}

/// A JSON column that does not decode (instance parameters, binding parameters, an operation's
/// request) fails every read of its row: the broker answers 500, the row is counted in
/// `ovsb_store_corrupt_rows_total{table}`, and it is never served as if the column were empty.
async fn a_stored_column_that_does_not_decode_is_an_error_never_an_empty_value(db: Db) {
    let (_anvil, broker) = start(db).await;
    let osb = &broker.osb;
    let parameters = json!({"plugins": [{"name": "test", "config": {"mode": "tracer", "tag": "a"}}]});
    osb.ready_instance("c1", PLAN_SHARED, Some(parameters.clone())).await;
    assert_eq!(osb.call(Method::GET, &inst("c1"), None).await.body["parameters"], parameters);

    // Instance parameters: the fetch fails, and so does an update decided on the row.
    let before = corrupt_rows("instances");
    write_raw(&broker, "UPDATE instances SET parameters = '{\"plugins\": [' WHERE id = $1", "c1").await;
    let fetched = osb.call(Method::GET, &inst("c1"), None).await;
    fetched.assert_error(500, Some("InternalError"));
    assert!(fetched.body.get("parameters").is_none(), "{fetched:?}");
    let update = json!({"service_id": SERVICE, "parameters": {"plugins": []}});
    osb.call(Method::PATCH, &format!("{}?accepts_incomplete=true", inst("c1")), Some(update))
        .await
        .assert_error(500, Some("InternalError"));
    assert!(corrupt_rows("instances") > before, "ovsb_store_corrupt_rows_total{{table=instances}} counts it");
    let read = broker.store().instance("c1").await;
    assert!(
        matches!(read, Err(ovsb::store::StoreError::Corrupt(ref reason)) if reason.contains("parameters")),
        "{read:?}"
    );

    // Binding parameters.
    osb.ready_instance("c2", PLAN_SHARED, None).await;
    assert_eq!(osb.bind("c2", "k1", PLAN_SHARED).await.status, 201);
    let before = corrupt_rows("bindings");
    write_raw(&broker, "UPDATE bindings SET parameters = 'not json' WHERE id = $1", "k1").await;
    osb.call(Method::GET, &format!("{}/service_bindings/k1", inst("c2")), None)
        .await
        .assert_error(500, Some("InternalError"));
    assert!(corrupt_rows("bindings") > before);

    // An operation's request: last_operation fails rather than reporting on a request it
    // cannot read.
    osb.ready_instance("c3", PLAN_SHARED, None).await;
    let operation = broker.store().instance("c3").await.unwrap().unwrap().operation_id;
    let before = corrupt_rows("operations");
    write_raw(&broker, "UPDATE operations SET request = '{\"sealed\": 5}' WHERE id = $1", &operation).await;
    osb.last_operation("c3").await.assert_error(500, Some("InternalError"));
    assert!(corrupt_rows("operations") > before);
    let read = broker.store().operation(&operation).await;
    assert!(matches!(read, Err(ovsb::store::StoreError::Corrupt(_))), "{read:?}");
}
