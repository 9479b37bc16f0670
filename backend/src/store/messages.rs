//! Storing batches of messages and reading them back.

use super::{Store, StoreError};
use chat_protocol::limits::MAX_UNREAD_COUNT;
use chat_protocol::{ChatMessage, ClientMsgId, RoomId, Seq, UserId};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use std::collections::HashMap;

/// A message row as read back.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StoredRow {
    #[diesel(sql_type = BigInt)]
    pub room_id: i64,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = BigInt)]
    pub sender_id: i64,
    #[diesel(sql_type = Text)]
    pub sender_name: String,
    #[diesel(sql_type = Text)]
    pub client_msg_id: String,
    #[diesel(sql_type = Text)]
    pub body: String,
    #[diesel(sql_type = Timestamptz)]
    pub sent_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub edited_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The columns every message read selects, for `FROM messages m JOIN users u`.
pub(super) const MESSAGE_COLUMNS: &str =
    "m.room_id, m.seq, m.sender_id, u.display_name AS sender_name, \
     m.client_msg_id, m.body, m.sent_at, m.edited_at, m.deleted_at";

impl StoredRow {
    pub fn into_message(self) -> ChatMessage {
        ChatMessage {
            room_id: RoomId(self.room_id),
            seq: Seq(self.seq),
            sender_id: UserId(self.sender_id),
            sender_name: self.sender_name,
            client_msg_id: ClientMsgId(self.client_msg_id),
            body: self.body,
            sent_at_ms: self.sent_at.timestamp_millis(),
            edited_at_ms: self.edited_at.map(|at| at.timestamp_millis()),
            deleted: self.deleted_at.is_some(),
        }
    }
}

/// What an edit or delete changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Changed at this time.
    Changed { at_ms: i64 },
    /// No such message in the room, or already deleted.
    NotFound,
    /// The message is someone else's (and, for deletes, the caller does not own the room).
    NotAllowed,
}

/// A member's read state after moving the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct ReadState {
    #[diesel(sql_type = BigInt)]
    pub last_seq: i64,
    #[diesel(sql_type = BigInt)]
    pub last_read_seq: i64,
    #[diesel(sql_type = BigInt)]
    pub unread: i64,
}

#[derive(QueryableByName)]
struct SenderRow {
    #[diesel(sql_type = BigInt)]
    sender_id: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    deleted_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct ChangedRow {
    #[diesel(sql_type = Timestamptz)]
    at: DateTime<Utc>,
}

/// A join's read: the room's newest sequence number, and what the client missed after `after`
/// if that is at most `max_missed` messages.
#[derive(Debug, Clone, Copy)]
pub struct CatchUpRequest {
    pub room: RoomId,
    pub after: Option<Seq>,
    pub max_missed: i64,
}

/// The answer to a [`CatchUpRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The room's newest sequence number (0 for a room that does not exist or has no messages).
    pub last_seq: Seq,
    /// The messages after `after` up to `last_seq`, oldest first; empty when nothing was missed,
    /// when `after` was not given, or when more than `max_missed` were.
    pub missed: Vec<ChatMessage>,
}

/// The newest sequence number of each of `rooms` that exists, in one query.
pub(super) fn last_seqs(
    conn: &mut super::DbConnection,
    rooms: &[RoomId],
) -> diesel::QueryResult<HashMap<RoomId, Seq>> {
    let ids: Vec<i64> = rooms.iter().map(|room| room.0).collect();
    let rows = diesel::sql_query("SELECT id, last_seq FROM rooms WHERE id = ANY($1::bigint[])")
        .bind::<diesel::sql_types::Array<BigInt>, _>(ids)
        .load::<super::persist::RoomSeqRow>(conn)?;
    Ok(rows
        .into_iter()
        .map(|row| (RoomId(row.id), Seq(row.last_seq)))
        .collect())
}

