//! Service instances: provision, fetch, update, deprovision, last_operation.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::catalog::PlanEntry;
use super::{
    ApiError, BrokerState, Meta, accepts_incomplete, checked_id, json_object, maintenance_version, optional_object,
    optional_string, query, reply, required_query, required_string, same_json,
};
use crate::plugins::{ChainError, ConfigureError, KvLimits, KvStore};
use crate::store::{
    Change, Decision, InstanceRow, InstanceState, OperationKind, OperationRequest, OperationRow, OperationState,
    SealedRequest, UpdateRequest, now_ms, random_id,
};

type IdPath = Result<Path<String>, PathRejection>;
type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

fn id(path: IdPath) -> Result<String, ApiError> {
    checked_id(path.map(|p| p.0), "instance_id")
}

/// Checks that the chain the parameters give keeps the plan's policy plugins, and runs
/// `configure` of every plugin of the chain (or the plan's default), so that a bad
/// configuration is a 400 now rather than a broken endpoint later.
async fn check_chain(
    state: &BrokerState,
    instance_id: &str,
    plan_id: &str,
    parameters: Option<&Value>,
) -> Result<(), ApiError> {
    state.routing.check_policy(plan_id, parameters).map_err(ApiError::bad_request)?;
    let mut secrets = Vec::new();
    let elements =
        state.routing.opened_chain_noting(plan_id, parameters, &mut secrets).map_err(ApiError::bad_request)?;
    // What a plugin says about its settings never quotes a sealed one back.
    let redact = |text: String| crate::identity::redact(&text, &secrets);
    if elements.is_empty() {
        return Ok(());
    }
    let scratch = Arc::new(KvStore::new(KvLimits::default()));
    match state
        .registry
        .build_chain(instance_id, &elements, &scratch, crate::plugins::Share::from_settings(&state.config.gateway))
        .await
    {
        Ok(_) => Ok(()),
        Err(err @ ChainError::UnknownPlugin(_)) => {
            Err(ApiError::bad_request(redact(format!("parameters.plugins: {err}"))))
        }
        // The server is full, not the customer's parameters wrong: answered as a full plan is.
        Err(ChainError::Configure(err @ ConfigureError::Capacity { .. })) => {
            let err = redact(err.to_string());
            tracing::warn!(instance = %instance_id, "provision refused for plugin capacity: {err}");
            Err(ApiError::unprocessable(
                "InstanceLimitReached",
                format!("ovsb cannot take another instance now: {err}"),
            ))
        }
        Err(ChainError::Configure(err)) => Err(ApiError::bad_request(redact(format!("parameters.plugins: {err}")))),
    }
}

/// Opens the sealed keystores, passwords and history a validator request may bring (sealed to
/// ovsb's identity); they are used at once and stored only sealed under the broker's key.
fn open_key_secrets(state: &BrokerState, parameters: &mut Value) -> Result<(), ApiError> {
    for field in ["keystores", "passwords", "slashing_protection"] {
        if let Some(value) = parameters.get_mut(field) {
            state.identity.open_all(value, &format!("parameters.{field}")).map_err(ApiError::bad_request)?;
        }
    }
    Ok(())
}

/// The parameters with every chain entry's sealed settings opened, as the plugins get them
/// (what the plan's schema describes), and the entries that had sealed settings.
fn opened_plugin_settings(state: &BrokerState, parameters: &Value) -> Result<(Value, Vec<usize>), ApiError> {
    let mut opened = parameters.clone();
    let mut sealed = Vec::new();
    if let Some(Value::Array(entries)) = opened.get_mut("plugins") {
        for (i, entry) in entries.iter_mut().enumerate() {
            let Some(config) = entry.get_mut("config") else { continue };
            let before = config.clone();
            state
                .identity
                .open_all(config, &format!("parameters.plugins[{i}].config"))
                .map_err(ApiError::bad_request)?;
            if *config != before {
                sealed.push(i);
            }
        }
    }
    Ok((opened, sealed))
}

/// Checks instance parameters against the plan's published schema, sealed settings opened.
fn check_parameters(state: &BrokerState, entry: &PlanEntry, parameters: &Value) -> Result<(), ApiError> {
    let (opened, sealed) = opened_plugin_settings(state, parameters)?;
    entry.check_instance_parameters(&opened, &sealed)
}

