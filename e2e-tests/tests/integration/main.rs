//! Integration tests against the real PostgreSQL and RabbitMQ, with nodes in this process.

mod accounts;
mod authorization;
mod bad_input;
mod node;
mod profiles_cache;
mod rate_limits;
mod rooms;
mod two_nodes;
