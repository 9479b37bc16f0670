//! Storing batches of messages and reading them back.

use super::{Store, StoreError};
use chat_protocol::bus::IngestMessage;
use chat_protocol::{ChatMessage, ClientMsgId, RoomId, Seq, UserId};
use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use std::collections::{HashMap, HashSet};

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Stored now, with its new sequence number.
    Stored(ChatMessage),
    /// Stored earlier (by an earlier batch or earlier in this one): the original.
    Duplicate(ChatMessage),
    /// Can never be stored, for this reason.
    Rejected(String),
}

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
const MESSAGE_COLUMNS: &str = "m.room_id, m.seq, m.sender_id, u.display_name AS sender_name, \
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

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct RoomSeqRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    last_seq: i64,
}

impl Store {
    /// Stores a batch in one transaction: drops resends, assigns each room's next sequence
    /// numbers in batch order and inserts the rest. The caller owns the rooms' shard, so no other
    /// writer advances these rooms' counters meanwhile; the primary key on (room, seq) guards it.
    /// The outcomes are in batch order.
    pub async fn persist_batch(
        &self,
        batch: Vec<IngestMessage>,
    ) -> Result<Vec<MessageOutcome>, StoreError> {
        self.run(move |conn| {
            let conn: &mut PgConnection = conn;
            conn.transaction(|conn| persist_in_transaction(conn, &batch))
        })
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
                        (SELECT count(*) FROM messages m WHERE m.room_id = $1 \
                           AND m.seq > moved.last_read_seq AND m.sender_id <> $2 \
                           AND m.deleted_at IS NULL) AS unread \
                 FROM moved",
            )
            .bind::<BigInt, _>(room_id.0)
            .bind::<BigInt, _>(user.0)
            .bind::<BigInt, _>(seq.0.max(0))
            .get_result::<ReadState>(conn)
            .optional()?;
            Ok(state)
        })
        .await
    }

    /// The read state of every room the user is in, by room.
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
            let rows = diesel::sql_query(
                "SELECT ms.room_id, r.last_seq, ms.last_read_seq, \
                        (SELECT count(*) FROM messages m WHERE m.room_id = ms.room_id \
                           AND m.seq > ms.last_read_seq AND m.sender_id <> $1 \
                           AND m.deleted_at IS NULL) AS unread \
                 FROM memberships ms JOIN rooms r ON r.id = ms.room_id \
                 WHERE ms.user_id = $1",
            )
            .bind::<BigInt, _>(user.0)
            .load::<Row>(conn)?;
            Ok(rows
                .into_iter()
                .map(|row| (RoomId(row.room_id), row.state))
                .collect())
        })
        .await
    }
}

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

type DedupKey = (i64, String);

