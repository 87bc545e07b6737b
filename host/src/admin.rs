//! The admin listener (`admin.listen`, `OVSB_ADMIN_LISTEN`): liveness and readiness for
//! orchestrators and load balancers.
//!
//! Owns: `/healthz` (the process answers) and `/readyz` (the store answers and the routes have
//! been loaded from it, so the gateway serves every instance). Must not: expose anything a
//! platform or dApp could use; it carries no credentials and listens on loopback by default.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::routing::RouteSync;
use crate::store::Store;

/// What readiness depends on.
pub struct AdminState {
    /// The store.
    pub store: Store,
    /// The route synchronizer.
    pub routing: Arc<RouteSync>,
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(ready)).with_state(state)
}

async fn ready(State(state): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    if !state.routing.loaded() {
        return (StatusCode::SERVICE_UNAVAILABLE, "routes not loaded yet\n");
    }
    match state.store.generation().await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(err) => {
            tracing::warn!("readiness: the store does not answer: {err}");
            (StatusCode::SERVICE_UNAVAILABLE, "the store does not answer\n")
        }
    }
}