/// Answers a batch of catch-ups with two queries: the rooms' newest sequence numbers, then
/// every missed message of every room at once (from the lowest `after` asked of each room).
pub(super) fn catch_ups(
    conn: &mut super::DbConnection,
    requests: Vec<CatchUpRequest>,
) -> Result<Vec<CatchUp>, StoreError> {
    let mut rooms: Vec<RoomId> = requests.iter().map(|request| request.room).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let newest = last_seqs(conn, &rooms)?;
    let last_of = |room: RoomId| newest.get(&room).copied().unwrap_or(Seq(0));
    let wanted = |request: &CatchUpRequest| -> Option<Seq> {
        let after = request.after?;
        let missed = last_of(request.room).0 - after.0;
        (missed > 0 && missed <= request.max_missed).then_some(after)
    };
    // Per room, the lowest `after` anyone asked from and the newest sequence number.
    let mut from: HashMap<RoomId, Seq> = HashMap::new();
    for request in &requests {
        if let Some(after) = wanted(request) {
            from.entry(request.room)
                .and_modify(|lowest| *lowest = (*lowest).min(after))
                .or_insert(after);
        }
    }
    let mut by_room: HashMap<RoomId, Vec<ChatMessage>> = HashMap::new();
    if !from.is_empty() {
        let (ids, afters, uptos): (Vec<i64>, Vec<i64>, Vec<i64>) = from
            .iter()
            .map(|(&room, &after)| (room.0, after.0, last_of(room).0))
            .fold(
                (vec![], vec![], vec![]),
                |(mut i, mut a, mut u), (id, after, upto)| {
                    i.push(id);
                    a.push(after);
                    u.push(upto);
                    (i, a, u)
                },
            );
        let rows = diesel::sql_query(format!(
            "SELECT {MESSAGE_COLUMNS} \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS w(room_id, after, upto) \
             JOIN messages m ON m.room_id = w.room_id AND m.seq > w.after AND m.seq <= w.upto \
             JOIN users u ON u.id = m.sender_id \
             ORDER BY m.room_id, m.seq"
        ))
        .bind::<diesel::sql_types::Array<BigInt>, _>(ids)
        .bind::<diesel::sql_types::Array<BigInt>, _>(afters)
        .bind::<diesel::sql_types::Array<BigInt>, _>(uptos)
        .load::<StoredRow>(conn)?;
        for row in rows {
            by_room
                .entry(RoomId(row.room_id))
                .or_default()
                .push(row.into_message());
        }
    }
    Ok(requests
        .iter()
        .map(|request| {
            let last_seq = last_of(request.room);
            let missed = match (wanted(request), by_room.get(&request.room)) {
                (Some(after), Some(messages)) => messages
                    .iter()
                    .filter(|message| message.seq > after)
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            CatchUp { last_seq, missed }
        })
        .collect())
}

impl Store {
    /// A join's catch-up, batched with the others waiting at the same moment.
    pub async fn catch_up(&self, request: CatchUpRequest) -> Result<CatchUp, StoreError> {
        self.batches
            .catch_ups
            .get(&self.connections, request, catch_ups)
            .await
    }

    /// Messages of a room with a sequence number above `after`, oldest first.
    pub async fn messages_after(
        &self,
        room_id: RoomId,
        after: Seq,
        limit: i64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.run(move |conn| {
            let rows = diesel::sql_query(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id \
                 WHERE m.room_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3"
            ))
            .bind::<BigInt, _>(room_id.0)
            .bind::<BigInt, _>(after.0)
            .bind::<BigInt, _>(limit)
            .load::<StoredRow>(conn)?;
            Ok(rows.into_iter().map(StoredRow::into_message).collect())
        })
        .await
    }

    /// The `limit` messages of a room right below `before` (the newest ones without it), oldest
    /// first.
    pub async fn messages_before(
        &self,
        room_id: RoomId,
        before: Option<Seq>,
        limit: i64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.run(move |conn| {
            let rows = diesel::sql_query(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id \
                 WHERE m.room_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"
            ))
            .bind::<BigInt, _>(room_id.0)
            .bind::<BigInt, _>(before.map_or(i64::MAX, |seq| seq.0))
            .bind::<BigInt, _>(limit)
            .load::<StoredRow>(conn)?;
            Ok(rows
                .into_iter()
                .rev()
                .map(StoredRow::into_message)
                .collect())
        })
        .await
    }

    /// Replaces the body of `editor`'s own message.
    pub async fn edit_message(
        &self,
        room_id: RoomId,
        seq: Seq,
        editor: UserId,
        body: String,
    ) -> Result<ChangeOutcome, StoreError> {
        self.run(move |conn| {
            change_checked(
                conn,
                room_id,
                seq,
                |sender| sender == editor.0,
                |conn| {
                    diesel::sql_query(
                        "UPDATE messages SET body = $3, edited_at = now() \
                         WHERE room_id = $1 AND seq = $2 RETURNING edited_at AS at",
                    )
                    .bind::<BigInt, _>(room_id.0)
                    .bind::<BigInt, _>(seq.0)
                    .bind::<Text, _>(&body)
                    .get_result::<ChangedRow>(conn)
                },
            )
        })
        .await
    }

    /// Deletes a message: its sender may, and so may the room's owners (`is_owner`).
    pub async fn delete_message(
        &self,
        room_id: RoomId,
        seq: Seq,
        by: UserId,
        is_owner: bool,
    ) -> Result<ChangeOutcome, StoreError> {
        self.run(move |conn| {
            change_checked(
                conn,
                room_id,
                seq,
                |sender| sender == by.0 || is_owner,
                |conn| {
                    diesel::sql_query(
                        "UPDATE messages SET body = '', deleted_at = now(), deleted_by = $3 \
                         WHERE room_id = $1 AND seq = $2 RETURNING deleted_at AS at",
                    )
                    .bind::<BigInt, _>(room_id.0)
                    .bind::<BigInt, _>(seq.0)
                    .bind::<BigInt, _>(by.0)
                    .get_result::<ChangedRow>(conn)
                },
            )
        })
        .await
    }

    /// Moves a member's read marker forward to `seq` (never past the room's newest message,
    /// never back). `None` if the user is not a member.
    pub async fn mark_read(
        &self,
        room_id: RoomId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<ReadState>, StoreError> {
        self.run(move |conn| {
            let state = diesel::sql_query(
                "WITH moved AS ( \
                   UPDATE memberships ms \
                   SET last_read_seq = GREATEST(ms.last_read_seq, LEAST($3, r.last_seq)) \
                   FROM rooms r WHERE r.id = ms.room_id AND ms.room_id = $1 AND ms.user_id = $2 \
                   RETURNING ms.last_read_seq, r.last_seq) \
                 SELECT moved.last_seq, moved.last_read_seq, \
                        (SELECT count(*) FROM (SELECT 1 FROM messages m WHERE m.room_id = $1 \
                           AND m.seq > moved.last_read_seq AND m.sender_id <> $2 \
                           AND m.deleted_at IS NULL LIMIT $4) capped) AS unread \
                 FROM moved",
            )
            .bind::<BigInt, _>(room_id.0)
            .bind::<BigInt, _>(user.0)
            .bind::<BigInt, _>(seq.0.max(0))
            .bind::<BigInt, _>(MAX_UNREAD_COUNT)
            .get_result::<ReadState>(conn)
            .optional()?;
            Ok(state)
        })
        .await
    }

    /// The read state of every room the user is in, by room. Each room's count stops at
    /// [`MAX_UNREAD_COUNT`]: the index scan of `messages` behind it ends there, so the room list
    /// costs the same whatever the backlog.
    pub async fn read_states(
        &self,
        user: UserId,
    ) -> Result<HashMap<RoomId, ReadState>, StoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            room_id: i64,
            #[diesel(embed)]
            state: ReadState,
        }
        self.run(move |conn| {
            let rows = diesel::sql_query(READ_STATES_SQL)
                .bind::<BigInt, _>(user.0)
                .bind::<BigInt, _>(MAX_UNREAD_COUNT)
                .load::<Row>(conn)?;
            Ok(rows
                .into_iter()
                .map(|row| (RoomId(row.room_id), row.state))
                .collect())
        })
        .await
    }
}

