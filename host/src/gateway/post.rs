//! A POST to the endpoint over HTTP: the JSON body read whole within its limit, `[]` answered
//! -32600, a single call answered on the lean path ([`single_call`]), ids jsonrpsee cannot carry
//! answered here entry by entry ([`super::ids`]), and an answer to notifications only turned
//! into HTTP 204. Everything else is jsonrpsee's.
//!
//! The lean path: a body that jsonrpsee would take as one call (a JSON object that parses as its
//! `Request`, so with an id it carries), for a method that is not a subscription's, is parsed
//! once here and given to [`rpc::answer`], the same per-call work jsonrpsee's middleware runs,
//! and its answer is written as jsonrpsee writes it ([`response::from_method_response`]: same
//! status, `Content-Type` and body). Batches, notifications, subscription methods, bodies
//! jsonrpsee would refuse (-32700, -32600) and ids it cannot carry go the other ways, unchanged.
//! Must not: parse a body that jsonrpsee will parse anyway, beyond the id scan.

use jsonrpsee::server::http::response;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use jsonrpsee::types::Request;

use super::body::Timed;
use super::rpc::{self, Caller};
use super::{FrontBody, FrontConnection, errors, ids, json_error};
use crate::budget::REQUEST_BUDGET;

pub(super) async fn call<J>(mut jsonrpc: J, request: HttpRequest<FrontBody>) -> Result<HttpResponse, anyhow::Error>
where
    J: tower::Service<HttpRequest<FrontBody>, Response = HttpResponse>,
    J::Error: std::fmt::Display,
{
    tower::Service::call(&mut jsonrpc, request).await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// An HTTP request to the JSON-RPC endpoint: a JSON body is read whole (jsonrpsee would read
/// it too) and its ids checked ([`ids::scan`]) before jsonrpsee sees it.
pub(super) async fn http_call<J>(
    jsonrpc: J,
    connection: &FrontConnection,
    request: HttpRequest<Timed<hyper::body::Incoming>>,
) -> Result<HttpResponse, anyhow::Error>
where
    J: tower::Service<HttpRequest<FrontBody>, Response = HttpResponse> + Clone,
    J::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    if request.method() != http::Method::POST || !jsonrpsee::server::http::content_type_is_json(&request) {
        return call(jsonrpc, request.map(http_body_util::Either::Left)).await;
    }
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, connection.max_request_bytes as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            let (status, code, message) = if err.is::<http_body_util::LengthLimitError>() {
                let message = format!("the request body is over the limit of {} bytes", connection.max_request_bytes);
                (http::StatusCode::PAYLOAD_TOO_LARGE, errors::OVERSIZE, message)
            } else {
                (http::StatusCode::REQUEST_TIMEOUT, errors::INVALID_REQUEST, err.to_string())
            };
            let mut response = json_error(status, code, &message);
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    if is_empty_batch(&body) {
        return Ok(json_error(http::StatusCode::OK, errors::INVALID_REQUEST, "Invalid request: an empty batch"));
    }
    if connection.lean
        && let Some(mut request) = single_call(&body)
    {
        // The request's extensions (the caller) move to the call, as jsonrpsee clones them there.
        request.extensions = parts.extensions;
        return Ok(response::from_method_response(rpc::answer(&connection.rpc, request).await));
    }
    let response = match ids::scan(&body) {
        Some((entries, batch)) if !batch || entries.len() <= connection.max_batch as usize => {
            // Boxed: the rare path's state would otherwise sit in every call's future.
            Box::pin(answer_each(jsonrpc, connection, &parts, entries, batch)).await
        }
        _ => {
            let request =
                HttpRequest::from_parts(parts, http_body_util::Either::Right(http_body_util::Full::new(body.clone())));
            call(jsonrpc, request).await?
        }
    };
    Ok(no_content_for_notifications(response).await)
}

/// The call in `body` when the lean path answers it: a body jsonrpsee would take as a single
/// call (its first non-blank byte, within the first 128 as jsonrpsee looks, is `{`, and it
/// parses as jsonrpsee's `Request`: a `"jsonrpc":"2.0"`, a method and an id jsonrpsee carries,
/// so [`ids::scan`] would let it pass), for a method other than a subscription's. `None`:
/// jsonrpsee's path.
pub(super) fn single_call(body: &[u8]) -> Option<Request<'_>> {
    let first = body.iter().take(128).find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return None;
    }
    let request: Request<'_> = serde_json::from_slice(body).ok()?;
    let method = request.method.as_ref();
    (!method.ends_with("_subscribe") && !method.ends_with("_unsubscribe")).then_some(request)
}

/// Whether a body is `[]` (with any whitespace): JSON-RPC 2.0 answers it with one -32600 error.
fn is_empty_batch(body: &[u8]) -> bool {
    let mut bytes = body.iter().filter(|b| !b.is_ascii_whitespace());
    bytes.next() == Some(&b'[') && bytes.next() == Some(&b']') && bytes.next().is_none()
}

/// A request of notifications only is answered with nothing: HTTP 204 and no body (jsonrpsee
/// writes `null`, or an empty body). Only a 200 answer of at most four bytes is looked at, so
/// every other answer passes untouched.
async fn no_content_for_notifications(response: HttpResponse) -> HttpResponse {
    use hyper::body::Body as _;
    let small = response.body().size_hint().exact().is_some_and(|n| n <= 4);
    if response.status() != http::StatusCode::OK || !small {
        return response;
    }
    // Boxed: this rare path's state would otherwise sit in every call's future.
    Box::pin(async move {
        use http_body_util::BodyExt as _;
        let (mut parts, body) = response.into_parts();
        let bytes = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
        let text = bytes.trim_ascii();
        if !text.is_empty() && text != b"null" {
            return HttpResponse::from_parts(parts, HttpBody::from(bytes.to_vec()));
        }
        parts.status = http::StatusCode::NO_CONTENT;
        parts.headers.remove(http::header::CONTENT_TYPE);
        parts.headers.remove(http::header::CONTENT_LENGTH);
        HttpResponse::from_parts(parts, HttpBody::empty())
    })
    .await
}

