-- Users, rooms and the messages stored in them.

CREATE TABLE users (
    id           BIGSERIAL PRIMARY KEY,
    username     TEXT        NOT NULL UNIQUE,
    display_name TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE rooms (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT        NOT NULL UNIQUE,
    -- The sequence number of the newest stored message; the persister that owns the room's
    -- shard advances it in the same transaction that inserts the messages.
    last_seq   BIGINT      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    room_id       BIGINT      NOT NULL REFERENCES rooms (id),
    seq           BIGINT      NOT NULL CHECK (seq > 0),
    sender_id     BIGINT      NOT NULL REFERENCES users (id),
    client_msg_id TEXT        NOT NULL,
    body          TEXT        NOT NULL,
    sent_at       TIMESTAMPTZ NOT NULL,
    stored_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, seq),
    UNIQUE (sender_id, client_msg_id)
);
