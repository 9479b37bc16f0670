-- Edited and deleted messages, and each member's read marker.

-- A deleted message keeps its row and sequence number, so history has no holes; its body is
-- emptied.
ALTER TABLE messages
    ADD COLUMN edited_at  TIMESTAMPTZ,
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN deleted_by BIGINT REFERENCES users (id);

-- Everything up to this sequence number is read. Only moves forward.
ALTER TABLE memberships
    ADD COLUMN last_read_seq BIGINT NOT NULL DEFAULT 0 CHECK (last_read_seq >= 0);
