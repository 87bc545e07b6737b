//! Usage in the store: per replica, binding, method and minute (`usage_minutes`).
//!
//! A replica only adds to its own rows (keyed by its id), so replicas never write the same row;
//! every read sums over replicas. Writes come in bounded batches, one statement each.

use sqlx::Row as _;

use super::{Result, Store};

/// What was metered for one key (a binding's method in a minute, or a report's row): calls,
/// compute units, answer bytes, and calls by outcome class (in the order of
/// `call::OUTCOME_CLASSES`: ok, error, refused, limit, plugin_failure, upstream_error, internal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Calls.
    pub calls: u64,
    /// Compute units.
    pub compute_units: u64,
    /// Bytes of the answers.
    pub bytes_out: u64,
    /// Calls by outcome class.
    pub outcomes: [u64; 7],
}

impl UsageCounts {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &UsageCounts) {
        self.calls += other.calls;
        self.compute_units += other.compute_units;
        self.bytes_out += other.bytes_out;
        for (mine, theirs) in self.outcomes.iter_mut().zip(other.outcomes) {
            *mine += theirs;
        }
    }
}

/// One binding's usage of one method in one minute, as one replica metered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The instance.
    pub instance_id: String,
    /// The binding.
    pub binding_id: String,
    /// Minutes since the Unix epoch.
    pub minute: i64,
    /// The method (or `(other)`, see the usage module).
    pub method: String,
    /// What was metered.
    pub counts: UsageCounts,
}

/// How a report groups usage (besides instance and binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGrouping {
    /// One row per binding.
    Binding,
    /// Per UTC day.
    Day,
    /// Per UTC hour.
    Hour,
    /// Per method.
    Method,
}

/// Which usage a report covers.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// Only this instance's.
    pub instance_id: Option<String>,
    /// Only this binding's.
    pub binding_id: Option<String>,
    /// From this minute (included).
    pub from_minute: i64,
    /// To this minute (excluded).
    pub to_minute: i64,
    /// The grouping.
    pub by: UsageGrouping,
    /// At most this many rows are read.
    pub max_rows: usize,
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReportRow {
    /// The instance.
    pub instance_id: String,
    /// The binding.
    pub binding_id: String,
    /// The first minute of the row's day or hour (by day or hour).
    pub bucket_minute: Option<i64>,
    /// The method (by method).
    pub method: Option<String>,
    /// The sums.
    pub counts: UsageCounts,
}

/// What [`Store::instance_usage_top`] ranks one instance's usage by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageTop {
    /// Its bindings.
    Binding,
    /// Its methods.
    Method,
}

const COLUMNS: &str = "calls, compute_units, bytes_out, n_ok, n_error, n_refused, n_limit, n_plugin_failure, \
                       n_upstream_error, n_internal";
const SUMS: &str = "CAST(SUM(calls) AS BIGINT) AS calls, CAST(SUM(compute_units) AS BIGINT) AS compute_units, \
    CAST(SUM(bytes_out) AS BIGINT) AS bytes_out, CAST(SUM(n_ok) AS BIGINT) AS n_ok, \
    CAST(SUM(n_error) AS BIGINT) AS n_error, CAST(SUM(n_refused) AS BIGINT) AS n_refused, \
    CAST(SUM(n_limit) AS BIGINT) AS n_limit, CAST(SUM(n_plugin_failure) AS BIGINT) AS n_plugin_failure, \
    CAST(SUM(n_upstream_error) AS BIGINT) AS n_upstream_error, CAST(SUM(n_internal) AS BIGINT) AS n_internal";
const OUTCOME_COLUMNS: [&str; 7] =
    ["n_ok", "n_error", "n_refused", "n_limit", "n_plugin_failure", "n_upstream_error", "n_internal"];

