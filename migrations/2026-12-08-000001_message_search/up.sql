-- `GET /api/search` finds messages by their words: a GIN index over each message's words
-- (`simple`: lower case, no stemming, no stop words, the same for every language), without the
-- deleted ones, which are never found. Built CONCURRENTLY (this migration runs outside a
-- transaction: metadata.toml), so a large table keeps taking inserts, edits and deletes while
-- it is built; only the brief start and end take a lock that waits for running transactions.
-- A build that fails leaves an invalid index: DROP INDEX CONCURRENTLY messages_words, then
-- start the node again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_words
    ON messages USING gin (to_tsvector('simple', body))
    WHERE deleted_at IS NULL;
