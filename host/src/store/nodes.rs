//! Replicas and node ownership in the store: which replica runs each `process` instance's node
//! and where the others reach it, with replica heartbeats to tell a dead owner from a live one.
//!
//! A claim is one conditional statement: a node nobody holds goes to the first replica that
//! asks; a node held by a dead replica goes to one other replica only while the holder's
//! heartbeat is still the value that replica watched stand still for a whole lease (liveness
//! is judged by the watcher's own clock, never by comparing clocks of two machines). So of two
//! replicas that race for a dead owner's node, exactly one wins.

use std::collections::HashMap;

use sqlx::Row as _;

use super::changes::begin_change;
use super::rows::json_column;
use super::{Result, Store, now_ms};

/// What [`Store::claim_node`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeClaim {
    /// The replica that asked holds the node.
    Mine,
    /// Another replica holds it.
    Held(String),
    /// The instance is deleted: nobody should run a node for it.
    Gone,
}

/// A node a replica owns, with what it takes to start it.
#[derive(Debug, Clone)]
pub struct OwnedNode {
    /// The instance.
    pub instance_id: String,
    /// Its plan.
    pub plan_id: String,
    /// Its parameters, if given.
    pub parameters: Option<serde_json::Value>,
    /// Whether the instance is ready or updating (its node should run).
    pub serving: bool,
}

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

    /// Takes the node of `instance_id` for replica `me` when nobody holds it. Says who holds it
    /// then (`me`, or another replica), or that the instance is gone.
    pub async fn claim_node(&self, instance_id: &str, me: &str) -> Result<NodeClaim> {
        sqlx::query(
            "INSERT INTO node_owners (instance_id, replica_id, http_url, ws_url, claimed_ms) \
             SELECT $1, $2, NULL, NULL, $3 WHERE EXISTS (SELECT 1 FROM instances WHERE id = $1 AND state <> 'deleted') \
             ON CONFLICT (instance_id) DO NOTHING",
        )
        .bind(instance_id)
        .bind(me)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let holder: Option<String> = sqlx::query("SELECT replica_id FROM node_owners WHERE instance_id = $1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("replica_id"))
            .transpose()?;
        Ok(match holder {
            Some(holder) if holder == me => NodeClaim::Mine,
            Some(holder) => NodeClaim::Held(holder),
            None => NodeClaim::Gone,
        })
    }

    /// Takes the node of `instance_id` from replica `from` for `me`, only while `from` still
    /// holds it, its heartbeat is still `seen` (the value `me` watched stand still for a whole
    /// lease: `from` is dead), and the instance is not deleted. One statement, so of two
    /// replicas that race for it exactly one wins. The node's address is cleared until `me`
    /// records its own.
    pub async fn take_over_node(&self, instance_id: &str, me: &str, from: &str, seen: i64) -> Result<bool> {
        let taken = sqlx::query(
            "UPDATE node_owners SET replica_id = $1, http_url = NULL, ws_url = NULL, claimed_ms = $2 \
             WHERE instance_id = $3 AND replica_id = $4 \
             AND EXISTS (SELECT 1 FROM replicas r WHERE r.id = $4 AND r.heartbeat_ms = $5) \
             AND EXISTS (SELECT 1 FROM instances i WHERE i.id = $3 AND i.state <> 'deleted')",
        )
        .bind(me)
        .bind(now_ms())
        .bind(instance_id)
        .bind(from)
        .bind(seen)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
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
        begin_change(&mut tx, instance_id).await?;
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
    /// replica `owner` holds, with their plan and the node's recorded HTTP URL: what to take
    /// over from a dead replica.
    pub async fn nodes_to_take_over(&self, owner: &str) -> Result<Vec<(String, String, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT n.instance_id, i.plan_id, n.http_url FROM node_owners n JOIN instances i ON i.id = n.instance_id \
             WHERE n.replica_id = $1 AND i.state IN ('ready', 'updating') \
             AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.instance_id = n.instance_id AND o.state = 'in progress')",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("instance_id")?, row.try_get("plan_id")?, row.try_get("http_url")?)))
            .collect()
    }

    /// Every replica's last heartbeat, as it wrote it.
    pub async fn heartbeats(&self) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT id, heartbeat_ms FROM replicas").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("id")?, row.try_get("heartbeat_ms")?))).collect()
    }

    /// The instances whose nodes replica `id` owns, with their plan, parameters and state.
    pub async fn owned_nodes(&self, id: &str) -> Result<Vec<OwnedNode>> {
        let rows = sqlx::query(
            "SELECT i.id, i.plan_id, i.parameters, i.state FROM node_owners n JOIN instances i ON i.id = n.instance_id \
             WHERE n.replica_id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let instance_id: String = row.try_get("id")?;
                Ok(OwnedNode {
                    parameters: json_column(row, "instances", &instance_id, "parameters")?,
                    instance_id,
                    plan_id: row.try_get("plan_id")?,
                    serving: matches!(row.try_get::<String, _>("state")?.as_str(), "ready" | "updating"),
                })
            })
            .collect()
    }
}
