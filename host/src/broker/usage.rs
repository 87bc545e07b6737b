//! The usage API: `GET /ovsb/v1/usage` on the broker listener, with the broker's Basic
//! credentials (ovsb's own operator API beside `/ovsb/v1/slashing-protection/…`, not OSB).
//!
//! Query parameters, all optional: `instance_id`, `binding_id`, `from` and `to` (UTC, as
//! `2026-12-07` or `2026-12-07T21:30:00Z`; `from` included, `to` excluded, whole minutes),
//! `by` (`day`, `hour` or `method`; absent: one row per binding) and `format` (`json` or `csv`;
//! `Accept: text/csv` also asks for CSV). Any other parameter, or a value that does not parse,
//! is a 400 naming the parameter. The figures are summed over every replica; this replica's
//! meters are flushed first, so its own calls are in the answer at once (another replica's
//! within its flush interval).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{ApiError, BrokerState};
use crate::store::{UsageGrouping, UsageQuery, UsageReportRow};
use crate::usage::{civil_from_days, days_from_civil};

/// Most rows one answer holds; a query that would give more is a 400 asking to narrow it.
pub const MAX_ROWS: usize = 50_000;

/// The names of the outcome classes, in the order of the counts.
const OUTCOMES: [&str; 7] = crate::call::OUTCOME_CLASSES;

/// The usage route.
pub(super) fn router(state: Arc<BrokerState>) -> Router {
    Router::new().route("/ovsb/v1/usage", get(usage)).with_state(state)
}

async fn usage(
    State(state): State<Arc<BrokerState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    match answer(&state, &headers, &params).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// A parsed request.
#[derive(Debug)]
struct Request {
    query: UsageQuery,
    csv: bool,
}

fn parse(params: &HashMap<String, String>, headers: &HeaderMap) -> Result<Request, ApiError> {
    const KNOWN: [&str; 6] = ["instance_id", "binding_id", "from", "to", "by", "format"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {unknown:?}: the usage API takes {}",
            KNOWN.join(", ")
        )));
    }
    let id = |name: &str| -> Result<Option<String>, ApiError> {
        match params.get(name) {
            Some(v) if v.is_empty() || v.len() > super::MAX_ID_BYTES => {
                Err(ApiError::bad_request(format!("{name} must be 1 to {} bytes", super::MAX_ID_BYTES)))
            }
            other => Ok(other.cloned()),
        }
    };
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        params
            .get(name)
            .map(|v| {
                parse_time(v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name} {v:?} is not a UTC time: give 2026-12-07 or 2026-12-07T21:30:00Z"
                    ))
                })
            })
            .transpose()
    };
    let from_ms = time("from")?.unwrap_or(0);
    let to_ms = time("to")?.unwrap_or(i64::MAX / 2);
    if to_ms <= from_ms {
        return Err(ApiError::bad_request("to must be later than from"));
    }
    let by = match params.get("by").map(String::as_str) {
        None => UsageGrouping::Binding,
        Some("day") => UsageGrouping::Day,
        Some("hour") => UsageGrouping::Hour,
        Some("method") => UsageGrouping::Method,
        Some(other) => return Err(ApiError::bad_request(format!("by {other:?} must be day, hour or method"))),
    };
    let accepts_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with("text/csv")));
    let csv = match params.get("format").map(String::as_str) {
        None => accepts_csv,
        Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::bad_request(format!("format {other:?} must be json or csv"))),
    };
    Ok(Request {
        query: UsageQuery {
            instance_id: id("instance_id")?,
            binding_id: id("binding_id")?,
            from_minute: from_ms.div_euclid(60_000),
            // Whole minutes: a minute that starts before `to` is in.
            to_minute: to_ms.div_euclid(60_000) + i64::from(to_ms.rem_euclid(60_000) != 0),
            by,
            max_rows: MAX_ROWS + 1,
        },
        csv,
    })
}

async fn answer(
    state: &BrokerState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    if !state.auth.accepts(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
        return Err(ApiError::unauthorized());
    }
    let request = parse(params, headers)?;
    if let Err(err) = state.usage.flush(&state.store).await {
        tracing::warn!("usage: cannot flush before a report (the report lacks this replica's latest calls): {err}");
    }
    let rows = state.store.usage_report(&request.query).await?;
    if rows.len() > MAX_ROWS {
        return Err(ApiError::bad_request(format!(
            "the answer would hold more than {MAX_ROWS} rows: narrow from and to, or name instance_id"
        )));
    }
    let by = request.query.by;
    if request.csv {
        let body = to_csv(&rows, by);
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response());
    }
    let rows: Vec<serde_json::Value> = rows.iter().map(|row| to_json(row, by)).collect();
    let body = json!({ "rows": rows });
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response())
}

/// The name of the grouping column (`None` by binding).
fn group_column(by: UsageGrouping) -> Option<&'static str> {
    match by {
        UsageGrouping::Binding => None,
        UsageGrouping::Day => Some("day"),
        UsageGrouping::Hour => Some("hour"),
        UsageGrouping::Method => Some("method"),
    }
}

