-- Accounts (passwords, sessions, profiles), room kinds and memberships.

ALTER TABLE users
    -- NULL for users created before accounts existed: they cannot log in.
    ADD COLUMN password_hash   TEXT,
    ADD COLUMN status_text     TEXT NOT NULL DEFAULT '',
    ADD COLUMN avatar_color    TEXT NOT NULL DEFAULT '#2f6fde',
    ADD COLUMN avatar_initials TEXT NOT NULL DEFAULT '';

-- Only a hash of each session token is kept, so a leaked table does not sign anyone in.
CREATE TABLE sessions (
    token_hash BYTEA       PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- A globally unique name would let anyone probe for private rooms by name: names are unique
-- among public rooms only.
ALTER TABLE rooms DROP CONSTRAINT rooms_name_key;
ALTER TABLE rooms
    ADD COLUMN kind       TEXT   NOT NULL DEFAULT 'public'
                          CHECK (kind IN ('public', 'private', 'direct')),
    ADD COLUMN created_by BIGINT REFERENCES users (id),
    -- For direct rooms: "<smaller user id>:<larger user id>", one room per pair.
    ADD COLUMN direct_key TEXT   UNIQUE,
    ADD CONSTRAINT rooms_direct_key_only_for_direct CHECK ((kind = 'direct') = (direct_key IS NOT NULL));
CREATE UNIQUE INDEX rooms_public_name ON rooms (name) WHERE kind = 'public';
CREATE INDEX rooms_public_name_search ON rooms (lower(name) text_pattern_ops) WHERE kind = 'public';

CREATE TABLE memberships (
    room_id   BIGINT      NOT NULL REFERENCES rooms (id),
    user_id   BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      TEXT        NOT NULL CHECK (role IN ('owner', 'member')),
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user_id ON memberships (user_id);