fn is_validator(entry: &PlanEntry) -> bool {
    entry.plan.driver.is_validator()
}

/// A given slashing-protection history must be of the chain the plan's operator fixed, if
/// one is fixed (else the driver checks it against the client's beacon node).
fn check_history_chain(entry: &PlanEntry, secrets: Option<&crate::provision::KeySecrets>) -> Result<(), ApiError> {
    let (Some(fixed), Some(given)) =
        (entry.plan.driver.genesis_validators_root(), secrets.and_then(crate::provision::given_history_root))
    else {
        return Ok(());
    };
    if crate::interchange::Root::parse(fixed) == Some(given) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "parameters.slashing_protection at /metadata/genesis_validators_root: {given} is not the chain of plan {} ({fixed})",
        entry.plan.name
    )))
}

/// The secrets of a request, sealed under the broker's secret key (see [`SealedRequest`]).
fn seal(state: &BrokerState, secrets: Option<&crate::provision::KeySecrets>) -> Option<String> {
    secrets.map(|secrets| state.secret.seal(&serde_json::to_vec(secrets).expect("secrets serialize")))
}

fn check_maintenance(entry: &PlanEntry, requested: Option<&str>) -> Result<(), ApiError> {
    let Some(requested) = requested else { return Ok(()) };
    match entry.maintenance_info() {
        Some(info) if info.version == requested => Ok(()),
        Some(info) => Err(ApiError::maintenance_conflict(format!(
            "maintenance_info.version {requested:?} is not the plan's current version {:?}",
            info.version
        ))),
        None => Err(ApiError::maintenance_conflict(format!(
            "maintenance_info.version {requested:?} given, but the plan has no maintenance_info"
        ))),
    }
}

fn new_operation(state: &BrokerState, instance_id: &str, request: OperationRequest, polling_s: u64) -> OperationRow {
    let kind = request.kind();
    let now = now_ms();
    OperationRow {
        id: format!("{}-{}", kind.as_str(), random_id()),
        instance_id: instance_id.to_string(),
        kind,
        state: OperationState::InProgress,
        description: format!("{} accepted", kind.as_str()),
        request,
        deadline_ms: now + (polling_s * 1000) as i64,
        lease_owner: state.operations.owner().to_string(),
        lease_until_ms: state.operations.lease_until(),
        created_ms: now,
        updated_ms: now,
    }
}

/// `{"operation": …}` while an operation runs, `{}` once done.
fn operation_body(operation: Option<&str>) -> Value {
    operation.map_or_else(|| json!({}), |operation| json!({ "operation": operation }))
}

/// The OSB answer to a transition: a started operation runs in the background (a deprovision
/// first swaps the routes, since accepting it revoked the bindings); 202 carries the operation,
/// 200 the finished body.
async fn answer(
    state: &Arc<BrokerState>,
    instance_id: &str,
    kind: OperationKind,
    outcome: Outcome,
    body: impl Fn(Option<&str>) -> Value,
) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Started(operation) => {
            let id = operation.id.clone();
            tracing::info!(instance = %instance_id, operation = %id, "{} accepted", kind.as_str());
            if kind == OperationKind::Deprovision {
                state.routing.sync_instance(instance_id).await;
            }
            state.operations.start(operation);
            Ok(reply(StatusCode::ACCEPTED, body(Some(&id))))
        }
        Outcome::InProgress(operation) => Ok(reply(StatusCode::ACCEPTED, body(Some(&operation)))),
        Outcome::Done => Ok(reply(StatusCode::OK, body(None))),
        Outcome::Refused(err) => Err(err),
    }
}

/// The provision answer: the operation (while it runs) and the dashboard, from the first answer on.
fn provision_body(state: &BrokerState, instance_id: &str, operation: Option<&str>) -> serde_json::Value {
    let mut body = json!({ "dashboard_url": super::dashboard::url(state, instance_id) });
    if let Some(operation) = operation {
        body["operation"] = json!(operation);
    }
    body
}

enum Outcome {
    Started(OperationRow),
    InProgress(String),
    Done,
    Refused(ApiError),
}

