//! Storing persister batches: sequence numbers, deduplication and the insert.
//!
//! A persister owns its shard's rooms, so it keeps each room's last sequence number between
//! batches ([`SeqCounters`]). The common batch (no resends, known rooms and users) then takes
//! one statement, which is its own transaction (one round trip, no `BEGIN` and `COMMIT`):
//! insert the rows and move the rooms' counters, or fail as a whole. Anything else (a resend, a
//! room seen for the first time by a counter that was reset, a refused row) fails that
//! statement, and the batch goes the checked way, which reads what it needs first.

use super::arrays::{BigInts, MillisTimestamps, Texts};
use super::messages::{StoredRow, MESSAGE_COLUMNS};
use super::{Store, StoreError};
use chat_protocol::bus::IngestMessage;
use chat_protocol::{ChatMessage, RoomId, Seq};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Text, Timestamptz, Untyped};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Stored now, as sent, with this new sequence number.
    Stored(Seq),
    /// Stored earlier (by an earlier batch or earlier in this one): the original.
    Duplicate(ChatMessage),
    /// Can never be stored, for this reason.
    Rejected(String),
}

/// The last sequence number of each room a persister has stored to, kept between its batches.
/// Valid only while the persister owns the shard: a new consumer starts with empty counters.
/// A wrong counter cannot store anything wrong: the primary key on (room, seq) refuses the
/// insert, and the batch goes the checked way, which reads the rooms' counters from the table.
///
/// A batch checks its rooms' counters out for as long as it is being stored and returns them
/// moved when it is committed, so batches of disjoint rooms can be stored at the same time.
#[derive(Clone, Default)]
pub struct SeqCounters(Arc<Mutex<HashMap<i64, i64>>>);

impl SeqCounters {
    /// Takes the counters of these rooms out; rooms without one are absent from the result.
    fn check_out(&self, rooms: &[i64]) -> HashMap<i64, i64> {
        let mut counters = crate::locks::lock(&self.0);
        rooms
            .iter()
            .filter_map(|room| counters.remove(room).map(|seq| (*room, seq)))
            .collect()
    }

    /// Returns counters taken out with [`SeqCounters::check_out`], moved by a committed batch.
    fn check_in(&self, moved: HashMap<i64, i64>) {
        let mut counters = crate::locks::lock(&self.0);
        counters.extend(moved);
    }
}

impl Store {
    /// Stores a batch: drops resends, assigns each room's next sequence numbers in batch order
    /// and inserts the rest, in one transaction. The caller owns the rooms' shard, so no other
    /// writer advances these rooms' counters meanwhile; batches stored at the same time must
    /// not share a room. The outcomes are in batch order.
    pub async fn persist_batch(
        &self,
        batch: impl Into<Arc<[IngestMessage]>>,
        counters: SeqCounters,
    ) -> Result<Vec<MessageOutcome>, StoreError> {
        let batch = batch.into();
        self.persisting
            .run(move |conn| {
                let conn: &mut PgConnection = conn;
                let rooms = distinct(batch.iter().map(|m| m.room_id.0));
                let mut known = counters.check_out(&rooms);
                // On any failure the counters may have moved for rows that were rolled back: they
                // stay out, and the rooms' next batch reads them again.
                match persist_common(conn, &batch, &mut known) {
                    Ok(outcomes) => {
                        counters.check_in(known);
                        return Ok(outcomes);
                    }
                    Err(FastPath::NotCommon) => {}
                    Err(FastPath::Refused(error)) => {
                        tracing::debug!(%error, "batch refused as a common one; checking it");
                    }
                }
                conn.transaction(|conn| persist_checked(conn, &batch))
            })
            .await
    }
}

/// Why a batch was not stored the common way (and nothing of it was).
enum FastPath {
    /// A resend, a repeated id within the batch, or an unknown room.
    NotCommon,
    /// PostgreSQL refused it: a stale counter, an unknown user, or the connection failed (in
    /// which case the checked way fails too, and the batch is retried).
    Refused(diesel::result::Error),
}

