//! The `upstream` driver: instances of a plan share a configured pool of existing nodes.
//!
//! Provisioning attaches the instance to the plan's pool once a node answers `eth_chainId`, so
//! `last_operation` reports `succeeded` only when calls can be served. Deprovisioning has
//! nothing to remove. Health checks of the pool arrive with the drivers issue.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::{Driver, DriverError, InstanceSpec, Progress};
use crate::gateway::{UpstreamPool, UpstreamSettings};
use crate::plugins::Call;

/// A shared pool of nodes.
pub struct UpstreamDriver {
    pool: Arc<UpstreamPool>,
    urls: String,
}

impl UpstreamDriver {
    /// A driver over these node URLs (validated by the configuration).
    pub fn new(http: &[String], ws: &[String], deadline: Duration, max_response_bytes: usize) -> Self {
        let settings = UpstreamSettings {
            http: http.iter().filter_map(|u| u.parse().ok()).collect(),
            ws: ws.to_vec(),
            deadline,
            max_response_bytes,
        };
        UpstreamDriver { pool: Arc::new(UpstreamPool::new(settings)), urls: http.join(", ") }
    }

    async fn wait_until_serving(&self, progress: &Progress) -> Result<(), DriverError> {
        let probe = Call { method: "eth_chainId".into(), params: None };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.pool.send(&probe).await {
                Ok(_) => return Ok(()),
                Err(err) => {
                    progress
                        .report(&format!(
                            "waiting for a node of {} to answer (attempt {attempt}: {})",
                            self.urls, err.message
                        ))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Driver for UpstreamDriver {
    fn provision<'a>(&'a self, _: &'a InstanceSpec, progress: &'a Progress) -> BoxFuture<'a, Result<(), DriverError>> {
        self.wait_until_serving(progress).boxed()
    }

    fn update<'a>(
        &'a self,
        _: &'a InstanceSpec,
        _: &'a InstanceSpec,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        self.wait_until_serving(progress).boxed()
    }

    fn deprovision<'a>(&'a self, _: &'a InstanceSpec, _: &'a Progress) -> BoxFuture<'a, Result<(), DriverError>> {
        async { Ok(()) }.boxed()
    }

    fn upstream(&self, _: &str) -> Arc<UpstreamPool> {
        self.pool.clone()
    }
}
