#!/bin/sh
# Starts chat-server with a node id of its own.
#
# Every node of a deployment needs a unique CHAT_NODE_ID: it names the node's RabbitMQ queue, and
# two nodes with the same id would fight over one exclusive queue. Each container has a unique
# host name (the container id under Docker, the pod name under Kubernetes), so it is the default
# here, and `docker compose up --scale chat=N` needs no per-replica settings. A CHAT_NODE_ID set
# in the environment still wins.
set -eu

CHAT_NODE_ID="${CHAT_NODE_ID:-$(uname -n)}"
export CHAT_NODE_ID

# exec: chat-server becomes PID 1 and receives SIGTERM from `docker stop` itself, so it drains.
exec chat-server "$@"
