//! What the node keeps for one WebSocket connection beyond its tasks: the outbox its frames
//! wait in, bounded in bytes; why the node ends the connection, if it does; and whether the
//! peer is still there.
//!
//! Everything queued to a connection (room deliveries, the answers to its own frames, pings)
//! goes through its [`Outbox`], which counts the bytes waiting. A frame that would take them
//! past the budget ends the connection instead of being queued (close 1008): a client that does
//! not read what it is sent holds at most its budget, whatever it is sent and however it asked
//! for it. The writer releases a frame's bytes when it takes the frame out.
//!
//! A connection is ended by the node for one [`Ending`] at a time; the first one wins and
//! chooses the close frame. [`Liveness`] decides, from when the peer was last heard, whether
//! to ping it or to give up on it.

use crate::auth::SessionKey;
use crate::delivery::Frame;
use chat_protocol::limits::{CLOSE_SESSION_ENDED, CLOSE_SILENT};
use chat_protocol::UserId;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// What a queued frame costs beyond its text: its slot in the queue and its share of the
/// bookkeeping. Charged so that a flood of tiny frames is bounded too.
pub const FRAME_OVERHEAD_BYTES: usize = 64;

/// Why the node ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ending {
    /// Its outbox overflowed: the client does not read what it is sent fast enough.
    TooSlow = 1,
    /// Its session ended (logout, password change, expiry, revocation).
    SessionEnded = 2,
    /// The peer was silent (no frame, no pong) for longer than the timeout.
    Silent = 3,
}

impl Ending {
    fn from_u8(value: u8) -> Option<Ending> {
        match value {
            1 => Some(Ending::TooSlow),
            2 => Some(Ending::SessionEnded),
            3 => Some(Ending::Silent),
            _ => None,
        }
    }

    /// The close frame's code and reason.
    pub fn close_code(self) -> (CloseCode, &'static str) {
        match self {
            Ending::TooSlow => (CloseCode::Policy, "too slow to keep up"),
            Ending::SessionEnded => (CloseCode::from(CLOSE_SESSION_ENDED), "session ended"),
            Ending::Silent => (CloseCode::from(CLOSE_SILENT), "no answer to pings"),
        }
    }

    /// The label the node's metrics count it under.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::TooSlow => "too_slow",
            Ending::SessionEnded => "session_ended",
            Ending::Silent => "silent",
        }
    }
}

/// What waits in an outbox.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Frame),
    Ping,
}

impl Outgoing {
    fn cost(&self) -> usize {
        match self {
            Outgoing::Frame(frame) => frame.len() + FRAME_OVERHEAD_BYTES,
            Outgoing::Ping => FRAME_OVERHEAD_BYTES,
        }
    }
}

/// What the hub, the connection's reader and its writer share. One allocation per connection.
struct Shared {
    queued_bytes: AtomicUsize,
    budget_bytes: usize,
    ending: AtomicU8,
    /// Cancelled when the connection is to end (or the node stops: a child of its token).
    kick: CancellationToken,
}

/// The sending side of a connection: every frame for it is queued here.
#[derive(Clone)]
pub struct Outbox {
    items: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    user: UserId,
    session: SessionKey,
}

/// The writer's side of an outbox.
pub struct OutboxReceiver {
    items: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// An outbox holding at most `budget_bytes` for a connection of `user` in `session`, ended
    /// through `kick`.
    pub fn new(
        budget_bytes: usize,
        kick: CancellationToken,
        user: UserId,
        session: SessionKey,
    ) -> (Outbox, OutboxReceiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            budget_bytes,
            ending: AtomicU8::new(0),
            kick,
        });
        let outbox = Outbox {
            items: sender,
            shared: shared.clone(),
            user,
            session,
        };
        (
            outbox,
            OutboxReceiver {
                items: receiver,
                shared,
            },
        )
    }

    /// Queues a frame; false if the connection is ending, or is ended now because the frame
    /// does not fit in its budget.
    pub fn push(&self, frame: Frame) -> bool {
        self.queue(Outgoing::Frame(frame))
    }

    /// Queues a ping (the writer sends it as a WebSocket ping).
    pub fn ping(&self) -> bool {
        self.queue(Outgoing::Ping)
    }

    fn queue(&self, item: Outgoing) -> bool {
        if self.ending().is_some() {
            return false;
        }
        let cost = item.cost();
        let before = self.shared.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.shared.budget_bytes {
            self.shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            self.end(Ending::TooSlow);
            return false;
        }
        if self.items.send(item).is_err() {
            self.shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Ends the connection for `why`, unless it is already ending for another reason; true if
    /// this call ended it.
    pub fn end(&self, why: Ending) -> bool {
        let ended = self
            .shared
            .ending
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.shared.kick.cancel();
        ended
    }

    /// Why the node is ending the connection, if it is.
    pub fn ending(&self) -> Option<Ending> {
        Ending::from_u8(self.shared.ending.load(Ordering::Acquire))
    }

    pub fn user(&self) -> UserId {
        self.user
    }

    /// The session the connection was opened with.
    pub fn session(&self) -> SessionKey {
        self.session
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

impl OutboxReceiver {
    /// The next item; `None` once every outbox handle is gone.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let item = self.items.recv().await?;
        self.release(&item);
        Some(item)
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let item = self.items.try_recv().ok()?;
        self.release(&item);
        Some(item)
    }

    /// Why the node is ending the connection, if it is.
    pub fn ending(&self) -> Option<Ending> {
        Ending::from_u8(self.shared.ending.load(Ordering::Acquire))
    }

    fn release(&self, item: &Outgoing) {
        self.shared
            .queued_bytes
            .fetch_sub(item.cost(), Ordering::AcqRel);
    }
}

/// What a connection's silence calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Heard from recently.
    Fine,
    /// Quiet for a ping interval: ping it (a browser answers by itself).
    Ping,
    /// Quiet past the timeout: the peer is gone or does not answer.
    Dead,
}

/// When a connection's peer was last heard from (any frame, a pong included). Pure state; the
/// session's reader tells it what it hears and asks it every ping interval.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    last_heard: Instant,
}

