//! Each instance's recent traffic (calls and errors per second over the last
//! [`TRAFFIC_SECONDS`]), kept for its dashboard. Must not: allocate or lock per call.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds of traffic history kept per instance (for its dashboard).
pub const TRAFFIC_SECONDS: u64 = 300;

/// Calls and errors per second of one instance over the last [`TRAFFIC_SECONDS`]: a ring of
/// per-second slots, each stamped with its second (approximate at a slot's turnover, by design:
/// it feeds a chart).
pub struct Traffic {
    second: [AtomicU64; TRAFFIC_SECONDS as usize],
    calls: [AtomicU64; TRAFFIC_SECONDS as usize],
    errors: [AtomicU64; TRAFFIC_SECONDS as usize],
}

impl Traffic {
    pub(super) fn new() -> Traffic {
        Traffic {
            second: std::array::from_fn(|_| AtomicU64::new(0)),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub(super) fn record(&self, now: u64, error: bool) {
        let slot = (now % TRAFFIC_SECONDS) as usize;
        let stamped = self.second[slot].load(Ordering::Relaxed);
        if stamped != now
            && self.second[slot].compare_exchange(stamped, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.calls[slot].store(0, Ordering::Relaxed);
            self.errors[slot].store(0, Ordering::Relaxed);
        }
        self.calls[slot].fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(unix second, calls, errors)` for each second with traffic in the window, oldest first.
    pub fn points(&self, now: u64) -> Vec<(u64, u64, u64)> {
        let mut points: Vec<(u64, u64, u64)> = (0..TRAFFIC_SECONDS as usize)
            .filter_map(|slot| {
                let second = self.second[slot].load(Ordering::Relaxed);
                (second + TRAFFIC_SECONDS > now && second <= now).then(|| {
                    (second, self.calls[slot].load(Ordering::Relaxed), self.errors[slot].load(Ordering::Relaxed))
                })
            })
            .collect();
        points.sort_unstable();
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_keeps_five_minutes_of_calls_and_errors_per_second() {
        let traffic = Traffic::new();
        traffic.record(1000, false);
        traffic.record(1000, true);
        traffic.record(1001, false);
        traffic.record(1000 + TRAFFIC_SECONDS, false); // same slot as 1000, a new second
        assert_eq!(traffic.points(1000 + TRAFFIC_SECONDS), vec![(1001, 1, 0), (1300, 1, 0)]);
        assert_eq!(traffic.points(1001), vec![(1001, 1, 0)], "nothing from the future");
    }
}
