//! # CORS on the JSON-RPC endpoint
//!
//! Owns the CORS answers of the JSON-RPC endpoint (HTTP), so that pages in a browser can call
//! it as they call hosted providers: a preflight (`OPTIONS`) is answered for `POST` with
//! `Content-Type` and `Authorization`, cached by the browser for [`MAX_AGE`]; every answer to a
//! request that carries an `Origin` allows any origin (`*`: the key is in the URL, as with hosted
//! providers, and no cookie is involved). The header values are static: no allocation per call.
//!
//! Must not: apply to the broker or admin listeners (they never route here), or to the validator
//! proxy's paths.

use http::HeaderValue;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
};
use jsonrpsee::server::{HttpBody, HttpResponse};

/// How long a browser may cache a preflight's answer, in seconds (a day).
pub const MAX_AGE: &str = "86400";

/// The answer to a preflight.
pub fn preflight() -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::default());
    *response.status_mut() = http::StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, GET, OPTIONS"));
    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type, authorization"));
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    response
}

/// `response`, allowing the page's origin to read it when the request came from a page.
pub fn allow(mut response: HttpResponse, from_a_page: bool) -> HttpResponse {
    if from_a_page {
        response.headers_mut().insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    response
}
