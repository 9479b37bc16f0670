//! The delivery contract, checked on the core alone: an in-memory store, a hub, outboxes read
//! directly, tokio's clock paused (a read that never answers fails its deadline at once).
//!
//! Every member of a room gets each of the room's messages once and in sequence order, whatever
//! order the node queue brings them in, whatever it loses or brings twice, and across a resume
//! that races live deliveries; a slow member is disconnected, never waited for; a room whose
//! store read fails or hangs holds up nobody else.

use super::fake::{message, MemoryReads};
use super::hub::{DeliveredMessage, Hub};
use super::resume::{Joining, MAX_RESUME_MESSAGES};
use super::room_line::RoomLines;
use crate::auth::SessionKey;
use crate::connection::{Ending, Outbox, OutboxReceiver, Outgoing};
use crate::metrics::Metrics;
use chat_protocol::bus::Origin;
use chat_protocol::{RoomId, Seq, ServerFrame, UserId};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const NODE: &str = "node-1";
const ROOM: RoomId = RoomId(7);
const OTHER_ROOM: RoomId = RoomId(8);
/// An outbox no test fills.
const ROOMY: usize = 1 << 20;
/// How long a test waits for the core to finish what it started; on the paused clock, a wait
/// that would never end reaches it at once.
const DEADLINE: Duration = Duration::from_secs(30);

/// One node's delivery core over an in-memory store.
struct Node {
    hub: Arc<Hub>,
    store: Arc<MemoryReads>,
    lines: RoomLines<MemoryReads>,
    metrics: Metrics,
}

/// A connection and what it was sent.
struct Member {
    conn: u64,
    budget: usize,
    outbox: Outbox,
    frames: OutboxReceiver,
    kick: CancellationToken,
}

impl Node {
    fn new() -> Node {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(NODE.into(), metrics.clone()));
        let store = Arc::new(MemoryReads::default());
        let lines = RoomLines::new(hub.clone(), store.clone(), metrics.clone());
        Node {
            hub,
            store,
            lines,
            metrics,
        }
    }

    fn connect(&self, conn: u64, budget: usize) -> Member {
        let kick = CancellationToken::new();
        let (outbox, frames) = Outbox::new(budget, kick.clone(), UserId(1), SessionKey::default());
        self.hub.register(conn, outbox.clone());
        Member {
            conn,
            budget,
            outbox,
            frames,
            kick,
        }
    }

    fn joining<'a>(&'a self, room: RoomId, member: &Member) -> Joining<'a, MemoryReads> {
        Joining::new(&self.hub, &*self.store, room, member.conn)
    }

    /// A whole join, as a session makes it: `after` asks for a resume.
    async fn join(&self, room: RoomId, member: &Member, after: Option<i64>) {
        let joining = self.joining(room, member);
        let starting_seq = match joining.starting_seq().await {
            Ok(seq) => seq,
            Err(error) => panic!("the join's first read failed: {error}"),
        };
        joining.enter(starting_seq);
        let caught_up = joining.catch_up("room".into(), after.map(Seq), member.budget);
        if let Err(error) = caught_up.await {
            panic!("the join's catch-up failed: {error}");
        }
    }

    /// The node queue brings `seqs` of `room` as one batch, sent by `origin`'s connection.
    fn live_from(&mut self, room: RoomId, seqs: RangeInclusive<i64>, origin: Option<u64>) {
        let origin = origin.map(|conn_id| Origin {
            node_id: NODE.into(),
            conn_id,
        });
        let batch = seqs
            .map(|seq| DeliveredMessage::new(&message(room, seq), origin.clone()))
            .collect();
        self.lines.messages(room, batch);
    }

    fn live(&mut self, room: RoomId, seqs: RangeInclusive<i64>) {
        self.live_from(room, seqs, None);
    }

    /// Applies the room's gap reads as they finish, until it waits on none.
    async fn settle(&mut self, room: RoomId) {
        while self.lines.is_waiting(room) {
            match tokio::time::timeout(DEADLINE, self.lines.finished_read()).await {
                Ok(read) => self.lines.fill(read),
                Err(_) => panic!("room {room} still waits on the store"),
            }
        }
    }
}

impl Member {
    /// What the connection was sent since last asked, each frame as its type and sequence
    /// number (`joined` with the room's newest, and what it says of a resume).
    fn seen(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(item) = self.frames.try_recv() {
            let Outgoing::Frame(frame) = item else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap_or_default();
            let kind = value["type"].as_str().unwrap_or("unreadable").to_owned();
            let seq = value["seq"].as_i64().or(value["last_seq"].as_i64());
            let mut line = match seq {
                Some(seq) => format!("{kind} {seq}"),
                None => kind,
            };
            let resume = &value["resume"];
            if let (Some(after), Some(missed)) =
                (resume["after"].as_i64(), resume["missed"].as_i64())
            {
                line += &format!(" after {after} missed {missed}");
                if resume["complete"].as_bool() != Some(true) {
                    line += " incomplete";
                }
            }
            seen.push(line);
        }
        seen
    }
}

