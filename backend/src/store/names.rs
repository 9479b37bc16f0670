//! The keys names are compared by: two names with the same key are the same name.
//!
//! A key is the name in Unicode compatibility form (NFKC: full-width letters, ligatures and
//! other presentation forms become the plain letters), lower case character by character. Room
//! names also lose their outer whitespace and have each run of it inside made one space. The
//! migration that added the key columns backfilled them with PostgreSQL's `normalize` and
//! `lower`, which agree with this for every name the server has ever accepted.

use unicode_normalization::UnicodeNormalization;

/// The key of a user name: unique among users.
pub fn username_key(username: &str) -> String {
    fold(username)
}

/// The key of a room name: unique among public rooms.
pub fn room_name_key(name: &str) -> String {
    fold(name).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` with `%`, `_` and `\` escaped, so that LIKE matches it literally (PostgreSQL's
/// default escape character is the backslash).
pub fn like_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// NFKC, then lower case, then NFKC again (lower-casing can leave a composable sequence).
/// Character by character, so a final sigma folds like any other (as PostgreSQL's `lower`
/// does).
fn fold(name: &str) -> String {
    name.nfkc()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .nfkc()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_differing_in_case_share_a_key() {
        assert_eq!(username_key("casehleid"), username_key("CASEHLEID"));
        assert_eq!(username_key("Ada.L"), "ada.l");
        assert_ne!(username_key("ada"), username_key("ada_"));
    }

    #[test]
    fn room_names_fold_case_presentation_forms_and_spaces() {
        let key = room_name_key("General Chat");
        for same in [
            "general chat",
            "  GENERAL CHAT ",
            "General   Chat",
            "\u{FF27}eneral Chat",
            "General\u{3000}Chat",
        ] {
            assert_eq!(room_name_key(same), key, "{same:?}");
        }
        assert_eq!(room_name_key("ﬁle"), "file");
        assert_eq!(room_name_key("ΟΔΟΣ"), "οδοσ");
        assert_ne!(
            room_name_key("General Chat"),
            room_name_key("General Chats")
        );
    }
}
