//! Limits on password and OTP failures, per account at one address, per address and per account.
//!
//! The tight limit is on the (account, address) pair, so neither other users at that address
//! nor the same user at other addresses are locked out by someone else's failures; the looser
//! per-address and per-account limits (ten times as many) stop spraying many names from one
//! address and slow guessing one account from many addresses.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BROAD_FACTOR: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Bucket {
    Pair(String, IpAddr),
    Address(IpAddr),
    Account(String),
}

pub struct FailureLimiter {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<Bucket, VecDeque<Instant>>>,
}

impl FailureLimiter {
    pub fn new(limit: usize, window: Duration) -> Self {
        FailureLimiter {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn buckets(account: &str, addr: IpAddr) -> [(Bucket, usize); 3] {
        [
            (Bucket::Pair(account.to_owned(), addr), 1),
            (Bucket::Address(addr), BROAD_FACTOR),
            (Bucket::Account(account.to_owned()), BROAD_FACTOR),
        ]
    }

    /// `Err(wait)` when the caller must wait before trying again.
    pub fn check(&self, account: &str, addr: IpAddr) -> Result<(), Duration> {
        self.check_at(account, addr, Instant::now())
    }

    fn check_at(&self, account: &str, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().expect("limiter lock");
        let mut wait = Duration::ZERO;
        for (bucket, factor) in Self::buckets(account, addr) {
            if let Some(times) = map.get_mut(&bucket) {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    times.pop_front();
                }
                let limit = self.limit * factor;
                if times.len() >= limit {
                    // Free again when the oldest failure that keeps it at the limit expires.
                    let oldest = times[times.len() - limit];
                    wait = wait.max(self.window.saturating_sub(now.duration_since(oldest)));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait.max(Duration::from_secs(1)))
        }
    }

    pub fn record_failure(&self, account: &str, addr: IpAddr) {
        self.record_at(account, addr, Instant::now());
    }

    fn record_at(&self, account: &str, addr: IpAddr, now: Instant) {
        let mut map = self.failures.lock().expect("limiter lock");
        for (bucket, _) in Self::buckets(account, addr) {
            let times = map.entry(bucket).or_default();
            times.push_back(now);
            let cap = self.limit * BROAD_FACTOR;
            while times.len() > cap {
                times.pop_front();
            }
        }
        // Keep memory bounded: forget buckets whose failures are all outside the window.
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, t| {
                t.back()
                    .is_some_and(|last| now.duration_since(*last) < window)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_limit_leaves_others_alone() {
        let l = FailureLimiter::new(3, Duration::from_secs(300));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("alice", a, t0).is_ok());
            l.record_at("alice", a, t0);
        }
        let wait = l.check_at("alice", a, t0).unwrap_err();
        assert!(wait > Duration::from_secs(290), "{wait:?}");
        assert!(l.check_at("bob", a, t0).is_ok());
        assert!(l.check_at("alice", b, t0).is_ok());
        // After the window the pair may try again.
        assert!(l
            .check_at("alice", a, t0 + Duration::from_secs(301))
            .is_ok());
    }

    #[test]
    fn broad_limits_stop_spraying() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..20 {
            l.record_at(&format!("user{i}"), a, t0);
        }
        assert!(l.check_at("fresh", a, t0).is_err());
        assert!(l
            .check_at("fresh", "192.0.2.9".parse().unwrap(), t0)
            .is_ok());
    }
}