fn persist_in_transaction(
    conn: &mut PgConnection,
    batch: &[IngestMessage],
) -> Result<Vec<MessageOutcome>, StoreError> {
    let sender_ids: Vec<i64> = batch.iter().map(|m| m.sender_id.0).collect();
    let client_ids: Vec<String> = batch.iter().map(|m| m.client_msg_id.0.clone()).collect();
    let room_ids: Vec<i64> = batch.iter().map(|m| m.room_id.0).collect();

    // Resends of messages stored by an earlier batch.
    let mut known: HashMap<DedupKey, ChatMessage> = diesel::sql_query(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id \
         JOIN unnest($1::bigint[], $2::text[]) AS k(sender_id, client_msg_id) \
           ON m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id"
    ))
    .bind::<Array<BigInt>, _>(&sender_ids)
    .bind::<Array<Text>, _>(&client_ids)
    .load::<StoredRow>(conn)?
    .into_iter()
    .map(|row| {
        (
            (row.sender_id, row.client_msg_id.clone()),
            row.into_message(),
        )
    })
    .collect();

    let known_users = existing_ids(conn, "users", &sender_ids)?;
    let known_rooms = existing_ids(conn, "rooms", &room_ids)?;

    // Decide, in batch order, which messages are new; count them per room.
    let mut outcomes: Vec<Option<MessageOutcome>> = vec![None; batch.len()];
    let mut fresh: Vec<usize> = Vec::with_capacity(batch.len());
    let mut first_in_batch: HashSet<DedupKey> = HashSet::new();
    let mut per_room: HashMap<i64, i64> = HashMap::new();
    for (index, message) in batch.iter().enumerate() {
        let key = (message.sender_id.0, message.client_msg_id.0.clone());
        if known.contains_key(&key) || first_in_batch.contains(&key) {
            // Resolved after the inserts, when the in-batch original has its sequence number.
            continue;
        }
        if !known_rooms.contains(&message.room_id.0) {
            outcomes[index] = Some(MessageOutcome::Rejected(format!(
                "room {} does not exist",
                message.room_id
            )));
            continue;
        }
        if !known_users.contains(&message.sender_id.0) {
            outcomes[index] = Some(MessageOutcome::Rejected(format!(
                "user {} does not exist",
                message.sender_id
            )));
            continue;
        }
        first_in_batch.insert(key);
        fresh.push(index);
        *per_room.entry(message.room_id.0).or_default() += 1;
    }

    if !fresh.is_empty() {
        let (rooms, counts): (Vec<i64>, Vec<i64>) = per_room.iter().map(|(r, n)| (*r, *n)).unzip();
        let mut next_seq: HashMap<i64, i64> = diesel::sql_query(
            "UPDATE rooms SET last_seq = rooms.last_seq + d.n \
             FROM unnest($1::bigint[], $2::bigint[]) AS d(id, n) \
             WHERE rooms.id = d.id RETURNING rooms.id, rooms.last_seq",
        )
        .bind::<Array<BigInt>, _>(&rooms)
        .bind::<Array<BigInt>, _>(&counts)
        .load::<RoomSeqRow>(conn)?
        .into_iter()
        .map(|row| {
            (
                row.id,
                row.last_seq - per_room.get(&row.id).copied().unwrap_or(0) + 1,
            )
        })
        .collect();

        let mut columns = InsertColumns::with_capacity(fresh.len());
        for &index in &fresh {
            let message = &batch[index];
            let Some(seq) = next_seq.get_mut(&message.room_id.0) else {
                // Rooms are never deleted, so the room checked above still exists; if not, the
                // whole batch fails and is retried.
                return Err(StoreError::Query(diesel::result::Error::NotFound));
            };
            let stored = ChatMessage {
                room_id: message.room_id,
                seq: Seq(*seq),
                sender_id: message.sender_id,
                sender_name: message.sender_name.clone(),
                client_msg_id: message.client_msg_id.clone(),
                body: message.body.clone(),
                sent_at_ms: message.sent_at_ms,
                edited_at_ms: None,
                deleted: false,
            };
            *seq += 1;
            columns.push(message, stored.seq.0);
            known.insert(
                (message.sender_id.0, message.client_msg_id.0.clone()),
                stored.clone(),
            );
            outcomes[index] = Some(MessageOutcome::Stored(stored));
        }
        columns.insert(conn)?;
    }

    Ok(batch
        .iter()
        .zip(outcomes)
        .map(|(message, outcome)| {
            outcome.unwrap_or_else(|| {
                let key = (message.sender_id.0, message.client_msg_id.0.clone());
                match known.get(&key) {
                    Some(original) => MessageOutcome::Duplicate(original.clone()),
                    None => MessageOutcome::Rejected("duplicate of an unstored message".into()),
                }
            })
        })
        .collect())
}

fn existing_ids(
    conn: &mut PgConnection,
    table: &str,
    ids: &[i64],
) -> Result<HashSet<i64>, diesel::result::Error> {
    Ok(diesel::sql_query(format!(
        "SELECT id FROM {table} WHERE id = ANY($1::bigint[])"
    ))
    .bind::<Array<BigInt>, _>(ids)
    .load::<IdRow>(conn)?
    .into_iter()
    .map(|row| row.id)
    .collect())
}

/// Column arrays for one `INSERT … SELECT FROM unnest(…)`: six bind parameters whatever the
/// batch size, so the 65,535-parameter limit never applies.
struct InsertColumns {
    room_ids: Vec<i64>,
    seqs: Vec<i64>,
    sender_ids: Vec<i64>,
    client_msg_ids: Vec<String>,
    bodies: Vec<String>,
    sent_at: Vec<DateTime<Utc>>,
}

impl InsertColumns {
    fn with_capacity(n: usize) -> Self {
        InsertColumns {
            room_ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            sender_ids: Vec::with_capacity(n),
            client_msg_ids: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            sent_at: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, message: &IngestMessage, seq: i64) {
        self.room_ids.push(message.room_id.0);
        self.seqs.push(seq);
        self.sender_ids.push(message.sender_id.0);
        self.client_msg_ids.push(message.client_msg_id.0.clone());
        self.bodies.push(message.body.clone());
        self.sent_at.push(
            Utc.timestamp_millis_opt(message.sent_at_ms)
                .single()
                .unwrap_or_else(Utc::now),
        );
    }

    fn insert(self, conn: &mut PgConnection) -> Result<usize, diesel::result::Error> {
        diesel::sql_query(
            "INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], \
                                  $5::text[], $6::timestamptz[])",
        )
        .bind::<Array<BigInt>, _>(self.room_ids)
        .bind::<Array<BigInt>, _>(self.seqs)
        .bind::<Array<BigInt>, _>(self.sender_ids)
        .bind::<Array<Text>, _>(self.client_msg_ids)
        .bind::<Array<Text>, _>(self.bodies)
        .bind::<Array<Timestamptz>, _>(self.sent_at)
        .execute(conn)
    }
}
