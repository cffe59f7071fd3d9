//! Which of several servers gets the next request: the one with the fewest requests in flight,
//! among those not taken out of rotation by recent failures.
//!
//! A server that fails (connection error, timeout, 429, 5xx) is out of rotation for a while
//! that doubles with each failure in a row (1 s, 2 s, … at most [`MAX_OUT`]), or for as long as
//! its `Retry-After` says; an answer puts it back. When that while has passed it gets one
//! request at a time until one succeeds, so a dead server costs one failed request per
//! while, not one per worker. Without this, a dead server — always the one with the fewest
//! requests in flight — drew every request and every retry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a failing server stays out of rotation before it is tried again.
pub const MAX_OUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone)]
struct UrlState {
    in_flight: usize,
    /// Failures in a row (0: healthy).
    failures: u32,
    /// Out of rotation until then.
    out_until: Option<Instant>,
    /// The last failure, for the error when every server is failing.
    last_error: Option<String>,
}

impl UrlState {
    fn usable(&self, now: Instant) -> bool {
        match self.out_until {
            None => true,
            // back from a failure: one probe at a time
            Some(t) => now >= t && self.in_flight == 0,
        }
    }
}

/// The rotation state of a client's URLs.
#[derive(Debug)]
pub struct Balancer {
    urls: Mutex<Vec<UrlState>>,
    rotate: AtomicUsize,
}

impl Balancer {
    pub fn new(urls: usize) -> Self {
        assert!(urls > 0, "at least one URL");
        Balancer {
            urls: Mutex::new(vec![UrlState::default(); urls]),
            rotate: AtomicUsize::new(0),
        }
    }

    /// The URL for the next attempt, counted as in flight until [`Balancer::answered`] or
    /// [`Balancer::failed`]: among the usable URLs the one with the fewest in flight (ties:
    /// round robin); when none is usable, the one that comes back first.
    pub fn acquire(&self) -> usize {
        let mut urls = self.urls.lock().expect("balancer lock");
        let now = Instant::now();
        let n = urls.len();
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let order = (0..n).map(|k| (start + k) % n);
        let usable = order
            .clone()
            .filter(|&i| urls[i].usable(now))
            .min_by_key(|&i| urls[i].in_flight);
        let i = usable.unwrap_or_else(|| {
            order
                .min_by_key(|&i| urls[i].out_until)
                .expect("at least one URL")
        });
        urls[i].in_flight += 1;
        i
    }

    /// URL `i` answered (a refusal too: the server is up): back in rotation.
    pub fn answered(&self, i: usize) {
        let mut urls = self.urls.lock().expect("balancer lock");
        let u = &mut urls[i];
        u.in_flight -= 1;
        u.failures = 0;
        u.out_until = None;
    }

    /// URL `i` failed with `error`: out of rotation for `retry_after` when the server said so,
    /// else for 1 s · 2^(failures in a row − 1), at most [`MAX_OUT`].
    pub fn failed(&self, i: usize, error: &str, retry_after: Option<Duration>) {
        let mut urls = self.urls.lock().expect("balancer lock");
        let u = &mut urls[i];
        u.in_flight -= 1;
        u.failures = u.failures.saturating_add(1);
        let doubling = Duration::from_secs(1 << (u.failures - 1).min(6)).min(MAX_OUT);
        u.out_until = Some(Instant::now() + retry_after.unwrap_or(doubling).min(MAX_OUT));
        u.last_error = Some(error.to_string());
    }

    /// Whether some URL is in rotation now (not failing, or back from its failure).
    pub fn any_usable(&self) -> bool {
        let now = Instant::now();
        self.urls
            .lock()
            .expect("balancer lock")
            .iter()
            .any(|u| u.usable(now))
    }

    /// The last error of each URL that is failing now, in URL order.
    pub fn failing(&self) -> Vec<(usize, String)> {
        self.urls
            .lock()
            .expect("balancer lock")
            .iter()
            .enumerate()
            .filter(|(_, u)| u.failures > 0)
            .filter_map(|(i, u)| u.last_error.clone().map(|e| (i, e)))
            .collect()
    }

    /// Requests in flight to each URL.
    #[cfg(test)]
    fn in_flight(&self) -> Vec<usize> {
        let urls = self.urls.lock().expect("balancer lock");
        urls.iter().map(|u| u.in_flight).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_url_leaves_the_rotation_until_its_time_is_up() {
        let b = Balancer::new(2);
        // both healthy: the emptier one, ties in turn
        let first = b.acquire();
        let second = b.acquire();
        assert_ne!(first, second);
        b.answered(first);
        b.failed(second, "connection refused", None);
        // the failed one is out for 1 s: every request goes to the other, however loaded
        for _ in 0..5 {
            assert_eq!(b.acquire(), first);
        }
        assert!(b.any_usable());
        assert_eq!(
            b.failing(),
            vec![(second, "connection refused".to_string())]
        );
        assert_eq!(b.in_flight()[first], 5);
    }

    #[test]
    fn failures_in_a_row_double_the_time_out_and_an_answer_ends_it() {
        let b = Balancer::new(1);
        for k in 0..10 {
            let i = b.acquire();
            b.failed(i, "down", None);
            let until = b.urls.lock().unwrap()[0].out_until.unwrap();
            let out = until.duration_since(Instant::now()).as_secs_f64();
            let want = (2f64.powi(k)).min(MAX_OUT.as_secs_f64());
            assert!(
                out <= want && out > want - 0.5,
                "failure {k}: out {out} s, want {want}"
            );
        }
        // none usable: the one that comes back first is still the answer
        assert!(!b.any_usable());
        let i = b.acquire();
        b.answered(i);
        assert!(b.any_usable());
        assert!(b.failing().is_empty());
    }

    #[test]
    fn retry_after_sets_the_time_out_and_a_url_back_gets_one_probe() {
        let b = Balancer::new(2);
        let i = b.acquire();
        b.failed(i, "HTTP 429", Some(Duration::from_millis(50)));
        let other = 1 - i;
        assert_eq!(b.acquire(), other);
        std::thread::sleep(Duration::from_millis(60));
        // back: it has nothing in flight and is the emptier one
        assert_eq!(b.acquire(), i);
        // its probe is in flight: the next requests go to the other
        assert_eq!(b.acquire(), other);
        assert_eq!(b.acquire(), other);
        // a Retry-After beyond MAX_OUT is cut to it
        b.failed(i, "HTTP 503", Some(Duration::from_secs(3600)));
        let until = b.urls.lock().unwrap()[i].out_until.unwrap();
        assert!(until.duration_since(Instant::now()) <= MAX_OUT);
    }
}