/// The read state of each room of user `$1`, unread counts capped at `$2`; public so the tests
/// can show its plan.
pub const READ_STATES_SQL: &str = "SELECT ms.room_id, r.last_seq, ms.last_read_seq, \
       (SELECT count(*) FROM (SELECT 1 FROM messages m WHERE m.room_id = ms.room_id \
          AND m.seq > ms.last_read_seq AND m.sender_id <> $1 \
          AND m.deleted_at IS NULL LIMIT $2) capped) AS unread \
     FROM memberships ms JOIN rooms r ON r.id = ms.room_id \
     WHERE ms.user_id = $1";

/// In one transaction: locks the message, refuses a missing or deleted one and one `may` does
/// not allow (given its sender), then applies `update`.
fn change_checked(
    conn: &mut PgConnection,
    room_id: RoomId,
    seq: Seq,
    may: impl FnOnce(i64) -> bool,
    update: impl FnOnce(&mut PgConnection) -> Result<ChangedRow, diesel::result::Error>,
) -> Result<ChangeOutcome, StoreError> {
    conn.transaction(|conn| {
        let Some(row) = sender_of(conn, room_id, seq)? else {
            return Ok(ChangeOutcome::NotFound);
        };
        if row.deleted_at.is_some() {
            return Ok(ChangeOutcome::NotFound);
        }
        if !may(row.sender_id) {
            return Ok(ChangeOutcome::NotAllowed);
        }
        let changed = update(conn)?;
        Ok(ChangeOutcome::Changed {
            at_ms: changed.at.timestamp_millis(),
        })
    })
}

fn sender_of(
    conn: &mut PgConnection,
    room_id: RoomId,
    seq: Seq,
) -> Result<Option<SenderRow>, diesel::result::Error> {
    diesel::sql_query(
        "SELECT sender_id, deleted_at FROM messages WHERE room_id = $1 AND seq = $2 FOR UPDATE",
    )
    .bind::<BigInt, _>(room_id.0)
    .bind::<BigInt, _>(seq.0)
    .get_result::<SenderRow>(conn)
    .optional()
}
