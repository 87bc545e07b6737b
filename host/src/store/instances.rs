//! Instances and bindings in the store: their reads, and the decide-then-apply transitions
//! that change them.
//!
//! Owns: reading an instance (with its latest operation) or a binding (with a rotation's
//! predecessor) inside a transaction, handing the rows to the caller's decision, and applying
//! the [`Change`]s it returns, in order, in that same transaction. Must not: decide OSB
//! semantics (the broker's closures do), or end an operation a runner holds (`operations`).

use sqlx::Row as _;

use super::changes::{begin_change, insert_audit};
use super::group::{Tx, Wrote, job};
use super::rows::{
    AuditEntry, BINDING_COLUMNS, BindingRow, INSTANCE_COLUMNS, InstanceRow, InstanceState, OPERATION_COLUMNS,
    OperationRow, binding_from, instance_from, json_text, operation_from,
};
use super::{Result, Store, StoreError, now_ms};

/// One write a transition makes.
#[derive(Debug, Clone)]
pub enum Change {
    /// Insert or replace the instance row.
    PutInstance(InstanceRow),
    /// Start an operation.
    InsertOperation(OperationRow),
    /// End a running operation as failed, with this description (an operation that passed its
    /// deadline and is superseded); its runner, if any, then finds it ended and drops its result.
    FailOperation {
        /// The operation.
        id: String,
        /// Why it failed.
        description: String,
    },
    /// Revoke every binding of the instance.
    DeleteBindings,
    /// Create a binding.
    InsertBinding(BindingRow),
    /// Remove the binding.
    DeleteBinding,
    /// Record who did it.
    Audit(AuditEntry),
}

/// A decision: what to write (nothing, for an answer from the current state) and what to answer.
pub struct Decision<T> {
    /// Applied in order, in one transaction.
    pub changes: Vec<Change>,
    /// Returned to the caller once committed.
    pub answer: T,
}

impl<T> Decision<T> {
    /// Answer without changing anything.
    pub fn answer(answer: T) -> Self {
        Decision { changes: Vec::new(), answer }
    }
}

/// What a transition is decided on.
pub struct InstanceView<'a> {
    /// The instance row, tombstones included.
    pub instance: Option<&'a InstanceRow>,
    /// The instance's latest operation.
    pub operation: Option<&'a OperationRow>,
    /// Instances of the requested plan that are not deleted (when asked for; one row read,
    /// see `plan_instances`).
    pub plan_count: u64,
}

