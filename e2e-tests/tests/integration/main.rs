//! Integration tests against the real PostgreSQL and RabbitMQ, with nodes in this process
//! (and as child processes where a node must die).

mod accounts;
mod authorization;
mod bad_input;
mod cache_versions;
mod edits;
mod history;
mod ingest_pacing;
mod leave_across_nodes;
mod membership_recheck;
mod node;
mod openapi;
mod persist_counters;
mod pipeline_dead_letter;
mod pipeline_dedup;
mod pipeline_failures;
mod pipeline_lanes;
mod pipeline_order;
mod presence;
mod profiles_cache;
mod rate_limits;
mod read_markers;
mod resume;
mod rooms;
mod rooms_cache;
mod shard_balance;
mod store_reads;
mod two_nodes;
mod typing;
