-- `GET /api/users?q=` finds users by the start of their user name (its key) or display name
-- (lower case). In the "C" collation a b-tree serves `LIKE 'prefix%'` as a range, in the order
-- the search answers in, so each half of the search stops after its first rows.
CREATE INDEX users_username_key_prefix ON users (username_key COLLATE "C");
CREATE INDEX users_display_name_prefix ON users ((lower(display_name)) COLLATE "C");
