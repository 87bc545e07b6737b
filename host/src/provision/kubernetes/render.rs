//! Rendering an instance's Kubernetes objects from its plan: names, labels, the StatefulSet,
//! its Service, and a validator client's token Secret.
//!
//! Owns: what the objects look like. Must not: talk to the cluster (the `kubernetes` driver
//! applies what this renders).

use base64::Engine as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::super::DriverError;
use super::super::InstanceSpec;
use super::super::process::{fill_arguments, parameter_values};
use crate::config::KubernetesDriverDecl;

/// The label every object ovsb makes carries (`app.kubernetes.io/managed-by=ovsb`).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The label naming an instance's objects.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// The label naming the plan.
pub const PLAN_LABEL: &str = "ovsb.dev/plan";
/// The annotation holding the instance id (which need not fit a label).
pub const INSTANCE_ID_ANNOTATION: &str = "ovsb.dev/instance-id";

/// The Secret key (and file name) of a validator client's keymanager token.
pub(super) const TOKEN_KEY: &str = "keymanager-token";

/// The objects of one instance, as applied.
#[derive(Debug, Clone, Serialize)]
pub struct Objects {
    /// The workload.
    pub stateful_set: StatefulSet,
    /// Its Service.
    pub service: Service,
    /// The client's keymanager token, for validator plans.
    pub secret: Option<Secret>,
}

/// For validator plans: where the client reads its keymanager token, and the token.
#[derive(Clone, Copy)]
pub struct ClientToken<'a> {
    /// The file's path in the container.
    pub path: &'a str,
    /// The token.
    pub token: &'a str,
}

/// The name of an instance's objects: `ovsb-<id>` when the id is a short DNS label already
/// (OSB platforms send lowercase UUIDs), else `ovsb-` and 20 hex digits of its SHA-256. At most
/// 45 characters, so the pod's name and its controller-revision label fit in 63.
pub fn object_name(instance_id: &str) -> String {
    let fits = !instance_id.is_empty()
        && instance_id.len() <= 40
        && instance_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !instance_id.ends_with('-');
    if fits {
        format!("ovsb-{instance_id}")
    } else {
        format!("ovsb-{}", &hex::encode(sha2::Sha256::digest(instance_id.as_bytes()))[..20])
    }
}

/// The labels of an instance's objects.
fn labels(name: &str, plan_id: &str, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "ovsb-instance",
        INSTANCE_LABEL: name,
        "app.kubernetes.io/component": component,
        MANAGED_BY: "ovsb",
        PLAN_LABEL: plan_id,
    })
}

/// The port name of an `extra_ports` entry (`keymanager_port` → `keymanager-port`).
fn port_name(placeholder: &str) -> String {
    placeholder.replace('_', "-")
}

