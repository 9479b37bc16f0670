//! What the app says to people: error codes in plain words, and times and days.

use chat_protocol::{limits, ErrorCode};

/// An error code in plain words. `detail` (the server's message) is used only where it says
/// something the code does not.
pub fn error(code: ErrorCode, detail: &str) -> String {
    let text = match code {
        ErrorCode::BadCredentials => "That user name and password do not match.",
        ErrorCode::InvalidUsername => {
            "A user name has 1 to 32 letters, digits, dots, dashes or underscores, no spaces."
        }
        ErrorCode::InvalidPassword => "A password has 8 to 128 characters.",
        ErrorCode::UsernameTaken => "That user name is taken. Try another one.",
        ErrorCode::InvalidName => "A display name has 1 to 32 characters.",
        ErrorCode::InvalidRoomName => "A room name has 1 to 64 characters.",
        ErrorCode::RoomNameTaken => "A public room with that name exists already. Join it from Browse rooms, or pick another name.",
        ErrorCode::RoomNotFound => "That room does not exist, or you are not in it.",
        ErrorCode::UserNotFound => "There is no user with that name.",
        ErrorCode::NotMember => "You are not a member of that room.",
        ErrorCode::NotAllowed => "You are not allowed to do that here.",
        ErrorCode::CannotMessageSelf => "You cannot start a direct conversation with yourself.",
        ErrorCode::RateLimited => "Too many attempts. Wait a moment and try again.",
        ErrorCode::Unavailable => "The server could not take the message right now.",
        ErrorCode::Internal => "Something went wrong on the server. Try again.",
        ErrorCode::Unauthenticated => "Your session has ended. Sign in again.",
        ErrorCode::BodyTooLong => "A message has at most 4,000 characters.",
        ErrorCode::BodyEmpty => "A message cannot be empty.",
        ErrorCode::InvalidBody => "The message has a character that cannot be sent.",
        ErrorCode::MessageNotFound => "That message is gone.",
        ErrorCode::InvalidProfile => return detail.to_owned(),
        ErrorCode::NotJoined => "The room is still connecting. Try again.",
        _ => "Something went wrong. Try again.",
    };
    text.to_owned()
}

/// The rules shown under the user name field before anything is submitted.
pub fn username_rule() -> String {
    format!(
        "1 to {} letters, digits, dots, dashes or underscores.",
        limits::MAX_USERNAME_CHARS
    )
}

pub fn password_rule() -> String {
    format!(
        "{} to {} characters.",
        limits::MIN_PASSWORD_CHARS,
        limits::MAX_PASSWORD_CHARS
    )
}

/// A local time as `HH:MM`.
pub fn clock(hours: u32, minutes: u32) -> String {
    format!("{hours:02}:{minutes:02}")
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A calendar day: "Today", "Yesterday" or "Monday, 7 December 2026". `days_ago` is 0 today.
pub fn day(days_ago: i64, weekday: u32, date: u32, month: u32, year: i32) -> String {
    match days_ago {
        0 => "Today".to_owned(),
        1 => "Yesterday".to_owned(),
        _ => format!(
            "{}, {date} {} {year}",
            WEEKDAYS.get(weekday as usize).copied().unwrap_or(""),
            MONTHS.get(month as usize).copied().unwrap_or("")
        ),
    }
}

/// The composer's counter, shown from this many characters on.
pub const COUNTER_FROM: usize = limits::MAX_BODY_CHARS - 500;

/// The counter text, if it should be shown.
pub fn counter(chars: usize) -> Option<String> {
    (chars >= COUNTER_FROM).then(|| {
        if chars > limits::MAX_BODY_CHARS {
            format!(
                "{} characters over the limit of {}",
                chars - limits::MAX_BODY_CHARS,
                limits::MAX_BODY_CHARS
            )
        } else {
            format!("{} characters left", limits::MAX_BODY_CHARS - chars)
        }
    })
}

/// The name to show for a room: for a direct room ("ada & bob"), the other person.
pub fn room_title(name: &str, direct: bool, own_username: &str) -> String {
    if !direct {
        return name.to_owned();
    }
    match name.split_once(" & ") {
        Some((a, b)) if a == own_username => b.to_owned(),
        Some((a, b)) if b == own_username => a.to_owned(),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_for_people() {
        assert!(error(ErrorCode::UsernameTaken, "x").contains("taken"));
        assert_eq!(clock(9, 5), "09:05");
        assert_eq!(day(0, 1, 7, 11, 2026), "Today");
        assert_eq!(day(3, 1, 7, 11, 2026), "Monday, 7 December 2026");
        assert_eq!(counter(10), None);
        assert_eq!(counter(3_990).as_deref(), Some("10 characters left"));
        assert_eq!(
            counter(4_002).as_deref(),
            Some("2 characters over the limit of 4000")
        );
        assert_eq!(room_title("ada & bob", true, "ada"), "bob");
        assert_eq!(room_title("ada & bob", true, "bob"), "ada");
        assert_eq!(room_title("ada & bob", false, "bob"), "ada & bob");
    }
}
