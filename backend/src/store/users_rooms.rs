//! Users and rooms.

use super::schema::{rooms, users};
use super::{Store, StoreError};
use chat_protocol::{RoomId, Seq, UserId};
use diesel::prelude::*;
use diesel::upsert::excluded;

impl Store {
    /// The user with this name, created on first use.
    pub async fn find_or_create_user(&self, name: String) -> Result<UserId, StoreError> {
        self.run(move |conn| {
            let id = diesel::insert_into(users::table)
                .values((users::username.eq(&name), users::display_name.eq(&name)))
                .on_conflict(users::username)
                .do_update()
                .set(users::display_name.eq(excluded(users::display_name)))
                .returning(users::id)
                .get_result::<i64>(conn)?;
            Ok(UserId(id))
        })
        .await
    }

    /// The room with this name and its newest sequence number, created on first use.
    pub async fn find_or_create_room(&self, name: String) -> Result<(RoomId, Seq), StoreError> {
        self.run(move |conn| {
            let (id, last_seq) = diesel::insert_into(rooms::table)
                .values(rooms::name.eq(&name))
                .on_conflict(rooms::name)
                .do_update()
                .set(rooms::name.eq(excluded(rooms::name)))
                .returning((rooms::id, rooms::last_seq))
                .get_result::<(i64, i64)>(conn)?;
            Ok((RoomId(id), Seq(last_seq)))
        })
        .await
    }
}
