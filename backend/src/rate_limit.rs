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
