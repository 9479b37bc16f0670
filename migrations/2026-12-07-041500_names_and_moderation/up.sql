-- Names compared as people read them, and who may invite into a room.

-- A user name's key: NFKC, then lower case. Two accounts whose names differ only in case or in
-- Unicode presentation would pass for each other, so the key is unique. The server writes the
-- key of every new name; this backfills the existing ones.
ALTER TABLE users ADD COLUMN username_key TEXT;
UPDATE users SET username_key = lower(normalize(username, NFKC));
-- Existing collisions: the oldest account keeps the key. Each younger one gets a key no name can
-- produce (a control character and its id appended), so it keeps its rows, still signs in with
-- its exact spelling, and nobody can register a name that collides with it again.
UPDATE users AS younger SET username_key = younger.username_key || chr(1) || younger.id
WHERE EXISTS (SELECT 1 FROM users AS older
              WHERE older.username_key = younger.username_key AND older.id < younger.id);
ALTER TABLE users ALTER COLUMN username_key SET NOT NULL;
CREATE UNIQUE INDEX users_username_key_unique ON users (username_key);

-- A room name's key: NFKC, lower case, whitespace trimmed and runs of it made one space. Unique
-- among public rooms, as the name itself was.
ALTER TABLE rooms ADD COLUMN name_key TEXT;
UPDATE rooms SET name_key = regexp_replace(
    regexp_replace(lower(normalize(name, NFKC)), '^\s+|\s+$', '', 'g'), '\s+', ' ', 'g');
-- Existing collisions among public rooms: the oldest keeps the key, as for users.
UPDATE rooms AS younger SET name_key = younger.name_key || chr(1) || younger.id
WHERE younger.kind = 'public'
  AND EXISTS (SELECT 1 FROM rooms AS older
              WHERE older.kind = 'public' AND older.name_key = younger.name_key
                AND older.id < younger.id);
ALTER TABLE rooms ALTER COLUMN name_key SET NOT NULL;
DROP INDEX rooms_public_name;
CREATE UNIQUE INDEX rooms_public_name_key ON rooms (name_key) WHERE kind = 'public';

-- Who may invite: the room's owners, or any member. Private rooms are owners-only unless an
-- owner opens them up; in public rooms anyone may join anyway.
ALTER TABLE rooms
    ADD COLUMN invite_policy TEXT NOT NULL DEFAULT 'members'
        CHECK (invite_policy IN ('owners', 'members'));
UPDATE rooms SET invite_policy = 'owners' WHERE kind = 'private';
