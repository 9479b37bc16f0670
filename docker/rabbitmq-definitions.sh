#!/bin/sh
# Writes the definitions a broker of the compose deployment loads: the shipped ones ($1) with the
# `chat` user's password taken from CHAT_RABBITMQ_PASSWORD instead of the hash they carry, into
# $2 (readable by the broker only). RabbitMQ hashes a `password` given in definitions when it
# imports them, at every boot, so the password set in docker/.env is always the one in force.
set -eu

template="$1"
out="$2"
password="${CHAT_RABBITMQ_PASSWORD:?set RABBITMQ_CHAT_PASSWORD in docker/.env}"

# It is also part of the nodes' AMQP_URL, and goes into JSON here: unreserved URL characters only.
case "$password" in
  *[!A-Za-z0-9._~-]*)
    echo "RABBITMQ_CHAT_PASSWORD may hold letters, digits and . _ ~ - only" >&2
    exit 1
    ;;
esac

umask 077
# Only the `chat` user's entry: from its name to the end of its object.
sed "/\"name\": \"chat\"/,/}/ s|\"password_hash\": \"[^\"]*\"|\"password\": \"$password\"|" \
  "$template" > "$out"
grep -q "\"password\": \"$password\"" "$out" || {
  echo "no password_hash of the chat user in $template" >&2
  exit 1
}
if id rabbitmq >/dev/null 2>&1; then
  chown rabbitmq:rabbitmq "$out"
fi
