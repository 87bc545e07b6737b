//! The `kubernetes` and `kubernetes-validator` drivers, and the manifests that run ovsb itself on
//! Kubernetes. No API server can run on these machines, so the drivers talk to
//! `FakeKubeApiServer` (tests/all/support/fake_kube.rs), a fake that serves apply/get/list/delete
//! and runs each pod's container as a local process: a real anvil for node plans, a real
//! Lodestar for validator plans. The rendered objects of every plan of the shipped manifest are
//! compared with golden files (`OVSB_UPDATE_GOLDEN=1` rewrites them).

use crate::support;

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use ovsb::config::{Config, DriverDecl};
use ovsb::provision::InstanceSpec;
use ovsb::provision::kubernetes::{ClientToken, object_name, render};
use reqwest::Method;
use serde_json::{Value, json};
use support::broker::{Db, TestBroker, TestDb};
use support::fake_kube::FakeKubeApiServer;
use support::lodestar::{KEYSTORE_PASSWORD, keystore, lodestar_command, lodestar_dir, pubkey};
use support::{Anvil, anvil_binary, free_port, rpc};

const PLAN_K8S: &str = "plan-k8s";
const PLAN_K8S_VALIDATOR: &str = "plan-k8s-validator";
const NAMESPACE: &str = "ovsb-test";
const ANVIL_IMAGE: &str = "ghcr.io/foundry-rs/foundry:test";
const LODESTAR_IMAGE: &str = "chainsafe/lodestar:test";

fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes/ovsb.yaml")
}

/// Every document of the manifest, as JSON.
fn manifest_documents() -> Vec<Value> {
    let text = std::fs::read_to_string(manifest_path()).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .collect()
}

/// The document parsed as a `T` and written back.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
    let parsed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|err| panic!("{} {}: {err}", doc["kind"], doc["metadata"]["name"]));
    serde_json::to_value(parsed).unwrap()
}

/// The ovsb.toml the manifest's ConfigMap carries, loaded and validated.
fn manifest_config() -> Config {
    let map = manifest_documents().into_iter().find(|d| d["kind"] == "ConfigMap").expect("a ConfigMap");
    let map: ConfigMap = serde_json::from_value(map).unwrap();
    let text = map.data.unwrap().remove("ovsb.toml").expect("ovsb.toml in the ConfigMap");
    let config = Config::from_toml(&text, "examples/kubernetes/ovsb.yaml").unwrap();
    config.validate().unwrap();
    config
}

