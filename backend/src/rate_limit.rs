//! Rate limits on sending, REST writes and login attempts, per user and per IP address.
//!
//! Most are governor's GCRA, kept in this node's memory: a client spread over n nodes gets up to
//! n times the rate. Logins and registrations are counted for the whole deployment instead
//! (fixed-window counters in Memcached, [`Cache::increment`]), since guessing passwords over
//! many nodes must not multiply the budget; while Memcached is unreachable each node falls back
//! to its own limiter of the same budget.

use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use chat_protocol::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::Digest;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};
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
    accounts: AccountLimits,
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
            accounts: AccountLimits::new(config, metrics.clone()),
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

    /// One login attempt for `username` from `ip`, counted over every node: per address, per
    /// user name from that address, and per user name from every address (a much larger budget,
    /// so a stranger's guesses from a few addresses never lock the user out).
    pub async fn check_login(&self, ip: Option<IpAddr>, username: &str) -> Result<(), RetryAfter> {
        let budgets = &self.accounts.budgets;
        let name = username.to_lowercase();
        if let Some(ip) = ip {
            let at = ip.to_string();
            self.shared(
                Counted::LoginPerIp,
                &at,
                budgets.0,
                &self.logins_per_ip,
                &ip,
            )
            .await?;
            let both = (name.clone(), ip);
            let key = format!("{name}\n{at}");
            let local = &self.accounts.logins_per_user_ip;
            self.shared(Counted::LoginPerUserIp, &key, budgets.1, local, &both)
                .await?;
        }
        self.shared(
            Counted::LoginPerUser,
            &name,
            budgets.2,
            &self.logins_per_user,
            &name,
        )
        .await
    }

    /// One registration from `ip`: a login attempt of the address, and one of its accounts per
    /// hour, both counted over every node.
    pub async fn check_registration(&self, ip: Option<IpAddr>) -> Result<(), RetryAfter> {
        let Some(ip) = ip else { return Ok(()) };
        let (at, budgets) = (ip.to_string(), &self.accounts.budgets);
        self.shared(
            Counted::LoginPerIp,
            &at,
            budgets.0,
            &self.logins_per_ip,
            &ip,
        )
        .await?;
        let local = &self.accounts.registrations_per_ip;
        self.shared(Counted::RegistrationPerIp, &at, budgets.3, local, &ip)
            .await
    }

    /// One REST write by `user` (this node's limit); creating a room also counts against the
    /// user's rooms per hour.
    pub fn check_write(&self, user: UserId, creates_room: bool) -> Result<(), RetryAfter> {
        self.check(&self.accounts.writes_per_user, &user, "rest_write_per_user")?;
        if creates_room {
            self.check(&self.accounts.rooms_per_user, &user, "room_per_user")?;
        }
        Ok(())
    }

    /// One step of a counter shared by every node: the attempts of the current window plus
    /// the previous window's, weighted by how much of it the last window-length still covers (a
    /// sliding window, so a burst across a window boundary is not counted twice as allowed).
    /// While Memcached is unreachable, this node's `local` limiter of the same budget instead.
    async fn shared<K: Hash + Eq + Clone>(
        &self,
        counted: Counted,
        key: &str,
        budget: u32,
        local: &DefaultKeyedRateLimiter<K>,
        local_key: &K,
    ) -> Result<(), RetryAfter> {
        let window = counted.window();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let index = now.as_secs() / window.as_secs();
        let into = Duration::new(now.as_secs() % window.as_secs(), now.subsec_nanos());
        // Hashed: user names may hold characters Memcached keys may not.
        let digest = hex::encode(
            sha2::Sha256::digest(key.as_bytes())
                .get(..12)
                .unwrap_or(&[]),
        );
        let name = counted.name();
        let secs = u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
        let shared = &self.accounts.shared;
        match shared
            .count_in_window(&format!("{name}:{digest}"), index, secs)
            .await
        {
            Some((current, previous)) => {
                let left = 1.0 - into.as_secs_f64() / window.as_secs_f64();
                let estimate = current as f64 + (previous as f64 * left.clamp(0.0, 1.0)).ceil();
                if estimate <= f64::from(budget.max(1)) {
                    return Ok(());
                }
                self.metrics.rate_limited.with_label_values(&[name]).inc();
                Err(RetryAfter(
                    window.saturating_sub(into).max(Duration::from_secs(1)),
                ))
            }
            None => self.check(local, local_key, name),
        }
    }

    /// Forgets keys whose limits are back to full, so memory follows active users only.
    pub fn forget_idle(&self) {
        self.sends_per_user.retain_recent();
        self.sends_per_ip.retain_recent();
        self.logins_per_ip.retain_recent();
        self.logins_per_user.retain_recent();
        self.accounts.forget_idle();
    }

    /// Keys currently remembered, over every limit.
    pub fn tracked_keys(&self) -> usize {
        self.sends_per_user.len()
            + self.sends_per_ip.len()
            + self.logins_per_ip.len()
            + self.logins_per_user.len()
            + self.accounts.tracked_keys()
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        name: &str,
    ) -> Result<(), RetryAfter> {
        check_keyed(limiter, key, name, &self.metrics, &self.clock)
    }
}