impl From<diesel::result::Error> for FastPath {
    fn from(error: diesel::result::Error) -> Self {
        FastPath::Refused(error)
    }
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The common batch in one statement: numbers from the counters, rows inserted unless their id
/// is already stored, rooms' counters moved, senders counted. Fewer rows than sent means a
/// resend, fewer rooms moved or senders found than the batch has means one that does not
/// exist (the table has no foreign keys: this is the check): the statement then fails on
/// purpose (a cast whose message says why, in PostgreSQL's log), which
/// undoes it as a whole (it runs outside an explicit transaction, so this is its rollback), and
/// the caller goes the checked way.
fn persist_common(
    conn: &mut PgConnection,
    batch: &[IngestMessage],
    counters: &mut HashMap<i64, i64>,
) -> Result<Vec<MessageOutcome>, FastPath> {
    let mut ids = HashSet::with_capacity(batch.len());
    if !batch
        .iter()
        .all(|m| ids.insert((m.sender_id.0, m.client_msg_id.0.as_str())))
    {
        return Err(FastPath::NotCommon);
    }
    let mut unknown: Vec<RoomId> = batch
        .iter()
        .map(|m| m.room_id)
        .filter(|room| !counters.contains_key(&room.0))
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        let found = super::messages::last_seqs(conn, &unknown)?;
        if found.len() != unknown.len() {
            return Err(FastPath::NotCommon);
        }
        counters.extend(found.into_iter().map(|(room, seq)| (room.0, seq.0)));
    }

    let mut columns = InsertColumns::with_capacity(batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    for message in batch {
        let last = counters.entry(message.room_id.0).or_default();
        *last += 1;
        columns.push(message, *last);
        outcomes.push(MessageOutcome::Stored(Seq(*last)));
    }
    let (rooms, last_seqs): (Vec<i64>, Vec<i64>) = room_counters(batch, counters);
    let senders = distinct(batch.iter().map(|m| m.sender_id.0));
    let inserted = CommonBatch {
        columns: &columns,
        count: batch.len() as i64,
        room_count: rooms.len() as i64,
        sender_count: senders.len() as i64,
        rooms: BigInts(rooms),
        last_seqs: BigInts(last_seqs),
        senders: BigInts(senders),
    }
    .get_result::<CountRow>(conn)?;
    if inserted.n != batch.len() as i64 {
        return Err(FastPath::NotCommon);
    }
    Ok(outcomes)
}

/// The common batch's statement. Written out rather than through `diesel::sql_query`, which
/// marks every statement unsafe to cache, so that each connection prepares it once: planning
/// it (a CTE over `unnest`, an upsert and an update) took about as long as running it, 0.13–0.22
/// ms against 0.33–0.40 ms for 8 rows (`EXPLAIN ANALYZE`, warm backend), and a persister runs
/// hundreds a second. Binds: the six columns, the rooms and their new counters, the distinct
/// senders, and the counts the deliberate failure [`persist_common`] describes compares with.
struct CommonBatch<'a> {
    columns: &'a InsertColumns<'a>,
    rooms: BigInts,
    last_seqs: BigInts,
    senders: BigInts,
    count: i64,
    room_count: i64,
    sender_count: i64,
}

impl QueryFragment<Pg> for CommonBatch<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let columns = self.columns;
        out.push_sql(
            "WITH inserted AS ( \
               INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) \
               SELECT * FROM unnest(",
        );
        columns.push_binds(&mut out)?;
        out.push_sql(
            ") ON CONFLICT (sender_id, client_msg_id) DO NOTHING RETURNING 1), \
             moved AS ( \
               UPDATE rooms SET last_seq = d.last_seq FROM unnest(",
        );
        out.push_bind_param::<Array<BigInt>, _>(&self.rooms)?;
        out.push_sql("::bigint[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.last_seqs)?;
        out.push_sql(
            "::bigint[]) AS d(id, last_seq) WHERE rooms.id = d.id RETURNING 1), \
             senders AS (SELECT count(*) AS n FROM users WHERE id = ANY(",
        );
        out.push_bind_param::<Array<BigInt>, _>(&self.senders)?;
        out.push_sql(
            "::bigint[])), \
             checked AS (SELECT (SELECT count(*) FROM inserted) AS rows, \
               (SELECT count(*) FROM moved) AS rooms, (SELECT n FROM senders) AS senders) \
             SELECT CASE WHEN rows = ",
        );
        out.push_bind_param::<BigInt, _>(&self.count)?;
        out.push_sql(" AND rooms = ");
        out.push_bind_param::<BigInt, _>(&self.room_count)?;
        out.push_sql(" AND senders = ");
        out.push_bind_param::<BigInt, _>(&self.sender_count)?;
        out.push_sql(
            " THEN rows ELSE ('not a common batch: ' || rows || ' rows new, ' || \
             rooms || ' rooms moved, ' || senders || ' senders known')::bigint END AS n \
             FROM checked",
        );
        Ok(())
    }
}

