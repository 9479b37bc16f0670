//! The browser client: a Leptos app (client-side rendering) compiled to WebAssembly and
//! loaded by `static/index.html` through `static/boot.js`.
//!
//! The state is plain Rust, tested on the host with `cargo test -p web-client`:
//! - [`timeline`]: a room's messages by sequence number and the user's sends (pending, failed),
//! - [`unread`]: the user's rooms with live unread counts and the tab title,
//! - [`markdown`]: the Markdown subset of messages, parsed into a tree (never HTML),
//! - [`picker`]: the user picker of invitations and direct messages (suggestions, arrow keys),
//! - [`words`]: error codes in plain words, times and days.
//!
//! In the browser:
//! - `state`: every signal of the app in one place, and the actions on them,
//! - `live`: the WebSocket to the chat node, reconnected and resumed,
//! - `api`: the REST calls,
//! - `ui`: the views, functions of the state,
//! - `browser`: the tab title, storage, notifications, timers.
//!
//! Every frame and REST body is a `chat_protocol` type; this crate writes no JSON by hand.

pub mod markdown;
pub mod picker;
pub mod timeline;
pub mod unread;
pub mod words;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(target_arch = "wasm32")]
mod live;
#[cfg(target_arch = "wasm32")]
mod state;
#[cfg(target_arch = "wasm32")]
mod ui;

/// Runs when the module is instantiated: draws the app into the page.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    leptos::mount::mount_to_body(ui::Root);
}
