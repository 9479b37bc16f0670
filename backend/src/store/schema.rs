//! Diesel's view of the tables in `migrations/`.

diesel::table! {
    users (id) {
        id -> Int8,
        username -> Text,
        display_name -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    rooms (id) {
        id -> Int8,
        name -> Text,
        last_seq -> Int8,
        created_at -> Timestamptz,
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
    }
}

diesel::joinable!(messages -> rooms (room_id));
diesel::joinable!(messages -> users (sender_id));
diesel::allow_tables_to_appear_in_same_query!(users, rooms, messages);
