//! REST bodies: what `/api/*` takes and answers, and the checks on every client-chosen field.
//!
//! Every error answer is an [`ApiError`] with a stable [`ErrorCode`]; the HTTP status says the
//! class (400, 401, 403, 404, 409, 413, 429, 500).

use crate::frame::{validate_name, validate_room_name, ChatMessage, ErrorCode, PresenceStatus};
use crate::ids::{RoomId, Seq, UserId};
use crate::limits;
use serde::{Deserialize, Serialize};

/// `POST /api/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
    /// Defaults to the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// `POST /api/password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// The answer to register and login. The token is also set as the session cookie; clients
/// that are not browsers send it as `Authorization: Bearer <token>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub token: String,
    pub expires_at_ms: i64,
    pub profile: Profile,
}

/// A user as others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    pub avatar: Avatar,
    pub status_text: String,
}

/// An avatar drawn from a colour and initials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Avatar {
    /// `#rrggbb`.
    pub color: String,
    pub initials: String,
}

/// `PATCH /api/me`: the fields to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_initials: Option<String>,
}

/// Who may find and join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// Listed and searchable; anyone signed in may join.
    Public,
    /// Invisible to non-members; members invite.
    Private,
    /// The one private room of a pair of users.
    Direct,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
            RoomKind::Direct => "direct",
        }
    }

    pub fn parse(text: &str) -> Option<RoomKind> {
        match text {
            "public" => Some(RoomKind::Public),
            "private" => Some(RoomKind::Private),
            "direct" => Some(RoomKind::Direct),
            _ => None,
        }
    }
}

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "owner" => Some(Role::Owner),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// Who may invite users into a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitePolicy {
    /// Only the room's owners: the default of private rooms.
    Owners,
    /// Any member: the default of public rooms, which anyone may join anyway.
    Members,
}

impl InvitePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            InvitePolicy::Owners => "owners",
            InvitePolicy::Members => "members",
        }
    }

    pub fn parse(text: &str) -> Option<InvitePolicy> {
        match text {
            "owners" => Some(InvitePolicy::Owners),
            "members" => Some(InvitePolicy::Members),
            _ => None,
        }
    }

    /// What a new room of `kind` starts with.
    pub fn default_for(kind: RoomKind) -> InvitePolicy {
        match kind {
            RoomKind::Private => InvitePolicy::Owners,
            RoomKind::Public | RoomKind::Direct => InvitePolicy::Members,
        }
    }
}

/// `PATCH /api/rooms/{id}` (owners only): the settings to change; absent ones stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_policy: Option<InvitePolicy>,
}

/// `POST /api/rooms`. `visibility` is `public` or `private`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRoomRequest {
    pub name: String,
    pub visibility: RoomKind,
}

/// A room as its members (or, for public rooms, anyone) see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub room_id: RoomId,
    pub name: String,
    pub kind: RoomKind,
    /// The caller's role, when the caller is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// In `GET /api/me/rooms`: the caller's read state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<Unread>,
    /// In `GET /api/rooms/{id}` and `PATCH /api/rooms/{id}`, for members: who may invite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_policy: Option<InvitePolicy>,
}

/// A member's read state of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unread {
    /// The room's newest sequence number.
    pub last_seq: Seq,
    /// Everything up to here is read.
    pub last_read_seq: Seq,
    /// Messages after `last_read_seq` from other members, not deleted, counted up to
    /// [`crate::limits::MAX_UNREAD_COUNT`] (which means that many or more).
    pub count: i64,
}

/// A list of rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomList {
    pub rooms: Vec<Room>,
}

/// `POST /api/rooms/{id}/invite` and `POST /api/direct`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub username: String,
}

/// One user found by `GET /api/users?q=`: what a picker shows, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
}

/// `GET /api/users?q=`: users whose user name starts with `q` (by user name), then those whose
/// display name does, in any case; at most [`limits::MAX_USER_SEARCH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserSummary>,
}

/// One member of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    /// As this node sees it now; presence changes arrive as `presence` frames.
    pub presence: PresenceStatus,
}

/// `GET /api/rooms/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<Member>,
}

/// `GET /api/rooms/{id}/messages`: stored messages in sequence order (oldest first), including
/// deleted ones (with an empty body), so sequence numbers have no holes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<ChatMessage>,
}

/// Every REST error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited` (also in the `Retry-After` header, in whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// A field that failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: ErrorCode,
    pub message: String,
}

impl Invalid {
    fn new(code: ErrorCode, message: impl Into<String>) -> Invalid {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

/// A user name: 1 to 32 ASCII letters, digits, `_`, `-` or `.` (so none of the characters
/// [`crate::names`] forbids). Unique without regard to case.
pub fn validate_username(username: &str) -> Result<(), Invalid> {
    let ok = !username.is_empty()
        && crate::names::forbidden_char(username).is_none()
        && username.len() <= limits::MAX_USERNAME_CHARS
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            ErrorCode::InvalidUsername,
            format!(
                "a user name has 1 to {} letters, digits, '_', '-' or '.'",
                limits::MAX_USERNAME_CHARS
            ),
        ))
    }
}

