//! # Throttling failed broker authentication
//!
//! Owns the count of failed Basic-auth attempts per source address. The first
//! [`FREE_FAILURES`] failures of an address are answered 401 as usual; after that, the address
//! must wait (1 s, doubling with each further failure, at most [`LONGEST_WAIT`]) before its next
//! attempt is even checked: until then every request from it gets 429 with `Retry-After`, right
//! password or not (a guesser must not learn which guess was right at full speed). A success
//! clears the address. Other addresses, the real platform's among them, are not affected.
//!
//! Must not: grow without bound (at most [`MAX_SOURCES`] addresses are remembered; the oldest
//! go first) or hold its lock across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one address answered 401 before it has to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait imposed on an address.
pub const LONGEST_WAIT: Duration = Duration::from_secs(60);
/// Addresses remembered at once.
pub const MAX_SOURCES: usize = 16_384;
/// An address not seen for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    /// No attempt is checked before this.
    wait_until: Instant,
    last: Instant,
}

/// Failed authentication per source address.
#[derive(Default)]
pub struct AuthThrottle {
    sources: Mutex<HashMap<IpAddr, Failures>>,
}

impl AuthThrottle {
    /// `Err(seconds to wait)` when `source` may not try now.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), u64> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        match sources.get(&source) {
            Some(failures) if failures.wait_until > now => {
                Err(failures.wait_until.duration_since(now).as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => Ok(()),
        }
    }

    /// Records the outcome of an attempt from `source`.
    pub fn record(&self, source: IpAddr, succeeded: bool, now: Instant) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if succeeded {
            sources.remove(&source);
            return;
        }
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if sources.len() >= MAX_SOURCES
                && let Some(oldest) = sources.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip)
            {
                sources.remove(&oldest);
            }
        }
        let failures = sources.entry(source).or_insert(Failures { count: 0, wait_until: now, last: now });
        if now.duration_since(failures.last) >= FORGET_AFTER {
            failures.count = 0;
        }
        failures.count += 1;
        failures.last = now;
        if failures.count >= FREE_FAILURES {
            let doublings = (failures.count - FREE_FAILURES).min(16);
            failures.wait_until = now + Duration::from_secs(1u64 << doublings).min(LONGEST_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn an_address_waits_after_a_few_failures_longer_each_time_and_others_do_not() {
        let throttle = AuthThrottle::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(throttle.check(A, t0), Ok(()));
            throttle.record(A, false, t0);
        }
        assert_eq!(throttle.check(A, t0), Ok(()));
        throttle.record(A, false, t0);
        assert_eq!(throttle.check(A, t0), Err(1), "the fifth failure costs a second");
        assert_eq!(throttle.check(B, t0), Ok(()), "another address is not affected");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(throttle.check(A, t1), Ok(()));
        throttle.record(A, false, t1);
        assert_eq!(throttle.check(A, t1), Err(2), "then two");
        let t2 = t1 + Duration::from_secs(2);
        for n in 0..20 {
            throttle.record(A, false, t2 + Duration::from_secs(n));
        }
        let wait = throttle.check(A, t2 + Duration::from_secs(19)).unwrap_err();
        assert!(wait <= LONGEST_WAIT.as_secs(), "{wait}");
        throttle.record(A, true, t2 + Duration::from_secs(100));
        assert_eq!(throttle.check(A, t2 + Duration::from_secs(100)), Ok(()), "a success clears the address");
    }
}