impl Store {
    /// An instance, tombstones included.
    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRow>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| instance_from(&row)).transpose()
    }

    /// A binding.
    pub async fn binding(&self, instance_id: &str, id: &str) -> Result<Option<BindingRow>> {
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings WHERE instance_id = $1 AND id = $2");
        let row = sqlx::query(&sql).bind(instance_id).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| binding_from(&row)).transpose()
    }

    /// Every instance that serves calls (ready or updating), and every binding.
    pub async fn serving(&self) -> Result<(Vec<InstanceRow>, Vec<BindingRow>)> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE state IN ('ready', 'updating')");
        let instances =
            sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(instance_from).collect::<Result<_>>()?;
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings");
        let bindings =
            sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(binding_from).collect::<Result<_>>()?;
        Ok((instances, bindings))
    }

    /// Instance `id` if it is serving (ready or updating), with its bindings.
    pub async fn serving_instance(&self, id: &str) -> Result<Option<(InstanceRow, Vec<BindingRow>)>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND state IN ('ready', 'updating')");
        let Some(instance) = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await? else { return Ok(None) };
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings WHERE instance_id = $1");
        let bindings =
            sqlx::query(&sql).bind(id).fetch_all(&self.pool).await?.iter().map(binding_from).collect::<Result<_>>()?;
        Ok(Some((instance_from(&instance)?, bindings)))
    }

    /// Every instance that is not a tombstone.
    pub async fn instances_not_deleted(&self) -> Result<Vec<InstanceRow>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE state <> 'deleted'");
        sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(instance_from).collect()
    }

    /// Number of instances in each state (tombstones included as `deleted`).
    pub async fn instances_by_state(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM instances GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("state")?, row.try_get("n")?))).collect()
    }

    /// Counts of rows, for tests and metrics: (instances not deleted, operations, bindings, audit).
    pub async fn counts(&self) -> Result<(i64, i64, i64, i64)> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM instances WHERE state <> 'deleted') AS i, \
             (SELECT COUNT(*) FROM operations) AS o, (SELECT COUNT(*) FROM bindings) AS b, \
             (SELECT COUNT(*) FROM audit) AS a",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("i")?, row.try_get("o")?, row.try_get("b")?, row.try_get("a")?))
    }

    /// Decides, on the current rows of instance `id`, what a request does, and applies the
    /// decision's changes in one transaction (shared with the changes that wait beside it: see
    /// `group`; the answer is returned once it has committed). `plan_id` asks for the count of
    /// live instances of that plan (for per-plan caps).
    pub async fn instance_transition<T>(
        &self,
        id: &str,
        plan_id: Option<&str>,
        decide: impl FnOnce(InstanceView<'_>) -> Decision<T>,
    ) -> Result<T> {
        let (rows_to_decide, rows) =
            tokio::sync::oneshot::channel::<(Option<InstanceRow>, Option<OperationRow>, u64)>();
        let (decided, changes) = tokio::sync::oneshot::channel::<Vec<Change>>();
        let (id_owned, plan_id) = (id.to_string(), plan_id.map(str::to_string));
        let job = job(move |tx| {
            Box::pin(async move {
                let id = id_owned.as_str();
                begin_change(tx, id).await?;
                let (instance, operation, plan_count) = read_instance(tx, id, plan_id.as_deref()).await?;
                // The instance row as it stands in this transaction (read here, then as each
                // change writes it): `put_instance` need not read it again.
                let mut current = Known(instance.as_ref().map(|row| (row.plan_id.clone(), row.state)));
                if rows_to_decide.send((instance, operation, plan_count)).is_err() {
                    return Ok(Wrote::Nothing); // the caller went away
                }
                let changes = changes.await.unwrap_or_default();
                if changes.is_empty() {
                    return Ok(Wrote::Nothing);
                }
                for change in changes {
                    apply(tx, id, None, change, &mut current).await?;
                }
                Ok(Wrote::Changes)
            })
        });
        let decision = async move {
            let (instance, operation, plan_count) = rows.await.ok()?;
            let decision =
                decide(InstanceView { instance: instance.as_ref(), operation: operation.as_ref(), plan_count });
            let _ = decided.send(decision.changes);
            Some(decision.answer)
        };
        let (answer, committed) = tokio::join!(decision, self.grouped(job));
        committed?;
        answer.ok_or_else(|| StoreError::Database(sqlx::Error::Protocol("a transition ran without its rows".into())))
    }

    /// Decides, on the current instance and binding rows, what a bind or unbind does, and
    /// applies it in one transaction.
    pub async fn binding_transition<T>(
        &self,
        instance_id: &str,
        binding_id: &str,
        decide: impl FnOnce(Option<&InstanceRow>, Option<&BindingRow>) -> Decision<T>,
    ) -> Result<T> {
        self.rotation_transition(instance_id, binding_id, None, |instance, binding, _| decide(instance, binding)).await
    }

    /// [`Store::binding_transition`] that also reads binding `predecessor_id` of the same
    /// instance (a rotation's predecessor), in the same transaction.
    pub async fn rotation_transition<T>(
        &self,
        instance_id: &str,
        binding_id: &str,
        predecessor_id: Option<&str>,
        decide: impl FnOnce(Option<&InstanceRow>, Option<&BindingRow>, Option<&BindingRow>) -> Decision<T>,
    ) -> Result<T> {
        type Rows = (Option<InstanceRow>, Option<BindingRow>, Option<BindingRow>);
        let (rows_to_decide, rows) = tokio::sync::oneshot::channel::<Rows>();
        let (decided, changes) = tokio::sync::oneshot::channel::<Vec<Change>>();
        let ids = (instance_id.to_string(), binding_id.to_string(), predecessor_id.map(str::to_string));
        let job = job(move |tx| {
            Box::pin(async move {
                let (instance_id, binding_id, predecessor_id) = ids;
                begin_change(tx, &instance_id).await?;
                let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1");
                let instance = sqlx::query(&sql)
                    .bind(&instance_id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| instance_from(&r))
                    .transpose()?;
                let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings WHERE instance_id = $1 AND id = $2");
                let binding = sqlx::query(&sql)
                    .bind(&instance_id)
                    .bind(&binding_id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| binding_from(&r))
                    .transpose()?;
                let predecessor = match predecessor_id {
                    Some(predecessor_id) => sqlx::query(&sql)
                        .bind(&instance_id)
                        .bind(predecessor_id)
                        .fetch_optional(&mut **tx)
                        .await?
                        .map(|r| binding_from(&r))
                        .transpose()?,
                    None => None,
                };
                if rows_to_decide.send((instance, binding, predecessor)).is_err() {
                    return Ok(Wrote::Nothing);
                }
                let changes = changes.await.unwrap_or_default();
                if changes.is_empty() {
                    return Ok(Wrote::Nothing);
                }
                for change in changes {
                    apply(tx, &instance_id, Some(&binding_id), change, &mut Unknown).await?;
                }
                Ok(Wrote::Changes)
            })
        });
        let decision = async move {
            let (instance, binding, predecessor) = rows.await.ok()?;
            let decision = decide(instance.as_ref(), binding.as_ref(), predecessor.as_ref());
            let _ = decided.send(decision.changes);
            Some(decision.answer)
        };
        let (answer, committed) = tokio::join!(decision, self.grouped(job));
        committed?;
        answer.ok_or_else(|| StoreError::Database(sqlx::Error::Protocol("a transition ran without its rows".into())))
    }
}

