//! Each instance's recent traffic (calls and errors per second over the last
//! [`TRAFFIC_SECONDS`]), kept for its dashboard. Must not: allocate or lock per call (a minute's
//! slots are allocated once, at the first call in a minute of its ring position, and reused).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds of traffic history kept per instance (for its dashboard).
pub const TRAFFIC_SECONDS: u64 = 300;

/// Minutes of slots in the ring: enough that the minute being written never reuses the slots
/// of a second still in the window.
const MINUTES: usize = (TRAFFIC_SECONDS / 60) as usize + 1;

/// One minute's seconds: each slot holds the second's calls (low 32 bits) and errors (high).
struct Minute {
    /// The minute (unix seconds / 60) the slots count.
    minute: AtomicU64,
    seconds: [AtomicU64; 60],
}

/// Calls and errors per second of one instance over the last [`TRAFFIC_SECONDS`]: a ring of
/// minutes, each made at its first call (an instance called once holds one minute, about
/// 500 bytes, not the whole window) and stamped with its minute (approximate at a minute's
/// turnover, by design: it feeds a chart).
pub struct Traffic {
    minutes: [OnceLock<Box<Minute>>; MINUTES],
}

impl Traffic {
    pub(super) fn new() -> Traffic {
        Traffic { minutes: Default::default() }
    }

    pub(super) fn record(&self, now: u64, error: bool) {
        let minute = now / 60;
        let slots = self.minutes[(minute % MINUTES as u64) as usize].get_or_init(|| {
            Box::new(Minute { minute: AtomicU64::new(minute), seconds: std::array::from_fn(|_| AtomicU64::new(0)) })
        });
        let stamped = slots.minute.load(Ordering::Relaxed);
        if stamped != minute
            && slots.minute.compare_exchange(stamped, minute, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            slots.seconds.iter().for_each(|slot| slot.store(0, Ordering::Relaxed));
        }
        slots.seconds[(now % 60) as usize].fetch_add(1 | (u64::from(error) << 32), Ordering::Relaxed);
    }

    /// `(unix second, calls, errors)` for each second with traffic in the window, oldest first.
    pub fn points(&self, now: u64) -> Vec<(u64, u64, u64)> {
        let mut points: Vec<(u64, u64, u64)> = self
            .minutes
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|slots| {
                let minute = slots.minute.load(Ordering::Relaxed);
                slots.seconds.iter().enumerate().filter_map(move |(i, slot)| {
                    let second = minute * 60 + i as u64;
                    let counts = slot.load(Ordering::Relaxed);
                    let calls = counts & u64::from(u32::MAX);
                    (calls > 0 && second + TRAFFIC_SECONDS > now && second <= now).then_some((
                        second,
                        calls,
                        counts >> 32,
                    ))
                })
            })
            .collect();
        points.sort_unstable();
        points
    }

    /// Bytes this history holds on the heap now.
    pub fn heap_bytes(&self) -> usize {
        self.minutes.iter().filter(|m| m.get().is_some()).count() * std::mem::size_of::<Minute>()
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
        // Asked at 1001: 1300 is in the future; 1000 is still there (its minute was not reused).
        assert_eq!(traffic.points(1001), vec![(1000, 2, 1), (1001, 1, 0)], "nothing from the future");
    }

    #[test]
    fn an_instance_called_once_holds_one_minute_of_slots_and_a_busy_one_the_window() {
        let traffic = Traffic::new();
        assert_eq!(traffic.heap_bytes(), 0);
        traffic.record(6000, true);
        let minute = traffic.heap_bytes();
        assert!(minute <= 500, "{minute} bytes for one call");
        assert_eq!(traffic.points(6000), vec![(6000, 1, 1)]);
        for second in 6000..6000 + 2 * TRAFFIC_SECONDS {
            traffic.record(second, false);
        }
        assert_eq!(traffic.heap_bytes(), minute * MINUTES, "the ring is reused, never grown");
        let now = 6000 + 2 * TRAFFIC_SECONDS - 1;
        let points = traffic.points(now);
        assert_eq!(points.len(), TRAFFIC_SECONDS as usize);
        assert_eq!(points[0], (now + 1 - TRAFFIC_SECONDS, 1, 0));
    }
}