/// `PUT /v2/service_instances/:instance_id`
pub async fn provision(
    State(state): State<Arc<BrokerState>>,
    meta: Meta,
    path: IdPath,
    query_string: QueryMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let instance_id = id(path)?;
    let query = query(query_string)?;
    let body = json_object(body)?;
    let service_id = required_string(&body, "service_id")?;
    let plan_id = required_string(&body, "plan_id")?;
    let organization_guid = required_string(&body, "organization_guid")?;
    let space_guid = required_string(&body, "space_guid")?;
    let context = optional_object(&body, "context")?;
    let parameters = optional_object(&body, "parameters")?;
    let requested_version = maintenance_version(&body)?;
    let entry = state.catalog.plan(&service_id, &plan_id)?;
    if !accepts_incomplete(&query)? {
        return Err(ApiError::async_required());
    }
    check_parameters(&state, entry, parameters.as_ref().unwrap_or(&json!({})))?;
    check_maintenance(entry, requested_version.as_deref())?;
    check_chain(&state, &instance_id, &plan_id, parameters.as_ref()).await?;
    // A validator's keys are sealed into the operation; the instance keeps the rest.
    let (parameters, request) = if is_validator(entry) {
        let mut opened = parameters.clone().unwrap_or_else(|| json!({}));
        open_key_secrets(&state, &mut opened)?;
        let prepared = crate::provision::prepare_provision(&opened).map_err(ApiError::bad_request)?;
        check_history_chain(entry, prepared.secrets.as_ref())?;
        let request = SealedRequest { sealed: seal(&state, prepared.secrets.as_ref()) };
        (Some(prepared.public), OperationRequest::Provision(request))
    } else {
        (parameters, OperationRequest::Provision(SealedRequest::default()))
    };

    let now = now_ms();
    let operation = new_operation(&state, &instance_id, request, entry.plan.maximum_polling_duration);
    let row = InstanceRow {
        id: instance_id.clone(),
        service_id: service_id.clone(),
        plan_id: plan_id.clone(),
        organization_guid: organization_guid.clone(),
        space_guid: space_guid.clone(),
        parameters: parameters.clone(),
        context,
        maintenance_version: entry.maintenance_info().map(|m| m.version.clone()),
        state: InstanceState::Provisioning,
        operation_id: operation.id.clone(),
        created_ms: now,
        updated_ms: now,
    };
    let cap = entry.plan.max_instances;
    let audit = meta.audit("provision", None);
    let outcome = state
        .store
        .instance_transition(&instance_id, Some(&plan_id), |view| {
            let existing = view.instance.filter(|i| i.state != InstanceState::Deleted);
            let Some(existing) = existing else {
                if cap > 0 && view.plan_count >= cap {
                    return Decision::answer(Outcome::Refused(ApiError::unprocessable(
                        "InstanceLimitReached",
                        format!("the plan allows at most {cap} instances"),
                    )));
                }
                return Decision {
                    changes: vec![
                        Change::PutInstance(row),
                        Change::InsertOperation(operation.clone()),
                        Change::Audit(audit),
                    ],
                    answer: Outcome::Started(operation),
                };
            };
            // `maintenance_info` is part of the request: naming another version than the
            // instance runs is asking for another instance.
            let identical = existing.service_id == service_id
                && existing.plan_id == plan_id
                && existing.organization_guid == organization_guid
                && existing.space_guid == space_guid
                && same_json(existing.parameters.as_ref(), parameters.as_ref())
                && requested_version.as_ref().is_none_or(|v| existing.maintenance_version.as_ref() == Some(v));
            if !identical {
                return Decision::answer(Outcome::Refused(ApiError::conflict(
                    "an instance with this id exists with different attributes",
                )));
            }
            Decision::answer(match existing.state {
                InstanceState::Provisioning => Outcome::InProgress(existing.operation_id.clone()),
                InstanceState::Ready | InstanceState::Updating => Outcome::Done,
                InstanceState::Failed => Outcome::Refused(ApiError::conflict(
                    "an instance with this id exists but failed; deprovision it before provisioning it again",
                )),
                InstanceState::Deprovisioning => {
                    Outcome::Refused(ApiError::concurrency("the instance is being deprovisioned"))
                }
                InstanceState::Deleted => unreachable!("filtered above"),
            })
        })
        .await?;
    answer(&state, &instance_id, OperationKind::Provision, outcome, |op| provision_body(&state, &instance_id, op)).await
}

