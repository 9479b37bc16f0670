//! What tests observe, and the checks they make on it: one helper per kind of check.

use crate::{TestDb, WsClient, DEADLINE};
use anyhow::bail;
use chat_protocol::{ChatMessage, ErrorCode, RoomId, ServerFrame};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Everything one client has been told, frame by frame.
#[derive(Debug, Default)]
pub struct Observed {
    pub messages: Vec<ChatMessage>,
    pub accepted: HashSet<String>,
    pub refused: HashMap<String, ErrorCode>,
    pub stored: HashMap<String, i64>,
}

impl Observed {
    pub fn record(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Message(message) => self.messages.push(message),
            ServerFrame::Accepted { client_msg_id, .. } => {
                self.accepted.insert(client_msg_id.0);
            }
            ServerFrame::Stored {
                client_msg_id, seq, ..
            } => {
                self.stored.insert(client_msg_id.0, seq.0);
            }
            ServerFrame::Error {
                code,
                client_msg_id: Some(id),
                ..
            } => {
                self.refused.insert(id.0, code);
            }
            _ => {}
        }
    }

    /// The client message ids of a room's messages, in the order they arrived.
    pub fn room_ids(&self, room: RoomId) -> Vec<(i64, String)> {
        self.messages
            .iter()
            .filter(|m| m.room_id == room)
            .map(|m| (m.seq.0, m.client_msg_id.0.clone()))
            .collect()
    }

    /// Client message ids delivered in any room.
    pub fn delivered_ids(&self) -> HashSet<String> {
        self.messages
            .iter()
            .map(|m| m.client_msg_id.0.clone())
            .collect()
    }
}

impl WsClient {
    /// Sends `count` messages to `room`, with the ids `<prefix>-0`, `<prefix>-1`, … and the body
    /// `prefix`; returns the ids.
    pub async fn send_batch(
        &mut self,
        room: RoomId,
        prefix: &str,
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(count);
        for index in 0..count {
            let id = format!("{prefix}-{index}");
            self.send_message(room, &id, prefix).await?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Records frames until `done` holds, failing after [`DEADLINE`] without progress.
    pub async fn observe_until(
        &mut self,
        observed: &mut Observed,
        mut done: impl FnMut(&Observed) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE * 3;
        while !done(observed) {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "condition not reached: {} messages, {} accepted, {} refused",
                    observed.messages.len(),
                    observed.accepted.len(),
                    observed.refused.len()
                );
            }
            let frame = self.recv().await?;
            observed.record(frame);
        }
        Ok(())
    }
}

#[derive(QueryableByName)]
struct StoredRow {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    client_msg_id: String,
}

/// A room's stored messages as (seq, client message id), in sequence order.
pub async fn stored_messages(db: &TestDb, room: RoomId) -> anyhow::Result<Vec<(i64, String)>> {
    stored_messages_at(&db.url, room).await
}

/// [`stored_messages`] of the database at `url`.
pub async fn stored_messages_at(url: &str, room: RoomId) -> anyhow::Result<Vec<(i64, String)>> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url)?;
        Ok(diesel::sql_query(
            "SELECT seq, client_msg_id FROM messages WHERE room_id = $1 ORDER BY seq",
        )
        .bind::<BigInt, _>(room.0)
        .load::<StoredRow>(&mut conn)?
        .into_iter()
        .map(|row| (row.seq, row.client_msg_id))
        .collect())
    })
    .await?
}

/// Sequence numbers are 1, 2, 3, … with nothing missing and nothing twice.
pub fn assert_gapless(what: &str, rows: &[(i64, String)]) {
    let seqs: Vec<i64> = rows.iter().map(|(seq, _)| *seq).collect();
    let expected: Vec<i64> = (1..=rows.len() as i64).collect();
    assert_eq!(
        seqs, expected,
        "{what}: sequence numbers must be 1..=n in order"
    );
    let ids: HashSet<&String> = rows.iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids.len(),
        rows.len(),
        "{what}: a client message id appears twice"
    );
}

/// Every id accepted by some sender is among the stored ones.
pub fn assert_all_accepted_stored(accepted: &HashSet<String>, stored: &[(i64, String)]) {
    let stored: HashSet<&String> = stored.iter().map(|(_, id)| id).collect();
    let lost: Vec<&String> = accepted.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "accepted but never stored: {lost:?}");
}

/// Groups a receiver's view by room for comparison with the store.
pub fn by_room(observed: &Observed) -> BTreeMap<RoomId, Vec<(i64, String)>> {
    let mut rooms: BTreeMap<RoomId, Vec<(i64, String)>> = BTreeMap::new();
    for message in &observed.messages {
        rooms
            .entry(message.room_id)
            .or_default()
            .push((message.seq.0, message.client_msg_id.0.clone()));
    }
    rooms
}
