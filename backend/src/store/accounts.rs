//! Users, their password hashes, sessions and profiles.

use super::schema::{sessions, users};
use super::{Store, StoreError};
use chat_protocol::api::{Avatar, Profile, ProfileUpdate};
use chat_protocol::UserId;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
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
    /// Creates an account; `None` when the user name is taken.
    pub async fn create_user(&self, new: NewUser) -> Result<Option<UserRow>, StoreError> {
        self.run(move |conn| {
            Ok(diesel::insert_into(users::table)
                .values((
                    users::username.eq(&new.username),
                    users::display_name.eq(&new.display_name),
                    users::avatar_initials.eq(&new.avatar_initials),
                    users::password_hash.eq(&new.password_hash),
                ))
                .on_conflict(users::username)
                .do_nothing()
                .returning(UserRow::as_returning())
                .get_result(conn)
                .optional()?)
        })
        .await
    }

    /// The id and password hash of an account that can log in.
    pub async fn credentials(
        &self,
        username: String,
    ) -> Result<Option<(UserId, String)>, StoreError> {
        self.run(move |conn| {
            let row = users::table
                .filter(users::username.eq(&username))
                .filter(users::password_hash.is_not_null())
                .select((users::id, users::password_hash))
                .first::<(i64, Option<String>)>(conn)
                .optional()?;
            Ok(row.and_then(|(id, hash)| hash.map(|hash| (UserId(id), hash))))
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

    pub async fn user_by_name(&self, username: String) -> Result<Option<UserId>, StoreError> {
        self.run(move |conn| {
            Ok(users::table
                .filter(users::username.eq(&username))
                .select(users::id)
                .first::<i64>(conn)
                .optional()?
                .map(UserId))
        })
        .await
    }
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
