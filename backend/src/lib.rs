//! The chat node.
//!
//! A message's path through this crate:
//! - [`session`] reads a `send` frame from a WebSocket and hands it to the [`bus`], which
//!   publishes it to the room's ingest shard and waits for RabbitMQ's confirm (`accepted`);
//! - [`persister`] (on whichever node is the shard's active consumer) stores it with the
//!   [`store`] under the room's next sequence number and publishes it for delivery;
//! - the [`bus`] hands each delivery from this node's queue to [`fanout`], which passes it to
//!   the [`delivery`] core: per room in order, gaps filled from the store, queued by the hub to
//!   every local member's connection (and a joining connection gets what it missed first).
//!
//! [`app`] wires them together; [`http`] serves the endpoints, through [`listener`] (which
//! takes connections in under the limits of [`admission`] and closes silent ones) and [`web`]
//! (the web client's files, security headers); [`config`], [`telemetry`], [`metrics`] and
//! [`access_log`] (each request counted by route and logged at debug) are the operator's side.
//!
//! Who may do what: [`auth`] (passwords, sessions, origins) and [`api`] (the REST API) sign users
//! in; [`directory`] answers profile, room and membership questions through the [`cache`];
//! [`rate_limit`] bounds sends and login attempts; [`connection`] bounds what one WebSocket may
//! hold and ends it when its session ends or its peer goes silent.
//!
//! Around messages: [`history`] serves history pages (the newest from the cache); [`presence`]
//! tracks who is online across nodes and syncs read markers to each user's connections;
//! [`watch`] tells connections of new messages in their user's rooms they have not joined.

pub mod access_log;
pub mod admission;
pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cache;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod directory;
pub mod fanout;
pub mod forwarded;
pub mod history;
pub mod http;
pub mod listener;
pub mod locks;
pub mod membership;
pub mod metrics;
pub mod persister;
pub mod presence;
pub mod rate_limit;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod watch;
pub mod web;

pub use app::{run, run_with_operator, App};
pub use config::Config;
/// The hub under its own name too, as `bus::wire` names the frames it decodes for it.
pub use delivery::hub;
