//! How long a connection trusts a room membership it has confirmed, and renewing that trust
//! ahead of time so that sends do not wait for it.
//!
//! Leaving a room takes the user's connections out of it in the hub: at once on the node that
//! served the leave, on the others when `MemberLeft` arrives. A send also checks the
//! membership again when the room's last confirmation is older than the re-check interval
//! (`CHAT_MEMBERSHIP_RECHECK_MS`), which bounds how long sends could pass if that notice were
//! lost. Checked on the send itself, every active user's send would wait for a lookup once per
//! interval, and every user who joined at the same moment would do so in the same instant.
//! So a send on a confirmation older than half the interval starts a renewal in the background
//! and goes on: it is still inside the interval, and no send ever passes on an older
//! confirmation than before. Only a user who sends less than once per half interval, or whose
//! renewal found the membership gone or failed, is checked on the send.
//!
//! Deliveries and the other room-scoped frames follow the hub, so a lost notice must not leave
//! a former member in a room there: every interval, [`recheck_every`] reads all the memberships
//! of the node's joined connections in one query and ends the rooms whose membership is gone
//! (`left` to each of the user's connections in it), whatever the connection does meanwhile.

use crate::app::App;
use crate::watch;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// What a send may assume about the membership of its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Confirmed recently enough.
    Trusted,
    /// Still trusted, and the caller should renew it now: it is the only one told so until
    /// the renewal reports back.
    TrustedRenewNow,
    /// Too old, or a renewal found the membership gone: check before the send.
    CheckNow,
}

/// One connection's confirmation of one room membership, shared with the renewal in flight.
#[derive(Debug)]
pub struct Confirmation {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    confirmed_at: Instant,
    renewing: bool,
    revoked: bool,
}

impl Confirmation {
    /// A membership confirmed by a check that started at `at`.
    pub fn new(at: Instant) -> Arc<Confirmation> {
        Arc::new(Confirmation {
            state: Mutex::new(State {
                confirmed_at: at,
                renewing: false,
                revoked: false,
            }),
        })
    }

    /// What a send at `now` may assume, with confirmations trusted for `recheck`.
    pub fn trust(&self, now: Instant, recheck: Duration) -> Trust {
        let mut state = self.state();
        if state.revoked {
            return Trust::CheckNow;
        }
        let age = now.saturating_duration_since(state.confirmed_at);
        if age >= recheck {
            return Trust::CheckNow;
        }
        if age >= recheck / 2 && !state.renewing {
            state.renewing = true;
            return Trust::TrustedRenewNow;
        }
        Trust::Trusted
    }

    /// A renewal that started at `started` found the user a member.
    pub fn renewed(&self, started: Instant) {
        let mut state = self.state();
        state.confirmed_at = state.confirmed_at.max(started);
        state.renewing = false;
    }

    /// A renewal found the user no longer a member: the next send checks, and is refused.
    pub fn revoked(&self) {
        let mut state = self.state();
        state.revoked = true;
        state.renewing = false;
    }

    /// A renewal could not check: the confirmation ages on, and a later send tries again.
    pub fn renewal_failed(&self) {
        self.state().renewing = false;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The node's lock policy (`crate::locks`): three plain fields, each write complete.
        crate::locks::lock(&self.state)
    }
}

/// Every `CHAT_MEMBERSHIP_RECHECK_MS`, ends the rooms of local connections whose user is no
/// longer a member (one query per interval for the whole node), until the node stops.
pub async fn recheck_every(app: Arc<App>) {
    let period = Duration::from_millis(app.config.membership_recheck_ms.max(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = ticks.tick() => recheck(&app).await,
        }
    }
}

async fn recheck(app: &App) {
    let pairs = app.hub.memberships();
    if pairs.is_empty() {
        return;
    }
    app.metrics
        .membership_checks
        .with_label_values(&["node"])
        .inc();
    let current = match app.store.roles(pairs.clone()).await {
        Ok(current) => current,
        Err(error) => {
            tracing::warn!(%error, "could not re-check the memberships of joined rooms");
            return;
        }
    };
    let mut ended = HashSet::new();
    for (room, user) in pairs {
        if current.contains_key(&(room, user)) {
            continue;
        }
        tracing::info!(%room, %user, "membership ended without notice; leaving the room");
        app.hub.remove_user(room, user);
        app.watching.forget_room(user, room);
        ended.insert(room);
    }
    watch::settle_rooms(app, ended.into_iter().collect()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECHECK: Duration = Duration::from_secs(10);

    #[test]
    fn a_fresh_confirmation_is_trusted_then_renewed_once_then_checked() {
        let start = Instant::now();
        let confirmation = Confirmation::new(start);
        assert_eq!(confirmation.trust(start, RECHECK), Trust::Trusted);
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(4), RECHECK),
            Trust::Trusted
        );
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(5), RECHECK),
            Trust::TrustedRenewNow
        );
        // One renewal at a time: later sends go on without starting another.
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(6), RECHECK),
            Trust::Trusted
        );
        // A renewal that never reports back does not stretch the interval.
        assert_eq!(
            confirmation.trust(start + RECHECK, RECHECK),
            Trust::CheckNow
        );
    }

    #[test]
    fn a_renewal_moves_the_confirmation_to_when_it_started() {
        let start = Instant::now();
        let confirmation = Confirmation::new(start);
        let renewal = start + Duration::from_secs(6);
        assert_eq!(confirmation.trust(renewal, RECHECK), Trust::TrustedRenewNow);
        confirmation.renewed(renewal);
        assert_eq!(confirmation.trust(start + RECHECK, RECHECK), Trust::Trusted);
        assert_eq!(
            confirmation.trust(renewal + Duration::from_secs(5), RECHECK),
            Trust::TrustedRenewNow
        );
        assert_eq!(
            confirmation.trust(renewal + RECHECK, RECHECK),
            Trust::CheckNow
        );
    }

    #[test]
    fn a_late_renewal_never_moves_the_confirmation_back() {
        let start = Instant::now();
        let confirmation = Confirmation::new(start + Duration::from_secs(3));
        confirmation.renewed(start);
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(7), RECHECK),
            Trust::Trusted
        );
    }

    #[test]
    fn a_revoked_membership_is_checked_by_the_next_send() {
        let start = Instant::now();
        let confirmation = Confirmation::new(start);
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(5), RECHECK),
            Trust::TrustedRenewNow
        );
        confirmation.revoked();
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(5), RECHECK),
            Trust::CheckNow
        );
    }

    #[test]
    fn a_failed_renewal_lets_a_later_send_try_again() {
        let start = Instant::now();
        let confirmation = Confirmation::new(start);
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(5), RECHECK),
            Trust::TrustedRenewNow
        );
        confirmation.renewal_failed();
        assert_eq!(
            confirmation.trust(start + Duration::from_secs(6), RECHECK),
            Trust::TrustedRenewNow
        );
    }
}