/// The frames of messages `seqs`, in that order.
fn messages(seqs: RangeInclusive<i64>) -> Vec<String> {
    seqs.map(|seq| format!("message {seq}")).collect()
}

fn joined(last_seq: i64) -> Vec<String> {
    vec![format!("joined {last_seq}")]
}

fn deleted(room: RoomId, seq: i64) -> ServerFrame {
    ServerFrame::MessageDeleted {
        room_id: room,
        seq: Seq(seq),
        deleted_by: UserId(1),
    }
}

#[tokio::test(start_paused = true)]
async fn deliveries_arriving_out_of_order_reach_every_member_in_order() {
    let mut node = Node::new();
    let (mut ann, mut bob) = (node.connect(1, ROOMY), node.connect(2, ROOMY));
    node.join(ROOM, &ann, None).await;
    node.join(ROOM, &bob, None).await;
    node.store.store_up_to(ROOM, 5);
    for seq in [3, 1, 2, 5, 4] {
        node.live(ROOM, seq..=seq);
    }
    node.settle(ROOM).await;
    for member in [&mut ann, &mut bob] {
        assert_eq!(member.seen(), [joined(0), messages(1..=5)].concat());
    }
}

#[tokio::test(start_paused = true)]
async fn a_gap_is_filled_from_the_store_and_a_change_waits_for_its_message() {
    let mut node = Node::new();
    let mut ann = node.connect(1, ROOMY);
    node.join(ROOM, &ann, None).await;
    node.store.store_up_to(ROOM, 4);
    node.live(ROOM, 1..=1);
    // 2 and 3 never come from the node queue; the delete of 4 comes before 4 itself is shown.
    node.live(ROOM, 4..=4);
    node.lines.change(ROOM, Seq(4), deleted(ROOM, 4));
    node.settle(ROOM).await;
    assert_eq!(
        ann.seen(),
        [joined(0), messages(1..=4), vec!["message_deleted 4".into()]].concat()
    );
    assert_eq!(node.metrics.messages_gap_filled.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_batch_is_dropped() {
    let mut node = Node::new();
    let (mut ann, mut bob) = (node.connect(1, ROOMY), node.connect(2, ROOMY));
    node.join(ROOM, &ann, None).await;
    node.join(ROOM, &bob, None).await;
    node.store.store_up_to(ROOM, 4);
    let reads = node.store.reads();
    node.live_from(ROOM, 1..=3, Some(ann.conn));
    // RabbitMQ brings the batch again (a persister died before its ack), then one overlapping it.
    node.live_from(ROOM, 1..=3, Some(ann.conn));
    node.live_from(ROOM, 2..=4, Some(ann.conn));
    node.settle(ROOM).await;
    assert_eq!(bob.seen(), [joined(0), messages(1..=4)].concat());
    let mut expected_by_sender = joined(0);
    for seq in 1..=4 {
        expected_by_sender.extend([format!("stored {seq}"), format!("message {seq}")]);
    }
    assert_eq!(ann.seen(), expected_by_sender);
    assert_eq!(node.store.reads(), reads, "nothing was missing: no read");
    assert_eq!(node.metrics.messages_delivered.get(), 8);
}

/// A client resumes after 2 while messages 6 to 8 are stored: some of them reach the node live
/// before the resume's read answers (held for the resuming client), the rest after it (the read
/// already had them).
#[tokio::test(start_paused = true)]
async fn a_resume_racing_live_frames_gets_every_seq_once_and_in_order() {
    for live_during_read in 0..=3 {
        let mut node = Node::new();
        let (mut ann, mut bob) = (node.connect(1, ROOMY), node.connect(2, ROOMY));
        node.join(ROOM, &ann, None).await;
        node.store.store_up_to(ROOM, 5);
        node.live(ROOM, 1..=5);

        // The store, the hub and the lines are borrowed apart: the join's read and the live
        // deliveries go on at once.
        let (hub, store, lines) = (&node.hub, &node.store, &mut node.lines);
        let joining = Joining::new(hub, &**store, ROOM, bob.conn);
        let starting_seq = match joining.starting_seq().await {
            Ok(seq) => seq,
            Err(error) => panic!("{error}"),
        };
        joining.enter(starting_seq);
        store.hold(ROOM);
        let reads_before = store.reads();
        let catch_up = joining.catch_up("room".into(), Some(Seq(2)), ROOMY);
        let live = async {
            assert_eq!(
                store.reads(),
                reads_before + 1,
                "the resume's read is under way"
            );
            store.store_up_to(ROOM, 8);
            for seq in 6..6 + live_during_read {
                lines.messages(ROOM, vec![DeliveredMessage::new(&message(ROOM, seq), None)]);
            }
            store.release(ROOM);
        };
        let (caught_up, ()) = tokio::join!(catch_up, live);
        if let Err(error) = caught_up {
            panic!("{error}");
        }
        node.store.store_up_to(ROOM, 9);
        node.live(ROOM, 6 + live_during_read..=9);
        node.settle(ROOM).await;

        assert_eq!(
            bob.seen(),
            [vec!["joined 8 after 2 missed 6".into()], messages(3..=9)].concat(),
            "{live_during_read} delivered live during the read"
        );
        assert_eq!(ann.seen(), [joined(0), messages(1..=9)].concat());
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_member_is_disconnected_while_the_others_keep_receiving() {
    let mut node = Node::new();
    let (mut ann, mut slow) = (node.connect(1, ROOMY), node.connect(2, 2_000));
    node.join(ROOM, &ann, None).await;
    node.join(ROOM, &slow, None).await;
    node.store.store_up_to(ROOM, 100);
    for seq in 1..=100 {
        node.live(ROOM, seq..=seq);
    }
    node.settle(ROOM).await;
    assert_eq!(ann.seen(), [joined(0), messages(1..=100)].concat());
    assert_eq!(ann.frames.ending(), None);
    assert_eq!(slow.frames.ending(), Some(Ending::TooSlow));
    assert!(
        slow.kick.is_cancelled(),
        "the slow member's tasks are told to end"
    );
    assert!(slow.outbox.queued_bytes() <= 2_000);
    // What it was sent is a prefix of the room, never one with a gap.
    let seen = slow.seen();
    assert!(seen.len() < 20, "stopped at its budget: {seen:?}");
    assert_eq!(
        seen,
        [joined(0), messages(1..=seen.len() as i64 - 1)].concat()
    );
}

#[tokio::test(start_paused = true)]
async fn a_room_whose_store_read_hangs_or_fails_holds_up_no_other_room() {
    let mut node = Node::new();
    let (mut ann, mut bob) = (node.connect(1, ROOMY), node.connect(2, ROOMY));
    node.join(ROOM, &ann, None).await;
    node.join(OTHER_ROOM, &bob, None).await;
    node.store.store_up_to(ROOM, 4);
    node.store.store_up_to(OTHER_ROOM, 3);

    node.store.hold(ROOM);
    node.live(ROOM, 3..=3);
    node.live(OTHER_ROOM, 1..=1);
    node.live(OTHER_ROOM, 3..=3);
    node.settle(OTHER_ROOM).await;
    assert_eq!(bob.seen(), [joined(0), messages(1..=3)].concat());
    assert!(
        node.lines.is_waiting(ROOM),
        "the hung read is still under way"
    );
    assert_eq!(ann.seen(), joined(0));

    // The read fails at last: what the room held goes out as it is, and the missing messages
    // are left to the client's resume.
    node.live(ROOM, 4..=4);
    node.store.fail(ROOM);
    node.store.release(ROOM);
    node.settle(ROOM).await;
    assert_eq!(ann.seen(), messages(3..=4));
    node.live(OTHER_ROOM, 4..=4);
    node.store.store_up_to(OTHER_ROOM, 4);
    node.settle(OTHER_ROOM).await;
    assert_eq!(bob.seen(), messages(4..=4));
}

#[tokio::test(start_paused = true)]
async fn after_a_reconnect_every_local_room_reads_what_it_missed() {
    let mut node = Node::new();
    let (mut ann, mut bob) = (node.connect(1, ROOMY), node.connect(2, ROOMY));
    node.join(ROOM, &ann, None).await;
    node.join(OTHER_ROOM, &bob, None).await;
    node.store.store_up_to(ROOM, 3);
    node.store.store_up_to(OTHER_ROOM, 2);
    node.lines.resync();
    node.settle(ROOM).await;
    node.settle(OTHER_ROOM).await;
    assert_eq!(ann.seen(), [joined(0), messages(1..=3)].concat());
    assert_eq!(bob.seen(), [joined(0), messages(1..=2)].concat());
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_cannot_be_sent_whole_says_so_and_goes_live() {
    let mut node = Node::new();
    let (mut ann, mut bob) = (node.connect(1, ROOMY), node.connect(2, 4_000));
    let newest = MAX_RESUME_MESSAGES + 5;
    node.store.store_up_to(ROOM, newest);
    // More than a resume sends at all.
    node.join(ROOM, &ann, Some(2)).await;
    // Fewer, but more than half of the connection's outbox.
    node.join(ROOM, &bob, Some(newest - 30)).await;
    node.store.store_up_to(ROOM, newest + 1);
    node.live(ROOM, newest + 1..=newest + 1);
    node.settle(ROOM).await;
    assert_eq!(
        ann.seen(),
        [
            format!("joined {newest} after 2 missed {}", newest - 2) + " incomplete",
            format!("message {}", newest + 1),
        ]
    );
    assert_eq!(
        bob.seen(),
        [
            format!("joined {newest} after {} missed 30 incomplete", newest - 30),
            format!("message {}", newest + 1),
        ]
    );
    assert_eq!(
        bob.frames.ending(),
        None,
        "a resume never trips the slow-client rule"
    );
}
