//! Rooms (public, private, direct) and their memberships.

use super::schema::{memberships, rooms, users};
use super::{Store, StoreError};
use chat_protocol::api::{Member, Role, RoomKind};
use chat_protocol::{PresenceStatus, RoomId, Seq, UserId};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Text};
use std::collections::HashMap;

/// A room's metadata, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRow {
    pub room_id: RoomId,
    pub name: String,
    pub kind: RoomKind,
}

type RoomColumns = (i64, String, String);

fn room_row((id, name, kind): RoomColumns) -> RoomRow {
    RoomRow {
        room_id: RoomId(id),
        name,
        // The column has a CHECK constraint with exactly these values.
        kind: RoomKind::parse(&kind).unwrap_or(RoomKind::Private),
    }
}

fn role_of(text: &str) -> Role {
    Role::parse(text).unwrap_or(Role::Member)
}

/// Escapes `%`, `_` and `\` so a search string is matched literally by LIKE.
fn like_pattern(query: &str) -> String {
    let mut pattern = String::with_capacity(query.len() + 2);
    pattern.push('%');
    for c in query.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Store {
    /// Creates a public or private room with `owner` as its owner. `None` when a public room
    /// already has the name.
    pub async fn create_room(
        &self,
        name: String,
        kind: RoomKind,
        owner: UserId,
    ) -> Result<Option<RoomRow>, StoreError> {
        self.run(move |conn| {
            let created = conn.transaction(|conn| {
                let id = diesel::insert_into(rooms::table)
                    .values((
                        rooms::name.eq(&name),
                        rooms::kind.eq(kind.as_str()),
                        rooms::created_by.eq(owner.0),
                    ))
                    .returning(rooms::id)
                    .get_result::<i64>(conn)?;
                diesel::insert_into(memberships::table)
                    .values((
                        memberships::room_id.eq(id),
                        memberships::user_id.eq(owner.0),
                        memberships::role.eq(Role::Owner.as_str()),
                    ))
                    .execute(conn)?;
                Ok::<_, DieselError>(id)
            });
            match created {
                Ok(id) => Ok(Some(RoomRow {
                    room_id: RoomId(id),
                    name,
                    kind,
                })),
                Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(None),
                Err(error) => Err(error.into()),
            }
        })
        .await
    }

    pub async fn room(&self, room: RoomId) -> Result<Option<RoomRow>, StoreError> {
        self.run(move |conn| {
            Ok(rooms::table
                .find(room.0)
                .select((rooms::id, rooms::name, rooms::kind))
                .first::<RoomColumns>(conn)
                .optional()?
                .map(room_row))
        })
        .await
    }

    /// The rooms of `ids` that exist, in one query.
    pub async fn rooms(&self, ids: Vec<RoomId>) -> Result<HashMap<RoomId, RoomRow>, StoreError> {
        self.run(move |conn| {
            let ids: Vec<i64> = ids.iter().map(|room| room.0).collect();
            Ok(rooms::table
                .filter(rooms::id.eq_any(&ids))
                .select((rooms::id, rooms::name, rooms::kind))
                .load::<RoomColumns>(conn)?
                .into_iter()
                .map(|columns| {
                    let row = room_row(columns);
                    (row.room_id, row)
                })
                .collect())
        })
        .await
    }

    /// The sequence number of a room's newest stored message.
    pub async fn last_seq(&self, room: RoomId) -> Result<Seq, StoreError> {
        self.batches
            .last_seqs
            .get(&self.connections, room, |conn, rooms| {
                let newest = super::messages::last_seqs(conn, &rooms)?;
                Ok(rooms
                    .iter()
                    .map(|room| newest.get(room).copied().unwrap_or(Seq(0)))
                    .collect())
            })
            .await
    }

    /// Public rooms whose name contains `query` (any case), by name, or the one with exactly
    /// that name first.
    pub async fn search_public_rooms(
        &self,
        query: String,
        limit: i64,
    ) -> Result<Vec<RoomRow>, StoreError> {
        self.run(move |conn| {
            // The kind is written into the statement, not bound: only then does a cached
            // (generic) plan match the trigram index, which covers public rooms only.
            let rows = rooms::table
                .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                    "kind = 'public'",
                ))
                .filter(
                    diesel::dsl::sql::<diesel::sql_types::Bool>("lower(name) LIKE ")
                        .bind::<diesel::sql_types::Text, _>(like_pattern(&query)),
                )
                .select((rooms::id, rooms::name, rooms::kind))
                .order((rooms::name.ne(&query), rooms::name, rooms::id))
                .limit(limit)
                .load::<RoomColumns>(conn)?;
            Ok(rows.into_iter().map(room_row).collect())
        })
        .await
    }

    /// The rooms a user is in, with the user's role.
    pub async fn rooms_of(&self, user: UserId) -> Result<Vec<(RoomRow, Role)>, StoreError> {
        self.run(move |conn| {
            let rows = memberships::table
                .inner_join(rooms::table)
                .filter(memberships::user_id.eq(user.0))
                .select((rooms::id, rooms::name, rooms::kind, memberships::role))
                .order((rooms::name, rooms::id))
                .load::<(i64, String, String, String)>(conn)?;
            Ok(rows
                .into_iter()
                .map(|(id, name, kind, role)| (room_row((id, name, kind)), role_of(&role)))
                .collect())
        })
        .await
    }

    /// For each of `users`, which of `rooms` they are a member of.
    pub async fn shared_rooms(
        &self,
        users: Vec<UserId>,
        rooms: Vec<RoomId>,
    ) -> Result<HashMap<UserId, Vec<RoomId>>, StoreError> {
        let users: Vec<i64> = users.into_iter().map(|user| user.0).collect();
        let rooms: Vec<i64> = rooms.into_iter().map(|room| room.0).collect();
        self.run(move |conn| {
            let rows = memberships::table
                .filter(memberships::user_id.eq_any(&users))
                .filter(memberships::room_id.eq_any(&rooms))
                .select((memberships::user_id, memberships::room_id))
                .load::<(i64, i64)>(conn)?;
            let mut shared: HashMap<UserId, Vec<RoomId>> = HashMap::new();
            for (user, room) in rows {
                shared.entry(UserId(user)).or_default().push(RoomId(room));
            }
            Ok(shared)
        })
        .await
    }

    /// The roles of several (room, user) pairs in one query; pairs that are not memberships are
    /// absent from the answer.
    pub async fn roles(
        &self,
        pairs: Vec<(RoomId, UserId)>,
    ) -> Result<HashMap<(RoomId, UserId), Role>, StoreError> {
        self.run(move |conn| {
            let (rooms, users): (Vec<i64>, Vec<i64>) =
                pairs.iter().map(|(room, user)| (room.0, user.0)).unzip();
            let rows = diesel::sql_query(
                "SELECT m.room_id, m.user_id, m.role FROM memberships m \
                 JOIN unnest($1::bigint[], $2::bigint[]) AS k(room_id, user_id) \
                   ON m.room_id = k.room_id AND m.user_id = k.user_id",
            )
            .bind::<Array<BigInt>, _>(rooms)
            .bind::<Array<BigInt>, _>(users)
            .load::<MembershipRoleRow>(conn)?;
            Ok(rows
                .into_iter()
                .map(|row| {
                    (
                        (RoomId(row.room_id), UserId(row.user_id)),
                        role_of(&row.role),
                    )
                })
                .collect())
        })
        .await
    }

    /// Adds a member; false if already one.
    pub async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let inserted = diesel::insert_into(memberships::table)
                .values((
                    memberships::room_id.eq(room.0),
                    memberships::user_id.eq(user.0),
                    memberships::role.eq(role.as_str()),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
            Ok(inserted > 0)
        })
        .await
    }

    /// Removes a member; false if not one.
    pub async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let deleted =
                diesel::delete(memberships::table.find((room.0, user.0))).execute(conn)?;
            Ok(deleted > 0)
        })
        .await
    }

    /// Members with their roles, owners first.
    pub async fn members(&self, room: RoomId) -> Result<Vec<Member>, StoreError> {
        self.run(move |conn| {
            let rows = memberships::table
                .inner_join(users::table)
                .filter(memberships::room_id.eq(room.0))
                .select((
                    users::id,
                    users::username,
                    users::display_name,
                    memberships::role,
                ))
                .order((memberships::role.desc(), users::username))
                .load::<(i64, String, String, String)>(conn)?;
            Ok(rows
                .into_iter()
                .map(|(id, username, display_name, role)| Member {
                    user_id: UserId(id),
                    username,
                    display_name,
                    role: role_of(&role),
                    presence: PresenceStatus::Offline,
                })
                .collect())
        })
        .await
    }

    /// The direct room of two users, created on first use with both as members. `name` is used
    /// only when the room is created.
    pub async fn direct_room(
        &self,
        me: UserId,
        other: UserId,
        name: String,
    ) -> Result<RoomRow, StoreError> {
        let key = format!("{}:{}", me.0.min(other.0), me.0.max(other.0));
        self.run(move |conn| {
            conn.transaction(|conn| {
                diesel::insert_into(rooms::table)
                    .values((
                        rooms::name.eq(&name),
                        rooms::kind.eq(RoomKind::Direct.as_str()),
                        rooms::created_by.eq(me.0),
                        rooms::direct_key.eq(&key),
                    ))
                    .on_conflict(rooms::direct_key)
                    .do_nothing()
                    .execute(conn)?;
                let row = rooms::table
                    .filter(rooms::direct_key.eq(&key))
                    .select((rooms::id, rooms::name, rooms::kind))
                    .first::<RoomColumns>(conn)?;
                for user in [me, other] {
                    diesel::insert_into(memberships::table)
                        .values((
                            memberships::room_id.eq(row.0),
                            memberships::user_id.eq(user.0),
                            memberships::role.eq(Role::Member.as_str()),
                        ))
                        .on_conflict_do_nothing()
                        .execute(conn)?;
                }
                Ok(room_row(row))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn search_patterns_are_literal() {
        assert_eq!(like_pattern("Gen"), "%gen%");
        assert_eq!(like_pattern("50%_\\"), "%50\\%\\_\\\\%");
    }
}

#[derive(QueryableByName)]
struct MembershipRoleRow {
    #[diesel(sql_type = BigInt)]
    room_id: i64,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Text)]
    role: String,
}
