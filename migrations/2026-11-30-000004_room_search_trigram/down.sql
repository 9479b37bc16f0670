CREATE INDEX rooms_public_name_search ON rooms (lower(name) text_pattern_ops) WHERE kind = 'public';
DROP INDEX rooms_public_name_trigram;
-- The extension stays: other objects of the database may use it.