/// The common batch statement's identity for diesel's statement cache. Its SQL text is the same
/// for every batch, so a static id lets the cache find the prepared statement by type, instead
/// of writing the whole text out and hashing it for every batch to look it up.
struct CommonBatchStatement;

impl QueryId for CommonBatch<'_> {
    type QueryId = CommonBatchStatement;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for CommonBatch<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for CommonBatch<'_> {}

/// Each room of the batch with its counter after the batch.
fn room_counters(batch: &[IngestMessage], counters: &HashMap<i64, i64>) -> (Vec<i64>, Vec<i64>) {
    let rooms = distinct(batch.iter().map(|m| m.room_id.0));
    let last_seqs = rooms
        .iter()
        .map(|room| counters.get(room).copied().unwrap_or_default())
        .collect();
    (rooms, last_seqs)
}

/// The ids, each once, ascending.
fn distinct(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut ids: Vec<i64> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn stored_message(message: &IngestMessage, seq: i64) -> ChatMessage {
    ChatMessage {
        room_id: message.room_id,
        seq: Seq(seq),
        sender_id: message.sender_id,
        sender_name: message.sender_name.clone(),
        client_msg_id: message.client_msg_id.clone(),
        body: message.body.clone(),
        sent_at_ms: message.sent_at_ms,
        edited_at_ms: None,
        deleted: false,
    }
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
pub(super) struct RoomSeqRow {
    #[diesel(sql_type = BigInt)]
    pub(super) id: i64,
    #[diesel(sql_type = BigInt)]
    pub(super) last_seq: i64,
}

/// The careful way, for batches with resends or unknown rooms or users: reads which ids are
/// stored already and which rooms and users exist, then numbers and inserts the rest.
type DedupKey = (i64, String);

fn persist_checked(
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
            let stored = stored_message(message, *seq);
            *seq += 1;
            columns.push(message, stored.seq.0);
            outcomes[index] = Some(MessageOutcome::Stored(stored.seq));
            // For resends later in the batch, answered with this original.
            known.insert(
                (message.sender_id.0, message.client_msg_id.0.clone()),
                stored,
            );
        }
        columns.execute(conn)?;
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
/// batch size, so the 65,535-parameter limit never applies. The texts are the batch's own.
struct InsertColumns<'a> {
    room_ids: BigInts,
    seqs: BigInts,
    sender_ids: BigInts,
    client_msg_ids: Texts<'a>,
    bodies: Texts<'a>,
    sent_at: MillisTimestamps,
}

impl<'a> InsertColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        InsertColumns {
            room_ids: BigInts(Vec::with_capacity(n)),
            seqs: BigInts(Vec::with_capacity(n)),
            sender_ids: BigInts(Vec::with_capacity(n)),
            client_msg_ids: Texts(Vec::with_capacity(n)),
            bodies: Texts(Vec::with_capacity(n)),
            sent_at: MillisTimestamps(Vec::with_capacity(n)),
        }
    }

    fn push(&mut self, message: &'a IngestMessage, seq: i64) {
        self.room_ids.0.push(message.room_id.0);
        self.seqs.0.push(seq);
        self.sender_ids.0.push(message.sender_id.0);
        self.client_msg_ids.0.push(&message.client_msg_id.0);
        self.bodies.0.push(&message.body);
        self.sent_at.0.push(message.sent_at_ms);
    }

    /// The six columns as the arguments of `unnest(…)`.
    fn push_binds<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<Array<BigInt>, _>(&self.room_ids)?;
        out.push_sql("::bigint[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.seqs)?;
        out.push_sql("::bigint[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.sender_ids)?;
        out.push_sql("::bigint[], ");
        out.push_bind_param::<Array<Text>, _>(&self.client_msg_ids)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(&self.bodies)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.sent_at)?;
        out.push_sql("::timestamptz[]");
        Ok(())
    }
}

/// The checked way's insert: the rows alone, in the transaction that numbered them.
impl QueryFragment<Pg> for InsertColumns<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) \
             SELECT * FROM unnest(",
        );
        self.push_binds(&mut out)?;
        out.push_sql(")");
        Ok(())
    }
}

/// Not kept in diesel's statement cache: the checked way is rare.
impl QueryId for InsertColumns<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl RunQueryDsl<PgConnection> for InsertColumns<'_> {}
