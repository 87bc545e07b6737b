//! `FakeKubeApiServer`: a **fake** Kubernetes API server, in process, for the `kubernetes`
//! driver's tests (no real API server can run on these machines). It implements what the driver
//! calls — server-side apply, get, list by label selector, delete, and the StatefulSet scale
//! subresource — for StatefulSets, Services, Secrets, PersistentVolumeClaims and Pods, keeps a
//! log of the requests, and plays a tiny StatefulSet controller and kubelet: a StatefulSet with
//! one replica gets pod `<name>-0` and its volume claims, a changed pod template replaces the
//! pod (the rollout), and the StatefulSet's status reports generation and revisions; the pod's container runs **as a local process** (its `command`/`args`,
//! the program chosen by image), with Secret `subPath` mounts written as files; the pod turns
//! Ready when its `rpc` port accepts a connection (the tcpSocket readiness probe), unless the
//! test holds readiness back. Scaling to zero or deleting stops the process (SIGTERM, by PID).
//! Deleting an object deletes the objects whose owner references name it (the garbage collector).
//! Like the real API server it refuses (422) an apply that changes an immutable field of a
//! StatefulSet's spec. It does not track field ownership or conflicts between managers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// One request the fake served.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
}

type Key = (String, String, String); // (plural, namespace, name)

#[derive(Default)]
struct FakeState {
    objects: BTreeMap<Key, Value>,
    log: Vec<Logged>,
    hold_readiness: bool,
    next: u64,
    /// Programs run for pods, by image.
    programs: HashMap<String, String>,
    /// The process of each pod, by (namespace, pod name).
    processes: HashMap<(String, String), Child>,
    /// The containers' working directory.
    workdir: Option<tempfile::TempDir>,
}

