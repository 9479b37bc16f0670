DROP TABLE memberships;
DROP INDEX rooms_public_name_search;
DROP INDEX rooms_public_name;
ALTER TABLE rooms
    DROP CONSTRAINT rooms_direct_key_only_for_direct,
    DROP COLUMN direct_key,
    DROP COLUMN created_by,
    DROP COLUMN kind;
ALTER TABLE rooms ADD CONSTRAINT rooms_name_key UNIQUE (name);
DROP TABLE sessions;
ALTER TABLE users
    DROP COLUMN avatar_initials,
    DROP COLUMN avatar_color,
    DROP COLUMN status_text,
    DROP COLUMN password_hash;
