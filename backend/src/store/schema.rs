//! Diesel's view of the tables in `migrations/`.

diesel::table! {
    users (id) {
        id -> Int8,
        username -> Text,
        display_name -> Text,
        created_at -> Timestamptz,
        password_hash -> Nullable<Text>,
        status_text -> Text,
        avatar_color -> Text,
        avatar_initials -> Text,
        username_key -> Text,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        user_id -> Int8,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    rooms (id) {
        id -> Int8,
        name -> Text,
        last_seq -> Int8,
        created_at -> Timestamptz,
        kind -> Text,
        created_by -> Nullable<Int8>,
        direct_key -> Nullable<Text>,
        name_key -> Text,
        invite_policy -> Text,
    }
}

diesel::table! {
    memberships (room_id, user_id) {
        room_id -> Int8,
        user_id -> Int8,
        role -> Text,
        joined_at -> Timestamptz,
        last_read_seq -> Int8,
    }
}

diesel::table! {
    messages (room_id, seq) {
        room_id -> Int8,
        seq -> Int8,
        sender_id -> Int8,
        client_msg_id -> Text,
        body -> Text,
        sent_at -> Timestamptz,
        stored_at -> Timestamptz,
        edited_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
        deleted_by -> Nullable<Int8>,
    }
}

diesel::joinable!(messages -> rooms (room_id));
diesel::joinable!(messages -> users (sender_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(memberships -> rooms (room_id));
diesel::joinable!(memberships -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, sessions, rooms, memberships, messages);