pub struct FakeKubeApiServer {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

fn kind_of(plural: &str) -> Option<(&'static str, &'static str)> {
    Some(match plural {
        "statefulsets" => ("apps/v1", "StatefulSet"),
        "services" => ("v1", "Service"),
        "secrets" => ("v1", "Secret"),
        "persistentvolumeclaims" => ("v1", "PersistentVolumeClaim"),
        "pods" => ("v1", "Pod"),
        _ => return None,
    })
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (code, axum::Json(body)).into_response()
}

impl FakeKubeApiServer {
    /// Starts the fake on an OS-assigned loopback port; `programs` maps an image to the local
    /// program its containers run.
    pub async fn start(programs: &[(&str, &str)]) -> FakeKubeApiServer {
        let state = Arc::new(Mutex::new(FakeState {
            programs: programs.iter().map(|(i, p)| (i.to_string(), p.to_string())).collect(),
            workdir: Some(tempfile::tempdir().unwrap()),
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeKubeApiServer { url: format!("http://{addr}"), state, task }
    }

    /// Pods stay not Ready while held.
    pub fn hold_readiness(&self, hold: bool) {
        self.state.lock().unwrap().hold_readiness = hold;
    }

    /// Every stored object of a resource (plural, e.g. "statefulsets").
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state.objects.iter().filter(|((p, _, _), _)| p == plural).map(|(_, o)| o.clone()).collect()
    }

    /// Every stored object, as (plural, name).
    pub fn all(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().objects.keys().map(|(p, _, n)| (p.clone(), n.clone())).collect()
    }

    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(&(plural.into(), namespace.into(), name.into())).cloned()
    }

    /// Puts an object in as someone else would have (e.g. `kubectl`).
    pub fn insert(&self, plural: &str, namespace: &str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        state.next += 1;
        object["metadata"]["uid"] = json!(format!("uid-{}", state.next));
        state.objects.insert((plural.into(), namespace.into(), name.clone()), object);
        if plural == "statefulsets" {
            controller(&mut state, namespace, &name);
        }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Pids of the pods' processes now running.
    pub fn running(&self) -> Vec<u32> {
        self.state.lock().unwrap().processes.values().map(Child::id).collect()
    }
}

impl Drop for FakeKubeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (_, mut child) in state.processes.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn handle(State(state): State<Arc<Mutex<FakeState>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut state = state.lock().unwrap();
    state.log.push(Logged {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", "v1", "namespaces", rest @ ..] => rest,
        ["apis", "apps", "v1", "namespaces", rest @ ..] => rest,
        _ => return status(StatusCode::NOT_FOUND, "NotFound", format!("the fake serves no {path}")),
    };
    let (namespace, plural, name) = match rest {
        [ns, plural] => (ns.to_string(), plural.to_string(), None),
        [ns, plural, name] => (ns.to_string(), plural.to_string(), Some(name.to_string())),
        [ns, "statefulsets", name, "scale"] => {
            return scale(&mut state, &parts.method, ns, name, &content_type, &body);
        }
        _ => return status(StatusCode::NOT_FOUND, "NotFound", format!("the fake serves no {path}")),
    };
    let Some((api_version, kind)) = kind_of(&plural) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("the fake has no resource {plural}"));
    };
    let params: HashMap<String, String> = url_params(&query);
    match (parts.method, name) {
        (Method::GET, None) => {
            let wanted = selector(params.get("labelSelector").map(String::as_str).unwrap_or(""));
            refresh_readiness(&mut state);
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((p, ns, _), o)| *p == plural && *ns == namespace && matches(o, &wanted))
                .map(|(_, o)| o.clone())
                .collect();
            axum::Json(json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": state.next.to_string()}, "items": items}))
            .into_response()
        }
        (Method::GET, Some(name)) => {
            refresh_readiness(&mut state);
            match state.objects.get(&(plural.clone(), namespace, name.clone())) {
                Some(object) => axum::Json(object.clone()).into_response(),
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found")),
            }
        }
        (Method::PATCH, Some(name)) => {
            if content_type != "application/apply-patch+yaml" {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "the fake takes apply patches only".into(),
                );
            }
            let Some(manager) = params.get("fieldManager").cloned() else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "fieldManager is required for apply patch".into(),
                );
            };
            let Ok(mut applied) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON".into());
            };
            if applied["metadata"]["name"].as_str() != Some(name.as_str()) || applied["kind"] != kind {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "name or kind does not match the URL".into());
            }
            let key = (plural.clone(), namespace.clone(), name.clone());
            // As the real API server: a StatefulSet's spec is immutable but for these fields.
            if plural == "statefulsets"
                && let Some(previous) = state.objects.get(&key)
            {
                let mutable = [
                    "replicas",
                    "ordinals",
                    "template",
                    "updateStrategy",
                    "persistentVolumeClaimRetentionPolicy",
                    "minReadySeconds",
                ];
                let frozen = |spec: &Value| -> Value {
                    let mut spec = spec.clone();
                    if let Some(fields) = spec.as_object_mut() {
                        fields.retain(|field, _| !mutable.contains(&field.as_str()));
                    }
                    spec
                };
                if frozen(&previous["spec"]) != frozen(&applied["spec"]) {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!(
                            "StatefulSet.apps \"{name}\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
                        ),
                    );
                }
            }
            state.next += 1;
            let next = state.next;
            let previous = state.objects.get(&key).cloned();
            applied["metadata"]["uid"] =
                previous.as_ref().map_or(json!(format!("uid-{next}")), |p| p["metadata"]["uid"].clone());
            applied["metadata"]["resourceVersion"] = json!(next.to_string());
            let generation = previous.as_ref().map_or(0, |p| p["metadata"]["generation"].as_i64().unwrap_or(0));
            let changed = previous.as_ref().is_none_or(|p| p["spec"] != applied["spec"]);
            applied["metadata"]["generation"] = json!(generation + i64::from(changed));
            let rolled = previous.as_ref().is_some_and(|p| p["spec"]["template"] != applied["spec"]["template"]);
            applied["metadata"]["managedFields"] = json!([{"manager": manager, "operation": "Apply"}]);
            if let Some(previous) = previous
                && previous.get("status").is_some()
            {
                applied["status"] = previous["status"].clone();
            }
            if let Some(data) = applied.as_object_mut().and_then(|o| o.remove("stringData")) {
                let encoded: serde_json::Map<String, Value> = data
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| {
                        (k.clone(), json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or(""))))
                    })
                    .collect();
                applied["data"] = Value::Object(encoded);
            }
            state.objects.insert(key, applied.clone());
            if plural == "statefulsets" {
                if rolled {
                    let pod = format!("{name}-0");
                    if state.objects.contains_key(&("pods".into(), namespace.clone(), pod.clone())) {
                        remove(&mut state, "pods", &namespace, &pod);
                    }
                }
                controller(&mut state, &namespace, &name);
            }
            axum::Json(applied).into_response()
        }
        (Method::DELETE, Some(name)) => match remove(&mut state, &plural, &namespace, &name) {
            Some(object) => axum::Json(object).into_response(),
            None => status(StatusCode::NOT_FOUND, "NotFound", format!("{plural} \"{name}\" not found")),
        },
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the fake does not serve {method} {path}"),
        ),
    }
}