fn counts_of(row: &sqlx::any::AnyRow) -> Result<UsageCounts> {
    let get = |name: &str| -> Result<u64> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    let mut outcomes = [0u64; 7];
    for (slot, column) in outcomes.iter_mut().zip(OUTCOME_COLUMNS) {
        *slot = get(column)?;
    }
    Ok(UsageCounts {
        calls: get("calls")?,
        compute_units: get("compute_units")?,
        bytes_out: get("bytes_out")?,
        outcomes,
    })
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Adds `rows` to replica `replica_id`'s usage, in one statement (callers bound the batch).
    /// `rows` must not repeat a (instance, binding, minute, method).
    pub async fn add_usage(&self, replica_id: &str, rows: &[UsageRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        const PER_ROW: usize = 15;
        let mut sql = format!(
            "INSERT INTO usage_minutes (replica_id, instance_id, binding_id, minute, method, {COLUMNS}) VALUES "
        );
        for i in 0..rows.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let base = i * PER_ROW;
            let params: Vec<String> = (1..=PER_ROW).map(|k| format!("${}", base + k)).collect();
            sql.push('(');
            sql.push_str(&params.join(", "));
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (replica_id, instance_id, binding_id, minute, method) DO UPDATE SET ");
        let updates: Vec<String> =
            COLUMNS.split(", ").map(str::trim).map(|c| format!("{c} = usage_minutes.{c} + excluded.{c}")).collect();
        sql.push_str(&updates.join(", "));
        let mut query = sqlx::query(&sql);
        for row in rows {
            let c = &row.counts;
            query = query
                .bind(replica_id)
                .bind(row.instance_id.as_str())
                .bind(row.binding_id.as_str())
                .bind(row.minute)
                .bind(row.method.as_str())
                .bind(signed(c.calls))
                .bind(signed(c.compute_units))
                .bind(signed(c.bytes_out));
            for n in c.outcomes {
                query = query.bind(signed(n));
            }
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Usage summed over replicas, grouped as `query` asks, ordered by instance, binding and
    /// group; at most `query.max_rows` rows.
    pub async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageReportRow>> {
        let key = match query.by {
            UsageGrouping::Binding => "",
            UsageGrouping::Day => ", (minute / 1440) * 1440 AS bucket",
            UsageGrouping::Hour => ", (minute / 60) * 60 AS bucket",
            UsageGrouping::Method => ", method AS bucket",
        };
        let group = if key.is_empty() { "" } else { ", bucket" };
        let mut filter = String::from("minute >= $1 AND minute < $2");
        let mut n = 2;
        for (value, column) in [(&query.instance_id, "instance_id"), (&query.binding_id, "binding_id")] {
            if value.is_some() {
                n += 1;
                filter.push_str(&format!(" AND {column} = ${n}"));
            }
        }
        let sql = format!(
            "SELECT instance_id, binding_id{key}, {SUMS} FROM usage_minutes WHERE {filter} \
             GROUP BY instance_id, binding_id{group} ORDER BY instance_id, binding_id{group} LIMIT {}",
            query.max_rows
        );
        let mut q = sqlx::query(&sql).bind(query.from_minute).bind(query.to_minute);
        for value in [&query.instance_id, &query.binding_id].into_iter().flatten() {
            q = q.bind(value.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let (bucket_minute, method) = match query.by {
                    UsageGrouping::Binding => (None, None),
                    UsageGrouping::Day | UsageGrouping::Hour => (Some(row.try_get::<i64, _>("bucket")?), None),
                    UsageGrouping::Method => (None, Some(row.try_get::<String, _>("bucket")?)),
                };
                Ok(UsageReportRow {
                    instance_id: row.try_get("instance_id")?,
                    binding_id: row.try_get("binding_id")?,
                    bucket_minute,
                    method,
                    counts: counts_of(row)?,
                })
            })
            .collect()
    }

    /// One instance's usage from `from_minute` (included) to `to_minute` (excluded), summed over
    /// replicas, bindings and methods per bucket of `bucket_minutes` minutes (keyed by the
    /// bucket's first minute), oldest first; at most `max_rows` buckets.
    pub async fn instance_usage_series(
        &self,
        instance_id: &str,
        from_minute: i64,
        to_minute: i64,
        bucket_minutes: i64,
        max_rows: usize,
    ) -> Result<Vec<(i64, UsageCounts)>> {
        let bucket = bucket_minutes.max(1);
        let sql = format!(
            "SELECT (minute / {bucket}) * {bucket} AS bucket, {SUMS} FROM usage_minutes \
             WHERE instance_id = $1 AND minute >= $2 AND minute < $3 GROUP BY bucket ORDER BY bucket LIMIT {max_rows}"
        );
        let rows = sqlx::query(&sql).bind(instance_id).bind(from_minute).bind(to_minute).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get::<i64, _>("bucket")?, counts_of(row)?))).collect()
    }

    /// The `max_rows` bindings or methods of one instance with the most calls from
    /// `from_minute` (included) to `to_minute` (excluded), summed over replicas, most calls
    /// first (ties by name).
    pub async fn instance_usage_top(
        &self,
        instance_id: &str,
        from_minute: i64,
        to_minute: i64,
        by: UsageTop,
        max_rows: usize,
    ) -> Result<Vec<(String, UsageCounts)>> {
        let column = match by {
            UsageTop::Binding => "binding_id",
            UsageTop::Method => "method",
        };
        let sql = format!(
            "SELECT {column} AS name, {SUMS} FROM usage_minutes \
             WHERE instance_id = $1 AND minute >= $2 AND minute < $3 \
             GROUP BY {column} ORDER BY SUM(calls) DESC, {column} LIMIT {max_rows}"
        );
        let rows = sqlx::query(&sql).bind(instance_id).bind(from_minute).bind(to_minute).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get::<String, _>("name")?, counts_of(row)?))).collect()
    }

    /// Compute units per (instance, binding) since `from_minute`, summed over replicas (to seed
    /// quota counters at start).
    pub async fn compute_units_since(&self, from_minute: i64) -> Result<Vec<(String, String, u64)>> {
        let rows = sqlx::query(
            "SELECT instance_id, binding_id, CAST(SUM(compute_units) AS BIGINT) AS units FROM usage_minutes \
             WHERE minute >= $1 GROUP BY instance_id, binding_id",
        )
        .bind(from_minute)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("instance_id")?,
                    row.try_get("binding_id")?,
                    row.try_get::<i64, _>("units")?.max(0) as u64,
                ))
            })
            .collect()
    }
}
