#!/bin/sh
# Run once by the postgres image when it creates the primary's data directory, on its temporary
# server: lets the standby's replication connection in with the password (the image's own rule,
# `host all all all`, does not cover replication connections), and makes every commit wait until
# the standby named `standby` has it. ALTER SYSTEM writes postgresql.auto.conf, read from the
# next start on: the image's temporary server, which creates the `chat` database, must not wait
# for a standby that cannot exist yet.
set -eu
echo "host replication postgres all scram-sha-256" >> "$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -c "ALTER SYSTEM SET synchronous_standby_names = 'standby'"
