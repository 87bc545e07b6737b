//! The change feed and the audit trail.
//!
//! Owns: the single `changes` row whose generation every state change bumps (first, in its own
//! transaction: see the store's module docs), the `route_changes` log that names the instance
//! each generation touched (how other replicas learn which routes to rebuild), its pruning,
//! and the `audit` rows written with a change. Must not: decide anything; it records what the
//! transitions in `instances` and `operations` apply.

use sqlx::Row as _;

use super::rows::AuditEntry;
use super::{Result, Store, now_ms, random_id};

/// Starts a change of instance `instance_id` in `tx`: bumps the generation (taking the lock
/// that serializes writers) and logs which instance the new generation touched.
pub(super) async fn begin_change(tx: &mut sqlx::Transaction<'_, sqlx::Any>, instance_id: &str) -> Result<()> {
    sqlx::query("UPDATE changes SET generation = generation + 1 WHERE id = 1").execute(&mut **tx).await?;
    log_change(tx, instance_id).await
}

/// Records, in the transaction that bumped the generation, which instance the change touched.
async fn log_change(tx: &mut sqlx::Transaction<'_, sqlx::Any>, instance_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO route_changes (generation, instance_id) SELECT generation, $1 FROM changes WHERE id = 1")
        .bind(instance_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Writes an audit record of a change of instance `instance_id` (and binding `binding_id`).
pub(super) async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    instance_id: &str,
    binding_id: Option<&str>,
    entry: AuditEntry,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (id, at_ms, action, instance_id, binding_id, request_identity, platform, identity) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(random_id())
    .bind(now_ms())
    .bind(entry.action)
    .bind(instance_id)
    .bind(entry.binding_id.or(binding_id.map(str::to_string)))
    .bind(entry.request_identity)
    .bind(entry.platform)
    .bind(entry.identity)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// The change counter (see the module docs).
    pub async fn generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT generation FROM changes WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(row.try_get("generation")?)
    }

    /// The instances changed after generation `since`, and the generation they bring the
    /// reader to; `None` when the change log no longer reaches back to `since` (pruned).
    ///
    /// The current generation is read first: every change up to it has committed together
    /// with its log row (one transaction each, serialized by the `changes` row), so the log is
    /// then read only up to it. Reading the log first would race a writer that commits between
    /// the two statements, and take a gap that is not there for a pruned log.
    pub async fn changes_since(&self, since: i64) -> Result<Option<(i64, Vec<String>)>> {
        let current = self.generation().await?;
        if current == since {
            return Ok(Some((since, Vec::new())));
        }
        if current < since {
            // The store went back in time (restored from a backup): reload.
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT generation, instance_id FROM route_changes WHERE generation > $1 AND generation <= $2 \
             ORDER BY generation LIMIT 10000",
        )
        .bind(since)
        .bind(current)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut last = since;
        for row in &rows {
            let generation: i64 = row.try_get("generation")?;
            if generation != last + 1 {
                // Pruned past `since`, or a change that was not logged (a replica of an older
                // version): reload.
                return Ok(None);
            }
            last = generation;
            ids.push(row.try_get("instance_id")?);
        }
        // Nothing logged after `since` although the generation moved: pruned.
        Ok((last > since).then_some((last, ids)))
    }

    /// Drops the change log's rows more than `keep` generations old.
    pub async fn prune_changes(&self, keep: i64) -> Result<()> {
        sqlx::query("DELETE FROM route_changes WHERE generation < (SELECT generation FROM changes WHERE id = 1) - $1")
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Audit records of an instance, oldest first.
    pub async fn audit(&self, instance_id: &str) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT action, binding_id, request_identity, platform, identity FROM audit \
             WHERE instance_id = $1 ORDER BY at_ms, id",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    action: row.try_get("action")?,
                    binding_id: row.try_get("binding_id")?,
                    request_identity: row.try_get("request_identity")?,
                    platform: row.try_get("platform")?,
                    identity: row.try_get("identity")?,
                })
            })
            .collect()
    }
}