/// The rare path of [`ids`]: each entry of a body that has an id jsonrpsee cannot carry is run
/// on its own (concurrently) and answered here, in order.
async fn answer_each<J>(
    jsonrpc: J,
    connection: &FrontConnection,
    parts: &http::request::Parts,
    entries: Vec<(ids::Entry, &serde_json::value::RawValue)>,
    batch: bool,
) -> HttpResponse
where
    J: tower::Service<HttpRequest<FrontBody>, Response = HttpResponse> + Clone,
    J::Error: std::fmt::Display,
{
    use futures::StreamExt as _;
    let caller = parts.extensions.get::<Caller>();
    let answers = entries.into_iter().map(|(entry, raw)| {
        let (jsonrpc, caller) = (jsonrpc.clone(), caller.cloned());
        async move {
            match entry {
                ids::Entry::Invalid => Some(ids::INVALID_ID_ANSWER.to_string()),
                ids::Entry::Carried => {
                    let answer = run_entry(jsonrpc, parts, caller, raw.get().as_bytes().to_vec()).await?;
                    let text = std::str::from_utf8(&answer).ok()?.trim();
                    (!text.is_empty() && text != "null").then(|| text.to_string())
                }
                ids::Entry::Foreign(id) => {
                    let answer = match ids::with_carried_id(raw) {
                        Some(body) => run_entry(jsonrpc, parts, caller, body).await,
                        None => None,
                    };
                    Some(answer.and_then(|a| ids::with_original_id(&a, &id)).unwrap_or_else(|| {
                        format!(
                            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{},"message":"Internal error"}}}}"#,
                            errors::INTERNAL_ERROR
                        )
                    }))
                }
            }
        }
    });
    // As a batch through jsonrpsee: a bounded number at a time, within one request's budget, cut
    // short once the answers pass the limit.
    let answers: Vec<_> = answers.collect();
    let gather = async {
        let mut running = futures::stream::iter(answers).buffered(connection.batch_concurrency);
        let mut gathered = Vec::new();
        while let Some(answer) = running.next().await {
            if batch && REQUEST_BUDGET.try_with(|budget| budget.is_over()).unwrap_or(false) {
                return None;
            }
            gathered.extend(answer);
        }
        Some(gathered)
    };
    let route = caller.and_then(|caller| connection.routes.lookup_digest(&caller.digest));
    let answers = match route {
        Some(route) => REQUEST_BUDGET.scope(connection.budget.request(&route.instance.budget), gather).await,
        None => gather.await,
    };
    let Some(answers) = answers else {
        let limit = connection.max_response_bytes;
        crate::telemetry::metrics().record_call_refusal("response_bytes");
        let message = format!("the batch response is over the limit of {limit} bytes");
        return json_error(http::StatusCode::OK, errors::OVERSIZED_BATCH_RESPONSE, &message);
    };
    let body = if batch {
        if answers.is_empty() { String::new() } else { format!("[{}]", answers.join(",")) }
    } else {
        answers.into_iter().next().unwrap_or_default()
    };
    if body.len() > connection.max_response_bytes as usize {
        let message = format!("the response is over the limit of {} bytes", connection.max_response_bytes);
        return json_error(http::StatusCode::OK, errors::OVERSIZED_RESPONSE, &message);
    }
    let mut response = HttpResponse::new(HttpBody::from(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// Runs one entry of [`answer_each`] through jsonrpsee as a request of its own; its answer.
async fn run_entry<J>(
    jsonrpc: J,
    parts: &http::request::Parts,
    caller: Option<Caller>,
    body: Vec<u8>,
) -> Option<bytes::Bytes>
where
    J: tower::Service<HttpRequest<FrontBody>, Response = HttpResponse>,
    J::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    let mut request = HttpRequest::new(http_body_util::Either::Right(http_body_util::Full::new(body.into())));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = parts.uri.clone();
    *request.headers_mut() = parts.headers.clone();
    request.headers_mut().remove(http::header::CONTENT_LENGTH);
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    let response = call(jsonrpc, request).await.ok()?;
    response.into_body().collect().await.ok().map(|body| body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lean_path_takes_only_what_jsonrpsee_takes_for_one_call_with_an_id_it_carries() {
        let lean = |body: &str| single_call(body.as_bytes()).map(|r| (r.id.to_string(), r.method.to_string()));
        for id in ["1", "0", "18446744073709551615", r#""abc""#, r#""a\"b""#, "null"] {
            let body = format!(r#"  {{"jsonrpc":"2.0","id":{id},"method":"eth_chainId","params":[]}}"#);
            assert!(lean(&body).is_some(), "{body}");
            assert!(ids::scan(body.as_bytes()).is_none(), "the id scan lets it pass too: {body}");
        }
        for id in ["-1", "1.5", "1e3", "123456789012345678901234567890", "true", "[1]", r#"{"a":1}"#] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#);
            assert_eq!(lean(&body), None, "ids jsonrpsee cannot carry go to the id scan: {body}");
        }
        for body in [
            r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"eth_chainId"}"#,
            r#"{"id":1,"method":"eth_chainId"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId""#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_unsubscribe","params":["0x1"]}"#,
            "not json",
        ] {
            assert_eq!(lean(body), None, "jsonrpsee's: {body}");
        }
        let far = format!("{}{}", " ".repeat(130), r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#);
        assert_eq!(lean(&far), None, "jsonrpsee refuses a body that starts past 128 blanks");
    }
}