#[test]
fn every_object_of_the_ovsb_manifest_parses_as_a_kubernetes_object_and_its_config_loads() {
    let documents = manifest_documents();
    let mut kinds = Vec::new();
    for doc in &documents {
        let kind = doc["kind"].as_str().expect("every document has a kind").to_string();
        let round_trip = match kind.as_str() {
            "Namespace" => round_trip::<Namespace>(doc),
            "ServiceAccount" => round_trip::<ServiceAccount>(doc),
            "Role" => round_trip::<Role>(doc),
            "RoleBinding" => round_trip::<RoleBinding>(doc),
            "NetworkPolicy" => round_trip::<NetworkPolicy>(doc),
            "ConfigMap" => round_trip::<ConfigMap>(doc),
            "Deployment" => round_trip::<Deployment>(doc),
            "Service" => round_trip::<Service>(doc),
            other => panic!("the manifest has a {other}, which this test does not know"),
        };
        // k8s-openapi ignores unknown fields: a misspelt one shows as a difference here.
        assert_eq!(&round_trip, doc, "{kind} {} loses fields when parsed", doc["metadata"]["name"]);
        kinds.push(kind);
    }
    for kind in ["Deployment", "Service", "ConfigMap", "Role", "RoleBinding", "ServiceAccount", "NetworkPolicy"] {
        assert!(kinds.iter().any(|k| k == kind), "the manifest has a {kind}");
    }
    assert!(!kinds.iter().any(|k| k.starts_with("Cluster")), "RBAC is namespaced, not cluster-wide");

    // Several replicas, sharing PostgreSQL and the secret key through the environment.
    let deployment: Deployment =
        serde_json::from_value(documents.iter().find(|d| d["kind"] == "Deployment").unwrap().clone()).unwrap();
    let spec = deployment.spec;
    assert!(spec.replicas.unwrap() >= 2);
    let container = &spec.template.spec.unwrap().containers[0];
    let env: Vec<&str> = container.env.iter().flatten().map(|e| e.name.as_str()).collect();
    for name in ["OVSB_DATABASE_URL", "OVSB_SECRET_KEY", "OVSB_BROKER_PASSWORD", "OVSB_IDENTITY_KEYS"] {
        assert!(env.contains(&name), "{name} in {env:?}");
    }

    // The config loads, is on PostgreSQL by the environment, and every namespace a plan names
    // has a Role for ovsb's ServiceAccount.
    let config = manifest_config();
    let role_namespaces: Vec<String> = documents
        .iter()
        .filter(|d| d["kind"] == "RoleBinding")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap().to_string())
        .collect();
    let mut kubernetes_plans = 0;
    for plan in config.services.iter().flat_map(|s| &s.plans) {
        let namespace = match &plan.driver {
            DriverDecl::Kubernetes(decl) => &decl.namespace,
            DriverDecl::KubernetesValidator(decl) => &decl.client.namespace,
            _ => continue,
        };
        kubernetes_plans += 1;
        assert!(role_namespaces.contains(namespace), "plan {} uses {namespace}, which has no RoleBinding", plan.id);
    }
    assert!(kubernetes_plans >= 2);
}

fn yaml<T: serde::Serialize>(value: &T) -> String {
    serde_yaml::to_string(value).unwrap()
}

/// The instance the golden files render.
fn golden_spec(validator: bool) -> InstanceSpec {
    let parameters = if validator {
        json!({"graffiti": "ovsb", "doppelganger_protection": false, "fee_recipient": "0x00000000000000000000000000000000000000aa"})
    } else {
        json!({})
    };
    InstanceSpec {
        id: "5f0c1d2e-0000-4000-8000-000000000001".into(),
        plan_id: String::new(),
        parameters,
        secrets: None,
    }
}

#[test]
fn the_objects_of_every_kubernetes_plan_in_the_manifest_match_their_golden_files() {
    let config = manifest_config();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kubernetes");
    let update = std::env::var_os("OVSB_UPDATE_GOLDEN").is_some();
    let mut compared = 0;
    for plan in config.services.iter().flat_map(|s| &s.plans) {
        let objects = match &plan.driver {
            DriverDecl::Kubernetes(decl) => render(decl, &plan.id, &[], &golden_spec(false), None),
            DriverDecl::KubernetesValidator(decl) => render(
                &decl.client,
                &plan.id,
                ovsb::provision::VALIDATOR_TEMPLATE_NAMES,
                &golden_spec(true),
                Some(ClientToken { path: &decl.token_path, token: "golden-token" }),
            ),
            _ => continue,
        }
        .unwrap();
        let mut documents = vec![yaml(&objects.stateful_set), yaml(&objects.service)];
        documents.extend(objects.secret.as_ref().map(yaml));
        let text = documents.join("---\n");
        let file = golden.join(format!("{}.yaml", plan.id));
        if update {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&file, &text).unwrap();
        }
        let expected = std::fs::read_to_string(&file)
            .unwrap_or_else(|_| panic!("{} is missing: run with OVSB_UPDATE_GOLDEN=1", file.display()));
        assert_eq!(text, expected, "the objects of plan {} differ from {}", plan.id, file.display());
        compared += 1;
    }
    assert!(compared >= 3, "every Kubernetes plan has a golden file");
}