/// `GET /v2/service_instances/:instance_id`
pub async fn fetch(State(state): State<Arc<BrokerState>>, path: IdPath) -> Result<Response, ApiError> {
    let instance_id = id(path)?;
    let Some(instance) = state.store.instance(&instance_id).await? else {
        return Err(ApiError::not_found("no such instance"));
    };
    match instance.state {
        InstanceState::Ready => {}
        InstanceState::Updating => return Err(ApiError::concurrency("the instance is being updated")),
        InstanceState::Provisioning => return Err(ApiError::not_found("the instance is still being provisioned")),
        InstanceState::Failed => return Err(ApiError::not_found("the instance failed; deprovision it")),
        InstanceState::Deprovisioning | InstanceState::Deleted => return Err(ApiError::not_found("no such instance")),
    }
    let mut body = json!({
        "service_id": instance.service_id,
        "plan_id": instance.plan_id,
        "dashboard_url": super::dashboard::url(&state, &instance.id),
    });
    if let Some(parameters) = instance.parameters {
        body["parameters"] = parameters;
    }
    if let Some(version) = instance.maintenance_version {
        body["maintenance_info"] = json!({ "version": version });
    }
    Ok(reply(StatusCode::OK, body))
}

/// `PATCH /v2/service_instances/:instance_id`
pub async fn update(
    State(state): State<Arc<BrokerState>>,
    meta: Meta,
    path: IdPath,
    query_string: QueryMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let instance_id = id(path)?;
    let query = query(query_string)?;
    let body = json_object(body)?;
    let service_id = required_string(&body, "service_id")?;
    let plan_id = optional_string(&body, "plan_id")?;
    let parameters = optional_object(&body, "parameters")?;
    let _context = optional_object(&body, "context")?;
    let requested_version = maintenance_version(&body)?;
    state.catalog.service(&service_id)?;
    if let Some(plan_id) = &plan_id {
        state.catalog.plan(&service_id, plan_id)?;
    }
    if !accepts_incomplete(&query)? {
        return Err(ApiError::async_required());
    }
    let current = match state.store.instance(&instance_id).await? {
        Some(instance) if instance.state != InstanceState::Deleted => instance,
        _ => return Err(ApiError::not_found("no such instance")),
    };
    if current.service_id != service_id {
        return Err(ApiError::bad_request(format!("the instance belongs to service {:?}", current.service_id)));
    }
    let target_plan = plan_id.clone().unwrap_or_else(|| current.plan_id.clone());
    let plan_changes = target_plan != current.plan_id;
    let entry = state.catalog.plan(&service_id, &target_plan)?;
    if plan_changes {
        let from_updateable = state.catalog.plan_by_id(&current.plan_id).is_some_and(|p| p.plan_updateable);
        if !(from_updateable && entry.plan_updateable) {
            return Err(ApiError::unprocessable("PlanChangeNotSupported", "this instance's plan cannot be changed")
                .with_update_repeatable(false));
        }
    }
    if let Some(parameters) = &parameters {
        check_parameters(&state, entry, parameters)?;
    }
    check_maintenance(entry, requested_version.as_deref())?;
    let from_validator = state.catalog.plan_by_id(&current.plan_id).is_some_and(is_validator);
    if plan_changes && (from_validator || is_validator(entry)) {
        // Another plan is another client: the keys would have to move with their history.
        return Err(ApiError::unprocessable(
            "PlanChangeNotSupported",
            "validator instances cannot change plan; deprovision (the keys' history is kept) and provision on the other plan",
        )
        .with_update_repeatable(false));
    }
    let mut sealed = None;
    let new_parameters = match &parameters {
        Some(parameters) if is_validator(entry) => {
            // What the update names changes; keys are added (sealed) or removed.
            let current_public: Value = current.parameters.clone().unwrap_or_else(|| json!({}));
            let mut opened = parameters.clone();
            open_key_secrets(&state, &mut opened)?;
            let prepared = crate::provision::prepare_update(&current_public, &opened).map_err(ApiError::bad_request)?;
            check_history_chain(entry, prepared.secrets.as_ref())?;
            sealed = seal(&state, prepared.secrets.as_ref());
            Some(prepared.public)
        }
        Some(parameters) => Some(parameters.clone()),
        None => current.parameters.clone(),
    };
    if parameters.is_some() || plan_changes {
        check_chain(&state, &instance_id, &target_plan, new_parameters.as_ref()).await?;
    }
    let maintenance_version = match (&requested_version, plan_changes) {
        (Some(version), _) => Some(version.clone()),
        (None, true) => entry.maintenance_info().map(|m| m.version.clone()),
        (None, false) => current.maintenance_version.clone(),
    };
    let request = UpdateRequest { plan_id: target_plan, parameters: new_parameters, maintenance_version, sealed };
    let operation = new_operation(
        &state,
        &instance_id,
        OperationRequest::Update(request.clone()),
        entry.plan.maximum_polling_duration,
    );
    let audit = meta.audit("update", None);
    let outcome = state
        .store
        .instance_transition(&instance_id, None, |view| {
            let (Some(instance), operation_now) = (view.instance, view.operation) else {
                return Decision::answer(Outcome::Refused(ApiError::not_found("no such instance")));
            };
            match instance.state {
                InstanceState::Ready => {
                    let unchanged = instance.plan_id == request.plan_id
                        && instance.parameters == request.parameters
                        && instance.maintenance_version == request.maintenance_version;
                    if unchanged {
                        return Decision::answer(Outcome::Done);
                    }
                    let row = InstanceRow {
                        state: InstanceState::Updating,
                        operation_id: operation.id.clone(),
                        updated_ms: now_ms(),
                        ..instance.clone()
                    };
                    Decision {
                        changes: vec![
                            Change::PutInstance(row),
                            Change::InsertOperation(operation.clone()),
                            Change::Audit(audit),
                        ],
                        answer: Outcome::Started(operation),
                    }
                }
                InstanceState::Updating => {
                    let same = operation_now
                        .filter(|op| op.kind == OperationKind::Update)
                        .and_then(|op| op.request.update().map(|r| (op, r)))
                        .filter(|(_, running)| **running == request);
                    Decision::answer(match same {
                        Some((op, _)) => Outcome::InProgress(op.id.clone()),
                        None => Outcome::Refused(ApiError::concurrency("another update of this instance is running")),
                    })
                }
                InstanceState::Provisioning => {
                    Decision::answer(Outcome::Refused(ApiError::concurrency("the instance is still being provisioned")))
                }
                InstanceState::Deprovisioning => {
                    Decision::answer(Outcome::Refused(ApiError::concurrency("the instance is being deprovisioned")))
                }
                InstanceState::Failed => Decision::answer(Outcome::Refused(ApiError::unprocessable(
                    "InstanceFailed",
                    "the instance failed; deprovision it",
                ))),
                InstanceState::Deleted => Decision::answer(Outcome::Refused(ApiError::not_found("no such instance"))),
            }
        })
        .await?;
    answer(&state, &instance_id, OperationKind::Update, outcome, operation_body).await
}