/// `PATCH …/statefulsets/<name>/scale` with a merge patch of `spec.replicas`.
fn scale(
    state: &mut FakeState,
    method: &Method,
    namespace: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Response {
    if *method != Method::PATCH || content_type != "application/merge-patch+json" {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake scales by merge patch only".into(),
        );
    }
    let Some(replicas) = serde_json::from_slice::<Value>(body).ok().and_then(|b| b["spec"]["replicas"].as_i64()) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "no spec.replicas".into());
    };
    let key = ("statefulsets".to_string(), namespace.to_string(), name.to_string());
    let Some(set) = state.objects.get_mut(&key) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("statefulsets \"{name}\" not found"));
    };
    if set["spec"]["replicas"] != json!(replicas) {
        set["spec"]["replicas"] = json!(replicas);
        set["metadata"]["generation"] = json!(set["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
    }
    controller(state, namespace, name);
    axum::Json(json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": replicas}, "status": {"replicas": replicas}}))
    .into_response()
}

fn url_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()))
        .collect()
}

fn selector(text: &str) -> Vec<(String, String)> {
    text.split(',').filter_map(|t| t.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn matches(object: &Value, wanted: &[(String, String)]) -> bool {
    wanted.iter().all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

/// Deletes an object, then (the garbage collector) what it owns, and (the controller) a
/// StatefulSet's pod.
fn remove(state: &mut FakeState, plural: &str, namespace: &str, name: &str) -> Option<Value> {
    let object = state.objects.remove(&(plural.into(), namespace.into(), name.into()))?;
    let uid = object["metadata"]["uid"].clone();
    let owned: Vec<Key> = state
        .objects
        .iter()
        .filter(|(_, o)| {
            o["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for (p, ns, n) in owned {
        remove(state, &p, &ns, &n);
    }
    if plural == "statefulsets" {
        controller(state, namespace, name);
    }
    if plural == "pods" {
        stop_pod(state, namespace, name);
    }
    Some(object)
}

fn stop_pod(state: &mut FakeState, namespace: &str, name: &str) {
    if let Some(mut child) = state.processes.remove(&(namespace.to_string(), name.to_string())) {
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        for _ in 0..200 {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The StatefulSet controller and kubelet of the fake: pod `<name>-0` while replicas ≥ 1, with
/// its claims and a local process; no pod otherwise.
fn controller(state: &mut FakeState, namespace: &str, name: &str) {
    let set = state.objects.get(&("statefulsets".into(), namespace.into(), name.into())).cloned();
    let pod_name = format!("{name}-0");
    let pod_key = ("pods".to_string(), namespace.to_string(), pod_name.clone());
    let replicas = set.as_ref().map_or(0, |s| s["spec"]["replicas"].as_i64().unwrap_or(1));
    if replicas < 1 {
        if state.objects.contains_key(&pod_key) {
            remove(state, "pods", namespace, &pod_name);
        }
        return;
    }
    let set = set.unwrap();
    for template in set["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let claim_name = format!("{}-{pod_name}", template["metadata"]["name"].as_str().unwrap());
        let key = ("persistentvolumeclaims".to_string(), namespace.to_string(), claim_name.clone());
        if !state.objects.contains_key(&key) {
            state.next += 1;
            let mut claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim_name, "namespace": namespace, "uid": format!("uid-{}", state.next),
                    "labels": template["metadata"]["labels"], "annotations": template["metadata"]["annotations"]},
                "spec": template["spec"], "status": {"phase": "Bound"}});
            claim["metadata"]["labels"]["app.kubernetes.io/instance"] = json!(name);
            state.objects.insert(key, claim);
        }
    }
    if state.objects.contains_key(&pod_key) {
        return;
    }
    state.next += 1;
    let template = &set["spec"]["template"];
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": namespace, "uid": format!("uid-{}", state.next),
            "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
        "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": template["spec"]["containers"][0]["name"], "ready": false,
                "image": template["spec"]["containers"][0]["image"], "imageID": "", "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
    state.objects.insert(pod_key, pod);
    start_containers(state);
}

/// The kubelet: starts the container of each pod that has none running yet, once the Secrets
/// its volumes name exist (until then the pod stays `ContainerCreating`, as on a real node).
fn start_containers(state: &mut FakeState) {
    let waiting: Vec<(String, String, Value)> = state
        .objects
        .iter()
        .filter(|((p, ns, n), _)| p == "pods" && !state.processes.contains_key(&(ns.clone(), n.clone())))
        .map(|((_, ns, n), pod)| (ns.clone(), n.clone(), pod["spec"].clone()))
        .collect();
    for (namespace, name, spec) in waiting {
        let secrets: HashMap<String, Value> = state
            .objects
            .iter()
            .filter(|((p, ns, _), _)| p == "secrets" && *ns == namespace)
            .map(|((_, _, n), o)| (n.clone(), o.clone()))
            .collect();
        let workdir = state.workdir.as_ref().unwrap().path();
        if let Some(child) = run_container(&state.programs, workdir, &spec, &secrets) {
            state.processes.insert((namespace, name), child);
        }
    }
}

/// Runs the pod's first container as a local process, its Secret subPath mounts written as files.
fn run_container(
    programs: &HashMap<String, String>,
    workdir: &std::path::Path,
    spec: &Value,
    secrets: &HashMap<String, Value>,
) -> Option<Child> {
    let container = &spec["containers"][0];
    let program = programs.get(container["image"].as_str()?)?;
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let Some(volume) = spec["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == mount["name"]) else {
            continue;
        };
        let (Some(secret), Some(sub_path)) = (volume["secret"]["secretName"].as_str(), mount["subPath"].as_str())
        else {
            continue;
        };
        let data = secrets.get(secret)?["data"][sub_path].as_str()?.to_string();
        let path = std::path::PathBuf::from(mount["mountPath"].as_str()?);
        std::fs::create_dir_all(path.parent()?).ok()?;
        std::fs::write(&path, base64::engine::general_purpose::STANDARD.decode(data).ok()?).ok()?;
    }
    let strings = |field: &str| -> Vec<String> {
        container[field].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect()
    };
    let (program, mut args) = match strings("command").split_first() {
        Some((first, rest)) => (first.clone(), rest.to_vec()),
        None => (program.clone(), Vec::new()),
    };
    args.extend(strings("args"));
    Command::new(program).args(args).current_dir(workdir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()
}

/// The readiness probe: a pod is Ready when its `rpc` port accepts a connection.
fn refresh_readiness(state: &mut FakeState) {
    start_containers(state);
    let hold = state.hold_readiness;
    for ((plural, _, _), pod) in state.objects.iter_mut() {
        if plural != "pods" {
            continue;
        }
        let port = pod["spec"]["containers"][0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "rpc")
            .and_then(|p| p["containerPort"].as_u64());
        let ready = !hold
            && port.is_some_and(|port| {
                std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port as u16).into(), Duration::from_millis(100))
                    .is_ok()
            });
        pod["status"]["conditions"] = json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
        if ready {
            pod["status"]["phase"] = json!("Running");
            pod["status"]["containerStatuses"][0]["ready"] = json!(true);
            pod["status"]["containerStatuses"][0]["state"] = json!({"running": {}});
        }
    }
    // The StatefulSets' status: the fake rolls pods at once, so the current revision is the
    // update revision and the pod (if any) is updated.
    let pods: HashMap<(String, String), bool> = state
        .objects
        .iter()
        .filter(|((p, _, _), _)| p == "pods")
        .map(|((_, ns, n), pod)| ((ns.clone(), n.clone()), pod["status"]["conditions"][0]["status"] == "True"))
        .collect();
    for ((plural, ns, name), set) in state.objects.iter_mut() {
        if plural != "statefulsets" {
            continue;
        }
        let pod = pods.get(&(ns.clone(), format!("{name}-0")));
        let revision = format!("{name}-{}", set["metadata"]["generation"]);
        set["status"] = json!({
            "observedGeneration": set["metadata"]["generation"],
            "replicas": i32::from(pod.is_some()),
            "readyReplicas": i32::from(pod == Some(&true)),
            "updatedReplicas": i32::from(pod.is_some()),
            "currentRevision": revision,
            "updateRevision": revision,
        });
    }
}
