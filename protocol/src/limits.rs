//! Size limits enforced by the server and mirrored by the client.

/// Largest WebSocket frame a client may send, in bytes.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;
/// Longest message body, in characters (Unicode scalar values).
pub const MAX_BODY_CHARS: usize = 4_000;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 64;
/// Longest client message id, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
