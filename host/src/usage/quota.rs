//! Quota windows (day, calendar month, n seconds; all UTC) and the in-memory counter of one
//! quota: two atomics, checked and added to without a lock or a store query.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::config::{QuotaDecl, QuotaWindow};

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil (proleptic Gregorian) date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The window holding `now_ms`: its start and its end (ms since the Unix epoch).
pub fn window_bounds(window: QuotaWindow, now_ms: i64) -> (i64, i64) {
    match window {
        QuotaWindow::Seconds(n) => {
            let len = i64::try_from(n).unwrap_or(i64::MAX / 1000).saturating_mul(1000);
            let start = now_ms - now_ms.rem_euclid(len);
            (start, start + len)
        }
        QuotaWindow::Day => {
            let start = now_ms - now_ms.rem_euclid(DAY_MS);
            (start, start + DAY_MS)
        }
        QuotaWindow::Month => {
            let (year, month, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
            let start = days_from_civil(year, month, 1) * DAY_MS;
            let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            (start, days_from_civil(ny, nm, 1) * DAY_MS)
        }
    }
}

/// Why a call was refused for its quota: what the answer's `data` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    /// The quota, in compute units.
    pub limit: u64,
    /// The window (`day`, `month`, `60s`).
    pub window: String,
    /// Whose quota: `binding` or `instance`.
    pub per: &'static str,
    /// Milliseconds until the window resets.
    pub retry_after_ms: u64,
}

impl QuotaRefusal {
    /// The message of the JSON-RPC error.
    pub fn message(&self) -> String {
        format!(
            "the {} quota of {} compute units per {} is used up; it resets in {} ms",
            self.per, self.limit, self.window, self.retry_after_ms
        )
    }

    /// The `data` of the JSON-RPC error.
    pub fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "reason": "quota",
            "limit": self.limit,
            "window": self.window,
            "per": self.per,
            "retry_after_ms": self.retry_after_ms,
        })
    }
}

/// The compute units used in the current window of one quota.
#[derive(Debug, Default)]
pub struct QuotaCounter {
    window_start_ms: AtomicI64,
    used: AtomicU64,
}

impl QuotaCounter {
    /// What is used in the window starting at `start` (0 once the window has moved on).
    fn used_in(&self, start: i64) -> u64 {
        if self.window_start_ms.load(Ordering::Acquire) == start { self.used.load(Ordering::Relaxed) } else { 0 }
    }

    /// Moves the counter to the window starting at `start` if it is still on an earlier one.
    fn roll(&self, start: i64) {
        let current = self.window_start_ms.load(Ordering::Acquire);
        if current < start
            && self.window_start_ms.compare_exchange(current, start, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.used.store(0, Ordering::Release);
        }
    }

    /// Whether a call may start at `now_ms` under `quota`: refused once the window's use has
    /// reached the quota.
    pub fn check(&self, quota: &QuotaDecl, now_ms: i64) -> Result<(), QuotaRefusal> {
        let (start, end) = window_bounds(quota.window, now_ms);
        if self.used_in(start) < quota.compute_units {
            return Ok(());
        }
        Err(QuotaRefusal {
            limit: quota.compute_units,
            window: quota.window.name(),
            per: quota.per.name(),
            retry_after_ms: u64::try_from(end - now_ms).unwrap_or(0).max(1),
        })
    }

    /// Adds `units` used at `now_ms`.
    pub fn add(&self, quota: &QuotaDecl, units: u64, now_ms: i64) {
        if units == 0 {
            return;
        }
        let (start, _) = window_bounds(quota.window, now_ms);
        self.roll(start);
        self.used.fetch_add(units, Ordering::AcqRel);
    }

    /// Adds `units` used earlier in the window starting at `start` (seeding from the store).
    pub fn seed(&self, start: i64, units: u64) {
        self.roll(start);
        if self.window_start_ms.load(Ordering::Acquire) == start {
            self.used.fetch_add(units, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QuotaScope;

    #[test]
    fn civil_dates_round_trip_and_months_have_their_lengths() {
        for days in [-1, 0, 59, 365, 11_016, 20_000, 20_794] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        // February 2024 has 29 days, December rolls into the next year.
        let feb = days_from_civil(2024, 2, 10) * DAY_MS + 5;
        let (start, end) = window_bounds(QuotaWindow::Month, feb);
        assert_eq!((end - start) / DAY_MS, 29);
        let dec = days_from_civil(2026, 12, 31) * DAY_MS;
        assert_eq!(window_bounds(QuotaWindow::Month, dec).1, days_from_civil(2027, 1, 1) * DAY_MS);
        assert_eq!(window_bounds(QuotaWindow::Seconds(10), 12_345), (10_000, 20_000));
        assert_eq!(window_bounds(QuotaWindow::Day, DAY_MS + 7), (DAY_MS, 2 * DAY_MS));
    }

    #[test]
    fn a_quota_refuses_once_used_up_and_resets_with_its_window() {
        let quota = QuotaDecl { compute_units: 30, window: QuotaWindow::Seconds(10), per: QuotaScope::Binding };
        let counter = QuotaCounter::default();
        assert!(counter.check(&quota, 1_000).is_ok());
        counter.add(&quota, 20, 1_000);
        assert!(counter.check(&quota, 2_000).is_ok(), "20 of 30");
        counter.add(&quota, 20, 2_000);
        let refusal = counter.check(&quota, 4_000).unwrap_err();
        assert_eq!(refusal.retry_after_ms, 6_000);
        assert_eq!(refusal.data()["reason"], "quota");
        assert_eq!(refusal.data()["window"], "10s");
        // The next window starts from nothing.
        assert!(counter.check(&quota, 10_000).is_ok());
        counter.add(&quota, 10, 10_001);
        assert!(counter.check(&quota, 10_002).is_ok());
        // Seeding adds what was used earlier in the window.
        counter.seed(10_000, 25);
        assert!(counter.check(&quota, 10_003).is_err());
    }
}
