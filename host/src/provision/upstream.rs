//! The `upstream` driver: instances of a plan share a configured pool of existing nodes.
//!
//! Provisioning attaches the instance to the plan's pool once a node answers `eth_chainId`, so
//! `last_operation` reports `succeeded` only when calls can be served. Deprovisioning has
//! nothing to remove. A background task checks every node (`eth_blockNumber`, `eth_syncing`)
//! and takes out of rotation the ones that fail, are syncing, or lag more than
//! `max_lag_blocks` behind the best; the gateway only routes to the others.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;

use super::{Driver, DriverError, DriverFuture, InstanceSpec, Progress};
use crate::config::UpstreamDriverDecl;
use crate::plugins::Call;
use crate::upstream::{UpstreamPool, UpstreamSettings};

/// A shared pool of nodes.
pub struct UpstreamDriver {
    pool: Arc<UpstreamPool>,
    decl: UpstreamDriverDecl,
}

impl UpstreamDriver {
    /// A driver over these node URLs (validated by the configuration).
    pub fn new(decl: &UpstreamDriverDecl, deadline: Duration, max_response_bytes: usize) -> Self {
        let settings = UpstreamSettings {
            http: decl.http.iter().filter_map(|u| u.parse().ok()).collect(),
            ws: decl.ws.clone(),
            deadline,
            max_response_bytes,
            max_sockets_per_node: decl.max_sockets_per_node as usize,
        };
        UpstreamDriver { pool: Arc::new(UpstreamPool::new(settings)), decl: decl.clone() }
    }

    async fn wait_until_serving(&self, progress: &Progress) -> Result<(), DriverError> {
        let probe = Call { method: "eth_chainId".into(), params: None };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.pool.send(&probe).await {
                Ok(_) => return Ok(()),
                Err(err) => {
                    let urls = self.decl.http.join(", ");
                    progress
                        .report(&format!("waiting for a node of {urls} to answer (attempt {attempt}: {})", err.message))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Checks the nodes every `health_interval_ms` until `shutdown`.
    pub async fn check_health(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.decl.health_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.check_once().await;
        }
    }

    /// One round of health checks.
    pub async fn check_once(&self) {
        let pool = &self.pool;
        let checks = (0..pool.len()).map(|index| async move { (index, head_of(pool, index).await) });
        let results = futures::future::join_all(checks).await;
        let best = results.iter().filter_map(|(_, r)| r.as_ref().ok().copied().flatten()).max();
        for (index, result) in results {
            let verdict = match (result, best) {
                // ovsb could not check (out of descriptors): not the node's failure.
                (Ok(None), _) => continue,
                (Err(reason), _) => Err(reason),
                (Ok(Some(head)), Some(best)) if best.saturating_sub(head) > self.decl.max_lag_blocks => {
                    Err(format!("lagging: block {head}, the best node is at {best}"))
                }
                (Ok(_), _) => Ok(()),
            };
            let was = pool.set_healthy(index, verdict.is_ok());
            match verdict {
                Err(reason) if was => tracing::warn!(node = %pool.url(index), "node out of rotation: {reason}"),
                Ok(()) if !was => tracing::info!(node = %pool.url(index), "node back in rotation"),
                _ => {}
            }
        }
    }
}

/// The node's head block, or why it is not usable; `None` when ovsb itself could not check (a
/// budget of its own refused the probe, such as the process being out of descriptors).
async fn head_of(pool: &UpstreamPool, index: usize) -> Result<Option<u64>, String> {
    let block = match pool.probe(index, &Call { method: "eth_blockNumber".into(), params: None }).await {
        Ok(block) => block,
        Err(e) if e.code == crate::budget::LIMIT_EXCEEDED => return Ok(None),
        Err(e) => return Err(format!("eth_blockNumber failed: {}", e.message)),
    };
    let head = block
        .trim_matches('"')
        .strip_prefix("0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| format!("eth_blockNumber answered {block}"))?;
    let syncing = match pool.probe(index, &Call { method: "eth_syncing".into(), params: None }).await {
        Ok(syncing) => syncing,
        Err(e) if e.code == crate::budget::LIMIT_EXCEEDED => return Ok(None),
        Err(e) => return Err(format!("eth_syncing failed: {}", e.message)),
    };
    if syncing.trim() != "false" {
        return Err("syncing".into());
    }
    Ok(Some(head))
}

impl Driver for UpstreamDriver {
    fn provision<'a>(&'a self, _: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        self.wait_until_serving(progress).boxed()
    }

    fn update<'a>(&'a self, _: &'a InstanceSpec, _: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        self.wait_until_serving(progress).boxed()
    }

    fn deprovision<'a>(&'a self, _: &'a InstanceSpec, _: &'a Progress) -> DriverFuture<'a> {
        async { Ok(()) }.boxed()
    }

    fn upstream(&self, _: &str) -> Option<Arc<UpstreamPool>> {
        Some(self.pool.clone())
    }
}
