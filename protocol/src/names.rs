//! Characters no name may contain.
//!
//! Control characters, bidirectional marks, embeddings, overrides and isolates reorder or hide
//! the text around them, and zero-width characters make two names that look the same differ: in
//! a user name, a display name or a room name either lets one name pass for another. Both sides
//! refuse them (the server with the field's own error code), so the client can say so before
//! it sends.

/// True for a character that user names, display names and room names refuse.
pub fn is_forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Arabic letter mark.
            '\u{061C}'
            // Zero-width space, non-joiner and joiner; left-to-right and right-to-left marks.
            | '\u{200B}'..='\u{200F}'
            // Embeddings, pop and overrides.
            | '\u{202A}'..='\u{202E}'
            // Word joiner and the invisible operators.
            | '\u{2060}'..='\u{2064}'
            // Isolates.
            | '\u{2066}'..='\u{2069}'
            // Zero-width no-break space (byte order mark).
            | '\u{FEFF}'
        )
}

/// The first forbidden character of `name`, if any.
pub fn forbidden_char(name: &str) -> Option<char> {
    name.chars().find(|&c| is_forbidden_in_name(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_reordering_characters_are_forbidden() {
        for c in [
            '\u{0}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{061C}', '\u{200B}', '\u{200C}',
            '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2060}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{FEFF}',
        ] {
            assert!(is_forbidden_in_name(c), "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn letters_of_any_script_and_emoji_are_allowed() {
        for name in [
            "Ada Lovelace",
            "Zoë",
            "Łódź",
            "東京",
            "עברית",
            "عربي",
            "🙂 team",
            "a-b_c.d",
        ] {
            assert_eq!(forbidden_char(name), None, "{name}");
        }
    }
}
