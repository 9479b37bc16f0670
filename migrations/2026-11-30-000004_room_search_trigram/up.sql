-- Room search matches a substring of the name (`lower(name) LIKE '%…%'`), which a b-tree
-- cannot serve: a trigram index can, so a search reads the matching rooms, not every room.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX rooms_public_name_trigram ON rooms USING gin (lower(name) gin_trgm_ops)
    WHERE kind = 'public';
-- Served prefix matches only, which the search never asks for.
DROP INDEX rooms_public_name_search;