#[test]
fn an_instance_parameter_that_would_become_an_option_is_refused() {
    let config = manifest_config();
    let plan = config.plan_by_id("anvil-devnet").unwrap();
    let DriverDecl::Kubernetes(decl) = &plan.driver else { panic!("a kubernetes plan") };
    let spec = InstanceSpec { parameters: json!({"chain_id": "--fork-url"}), ..golden_spec(false) };
    let err = render(decl, &plan.id, &[], &spec, None).unwrap_err();
    assert!(err.to_string().contains("chain_id"), "{err}");
}

/// A node plan on the fake cluster: anvil as the container, reached on 127.0.0.1:`port`.
fn node_plan(api: &str, port: u16) -> String {
    format!(
        r#"
[[services.plans]]
id = "{PLAN_K8S}"
name = "k8s"
description = "an anvil per instance on (fake) Kubernetes"
maximum_polling_duration = 120

[services.plans.driver]
kind = "kubernetes"
api_url = "{api}"
namespace = "{NAMESPACE}"
image = "{ANVIL_IMAGE}"
args = ["--host", "127.0.0.1", "--port", "{{port}}", "--chain-id", "{{chain_id}}"]
port = {port}
endpoint = "http://127.0.0.1:{{port}}"
env = {{ RUST_LOG = "warn" }}
resources = {{ requests = {{ cpu = "250m", memory = "256Mi" }}, limits = {{ memory = "1Gi" }} }}
storage = {{ size = "2Gi", class = "standard", mount_path = "/data" }}

[services.plans.driver.parameters.chain_id]
type = "integer"
minimum = 1
default = 31337
"#
    )
}

async fn last_description(broker: &TestBroker, id: &str) -> (String, String) {
    let body = broker.osb.last_operation(id).await.body;
    (body["state"].as_str().unwrap_or("").to_string(), body["description"].as_str().unwrap_or("").to_string())
}

/// Whether the StatefulSet was scaled to zero (through its scale subresource) before it was deleted.
fn scaled_to_zero_then_deleted(fake: &FakeKubeApiServer, name: &str) -> bool {
    let log = fake.log();
    let scaled = log.iter().position(|r| {
        r.method == "PATCH"
            && r.path.ends_with(&format!("statefulsets/{name}/scale"))
            && r.body.contains("\"replicas\":0")
    });
    let deleted = log.iter().position(|r| r.method == "DELETE" && r.path.ends_with(&format!("statefulsets/{name}")));
    matches!((scaled, deleted), (Some(s), Some(d)) if s < d)
}