/// The value of a row's grouping column.
fn group_value(row: &UsageReportRow, by: UsageGrouping) -> Option<String> {
    let date = |minute: i64| {
        let (y, m, d) = civil_from_days(minute.div_euclid(1440));
        format!("{y:04}-{m:02}-{d:02}")
    };
    match by {
        UsageGrouping::Binding => None,
        UsageGrouping::Day => row.bucket_minute.map(date),
        UsageGrouping::Hour => row.bucket_minute.map(|m| format!("{}T{:02}:00:00Z", date(m), m.rem_euclid(1440) / 60)),
        UsageGrouping::Method => row.method.clone(),
    }
}

fn to_json(row: &UsageReportRow, by: UsageGrouping) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    object.insert("instance_id".into(), row.instance_id.clone().into());
    object.insert("binding_id".into(), row.binding_id.clone().into());
    if let (Some(column), Some(value)) = (group_column(by), group_value(row, by)) {
        object.insert(column.into(), value.into());
    }
    object.insert("calls".into(), row.counts.calls.into());
    object.insert("compute_units".into(), row.counts.compute_units.into());
    object.insert("bytes_out".into(), row.counts.bytes_out.into());
    for (name, n) in OUTCOMES.iter().zip(row.counts.outcomes) {
        object.insert((*name).into(), n.into());
    }
    serde_json::Value::Object(object)
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

fn to_csv(rows: &[UsageReportRow], by: UsageGrouping) -> String {
    let mut out = String::from("instance_id,binding_id");
    if let Some(column) = group_column(by) {
        out.push(',');
        out.push_str(column);
    }
    out.push_str(",calls,compute_units,bytes_out");
    for name in OUTCOMES {
        out.push(',');
        out.push_str(name);
    }
    out.push_str("\r\n");
    for row in rows {
        out.push_str(&field(&row.instance_id));
        out.push(',');
        out.push_str(&field(&row.binding_id));
        if let Some(value) = group_value(row, by) {
            out.push(',');
            out.push_str(&field(&value));
        }
        let c = &row.counts;
        let _ = write!(out, ",{},{},{}", c.calls, c.compute_units, c.bytes_out);
        for n in c.outcomes {
            let _ = write!(out, ",{n}");
        }
        out.push_str("\r\n");
    }
    out
}

/// Milliseconds since the Unix epoch of `2026-12-07` or `2026-12-07T21:30:00Z` (seconds and
/// their fraction optional, `Z` or `+00:00`).
fn parse_time(text: &str) -> Option<i64> {
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    let mut ms = days * 86_400_000;
    if let Some(time) = time {
        let time = time.strip_suffix('Z').or_else(|| time.strip_suffix("+00:00"))?;
        let mut parts = time.splitn(3, ':');
        let hours: i64 = parts.next()?.parse().ok()?;
        let minutes: i64 = parts.next()?.parse().ok()?;
        let seconds: f64 = parts.next().map_or(Some(0.0), |s| s.parse().ok())?;
        if !(0..24).contains(&hours) || !(0..60).contains(&minutes) || !(0.0..60.0).contains(&seconds) {
            return None;
        }
        ms += hours * 3_600_000 + minutes * 60_000 + (seconds * 1000.0) as i64;
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn times_parse_as_utc_and_bad_ones_do_not() {
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(60_000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5+00:00"), Some(1_500));
        for bad in ["", "2026-02-30", "2026-13-01", "yesterday", "2026-01-01T25:00:00Z", "2026-01-01T10:00:00"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_parameters_are_named_in_the_400() {
        let headers = HeaderMap::new();
        for (pairs, named) in [
            (&[("by", "week")][..], "by"),
            (&[("from", "yesterday")][..], "from"),
            (&[("to", "x")][..], "to"),
            (&[("format", "xml")][..], "format"),
            (&[("instanceid", "a")][..], "instanceid"),
            (&[("from", "2026-01-02"), ("to", "2026-01-01")][..], "to"),
            (&[("binding_id", "")][..], "binding_id"),
        ] {
            let err = parse(&params(pairs), &headers).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.description.contains(named), "{pairs:?}: {}", err.description);
        }
        let mut csv = HeaderMap::new();
        csv.insert(header::ACCEPT, "text/csv".parse().unwrap());
        assert!(parse(&params(&[]), &csv).unwrap().csv);
        assert!(!parse(&params(&[("format", "json")]), &csv).unwrap().csv);
        let request = parse(&params(&[("from", "1970-01-01T00:01:30Z"), ("to", "1970-01-01T00:03:00Z")]), &headers);
        let query = request.unwrap().query;
        assert_eq!((query.from_minute, query.to_minute), (1, 3));
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let row = UsageReportRow {
            instance_id: "i,1".into(),
            binding_id: "b\"2".into(),
            bucket_minute: None,
            method: Some("eth_call".into()),
            counts: crate::store::UsageCounts {
                calls: 2,
                compute_units: 52,
                bytes_out: 9,
                outcomes: [2, 0, 0, 0, 0, 0, 0],
            },
        };
        let csv = to_csv(&[row], UsageGrouping::Method);
        assert_eq!(
            csv,
            "instance_id,binding_id,method,calls,compute_units,bytes_out,ok,error,refused,limit,plugin_failure,\
             upstream_error,internal\r\n\"i,1\",\"b\"\"2\",eth_call,2,52,9,2,0,0,0,0,0,0\r\n"
        );
    }
}
