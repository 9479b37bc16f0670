//! Fuzzing, inside `cargo test`, of everything in this crate that reads bytes from outside:
//! the client frame parser (`ClientFrame::parse`, what a node runs on every WebSocket text
//! frame) and the JSON bus payloads (`IngestBatch::decode`, `Delivery::decode`).
//!
//! Each property runs a bounded number of generated cases (`CHAT_FUZZ_CASES` raises it for a
//! longer run), then the seed inputs in `tests/corpus/` are replayed. A failing case proptest
//! finds is kept in `proptest-regressions/` and tried first on every later run.

mod bus;
mod frames;
mod support;
