//! Users, their password hashes, sessions and profiles.

use super::names::{like_escaped, username_key};
use super::schema::{sessions, users};
use super::{Store, StoreError};
use chat_protocol::api::{Avatar, Profile, ProfileUpdate, UserSummary};
use chat_protocol::UserId;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use std::collections::HashMap;

/// A user row as profiles need it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub status_text: String,
    pub avatar_color: String,
    pub avatar_initials: String,
}

impl UserRow {
    pub fn into_profile(self) -> Profile {
        Profile {
            user_id: UserId(self.id),
            username: self.username,
            display_name: self.display_name,
            avatar: Avatar {
                color: self.avatar_color,
                initials: self.avatar_initials,
            },
            status_text: self.status_text,
        }
    }
}

/// `$1`: the user name key's LIKE pattern, `$2`: the display name's, `$3`: the most rows.
/// `COLLATE "C"` in the conditions and orders is what lets the indexes serve both.
const SEARCH_USERS: &str = r#"
SELECT id, username, display_name FROM (
    (SELECT id, username, display_name, username_key FROM users
     WHERE username_key COLLATE "C" LIKE $1
     ORDER BY username_key COLLATE "C" LIMIT $3)
    UNION
    (SELECT id, username, display_name, username_key FROM users
     WHERE lower(display_name) COLLATE "C" LIKE $2
     ORDER BY lower(display_name) COLLATE "C" LIMIT $3)
) AS found
ORDER BY username_key COLLATE "C" LIKE $1 DESC, username_key COLLATE "C", id
LIMIT $3
"#;

/// A row of [`SEARCH_USERS`].
#[derive(QueryableByName)]
struct FoundUser {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    username: String,
    #[diesel(sql_type = Text)]
    display_name: String,
}

/// A new account's fields.
pub struct NewUser {
    pub username: String,
    pub display_name: String,
    pub avatar_initials: String,
    pub password_hash: String,
}

/// The user a live session belongs to.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub user_id: UserId,
    pub display_name: String,
}

impl Store {
    /// Creates an account; `None` when the user name is taken in any case or Unicode form.
    pub async fn create_user(&self, new: NewUser) -> Result<Option<UserRow>, StoreError> {
        self.run(move |conn| {
            Ok(diesel::insert_into(users::table)
                .values((
                    users::username.eq(&new.username),
                    users::username_key.eq(username_key(&new.username)),
                    users::display_name.eq(&new.display_name),
                    users::avatar_initials.eq(&new.avatar_initials),
                    users::password_hash.eq(&new.password_hash),
                ))
                // Either unique index: the name's key, or (the same name exactly) the name.
                .on_conflict_do_nothing()
                .returning(UserRow::as_returning())
                .get_result(conn)
                .optional()?)
        })
        .await
    }

    /// The id and password hash of an account that can log in, found by the name in any case.
    pub async fn credentials(
        &self,
        username: String,
    ) -> Result<Option<(UserId, String)>, StoreError> {
        self.run(move |conn| {
            let row = by_name(&username)
                .filter(users::password_hash.is_not_null())
                .select((users::id, users::password_hash))
                .first::<(i64, Option<String>)>(conn)
                .optional()?;
            Ok(row.and_then(|(id, hash)| hash.map(|hash| (UserId(id), hash))))
        })
        .await
    }

    /// Users whose user name (compared by its key: any case, any Unicode form) starts with
    /// `prefix`, by user name (so the user named `prefix` first), then those whose display name
    /// (in any case) does; at most `limit`. Each half is a range scan of its index of the
    /// `user_search` migration, in the index's (byte) order, that stops at `limit` rows: a
    /// one-letter prefix that a million users share reads forty rows.
    pub async fn search_users(
        &self,
        prefix: String,
        limit: i64,
    ) -> Result<Vec<UserSummary>, StoreError> {
        // PostgreSQL text cannot hold NUL, and no name has one: no match, not a failure.
        if prefix.contains('\0') {
            return Ok(Vec::new());
        }
        self.run(move |conn| {
            let by_name = format!("{}%", like_escaped(&username_key(&prefix)));
            let by_display = format!("{}%", like_escaped(&prefix.to_lowercase()));
            let rows = diesel::sql_query(SEARCH_USERS)
                .bind::<Text, _>(by_name)
                .bind::<Text, _>(by_display)
                .bind::<BigInt, _>(limit)
                .load::<FoundUser>(conn)?;
            Ok(rows
                .into_iter()
                .map(|row| UserSummary {
                    user_id: UserId(row.id),
                    username: row.username,
                    display_name: row.display_name,
                })
                .collect())
        })
        .await
    }

    /// The password hash of a user.
    pub async fn password_hash(&self, user: UserId) -> Result<Option<String>, StoreError> {
        self.run(move |conn| {
            Ok(users::table
                .find(user.0)
                .select(users::password_hash)
                .first::<Option<String>>(conn)
                .optional()?
                .flatten())
        })
        .await
    }

