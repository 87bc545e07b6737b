//! Each instance's dashboard: a small page (its `dashboard_url`) with the instance's state, its
//! plugin chain, and its recent traffic as a chart, refreshed every two seconds.
//!
//! Owns: the page, its JSON feed, and the per-instance token that opens them (an HMAC of the
//! instance id under the broker's secret key, compared in constant time), so the URL can be handed
//! to the instance's users without the broker's credentials. Must not: show credentials or
//! parameters other than the chain, or serve anything for an unknown instance or a wrong token.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::BrokerState;
use crate::store::InstanceState;

#[derive(serde::Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// The dashboard routes (outside the broker's Basic auth: the token is the key).
pub(super) fn router(state: Arc<BrokerState>) -> Router {
    Router::new()
        .route("/dashboard/{instance_id}", get(page))
        .route("/dashboard/{instance_id}/data", get(data))
        .with_state(state)
}

/// The dashboard URL of an instance.
pub fn url(state: &BrokerState, instance_id: &str) -> String {
    let id = path_segment(instance_id);
    format!("{}/dashboard/{id}?token={}", state.config.public_broker_url(), state.secret.dashboard_token(instance_id))
}

/// An instance id as one segment of a URL's path: letters, digits, `-`, `_` and `~` as they are
/// (a GUID reads as itself), every other byte percent-encoded, `.` too (so that an id `..` is not
/// a step up the path).
fn path_segment(instance_id: &str) -> String {
    const KEPT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(instance_id, KEPT).to_string()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "no such dashboard\n").into_response()
}

/// The instance id of a dashboard request whose token opens that instance's dashboard. A wrong
/// or missing token is a 404, as an unknown instance is; a path or query that does not decode is
/// axum's rejection.
struct Authorized(String);

impl FromRequestParts<Arc<BrokerState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<BrokerState>) -> Result<Self, Response> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let Query(query) =
            Query::<TokenQuery>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        if query.token.as_deref().is_some_and(|token| state.secret.check_dashboard_token(&id, token)) {
            Ok(Authorized(id))
        } else {
            Err(not_found())
        }
    }
}

