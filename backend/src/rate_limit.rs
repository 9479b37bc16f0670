//! Rate limits on sending and on login attempts, per user and per IP address (governor's GCRA,
//! kept in this node's memory: a client spread over n nodes gets up to n times the rate).

use crate::config::Config;
use crate::metrics::Metrics;
use chat_protocol::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often a node forgets the keys whose limits are back to full.
pub const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// Every limit this node enforces.
pub struct RateLimits {
    sends_per_user: DefaultKeyedRateLimiter<UserId>,
    sends_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    logins_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    logins_per_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    metrics: Metrics,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    pub fn millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// Whole seconds, rounded up, for the `Retry-After` header.
    pub fn secs(self) -> u64 {
        self.millis().div_ceil(1000)
    }
}

impl RateLimits {
    pub fn new(config: &Config, metrics: Metrics) -> RateLimits {
        let per_second = |rate: u32, burst: u32| {
            Quota::per_second(nonzero(rate)).allow_burst(nonzero(burst.max(rate)))
        };
        let per_minute = |rate: u32| Quota::per_minute(nonzero(rate));
        RateLimits {
            sends_per_user: RateLimiter::keyed(per_second(
                config.send_rate_per_user,
                config.send_burst_per_user,
            )),
            sends_per_ip: RateLimiter::keyed(per_second(
                config.send_rate_per_ip,
                config.send_burst_per_ip,
            )),
            logins_per_ip: RateLimiter::keyed(per_minute(config.login_attempts_per_ip)),
            logins_per_user: RateLimiter::keyed(per_minute(config.login_attempts_per_user)),
            clock: DefaultClock::default(),
            metrics,
        }
    }

    /// One message from `user` at `ip`.
    pub fn check_send(&self, user: UserId, ip: Option<IpAddr>) -> Result<(), RetryAfter> {
        self.check(&self.sends_per_user, &user, "send_per_user")?;
        match ip {
            Some(ip) => self.check(&self.sends_per_ip, &ip, "send_per_ip"),
            None => Ok(()),
        }
    }

    /// One login (or registration) attempt from `ip`, for `username` when there is one.
    pub fn check_login(
        &self,
        ip: Option<IpAddr>,
        username: Option<&str>,
    ) -> Result<(), RetryAfter> {
        if let Some(ip) = ip {
            self.check(&self.logins_per_ip, &ip, "login_per_ip")?;
        }
        match username {
            Some(name) => self.check(&self.logins_per_user, &name.to_owned(), "login_per_user"),
            None => Ok(()),
        }
    }

    /// Forgets keys whose limits are back to full, so memory follows active users only.
    pub fn forget_idle(&self) {
        self.sends_per_user.retain_recent();
        self.sends_per_ip.retain_recent();
        self.logins_per_ip.retain_recent();
        self.logins_per_user.retain_recent();
    }

    /// Keys currently remembered, over every limit.
    pub fn tracked_keys(&self) -> usize {
        self.sends_per_user.len()
            + self.sends_per_ip.len()
            + self.logins_per_ip.len()
            + self.logins_per_user.len()
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        name: &str,
    ) -> Result<(), RetryAfter> {
        limiter.check_key(key).map_err(|not_until| {
            self.metrics.rate_limited.with_label_values(&[name]).inc();
            RetryAfter(not_until.wait_time_from(self.clock.now()))
        })
    }
}

fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

/// Calls [`RateLimits::forget_idle`] every `period` until `stop` is cancelled.
pub async fn forget_idle_every(limits: &RateLimits, period: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => limits.forget_idle(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::Parser;
    use std::sync::Arc;
    use tokio::time::Instant;

    /// Limits whose budgets refill within a millisecond.
    fn fast_limits() -> RateLimits {
        let config = Config::try_parse_from([
            "chat-server",
            "--send-rate-per-user",
            "100000",
            "--send-rate-per-ip",
            "100000",
            "--login-attempts-per-ip",
            "1000000",
            "--login-attempts-per-user",
            "1000000",
        ]);
        match config {
            Ok(config) => RateLimits::new(&config, Metrics::new()),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn idle_keys_are_forgotten_periodically_until_stopped() {
        let limits = Arc::new(fast_limits());
        let ip = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(limits.check_send(UserId(1), Some(ip)), Ok(()));
        assert_eq!(limits.check_login(Some(ip), Some("ada")), Ok(()));
        assert_eq!(limits.tracked_keys(), 4);

        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let limits = limits.clone();
            let stop = stop.clone();
            async move { forget_idle_every(&limits, Duration::from_millis(10), stop).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while limits.tracked_keys() > 0 {
            assert!(Instant::now() < deadline, "idle keys were not forgotten");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(stopped, Ok(Ok(()))), "the task did not stop");
    }

    #[test]
    fn busy_keys_are_kept() {
        let config = Config::try_parse_from(["chat-server", "--login-attempts-per-ip", "1"]);
        let limits = match config {
            Ok(config) => RateLimits::new(&config, Metrics::new()),
            Err(e) => panic!("{e}"),
        };
        let ip = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(limits.check_login(Some(ip), None), Ok(()));
        // A minute must pass before this address has its attempt back: it is remembered.
        limits.forget_idle();
        assert_eq!(limits.tracked_keys(), 1);
        assert!(limits.check_login(Some(ip), None).is_err());
    }
}
