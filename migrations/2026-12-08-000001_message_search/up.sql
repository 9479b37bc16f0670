-- `GET /api/search` finds messages by their words: a GIN index over each message's words
-- (`simple`: lower case, no stemming, no stop words, the same for every language). A deleted
-- message's body is emptied, so it has no words to find. The index is not partial: PostgreSQL
-- keeps statistics of an index's expression (how common each word is) only for whole-table
-- indexes, and without them it cannot tell a common word, better found by reading the newest
-- messages (`messages_by_time`), from a rare one, better found through this index.
-- Built CONCURRENTLY (this migration runs outside a transaction: metadata.toml), so a large
-- table keeps taking inserts, edits and deletes while it is built; only the brief start and
-- end wait for running transactions. A build that fails leaves an invalid index:
-- DROP INDEX CONCURRENTLY messages_words, then start the node again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_words
    ON messages USING gin (to_tsvector('simple', body));
