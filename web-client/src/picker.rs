//! The user picker of the invitation and direct-message dialogs: what is typed, the people
//! found for it, and the one the arrow keys point at. Pure state; `ui::user_picker` draws it
//! as an ARIA combobox and asks the server (`GET /api/users?q=`).

use chat_protocol::api::UserSummary;

/// A combobox's state. The list is open while it has suggestions for what the box says and
/// the user has not closed it (Escape, a choice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Picker {
    typed: String,
    suggestions: Vec<UserSummary>,
    active: Option<usize>,
    open: bool,
}

impl Picker {
    /// The box now says `text`. Returns the search to make, if any: what was typed without its
    /// surrounding spaces, when that is not empty.
    pub fn typed(&mut self, text: &str) -> Option<String> {
        self.typed = text.to_owned();
        self.active = None;
        let query = text.trim();
        if query.is_empty() {
            self.suggestions.clear();
            self.open = false;
            return None;
        }
        Some(query.to_owned())
    }

    /// The server's answer to the search for `query`. An answer to anything but what the box
    /// says now is dropped (answers can arrive out of order). People in `hidden` (by user name,
    /// in any case: the user, or a room's members) are left out.
    pub fn found(&mut self, query: &str, users: Vec<UserSummary>, hidden: &[String]) {
        if self.typed.trim() != query {
            return;
        }
        self.suggestions = users
            .into_iter()
            .filter(|user| {
                !hidden
                    .iter()
                    .any(|name| name.eq_ignore_ascii_case(&user.username))
            })
            .collect();
        self.active = None;
        self.open = !self.suggestions.is_empty();
    }

    /// Arrow down: the next suggestion, the first after the last; opens a closed list.
    pub fn next(&mut self) {
        self.step(true);
    }

    /// Arrow up: the previous suggestion, the last before the first; opens a closed list.
    pub fn previous(&mut self) {
        self.step(false);
    }

    fn step(&mut self, forward: bool) {
        let count = self.suggestions.len();
        if count == 0 {
            return;
        }
        if !self.open {
            self.open = true;
            self.active = None;
        }
        self.active = Some(match (self.active, forward) {
            (None, true) => 0,
            (None, false) => count - 1,
            (Some(at), true) => (at + 1) % count,
            (Some(at), false) => (at + count - 1) % count,
        });
    }

    /// Takes the suggestion at `index`: the box gets its user name and the list closes.
    /// Returns the user name.
    pub fn choose(&mut self, index: usize) -> Option<String> {
        let username = self.suggestions.get(index)?.username.clone();
        self.typed = username.clone();
        self.open = false;
        self.active = None;
        Some(username)
    }

    /// Takes the suggestion the arrow keys point at, if the list is open.
    pub fn choose_active(&mut self) -> Option<String> {
        match (self.open, self.active) {
            (true, Some(index)) => self.choose(index),
            _ => None,
        }
    }

    /// Escape, or focus leaving: the list closes, what was typed stays.
    pub fn close(&mut self) {
        self.open = false;
        self.active = None;
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn active(&self) -> Option<usize> {
        self.active.filter(|_| self.open)
    }

    pub fn suggestions(&self) -> &[UserSummary] {
        &self.suggestions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::UserId;

    fn user(id: i64, username: &str) -> UserSummary {
        UserSummary {
            user_id: UserId(id),
            username: username.to_owned(),
            display_name: username.to_uppercase(),
        }
    }

    fn picker_with(names: &[&str]) -> Picker {
        let mut picker = Picker::default();
        let query = picker.typed("a").unwrap_or_default();
        let users = names
            .iter()
            .enumerate()
            .map(|(id, name)| user(id as i64, name))
            .collect();
        picker.found(&query, users, &[]);
        picker
    }

    #[test]
    fn typing_asks_for_the_trimmed_text_and_nothing_for_spaces() {
        let mut picker = Picker::default();
        assert_eq!(picker.typed("  ad "), Some("ad".to_owned()));
        assert_eq!(picker.typed("   "), None);
        assert!(!picker.is_open());
    }

    #[test]
    fn an_answer_to_an_older_query_is_dropped() {
        let mut picker = Picker::default();
        picker.typed("a");
        picker.typed("ad");
        picker.found("a", vec![user(1, "aaron")], &[]);
        assert!(picker.suggestions().is_empty());
        picker.found("ad", vec![user(2, "ada")], &[]);
        assert_eq!(picker.suggestions(), [user(2, "ada")]);
        assert!(picker.is_open());
    }

    #[test]
    fn hidden_people_are_left_out_in_any_case() {
        let mut picker = Picker::default();
        picker.typed("a");
        picker.found(
            "a",
            vec![user(1, "Ada"), user(2, "aaron")],
            &["ada".to_owned()],
        );
        assert_eq!(picker.suggestions(), [user(2, "aaron")]);
    }

    #[test]
    fn nothing_found_keeps_the_list_closed() {
        let mut picker = Picker::default();
        picker.typed("zz");
        picker.found("zz", Vec::new(), &[]);
        assert!(!picker.is_open());
        picker.next();
        assert_eq!(picker.active(), None);
    }

    #[test]
    fn arrows_move_through_the_suggestions_and_wrap() {
        let mut picker = picker_with(&["ada", "aaron", "abe"]);
        assert_eq!(picker.active(), None);
        picker.next();
        assert_eq!(picker.active(), Some(0));
        picker.next();
        picker.next();
        assert_eq!(picker.active(), Some(2));
        picker.next();
        assert_eq!(picker.active(), Some(0));
        picker.previous();
        assert_eq!(picker.active(), Some(2));
    }

    #[test]
    fn up_from_nothing_starts_at_the_last() {
        let mut picker = picker_with(&["ada", "aaron"]);
        picker.previous();
        assert_eq!(picker.active(), Some(1));
    }

    #[test]
    fn choosing_fills_the_name_and_closes_the_list() {
        let mut picker = picker_with(&["ada", "aaron"]);
        assert_eq!(picker.choose_active(), None, "nothing pointed at yet");
        picker.next();
        picker.next();
        assert_eq!(picker.choose_active(), Some("aaron".to_owned()));
        assert!(!picker.is_open());
        assert_eq!(picker.active(), None);
        assert_eq!(picker.choose(5), None);
    }

    #[test]
    fn escape_closes_and_an_arrow_opens_again() {
        let mut picker = picker_with(&["ada", "aaron"]);
        picker.next();
        picker.close();
        assert!(!picker.is_open());
        assert_eq!(picker.active(), None);
        picker.next();
        assert!(picker.is_open());
        assert_eq!(picker.active(), Some(0));
    }
}