/// Renders the objects of an instance of `plan_id`. `template_names` are the instance
/// parameters the args may use besides the plan's own (the validator start options).
pub fn render(
    decl: &KubernetesDriverDecl,
    plan_id: &str,
    template_names: &[&str],
    spec: &InstanceSpec,
    token: Option<ClientToken<'_>>,
) -> Result<Objects, DriverError> {
    let name = object_name(&spec.id);
    let component = if token.is_some() { "validator" } else { "node" };
    let labels = labels(&name, plan_id, component);
    let selector = json!({ INSTANCE_LABEL: name, MANAGED_BY: "ovsb" });
    let annotations = json!({ INSTANCE_ID_ANNOTATION: spec.id });
    let mut values = parameter_values(spec, template_names, &decl.parameters);
    values.insert("port".into(), decl.port.to_string());
    for (port_name, port) in &decl.extra_ports {
        values.insert(port_name.clone(), port.to_string());
    }
    values.insert("instance_id".into(), spec.id.clone());
    values.insert("name".into(), name.clone());
    values.insert("namespace".into(), decl.namespace.clone());
    values.insert("data_dir".into(), decl.storage.as_ref().map_or("/data".into(), |s| s.mount_path.clone()));
    let from_parameters = |n: &str| decl.parameters.contains_key(n) || template_names.contains(&n);
    let args = fill_arguments(&decl.args, &values, from_parameters)?;
    let command = fill_arguments(&decl.command, &values, from_parameters)?;

    let mut ports = vec![json!({ "name": "rpc", "containerPort": decl.port, "protocol": "TCP" })];
    let mut service_ports = vec![json!({ "name": "rpc", "port": decl.port, "targetPort": "rpc", "protocol": "TCP" })];
    for (placeholder, port) in &decl.extra_ports {
        let port_name = port_name(placeholder);
        ports.push(json!({ "name": port_name, "containerPort": port, "protocol": "TCP" }));
        service_ports.push(json!({ "name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP" }));
    }
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    let mut claims = Vec::new();
    if let Some(storage) = &decl.storage {
        mounts.push(json!({ "name": "data", "mountPath": storage.mount_path }));
        let mut claim_spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": storage.size } },
        });
        if let Some(class) = &storage.class {
            claim_spec["storageClassName"] = json!(class);
        }
        // Claim templates cannot change once applied: only the instance's labels, never the plan's.
        claims.push(json!({
            "metadata": { "name": "data", "labels": selector, "annotations": annotations },
            "spec": claim_spec,
        }));
    }
    if let Some(token) = token {
        mounts.push(json!({ "name": TOKEN_KEY, "mountPath": token.path, "subPath": TOKEN_KEY, "readOnly": true }));
        volumes.push(json!({ "name": TOKEN_KEY, "secret": { "secretName": name, "defaultMode": 0o440 } }));
    }
    let env: Vec<Value> = decl.env.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect();
    let mut container = json!({
        "name": component,
        "image": decl.image,
        "ports": ports,
        "readinessProbe": { "tcpSocket": { "port": "rpc" }, "periodSeconds": 5, "failureThreshold": 3 },
    });
    let fields = [
        ("command", json!(command), !command.is_empty()),
        ("args", json!(args), !args.is_empty()),
        ("env", json!(env), !env.is_empty()),
        ("volumeMounts", json!(mounts), !mounts.is_empty()),
    ];
    for (field, value, present) in fields {
        if present {
            container[field] = value;
        }
    }
    let mut resources = serde_json::Map::new();
    if !decl.resources.requests.is_empty() {
        resources.insert("requests".into(), json!(decl.resources.requests));
    }
    if !decl.resources.limits.is_empty() {
        resources.insert("limits".into(), json!(decl.resources.limits));
    }
    if !resources.is_empty() {
        container["resources"] = Value::Object(resources);
    }
    let mut pod_spec = json!({
        "containers": [container],
        // The client needs no API access; no cluster token in its filesystem.
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
    });
    if !volumes.is_empty() {
        pod_spec["volumes"] = json!(volumes);
    }
    if let Some(context) = &decl.pod_security_context {
        pod_spec["securityContext"] = context.clone();
    }
    // A validator's volume holds its slashing-protection database: never deleted with the
    // StatefulSet, only by ovsb once the history is in the store.
    let when_deleted = if token.is_some() { "Retain" } else { "Delete" };
    let mut set_spec = json!({
        "replicas": 1,
        "serviceName": name,
        "selector": { "matchLabels": selector },
        "template": { "metadata": { "labels": labels, "annotations": annotations }, "spec": pod_spec },
        "persistentVolumeClaimRetentionPolicy": { "whenDeleted": when_deleted, "whenScaled": "Retain" },
    });
    if !claims.is_empty() {
        set_spec["volumeClaimTemplates"] = json!(claims);
    }
    let metadata = json!({
        "name": name, "namespace": decl.namespace, "labels": labels, "annotations": annotations,
    });
    let stateful_set = typed(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata, "spec": set_spec,
    }))?;
    let service = typed(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        // Headless: the StatefulSet's governing Service; its name resolves to the pod.
        "spec": { "clusterIP": "None", "selector": selector, "ports": service_ports },
    }))?;
    let secret = match token {
        Some(token) => Some(typed(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "data": { TOKEN_KEY: base64::engine::general_purpose::STANDARD.encode(token.token) },
        }))?),
        None => None,
    };
    Ok(Objects { stateful_set, service, secret })
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, DriverError> {
    serde_json::from_value(value)
        .map_err(|err| DriverError::Failed(format!("cannot render a Kubernetes object: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_labels_for_any_instance_id() {
        assert_eq!(object_name("5f0c1d2e-0000-4000-8000-000000000001"), "ovsb-5f0c1d2e-0000-4000-8000-000000000001");
        for id in ["Upper-Case", "with.dot", "a".repeat(200).as_str(), "trailing-", ""] {
            let name = object_name(id);
            assert_eq!(name.len(), 25, "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{name}");
        }
        assert_ne!(object_name("A"), object_name("B"));
    }
}
