//! Replicas and node ownership in the store: which replica runs each `process` instance's node
//! and where the others reach it, with replica heartbeats to tell a dead owner from a live one.
//!
//! A claim is one conditional statement: it takes an instance's node for a replica only when
//! nobody holds it, the replica holds it already, or its holder's heartbeat is older than the
//! horizon given (dead). So of two replicas that race for a dead owner's node, exactly one wins.

use std::collections::HashMap;

use sqlx::Row as _;

use super::{Result, Store, log_change, now_ms};

/// Who runs an instance's node, and where other replicas reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOwner {
    /// The owner's replica id.
    pub replica_id: String,
    /// `http://<node_host>:<port>` once the node was started; `None` while it starts.
    pub http_url: Option<String>,
    /// The node's WebSocket URL, for plans whose nodes speak it.
    pub ws_url: Option<String>,
}

fn owner_from(row: &sqlx::any::AnyRow) -> Result<NodeOwner> {
    Ok(NodeOwner {
        replica_id: row.try_get("replica_id")?,
        http_url: row.try_get("http_url")?,
        ws_url: row.try_get("ws_url")?,
    })
}

impl Store {
    /// Records that replica `id` is alive now, reaching its nodes at `node_host`.
    pub async fn heartbeat(&self, id: &str, node_host: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO replicas (id, node_host, heartbeat_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET node_host = excluded.node_host, heartbeat_ms = excluded.heartbeat_ms",
        )
        .bind(id)
        .bind(node_host)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who runs the node of `instance_id`, if anyone.
    pub async fn node_owner(&self, instance_id: &str) -> Result<Option<NodeOwner>> {
        let row = sqlx::query("SELECT replica_id, http_url, ws_url FROM node_owners WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(owner_from).transpose()
    }

    /// Every recorded node owner, by instance (a full route rebuild reads them at once).
    pub async fn node_owners(&self) -> Result<HashMap<String, NodeOwner>> {
        let rows = sqlx::query("SELECT instance_id, replica_id, http_url, ws_url FROM node_owners")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("instance_id")?, owner_from(row)?))).collect()
    }

    /// Takes the node of `instance_id` for replica `me`, unless a live replica (heartbeat at or
    /// after `alive_since`) other than `me` holds it. Returns that replica's id when it does.
    /// A node taken from a dead owner loses its recorded address until `me` records its own.
    pub async fn claim_node(&self, instance_id: &str, me: &str, alive_since: i64) -> Result<Option<String>> {
        sqlx::query(
            "INSERT INTO node_owners (instance_id, replica_id, http_url, ws_url, claimed_ms) \
             VALUES ($1, $2, NULL, NULL, $3) \
             ON CONFLICT (instance_id) DO UPDATE SET replica_id = excluded.replica_id, \
             http_url = NULL, ws_url = NULL, claimed_ms = excluded.claimed_ms \
             WHERE node_owners.replica_id <> excluded.replica_id AND NOT EXISTS \
             (SELECT 1 FROM replicas r WHERE r.id = node_owners.replica_id AND r.heartbeat_ms >= $4)",
        )
        .bind(instance_id)
        .bind(me)
        .bind(now_ms())
        .bind(alive_since)
        .execute(&self.pool)
        .await?;
        let holder: String = sqlx::query("SELECT replica_id FROM node_owners WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("replica_id")?;
        Ok((holder != me).then_some(holder))
    }

    /// Records where other replicas reach the node `me` runs for `instance_id`, and tells them
    /// (a change of the instance in the change log). False when `me` no longer owns it.
    pub async fn set_node_address(
        &self,
        instance_id: &str,
        me: &str,
        http_url: &str,
        ws_url: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE changes SET generation = generation + 1 WHERE id = 1").execute(&mut *tx).await?;
        log_change(&mut tx, instance_id).await?;
        let set =
            sqlx::query("UPDATE node_owners SET http_url = $1, ws_url = $2 WHERE instance_id = $3 AND replica_id = $4")
                .bind(http_url)
                .bind(ws_url)
                .bind(instance_id)
                .bind(me)
                .execute(&mut *tx)
                .await?;
        if set.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The serving instances (ready or updating, no operation of theirs running) whose node
    /// owner is dead (no heartbeat at or after `alive_since`), with their plan: nodes to take
    /// over.
    pub async fn orphaned_nodes(&self, alive_since: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT n.instance_id, i.plan_id FROM node_owners n JOIN instances i ON i.id = n.instance_id \
             WHERE i.state IN ('ready', 'updating') AND NOT EXISTS \
             (SELECT 1 FROM replicas r WHERE r.id = n.replica_id AND r.heartbeat_ms >= $1) \
             AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.instance_id = n.instance_id AND o.state = 'in progress')",
        )
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("instance_id")?, row.try_get("plan_id")?))).collect()
    }

    /// The replicas alive now (a heartbeat at or after `alive_since`).
    pub async fn live_replicas(&self, alive_since: i64) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT id FROM replicas WHERE heartbeat_ms >= $1")
            .bind(alive_since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
    }

    /// The instances whose nodes replica `id` owns.
    pub async fn nodes_of(&self, id: &str) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT instance_id FROM node_owners WHERE replica_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("instance_id")?)).collect()
    }
}
