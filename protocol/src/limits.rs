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
/// User names: this many characters at most (ASCII letters, digits, `_`, `-`, `.`).
pub const MAX_USERNAME_CHARS: usize = 32;
/// Passwords: at least this many characters …
pub const MIN_PASSWORD_CHARS: usize = 8;
/// … and at most this many (argon2 hashes whatever it gets; the cap keeps hashing cheap).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest profile status text, in characters.
pub const MAX_STATUS_CHARS: usize = 140;
/// Longest avatar initials, in characters.
pub const MAX_INITIALS_CHARS: usize = 3;
/// Largest REST request body, in bytes.
pub const MAX_REQUEST_BYTES: u64 = 16 * 1024;
/// Most rooms or messages in one REST answer.
pub const MAX_PAGE: usize = 200;
/// Unread counts stop here: a count of this many means this many or more (shown as "999+"), so
/// reading them costs the same whatever the backlog.
pub const MAX_UNREAD_COUNT: i64 = 1000;
/// Most users in one answer of `GET /api/users?q=`.
pub const MAX_USER_SEARCH: usize = 20;
/// Longest `q` of `GET /api/users`: no user name or display name is longer.
pub const MAX_USER_QUERY_CHARS: usize = if MAX_USERNAME_CHARS > MAX_NAME_CHARS {
    MAX_USERNAME_CHARS
} else {
    MAX_NAME_CHARS
};

/// WebSocket close code: the connection's session ended (logout, password change, expiry or
/// any other revocation). The client shows its sign-in screen and does not reconnect.
pub const CLOSE_SESSION_ENDED: u16 = 4001;

/// WebSocket close code: the connection was silent (no frame, no answer to the server's pings)
/// for longer than the node's timeout. The client reconnects.
pub const CLOSE_SILENT: u16 = 4002;
/// Longest `q` of `GET /api/search`, in characters.
pub const MAX_SEARCH_QUERY_CHARS: usize = 200;
/// Most words a search may look for.
pub const MAX_SEARCH_TERMS: usize = 8;
/// Most messages in one page of `GET /api/search` (and the default).
pub const MAX_SEARCH_RESULTS: usize = 50;
pub const DEFAULT_SEARCH_RESULTS: usize = 20;
