ALTER TABLE rooms DROP COLUMN invite_policy;
DROP INDEX rooms_public_name_key;
CREATE UNIQUE INDEX rooms_public_name ON rooms (name) WHERE kind = 'public';
ALTER TABLE rooms DROP COLUMN name_key;
DROP INDEX users_username_key_unique;
ALTER TABLE users DROP COLUMN username_key;