/// The rows a transition of instance `id` is decided on: the instance (tombstones included),
/// its latest operation, and (for `plan_id`) the live instances of that plan.
async fn read_instance(
    tx: &mut Tx,
    id: &str,
    plan_id: Option<&str>,
) -> Result<(Option<InstanceRow>, Option<OperationRow>, u64)> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1");
    let instance =
        sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await?.map(|r| instance_from(&r)).transpose()?;
    let operation = match &instance {
        Some(instance) => {
            let sql = format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE id = $1");
            sqlx::query(&sql)
                .bind(&instance.operation_id)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| operation_from(&r))
                .transpose()?
        }
        None => None,
    };
    let plan_count = match plan_id {
        // One row, kept by `put_instance`: counting the plan's instances here grew with them.
        Some(plan_id) => sqlx::query("SELECT live FROM plan_instances WHERE plan_id = $1")
            .bind(plan_id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|row| row.try_get::<i64, _>("live"))
            .transpose()?
            .unwrap_or(0)
            .max(0) as u64,
        None => 0,
    };
    Ok((instance, operation, plan_count))
}

/// The plan and state of an instance row before a write, when the transaction knows them
/// (`None` inside: no row).
pub(super) enum Previous {
    /// Read in this transaction already.
    Known(Option<(String, InstanceState)>),
    /// Not read: `put_instance` reads it.
    Unknown,
}
use Previous::{Known, Unknown};

