//! Operations in the store once started: progress, the end (finished or failed), leases, the
//! hand-over to the replica that runs an instance's node, and the claim of stale operations.
//!
//! Owns: every write to a running operation, each conditional on the replica that holds it
//! (a replica that lost its claim changes nothing). Must not: decide what an operation's
//! outcome makes of its instance (the runner in `provision` does, and passes the row to write),
//! or start operations (the broker's transitions in `instances` do).

use std::collections::{HashMap, HashSet};

use sqlx::Row as _;

use super::changes::begin_change;
use super::group::{Wrote, job};
use super::instances::{Previous, put_instance};
use super::rows::{
    InstanceRow, InstanceState, OPERATION_COLUMNS, OperationRequest, OperationRow, OperationState, operation_from,
};
use super::{Result, Store, StoreError, now_ms};

/// A running operation a replica has claimed.
pub type Claimed = OperationRow;

impl Store {
    /// An operation.
    pub async fn operation(&self, id: &str) -> Result<Option<OperationRow>> {
        let sql = format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| operation_from(&row)).transpose()
    }

    /// Updates a running operation's progress text, if `owner` still holds it.
    pub async fn set_progress(&self, operation_id: &str, owner: &str, description: &str) -> Result<()> {
        self.update_held_operation(
            "UPDATE operations SET description = $1, updated_ms = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'in progress'",
            operation_id,
            owner,
            description,
        )
        .await?;
        Ok(())
    }

    /// Ends an operation that `owner` holds, and writes the instance's resulting row, in one
    /// transaction (shared with the changes that wait beside it: see `group`). Returns false
    /// (and changes nothing) when `owner` no longer holds it. `request` replaces the
    /// operation's request (the runner drops the sealed secrets it no longer needs).
    pub async fn finish_operation(
        &self,
        operation_id: &str,
        owner: &str,
        state: OperationState,
        description: &str,
        request: &OperationRequest,
        instance: InstanceRow,
    ) -> Result<bool> {
        let (ended, held) = tokio::sync::oneshot::channel();
        let (operation_id, owner) = (operation_id.to_string(), owner.to_string());
        let (description, request) = (description.to_string(), request.to_text());
        let job = job(move |tx| {
            Box::pin(async move {
                begin_change(tx, &instance.id).await?;
                let done = sqlx::query(
                    "UPDATE operations SET state = $1, description = $2, request = $3, updated_ms = $4 \
                     WHERE id = $5 AND lease_owner = $6 AND state = 'in progress'",
                )
                .bind(state.as_str())
                .bind(description)
                .bind(request)
                .bind(now_ms())
                .bind(operation_id)
                .bind(owner)
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() == 0 {
                    let _ = ended.send(false);
                    return Ok(Wrote::Nothing);
                }
                if instance.state == InstanceState::Deleted {
                    // Its node is gone: nobody runs it any more.
                    sqlx::query("DELETE FROM node_owners WHERE instance_id = $1")
                        .bind(&instance.id)
                        .execute(&mut **tx)
                        .await?;
                }
                put_instance(tx, instance, &mut Previous::Unknown).await?;
                let _ = ended.send(true);
                Ok(Wrote::Changes)
            })
        });
        self.grouped(job).await?;
        Ok(held.await.unwrap_or(false))
    }

    /// Ends a running operation that `owner` holds as failed, touching nothing else (an
    /// operation whose instance row is missing).
    pub async fn fail_operation(&self, operation_id: &str, owner: &str, description: &str) -> Result<bool> {
        let failed = self
            .update_held_operation(
                "UPDATE operations SET state = 'failed', description = $1, updated_ms = $2 \
                 WHERE id = $3 AND lease_owner = $4 AND state = 'in progress'",
                operation_id,
                owner,
                description,
            )
            .await?;
        Ok(failed == 1)
    }

    /// Runs `sql`, an update of a running operation that `owner` holds, with its description
    /// ($1), now ($2), the operation's id ($3) and the owner ($4). Returns the rows it changed.
    async fn update_held_operation(
        &self,
        sql: &'static str,
        operation_id: &str,
        owner: &str,
        description: &str,
    ) -> Result<u64> {
        let done = sqlx::query(sql)
            .bind(description)
            .bind(now_ms())
            .bind(operation_id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Hands a running operation that `from` holds to replica `to` (the owner of the
    /// instance's node), with a lapsed lease so that `to` claims it at its next look.
    pub async fn hand_over(&self, operation_id: &str, from: &str, to: &str) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE operations SET lease_owner = $1, lease_until_ms = 0 \
             WHERE id = $2 AND lease_owner = $3 AND state = 'in progress'",
        )
        .bind(to)
        .bind(operation_id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Sets the lease of one operation `owner` holds (0 hands it over at once). False when
    /// `owner` no longer holds it, or it has ended.
    pub async fn renew_leases_of(&self, operation_id: &str, owner: &str, until_ms: i64) -> Result<bool> {
        let renewed = sqlx::query(
            "UPDATE operations SET lease_until_ms = $1 WHERE id = $2 AND lease_owner = $3 AND state = 'in progress'",
        )
        .bind(until_ms)
        .bind(operation_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Claims for `owner` every running operation whose claim has lapsed (or, with
    /// `take_all`, every running operation: for a store only this process can open), except
    /// those in `running` (the operations `owner` is running now) and those of instances whose
    /// node another replica runs that is not in `dead`: theirs to run.
    ///
    /// An operation whose row does not decode is not claimed, at every look: it is logged and
    /// counted as corrupt each time (and every read of it fails), while the others are claimed.
    /// One corrupt row never stops the operations of other instances.
    pub async fn claim_stale(
        &self,
        owner: &str,
        until_ms: i64,
        take_all: bool,
        running: &HashSet<String>,
        dead: &HashMap<String, i64>,
    ) -> Result<Vec<Claimed>> {
        let now = now_ms();
        let horizon = if take_all { i64::MAX } else { now };
        let sql = format!(
            "SELECT {OPERATION_COLUMNS}, (SELECT n.replica_id FROM node_owners n \
             WHERE n.instance_id = operations.instance_id) AS node_owner \
             FROM operations WHERE state = 'in progress' AND lease_until_ms < $1"
        );
        let rows = sqlx::query(&sql).bind(horizon).fetch_all(&self.pool).await?;
        let mut stale = Vec::new();
        for row in &rows {
            let node_owner: Option<String> = row.try_get("node_owner")?;
            let theirs = node_owner.is_some_and(|o| o != owner && !dead.contains_key(&o));
            let op = match operation_from(row) {
                Ok(op) => op,
                // Logged and counted where it was found not to decode.
                Err(StoreError::Corrupt(_)) => continue,
                Err(err) => return Err(err),
            };
            if !theirs && !running.contains(&op.id) {
                stale.push(op);
            }
        }
        let mut claimed = Vec::new();
        for mut op in stale {
            let taken = sqlx::query(
                "UPDATE operations SET lease_owner = $1, lease_until_ms = $2 \
                 WHERE id = $3 AND state = 'in progress' AND lease_owner = $4 AND lease_until_ms = $5",
            )
            .bind(owner)
            .bind(until_ms)
            .bind(&op.id)
            .bind(&op.lease_owner)
            .bind(op.lease_until_ms)
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                op.lease_owner = owner.to_string();
                op.lease_until_ms = until_ms;
                claimed.push(op);
            }
        }
        Ok(claimed)
    }
}