/// The objects of instance `id` the fake holds, as (resource, name).
fn objects_of(fake: &FakeKubeApiServer, id: &str) -> Vec<(String, String)> {
    let name = object_name(id);
    fake.all().into_iter().filter(|(_, n)| n.contains(&name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_instance_runs_as_a_workload_from_provision_through_restart_to_deprovision() {
    let fake = FakeKubeApiServer::start(&[(ANVIL_IMAGE, anvil_binary().to_str().unwrap())]).await;
    let anvil = Anvil::start(&[]); // the test catalog's shared node, unused here
    let port = free_port();
    let plans = node_plan(&fake.url, port);
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Sqlite, dir.path()).await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plans, |_| {}).await;

    // Provision; while the pod is not Ready, the operation is in progress and says why.
    fake.hold_readiness(true);
    let resp = broker.osb.provision("k1", PLAN_K8S, Some(json!({"chain_id": 4242}))).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let mut waited = 0;
    loop {
        let (state, description) = last_description(&broker, "k1").await;
        assert_eq!(state, "in progress", "{description}");
        if description.contains("waiting for the workload: pod") {
            break;
        }
        waited += 1;
        assert!(waited < 200, "no pod state in {description}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The objects: image, args, resources, labels, owner links, all applied by field manager ovsb.
    let name = object_name("k1");
    let set = fake.get("statefulsets", NAMESPACE, &name).expect("the StatefulSet");
    assert_eq!(set["spec"]["replicas"], 1);
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], ANVIL_IMAGE);
    assert_eq!(
        container["args"],
        json!(["--host", "127.0.0.1", "--port", port.to_string(), "--chain-id", "4242"]),
        "the plan's args with the instance's parameters"
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}})
    );
    assert_eq!(container["env"], json!([{"name": "RUST_LOG", "value": "warn"}]));
    let labels = &set["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "ovsb");
    assert_eq!(labels["app.kubernetes.io/instance"], name);
    assert_eq!(labels["ovsb.dev/plan"], PLAN_K8S);
    assert_eq!(set["metadata"]["annotations"]["ovsb.dev/instance-id"], "k1");
    assert_eq!(set["spec"]["template"]["metadata"]["labels"], *labels);
    let service = fake.get("services", NAMESPACE, &name).expect("the Service");
    let owner = &service["metadata"]["ownerReferences"][0];
    assert_eq!((owner["kind"].as_str(), owner["name"].as_str()), (Some("StatefulSet"), Some(name.as_str())));
    assert_eq!(owner["uid"], set["metadata"]["uid"], "the Service is owned by the StatefulSet");
    assert_eq!(service["spec"]["ports"][0]["port"], port);
    let claim = fake.get("persistentvolumeclaims", NAMESPACE, &format!("data-{name}-0")).expect("the volume claim");
    assert_eq!(claim["spec"]["storageClassName"], "standard");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert!(fake.get("secrets", NAMESPACE, &name).is_none(), "node plans have no Secret");
    let patches: Vec<_> = fake.log().into_iter().filter(|r| r.method == "PATCH").collect();
    assert!(!patches.is_empty());
    for patch in &patches {
        assert_eq!(patch.content_type, "application/apply-patch+yaml", "{patch:?}");
        assert!(patch.query.contains("fieldManager=ovsb") && patch.query.contains("force=true"), "{patch:?}");
    }

    // Ready pod → the operation succeeds; the gateway reaches the workload.
    fake.hold_readiness(false);
    let done = broker.osb.finished("k1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let bound = broker.osb.bind("k1", "b1", PLAN_K8S).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x1092", "anvil runs with chain id 4242");
    let first = fake.running();
    assert_eq!(first.len(), 1);

    // An update of a parameter rolls the pod; the operation ends once the new pod is Ready.
    let patch = "/v2/service_instances/k1?accepts_incomplete=true";
    let body = json!({"service_id": support::broker::SERVICE, "parameters": {"chain_id": 4343}});
    let resp = broker.osb.call(Method::PATCH, patch, Some(body)).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let done = broker.osb.finished("k1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x10f7", "the new pod runs chain id 4343");
    let pids = fake.running();
    assert_eq!(pids.len(), 1);
    assert_ne!(pids, first, "the pod was replaced");

    // A restart of ovsb, with the plan's settings changed meanwhile: the workload is neither
    // duplicated nor re-applied (its pod keeps running); a workload of this plan that no
    // instance owns is removed.
    let (dir, db) = broker.stop().await;
    let mut orphan = fake.get("statefulsets", NAMESPACE, &name).unwrap();
    orphan["metadata"]["name"] = json!(object_name("gone"));
    orphan["metadata"]["annotations"]["ovsb.dev/instance-id"] = json!("gone");
    orphan["metadata"]["labels"]["app.kubernetes.io/instance"] = json!(object_name("gone"));
    orphan["spec"]["replicas"] = json!(0);
    fake.insert("statefulsets", NAMESPACE, orphan);
    let changed = plans.replace(r#"RUST_LOG = "warn""#, r#"RUST_LOG = "info""#);
    assert_ne!(changed, plans);
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &changed, |_| {}).await;
    let sets = fake.objects("statefulsets");
    let names: Vec<&str> = sets.iter().map(|s| s["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec![name.as_str()], "one workload for the instance, the orphan gone");
    assert_eq!(fake.running(), pids, "the pod kept running");
    let key = uri.rsplit('/').next().unwrap();
    let uri = format!("{}/v1/{key}", broker.gateway);
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x10f7", "served after the restart");

    // Deprovision removes everything of the instance.
    let resp = broker.osb.deprovision("k1", PLAN_K8S).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let done = broker.osb.finished("k1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(scaled_to_zero_then_deleted(&fake, &name));
    assert_eq!(objects_of(&fake, "k1"), vec![], "nothing of the instance is left");
    assert!(fake.running().is_empty(), "the pod's process stopped");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_instances_cannot_move_to_another_namespace() {
    let fake = FakeKubeApiServer::start(&[(ANVIL_IMAGE, anvil_binary().to_str().unwrap())]).await;
    let anvil = Anvil::start(&[]);
    let plans = node_plan(&fake.url, free_port());
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Sqlite, dir.path()).await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plans, |_| {}).await;
    broker.osb.ready_instance("k1", PLAN_K8S, None).await;
    let (dir, db) = broker.stop().await;

    // Moved while it has an instance: refused at start, naming both places.
    let moved = plans.replace(&format!(r#"namespace = "{NAMESPACE}""#), r#"namespace = "elsewhere""#);
    assert_ne!(moved, plans);
    let config_of = |plans: &str| {
        let toml = support::broker::test_config_toml_with(&anvil.http_url(), free_port(), plans);
        let mut config = Config::from_toml(&toml, "test").unwrap();
        config.data_dir = dir.path().join("data");
        config.database_url = db.url.clone();
        config
    };
    let err = ovsb::server::Server::start(config_of(&moved), tokio_util::sync::CancellationToken::new())
        .await
        .err()
        .expect("a moved plan is refused");
    let message = err.to_string();
    assert!(message.contains(PLAN_K8S) && message.contains(NAMESPACE) && message.contains("elsewhere"), "{message}");

    // Back where it was: it starts, deprovisions, and then it may move.
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plans, |_| {}).await;
    broker.osb.deprovision("k1", PLAN_K8S).await;
    assert_eq!(broker.osb.finished("k1").await["state"], "succeeded");
    let (dir, db) = broker.stop().await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &moved, |_| {}).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_fails_the_provision_with_the_reason() {
    let anvil = Anvil::start(&[]);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Sqlite, dir.path()).await;
    let plans = node_plan(&nowhere, free_port());
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plans, |_| {}).await;
    let resp = broker.osb.provision("k1", PLAN_K8S, None).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let done = broker.osb.finished("k1").await;
    assert_eq!(done["state"], "failed", "{done}");
    let description = done["description"].as_str().unwrap();
    assert!(description.contains("cannot read the StatefulSet"), "{description}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_never_answers_fails_the_provision_within_the_api_timeout() {
    // Accepts connections (the kernel's backlog does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", silent.local_addr().unwrap());
    let anvil = Anvil::start(&[]);
    let plans = node_plan(&api, free_port())
        .replace("[services.plans.driver]\n", "[services.plans.driver]\napi_timeout_ms = 300\n");
    assert!(plans.contains("api_timeout_ms = 300"));
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Sqlite, dir.path()).await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plans, |_| {}).await;
    let resp = broker.osb.provision("k1", PLAN_K8S, None).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let done = broker.osb.finished("k1").await;
    assert_eq!(done["state"], "failed", "{done}");
    let description = done["description"].as_str().unwrap();
    assert!(description.contains("cannot read the StatefulSet"), "{description}");
    assert!(
        !description.contains("maximum_polling_duration"),
        "failed by the API timeout, not the deadline: {description}"
    );
    broker.stop().await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_on_kubernetes_keeps_the_history_of_its_keys_when_deprovisioned() {
    let lodestar = lodestar_dir().join("node_modules/.bin/lodestar");
    let fake = FakeKubeApiServer::start(&[(LODESTAR_IMAGE, lodestar.to_str().unwrap())]).await;
    let anvil = Anvil::start(&[]);
    let volume = tempfile::tempdir().unwrap();
    let data_dir = volume.path().join("data");
    // `lodestar dev` wipes its validator database at start unless given a genesis time; in the
    // pod the token is mounted there (production `lodestar validator` wipes nothing).
    let genesis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 8;
    let mut args: Vec<String> = lodestar_command("lodestar").into_iter().skip(1).collect();
    args.extend(["--genesisTime".to_string(), genesis.to_string()]);
    let plans = format!(
        r#"
[[services.plans]]
id = "{PLAN_K8S_VALIDATOR}"
name = "k8s-validator"
description = "a Lodestar dev chain per instance on (fake) Kubernetes"
maximum_polling_duration = 180

[services.plans.driver]
kind = "kubernetes-validator"
token_path = "{token}"
rpc_http = ["{node}"]

[services.plans.driver.client]
api_url = "{api}"
namespace = "{NAMESPACE}"
image = "{LODESTAR_IMAGE}"
args = [{args}]
port = {beacon}
extra_ports = {{ keymanager_port = {keymanager}, p2p_port = {p2p} }}
ws = false
endpoint = "http://127.0.0.1:{{port}}"
storage = {{ size = "1Gi", mount_path = "{data}" }}
"#,
        token = data_dir.join("validator-db/api-token.txt").display(),
        node = anvil.http_url(),
        api = fake.url,
        args = args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "),
        beacon = free_port(),
        keymanager = free_port(),
        p2p = free_port(),
        data = data_dir.display(),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Sqlite, dir.path()).await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plans, |_| {}).await;
    let osb = &broker.osb;

    let keys = tempfile::tempdir().unwrap();
    let key3 = keystore(3, keys.path());
    let pk3 = pubkey(&key3);
    let params = json!({"keystores": [key3], "passwords": [KEYSTORE_PASSWORD],
        "fee_recipient": "0x00000000000000000000000000000000000000bb", "graffiti": "ovsb-k8s"});
    let resp = osb.provision("v1", PLAN_K8S_VALIDATOR, Some(params)).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let done = osb.finished("v1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["description"].as_str().unwrap().contains("imported"), "{done}");

    // The Secret carries the token the client reads; the client is one pod of one StatefulSet.
    let name = object_name("v1");
    let secret = fake.get("secrets", NAMESPACE, &name).expect("the Secret");
    let set = fake.get("statefulsets", NAMESPACE, &name).unwrap();
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], set["metadata"]["uid"]);
    assert_eq!(set["metadata"]["labels"]["app.kubernetes.io/component"], "validator");
    assert_eq!(
        set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], "Retain",
        "the slashing database outlives an accidental StatefulSet deletion"
    );
    assert!(
        set["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--graffiti=ovsb-k8s")),
        "start options from the parameters"
    );

    // Through the binding's keymanager URL, the key is loaded in the client.
    let bound = osb.bind("v1", "b1", PLAN_K8S_VALIDATOR).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    let km = bound.body["credentials"]["keymanager_uri"].as_str().unwrap();
    let token = bound.body["credentials"]["keymanager_token"].as_str().unwrap();
    let list: Value = reqwest::Client::new()
        .get(format!("{km}/eth/v1/keystores"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["validating_pubkey"], pk3.as_str(), "{list}");

    // Deprovision: the fake stops the client when the StatefulSet scales to zero, so the
    // history can only be in the store if it was exported before.
    let unbound = osb.unbind("v1", "b1", PLAN_K8S_VALIDATOR).await;
    assert_eq!(unbound.status, 200, "{unbound:?}");
    let resp = osb.deprovision("v1", PLAN_K8S_VALIDATOR).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let done = osb.finished("v1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let history = osb.call(Method::GET, &format!("/ovsb/v1/slashing-protection/{pk3}"), None).await;
    assert_eq!(history.status, 200, "{history:?}");
    assert_eq!(history.body["data"][0]["pubkey"], pk3.as_str(), "{}", history.body);
    assert!(scaled_to_zero_then_deleted(&fake, &name));
    assert_eq!(objects_of(&fake, "v1"), vec![], "nothing of the instance is left");
    assert!(fake.running().is_empty(), "the client stopped");
    broker.stop().await;
}
