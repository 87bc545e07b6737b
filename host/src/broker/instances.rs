//! Service instances: provision, fetch, update, deprovision, last_operation.
//!
//! Owns: the instance handlers: the typed request ([`super::requests`]), the checks against the
//! catalog, the parameter schema and the plugins' `configure`, the operation a request starts,
//! and the answer. Must not: decide the state matrix (each handler calls its pure function in
//! [`super::decide`] inside the store's transition), write SQL, or rebuild routes on a read
//! (`last_operation` changes nothing).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::catalog::PlanEntry;
use super::decide::{self, InstanceOutcome as Outcome, PlanMove};
use super::requests::{ProvisionRequest, UpdateBody};
use super::{ApiError, BrokerState, Meta, accepts_incomplete, checked_id, json_object, query, reply, required_query};
use crate::plugins::{ChainError, ConfigureError, KvLimits, KvStore};
use crate::store::{
    InstanceState, OperationKind, OperationRequest, OperationRow, OperationState, SealedRequest, UpdateRequest, now_ms,
    random_id,
};

type IdPath = Result<Path<String>, PathRejection>;

fn id(path: IdPath) -> Result<String, ApiError> {
    checked_id(path.map(|p| p.0), "instance_id")
}

/// The instance a request names (its checked id) and the request's query string: a bad id or
/// a malformed query string is the handlers' 400, the id's first.
pub(super) struct Addressed {
    instance_id: String,
    query: HashMap<String, String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Addressed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let instance_id = id(Path::from_request_parts(parts, state).await)?;
        let query = query(Query::from_request_parts(parts, state).await)?;
        Ok(Addressed { instance_id, query })
    }
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
    let plan = state.config.plan_by_id(plan_id);
    crate::chain_policy::check(plan, parameters).map_err(ApiError::bad_request)?;
    let mut secrets = Vec::new();
    let elements = crate::chain_policy::opened_chain(&state.identity, plan, parameters, &mut secrets)
        .map_err(ApiError::bad_request)?;
    // What a plugin says about its settings never quotes a sealed one back.
    let redact = |text: String| crate::identity::redact(&text, &secrets);
    if elements.is_empty() {
        return Ok(());
    }
    let scratch = Arc::new(KvStore::new(KvLimits::default()));
    match state
        .registry
        .build_chain(
            instance_id,
            &elements,
            &scratch,
            crate::plugins::Share::from_settings(&state.config.gateway),
            &secrets,
        )
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
fn check_history_chain(
    entry: &PlanEntry,
    secrets: Option<&crate::validator_params::KeySecrets>,
) -> Result<(), ApiError> {
    let (Some(fixed), Some(given)) =
        (entry.plan.driver.genesis_validators_root(), secrets.and_then(crate::validator_params::given_history_root))
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
fn seal(state: &BrokerState, secrets: Option<&crate::validator_params::KeySecrets>) -> Option<String> {
    secrets.map(|secrets| state.secret.seal(&serde_json::to_vec(secrets).expect("secrets serialize")))
}

fn check_maintenance(entry: &PlanEntry, requested: Option<&str>) -> Result<(), ApiError> {
    decide::maintenance(entry.maintenance_info().map(|info| info.version.as_str()), requested)
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

/// `PUT /v2/service_instances/:instance_id`
pub async fn provision(
    State(state): State<Arc<BrokerState>>,
    meta: Meta,
    Addressed { instance_id, query }: Addressed,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let mut request = ProvisionRequest::parse(json_object(body)?)?;
    // The plugins the chain names stay available until the instance is committed.
    let _names = state.registry.hold_names().await;
    let catalog = state.catalog.load_full();
    let entry = catalog.plan(&request.service_id, &request.plan_id)?;
    if !accepts_incomplete(&query)? {
        return Err(ApiError::async_required());
    }
    check_parameters(&state, entry, request.parameters.as_ref().unwrap_or(&json!({})))?;
    check_maintenance(entry, request.maintenance_version.as_deref())?;
    let checked = started.elapsed();
    check_chain(&state, &instance_id, &request.plan_id, request.parameters.as_ref()).await?;
    let configured = started.elapsed();
    // A validator's keys are sealed into the operation; the instance keeps the rest.
    let operation_request = if is_validator(entry) {
        let mut opened = request.parameters.clone().unwrap_or_else(|| json!({}));
        open_key_secrets(&state, &mut opened)?;
        let prepared = crate::validator_params::prepare_provision(&opened).map_err(ApiError::bad_request)?;
        check_history_chain(entry, prepared.secrets.as_ref())?;
        let sealed = SealedRequest { sealed: seal(&state, prepared.secrets.as_ref()) };
        request.parameters = Some(prepared.public);
        OperationRequest::Provision(sealed)
    } else {
        OperationRequest::Provision(SealedRequest::default())
    };
    let operation = new_operation(&state, &instance_id, operation_request, entry.plan.maximum_polling_duration);
    // The plan's count is read only for a plan with a cap.
    let capped = (entry.plan.max_instances > 0).then(|| request.plan_id.clone());
    let provision = decide::Provision {
        request,
        plan_version: entry.maintenance_info().map(|m| m.version.clone()),
        cap: entry.plan.max_instances,
        operation,
        audit: meta.audit("provision", None),
    };
    let outcome = state
        .store
        .instance_transition(&instance_id, capped.as_deref(), |view| decide::provision(provision, view))
        .await?;
    let stored = started.elapsed();
    let answered =
        answer(&state, &instance_id, OperationKind::Provision, outcome, |op| provision_body(&state, &instance_id, op))
            .await;
    // Where a provision's time goes (OVSB_LOG=ovsb::broker=debug), in µs since the request.
    tracing::debug!(instance = %instance_id, checked_us = checked.as_micros(), configured_us = configured.as_micros(),
        stored_us = stored.as_micros(), answered_us = started.elapsed().as_micros(), "provision timing");
    answered
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
    Addressed { instance_id, query }: Addressed,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let UpdateBody { service_id, plan_id, parameters, context: _, maintenance_version: requested_version } =
        UpdateBody::parse(json_object(body)?)?;
    // The plugins the chain names stay available until the update is committed.
    let _names = state.registry.hold_names().await;
    let catalog = state.catalog.load_full();
    catalog.service(&service_id)?;
    if let Some(plan_id) = &plan_id {
        catalog.plan(&service_id, plan_id)?;
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
    let entry = catalog.plan(&service_id, &target_plan)?;
    let from = catalog.plan_by_id(&current.plan_id);
    let plans = PlanMove {
        changes: plan_changes,
        from_updateable: from.is_some_and(|p| p.plan_updateable),
        to_updateable: entry.plan_updateable,
        from_validator: from.is_some_and(is_validator),
        to_validator: is_validator(entry),
    };
    if !(plans.from_updateable && plans.to_updateable) {
        // A plan that cannot be left or taken is refused before the parameters are checked; a
        // validator's plan change after them (below), in the order OSB platforms have seen.
        decide::plan_change(plans)?;
    }
    if let Some(parameters) = &parameters {
        check_parameters(&state, entry, parameters)?;
    }
    check_maintenance(entry, requested_version.as_deref())?;
    decide::plan_change(plans)?;
    let mut sealed = None;
    let new_parameters = match &parameters {
        Some(parameters) if is_validator(entry) => {
            // What the update names changes; keys are added (sealed) or removed.
            let current_public: Value = current.parameters.clone().unwrap_or_else(|| json!({}));
            let mut opened = parameters.clone();
            open_key_secrets(&state, &mut opened)?;
            let prepared =
                crate::validator_params::prepare_update(&current_public, &opened).map_err(ApiError::bad_request)?;
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
    let update = decide::Update { request, operation, audit: meta.audit("update", None), now_ms: now_ms() };
    let outcome = state.store.instance_transition(&instance_id, None, |view| decide::update(update, view)).await?;
    answer(&state, &instance_id, OperationKind::Update, outcome, operation_body).await
}

/// `DELETE /v2/service_instances/:instance_id?service_id&plan_id&accepts_incomplete`
pub async fn deprovision(
    State(state): State<Arc<BrokerState>>,
    meta: Meta,
    Addressed { instance_id, query }: Addressed,
) -> Result<Response, ApiError> {
    let service_id = required_query(&query, "service_id")?.to_string();
    let plan_id = required_query(&query, "plan_id")?.to_string();
    // Ids first (400 naming them), as for every other request: a plan no longer in the catalog
    // is still accepted for an instance of that plan, so that it can be deprovisioned.
    let catalog = state.catalog.load_full();
    if let Err(unknown) = catalog.plan(&service_id, &plan_id) {
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
    let polling = |plan_id: &str| catalog.plan_by_id(plan_id).map_or(600, |p| p.plan.maximum_polling_duration);
    let operation = |instance: &crate::store::InstanceRow| {
        new_operation(&state, &instance_id, OperationRequest::Deprovision, polling(&instance.plan_id))
    };
    let deprovision =
        decide::Deprovision { service_id, plan_id, audit: meta.audit("deprovision", None), now_ms: now_ms() };
    let outcome = state
        .store
        .instance_transition(&instance_id, None, |view| decide::deprovision(deprovision, operation, view))
        .await?;
    answer(&state, &instance_id, OperationKind::Deprovision, outcome, operation_body).await
}

/// The state `last_operation` reports of an operation in `stored` state: an operation this
/// replica runs is still in progress until its runner has swapped the routes for its outcome
/// (right after it commits it), so that a platform told "succeeded" here is served here.
fn reported_state(stored: OperationState, running_here: bool) -> OperationState {
    match running_here {
        true => OperationState::InProgress,
        false => stored,
    }
}

/// `GET /v2/service_instances/:instance_id/last_operation`
pub async fn last_operation(
    State(state): State<Arc<BrokerState>>,
    Addressed { instance_id, query }: Addressed,
) -> Result<Response, ApiError> {
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
    // A read: it changes nothing, routes included (they follow the store on their own).
    let reported = reported_state(operation.state, state.operations.running().contains(&operation.id));
    let mut body = json!({ "state": reported.as_str(), "description": operation.description });
    if reported == OperationState::Failed {
        match operation.kind {
            OperationKind::Update => body["instance_usable"] = json!(true),
            OperationKind::Deprovision => body["instance_usable"] = json!(false),
            OperationKind::Provision => {}
        }
    }
    let mut response = reply(StatusCode::OK, body);
    if reported == OperationState::InProgress {
        let seconds = state.config.operations.retry_after_seconds.to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_still_finishing_here_is_reported_in_progress() {
        use OperationState::*;
        let cases = [
            (InProgress, false, InProgress),
            (InProgress, true, InProgress),
            (Succeeded, false, Succeeded),
            (Failed, false, Failed),
            (Succeeded, true, InProgress),
            (Failed, true, InProgress),
        ];
        for (stored, running_here, reported) in cases {
            assert_eq!(reported_state(stored, running_here), reported, "{stored:?}, running here: {running_here}");
        }
    }
}
