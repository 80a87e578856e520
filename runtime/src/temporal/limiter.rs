//! A per-client rate limiter with an exact sliding window: no rolling window of `window` ever
//! holds more than `limit` accepted requests of one client (a sliding log of the last `limit`
//! acceptance times per client), unlike a GCRA quota with a burst of `limit`, which lets about
//! twice the limit through in a rolling window.
//!
//! Memory is bounded: at most `max_clients` clients are tracked, idle ones (nothing accepted in
//! the last window) are swept, and a client that cannot be tracked because the table is full of
//! active clients is refused rather than let through.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Allowed,
    /// Refused; the client may try again after this long.
    Limited {
        /// Wait at least this long.
        retry_after: Duration,
    },
}

struct Table {
    clients: HashMap<String, VecDeque<Instant>>,
    last_sweep: Option<Instant>,
}

/// The sliding-window limiter shared by the temporal endpoints of one process.
pub struct SlidingWindowLimiter {
    limit: usize,
    window: Duration,
    max_clients: usize,
    table: Mutex<Table>,
}

impl std::fmt::Debug for SlidingWindowLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingWindowLimiter")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

impl SlidingWindowLimiter {
    /// At most `limit` requests per client in any rolling `window`, tracking at most
    /// `max_clients` clients.
    pub fn new(limit: usize, window: Duration, max_clients: usize) -> Self {
        Self {
            limit: limit.max(1),
            window,
            max_clients: max_clients.max(1),
            table: Mutex::new(Table {
                clients: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// Decides on a request of `client` now.
    pub fn check(&self, client: &str) -> RateDecision {
        self.check_at(client, Instant::now())
    }

    /// Decides on a request of `client` at `now` (monotonic; tests pass their own clock).
    pub fn check_at(&self, client: &str, now: Instant) -> RateDecision {
        let mut table = self.table.lock().expect("rate limiter lock poisoned");
        let since_sweep = table
            .last_sweep
            .map_or(Duration::MAX, |last| now.saturating_duration_since(last));
        // A full table is swept early, but at most once per 1/60 of the window, so a flood of
        // newcomers cannot make every request walk the whole table.
        let full = table.clients.len() >= self.max_clients && !table.clients.contains_key(client);
        if since_sweep >= self.window || (full && since_sweep >= self.window / 60) {
            self.sweep(&mut table, now);
        }
        if !table.clients.contains_key(client) && table.clients.len() >= self.max_clients {
            // Every tracked client was active within the window: refusing the newcomer keeps
            // memory bounded and never lets anyone past their limit.
            return RateDecision::Limited {
                retry_after: self.window,
            };
        }
        let log = table.clients.entry(client.to_owned()).or_default();
        while log
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            log.pop_front();
        }
        if log.len() < self.limit {
            log.push_back(now);
            RateDecision::Allowed
        } else {
            let oldest = *log.front().expect("a full log has a front");
            let wait = self
                .window
                .saturating_sub(now.saturating_duration_since(oldest));
            RateDecision::Limited {
                retry_after: wait.max(Duration::from_millis(1)),
            }
        }
    }

    /// Drops clients with nothing accepted in the last window, and gives the memory back.
    fn sweep(&self, table: &mut Table, now: Instant) {
        let window = self.window;
        table.clients.retain(|_, log| {
            log.back()
                .is_some_and(|&t| now.saturating_duration_since(t) < window)
        });
        table.clients.shrink_to_fit();
        table.last_sweep = Some(now);
    }

    /// How many clients are tracked now.
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .expect("rate limiter lock poisoned")
            .clients
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn no_rolling_minute_ever_holds_more_than_the_limit() {
        // Requests every 500 ms for five minutes: a GCRA quota of 10/min with burst 10 admits
        // about 19 in the first rolling minute; the sliding log never more than 10.
        let limiter = SlidingWindowLimiter::new(10, MINUTE, 100);
        let start = Instant::now();
        let mut accepted = Vec::new();
        for step in 0..600u64 {
            let now = start + Duration::from_millis(step * 500);
            if limiter.check_at("alice", now) == RateDecision::Allowed {
                accepted.push(now);
            }
        }
        for (i, &t) in accepted.iter().enumerate() {
            let in_window = accepted[i..]
                .iter()
                .take_while(|&&u| u.duration_since(t) < MINUTE)
                .count();
            assert!(
                in_window <= 10,
                "{in_window} accepted within a minute of {t:?}"
            );
        }
        // And it is not stricter than it says: 10 per minute get through over five minutes.
        assert!(accepted.len() >= 50, "only {} accepted", accepted.len());
    }

    #[test]
    fn the_eleventh_request_waits_until_the_first_leaves_the_window() {
        let limiter = SlidingWindowLimiter::new(10, MINUTE, 100);
        let start = Instant::now();
        for i in 0..10 {
            assert_eq!(
                limiter.check_at("alice", start + Duration::from_secs(i)),
                RateDecision::Allowed
            );
        }
        let at = start + Duration::from_secs(20);
        assert_eq!(
            limiter.check_at("alice", at),
            RateDecision::Limited {
                retry_after: Duration::from_secs(40)
            }
        );
        // Clients are keyed apart.
        assert_eq!(limiter.check_at("bob", at), RateDecision::Allowed);
        assert_eq!(
            limiter.check_at("alice", start + MINUTE),
            RateDecision::Allowed
        );
    }

    #[test]
    fn memory_stays_bounded_at_the_client_limit_and_idle_clients_are_swept() {
        let limiter = SlidingWindowLimiter::new(10, MINUTE, 1000);
        let start = Instant::now();
        for i in 0..1000 {
            assert_eq!(
                limiter.check_at(&format!("c{i}"), start),
                RateDecision::Allowed
            );
        }
        assert_eq!(limiter.tracked(), 1000);
        // The table is full of clients active in this window: a newcomer is refused, not tracked.
        assert!(matches!(
            limiter.check_at("newcomer", start + Duration::from_secs(1)),
            RateDecision::Limited { .. }
        ));
        assert_eq!(limiter.tracked(), 1000);
        // A window later they are all idle: swept, and the newcomer gets in.
        assert_eq!(
            limiter.check_at("newcomer", start + MINUTE),
            RateDecision::Allowed
        );
        assert_eq!(limiter.tracked(), 1);
        for i in 0..100_000 {
            let _ = limiter.check_at(&format!("d{i}"), start + MINUTE * 2);
        }
        assert!(limiter.tracked() <= 1000);
    }
}
