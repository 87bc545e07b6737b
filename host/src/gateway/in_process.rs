//! A single call without a socket: the work the lean path of [`super::post`] does between the
//! body it read and the answer it writes (parsing, the caller's route and allowlist, then
//! [`super::rpc::answer`]), for benches of the in-process cost of one call
//! (`host/benches/call_path.rs`). Owns nothing of its own.

use std::sync::Arc;

use jsonrpsee::server::http::response;

use super::rpc::{self, Caller, RpcState};
use super::{GatewayConfig, Routes, key_digest};
use crate::budget::GatewayBudget;

/// A gateway's per-call work, called directly.
pub struct InProcess {
    state: Arc<RpcState>,
}

impl InProcess {
    /// The per-call work of a gateway with `config` over `routes`.
    pub fn new(routes: Arc<Routes>, config: &GatewayConfig) -> InProcess {
        let budget = GatewayBudget::new(config.budget_limits(1024));
        InProcess { state: RpcState::new(routes, config, budget, tokio_util::task::TaskTracker::new()) }
    }

    /// The answer to `body` sent with `key`, as the lean path writes it; `None` when the key
    /// opens no route or the lean path would leave the body to jsonrpsee.
    pub async fn call(&self, key: &str, body: &[u8]) -> Option<String> {
        let digest = key_digest(key);
        let allowlist = self.state.routes.lookup_allowlist(&digest)?;
        let mut request = super::post::single_call(body)?;
        request.extensions.insert(Caller { digest, websocket: false, allowlist, watch: None, quota: None });
        let answer = response::from_method_response(rpc::answer(&self.state, request).await);
        let body = http_body_util::BodyExt::collect(answer.into_body()).await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    }
}
