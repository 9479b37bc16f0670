//! Integration tests against the real PostgreSQL and RabbitMQ, with nodes in this process.

mod bad_input;
mod node;
mod two_nodes;