/// `DELETE /v2/service_instances/:instance_id?service_id&plan_id&accepts_incomplete`
pub async fn deprovision(
    State(state): State<Arc<BrokerState>>,
    meta: Meta,
    path: IdPath,
    query_string: QueryMap,
) -> Result<Response, ApiError> {
    let instance_id = id(path)?;
    let query = query(query_string)?;
    let service_id = required_query(&query, "service_id")?.to_string();
    let plan_id = required_query(&query, "plan_id")?.to_string();
    // Ids first (400 naming them), as for every other request: a plan no longer in the catalog
    // is still accepted for an instance of that plan, so that it can be deprovisioned.
    if let Err(unknown) = state.catalog.plan(&service_id, &plan_id) {
        let of_instance =
            state.store.instance(&instance_id).await?.is_some_and(|i| {
                i.state != InstanceState::Deleted && i.service_id == service_id && i.plan_id == plan_id
            });
        if !of_instance {
            return Err(unknown);
        }
    }
    if !accepts_incomplete(&query)? {
        return Err(ApiError::async_required());
    }
    let polling = |plan_id: &str| state.catalog.plan_by_id(plan_id).map_or(600, |p| p.plan.maximum_polling_duration);
    let audit = meta.audit("deprovision", None);
    let outcome = state
        .store
        .instance_transition(&instance_id, None, |view| {
            let Some(instance) = view.instance.filter(|i| i.state != InstanceState::Deleted) else {
                return Decision::answer(Outcome::Refused(ApiError::gone("no such instance")));
            };
            // An operation past its deadline (its runner is gone, or the store failed under it)
            // no longer holds the instance: it ends as failed and the deprovision goes ahead.
            let overdue = view
                .operation
                .filter(|op| op.state == OperationState::InProgress && op.deadline_ms < now_ms())
                .map(|op| op.id.clone());
            let start = |superseded: Option<String>| {
                let operation =
                    new_operation(&state, &instance_id, OperationRequest::Deprovision, polling(&instance.plan_id));
                let row = InstanceRow {
                    state: InstanceState::Deprovisioning,
                    operation_id: operation.id.clone(),
                    updated_ms: now_ms(),
                    ..instance.clone()
                };
                let mut changes = Vec::with_capacity(5);
                if let Some(id) = superseded {
                    let description = "did not finish by its deadline; superseded by a deprovision".into();
                    changes.push(Change::FailOperation { id, description });
                }
                changes.extend([
                    Change::PutInstance(row),
                    Change::InsertOperation(operation.clone()),
                    // Cascade: the instance's credentials stop working now.
                    Change::DeleteBindings,
                    Change::Audit(audit),
                ]);
                Decision { changes, answer: Outcome::Started(operation) }
            };
            // The ids say which instance the platform means: another one's ids delete nothing,
            // whatever the instance is doing (checked before its state, as on every request).
            if instance.service_id != service_id || instance.plan_id != plan_id {
                return Decision::answer(Outcome::Refused(ApiError::bad_request(
                    "service_id and plan_id must be those of the instance",
                )));
            }
            match instance.state {
                InstanceState::Ready | InstanceState::Failed => start(None),
                InstanceState::Provisioning | InstanceState::Updating | InstanceState::Deprovisioning
                    if overdue.is_some() =>
                {
                    start(overdue)
                }
                InstanceState::Deprovisioning => Decision::answer(Outcome::InProgress(instance.operation_id.clone())),
                InstanceState::Provisioning => Decision::answer(Outcome::Refused(ApiError::concurrency(
                    "the instance is still being provisioned; deprovision it once last_operation reports the result",
                ))),
                InstanceState::Updating => {
                    Decision::answer(Outcome::Refused(ApiError::concurrency("the instance is being updated")))
                }
                InstanceState::Deleted => unreachable!("filtered above"),
            }
        })
        .await?;
    answer(&state, &instance_id, OperationKind::Deprovision, outcome, operation_body).await
}

