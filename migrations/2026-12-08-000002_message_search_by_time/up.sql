-- Search answers newest first. For a word in many messages, reading the newest messages in
-- order and keeping those that match finds a page long before collecting every match would;
-- this index gives that order (scanned backwards). CONCURRENTLY, as `message_search`.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_by_time
    ON messages (sent_at, room_id, seq)
    WHERE deleted_at IS NULL;