impl Liveness {
    pub fn new(now: Instant) -> Liveness {
        Liveness { last_heard: now }
    }

    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// What a check at `now` finds, pinging after `ping_after` of silence and giving up after
    /// `timeout`.
    pub fn check(&self, now: Instant, ping_after: Duration, timeout: Duration) -> Silence {
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= timeout {
            Silence::Dead
        } else if silent >= ping_after {
            Silence::Ping
        } else {
            Silence::Fine
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(budget: usize) -> (Outbox, OutboxReceiver, CancellationToken) {
        let kick = CancellationToken::new();
        let (outbox, receiver) =
            Outbox::new(budget, kick.clone(), UserId(1), SessionKey::default());
        (outbox, receiver, kick)
    }

    #[test]
    fn the_budget_counts_bytes_and_the_writer_gives_them_back() {
        let frame = Frame::from("x".repeat(100 - FRAME_OVERHEAD_BYTES));
        let (outbox, mut receiver, kick) = outbox(300);
        for _ in 0..3 {
            assert!(outbox.push(frame.clone()));
        }
        assert_eq!(outbox.queued_bytes(), 300);
        assert!(receiver.try_recv().is_some());
        assert_eq!(outbox.queued_bytes(), 200);
        assert!(outbox.push(frame.clone()));
        assert!(!kick.is_cancelled());
        assert_eq!(outbox.ending(), None);
    }

    #[test]
    fn a_frame_past_the_budget_ends_the_connection_whatever_it_is() {
        let (outbox, mut receiver, kick) = outbox(1_000);
        assert!(outbox.push(Frame::from("a".repeat(500))));
        // One large reply is enough; nothing more is queued once the connection is ending.
        assert!(!outbox.push(Frame::from("b".repeat(500))));
        assert!(kick.is_cancelled());
        assert_eq!(receiver.ending(), Some(Ending::TooSlow));
        assert!(!outbox.push(Frame::from("c")));
        assert!(!outbox.ping());
        assert!(receiver.try_recv().is_some());
        assert!(receiver.try_recv().is_none());
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn tiny_frames_are_bounded_too() {
        let (outbox, _receiver, _kick) = outbox(64 * 1024);
        let queued = (0..10_000)
            .take_while(|_| outbox.push(Frame::from("")))
            .count();
        assert_eq!(queued, 1_024);
        assert_eq!(outbox.ending(), Some(Ending::TooSlow));
    }

    #[test]
    fn the_first_ending_decides_the_close() {
        let (outbox, receiver, _kick) = outbox(1_000);
        assert!(outbox.end(Ending::SessionEnded));
        assert!(!outbox.end(Ending::TooSlow));
        assert_eq!(receiver.ending(), Some(Ending::SessionEnded));
        assert_eq!(
            Ending::SessionEnded.close_code().0,
            CloseCode::from(CLOSE_SESSION_ENDED)
        );
        assert_eq!(u16::from(Ending::TooSlow.close_code().0), 1008);
    }

    #[test]
    fn a_silent_peer_is_pinged_then_dropped() {
        let start = Instant::now();
        let every = Duration::from_secs(30);
        let timeout = Duration::from_secs(60);
        let mut peer = Liveness::new(start);
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(peer.check(at(29), every, timeout), Silence::Fine);
        assert_eq!(peer.check(at(30), every, timeout), Silence::Ping);
        // Any frame, a pong included, counts as an answer.
        peer.heard(at(45));
        assert_eq!(peer.check(at(60), every, timeout), Silence::Fine);
        assert_eq!(peer.check(at(90), every, timeout), Silence::Ping);
        assert_eq!(peer.check(at(105), every, timeout), Silence::Dead);
    }
}