/// `GET /v2/service_instances/:instance_id/last_operation`
pub async fn last_operation(
    State(state): State<Arc<BrokerState>>,
    path: IdPath,
    query_string: QueryMap,
) -> Result<Response, ApiError> {
    let instance_id = id(path)?;
    let query = query(query_string)?;
    let Some(instance) = state.store.instance(&instance_id).await? else {
        return Err(ApiError::not_found("no such instance"));
    };
    // `operation` is a hint (platforms do not always send it): fall back to the latest.
    let hinted = match query.get("operation").filter(|o| !o.is_empty()) {
        Some(hint) => state.store.operation(hint).await?.filter(|op| op.instance_id == instance_id),
        None => None,
    };
    let operation = match hinted {
        Some(op) => op,
        None => state
            .store
            .operation(&instance.operation_id)
            .await?
            .ok_or_else(|| ApiError::not_found("the instance has no operation"))?,
    };
    if instance.state == InstanceState::Deleted && operation.kind == OperationKind::Deprovision {
        let kept_ms = (state.config.operations.tombstone_hours * 3_600_000) as i64;
        if now_ms() - operation.updated_ms >= kept_ms {
            return Err(ApiError::gone("the instance was deprovisioned"));
        }
    }
    if operation.state != OperationState::InProgress {
        // The runner swaps the routes right after it commits; make sure this replica serves
        // the outcome before telling the platform it is there.
        state.routing.sync_if_stale().await;
    }
    let mut body = json!({ "state": operation.state.as_str(), "description": operation.description });
    if operation.state == OperationState::Failed {
        match operation.kind {
            OperationKind::Update => body["instance_usable"] = json!(true),
            OperationKind::Deprovision => body["instance_usable"] = json!(false),
            OperationKind::Provision => {}
        }
    }
    let mut response = reply(StatusCode::OK, body);
    if operation.state == OperationState::InProgress {
        let seconds = state.config.operations.retry_after_seconds.to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    Ok(response)
}