/// One step of `limiter` for `key`; a refusal is counted under `name` and says how long to
/// wait.
fn check_keyed<K: Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    name: &str,
    metrics: &Metrics,
    clock: &DefaultClock,
) -> Result<(), RetryAfter> {
    limiter.check_key(key).map_err(|not_until| {
        metrics.rate_limited.with_label_values(&[name]).inc();
        RetryAfter(not_until.wait_time_from(clock.now()))
    })
}

/// The account and REST-write limits.
struct AccountLimits {
    /// Where the deployment-wide counters live.
    shared: Cache,
    /// Per IP, per user name from an IP, per user name, registrations per IP.
    budgets: (u32, u32, u32, u32),
    logins_per_user_ip: DefaultKeyedRateLimiter<(String, IpAddr)>,
    registrations_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    writes_per_user: DefaultKeyedRateLimiter<UserId>,
    rooms_per_user: DefaultKeyedRateLimiter<UserId>,
}

impl AccountLimits {
    fn new(config: &Config, metrics: Metrics) -> AccountLimits {
        let writes = Quota::per_minute(nonzero(config.rest_writes_per_minute_per_user))
            .allow_burst(nonzero(config.rest_write_burst_per_user));
        AccountLimits {
            shared: Cache::new(
                &config.memcached_servers,
                &config.cache_prefix,
                config.cache_ttl_secs,
                metrics,
            ),
            budgets: (
                config.login_attempts_per_ip,
                config.login_attempts_per_user_ip,
                config.login_attempts_per_user,
                config.registrations_per_ip,
            ),
            logins_per_user_ip: RateLimiter::keyed(Quota::per_minute(nonzero(
                config.login_attempts_per_user_ip,
            ))),
            registrations_per_ip: RateLimiter::keyed(Quota::per_hour(nonzero(
                config.registrations_per_ip,
            ))),
            writes_per_user: RateLimiter::keyed(writes),
            rooms_per_user: RateLimiter::keyed(Quota::per_hour(nonzero(
                config.rooms_per_user_per_hour,
            ))),
        }
    }

    fn forget_idle(&self) {
        self.logins_per_user_ip.retain_recent();
        self.registrations_per_ip.retain_recent();
        self.writes_per_user.retain_recent();
        self.rooms_per_user.retain_recent();
    }

    fn tracked_keys(&self) -> usize {
        self.logins_per_user_ip.len()
            + self.registrations_per_ip.len()
            + self.writes_per_user.len()
            + self.rooms_per_user.len()
    }
}

/// The deployment-wide counters.
#[derive(Debug, Clone, Copy)]
enum Counted {
    LoginPerIp,
    LoginPerUserIp,
    LoginPerUser,
    RegistrationPerIp,
}

impl Counted {
    fn name(self) -> &'static str {
        match self {
            Counted::LoginPerIp => "login_per_ip",
            Counted::LoginPerUserIp => "login_per_user_ip",
            Counted::LoginPerUser => "login_per_user",
            Counted::RegistrationPerIp => "registration_per_ip",
        }
    }

    fn window(self) -> Duration {
        match self {
            Counted::RegistrationPerIp => Duration::from_secs(3600),
            _ => Duration::from_secs(60),
        }
    }
}

fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

