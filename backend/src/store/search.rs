//! Message search: the words of the messages of a user's rooms, through the `messages_words`
//! and `messages_by_time` indexes (migrations `message_search`, `message_search_by_time`).

use super::messages::{StoredRow, MESSAGE_COLUMNS};
use super::{Store, StoreError};
use chat_protocol::search::Cursor;
use chat_protocol::{ChatMessage, RoomId, UserId};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};

/// What to look for, and where.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Whose rooms: only the rooms this user is a member of now are searched.
    pub user: UserId,
    /// The query, as `websearch_to_tsquery` reads it.
    pub query: String,
    pub room: Option<RoomId>,
    pub sender: Option<UserId>,
    /// Only messages ordered after this one (older, or the same time in a lower room or seq).
    pub before: Option<Cursor>,
    pub limit: i64,
}

/// Newest first by time, then room and sequence number (the cursor's order). The expression
/// is `messages_words`'s and the order `messages_by_time`'s, so the planner can take either:
/// the words index for a rare word, the newest messages in order for a common one.
const SEARCH_SQL: &str = "FROM messages m \
     JOIN memberships ms ON ms.room_id = m.room_id AND ms.user_id = $1 \
     JOIN users u ON u.id = m.sender_id \
     WHERE to_tsvector('simple', m.body) @@ websearch_to_tsquery('simple', $2) \
       AND m.deleted_at IS NULL \
       AND ($3::bigint IS NULL OR m.room_id = $3) \
       AND ($4::bigint IS NULL OR m.sender_id = $4) \
       AND (m.sent_at, m.room_id, m.seq) < ($5, $6, $7) \
     ORDER BY m.sent_at DESC, m.room_id DESC, m.seq DESC \
     LIMIT $8";

impl Store {
    /// The newest `limit` messages matching the request, newest first.
    pub async fn search_messages(
        &self,
        request: SearchRequest,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.run(move |conn| {
            let (before_at, before_room, before_seq) = match request.before {
                Some(cursor) => (
                    DateTime::<Utc>::from_timestamp_millis(cursor.sent_at_ms)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                    cursor.room_id.0,
                    cursor.seq,
                ),
                None => (DateTime::<Utc>::MAX_UTC, i64::MAX, i64::MAX),
            };
            let rows = diesel::sql_query(format!("SELECT {MESSAGE_COLUMNS} {SEARCH_SQL}"))
                .bind::<BigInt, _>(request.user.0)
                .bind::<Text, _>(request.query)
                .bind::<Nullable<BigInt>, _>(request.room.map(|room| room.0))
                .bind::<Nullable<BigInt>, _>(request.sender.map(|sender| sender.0))
                .bind::<Timestamptz, _>(before_at)
                .bind::<BigInt, _>(before_room)
                .bind::<BigInt, _>(before_seq)
                .bind::<BigInt, _>(request.limit)
                .load::<StoredRow>(conn)?;
            Ok(rows.into_iter().map(StoredRow::into_message).collect())
        })
        .await
    }
}