/// Writes `row` (insert or replace), and keeps `plan_instances` (the live instances of each
/// plan) in step: a row that enters or leaves a plan, or becomes a tombstone, moves the counts.
/// `previous` becomes the row written.
pub(super) async fn put_instance(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    row: InstanceRow,
    previous: &mut Previous,
) -> Result<()> {
    let before = match std::mem::replace(previous, Known(Some((row.plan_id.clone(), row.state)))) {
        Known(before) => before.map(|(plan, state)| (plan, state != InstanceState::Deleted)),
        Unknown => sqlx::query("SELECT plan_id, state FROM instances WHERE id = $1")
            .bind(row.id.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| {
                let live = r.try_get::<String, _>("state")? != InstanceState::Deleted.as_str();
                Ok::<_, sqlx::Error>((r.try_get::<String, _>("plan_id")?, live))
            })
            .transpose()?,
    };
    let was = before.filter(|(_, live)| *live).map(|(plan, _)| plan);
    let is = (row.state != InstanceState::Deleted).then(|| row.plan_id.clone());
    if was != is {
        for (plan_id, delta) in [(was, -1i64), (is, 1)] {
            let Some(plan_id) = plan_id else { continue };
            sqlx::query(
                "INSERT INTO plan_instances (plan_id, live) VALUES ($1, $2) \
                 ON CONFLICT (plan_id) DO UPDATE SET live = plan_instances.live + excluded.live",
            )
            .bind(plan_id)
            .bind(delta)
            .execute(&mut **tx)
            .await?;
        }
    }
    sqlx::query(
        "INSERT INTO instances (id, service_id, plan_id, organization_guid, space_guid, parameters, context, \
         maintenance_version, state, operation_id, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, plan_id = excluded.plan_id, \
         organization_guid = excluded.organization_guid, space_guid = excluded.space_guid, \
         parameters = excluded.parameters, context = excluded.context, \
         maintenance_version = excluded.maintenance_version, state = excluded.state, \
         operation_id = excluded.operation_id, created_ms = excluded.created_ms, \
         updated_ms = excluded.updated_ms",
    )
    .bind(row.id)
    .bind(row.service_id)
    .bind(row.plan_id)
    .bind(row.organization_guid)
    .bind(row.space_guid)
    .bind(json_text(row.parameters.as_ref()))
    .bind(json_text(row.context.as_ref()))
    .bind(row.maintenance_version)
    .bind(row.state.as_str())
    .bind(row.operation_id)
    .bind(row.created_ms)
    .bind(row.updated_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    instance_id: &str,
    binding_id: Option<&str>,
    change: Change,
    current: &mut Previous,
) -> Result<()> {
    match change {
        Change::PutInstance(row) => put_instance(tx, row, current).await?,
        Change::InsertOperation(op) => {
            sqlx::query(
                "INSERT INTO operations (id, instance_id, kind, state, description, request, deadline_ms, \
                 lease_owner, lease_until_ms, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(op.id)
            .bind(op.instance_id)
            .bind(op.kind.as_str())
            .bind(op.state.as_str())
            .bind(op.description)
            .bind(op.request.to_text())
            .bind(op.deadline_ms)
            .bind(op.lease_owner)
            .bind(op.lease_until_ms)
            .bind(op.created_ms)
            .bind(op.updated_ms)
            .execute(&mut **tx)
            .await?;
        }
        Change::FailOperation { id, description } => {
            sqlx::query(
                "UPDATE operations SET state = 'failed', description = $1, updated_ms = $2 \
                 WHERE id = $3 AND state = 'in progress'",
            )
            .bind(description)
            .bind(now_ms())
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Change::DeleteBindings => {
            sqlx::query("DELETE FROM bindings WHERE instance_id = $1").bind(instance_id).execute(&mut **tx).await?;
        }
        Change::InsertBinding(b) => {
            sqlx::query(
                "INSERT INTO bindings (instance_id, id, service_id, plan_id, parameters, bind_resource, context, \
                 key_salt, key_sha256, created_ms, predecessor_id, expires_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(b.instance_id)
            .bind(b.id)
            .bind(b.service_id)
            .bind(b.plan_id)
            .bind(json_text(b.parameters.as_ref()))
            .bind(json_text(b.bind_resource.as_ref()))
            .bind(json_text(b.context.as_ref()))
            .bind(b.key_salt)
            .bind(b.key_sha256)
            .bind(b.created_ms)
            .bind(b.predecessor_id)
            .bind(b.expires_ms)
            .execute(&mut **tx)
            .await?;
        }
        Change::DeleteBinding => {
            sqlx::query("DELETE FROM bindings WHERE instance_id = $1 AND id = $2")
                .bind(instance_id)
                .bind(binding_id.unwrap_or_default())
                .execute(&mut **tx)
                .await?;
        }
        Change::Audit(entry) => insert_audit(tx, instance_id, binding_id, entry).await?,
    }
    Ok(())
}