    /// Replaces a password and ends every other session of the user.
    pub async fn set_password(
        &self,
        user: UserId,
        password_hash: String,
        keep_session: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            conn.transaction(|conn| {
                diesel::update(users::table.find(user.0))
                    .set(users::password_hash.eq(&password_hash))
                    .execute(conn)?;
                diesel::delete(
                    sessions::table
                        .filter(sessions::user_id.eq(user.0))
                        .filter(sessions::token_hash.ne(&keep_session)),
                )
                .execute(conn)?;
                Ok(())
            })
        })
        .await
    }

    pub async fn create_session(
        &self,
        user: UserId,
        token_hash: Vec<u8>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::insert_into(sessions::table)
                .values((
                    sessions::token_hash.eq(&token_hash),
                    sessions::user_id.eq(user.0),
                    sessions::expires_at.eq(expires_at),
                ))
                .execute(conn)?;
            Ok(())
        })
        .await
    }

    /// The user of an unexpired session.
    pub async fn session_user(
        &self,
        token_hash: Vec<u8>,
    ) -> Result<Option<SessionUser>, StoreError> {
        self.batches
            .sessions
            .get(&self.connections, token_hash, session_users)
            .await
    }

    /// Which of these sessions (token hashes) are still live: not ended, not expired.
    pub async fn live_sessions(
        &self,
        token_hashes: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.run(move |conn| {
            Ok(sessions::table
                .filter(sessions::token_hash.eq_any(&token_hashes))
                .filter(sessions::expires_at.gt(Utc::now()))
                .select(sessions::token_hash)
                .load::<Vec<u8>>(conn)?)
        })
        .await
    }

    pub async fn delete_session(&self, token_hash: Vec<u8>) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::delete(sessions::table.find(&token_hash)).execute(conn)?;
            // Expired sessions go with whoever logs out next; nothing else needs them.
            diesel::delete(sessions::table.filter(sessions::expires_at.lt(Utc::now())))
                .execute(conn)?;
            Ok(())
        })
        .await
    }

    pub async fn load_profile(&self, user: UserId) -> Result<Option<UserRow>, StoreError> {
        self.run(move |conn| {
            Ok(users::table
                .find(user.0)
                .select(UserRow::as_select())
                .first(conn)
                .optional()?)
        })
        .await
    }

    /// Applies the present fields of `update`; `None` if the user does not exist.
    pub async fn update_profile(
        &self,
        user: UserId,
        update: ProfileUpdate,
    ) -> Result<Option<UserRow>, StoreError> {
        self.run(move |conn| {
            conn.transaction(|conn| {
                let Some(mut row) = users::table
                    .find(user.0)
                    .select(UserRow::as_select())
                    .for_update()
                    .first(conn)
                    .optional()?
                else {
                    return Ok(None);
                };
                if let Some(name) = update.display_name {
                    row.display_name = name;
                }
                if let Some(status) = update.status_text {
                    row.status_text = status;
                }
                if let Some(color) = update.avatar_color {
                    row.avatar_color = color;
                }
                if let Some(initials) = update.avatar_initials {
                    row.avatar_initials = initials;
                }
                diesel::update(users::table.find(user.0))
                    .set((
                        users::display_name.eq(&row.display_name),
                        users::status_text.eq(&row.status_text),
                        users::avatar_color.eq(&row.avatar_color),
                        users::avatar_initials.eq(&row.avatar_initials),
                    ))
                    .execute(conn)?;
                Ok(Some(row))
            })
        })
        .await
    }

    /// The user with this name in any case.
    pub async fn user_by_name(&self, username: String) -> Result<Option<UserId>, StoreError> {
        // PostgreSQL text cannot hold NUL, and no name has one: nobody, not a failed query.
        if username.contains('\0') {
            return Ok(None);
        }
        self.run(move |conn| {
            Ok(by_name(&username)
                .select(users::id)
                .first::<i64>(conn)
                .optional()?
                .map(UserId))
        })
        .await
    }
}

/// The user a name means: the one with its key, or, for the younger of two accounts whose names
/// collided before keys existed, the one with exactly that name (see the migration that added
/// the key).
fn by_name(username: &str) -> users::BoxedQuery<'static, diesel::pg::Pg> {
    users::table
        .filter(
            users::username_key
                .eq(username_key(username))
                .or(users::username.eq(username.to_owned())),
        )
        .order(users::username.eq(username.to_owned()).desc())
        .into_boxed()
}

/// The live sessions' users for a batch of token hashes, in one query.
fn session_users(
    conn: &mut super::DbConnection,
    token_hashes: Vec<Vec<u8>>,
) -> Result<Vec<Option<SessionUser>>, StoreError> {
    let rows = sessions::table
        .inner_join(users::table)
        .filter(sessions::token_hash.eq_any(&token_hashes))
        .filter(sessions::expires_at.gt(Utc::now()))
        .select((sessions::token_hash, users::id, users::display_name))
        .load::<(Vec<u8>, i64, String)>(conn)?;
    let found: HashMap<Vec<u8>, SessionUser> = rows
        .into_iter()
        .map(|(hash, id, display_name)| {
            let user = SessionUser {
                user_id: UserId(id),
                display_name,
            };
            (hash, user)
        })
        .collect();
    Ok(token_hashes
        .iter()
        .map(|hash| found.get(hash).cloned())
        .collect())
}
