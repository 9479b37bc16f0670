//! Integration tests against the real PostgreSQL and RabbitMQ, with nodes in this process
//! (and as child processes where a node must die).

// A node's future, spawned by the tests, is deep enough that proving it `Send` needs more than
// the default 128 steps.
#![recursion_limit = "256"]

mod accounts;
mod authorization;
mod backup;
mod bad_input;
mod bus_failover;
mod cache_pool;
mod cache_versions;
mod compose;
mod connections;
mod edits;
mod fanout_gaps;
mod history;
mod ingest_pacing;
mod leave_across_nodes;
mod membership_recheck;
mod migrations;
mod moderation;
mod names;
mod node;
mod openapi;
mod ops_kit;
mod persist_counters;
mod pipeline_dead_letter;
mod pipeline_dedup;
mod pipeline_failures;
mod pipeline_lanes;
mod pipeline_order;
mod postgres_failover;
mod presence;
mod profiles_cache;
mod rabbitmq_user;
mod rate_limits;
mod read_markers;
mod resume;
mod room_activity;
mod room_frame_limits;
mod room_frames;
mod rooms;
mod rooms_cache;
mod search;
mod session_revocation;
mod shard_balance;
mod slow_clients;
mod store_reads;
mod two_nodes;
mod typing;
mod user_search;
mod web_serving;
mod ws_liveness;
