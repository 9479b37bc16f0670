//! Rooms (public, private, direct) and their memberships.

use super::names::{like_escaped, room_name_key};
use super::schema::{memberships, rooms, users};
use super::{Store, StoreError};
use chat_protocol::api::{InvitePolicy, Member, Role, RoomKind};
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

/// A LIKE pattern matching names that contain `query` literally, in any case.
fn like_pattern(query: &str) -> String {
    format!("%{}%", like_escaped(&query.to_lowercase()))
}

impl Store {
    /// Creates a public or private room with `owner` as its owner. `None` when a public room
    /// already has the name in any case or Unicode form.
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
                        rooms::name_key.eq(room_name_key(&name)),
                        rooms::kind.eq(kind.as_str()),
                        rooms::created_by.eq(owner.0),
                        rooms::invite_policy.eq(InvitePolicy::default_for(kind).as_str()),
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
        // PostgreSQL text cannot hold NUL, and no room name has one: no match, not a failure.
        if query.contains('\0') {
            return Ok(Vec::new());
        }
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

    /// The ids of the rooms a user is in, the most recently joined first, at most `limit` (one
    /// query for the users whose rooms are asked for at the same moment).
    pub async fn room_ids_of(&self, user: UserId, limit: usize) -> Result<Vec<RoomId>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.batches
            .room_ids
            .get(&self.connections, user, move |conn, users| {
                let ids: Vec<i64> = users.iter().map(|user| user.0).collect();
                let rows = diesel::sql_query(
                    "SELECT room_id, user_id, role FROM ( \
                       SELECT room_id, user_id, role, row_number() OVER \
                         (PARTITION BY user_id ORDER BY joined_at DESC, room_id DESC) AS n \
                       FROM memberships WHERE user_id = ANY($1)) m \
                     WHERE n <= $2",
                )
                .bind::<Array<BigInt>, _>(ids)
                .bind::<BigInt, _>(limit)
                .load::<MembershipRoleRow>(conn)?;
                let mut rooms: HashMap<UserId, Vec<RoomId>> = HashMap::new();
                for row in rows {
                    rooms
                        .entry(UserId(row.user_id))
                        .or_default()
                        .push(RoomId(row.room_id));
                }
                Ok(users
                    .iter()
                    .map(|user| rooms.remove(user).unwrap_or_default())
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

    /// Adds a member; false if already one. A new member has read what the room held before
    /// they came in: only later messages count as unread for them.
    pub async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: Role,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let last_seq = rooms::table
                .find(room.0)
                .select(rooms::last_seq)
                .first::<i64>(conn)
                .optional()?
                .unwrap_or(0);
            let inserted = diesel::insert_into(memberships::table)
                .values((
                    memberships::room_id.eq(room.0),
                    memberships::user_id.eq(user.0),
                    memberships::role.eq(role.as_str()),
                    memberships::last_read_seq.eq(last_seq),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
            Ok(inserted > 0)
        })
        .await
    }

    /// Removes `user` unless they are the room's last owner. The room's row is locked so two
    /// owners removing each other cannot both succeed and leave the room without one.
    pub async fn remove_member_keeping_an_owner(
        &self,
        room: RoomId,
        user: UserId,
    ) -> Result<Removal, StoreError> {
        self.run(move |conn| {
            conn.transaction(|conn| {
                rooms::table
                    .find(room.0)
                    .select(rooms::id)
                    .for_update()
                    .first::<i64>(conn)
                    .optional()?;
                let roles = memberships::table
                    .filter(memberships::room_id.eq(room.0))
                    .filter(
                        memberships::user_id
                            .eq(user.0)
                            .or(memberships::role.eq(Role::Owner.as_str())),
                    )
                    .select((memberships::user_id, memberships::role))
                    .load::<(i64, String)>(conn)?;
                let Some((_, role)) = roles.iter().find(|(id, _)| *id == user.0) else {
                    return Ok(Removal::NotMember);
                };
                let owners = roles
                    .iter()
                    .filter(|(_, role)| role_of(role) == Role::Owner)
                    .count();
                if role_of(role) == Role::Owner && owners <= 1 {
                    return Ok(Removal::LastOwner);
                }
                diesel::delete(memberships::table.find((room.0, user.0))).execute(conn)?;
                Ok(Removal::Removed)
            })
        })
        .await
    }

    /// Who may invite into a room; `None` if there is no such room.
    pub async fn invite_policy(&self, room: RoomId) -> Result<Option<InvitePolicy>, StoreError> {
        self.run(move |conn| {
            Ok(rooms::table
                .find(room.0)
                .select(rooms::invite_policy)
                .first::<String>(conn)
                .optional()?
                // The column has a CHECK constraint with exactly these values.
                .map(|text| InvitePolicy::parse(&text).unwrap_or(InvitePolicy::Owners)))
        })
        .await
    }

    pub async fn set_invite_policy(
        &self,
        room: RoomId,
        policy: InvitePolicy,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::update(rooms::table.find(room.0))
                .set(rooms::invite_policy.eq(policy.as_str()))
                .execute(conn)?;
            Ok(())
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

    /// The direct room of two users, opened by `me`. Created on first use with both as members;
    /// after that, opening it adds only `me` again, so a user who left stays out until they
    /// open it themselves (the messages sent meanwhile are stored and theirs to read then).
    /// `name` is used only when the room is created. Also answers who became a member.
    pub async fn direct_room(
        &self,
        me: UserId,
        other: UserId,
        name: String,
    ) -> Result<(RoomRow, Vec<UserId>), StoreError> {
        let key = format!("{}:{}", me.0.min(other.0), me.0.max(other.0));
        self.run(move |conn| {
            conn.transaction(|conn| {
                let created = diesel::insert_into(rooms::table)
                    .values((
                        rooms::name.eq(&name),
                        rooms::name_key.eq(room_name_key(&name)),
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
                let entering: &[UserId] = if created > 0 { &[me, other] } else { &[me] };
                // Whoever comes back to the conversation has read what it held.
                let last_seq = rooms::table
                    .find(row.0)
                    .select(rooms::last_seq)
                    .first::<i64>(conn)?;
                let mut added = Vec::new();
                for &user in entering {
                    let inserted = diesel::insert_into(memberships::table)
                        .values((
                            memberships::room_id.eq(row.0),
                            memberships::user_id.eq(user.0),
                            memberships::role.eq(Role::Member.as_str()),
                            memberships::last_read_seq.eq(last_seq),
                        ))
                        .on_conflict_do_nothing()
                        .execute(conn)?;
                    if inserted > 0 {
                        added.push(user);
                    }
                }
                Ok((room_row(row), added))
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

/// What removing a member came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    NotMember,
    /// Refused: a room keeps at least one owner.
    LastOwner,
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