/// A password: 8 to 128 characters.
pub fn validate_password(password: &str) -> Result<(), Invalid> {
    let chars = password.chars().count();
    if (limits::MIN_PASSWORD_CHARS..=limits::MAX_PASSWORD_CHARS).contains(&chars) {
        Ok(())
    } else {
        Err(Invalid::new(
            ErrorCode::InvalidPassword,
            format!(
                "a password has {} to {} characters",
                limits::MIN_PASSWORD_CHARS,
                limits::MAX_PASSWORD_CHARS
            ),
        ))
    }
}

/// A display name (same rule as before accounts existed).
pub fn validate_display_name(name: &str) -> Result<(), Invalid> {
    validate_name(name).map_err(|e| Invalid::new(e.code, e.message))
}

/// A room name.
pub fn validate_room(name: &str) -> Result<(), Invalid> {
    validate_room_name(name).map_err(|e| Invalid::new(e.code, e.message))
}

/// Checks every present field of a profile update.
pub fn validate_profile_update(update: &ProfileUpdate) -> Result<(), Invalid> {
    if let Some(name) = &update.display_name {
        validate_display_name(name)?;
    }
    if let Some(status) = &update.status_text {
        if status.chars().count() > limits::MAX_STATUS_CHARS || status.chars().any(char::is_control)
        {
            return Err(Invalid::new(
                ErrorCode::InvalidProfile,
                format!(
                    "a status has at most {} characters and no control characters",
                    limits::MAX_STATUS_CHARS
                ),
            ));
        }
    }
    if let Some(color) = &update.avatar_color {
        let hex = color.strip_prefix('#').unwrap_or("");
        if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Invalid::new(
                ErrorCode::InvalidProfile,
                "an avatar colour is #rrggbb",
            ));
        }
    }
    if let Some(initials) = &update.avatar_initials {
        let chars = initials.chars().count();
        if chars == 0
            || chars > limits::MAX_INITIALS_CHARS
            || !initials.chars().all(char::is_alphanumeric)
        {
            return Err(Invalid::new(
                ErrorCode::InvalidProfile,
                format!(
                    "avatar initials are 1 to {} letters or digits",
                    limits::MAX_INITIALS_CHARS
                ),
            ));
        }
    }
    Ok(())
}

/// The initials an avatar starts with: the first letter or digit of the display name.
pub fn default_initials(display_name: &str) -> String {
    display_name
        .chars()
        .find(|c| c.is_alphanumeric())
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_plain() {
        assert!(validate_username("ada").is_ok());
        assert!(validate_username("a.b-c_9").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("ada lovelace").is_err());
        assert!(validate_username("ad'; DROP TABLE users;--").is_err());
        assert!(validate_username(&"a".repeat(33)).is_err());
        assert!(validate_username("adä").is_err());
    }

    #[test]
    fn names_refuse_bidirectional_and_zero_width_characters() {
        for bad in [
            "ad\u{202E}a",
            "a\u{200B}da",
            "\u{2066}ada\u{2069}",
            "ada\u{FEFF}",
        ] {
            assert_eq!(
                validate_username(bad).map_err(|e| e.code),
                Err(ErrorCode::InvalidUsername)
            );
            assert_eq!(
                validate_display_name(bad).map_err(|e| e.code),
                Err(ErrorCode::InvalidName)
            );
            assert_eq!(
                validate_room(bad).map_err(|e| e.code),
                Err(ErrorCode::InvalidRoomName)
            );
        }
        assert!(validate_display_name("Zoë 🙂").is_ok());
        assert!(validate_room("Café ☕").is_ok());
    }

    #[test]
    fn invite_policies_default_by_kind() {
        assert_eq!(
            InvitePolicy::default_for(RoomKind::Private),
            InvitePolicy::Owners
        );
        assert_eq!(
            InvitePolicy::default_for(RoomKind::Public),
            InvitePolicy::Members
        );
        assert_eq!(InvitePolicy::parse("owners"), Some(InvitePolicy::Owners));
        let update: Result<RoomUpdate, _> = serde_json::from_str(r#"{"invite_policy":"all"}"#);
        assert!(update.is_err());
    }

    #[test]
    fn passwords_have_bounds() {
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"p".repeat(128)).is_ok());
        assert!(validate_password(&"p".repeat(129)).is_err());
    }

    #[test]
    fn profile_updates_are_checked() {
        let ok = ProfileUpdate {
            display_name: Some("Ada L.".into()),
            status_text: Some("<b>busy</b>".into()),
            avatar_color: Some("#a0B1c2".into()),
            avatar_initials: Some("AL".into()),
        };
        assert!(validate_profile_update(&ok).is_ok());
        for bad in [
            ProfileUpdate {
                avatar_color: Some("red".into()),
                ..Default::default()
            },
            ProfileUpdate {
                avatar_initials: Some("ABCD".into()),
                ..Default::default()
            },
            ProfileUpdate {
                status_text: Some("x".repeat(141)),
                ..Default::default()
            },
        ] {
            assert_eq!(
                validate_profile_update(&bad).map_err(|e| e.code),
                Err(ErrorCode::InvalidProfile)
            );
        }
        assert_eq!(default_initials("ada"), "A");
        assert_eq!(default_initials("  "), "?");
    }

    #[test]
    fn kinds_and_roles_are_snake_case() {
        assert_eq!(
            serde_json::to_string(&RoomKind::Private).unwrap_or_default(),
            "\"private\""
        );
        assert_eq!(RoomKind::parse("direct"), Some(RoomKind::Direct));
        assert_eq!(Role::parse(Role::Owner.as_str()), Some(Role::Owner));
    }
}
