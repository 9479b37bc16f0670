ALTER TABLE memberships DROP COLUMN last_read_seq;
ALTER TABLE messages DROP COLUMN deleted_by, DROP COLUMN deleted_at, DROP COLUMN edited_at;