/// The limits on room-scoped WebSocket frames (`config::RoomFrameLimits`): each frame over its
/// budget is answered `rate_limited` and changes nothing.
pub struct FrameLimits {
    changes_per_user: DefaultKeyedRateLimiter<UserId>,
    typing_per_user: DefaultKeyedRateLimiter<UserId>,
    presence_per_user: DefaultKeyedRateLimiter<UserId>,
    read_markers_per_user: DefaultKeyedRateLimiter<UserId>,
    joins_per_user: DefaultKeyedRateLimiter<UserId>,
    joins_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    metrics: Metrics,
}

/// A room-scoped frame that writes something, by the budget it draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameWrite {
    /// `edit` or `delete`.
    Change,
    Typing,
    Presence,
    ReadMarker,
    Join,
}

impl FrameLimits {
    pub fn new(config: &Config, metrics: Metrics) -> FrameLimits {
        let limits = &config.room_frames;
        FrameLimits {
            changes_per_user: keyed(limits.change_rate_per_user, limits.change_burst_per_user),
            typing_per_user: keyed(limits.typing_rate_per_user, limits.typing_burst_per_user),
            presence_per_user: keyed(
                limits.presence_rate_per_user,
                limits.presence_burst_per_user,
            ),
            read_markers_per_user: keyed(
                limits.read_marker_rate_per_user,
                limits.read_marker_burst_per_user,
            ),
            joins_per_user: keyed(limits.join_rate_per_user, limits.join_burst_per_user),
            joins_per_ip: keyed(limits.join_rate_per_ip, limits.join_burst_per_ip),
            clock: DefaultClock::default(),
            metrics,
        }
    }

    /// One `write` by `user` at `ip` (only joins are counted per IP as well).
    pub fn check(
        &self,
        write: FrameWrite,
        user: UserId,
        ip: Option<IpAddr>,
    ) -> Result<(), RetryAfter> {
        let (limiter, name) = match write {
            FrameWrite::Change => (&self.changes_per_user, "change_per_user"),
            FrameWrite::Typing => (&self.typing_per_user, "typing_per_user"),
            FrameWrite::Presence => (&self.presence_per_user, "presence_per_user"),
            FrameWrite::ReadMarker => (&self.read_markers_per_user, "read_marker_per_user"),
            FrameWrite::Join => (&self.joins_per_user, "join_per_user"),
        };
        self.check_key(limiter, &user, name)?;
        match (write, ip) {
            (FrameWrite::Join, Some(ip)) => self.check_key(&self.joins_per_ip, &ip, "join_per_ip"),
            _ => Ok(()),
        }
    }

    /// Forgets keys whose limits are back to full.
    pub fn forget_idle(&self) {
        self.changes_per_user.retain_recent();
        self.typing_per_user.retain_recent();
        self.presence_per_user.retain_recent();
        self.read_markers_per_user.retain_recent();
        self.joins_per_user.retain_recent();
        self.joins_per_ip.retain_recent();
    }

    fn check_key<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        name: &str,
    ) -> Result<(), RetryAfter> {
        check_keyed(limiter, key, name, &self.metrics, &self.clock)
    }
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

fn keyed<K: Hash + Eq + Clone>(rate: u32, burst: u32) -> DefaultKeyedRateLimiter<K> {
    RateLimiter::keyed(Quota::per_second(nonzero(rate)).allow_burst(nonzero(burst.max(rate))))
}

/// Calls [`FrameLimits::forget_idle`] every `period` until `stop` is cancelled.
pub async fn forget_idle_frames_every(
    limits: &FrameLimits,
    period: Duration,
    stop: CancellationToken,
) {
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
            "--login-attempts-per-user-ip",
            "1000000",
            "--memcached-servers=",
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
        assert_eq!(limits.check_login(Some(ip), "ada").await, Ok(()));
        assert_eq!(limits.tracked_keys(), 5);

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

    #[tokio::test]
    async fn busy_keys_are_kept() {
        // Without Memcached, this node's own limiters count.
        let config = Config::try_parse_from([
            "chat-server",
            "--login-attempts-per-ip",
            "1",
            "--memcached-servers=",
        ]);
        let limits = match config {
            Ok(config) => RateLimits::new(&config, Metrics::new()),
            Err(e) => panic!("{e}"),
        };
        let ip = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(limits.check_registration(Some(ip)).await, Ok(()));
        // A minute must pass before this address has its attempt back: it is remembered (and
        // an hour before its next registration).
        limits.forget_idle();
        assert_eq!(limits.tracked_keys(), 2);
        assert!(limits.check_registration(Some(ip)).await.is_err());
    }
}
