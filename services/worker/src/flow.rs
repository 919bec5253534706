//! Flow control toward the platform: a token-bucket rate limit, a circuit breaker shared by every
//! shard of the worker, and jittered exponential backoff.

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `rate` (one second of burst).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `None` when `per_second` is 0 (unlimited).
    pub fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| RateLimiter {
            rate: f64::from(per_second),
            state: Mutex::new((f64::from(per_second), Instant::now())),
        })
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let elapsed = now.duration_since(state.1).as_secs_f64();
                state.0 = (state.0 + elapsed * self.rate).min(self.rate);
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A circuit breaker over platform calls: after `threshold` consecutive failures it opens for
/// `cooldown`; callers wait while it is open, then one probe at a time goes through (half-open)
/// until a success closes it.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        // Closed from the start, so the gauge exists before the first failure.
        metrics::gauge!("twinbridge_worker_circuit_open").set(0.0);
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(BreakerState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the circuit is open now.
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some_and(|t| t > Instant::now())
    }

    /// Waits while the circuit is open.
    pub async fn wait_closed(&self) {
        loop {
            let until = self.lock().open_until;
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    pub fn on_success(&self) {
        let mut s = self.lock();
        if s.open_until.is_some() {
            tracing::info!("platform answers again: circuit closed");
            metrics::gauge!("twinbridge_worker_circuit_open").set(0.0);
        }
        s.failures = 0;
        s.open_until = None;
    }

    /// Records a failed call; returns true when this failure opened (or re-opened) the circuit.
    pub fn on_failure(&self) -> bool {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        if s.failures >= self.threshold {
            let now = Instant::now();
            if s.open_until.is_none_or(|t| t <= now) {
                s.open_until = Some(now + self.cooldown);
                metrics::gauge!("twinbridge_worker_circuit_open").set(1.0);
                metrics::counter!("twinbridge_worker_circuit_opened_total").increment(1);
                return true;
            }
        }
        false
    }
}

/// Exponential backoff with full jitter between `initial` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next delay: a random value in [ceiling/2, ceiling], the ceiling doubling per attempt
    /// up to `max`. A server-given `retry_after` is honoured (capped at 5 × `max`).
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt.min(20)))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(rand::rng().random_range(0.5..=1.0));
        match retry_after {
            Some(ra) => ra.min(self.max * 5).max(jittered),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d0 = b.next(None);
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        let d1 = b.next(None);
        assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200));
        for _ in 0..10 {
            assert!(b.next(None) <= Duration::from_secs(1));
        }
        assert_eq!(b.next(Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(
            b.next(Some(Duration::from_secs(60))),
            Duration::from_secs(5),
            "a huge Retry-After is capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_threshold_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(5));
        assert!(!b.on_failure());
        assert!(!b.on_failure());
        assert!(!b.is_open());
        assert!(b.on_failure(), "third failure opens");
        assert!(b.is_open());
        let start = Instant::now();
        b.wait_closed().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        assert!(!b.is_open(), "half-open after the cooldown");
        assert!(b.on_failure(), "a failed probe re-opens");
        b.on_success();
        assert!(!b.is_open());
        assert!(!b.on_failure(), "counting starts again");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_calls() {
        let r = RateLimiter::new(10).unwrap();
        let start = Instant::now();
        for _ in 0..30 {
            r.acquire().await;
        }
        // 10 from the initial burst, 20 more at 10/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        assert!(took <= Duration::from_millis(2100), "{took:?}");
        assert!(RateLimiter::new(0).is_none());
    }
}
