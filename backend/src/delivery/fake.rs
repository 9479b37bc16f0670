//! An in-memory store for the delivery core's tests: rooms of messages, and rooms whose reads
//! fail or wait until released.

use super::reads::RoomReads;
use crate::store::{CatchUp, CatchUpRequest};
use chat_protocol::{ChatMessage, ClientMsgId, RoomId, Seq, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Semaphore;

#[derive(Default)]
pub struct MemoryReads {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomId, Vec<ChatMessage>>,
    failing: HashSet<RoomId>,
    /// Rooms whose reads wait until the semaphore is closed.
    held: HashMap<RoomId, Arc<Semaphore>>,
    reads: usize,
}

/// The fake's only error: the store is away.
#[derive(Debug)]
pub struct StoreAway;

impl std::fmt::Display for StoreAway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the store is away")
    }
}

/// A stored message of `room` numbered `seq`.
pub fn message(room: RoomId, seq: i64) -> ChatMessage {
    ChatMessage {
        room_id: room,
        seq: Seq(seq),
        sender_id: UserId(1),
        sender_name: "ann".into(),
        client_msg_id: ClientMsgId(format!("{room}-{seq}")),
        body: format!("message {seq}"),
        sent_at_ms: 0,
        edited_at_ms: None,
        deleted: false,
    }
}

impl MemoryReads {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::locks::lock(&self.state)
    }

    /// Stores the room's messages up to `seq` (numbered on from the last one stored).
    pub fn store_up_to(&self, room: RoomId, seq: i64) {
        let mut state = self.state();
        let messages = state.rooms.entry(room).or_default();
        let next = messages.last().map_or(1, |last| last.seq.0 + 1);
        messages.extend((next..=seq).map(|seq| message(room, seq)));
    }

    /// Reads of the room fail from now on.
    pub fn fail(&self, room: RoomId) {
        self.state().failing.insert(room);
    }

    /// Reads of the room wait from now on, until [`MemoryReads::release`].
    pub fn hold(&self, room: RoomId) {
        self.state().held.insert(room, Arc::new(Semaphore::new(0)));
    }

    /// Lets the room's waiting reads (and later ones) go on.
    pub fn release(&self, room: RoomId) {
        if let Some(gate) = self.state().held.remove(&room) {
            gate.close();
        }
    }

    /// How many reads were asked of the store.
    pub fn reads(&self) -> usize {
        self.state().reads
    }

    /// Waits while the room is held, then answers from what is stored at that moment.
    async fn read<T>(
        &self,
        room: RoomId,
        answer: impl FnOnce(&[ChatMessage]) -> T,
    ) -> Result<T, StoreAway> {
        let gate = {
            let mut state = self.state();
            state.reads += 1;
            state.held.get(&room).cloned()
        };
        if let Some(gate) = gate {
            // Closed on release: the read goes on.
            let _ = gate.acquire().await;
        }
        let state = self.state();
        if state.failing.contains(&room) {
            return Err(StoreAway);
        }
        let messages = state.rooms.get(&room).map_or(&[][..], Vec::as_slice);
        Ok(answer(messages))
    }
}

fn newest(messages: &[ChatMessage]) -> Seq {
    messages.last().map_or(Seq(0), |last| last.seq)
}

impl RoomReads for MemoryReads {
    type Error = StoreAway;

    async fn last_seq(&self, room: RoomId) -> Result<Seq, StoreAway> {
        self.read(room, newest).await
    }

    async fn catch_up(&self, request: CatchUpRequest) -> Result<CatchUp, StoreAway> {
        self.read(request.room, |messages| {
            let last_seq = newest(messages);
            let missed = match request.after {
                Some(after) if last_seq.0 - after.0 <= request.max_missed => messages
                    .iter()
                    .filter(|message| message.seq > after)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            CatchUp { last_seq, missed }
        })
        .await
    }

    async fn messages_after(
        &self,
        room: RoomId,
        after: Seq,
        limit: i64,
    ) -> Result<Vec<ChatMessage>, StoreAway> {
        self.read(room, |messages| {
            messages
                .iter()
                .filter(|message| message.seq > after)
                .take(usize::try_from(limit).unwrap_or(0))
                .cloned()
                .collect()
        })
        .await
    }
}