async fn page(Authorized(id): Authorized) -> Response {
    let html = PAGE.replace("{{TITLE}}", &html_escape(&id));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

async fn data(State(state): State<Arc<BrokerState>>, Authorized(id): Authorized) -> Response {
    let instance = match state.store.instance(&id).await {
        Ok(Some(instance)) if instance.state != InstanceState::Deleted => instance,
        Ok(_) => return not_found(),
        Err(err) => return super::ApiError::from(err).into_response(),
    };
    let chain: Vec<serde_json::Value> =
        crate::chain_policy::chain_of(state.config.plan_by_id(&instance.plan_id), instance.parameters.as_ref())
            .iter()
            .map(|e| json!({"name": e.name, "fail_open": e.fail_open}))
            .collect();
    let plan =
        state.catalog.load().plan_by_id(&instance.plan_id).map_or(instance.plan_id.clone(), |p| p.plan.name.clone());
    let traffic = crate::telemetry::metrics().traffic_of(&id);
    let body = json!({
        "instance": instance.id,
        "plan": plan,
        "state": instance.state.as_str(),
        "chain": chain,
        "traffic": traffic.iter().map(|(t, calls, errors)| json!([t, calls, errors])).collect::<Vec<_>>(),
    });
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string())
        .into_response()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ovsb · {{TITLE}}</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 14px 24px; }
  header h1 { margin: 0; font-size: 18px; font-weight: 600; }
  main { padding: 20px 24px; display: grid; gap: 16px; grid-template-columns: 280px 1fr; }
  section { background: #fff; border-radius: 8px; padding: 16px; box-shadow: 0 1px 2px #0002; }
  h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .06em; color: #667; margin: 0 0 10px; }
  .state { font-size: 22px; font-weight: 600; }
  .ready { color: #1a7f37; } .failed { color: #c62828; } .other { color: #9a6700; }
  ol { margin: 0; padding-left: 20px; } li { margin: 4px 0; font-family: ui-monospace, monospace; }
  canvas { width: 100%; height: 260px; }
  .muted { color: #778; font-size: 13px; }
</style></head>
<body>
<header><h1>ovsb · instance <span id="instance">{{TITLE}}</span></h1></header>
<main>
  <div style="display:grid; gap:16px; align-content:start">
    <section><h2>State</h2><div id="state" class="state other">…</div><div class="muted">plan <span id="plan"></span></div></section>
    <section><h2>Plugin chain</h2><ol id="chain"></ol><div id="nochain" class="muted"></div></section>
  </div>
  <section><h2>Calls per second, last 5 minutes</h2><canvas id="chart" width="900" height="260"></canvas>
    <div class="muted"><span id="total">0</span> calls, <span id="errors">0</span> answered with an error</div></section>
</main>
<script>
const feed = location.pathname.replace(/\/$/, '') + '/data' + location.search;
function draw(points) {
  const c = document.getElementById('chart'), g = c.getContext('2d');
  const w = c.width, h = c.height, pad = 28;
  g.clearRect(0, 0, w, h);
  const now = Math.floor(Date.now() / 1000), byT = new Map(points.map(p => [p[0], p]));
  let max = 1;
  for (const p of points) max = Math.max(max, p[1]);
  g.strokeStyle = '#dde'; g.fillStyle = '#778'; g.font = '11px system-ui';
  for (let i = 0; i <= 4; i++) {
    const y = h - pad - (h - 2 * pad) * i / 4;
    g.beginPath(); g.moveTo(pad, y); g.lineTo(w - 4, y); g.stroke();
    g.fillText(String(Math.round(max * i / 4)), 2, y + 4);
  }
  const bw = (w - pad - 4) / 300;
  for (let i = 0; i < 300; i++) {
    const p = byT.get(now - 299 + i); if (!p) continue;
    const x = pad + i * bw, bh = (h - 2 * pad) * p[1] / max, eh = (h - 2 * pad) * p[2] / max;
    g.fillStyle = '#3b82f6'; g.fillRect(x, h - pad - bh, Math.max(bw - 0.5, 1), bh);
    g.fillStyle = '#ef4444'; g.fillRect(x, h - pad - eh, Math.max(bw - 0.5, 1), eh);
  }
}
async function refresh() {
  try {
    const r = await fetch(feed, {cache: 'no-store'}); if (!r.ok) return;
    const d = await r.json();
    const s = document.getElementById('state');
    s.textContent = d.state; s.className = 'state ' + (d.state === 'ready' ? 'ready' : d.state === 'failed' ? 'failed' : 'other');
    document.getElementById('plan').textContent = d.plan;
    const ol = document.getElementById('chain'); ol.replaceChildren();
    for (const p of d.chain) { const li = document.createElement('li'); li.textContent = p.name + (p.fail_open ? ' (fail-open)' : ''); ol.append(li); }
    document.getElementById('nochain').textContent = d.chain.length ? '' : 'no plugins: calls go straight to the node';
    document.getElementById('total').textContent = d.traffic.reduce((a, p) => a + p[1], 0);
    document.getElementById('errors').textContent = d.traffic.reduce((a, p) => a + p[2], 0);
    draw(d.traffic);
    document.body.dataset.loaded = 'true';
  } catch (e) { /* the next refresh retries */ }
}
refresh(); setInterval(refresh, 2000);
</script>
</body></html>
"##;

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn an_instance_id_keeps_its_unreserved_characters_in_the_dashboard_path() {
        assert_eq!(path_segment("6f1c2a3e-6d3b-4a7e_x~y"), "6f1c2a3e-6d3b-4a7e_x~y");
        assert_eq!(path_segment("my-node"), "my-node");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("a/b?c#d e\"é"), "a%2Fb%3Fc%23d%20e%22%C3%A9");
    }
}
